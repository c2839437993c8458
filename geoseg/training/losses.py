"""Partial-label ("marginal") segmentation losses: cross-entropy, focal, Dice and Lovász.

Each training chip comes from a source that labels only some classes.  Its
``labelled`` row says which: a pixel labelled with class ``c`` is supervised as
usual, but a pixel the source calls *background* only tells us "none of this
source's labelled classes".  Its likelihood is therefore the summed probability
of every class the source does not label, background included::

    loss = -log( sum_{k not labelled by the source} p_k )

so an unlabelled tree in a cropland-only source is not pushed towards
background.  For a source that labels every class this is ordinary
cross-entropy.

All four losses work on the same *merged* distribution ``q``: per chip, the
probabilities of the unlabelled classes are summed into the background slot
(class 0) and those classes get no slot of their own.  Cross-entropy and focal
loss are the usual formulas on ``q``; Dice compares ``q`` with the one-hot
target class by class, counting each class only over chips where it has a slot;
Lovász-softmax (Berman et al. 2018, segmentation-models-pytorch's implementation)
is the convex surrogate of each class's IoU over the batch, computed on ``q``.
Class weights weigh pixels by their target class (cross-entropy, focal) or
classes in the Dice mean; the Lovász term ignores them.  Pixels equal to
``ignore_index`` count nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from geoseg.errors import ConfigError
from geoseg.training.config import IGNORE_INDEX

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PartialLabelLoss",
    "contact_loss",
    "distill_unlabelled",
    "labelled_matrix",
    "merged_log_probs",
    "partial_cross_entropy",
    "partial_dice",
    "partial_focal",
    "partial_lovasz",
]


def labelled_matrix(labelled: Sequence[Sequence[int]], n_classes: int) -> Tensor:
    """One row per source: True for the classes it labels (never for background 0).

    Parameters
    ----------
    labelled : sequence of sequence of int
        Class ids each source labels.
    n_classes : int
        Number of model classes.

    Returns
    -------
    torch.Tensor
        bool ``(sources, n_classes)``.

    Examples
    --------
    >>> labelled_matrix([[1], [1, 2]], 3).tolist()
    [[False, True, False], [False, True, True]]
    """
    out = torch.zeros((len(labelled), n_classes), dtype=torch.bool)
    for i, ids in enumerate(labelled):
        for c in ids:
            if not 0 < c < n_classes:
                raise ConfigError(f"labelled class id {c} must be in 1..{n_classes - 1}")
            out[i, c] = True
    return out


def merged_log_probs(logits: Tensor, labelled: Tensor) -> Tensor:
    """Log-probabilities of the merged distribution ``q`` (see the module docstring).

    Parameters
    ----------
    logits : torch.Tensor
        float ``(N, K, H, W)``.
    labelled : torch.Tensor
        bool ``(N, K)``: classes labelled by each chip's source (column 0 is
        ignored: background always receives the unlabelled mass).

    Returns
    -------
    torch.Tensor
        float32 ``(N, K, H, W)``: slot 0 holds ``log sum`` of the probabilities of
        background and every unlabelled class, labelled classes keep their
        log-probability, unlabelled classes are ``-inf``.
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    absorbed = ~labelled.to(device=logits.device, dtype=torch.bool)
    absorbed[:, 0] = True
    absorbed4 = absorbed[:, :, None, None]
    background = torch.logsumexp(logp.masked_fill(~absorbed4, float("-inf")), dim=1)
    logq = logp.masked_fill(absorbed4, float("-inf"))
    return torch.cat([background[:, None], logq[:, 1:]], dim=1)


