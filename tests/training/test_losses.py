"""Partial-label losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geoseg.errors import ConfigError
from geoseg.training.losses import (
    PartialLabelLoss,
    labelled_matrix,
    merged_log_probs,
    partial_cross_entropy,
    partial_dice,
    partial_focal,
    partial_lovasz,
)

# classes: 0 background, 1 vegetation, 2 cropland
CROPLAND_ONLY = torch.tensor([[False, False, True]])
FULL = torch.tensor([[False, True, True]])


def pixels(*probs: tuple[float, ...]) -> torch.Tensor:
    """Logits (1, K, 1, n) whose softmax is exactly ``probs`` per pixel."""
    p = torch.tensor(probs, dtype=torch.float64).T  # (K, n)
    return torch.log(p)[None, :, None, :].float()


def targets(*t: int) -> torch.Tensor:
    return torch.tensor(t, dtype=torch.long).view(1, 1, -1)


def test_tree_in_a_cropland_only_source_costs_little():
    logits = pixels((0.1, 0.8, 0.1))  # a vegetation-probable pixel ...
    background = targets(0)  # ... that the source calls background
    partial = partial_cross_entropy(logits, background, CROPLAND_ONLY)
    full = partial_cross_entropy(logits, background, FULL)
    assert float(partial) == pytest.approx(-math.log(0.1 + 0.8), abs=1e-6)  # 0.1054
    assert float(full) == pytest.approx(-math.log(0.1), abs=1e-6)  # 2.3026
    assert float(full) > 20 * float(partial)


def test_a_class_declared_absent_turns_background_into_its_negative():
    # classes: background, vegetation, cropland; a city source labels vegetation and
    # declares cropland absent: its background pixel predicted cropland is an error.
    logits = pixels((0.2, 0.1, 0.7))
    background = targets(0)
    vegetation_only = torch.tensor([[False, True, False]])
    city = labelled_matrix([[1, 2]], 3)  # labelled + absent classes get a slot
    silent = partial_cross_entropy(logits, background, vegetation_only)
    negative = partial_cross_entropy(logits, background, city)
    assert float(silent) == pytest.approx(-math.log(0.2 + 0.7), abs=1e-6)
    assert float(negative) == pytest.approx(-math.log(0.2), abs=1e-6)
    logits.requires_grad_(True)
    partial_cross_entropy(logits, background, city).backward()
    assert logits.grad is not None and float(logits.grad[0, 2].sum()) > 0  # cropland pushed down


def test_labelled_pixels_are_ordinary_cross_entropy():
    logits = pixels((0.1, 0.8, 0.1))
    assert float(partial_cross_entropy(logits, targets(2), CROPLAND_ONLY)) == pytest.approx(
        -math.log(0.1), abs=1e-6
    )
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 5, 4)
    target = torch.randint(0, 3, (3, 5, 4))
    every = torch.ones(3, 3, dtype=torch.bool)
    expected = F.cross_entropy(logits, target)
    assert float(partial_cross_entropy(logits, target, every)) == pytest.approx(
        float(expected), abs=1e-6
    )


def test_gradient_does_not_push_unlabelled_classes_towards_background():
    grads = {}
    for name, labelled in (("partial", CROPLAND_ONLY), ("full", FULL)):
        logits = pixels((0.1, 0.8, 0.1)).requires_grad_()
        partial_cross_entropy(logits, targets(0), labelled).backward()
        assert torch.isfinite(logits.grad).all()
        grads[name] = float(logits.grad[0, 1, 0, 0])  # d loss / d vegetation logit
    assert grads["partial"] <= 0 < grads["full"]


def test_ignored_pixels_count_nowhere():
    logits = pixels((0.5, 0.25, 0.25), (0.1, 0.1, 0.8))
    loss = partial_cross_entropy(logits, targets(0, 255), FULL)
    assert float(loss) == pytest.approx(-math.log(0.5), abs=1e-6)
    assert float(partial_cross_entropy(logits, targets(255, 255), FULL)) == 0.0


def test_class_weights_weigh_pixels_by_target():
    logits = pixels((0.5, 0.25, 0.25), (0.5, 0.25, 0.25))
    w = torch.tensor([1.0, 3.0, 1.0])
    loss = partial_cross_entropy(logits, targets(0, 1), FULL, class_weights=w)
    expected = (1 * -math.log(0.5) + 3 * -math.log(0.25)) / 4  # 1.2130
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # a background pixel of a partial source weighs like background (w[0])
    loss = partial_cross_entropy(logits, targets(0, 2), CROPLAND_ONLY, class_weights=w)
    expected = (1 * -math.log(0.75) + 1 * -math.log(0.25)) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_focal_loss_by_hand():
    logits = pixels((0.1, 0.8, 0.1))
    partial = partial_focal(logits, targets(0), CROPLAND_ONLY, gamma=2.0)
    full = partial_focal(logits, targets(0), FULL, gamma=2.0)
    assert float(partial) == pytest.approx(0.1**2 * -math.log(0.9), abs=1e-6)  # 0.00105
    assert float(full) == pytest.approx(0.9**2 * -math.log(0.1), abs=1e-5)  # 1.8651
    gamma0 = partial_focal(logits, targets(0), FULL, gamma=0.0)
    assert float(gamma0) == pytest.approx(-math.log(0.1), abs=1e-6)


def test_dice_by_hand():
    two = torch.tensor([[False, True]])
    logits = pixels((0.8, 0.2), (0.4, 0.6))
    d0 = (2 * 0.8 + 1) / (1.2 + 1 + 1)
    d1 = (2 * 0.6 + 1) / (0.8 + 1 + 1)
    loss = partial_dice(logits, targets(0, 1), two)
    assert float(loss) == pytest.approx(((1 - d0) + (1 - d1)) / 2, abs=1e-6)  # 0.2009

    logits = pixels((0.1, 0.8, 0.1), (0.1, 0.1, 0.8))
    partial = partial_dice(logits, targets(0, 2), CROPLAND_ONLY)
    d_bg = (2 * 0.9 + 1) / (1.1 + 1 + 1)  # background slot holds p_bg + p_veg
    d_crop = (2 * 0.8 + 1) / (0.9 + 1 + 1)
    assert float(partial) == pytest.approx(((1 - d_bg) + (1 - d_crop)) / 2, abs=1e-6)  # 0.1001
    full = partial_dice(logits, targets(0, 2), FULL)
    d_bg = (2 * 0.1 + 1) / (0.2 + 1 + 1)
    assert float(full) == pytest.approx(((1 - d_bg) + (1 - d_crop)) / 2, abs=1e-6)  # 0.2790
    weighted = partial_dice(
        logits, targets(0, 2), FULL, class_weights=torch.tensor([1.0, 1.0, 3.0])
    )
    assert float(weighted) == pytest.approx(((1 - d_bg) + 3 * (1 - d_crop)) / 4, abs=1e-6)


def test_combined_loss_is_the_weighted_sum():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6))
    target[0][target[0] == 1] = 0  # the cropland-only chip has no vegetation labels
    labelled = torch.cat([CROPLAND_ONLY, FULL])
    loss_fn = PartialLabelLoss(
        [("ce", 1.0), ("dice", 0.5), ("focal", 2.0), ("lovasz", 0.25)], gamma=1.5
    )
    total, parts = loss_fn(logits, target, labelled)
    expected = (
        partial_cross_entropy(logits, target, labelled)
        + 0.5 * partial_dice(logits, target, labelled)
        + 2.0 * partial_focal(logits, target, labelled, gamma=1.5)
        + 0.25 * partial_lovasz(logits, target, labelled)
    )
    assert float(total.detach()) == pytest.approx(float(expected.detach()), abs=1e-6)
    assert set(parts) == {"ce", "dice", "focal", "lovasz"}
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_merged_distribution_sums_to_one():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 3, 3)
    labelled = torch.tensor([[False, True, False, False], [False, False, True, True]])
    q = merged_log_probs(logits, labelled).exp()
    assert torch.allclose(q.sum(1), torch.ones(2, 3, 3), atol=1e-6)
    assert (q[0, 2:] == 0).all() and (q[1, 1] == 0).all()


def test_labelled_matrix_and_bad_terms():
    assert labelled_matrix([[2], [1, 2]], 3).tolist() == [[False, False, True], [False, True, True]]
    with pytest.raises(ConfigError):
        labelled_matrix([[0]], 3)
    with pytest.raises(ConfigError):
        PartialLabelLoss([("tversky", 1.0)])


def _lovasz_by_hand(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Lovász-softmax (Berman et al. 2018) over all pixels, written out with numpy-like steps."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).double()
    t = target.reshape(-1)
    losses = []
    for c in range(p.shape[1]):
        fg = (t == c).double()
        if fg.sum() == 0:
            continue
        errors = (fg - p[:, c]).abs()
        order = torch.argsort(errors, descending=True)
        e, g = errors[order], fg[order]
        inter = g.sum() - g.cumsum(0)
        union = g.sum() + (1 - g).cumsum(0)
        jac = 1 - inter / union
        grad = torch.cat([jac[:1], jac[1:] - jac[:-1]])
        losses.append(float((e * grad).sum()))
    return sum(losses) / len(losses)


def test_lovasz_on_a_fully_labelled_source_is_lovasz_softmax():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[1, 0, :2] = 255  # ignored pixels count nowhere
    full = torch.cat([FULL, FULL])
    keep = target != 255
    probs = logits.softmax(1)
    expected = _lovasz_by_hand(
        probs.permute(0, 2, 3, 1)[keep].T[None, :, :, None], target[keep].view(1, -1, 1)
    )
    assert float(partial_lovasz(logits, target, full)) == pytest.approx(expected, abs=1e-5)


def test_lovasz_merges_unlabelled_classes_into_background():
    # A cropland-only chip: vegetation has no slot, so the loss is the two-class
    # Lovász of (background + vegetation, cropland), and a chip where vegetation has
    # no slot adds nothing to the vegetation term of a mixed batch.
    torch.manual_seed(4)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[target == 1] = 0
    p = logits.softmax(1)
    merged = torch.stack([p[:, 0] + p[:, 1], torch.zeros_like(p[:, 1]), p[:, 2]], 1)
    expected = _lovasz_by_hand(merged, target)
    assert float(partial_lovasz(logits, target, CROPLAND_ONLY)) == pytest.approx(expected, abs=1e-5)
    # a vegetation-probable pixel called background costs less than under full labels
    tree = pixels((0.1, 0.8, 0.1), (0.05, 0.05, 0.9))
    called = targets(0, 2)
    assert float(partial_lovasz(tree, called, CROPLAND_ONLY)) < float(
        partial_lovasz(tree, called, FULL)
    )
    tree.requires_grad_(True)
    partial_lovasz(tree, called, CROPLAND_ONLY).backward()
    assert tree.grad is not None and torch.isfinite(tree.grad).all()


def test_distillation_keeps_the_teachers_split_of_background_pixels():
    from geoseg.training.losses import distill_unlabelled

    torch.manual_seed(5)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0][target[0] == 2] = 0  # chip 0: a vegetation-only source (classes bg, veg, crop)
    labelled = torch.tensor([[False, True, False], [False, True, True]])
    value = distill_unlabelled(student, teacher, target, labelled)
    # by hand: chip 0's background pixels, split between background and cropland
    s = student[0].detach().softmax(0)[[0, 2]]
    t = teacher[0].softmax(0)[[0, 2]]
    s, t = s / s.sum(0), t / t.sum(0)
    kl = (t * (t.log() - s.log())).sum(0)
    where = target[0] == 0
    assert float(value) == pytest.approx(float(kl[where].mean()), abs=1e-5)
    # chip 1 labels every class: nothing is left open, it adds nothing
    assert float(distill_unlabelled(student[1:], teacher[1:], target[1:], labelled[1:])) == 0.0
    # the teacher itself costs nothing, and gradients are finite
    assert float(distill_unlabelled(teacher, teacher, target, labelled)) == pytest.approx(
        0, abs=1e-6
    )
    value.backward()
    assert torch.isfinite(student.grad).all() and float(student.grad[1].abs().sum()) == 0.0


def test_lovasz_leaves_out_targets_without_a_slot_and_empty_batches():
    torch.manual_seed(6)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0, 0] = 1  # a vegetation label in a cropland-only chip: no slot, left out
    ignored = target.clone()
    ignored[0, 0, 0] = 255
    assert float(partial_lovasz(logits, target, CROPLAND_ONLY)) == pytest.approx(
        float(partial_lovasz(logits, ignored, CROPLAND_ONLY)), abs=1e-6
    )
    nothing = torch.full((1, 4, 4), 255)
    assert float(partial_lovasz(logits, nothing, FULL)) == 0.0
    loss_fn = PartialLabelLoss([("ce", 1.0), ("lovasz", 1.0)])
    total, _ = loss_fn(logits, nothing, FULL)
    assert float(total) == 0.0
