"""Bring predictions made at the model's pixel size back onto the input grid.

When an input's pixel size differs from the model's by more than 25 %, the
reader resamples it on the fly (a warped view) and the network runs on that
grid.  Here the resulting strips are staged in a temporary GeoTIFF, then read
back on the input's exact grid (nearest neighbour for classes, bilinear for
probabilities) and written strip by strip to the final COG, with nodata
wherever the input itself is nodata.  For a north-up input the model grid has
the input's extent, and GDAL's resampled read of the matching fractional
window gives what a warped view would, much faster; rotated or sheared inputs
(whose model grid is the input grid scaled) go through a warped view.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from geoseg.io.read import RasterSpec
from geoseg.io.write_raster import RasterStripWriter
from geoseg.types import CLASS_NODATA, PROB_NODATA, PixelWindow, Strip

STRIP_ROWS = 512

#: Reads rows ``window`` of the input grid back from the stage: classes, and the probability
#: bands asked for (None: none).
_ReadBack = Callable[[Window, list[int] | None], tuple[np.ndarray, np.ndarray | None]]


def _same_extent_north_up(
    transform: Affine, width: int, height: int, model: RasterSpec, crs: CRS
) -> bool:
    """Whether the model grid covers exactly the input's extent, both north-up in one CRS.

    That is how the reader builds the model grid for a north-up input
    (:meth:`~geoseg.io.read.RasterSource._warped`); the predictions can then be
    brought back with a resampled read, which gives the warper's nearest
    classes exactly and its bilinear probabilities to within one unit of 254
    (rounding), about 7x faster for probabilities and 12x for classes.
    """
    st = model.transform
    if transform.b or transform.d or st.b or st.d or transform.e >= 0 or st.e >= 0:
        return False
    if model.crs is None or model.crs != crs:
        return False
    left, top = transform.c, transform.f
    right, bottom = left + width * transform.a, top + height * transform.e
    tol = 1e-6 * min(abs(transform.a), abs(st.a))
    s_left, s_top = st.c, st.f
    s_right, s_bottom = s_left + model.width * st.a, s_top + model.height * st.e
    return all(
        abs(a - b) <= tol
        for a, b in ((left, s_left), (top, s_top), (right, s_right), (bottom, s_bottom))
    )


def _resampled_reader(stage: DatasetReader, transform: Affine) -> _ReadBack:
    """Read back by GDAL's resampled RasterIO over the matching fractional stage window."""

    def read(win: Window, prob_bands: list[int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        fw = from_bounds(*window_bounds(win, transform), transform=stage.transform)
        h, w = int(win.height), int(win.width)
        cls = stage.read(1, window=fw, out_shape=(h, w), resampling=Resampling.nearest)
        probs = None
        if prob_bands:
            probs = stage.read(
                prob_bands,
                window=fw,
                out_shape=(len(prob_bands), h, w),
                resampling=Resampling.bilinear,
            )
        return cls, probs

    return read


def _warped_reader(cls_vrt: WarpedVRT, prob_vrt: WarpedVRT) -> _ReadBack:
    """Read back through warped views on the input grid (any other geometry)."""

    def read(win: Window, prob_bands: list[int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        cls = cls_vrt.read(1, window=win)
        probs = prob_vrt.read(prob_bands, window=win) if prob_bands else None
        return cls, probs

    return read


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
    model_window: PixelWindow | None = None,
    region: PixelWindow | None = None,
) -> None:
    """Stage ``strips`` (model grid) and write them back on ``source``'s grid.

    ``counts`` (length 256) is incremented with the final class histogram.  With
    ``region`` (a window of the input grid), ``strips`` cover ``model_window`` of
    the model grid (see :func:`geoseg.pipeline.model_window`) and only the
    region is written, read back exactly as a whole-raster call reads back
    those pixels (north-up inputs).
    """
    n = len(class_names)
    mw = model_window or PixelWindow(0, 0, model_spec.height, model_spec.width)
    stage_transform = model_spec.transform * Affine.translation(mw.col_off, mw.row_off)
    fd, name = tempfile.mkstemp(
        prefix=f".{dst.stem}.geoseg-model-grid-", suffix=".tif", dir=dst.parent
    )
    os.close(fd)
    stage = Path(name)
    profile = {
        "driver": "GTiff",
        "width": mw.width,
        "height": mw.height,
        "crs": model_spec.crs,
        "transform": stage_transform,
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
                win = Window(0, s.row_off, mw.width, s.classes.shape[0])
                st.write(s.classes, 1, window=win)
                if probabilities is not None and s.probs is not None:
                    st.write(s.probs, list(range(2, n + 2)), window=win)
        with rasterio.open(source) as src, rasterio.open(stage) as st:
            crs = src.crs if src.crs is not None else rasterio.crs.CRS.from_user_input(assume_crs)
            out = region or PixelWindow(0, 0, src.height, src.width)
            out_transform = src.transform * Affine.translation(out.col_off, out.row_off)
            common = {
                "crs": crs,
                "transform": out_transform,
                "width": out.width,
                "height": out.height,
            }
            direct = _same_extent_north_up(src.transform, src.width, src.height, model_spec, crs)
            with contextlib.ExitStack() as views:
                if direct:
                    # Windows in the input grid's own pixel coordinates, so the
                    # fractional stage windows are those of a whole-raster call.
                    read_back = _resampled_reader(st, src.transform)
                elif region is not None:
                    raise ValueError("regions are read back only from north-up model grids")
                else:
                    read_back = _warped_reader(
                        views.enter_context(WarpedVRT(st, resampling=Resampling.nearest, **common)),
                        views.enter_context(
                            WarpedVRT(st, resampling=Resampling.bilinear, **common)
                        ),
                    )
                all_valid = all(
                    list(src.mask_flag_enums[b - 1]) == [MaskFlags.all_valid] for b in bands
                )
                writer = views.enter_context(
                    RasterStripWriter(
                        dst,
                        crs=crs,
                        transform=out_transform,
                        width=out.width,
                        height=out.height,
                        colormap=colormap,
                        class_names=class_names,
                        probabilities=probabilities,
                        overwrite=overwrite,
                        tags={**tags, "GEOSEG_RESAMPLED": "1"},
                    )
                )
                prob_bands = list(range(2, n + 2)) if probabilities is not None else None
                for row in range(0, out.height, STRIP_ROWS):
                    h = min(STRIP_ROWS, out.height - row)
                    # Input-grid window (read-back, masks); the warped views are on `out`.
                    win = Window(out.col_off, out.row_off + row, out.width, h)
                    cls, probs = read_back(
                        win if direct else Window(0, row, out.width, h), prob_bands
                    )
                    invalid = cls == CLASS_NODATA
                    if not all_valid:
                        invalid |= ~np.any(src.read_masks(list(bands), window=win) > 0, axis=0)
                        cls[invalid] = CLASS_NODATA
                    if probs is not None:
                        probs[:, invalid] = PROB_NODATA
                    counts[:] += np.bincount(cls.ravel(), minlength=256)
                    writer.write(row, cls, probs)
    finally:
        with contextlib.suppress(FileNotFoundError):
            stage.unlink()
