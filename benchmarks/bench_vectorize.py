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

Prints Mpx/s, polygons/s and peak RSS, and the stream/whole ratios.

``--heights`` instead keeps the width fixed (``--width``) and grows the height, to
check that the streaming paths' memory stays bounded as a raster grows (a strip
spans the width, so memory may follow the width, never the height).  Class rasters
are written strip by strip, classes only, so the generator never holds the whole
raster.  Cases (``--cases``):

* ``scene``: the generated scene's classes (background skipped, as in ``--sizes``);
* ``scene-bg``: the same raster with background polygonized too: the road-connected
  background is one component spanning the raster, with every other region a hole;
* ``holes``: background everywhere with small buildings on a jittered grid (every
  32x32 pixels, some crossing strip seams), background polygonized: one component
  from top to bottom with one hole per building.

For each height it prints the peak RSS of ``stream`` and ``vectorize`` (each in a
fresh process) and the largest resident size sampled once per strip over the first and
the last quarter of the strips.  Usage::

    python benchmarks/bench_vectorize.py [--sizes 8192,16384] [--workdir /tmp/geoseg-bench]
    python benchmarks/bench_vectorize.py --heights 4096,16384,32768 [--width 4096]
        [--cases scene,scene-bg,holes]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

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

# Resident size now, in MB (Linux), sampled once per strip.
RSS_NOW = r"""
import os
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
samples = []
def sample_rss():
    with open("/proc/self/statm") as f:
        samples.append(int(f.read().split()[1]) * _PAGE_MB)
def quarters():
    k = max(1, len(samples) // 4)
    return {"rss_q1": max(samples[:k]), "rss_q4": max(samples[-k:])}
"""

STREAM = (
    RSS_NOW
    + r"""
import json, resource, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.io.env import gdal_env
from geoseg.io.read import iter_strips, describe
from geoseg.vectorize import polygonize_strips
path = sys.argv[1]
skip = tuple(int(v) for v in sys.argv[2].split(",") if v) if len(sys.argv) > 2 else (0,)
spec = describe(path)
def strips():
    for r, arr in iter_strips(path, rows=512):
        sample_rss()
        yield r, arr
t0 = time.perf_counter()
n = 0
with gdal_env():  # GDAL's block cache capped as geoseg's commands do
    for rec in polygonize_strips(strips(), spec.transform, skip_values=skip):
        n += 1
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "polygons": n, "pixels": spec.width * spec.height,
                  **quarters(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

FULL = (
    RSS_NOW
    + r"""
import json, sys, time
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.pipeline import VectorizeConfig, run_vectorize
from geoseg.models.card import ClassInfo
path, out = sys.argv[1], sys.argv[2]
background = len(sys.argv) > 3 and sys.argv[3] == "background"
classes = (ClassInfo(0, "background", "#d9d9d9", vectorize=background),
           ClassInfo(1, "building", "#e41a1c", "buildings"),
           ClassInfo(2, "vegetation", "#4daf4a"), ClassInfo(3, "cropland", "#ffd92f"))
def progress(done, total):
    sample_rss()
t0 = time.perf_counter()
st = run_vectorize(path, out, VectorizeConfig(classes=classes, overwrite=True), progress)
print(json.dumps({"seconds": time.perf_counter() - t0, "polygons": sum(st.polygons.values()),
                  "pixels": st.pixels, **quarters(), "peak_mb": st.peak_rss_mb}))
"""
)


def make_classes(work: Path, size: int) -> Path:
    from geoseg.synth import SceneSpec, write_scene

    path = work / f"synth-classes-{size}.tif"
    if not path.exists():
        write_scene(SceneSpec(size, size, seed=1), work / f"synth-image-{size}.tif", path)
    return path


def _write_classes(path: Path, width: int, height: int, rows_of: Any) -> Path:
    """Write a uint8 class GeoTIFF strip by strip from ``rows_of(row, n)``; keep it if present."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    tmp = path.with_suffix(".part.tif")
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5500000, 0.5, 0.5),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
        "bigtiff": "IF_SAFER",
    }
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, height, 512):
            n = min(512, height - r)
            ds.write(rows_of(r, n), 1, window=Window(0, r, width, n))
    tmp.rename(path)
    return path


