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

__all__ = ["ClassMetrics", "ConfusionMatrix", "PixelMetrics"]


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
