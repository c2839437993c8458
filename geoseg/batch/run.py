"""Run a batch: plan the regions, run one dask task each, record them, merge the results.

Output directory layout::

    out/
      manifest.jsonl          one final record per region (see geoseg.batch.manifest)
      regions/<id>.tif        class COG of each region (window or whole raster)
      regions/<id>.gpkg       polygons of each raster (``rasters`` work only)
      regions/<id>.vector.npz finished polygons and seam pieces of each window
                              (``grid`` and ``aoi`` work, see geoseg.batch.vector)
      classes.vrt             mosaic of the region COGs
      polygons.gpkg           one styled layer per class, all regions

Every region is vectorized by the worker that predicted it; for windows the
client then joins only the polygons cut by region borders.

The input rasters and the output directory must be visible to the client and
every worker under the same paths (a shared filesystem for remote clusters).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affine import Affine

from geoseg import __version__
from geoseg.batch.cluster import ClusterInfo, open_client
from geoseg.batch.manifest import (
    FORMAT_VERSION,
    AttemptLog,
    Manifest,
    ManifestState,
    OutputFile,
    now_iso,
    outputs_valid,
    parse_outputs,
)
from geoseg.batch.merge import MosaicSource, append_geopackages, mosaic_layout, write_mosaic_vrt
from geoseg.batch.parquet import (
    PARQUET_NAME,
    ParquetDataset,
    dataset_files,
    layer_rows,
    require_parquet,
)
from geoseg.batch.parts import PART_FORMAT
from geoseg.batch.vector import RegionShare, VectorPlan, merge_parts, plan_shares, vector_metadata
from geoseg.batch.work import (
    Region,
    WorkSpec,
    check_resolution,
    fingerprint,
    plan_regions,
    region_predict_config,
    vector_fingerprint,
    vectorize_doc,
)
from geoseg.batch.worker import RegionResult, RegionTask, run_region, unreachable_paths
from geoseg.errors import (
    BatchError,
    ConfigError,
    GeosegWarning,
    OutputExistsError,
    OutputWriteError,
)
from geoseg.io.atomic import probe_writable
from geoseg.io.env import no_pam_sidecars
from geoseg.types import PixelWindow

if TYPE_CHECKING:
    from distributed import Client

    from geoseg.models.card import ModelCard

__all__ = [
    "MOSAIC_NAME",
    "POLYGONS_NAME",
    "REGIONS_DIR",
    "BatchError",
    "BatchResult",
    "run_batch",
]

log = logging.getLogger(__name__)

REGIONS_DIR = "regions"
MOSAIC_NAME = "classes.vrt"
POLYGONS_NAME = "polygons.gpkg"
#: File name ending of a window's vector part (``regions/<id>.vector.npz``).
PART_SUFFIX = ".vector.npz"

#: ``progress(stage, done, total)``: stage ``"regions"`` counts regions,
#: ``"merge"`` counts mosaic rows (windows) or GeoPackages (rasters) merged.
BatchProgressFn = Callable[[str, int, int], None]


@dataclass
class BatchResult:
    """What a batch run did.

    ``computed`` regions ran in this run, ``reused`` ones kept the valid outputs
    of an earlier run (``--resume``), ``vectorized`` ones kept their class COG
    but had their polygons redone (missing or changed, or new vectorize
    options), ``failed`` maps region ids to their last error.  ``mosaic``,
    ``polygons`` (GeoPackage) and ``parquet`` (GeoParquet dataset directory)
    are the merged outputs (None when a region failed or the format was not
    asked for; no mosaic for rasters on different grids).  ``stages`` holds wall seconds of
    ``regions`` (predict and vectorize on the workers), ``seams`` (seam join
    and clean-up) and ``write`` (the merged outputs).
    """

    out_dir: Path
    mode: str
    run: str
    regions: int = 0
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    vectorized: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    mosaic: Path | None = None
    polygons: Path | None = None
    parquet: Path | None = None
    polygon_counts: dict[str, int] = field(default_factory=dict)
    merge_reused: bool = False
    elapsed_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    cluster: ClusterInfo | None = None

    @property
    def ok(self) -> bool:
        """True when every region finished."""
        return not self.failed

    def summary(self) -> str:
        """One line: regions computed/reused/failed, polygons, elapsed time."""
        polys = sum(self.polygon_counts.values())
        per = ", ".join(f"{k} {v:,}" for k, v in self.polygon_counts.items())
        redone = f", {len(self.vectorized)} re-vectorized" if self.vectorized else ""
        return (
            f"{self.regions} regions: {len(self.computed)} computed, {len(self.reused)} reused"
            f"{redone}, {len(self.failed)} failed; {polys:,} polygons ({per or 'none'}); "
            f"{self.elapsed_s:.1f} s"
        )


def _check_shared_paths(client: Client, work: WorkSpec, model_dir: Path, out: Path) -> None:
    """Fail with one line when a worker cannot read the inputs or write the outputs."""
    paths = [*work.sources, str(model_dir)]
    try:
        found = client.run(unreachable_paths, paths, str(out))
    except Exception as exc:  # whatever the worker raised, re-raised here
        raise ConfigError(
            f"the dask workers could not check the batch's paths ({type(exc).__name__}: {exc})"
        ) from exc
    for worker, missing in sorted(found.items()):
        if not missing:
            continue
        first = missing[0]
        what = f"write to {first}" if first == str(out) else f"read {first}"
        more = f" (and {len(missing) - 1} more path(s))" if len(missing) > 1 else ""
        raise ConfigError(
            f"dask worker {worker} cannot {what}{more}; a batch needs its inputs, model and "
            "output directory on a shared filesystem (or object store) that the client and every "
            "worker see under the same paths"
        )


def _new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _prepare(out: Path, *, resume: bool, overwrite: bool) -> tuple[Manifest, ManifestState]:
    if resume and overwrite:
        raise ConfigError(
            "resume=True keeps finished regions and overwrite=True discards them; pick one"
        )
    if out.exists() and not out.is_dir():
        raise OutputWriteError(f"output {out} is a file; batch outputs go to a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot create the output directory {out} ({exc.strerror or exc}); choose a "
            "writable directory with room for the outputs"
        ) from exc
    probe_writable(out)
    manifest = Manifest(out)
    if manifest.exists():
        if overwrite:
            manifest.reset()
            return manifest, ManifestState()
        if resume:
            return manifest, manifest.read()
        raise OutputExistsError(
            f"{out} already holds a batch ({manifest.path.name}); pass resume=True to continue it "
            "or overwrite=True to start over"
        )
    for name in (MOSAIC_NAME, POLYGONS_NAME):
        if (out / name).exists() and not overwrite:
            raise OutputExistsError(f"{out / name} exists; pass overwrite=True to replace it")
    return manifest, ManifestState()


def _model(work: WorkSpec) -> tuple[Path, str, ModelCard]:
    from geoseg.models.checkpoint import WEIGHTS_NAME, load_card, resolve_model_path, sha256_file

    model_dir = resolve_model_path(work.model)
    card = load_card(model_dir)
    return model_dir.resolve(), sha256_file(model_dir / WEIGHTS_NAME), card


def _check_common_crs(work: WorkSpec) -> None:
    from geoseg.io.read import describe

    if work.mode != "rasters" or work.vectorize.dst_crs:
        return
    crss: dict[str, str] = {}
    for src in work.sources:
        crs = describe(src).crs
        wkt = crs.to_wkt() if crs is not None else str(work.predict.assume_crs)
        crss.setdefault(wkt, src)
    if len(crss) > 1:
        a, b = list(crss.values())[:2]
        raise ConfigError(
            f"the rasters are in {len(crss)} different CRSs (e.g. {Path(a).name} and "
            f"{Path(b).name}), so their polygons cannot share one GeoPackage; set "
            "'vectorize: {dst_crs: EPSG:XXXX}' in the work file"
        )


def _record(
    task: RegionTask,
    status: str,
    attempts: int,
    *,
    res: RegionResult | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    w = task.window
    rec: dict[str, Any] = {
        "kind": "region",
        "region": task.region,
        "status": status,
        "run": task.run,
        "fingerprint": task.fingerprint,
        "vector_fingerprint": task.vector_fingerprint,
        "src": task.src,
        "window": None if w is None else [w.row_off, w.col_off, w.height, w.width],
        "outputs": {k: v.to_dict() for k, v in (res.outputs if res else {}).items()},
        "attempts": attempts,
        "error": error,
        "time": now_iso(),
    }
    if res is not None:
        rec.update(
            worker=res.worker,
            elapsed_s=round(res.elapsed_s, 3),
            predict_s=round(res.predict_s, 3),
            vectorize_s=round(res.vectorize_s, 3),
            pixels=res.pixels,
            tiles=res.tiles,
            valid_pixels=res.valid_pixels,
            class_pixels={str(k): v for k, v in res.class_pixels.items()},
            polygons=res.polygons,
            seam_pieces=res.seam_pieces,
            warnings=res.warnings,
        )
    return rec


@dataclass(frozen=True)
class _Vectorizing:
    """How window regions are vectorized: the mosaic's plan and each region's share."""

    plan: VectorPlan
    shares: dict[str, RegionShare]


def _window_layout(work: WorkSpec, regions: Sequence[Region]) -> tuple[Affine, int, int, int, int]:
    """Transform, width and height of the windows' mosaic, and its offset (row, col) in the raster."""
    from geoseg.io.read import describe

    spec = describe(work.sources[0])
    if work.mode == "grid":
        r0, c0, height, width = 0, 0, spec.height, spec.width
    else:
        windows = [r.window for r in regions if r.window is not None]
        r0 = min(w.row_off for w in windows)
        c0 = min(w.col_off for w in windows)
        height = max(w.row_end for w in windows) - r0
        width = max(w.col_end for w in windows) - c0
    return spec.transform * Affine.translation(c0, r0), width, height, r0, c0


