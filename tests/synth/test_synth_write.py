"""Synthetic scenes on disk: GeoTIFF layout, georeferencing, polygons, memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.enums import ColorInterp, Compression
from rasterio.features import rasterize

from geoseg.errors import ConfigError, OutputExistsError, OutputWriteError
from geoseg.synth import (
    CLASS_COLOURS,
    CLASS_NAMES,
    POLYGON_LAYER,
    SceneFiles,
    SceneSpec,
    generate_arrays,
    make_sample_scene,
    scene_polygons,
    write_scene,
)

SPEC = SceneSpec(640, 384, pixel_size=0.5, origin=(412_345.5, 5_321_000.0), seed=11)


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("synth")
    paths = (tmp / "rgb.tif", tmp / "classes.tif", tmp / "truth.gpkg")
    write_scene(SPEC, *paths, block_size=256)
    return paths


def test_image_is_a_tiled_compressed_georeferenced_rgb_geotiff(
    scene_files: tuple[Path, Path, Path],
) -> None:
    with rasterio.open(scene_files[0]) as ds:
        assert (ds.count, ds.width, ds.height) == (3, SPEC.width, SPEC.height)
        assert ds.dtypes == ("uint8",) * 3
        assert ds.crs == rasterio.crs.CRS.from_user_input(SPEC.crs)
        assert ds.transform == SPEC.transform
        assert (ds.transform.c, ds.transform.f) == SPEC.origin
        assert ds.res == (0.5, 0.5)
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert ds.descriptions == ("red", "green", "blue")
        assert ds.compression == Compression.deflate
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        image = ds.read()
    assert np.array_equal(image, generate_arrays(SPEC)[0])
    assert _tiff_tag(scene_files[0], 262) == 2  # PhotometricInterpretation: RGB


def _tiff_tag(path: Path, tag: int) -> int:
    """A SHORT tag of the first IFD of a little-endian classic TIFF."""
    data = path.read_bytes()
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        code, kind, _, value = struct.unpack_from("<HHIH", data, ifd + 2 + 12 * i)
        if code == tag and kind == 3:
            return int(value)
    raise AssertionError(f"tag {tag} not found")


def test_class_raster_has_colours_names_and_no_nodata(
    scene_files: tuple[Path, Path, Path],
) -> None:
    with rasterio.open(scene_files[1]) as ds:
        assert ds.count == 1 and ds.dtypes == ("uint8",)
        assert ds.nodata is None
        assert ds.crs == rasterio.crs.CRS.from_user_input(SPEC.crs)
        assert ds.transform == SPEC.transform
        colormap = ds.colormap(1)
        assert all(colormap[k][:3] == rgb for k, rgb in CLASS_COLOURS.items())
        assert ds.tags()["CLASS_1"] == "building"
        classes = ds.read(1)
    assert np.array_equal(classes, generate_arrays(SPEC)[1])


def test_polygons_rasterize_to_the_class_raster(scene_files: tuple[Path, Path, Path]) -> None:
    with rasterio.open(scene_files[1]) as ds:
        classes = ds.read(1)
        transform = ds.transform
    info = pyogrio.read_info(scene_files[2], layer=POLYGON_LAYER)
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["class_id", "class_name"]
    gdf = pyogrio.read_dataframe(scene_files[2], layer=POLYGON_LAYER)
    assert gdf.crs == SPEC.crs
    assert set(gdf["class_id"]) == {1, 2, 3}
    assert all(
        CLASS_NAMES[int(c)] == n for c, n in zip(gdf["class_id"], gdf["class_name"], strict=True)
    )
    burnt = rasterize(
        zip(gdf.geometry, gdf["class_id"].astype(int), strict=True),
        out_shape=classes.shape,
        transform=transform,
        fill=0,
        dtype="uint8",
    )
    agreement = (burnt == classes).mean()
    assert agreement >= 0.999, agreement


def test_outputs_are_byte_identical_for_a_seed(
    scene_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    again = (tmp_path / "rgb.tif", tmp_path / "classes.tif")
    write_scene(SPEC, *again, block_size=256)
    assert again[0].read_bytes() == scene_files[0].read_bytes()
    assert again[1].read_bytes() == scene_files[1].read_bytes()
    other = tmp_path / "other.tif"
    write_scene(SceneSpec(640, 384, seed=12), other)
    assert other.read_bytes() != scene_files[0].read_bytes()


def test_make_sample_scene_writes_three_files_and_respects_overwrite(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    files = make_sample_scene(
        tmp_path / "demo", size=300, seed=4, progress=lambda d, t: calls.append((d, t))
    )
    assert isinstance(files, SceneFiles)
    assert all(p.is_file() for p in (files.image, files.classes, files.polygons))
    assert calls[-1] == (1, 1)
    with pytest.raises(OutputExistsError):
        make_sample_scene(tmp_path / "demo", size=300, seed=4)
    make_sample_scene(tmp_path / "demo", size=300, seed=5, overwrite=True)
    with rasterio.open(files.image) as ds:
        assert ds.tags()["GEOSEG_SYNTH_SEED"] == "5"


def test_write_scene_reports_bad_outputs(tmp_path: Path) -> None:
    spec = SceneSpec(32, 32)
    with pytest.raises(OutputWriteError, match="does not exist"):
        write_scene(spec, tmp_path / "missing" / "rgb.tif")
    with pytest.raises(ConfigError, match="differ"):
        write_scene(spec, tmp_path / "a.tif", tmp_path / "a.tif")
    with pytest.raises(ConfigError, match="block_size"):
        write_scene(spec, tmp_path / "a.tif", block_size=0)
    assert not list(tmp_path.iterdir())


# Peak RSS of the child's own image (VmHWM): ru_maxrss would carry over the
# parent's peak across fork + exec.
_PEAK = """
import json, sys
from geoseg.synth import SceneSpec, write_scene
from geoseg.synth.scene import scene_layout

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

