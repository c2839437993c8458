"""What runs on a dask worker: one region to its files, with a per-process model cache.

Tasks carry the checkpoint's path and sha256, never the network: each worker
process loads a model once (:func:`cached_model`) and reuses it for every
region it runs.  A region is predicted into its class COG and vectorized
right there: a whole raster into its GeoPackage, a window into its vector
part (finished polygons and raw seam pieces, :mod:`geoseg.batch.vector`).
A task writes its outputs atomically (a duplicate attempt after a worker died
just replaces them with the same contents) and returns paths, checksums and
counts, never arrays.  Outputs of an earlier run that still match their
checksums are kept: a valid class COG is not predicted again even when its
vector part has to be redone.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.batch.manifest import OutputFile, append_line, now_iso, outputs_valid
from geoseg.batch.parts import InteriorPolygons, write_part
from geoseg.batch.vector import RegionShare, VectorPlan, region_masks, vectorize_region
from geoseg.errors import GeosegWarning, RasterReadError
from geoseg.models.cache import cached_model, remember_model
from geoseg.pipeline import PredictConfig, VectorizeConfig, run_scene, run_vectorize
from geoseg.pipeline.instances import InstanceCollector, InstanceVectors
from geoseg.types import PixelWindow
from geoseg.vectorize.polygonize import RegionPolygons

__all__ = [
    "RegionResult",
    "RegionTask",
    "cached_model",
    "remember_model",
    "run_region",
    "unreachable_paths",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionTask:
    """Everything one region's task needs, small and picklable.

    ``raster`` (and ``vector``, for ``rasters`` work, or ``part``, the vector
    part of a window) are output paths relative to ``out_dir``; ``expected``
    holds the checksums of a previous run's outputs whose inputs have not
    changed, which are reused when they still match (``--resume``).
    ``plan`` and ``share`` say how a window is vectorized.
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
    vector_fingerprint: str = ""
    part: str | None = None
    plan: VectorPlan | None = None
    share: RegionShare | None = None


@dataclass
class RegionResult:
    """What a region's task returns.

    ``status`` is ``done`` (predicted and vectorized), ``vectorized`` (the
    class COG kept, its polygons redone) or ``reused`` (outputs kept).
    ``polygons`` counts the polygons per layer of a whole raster, or the
    finished polygons of a window, whose ``seam_pieces`` wait for the merge.
    """

    region: str
    status: str
    outputs: dict[str, OutputFile]
    worker: str = ""
    elapsed_s: float = 0.0
    predict_s: float = 0.0
    vectorize_s: float = 0.0
    pixels: int = 0
    tiles: int = 0
    valid_pixels: int = 0
    class_pixels: dict[int, int] = field(default_factory=dict)
    polygons: dict[str, int] | None = None
    seam_pieces: int | None = None
    warnings: list[str] = field(default_factory=list)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid:{os.getpid()}"


def _valid(out_dir: Path, expected: dict[str, OutputFile], key: str) -> bool:
    return key in expected and outputs_valid(out_dir, {key: expected[key]})


def _vectorize_part(task: RegionTask, raster: Path, part: Path) -> tuple[dict[str, int], int]:
    """Vectorize a window's class COG into its vector part; polygons per layer and seam pieces."""
    from geoseg.io.read import iter_strips, read_tags

    assert task.plan is not None and task.share is not None
    w = task.share.window
    try:
        _, _, spec = read_tags(raster)
        if spec.shape != (w.height, w.width):
            raise RasterReadError(
                f"it is {spec.height}x{spec.width} pixels, its window {w.height}x{w.width}"
            )
        classes = np.concatenate([a for _, a in iter_strips(raster, rows=1024)])
    except RasterReadError as exc:
        raise RasterReadError(
            f"region {task.region}: cannot use its class raster {task.raster}: {exc}; delete it "
            "and rerun with resume=True to predict the region again"
        ) from exc
    interior, seams = vectorize_region(classes, spec.crs, task.plan, task.share)
    write_part(part, interior, seams)
    counts = {
        lp.layer: int(np.count_nonzero(interior.class_id == lp.class_id)) for lp in task.plan.layers
    }
    return counts, len(seams.seams)


