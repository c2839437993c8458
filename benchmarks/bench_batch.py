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

At scale (issue "Scale out", part 5) the raster is a mosaic of generated scenes
(``--scene mosaic``: a VRT that lays the 1 m scenes of ``--scenes-dir`` side by side,
cycling through them), the model may be the bundled one (``--model default``), the
plain and one-region runs can be left out (``--runs w1,w2``), and a last row times the
merge alone with GeoParquet output (``--resume`` of the 2-worker run with
``formats=("parquet",)``: every region reused, only the seams and the writer run)::

    python examples/bundled/prepare.py runs/bundled-inputs --scenes 12 --suburb-scenes 8
    python benchmarks/bench_batch.py --scene mosaic --size 16384 --region 4096 \
        --model default --runs w1,w2,parquet --json runs/bench-batch-16k.json

Each row also counts the seam pieces the regions left for the merge and the polygons
written.  ``--worker-cores 1`` gives each worker one network thread (one core), so that the
2-worker run has twice the compute of the 1-worker run, as on a cluster whose workers each
bring their own cores; by default every worker uses every core of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio

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
vstats = run_vectorize(out + ".tif", out + ".gpkg", VectorizeConfig(overwrite=True))
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "startup_s": 0.0, "regions_s": t1 - t0,
                  "predict_s": t1 - t0, "vectorize_s": t2 - t1, "seams_s": 0.0, "write_s": 0.0,
                  "tiles": stats.tiles, "regions": 1, "seam_pieces": 0,
                  "polygons": sum(vstats.polygons.values()), "reused": 0}))
"""

BATCH = r"""
import json, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.batch import WorkSpec, run_batch
from geoseg.pipeline import PredictConfig

if __name__ == "__main__":
    src, model, out, region, workers, formats, resume, cores = sys.argv[1:9]
    # cores > 0: each worker runs the network on that many threads in one session
    # (a worker with its own cores); 0: every worker uses every core (the default).
    predict = (PredictConfig(device="cpu", threads=int(cores), workers=1, readers=1)
               if int(cores) else PredictConfig(device="cpu"))
    work = WorkSpec("grid", (src,), region_size=(int(region), int(region)), model=model,
                    predict=predict)
    marks = {}

    def progress(stage, done, total):
        marks.setdefault(stage, time.perf_counter())

    t0 = time.perf_counter()
    resume = resume == "1"
    result = run_batch(work, out, workers=int(workers), overwrite=not resume, resume=resume,
                       progress=progress, dashboard_address=None,
                       formats=tuple(formats.split(",")))
    t1 = time.perf_counter()
    assert result.ok, result.failed
    records = [json.loads(x) for x in open(out + "/manifest.jsonl")]
    regions = [r for r in records if r["kind"] == "region"]
    done = set(result.computed)  # reused regions' records hold an earlier run's seconds
    print(json.dumps({"seconds": t1 - t0, "startup_s": marks.get("regions", t0) - t0,
                      "regions_s": result.stages["regions"],
                      "predict_s": sum(r["predict_s"] for r in regions if r["region"] in done),
                      "vectorize_s": sum(r["vectorize_s"] for r in regions
                                         if r["region"] in done),
                      "seams_s": result.stages.get("seams", 0.0),
                      "write_s": result.stages.get("write", 0.0),
                      "tiles": sum(r.get("tiles", 0) for r in regions),
                      "seam_pieces": sum(r.get("seam_pieces") or 0 for r in regions),
                      "polygons": sum(result.polygon_counts.values()),
                      "reused": len(result.reused),
                      "regions": result.regions}))
