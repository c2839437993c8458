"""What runs on a dask worker: one region to its files, with a per-process model cache.

Tasks carry the checkpoint's path and sha256, never the network: each worker
process loads a model once (:func:`cached_model`) and reuses it for every
region it runs.  A task writes its outputs atomically (a duplicate attempt
after a worker died just replaces them with the same pixels) and returns
paths, checksums and counts, never arrays.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.batch.manifest import OutputFile, append_line, now_iso, outputs_valid
from geoseg.errors import CheckpointError, GeosegWarning
from geoseg.models.checkpoint import LoadedModel, load_checkpoint
from geoseg.pipeline import PredictConfig, VectorizeConfig, run_scene, run_vectorize
from geoseg.types import PixelWindow

__all__ = ["RegionResult", "RegionTask", "cached_model", "remember_model", "run_region"]

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], LoadedModel] = {}
_LOCK = threading.Lock()


def cached_model(path: str, sha256: str) -> LoadedModel:
    """The model of checkpoint ``path`` whose weights hash to ``sha256``, loaded once per process.

    Only the most recent model is kept, so a long-lived worker serving
    batches with different models does not accumulate them.

    Raises
    ------
    CheckpointError
        If the weights on disk no longer match ``sha256`` (the checkpoint was
        replaced while the batch ran).
    """
    key = (str(path), sha256)
    with _LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            loaded = load_checkpoint(path, lazy=True)
            if loaded.sha256 != sha256:
                raise CheckpointError(
                    f"the weights of {path} changed after the run started (sha256 "
                    f"{loaded.sha256[:12]}… instead of {sha256[:12]}…); keep checkpoints "
                    "unchanged while they are in use and start the run again"
                )
            _MODELS.clear()
            _MODELS[key] = loaded
        return loaded


def remember_model(loaded: LoadedModel) -> None:
    """Put an already loaded model in this process's cache (under its path and sha256)."""
    with _LOCK:
        _MODELS.clear()
        _MODELS[(str(loaded.path), loaded.sha256)] = loaded


@dataclass(frozen=True)
class RegionTask:
    """Everything one region's task needs, small and picklable.

    ``raster`` (and ``vector``, for ``rasters`` work) are output paths relative
    to ``out_dir``; ``expected`` holds the checksums of a previous run's
    outputs, which are reused when they still match (``--resume``).
    """

    region: str
    src: str
    window: PixelWindow | None
    out_dir: str
    raster: str
    vector: str | None
    model_path: str
    model_sha256: str
    predict: PredictConfig
    vectorize: VectorizeConfig | None
    fingerprint: str
    run: str
    expected: dict[str, OutputFile] | None = None


@dataclass
class RegionResult:
    """What a region's task returns: ``status`` is ``done`` or ``reused`` (outputs kept)."""

    region: str
    status: str
    outputs: dict[str, OutputFile]
    worker: str = ""
    elapsed_s: float = 0.0
    pixels: int = 0
    tiles: int = 0
    valid_pixels: int = 0
    class_pixels: dict[int, int] = field(default_factory=dict)
    polygons: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid:{os.getpid()}"


def run_region(task: RegionTask) -> RegionResult:
    """Segment one region into its class COG (and, for whole rasters, its GeoPackage).

    Parameters
    ----------
    task : RegionTask

    Returns
    -------
    RegionResult
        Paths relative to the output directory with sha256 checksums, and
        pixel/polygon counts.

    Raises
    ------
    GeosegError
        Whatever :func:`~geoseg.pipeline.run_scene` or
        :func:`~geoseg.pipeline.run_vectorize` raise; dask retries the task.
    """
    out_dir = Path(task.out_dir)
    worker = _worker_address()
    if task.expected is not None and outputs_valid(out_dir, task.expected):
        return RegionResult(task.region, "reused", dict(task.expected), worker)
    append_line(
        out_dir / "attempts.jsonl",
        {
            "region": task.region,
            "run": task.run,
            "worker": worker,
            "pid": os.getpid(),
            "time": now_iso(),
        },
    )
    t0 = time.perf_counter()
    loaded = cached_model(task.model_path, task.model_sha256)
    raster = out_dir / task.raster
    raster.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeosegWarning)
        stats = run_scene(task.src, raster, loaded, task.predict)
        outputs = {"classes": OutputFile.of(out_dir, raster)}
        polygons = None
        if task.vector is not None and task.vectorize is not None:
            vector = out_dir / task.vector
            vstats = run_vectorize(raster, vector, task.vectorize)
            outputs["polygons"] = OutputFile.of(out_dir, vector)
            polygons = dict(vstats.polygons)
    ours = [w for w in caught if issubclass(w.category, GeosegWarning)]
    for w in caught:
        if not issubclass(w.category, GeosegWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return RegionResult(
        task.region,
        "done",
        outputs,
        worker,
        elapsed_s=time.perf_counter() - t0,
        pixels=stats.pixels,
        tiles=stats.tiles,
        valid_pixels=stats.valid_pixels,
        class_pixels=dict(stats.class_pixels),
        polygons=polygons,
        warnings=sorted({str(w.message) for w in ours}),
    )


def worker_versions() -> dict[str, Any]:
    """geoseg version and pid of the calling process (checked on every worker at connect)."""
    from geoseg import __version__

    return {"geoseg": __version__, "pid": os.getpid()}
