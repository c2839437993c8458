"""geoseg.io.write_raster directly: strips in any order of arrival become one COG, or nothing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.errors import OutputExistsError
from geoseg.io.write_raster import RasterStripWriter

T = from_origin(500000, 6000000, 1.0, 1.0)
NAMES = ["background", "building", "vegetation"]
COLOURS = {0: (0, 0, 0), 1: (228, 26, 28), 2: (77, 175, 74)}


def writer(path, **kw):
    return RasterStripWriter(
        path, crs=rasterio.crs.CRS.from_epsg(32633), transform=T, width=50, height=700,
        colormap=COLOURS, class_names=NAMES, **kw,
    )  # fmt: skip


def test_strips_become_a_cog_with_colours_names_and_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (700, 50), dtype=np.uint8)
    probs = rng.integers(0, 255, (3, 700, 50), dtype=np.uint8)
    out, prob = tmp_path / "c.tif", tmp_path / "p.tif"
    with writer(out, probabilities=prob, tags={"GEOSEG_MODEL": "x"}) as w:
        for r in range(0, 700, 300):
            w.write(r, classes[r : r + 300], probs[:, r : r + 300])
        assert not out.exists()  # published on commit only
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (ds.transform, ds.crs.to_epsg(), ds.nodata) == (T, 32633, 255)
        np.testing.assert_array_equal(ds.read(1), classes)
        assert ds.colormap(1)[1][:3] == (228, 26, 28)
        assert ds.tags()["GEOSEG_MODEL"] == "x"
    with rasterio.open(prob) as ds:
        assert ds.count == 3
        np.testing.assert_array_equal(ds.read(), probs)


def test_an_error_mid_write_leaves_no_output(tmp_path):
    out, prob = tmp_path / "c.tif", tmp_path / "p.tif"
    with pytest.raises(RuntimeError), writer(out, probabilities=prob) as w:
        w.write(0, np.zeros((100, 50), np.uint8), np.zeros((3, 100, 50), np.uint8))
        raise RuntimeError("the model crashed")
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_need_overwrite(tmp_path):
    out = tmp_path / "c.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        writer(out)
    assert out.read_bytes() == b"old"
    with writer(out, overwrite=True) as w:
        w.write(0, np.ones((700, 50), np.uint8))
    with rasterio.open(out) as ds:
        assert (ds.read(1) == 1).all()
