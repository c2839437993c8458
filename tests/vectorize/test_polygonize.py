"""Streamed polygonization equals whole-raster rasterio.features.shapes."""

from __future__ import annotations

import itertools
from collections import defaultdict

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import rasterio.features
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import shape

from geoseg.errors import ConfigError
from geoseg.vectorize.polygonize import (
    PolygonRecord,
    _first_pixels,
    polygonize_array,
    polygonize_strips,
)

NORTH_UP = Affine(0.5, 0.0, 500000.25, 0.0, -0.5, 4500000.75)
# Rotated and sheared: vertex coordinates are not exact multiples of anything,
# so only the same arithmetic as GDAL's gives identical polygons.
ROTATED = Affine(0.3, 0.01, 500000.123, -0.02, -0.3, 4500000.77)


def reference(arr, transform, skip=(), nodata=None):
    valid = ~np.isin(arr, [*skip, *([] if nodata is None else [nodata])])
    return [
        (int(v), shape(g))
        for g, v in rasterio.features.shapes(arr, mask=valid, connectivity=4, transform=transform)
    ]


def strips_of(arr, cuts):
    bounds = [0, *sorted(cuts), arr.shape[0]]
    return [(a, arr[a:b]) for a, b in itertools.pairwise(bounds)]


def assert_same_polygons(records, ref):
    """Same polygons per class, each with a twin whose symmetric difference is empty."""
    assert all(isinstance(r, PolygonRecord) for r in records)
    assert all(r.geometry.geom_type == "Polygon" and r.geometry.is_valid for r in records)
    count = defaultdict(int)
    for r in records:
        count[r.value] += 1
    ref_count = defaultdict(int)
    for v, _ in ref:
        ref_count[v] += 1
    assert count == ref_count

    def key(value, geom):
        return (value, *np.round(geom.bounds, 6), round(geom.area, 6))

    pool = defaultdict(list)
    for v, g in ref:
        pool[key(v, g)].append(g)
    for r in records:
        candidates = pool[key(r.value, r.geometry)]
        twin = next(
            (i for i, g in enumerate(candidates) if g.symmetric_difference(r.geometry).area == 0),
            None,
        )
        assert twin is not None, f"no whole-raster twin for {r.value}: {r.geometry.wkt}"
        # Stronger still: the very same vertices in the very same order, rings and holes
        # (seams leave no collinear extras; joined components get GDAL's vertex order), so
        # clean-up does not depend on the strips either.
        assert shapely.to_wkb(r.geometry) == shapely.to_wkb(candidates.pop(twin))


def assert_pixel_stats(records, arr, transform, conf):
    """pixel_count, class and confidence agree with the pixels whose centres lie inside."""
    for r in records:
        inside = rasterio.features.rasterize(
            [(r.geometry, 1)], out_shape=arr.shape, transform=transform, dtype=np.uint8
        ).astype(bool)
        assert r.pixel_count == inside.sum()
        assert np.all(arr[inside] == r.value)
        if conf is None:
            assert r.confidence_sum is None and r.mean_confidence is None
        else:
            assert r.confidence_sum == pytest.approx(conf[inside].sum(), rel=1e-9, abs=1e-9)
            assert r.mean_confidence == pytest.approx(conf[inside].mean(), rel=1e-9)


