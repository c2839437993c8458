"""Batch runs: throughput and per-stage seconds with 1 and 2 local workers.

On one synthetic raster (default 3072 px square, 0.5 m pixels) with a random-weight
UNet/efficientnet-lite0 (tile 512, overlap 64), each in a fresh process:

* plain: ``run_scene`` + ``run_vectorize`` over the whole raster (what ``geoseg predict -o
  x.gpkg`` does), torch using every core;
* batch, 1 region: ``run_batch`` with one local worker (all cores) and the whole raster as one
  region: the cost of the batch machinery alone (cluster start, manifest, VRT, merge);
* batch, 1 worker / 2 workers: ``run_batch`` over a grid of regions (default 1536 px) with one
  worker using every core, then with two workers splitting them.

Per stage: ``start`` (cluster start), ``regions`` (wall seconds of the region tasks), of which
the workers spent ``predict`` and ``vectorize`` seconds (summed over regions: with 2 workers
they overlap), ``seams`` (the client joins the polygons cut by region borders, the workers
clean them) and ``write`` (the GeoPackage).  For the plain run ``vectorize`` is the whole
``run_vectorize`` (writing included).  Tiles touching a region border are computed by every
region they touch (that is what makes regions exact), so the tile count of the grid runs
exceeds the plain run's.  It prints a Markdown table and the speed-up of 2 workers over 1::

    python benchmarks/bench_batch.py [--size 3072] [--region 1536] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_raster, run_json
from bench_inference import make_model

PLAIN = r"""
import json, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.pipeline import PredictConfig, VectorizeConfig, run_scene, run_vectorize
src, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
stats = run_scene(src, out + ".tif", model, PredictConfig(device="cpu", overwrite=True))
t1 = time.perf_counter()
run_vectorize(out + ".tif", out + ".gpkg", VectorizeConfig(overwrite=True))
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "startup_s": 0.0, "regions_s": t1 - t0,
                  "predict_s": t1 - t0, "vectorize_s": t2 - t1, "seams_s": 0.0, "write_s": 0.0,
                  "tiles": stats.tiles, "regions": 1}))
"""

BATCH = r"""
import json, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.batch import WorkSpec, run_batch
from geoseg.pipeline import PredictConfig

if __name__ == "__main__":
    src, model, out, region, workers = sys.argv[1:6]
    work = WorkSpec("grid", (src,), region_size=(int(region), int(region)), model=model,
                    predict=PredictConfig(device="cpu"))
    marks = {}

    def progress(stage, done, total):
        marks.setdefault(stage, time.perf_counter())

    t0 = time.perf_counter()
    result = run_batch(work, out, workers=int(workers), overwrite=True, progress=progress,
                       dashboard_address=None)
    t1 = time.perf_counter()
    assert result.ok, result.failed
    records = [json.loads(x) for x in open(out + "/manifest.jsonl")]
    regions = [r for r in records if r["kind"] == "region"]
    print(json.dumps({"seconds": t1 - t0, "startup_s": marks["regions"] - t0,
                      "regions_s": result.stages["regions"],
                      "predict_s": sum(r["predict_s"] for r in regions),
                      "vectorize_s": sum(r["vectorize_s"] for r in regions),
                      "seams_s": result.stages.get("seams", 0.0),
                      "write_s": result.stages.get("write", 0.0),
                      "tiles": sum(r.get("tiles", 0) for r in regions),
                      "regions": result.regions}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--region", type=int, default=1536)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="tu-efficientnet_lite0")
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work, args.arch, args.encoder)
    src = make_raster(work / f"scene-{args.size}.tif", args.size)
    mpx = args.size * args.size / 1e6
    runs = [
        ("plain run_scene + run_vectorize", None, None),
        ("batch, 1 region, 1 worker", args.size, 1),
        ("batch, 1 worker", args.region, 1),
        ("batch, 2 workers", args.region, 2),
    ]
    rows = []
    for name, region, workers in runs:
        out = str(work / f"batch-{region}-{workers}")
        if region is None:
            r = run_json(PLAIN, src, model, work / "plain")
        else:
            r = run_json(BATCH, src, model, out, region, workers)
        rows.append((name, r))
        print(f"# {name}: {r['seconds']:.1f} s at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    plain = rows[0][1]["seconds"]
    one = rows[2][1]["seconds"]
    print(
        f"raster {args.size}² px, regions {args.region}², {args.arch}/{args.encoder}, "
        f"tile 512, overlap 64, {os.cpu_count()} CPU cores"
    )
    print(
        "| run | regions | tiles | start s | regions s | predict s | vectorize s | seams s "
        "| write s | total s | Mpx/s | vs plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        stages = " | ".join(
            f"{r[k]:.1f}"
            for k in ("startup_s", "regions_s", "predict_s", "vectorize_s", "seams_s", "write_s")
        )
        print(
            f"| {name} | {r['regions']} | {r['tiles']} | {stages} | {r['seconds']:.1f} | "
            f"{mpx / r['seconds']:.3f} | {r['seconds'] / plain:.2f}x |"
        )
    print(f"speed-up of 2 workers over 1 (same regions): {one / rows[3][1]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
