"""Building footprints become right-angled and stay close to the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage
from shapely import Point, Polygon, affinity, box

from geoseg.errors import ConfigError
from geoseg.vectorize.polygonize import polygonize_array
from geoseg.vectorize.regularize import (
    dominant_direction,
    regularize_geometries,
    regularize_polygon,
)

RES = 0.5
TRANSFORM = from_origin(0.0, 50.0, RES, RES)


def interior_angles(polygon: Polygon) -> np.ndarray:
    """Interior angles in degrees (0-360) at every vertex of every ring."""
    out = []
    for ring in [polygon.exterior, *polygon.interiors]:
        c = np.asarray(ring.coords)[:-1]
        to_prev, to_next = np.roll(c, 1, axis=0) - c, np.roll(c, -1, axis=0) - c
        cross = to_prev[:, 0] * to_next[:, 1] - to_prev[:, 1] * to_next[:, 0]
        out.extend(np.mod(np.degrees(np.arctan2(cross, (to_prev * to_next).sum(axis=1))), 360))
    return np.asarray(out)


def assert_right_angled(polygon: Polygon, tol_deg: float = 2.0) -> None:
    angles = interior_angles(polygon)
    off = np.minimum(np.abs(angles - 90), np.abs(angles - 270))
    assert off.max() < tol_deg, angles


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def noisy_footprint(true: Polygon, seed: int) -> Polygon:
    """Rasterize at 0.5 m, flip a third of the pixels along the edge, polygonize."""
    rng = np.random.default_rng(seed)
    mask = rasterize([true], out_shape=(100, 100), transform=TRANSFORM).astype(bool)
    edge = mask ^ ndimage.binary_erosion(mask)
    outside = ndimage.binary_dilation(mask) & ~mask
    flip = (edge | outside) & (rng.random(mask.shape) < 0.3)
    mask ^= flip
    recs = polygonize_array(mask.astype(np.uint8), TRANSFORM, skip_values=(0,))
    return max(recs, key=lambda r: r.pixel_count).geometry


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_rotated_rectangle_becomes_right_angled_rectangle(seed):
    true = affinity.translate(affinity.rotate(box(-15, -8, 15, 8), 30, origin=(0, 0)), 25, 25)
    raw = noisy_footprint(true, seed)
    assert len(raw.exterior.coords) > 50  # a real staircase to start with

    square = regularize_polygon(raw, simplify_tolerance=1.5 * RES)

    assert square.is_valid
    assert len(square.exterior.coords) - 1 == 4
    assert_right_angled(square)
    assert iou(square, true) > 0.95
    assert math.degrees(dominant_direction(square)) == pytest.approx(30, abs=1.5)


@pytest.mark.parametrize(
    "shape",
    [
        box(-15, -10, 15, 0).union(box(-15, 0, -3, 10)),  # L
        box(-15, 2, 15, 8).union(box(-4, -12, 4, 2)),  # T
        box(-15, -10, 15, 10).difference(box(-6, -4, 6, 4)),  # courtyard
    ],
    ids=["L", "T", "courtyard"],
)
def test_noisy_complex_footprints_stay_right_angled(shape):
    true = affinity.translate(affinity.rotate(shape, 57, origin=(0, 0)), 25, 25)
    square = regularize_polygon(noisy_footprint(true, 3), simplify_tolerance=1.5 * RES)
    assert square.is_valid
    assert_right_angled(square)
    assert iou(square, true) > 0.95
    assert len(square.interiors) == len(true.interiors)


def test_round_shape_falls_back_or_stays_right_angled():
    true = Point(25, 25).buffer(10)
    square = regularize_polygon(noisy_footprint(true, 4), simplify_tolerance=1.5 * RES)
    assert square.is_valid
    assert_right_angled(square)
    assert iou(square, true) > 0.8


def test_fallback_never_inflates_a_footprint():
    # A triangle cannot be squared within 1 % of its area, and its minimum rotated
    # rectangle doubles it: the simplified outline is kept instead.
    triangle = Polygon([(0, 0), (10, 0), (0, 10)])
    kept = regularize_polygon(triangle, simplify_tolerance=0.5, max_area_change=0.01)
    assert kept.equals(triangle)
    # A curved row of merged houses (an arc of 10 m squares) is not turned into the
    # rectangle around the arc, which would be several times its area.
    arc = shapely.union_all(
        [affinity.rotate(box(95, -5, 105, 5), a, origin=(0, 0)) for a in np.linspace(0, 90, 16)]
    )
    out = regularize_polygon(arc, simplify_tolerance=1.0)
    assert out.is_valid
    assert abs(out.area - arc.area) <= 0.25 * arc.area
    assert shapely.minimum_rotated_rectangle(arc).area > 3 * arc.area


def test_dominant_direction_of_clean_shapes():
    rect = affinity.rotate(box(0, 0, 40, 20), 30, origin=(0, 0))
    assert math.degrees(dominant_direction(rect)) == pytest.approx(30)
    assert math.degrees(dominant_direction(affinity.rotate(rect, 70))) == pytest.approx(10)


def test_regularize_geometries_handles_none_multi_and_other_types():
    a = affinity.rotate(box(0, 0, 20, 10), 10)
    b = affinity.rotate(box(40, 0, 60, 10), 10)
    out = regularize_geometries(
        [None, Polygon(), a, shapely.MultiPolygon([a, b]), Point(0, 0)], simplify_tolerance=0.5
    )
    assert out[0] is None and out[1] is None and out[4] is None
    assert out[2].geom_type == "Polygon" and iou(out[2], a) > 0.99
    assert out[3].geom_type == "MultiPolygon" and len(out[3].geoms) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"simplify_tolerance": 0},
        {"simplify_tolerance": -1},
        {"simplify_tolerance": float("nan")},
        {"simplify_tolerance": 1, "max_area_change": 0},
        {"simplify_tolerance": 1, "min_edge": -2},
        {"simplify_tolerance": True},
    ],
)
def test_bad_tolerances_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        regularize_polygon(box(0, 0, 1, 1), **kwargs)
    with pytest.raises(ConfigError):
        regularize_geometries([box(0, 0, 1, 1)], **kwargs)