def _mosaic_window(region: Region, r0: int, c0: int) -> PixelWindow:
    assert region.window is not None
    w = region.window
    return PixelWindow(w.row_off - r0, w.col_off - c0, w.height, w.width)


def _vectorizing(work: WorkSpec, regions: Sequence[Region], card: ModelCard) -> _Vectorizing:
    transform, width, height, r0, c0 = _window_layout(work, regions)
    plan = VectorPlan.of(
        card.classes,
        card.postprocess,
        work.vectorize.cleanup,
        transform=transform,
        width=width,
        height=height,
        dst_crs=work.vectorize.dst_crs,
        source=Path(work.sources[0]).name,
    )
    windows = [_mosaic_window(r, r0, c0) for r in regions]
    return _Vectorizing(plan, {r.id: s for r, s in zip(regions, plan_shares(windows), strict=True)})


def _window_doc(w: PixelWindow) -> list[int]:
    return [w.row_off, w.col_off, w.height, w.width]


def _vector_doc(work: WorkSpec, vectorizing: _Vectorizing | None, region: Region) -> dict[str, Any]:
    doc: dict[str, Any] = {"vectorize": vectorize_doc(work.vectorize)}
    if vectorizing is not None:
        plan, share = vectorizing.plan, vectorizing.shares[region.id]
        doc.update(
            part_format=PART_FORMAT,
            mosaic=[list(plan.transform)[:6], plan.width, plan.height],
            layers=[asdict(layer) for layer in plan.layers],
            skip=list(plan.skip),
            source=plan.source,
            window=_window_doc(share.window),
            beaten_by=[_window_doc(w) for w in share.beaten_by],
            others=[_window_doc(w) for w in share.others],
        )
    return doc


