"""The vector stage: a class raster polygonized strip by strip into a styled GeoPackage."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import __version__
from geoseg.errors import (
    ConfigError,
    GeoreferenceError,
)
from geoseg.io.atomic import check_output_path
from geoseg.io.env import gdal_env
from geoseg.models.card import ClassInfo
from geoseg.pipeline.measure import VectorStats, cleanup_for, output_crs
from geoseg.pipeline.pool import (
    MAX_CLEANUP_WORKERS,
    _Cleaner,
    _usable_cleanup_workers,
)
from geoseg.pipeline.predict import ProgressFn, peak_rss_mb
from geoseg.settings import from_mapping, load_yaml_mapping
from geoseg.vectorize.clean import CleanupParams

log = logging.getLogger(__name__)


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


def _classes_from_raster(
    tags: Mapping[str, str], cmap: Mapping[int, tuple[int, int, int]]
) -> tuple[ClassInfo, ...]:
    if "GEOSEG_CLASSES" in tags:
        try:
            return tuple(ClassInfo.from_dict(d) for d in json.loads(tags["GEOSEG_CLASSES"]))
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"the class raster's GEOSEG_CLASSES tag is malformed ({exc}); pass model=NAME"
            ) from exc
    if "CLASS_NAMES" in tags:
        out = []
        for i, name in enumerate(tags["CLASS_NAMES"].split(",")):
            r, g, b = cmap.get(i, (128, 128, 128))
            out.append(ClassInfo(i, name, f"#{r:02x}{g:02x}{b:02x}", vectorize=i != 0))
        return tuple(out)
    raise ConfigError(
        "the class raster does not say which class is which (no GEOSEG_CLASSES or CLASS_NAMES tag); "
        "pass model=NAME, the model that produced it"
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


def _vector_metadata(
    tags: Mapping[str, str],
    classes_path: Path,
    cfg: VectorizeConfig,
    cleanup: Mapping[str, CleanupParams],
) -> dict[str, str]:
    """The GeoPackage's metadata: model, inputs and every parameter that made the polygons."""
    return {
        "geoseg_version": __version__,
        "model": tags.get("GEOSEG_MODEL", "unknown"),
        "model_sha256": tags.get("GEOSEG_MODEL_SHA256", "unknown"),
        "input": tags.get("GEOSEG_SOURCE", classes_path.name),
        "class_raster": classes_path.name,
        "predict_parameters": tags.get("GEOSEG_PARAMETERS", "{}"),
        "parameters": json.dumps(
            {
                "cleanup": {name: asdict(v) for name, v in cleanup.items()},
                "dst_crs": cfg.dst_crs,
                "confidence": cfg.confidence.name if cfg.confidence else None,
            }
        ),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _run_vectorize(
    classes_path: Path, dst: Path, cfg: VectorizeConfig, progress: ProgressFn | None
) -> VectorStats:
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
    out_crs, to_out = output_crs(spec.crs, cfg.dst_crs)
    layers = [LayerSpec(c.layer, c.id, c.name, c.color) for c in wanted]
    by_id = {c.id: c for c in wanted}
    metadata = _vector_metadata(
        tags, classes_path, cfg, {by_id[k].name: v for k, v in params.items()}
    )
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
