"""Class-specific clean-up: area filter, holes, styles, validity, CRS round trip."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely import MultiPolygon, Point, Polygon, affinity, box

from geoseg.errors import ConfigError
from geoseg.vectorize.clean import (
    STYLES,
    CleanupParams,
    _chaikin,
    clean_geometries,
    default_cleanup,
    polygonal,
    simplify_polygon,
    smooth_polygon,
)
from geoseg.vectorize.metric import area_perimeter_m, metric_frame, to_metric
from geoseg.vectorize.polygonize import polygonize_array

UTM = "EPSG:32633"


def staircase_blob(seed: int = 0) -> Polygon:
    """A pixelated disc at 1 m pixels, in UTM coordinates."""
    transform = from_origin(500000.0, 4500000.0, 1.0, 1.0)
    disc = Point(500030.0, 4499970.0).buffer(20)
    mask = rasterize([disc], out_shape=(60, 60), transform=transform)
    recs = polygonize_array(mask, transform, skip_values=(0,))
    return max(recs, key=lambda r: r.pixel_count).geometry


def test_min_area_drops_small_polygons_and_small_parts():
    big, small = box(0, 0, 10, 10), box(20, 20, 22, 22)
    out = clean_geometries(
        [big, small, MultiPolygon([box(30, 0, 40, 10), box(50, 0, 51, 1)]), None],
        CleanupParams(min_area_m2=5),
        crs=UTM,
    )
    assert out[0].equals(big)
    assert out[1] is None
    assert out[2].geom_type == "Polygon" and out[2].area == 100
    assert out[3] is None


def test_holes_below_threshold_are_filled_others_kept():
    poly = box(0, 0, 100, 100).difference(box(10, 10, 12, 12)).difference(box(50, 50, 70, 70))
    (out,) = clean_geometries([poly], CleanupParams(fill_holes_below_m2=10), crs=UTM)
    assert len(out.interiors) == 1
    assert out.area == pytest.approx(100 * 100 - 400)


def test_thresholds_are_metres_in_a_geographic_crs():
    # About 11 m x 11 m at the equator: 121 m², kept at 100 m², dropped at 150 m².
    geom = box(0.0, 0.0, 0.0001, 0.0001)
    kept = clean_geometries([geom], CleanupParams(min_area_m2=100), crs=4326)
    dropped = clean_geometries([geom], CleanupParams(min_area_m2=150), crs=4326)
    assert kept[0] is not None and kept[0].equals_exact(geom, 1e-9)
    assert dropped == [None]


def test_invalid_input_is_repaired_and_outputs_are_polygonal():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    line = shapely.LineString([(0, 0), (5, 5)])
    out = clean_geometries([bowtie, line, Polygon()], CleanupParams(), crs=UTM)
    assert out[0].is_valid and out[0].geom_type == "MultiPolygon" and out[0].area == 50
    assert out[1] is None and out[2] is None


@pytest.mark.parametrize("style", STYLES)
def test_every_default_style_gives_valid_polygons_in_input_crs(style):
    blob = staircase_blob()
    crs_bounds = (11.0, 40.0, 11.1, 40.1)
    frame = metric_frame(4326, crs_bounds)
    # The same blob moved into lon/lat near (11.05, 40.05).
    shift = to_metric([Point(11.05, 40.05)], frame)[0]
    moved = affinity.translate(blob, shift.x - blob.centroid.x, shift.y - blob.centroid.y)
    lonlat = shapely.transform(
        moved, lambda xy: np.column_stack(frame.backward.transform(xy[:, 0], xy[:, 1]))
    )
    (out,) = clean_geometries([lonlat], default_cleanup(style), crs=4326, bounds=crs_bounds)
    assert out is not None and out.is_valid and out.geom_type in ("Polygon", "MultiPolygon")
    assert out.bounds[0] == pytest.approx(lonlat.bounds[0], abs=1e-4)  # still lon/lat
    area_in, _ = area_perimeter_m([lonlat], 4326, crs_bounds)
    area_out, _ = area_perimeter_m([out], 4326, crs_bounds)
    assert area_out[0] == pytest.approx(area_in[0], rel=0.1)


def test_smooth_removes_staircase_vertices_and_keeps_area():
    blob = staircase_blob()
    (out,) = clean_geometries([blob], default_cleanup("smooth"), crs=UTM)
    assert len(out.exterior.coords) < len(blob.exterior.coords)
    assert out.area == pytest.approx(blob.area, rel=0.02)
    assert out.area == pytest.approx(np.pi * 20**2, rel=0.02)
    # No two consecutive edges meet at a right angle any more: the stairs are gone.
    c = np.asarray(out.exterior.coords)
    d = np.diff(c, axis=0)
    cos = (d[:-1] * d[1:]).sum(axis=1) / np.hypot(*d[:-1].T) / np.hypot(*d[1:].T)
    assert np.abs(cos).min() > 0.2


def test_simplify_reduces_vertices_within_tolerance():
    blob = staircase_blob()
    (out,) = clean_geometries(
        [blob], CleanupParams(simplify_tolerance_m=2, style="simplify"), crs=UTM
    )
    assert len(out.exterior.coords) < len(blob.exterior.coords) / 3
    assert out.hausdorff_distance(blob) <= 2.0 + 1e-9


def test_regularize_style_squares_buildings():
    true = affinity.rotate(box(500010, 4499970, 500040, 4499985), 25)
    transform = from_origin(500000.0, 4500000.0, 0.5, 0.5)
    mask = rasterize([true], out_shape=(100, 100), transform=transform)
    (raw,) = [r.geometry for r in polygonize_array(mask, transform, skip_values=(0,))]
    (out,) = clean_geometries([raw], default_cleanup("regularize"), crs=UTM)
    assert len(out.exterior.coords) == 5
    assert out.intersection(true).area / out.union(true).area > 0.95


def test_smooth_polygon_keeps_holes_and_validity():
    ring = box(0, 0, 10, 10).difference(box(4, 4, 6, 6))
    out = smooth_polygon(ring, iterations=2)
    assert out.is_valid and len(out.interiors) == 1
    assert smooth_polygon(Polygon()) is None


def holey_matrix(seed: int) -> Polygon:
    """One vegetation-like component full of building holes, some touching corner to corner,
    some touching the shell's notches: what made whole-polygon repair slow."""
    rng = np.random.default_rng(seed)
    mask = np.ones((96, 96), np.uint8)
    for _ in range(140):
        r, c = rng.integers(0, 92, 2)
        h, w = rng.integers(1, 5, 2)
        mask[r : r + h, c : c + w] = 0
    mask[::7, ::7] = 0  # single-pixel holes, many diagonal to others
    recs = polygonize_array(mask, from_origin(500000.0, 4500000.0, 0.5, 0.5), skip_values=(0,))
    return max(recs, key=lambda r: r.pixel_count).geometry


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_by_ring_styles_match_whole_polygon_repair(seed):
    poly = holey_matrix(seed)
    assert len(poly.interiors) > 50
    rings = [_chaikin(np.asarray(r.coords), 2) for r in (poly.exterior, *poly.interiors)]
    got = smooth_polygon(poly, 2, 0.25)
    assert got is not None and got.is_valid
    # Its meaning: the styled shell minus every styled hole (holes that met are subtracted
    # together, not filled back in by the even-odd rule of a whole-polygon make_valid).
    styled = np.empty(len(rings), dtype=object)
    styled[:] = [shapely.linearrings(r) for r in rings]
    styled = shapely.simplify(styled, 0.25, preserve_topology=True)
    meaning = shapely.difference(
        shapely.polygons(styled[0]),
        shapely.union_all(shapely.make_valid(shapely.polygons(styled[1:]))),
    )
    assert got.symmetric_difference(meaning).area < 1e-9 * meaning.area
    # And close to what the whole-polygon repair gave (2-3 % of area differs in these
    # adversarial rasters, where dozens of holes touch corner to corner).
    whole = polygonal(
        shapely.simplify(polygonal(Polygon(rings[0], rings[1:])), 0.25, preserve_topology=True)
    )
    assert got.area == pytest.approx(whole.area, rel=0.01)
    assert got.symmetric_difference(whole).area < 0.04 * whole.area
    # Plain simplification: the same as simplifying the polygon as a whole, up to the
    # rings that came near each other.
    simple = simplify_polygon(poly, 0.5)
    whole_simple = shapely.simplify(poly, 0.5, preserve_topology=True)
    assert simple is not None and simple.is_valid
    assert simple.symmetric_difference(whole_simple).area < 0.01 * whole_simple.area
    assert sum(len(p.interiors) for p in shapely.get_parts(simple)) >= 0.9 * len(poly.interiors)


