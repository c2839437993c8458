"""Average the weights of several runs of one network (a uniform "model soup").

Wortsman et al. 2022: fine-tunes that start from the same weights can be averaged into one
network of the same size and speed.  Every run must have the same architecture, classes,
bands and pixel size, and band statistics within 0.02; the card of the first run is kept
(its normalisation included), with the list of runs in its provenance and no metrics.  Used for the weight-average rows of docs/training.md::

    python examples/bundled/soup.py runs/soup/s4/last runs/ablate/augmin/run/last \\
        runs/ablate/augmin-seed1/run/last runs/ablate/noscale/run/last \\
        runs/ablate/noscale-seed1/run/last
    python examples/bundled/package.py runs/soup/s4/last --dest runs/soup/s4/scored
    python examples/bundled/evaluate_heldout.py runs/soup/s4/scored runs/soup/s4/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from geoseg.models import load_checkpoint, save_checkpoint

#: Largest difference of band mean or std (inputs scaled to [0, 1]) between averaged runs.
TOLERANCE = 0.02


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="checkpoint directory to write")
    ap.add_argument("runs", type=Path, nargs="+", help="checkpoint directories to average")
    args = ap.parse_args()
    loaded = [load_checkpoint(p) for p in args.runs]
    first = loaded[0].card

    def key(card):  # what must agree exactly for an average to mean anything
        return (
            card.architecture,
            card.encoder,
            card.bands,
            card.classes,
            card.pixel_size_m,
            card.input_range,
            card.contact_class,
        )

    for run, other in zip(args.runs[1:], loaded[1:], strict=True):
        if key(other.card) != key(first):
            raise SystemExit(
                f"soup: {run} differs from {args.runs[0]} in its network, classes or pixel "
                "size; only runs of one network from one start can be averaged"
            )
        # Runs measure their band statistics on chips their seed picks (a few thousandths
        # apart); the average keeps the first run's, so they must be close.
        apart = max(
            abs(a - b)
            for a, b in zip(
                (*other.card.mean, *other.card.std), (*first.mean, *first.std), strict=True
            )
        )
        if apart > TOLERANCE:
            raise SystemExit(
                f"soup: {run} normalises its inputs {apart:.3f} away from {args.runs[0]} "
                f"(more than {TOLERANCE}); its weights expect other inputs"
            )
    states = [m.model.state_dict() for m in loaded]
    mean = {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
        if v.is_floating_point()
        else v
        for k, v in states[0].items()
    }
    net = loaded[0].model
    net.load_state_dict(mean)
    provenance = {**first.provenance, "weight_average_of": [str(p) for p in args.runs]}
    # the runs' own validation scores do not describe the average
    card = first.replace(provenance=provenance, metrics={})
    save_checkpoint(net, card, args.out, overwrite=True)
    print(f"wrote {args.out}: the mean of {len(args.runs)} runs")


if __name__ == "__main__":
    main()
