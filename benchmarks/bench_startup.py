"""Start-up cost of a small prediction: lazy checkpoint (default) vs building the network first.

A ``geoseg predict`` on a small raster is dominated by start-up.  With a cached ONNX export
the default path loads the checkpoint lazily and never imports PyTorch; before, every run
imported torch, segmentation-models-pytorch and timm and built the network only to hash it.
This script runs both side by side, each in a fresh process, the same raster and model:

* ``lazy``: ``run_scene(src, dst, "default")`` as the CLI does;
* ``eager``: ``load_checkpoint(model)`` (imports torch and builds the network), then the
  same ``run_scene`` with the loaded network.

It prints wall seconds, peak RSS and whether torch was imported, best of ``--rounds``
interleaved rounds.  Usage::

    python benchmarks/bench_startup.py [--size 1024] [--rounds 3] [--model default]
        [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_raster, run_json

RUN = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from geoseg.pipeline import PredictConfig, run_scene
mode, src, model, out = sys.argv[1:5]
if mode == "eager":
    from geoseg.models import load_checkpoint
    model = load_checkpoint(model)
run_scene(src, out, model, PredictConfig(device="cpu", overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()
    from geoseg.models.checkpoint import load_card, resolve_model_path

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model_path(args.model)
    pixel = load_card(model).pixel_size_m or 0.5
    src = make_raster(work / f"scene-{args.size}-{pixel:g}m.tif", args.size, pixel_size=pixel)
    dst = work / "startup-classes.tif"
    run_json(RUN, "lazy", src, model, dst)  # fills the ONNX export cache if it is empty
    results: dict[str, list[dict[str, float]]] = {"lazy": [], "eager": []}
    for _ in range(args.rounds):
        for mode in results:
            results[mode].append(run_json(RUN, mode, src, model, dst))
    print(f"model {args.model}; raster {args.size}² at {pixel:g} m; {args.rounds} rounds")
    print("| load | wall s (best) | wall s (median) | peak RSS MB | torch imported |")
    print("|---|---|---|---|---|")
    for mode, runs in results.items():
        secs = [r["seconds"] for r in runs]
        print(
            f"| {mode} | {min(secs):.2f} | {statistics.median(secs):.2f} | "
            f"{max(r['peak_mb'] for r in runs):.0f} | {runs[-1]['torch']} |"
        )
    lazy = min(r["seconds"] for r in results["lazy"])
    eager = min(r["seconds"] for r in results["eager"])
    print(f"lazy is {eager / lazy:.2f}x faster to a finished small raster")


if __name__ == "__main__":
    main()