@st.composite
def class_rasters(draw):
    """Blocky blobs (a small grid scaled up) with pixel noise: long seams and specks."""
    k = draw(st.integers(2, 4))
    scale = draw(st.integers(1, 8))
    small = draw(
        hnp.arrays(
            np.uint8,
            st.tuples(st.integers(1, 10), st.integers(1, 10)),
            elements=st.integers(0, k - 1),
        )
    )
    arr = np.kron(small, np.ones((scale, scale), dtype=np.uint8))
    h = draw(st.integers(1, min(40, arr.shape[0])))
    w = draw(st.integers(1, min(40, arr.shape[1])))
    arr = arr[:h, :w].copy()
    noise = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, k)))
    arr = np.where(noise == k, arr, noise) if draw(st.booleans()) else arr
    return arr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=class_rasters(),
    data=st.data(),
    transform=st.sampled_from([NORTH_UP, ROTATED]),
    skip=st.sampled_from([(), (0,)]),
)
def test_streamed_equals_whole_raster(arr, data, transform, skip):
    h = arr.shape[0]
    cuts = data.draw(st.sets(st.integers(1, h - 1), max_size=h - 1) if h > 1 else st.just(set()))
    if data.draw(st.booleans()) and h > 1:
        cuts = set(range(1, h))  # every strip one row high
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    conf = rng.random(arr.shape) if data.draw(st.booleans()) else None
    strips = strips_of(arr, cuts)
    conf_strips = None if conf is None else [conf[r : r + s.shape[0]] for r, s in strips]

    records = list(polygonize_strips(strips, transform, skip_values=skip, confidence=conf_strips))

    assert_same_polygons(records, reference(arr, transform, skip))
    assert_pixel_stats(records, arr, transform, conf)


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide clockwise square spiral of class 1 on class 0, n x n."""
    arr = np.zeros((n, n), dtype=np.uint8)
    r, c, dr, dc = 0, 0, 0, 1
    arr[r, c] = 1

    def free(rr, cc):
        return 0 <= rr < n and 0 <= cc < n and not arr[rr, cc]

    while True:
        for _ in range(2):  # go on, or turn right once
            ahead2 = (r + 2 * dr, c + 2 * dc)
            blocked = not free(*ahead2) and 0 <= ahead2[0] < n and 0 <= ahead2[1] < n
            if free(r + dr, c + dc) and not blocked:
                r, c = r + dr, c + dc
                arr[r, c] = 1
                break
            dr, dc = dc, -dr
        else:
            return arr


@pytest.mark.parametrize("block_rows", [1, 2, 3, 7, 100])
def test_spiral_spanning_many_strips_is_one_polygon(block_rows):
    arr = spiral(41)
    assert ndimage.label(arr)[1] == 1 and arr.sum() > 41 * 41 // 2
    recs = list(polygonize_array(arr, NORTH_UP, skip_values=(0,), block_rows=block_rows))
    assert len(recs) == 1
    assert recs[0].pixel_count == int(arr.sum())
    assert_same_polygons(recs, reference(arr, NORTH_UP, (0,)))


@pytest.mark.parametrize("block_rows", [1, 4])
def test_u_and_n_shapes_join_and_split_across_seams(block_rows):
    arr = np.zeros((30, 30), dtype=np.int32)
    arr[2:28, 2:5] = 7  # U: two arms ...
    arr[2:28, 10:13] = 7
    arr[25:28, 2:13] = 7  # ... joined at the bottom
    arr[2:5, 16:28] = 7  # n: one top ...
    arr[2:20, 16:19] = 7  # ... splitting into two legs
    arr[2:20, 25:28] = 7
    arr[20:28, 16:28] = 7  # ... that join again: a ring with a hole
    recs = list(polygonize_array(arr, ROTATED, skip_values=(0,), block_rows=block_rows))
    assert len(recs) == 2
    assert_same_polygons(recs, reference(arr, ROTATED, (0,)))
    assert sorted(len(r.geometry.interiors) for r in recs) == [0, 1]


@pytest.mark.parametrize("block_rows", [1, 3, 16])
def test_tall_component_with_many_holes_across_many_strips(block_rows):
    # Class 2 everywhere with 1-3 pixel blocks of class 1 on a jittered grid: one
    # component from top to bottom with a hole per block, many holes cut by seams,
    # and with 1-row strips more parts than _MAX_OPEN_PARTS, so the open group is
    # unioned many times before it closes.
    rng = np.random.default_rng(5)
    arr = np.full((160, 37), 2, dtype=np.uint8)
    for r0 in range(1, 158, 5):
        for c0 in range(1, 35, 5):
            h, w = rng.integers(1, 4, size=2)
            arr[r0 : r0 + h, c0 : c0 + w] = 1
    assert ndimage.label(arr == 2)[1] == 1
    recs = list(polygonize_array(arr, ROTATED, block_rows=block_rows))
    assert_same_polygons(recs, reference(arr, ROTATED))
    big = recs[-1]
    assert big.value == 2 and big.pixel_count == int((arr == 2).sum())
    assert len(big.geometry.interiors) == ndimage.label(arr == 1)[1]


def test_seam_across_a_straight_wall_leaves_no_extra_vertex():
    # The seam at row 8 cuts the wall x = 7 between rows 7 and 14; a left-over
    # vertex there would sit off the wall once the rotated transform is applied.
    arr = np.ones((32, 8), np.uint8)
    arr[7:14, :7] = 0
    recs = list(polygonize_strips([(0, arr[:8]), (8, arr[8:])], ROTATED))
    assert_same_polygons(recs, reference(arr, ROTATED))
    assert [len(r.geometry.exterior.coords) for r in recs] == [5, 9]


def test_first_pixels_without_raster_ordered_labels():
    flat = np.array([0, 2, 2, 0, 1, 3, 1], dtype=np.int32)
    assert _first_pixels(flat, 3).tolist() == [4, 1, 5]
    assert _first_pixels(np.array([1, 0, 2, 1], dtype=np.int32), 2).tolist() == [0, 2]


def test_closed_polygons_are_emitted_before_the_raster_ends():
    arr = np.zeros((200, 20), dtype=np.uint8)
    arr[1:4, 1:4] = 1  # closed early
    arr[:, 10] = 2  # open until the very end
    consumed = []

    def strips():
        for r in range(0, 200, 10):
            consumed.append(r)
            yield r, arr[r : r + 10]

    seen = {}
    for rec in polygonize_strips(strips(), NORTH_UP, skip_values=(0,)):
        seen[rec.value] = len(consumed)
    assert seen[1] == 1  # yielded while only the first strip was read
    assert seen[2] == 20


def test_nodata_and_skip_values_make_no_polygons_and_break_connections():
    arr = np.array([[1, 1, 255, 1], [2, 0, 2, 1], [1, 1, 1, 1]], dtype=np.uint8)
    recs = list(polygonize_array(arr, NORTH_UP, nodata=255, skip_values=(0,), block_rows=1))
    assert {r.value for r in recs} == {1, 2}
    assert_same_polygons(recs, reference(arr, NORTH_UP, (0,), nodata=255))


def test_records_within_a_strip_come_in_raster_order_of_first_pixel():
    arr = np.array([[3, 0, 1, 0, 2], [0, 0, 0, 0, 0], [2, 0, 3, 0, 1]], dtype=np.uint8)
    recs = list(polygonize_array(arr, Affine.identity(), skip_values=(0,)))
    firsts = [(r.geometry.bounds[1], r.geometry.bounds[0]) for r in recs]
    assert firsts == sorted(firsts)
    assert [r.value for r in recs] == [3, 1, 2, 2, 3, 1]


def test_uint8_confidence_and_signed_and_bool_classes():
    arr = np.array([[-5, -5, 40000], [-5, 40000, 40000]], dtype=np.int64)
    conf = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint8)
    recs = list(polygonize_array(arr, NORTH_UP, confidence=conf, block_rows=1))
    by_value = {r.value: r for r in recs}
    assert by_value[-5].pixel_count == 3 and by_value[-5].mean_confidence == pytest.approx(70 / 3)
    assert by_value[40000].confidence_sum == pytest.approx(140.0)
    mask = np.array([[True, False], [True, True]])
    # The 0 pixel does not touch the bottom row, so it is complete first.
    assert [(r.value, r.pixel_count) for r in polygonize_array(mask, NORTH_UP)] == [(0, 1), (1, 3)]


def test_empty_and_all_skipped_rasters_yield_nothing():
    arr = np.zeros((5, 5), dtype=np.uint8)
    assert list(polygonize_array(arr, NORTH_UP, skip_values=(0,), block_rows=2)) == []
    assert list(polygonize_strips([], NORTH_UP)) == []


@pytest.mark.parametrize(
    ("strips", "match"),
    [
        ([(0, np.zeros((2, 3), np.uint8)), (3, np.zeros((2, 3), np.uint8))], "does not follow"),
        ([(0, np.zeros((2, 3), np.uint8)), (2, np.zeros((2, 4), np.uint8))], "columns wide"),
        ([(0, np.zeros((2, 3), np.float32))], "integer"),
        ([(0, np.zeros(3, np.uint8))], "2-D"),
        ([(0, np.zeros((0, 3), np.uint8))], "at least one row"),
        ([(-1, np.zeros((2, 3), np.uint8))], "non-negative"),
    ],
)
def test_bad_strips_raise_config_error(strips, match):
    with pytest.raises(ConfigError, match=match):
        list(polygonize_strips(strips, NORTH_UP))


def test_bad_arguments_raise_config_error():
    arr = np.zeros((4, 4), np.uint8)
    with pytest.raises(ConfigError, match="block_rows"):
        polygonize_array(arr, NORTH_UP, block_rows=0)
    with pytest.raises(ConfigError, match="shape"):
        polygonize_array(arr, NORTH_UP, confidence=np.zeros((4, 5)))
    with pytest.raises(ConfigError, match="transform"):
        polygonize_array(arr, "not a transform")
    with pytest.raises(ConfigError, match="invertible"):
        polygonize_array(arr, Affine(0, 0, 0, 0, 0, 0))
    with pytest.raises(ConfigError, match="numbers"):
        polygonize_array(arr, NORTH_UP, skip_values=("background",))
    with pytest.raises(ConfigError, match="ran out"):
        list(polygonize_strips([(0, arr[:2]), (2, arr[2:])], NORTH_UP, confidence=[arr[:2]]))
    with pytest.raises(ConfigError, match="more arrays"):
        list(polygonize_strips([(0, arr)], NORTH_UP, confidence=[arr, arr]))
    with pytest.raises(ConfigError, match="pixel_count"):
        PolygonRecord(value=1, geometry=shapely.box(0, 0, 1, 1), pixel_count=0)
