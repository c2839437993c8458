"""geoseg's Python front door: the operations the CLI runs, as functions.

``import geoseg`` stays cheap: these names are loaded on first use (PEP 562), and
each function imports only what its job needs (no PyTorch to predict on the CPU).

>>> import geoseg
>>> result = geoseg.predict("scene.tif", "scene.gpkg")          # doctest: +SKIP
>>> result.polygons                                             # doctest: +SKIP
{'buildings': 650, 'vegetation': 381, 'cropland': 56}

``geoseg predict`` on the command line is a thin caller of :func:`predict`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    from geoseg.evaluate import EvalConfig, EvalReport
    from geoseg.models.checkpoint import LoadedModel
    from geoseg.pipeline import PredictConfig, RunStats, VectorizeConfig, VectorStats
    from geoseg.training.config import TrainConfig
    from geoseg.training.loop import TrainCallback, TrainResult
    from geoseg.vectorize.clean import CleanupParams

#: File suffixes :func:`predict` treats as vector outputs (it also vectorizes).
VECTOR_SUFFIXES = (".gpkg", ".fgb", ".geojson", ".json", ".parquet")

ProgressFn = Callable[[int, int], None]


@dataclass
class PredictResult:
    """What :func:`predict` wrote and measured.

    Attributes
    ----------
    classes : Path
        The class COG (uint8 class ids on the input's grid).
    vector : Path or None
        The polygons (one layer per class), when a vector output was asked for.
    probabilities : Path or None
        The per-class probability COG, when asked for.
    stats : RunStats
        Pixels, km², seconds, Mpx/s and peak memory of the raster stage.
    vector_stats : VectorStats or None
        Polygons and areas per layer, seconds and peak memory of the vector stage.
    """

    classes: Path
    vector: Path | None
    probabilities: Path | None
    stats: RunStats
    vector_stats: VectorStats | None = None
    outputs: list[Path] = field(default_factory=list)

    @property
    def polygons(self) -> dict[str, int]:
        """Polygons written per layer (empty without a vector output)."""
        return dict(self.vector_stats.polygons) if self.vector_stats else {}

    @property
    def area_m2(self) -> dict[str, float]:
        """Polygon area per layer in m² (empty without a vector output)."""
        return dict(self.vector_stats.area_m2) if self.vector_stats else {}


def _split_options(options: Mapping[str, Any], config_type: type) -> dict[str, Any]:
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; {config_type.__name__} takes "
            f"{', '.join(sorted(known))}"
        )
    return dict(options)


def predict(
    src: str | Path,
    dst: str | Path,
    model: str | Path | LoadedModel = "default",
    *,
    cleanup: Mapping[str, CleanupParams] | None = None,
    dst_crs: str | None = None,
    vectorize_workers: int | None = None,
    progress: ProgressFn | None = None,
    vector_progress: ProgressFn | None = None,
    quicklook: str | Path | None = None,
    **options: Any,
) -> PredictResult:
    """Segment raster ``src`` tile by tile; write classes (and polygons) to ``dst``.

    Parameters
    ----------
    src : str or Path
        Any raster GDAL reads (GeoTIFF, COG, VRT, ``/vsicurl/`` URL).
    dst : str or Path
        A ``.tif`` class COG, or a vector file (``.gpkg``, ``.fgb``, ``.geojson``):
        then the class COG is written beside it as ``<stem>_classes.tif`` and
        vectorized into one layer per class.
    model : str, Path or LoadedModel
        Bundled model name (default ``"default"``), checkpoint directory, or a model
        from :func:`load_model`.
    cleanup : mapping of class name to CleanupParams, optional
        Clean-up overrides per class (else the model card's).
    dst_crs : str, optional
        CRS of the polygons (default: the raster's).
    vectorize_workers : int, optional
        Processes cleaning polygons (default 1; the CLI uses one per core, up to 8,
        which starts processes with ``forkserver``: scripts then need an
        ``if __name__ == "__main__":`` guard).
    progress, vector_progress : callable, optional
        ``progress(done, total)`` of the raster and vector stages.
    quicklook : str or Path, optional
        Also draw a PNG of the image with the class overlay (and the polygon
        outlines while there are at most 20,000), from decimated reads
        (:func:`geoseg.io.quicklook.write_quicklook`).
    **options
        Fields of :class:`~geoseg.pipeline.PredictConfig`: ``tile``, ``overlap``
        (pixels), ``batch_size``, ``device``, ``bands`` (1-based), ``probabilities``
        (path), ``overwrite``, ``input_range``, ``assume_crs``, ``resample``,
        ``threads``, ``backend``, ``compile``, ``readers``, ``workers``, ``tta``,
        ``precision``, ``separate``.

    Returns
    -------
    PredictResult

    Raises
    ------
    GeosegError
        Every deliberate failure (bad input, existing output, unknown option) with
        a message that names the problem and the fix; nothing is left under the
        final output names.
    """
    from geoseg.io.atomic import check_output_path, output_lock
    from geoseg.io.quicklook import write_quicklook
    from geoseg.pipeline import PredictConfig

    dst = Path(dst)
    cfg = PredictConfig(**_split_options(options, PredictConfig))
    vector_out = dst.suffix.lower() in VECTOR_SUFFIXES
    raster_out = dst.with_name(dst.stem + "_classes.tif") if vector_out else dst
    # One run owns its outputs from start to end: a second run with the same
    # outputs fails at once instead of leaving one run's raster beside the other's
    # polygons.
    extra = [Path(quicklook)] if quicklook is not None else []
    with contextlib.ExitStack() as locks:
        for path in dict.fromkeys([raster_out, dst, *extra]):
            locks.enter_context(output_lock(path))
        if quicklook is not None:
            check_output_path(quicklook, overwrite=cfg.overwrite)
        result = _predict(
            src,
            dst,
            raster_out,
            vector_out,
            model,
            cfg,
            cleanup,
            dst_crs,
            vectorize_workers,
            progress,
            vector_progress,
        )
        if quicklook is not None:
            try:
                write_quicklook(
                    src, raster_out, quicklook, polygons=result.vector, overwrite=cfg.overwrite
                )
            except BaseException:
                # One run, one outcome (as for the vector stage).
                for p in result.outputs:
                    p.unlink(missing_ok=True)
                raise
            result.outputs.append(Path(quicklook))
        return result


def _predict(
    src: str | Path,
    dst: Path,
    raster_out: Path,
    vector_out: bool,
    model: str | Path | LoadedModel,
    cfg: PredictConfig,
    cleanup: Mapping[str, CleanupParams] | None,
    dst_crs: str | None,
    vectorize_workers: int | None,
    progress: ProgressFn | None,
    vector_progress: ProgressFn | None,
) -> PredictResult:
    from geoseg.io.atomic import check_output_path
    from geoseg.models.checkpoint import LoadedModel, load_checkpoint
    from geoseg.pipeline import VectorizeConfig, run_scene, run_vectorize
    from geoseg.pipeline.instances import InstanceVectors

    if vector_out:
        check_output_path(dst, overwrite=cfg.overwrite)
    loaded = model if isinstance(model, LoadedModel) else load_checkpoint(model, lazy=True)
    if vector_out and loaded.card.task == "instance":
        # An instance model writes its objects itself, one polygon each, with scores.
        stats = run_scene(
            src,
            raster_out,
            loaded,
            cfg,
            progress=progress,
            instance_vectors=InstanceVectors(dst, cleanup, dst_crs),
        )
        result = PredictResult(
            classes=raster_out,
            vector=dst,
            probabilities=None,
            stats=stats,
            outputs=[Path(p) for p in stats.outputs],
            vector_stats=stats.vector,
        )
        result.outputs += [Path(p) for p in stats.vector.outputs]
        return result
    stats = run_scene(src, raster_out, loaded, cfg, progress=progress)
    result = PredictResult(
        classes=raster_out,
        vector=dst if vector_out else None,
        probabilities=Path(cfg.probabilities) if cfg.probabilities else None,
        stats=stats,
        outputs=[Path(p) for p in stats.outputs],
    )
    if vector_out:
        vcfg = VectorizeConfig(
            confidence=result.probabilities,
            cleanup=cleanup,
            dst_crs=dst_crs,
            overwrite=cfg.overwrite,
            workers=vectorize_workers,
        )
        try:
            result.vector_stats = run_vectorize(raster_out, dst, vcfg, progress=vector_progress)
        except BaseException:
            # One run, one outcome: a failed or interrupted vector stage takes the raster
            # stage's outputs with it, so nothing is left under a final output name.
            for p in result.outputs:
                p.unlink(missing_ok=True)
            raise
        result.outputs += [Path(p) for p in result.vector_stats.outputs]
    return result


def vectorize(
    classes: str | Path,
    dst: str | Path,
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> VectorStats:
    """Polygonize a class raster into one styled layer per class (seam-exact, streaming).

    Parameters
    ----------
    classes : str or Path
        A class raster (uint8 class ids), such as :func:`predict` writes.
    dst : str or Path
        ``.gpkg`` (styled for QGIS), ``.fgb`` or ``.geojson``.
    **options
        Fields of :class:`~geoseg.pipeline.VectorizeConfig`: ``confidence``,
        ``cleanup``, ``dst_crs``, ``classes``, ``overwrite``, ``block_rows``,
        ``batch``, ``workers``.

    Returns
    -------
    VectorStats
    """
    from geoseg.pipeline import VectorizeConfig, run_vectorize

    cfg = VectorizeConfig(**_split_options(options, VectorizeConfig))
    return run_vectorize(classes, dst, cfg, progress=progress)


def evaluate(
    images: str | Path | list[str | Path],
    labels: str | Path | list[str | Path],
    model: str | Path | LoadedModel = "default",
    *,
    config: EvalConfig | None = None,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Predict ``images`` as :func:`predict` does and score them against ``labels``.

    Pixel IoU, Dice/F1, precision and recall per class, mean IoU, object
    precision/recall/F1 (one-to-one matches at IoU >= 0.5) and a confusion matrix.
    Needs ``geoseg[train]``.
    """
    from geoseg.extras import require

    require("train", "evaluation")
    from geoseg.evaluate import evaluate as run_evaluation

    return run_evaluation(model, _as_list(images), _as_list(labels), config, progress)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    callback: TrainCallback | None = None,
) -> TrainResult:
    """Train a model from a :class:`~geoseg.training.TrainConfig`, a mapping or a YAML file.

    Needs ``geoseg[train]``.  Relative paths in a YAML file are relative to it.  A
    mapping has the YAML's fields, e.g. a fine-tune of the bundled model::

        geoseg.train({"init_weights": "default", "distill": 1.0, "output": "runs/mine",
                      "sources": [{"name": "mine", "images": "mine/*.tif",
                                   "labels": "roofs.gpkg", "labelled_classes": ["building"]}]})
    """
    from geoseg.extras import require

    require("train", "training")
    from geoseg.training.config import TrainConfig
    from geoseg.training.loop import train as run_training

    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the training config {path}: {exc}") from exc
        config = TrainConfig.from_yaml(text, path.parent)
    return run_training(config, callback)


def load_model(model: str | Path = "default") -> LoadedModel:
    """A bundled model (by name) or checkpoint directory, ready for :func:`predict`.

    The card is read and checked and the weights hashed now; the network is built
    only if something needs PyTorch (the ONNX Runtime path never does).
    """
    from geoseg.models.checkpoint import load_checkpoint

    return load_checkpoint(model, lazy=True)


def list_models() -> dict[str, Path]:
    """Bundled models by name (their checkpoint directories)."""
    from geoseg.models.checkpoint import bundled_models

    return bundled_models()


__all__ = [
    "PredictConfig",
    "PredictResult",
    "VectorizeConfig",
    "evaluate",
    "list_models",
    "load_model",
    "predict",
    "train",
    "vectorize",
]


def __getattr__(name: str) -> Any:
    if name in ("PredictConfig", "VectorizeConfig"):
        import geoseg.pipeline

        return getattr(geoseg.pipeline, name)
    raise AttributeError(name)
