"""Regions polygonized apart and joined at seams equal whole-raster rasterio.features.shapes."""

from __future__ import annotations

import itertools
from collections import Counter

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
    RegionPolygons,
    gdal_vertex_order,
    join_seams,
    polygonize_array,
    polygonize_region,
)

# The same transforms and whole-raster reference as the strip polygonizer's tests.
from .test_polygonize import NORTH_UP, ROTATED
from .test_polygonize import reference as whole


def exact(pairs):
    """Class and WKB of each polygon: equal only for the same vertices in the same order.

    The order matters: clean-up (simplification, smoothing) depends on where a ring starts.
    """
    return Counter((v, shapely.to_wkb(g)) for v, g in pairs)


def grid(h, w, row_cuts, col_cuts):
    """Windows (row, col, height, width) of a grid cut at the given rows and columns."""
    rows = [0, *sorted(row_cuts), h]
    cols = [0, *sorted(col_cuts), w]
    return [
        (r0, c0, r1 - r0, c1 - c0)
        for (r0, r1), (c0, c1) in itertools.product(
            itertools.pairwise(rows), itertools.pairwise(cols)
        )
    ]


def seam_mask(window, h, w):
    r0, c0, rh, cw = window
    seam = np.zeros((rh, cw), dtype=bool)
    seam[0, :] |= r0 > 0
    seam[-1, :] |= r0 + rh < h
    seam[:, 0] |= c0 > 0
    seam[:, -1] |= c0 + cw < w
    return seam


def by_regions(arr, transform, windows, *, skip=(), conf=None):
    h, w = arr.shape
    out: list[RegionPolygons] = []
    for win in windows:
        r0, c0, rh, cw = win
        cut = np.s_[r0 : r0 + rh, c0 : c0 + cw]
        out.append(
            polygonize_region(
                arr[cut],
                transform,
                offset=(r0, c0),
                seam=seam_mask(win, h, w),
                skip_values=skip,
                confidence=None if conf is None else conf[cut],
            )
        )
    return out


def assert_regions_equal_whole(arr, transform, windows, skip=(), conf=None):
    regions = by_regions(arr, transform, windows, skip=skip, conf=conf)
    joined = join_seams(regions, transform)
    records = [r for reg in regions for r in reg.interior] + [j.record for j in joined]
    assert exact((r.value, r.geometry) for r in records) == exact(whole(arr, transform, skip))
    # Pixel statistics and first pixels agree with the whole-raster labelling.
    ref = {}
    for value in np.unique(arr):
        if value in skip:
            continue
        lab, _ = ndimage.label(arr == value)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            rows, cols = np.nonzero(lab[sl] == i)
            first = (sl[0].start + int(rows[0]), sl[1].start + int(cols[np.argmin(rows)]))
            mask = lab == i
            ref[first] = (int(value), int(mask.sum()), None if conf is None else conf[mask].sum())
    got = {}
    for reg in regions:
        for rec, (r, c) in zip(reg.interior, reg.interior_first.tolist(), strict=True):
            got[(r, c)] = (rec.value, rec.pixel_count, rec.confidence_sum)
    for j in joined:
        got[j.first_pixel] = (j.record.value, j.record.pixel_count, j.record.confidence_sum)
        r0, c0, rh, cw = windows[j.region]
        assert r0 <= j.first_pixel[0] < r0 + rh and c0 <= j.first_pixel[1] < c0 + cw
    assert got.keys() == ref.keys()
    for k, (value, count, csum) in ref.items():
        assert got[k][:2] == (value, count)
        if conf is None:
            assert got[k][2] is None
        else:
            assert got[k][2] == pytest.approx(csum, rel=1e-9, abs=1e-9)
    firsts = [j.first_pixel for j in joined]
    assert firsts == sorted(firsts)
    return joined


@st.composite
def class_rasters(draw):
    """Blocky blobs with pixel noise: long seams, specks, holes and diagonal contacts."""
    k = draw(st.integers(2, 4))
    scale = draw(st.integers(1, 6))
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
    if draw(st.booleans()):
        noise = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, k)))
        arr = np.where(noise == k, arr, noise)
    return arr


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arr=class_rasters(),
    data=st.data(),
    transform=st.sampled_from([NORTH_UP, ROTATED]),
    skip=st.sampled_from([(), (0,)]),
)
def test_grid_of_regions_equals_whole_raster(arr, data, transform, skip):
    h, w = arr.shape
    rows = data.draw(st.sets(st.integers(1, h - 1), max_size=6) if h > 1 else st.just(set()))
    cols = data.draw(st.sets(st.integers(1, w - 1), max_size=6) if w > 1 else st.just(set()))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    conf = rng.random(arr.shape) if data.draw(st.booleans()) else None
    assert_regions_equal_whole(arr, transform, grid(h, w, rows, cols), skip, conf)


