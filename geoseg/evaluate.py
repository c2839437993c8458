"""Evaluate a model on labelled imagery: pixel and object metrics, reports and plots.

:func:`evaluate` runs every image through :func:`geoseg.pipeline.run_scene`,
the very path ``geoseg predict`` takes, into a class raster; then reads that
raster strip by strip, rasterizes the labels onto each strip's grid and adds
the pair to a :class:`~geoseg.metrics.ConfusionMatrix`, so memory
follows the raster width, not its size.  The same strips feed the seam-exact
:func:`~geoseg.vectorize.polygonize.polygonize_strips`, whose polygons are
matched one-to-one to the true polygons of the object classes (buildings,
fields): a match needs IoU >= 0.5 and pairs are taken greedily by IoU, as in
the SpaceNet metric.

:func:`write_report` writes ``metrics.json``, ``report.md``,
``confusion.png`` and ``overlay.png`` (image, truth and prediction of the most
labelled window).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.warp import transform_bounds

from geoseg.errors import ConfigError, GeosegWarning
from geoseg.io.env import no_pam_sidecars
from geoseg.io.quicklook import display_rgb
from geoseg.io.read import RasterSource, select_bands
from geoseg.metrics import ConfusionMatrix, PixelMetrics, image_bootstrap_iou
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.pipeline import PredictConfig
from geoseg.settings import from_mapping, load_yaml_mapping
from geoseg.training.config import SourceConfig
from geoseg.types import IGNORE_INDEX, PixelWindow

log = logging.getLogger(__name__)

#: The interval reported beside each pooled IoU: images resampled with replacement.
INTERVAL_LEVEL = 0.95
INTERVAL_RESAMPLES = 2000

__all__ = [
    "EvalConfig",
    "EvalReport",
    "ImageResult",
    "ObjectMetrics",
    "OverlaySample",
    "evaluate",
    "match_objects",
    "object_metrics",
    "write_report",
]

#: Classes scored as objects by default, when the model has them.
OBJECT_CLASSES = ("building", "buildings", "cropland", "field", "fields")

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    """Options of an evaluation.

    Parameters
    ----------
    label_field : str
        Attribute of vector labels holding the class (name or number).
    label_layer : str, optional
        Layer of multi-layer vector files.
    label_type : {"auto", "vector", "raster"}
        How to read the labels (``auto``: by extension).
    class_map : tuple of (value, class name) pairs
        Label value -> class name or ``"ignore"`` (default: values equal to class
        names for vectors, to class ids for rasters).
    labelled_classes : tuple of str, optional
        Classes the labels cover (default: every class but the background).
        Predictions of other classes count as background and they get no score.
    absent_classes : tuple of str
        Classes known to be nowhere in the images (see
        :class:`~geoseg.training.config.SourceConfig`): their predictions count
        as errors against the labelled background instead of as background.
    object_classes : tuple of str, optional
        Classes scored as objects (default: building/cropland/field classes).
    iou_threshold : float
        Minimum IoU of a predicted and a true polygon to match.
    min_object_pixels : int
        Predicted polygons with fewer pixels, and true ones with a smaller area,
        are left out of the object metrics.
    strip_rows : int
        Rows per strip when comparing (bounds memory).
    sample_size : int
        Edge in pixels of the overlay window.
    keep_predictions : Path, optional
        Directory to keep the class rasters in (default: a temporary one).
    through_polygons : bool
        Score what ``geoseg predict IMAGE -o X.gpkg`` writes: each class raster
        is vectorized with the model card's clean-up, pixel metrics come from
        those polygons rasterized back onto the image grid (later classes on
        top), and object metrics from the written polygons themselves.
    predict : PredictConfig
        Options of the prediction (device, tile, batch size, bands, ...).
    """

    label_field: str = "class"
    label_layer: str | None = None
    label_type: str = "auto"
    class_map: tuple[tuple[str | int, str], ...] = ()
    labelled_classes: tuple[str, ...] | None = None
    absent_classes: tuple[str, ...] = ()
    object_classes: tuple[str, ...] | None = None
    iou_threshold: float = 0.5
    min_object_pixels: int = 0
    strip_rows: int = 256
    sample_size: int = 384
    keep_predictions: Path | None = None
    through_polygons: bool = False
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        if not 0 < self.iou_threshold <= 1:
            raise ConfigError(
                f"iou_threshold must be in (0, 1], got {self.iou_threshold}", field="iou_threshold"
            )
        if self.min_object_pixels < 0:
            raise ConfigError(
                f"min_object_pixels must be >= 0, got {self.min_object_pixels}",
                field="min_object_pixels",
            )
        if self.strip_rows < 1:
            raise ConfigError(f"strip_rows must be >= 1, got {self.strip_rows}", field="strip_rows")
        if self.sample_size < 16:
            raise ConfigError(
                f"sample_size must be >= 16, got {self.sample_size}", field="sample_size"
            )

    @classmethod
    def from_dict(cls, data: Any, *, section: str = "evaluate") -> EvalConfig:
        """Options from a mapping (a config file's ``evaluate:`` section).

        ``class_map`` is a mapping of label value to class name (or ``ignore``),
        ``predict`` a mapping of :meth:`PredictConfig.from_dict`; lists become
        tuples.  Errors name the field (``evaluate.iou_threshold must be in (0, 1]``).

        Examples
        --------
        >>> cfg = EvalConfig.from_dict({"class_map": {1: "building"}, "predict": {"tile": 256}})
        >>> cfg.class_map, cfg.predict.tile
        (((1, 'building'),), 256)
        """

        def class_map(value: Any, where: str) -> tuple[tuple[str | int, str], ...]:
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str | int) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError(
                    f"{where} must map label values to class names, e.g. {{1: building}}, got "
                    f"{value!r}",
                    field="class_map",
                )
            return tuple(value.items())

        def predict(value: Any, where: str) -> PredictConfig:
            return PredictConfig.from_dict(value, section=where)

        return from_mapping(
            cls, data, section=section, convert={"class_map": class_map, "predict": predict}
        )

    @classmethod
    def from_yaml(cls, text: str, *, section: str = "evaluate") -> EvalConfig:
        """Options from YAML text holding the mapping of :meth:`from_dict`."""
        return cls.from_dict(load_yaml_mapping(text, section), section=section)


@dataclass(frozen=True)
class ObjectMetrics:
    """Object-level scores of one class: matches at IoU >= ``iou_threshold``."""

    name: str
    tp: int
    fp: int
    fn: int
    iou_threshold: float
    mean_matched_iou: float | None = None

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        """2 tp / (2 tp + fp + fn)."""
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "iou_threshold": self.iou_threshold,
            "mean_matched_iou": self.mean_matched_iou,
        }


def match_objects(
    predicted: Sequence[Any], truth: Sequence[Any], *, iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """Match predicted to true polygons one-to-one, greedily by IoU (SpaceNet style).

    Every (predicted, true) pair with IoU >= ``iou_threshold`` is a candidate;
    candidates are taken in order of decreasing IoU (ties: lower indices
    first), skipping pairs whose polygons are already matched.

    Parameters
    ----------
    predicted, truth : sequence of shapely geometries
    iou_threshold : float

    Returns
    -------
    list of (int, int, float)
        ``(predicted index, true index, IoU)`` of each match.

    Examples
    --------
    >>> from shapely import box
    >>> match_objects([box(0, 0, 2, 2), box(5, 5, 6, 6)], [box(0, 0, 2, 3), box(10, 10, 11, 11)])
    [(0, 0, 0.6666666666666666)]
    """
    if not len(predicted) or not len(truth):
        return []
    pred = np.asarray(predicted, dtype=object)
    true = np.asarray(truth, dtype=object)
    tree = shapely.STRtree(true)
    pi, ti = tree.query(pred, predicate="intersects")
    if len(pi) == 0:
        return []
    inter = shapely.area(shapely.intersection(pred[pi], true[ti]))
    union = shapely.area(pred[pi]) + shapely.area(true[ti]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = iou >= iou_threshold
    candidates = sorted(zip(-iou[keep], pi[keep], ti[keep], strict=True))
    used_p: set[int] = set()
    used_t: set[int] = set()
    out: list[tuple[int, int, float]] = []
    for neg_iou, p, t in candidates:
        if p in used_p or t in used_t:
            continue
        used_p.add(int(p))
        used_t.add(int(t))
        out.append((int(p), int(t), float(-neg_iou)))
    return out


def object_metrics(
    name: str, predicted: Sequence[Any], truth: Sequence[Any], *, iou_threshold: float = 0.5
) -> ObjectMetrics:
    """Object precision/recall/F1 of one class from its predicted and true polygons.

    >>> from shapely import box
    >>> m = object_metrics("building", [box(0, 0, 2, 2), box(5, 5, 6, 6)], [box(0, 0, 2, 3)])
    >>> m.tp, m.fp, m.fn, m.precision, m.recall
    (1, 1, 0, 0.5, 1.0)
    """
    matches = match_objects(predicted, truth, iou_threshold=iou_threshold)
    tp = len(matches)
    return ObjectMetrics(
        name=name,
        tp=tp,
        fp=len(predicted) - tp,
        fn=len(truth) - tp,
        iou_threshold=iou_threshold,
        mean_matched_iou=float(np.mean([m[2] for m in matches])) if matches else None,
    )


@dataclass(frozen=True)
class ImageResult:
    """What was evaluated in one image."""

    path: str
    width: int
    height: int
    labelled_pixels: int
    mean_iou: float | None
    prediction: str | None = None
    #: IoU of each class the labels cover, on this image alone (left out where the class is
    #: in neither its labels nor its prediction). One image's figure says where a model fails;
    #: the pooled pixel metrics, not the mean of these, are the evaluation's score.
    class_iou: dict[str, float] = field(default_factory=dict)
    #: This image's confusion matrix (rows: truth, columns: prediction, class id order).
    confusion: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class OverlaySample:
    """A window of one image with its truth and prediction, for the overlay plot.

    ``rgb`` is uint8 ``(H, W, 3)``; ``truth``/``pred`` are class ids (255: none).
    """

    image: str
    window: PixelWindow
    rgb: np.ndarray
    truth: np.ndarray
    pred: np.ndarray


@dataclass(frozen=True)
class EvalReport:
    """Results of :func:`evaluate`."""

    model: str
    classes: tuple[ClassInfo, ...]
    labelled_classes: tuple[str, ...]
    pixel: PixelMetrics
    objects: tuple[ObjectMetrics, ...]
    images: tuple[ImageResult, ...]
    elapsed_s: float
    sample: OverlaySample | None = None
    #: Per class (id order): the 95 % interval of its pixel IoU over the images
    #: (:func:`geoseg.metrics.image_bootstrap_iou`); ``None`` with one image or no labels.
    pixel_interval: tuple[tuple[float, float] | None, ...] = ()

    def interval(self, class_id: int) -> tuple[float, float] | None:
        """The 95 % interval of class ``class_id``'s pooled IoU, if there is one."""
        iv = self.pixel_interval
        return iv[class_id] if class_id < len(iv) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (what ``metrics.json`` holds)."""
        return {
            "model": self.model,
            "classes": [c.name for c in self.classes],
            "labelled_classes": list(self.labelled_classes),
            "pixel": self.pixel.to_dict(),
            "objects": {o.name: o.to_dict() for o in self.objects},
            "pixel_interval": {
                "method": f"{INTERVAL_LEVEL:.0%} percentile interval of each class's pooled IoU "
                f"over {INTERVAL_RESAMPLES} resamples of the images with replacement",
                "classes": {
                    c.name: (list(iv) if (iv := self.interval(i)) is not None else None)
                    for i, c in enumerate(self.classes)
                },
            },
            "images": [i.__dict__ for i in self.images],
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def to_markdown(self) -> str:
        """A human-readable report (what ``report.md`` holds)."""

        def f(v: float | None) -> str:
            return "–" if v is None else f"{v:.3f}"

        lines = [
            f"# Evaluation of `{self.model}`",
            "",
            f"{len(self.images)} image(s), {self.pixel.confusion.sum():,} labelled pixels; "
            f"labels cover {', '.join(self.labelled_classes)}.",
            "",
            f"**Mean IoU: {f(self.pixel.mean_iou)}**, pixel accuracy {f(self.pixel.accuracy)}.",
            "",
            "## Pixels",
            "",
            "| class | IoU | IoU 95 % interval (images resampled) | Dice/F1 | precision | recall "
            "| labelled px | predicted px |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, c in enumerate(self.pixel.classes):
            iv = self.interval(i)
            span = "–" if iv is None else f"{iv[0]:.3f}–{iv[1]:.3f}"
            lines.append(
                f"| {c.name} | {f(c.iou)} | {span} | {f(c.dice)} | {f(c.precision)} "
                f"| {f(c.recall)} | {c.support:,} | {c.predicted:,} |"
            )
        if self.objects:
            thr = self.objects[0].iou_threshold
            lines += [
                "",
                f"## Objects (one-to-one matches at IoU ≥ {thr:g})",
                "",
                "| class | true | predicted | matched | precision | recall | F1 |",
                "|---|---|---|---|---|---|---|",
            ]
            for o in self.objects:
                lines.append(
                    f"| {o.name} | {o.tp + o.fn} | {o.tp + o.fp} | {o.tp} | {f(o.precision)} "
                    f"| {f(o.recall)} | {f(o.f1)} |"
                )
        names = [c.name for c in self.classes]
        lines += [
            "",
            "## Confusion matrix (rows: truth, columns: prediction)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for name, row in zip(names, self.pixel.confusion, strict=True):
            lines.append(f"| **{name}** | " + " | ".join(f"{v:,}" for v in row) + " |")
        shown = [c for c in self.labelled_classes if any(c in im.class_iou for im in self.images)]
        lines += [
            "",
            "## Images",
            "",
            "| image | size | labelled px | mean IoU | "
            + " | ".join(f"{c} IoU" for c in shown)
            + " |",
            "|---" * (4 + len(shown)) + "|",
        ]
        for im in self.images:
            lines.append(
                f"| {Path(im.path).name} | {im.width}x{im.height} | {im.labelled_pixels:,} "
                f"| {f(im.mean_iou)} | " + " | ".join(f(im.class_iou.get(c)) for c in shown) + " |"
            )
        lines += ["", "![confusion matrix](confusion.png)", ""]
        if self.sample is not None:
            lines += ["![overlay](overlay.png)", ""]
        return "\n".join(lines)


class _Truth:
    """True class ids on windows of a class raster's grid (vector or raster labels)."""

    def __init__(
        self,
        kind: str,
        labels: Sequence[str],
        image_index: int,
        spec: Any,
        lookup: dict[str | int, int],
        frames: list[Any],
    ) -> None:
        self.spec = spec
        self.kind = kind
        self._vrt: Any = None
        self._stack: list[Any] = []
        if kind == "vector":
            box = shapely.box(*spec.bounds)
            geoms, ids = [], []
            for frame in frames:
                # Reproject only the polygons near the image, not the whole label file.
                near = shapely.box(*transform_bounds(spec.crs, frame.crs, *spec.bounds))
                sub = frame.iloc[np.sort(frame.sindex.query(near, predicate="intersects"))]
                sub = sub.to_crs(spec.crs)
                hits = np.sort(sub.sindex.query(box, predicate="intersects"))
                geoms += list(sub.geometry.values[hits])
                ids += sub["class_id"].to_numpy()[hits].tolist()
            self.geoms = np.asarray(geoms, dtype=object)
            self.ids = np.asarray(ids, dtype=np.int64)
            self.tree = shapely.STRtree(self.geoms)
        else:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            from geoseg.io.labels import LabelLookup

            path = labels[image_index] if len(labels) > 1 else labels[0]
            src = rasterio.open(path)
            self._stack.append(src)
            self._vrt = WarpedVRT(
                src,
                crs=spec.crs,
                transform=spec.transform,
                width=spec.width,
                height=spec.height,
                resampling=Resampling.nearest,
            )
            self._stack.append(self._vrt)
            self.lookup = LabelLookup(lookup)

    def read(self, window: PixelWindow) -> np.ndarray:
        """Class ids, int64 ``(height, width)``; 255 where unlabelled or ignored."""
        transform = self.spec.transform * Affine.translation(window.col_off, window.row_off)
        shape = (window.height, window.width)
        if self.kind == "vector":
            left, top = transform * (0, 0)
            right, bottom = transform * (window.width, window.height)
            query = shapely.box(
                min(left, right), min(top, bottom), max(left, right), max(top, bottom)
            )
            hits = np.sort(self.tree.query(query, predicate="intersects"))
            if len(hits) == 0:
                return np.zeros(shape, dtype=np.int64)
            shapes = list(zip(self.geoms[hits], self.ids[hits].tolist(), strict=True))
            out = rasterio.features.rasterize(
                shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8"
            )
            return out.astype(np.int64)
        from rasterio.windows import Window

        w = Window(window.col_off, window.row_off, window.width, window.height)
        values = self._vrt.read(self.lookup.bands, window=w, masked=True)
        valid = np.logical_not(np.ma.getmaskarray(values).all(axis=0))
        return self.lookup(np.ma.getdata(values), valid)

    def objects(self, class_id: int, min_area: float) -> list[Any]:
        """True polygons of ``class_id`` inside the raster (vector labels only)."""
        box = shapely.box(*self.spec.bounds)
        out = []
        for g in self.geoms[self.ids == class_id]:
            clipped = shapely.intersection(g, box)
            for part in getattr(clipped, "geoms", [clipped]):
                if isinstance(part, shapely.Polygon) and part.area > max(min_area, 0.0):
                    out.append(part)
        return out

    def close(self) -> None:
        for handle in reversed(self._stack):
            handle.close()


def evaluate(
    model: Any,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    config: EvalConfig | None = None,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Predict ``images`` with ``model`` as ``geoseg predict`` does and score them against ``labels``.

    Parameters
    ----------
    model : LoadedModel, str or Path
        A loaded model, checkpoint directory or bundled model name.
    images : sequence of path
        Rasters to predict.
    labels : sequence of path
        Vector files (any CRS; all apply to every image) or label rasters (one
        per image in the same order, or one for all).
    config : EvalConfig, optional
    progress : callable, optional
        ``progress(done, total)`` over all images (per-mille of the work).

    Returns
    -------
    EvalReport

    Raises
    ------
    ConfigError
        No images, labels that do not fit the model's classes, bad options.
    GeosegError
        From prediction (unreadable rasters, band mismatches, ...).
    """
    from geoseg.io.labels import read_vector_labels
    from geoseg.models.checkpoint import LoadedModel, load_checkpoint
    from geoseg.pipeline import run_scene
    from geoseg.pipeline.instances import InstanceVectors

    cfg = config or EvalConfig()
    t0 = time.perf_counter()
    if not images:
        raise ConfigError("no images to evaluate; pass images=PATHS")
    if not labels:
        raise ConfigError("no labels to evaluate against; pass labels=PATHS")
    loaded = model if isinstance(model, LoadedModel) else load_checkpoint(model, lazy=True)
    card: ModelCard = loaded.card
    names = [c.name for c in card.classes]
    source = _label_source(cfg, card, images, labels)
    lookup = source.class_lookup(card.classes)
    kind = source.kind
    cover = np.array([n == names[0] or n in source.known_classes for n in names])
    obj_ids = _object_class_ids(cfg.object_classes, names, cover)
    frames = (
        [
            read_vector_labels(
                str(p), label_field=cfg.label_field, lookup=lookup, layer=cfg.label_layer
            )
            for p in labels
        ]
        if kind == "vector"
        else []
    )

    cm = ConfusionMatrix(names)
    pred_objects: dict[int, list[Any]] = {c: [] for c in obj_ids}
    true_objects: dict[int, list[Any]] = {c: [] for c in obj_ids}
    results: list[ImageResult] = []
    best = _Focus()
    label_paths = [str(p) for p in labels]
    scoring = _Scoring(
        kind, label_paths, lookup, frames, cm, cover, obj_ids, best, pred_objects, true_objects,
        instance=card.task == "instance",
    )  # fmt: skip
    n = len(images)
    keep_dir = cfg.keep_predictions
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
    pcfg = PredictConfig(**{**cfg.predict.__dict__, "overwrite": True, "probabilities": None})
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp:
        outdir = keep_dir or Path(tmp)
        class_paths: list[Path] = []
        for i, image in enumerate(images):
            dst = outdir / f"{i:03d}_{Path(image).stem}_classes.tif"
            class_paths.append(dst)
            run_scene(
                image,
                dst,
                loaded,
                pcfg,
                progress=_image_progress(progress, i, n),
                instance_vectors=(
                    InstanceVectors(dst.with_suffix(".gpkg")) if scoring.instance else None
                ),
            )
            results.append(
                _score_prediction(
                    i, image, dst, scoring, cfg, loaded.card, keep=keep_dir is not None
                )
            )
            if progress is not None:
                progress((i + 1) * 1000, n * 1000)
        sample = None
        if best.image >= 0:
            sample = _sample(
                best, images, class_paths, label_paths, kind, lookup, frames, card, cfg
            )
    objects = tuple(
        object_metrics(names[c], pred_objects[c], true_objects[c], iou_threshold=cfg.iou_threshold)
        for c in obj_ids
    )
    intervals = image_bootstrap_iou(
        [np.asarray(r.confusion) for r in results],
        cm.covered,
        resamples=INTERVAL_RESAMPLES,
        level=INTERVAL_LEVEL,
    )
    return EvalReport(
        model=card.name,
        classes=card.classes,
        labelled_classes=tuple(source.known_classes),
        pixel=cm.metrics(),
        objects=objects,
        images=tuple(results),
        elapsed_s=time.perf_counter() - t0,
        sample=sample,
        pixel_interval=tuple(intervals),
    )


@dataclass
class _Scoring:
    """What scoring accumulates over the images of one evaluation, and the truth it reads."""

    kind: str
    label_paths: list[str]
    lookup: Any
    frames: list[Any]
    cm: ConfusionMatrix
    cover: np.ndarray
    obj_ids: list[int]
    best: _Focus
    pred_objects: dict[int, list[Any]]
    true_objects: dict[int, list[Any]]
    #: An instance model: its objects are its own polygons, not a vectorized class raster.
    instance: bool = False


def _score_prediction(
    i: int, image: Any, dst: Path, s: _Scoring, cfg: EvalConfig, card: ModelCard, *, keep: bool
) -> ImageResult:
    """Score image `i`'s class raster `dst` (or its polygons) into `s`; the image's row."""
    written: dict[int, list[Any]] | None = None
    if cfg.through_polygons or s.instance:
        dst, written = _through_polygons(dst, s.obj_ids, written_by_run=s.instance)
    with RasterSource(dst) as cls_src:
        truth = _Truth(s.kind, s.label_paths, i, cls_src.spec, s.lookup, s.frames)
        before = {c: len(s.pred_objects[c]) for c in s.obj_ids}
        try:
            img_cm = _score_image(
                i, cls_src, truth, s.cm, s.cover, s.obj_ids, cfg, s.best, s.pred_objects,
                s.true_objects,
            )  # fmt: skip
        finally:
            truth.close()
        spec = cls_src.spec
    if written is None:
        _clean_like_vectorize(s.pred_objects, before, card, spec)
    else:
        px = abs(spec.transform.a * spec.transform.e)
        for c in s.obj_ids:
            s.pred_objects[c][before[c] :] = [
                g for g in written[c] if g.area >= cfg.min_object_pixels * px
            ]
    labelled_px = int(img_cm.matrix.sum())
    img_metrics = img_cm.metrics()
    if labelled_px == 0:
        warnings.warn(
            f"no labelled pixel lies on {image}; check that labels and image overlap",
            GeosegWarning,
            stacklevel=3,
        )
    return ImageResult(
        path=str(image),
        width=spec.width,
        height=spec.height,
        labelled_pixels=labelled_px,
        mean_iou=img_metrics.mean_iou,
        prediction=str(dst) if keep else None,
        class_iou={c.name: c.iou for c in img_metrics.classes if c.iou is not None},
        confusion=img_cm.matrix.tolist(),
    )


def _label_source(
    cfg: EvalConfig, card: ModelCard, images: Sequence[Any], labels: Sequence[Any]
) -> SourceConfig:
    """The labels as a training source would read them, checked against the model's classes."""
    names = [c.name for c in card.classes]
    source = SourceConfig(
        name="evaluation",
        images=tuple(str(p) for p in images),
        labels=tuple(str(p) for p in labels),
        labelled_classes=tuple(cfg.labelled_classes or names[1:]),
        absent_classes=tuple(cfg.absent_classes),
        label_field=cfg.label_field,
        label_layer=cfg.label_layer,
        label_type=cfg.label_type,
        class_map=cfg.class_map,
    ).checked(card.classes)
    if source.kind == "raster" and len(labels) not in (1, len(images)):
        raise ConfigError(
            f"{len(labels)} label rasters for {len(images)} images; pass one per image (same "
            "order) or one covering all"
        )
    return source


def _object_class_ids(
    wanted: Sequence[str] | None, names: Sequence[str], cover: np.ndarray
) -> list[int]:
    """Ids of the classes scored as objects: those asked for, or by default the labelled
    object-like classes (buildings, fields)."""
    if wanted is None:
        wanted = tuple(n for n in names[1:] if n in OBJECT_CLASSES and cover[names.index(n)])
    bad = [n for n in wanted if n not in names[1:]]
    if bad:
        raise ConfigError(
            f"object_classes {bad} are not classes of the model ({list(names[1:])})",
            field="object_classes",
        )
    return [names.index(n) for n in wanted]


@dataclass
class _Focus:
    """The strip with the most labelled foreground so far: where the overlay looks."""

    count: int = -1
    image: int = -1
    row: int = 0
    col: int = 0


def _image_progress(progress: ProgressFn | None, i: int, n: int) -> ProgressFn | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(i * 1000 + 900 * done // max(total, 1), n * 1000)

    return report


def _score_image(
    i: int,
    cls_src: Any,
    truth: _Truth,
    cm: ConfusionMatrix,
    cover: np.ndarray,
    obj_ids: Sequence[int],
    cfg: EvalConfig,
    focus: _Focus,
    pred_objects: dict[int, list[Any]],
    true_objects: dict[int, list[Any]],
) -> ConfusionMatrix:
    """Compare one class raster with the truth strip by strip; collect object polygons."""
    from geoseg.vectorize.polygonize import polygonize_strips

    spec = cls_src.spec
    img_cm = ConfusionMatrix(cm.names)

    def strips() -> Any:
        for r0 in range(0, spec.height, cfg.strip_rows):
            win = PixelWindow(r0, 0, min(cfg.strip_rows, spec.height - r0), spec.width)
            pred = cls_src.read(win)[0][0].astype(np.int64)
            true = truth.read(win)
            cm.update(true, pred, cover)
            img_cm.update(true, pred, cover)
            fg = (true > 0) & (true != IGNORE_INDEX)
            count = int(fg.sum())
            if count > focus.count:
                rows, cols = np.nonzero(fg)
                focus.count, focus.image = count, i
                focus.row = r0 + int(rows.mean()) if count else r0
                focus.col = int(cols.mean()) if count else spec.width // 2
            yield r0, np.where(np.isin(pred, obj_ids), pred, 0).astype(np.uint8)

    for rec in polygonize_strips(strips(), spec.transform, skip_values=(0,)):
        if rec.pixel_count >= cfg.min_object_pixels:
            pred_objects[rec.value].append(rec.geometry)
    px = abs(spec.transform.a * spec.transform.e)
    for c in obj_ids:
        if truth.kind == "vector":
            true_objects[c] += truth.objects(c, cfg.min_object_pixels * px)
        else:
            true_objects[c] += _raster_objects(truth, spec, c, cfg)
    return img_cm


@no_pam_sidecars()
def _through_polygons(
    classes: Path, obj_ids: Sequence[int], *, written_by_run: bool = False
) -> tuple[Path, dict[int, list[Any]]]:
    """Vectorize a class raster as ``predict -o X.gpkg`` does and rasterize the polygons back.

    Returns the rasterized copy (beside ``classes``, same grid, nodata kept) and the
    written polygons of the object classes, in the raster's CRS.  ``written_by_run``:
    the polygons are already beside the raster (``<stem>.gpkg``, an instance model's
    objects, one polygon each), not vectorized from it.
    """
    import pyogrio

    from geoseg.pipeline import VectorizeConfig, run_vectorize

    gpkg = classes.with_suffix(".gpkg")
    if not written_by_run:
        run_vectorize(classes, gpkg, VectorizeConfig(overwrite=True))
    with rasterio.open(classes) as ds:
        profile = ds.profile
        original = ds.read(1)
        tags = ds.tags()
        crs = ds.crs
    infos = [ClassInfo.from_dict(c) for c in json.loads(tags["GEOSEG_CLASSES"])]
    painted = np.zeros_like(original)
    written: dict[int, list[Any]] = {c: [] for c in obj_ids}
    layers = {name for name, _ in pyogrio.list_layers(gpkg)}
    for info in infos:
        if not info.vectorize or info.layer not in layers:
            continue
        frame = pyogrio.read_dataframe(gpkg, layer=info.layer)
        if frame.empty:
            continue
        if frame.crs is not None and crs is not None and not frame.crs.equals(crs):
            frame = frame.to_crs(crs)
        geoms = [g for g in frame.geometry.values if g is not None and not g.is_empty]
        if info.id in written:
            written[info.id] = [q for g in geoms for q in shapely.get_parts(g)]
        rasterio.features.rasterize(
            geoms, out=painted, transform=profile["transform"], default_value=info.id
        )
    painted[original == 255] = 255
    out = classes.with_name(classes.stem + "_polygons.tif")
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(painted, 1)
        ds.update_tags(**tags)
    return out, written


def _clean_like_vectorize(
    pred_objects: dict[int, list[Any]], before: dict[int, int], card: ModelCard, spec: Any
) -> None:
    """Apply the model card's polygon clean-up to one image's predicted objects.

    Object scores then describe the polygons ``geoseg predict -o X.gpkg`` and
    ``geoseg vectorize`` write (small specks dropped, holes filled, buildings
    squared), not raw pixel outlines.
    """
    from geoseg.pipeline import clean_and_measure, cleanup_for

    for c, start in before.items():
        raw = pred_objects[c][start:]
        if not raw or spec.crs is None:
            continue
        params = cleanup_for(card.class_by_id(c), card.postprocess, None)
        cleaned, _, _, _ = clean_and_measure(raw, params, spec.crs, spec.bounds)
        pred_objects[c][start:] = [g for g in cleaned if g is not None]


def _raster_objects(truth: _Truth, spec: Any, class_id: int, cfg: EvalConfig) -> list[Any]:
    """True polygons of ``class_id`` from a label raster (a second pass, strip by strip)."""
    from geoseg.vectorize.polygonize import polygonize_strips

    def strips() -> Any:
        for r0 in range(0, spec.height, cfg.strip_rows):
            win = PixelWindow(r0, 0, min(cfg.strip_rows, spec.height - r0), spec.width)
            yield r0, (truth.read(win) == class_id).astype(np.uint8)

    return [
        rec.geometry
        for rec in polygonize_strips(strips(), spec.transform, skip_values=(0,))
        if rec.pixel_count >= cfg.min_object_pixels
    ]


def _sample(
    focus: _Focus,
    images: Sequence[str | Path],
    class_paths: Sequence[Path],
    labels: Sequence[str],
    kind: str,
    lookup: dict[str | int, int],
    frames: list[Any],
    card: ModelCard,
    cfg: EvalConfig,
) -> OverlaySample:
    """Image, truth and prediction of a window centred on the most labelled strip."""
    i = focus.image
    with RasterSource(class_paths[i]) as cls_src:
        spec = cls_src.spec
        size_r, size_c = min(cfg.sample_size, spec.height), min(cfg.sample_size, spec.width)
        r0 = int(np.clip(focus.row - size_r // 2, 0, spec.height - size_r))
        c0 = int(np.clip(focus.col - size_c // 2, 0, spec.width - size_c))
        win = PixelWindow(r0, c0, size_r, size_c)
        pred = cls_src.read(win)[0][0]
        truth = _Truth(kind, labels, i, spec, lookup, frames)
        try:
            true = truth.read(win)
        finally:
            truth.close()
    with RasterSource(images[i], assume_crs=cfg.predict.assume_crs) as probe:
        bands = select_bands(probe.spec, card.bands, cfg.predict.bands)
    with RasterSource(images[i], bands=bands, assume_crs=cfg.predict.assume_crs) as src:
        data, valid = src.read(win)
    return OverlaySample(str(images[i]), win, display_rgb(data, valid), true, pred)


def _palette(classes: Sequence[ClassInfo]) -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)
    for c in classes:
        pal[c.id] = c.rgb
    return pal


def _plot_confusion(report: EvalReport) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [c.name for c in report.classes]
    m = report.pixel.confusion.astype(np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(names)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.0 * k + 2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for r in range(k):
        for c in range(k):
            ax.text(
                c,
                r,
                f"{norm[r, c]:.2f}\n{int(m[r, c]):,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[r, c] > 0.5 else "black",
            )
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _plot_overlay(report: EvalReport, s: OverlaySample) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pal = _palette(report.classes)

    def blend(classes: np.ndarray) -> np.ndarray:
        colour = pal[np.clip(classes, 0, 255)].astype(np.float64)
        show = (classes > 0) & (classes != IGNORE_INDEX)
        out = s.rgb.astype(np.float64)
        out[show] = 0.45 * out[show] + 0.55 * colour[show]
        return out.astype(np.uint8)

    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, img, title in zip(
        axes, [s.rgb, blend(s.truth), blend(s.pred)], ["image", "truth", "prediction"], strict=True
    ):
        ax.imshow(img)
        ax.set_title(title)
        ax.set_axis_off()
    handles = [
        Patch(color=(c.rgb[0] / 255, c.rgb[1] / 255, c.rgb[2] / 255), label=c.name)
        for c in report.classes[1:]
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)))
    w = s.window
    fig.suptitle(
        f"{Path(s.image).name}: rows {w.row_off}-{w.row_end}, cols {w.col_off}-{w.col_end}"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def write_report(report: EvalReport, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``metrics.json``, ``report.md``, ``confusion.png`` and ``overlay.png``.

    Raises
    ------
    OutputExistsError
        A report file exists and ``overwrite`` is false.
    """
    from geoseg.io.atomic import atomic_output, check_output_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["metrics.json", "report.md", "confusion.png"] + (
        ["overlay.png"] if report.sample else []
    )
    for name in names:
        check_output_path(out / name, overwrite=overwrite)
    written = []
    with atomic_output(out / "metrics.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    written.append(out / "metrics.json")
    with atomic_output(out / "report.md", overwrite=overwrite) as tmp:
        tmp.write_text(report.to_markdown(), encoding="utf-8")
    written.append(out / "report.md")
    figures = [("confusion.png", _plot_confusion(report))]
    if report.sample is not None:
        figures.append(("overlay.png", _plot_overlay(report, report.sample)))
    for name, fig in figures:
        with atomic_output(out / name, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png")
        written.append(out / name)
    return written


from geoseg._callable import forward_calls  # noqa: E402

forward_calls(__name__, "evaluate")
