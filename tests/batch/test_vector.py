"""Vector stage of window regions without a cluster: parts + seam merge == one run_vectorize."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geoseg.batch.parts import read_interior, read_seams, write_part
from geoseg.batch.vector import VectorPlan, merge_parts, plan_shares, region_masks, vectorize_region
from geoseg.errors import BatchError
from geoseg.io.read import read_tags
from geoseg.models.card import ClassInfo
from geoseg.pipeline import VectorizeConfig, run_vectorize
from geoseg.types import PixelWindow
from geoseg.vectorize.clean import CleanupParams
from tests.batch.conftest import layers
from tests.conftest import write_raster

CLASSES = (
    ClassInfo(0, "background", "#000000", vectorize=False, layer="background"),
    ClassInfo(1, "building", "#e41a1c", layer="buildings"),
    ClassInfo(2, "vegetation", "#4daf4a", layer="vegetation"),
    ClassInfo(3, "cropland", "#ffd92f", layer="cropland"),
)
#: No clean-up at all: the raw polygons, to compare vertex for vertex.
RAW = {c.name: CleanupParams() for c in CLASSES}
TRANSFORM = rasterio.Affine(0.5, 0.0, 500000.25, 0.0, -0.5, 6000000.75)
ROTATED = TRANSFORM * rasterio.Affine.rotation(20)


def blobs(h: int, w: int, seed: int) -> np.ndarray:
    """Random blobs of 4 classes with some single-pixel specks."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((h, w)), sigma=3)
    arr = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.uint8)
    specks = rng.random((h, w)) < 0.02
    arr[specks] = rng.integers(0, 4, specks.sum())
    return arr


def class_raster(path: Path, arr: np.ndarray, transform, crs: str = "EPSG:32633") -> Path:
    """A class raster tagged like run_scene's output."""
    classes = [
        {"id": c.id, "name": c.name, "color": c.color, "layer": c.layer, "vectorize": c.vectorize}
        for c in CLASSES
    ]
    write_raster(path, arr, transform=transform, nodata=255, crs=crs)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(
            GEOSEG_CLASSES=json.dumps(classes), GEOSEG_SOURCE="scene.tif", GEOSEG_POSTPROCESS="{}"
        )
    return path


def grid_windows(h, w, rows, cols):
    return [
        PixelWindow(r, c, min(rows, h - r), min(cols, w - c))
        for r in range(0, h, rows)
        for c in range(0, w, cols)
    ]


def single_run(
    tmp: Path,
    arr: np.ndarray,
    transform,
    cleanup=None,
    dst_crs=None,
    block_rows=None,
    crs: str = "EPSG:32633",
) -> Path:
    src = class_raster(tmp / "whole.tif", arr, transform, crs)
    dst = tmp / f"whole{block_rows or ''}.gpkg"
    cfg = VectorizeConfig(cleanup=cleanup, dst_crs=dst_crs, overwrite=True)
    if block_rows is not None:
        cfg = dataclasses.replace(cfg, block_rows=block_rows)
    run_vectorize(src, dst, cfg)
    return dst


def by_regions(
    tmp: Path,
    arr: np.ndarray,
    transform,
    windows,
    cleanup=None,
    dst_crs=None,
    batch=2000,
    name="merged",
    crs_name: str = "EPSG:32633",
) -> Path:
    """What the workers and the client of a batch do, in this process."""
    crs = read_tags(class_raster(tmp / "crs.tif", arr[:1, :1], transform, crs_name))[2].crs
    h, w = arr.shape
    plan = VectorPlan.of(
        CLASSES,
        {},
        cleanup,
        transform=transform,
        width=w,
        height=h,
        dst_crs=dst_crs,
        source="scene.tif",
    )
    parts = []
    for i, share in enumerate(plan_shares(windows)):
        win = share.window
        interior, seams = vectorize_region(
            arr[win.row_off : win.row_end, win.col_off : win.col_end], crs, plan, share
        )
        parts.append(tmp / f"{name}-{i}.vector.npz")
        write_part(parts[-1], interior, seams)
    dst = tmp / f"{name}.gpkg"
    merge_parts(parts, plan, dst, crs=crs, metadata={"model": "test"}, batch=batch)
    return dst


