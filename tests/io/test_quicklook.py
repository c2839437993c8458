"""Quicklook PNGs (``geoseg predict --quicklook``) and reading vector outputs without sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import matplotlib.image
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

import geoseg
from geoseg.errors import OutputExistsError
from geoseg.io.env import no_pam_sidecars
from geoseg.io.quicklook import _outlines, write_quicklook

CLASSES = [
    {"id": 0, "name": "background", "color": "#000000", "layer": "background", "vectorize": False},
    {"id": 1, "name": "building", "color": "#e41a1c", "layer": "buildings", "vectorize": True},
]


def _pair(
    tmp_path: Path, name: str, block: bool, image_crs: str | None = "EPSG:32633"
) -> tuple[Path, Path]:
    """A uint16 image and its class raster (a building block in the left half, or none)."""
    tf = from_origin(500000, 4000000, 1.0, 1.0)
    profile = {"driver": "GTiff", "width": 120, "height": 90, "crs": "EPSG:32633", "transform": tf}
    image = tmp_path / f"{name}.tif"
    data = np.random.default_rng(0).integers(800, 3000, (3, 90, 120)).astype(np.uint16)
    with rasterio.open(image, "w", count=3, dtype="uint16", **{**profile, "crs": image_crs}) as ds:
        ds.write(data)
    classes = tmp_path / f"{name}_classes.tif"
    ids = np.zeros((90, 120), np.uint8)
    if block:
        ids[10:80, 5:60] = 1
    with rasterio.open(classes, "w", count=1, dtype="uint8", **profile) as ds:
        ds.write(ids, 1)
        ds.update_tags(GEOSEG_CLASSES=json.dumps(CLASSES))
    return image, classes


def test_overlay_paints_the_class_colour_where_the_class_is(tmp_path: Path) -> None:
    pngs = []
    for block in (False, True):
        image, classes = _pair(tmp_path, f"b{int(block)}", block)
        pngs.append(write_quicklook(image, classes, tmp_path / f"q{int(block)}.png", title="t"))
    plain, painted = (matplotlib.image.imread(p)[..., :3] for p in pngs)
    assert plain.shape == painted.shape and plain.shape[1] >= 120
    diff = painted - plain
    changed = np.abs(diff).sum(axis=-1) > 0.05
    # the block covers 70 x 55 of 90 x 120 image pixels, drawn at least 1:1
    assert changed.sum() > 0.8 * 70 * 55
    # ... towards the building colour (#e41a1c): more red, less green and blue
    mean = diff[changed].mean(axis=0)
    assert mean[0] > 0.05 and mean[1] < -0.05 and mean[2] < -0.05
    with pytest.raises(OutputExistsError):
        write_quicklook(*_pair(tmp_path, "c", True), tmp_path / "q1.png")


def test_image_without_crs_is_drawn_under_its_classes(tmp_path: Path) -> None:
    """An image predicted with --assume-crs has no CRS of its own; it is still drawn."""
    looks = {}
    for crs in ("EPSG:32633", None, "EPSG:4326"):
        image, classes = _pair(tmp_path, f"i{crs}".replace(":", ""), False, image_crs=crs)
        out = write_quicklook(image, classes, tmp_path / f"{image.stem}.png", title="t")
        looks[crs] = matplotlib.image.imread(out)[..., :3]
    np.testing.assert_array_equal(looks[None], looks["EPSG:32633"])
    # an image on another grid is not drawn: the classes go over a flat grey
    h, w = looks[None].shape[:2]
    centre = {k: v[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] for k, v in looks.items()}
    assert centre["EPSG:32633"].std() > 0.1 and centre["EPSG:4326"].std() < 0.01


def test_outlines_are_read_without_sidecars_and_skipped_when_too_many(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"a": range(5)}, geometry=[shapely.box(i, 0, i + 0.5, 1) for i in range(5)], crs=32633
    )
    path = tmp_path / "p.gpkg"
    # dataset metadata is what makes GDAL write a PAM .aux.xml on a read-only open
    pyogrio.write_dataframe(frame, path, layer="buildings", dataset_metadata={"k": "v"})
    before = pyogrio.get_gdal_config_option("GDAL_PAM_ENABLED")
    assert _outlines(path, 3) == ({}, 5)
    found, total = _outlines(path, 10)
    assert total == 5 and len(found["buildings"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg"]
    assert pyogrio.get_gdal_config_option("GDAL_PAM_ENABLED") == before
    with no_pam_sidecars(), no_pam_sidecars():  # re-entrant
        pyogrio.read_info(path)
    assert pyogrio.get_gdal_config_option("GDAL_PAM_ENABLED") == before


def test_predict_quicklook(tmp_path: Path, tiny_model_dir: Path, make_raster) -> None:
    src = make_raster(shape=(90, 110))
    q = tmp_path / "q.png"
    result = geoseg.predict(src, tmp_path / "o.gpkg", tiny_model_dir, device="cpu", quicklook=q)
    assert q in result.outputs and matplotlib.image.imread(q).shape[1] >= 110
    assert not list(tmp_path.glob("*.aux.xml"))
    # An existing quicklook is refused before any work: no other output appears.
    with pytest.raises(OutputExistsError, match=r"q\.png"):
        geoseg.predict(src, tmp_path / "n.gpkg", tiny_model_dir, device="cpu", quicklook=q)
    assert not (tmp_path / "n.gpkg").exists() and not (tmp_path / "n_classes.tif").exists()
    from geoseg.cli import main

    args = ["-q", "predict", str(src), "-o", str(tmp_path / "c.tif"), "-m", str(tiny_model_dir)]
    main([*args, "--device", "cpu", "--quicklook", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
