"""Pixel metrics from a confusion matrix that is filled window by window.

:class:`ConfusionMatrix` accumulates counts from any number of label/prediction
arrays, so memory never depends on the size of the scene.  It understands
partial labels the same way the losses do: when the labels of a window only
cover some classes, a prediction of a class they do not cover counts as
background there (the labels cannot tell whether it is right), and metrics of
a class are only reported when some labels covered it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.types import IGNORE_INDEX

__all__ = [
    "ClassMetrics",
    "ConfusionMatrix",
    "PixelMetrics",
    "image_bootstrap_iou",
    "image_bootstrap_iou_difference",
]


@dataclass(frozen=True)
class ClassMetrics:
    """Pixel metrics of one class; ``None`` where undefined (no labels, no pixels).

    ``iou = tp / (tp + fp + fn)``, ``dice = f1 = 2 tp / (2 tp + fp + fn)``,
    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``.
    """

    name: str
    iou: float | None
    dice: float | None
    precision: float | None
    recall: float | None
    support: int
    predicted: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class PixelMetrics:
    """Per-class metrics, their mean IoU and the confusion matrix (rows: truth)."""

    classes: tuple[ClassMetrics, ...]
    mean_iou: float | None
    accuracy: float | None
    confusion: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "mean_iou": self.mean_iou,
            "accuracy": self.accuracy,
            "classes": {c.name: c.to_dict() for c in self.classes},
            "confusion": self.confusion.tolist(),
        }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


class ConfusionMatrix:
    """Counts of (true class, predicted class) pixel pairs.

    Parameters
    ----------
    class_names : sequence of str
        Class names in id order; class 0 is the background.
    ignore_index : int
        Label (and prediction) value that is skipped, e.g. nodata 255.

    Examples
    --------
    >>> cm = ConfusionMatrix(["background", "building"])
    >>> cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
    >>> m = cm.metrics()
    >>> m.classes[1].iou, round(m.mean_iou, 4)
    (0.6666666666666666, 0.5833)
    """

    def __init__(self, class_names: Sequence[str], *, ignore_index: int = IGNORE_INDEX) -> None:
        self.names = tuple(class_names)
        self.n = len(self.names)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.n, self.n), dtype=np.int64)
        self.covered = np.zeros(self.n, dtype=bool)
        self.covered[0] = True

    def update(
        self,
        truth: np.ndarray,
        pred: np.ndarray,
        labelled: Sequence[bool] | np.ndarray | None = None,
    ) -> None:
        """Add a window of labels and predictions.

        Parameters
        ----------
        truth, pred : numpy.ndarray
            Integer class ids of equal shape; ``ignore_index`` in either is skipped.
        labelled : sequence of bool, optional
            Per class: whether the labels of this window cover it (default: all).
            Predictions of uncovered classes count as background; labels of
            uncovered classes are skipped.
        """
        t = np.asarray(truth).ravel().astype(np.int64)
        p = np.asarray(pred).ravel().astype(np.int64)
        if t.shape != p.shape:
            raise ValueError(
                f"labels {np.shape(truth)} and predictions {np.shape(pred)} differ in shape"
            )
        keep = (t != self.ignore_index) & (p != self.ignore_index)
        keep &= (t >= 0) & (t < self.n) & (p >= 0) & (p < self.n)
        if labelled is not None:
            cover = np.asarray(labelled, dtype=bool).copy()
            cover[0] = True
            p = np.where(cover[np.clip(p, 0, self.n - 1)], p, 0)
            keep &= cover[np.clip(t, 0, self.n - 1)]
        else:
            cover = np.ones(self.n, dtype=bool)
        self.covered |= cover
        idx = t[keep] * self.n + p[keep]
        self.matrix += np.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (same classes)."""
        self.matrix += other.matrix
        self.covered |= other.covered

    def metrics(self) -> PixelMetrics:
        """Per-class IoU, Dice/F1, precision and recall; mean IoU over classes seen.

        The mean IoU averages classes that were covered by labels and occur in
        the labels or the predictions (IoU defined).
        """
        m = self.matrix
        tp = np.diag(m).astype(np.float64)
        fp = m.sum(axis=0) - tp
        fn = m.sum(axis=1) - tp
        out = []
        for i, name in enumerate(self.names):
            ok = bool(self.covered[i])
            out.append(
                ClassMetrics(
                    name=name,
                    iou=_ratio(tp[i], tp[i] + fp[i] + fn[i]) if ok else None,
                    dice=_ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]) if ok else None,
                    precision=_ratio(tp[i], tp[i] + fp[i]) if ok else None,
                    recall=_ratio(tp[i], tp[i] + fn[i]) if ok else None,
                    support=int(m[i].sum()),
                    predicted=int(m[:, i].sum()),
                )
            )
        ious = [c.iou for c in out if c.iou is not None]
        total = m.sum()
        return PixelMetrics(
            classes=tuple(out),
            mean_iou=float(np.mean(ious)) if ious else None,
            accuracy=_ratio(tp.sum(), total),
            confusion=m.copy(),
        )


