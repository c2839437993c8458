"""Streaming vectorization vs one whole-raster ``rasterio.features.shapes`` call.

Builds realistic class rasters with the sample-scene generator (buildings, vegetation,
cropland; 0.5 m pixels) at two sizes and runs, each in a fresh process so peak RSS is
its own:

* ``whole``: read the whole class raster, one ``rasterio.features.shapes`` call,
  shapely polygons for every non-background region (what a naive tool does);
* ``stream``: :func:`geoseg.vectorize.polygonize_strips` over 512-row strips read from
  the file (identical polygons, bounded memory);
* ``vectorize``: the full ``geoseg vectorize`` path (streaming polygonize, class clean-up,
  area/perimeter, styled GeoPackage written atomically).

Prints Mpx/s, polygons/s and peak RSS, and the stream/whole ratios.  Usage::

    python benchmarks/bench_vectorize.py [--sizes 8192,16384] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_json

WHOLE = r"""
import json, resource, sys, time
import numpy as np, rasterio, shapely
from rasterio.features import shapes
path = sys.argv[1]
t0 = time.perf_counter()
with rasterio.open(path) as ds:
    arr = ds.read(1); tr = ds.transform
n = 0
polys = [shapely.geometry.shape(g) for g, v in shapes(arr, mask=arr != 0, transform=tr, connectivity=4)]
n = len(polys)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "polygons": n, "pixels": arr.size,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

STREAM = r"""
import json, resource, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.io.read import iter_strips, describe
from geoseg.vectorize import polygonize_strips
path = sys.argv[1]
spec = describe(path)
t0 = time.perf_counter()
n = 0
for rec in polygonize_strips(iter_strips(path, rows=512), spec.transform, skip_values=(0,)):
    n += 1
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "polygons": n, "pixels": spec.width * spec.height,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FULL = r"""
import json, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.pipeline import VectorizeConfig, run_vectorize
from geoseg.models.card import ClassInfo
path, out = sys.argv[1], sys.argv[2]
classes = (ClassInfo(0, "background", "#d9d9d9", vectorize=False), ClassInfo(1, "building", "#e41a1c", "buildings"),
           ClassInfo(2, "vegetation", "#4daf4a"), ClassInfo(3, "cropland", "#ffd92f"))
t0 = time.perf_counter()
st = run_vectorize(path, out, VectorizeConfig(classes=classes, overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t0, "polygons": sum(st.polygons.values()),
                  "pixels": st.pixels, "peak_mb": st.peak_rss_mb}))
"""


def make_classes(work: Path, size: int) -> Path:
    from geoseg.synth import SceneSpec, write_scene

    path = work / f"synth-classes-{size}.tif"
    if not path.exists():
        write_scene(SceneSpec(size, size, seed=1), work / f"synth-image-{size}.tif", path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="8192,16384")
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        src = make_classes(work, size)
        res = {
            "whole": run_json(WHOLE, src),
            "stream": run_json(STREAM, src),
            "vectorize": run_json(FULL, src, work / f"vec-{size}.gpkg"),
        }
        rows.append((size, res))
    print("| size | path | polygons | s | Mpx/s | polygons/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for size, res in rows:
        for name, r in res.items():
            print(
                f"| {size}² | {name} | {r['polygons']:,} | {r['seconds']:.1f} | "
                f"{r['pixels'] / 1e6 / r['seconds']:.1f} | {r['polygons'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} |"
            )
    print()
    for size, res in rows:
        w, s = res["whole"], res["stream"]
        print(
            f"{size}²: stream/whole throughput {w['seconds'] / s['seconds']:.2f}x, "
            f"peak memory stream/whole {s['peak_mb'] / w['peak_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