def _task(
    work: WorkSpec,
    region: Region,
    out: Path,
    run: str,
    model_dir: Path,
    model_sha: str,
    state: ManifestState,
    device: str | None,
    vectorizing: _Vectorizing | None,
) -> RegionTask:
    cfg = region_predict_config(work, region, device=device)
    fp = fingerprint(region, work, model_sha, cfg)
    vfp = vector_fingerprint(_vector_doc(work, vectorizing, region))
    prev = state.regions.get(region.id) or {}
    # Only outputs whose inputs are unchanged may be kept: the class COG when the
    # prediction's are, its polygons when theirs are too.
    expected: dict[str, OutputFile] = {}
    if prev.get("status") == "done" and prev.get("fingerprint") == fp:
        previous = state.outputs(region.id)
        keys = ["classes"]
        if prev.get("vector_fingerprint") == vfp:
            keys += ["polygons", "vector"]
        expected = {k: previous[k] for k in keys if k in previous}
    whole = work.mode == "rasters"
    return RegionTask(
        region=region.id,
        src=region.src,
        window=region.window,
        out_dir=str(out),
        raster=f"{REGIONS_DIR}/{region.id}.tif",
        vector=f"{REGIONS_DIR}/{region.id}.gpkg" if whole else None,
        model_path=str(model_dir),
        model_sha256=model_sha,
        predict=cfg,
        vectorize=replace(work.vectorize, overwrite=True) if whole else None,
        fingerprint=fp,
        run=run,
        expected=expected or None,
        vector_fingerprint=vfp,
        part=None if whole else f"{REGIONS_DIR}/{region.id}{PART_SUFFIX}",
        plan=None if vectorizing is None else vectorizing.plan,
        share=None if vectorizing is None else vectorizing.shares[region.id],
    )