def run_region(task: RegionTask) -> RegionResult:
    """Segment one region into its class COG and vectorize it.

    A whole raster (``rasters`` work) gets its GeoPackage; a window its
    vector part (:mod:`geoseg.batch.parts`).

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
        :func:`~geoseg.pipeline.run_vectorize` raise, or a
        :class:`~geoseg.errors.RasterReadError` naming the region when its
        class COG cannot be read back; dask retries the task.
    """
    out_dir = Path(task.out_dir)
    worker = _worker_address()
    expected = dict(task.expected or {})
    vector_key = "vector" if task.part is not None else "polygons" if task.vector else None
    keep_classes = _valid(out_dir, expected, "classes")
    if keep_classes and (vector_key is None or _valid(out_dir, expected, vector_key)):
        return RegionResult(task.region, "reused", expected, worker)
    loaded = cached_model(task.model_path, task.model_sha256)
    # An instance model writes its polygons with the class raster, never from it.
    instance = loaded.card.task == "instance" and (task.vector or task.part) is not None
    keep_classes = keep_classes and not instance
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
    raster = out_dir / task.raster
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeosegWarning)
        stats = None
        if keep_classes:
            outputs = {"classes": expected["classes"]}
        else:
            raster.parent.mkdir(parents=True, exist_ok=True)
            vectors = _instances(task, out_dir) if instance else None
            stats = (
                run_scene(task.src, raster, loaded, task.predict, instance_vectors=vectors)
                if vectors is not None
                else run_scene(task.src, raster, loaded, task.predict)
            )
            outputs = {"classes": OutputFile.of(out_dir, raster)}
        t1 = time.perf_counter()
        polygons = seam_pieces = None
        if instance and stats is not None and task.part is not None:
            assert vectors is not None and vectors.collect is not None
            part = out_dir / task.part
            polygons = _write_instance_part(task, vectors.collect, part)
            seam_pieces = 0
            outputs["vector"] = OutputFile.of(out_dir, part)
        elif instance and stats is not None and task.vector is not None:
            outputs["polygons"] = OutputFile.of(out_dir, out_dir / task.vector)
            polygons = dict(stats.vector.polygons)
        elif task.vector is not None and task.vectorize is not None:
            vector = out_dir / task.vector
            vstats = run_vectorize(raster, vector, task.vectorize)
            outputs["polygons"] = OutputFile.of(out_dir, vector)
            polygons = dict(vstats.polygons)
        elif task.part is not None:
            part = out_dir / task.part
            polygons, seam_pieces = _vectorize_part(task, raster, part)
            outputs["vector"] = OutputFile.of(out_dir, part)
    t2 = time.perf_counter()
    ours = [w for w in caught if issubclass(w.category, GeosegWarning)]
    for w in caught:
        if not issubclass(w.category, GeosegWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return RegionResult(
        task.region,
        "done" if stats is not None else "vectorized",
        outputs,
        worker,
        elapsed_s=t2 - t0,
        predict_s=t1 - t0,
        vectorize_s=t2 - t1,
        pixels=stats.pixels if stats else 0,
        tiles=stats.tiles if stats else 0,
        valid_pixels=stats.valid_pixels if stats else 0,
        class_pixels=dict(stats.class_pixels) if stats else {},
        polygons=polygons,
        seam_pieces=seam_pieces,
        warnings=sorted({str(w.message) for w in ours}),
    )


def unreachable_paths(paths: list[str], out_dir: str) -> list[str]:
    """The ``paths`` this process cannot read, and ``out_dir`` if it cannot write there.

    Run on every worker when a batch starts: inputs, model and outputs must be
    on storage that the client and all workers see under the same paths.
    URLs and GDAL virtual paths (``/vsis3/...``) are left to GDAL.
    """
    missing = [
        p
        for p in paths
        if "://" not in p and not p.startswith("/vsi") and not os.access(p, os.R_OK)
    ]
    if not (os.path.isdir(out_dir) and os.access(out_dir, os.W_OK | os.X_OK)):
        missing.append(out_dir)
    return missing


def worker_versions() -> dict[str, Any]:
    """geoseg version and pid of the calling process (checked on every worker at connect)."""
    from geoseg import __version__

    return {"geoseg": __version__, "pid": os.getpid()}


def _instances(task: RegionTask, out_dir: Path) -> InstanceVectors | None:
    """Where an instance model puts a region's polygons (None without vector output).

    A whole raster writes its GeoPackage; a window collects the objects anchored
    in the pixels it owns (:func:`geoseg.batch.vector.region_masks`) for its part.
    """
    if task.part is not None and task.plan is not None and task.share is not None:
        owned, _ = region_masks(task.share)
        assert task.window is not None
        r0, c0 = task.window.row_off, task.window.col_off
        h, w = owned.shape

        def owns(row: int, col: int) -> bool:
            r, c = row - r0, col - c0
            return 0 <= r < h and 0 <= c < w and bool(owned[r, c])

        return InstanceVectors(
            None,
            cleanup={lp.name: lp.cleanup for lp in task.plan.layers},
            dst_crs=task.plan.dst_crs,
            collect=InstanceCollector(owns),
        )
    if task.vector is None or task.vectorize is None:
        return None
    return InstanceVectors(
        out_dir / task.vector, cleanup=task.vectorize.cleanup, dst_crs=task.vectorize.dst_crs
    )


def _write_instance_part(
    task: RegionTask, collected: InstanceCollector, part: Path
) -> dict[str, int]:
    """Store a window's instance polygons as its vector part (no seam pieces); polygons per layer.

    Each polygon's order key is its anchor pixel on the mosaic grid.
    """
    assert task.plan is not None and task.share is not None and task.window is not None
    n = len(collected.class_id)
    dr = task.share.window.row_off - task.window.row_off
    dc = task.share.window.col_off - task.window.col_off
    anchors = np.array(collected.anchor, dtype=np.int64).reshape(n, 2)
    geometry = np.empty(n, dtype=object)
    geometry[:] = collected.geometry
    interior = InteriorPolygons(
        class_id=np.array(collected.class_id, dtype=np.int64),
        row=anchors[:, 0] + dr,
        col=anchors[:, 1] + dc,
        piece=np.zeros(n, dtype=np.int64),
        area_m2=np.array(collected.area_m2, dtype=np.float64),
        perimeter_m=np.array(collected.perimeter_m, dtype=np.float64),
        confidence=np.array(collected.confidence, dtype=np.float64),
        geometry=geometry,
    ).sorted()
    no_seams = RegionPolygons(
        interior=[],
        interior_first=np.zeros((0, 2), dtype=np.int64),
        seams=[],
        seam_pixels=np.zeros((0, 2), dtype=np.int64),
        seam_owner=np.zeros(0, dtype=np.int64),
    )
    write_part(part, interior, no_seams)
    return {
        lp.layer: int(np.count_nonzero(interior.class_id == lp.class_id)) for lp in task.plan.layers
    }
