"""File access for the demo: paired class strips (the quicklook is :mod:`geoseg.io.quicklook`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window


def read_class_strips(
    truth: Path, pred: Path, rows: int = 512
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield matching strips of two class rasters on the same grid."""
    with rasterio.open(truth) as a, rasterio.open(pred) as b:
        if (a.width, a.height) != (b.width, b.height):
            raise ValueError(f"{truth} and {pred} are not on the same grid")
        for r in range(0, a.height, rows):
            w = Window(0, r, a.width, min(rows, a.height - r))
            yield a.read(1, window=w), b.read(1, window=w)
