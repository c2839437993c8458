"""geoseg.io.read directly: specs, windows past the edge, validity, band choice, resampling."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from geoseg.errors import BandError, RasterReadError
from geoseg.io.read import RasterSource, describe, select_bands
from geoseg.types import PixelWindow
from tests.conftest import random_image, write_raster

T = from_origin(500000, 6000000, 0.5, 0.5)


def test_spec_describes_grid_size_and_pixel_size(tmp_path):
    src = write_raster(tmp_path / "a.tif", random_image(40, 60), transform=T, crs="EPSG:32633")
    spec = describe(src)
    assert (spec.height, spec.width, spec.count) == (40, 60, 3)
    assert spec.transform == T and spec.crs.to_epsg() == 32633 and spec.georef == "transform"
    assert spec.pixel_size_m == pytest.approx(0.5)
    assert spec.area_km2 == pytest.approx(40 * 60 * 0.25 / 1e6)
    assert spec.north_up


def test_missing_and_corrupt_files_are_read_errors(tmp_path):
    with pytest.raises(RasterReadError, match="does not exist"):
        describe(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(RasterReadError):
        describe(bad)


def test_windows_past_the_edge_are_reflected_and_so_is_validity(tmp_path):
    img = random_image(30, 40)
    img[:, :5, :5] = 0
    src = write_raster(tmp_path / "a.tif", img, transform=T, nodata=0)
    with RasterSource(src) as r:
        data, valid = r.read(PixelWindow(-4, -4, 12, 12))
    assert data.shape == (3, 12, 12) and valid.shape == (12, 12)
    # Rows/cols -4..-1 mirror rows/cols 0..3 (reflection without repeating the edge pixel
    # or with it: either way they come from inside the raster).
    inside = data[:, 4:, 4:]
    np.testing.assert_array_equal(inside, img[:, :8, :8])
    assert not valid[4:9, 4:9].any()  # the nodata corner
    assert valid[10:, 10:].all()
    # The padding mirrors the nodata corner: invalid too, never invented data.
    assert not valid[:4, :4].any()


def test_alpha_band_marks_invalid_pixels_and_is_not_a_data_band(tmp_path):
    img = random_image(20, 20, bands=4)
    img[3] = 255
    img[3, :, :7] = 0
    path = tmp_path / "rgba.tif"
    write_raster(path, img, transform=T)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    spec = describe(path)
    assert select_bands(spec, ["red", "green", "blue"], None) == (1, 2, 3)
    with RasterSource(path, bands=[1, 2, 3]) as r:
        data, valid = r.read(PixelWindow(0, 0, 20, 20))
    assert data.shape[0] == 3
    assert not valid[:, :7].any() and valid[:, 7:].all()


def test_band_choice_by_name_explicit_or_refused(tmp_path):
    path = write_raster(tmp_path / "bgrn.tif", random_image(10, 10, bands=4), transform=T)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [
            ColorInterp.blue,
            ColorInterp.green,
            ColorInterp.red,
            ColorInterp.undefined,
        ]
    spec = describe(path)
    assert select_bands(spec, ["red", "green", "blue"], None) == (3, 2, 1)
    assert select_bands(spec, ["red", "green", "blue"], (1, 1, 1)) == (1, 1, 1)
    with pytest.raises(BandError, match="bands"):
        select_bands(spec, ["red", "green", "blue"], (1, 9, 2))
    with pytest.raises(BandError):
        select_bands(spec, ["red", "green", "blue", "nir", "swir"], None)


def test_resolution_reads_a_resampled_view_of_the_same_extent(tmp_path):
    src = write_raster(tmp_path / "a.tif", random_image(40, 60), transform=T)
    with RasterSource(src, resolution=1.0) as r:
        spec = r.spec
        data, valid = r.read(PixelWindow(0, 0, spec.height, spec.width))
    assert (spec.height, spec.width) == (20, 30)
    assert spec.transform.a == pytest.approx(1.0) and spec.bounds == pytest.approx(
        describe(src).bounds
    )
    assert data.shape == (3, 20, 30) and valid.all()