def _resampled_ious(stacks: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Per stack, ``(resamples, classes)`` IoUs of the pooled matrices of the same resamples.

    Every stack is ``(images, classes, classes)`` over the same images in the same order;
    NaN where a resample leaves a class's IoU undefined.
    """
    n_images = stacks[0].shape[0]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    weights = np.zeros((resamples, n_images))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    out = []
    for stack in stacks:
        pooled = np.einsum("bn,nij->bij", weights, stack)
        tp = np.diagonal(pooled, axis1=1, axis2=2)
        den = pooled.sum(axis=1) + pooled.sum(axis=2) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(den > 0, tp / den, np.nan))
    return out


def _intervals(
    values: np.ndarray, covered: Sequence[bool] | np.ndarray, level: float
) -> list[tuple[float, float] | None]:
    tail = (1.0 - level) / 2.0
    out: list[tuple[float, float] | None] = []
    for c in range(len(covered)):
        v = values[:, c][~np.isnan(values[:, c])]
        if not covered[c] or v.size == 0:
            out.append(None)
            continue
        lo, hi = np.quantile(v, [tail, 1.0 - tail])
        out.append((float(lo), float(hi)))
    return out


def _stacks(*groups: Sequence[np.ndarray], level: float) -> list[np.ndarray] | None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    stacks = [np.asarray(g, dtype=np.float64) for g in groups]
    if any(st.shape != stacks[0].shape for st in stacks):
        raise ValueError(
            "the two evaluations must hold the same images with the same classes: "
            f"{' vs '.join(str(st.shape) for st in stacks)}"
        )
    if stacks[0].ndim != 3 or stacks[0].shape[0] < 2:
        return None
    return stacks


def image_bootstrap_iou(
    matrices: Sequence[np.ndarray],
    covered: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float] | None]:
    """Percentile interval of each class's pooled IoU, resampling whole images.

    Neighbouring pixels of one image are not independent draws, so the spread of a
    score is that of the images it was measured on: each resample draws as many
    images as there are, with replacement, pools their confusion matrices and takes
    each class's IoU; the interval holds the central ``level`` of those values. With
    a handful of images it is wide, and that is the point: a score measured on these
    images could have come out anywhere in it on other images like them.

    Parameters
    ----------
    matrices : sequence of numpy.ndarray
        One ``(n_classes, n_classes)`` confusion matrix per image (rows: truth).
    covered : sequence of bool
        Per class: whether some labels covered it (others get ``None``).
    resamples : int
        Number of bootstrap resamples.
    level : float
        Coverage of the interval, in (0, 1).
    seed : int
        Seed of the resampling (the same matrices give the same interval).

    Returns
    -------
    list of (float, float) or None
        Per class, the interval's low and high IoU; ``None`` for a class that is not
        covered, with fewer than two images, or where no resample defines its IoU.

    Examples
    --------
    >>> a = np.array([[8, 2], [2, 8]])  # building IoU 8/12
    >>> b = np.array([[9, 0], [0, 1]])  # building IoU 1
    >>> lo, hi = image_bootstrap_iou([a, b], [True, True])[1]
    >>> round(lo, 3), round(hi, 3)
    (0.667, 1.0)
    """
    stacks = _stacks(matrices, level=level)
    if stacks is None:
        return [None] * len(covered)
    (iou,) = _resampled_ious(stacks, resamples, seed)
    return _intervals(iou, covered, level)


def image_bootstrap_iou_difference(
    matrices_a: Sequence[np.ndarray],
    matrices_b: Sequence[np.ndarray],
    covered: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float] | None]:
    """Interval of ``IoU(a) - IoU(b)`` per class, two models scored on the same images.

    Both models' matrices are pooled over the *same* resampled images (a paired
    bootstrap), so what the images have in common (an easy image is easy for both)
    cancels: the interval of a difference is much narrower than the two single
    intervals suggest. An interval that holds 0 says these images do not tell the
    two models apart on that class.

    Parameters
    ----------
    matrices_a, matrices_b : sequence of numpy.ndarray
        Per image (the same images, in the same order), each model's confusion matrix.
    covered : sequence of bool
        Per class: whether some labels covered it.
    resamples, level, seed
        As :func:`image_bootstrap_iou`.

    Returns
    -------
    list of (float, float) or None
        Per class, the low and high end of the difference's interval.

    Raises
    ------
    ValueError
        The two lists differ in images or classes; ``level`` outside (0, 1).

    Examples
    --------
    >>> easy, hard = np.array([[9, 1], [1, 9]]), np.array([[5, 5], [5, 5]])
    >>> better = [easy + np.array([[1, -1], [-1, 1]]), hard + np.array([[1, -1], [-1, 1]])]
    >>> lo, hi = image_bootstrap_iou_difference(better, [easy, hard], [True, True])[1]
    >>> lo > 0
    True
    """
    stacks = _stacks(matrices_a, matrices_b, level=level)
    if stacks is None:
        return [None] * len(covered)
    iou_a, iou_b = _resampled_ious(stacks, resamples, seed)
    return _intervals(iou_a - iou_b, covered, level)
