"""File access for the demo: paired class strips and the quicklook PNG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoseg.io.atomic import atomic_output

if TYPE_CHECKING:
    from geoseg.models.card import ModelCard

QUICKLOOK_PX = 1400


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


def write_quicklook(
    image: Path,
    classes: Path,
    polygons: Path,
    dst: Path,
    card: ModelCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Draw the image with a coloured class overlay and polygon outlines as a PNG.

    Reads decimated views (overviews where present), so memory does not depend
    on the scene size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyogrio
    from matplotlib.patches import Patch

    with rasterio.open(image) as src:
        scale = max(src.width, src.height) / QUICKLOOK_PX
        shape = (
            max(1, round(src.height / max(scale, 1))),
            max(1, round(src.width / max(scale, 1))),
        )
        rgb = src.read([1, 2, 3], out_shape=(3, *shape), resampling=Resampling.average)
        bounds = src.bounds
    with rasterio.open(classes) as src:
        cls = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    overlay = np.zeros((*shape, 4), dtype=float)
    for k in card.classes:
        if k.vectorize:
            overlay[cls == k.id] = (*(v / 255 for v in k.rgb), 0.38)
    fig, ax = plt.subplots(figsize=(shape[1] / 100, shape[0] / 100 + 0.5), dpi=100)
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    ax.imshow(np.moveaxis(rgb, 0, -1), extent=extent, interpolation="nearest")
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    handles = []
    for layer, _ in pyogrio.list_layers(polygons):
        if layer == "layer_styles":
            continue
        df = pyogrio.read_dataframe(polygons, layer=layer)
        info = next((c for c in card.classes if c.layer == layer), None)
        color = info.color if info else "#ffffff"
        if len(df):
            df.boundary.plot(ax=ax, color=color, linewidth=0.6)
        handles.append(Patch(facecolor=color, edgecolor=color, label=f"{layer} ({len(df):,})"))
    ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)
    ax.set_axis_off()
    ax.set_title(f"geoseg demo: {card.name}", fontsize=11)
    fig.tight_layout()
    with atomic_output(dst, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dst
