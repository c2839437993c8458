"""One scene, end to end: the path the CLI, the demo and batch runs share.

``run_scene`` reads a raster tile by tile, runs the model, blends overlapping
tiles, and writes a class COG (and optionally probabilities) on exactly the
input's grid.  Memory stays bounded by the raster width times the tile size.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import queue
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geoseg import __version__
from geoseg.errors import (
    AllNodataWarning,
    BandError,
    ConfigError,
    GeoreferenceError,
    GeosegError,
    GeosegWarning,
)
from geoseg.infer.backends import BACKENDS
from geoseg.infer.predictor import Predictor, normalize, tta_transforms
from geoseg.infer.stream import StreamStats, Strip, stream_segment
from geoseg.io.atomic import check_output_path
from geoseg.io.env import gdal_env
from geoseg.io.read import RasterSource, RasterSpec, north_up_rpc, north_up_vrt, select_bands
from geoseg.io.write_raster import RasterStripWriter
from geoseg.models.card import ClassInfo
from geoseg.models.checkpoint import LoadedModel, load_checkpoint
from geoseg.settings import from_mapping, load_yaml_mapping
from geoseg.tiling import make_grid, region_grid
from geoseg.types import PixelWindow
from geoseg.vectorize.clean import CleanupParams, clean_geometries, default_cleanup

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

#: Relative pixel-size difference beyond which inputs are resampled to the model's pixel size.
RESAMPLE_TOLERANCE = 0.25

#: Inputs coarser than the model's pixels by more than this factor are refused under
#: ``resample="auto"``: upsampling adds no detail a model could see (a 1 m model on
#: 28.5 m Landsat pixels draws "buildings" from 800x more pixels of blur, for minutes).
MAX_UPSAMPLE = 2.5


#: Upper bound of --readers (each holds a dataset handle and a GDAL block cache share).
MAX_READERS = 16


def default_readers(device: Any) -> int:
    """Reader threads for a device: 1 on CPU, up to 4 on GPUs (never more than cores - 1).

    On a CPU the network takes every core and one reader already decodes tiles
    some 50x faster than it consumes them; a GPU consumes tiles faster than one
    thread can decode and normalise them.
    """
    if getattr(device, "type", "cpu") == "cpu":
        return 1
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class PredictConfig:
    """Options of one prediction run (CLI flags and config files build this).

    Parameters
    ----------
    tile, overlap : int, optional
        Tile edge and overlap in pixels (default: the model card's).
    batch_size : int, optional
        Tiles per forward pass (default: 8 on GPU, 2 on CPU).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    bands : tuple of int, optional
        1-based raster bands feeding the model, in the model's band order.
    probabilities : Path, optional
        Also write a per-class probability COG there.
    overwrite : bool
        Replace existing outputs.
    input_range : (float, float), optional
        Raw value range mapped to the model's (default: the card's).
    assume_crs : str, optional
        CRS for rasters that have none.
    resample : {"auto", "never", "force"}
        ``auto``: resample to the model's pixel size when they differ by more than
        25 %, but refuse inputs more than :data:`MAX_UPSAMPLE` times coarser than
        the model's pixels (before any work); ``force``: resample whatever the
        ratio; ``never``: run at the input's own pixels.
    amp : bool, optional
        Mixed precision (default: on GPUs).
    threads : int, optional
        CPU threads for the network.
    region : PixelWindow, optional
        Compute and write only this window of the raster, bit-identical to the
        same pixels of a whole-raster run (batch runs use it).  When the raster
        is resampled to the model's pixel size, the region's part of the model
        grid is computed with the whole run's tiles and brought back as the
        whole run brings it back (north-up rasters; rotated ones refuse).
    backend : {"auto", "torch", "onnx"}
        Inference engine (see :mod:`geoseg.infer.backends`); ``auto`` is the
        fastest one ``geoseg tune`` measured on this machine for the model
        (:mod:`geoseg.infer.tune`), else ONNX Runtime on CPU when installed and
        PyTorch on GPUs.
    compile : bool
        ``torch.compile`` the network (PyTorch backend).
    workers : int, optional
        Network runs at once on the CPU with ONNX Runtime, each with
        ``threads // workers`` threads (default: one per core, up to 4).
    readers : int, optional
        Threads reading and normalising tiles, each with its own dataset handle
        (default: 1 on CPU, where the network needs the cores; up to 4 on a GPU,
        which otherwise waits for tiles).
    precision : {"auto", "fp32", "int8"}
        ``int8`` runs the checkpoint's quantized ONNX graph (``geoseg models
        quantize``); ``auto`` runs it only when its recorded accuracy check passed.
    tta : {"none", "flips", "d4"}
        Test-time augmentation (see :class:`~geoseg.infer.predictor.Predictor`):
        4 or 8 passes per tile, probabilities averaged before blending.
    separate : bool
        For a model with a contact output (``card.contact_class``): carve the
        pixels where two objects of that class meet out of the class, so that
        touching buildings become separate polygons (default True; False
        ignores the output).  Models without one are not affected.
    rpc_height : float, optional
        For rasters placed by RPC coefficients: the constant ground height in
        metres above the WGS 84 ellipsoid used to place them (default: the RPCs'
        ``HEIGHT_OFF``, the scene's mean height).
    rpc_dem : Path, optional
        For rasters placed by RPC coefficients: an elevation raster (heights above
        the ellipsoid) used instead of a constant height.
    """

    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    bands: tuple[int, ...] | None = None
    probabilities: Path | None = None
    overwrite: bool = False
    input_range: tuple[float, float] | None = None
    assume_crs: str | None = None
    resample: str = "auto"
    amp: bool | None = None
    threads: int | None = None
    region: PixelWindow | None = None
    backend: str = "auto"
    compile: bool = False
    readers: int | None = None
    workers: int | None = None
    tta: str = "none"
    precision: str = "auto"
    separate: bool = True
    rpc_height: float | None = None
    rpc_dem: Path | None = None

    def __post_init__(self) -> None:
        if self.rpc_height is not None and not math.isfinite(self.rpc_height):
            raise ConfigError(
                f"rpc_height must be a finite number of metres, got {self.rpc_height}",
                field="rpc_height",
            )
        tta_transforms(self.tta)
        if self.precision not in ("auto", "fp32", "int8"):
            raise ConfigError(
                f"precision must be 'auto', 'fp32' or 'int8', got {self.precision!r}",
                field="precision",
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
                field="backend",
            )
        if self.compile and self.backend == "onnx":
            raise ConfigError(
                "compile applies to the PyTorch backend; drop it or use backend 'torch'",
                field="compile",
            )
        for name, low in (("tile", 1), ("threads", 1), ("batch_size", 1), ("workers", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}", field=name)
        if self.readers is not None and not 1 <= self.readers <= MAX_READERS:
            raise ConfigError(
                f"readers must be between 1 and {MAX_READERS}, got {self.readers}", field="readers"
            )
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"overlap must be >= 0, got {self.overlap}", field="overlap")
        if self.resample not in ("auto", "never", "force"):
            raise ConfigError(
                f"resample must be 'auto', 'never' or 'force', got {self.resample!r}",
                field="resample",
            )
        if self.input_range is not None:
            lo, hi = self.input_range
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ConfigError(
                    f"input_range must be LOW,HIGH with HIGH > LOW, got {self.input_range}",
                    field="input_range",
                )

    @classmethod
    def from_dict(cls, data: Any, *, section: str = "predict") -> PredictConfig:
        """Options from a mapping (a config file's ``predict:`` section).

        Keys are the parameters above (``region`` is set by code only); lists
        become tuples.  Errors name the field (``predict.tile must be >= 1``).

        Examples
        --------
        >>> PredictConfig.from_dict({"tile": 256, "bands": [3, 2, 1]}).bands
        (3, 2, 1)
        """
        return from_mapping(cls, data, section=section, exclude=("region",))

    @classmethod
    def from_yaml(cls, text: str, *, section: str = "predict") -> PredictConfig:
        """Options from YAML text holding the mapping of :meth:`from_dict`."""
        return cls.from_dict(load_yaml_mapping(text, section), section=section)


@dataclass
class RunStats:
    """What a run did, for the CLI's last line and for logs."""

    width: int = 0
    height: int = 0
    pixels: int = 0
    valid_pixels: int = 0
    area_km2: float | None = None
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    tiles: int = 0
    skipped_tiles: int = 0
    resampled_to_m: float | None = None
    class_pixels: dict[int, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @property
    def mpx_per_s(self) -> float:
        """Input megapixels per second."""
        return self.pixels / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line: pixels, km², elapsed time, Mpx/s, peak memory."""
        area = f"{self.area_km2:.3f} km²" if self.area_km2 is not None else "area unknown (no CRS)"
        return (
            f"{self.pixels:,} px ({self.width}x{self.height}), {area}, {self.elapsed_s:.1f} s, "
            f"{self.mpx_per_s:.2f} Mpx/s, peak memory {self.peak_rss_mb:.0f} MB"
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024 / 1024


def check_georeference(spec: RasterSpec, assume_crs: str | None) -> None:
    """Refuse rasters whose georeferencing geoseg would not reproduce exactly.

    A rotated or sheared geotransform is fine: the network runs on the
    raster's own pixel grid and the outputs keep that very transform.

    Raises
    ------
    GeoreferenceError
        No CRS (unless ``assume_crs``), a degenerate geotransform, or GCP/RPC
        georeferencing.
    """
    if spec.georef in ("gcps", "rpcs"):
        # run_scene warps GCP and RPC rasters north-up before they get here; other callers
        # (batch windows) refuse them.
        how = "ground control points" if spec.georef == "gcps" else "RPC coefficients"
        flag = "-rpc " if spec.georef == "rpcs" else ""
        raise GeoreferenceError(
            f"{spec.path} is placed by {how}, not a geotransform, so its pixels have no "
            f"north-up grid to write results on; warp it first, e.g. gdalwarp {flag}-r bilinear "
            "IN OUT.tif"
        )
    if spec.georef == "none":
        raise GeoreferenceError(
            f"{spec.path} has neither a CRS nor a geotransform (no world file found either), so "
            "its pixels cannot be placed on a map; georeference it first (e.g. gdal_translate -a_srs "
            "-a_ullr) or add a world file"
        )
    if spec.crs is None and assume_crs is None:
        raise GeoreferenceError(
            f"{spec.path} has no CRS, so outputs could not be placed on a map; "
            "pass --assume-crs EPSG:XXXX if you know it"
        )
    t = spec.transform
    if not math.isfinite(t.determinant) or abs(t.determinant) < 1e-300:
        raise GeoreferenceError(
            f"{spec.path} has a degenerate geotransform {tuple(t)[:6]} (its pixels have no "
            "area); fix its georeferencing, e.g. gdal_translate -a_ullr or gdal_edit.py -a_ullr"
        )


def check_dtype(
    spec: RasterSpec, card_range: tuple[float, float], input_range: tuple[float, float] | None
) -> None:
    """Refuse complex data; warn when the dtype cannot match the model's value range.

    Raises
    ------
    BandError
        For complex-valued rasters (e.g. SAR single-look complex).
    """
    dt = np.dtype(spec.dtype) if not spec.dtype.startswith("complex_int") else None
    if dt is None or dt.kind == "c":
        raise BandError(
            f"{spec.path} holds complex values ({spec.dtype}), which no imagery model reads; "
            "convert to amplitude first, e.g. gdal_translate -ot Float32 with a VRT pixel function"
        )
    if input_range is None and dt.kind in "ui" and card_range[1] <= 255 and dt.itemsize > 1:
        warnings.warn(
            f"{spec.path} is {spec.dtype} but the model expects values in "
            f"[{card_range[0]:g}, {card_range[1]:g}]; pass --input-range LOW,HIGH (e.g. 0,10000 "
            "for reflectance, 0,4095 for 12-bit) or predictions will be meaningless",
            GeosegWarning,
            stacklevel=3,
        )


def _model_tags(loaded: LoadedModel, cfg: PredictConfig, src: str) -> dict[str, str]:
    return {
        "GEOSEG_VERSION": __version__,
        "GEOSEG_MODEL": loaded.card.name,
        "GEOSEG_MODEL_SHA256": loaded.sha256,
        "GEOSEG_SOURCE": Path(src).name,
        "GEOSEG_TIME": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "GEOSEG_CLASSES": json.dumps(
            [
                {
                    "id": c.id,
                    "name": c.name,
                    "color": c.color,
                    "layer": c.layer,
                    "vectorize": c.vectorize,
                }
                for c in loaded.card.classes
            ]
        ),
        "GEOSEG_POSTPROCESS": json.dumps(loaded.card.postprocess),
        "GEOSEG_PARAMETERS": json.dumps(
            {
                "tile": cfg.tile or loaded.card.tile_size,
                "overlap": loaded.card.overlap if cfg.overlap is None else cfg.overlap,
                "bands": list(cfg.bands) if cfg.bands else None,
                "input_range": list(cfg.input_range) if cfg.input_range else None,
                "tta": cfg.tta,
                "precision": cfg.precision,
                "separate": cfg.separate and loaded.card.contact_class is not None,
            }
        ),
    }


class _BackgroundWriter:
    """Writes strips in a thread so the network never waits on compression or disk.

    :meth:`close` always waits for the thread, even when a signal handler raises
    (Ctrl-C, SIGTERM) while it waits: the caller aborts the writer afterwards,
    and closing a dataset the thread is still writing to would crash GDAL.
    """

    def __init__(self, write: Callable[[Strip], None]) -> None:
        self._q: queue.Queue[Strip | None] = queue.Queue(maxsize=2)
        self._write = write
        self._exc: BaseException | None = None
        self._stop = threading.Event()
        # Set by the thread as it ends.  Thread.join() cannot say that reliably: a
        # KeyboardInterrupt raised while it waits can leave is_alive() False for a thread
        # that still runs (CPython gh-90882).
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geoseg-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                strip = self._q.get()
                if strip is None:
                    return
                if self._exc is None and not self._stop.is_set():
                    try:
                        self._write(strip)
                    except BaseException as exc:  # re-raised in the producing thread
                        self._exc = exc
        finally:
            self._done.set()

    @property
    def finished(self) -> bool:
        """Whether the thread has ended."""
        return self._done.is_set()

    def put(self, strip: Strip) -> None:
        if self._exc is not None:
            raise self._exc
        self._q.put(strip)

    def close(self, abandon: bool = False) -> None:
        """Finish (or, with ``abandon``, skip) the queued strips and wait for the thread."""
        pending: BaseException | None = None
        if abandon:
            self._stop.set()
        while True:
            try:
                self._q.put(None)
                break
            except BaseException as exc:  # a signal while waiting for room: stop writing
                pending = pending or exc
                self._stop.set()
        while not self._done.is_set():
            try:
                self._done.wait(0.1)
            except BaseException as exc:
                pending = pending or exc
                self._stop.set()
        if pending is not None:
            raise pending
        if self._exc is not None and not abandon:
            raise self._exc


def make_predictor(loaded: LoadedModel, cfg: PredictConfig) -> Predictor:
    """The network runner every front end uses (CLI, batch workers, Python API, xarray).

    Parameters
    ----------
    loaded : LoadedModel
        The model and its card.
    cfg : PredictConfig
        Run options; ``device``, ``batch_size``, ``amp``, ``threads``, ``backend``,
        ``compile``, ``workers``, ``tta`` and ``precision`` decide the runner.

    Returns
    -------
    Predictor
    """
    return Predictor(
        loaded,
        loaded.card,
        device=cfg.device,
        batch_size=cfg.batch_size,
        amp=cfg.amp,
        threads=cfg.threads,
        backend=cfg.backend,
        compile=cfg.compile,
        workers=cfg.workers,
        tta=cfg.tta,
        precision=cfg.precision,
    )


def crop_strips(
    strips: Iterator[Strip], core: PixelWindow, origin: tuple[int, int]
) -> Iterator[Strip]:
    """Cut grid-local strips down to the rows and columns of ``core`` (raster pixels)."""
    oy, ox = origin
    top, left = core.row_off - oy, core.col_off - ox
    out_row = 0
    for s in strips:
        a, b = max(s.row_off, top), min(s.row_off + s.classes.shape[0], top + core.height)
        if b <= a:
            continue
        rs = slice(a - s.row_off, b - s.row_off)
        cs = slice(left, left + core.width)
        yield Strip(
            out_row,
            s.classes[rs, cs],
            None if s.probs is None else s.probs[:, rs, cs],
            None if s.probs_f32 is None else s.probs_f32[:, rs, cs],
        )
        out_row += b - a


def model_window(region: PixelWindow, spec: RasterSpec, model: RasterSpec) -> PixelWindow:
    """The window of the model grid whose pixels the read-back of ``region`` uses.

    ``region`` is a window of the input grid (``spec``), ``model`` the same extent
    resampled to the model's pixel size (north-up, as
    :class:`~geoseg.io.read.RasterSource` builds it).  The result covers the
    region's extent with a margin of two model pixels (nearest classes and the
    bilinear kernel of the probabilities), clipped to the model grid.

    Raises
    ------
    ConfigError
        The input is rotated or sheared: its read-back goes through a warper
        whose approximations depend on the window, so a region would not equal
        the whole run.
    """
    t, mt = spec.transform, model.transform
    if t.b or t.d or mt.b or mt.d:
        raise ConfigError(
            f"{spec.path} has a rotated grid at another pixel size than the model's; regions of "
            "it cannot be resampled exactly as one run; warp it north-up first (gdalwarp -r "
            "bilinear IN OUT.tif), or set 'resample: never'"
        )
    x0, y0 = t * (region.col_off, region.row_off)
    x1, y1 = t * (region.col_off + region.width, region.row_off + region.height)
    c0, r0 = ~mt * (min(x0, x1), max(y0, y1))
    c1, r1 = ~mt * (max(x0, x1), min(y0, y1))
    margin = 2
    row0 = max(0, math.floor(r0) - margin)
    col0 = max(0, math.floor(c0) - margin)
    row1 = min(model.height, math.ceil(r1) + margin)
    col1 = min(model.width, math.ceil(c1) + margin)
    return PixelWindow(row0, col0, row1 - row0, col1 - col0)


def check_upsampling(src_m: float, model_m: float, resample: str, name: str) -> None:
    """Refuse, before any work, an input far coarser than the model's pixels.

    Raises
    ------
    ConfigError
        Under ``resample="auto"`` when ``src_m / model_m`` exceeds :data:`MAX_UPSAMPLE`,
        naming both pixel sizes and the ways out.

    Examples
    --------
    >>> check_upsampling(1.5, 1.0, "auto", "x.tif")
    >>> check_upsampling(28.5, 1.0, "force", "x.tif")
    >>> check_upsampling(28.5, 1.0, "auto", "x.tif")
    Traceback (most recent call last):
    ...
    geoseg.errors.ConfigError: x.tif has 28.5 m pixels, 28.5x coarser than the 1 m the model was trained at: it cannot see objects at that scale, and upsampling would cost 812x the pixels; use a model trained near 28.5 m, or --resample force to run anyway
    """
    ratio = src_m / model_m
    if resample == "auto" and ratio > MAX_UPSAMPLE:
        raise ConfigError(
            f"{name} has {src_m:.3g} m pixels, {ratio:.3g}x coarser than the {model_m:.3g} m the "
            f"model was trained at: it cannot see objects at that scale, and upsampling would "
            f"cost {ratio * ratio:.0f}x the pixels; use a model trained near {src_m:.3g} m, or "
            "--resample force to run anyway"
        )


def run_scene(
    src: str | Path,
    dst: str | Path,
    model: LoadedModel | str | Path,
    config: PredictConfig | None = None,
    progress: ProgressFn | None = None,
) -> RunStats:
    """Segment one raster into a class COG on the input's exact grid.

    Parameters
    ----------
    src : str or Path
        Input raster (anything GDAL reads).
    dst : str or Path
        Output class COG (uint8 class ids, colour table, nodata 255).
    model : LoadedModel, str or Path
        A loaded model, a checkpoint directory or a bundled model name.
    config : PredictConfig, optional
        Run options.
    progress : callable, optional
        ``progress(done, total)`` in tiles.

    Returns
    -------
    RunStats

    Raises
    ------
    GeosegError
        Subclasses for unreadable inputs, missing CRS, band mismatches,
        existing outputs and write failures; no partial output is left behind.
    """
    with gdal_env():
        with RasterSource(src, assume_crs=(config or PredictConfig()).assume_crs) as probe:
            georef = probe.spec.georef
        cfg = config or PredictConfig()
        if georef in ("gcps", "rpcs"):
            # No geotransform, but ground control points or RPCs: run on a north-up grid
            # warped from them; the outputs are on that grid (its CRS and transform).
            warped = (
                north_up_vrt(src)
                if georef == "gcps"
                else north_up_rpc(src, height=cfg.rpc_height, dem=cfg.rpc_dem)
            )
            with warped as grid:
                log.info("%s is placed by %s; warped north-up to %s", src, georef, grid)
                try:
                    return _run_scene(grid, dst, model, cfg, progress)
                except GeosegError as exc:
                    # Messages name the user's file, not the temporary grid.
                    if grid in str(exc):
                        raise type(exc)(str(exc).replace(grid, str(src))) from exc
                    raise
        return _run_scene(src, dst, model, cfg, progress)


def _run_scene(
    src: str | Path,
    dst: str | Path,
    model: LoadedModel | str | Path,
    cfg: PredictConfig,
    progress: ProgressFn | None,
) -> RunStats:
    t0 = time.perf_counter()
    dst = Path(dst)
    stats = RunStats()
    # Cheap checks first, so a bad path fails before a model is loaded.
    with RasterSource(src, assume_crs=cfg.assume_crs) as probe:
        spec = probe.spec
    check_georeference(spec, cfg.assume_crs)
    for out in (dst, cfg.probabilities):
        if out is not None:
            check_output_path(out, overwrite=cfg.overwrite)
    loaded = model if isinstance(model, LoadedModel) else load_checkpoint(model, lazy=True)
    card = loaded.card
    bands = select_bands(spec, card.bands, cfg.bands)
    check_dtype(spec, card.input_range, cfg.input_range)
    stats.width, stats.height, stats.pixels = spec.width, spec.height, spec.width * spec.height
    stats.area_km2 = spec.area_km2

    resolution = None
    src_ps = spec.pixel_size_m
    if cfg.resample in ("auto", "force") and card.pixel_size_m and src_ps:
        ratio = src_ps / card.pixel_size_m
        check_upsampling(src_ps, card.pixel_size_m, cfg.resample, str(src))
        if abs(ratio - 1) > RESAMPLE_TOLERANCE:
            resolution = spec.res[0] * card.pixel_size_m / src_ps
            stats.resampled_to_m = card.pixel_size_m
            log.info(
                "input pixel size %.3g m differs from the model's %.3g m; resampling on the fly",
                src_ps,
                card.pixel_size_m,
            )

    predictor = make_predictor(loaded, cfg)
    tags = _model_tags(loaded, cfg, str(src))
    # What actually ran: the engine and the network's precision.
    tags["GEOSEG_ENGINE"] = f"{predictor.backend.name} {predictor.precision}"
    colormap = {c.id: c.rgb for c in card.classes}
    names = [c.name for c in card.classes]
    counts = np.zeros(256, dtype=np.int64)
    stream_stats = StreamStats()

    def consume(strips: Any, writer: RasterStripWriter) -> None:
        bg = _BackgroundWriter(lambda s: writer.write(s.row_off, s.classes, s.probs))
        try:
            for strip in strips:
                counts[:] += np.bincount(strip.classes.ravel(), minlength=256)
                bg.put(strip)
        except BaseException:
            bg.close(abandon=True)
            raise
        bg.close()

    n_readers = cfg.readers or default_readers(predictor.device)
    with contextlib.ExitStack() as handles:
        # One dataset handle per reader thread: GDAL handles are not thread-safe.
        sources = [
            handles.enter_context(
                RasterSource(src, bands=bands, resolution=resolution, assume_crs=cfg.assume_crs)
            )
            for _ in range(n_readers)
        ]
        reader = sources[0]
        rspec = reader.spec
        grid = make_grid(
            rspec.height,
            rspec.width,
            tile=cfg.tile or card.tile_size,
            overlap=card.overlap if cfg.overlap is None else cfg.overlap,
            stride=card.stride,
        )
        reads: list[Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]] = [
            s.read for s in sources
        ]
        out_transform, out_w, out_h = spec.transform, spec.width, spec.height
        model_core: PixelWindow | None = None
        if cfg.region is not None:
            # With resampling, the region of the model grid that covers the region
            # (plus a margin for the bilinear read-back) is computed instead.
            core = cfg.region
            if resolution is not None:
                core = model_core = model_window(cfg.region, spec, rspec)
            grid = region_grid(grid, core)
            oy, ox = grid.origin

            def shifted(
                source: RasterSource,
            ) -> Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]:
                def read_region(w: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
                    return source.read(
                        PixelWindow(w.row_off + oy, w.col_off + ox, w.height, w.width)
                    )

                return read_region

            reads = [shifted(s) for s in sources]

            out_transform = spec.transform * Affine.translation(core.col_off, core.row_off)
            out_w, out_h = core.width, core.height
            stats.width, stats.height, stats.pixels = out_w, out_h, out_w * out_h
            if stats.area_km2 is not None:
                stats.area_km2 *= out_w * out_h / (spec.width * spec.height)
        blend_device = predictor.blend_device
        strips = stream_segment(
            grid,
            reads,
            lambda d, v: normalize(d, v, card, cfg.input_range),
            predictor if blend_device is None else predictor.predict_on_device,
            card.n_classes,
            batch_size=predictor.batch_size,
            probabilities=cfg.probabilities is not None,
            progress=progress,
            stats=stream_stats,
            blend_device=blend_device,
            workers=predictor.workers,
            contact_class=card.contact_class if cfg.separate else None,
        )
        if cfg.region is not None:
            strips = crop_strips(strips, model_core or cfg.region, grid.origin)
        crs = rspec.crs
        if resolution is None:
            with RasterStripWriter(
                dst,
                crs=crs,
                transform=out_transform,
                width=out_w,
                height=out_h,
                colormap=colormap,
                class_names=names,
                probabilities=cfg.probabilities,
                overwrite=cfg.overwrite,
                tags=tags,
            ) as writer:
                consume(strips, writer)
        else:
            from geoseg.io.resample import resample_back

            counts[:] = 0
            resample_back(
                strips,
                model_spec=rspec,
                source=src,
                bands=bands,
                dst=dst,
                probabilities=cfg.probabilities,
                colormap=colormap,
                class_names=names,
                overwrite=cfg.overwrite,
                tags=tags,
                counts=counts,
                assume_crs=cfg.assume_crs,
                model_window=model_core,
                region=cfg.region,
            )

    stats.tiles, stats.skipped_tiles = stream_stats.tiles, stream_stats.skipped_tiles
    stats.class_pixels = {c.id: int(counts[c.id]) for c in card.classes}
    stats.valid_pixels = int(sum(stats.class_pixels.values()))
    if stats.valid_pixels == 0:
        warnings.warn(
            f"{src} holds no valid pixel (all nodata); the outputs are valid but empty",
            AllNodataWarning,
            stacklevel=2,
        )
    stats.outputs = [str(dst)] + ([str(cfg.probabilities)] if cfg.probabilities else [])
    stats.elapsed_s = time.perf_counter() - t0
    stats.peak_rss_mb = peak_rss_mb()
    return stats


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"3,2,1"`` into ``(3, 2, 1)``.

    >>> parse_bands("3,2,1")
    (3, 2, 1)
    """
    if text is None or not text.strip():
        return None
    try:
        out = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise ConfigError(
            f"--bands must be comma-separated band numbers like 3,2,1, got {text!r}"
        ) from exc
    if any(b < 1 for b in out):
        raise ConfigError(f"--bands are 1-based band numbers, got {text!r}")
    return out


def parse_range(text: str | None) -> tuple[float, float] | None:
    """Parse ``"0,10000"`` into ``(0.0, 10000.0)``."""
    if text is None:
        return None
    parts: Sequence[str] = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError as exc:
        raise ConfigError(f"--input-range must be LOW,HIGH like 0,10000, got {text!r}") from exc
    return lo, hi


# --- vectorization ------------------------------------------------------------------------------


#: Most clean-up processes of one vectorization.
MAX_CLEANUP_WORKERS = 8


def default_cleanup_workers() -> int:
    """Clean-up processes the CLI asks for: one per usable core, up to 8."""
    from geoseg.infer.backends import default_threads

    return max(1, min(default_threads(), MAX_CLEANUP_WORKERS))


def _usable_cleanup_workers(requested: int | None) -> int:
    """``requested`` (default 1), or 1 in a daemonic process, which may not start children."""
    import multiprocessing

    n = requested or 1
    if n > 1 and multiprocessing.current_process().daemon:
        log.info(
            "clean-up in this process: a daemonic process (a dask worker) may not start others"
        )
        return 1
    return n


class _Cleaner:
    """Clean batches of polygons in worker processes, handing results back in submission order.

    The first full batch is cleaned in the caller and the pool starts only when
    a second full one comes, so a raster with few polygons never starts
    processes; at most ``2 * workers`` batches are in flight, which bounds
    memory.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None
        self._submitted = 0
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()

    def submit(self, key: Any, *args: Any, full: bool = True) -> list[tuple[Any, Any]]:
        """Queue ``clean_and_measure(*args)``; return the results now due, oldest first.

        ``full``: a whole batch (the raster goes on); the pool starts at the
        second one, never for the short batches flushed at the end.
        """
        if self.workers > 1 and self._pool is None and full and self._submitted:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: a clean process, not a fork of this multi-threaded one (GDAL).
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("forkserver")
            )
        if self._pool is None:
            self._queue.append((key, _Done(clean_and_measure(*args))))
        else:
            self._queue.append((key, self._pool.submit(clean_and_measure, *args)))
        self._submitted += full
        due = []
        while self._queue and (len(self._queue) > 2 * self.workers or self._queue[0][1].done()):
            k, fut = self._queue.popleft()
            due.append((k, _result(fut)))
        return due

    def drain(self) -> list[tuple[Any, Any]]:
        """Every remaining result, in submission order."""
        due = [(k, _result(fut)) for k, fut in self._queue]
        self._queue.clear()
        return due

    def close(self, *, wait: bool = True) -> None:
        """Stop the pool; after a failure (``wait=False``) kill the workers mid-batch too.

        ``shutdown(cancel_futures=True)`` only cancels batches not yet started, and
        the interpreter would wait at exit for those running: an interrupted or
        failed run must not hang for the longest batch in flight.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not wait:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.terminate()
        pool.shutdown(wait=wait, cancel_futures=True)


def _result(fut: Any) -> Any:
    """A clean-up result; a worker that died (killed for memory?) is one clear error."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool as exc:
        raise GeosegError(
            "a clean-up worker process died (out of memory?); rerun with one clean-up worker "
            "(workers=1, 'geoseg vectorize --cleanup-workers 1')"
        ) from exc


@dataclass(frozen=True)
class _Done:
    """A result computed in the caller, shaped like a finished future."""

    value: Any

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self.value


@dataclass(frozen=True)
class VectorizeConfig:
    """Options of one vectorization run.

    Parameters
    ----------
    confidence : Path, optional
        Probability raster (one band per class, or one confidence band) for the
        polygons' mean confidence.
    cleanup : mapping of class name to CleanupParams, optional
        Overrides of the clean-up per class (else the model card's, else defaults
        by class kind: buildings regularized, vegetation smoothed, cropland simplified).
    dst_crs : str, optional
        Write polygons in this CRS instead of the raster's.
    classes : tuple of ClassInfo, optional
        Class names/colours/layers when the raster does not carry them (``--model``).
    overwrite : bool
        Replace an existing output.
    block_rows : int
        Rows per polygonization strip.
    batch : int
        Polygons per class cleaned and written at once.
    workers : int, optional
        Processes that clean batches side by side (the polygonizer runs in the
        caller meanwhile); default 1 (the CLI passes
        :func:`default_cleanup_workers`: one per core up to 8), and always 1
        inside a daemonic process (a dask worker), which may not start
        children.  The output is the same whatever the number: batches are
        written in the order they were formed.  More than 1 starts worker
        processes with ``forkserver``, which imports the caller's main module
        again: scripts need an ``if __name__ == "__main__":`` guard.
    """

    confidence: Path | None = None
    cleanup: Mapping[str, CleanupParams] | None = None
    dst_crs: str | None = None
    classes: tuple[ClassInfo, ...] | None = None
    overwrite: bool = False
    block_rows: int = 512
    batch: int = 2000
    workers: int | None = None

    @classmethod
    def from_dict(cls, data: Any, *, section: str = "vectorize") -> VectorizeConfig:
        """Options from a mapping (a config file's ``vectorize:`` section).

        ``cleanup`` maps class names to clean-up settings
        (:meth:`CleanupParams.from_dict`); ``classes`` is set by code only.
        Errors name the field (``vectorize.block_rows must be an integer``).

        Examples
        --------
        >>> cfg = VectorizeConfig.from_dict({"cleanup": {"building": {"min_area_m2": 8}}})
        >>> cfg.cleanup["building"].min_area_m2
        8
        """

        def cleanup(value: Any, where: str) -> dict[str, CleanupParams]:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where} must map class names to settings, e.g. 'building: "
                    "{style: regularize}'",
                    field="cleanup",
                )
            out = {}
            for name, options in value.items():
                try:
                    out[str(name)] = CleanupParams.from_dict(options or {})
                except ConfigError as exc:
                    raise ConfigError(f"{where}.{name}: {exc}", field="cleanup") from exc
            return out

        return from_mapping(
            cls, data, section=section, exclude=("classes",), convert={"cleanup": cleanup}
        )

    @classmethod
    def from_yaml(cls, text: str, *, section: str = "vectorize") -> VectorizeConfig:
        """Options from YAML text holding the mapping of :meth:`from_dict`."""
        return cls.from_dict(load_yaml_mapping(text, section), section=section)

    def __post_init__(self) -> None:
        if self.block_rows < 1:
            raise ConfigError(f"block_rows must be >= 1, got {self.block_rows}", field="block_rows")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}", field="batch")
        if self.workers is not None and not 1 <= self.workers <= MAX_CLEANUP_WORKERS:
            raise ConfigError(
                f"workers must be from 1 to {MAX_CLEANUP_WORKERS}, got {self.workers}",
                field="workers",
            )


@dataclass
class VectorStats:
    """What a vectorization run produced."""

    pixels: int = 0
    polygons: dict[str, int] = field(default_factory=dict)
    area_m2: dict[str, float] = field(default_factory=dict)
    dropped: int = 0
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: polygons per layer, throughput, peak memory."""
        total = sum(self.polygons.values())
        per = ", ".join(f"{k} {v:,}" for k, v in self.polygons.items())
        rate = self.pixels / 1e6 / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{total:,} polygons ({per}), {self.elapsed_s:.1f} s, {rate:.2f} Mpx/s, "
            f"peak memory {self.peak_rss_mb:.0f} MB"
        )


def _style_for(name: str) -> str:
    n = name.lower()
    if "build" in n or "roof" in n or "house" in n:
        return "regularize"
    if any(k in n for k in ("veg", "tree", "forest", "shrub", "canopy", "wood")):
        return "smooth"
    return "simplify"


def cleanup_for(
    cls: ClassInfo, card_post: Mapping[str, Any], override: Mapping[str, CleanupParams] | None
) -> CleanupParams:
    """Clean-up of one class: explicit override, else the card's, else a default by kind."""
    if override and cls.name in override:
        return override[cls.name]
    if cls.name in card_post:
        return CleanupParams.from_dict(card_post[cls.name])
    return default_cleanup(_style_for(cls.name))


#: Longitude span (degrees) beyond which one metric CRS cannot serve a whole raster.
ZONE_SPAN_DEG = 6.0


def _lonlat(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Representative points of ``geoms`` as an (n, 2) lon/lat array."""
    import pyproj
    import shapely

    pts = shapely.get_coordinates(shapely.point_on_surface(geoms))
    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if src.is_geographic:
        return pts
    tr = pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    return np.column_stack(tr.transform(pts[:, 0], pts[:, 1]))


def _geodesic(geoms: list[Any], crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m²) and perimeters (m) on the WGS 84 ellipsoid, for any extent."""
    import pyproj
    import shapely

    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    tr = (
        None if src.is_geographic else pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    )
    geod = pyproj.Geod(ellps="WGS84")
    areas, perims = np.zeros(len(geoms)), np.zeros(len(geoms))
    for i, g in enumerate(geoms):
        if g is None:
            continue
        if tr is not None:
            g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        a, p = geod.geometry_area_perimeter(g)
        areas[i], perims[i] = abs(a), p
    return areas, perims


def clean_and_measure(
    geoms: list[Any], params: CleanupParams, crs: Any, bounds: tuple[float, float, float, float]
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Clean polygons and measure them in metres, whatever the raster's extent.

    A raster spanning more than a UTM zone (world or continental mosaics in
    EPSG:4326 or 3857) is handled zone by zone: each polygon is cleaned in the
    UTM zone of its representative point.  Polygons too large for any
    transverse Mercator zone are kept as they are (made valid) and measured on
    the ellipsoid.  Cleaned polygons are clipped to the raster's ``bounds``.

    Returns
    -------
    cleaned, areas_m2, perimeters_m, origin
        One entry per input (``None`` where dropped; NaN measures there), except
        that with ``params.split_neck_m`` a polygon cut into pieces gives one
        entry per piece; ``origin`` holds the input index of every entry.
    """
    import shapely

    from geoseg.vectorize import area_perimeter_m, metric_frame, polygonal

    footprint = shapely.box(*bounds)
    n = len(geoms)
    cleaned: list[Any] = [None] * n
    areas, perims = np.full(n, np.nan), np.full(n, np.nan)
    arr = np.array(geoms, dtype=object)
    lonlat = _lonlat(arr, crs)
    frame = metric_frame(crs, bounds)
    wide = not frame.target.equals(frame.source) and (
        np.ptp(lonlat[:, 0]) > ZONE_SPAN_DEG if n else False
    )
    zones = (
        np.floor((lonlat[:, 0] + 180.0) / ZONE_SPAN_DEG).astype(int) if wide else np.zeros(n, int)
    )
    for zone in np.unique(zones):
        idx = np.flatnonzero(zones == zone)
        part = arr[idx]
        b = shapely_total_bounds(part) if wide else bounds
        try:
            with np.errstate(all="ignore"):
                out = clean_geometries(list(part), params, crs=crs, bounds=b)
                # Smoothing, squaring and the round trip through a metric CRS may
                # nudge border vertices past the raster; polygons stay inside it.
                out = [
                    g
                    if g is None or footprint.contains(g)
                    else polygonal(g.intersection(footprint))
                    for g in out
                ]
                kept = np.array([g for g in out if g is not None], dtype=object)
                a, p = area_perimeter_m(kept, crs, b) if len(kept) else (np.zeros(0), np.zeros(0))
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(p))):
                raise ValueError("non-finite measures")
        except Exception as exc:  # GEOS rejects coordinates a far-off zone turned to inf
            log.debug("zone %s: falling back to geodesic measures (%s)", zone, exc)
            out = [polygonal(g) for g in part]
            kept = np.array([g for g in out if g is not None], dtype=object)
            a, p = _geodesic(list(kept), crs)
        j = 0
        for k, g in zip(idx, out, strict=True):
            cleaned[k] = g
            if g is not None:
                areas[k], perims[k] = a[j], p[j]
                j += 1
    if params.split_neck_m > 0:
        return _separate_pieces(cleaned, areas, perims, crs, bounds)
    return cleaned, areas, perims, np.arange(n)


def _separate_pieces(
    cleaned: list[Any],
    areas: np.ndarray,
    perims: np.ndarray,
    crs: Any,
    bounds: tuple[float, float, float, float],
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """One entry per piece of the polygons the clean-up cut at their necks, measured again."""
    from geoseg.vectorize import area_perimeter_m

    out: list[Any] = []
    origin: list[int] = []
    split: list[bool] = []
    for k, g in enumerate(cleaned):
        parts = list(g.geoms) if g is not None and g.geom_type == "MultiPolygon" else [g]
        out += parts
        origin += [k] * len(parts)
        split += [len(parts) > 1] * len(parts)
    if len(out) == len(cleaned):
        return cleaned, areas, perims, np.arange(len(cleaned))
    src = np.array(origin)
    new_areas, new_perims = areas[src].copy(), perims[src].copy()
    redo = np.flatnonzero(split)
    pieces = np.empty(len(redo), dtype=object)
    pieces[:] = [out[i] for i in redo]
    try:
        a, p = area_perimeter_m(pieces, crs, bounds)
    except Exception as exc:  # far-off zones: measure on the ellipsoid
        log.debug("falling back to geodesic measures of split pieces (%s)", exc)
        a, p = _geodesic(list(pieces), crs)
    new_areas[redo], new_perims[redo] = a, p
    return out, new_areas, new_perims, src


def shapely_total_bounds(geoms: np.ndarray) -> tuple[float, float, float, float]:
    """Bounds of an array of geometries."""
    import shapely

    b = shapely.total_bounds(geoms)
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


def _classes_from_raster(
    tags: Mapping[str, str], cmap: Mapping[int, tuple[int, int, int]]
) -> tuple[ClassInfo, ...]:
    if "GEOSEG_CLASSES" in tags:
        try:
            return tuple(ClassInfo.from_dict(d) for d in json.loads(tags["GEOSEG_CLASSES"]))
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"the class raster's GEOSEG_CLASSES tag is malformed ({exc}); pass --model"
            ) from exc
    if "CLASS_NAMES" in tags:
        out = []
        for i, name in enumerate(tags["CLASS_NAMES"].split(",")):
            r, g, b = cmap.get(i, (128, 128, 128))
            out.append(ClassInfo(i, name, f"#{r:02x}{g:02x}{b:02x}", vectorize=i != 0))
        return tuple(out)
    raise ConfigError(
        "the class raster does not say which class is which (no GEOSEG_CLASSES or CLASS_NAMES tag); "
        "pass --model with the model that produced it"
    )


def run_vectorize(
    classes_path: str | Path,
    dst: str | Path,
    config: VectorizeConfig | None = None,
    progress: ProgressFn | None = None,
) -> VectorStats:
    """Polygonize a class raster into one styled layer per class, seam-exact and streaming.

    Parameters
    ----------
    classes_path : str or Path
        Class raster (e.g. from :func:`run_scene`), nodata 255.
    dst : str or Path
        Output vector file: ``.gpkg`` (styled layers, metadata), ``.fgb`` or ``.geojson``.
    config : VectorizeConfig, optional
    progress : callable, optional
        ``progress(rows_done, rows_total)``.

    Returns
    -------
    VectorStats

    Raises
    ------
    GeosegError
        Unreadable raster, missing class information, existing output, write failures.
    """
    cfg = config or VectorizeConfig()
    with gdal_env():
        return _run_vectorize(Path(classes_path), Path(dst), cfg, progress)


def _run_vectorize(
    classes_path: Path, dst: Path, cfg: VectorizeConfig, progress: ProgressFn | None
) -> VectorStats:
    import pyproj
    import shapely

    from geoseg.io.read import iter_confidence_strips, iter_strips, read_tags
    from geoseg.io.write_vector import LayerSpec, VectorWriter
    from geoseg.vectorize import polygonize_strips

    t0 = time.perf_counter()
    stats = VectorStats()
    tags, cmap, spec = read_tags(classes_path)
    if spec.crs is None:
        raise GeoreferenceError(f"{classes_path} has no CRS; polygons could not be placed on a map")
    check_output_path(dst, overwrite=cfg.overwrite)
    classes = cfg.classes or _classes_from_raster(tags, cmap)
    card_post: Mapping[str, Any] = json.loads(tags.get("GEOSEG_POSTPROCESS", "{}") or "{}")
    wanted = [c for c in classes if c.vectorize]
    params = {c.id: cleanup_for(c, card_post, cfg.cleanup) for c in wanted}
    skip = [c.id for c in classes if not c.vectorize]
    bounds = spec.bounds
    out_crs = (
        pyproj.CRS.from_user_input(cfg.dst_crs)
        if cfg.dst_crs
        else pyproj.CRS.from_user_input(spec.crs.to_wkt())
    )
    to_out = None
    if cfg.dst_crs:
        tr = pyproj.Transformer.from_crs(
            pyproj.CRS.from_user_input(spec.crs.to_wkt()), out_crs, always_xy=True
        )
        to_out = tr.transform
    layers = [LayerSpec(c.layer, c.id, c.name, c.color) for c in wanted]
    by_id = {c.id: c for c in wanted}
    metadata = {
        "geoseg_version": __version__,
        "model": tags.get("GEOSEG_MODEL", "unknown"),
        "model_sha256": tags.get("GEOSEG_MODEL_SHA256", "unknown"),
        "input": tags.get("GEOSEG_SOURCE", classes_path.name),
        "class_raster": classes_path.name,
        "predict_parameters": tags.get("GEOSEG_PARAMETERS", "{}"),
        "parameters": json.dumps(
            {
                "cleanup": {by_id[k].name: asdict(v) for k, v in params.items()},
                "dst_crs": cfg.dst_crs,
                "confidence": cfg.confidence.name if cfg.confidence else None,
            }
        ),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    source = tags.get("GEOSEG_SOURCE", classes_path.name)
    pending: dict[int, list[tuple[Any, float | None]]] = {c.id: [] for c in wanted}
    stats.polygons = {c.layer: 0 for c in wanted}
    stats.area_m2 = {c.layer: 0.0 for c in wanted}
    stats.pixels = spec.width * spec.height
    rows_total = spec.height

    def strips() -> Iterator[tuple[int, np.ndarray]]:
        for row_off, arr in iter_strips(classes_path, rows=cfg.block_rows):
            yield row_off, arr
            if progress is not None:
                progress(row_off + arr.shape[0], rows_total)

    confidence = (
        iter_confidence_strips(cfg.confidence, rows=cfg.block_rows) if cfg.confidence else None
    )

    cleaner = _Cleaner(_usable_cleanup_workers(cfg.workers))

    def flush(writer: VectorWriter, class_id: int) -> None:
        items = pending[class_id]
        if not items:
            return
        due = cleaner.submit(
            (class_id, [c for _, c in items]),
            [g for g, _ in items],
            params[class_id],
            spec.crs,
            bounds,
            full=len(items) >= cfg.batch,
        )
        pending[class_id] = []
        for key, result in due:
            write(writer, key, result)

    def write(writer: VectorWriter, key: tuple[int, list[float | None]], result: Any) -> None:
        class_id, confs = key
        cleaned, areas_all, perims_all, origin = result
        cls = by_id[class_id]
        idx = [i for i, g in enumerate(cleaned) if g is not None]
        keep = [(cleaned[i], confs[origin[i]]) for i in idx]
        stats.dropped += len(confs) - len({int(origin[i]) for i in idx})
        if not keep:
            return
        geoms = np.array([g for g, _ in keep], dtype=object)
        areas, perims = areas_all[idx], perims_all[idx]
        if to_out is not None:
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_out(xy[:, 0], xy[:, 1])))
        writer.write(
            cls.layer,
            geoms,
            {
                "class_id": [cls.id] * len(keep),
                "class_name": [cls.name] * len(keep),
                "area_m2": areas.tolist(),
                "perimeter_m": perims.tolist(),
                "confidence": [c for _, c in keep],
                "source": [source] * len(keep),
            },
        )
        stats.polygons[cls.layer] += len(keep)
        stats.area_m2[cls.layer] += float(np.sum(areas))

    with VectorWriter(
        dst, crs=out_crs, layers=layers, metadata=metadata, overwrite=cfg.overwrite
    ) as writer:
        try:
            for rec in polygonize_strips(
                strips(), spec.transform, nodata=255, skip_values=skip, confidence=confidence
            ):
                if rec.value not in pending:
                    continue
                conf = rec.mean_confidence if cfg.confidence else None
                pending[rec.value].append(
                    (rec.geometry, None if conf is None or not math.isfinite(conf) else conf)
                )
                if len(pending[rec.value]) >= cfg.batch:
                    flush(writer, rec.value)
            for class_id in pending:
                flush(writer, class_id)
            for key, result in cleaner.drain():
                write(writer, key, result)
        except BaseException:
            cleaner.close(wait=False)
            raise
        cleaner.close()
        stats.outputs = sorted({str(p) for p in writer.outputs.values()})
    stats.elapsed_s = time.perf_counter() - t0
    stats.peak_rss_mb = peak_rss_mb()
    return stats
