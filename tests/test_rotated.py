"""Rotated and sheared geotransforms: the network runs on the raster's own grid, outputs keep it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from geoseg.errors import GeoreferenceError
from geoseg.io.read import RasterSource
from geoseg.models import build_model, save_checkpoint
from geoseg.pipeline import PredictConfig, VectorizeConfig, run_scene, run_vectorize
from geoseg.vectorize.clean import CleanupParams
from tests.conftest import random_image, tiny_card, write_raster

NORTH_UP = Affine(0.5, 0, 500000, 0, -0.5, 6000000)
# 30 degrees clockwise about the top-left corner, then a slight shear.
ROTATED = NORTH_UP * Affine.rotation(30)
SHEARED = NORTH_UP * Affine.rotation(-20) * Affine.shear(5, 0)
CFG = PredictConfig(device="cpu", tile=64, overlap=16, overwrite=True)


@pytest.mark.parametrize("transform", [ROTATED, SHEARED], ids=["rotated", "sheared"])
def test_rotated_raster_gets_the_same_classes_on_its_own_grid(
    transform: Affine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    img = random_image(150, 170)
    img[:, :12, :30] = 0
    straight = write_raster(tmp_path / "n.tif", img, transform=NORTH_UP, nodata=0)
    turned = write_raster(tmp_path / "r.tif", img, transform=transform, nodata=0)
    a = run_scene(straight, tmp_path / "n_cls.tif", tiny_model_dir, CFG)
    b = run_scene(turned, tmp_path / "r_cls.tif", tiny_model_dir, CFG)
    with rasterio.open(tmp_path / "n_cls.tif") as n, rasterio.open(tmp_path / "r_cls.tif") as r:
        # The network saw the very same pixels: the very same classes, on the input's grid.
        np.testing.assert_array_equal(n.read(1), r.read(1))
        assert r.transform.almost_equals(transform, precision=1e-9)
        assert (r.crs, r.width, r.height) == (n.crs, n.width, n.height)
        assert (r.read(1)[:12, :30] == 255).all()
    # Rotation keeps areas; a shear of this transform keeps them too (det unchanged).
    assert b.area_km2 == pytest.approx(a.area_km2, rel=1e-9)


def test_polygons_of_a_rotated_raster_are_the_rotated_polygons(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    img = random_image(120, 140, seed=3)
    for name, t in (("n", NORTH_UP), ("r", ROTATED)):
        src = write_raster(tmp_path / f"{name}.tif", img, transform=t)
        run_scene(src, tmp_path / f"{name}_cls.tif", tiny_model_dir, CFG)
        raw = {c: CleanupParams() for c in ("building", "vegetation")}  # no clean-up at all
        run_vectorize(
            tmp_path / f"{name}_cls.tif", tmp_path / f"{name}.gpkg", VectorizeConfig(cleanup=raw)
        )
    # Map the north-up polygons into the rotated frame: through pixel space.
    to_rotated = ROTATED * ~NORTH_UP
    coeffs = [
        to_rotated.a,
        to_rotated.b,
        to_rotated.d,
        to_rotated.e,
        to_rotated.xoff,
        to_rotated.yoff,
    ]
    layers = [
        name for name, _ in pyogrio.list_layers(tmp_path / "n.gpkg") if name != "layer_styles"
    ]
    compared = 0
    for layer in layers:
        n = pyogrio.read_dataframe(tmp_path / "n.gpkg", layer=layer)
        r = pyogrio.read_dataframe(tmp_path / "r.gpkg", layer=layer)
        assert len(n) == len(r)
        if not len(n):
            continue
        compared += 1
        moved = shapely.union_all(
            [shapely.affinity.affine_transform(g, coeffs) for g in n.geometry]
        )
        got = shapely.union_all(list(r.geometry))
        assert got.area == pytest.approx(moved.area, rel=1e-6)
        assert got.symmetric_difference(moved).area < 1e-6 * moved.area
    assert compared >= 1


def test_rotated_raster_is_resampled_on_its_own_orientation(tmp_path: Path) -> None:
    card = tiny_card(pixel_size_m=1.0)
    torch.manual_seed(1)
    model = save_checkpoint(build_model(card), card, tmp_path / "m1")
    fine = Affine(0.25, 0, 500000, 0, -0.25, 6000000) * Affine.rotation(40)
    src = write_raster(tmp_path / "r.tif", random_image(200, 160))
    with rasterio.open(src, "r+") as ds:
        ds.transform = fine
    with RasterSource(src, resolution=1.0) as r:
        # Same corners, same orientation, pixels 4x larger.
        assert (r.spec.width, r.spec.height) == (40, 50)
        for xy in ((0, 0), (160, 0), (0, 200), (160, 200)):
            corner = r.spec.transform * (xy[0] / 4, xy[1] / 4)
            assert np.allclose(corner, fine * xy)
    stats = run_scene(src, tmp_path / "o.tif", model, CFG)
    assert stats.resampled_to_m == 1.0
    with rasterio.open(tmp_path / "o.tif") as out:
        assert out.transform.almost_equals(fine, precision=1e-9)
        cls = out.read(1)
    assert (cls != 255).mean() > 0.97
    # Classes come from a 4x coarser grid: they form blocks, not pixel noise.
    assert (cls[:, :-1] == cls[:, 1:]).mean() > 0.6


def test_degenerate_transform_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = write_raster(
        tmp_path / "d.tif", random_image(40, 40), transform=Affine(0.5, 0.5, 0, 1.0, 1.0, 0)
    )
    with pytest.raises(GeoreferenceError, match="degenerate geotransform"):
        run_scene(src, tmp_path / "o.tif", tiny_model_dir, CFG)
    assert not (tmp_path / "o.tif").exists()
