"""Synthetic scenes in memory: spec validation, determinism, blocking, classes, layout."""

from __future__ import annotations

import functools
import math
import tracemalloc
import types

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from rasterio.windows import Window

from geoseg.errors import ConfigError
from geoseg.synth import SceneSpec, generate_arrays, iter_blocks, render_window
from geoseg.synth.objects import (
    BUILDING,
    Material,
    build_layout,
    building_instance_map,
    building_instances,
    class_regions,
)
from geoseg.synth.scene import scene_layout

# 1 m pixels put a few land-use zones into a small, fast scene.
SMALL = SceneSpec(384, 320, pixel_size=1.0, seed=5)
# Dense towns: many attached rows and clusters of touching houses.
DENSE = SceneSpec(1024, 1024, seed=3, building_density=0.9)


@functools.cache
def small_arrays() -> tuple[np.ndarray, np.ndarray]:
    return generate_arrays(SMALL, block_size=1024)


def test_spec_transform_and_shape() -> None:
    spec = SceneSpec(300, 200, pixel_size=0.25, origin=(400_000, 6_000_000), crs="EPSG:32632")
    assert spec.shape == (200, 300)
    assert tuple(spec.transform)[:6] == (0.25, 0.0, 400_000.0, 0.0, -0.25, 6_000_000.0)
    assert spec.origin == (400_000.0, 6_000_000.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 0),
        ("width", 2.5),
        ("height", -3),
        ("height", True),
        ("pixel_size", 0.0),
        ("pixel_size", math.nan),
        ("crs", "EPSG:4326"),
        ("crs", "not a crs"),
        ("origin", (1.0,)),
        ("origin", (math.inf, 0.0)),
        ("seed", -1),
        ("seed", 1.5),
        ("building_density", 1.5),
        ("tree_density", -0.1),
        ("field_fraction", math.nan),
        ("water_fraction", 2),
        ("road_spacing", 10.0),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"width": 64, "height": 64, field: value}
    with pytest.raises(ConfigError, match=field) as info:
        SceneSpec(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_same_seed_same_pixels_even_without_cache() -> None:
    image, classes = small_arrays()
    scene_layout.cache_clear()
    again_image, again_classes = generate_arrays(SMALL)
    assert np.array_equal(image, again_image)
    assert np.array_equal(classes, again_classes)


def test_different_seed_differs() -> None:
    image, classes = small_arrays()
    other_image, other_classes = generate_arrays(SceneSpec(384, 320, pixel_size=1.0, seed=6))
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(classes, other_classes)


@pytest.mark.parametrize("block_size", [128, 256, 100])
def test_pixels_do_not_depend_on_block_size(block_size: int) -> None:
    image, classes = small_arrays()
    got_image, got_classes = generate_arrays(SMALL, block_size=block_size)
    assert np.array_equal(image, got_image)
    assert np.array_equal(classes, got_classes)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_window_equals_the_crop_of_the_whole_scene(data: st.DataObject) -> None:
    image, classes = small_arrays()
    col = data.draw(st.integers(0, SMALL.width - 1))
    row = data.draw(st.integers(0, SMALL.height - 1))
    w = data.draw(st.integers(1, min(90, SMALL.width - col)))
    h = data.draw(st.integers(1, min(90, SMALL.height - row)))
    got_image, got_classes = render_window(SMALL, Window(col, row, w, h))
    assert np.array_equal(got_image, image[:, row : row + h, col : col + w])
    assert np.array_equal(got_classes, classes[row : row + h, col : col + w])


def test_blocks_tile_the_scene_lazily() -> None:
    spec = SceneSpec(100, 70, seed=1)
    blocks = iter_blocks(spec, block_size=32)
    assert isinstance(blocks, types.GeneratorType)
    seen = np.zeros(spec.shape, np.int32)
    for window, image, classes in blocks:
        rows, cols = window.toslices()
        seen[rows, cols] += 1
        assert image.shape == (3, window.height, window.width) and image.dtype == np.uint8
        assert classes.shape == (window.height, window.width) and classes.dtype == np.uint8
    assert (seen == 1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_scene_has_every_class_in_plausible_amounts(seed: int) -> None:
    _, classes = generate_arrays(SceneSpec(1024, 1024, seed=seed))
    fractions = np.bincount(classes.ravel(), minlength=4) / classes.size
    assert fractions.size == 4
    assert (fractions > 0.01).all(), fractions
    assert fractions[0] > 0.2, fractions


def test_density_knobs_switch_classes_off() -> None:
    bare = SceneSpec(
        512, 512, seed=3, building_density=0, tree_density=0, field_fraction=0, water_fraction=0
    )
    _, classes = generate_arrays(bare)
    assert not classes.any()
    _, classes = generate_arrays(SceneSpec(512, 512, seed=3, tree_density=0))
    assert not (classes == 2).any()


def test_buildings_avoid_roads_and_water() -> None:
    layout = build_layout(SceneSpec(1024, 1024, seed=2))
    material = layout.material[1:]
    roofs = layout.geoms[layout.classes[1:] == 1]
    blocked = layout.geoms[np.isin(material, [Material.ROAD, Material.WATER])]
    assert len(roofs) and len(blocked)
    hits = shapely.STRtree(blocked).query(roofs, predicate="intersects")
    assert hits.size == 0


def test_render_window_and_generate_arrays_reject_bad_requests() -> None:
    with pytest.raises(ConfigError, match="inside"):
        render_window(SMALL, Window(300, 0, 100, 10))
    with pytest.raises(ConfigError, match="integer"):
        render_window(SMALL, Window(0.5, 0, 10, 10))
    with pytest.raises(ConfigError, match="iter_blocks"):
        generate_arrays(SceneSpec(20_000, 20_000))
    with pytest.raises(ConfigError, match="block_size"):
        next(iter_blocks(SMALL, block_size=4))


def _peak_block_memory(width: int) -> int:
    spec = SceneSpec(width, 256, seed=9)
    scene_layout(spec)
    tracemalloc.start()
    try:
        for _ in iter_blocks(spec, block_size=256):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_block_memory_does_not_grow_with_the_scene() -> None:
    small = _peak_block_memory(512)
    large = _peak_block_memory(8192)
    whole_scene_rgb = 3 * 8192 * 256
    assert large < small + whole_scene_rgb // 4, (small, large)


def test_materials_follow_the_class_definition() -> None:
    """Meadows and lawns are vegetation, grass leys in farmland cropland, bare ground background."""
    layout = build_layout(SceneSpec(2048, 2048, seed=5, pixel_size=1.0))
    material = layout.material[1:]
    classes = layout.classes[1:]
    expected = {
        Material.MEADOW: 2,
        Material.GRASS_FIELD: 3,
        Material.FIELD: 3,
        Material.CANOPY: 2,
        Material.CROWN: 2,
        Material.SOIL: 0,
        Material.PAVED: 0,
        Material.WATER: 0,
        Material.ROAD: 0,
    }
    seen = set()
    for mat, cls in expected.items():
        picked = classes[material == mat]
        if len(picked):
            seen.add(mat)
            assert set(picked.tolist()) == {cls}, mat
    assert {Material.MEADOW, Material.FIELD, Material.PAVED} <= seen
    assert layout.classes[0] == 0 and layout.material[0] == Material.GROUND
    # House plots get lawns: vegetation objects that touch a roof.
    roofs = layout.geoms[classes == 1]
    lawns = layout.geoms[material == Material.MEADOW]
    assert any(lawn.intersects(roof) for lawn in lawns for roof in roofs[:50])


def _footprints(layout: object) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids and the (unclipped) footprint of each building instance."""
    ids = layout.instance[1:]  # type: ignore[attr-defined]
    geoms = layout.geoms  # type: ignore[attr-defined]
    uniq = np.unique(ids[ids > 0])
    fps = np.array([shapely.union_all(geoms[ids == i]) for i in uniq], dtype=object)
    return uniq, fps


def test_layout_instance_ids_mark_exactly_the_buildings() -> None:
    layout = build_layout(DENSE)
    assert layout.instance.dtype == np.int32
    assert layout.instance.shape == layout.material.shape == layout.classes.shape
    assert layout.instance[0] == 0
    building = layout.classes == BUILDING
    assert building.any()
    assert (layout.instance[building] > 0).all()
    assert (layout.instance[~building] == 0).all()
    ids = np.unique(layout.instance[building])
    assert np.array_equal(ids, np.arange(1, ids.size + 1))
    # Wings share their building's id: some instances have several parts.
    assert np.bincount(layout.instance[building]).max() > 1
    # One roof material per instance.
    for i in ids[:200]:
        assert np.unique(layout.material[layout.instance == i]).size == 1


def test_dense_towns_have_attached_rows_of_touching_buildings() -> None:
    layout = scene_layout(DENSE)
    polys = np.array(building_instances(layout), dtype=object)
    assert all(p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0 for p in polys)
    i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
    i, j = i[i < j], j[i < j]
    # Touching, never overlapping: a shared wall and no common area.
    assert shapely.area(shapely.intersection(polys[i], polys[j])).max() < 1e-6
    shared = shapely.length(
        shapely.intersection(shapely.boundary(polys[i]), shapely.boundary(polys[j]))
    )
    touching = int((shared * DENSE.pixel_size > 1.0).sum())
    assert touching >= 30, touching
    # Rows of three or more houses in one connected block.
    blocks = shapely.get_parts(shapely.union_all(polys))
    per_block = np.bincount(
        shapely.STRtree(blocks).query(polys, predicate="intersects")[1], minlength=len(blocks)
    )
    assert (per_block >= 3).sum() >= 5, per_block


def test_attached_blocks_keep_clear_of_each_other_roads_and_water() -> None:
    layout = scene_layout(DENSE)
    _, fps = _footprints(layout)
    i, j = shapely.STRtree(fps).query(fps, predicate="intersects")
    i, j = i[i < j], j[i < j]
    assert i.size > 0
    assert shapely.area(shapely.intersection(fps[i], fps[j])).max() < 1e-6
    # Buildings that do not touch stay apart as detached houses always did:
    # every connected block of touching buildings is >= 3 m from the next.
    blocks = shapely.get_parts(shapely.union_all(fps))
    tree = shapely.STRtree(blocks)
    a, b = tree.query(blocks, predicate="dwithin", distance=3.0 / DENSE.pixel_size)
    assert np.array_equal(a, b), "two blocks of buildings closer than 3 m"
    material = layout.material[1:]
    blocked = layout.geoms[np.isin(material, [Material.ROAD, Material.WATER])]
    assert shapely.STRtree(blocked).query(blocks, predicate="intersects").size == 0


def test_instance_polygons_partition_the_rendered_building_pixels() -> None:
    layout = scene_layout(DENSE)
    region = class_regions(layout)[BUILDING]
    by_id = building_instance_map(layout, region)
    assert list(by_id.values()) == building_instances(layout)
    assert list(by_id) == sorted(by_id)
    assert set(by_id) <= set(np.unique(layout.instance[1:]).tolist()) - {0}
    union = shapely.union_all(list(by_id.values()))
    assert union.symmetric_difference(region).area < 1e-6
    burnt = rasterize(
        [(g, i) for i, g in by_id.items()],
        out_shape=DENSE.shape,
        fill=0,
        dtype="int32",
    )
    _, classes = generate_arrays(DENSE)
    # Exact: the instance outlines burn exactly the building pixels.
    assert np.array_equal(burnt > 0, classes == BUILDING)
    # Every visible instance owns pixels, apart from slivers under a pixel.
    owned = np.unique(burnt[burnt > 0])
    assert owned.size >= 0.95 * len(by_id)


def test_attached_buildings_are_deterministic() -> None:
    a = build_layout(DENSE)
    b = build_layout(DENSE)
    assert np.array_equal(a.instance, b.instance)
    assert np.array_equal(a.material, b.material)
    assert all(shapely.equals_exact(a.geoms, b.geoms, tolerance=0.0))
    assert np.array_equal(a.colour, b.colour)


def test_instance_outlines_follow_draw_order_where_buildings_overlap() -> None:
    """Defensive: generated buildings never overlap, but outlines would still partition."""
    import dataclasses

    base = build_layout(SceneSpec(64, 64, seed=1, building_density=0))
    geoms = np.array(
        [
            shapely.box(10, 10, 30, 30),  # building 1, wing a
            shapely.box(15, 28, 25, 36),  # building 1, wing b
            shapely.box(30, 10, 50, 30),  # building 2, touches building 1's main part
            shapely.box(40, 25, 60, 40),  # building 3, drawn last, overlaps building 2
            shapely.box(55, 50, 70, 70),  # building 4, partly outside the scene
        ],
        dtype=object,
    )
    roof = int(Material.ROOF_FLAT)
    layout = dataclasses.replace(
        base,
        geoms=geoms,
        material=np.array([0] + [roof] * 5, np.uint8),
        classes=np.array([0] + [BUILDING] * 5, np.uint8),
        instance=np.array([0, 1, 1, 2, 3, 4], np.int32),
    )
    by_id = building_instance_map(layout)
    assert list(by_id) == [1, 2, 3, 4]
    assert by_id[1].equals(shapely.union_all(geoms[:2]))
    assert by_id[2].equals(shapely.box(30, 10, 50, 30).difference(shapely.box(40, 25, 60, 40)))
    assert by_id[3].equals(shapely.box(40, 25, 60, 40))
    assert by_id[4].equals(shapely.box(55, 50, 64, 64))
    polys = list(by_id.values())
    assert sum(p.area for p in polys) == pytest.approx(shapely.union_all(polys).area)
    assert shapely.union_all(polys).equals(class_regions(layout)[BUILDING])


# Leafy temperate suburbs: parks, pitches, trees over roofs, cars.
SUBURB = SceneSpec(
    1024,
    1024,
    pixel_size=1.0,
    seed=203,
    suburb=1.0,
    building_density=0.9,
    tree_density=0.7,
    field_fraction=0.15,
)


def test_suburb_zero_adds_nothing() -> None:
    """The knob at 0 leaves the scene exactly as the generator drew it before."""
    plain = build_layout(SceneSpec(768, 768, pixel_size=1.0, seed=11))
    zero = build_layout(SceneSpec(768, 768, pixel_size=1.0, seed=11, suburb=0.0))
    assert np.array_equal(plain.material, zero.material)
    assert Material.CROWN_OVER not in set(plain.material.tolist())
    leafy = build_layout(SceneSpec(768, 768, pixel_size=1.0, seed=11, suburb=0.8))
    assert leafy.material.size > plain.material.size


def test_suburb_trees_overhang_roofs_and_win_the_pixels() -> None:
    layout = scene_layout(SUBURB)
    material = layout.material[1:]
    over = layout.geoms[material == Material.CROWN_OVER]
    roofs = layout.geoms[layout.classes[1:] == BUILDING]
    assert len(over) >= 20
    assert set(layout.classes[1:][material == Material.CROWN_OVER].tolist()) == {2}
    # Every overhanging crown covers part of some roof ...
    hits = shapely.STRtree(roofs).query(over, predicate="intersects")
    assert np.unique(hits[0]).size == len(over)
    # ... and the rendered class there is vegetation, never building.
    _, classes = generate_arrays(SUBURB)
    covered = rasterize(over, out_shape=SUBURB.shape, fill=0, default_value=1, dtype="uint8")
    under_roof = covered.astype(bool) & (
        rasterize(roofs, out_shape=SUBURB.shape, fill=0, default_value=1, dtype="uint8") > 0
    )
    assert under_roof.sum() > 100
    assert (classes[under_roof] == 2).all()
    # The building instances still partition the building pixels exactly.
    burnt = rasterize(
        building_instances(layout), out_shape=SUBURB.shape, fill=0, default_value=1, dtype="uint8"
    )
    assert np.array_equal(burnt > 0, classes == BUILDING)


def test_suburb_parks_hold_pitches_and_no_house(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg.synth import objects

    parks: list[object] = []
    real = objects._Generator.park

    def spy(self: objects._Generator, park: object, *args: object, **kwargs: object) -> None:
        parks.append(park)
        real(self, park, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(objects._Generator, "park", spy)
    layout = build_layout(SUBURB)
    assert len(parks) >= 2
    material = layout.material[1:]
    classes = layout.classes[1:]
    roofs = layout.geoms[classes == BUILDING]
    # No roof stands in a park (parks are reserved before houses are placed).
    park_union = shapely.union_all(parks)
    assert not any(r.intersects(park_union) for r in roofs)
    # Sports grounds in the parks: striped grass pitches (vegetation) or turf, courts
    # and tracks (paved: background).
    from geoseg.synth.objects import A

    striped = (material == Material.MEADOW) & (layout.params[A][1:] > 0)
    sports = layout.geoms[striped | (material == Material.PAVED)]
    inside = shapely.within(sports, park_union.buffer(1e-6))
    assert inside.sum() >= 1
    assert set(classes[material == Material.PAVED].tolist()) == {0}
    assert set(classes[striped].tolist()) == {2}
    # Cars (drawn as markings) are background.
    assert (material == Material.MARKING).sum() > 50
    assert set(classes[material == Material.MARKING].tolist()) == {0}