def test_simplify_polygon_repairs_holes_that_come_to_cross():
    # Two holes 0.2 apart; a 0.5 tolerance flattens their facing staircases into each other.
    shell = box(0, 0, 20, 10)
    a = Polygon([(2, 2), (9.9, 2), (9.9, 4), (9.6, 4), (9.6, 6), (9.9, 6), (9.9, 8), (2, 8)])
    b = affinity.scale(a, xfact=-1, origin=(10, 5))
    poly = Polygon(shell.exterior, [a.exterior, b.exterior])
    assert poly.is_valid
    out = simplify_polygon(poly, 0.5)
    assert out is not None and out.is_valid
    assert out.area == pytest.approx(poly.area, rel=0.05)
    assert smooth_polygon(Polygon(), 2, 0.5) is None and simplify_polygon(Polygon(), 1) is None


def test_polygonal_keeps_only_area_parts():
    collection = shapely.GeometryCollection([box(0, 0, 1, 1), Point(5, 5)])
    assert polygonal(collection).equals(box(0, 0, 1, 1))
    assert polygonal(Point(0, 0)) is None
    assert polygonal(None) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_area_m2": -1}, "min_area_m2"),
        ({"fill_holes_below_m2": float("nan")}, "fill_holes_below_m2"),
        ({"simplify_tolerance_m": "1"}, "simplify_tolerance_m"),
        ({"min_area_m2": True}, "min_area_m2"),
        ({"style": "fancy"}, "style"),
        ({"style": "regularize"}, "simplify_tolerance_m must be > 0"),
        ({"style": "simplify", "simplify_tolerance_m": 0}, "simplify_tolerance_m must be > 0"),
        ({"simplify_tolerance_m": 1.0}, "style 'none'"),
        ({"style": "smooth", "smooth_iterations": 0}, "smooth_iterations"),
    ],
)
def test_bad_params_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CleanupParams(**kwargs)


def test_from_dict_and_defaults():
    params = CleanupParams.from_dict({"style": "smooth", "min_area_m2": 4})
    assert params == CleanupParams(min_area_m2=4, style="smooth")
    with pytest.raises(ConfigError, match="unknown clean-up option"):
        CleanupParams.from_dict({"min_area": 4})
    with pytest.raises(ConfigError, match="mapping"):
        CleanupParams.from_dict([("style", "none")])
    for style in STYLES:
        assert default_cleanup(style).style == style
    with pytest.raises(ConfigError, match="unknown clean-up style"):
        default_cleanup("buildings")
    with pytest.raises(ConfigError, match="CleanupParams"):
        clean_geometries([box(0, 0, 1, 1)], {"style": "none"}, crs=UTM)


def test_all_empty_input_needs_no_crs_work():
    assert clean_geometries([None, Polygon()], CleanupParams(), crs=4326) == [None, None]
