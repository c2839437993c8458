"""Instance model (Mask R-CNN) against a semantic model, end to end, side by side in one run.

Each model predicts the same rasters through :func:`geoseg.predict` to a GeoPackage (the
user's path: class raster and polygons), interleaved over several rounds so a shared
machine's drifting load falls on both; the best round of each model is reported as Mpx/s,
with its peak memory and polygon count, and the ratio of the two.

Usage::

    python benchmarks/bench_instances.py MODEL_A MODEL_B RASTER... [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def one_pass(model: object, rasters: list[str], tmp: Path, tag: str) -> tuple[float, int, int]:
    """Seconds, pixels and polygons of predicting every raster once."""
    import geoseg

    seconds = pixels = polygons = 0
    for i, src in enumerate(rasters):
        dst = tmp / f"{tag}_{i}.gpkg"
        t0 = time.perf_counter()
        result = geoseg.predict(src, dst, model=model, overwrite=True)
        seconds += time.perf_counter() - t0
        pixels += result.stats.pixels
        polygons += sum(result.vector_stats.polygons.values())
    return seconds, pixels, polygons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a")
    ap.add_argument("model_b")
    ap.add_argument("rasters", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import geoseg

    models = {name: geoseg.load_model(name) for name in (args.model_a, args.model_b)}
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-inst-") as d:
        tmp = Path(d)
        for loaded in models.values():  # warm-up: weights, ONNX export caches
            one_pass(loaded, args.rasters[:1], tmp, "warm")
        for r in range(args.rounds):
            for name, loaded in models.items():
                seconds, pixels, polygons = one_pass(loaded, args.rasters, tmp, f"r{r}")
                rate = pixels / 1e6 / seconds
                print(
                    f"round {r + 1} {name}: {rate:.3f} Mpx/s ({seconds:.1f} s, {polygons} polygons)"
                )
                if rate > best.get(name, {}).get("mpx_s", 0.0):
                    best[name] = {"mpx_s": rate, "seconds": seconds, "polygons": polygons}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a, b = (best[n]["mpx_s"] for n in models)
    print(f"best: {args.model_a} {a:.3f} Mpx/s, {args.model_b} {b:.3f} Mpx/s, ratio {a / b:.2f}")
    print(f"peak memory of the process (both models): {peak:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"best": best, "ratio": a / b, "peak_mb": peak}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
