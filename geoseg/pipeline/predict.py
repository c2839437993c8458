"""The raster stage: one scene read tile by tile into a class COG on its exact grid.

:func:`run_scene` checks the input and the outputs before any work, builds the
network runner every front end shares (:func:`make_predictor`), streams the raster
through the model, blends overlapping tiles and writes a class COG (and optionally
probabilities) on exactly the input's grid, resampling to the model's pixel size and
back when they differ.  Memory stays bounded by the raster width times the tile size.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from geoseg.models.checkpoint import LoadedModel, load_checkpoint
from geoseg.settings import from_mapping, load_yaml_mapping
from geoseg.tiling import make_grid, model_window, region_grid
from geoseg.types import PixelWindow

if TYPE_CHECKING:
    from geoseg.pipeline.instances import InstanceVectors

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
    #: The polygons an instance model's run wrote itself (a VectorStats), else None.
    vector: Any = None

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
            "pass assume_crs='EPSG:XXXX' if you know it"
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
            f"[{card_range[0]:g}, {card_range[1]:g}]; pass input_range=LOW,HIGH (e.g. 0,10000 "
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
    geoseg.errors.ConfigError: x.tif has 28.5 m pixels, 28.5x coarser than the 1 m the model was trained at: it cannot see objects at that scale, and upsampling would cost 812x the pixels; use a model trained near 28.5 m, or resample='force' to run anyway
    """
    ratio = src_m / model_m
    if resample == "auto" and ratio > MAX_UPSAMPLE:
        raise ConfigError(
            f"{name} has {src_m:.3g} m pixels, {ratio:.3g}x coarser than the {model_m:.3g} m the "
            f"model was trained at: it cannot see objects at that scale, and upsampling would "
            f"cost {ratio * ratio:.0f}x the pixels; use a model trained near {src_m:.3g} m, or "
            "resample='force' to run anyway"
        )


