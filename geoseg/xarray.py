"""Segment (rio)xarray DataArrays lazily with dask: ``da.geoseg.predict(model)``.

Importing this module registers the ``geoseg`` accessor on
:class:`xarray.DataArray`::

    import rioxarray
    import geoseg.xarray  # registers da.geoseg

    da = rioxarray.open_rasterio("scene.tif", chunks={"y": 4096, "x": 4096})
    classes = da.geoseg.predict("default")      # lazy (y, x) uint8, nodata 255
    classes.rio.to_raster("classes.tif")        # computes chunk by chunk

Each output chunk is one dask task that computes its pixels exactly as
:func:`geoseg.pipeline.run_scene` would for the whole raster: the tiles of the
global tile grid that touch the chunk (:func:`geoseg.tiling.region_grid`) are
read from the input array (only the chunks they need), predicted, blended
with the same weights in the same order, and cut to the chunk.  The result is
therefore bit-identical to the file path, whatever the chunking; chunks a few
tiles wide keep the tiles recomputed at chunk borders few.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from geoseg.errors import BandError, ConfigError
from geoseg.infer.predictor import Predictor, normalize
from geoseg.infer.stream import CLASS_NODATA, stream_segment
from geoseg.models.cache import cached_model, remember_model
from geoseg.models.checkpoint import LoadedModel, load_checkpoint
from geoseg.pipeline import PredictConfig, crop_strips, make_predictor
from geoseg.tiling import make_grid, region_grid
from geoseg.types import PixelWindow, TileGrid

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["GeosegAccessor", "segment"]

#: Output chunk edge (pixels) for DataArrays that are not dask-backed.
DEFAULT_CHUNK = 2048


def _valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """geoseg's validity rule for ``(bands, rows, cols)`` pixels (as :class:`RasterSource`).

    A pixel is nodata only when every band equals ``nodata`` (GDAL's dataset
    mask rule); for floating-point data any non-finite band also makes it nodata.
    """
    floating = data.dtype.kind in "fc"
    if nodata is None:
        valid = np.ones(data.shape[1:], dtype=bool)
    elif isinstance(nodata, float) and math.isnan(nodata):
        valid = np.any(~np.isnan(data), axis=0)
    else:
        valid = np.any(data != np.asarray(nodata).astype(data.dtype), axis=0)
    if floating:
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def _reader(data: np.ndarray, valid: np.ndarray) -> Any:
    """``read(window)`` over an in-memory block, reflecting past its edges like RasterSource."""
    h, w = valid.shape

    def read(window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        inner = window.clip(h, w)
        if inner is None:
            raise ValueError(f"window {window} lies outside the {h}x{w} block")
        d = data[:, inner.row_off : inner.row_end, inner.col_off : inner.col_end]
        v = valid[inner.row_off : inner.row_end, inner.col_off : inner.col_end]
        if inner != window:
            pad = (
                (inner.row_off - window.row_off, window.row_end - inner.row_end),
                (inner.col_off - window.col_off, window.col_end - inner.col_end),
            )
            d = np.pad(d, ((0, 0), *pad), mode="reflect")
            v = np.pad(v, pad, mode="reflect")
        return d, v

    return read


@functools.lru_cache(maxsize=4)
def _cached_predictor(model_path: str, model_sha256: str, cfg: PredictConfig) -> Predictor:
    """One predictor per process and option set, shared by every block it computes.

    Building one hashes the weights and creates an inference session (an ONNX
    export on first use); doing that per dask block cost ~0.1 s or more each.
    It is built as every front end builds it (:func:`geoseg.pipeline.make_predictor`).
    """
    return make_predictor(cached_model(model_path, model_sha256), cfg)


def _segment_block(
    data: np.ndarray,
    grid: TileGrid,
    core: PixelWindow,
    nodata: float | None,
    model_path: str,
    model_sha256: str,
    cfg: PredictConfig,
) -> np.ndarray:
    """Classes of ``core`` from the input pixels under ``grid`` (one dask task)."""
    predictor = _cached_predictor(model_path, model_sha256, cfg)
    card = predictor.card
    data = np.asarray(data)
    valid = _valid_mask(data, nodata)
    input_range = cfg.input_range
    strips = stream_segment(
        grid,
        _reader(data, valid),
        lambda d, v: normalize(d, v, card, input_range),
        predictor,
        card.n_classes,
        batch_size=predictor.batch_size,
        workers=predictor.workers,
        contact_class=card.contact_class if cfg.separate else None,
    )
    out = np.full((core.height, core.width), CLASS_NODATA, dtype=np.uint8)
    for strip in crop_strips(strips, core, grid.origin):
        out[strip.row_off : strip.row_off + strip.classes.shape[0]] = strip.classes
    return out


def _band_yx(da: xr.DataArray) -> xr.DataArray:
    if da.ndim == 2:
        return da.expand_dims("band")
    if da.ndim != 3:
        raise ConfigError(
            f"segment needs a (band, y, x) or (y, x) DataArray, got dims {da.dims}; "
            "select or stack the other dimensions first"
        )
    rio = getattr(da, "rio", None)
    try:
        y, x = (rio.y_dim, rio.x_dim) if rio is not None else da.dims[1:]
    except Exception:  # rioxarray raises its own errors for unusual dims
        y, x = da.dims[1:]
    band = next(d for d in da.dims if d not in (y, x))
    return da.transpose(band, y, x)


def _band_indices(n: int, wanted: Sequence[str], bands: Sequence[int] | None) -> list[int]:
    if bands is None:
        if n != len(wanted):
            raise BandError(
                f"the DataArray has {n} band(s) but the model expects {len(wanted)} "
                f"({', '.join(wanted)}); choose them with bands=(...), 1-based"
            )
        return list(range(n))
    bad = [b for b in bands if not 1 <= b <= n]
    if bad or len(bands) != len(wanted):
        raise BandError(
            f"bands={tuple(bands)} must name {len(wanted)} of the DataArray's bands 1..{n} "
            f"for the model's {', '.join(wanted)}"
        )
    return [b - 1 for b in bands]


def _chunk_sizes(length: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, length - s) for s in range(0, length, size))


def segment(
    da: xr.DataArray,
    model: LoadedModel | str | Path,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    bands: Sequence[int] | None = None,
    input_range: tuple[float, float] | None = None,
    nodata: float | None = None,
    chunks: int | tuple[int, int] | None = None,
    amp: bool | None = None,
    threads: int | None = None,
    backend: str = "auto",
    compile: bool = False,
    workers: int | None = None,
    tta: str = "none",
    precision: str = "auto",
    separate: bool = True,
) -> xr.DataArray:
    """Segment a (dask-backed) DataArray into a lazy class DataArray.

    Parameters
    ----------
    da : xarray.DataArray
        Imagery as ``(band, y, x)`` (or ``(y, x)``), numpy- or dask-backed,
        e.g. from ``rioxarray.open_rasterio(path, chunks=...)``.  Raw values,
        as in the file (``masked=False``).
    model : LoadedModel, str or Path
        A loaded model, a checkpoint directory or a bundled model name.  Dask
        workers load it once per process from its path (checked by sha256).
    tile, overlap, batch_size, device, input_range, amp, threads, backend, compile, workers,
    tta, precision, separate
        As :class:`geoseg.pipeline.PredictConfig` (checked by it); the network runner
        is built as ``geoseg predict`` builds it.
    bands : sequence of int, optional
        1-based positions along the band dimension, in the model's band order
        (default: all bands, which must match the model's count).
    nodata : float, optional
        Input nodata value (default: ``da.rio.nodata`` or ``_FillValue``).
        Pixels where every band is nodata, or any band is NaN, become 255.
    chunks : int or (int, int), optional
        Output chunk (rows, cols); default: the input's y/x chunks, or
        2048 for numpy-backed arrays.

    Returns
    -------
    xarray.DataArray
        uint8 ``(y, x)`` class ids with the input's coordinates, CRS and
        transform (rioxarray), nodata 255, CF ``flag_values``/``flag_meanings``.
        Nothing is computed until it is (``.compute()``, ``.rio.to_raster``).

    Raises
    ------
    ConfigError, BandError
        Bad dims, tile/overlap or band selection.

    Notes
    -----
    Each chunk task runs the network with torch's own threads; under dask's
    threaded scheduler several chunks run at once, so ``threads=1`` (or a
    distributed cluster of one-thread workers) avoids oversubscribing the CPU.

    Equal, bit for bit, to :func:`geoseg.pipeline.run_scene` on the file the
    array was read from, without resampling (``resample="never"``) and with
    validity from the nodata value (alpha bands and GDAL masks are not seen).
    """
    import dask
    import dask.array as dsa

    cfg = PredictConfig(
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        input_range=input_range,
        amp=amp,
        threads=threads,
        backend=backend,
        compile=compile,
        workers=workers,
        tta=tta,
        precision=precision,
        separate=separate,
        resample="never",
    )

    loaded = model if isinstance(model, LoadedModel) else load_checkpoint(model, lazy=True)
    remember_model(loaded)
    card = loaded.card
    arr = _band_yx(da)
    band_dim, y_dim, x_dim = arr.dims
    n_bands, height, width = arr.shape
    sel = _band_indices(n_bands, card.bands, bands)
    if nodata is None:
        rio = getattr(arr, "rio", None)
        nodata = rio.nodata if rio is not None else None
        if nodata is None:
            nodata = arr.attrs.get("_FillValue", arr.encoding.get("_FillValue"))
    nodata = None if nodata is None else float(nodata)
    grid = make_grid(
        height,
        width,
        tile=tile or card.tile_size,
        overlap=card.overlap if overlap is None else overlap,
        stride=card.stride,
    )
    data = arr.data
    if chunks is not None:
        rows, cols = (chunks, chunks) if isinstance(chunks, int) else chunks
        if rows < 1 or cols < 1:
            raise ConfigError(f"chunks must be positive, got {chunks}")
        row_chunks, col_chunks = _chunk_sizes(height, rows), _chunk_sizes(width, cols)
    elif isinstance(data, dsa.Array):
        row_chunks, col_chunks = data.chunks[1], data.chunks[2]
    else:
        row_chunks = _chunk_sizes(height, DEFAULT_CHUNK)
        col_chunks = _chunk_sizes(width, DEFAULT_CHUNK)
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(data, chunks=(-1, row_chunks, col_chunks))
    block = dask.delayed(_segment_block, pure=True)
    rows_out = []
    r0 = 0
    for rh in row_chunks:
        row, c0 = [], 0
        for cw in col_chunks:
            core = PixelWindow(r0, c0, rh, cw)
            sub = region_grid(grid, core)
            oy, ox = sub.origin
            part = data[sel, oy : oy + sub.height, ox : ox + sub.width]
            task = block(part, sub, core, nodata, str(loaded.path), loaded.sha256, cfg)
            row.append(dsa.from_delayed(task, shape=(rh, cw), dtype=np.uint8))
            c0 += cw
        rows_out.append(row)
        r0 += rh
    classes = dsa.block(rows_out)
    coords = {name: coord for name, coord in arr.coords.items() if band_dim not in coord.dims}
    out = xr.DataArray(
        classes,
        dims=(y_dim, x_dim),
        coords=coords,
        name="classes",
        attrs={
            "long_name": "class",
            "flag_values": [c.id for c in card.classes],
            "flag_meanings": " ".join(c.name.replace(" ", "_") for c in card.classes),
            "model": card.name,
            "model_sha256": loaded.sha256,
        },
    )
    return _with_georeference(out, arr)


def _with_georeference(out: xr.DataArray, src: xr.DataArray) -> xr.DataArray:
    try:
        import rioxarray  # noqa: F401  (registers .rio)
    except ImportError:
        return out
    crs = src.rio.crs
    if crs is not None:
        out = out.rio.write_crs(crs)
        out = out.rio.write_transform(src.rio.transform(recalc=False))
    return out.rio.write_nodata(CLASS_NODATA, encoded=False)


@xr.register_dataarray_accessor("geoseg")
class GeosegAccessor:
    """``da.geoseg``: segmentation of imagery DataArrays (see :func:`segment`)."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def predict(self, model: LoadedModel | str | Path, **options: Any) -> xr.DataArray:
        """Lazy class DataArray of this imagery; ``options`` as :func:`segment`."""
        return segment(self._obj, model, **options)
