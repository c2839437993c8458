"""Networks with finer outputs than their classes (``ModelCard.output_groups``).

A model can be trained on finer classes than it ships: Dubai's labels tell land,
road and water apart, and one "background" class holds all three.  Training on
the finer classes gives the network those distinctions to learn; shipping the
coarse class keeps one class definition for every user.  :class:`MergedOutputs`
wraps such a network: the probability of a class is the sum of the softmax
probabilities of its outputs, so its logit is their ``logsumexp``, and the
wrapped network returns one logit per class.  Softmax over those logits gives
exactly the summed probabilities; nothing downstream (blending, the argmax, the
ONNX graph, the training losses) needs to know about the groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from geoseg.errors import ModelCardError

if TYPE_CHECKING:
    from geoseg.models.card import ModelCard

__all__ = ["MergedOutputs", "merge_classes"]


def merge_classes(card: ModelCard, into: Mapping[str, Sequence[str]]) -> ModelCard:
    """The card of ``card``'s network with some classes merged into others.

    ``into`` maps a kept class to the classes merged into it (``{"background":
    ["road", "water"]}``).  The kept classes keep their order and are numbered
    0..K-1 again; ``output_groups`` says which of the network's outputs each one
    sums.  The weights are the same network's, under ``base.`` (see
    :class:`MergedOutputs`; :func:`geoseg.training.loop.load_init_weights` and
    :func:`geoseg.models.checkpoint.wrap_state_dict` map them).

    Raises
    ------
    ModelCardError
        Unknown class names, a class merged twice or into itself, or a card that
        already has groups or a contact output.

    Examples
    --------
    >>> from geoseg.models.card import ClassInfo, ModelCard
    >>> names = ["background", "building", "water"]
    >>> card = ModelCard("m", "unet", ("red",), tuple(
    ...     ClassInfo(i, n, "#000000") for i, n in enumerate(names)))
    >>> merged = merge_classes(card, {"background": ["water"]})
    >>> [c.name for c in merged.classes], merged.output_groups
    (['background', 'building'], ((0, 2), (1,)))
    """
    if card.output_groups or card.contact_class is not None:
        raise ModelCardError("merge_classes takes a card without output_groups or contact output")
    ids = {c.name: c.id for c in card.classes}
    merged_away: dict[str, str] = {}
    for keep, others in into.items():
        for name in [keep, *others]:
            if name not in ids:
                raise ModelCardError(
                    f"no class {name!r} to merge; the model's classes are {', '.join(ids)}"
                )
        for name in others:
            if name == keep or name in merged_away or name in into:
                raise ModelCardError(f"class {name!r} cannot be merged twice or into itself")
            merged_away[name] = keep
    kept = [c for c in card.classes if c.name not in merged_away]
    groups = tuple((c.id, *(ids[n] for n in into.get(c.name, ()))) for c in kept)
    classes = tuple(replace(c, id=i) for i, c in enumerate(kept))
    return card.replace(classes=classes, output_groups=groups)


class MergedOutputs(nn.Module):
    """``base``'s output logits merged into one logit per group (``logsumexp``).

    Parameters
    ----------
    base : torch.nn.Module
        Network returning ``(N, R, H, W)`` logits.
    groups : sequence of sequence of int
        Output ids of ``base`` per class; together they cover ``0..R-1`` once.

    Examples
    --------
    >>> net = MergedOutputs(nn.Conv2d(3, 4, 1), [[0, 2, 3], [1]])
    >>> x = torch.randn(1, 3, 4, 4)
    >>> p = net(x).softmax(1)
    >>> q = net.base(x).softmax(1)
    >>> bool(torch.allclose(p[:, 0], q[:, [0, 2, 3]].sum(1), atol=1e-6))
    True
    """

    def __init__(self, base: nn.Module, groups: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.base = base
        self.groups = [list(g) for g in groups]
        for i, g in enumerate(self.groups):
            self.register_buffer(f"_group{i}", torch.tensor(g, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        out = []
        for i, g in enumerate(self.groups):
            if len(g) == 1:
                out.append(y[:, g[0] : g[0] + 1])
            else:
                idx = getattr(self, f"_group{i}")
                out.append(torch.logsumexp(y.index_select(1, idx), dim=1, keepdim=True))
        return torch.cat(out, dim=1)