def in_order(path: Path) -> dict[str, list[bytes]]:
    """Every layer's geometries as WKB, in file order."""
    return {
        name: list(pyogrio.read_dataframe(path, layer=name).geometry.to_wkb())
        for name, _ in pyogrio.list_layers(path)
        if name != "layer_styles"
    }


@pytest.mark.parametrize("cleanup", [RAW, None], ids=["raw", "cleaned"])
@pytest.mark.parametrize(
    ("seed", "size", "transform"),
    [
        (0, (20, 20), TRANSFORM),
        (1, (7, 33), TRANSFORM),
        (2, (60, 13), ROTATED),
        (3, (1, 80), TRANSFORM),
    ],
)
def test_grid_regions_equal_one_run_vectorize(tmp_path, seed, size, transform, cleanup):
    arr = blobs(60, 80, seed)
    windows = grid_windows(60, 80, *size)
    merged = by_regions(tmp_path, arr, transform, windows, cleanup)
    reference = single_run(tmp_path, arr, transform, cleanup)
    assert layers(merged) == layers(reference)
    assert sum(len(v) for v in layers(merged).values()) > (20 if cleanup is RAW else 5)
    # The file order depends on the regions only, not on how the work was batched.
    again = by_regions(tmp_path, arr, transform, windows, cleanup, batch=7, name="again")
    assert in_order(again) == in_order(merged)


def test_a_raster_wider_than_a_utm_zone_cleans_the_same_by_regions(tmp_path):
    """A 20 degree wide EPSG:4326 raster: each polygon is cleaned in its own UTM zone,
    whichever polygons are cleaned with it, so regions equal one run after clean-up."""
    wide = rasterio.Affine(0.25, 0.0, 0.0, 0.0, -0.25, 50.0)  # lon 0-20, lat 35-50
    arr = blobs(60, 80, 7)
    cleanup = {
        c.name: CleanupParams(style="simplify", min_area_m2=1e8, simplify_tolerance_m=5000.0)
        for c in CLASSES
    }
    merged = by_regions(tmp_path, arr, wide, grid_windows(60, 80, 25, 30), cleanup,
                        crs_name="EPSG:4326")  # fmt: skip
    reference = single_run(tmp_path, arr, wide, cleanup, crs="EPSG:4326")
    assert layers(merged) == layers(reference)
    frame = pyogrio.read_dataframe(reference, layer="buildings")
    assert len(frame) > 5 and np.ptp(frame.geometry.representative_point().x) > 6
    # Areas are measured in each polygon's own zone: within 1 % of the ellipsoid's.
    geod = __import__("pyproj").Geod(ellps="WGS84")
    exact = np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in frame.geometry])
    np.testing.assert_allclose(frame["area_m2"], exact, rtol=0.01)


@pytest.mark.parametrize("transform", [TRANSFORM, ROTATED], ids=["north-up", "rotated"])
def test_cleaned_polygons_do_not_depend_on_the_strip_height(tmp_path, transform):
    """Predict's own strips join polygons in GDAL's vertex order too: short strips (here 7
    rows; 512 in a real run of a tall raster) clean up exactly as regions and as one strip."""
    arr = blobs(60, 80, 5)
    whole = layers(single_run(tmp_path, arr, transform, None))
    assert layers(single_run(tmp_path, arr, transform, None, block_rows=7)) == whole
    merged = by_regions(tmp_path, arr, transform, grid_windows(60, 80, 20, 33))
    assert layers(merged) == whole


def test_raw_polygons_are_the_whole_raster_polygons_vertex_for_vertex(tmp_path):
    arr = blobs(60, 80, 4)
    merged = by_regions(tmp_path, arr, ROTATED, grid_windows(60, 80, 11, 17), RAW)
    whole = {
        name: sorted(shapely.to_wkb(shapely.normalize(g)) for g in geoms)
        for name, geoms in (
            (n, pyogrio.read_dataframe(single_run(tmp_path, arr, ROTATED, RAW), layer=n).geometry)
            for n in ("buildings", "vegetation", "cropland")
        )
    }
    got = {
        name: sorted(
            shapely.to_wkb(shapely.normalize(g))
            for g in pyogrio.read_dataframe(merged, layer=name).geometry
        )
        for name in whole
    }
    assert got == whole


