"""Pieces of the batch package that need no cluster: work files, layouts, manifest, mosaics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.batch import Manifest, local_layout, open_client, run_batch, work_from_dict
from geoseg.batch.manifest import AttemptLog, ManifestState, append_line
from geoseg.batch.merge import mosaic_layout
from geoseg.batch.work import grid_windows, load_work
from geoseg.batch.worker import cached_model, unreachable_paths
from geoseg.errors import CheckpointError, ConfigError


@settings(deadline=None, max_examples=50)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    rows=st.integers(1, 120),
    cols=st.integers(1, 120),
)
def test_grid_windows_cover_every_pixel_once(h, w, rows, cols):
    import numpy as np

    seen = np.zeros((h, w), int)
    ids = set()
    for rid, win in grid_windows(h, w, (rows, cols)):
        assert win.clip(h, w) == win
        seen[win.row_off : win.row_end, win.col_off : win.col_end] += 1
        ids.add(rid)
    assert (seen == 1).all()
    assert len(ids) == -(-h // rows) * -(-w // cols)


def test_work_file_kinds_paths_and_errors(tmp_path):
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / name).write_bytes(b"")
    work = work_from_dict({"rasters": ["*.tif", "a.tif"]}, base=tmp_path)
    assert work.mode == "rasters"
    assert work.sources == tuple(str(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif"))
    grid = work_from_dict(
        {"raster": "a.tif", "region_size": [10, 20], "predict": {"tile": 64, "bands": [3, 2, 1]}},
        base=tmp_path,
    )
    assert grid.region_size == (10, 20) and grid.predict.bands == (3, 2, 1)
    aoi = work_from_dict({"raster": "a.tif", "aoi": "f.gpkg"}, base=tmp_path)
    assert aoi.mode == "aoi" and aoi.aoi == str(tmp_path / "f.gpkg")
    bad = [
        ({"rasters": "a.tif", "raster": "a.tif"}, "either"),
        ({"raster": "a.tif"}, "region_size"),
        ({"raster": "a.tif", "region_size": 0}, "region_size"),
        ({"rasters": "*.jp2"}, "matches no file"),
        ({"rasters": "a.tif", "region_size": 5}, "one 'raster:'"),
        ({"raster": "a.tif", "region_size": 5, "tile": 3}, "unknown keys"),
        ({"raster": "a.tif", "region_size": 5, "predict": {"tiles": 3}}, "'predict' keys"),
        ({"raster": "a.tif", "region_size": 5, "predict": {"overlap": -1}}, "overlap"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            work_from_dict(data, base=tmp_path)
    (tmp_path / "w.yaml").write_text("- just a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_work(tmp_path / "w.yaml")


def test_local_layouts():
    assert local_layout(None, cores=2) == local_layout(2, cores=2)
    assert local_layout(8, cores=2).n_workers == 2
    assert local_layout(None, cores=32, memory=8 * 1024**3).n_workers == 4
    assert local_layout(None, cores=4, memory=10**9).n_workers == 1
    gpu = local_layout(4, cores=16, gpus=["3", "5"])
    assert gpu.n_workers == 2 and gpu.gpus == ("3", "5") and gpu.torch_threads == 8
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        local_layout(0, cores=4)
    with pytest.raises(ConfigError, match="workers"), open_client("tcp://127.0.0.1:1", workers=2):
        pass


def test_mosaic_layout_needs_one_pixel_grid():
    t = Affine(0.5, 0, 100, 0, -0.5, 200)
    assert mosaic_layout([(t, 4, 4), (t * Affine.translation(0.5, 0), 4, 4)]) is None
    assert mosaic_layout([(t, 4, 4), (Affine(1, 0, 100, 0, -1, 200), 4, 4)]) is None
    transform, width, height, windows = mosaic_layout(
        [(t * Affine.translation(3, 1), 2, 2), (t, 2, 2)]
    )
    assert transform == t and (width, height) == (5, 3)
    assert [(w.row_off, w.col_off) for w in windows] == [(1, 3), (0, 0)]


def test_manifest_keeps_one_final_record_per_region(tmp_path):
    m = Manifest(tmp_path)
    m.append({"kind": "batch", "run": "1"})
    m.append({"kind": "region", "region": "a", "status": "failed", "run": "1"})
    m.append({"kind": "region", "region": "b", "status": "done", "run": "1"})
    m.append({"kind": "region", "region": "a", "status": "done", "run": "2"})
    with open(m.path, "a") as f:
        f.write('{"kind": "region", "region": "c", "sta')  # a crash mid-line
    state = m.read()
    assert {k: v["run"] for k, v in state.regions.items()} == {"a": "2", "b": "1"}
    state.merge = {"kind": "merge", "run": "2"}
    m.compact(state, ["b", "a", "gone"])
    lines = [json.loads(x) for x in m.path.read_text().splitlines()]
    assert [(r["kind"], r.get("region")) for r in lines] == [
        ("batch", None),
        ("region", "b"),
        ("region", "a"),
        ("merge", None),
    ]
    assert m.read().regions["a"]["status"] == "done"
    assert ManifestState().outputs("a") == {}


def test_attempt_log_counts_this_run_incrementally(tmp_path):
    path = tmp_path / "attempts.jsonl"
    log = AttemptLog(path, "run2")
    assert log.counts() == {}
    for region, run in (("a", "run1"), ("a", "run2"), ("b", "run2")):
        append_line(path, {"region": region, "run": run})
    assert log.counts() == {"a": 1, "b": 1}
    append_line(path, {"region": "a", "run": "run2"})
    assert log.counts() == {"a": 2, "b": 1}


def test_model_cache_loads_once_and_checks_the_checksum(tiny_model_dir):
    from geoseg.models.checkpoint import WEIGHTS_NAME, sha256_file

    sha = sha256_file(Path(tiny_model_dir) / WEIGHTS_NAME)
    first = cached_model(str(tiny_model_dir), sha)
    assert cached_model(str(tiny_model_dir), sha) is first
    with pytest.raises(CheckpointError, match="changed"):
        cached_model(str(tiny_model_dir), "0" * 64)


def test_run_batch_refuses_conflicting_flags_and_existing_outputs(tmp_path, tiny_model_dir):
    work = work_from_dict(
        {"raster": "x.tif", "region_size": 10, "model": str(tiny_model_dir)}, base=tmp_path
    )
    with pytest.raises(ConfigError, match="pick one"):
        run_batch(work, tmp_path / "out", resume=True, overwrite=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "polygons.gpkg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_batch(work, tmp_path / "out")


def test_unreachable_paths_names_missing_inputs_and_output_directory(tmp_path):
    src = tmp_path / "a.tif"
    src.write_bytes(b"")
    missing = str(tmp_path / "gone.tif")
    assert unreachable_paths([str(src), "/vsis3/bucket/x.tif", "s3://b/x.tif"], str(tmp_path)) == []
    assert unreachable_paths([str(src), missing], str(tmp_path / "no")) == [
        missing,
        str(tmp_path / "no"),
    ]


def test_rotated_windows_at_another_pixel_size_are_refused_unless_resample_never(tmp_path):
    from geoseg.batch.work import check_resolution
    from tests.conftest import random_image, write_raster

    half = Affine(0.5, 0, 500000, 0, -0.5, 6000000)
    src = write_raster(tmp_path / "half.tif", random_image(64, 64), transform=half)
    work = work_from_dict({"raster": "half.tif", "region_size": 32}, base=tmp_path)
    check_resolution(work, 1.0)  # north-up: regions are resampled as predict resamples
    write_raster(tmp_path / "rot.tif", random_image(64, 64), transform=half * Affine.rotation(20))
    rot = work_from_dict({"raster": "rot.tif", "region_size": 32}, base=tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"rotated grid with 0\.5 m pixels .* 1 m.*gdalwarp -tr 1 1.*resample: never",
    ):
        check_resolution(rot, 1.0)
    check_resolution(rot, 0.5)  # the model's own pixel size (within 25 %)
    check_resolution(rot, 0.6)
    never = work_from_dict(
        {"raster": "rot.tif", "region_size": 32, "predict": {"resample": "never"}}, base=tmp_path
    )
    check_resolution(never, 1.0)  # runs at 0.5 m, as 'geoseg predict --resample never' does
    rasters = work_from_dict({"rasters": ["rot.tif", str(src)]}, base=tmp_path)
    check_resolution(rasters, 1.0)  # whole rasters run the predict pipeline, resampling included


def test_a_refused_resolution_leaves_no_output_directory(tmp_path):
    import torch

    from geoseg.models import build_model, save_checkpoint
    from tests.conftest import random_image, tiny_card, write_raster

    torch.manual_seed(0)
    card = tiny_card(pixel_size_m=1.0)
    model = save_checkpoint(build_model(card), card, tmp_path / "m1")
    write_raster(
        tmp_path / "rot.tif",
        random_image(64, 64),
        transform=Affine(0.5, 0, 500000, 0, -0.5, 6000000) * Affine.rotation(20),
    )
    work = work_from_dict(
        {"raster": "rot.tif", "region_size": 32, "model": str(model)}, base=tmp_path
    )
    with pytest.raises(ConfigError, match="cannot be resampled exactly"):
        run_batch(work, tmp_path / "out", workers=1, dashboard_address=None)
    assert not (tmp_path / "out").exists()