"""


def mosaic_vrt(path: Path, size: int, scenes: list[Path]) -> Path:
    """A ``size`` x ``size`` VRT laying the (equal-sized, 1 m) ``scenes`` side by side."""
    if path.exists():
        return path
    with rasterio.open(scenes[0]) as ds:
        tile, crs = ds.width, ds.crs.to_wkt()
    n = -(-size // tile)
    k = 0
    sources: list[list[str]] = [[], [], []]
    for r in range(n):
        for c in range(n):
            name = escape(str(scenes[k % len(scenes)].resolve()))
            k += 1
            w, h = min(tile, size - c * tile), min(tile, size - r * tile)
            for b in range(3):
                sources[b].append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{name}</SourceFilename>'
                    f"<SourceBand>{b + 1}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                    f'<DstRect xOff="{c * tile}" yOff="{r * tile}" xSize="{w}" ySize="{h}"/>'
                    "</SimpleSource>"
                )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b + 1}"><ColorInterp>{ci}</ColorInterp>'
        + "".join(sources[b])
        + "</VRTRasterBand>"
        for b, ci in enumerate(("Red", "Green", "Blue"))
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{escape(crs)}</SRS>'
        f"<GeoTransform>500000, 1, 0, 6000000, 0, -1</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--region", type=int, default=1536)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="tu-efficientnet_lite0")
    ap.add_argument("--model", default="random", help="random (arch/encoder), or a model")
    ap.add_argument("--scene", choices=["texture", "mosaic"], default="texture")
    ap.add_argument("--scenes-dir", default="runs/bundled-inputs/synthetic/images")
    ap.add_argument("--runs", default="plain,one,w1,w2", help="plain,one,w1,w2,parquet")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument(
        "--worker-cores",
        type=int,
        default=0,
        help="network threads of each worker (1: one core per worker, so that 2 workers have "
        "twice the cores of 1); 0: every worker uses every core",
    )
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "random":
        model = str(make_model(work, args.arch, args.encoder))
        model_name = f"random-weight {args.arch}/{args.encoder}"
    else:
        model = model_name = args.model
    if args.scene == "mosaic":
        scenes = sorted(Path(args.scenes_dir).glob("*.tif"))
        if not scenes:
            raise SystemExit(f"no generated scenes in {args.scenes_dir}; run prepare.py first")
        src = mosaic_vrt(work / f"mosaic-{args.size}.vrt", args.size, scenes)
    else:
        src = make_raster(work / f"scene-{args.size}.tif", args.size)
    mpx = args.size * args.size / 1e6
    catalogue = {
        "plain": ("plain run_scene + run_vectorize", None, None, "gpkg", "0"),
        "one": ("batch, 1 region, 1 worker", args.size, 1, "gpkg", "0"),
        "w1": ("batch, 1 worker", args.region, 1, "gpkg", "0"),
        "w2": ("batch, 2 workers", args.region, 2, "gpkg", "0"),
        "parquet": ("merge only, GeoParquet (resume of 2 workers)", args.region, 2, "parquet", "1"),
    }
    rows = []
    for key in args.runs.split(","):
        name, region, workers, formats, resume = catalogue[key]
        out = str(work / f"batch-{region}-{2 if key == 'parquet' else workers}")
        if region is None:
            r = run_json(PLAIN, src, model, work / "plain")
        else:
            r = run_json(
                BATCH, src, model, out, region, workers, formats, resume, args.worker_cores
            )
        r["run"] = name
        rows.append((key, r))
        print(f"# {name}: {r['seconds']:.1f} s at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    by = dict(rows)
    base = by.get("plain", by.get("w1", rows[0][1]))["seconds"]
    print(
        f"raster {args.size}² px ({args.scene}), regions {args.region}², {model_name}, "
        f"{os.cpu_count()} CPU cores"
        + (f", {args.worker_cores} network thread(s) per worker" if args.worker_cores else "")
    )
    print(
        "| run | regions | tiles | seam pieces | polygons | start s | regions s | predict s "
        "| vectorize s | seams s | write s | total s | Mpx/s | client share | vs first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for _, r in rows:
        stages = " | ".join(
            f"{r[k]:.1f}"
            for k in ("startup_s", "regions_s", "predict_s", "vectorize_s", "seams_s", "write_s")
        )
        client = (r["seams_s"] + r["write_s"]) / r["seconds"]
        print(
            f"| {r['run']} | {r['regions']} | {r['tiles']} | {r['seam_pieces']} | "
            f"{r['polygons']} | {stages} | {r['seconds']:.1f} | {mpx / r['seconds']:.3f} | "
            f"{client:.1%} | {r['seconds'] / base:.2f}x |"
        )
    if "w1" in by and "w2" in by:
        print(
            "speed-up of 2 workers over 1 (same regions): "
            f"{by['w1']['seconds'] / by['w2']['seconds']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"size": args.size, "region": args.region, "model": model_name,
                 "scene": args.scene, "rows": dict(rows)},
                indent=1,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