def blobs(h: int, w: int, seed: int, classes: int = 4) -> np.ndarray:
    """Random blobs: smoothed noise cut into classes, some single-pixel specks."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((h, w)), sigma=3)
    edges = np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1])
    arr = np.digitize(field, edges).astype(np.uint8)
    specks = rng.random((h, w)) < 0.02
    arr[specks] = rng.integers(0, classes, specks.sum())
    return arr


@pytest.mark.parametrize(
    ("seed", "size"),
    [(0, (60, 80)), (1, (7, 9)), (2, (1, 80)), (3, (60, 1)), (4, (13, 13)), (5, (30, 17))],
)
def test_random_blobs_60x80_in_regions_of_many_sizes(seed, size):
    arr = blobs(60, 80, seed)
    rows, cols = size
    windows = grid(60, 80, range(rows, 60, rows), range(cols, 80, cols))
    joined = assert_regions_equal_whole(arr, ROTATED, windows, skip=(0,))
    if len(windows) > 1:
        assert any(j.pieces > 1 for j in joined)
    # One region: nothing is a seam.
    (one,) = by_regions(arr, ROTATED, [(0, 0, 60, 80)], skip=(0,))
    assert not one.seams and len(one.interior) == len(
        list(polygonize_array(arr, ROTATED, skip_values=(0,)))
    )


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral of class 1 on class 0."""
    arr = np.zeros((n, n), dtype=np.uint8)
    for k in range(0, n // 2, 2):
        arr[k, k : n - k] = 1
        arr[k : n - k, n - 1 - k] = 1
        arr[n - 1 - k, k + 2 : n - k] = 1
        arr[k + 2 : n - k, k] = 1
        if k + 2 < n - k:
            arr[k + 2, k : k + 3] = 1
    return arr


@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_ring_and_spiral_cut_by_vertical_and_horizontal_seams(size):
    arr = spiral(33)
    arr[5:28, 5:28] = np.where(arr[5:28, 5:28] == 0, 0, 1)
    ring = np.zeros((33, 33), dtype=np.uint8)
    ring[3:30, 3:30] = 2
    ring[6:27, 6:27] = 0
    arr = np.where(ring > 0, 2, arr)
    windows = grid(33, 33, range(size, 33, size), range(size, 33, size))
    joined = assert_regions_equal_whole(arr, NORTH_UP, windows, skip=(0,))
    ring_poly = [j.record for j in joined if j.record.value == 2]
    assert len(ring_poly) == 1 and len(ring_poly[0].geometry.interiors) == 1


def test_diagonal_contacts_across_a_corner_stay_apart():
    arr = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    windows = grid(2, 2, [1], [1])
    joined = assert_regions_equal_whole(arr, NORTH_UP, windows, skip=(0,))
    assert [j.pieces for j in joined] == [1, 1]


def test_errors_name_the_problem():
    arr = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ConfigError, match="seam mask shape"):
        polygonize_region(arr, NORTH_UP, seam=np.zeros((4, 3), bool))
    with pytest.raises(ConfigError, match="offset"):
        polygonize_region(arr, NORTH_UP, offset=(-1, 0))
    with pytest.raises(ConfigError, match="integer"):
        polygonize_region(arr.astype(float), NORTH_UP)
    a = polygonize_region(arr, NORTH_UP, seam=np.ones((3, 4), bool))
    with pytest.raises(ConfigError, match="must not overlap"):
        join_seams([a, a], NORTH_UP)


@settings(max_examples=100, deadline=None)
@given(arr=class_rasters(), seed=st.integers(0, 2**32 - 1))
def test_gdal_vertex_order_undoes_any_ring_rotation_direction_and_hole_order(arr, seed):
    rng = np.random.default_rng(seed)
    for geom, _ in rasterio.features.shapes(arr, connectivity=4, transform=Affine.identity()):
        traced = shape(geom)
        rings = []
        for ring in (traced.exterior, *traced.interiors):
            pts = list(ring.coords)[:-1]
            r = int(rng.integers(len(pts)))
            pts = pts[r:] + pts[:r]
            rings.append(pts[::-1] if rng.random() < 0.5 else pts)
        holes = rings[1:]
        rng.shuffle(holes)
        scrambled = shapely.Polygon(rings[0], holes)
        assert shapely.to_wkb(gdal_vertex_order(scrambled)) == shapely.to_wkb(traced)