spec = SceneSpec(int(sys.argv[1]), 512, seed=2)
scene_layout(spec)
before = hwm()
junk = bytearray(int(sys.argv[4]))
write_scene(spec, sys.argv[2], sys.argv[3], block_size=512)
print(json.dumps(hwm() - before))
"""


def _peak_growth(width: int, tmp_path: Path, extra: int = 0) -> int:
    """How much a child's peak RSS grows while writing a width x 512 scene."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK,
            str(width),
            str(tmp_path / f"{width}_{extra}.tif"),
            str(tmp_path / f"{width}_{extra}_classes.tif"),
            str(extra),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    growth: int = json.loads(out.stdout.strip().splitlines()[-1])
    return growth


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_writing_memory_does_not_grow_with_the_scene(tmp_path: Path) -> None:
    small = _peak_growth(1024, tmp_path)
    large = _peak_growth(16384, tmp_path)
    # Holding the whole 16384 x 512 RGB image once would add 25 MB.
    whole_scene_rgb = 3 * 16384 * 512
    assert large - small < 0.8 * whole_scene_rgb, (small, large)


def test_scene_without_foreground_writes_an_empty_layer(tmp_path: Path) -> None:
    bare = SceneSpec(64, 64, building_density=0, tree_density=0, field_fraction=0, water_fraction=0)
    write_scene(bare, tmp_path / "rgb.tif", None, tmp_path / "truth.gpkg")
    info = pyogrio.read_info(tmp_path / "truth.gpkg", layer=POLYGON_LAYER)
    assert info["features"] == 0
    assert info["ogr_types"] == ["OFTInteger", "OFTString"]


def test_instance_polygons_give_each_attached_building_its_own_row() -> None:
    dense = SceneSpec(1024, 1024, seed=3, building_density=0.9)
    plain = scene_polygons(dense)
    inst = scene_polygons(dense, instances=True)
    assert list(plain.columns) == ["class_id", "class_name", "geometry"]
    assert list(inst.columns) == ["class_id", "class_name", "instance", "geometry"]
    assert inst["instance"].dtype == np.int32 and inst.crs == dense.crs
    buildings = inst[inst["class_id"] == 1]
    merged = plain[plain["class_id"] == 1]
    # Touching houses are separate instances, merged into one region otherwise.
    assert len(buildings) > len(merged) + 20, (len(buildings), len(merged))
    assert (buildings["instance"] > 0).all() and buildings["instance"].is_unique
    assert set(buildings.geom_type) <= {"Polygon", "MultiPolygon"}
    assert (inst.loc[inst["class_id"] != 1, "instance"] == 0).all()
    # Vegetation and cropland rows are the same either way.
    others = inst[inst["class_id"] != 1].drop(columns="instance").reset_index(drop=True)
    plain_others = plain[plain["class_id"] != 1].reset_index(drop=True)
    assert others["class_id"].tolist() == plain_others["class_id"].tolist()
    assert shapely.equals_exact(others.geometry.values, plain_others.geometry.values).all()
    # Instances cover the building regions exactly, without overlapping.
    union = shapely.union_all(buildings.geometry.values)
    assert union.symmetric_difference(shapely.union_all(merged.geometry.values)).area < 1e-3
    assert abs(buildings.area.sum() - union.area) < 1e-3
    _, classes = generate_arrays(dense)
    burnt = rasterize(
        zip(buildings.geometry, buildings["instance"].astype(int), strict=True),
        out_shape=classes.shape,
        transform=dense.transform,
        fill=0,
        dtype="int32",
    )
    assert np.array_equal(burnt > 0, classes == 1)