def _run_tasks(
    client: Client,
    tasks: Sequence[RegionTask],
    manifest: Manifest,
    state: ManifestState,
    result: BatchResult,
    *,
    retries: int,
    progress: BatchProgressFn | None,
) -> None:
    from distributed import as_completed

    attempts = AttemptLog(manifest.attempts_path, result.run)
    by_key: dict[str, RegionTask] = {}
    futures = []
    for task in tasks:
        fut = client.submit(
            run_region,
            task,
            key=f"geoseg-region-{task.region}-{task.run}",
            retries=retries,
            pure=False,
        )
        by_key[str(fut.key)] = task
        futures.append(fut)
    total, done = len(tasks), 0
    seen_warnings: set[str] = set()
    if progress is not None:
        progress("regions", 0, total)
    try:
        for fut in as_completed(futures):
            task = by_key[str(fut.key)]
            n = attempts.counts().get(task.region, 0)
            if fut.status == "finished":
                res: RegionResult = fut.result()
                if res.status == "reused":
                    result.reused.append(task.region)
                else:
                    for message in res.warnings:
                        if message not in seen_warnings:
                            seen_warnings.add(message)
                            warnings.warn(message, GeosegWarning, stacklevel=2)
                    rec = _record(task, "done", max(n, 1), res=res)
                    if res.status == "vectorized":
                        # The prediction is an earlier run's: keep what it reported.
                        prev = state.regions.get(task.region) or {}
                        for key in ("pixels", "tiles", "valid_pixels", "class_pixels"):
                            rec[key] = prev.get(key)
                        result.vectorized.append(task.region)
                    else:
                        result.computed.append(task.region)
                    manifest.append(rec)
                    state.regions[task.region] = rec
                    result.attempts[task.region] = rec["attempts"]
            else:
                if fut.status == "error":
                    exc = fut.exception()
                    error = f"{type(exc).__name__}: {exc}"
                else:  # e.g. cancelled by someone else's client, or lost by a restarted scheduler
                    error = f"the scheduler reported the task as {fut.status}"
                rec = _record(task, "failed", n, error=error)
                manifest.append(rec)
                state.regions[task.region] = rec
                result.failed[task.region] = error
                result.attempts[task.region] = n
                log.warning("region %s failed after %d attempt(s): %s", task.region, n, error)
            fut.release()
            done += 1
            if progress is not None:
                progress("regions", done, total)
    except BaseException:
        client.cancel(futures)
        raise


