"""Polygon clean-up of large components: ring by ring (current) vs whole-polygon repair (before).

The "smooth" (vegetation) and "simplify" (cropland, background) clean-up styles used to style
a polygon as a whole and repair it as a whole: ``shapely.make_valid`` on the smoothed polygon
and ``shapely.simplify(..., preserve_topology=True)``, which checks every ring against every
other.  A vegetation component with thousands of building holes made that take tens of
seconds and hundreds of MB.  The current code styles ring by ring and repairs only the rings
that came to meet (``geoseg/vectorize/clean.py``).  This script runs both on the same
polygons, each in a fresh process (so peak RSS is its own), and prints seconds, peak RSS,
their ratios and how far the results differ.

Then it runs the whole ``geoseg vectorize`` (polygonize, clean, write) with the clean-up in
one process and in the default number of worker processes, side by side.

Inputs: the generated scene's class raster (``geoseg.synth``; every class with its card-style
default clean-up) and a "vegetation with holes" raster (vegetation everywhere, one building
per 32x32 cell: one component with a hole per building).  Usage::

    python benchmarks/bench_cleanup.py [--size 4096] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_json
from bench_vectorize import _write_classes, make_holes_classes, make_scene_classes

RUN = r"""
import json, resource, sys, time
import numpy as np, shapely
from shapely.geometry import Polygon
from geoseg.io.read import describe, iter_strips
from geoseg.vectorize import polygonize_strips
import geoseg.vectorize.clean as C

method, path = sys.argv[1], sys.argv[2]
STYLE = {1: "regularize", 2: "smooth", 3: "simplify"}

if method == "whole":
    # The code before this change: style the whole polygon, then repair it as a whole.
    def style_part(polygon, params):
        tol = params.simplify_tolerance_m
        if params.style == "regularize":
            return C.regularize_polygon(polygon, simplify_tolerance=tol)
        if params.style == "smooth":
            rings = [C._chaikin(np.asarray(r.coords), params.smooth_iterations)
                     for r in (polygon.exterior, *polygon.interiors)]
            smooth = C.polygonal(Polygon(rings[0], rings[1:]))
            if smooth is None or tol <= 0:
                return smooth
            return shapely.simplify(smooth, tol, preserve_topology=True)
        if params.style == "simplify":
            return shapely.simplify(polygon, tol, preserve_topology=True)
        return polygon
    C._style_part = style_part

spec = describe(path)
by_class = {}
for rec in polygonize_strips(iter_strips(path, rows=512), spec.transform, skip_values=(0, 255)):
    by_class.setdefault(rec.value, []).append(rec.geometry)
t0 = time.perf_counter()
areas, counts = {}, {}
for value, geoms in sorted(by_class.items()):
    out = C.clean_geometries(geoms, C.default_cleanup(STYLE[value]), crs=spec.crs,
                             bounds=spec.bounds)
    kept = [g for g in out if g is not None]
    areas[value] = float(sum(g.area for g in kept))
    counts[value] = len(kept)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "areas": areas, "counts": counts,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


VECTORIZE = r"""
import json, resource, sys, threading, time
import psutil
from geoseg.models import load_card
from geoseg.pipeline import VectorizeConfig, run_vectorize
src, dst, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
classes = load_card("default").classes  # the generated classes are the bundled model's
me, peak_all, done = psutil.Process(), [0], threading.Event()
def sample():  # this process and every process it started (forkserver, workers), together
    while not done.wait(0.05):
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        peak_all[0] = max(peak_all[0], total)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
stats = run_vectorize(
    src, dst, VectorizeConfig(overwrite=True, workers=workers or None, classes=classes)
)
seconds = time.perf_counter() - t0
done.set()
sampler.join()
print(json.dumps({"seconds": seconds, "polygons": stats.polygons, "area": stats.area_m2,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "all_mb": peak_all[0] / 2**20}))
"""


def make_vegetation_holes(work: Path, size: int) -> Path:
    """Vegetation (2) everywhere with one building (1) per 32x32 cell."""
    import rasterio
    from rasterio.windows import Window

    src = make_holes_classes(work, size, size)
    path = work / f"veg-holes-classes-{size}.tif"

    def rows_of(r: int, n: int) -> Any:
        with rasterio.open(src) as ds:
            a = ds.read(1, window=Window(0, r, size, n))
        a[a == 0] = 2
        return a

    return _write_classes(path, size, size, rows_of)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = {
        "generated scene": make_scene_classes(args.workdir, args.size, args.size),
        "vegetation with holes": make_vegetation_holes(args.workdir, args.size),
    }
    print(f"{args.size}² class rasters at 0.5 m; clean-up of every class with its default style")
    print("| raster | method | s | peak RSS MB | kept polygons | total area m² |")
    print("|---|---|---|---|---|---|")
    for name, path in cases.items():
        res = {m: run_json(RUN, m, path) for m in ("whole", "rings")}
        for m, label in (("whole", "whole polygon (before)"), ("rings", "ring by ring")):
            r = res[m]
            print(
                f"| {name} | {label} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
                f"{sum(r['counts'].values()):,} | {sum(r['areas'].values()):,.0f} |"
            )
        w, g = res["whole"], res["rings"]
        diff = max(
            abs(g["areas"][k] - w["areas"][k]) / max(w["areas"][k], 1e-9) for k in w["areas"]
        )
        print(
            f"| {name} | ratio | **{w['seconds'] / g['seconds']:.1f}x faster** | "
            f"{w['peak_mb'] / g['peak_mb']:.2f}x less | largest area difference per class "
            f"{100 * diff:.2f} % | |"
        )
    from geoseg.pipeline import default_cleanup_workers

    n = default_cleanup_workers()
    print()
    print(f"`geoseg vectorize` end to end, clean-up in 1 process vs {n} (default here)")
    print(
        "| raster | clean-up workers | s | peak RSS MB (main process) "
        "| peak RSS MB (all processes, sampled) | polygons |"
    )
    print("|---|---|---|---|---|---|")
    for name, path in cases.items():
        runs: dict[int, dict[str, Any]] = {}
        for nw in (1, n):
            runs[nw] = run_json(VECTORIZE, path, args.workdir / f"bench-{nw}.gpkg", nw)
            print(
                f"| {name} | {nw} | {runs[nw]['seconds']:.1f} | {runs[nw]['peak_mb']:.0f} | "
                f"{runs[nw]['all_mb']:.0f} | {sum(runs[nw]['polygons'].values()):,} |"
            )
        same = runs[1]["polygons"] == runs[n]["polygons"] and runs[1]["area"] == runs[n]["area"]
        print(
            f"| {name} | ratio | **{runs[1]['seconds'] / runs[n]['seconds']:.2f}x faster** | | "
            f"{runs[n]['all_mb'] / runs[1]['all_mb']:.2f}x the memory | "
            f"same polygons and areas: {same} |"
        )


if __name__ == "__main__":
    main()
