"""Bring predictions made at the model's pixel size back onto the input grid.

When an input's pixel size differs from the model's by more than 25 %, the
reader resamples it on the fly (a warped view) and the network runs on that
grid.  Here the resulting strips are staged in a temporary GeoTIFF, then read
back through a warped view on the input's exact grid (nearest neighbour for
classes, bilinear for probabilities) and written strip by strip to the final
COG, with nodata wherever the input itself is nodata.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.infer.stream import CLASS_NODATA, PROB_NODATA, Strip
from geoseg.io.read import RasterSpec
from geoseg.io.write_raster import RasterStripWriter

STRIP_ROWS = 512


def resample_back(
    strips: Iterable[Strip],
    *,
    model_spec: RasterSpec,
    source: str | Path,
    bands: Sequence[int],
    dst: Path,
    probabilities: Path | None,
    colormap: Mapping[int, tuple[int, int, int]],
    class_names: Sequence[str],
    overwrite: bool,
    tags: Mapping[str, str],
    counts: np.ndarray,
    assume_crs: str | None = None,
) -> None:
    """Stage ``strips`` (model grid) and write them back on ``source``'s grid.

    ``counts`` (length 256) is incremented with the final class histogram.
    """
    n = len(class_names)
    fd, name = tempfile.mkstemp(
        prefix=f".{dst.stem}.geoseg-model-grid-", suffix=".tif", dir=dst.parent
    )
    os.close(fd)
    stage = Path(name)
    profile = {
        "driver": "GTiff",
        "width": model_spec.width,
        "height": model_spec.height,
        "crs": model_spec.crs,
        "transform": model_spec.transform,
        "tiled": True,
        "compress": "LZW",
        "bigtiff": "IF_SAFER",
        "dtype": "uint8",
        "count": 1 + (n if probabilities is not None else 0),
        "nodata": CLASS_NODATA,
    }
    try:
        with rasterio.open(stage, "w", **profile) as st:
            for s in strips:
                win = Window(0, s.row_off, model_spec.width, s.classes.shape[0])
                st.write(s.classes, 1, window=win)
                if probabilities is not None and s.probs is not None:
                    st.write(s.probs, list(range(2, n + 2)), window=win)
        with rasterio.open(source) as src, rasterio.open(stage) as st:
            crs = src.crs if src.crs is not None else rasterio.crs.CRS.from_user_input(assume_crs)
            common = {
                "crs": crs,
                "transform": src.transform,
                "width": src.width,
                "height": src.height,
            }
            with (
                WarpedVRT(st, resampling=Resampling.nearest, **common) as cls_vrt,
                WarpedVRT(st, resampling=Resampling.bilinear, **common) as prob_vrt,
                RasterStripWriter(
                    dst,
                    crs=crs,
                    transform=src.transform,
                    width=src.width,
                    height=src.height,
                    colormap=colormap,
                    class_names=class_names,
                    probabilities=probabilities,
                    overwrite=overwrite,
                    tags={**tags, "GEOSEG_RESAMPLED": "1"},
                ) as writer,
            ):
                for row in range(0, src.height, STRIP_ROWS):
                    win = Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
                    valid = np.any(src.read_masks(list(bands), window=win) > 0, axis=0)
                    cls = cls_vrt.read(1, window=win)
                    cls[~valid] = CLASS_NODATA
                    probs = None
                    if probabilities is not None:
                        probs = prob_vrt.read(list(range(2, n + 2)), window=win)
                        probs[:, ~valid | (cls == CLASS_NODATA)] = PROB_NODATA
                    counts[:] += np.bincount(cls.ravel(), minlength=256)
                    writer.write(row, cls, probs)
    finally:
        with contextlib.suppress(FileNotFoundError):
            stage.unlink()