def _target_terms(
    logq: Tensor, target: Tensor, class_weights: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Per-pixel ``log q[target]`` and pixel weights (0 on ignored pixels)."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    logq_t = logq.gather(1, safe[:, None]).squeeze(1)
    if class_weights is not None:
        weight = class_weights.to(logq.device, torch.float32)[safe]
    else:
        weight = torch.ones_like(logq_t)
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    # A target the source does not label has q = 0; it cannot be learnt from, so it is
    # left out rather than allowed to turn the loss infinite.
    finite = torch.isfinite(logq_t)
    weight = torch.where(finite, weight, torch.zeros_like(weight))
    logq_t = torch.where(finite, logq_t, torch.zeros_like(logq_t))
    return logq_t, weight


def _weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    total = weight.sum()
    if total <= 0:
        return values.sum() * 0.0
    return (values * weight).sum() / total


def partial_cross_entropy(
    logits: Tensor,
    target: Tensor,
    labelled: Tensor,
    *,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Partial-label cross-entropy, averaged over (weighted) labelled pixels.

    Parameters
    ----------
    logits : torch.Tensor
        float ``(N, K, H, W)``.
    target : torch.Tensor
        int ``(N, H, W)``: class ids; 0 means "none of the source's labelled
        classes"; ``ignore_index`` is ignored.
    labelled : torch.Tensor
        bool ``(N, K)``, see :func:`merged_log_probs`.
    class_weights : torch.Tensor, optional
        float ``(K,)``; a pixel weighs ``class_weights[target]``.
    ignore_index : int

    Returns
    -------
    torch.Tensor
        Scalar; 0 when no pixel is labelled.

    Examples
    --------
    A vegetation-probable pixel called background by a cropland-only source
    (classes background, vegetation, cropland) costs little:

    >>> import torch, math
    >>> logits = torch.log(torch.tensor([0.1, 0.8, 0.1])).view(1, 3, 1, 1)
    >>> target = torch.zeros(1, 1, 1, dtype=torch.long)
    >>> cropland_only = torch.tensor([[False, False, True]])
    >>> round(float(partial_cross_entropy(logits, target, cropland_only)), 4)
    0.1054
    >>> round(-math.log(0.9), 4)
    0.1054
    """
    logq_t, weight = _target_terms(
        merged_log_probs(logits, labelled), target, class_weights, ignore_index
    )
    return _weighted_mean(-logq_t, weight)


def partial_focal(
    logits: Tensor,
    target: Tensor,
    labelled: Tensor,
    *,
    gamma: float = 2.0,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Partial-label focal loss ``-(1 - q_t)^gamma log q_t`` (Lin et al. 2017).

    Parameters as :func:`partial_cross_entropy`, plus the focusing exponent
    ``gamma`` (0 gives cross-entropy).
    """
    logq_t, weight = _target_terms(
        merged_log_probs(logits, labelled), target, class_weights, ignore_index
    )
    q_t = logq_t.exp()
    return _weighted_mean(-((1.0 - q_t).clamp(min=0.0) ** gamma) * logq_t, weight)


def partial_dice(
    logits: Tensor,
    target: Tensor,
    labelled: Tensor,
    *,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> Tensor:
    """Partial-label soft Dice loss: ``1 - dice`` averaged over classes present.

    For each class ``k``, over the chips where ``k`` has a slot in the merged
    distribution (the source labels ``k``; background always has one) and their
    labelled pixels::

        dice_k = (2 * sum(q_k * t_k) + smooth) / (sum(q_k) + sum(t_k) + smooth)

    The loss is the (class-weighted) mean of ``1 - dice_k`` over classes that
    occur in the targets of the batch, as in smp's ``DiceLoss``.

    Parameters as :func:`partial_cross_entropy`; ``smooth`` keeps the ratio
    finite.
    """
    logq = merged_log_probs(logits, labelled)
    q = logq.exp()
    valid = (target != ignore_index)[:, None]
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    onehot = torch.zeros_like(q).scatter_(1, safe[:, None], 1.0)
    slot = labelled.to(device=q.device, dtype=torch.bool).clone()
    slot[:, 0] = True
    use = (valid & slot[:, :, None, None]).to(q.dtype)
    q = q * use
    onehot = onehot * use
    dims = (0, 2, 3)
    inter = (q * onehot).sum(dims)
    denom = q.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    present = (onehot.sum(dims) > 0).to(q.dtype)
    weight = present
    if class_weights is not None:
        weight = weight * class_weights.to(q.device, q.dtype)
    if weight.sum() <= 0:
        return logits.sum() * 0.0
    return ((1.0 - dice) * weight).sum() / weight.sum()


def partial_lovasz(
    logits: Tensor,
    target: Tensor,
    labelled: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Partial-label Lovász-softmax loss: a convex surrogate of ``1 - IoU`` per class.

    The Lovász-softmax of segmentation-models-pytorch over the whole batch, on the
    merged distribution ``q`` (see the module docstring), averaged over the classes
    that occur in the targets.  A class without a slot in a chip has ``q = 0`` there,
    and target pixels of such a class are left out (as cross-entropy does), so those
    pixels add nothing to its term: a source is never asked about a class it does
    not label.  A batch without a labelled pixel costs 0.

    Parameters as :func:`partial_cross_entropy`, without class weights.

    Examples
    --------
    A confident, correct prediction costs almost nothing; a wrong one almost 1:

    >>> import torch
    >>> target = torch.tensor([[[0, 1], [1, 2]]])
    >>> every = torch.tensor([[False, True, True]])
    >>> right = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2) * 20.0
    >>> round(float(partial_lovasz(right, target, every)), 4)
    0.0
    >>> wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2) * 20.0
    >>> round(float(partial_lovasz(wrong, target, every)), 4)
    1.0
    """
    from segmentation_models_pytorch.losses import LovaszLoss

    logq = merged_log_probs(logits, labelled)
    slot = labelled.to(device=logits.device, dtype=torch.bool).clone()
    slot[:, 0] = True
    target = target.long()
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target)
    has_slot = slot.gather(1, safe.flatten(1)).view_as(target)
    target = torch.where(has_slot, target, torch.full_like(target, ignore_index))
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    # smp's multiclass Lovász takes logits and applies a softmax over the classes;
    # the softmax of log q is q itself (q sums to 1, unlabelled slots are -inf -> 0).
    lovasz = LovaszLoss("multiclass", ignore_index=ignore_index)
    return lovasz(logq, target)


class PartialLabelLoss(nn.Module):
    """A weighted sum of partial-label cross-entropy, Dice, focal and Lovász terms.

    Parameters
    ----------
    terms : sequence of (str, float)
        ``("ce" | "dice" | "focal" | "lovasz", weight)`` pairs, e.g.
        ``[("ce", 1), ("dice", 1)]``.
    class_weights : sequence of float, optional
        One weight per class, shared by every term.
    gamma : float
        Focal exponent.
    ignore_index : int

    Examples
    --------
    >>> import torch
    >>> loss = PartialLabelLoss([("ce", 1.0), ("dice", 0.5)])
    >>> logits = torch.zeros(2, 3, 4, 4)
    >>> target = torch.zeros(2, 4, 4, dtype=torch.long)
    >>> labelled = torch.tensor([[False, True, True], [False, True, False]])
    >>> total, parts = loss(logits, target, labelled)
    >>> sorted(parts)
    ['ce', 'dice']
    """

    def __init__(
        self,
        terms: Sequence[tuple[str, float]],
        *,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        known = {"ce", "dice", "focal", "lovasz"}
        bad = [name for name, _ in terms if name not in known]
        if bad or not terms:
            raise ConfigError(f"unknown loss term(s) {bad}; use ce, dice, focal and/or lovasz")
        self.terms = [(name, float(w)) for name, w in terms]
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        weights = (
            None
            if class_weights is None
            else torch.tensor(list(class_weights), dtype=torch.float32)
        )
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(
        self, logits: Tensor, target: Tensor, labelled: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and the value of each term (as floats, for logging)."""
        cw: Tensor | None = self.class_weights  # type: ignore[assignment]
        total = logits.sum() * 0.0
        parts: dict[str, float] = {}
        for name, weight in self.terms:
            if name == "ce":
                value = partial_cross_entropy(
                    logits, target, labelled, class_weights=cw, ignore_index=self.ignore_index
                )
            elif name == "focal":
                value = partial_focal(
                    logits,
                    target,
                    labelled,
                    gamma=self.gamma,
                    class_weights=cw,
                    ignore_index=self.ignore_index,
                )
            elif name == "lovasz":
                value = partial_lovasz(logits, target, labelled, ignore_index=self.ignore_index)
            else:
                value = partial_dice(
                    logits, target, labelled, class_weights=cw, ignore_index=self.ignore_index
                )
            total = total + weight * value
            parts[name] = float(value.detach())
        return total, parts


def distill_unlabelled(
    logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    labelled: Tensor,
) -> Tensor:
    """Keep a teacher's split of each background pixel among the classes a source leaves out.

    Where a source calls a pixel background (target 0: "none of my labelled
    classes"), the labels say nothing about how that pixel divides between
    background and the classes the source does not label.  This term asks the
    network to divide it as the teacher (the network a fine-tune started from)
    does: the KL divergence ``KL(t || s)`` between the teacher's and the network's
    distributions over those classes, each renormalised over them, averaged over
    such pixels ("learning without forgetting", Li and Hoiem 2016, restricted to
    what the labels leave open).  Zero where a source labels every class.

    Parameters
    ----------
    logits, teacher_logits : torch.Tensor
        float ``(N, K, H, W)``: the network's and the teacher's.
    target : torch.Tensor
        int ``(N, H, W)``, as :func:`partial_cross_entropy`.
    labelled : torch.Tensor
        bool ``(N, K)``: classes with a slot of their own (labelled or declared
        absent), as :func:`merged_log_probs`.

    Examples
    --------
    A building-only chip: the network calls a street pixel vegetation, the
    teacher background; the term is the KL divergence between their splits:

    >>> import torch, math
    >>> student = torch.log(torch.tensor([0.1, 0.1, 0.8])).view(1, 3, 1, 1)
    >>> teacher = torch.log(torch.tensor([0.8, 0.1, 0.1])).view(1, 3, 1, 1)
    >>> building_only = torch.tensor([[False, True, False]])
    >>> street = torch.zeros(1, 1, 1, dtype=torch.long)
    >>> kl = 0.8 / 0.9 * math.log(8) + 0.1 / 0.9 * math.log(1 / 8)
    >>> round(float(distill_unlabelled(student, teacher, street, building_only)), 4)
    1.6173
    >>> round(kl, 4)
    1.6173
    """
    open_ = ~labelled.to(device=logits.device, dtype=torch.bool)
    open_[:, 0] = True
    open4 = open_[:, :, None, None]
    logp = torch.log_softmax(logits.float(), dim=1).masked_fill(~open4, float("-inf"))
    logt = torch.log_softmax(teacher_logits.float(), dim=1).masked_fill(~open4, float("-inf"))
    logp = logp - torch.logsumexp(logp, dim=1, keepdim=True)
    logt = logt - torch.logsumexp(logt, dim=1, keepdim=True)
    t = logt.exp()
    kl = torch.where(t > 0, t * (logt - logp), torch.zeros_like(t)).sum(1)
    # only chips with something left open, and only their background pixels
    where = (target == 0) & (open_.sum(1) > 1)[:, None, None]
    if not bool(where.any()):
        return logits.sum() * 0.0
    return kl[where].mean()


def contact_loss(logit: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """Binary cross-entropy plus soft Dice of the contact output, over known pixels.

    Contact pixels are rare (a few per cent of an object's pixels at most), so
    the Dice term, computed over all known pixels of the batch at once, keeps
    the output from settling on "never".

    Parameters
    ----------
    logit : torch.Tensor
        float ``(N, H, W)``: the contact logits.
    target : torch.Tensor
        bool ``(N, H, W)``: contact pixels (:mod:`geoseg.training.contact`).
    known : torch.Tensor
        bool ``(N, H, W)``: pixels whose contact state the source knows.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a gradient path) when no pixel is known.

    Examples
    --------
    >>> import torch
    >>> t = torch.zeros(1, 2, 2, dtype=torch.bool)
    >>> t[0, 0, 0] = True
    >>> good = torch.where(t, 8.0, -8.0)
    >>> bad = -good
    >>> known = torch.ones_like(t)
    >>> bool(contact_loss(good, t, known) < 0.01 < contact_loss(bad, t, known))
    True
    """
    if not bool(known.any()):
        return logit.sum() * 0.0
    x = logit.float()[known]
    y = target[known].float()
    bce = nn.functional.binary_cross_entropy_with_logits(x, y)
    p = torch.sigmoid(x)
    dice = 1.0 - (2.0 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0)
    return bce + dice
