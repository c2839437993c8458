"""Odd shapes, odd cards and two runs at once: answered whole or refused in one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyogrio
import pytest
import rasterio

import geoseg
from geoseg.errors import ModelCardError
from geoseg.io.atomic import output_lock
from geoseg.models import load_checkpoint
from tests.conftest import random_image, write_raster

pytestmark = pytest.mark.timeout(300)

TRANSFORM = rasterio.Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 6000000.0)


def predict_cmd(src: Path, dst: Path, model: Path, *extra: str) -> list[str]:
    """``geoseg predict SRC -o DST --model MODEL ...`` in a process of its own."""
    return [sys.executable, "-m", "geoseg", *extra, "predict", str(src), "-o", str(dst),
            "--model", str(model)]  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 1), (10, 70_000), (70_000, 10)], ids=str)
def test_a_one_pixel_raster_and_long_strips_come_out_on_their_own_grid(
    tmp_path, tiny_model_dir, shape
):
    h, w = shape
    data = random_image(max(h, 8), max(w, 8))[:, :h, :w]
    src = write_raster(tmp_path / "in.tif", data, transform=TRANSFORM, crs="EPSG:32633")
    result = geoseg.predict(src, tmp_path / "out.gpkg", model=tiny_model_dir, device="cpu")
    with rasterio.open(result.classes) as ds:
        assert (ds.height, ds.width) == shape
        assert ds.transform == TRANSFORM and ds.crs.to_epsg() == 32633
        classes = ds.read(1)
    assert classes.max() < 3  # every pixel predicted, none left as nodata
    layers = {name for name, _ in pyogrio.list_layers(result.vector)}
    assert {"buildings", "vegetation"} <= layers
    if shape != (1, 1):
        frames = [pyogrio.read_dataframe(result.vector, layer=n) for n in layers - {"layer_styles"}]
        bounds = [f.total_bounds for f in frames if len(f)]
        assert bounds
        left, top = TRANSFORM.c, TRANSFORM.f
        for x0, y0, x1, y1 in bounds:  # polygons stay on the strip
            assert left <= x0 <= x1 <= left + w and top - h <= y0 <= y1 <= top


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "abc"], ids=repr)
def test_a_card_with_a_bad_pixel_size_is_refused_naming_the_field(tmp_path, tiny_model_dir, value):
    model = shutil.copytree(tiny_model_dir, tmp_path / "m")
    card = json.loads((model / "model_card.json").read_text())
    card["pixel_size_m"] = value
    (model / "model_card.json").write_text(json.dumps(card))  # NaN and Infinity as JSON5 tokens
    with pytest.raises(ModelCardError, match="pixel_size_m"):
        load_checkpoint(model)
    src = write_raster(tmp_path / "in.tif", random_image(16, 16), transform=TRANSFORM)
    run = subprocess.run(
        predict_cmd(src, tmp_path / "o.gpkg", model), capture_output=True, text=True
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "pixel_size_m" in lines[0], run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "m"]


def test_a_run_whose_output_another_run_is_writing_fails_at_once(tmp_path, tiny_model_dir):
    src = write_raster(tmp_path / "in.tif", random_image(64, 64), transform=TRANSFORM)
    dst = tmp_path / "out.gpkg"
    # This test process plays the other run; the command runs in another process (flock
    # locks belong to an open file, not to a process).
    with output_lock(dst):
        run = subprocess.run(predict_cmd(src, dst, tiny_model_dir), capture_output=True, text=True)
    assert run.returncode == 1
    line = run.stderr.strip()
    assert line.count("\n") == 0 and "is writing" in line and "choose another output" in line
    assert f"process {os.getpid()}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]  # nothing written, no lock
    # Released: the same command now runs.
    ok = subprocess.run(predict_cmd(src, dst, tiny_model_dir, "-q"), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.gpkg", "out_classes.tif"]


def test_two_runs_started_together_never_mix_their_outputs(tmp_path, tiny_model_dir):
    a = write_raster(tmp_path / "a.tif", random_image(256, 256, seed=1), transform=TRANSFORM)
    b = write_raster(tmp_path / "b.tif", random_image(256, 256, seed=2), transform=TRANSFORM)
    dst = tmp_path / "out.gpkg"
    procs = [
        subprocess.Popen(
            [*predict_cmd(src, dst, tiny_model_dir, "-q"), "--overwrite"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in (a, b)
    ]
    outcomes = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert any(rc == 0 for rc, _ in outcomes)
    for rc, err in outcomes:
        assert rc == 0 or ("is writing" in err and err.strip().count("\n") == 0), err
    # Whichever won (or won last), the raster and the polygons come from one run.
    with rasterio.open(tmp_path / "out_classes.tif") as ds:
        raster_source = Path(ds.tags()["GEOSEG_SOURCE"]).name
    vector_source = Path(
        pyogrio.read_info(dst, layer="buildings")["dataset_metadata"]["input"]
    ).name
    assert raster_source == vector_source
    assert not [p.name for p in tmp_path.iterdir() if "geoseg" in p.name]


def test_a_filesystem_without_locks_still_gets_its_output(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with output_lock(tmp_path / "out.gpkg"):
        (tmp_path / "out.gpkg").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]


def test_a_lock_whose_pid_cannot_be_written_still_locks_and_releases(tmp_path, monkeypatch):
    """On a full disk the holder's pid cannot be written: the lock still holds and is let go
    (it used to leak its file descriptor, so every later try in the process reported
    another run)."""
    import errno

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    dst = tmp_path / "out.tif"
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", full)
        with output_lock(dst):
            # Another process would be refused while we hold it.
            probe = subprocess.run(
                [sys.executable, "-c",
                 "import sys; from geoseg.io.atomic import output_lock\n"
                 "try:\n    output_lock(sys.argv[1]).__enter__()\n"
                 "except Exception as e:\n    print(type(e).__name__)",
                 str(dst)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert probe.stdout.strip() == "OutputWriteError"
    with output_lock(dst):  # released: this process takes it again at once
        pass
