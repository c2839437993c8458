"""The core install (no PyTorch) predicts and vectorizes with the bundled model's own graph.

Builds a fresh virtual environment with ``pip install .`` (no extras) and runs the
CLI there.  PyTorch is not installed in it at all, so any module on the predict and
vectorize path that imports torch (or torchgeo, smp, timm) fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.synth import SceneSpec, write_scene

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]


def test_core_venv_predicts_and_vectorizes_without_torch(tmp_path: Path) -> None:
    env_dir = tmp_path / "core"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / "bin"
    pip = run([str(bindir / "python"), "-m", "pip", "install", "--quiet", str(ROOT)])
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = run(
        [
            str(bindir / "python"),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'torchvision', "
            "'torchgeo', 'segmentation_models_pytorch', 'timm', 'onnx') if u.find_spec(m)])",
        ]
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    info = run([str(bindir / "geoseg"), "info", "--json"])
    assert info.returncode == 0, info.stderr
    extras = json.loads(info.stdout)["extras"]
    assert extras["torch"].startswith("not installed")
    assert extras["train"].startswith("not installed")
    assert set(extras) == {"torch", "train", "parquet"}

    scene = tmp_path / "scene.tif"
    write_scene(SceneSpec(320, 256, pixel_size=1.0, seed=7), scene)
    core_out = tmp_path / "core.gpkg"
    core = run([str(bindir / "geoseg"), "predict", str(scene), "-o", str(core_out)], cwd=tmp_path)
    assert core.returncode == 0, core.stderr[-3000:]
    # The same run in this (full) environment gives the same class raster: both run
    # the bundled model's shipped graph.
    full_out = tmp_path / "full.gpkg"
    full = run([sys.executable, "-m", "geoseg", "predict", str(scene), "-o", str(full_out)])
    assert full.returncode == 0, full.stderr[-3000:]
    with (
        rasterio.open(tmp_path / "core_classes.tif") as a,
        rasterio.open(tmp_path / "full_classes.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.read(1).max() > 0  # something was found

    again = tmp_path / "again.gpkg"
    vec = run(
        [str(bindir / "geoseg"), "vectorize", str(tmp_path / "core_classes.tif"), "-o", str(again)]
    )
    assert vec.returncode == 0, vec.stderr[-3000:]
    import pyogrio

    for out in (core_out, again):
        layers = {str(name) for name, _ in pyogrio.list_layers(out)}
        assert layers & {"building", "buildings", "vegetation", "cropland"}, layers

    train = run([str(bindir / "geoseg"), "train", "--config", "x.yaml"], cwd=tmp_path)
    assert train.returncode != 0
    assert "pip install 'geoseg[train]'" in train.stderr
    assert len(train.stderr.strip().splitlines()) == 1
