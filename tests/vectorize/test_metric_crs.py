"""Metric CRS choice, areas and perimeters in metres."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import CRS, Geod
from rasterio.transform import from_origin
from shapely import box

from geoseg.errors import GeoreferenceError
from geoseg.vectorize.metric import (
    area_perimeter_m,
    from_metric,
    metric_crs,
    metric_frame,
    to_metric,
)
from geoseg.vectorize.polygonize import polygonize_array


def square_raster(size: int = 30, square: int = 10) -> np.ndarray:
    arr = np.zeros((size, size), dtype=np.uint8)
    arr[5 : 5 + square, 7 : 7 + square] = 1
    return arr


def test_square_in_utm_raster_is_400_m2_and_80_m():
    transform = from_origin(500000.0, 4500000.0, 2.0, 2.0)
    recs = list(polygonize_array(square_raster(), transform, skip_values=(0,), block_rows=4))
    assert len(recs) == 1
    areas, perimeters = area_perimeter_m([recs[0].geometry], "EPSG:32633")
    assert areas.tolist() == [400.0]
    assert perimeters.tolist() == [80.0]


@pytest.mark.parametrize(("lon", "lat"), [(12.3, 45.1), (-70.4, -33.5), (137.9, 64.2)])
def test_square_in_geographic_raster_matches_geodesic_area(lon, lat):
    res = 0.0002
    transform = from_origin(lon, lat, res, res)
    arr = square_raster()
    recs = list(polygonize_array(arr, transform, skip_values=(0,), block_rows=7))
    geom = recs[0].geometry
    bounds = (lon, lat - 30 * res, lon + 30 * res, lat)
    areas, perimeters = area_perimeter_m([geom], "EPSG:4326", bounds)
    geod_area, geod_perimeter = Geod(ellps="WGS84").geometry_area_perimeter(geom)
    assert areas[0] == pytest.approx(abs(geod_area), rel=0.005)
    assert perimeters[0] == pytest.approx(geod_perimeter, rel=0.005)
    # Without bounds, the geometries' own bounds choose the same zone.
    assert area_perimeter_m([geom], 4326)[0][0] == pytest.approx(areas[0])


@pytest.mark.parametrize(
    ("crs", "bounds", "epsg"),
    [
        ("EPSG:4326", (12.0, 41.0, 12.1, 41.1), 32633),
        ("EPSG:4326", (-0.1, -0.2, 0.1, -0.1), 32731),
        ("EPSG:4326", (179.9, 10.0, 180.0, 10.1), 32660),
        ("EPSG:4326", (10.0, 85.0, 10.1, 85.1), 32661),
        ("EPSG:4326", (10.0, -85.1, 10.1, -85.0), 32761),
        ("EPSG:32633", (500000, 4500000, 500100, 4500100), 32633),
        # Web Mercator is in metres, but 1.33x too long at 41°N.
        ("EPSG:3857", (1335833.9, 5012341.7, 1346965.8, 5026889.5), 32633),
        ("EPSG:3857", (1335833.9, -5000.0, 1346965.8, 5000.0), 3857),
        # A UTM CRS used 10° east of its zone: the local zone instead.
        ("EPSG:32633", (1300000, 4500000, 1300100, 4500100), 32635),
        ("EPSG:2154", (600000, 6500000, 700000, 6600000), 2154),
        # New York Long Island, US survey feet: measured in UTM 18N instead.
        ("EPSG:2263", (980000, 190000, 990000, 200000), 32618),
    ],
)
def test_metric_crs_choice(crs, bounds, epsg):
    assert metric_crs(crs, bounds).to_epsg() == epsg


def test_metric_crs_accepts_rasterio_crs():
    from rasterio.crs import CRS as RioCRS

    assert metric_crs(RioCRS.from_epsg(4326), (12.0, 41.0, 12.1, 41.1)).to_epsg() == 32633


def test_frame_round_trip_keeps_lon_lat_order():
    frame = metric_frame(CRS.from_epsg(4326), (12.0, 41.0, 12.1, 41.1))
    geom = box(12.0, 41.0, 12.001, 41.001)
    metric = to_metric([geom, None], frame)
    assert metric[1] is None
    x, y = metric[0].centroid.x, metric[0].centroid.y
    assert 200_000 < x < 800_000 and 4_500_000 < y < 4_600_000  # easting, northing
    back = from_metric(metric, frame)[0]
    assert back.symmetric_difference(geom).area < 1e-14


def test_metric_frame_is_identity_for_metric_crs():
    frame = metric_frame(32633, (0, 0, 1, 1))
    assert frame.is_identity and frame.forward is None
    geom = box(0, 0, 1, 1)
    assert to_metric([geom], frame)[0] is geom


@pytest.mark.parametrize(
    ("crs", "bounds", "match"),
    [
        (None, (0, 0, 1, 1), "no CRS"),
        ("EPSG:999999", (0, 0, 1, 1), "cannot read CRS"),
        ("EPSG:4326", (1, 0, 0, 1), "not ordered"),
        ("EPSG:4326", (0, 0, float("nan"), 1), "finite"),
        ("EPSG:4326", (0, 0, 1), "left, bottom"),
    ],
)
def test_bad_crs_or_bounds_raise(crs, bounds, match):
    with pytest.raises(GeoreferenceError, match=match):
        metric_crs(crs, bounds)


def test_area_of_empty_input_without_bounds_raises():
    with pytest.raises(GeoreferenceError, match="empty"):
        area_perimeter_m([None], 4326)
