"""Fixtures of the batch tests: a scene, its single-run reference, a shared local cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import yaml

from geoseg.pipeline import PredictConfig, VectorizeConfig, run_scene, run_vectorize
from tests.conftest import random_image, write_raster

#: Small tiles so a few hundred pixels make many tiles and several regions.
PREDICT = {"tile": 64, "overlap": 16, "device": "cpu"}


@dataclass(frozen=True)
class Scene:
    src: Path
    model: Path
    classes: np.ndarray
    transform: rasterio.Affine
    polygons: Path


@pytest.fixture(scope="session")
def scene(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """A 230 x 250 raster and what a single ``geoseg predict -o ref.gpkg`` makes of it."""
    d = tmp_path_factory.mktemp("scene")
    src = write_raster(d / "scene.tif", random_image(230, 250, seed=3))
    run_scene(src, d / "ref_classes.tif", tiny_model_dir, PredictConfig(**PREDICT))
    run_vectorize(d / "ref_classes.tif", d / "ref.gpkg", VectorizeConfig())
    with rasterio.open(d / "ref_classes.tif") as ds:
        classes, transform = ds.read(1), ds.transform
    return Scene(src, tiny_model_dir, classes, transform, d / "ref.gpkg")


@pytest.fixture(scope="session")
def cluster_address() -> str:
    """A separately started local cluster (2 worker processes), shared by the tests."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def write_work(path: Path, **work: object) -> Path:
    """Write a work file (``regions.yaml``)."""
    path.write_text(yaml.safe_dump({"predict": PREDICT, **work}), encoding="utf-8")
    return path


def layers(path: Path) -> dict[str, list[tuple[bytes, int, str, float]]]:
    """Every layer of a GeoPackage as sorted (WKB, class_id, source, area) rows."""
    out = {}
    for name, _ in pyogrio.list_layers(path):
        if name == "layer_styles":
            continue
        frame = pyogrio.read_dataframe(path, layer=name)
        out[name] = sorted(
            zip(
                frame.geometry.to_wkb(),
                frame["class_id"],
                frame["source"],
                frame["area_m2"],
                strict=True,
            )
        )
    return out


def read_classes(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform
