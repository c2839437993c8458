"""Interpolate a fine-tune with the weights it started from (WiSE-FT).

Wortsman et al. 2022 ("Robust fine-tuning of zero-shot models"): the weights
``(1 - alpha) * start + alpha * fine_tuned`` often keep most of what a fine-tune gained on
its own data while losing less on imagery it never saw.  Every continuation of stage 4
gained Dubai buildings and lost SpaceNet Rio (docs/training.md), the trade this is for.

A fine-tune that added classes after the start's own (``split_init`` in its card's training
config, e.g. background split into road and water) is interpolated with the start split the
same way, so both networks have the same outputs and the start's grouped probability is its
own.  The fine-tune's card is kept, with the interpolation in its provenance and no metrics::

    python examples/bundled/wise.py geoseg/models/bundled/default runs/bundled-aux-split/last \\
        runs/wise/aux-split-050 --alpha 0.5
    geoseg models merge runs/wise/aux-split-050 -o runs/wise/aux-split-050-merged \\
        --into background=road,water
    python examples/bundled/package.py runs/wise/aux-split-050-merged --dest runs/wise/scored
    python examples/bundled/evaluate_heldout.py runs/wise/scored runs/wise/eval \\
        --split-from geoseg/models/bundled/default
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geoseg.models import ModelCard, build_model, load_checkpoint, save_checkpoint
from geoseg.training.loop import load_init_weights


def interpolate(start: Path, fine_tuned: Path, alpha: float) -> tuple[Any, ModelCard]:
    """The network ``(1 - alpha) * start + alpha * fine_tuned`` and the fine-tune's card.

    Raises
    ------
    ValueError
        If ``alpha`` is outside 0..1 or the networks cannot be matched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    tuned = load_checkpoint(fine_tuned)
    first = load_checkpoint(start)
    card = tuned.card
    names = [c.name for c in card.classes]
    theirs_names = [c.name for c in first.card.classes]
    if names == theirs_names:
        base = first.model
    else:
        # The start, split the way the fine-tune's run split it: the same outputs.
        shared = len(theirs_names)
        if names[:shared] != theirs_names:
            raise ValueError("the fine-tune's classes do not begin with the start's")
        split = {
            names.index(child): names.index(parent)
            for parent, children in (card.training.get("split_init") or {}).items()
            for child in children
        }
        if len(split) != len(names) - shared:
            raise ValueError(
                "the fine-tune added classes without split_init; their start rows would be "
                "random, so there is nothing to interpolate them with"
            )
        base = build_model(card)
        load_init_weights(base, start, shared, split)
    mine, theirs = base.state_dict(), tuned.model.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise ValueError("the two networks differ in their tensors; they cannot be interpolated")
    mixed = {
        k: ((1 - alpha) * mine[k].float() + alpha * theirs[k].float()).to(theirs[k].dtype)
        if theirs[k].is_floating_point()
        else theirs[k]
        for k in theirs
    }
    tuned.model.load_state_dict(mixed)
    provenance = dict(card.provenance)
    provenance["wise_ft"] = {"start": str(start), "fine_tuned": str(fine_tuned), "alpha": alpha}
    return tuned.model, card.replace(provenance=provenance, metrics={})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", type=Path, help="checkpoint the fine-tune started from")
    ap.add_argument("fine_tuned", type=Path, help="the fine-tune's checkpoint")
    ap.add_argument("out", type=Path, help="checkpoint directory to write")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tune (0..1)")
    args = ap.parse_args()
    try:
        model, card = interpolate(args.start, args.fine_tuned, args.alpha)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"wrote {save_checkpoint(model, card, args.out)}")


if __name__ == "__main__":
    main()
