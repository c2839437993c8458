"""Pixel metrics of the confusion matrix against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.metrics import image_bootstrap_iou, image_bootstrap_iou_difference
from geoseg.training.metrics import ConfusionMatrix

NAMES = ["background", "building", "vegetation"]


def test_metrics_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 1, 255]])
    pred = np.array([[0, 1, 1, 0], [2, 0, 1, 2]])
    cm = ConfusionMatrix(NAMES)
    cm.update(truth, pred)
    # rows truth, cols prediction; the 255 pixel is skipped
    assert cm.matrix.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    m = cm.metrics()
    bg, bld, veg = m.classes
    # background: tp 1, fp 2, fn 1
    assert bg.iou == pytest.approx(1 / 4) and bg.dice == pytest.approx(2 / 5)
    assert bg.precision == pytest.approx(1 / 3) and bg.recall == pytest.approx(1 / 2)
    # building: tp 2, fp 1, fn 1
    assert bld.iou == pytest.approx(2 / 4) and bld.dice == pytest.approx(4 / 6)
    assert bld.precision == pytest.approx(2 / 3) and bld.recall == pytest.approx(2 / 3)
    # vegetation: tp 1, fp 0, fn 1
    assert veg.iou == pytest.approx(1 / 2) and veg.precision == 1.0 and veg.recall == 0.5
    assert m.mean_iou == pytest.approx((1 / 4 + 2 / 4 + 1 / 2) / 3)
    assert m.accuracy == pytest.approx(4 / 7)
    assert (bld.support, bld.predicted) == (3, 3)


def test_partial_labels_do_not_score_uncovered_classes():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([2, 0, 1, 2])  # vegetation predicted where the labels only know buildings
    cm = ConfusionMatrix(NAMES)
    cm.update(truth, pred, labelled=[False, True, False])
    assert cm.matrix.tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    m = cm.metrics()
    assert m.classes[2].iou is None
    assert m.classes[1].iou == pytest.approx(1 / 2)
    assert m.mean_iou == pytest.approx((2 / 3 + 1 / 2) / 2)
    # once some labels cover vegetation, it is scored
    cm.update(np.array([2]), np.array([2]))
    assert cm.metrics().classes[2].iou == 1.0


def test_empty_and_absent_classes():
    cm = ConfusionMatrix(NAMES)
    m = cm.metrics()
    assert m.mean_iou is None and m.accuracy is None
    cm.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    m = cm.metrics()
    assert m.classes[0].iou == 1.0 and m.classes[1].iou is None and m.mean_iou == 1.0


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_windows_add_up_to_the_whole(seed, n_windows):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, (n_windows * 4, 7))
    pred = rng.integers(0, 3, truth.shape)
    whole = ConfusionMatrix(NAMES)
    whole.update(truth, pred)
    parts = ConfusionMatrix(NAMES)
    for w in range(n_windows):
        parts.update(truth[w * 4 : (w + 1) * 4], pred[w * 4 : (w + 1) * 4])
    assert (parts.matrix == whole.matrix).all()
    assert parts.matrix.sum() == truth.size


def _iou(m: np.ndarray, c: int) -> float:
    tp = m[c, c]
    return float(tp / (m[c].sum() + m[:, c].sum() - tp))


def test_image_bootstrap_interval_brackets_the_pooled_iou_and_the_extremes():
    rng = np.random.default_rng(3)
    mats = [rng.integers(0, 200, size=(3, 3)) for _ in range(9)]
    pooled = np.sum(mats, axis=0)
    (bg, bld, veg) = image_bootstrap_iou(mats, [True, True, True], resamples=4000, seed=1)
    for c, iv in ((0, bg), (1, bld), (2, veg)):
        assert iv is not None
        lo, hi = iv
        per_image = [_iou(m, c) for m in mats]
        # a pooled IoU always lies between the smallest and largest single-image IoU
        assert min(per_image) - 1e-12 <= lo <= _iou(pooled, c) <= hi <= max(per_image) + 1e-12
        assert hi - lo > 0.01
    # deterministic for a seed, and an interval narrows when every image agrees
    assert image_bootstrap_iou(mats, [True] * 3, resamples=4000, seed=1)[1] == bld
    same = [mats[0]] * 9
    lo, hi = image_bootstrap_iou(same, [True] * 3)[1]  # type: ignore[misc]
    assert lo == pytest.approx(hi) == pytest.approx(_iou(mats[0], 1))


def test_image_bootstrap_needs_two_images_and_covered_classes():
    m = np.array([[5, 1], [1, 5]])
    assert image_bootstrap_iou([m], [True, True]) == [None, None]
    assert image_bootstrap_iou([m, m], [True, False])[1] is None
    zero = np.zeros((2, 2), dtype=int)
    assert image_bootstrap_iou([zero, zero], [True, True]) == [None, None]
    with pytest.raises(ValueError, match="level"):
        image_bootstrap_iou([m, m], [True, True], level=1.5)


def test_paired_difference_cancels_what_the_images_share():
    rng = np.random.default_rng(5)
    # images of very different difficulty; model a beats b by a few pixels on every one
    base = [rng.integers(0, 300, size=(2, 2)) + np.diag([k * 200, k * 50]) for k in range(8)]
    shift = np.array([[3, -3], [-3, 3]])
    a = [np.clip(m + shift, 0, None) for m in base]
    lo, hi = image_bootstrap_iou_difference(a, base, [True, True])[1]  # type: ignore[misc]
    assert 0 < lo <= hi
    (sa, sb) = (image_bootstrap_iou(a, [True, True])[1], image_bootstrap_iou(base, [True, True])[1])
    assert sa is not None and sb is not None
    assert sa[0] < sb[1]  # the single intervals overlap: alone they cannot tell a from b
    assert hi - lo < (sa[1] - sa[0]) / 3
    assert image_bootstrap_iou_difference(base, base, [True, True])[1] == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        image_bootstrap_iou_difference(base, base[:-1], [True, True])
