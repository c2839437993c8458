"""Faults never leave a half-written file under the final name, and say what happened."""

import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import random_image, write_raster


def _temps(d):
    return [p.name for p in d.iterdir() if "geoseg" in p.name]


def _cmd(src, out, model, *extra):
    return [
        sys.executable,
        "-m",
        "geoseg",
        "predict",
        str(src),
        "-o",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--tile",
        "128",
        "--overlap",
        "32",
        *map(str, extra),
    ]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _limit_file_size(nbytes):
    def preexec():
        # Writes past the limit fail with EFBIG instead of killing the process with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


@pytest.mark.parametrize("suffix", [".tif", ".gpkg"])
def test_disk_full_while_writing(tiny_model_dir, tmp_path, suffix):
    src = write_raster(tmp_path / "scene.tif", random_image(700, 700))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / f"scene{suffix}"
    # The model's ONNX export is cached first (as any earlier run would have), so the
    # size limit hits the outputs, not the export cache.
    warm = subprocess.run(_cmd(src, tmp_path / "warm.tif", tiny_model_dir), capture_output=True)
    assert warm.returncode == 0
    r = subprocess.run(
        _cmd(src, out, tiny_model_dir),
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(20_000),
    )
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "disk" in lines[0].lower() or "space" in lines[0].lower() or "size" in lines[0].lower()
    assert not out.exists()
    assert _temps(outdir) == []


def test_unwritable_directory(tiny_model_dir, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root bypasses directory permissions; covered by tests/io/test_write_vector.py")
    src = write_raster(tmp_path / "scene.tif", random_image(50, 50))
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    r = subprocess.run(_cmd(src, ro / "o.tif", tiny_model_dir), capture_output=True, text=True)
    assert r.returncode == 1 and "not writable" in r.stderr


def test_read_only_directory_via_probe(tiny_model_dir, tmp_path):
    """A directory that cannot take new files (here: it is a file) fails up front."""
    src = write_raster(tmp_path / "scene.tif", random_image(50, 50))
    (tmp_path / "afile").write_text("x")
    r = subprocess.run(
        _cmd(src, tmp_path / "afile" / "o.tif", tiny_model_dir), capture_output=True, text=True
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "afile" in r.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("suffix", [".tif", ".gpkg"])
def test_signal_mid_run_leaves_nothing(tiny_model_dir, tmp_path, sig, code, suffix):
    big = np.tile(random_image(512, 512), (1, 6, 6))
    src = write_raster(tmp_path / "scene.tif", big)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / f"scene{suffix}"
    # Eight passes per tile (--tta d4) keep the run busy well past the moment the signal
    # comes, whatever the machine's speed and whether the model's export is cached.
    proc = subprocess.Popen(
        _cmd(src, out, tiny_model_dir, "--batch-size", "1", "--tta", "d4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (``pytest &``) runs with
        # SIGINT ignored, which its children would inherit.
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 60
    while not _temps(outdir) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert _temps(outdir) == []