def run_scene(
    src: str | Path,
    dst: str | Path,
    model: LoadedModel | str | Path,
    config: PredictConfig | None = None,
    progress: ProgressFn | None = None,
    *,
    instance_vectors: InstanceVectors | None = None,
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
    instance_vectors : InstanceVectors, optional
        With an instance model (``task: instance``): also write its polygons,
        with their scores, there (see :mod:`geoseg.pipeline.instances`); their
        statistics are ``RunStats.vector``.  Ignored for semantic models, whose
        polygons come from :func:`~geoseg.pipeline.run_vectorize`.

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
                    return execute_scene(
                        plan_scene(grid, dst, model, cfg), progress, instance_vectors
                    )
                except GeosegError as exc:
                    # Messages name the user's file, not the temporary grid.
                    if grid in str(exc):
                        raise type(exc)(str(exc).replace(grid, str(src))) from exc
                    raise
        return execute_scene(plan_scene(src, dst, model, cfg), progress, instance_vectors)


@dataclass(frozen=True)
class ScenePlan:
    """What :func:`plan_scene` decided, before any work, for one scene.

    Attributes
    ----------
    src : str
        The raster to read (a warped grid for GCP/RPC rasters).
    dst : Path
        The class COG to write.
    cfg : PredictConfig
        Run options.
    spec : RasterSpec
        The input's grid.
    loaded : LoadedModel
        The model (weights loaded lazily, on first use).
    bands : tuple of int
        1-based raster bands feeding the model, in its band order.
    resolution : float or None
        Pixel size (CRS units) of the model grid the network runs on, when the
        input is resampled; None to run on the input's own pixels.
    started : float
        ``time.perf_counter()`` when planning began (the run's clock).
    """

    src: str
    dst: Path
    cfg: PredictConfig
    spec: RasterSpec
    loaded: LoadedModel
    bands: tuple[int, ...]
    resolution: float | None
    started: float


def plan_scene(
    src: str | Path, dst: str | Path, model: LoadedModel | str | Path, cfg: PredictConfig
) -> ScenePlan:
    """Check everything about one scene that can be checked before any work.

    The input's georeferencing, the outputs (existing, writable), the model card,
    the band choice, the data type and the pixel-size policy; cheap checks first,
    so a bad path fails before a model is loaded.  Nothing is written.

    Raises
    ------
    GeosegError
        The subclass that names what is wrong and how to fix it.
    """
    t0 = time.perf_counter()
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
    resolution = None
    src_ps = spec.pixel_size_m
    if cfg.resample in ("auto", "force") and card.pixel_size_m and src_ps:
        ratio = src_ps / card.pixel_size_m
        check_upsampling(src_ps, card.pixel_size_m, cfg.resample, str(src))
        if abs(ratio - 1) > RESAMPLE_TOLERANCE:
            resolution = spec.res[0] * card.pixel_size_m / src_ps
            log.info(
                "input pixel size %.3g m differs from the model's %.3g m; resampling on the fly",
                src_ps,
                card.pixel_size_m,
            )
    return ScenePlan(str(src), Path(dst), cfg, spec, loaded, tuple(bands), resolution, t0)


def _region_reads(
    grid: Any,
    sources: Sequence[RasterSource],
    region: PixelWindow,
    spec: RasterSpec,
    model: RasterSpec,
    resolution: float | None,
) -> tuple[Any, list[Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]], PixelWindow | None]:
    """The tiles and readers that compute `region` exactly as the whole run does.

    Returns the whole run's tiles that touch the region (:func:`region_grid`), one
    reader per source shifted to that sub-grid, and, when the network runs on a
    resampled grid, the window of that grid computed instead (the region's extent
    plus a margin for the read-back, :func:`model_window`; None otherwise).
    """
    core = region if resolution is None else model_window(region, spec, model)
    sub = region_grid(grid, core)
    oy, ox = sub.origin

    def shifted(source: RasterSource) -> Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]:
        def read_region(w: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
            return source.read(PixelWindow(w.row_off + oy, w.col_off + ox, w.height, w.width))

        return read_region

    return sub, [shifted(s) for s in sources], None if resolution is None else core


def execute_scene(
    plan: ScenePlan,
    progress: ProgressFn | None = None,
    instance_vectors: InstanceVectors | None = None,
) -> RunStats:
    """Run a planned scene: stream it through the network and write the class COG.

    Parameters
    ----------
    plan : ScenePlan
        From :func:`plan_scene`.
    progress : callable, optional
        ``progress(done, total)`` in tiles.
    instance_vectors : InstanceVectors, optional
        See :func:`run_scene`.

    Returns
    -------
    RunStats
    """
    src, dst, cfg, spec, loaded = plan.src, plan.dst, plan.cfg, plan.spec, plan.loaded
    card, bands, resolution, t0 = loaded.card, list(plan.bands), plan.resolution, plan.started
    stats = RunStats()
    stats.width, stats.height, stats.pixels = spec.width, spec.height, spec.width * spec.height
    stats.area_km2 = spec.area_km2
    if resolution is not None:
        stats.resampled_to_m = card.pixel_size_m
    if card.task == "instance":
        from geoseg.extras import require
        from geoseg.pipeline.instances import execute_instances

        require("torch", f"{card.name}, an instance model ({card.architecture}),")

        tags = _model_tags(loaded, cfg, str(src))
        stats.vector = execute_instances(plan, stats, tags, progress, instance_vectors)
        _finish_stats(stats, card, src, t0)
        return stats

    predictor = make_predictor(loaded, cfg)
    tags = _model_tags(loaded, cfg, str(src))
    # What actually ran: the engine and the network's precision.
    tags["GEOSEG_ENGINE"] = f"{predictor.backend.name} {predictor.precision}"
    counts = np.zeros(256, dtype=np.int64)
    stream_stats = StreamStats()
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
            region = cfg.region
            grid, reads, model_core = _region_reads(grid, sources, region, spec, rspec, resolution)
            out_transform = spec.transform * Affine.translation(region.col_off, region.row_off)
            out_w, out_h = region.width, region.height
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
        _write_classes(plan, strips, rspec, (out_transform, out_w, out_h), tags, counts, model_core)

    stats.tiles, stats.skipped_tiles = stream_stats.tiles, stream_stats.skipped_tiles
    stats.class_pixels = {c.id: int(counts[c.id]) for c in card.classes}
    stats.outputs = [str(dst)] + ([str(cfg.probabilities)] if cfg.probabilities else [])
    _finish_stats(stats, card, src, t0)
    return stats


def _write_classes(
    plan: ScenePlan,
    strips: Iterator[Strip],
    rspec: RasterSpec,
    out_grid: tuple[Affine, int, int],
    tags: dict[str, str],
    counts: np.ndarray,
    model_core: PixelWindow | None,
) -> None:
    """Write the class COG (and probabilities) from the finished strips, counting classes.

    On the input's own pixels the strips are written as they come, in a background
    thread; on a resampled model grid they are brought back to the input's grid
    (:func:`geoseg.io.resample.resample_back`), which counts the classes it writes.
    """
    cfg, card = plan.cfg, plan.loaded.card
    colormap = {c.id: c.rgb for c in card.classes}
    names = [c.name for c in card.classes]
    if plan.resolution is not None:
        from geoseg.io.resample import resample_back

        counts[:] = 0
        resample_back(
            strips,
            model_spec=rspec,
            source=plan.src,
            bands=list(plan.bands),
            dst=plan.dst,
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
        return
    transform, width, height = out_grid
    with RasterStripWriter(
        plan.dst,
        crs=rspec.crs,
        transform=transform,
        width=width,
        height=height,
        colormap=colormap,
        class_names=names,
        probabilities=cfg.probabilities,
        overwrite=cfg.overwrite,
        tags=tags,
    ) as writer:
        bg = _BackgroundWriter(lambda s: writer.write(s.row_off, s.classes, s.probs))
        try:
            for strip in strips:
                counts[:] += np.bincount(strip.classes.ravel(), minlength=256)
                bg.put(strip)
        except BaseException:
            bg.close(abandon=True)
            raise
        bg.close()


def _finish_stats(stats: RunStats, card: Any, src: str, t0: float) -> None:
    """Valid pixels (warning when there are none), time and peak memory of a finished run."""
    stats.valid_pixels = int(sum(stats.class_pixels.values()))
    if stats.valid_pixels == 0:
        warnings.warn(
            f"{src} holds no valid pixel (all nodata); the outputs are valid but empty",
            AllNodataWarning,
            stacklevel=3,
        )
    stats.elapsed_s = time.perf_counter() - t0
    stats.peak_rss_mb = peak_rss_mb()


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
            f"bands must be comma-separated band numbers like 3,2,1, got {text!r}", field="bands"
        ) from exc
    if any(b < 1 for b in out):
        raise ConfigError(f"bands are 1-based band numbers, got {text!r}", field="bands")
    return out


def parse_range(text: str | None) -> tuple[float, float] | None:
    """Parse ``"0,10000"`` into ``(0.0, 10000.0)``."""
    if text is None:
        return None
    parts: Sequence[str] = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError as exc:
        raise ConfigError(
            f"input_range must be LOW,HIGH like 0,10000, got {text!r}", field="input_range"
        ) from exc
    return lo, hi
