"""Tiny labelled scenes generated on the fly for the training tests."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

ORIGIN = (500000.0, 6000000.0)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training never downloads anything (weights, datasets): any connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_scene(
    path: Path,
    *,
    seed: int,
    size: int = 96,
    origin: tuple[float, float] = ORIGIN,
    res: float = 1.0,
    crs: str = "EPSG:32633",
    buildings: int = 4,
    trees: int = 0,
    nodata: float | None = None,
) -> dict[str, list[Any]]:
    """Write a 3-band uint8 scene: red roofs and dark-green tree crowns on noisy grass.

    Returns the roof and tree rectangles (in ``crs`` coordinates) by class name.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((3, size, size), dtype=np.uint8)
    img[0] = rng.integers(70, 110, (size, size))
    img[1] = rng.integers(120, 160, (size, size))
    img[2] = rng.integers(60, 100, (size, size))
    x0, y0 = origin
    out: dict[str, list[Any]] = {"building": [], "vegetation": []}
    for kind, n, colour in (
        ("building", buildings, (220, 50, 40)),
        ("vegetation", trees, (20, 70, 25)),
    ):
        for _ in range(n):
            h, w = (int(v) for v in rng.integers(8, 18, 2))
            r, c = (int(v) for v in rng.integers(2, size - 20, 2))
            for b in range(3):
                img[b, r : r + h, c : c + w] = colour[b] + rng.integers(-10, 10, (h, w))
            out[kind].append(
                shapely.box(x0 + c * res, y0 - (r + h) * res, x0 + (c + w) * res, y0 - r * res)
            )
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": from_origin(x0, y0, res, res),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(img)
    return out


def write_labels(
    path: Path,
    shapes: Sequence[tuple[Any, str]],
    *,
    crs: str = "EPSG:32633",
    to_crs: str | None = None,
) -> Path:
    """Write polygons with a ``class`` attribute (reprojected to ``to_crs`` if given)."""
    frame = gpd.GeoDataFrame(
        {"class": [c for _, c in shapes]}, geometry=[g for g, _ in shapes], crs=crs
    )
    if to_crs:
        frame = frame.to_crs(to_crs)
    frame.to_file(path)
    return path


@pytest.fixture(scope="session")
def roofs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three training scenes and one held-out scene of red roofs; labels in EPSG:4326."""
    d = tmp_path_factory.mktemp("roofs")
    shapes: list[tuple[Any, str]] = []
    images = []
    for i in range(3):
        polys = make_scene(d / f"train{i}.tif", seed=i, origin=(ORIGIN[0] + 200 * i, ORIGIN[1]))
        shapes += [(p, "building") for p in polys["building"]]
        images.append(d / f"train{i}.tif")
    labels = write_labels(d / "roofs.gpkg", shapes, to_crs="EPSG:4326")
    holdout = make_scene(
        d / "holdout.tif", seed=99, origin=(ORIGIN[0], ORIGIN[1] + 500), buildings=5
    )
    holdout_labels = write_labels(
        d / "holdout.gpkg", [(p, "building") for p in holdout["building"]], to_crs="EPSG:4326"
    )
    return {
        "dir": d,
        "images": images,
        "labels": labels,
        "holdout": d / "holdout.tif",
        "holdout_labels": holdout_labels,
    }


def roof_config(roofs: dict[str, Any], out: Path, **overrides: Any) -> dict[str, Any]:
    """A small, fast training config (as a dict) for the roof scenes."""
    cfg: dict[str, Any] = {
        "name": "roofs",
        "classes": ["background", "building"],
        "sources": [
            {
                "name": "roofs",
                "images": [str(p) for p in roofs["images"]],
                "labels": str(roofs["labels"]),
                "labelled_classes": ["building"],
            }
        ],
        "architecture": "tinycnn",
        "arch_params": {"width": 12, "depth": 2},
        "chip_size": 32,
        "tile_size": 64,
        "overlap": 8,
        "epochs": 4,
        "batch_size": 8,
        "samples_per_epoch": 96,
        "lr": 0.02,
        "loss": "ce+dice",  # Dice keeps the rare class from drowning early (robust across seeds)
        "stats_chips": 8,
        "validation": {"split": "files", "fraction": 0.34},
        "device": "cpu",
        "output": str(out),
    }
    cfg.update(overrides)
    return cfg