def make_scene_classes(work: Path, width: int, height: int) -> Path:
    """Class raster of the generated scene, rendered strip by strip without the RGB image."""
    from rasterio.features import rasterize
    from rasterio.transform import Affine
    from shapely.geometry import box

    from geoseg.synth import SceneSpec
    from geoseg.synth.scene import scene_layout

    path = work / f"scene-classes-{width}x{height}.tif"
    if path.exists():
        return path
    lay = scene_layout(SceneSpec(width, height, seed=1))

    def rows_of(r: int, n: int) -> np.ndarray:
        # What geoseg.synth.render does for the classes: burn object index + 1, later wins.
        hits = np.sort(lay.tree.query(box(0, r, width, r + n)))
        idx = np.zeros((n, width), np.int32)
        if hits.size:
            shapes = zip(lay.geoms[hits], (hits + 1).tolist(), strict=True)
            idx = rasterize(
                shapes, out_shape=(n, width), transform=Affine.translation(0, r), dtype="int32"
            )
        return lay.classes[idx]

    return _write_classes(path, width, height, rows_of)


def make_holes_classes(work: Path, width: int, height: int) -> Path:
    """Background (0) everywhere, one building (1) of 3-20 px per 32x32 cell.

    Cells are offset by 16 rows from the 512-row strips, so a row of buildings sits on
    every seam.  Buildings keep a 1-pixel margin inside their cell, so the background
    is one component from top to bottom with a hole per building.
    """
    path = work / f"bg-holes-classes-{width}x{height}.tif"
    cell = 32

    def rows_of(r: int, n: int) -> np.ndarray:
        out = np.zeros((n, width), np.uint8)
        for k in range((r + 16) // cell, (r + n + 16 + cell - 1) // cell + 1):
            top = k * cell - 16
            rng = np.random.default_rng((7, k))
            ncell = width // cell
            sizes = rng.integers(3, 21, size=(ncell, 2))
            offs = (rng.random((ncell, 2)) * (cell - 1 - sizes)).astype(int) + 1
            for i, ((w, h), (dx, dy)) in enumerate(zip(sizes, offs, strict=True)):
                y0, y1 = max(top + dy, r), min(top + dy + h, r + n)
                if y0 < y1:
                    x0 = i * cell + dx
                    out[y0 - r : y1 - r, x0 : x0 + w] = 1
        return out

    return _write_classes(path, width, height, rows_of)


def run_heights(work: Path, width: int, heights: list[int], cases: list[str]) -> None:
    rows: list[tuple[str, int, str, dict[str, Any]]] = []
    for case in cases:
        for height in heights:
            if case == "holes":
                src = make_holes_classes(work, width, height)
            else:
                src = make_scene_classes(work, width, height)
            bg = case in ("scene-bg", "holes")
            gpkg = work / f"vec-{case}-{width}x{height}.gpkg"
            res = {
                "stream": run_json(STREAM, src, "" if bg else "0"),
                "vectorize": run_json(FULL, src, gpkg, "background" if bg else "-"),
            }
            gpkg.unlink(missing_ok=True)
            for name, r in res.items():
                rows.append((case, height, name, r))
                print(f"{case} {width}x{height} {name}: {r}", file=sys.stderr)
    print(
        "| case | width x height | path | polygons | s | RSS MB, 1st quarter | RSS MB, last quarter | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, height, name, r in rows:
        print(
            f"| {case} | {width} x {height} | {name} | {r['polygons']:,} | {r['seconds']:.1f} | "
            f"{r['rss_q1']:.0f} | {r['rss_q4']:.0f} | {r['peak_mb']:.0f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="8192,16384")
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    ap.add_argument("--heights", help="fixed width, these heights: e.g. 4096,16384,32768")
    ap.add_argument("--width", type=int, default=4096, help="width for --heights")
    ap.add_argument("--cases", default="scene,scene-bg,holes", help="cases for --heights")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.heights:
        cases = args.cases.split(",")
        unknown = set(cases) - {"scene", "scene-bg", "holes"}
        if unknown:
            ap.error(f"unknown cases {sorted(unknown)}; choose from scene, scene-bg, holes")
        run_heights(work, args.width, [int(h) for h in args.heights.split(",")], cases)
        return
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
