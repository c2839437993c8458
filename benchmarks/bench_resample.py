"""Bringing predictions back from the model's pixel size: warped view vs resampled read.

When an input's pixel size differs from the model's, ``run_scene`` predicts on a
resampled grid and brings classes (nearest) and ``--probabilities`` (bilinear) back onto
the input grid (``geoseg/io/resample.py``).  This script times both ways of reading them
back, side by side in one run, over the same staged model-grid raster:

* ``warped``: a ``WarpedVRT`` on the input grid (the general path, any geometry);
* ``direct``: GDAL's resampled read of the matching fractional window (north-up inputs).

The staged raster is what ``resample_back`` writes: band 1 classes, bands 2.. uint8
probabilities (smooth fields, like a network's), nodata 255 in a corner.  It prints seconds
per path (best of ``--rounds`` interleaved rounds), the speed ratio and the largest
difference between the paths (classes must be identical; probabilities within 1 of 254).
Usage::

    python benchmarks/bench_resample.py [--size 4096] [--pixel 0.5] [--model-pixel 1.0]
        [--classes 4] [--rounds 3] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy.ndimage import zoom

from geoseg.io.resample import STRIP_ROWS, _resampled_reader, _same_extent_north_up, _warped_reader


def make_stage(path: Path, width: int, height: int, pixel: float, classes: int) -> None:
    rng = np.random.default_rng(0)
    coarse = rng.random((classes, max(2, height // 32), max(2, width // 32)))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1 + classes,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000.0, 6000000.0, pixel, pixel),
        tiled=True,
        compress="LZW",
        nodata=255,
    ) as ds:
        for row in range(0, height, 512):
            h = min(512, height - row)
            block = np.stack(
                [
                    zoom(c, (height / c.shape[0], width / c.shape[1]), order=1)[row : row + h]
                    for c in coarse
                ]
            )
            probs = block / block.sum(axis=0, keepdims=True)
            cls = probs.argmax(axis=0).astype(np.uint8)
            p8 = np.round(probs * 254).astype(np.uint8)
            if row < height // 8:
                cls[:, : width // 8] = 255
                p8[:, :, : width // 8] = 255
            win = Window(0, row, width, h)
            ds.write(cls, 1, window=win)
            ds.write(p8, list(range(2, classes + 2)), window=win)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="input raster edge in pixels")
    ap.add_argument("--pixel", type=float, default=0.5, help="input pixel size (m)")
    ap.add_argument("--model-pixel", type=float, default=1.0, help="model pixel size (m)")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    side = args.size * args.pixel
    model_n = max(1, round(side / args.model_pixel))
    stage_path = args.workdir / f"stage-{args.size}-{model_n}.tif"
    if not stage_path.exists():
        make_stage(stage_path, model_n, model_n, side / model_n, args.classes)
    transform = from_origin(500000.0, 6000000.0, args.pixel, args.pixel)
    n = args.size
    bands = list(range(2, args.classes + 2))
    times: dict[str, list[float]] = {"warped": [], "direct": []}
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with rasterio.open(stage_path) as st:
        assert _same_extent_north_up(transform, n, n, st, st.crs)
        common = {"crs": st.crs, "transform": transform, "width": n, "height": n}

    def run(name: str) -> None:
        # Fresh handles each time: GDAL caches decoded and warped blocks per dataset.
        with contextlib.ExitStack() as stack:
            t0 = time.perf_counter()
            st = stack.enter_context(rasterio.open(stage_path))
            if name == "warped":
                read = _warped_reader(
                    stack.enter_context(WarpedVRT(st, resampling=Resampling.nearest, **common)),
                    stack.enter_context(WarpedVRT(st, resampling=Resampling.bilinear, **common)),
                )
            else:
                read = _resampled_reader(st, transform)
            cls_rows, prob_rows = [], []
            for row in range(0, n, STRIP_ROWS):
                c, p = read(Window(0, row, n, min(STRIP_ROWS, n - row)), bands)
                assert p is not None
                cls_rows.append(c)
                prob_rows.append(p)
            times[name].append(time.perf_counter() - t0)
        outputs[name] = (np.concatenate(cls_rows), np.concatenate(prob_rows, axis=1))

    for _ in range(args.rounds):
        for name in times:
            run(name)
    (cw, pw), (cd, pd) = outputs["warped"], outputs["direct"]
    valid = cw != 255
    diff = np.abs(pw.astype(int) - pd)[:, valid]
    mpx = n * n / 1e6
    print(
        f"input {n}² at {args.pixel} m ({mpx:.1f} Mpx), model grid {model_n}² at "
        f"{side / model_n:.3g} m, {args.classes} probability bands; best of {args.rounds} "
        "interleaved rounds"
    )
    print("| read back | s (best) | Mpx/s |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.2f} | {mpx / min(ts):.1f} |")
    print(f"direct vs warped: {min(times['warped']) / min(times['direct']):.1f}x faster")
    print(
        f"classes identical: {bool(np.array_equal(cw, cd))}; probabilities: max difference "
        f"{int(diff.max()) if diff.size else 0} (of 254), {100 * (diff > 0).mean():.3f} % of "
        "values differ"
    )


if __name__ == "__main__":
    main()
