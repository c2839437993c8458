"""Digest what predict, vectorize and batch make of the demo scene, to check refactors.

Runs ``geoseg predict`` (class COG + GeoPackage), ``geoseg vectorize`` and ``geoseg batch``
(2 x 2 regions, one local worker) with the bundled model on a generated demo scene, and
prints one sha256 per output over its *content*: pixels, grid and CRS of rasters; every
layer's rows (attributes and WKB geometry, in order) and styles of GeoPackages.  File
bytes themselves are not compared: GDAL stamps GeoPackages with the time of writing.

    python benchmarks/check_identical.py --save benchmarks/identical_reference.json   # before
    python benchmarks/check_identical.py --check benchmarks/identical_reference.json  # after

``--check`` exits 1 and names the outputs whose digest changed.  The reference holds the
digests of one machine and library stack: recompute it (``--save``) on the commit before a
refactor, on the machine where the refactor is checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyogrio
import rasterio


def raster_digest(path: Path) -> str:
    h = hashlib.sha256()
    with rasterio.open(path) as ds:
        h.update(repr((ds.width, ds.height, ds.count, tuple(ds.transform), str(ds.crs))).encode())
        h.update(np.ascontiguousarray(ds.read()).tobytes())
    return h.hexdigest()


def vector_digest(path: Path) -> str:
    h = hashlib.sha256()
    for layer, _ in sorted(pyogrio.list_layers(path), key=lambda x: str(x[0])):
        df = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
        h.update(f"{layer}:{len(df)}".encode())
        if "geometry" in df:
            h.update(b"".join(g.wkb if g is not None else b"" for g in df.geometry))
            df = df.drop(columns="geometry")
        drop = [c for c in df.columns if c.lower() in ("update_time", "last_change")]
        h.update(df.drop(columns=drop).to_csv().encode())
    return h.hexdigest()


def geoseg(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "geoseg", "-q", *map(str, args)], check=True)


def digests(work: Path, size: int) -> dict[str, str]:
    from geoseg.synth import make_sample_scene

    scene = make_sample_scene(work / "scene", size=size, seed=0).image
    geoseg("predict", scene, "-o", work / "p.gpkg", "--device", "cpu")
    geoseg("vectorize", work / "p_classes.tif", "-o", work / "v.gpkg")
    (work / "regions.yaml").write_text(
        f"raster: {scene}\nregion_size: {size // 2}\nmodel: default\npredict: {{device: cpu}}\n"
    )
    geoseg("batch", work / "regions.yaml", "-o", work / "b", "--workers", "1",
           "--dashboard-address", "")  # fmt: skip
    return {
        "predict classes": raster_digest(work / "p_classes.tif"),
        "predict polygons": vector_digest(work / "p.gpkg"),
        "vectorize polygons": vector_digest(work / "v.gpkg"),
        "batch mosaic": raster_digest(work / "b" / "classes.vrt"),
        "batch polygons": vector_digest(work / "b" / "polygons.gpkg"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="demo scene edge in pixels")
    ap.add_argument("--save", type=Path, help="write the digests here")
    ap.add_argument("--check", type=Path, help="compare with the digests saved here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoseg-identical-") as tmp:
        got = digests(Path(tmp), args.size)
    record = {"size": args.size, "digests": got}
    print(json.dumps(record, indent=1))
    if args.save:
        args.save.write_text(json.dumps(record, indent=1) + "\n")
    if args.check:
        want = json.loads(args.check.read_text())
        if want["size"] != args.size:
            raise SystemExit(f"the reference is for --size {want['size']}")
        changed = [k for k, v in want["digests"].items() if got.get(k) != v]
        if changed:
            print("changed: " + ", ".join(changed), file=sys.stderr)
            raise SystemExit(1)
        print("identical: " + ", ".join(want["digests"]), file=sys.stderr)


if __name__ == "__main__":
    main()