@st.composite
def aoi_windows(draw):
    """Overlapping, nested and disjoint windows that leave parts of the raster uncovered."""
    n = draw(st.integers(1, 6))
    out = []
    for _ in range(n):
        r, c = draw(st.integers(0, 39)), draw(st.integers(0, 49))
        h, w = draw(st.integers(1, 40 - r)), draw(st.integers(1, 50 - c))
        out.append(PixelWindow(r, c, h, w))
    return out


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(windows=aoi_windows(), seed=st.integers(0, 1000))
def test_overlapping_windows_equal_one_run_over_their_mosaic(tmp_path_factory, windows, seed):
    tmp = tmp_path_factory.mktemp("aoi")
    arr = blobs(40, 50, seed)
    covered = np.zeros(arr.shape, bool)
    for w in windows:
        covered[w.row_off : w.row_end, w.col_off : w.col_end] = True
    mosaic = np.where(covered, arr, 255).astype(np.uint8)
    # Every pixel is owned by exactly one window.
    owned = np.zeros(arr.shape, int)
    for share in plan_shares(windows):
        mine, _ = region_masks(share)
        w = share.window
        owned[w.row_off : w.row_end, w.col_off : w.col_end] += mine
    assert (owned == covered).all()
    merged = by_regions(tmp, mosaic, TRANSFORM, windows, RAW)
    assert layers(merged) == layers(single_run(tmp, mosaic, TRANSFORM, RAW))


def test_reprojected_and_split_at_necks(tmp_path):
    arr = blobs(60, 80, 5)
    arr[10:20, 5:15] = 1
    arr[14:16, 15:25] = 1  # two houses joined by a two-pixel neck, across a seam at column 20
    arr[10:20, 25:35] = 1
    cleanup = {"building": CleanupParams(style="none", split_neck_m=3.0)}
    windows = grid_windows(60, 80, 30, 20)
    merged = by_regions(tmp_path, arr, TRANSFORM, windows, cleanup, dst_crs="EPSG:4326")
    reference = single_run(tmp_path, arr, TRANSFORM, cleanup, dst_crs="EPSG:4326")
    assert layers(merged) == layers(reference)
    assert pyogrio.read_info(merged, layer="buildings")["crs"] == "EPSG:4326"


def test_a_damaged_part_is_named(tmp_path):
    arr = blobs(20, 20, 6)
    plan = VectorPlan.of(
        CLASSES, {}, None, transform=TRANSFORM, width=20, height=20, dst_crs=None, source="s"
    )
    (share,) = plan_shares([PixelWindow(0, 0, 20, 20)])
    crs = read_tags(class_raster(tmp_path / "c.tif", arr, TRANSFORM))[2].crs
    interior, seams = vectorize_region(arr, crs, plan, share)
    part = tmp_path / "r0.vector.npz"
    write_part(part, interior, seams)
    assert len(read_interior(part)) == len(interior) and read_seams(part).seams == []
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(BatchError, match=r"r0\.vector\.npz"):
        read_interior(part)
    with pytest.raises(BatchError, match=r"r0\.vector\.npz"):
        merge_parts([part], plan, tmp_path / "out.gpkg", crs=crs, metadata={})
    assert not (tmp_path / "out.gpkg").exists()


DISK_FULL = r"""
import resource, signal, sys
import numpy as np
from geoseg.batch.parts import write_part
from geoseg.batch.vector import VectorPlan, plan_shares, vectorize_region
from geoseg.errors import OutputWriteError
from geoseg.types import PixelWindow
from tests.batch.test_vector import CLASSES, TRANSFORM, blobs
from rasterio.crs import CRS

arr = blobs(200, 200, 7)
plan = VectorPlan.of(CLASSES, {}, None, transform=TRANSFORM, width=200, height=200,
                     dst_crs=None, source="s")
(share,) = plan_shares([PixelWindow(0, 0, 200, 200)])
interior, seams = vectorize_region(arr, CRS.from_epsg(32633), plan, share)
# A file size limit stops writes as a full disk does (EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_part(__import__("pathlib").Path(sys.argv[1]), interior, seams)
except OutputWriteError as exc:
    print("refused:", exc)
"""


def test_a_full_disk_leaves_no_part_under_its_final_name(tmp_path):
    part = tmp_path / "r0.vector.npz"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(part)],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "refused: disk full" in r.stdout
    assert list(tmp_path.iterdir()) == []
