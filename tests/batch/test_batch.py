"""Batch runs on real dask clusters: exact at seams, fault tolerant, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from distributed import Client

from geoseg.batch import Manifest, load_work, run_batch
from geoseg.errors import OutputExistsError
from geoseg.pipeline import PredictConfig, run_scene
from tests.batch.conftest import PREDICT, layers, read_classes, write_work
from tests.batch.plugins import KillDuringRegion
from tests.conftest import random_image, write_raster

pytestmark = pytest.mark.timeout(180)

GRID_IDS = [f"r{r:04d}_c{c:04d}" for r in range(3) for c in range(3)]


def assert_same_as_single_run(out: Path, scene) -> None:
    classes, transform = read_classes(out / "classes.vrt")
    assert transform == scene.transform
    np.testing.assert_array_equal(classes, scene.classes)
    assert layers(out / "polygons.gpkg") == layers(scene.polygons)


def region_records(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    return [rec for rec in lines if rec["kind"] == "region"]


def grid_work(tmp_path: Path, scene, size: int = 100):
    path = write_work(
        tmp_path / "regions.yaml", raster=str(scene.src), region_size=size, model=str(scene.model)
    )
    return load_work(path)


def test_local_cluster_equals_single_run_with_two_and_one_workers(scene, tmp_path):
    work = grid_work(tmp_path, scene)
    seen = []
    for workers in (2, 1):
        out = tmp_path / f"out{workers}"
        result = run_batch(
            work,
            out,
            workers=workers,
            dashboard_address=None,
            on_cluster=seen.append,
        )
        assert result.ok and sorted(result.computed) == GRID_IDS
        assert seen[-1].local and seen[-1].workers == workers
        assert_same_as_single_run(out, scene)
        records = region_records(out)
        assert sorted(r["region"] for r in records) == GRID_IDS
        for rec in records:
            path = out / rec["outputs"]["classes"]["path"]
            assert rec["status"] == "done" and rec["attempts"] == 1
            assert (
                Manifest(out).read().outputs(rec["region"])["classes"].bytes == path.stat().st_size
            )
    workers_used = {rec["worker"] for rec in region_records(tmp_path / "out2")}
    assert len(workers_used) == 2


def test_a_worker_killed_mid_region_loses_and_duplicates_nothing(scene, tmp_path, cluster_address):
    victim = "r0001_c0001"
    with Client(cluster_address) as client:
        client.register_plugin(KillDuringRegion(victim, str(tmp_path / "killed")))
        try:
            result = run_batch(
                grid_work(tmp_path, scene), tmp_path / "out", address=cluster_address
            )
        finally:
            client.unregister_worker_plugin(KillDuringRegion.name)
    assert (tmp_path / "killed").exists()
    assert result.ok and sorted(result.computed) == GRID_IDS
    records = region_records(tmp_path / "out")
    assert sorted(r["region"] for r in records) == GRID_IDS
    attempts = {r["region"]: r["attempts"] for r in records}
    assert attempts.pop(victim) == 2
    assert set(attempts.values()) == {1}
    assert_same_as_single_run(tmp_path / "out", scene)
    # The killed attempt's temporary files are gone.
    assert not [p for p in (tmp_path / "out" / "regions").iterdir() if p.name.startswith(".")]


class Stop(Exception):
    pass


def test_interrupted_run_resumes_without_recomputing_finished_regions(
    scene, tmp_path, cluster_address
):
    work = grid_work(tmp_path, scene)
    out = tmp_path / "out"

    def stop_after_three(stage: str, done: int, total: int) -> None:
        if stage == "regions" and done == 3:
            raise Stop

    with pytest.raises(Stop):
        run_batch(work, out, address=cluster_address, progress=stop_after_three)
    first = {r["region"]: r for r in region_records(out)}
    assert len(first) == 3
    mtimes = {
        k: (out / r["outputs"]["classes"]["path"]).stat().st_mtime_ns for k, r in first.items()
    }
    assert not (out / "classes.vrt").exists()

    with pytest.raises(OutputExistsError, match="resume=True"):
        run_batch(work, out, address=cluster_address)
    result = run_batch(work, out, address=cluster_address, resume=True)
    assert result.ok
    assert sorted(result.reused) == sorted(first)
    assert sorted(result.computed) == sorted(set(GRID_IDS) - set(first))
    final = {r["region"]: r for r in region_records(out)}
    assert sorted(final) == GRID_IDS
    for region, rec in first.items():
        assert final[region] == rec
        assert (out / rec["outputs"]["classes"]["path"]).stat().st_mtime_ns == mtimes[region]
    assert_same_as_single_run(out, scene)


def test_cli_on_a_separately_started_scheduler(scene, tmp_path, cluster_address):
    work = write_work(
        tmp_path / "regions.yaml",
        raster=str(scene.src),
        region_size=[120, 90],
        model=str(scene.model),
    )
    out = tmp_path / "out"

    def geoseg(*args: object) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "geoseg", "batch", work, "-o", out, *args]
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)

    r = geoseg("--scheduler", cluster_address)
    assert r.returncode == 0, r.stderr
    assert f"dask scheduler {cluster_address}: 2 worker(s)" in r.stderr
    assert "dashboard:" in r.stderr
    assert "6 regions: 6 computed, 0 reused, 0 failed" in r.stdout
    assert_same_as_single_run(out, scene)

    r = geoseg("--scheduler", cluster_address)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("geoseg: error:")
    assert "--resume" in r.stderr

    before = (out / "polygons.gpkg").stat().st_mtime_ns
    r = geoseg("--scheduler", cluster_address, "--resume")
    assert r.returncode == 0, r.stderr
    assert "6 regions: 0 computed, 6 reused, 0 failed" in r.stdout
    assert (out / "polygons.gpkg").stat().st_mtime_ns == before


def test_many_rasters_failure_is_reported_then_fixed_by_resume(
    scene, tiny_model_dir, tmp_path, cluster_address
):
    t = rasterio.transform.from_origin(500000, 6000000, 0.5, 0.5)
    a = write_raster(tmp_path / "a.tif", random_image(90, 80, seed=1), transform=t)
    b = write_raster(
        tmp_path / "b.tif",
        random_image(90, 70, seed=2),
        transform=t * rasterio.Affine.translation(80, 0),
    )
    bad = write_raster(
        tmp_path / "c.tif",
        random_image(60, 80, bands=1, seed=3),
        transform=t * rasterio.Affine.translation(0, 90),
    )
    work = load_work(
        write_work(
            tmp_path / "regions.yaml",
            rasters=["a.tif", "b.tif", "c.tif"],
            model=str(tiny_model_dir),
        )
    )
    out = tmp_path / "out"
    result = run_batch(work, out, address=cluster_address, retries=1)
    assert not result.ok
    assert sorted(result.computed) == ["a", "b"]
    assert list(result.failed) == ["c"] and result.failed["c"].startswith("BandError")
    assert result.attempts["c"] == 2
    records = {r["region"]: r for r in region_records(out)}
    assert records["c"]["status"] == "failed" and records["c"]["attempts"] == 2
    assert "band" in records["c"]["error"]
    assert not (out / "polygons.gpkg").exists()

    write_raster(
        bad, random_image(60, 80, seed=3), transform=t * rasterio.Affine.translation(0, 90)
    )
    result = run_batch(work, out, address=cluster_address, resume=True)
    assert result.ok and sorted(result.reused) == ["a", "b"]
    assert result.computed == ["c"]
    mosaic, transform = read_classes(out / "classes.vrt")
    assert transform == t and mosaic.shape == (150, 150)
    for src, (r0, c0) in ((a, (0, 0)), (b, (0, 80)), (bad, (90, 0))):
        run_scene(src, tmp_path / f"{src.stem}_ref.tif", tiny_model_dir, PredictConfig(**PREDICT))
        ref, _ = read_classes(tmp_path / f"{src.stem}_ref.tif")
        h, w = ref.shape
        np.testing.assert_array_equal(mosaic[r0 : r0 + h, c0 : c0 + w], ref)
        assert layers(out / "regions" / f"{src.stem}.gpkg")
    assert (mosaic[90:, 80:] == 255).all()
    per_raster = [layers(out / "regions" / f"{n}.gpkg") for n in "abc"]
    merged = layers(out / "polygons.gpkg")
    for layer, rows in merged.items():
        assert rows == sorted(row for p in per_raster for row in p[layer])
    assert {src for rows in merged.values() for _, _, src, _ in rows} <= {"a.tif", "b.tif", "c.tif"}


def test_aoi_windows_equal_the_single_run_inside_them(scene, tmp_path, cluster_address):
    import geopandas as gpd
    import shapely

    x0, y0 = scene.transform * (0, 0)
    boxes = [
        shapely.box(x0 + 10, y0 - 40, x0 + 50, y0 - 5),  # cols 20-100, rows 10-80
        shapely.box(x0 + 60, y0 - 110, x0 + 100, y0 - 70),  # cols 120-200, rows 140-220
    ]
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"name": ["north", "south"]}, geometry=boxes, crs="EPSG:32633").to_file(aoi)
    work = load_work(
        write_work(
            tmp_path / "regions.yaml",
            raster=str(scene.src),
            aoi="aoi.gpkg",
            aoi_id="name",
            model=str(scene.model),
        )
    )
    result = run_batch(work, tmp_path / "out", address=cluster_address)
    assert result.ok and sorted(result.computed) == ["north", "south"]
    mosaic, transform = read_classes(tmp_path / "out" / "classes.vrt")
    assert transform == scene.transform * rasterio.Affine.translation(20, 10)
    assert mosaic.shape == (210, 180)
    expected = np.full((210, 180), 255, np.uint8)
    expected[0:70, 0:80] = scene.classes[10:80, 20:100]
    expected[130:210, 100:180] = scene.classes[140:220, 120:200]
    np.testing.assert_array_equal(mosaic, expected)


def test_example_work_file_runs(scene, tmp_path, cluster_address):
    example = Path(__file__).resolve().parents[2] / "examples" / "regions.yaml"
    (tmp_path / "regions.yaml").write_text(example.read_text())
    os.symlink(scene.src, tmp_path / "scene.tif")
    work = load_work(tmp_path / "regions.yaml", model=str(scene.model))
    assert work.mode == "grid"
    result = run_batch(work, tmp_path / "out", address=cluster_address)
    assert result.ok and result.polygons is not None and result.polygons.exists()


def test_rotated_raster_grid_and_aoi_regions_equal_the_single_run(scene, tmp_path, cluster_address):
    import geopandas as gpd
    import shapely

    rotated = scene.transform * rasterio.Affine.rotation(25)
    with rasterio.open(scene.src) as ds:
        src = write_raster(tmp_path / "rot.tif", ds.read(), transform=rotated)
    work = load_work(
        write_work(tmp_path / "grid.yaml", raster=str(src), region_size=100, model=str(scene.model))
    )
    result = run_batch(work, tmp_path / "grid", address=cluster_address)
    assert result.ok and sorted(result.computed) == GRID_IDS
    classes, transform = read_classes(tmp_path / "grid" / "classes.vrt")
    # The same pixels on their own rotated grid: the same classes as the north-up single run.
    assert transform.almost_equals(rotated, precision=1e-9)
    np.testing.assert_array_equal(classes, scene.classes)
    # An AOI drawn in map coordinates over rows 10-80, cols 20-100 of the rotated raster: its
    # window covers that block (the map box around the rotated block is larger).
    corners = [rotated * (c, r) for c in (20, 100) for r in (10, 80)]
    box = shapely.box(*shapely.MultiPoint(corners).bounds)
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[box], crs="EPSG:32633").to_file(aoi)
    work = load_work(
        write_work(
            tmp_path / "aoi.yaml",
            raster=str(src),
            aoi="aoi.gpkg",
            aoi_id="name",
            model=str(scene.model),
        )
    )
    result = run_batch(work, tmp_path / "aoi", address=cluster_address)
    assert result.ok and result.computed == ["a"]
    mosaic, t = read_classes(tmp_path / "aoi" / "classes.vrt")
    col, row = ~rotated * (t.c, t.f)
    r0, c0 = round(row), round(col)
    assert r0 <= 10 and c0 <= 20 and r0 + mosaic.shape[0] >= 80 and c0 + mosaic.shape[1] >= 100
    np.testing.assert_array_equal(
        mosaic[10 - r0 : 80 - r0, 20 - c0 : 100 - c0], scene.classes[10:80, 20:100]
    )


@pytest.mark.parametrize("pixel", [0.5, 0.4])
def test_regions_of_a_finer_raster_are_resampled_exactly_as_predict(
    tmp_path, cluster_address, pixel
):
    """A raster finer than the model: batch regions equal one 'geoseg predict' of it."""
    import torch

    from geoseg.models import build_model, save_checkpoint
    from geoseg.pipeline import VectorizeConfig, run_vectorize
    from tests.conftest import tiny_card

    torch.manual_seed(1)
    card = tiny_card(pixel_size_m=1.0)
    model = save_checkpoint(build_model(card), card, tmp_path / "m1")
    transform = rasterio.Affine(pixel, 0, 500000, 0, -pixel, 6000000)
    src = write_raster(tmp_path / "fine.tif", random_image(230, 250, seed=4), transform=transform)
    ref = tmp_path / "ref_classes.tif"
    stats = run_scene(src, ref, model, PredictConfig(**PREDICT))
    assert stats.resampled_to_m == 1.0
    run_vectorize(ref, tmp_path / "ref.gpkg", VectorizeConfig())
    work = load_work(
        write_work(tmp_path / "regions.yaml", raster=str(src), region_size=90, model=str(model))
    )
    result = run_batch(work, tmp_path / "out", address=cluster_address)
    assert result.ok and len(result.computed) == 9
    classes, t = read_classes(tmp_path / "out" / "classes.vrt")
    with rasterio.open(ref) as ds:
        want = ds.read(1)
        assert t == ds.transform
    assert (want != 255).all() and len(np.unique(want)) > 1
    np.testing.assert_array_equal(classes, want)
    assert layers(tmp_path / "out" / "polygons.gpkg") == layers(tmp_path / "ref.gpkg")
