"""The vector stage of batch runs on a real cluster: region parts, seam merge, resume, bad parts."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyogrio
import pytest
import rasterio

from geoseg.batch import load_work, run_batch
from geoseg.batch.manifest import sha256_of
from geoseg.errors import BatchError
from geoseg.pipeline import VectorizeConfig, run_vectorize
from geoseg.vectorize.clean import CleanupParams
from tests.batch.conftest import layers, write_work
from tests.batch.test_batch import GRID_IDS, assert_same_as_single_run, grid_work, region_records
from tests.conftest import write_raster

pytestmark = pytest.mark.timeout(180)


def mtimes(out: Path, suffix: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "regions").glob(f"*{suffix}")}


def in_order(path: Path) -> dict[str, list[bytes]]:
    return {
        name: list(pyogrio.read_dataframe(path, layer=name).geometry.to_wkb())
        for name, _ in pyogrio.list_layers(path)
        if name != "layer_styles"
    }


def test_regions_write_parts_and_the_merge_only_joins_seams(scene, tmp_path, cluster_address):
    out = tmp_path / "out"
    result = run_batch(grid_work(tmp_path, scene, size=70), out, address=cluster_address)
    assert result.ok and result.regions == 16
    assert_same_as_single_run(out, scene)
    records = {r["region"]: r for r in region_records(out)}
    for region, rec in records.items():
        assert rec["outputs"]["vector"]["path"] == f"regions/{region}.vector.npz"
        assert (out / rec["outputs"]["vector"]["path"]).is_file()
    # Finished polygons were counted on the workers; the seam pieces waited for the merge.
    on_workers = sum(sum(r["polygons"].values()) for r in records.values())
    assert 0 < on_workers < sum(result.polygon_counts.values())
    assert sum(r["seam_pieces"] for r in records.values()) > 0
    assert set(result.stages) == {"regions", "seams", "write"}


def test_file_order_does_not_depend_on_the_workers(scene, tmp_path, cluster_address):
    work = grid_work(tmp_path, scene, size=[80, 60])
    run_batch(work, tmp_path / "two", address=cluster_address)
    run_batch(work, tmp_path / "one", workers=1, dashboard_address=None)
    assert in_order(tmp_path / "two" / "polygons.gpkg") == in_order(
        tmp_path / "one" / "polygons.gpkg"
    )


def test_overlapping_aoi_windows_on_a_rotated_raster(scene, tmp_path, cluster_address):
    import geopandas as gpd
    import shapely

    rotated = scene.transform * rasterio.Affine.rotation(15)
    with rasterio.open(scene.src) as ds:
        src = write_raster(tmp_path / "rot.tif", ds.read(), transform=rotated)
    # Pixel boxes (row0, col0, row1, col1): overlapping, one inside another, one apart.
    boxes = [(10, 20, 120, 140), (60, 90, 200, 230), (30, 40, 70, 80), (150, 10, 220, 60)]
    geoms = []
    for r0, c0, r1, c1 in boxes:
        corners = [rotated * (c + 0.5, r + 0.5) for c in (c0, c1 - 1) for r in (r0, r1 - 1)]
        geoms.append(shapely.MultiPoint(corners).convex_hull)
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"name": list("abcd")}, geometry=geoms, crs="EPSG:32633").to_file(aoi)
    work = load_work(
        write_work(
            tmp_path / "aoi.yaml",
            raster=str(src),
            aoi="aoi.gpkg",
            aoi_id="name",
            model=str(scene.model),
        )
    )
    out = tmp_path / "out"
    result = run_batch(work, out, address=cluster_address)
    assert result.ok and sorted(result.computed) == list("abcd")
    # The same as vectorizing the mosaic of the windows in one go (what the merge did before).
    run_vectorize(out / "classes.vrt", tmp_path / "ref.gpkg", VectorizeConfig())
    assert layers(out / "polygons.gpkg") == layers(tmp_path / "ref.gpkg")


def test_resume_redoes_only_missing_or_changed_parts(scene, tmp_path, cluster_address):
    work = grid_work(tmp_path, scene)
    out = tmp_path / "out"
    assert run_batch(work, out, address=cluster_address).ok
    tifs, parts = mtimes(out, ".tif"), mtimes(out, ".vector.npz")
    before = {r["region"]: r for r in region_records(out)}
    (out / "regions" / "r0001_c0001.vector.npz").unlink()
    with open(out / "regions" / "r0002_c0000.vector.npz", "ab") as f:
        f.write(b"x")

    result = run_batch(work, out, address=cluster_address, resume=True)
    assert result.ok and not result.computed
    assert sorted(result.vectorized) == ["r0001_c0001", "r0002_c0000"]
    assert sorted(result.reused) == sorted(set(GRID_IDS) - set(result.vectorized))
    assert "2 re-vectorized" in result.summary()
    # The parts come out byte for byte as before, so the merged outputs stay valid.
    assert result.merge_reused
    assert mtimes(out, ".tif") == tifs
    changed = {k for k, v in mtimes(out, ".vector.npz").items() if parts.get(k) != v}
    assert changed == {"r0001_c0001.vector.npz", "r0002_c0000.vector.npz"}
    after = {r["region"]: r for r in region_records(out)}
    for region in GRID_IDS:
        if region in result.vectorized:
            assert after[region]["outputs"]["classes"] == before[region]["outputs"]["classes"]
            assert after[region]["pixels"] == before[region]["pixels"]
        else:
            assert after[region] == before[region]
    assert_same_as_single_run(out, scene)

    # New clean-up options: every part is redone, no region is predicted again.
    raw = {c: CleanupParams() for c in ("building", "vegetation", "cropland")}
    redo = replace(work, vectorize=replace(work.vectorize, cleanup=raw))
    result = run_batch(redo, out, address=cluster_address, resume=True)
    assert result.ok and sorted(result.vectorized) == GRID_IDS and not result.computed
    assert not result.merge_reused
    assert mtimes(out, ".tif") == tifs
    run_vectorize(
        scene.polygons.with_name("ref_classes.tif"),
        tmp_path / "raw.gpkg",
        VectorizeConfig(cleanup=raw),
    )
    assert layers(out / "polygons.gpkg") == layers(tmp_path / "raw.gpkg")


def test_a_damaged_class_raster_is_reported_by_region(scene, tmp_path, cluster_address):
    work = grid_work(tmp_path, scene)
    out = tmp_path / "out"
    assert run_batch(work, out, address=cluster_address).ok
    # A class COG damaged as it was written: its recorded checksum is the damaged file's.
    victim = "r0002_c0001"
    cog = out / "regions" / f"{victim}.tif"
    cog.write_bytes(cog.read_bytes()[:300])
    (out / "regions" / f"{victim}.vector.npz").unlink()
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:
        if rec.get("region") == victim:
            digest, size = sha256_of(cog)
            rec["outputs"]["classes"].update(sha256=digest, bytes=size)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    result = run_batch(work, out, address=cluster_address, resume=True, retries=0)
    assert list(result.failed) == [victim]
    message = result.failed[victim]
    assert f"region {victim}: cannot use its class raster regions/{victim}.tif" in message
    assert "resume=True" in message

    cog.unlink()
    result = run_batch(work, out, address=cluster_address, resume=True)
    assert result.ok and result.computed == [victim]
    assert_same_as_single_run(out, scene)


def test_a_part_lost_before_the_merge_is_named(scene, tmp_path, cluster_address):
    out = tmp_path / "out"

    def lose_one(stage: str, done: int, total: int) -> None:
        if stage == "regions" and done == total:
            shutil.move(out / "regions" / "r0000_c0002.vector.npz", tmp_path / "lost.npz")

    with pytest.raises(BatchError, match=r"region r0000_c0002: its vector part .* missing"):
        run_batch(grid_work(tmp_path, scene), out, address=cluster_address, progress=lose_one)
    assert not (out / "polygons.gpkg").exists()
    result = run_batch(grid_work(tmp_path, scene), out, address=cluster_address, resume=True)
    assert result.ok and result.vectorized == ["r0000_c0002"]
    assert_same_as_single_run(out, scene)
