"""Helpers shared by the benchmark scripts: synthetic inputs, subprocess peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]


def texture_block(size: int = 1024, seed: int = 0) -> np.ndarray:
    """A (3, size, size) uint8 block of smooth, image-like texture."""
    rng = np.random.default_rng(seed)
    out = np.zeros((3, size, size), np.float32)
    for scale, amp in ((64, 90.0), (16, 40.0), (4, 20.0), (1, 10.0)):
        n = size // scale + 1
        small = rng.random((3, n, n)).astype(np.float32)
        big = np.repeat(np.repeat(small, scale, axis=1), scale, axis=2)[:, :size, :size]
        out += big * amp
    return np.clip(out, 0, 255).astype(np.uint8)


def make_raster(path: Path, size: int, pixel_size: float = 0.5) -> Path:
    """Write a ``size`` x ``size`` 3-band tiled GeoTIFF by repeating a texture block."""
    if path.exists():
        return path
    block = texture_block(1024)
    tmp = path.with_suffix(".part.tif")
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 6000000, pixel_size, pixel_size),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
        "bigtiff": "IF_SAFER",
        "photometric": "RGB",
    }
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, 1024):
            h = min(1024, size - r)
            row = np.concatenate(
                [np.roll(block, (r // 1024) * 37, axis=2)] * (-(-size // 1024)), axis=2
            )
            ds.write(row[:, :h, :size], window=Window(0, r, size, h))
    tmp.rename(path)
    return path


def run_json(code: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])
