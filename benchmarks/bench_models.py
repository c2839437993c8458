"""End-to-end speed of several models (and TTA modes) on the same raster, side by side.

Each model runs ``geoseg.pipeline.run_scene`` (GeoTIFF in, class COG out, default settings:
the engine ``--backend auto`` picks) on one synthetic raster at the model's pixel size, in
interleaved rounds (A, B, A, B, ...) so a shared machine slows every row alike; the best and
the median round are printed, with each row's ratio to the first.

Usage (from the repository root)::

    python benchmarks/bench_models.py --models old=/tmp/old_model,default --size 3072 --rounds 3
    python benchmarks/bench_models.py --models default --tta none,flips --size 2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_raster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default", help="comma list of [label=]model")
    ap.add_argument("--tta", default="none", help="comma list of TTA modes run for each model")
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()

    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.pipeline import PredictConfig, run_scene

    models = []
    for item in args.models.split(","):
        label, _, path = item.rpartition("=")
        models.append((label or path, load_checkpoint(path, lazy=True)))
    px = models[0][1].card.pixel_size_m or 1.0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = make_raster(work / f"models_{args.size}_{px:g}m.tif", args.size, pixel_size=px)
    rows = [(f"{label} tta={t}", m, t) for label, m in models for t in args.tta.split(",")]
    times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    mpx = args.size**2 / 1e6
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for rnd in range(args.rounds):
            for name, loaded, tta in rows:
                cfg = PredictConfig(overwrite=True, tta=tta)
                t0 = time.perf_counter()
                run_scene(src, Path(tmp) / "out.tif", loaded, cfg)
                times[name].append(time.perf_counter() - t0)
                print(f"round {rnd + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    print(f"\n{args.size}² px ({mpx:.1f} Mpx) at {px:g} m, {args.rounds} interleaved rounds")
    print("| model | best s | median s | Mpx/s (best) | Mpx/s (median) | best vs first row |")
    print("|---|---|---|---|---|---|")
    first = min(times[rows[0][0]])
    for name, _, _ in rows:
        best, med = min(times[name]), statistics.median(times[name])
        print(
            f"| {name} | {best:.1f} | {med:.1f} | {mpx / best:.2f} | {mpx / med:.2f} "
            f"| {first / best:.2f}x |"
        )


if __name__ == "__main__":
    main()
