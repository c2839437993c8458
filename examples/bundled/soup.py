"""Average the weights of several runs of one network (a uniform "model soup").

Wortsman et al. 2022: fine-tunes that start from the same weights can be averaged into one
network of the same size and speed.  Every run must have the same architecture, classes,
bands and pixel size; the card of the first run is kept, with the list of runs in its
provenance.  Used for the weight-average rows of docs/training.md::

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="checkpoint directory to write")
    ap.add_argument("runs", type=Path, nargs="+", help="checkpoint directories to average")
    args = ap.parse_args()
    loaded = [load_checkpoint(p) for p in args.runs]
    first = loaded[0].card
    for run, other in zip(args.runs[1:], loaded[1:], strict=True):
        card = other.card
        same = (card.architecture, card.encoder, card.bands, card.classes, card.pixel_size_m)
        if same != (
            first.architecture,
            first.encoder,
            first.bands,
            first.classes,
            first.pixel_size_m,
        ):
            raise SystemExit(
                f"soup: {run} is another network, classes or pixel size than {args.runs[0]}"
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
    save_checkpoint(net, first.replace(provenance=provenance), args.out, overwrite=True)
    print(f"wrote {args.out}: the mean of {len(args.runs)} runs")


if __name__ == "__main__":
    main()