def _merge_digest(
    work: WorkSpec, regions: Sequence[Region], state: ManifestState, formats: Sequence[str]
) -> str:
    doc = {
        "formats": sorted(formats),
        "regions": [
            [r.id, {k: o.sha256 for k, o in sorted(state.outputs(r.id).items())}] for r in regions
        ],
        "vectorize": vectorize_doc(work.vectorize),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _windows_mosaic(out: Path, regions: Sequence[Region], vectorizing: _Vectorizing) -> Path:
    plan = vectorizing.plan
    return write_mosaic_vrt(
        out / MOSAIC_NAME,
        width=plan.width,
        height=plan.height,
        transform=plan.transform,
        sources=[
            MosaicSource(out / REGIONS_DIR / f"{r.id}.tif", vectorizing.shares[r.id].window)
            for r in regions
        ],
    )


def _rasters_mosaic(out: Path, regions: Sequence[Region]) -> Path | None:
    from geoseg.io.read import describe

    paths = [out / REGIONS_DIR / f"{r.id}.tif" for r in regions]
    specs = [describe(p) for p in paths]
    if len({s.crs.to_wkt() if s.crs else "" for s in specs}) != 1:
        log.info("no class mosaic: the rasters are in different CRSs")
        return None
    layout = mosaic_layout([(s.transform, s.width, s.height) for s in specs])
    if layout is None:
        log.info("no class mosaic: the rasters do not share one pixel grid")
        return None
    transform, width, height, windows = layout
    return write_mosaic_vrt(
        out / MOSAIC_NAME,
        width=width,
        height=height,
        transform=transform,
        sources=[MosaicSource(p, w) for p, w in zip(paths, windows, strict=True)],
        tag_overrides={"GEOSEG_SOURCE": f"{len(paths)} rasters"},
    )


def _checked_parts(out: Path, regions: Sequence[Region], state: ManifestState) -> list[Path]:
    """The vector parts of the regions, each checked against its manifest record."""
    parts = []
    for r in regions:
        outputs = state.outputs(r.id)
        part, classes = outputs.get("vector"), outputs.get("classes")
        if part is None or not outputs_valid(out, {"vector": part}):
            raise BatchError(
                f"region {r.id}: its vector part {REGIONS_DIR}/{r.id}{PART_SUFFIX} is missing or "
                "changed since it was written; rerun with resume=True to redo it"
            )
        if classes is None or not (out / classes.path).is_file():
            raise BatchError(
                f"region {r.id}: its class raster {REGIONS_DIR}/{r.id}.tif is missing; rerun "
                "with resume=True to predict it again"
            )
        parts.append(out / part.path)
    return parts


@no_pam_sidecars()
def _merge(
    work: WorkSpec,
    out: Path,
    regions: Sequence[Region],
    manifest: Manifest,
    state: ManifestState,
    result: BatchResult,
    card: ModelCard,
    vectorizing: _Vectorizing | None,
    client: Client,
    retries: int,
    progress: BatchProgressFn | None,
    formats: Sequence[str],
) -> None:
    import pyogrio

    from geoseg.io.read import read_tags

    digest = _merge_digest(work, regions, state, formats)
    prev = state.merge
    if prev is not None and prev.get("inputs") == digest:
        outputs = parse_outputs(prev.get("outputs"), "the merge")
        if outputs_valid(out, outputs):
            result.mosaic = out / MOSAIC_NAME if "mosaic" in outputs else None
            result.polygons = out / POLYGONS_NAME if "polygons" in outputs else None
            result.parquet = out / PARQUET_NAME if "parquet" in formats else None
            result.polygon_counts = dict(prev.get("polygons") or {})
            result.merge_reused = True
            return

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress("merge", done, total)

    polygons = out / POLYGONS_NAME if "gpkg" in formats else None
    parquet = out / PARQUET_NAME if "parquet" in formats else None
    for stale in out.glob(f".{PARQUET_NAME}.geoseg-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a merge killed while writing the dataset
    t0 = time.perf_counter()
    if vectorizing is None:
        mosaic = _rasters_mosaic(out, regions)
        gpkgs = [out / REGIONS_DIR / f"{r.id}.gpkg" for r in regions]
        metadata = dict(pyogrio.read_info(gpkgs[0], layer=0)["dataset_metadata"] or {})
        metadata.update(
            input=f"{len(gpkgs)} rasters",
            class_raster=MOSAIC_NAME if mosaic else "",
            time=now_iso(),
        )
        if polygons is not None:
            counts = append_geopackages(
                gpkgs, polygons, classes=card.classes, metadata=metadata, progress=report
            )
        if parquet is not None:
            counts = _rasters_parquet(regions, gpkgs, parquet, card, metadata)
        counts = {c.layer: counts.get(c.layer, 0) for c in card.classes if c.vectorize}
        result.stages["write"] = time.perf_counter() - t0
    else:
        parts = _checked_parts(out, regions, state)
        mosaic = _windows_mosaic(out, regions, vectorizing)
        tags, _, spec = read_tags(out / REGIONS_DIR / f"{regions[0].id}.tif")
        step = 0

        def on_cluster(fn: Callable[..., Any], *iterables: Sequence[Any]) -> list[Any]:
            # The joined polygons are cleaned where the regions were: on the workers.
            nonlocal step
            step += 1
            keys = [f"geoseg-seams-{result.run}-{step}-{i}" for i in range(len(iterables[0]))]
            futures = client.map(fn, *iterables, key=keys, pure=False, retries=retries)
            try:
                return list(client.gather(futures))
            finally:
                client.cancel(futures)

        counts = merge_parts(
            parts,
            vectorizing.plan,
            polygons,
            crs=spec.crs,
            metadata=vector_metadata(tags, vectorizing.plan, MOSAIC_NAME),
            batch=work.vectorize.batch,
            mapper=on_cluster,
            progress=report,
            timings=result.stages,
            parquet=parquet,
            region_ids=[r.id for r in regions],
        )
    outputs = {}
    if polygons is not None:
        outputs["polygons"] = OutputFile.of(out, polygons)
    if parquet is not None:
        for f in dataset_files(parquet):
            outputs[f"parquet/{f.name}"] = OutputFile.of(out, f)
    if mosaic is not None:
        outputs["mosaic"] = OutputFile.of(out, mosaic)
    rec = {
        "kind": "merge",
        "run": result.run,
        "inputs": digest,
        "outputs": {k: v.to_dict() for k, v in outputs.items()},
        "polygons": counts,
        "time": now_iso(),
    }
    manifest.append(rec)
    state.merge = rec
    result.mosaic, result.polygons, result.polygon_counts = mosaic, polygons, counts
    result.parquet = parquet


@no_pam_sidecars()
def _rasters_parquet(
    regions: Sequence[Region],
    gpkgs: Sequence[Path],
    dst: Path,
    card: ModelCard,
    metadata: Mapping[str, str],
) -> dict[str, int]:
    """The GeoParquet dataset of a ``rasters`` batch: one part per raster's GeoPackage."""
    import pyogrio
    import pyproj

    layers = [c for c in card.classes if c.vectorize]
    crs = pyproj.CRS.from_user_input(pyogrio.read_info(gpkgs[0], layer=0)["crs"])
    with ParquetDataset(
        dst,
        crs=crs,
        classes={c.id: c.name for c in layers},
        metadata=metadata,
        extra={"layers": [{"class_id": c.id, "class": c.name, "color": c.color} for c in layers]},
    ) as dataset:
        layer_rows(
            [(r.id, g) for r, g in zip(regions, gpkgs, strict=True)],
            dataset,
            class_ids={c.layer: c.id for c in layers},
            source="",
        )
    return {c.layer: dataset.class_counts.get(c.id, 0) for c in layers}


def _remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporary files of attempts killed mid-write.

    Called when every region of the run has finished, so no task of this run
    still writes here; a cancelled task of an interrupted earlier run that is
    still going merely fails its final rename.
    """
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if not (p.name.startswith(".") and ".geoseg-" in p.name):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()


def run_batch(
    work: WorkSpec,
    out_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    progress: BatchProgressFn | None = None,
    on_cluster: Callable[[ClusterInfo], None] | None = None,
    dashboard_address: str | None = ":8787",
    formats: Sequence[str] = ("gpkg",),
) -> BatchResult:
    """Segment every region of ``work`` on a dask cluster and merge the results.

    Parameters
    ----------
    work : WorkSpec
        The regions and options (see :func:`geoseg.batch.load_work`).
    out_dir : str or os.PathLike
        Output directory (created if needed); see the module docs for its layout.
    address : str, optional
        A dask scheduler address; None starts a local cluster.
    workers : int, optional
        Worker processes of the local cluster (see :func:`geoseg.batch.local_layout`).
    resume : bool
        Keep regions whose outputs match their manifest records (same inputs
        and options, same sha256), compute the rest.
    overwrite : bool
        Discard a previous batch in ``out_dir`` and recompute everything.
    retries : int
        Extra attempts of a failing region (dask ``retries``).  A region whose
        worker dies is rescheduled by dask regardless.
    progress : callable, optional
        ``progress(stage, done, total)``, see :data:`BatchProgressFn`.  An
        exception raised by it stops the run (finished regions stay recorded).
    on_cluster : callable, optional
        Called with the :class:`ClusterInfo` once connected (dashboard address).
    dashboard_address : str, optional
        Dashboard of a local cluster (None: none).
    formats : sequence of str
        Polygon outputs: ``"gpkg"`` (``polygons.gpkg``, one styled layer per
        class) and/or ``"parquet"`` (``polygons.parquet/``, a partitioned
        GeoParquet dataset, see :mod:`geoseg.batch.parquet`).

    Returns
    -------
    BatchResult
        Failed regions are listed, not raised; the merged outputs are written
        only when every region finished.  Window regions are vectorized on the
        workers; the merge joins the polygons cut by region borders
        (:mod:`geoseg.batch.vector`).

    Raises
    ------
    OutputExistsError
        ``out_dir`` holds a batch and neither ``resume`` nor ``overwrite`` is set.
    ConfigError
        Bad work, model or cluster settings, or a worker that cannot read the
        inputs or the model or write to ``out_dir`` (they must be on storage
        shared by the client and all workers).
    RasterReadError
        An input raster cannot be opened while planning.
    BatchError
        A region's vector part or class COG went missing or changed between
        its task and the merge (``resume=True`` redoes it).
    """
    t0 = time.perf_counter()
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}", field="retries")
    if address is not None and workers is not None:
        raise ConfigError(
            "workers sizes the local cluster; start the workers of the scheduler at "
            f"{address} with 'dask worker {address} --nworkers N --nthreads 1'",
            field="workers",
        )
    formats = tuple(dict.fromkeys(formats))
    if not formats or any(f not in ("gpkg", "parquet") for f in formats):
        raise ConfigError(f"formats must be gpkg and/or parquet, got {list(formats)}")
    if "parquet" in formats:
        require_parquet()
    out = Path(os.path.abspath(out_dir))
    # Checks that need no output directory come first: a refused run leaves nothing behind.
    model_dir, model_sha, card = _model(work)
    check_resolution(work, card.pixel_size_m)
    manifest, state = _prepare(out, resume=resume, overwrite=overwrite)
    regions = plan_regions(work)
    _check_common_crs(work)
    vectorizing = None if work.mode == "rasters" else _vectorizing(work, regions, card)
    run = _new_run_id()
    result = BatchResult(out, work.mode, run, regions=len(regions))
    header = {
        "kind": "batch",
        "run": run,
        "format": FORMAT_VERSION,
        "geoseg": __version__,
        "mode": work.mode,
        "model": str(model_dir),
        "model_sha256": model_sha,
        "regions": len(regions),
        "time": now_iso(),
    }
    (out / REGIONS_DIR).mkdir(exist_ok=True)
    recording = False
    try:
        with open_client(
            address,
            workers=workers,
            device=work.predict.device,
            dashboard_address=dashboard_address,
        ) as (client, info):
            result.cluster = info
            _check_shared_paths(client, work, model_dir, out)
            # The manifest is touched only once connected, so a cluster that cannot
            # be reached (or see the files) leaves no batch behind.
            manifest.append(header)
            state.header, recording = header, True
            if on_cluster is not None:
                on_cluster(info)
            # A local GPU worker sees only its own GPU, as cuda:0.
            device = "cuda" if info.gpus else None
            tasks = [
                _task(work, region, out, run, model_dir, model_sha, state, device, vectorizing)
                for region in regions
            ]
            t0 = time.perf_counter()
            _run_tasks(client, tasks, manifest, state, result, retries=retries, progress=progress)
            result.stages["regions"] = time.perf_counter() - t0
            if result.ok:
                _merge(
                    work,
                    out,
                    regions,
                    manifest,
                    state,
                    result,
                    card,
                    vectorizing,
                    client,
                    retries,
                    progress,
                    formats,
                )
                _remove_stale_temporaries(out / REGIONS_DIR)
    finally:
        if recording:
            manifest.compact(state, [r.id for r in regions])
    result.elapsed_s = time.perf_counter() - t0
    return result
