"""GeoPackage writing: the spatial index built once at the end vs kept up row by row.

Writes the same polygons in batches three ways, interleaved over ``--rounds``:

* ``geoseg``: :class:`geoseg.io.write_vector.VectorWriter` (layers created without an
  index, the R-tree filled in one pass when the file is complete);
* ``triggers``: the same appends through pyogrio to a layer created with GDAL's
  ``SPATIAL_INDEX=YES`` (the index updated by its triggers on every insert);
* ``none``: the same appends with no index at all (the floor).

Usage::

    python benchmarks/bench_gpkg.py --polygons 200000 --batch 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from geoseg.io.write_vector import LayerSpec, VectorWriter


def _polygons(n: int) -> list[shapely.Geometry]:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1e5, n), rng.uniform(0, 1e5, n)
    return list(shapely.multipolygons([[b] for b in shapely.box(x, y, x + 12, y + 9)]))


def _fields(n: int) -> dict[str, list[object]]:
    return {"area_m2": [108.0] * n, "perimeter_m": [42.0] * n, "source": ["bench"] * n}


def write_geoseg(path: Path, geoms: list[shapely.Geometry], batch: int) -> None:
    spec = LayerSpec("buildings", 1, "building", "#e41a1c")
    with VectorWriter(path, crs="EPSG:32633", layers=[spec], metadata={}) as writer:
        for i in range(0, len(geoms), batch):
            chunk = geoms[i : i + batch]
            writer.write("buildings", chunk, _fields(len(chunk)))


def write_pyogrio(path: Path, geoms: list[shapely.Geometry], batch: int, index: bool) -> None:
    for i in range(0, len(geoms), batch):
        chunk = geoms[i : i + batch]
        frame = gpd.GeoDataFrame(_fields(len(chunk)), geometry=chunk, crs="EPSG:32633")
        pyogrio.write_dataframe(
            frame,
            path,
            layer="buildings",
            append=i > 0,
            geometry_type="MultiPolygon",
            layer_options=None if i else {"SPATIAL_INDEX": "YES" if index else "NO"},
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polygons", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    geoms = _polygons(args.polygons)
    ways = {
        "geoseg": lambda p: write_geoseg(p, geoms, args.batch),
        "triggers": lambda p: write_pyogrio(p, geoms, args.batch, index=True),
        "none": lambda p: write_pyogrio(p, geoms, args.batch, index=False),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, write in ways.items():
                path = Path(tmp) / f"{name}{r}.gpkg"
                t0 = time.perf_counter()
                write(path)
                times[name].append(time.perf_counter() - t0)
                path.unlink()
    base = statistics.median(times["triggers"])
    print(f"{args.polygons} polygons in batches of {args.batch}, {args.rounds} rounds (median)")
    for name, t in times.items():
        med = statistics.median(t)
        per = med / args.polygons * 1e6
        print(f"{name:9s} {med:7.2f} s  {per:6.1f} us/polygon  {med / base:5.2f} x triggers")


if __name__ == "__main__":
    main()
