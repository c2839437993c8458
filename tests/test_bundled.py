"""The bundled default model: shipped in the package, loads offline, and actually works."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import rasterio

from geoseg.demo import confusion, iou_from_confusion
from geoseg.models import DEFAULT_MODEL, bundled_models, load_checkpoint
from geoseg.models.checkpoint import CARD_NAME, ONNX_META_NAME, ONNX_NAME, WEIGHTS_NAME
from geoseg.pipeline import PredictConfig, run_scene
from tests.conftest import REPO

#: Per-class IoU floors on a generated scene. A constant model scores 0 on at least two of
#: the three classes, a broken (random) one near 0 on all (buildings cover ~3 % of the scene).
#: The bundled model of 2026-12-02 (stage 3) scores background 0.89, building 0.73,
#: vegetation 0.90 and cropland 0.91 here; the floors leave room for retraining noise but
#: not for the old failure (streets taken for roofs: building 0.24, background 0.19).
FLOORS = {"background": 0.7, "building": 0.55, "vegetation": 0.75, "cropland": 0.75}


def test_bundled_model_is_small_and_loads_from_package_data():
    assert DEFAULT_MODEL in bundled_models()
    path = bundled_models()[DEFAULT_MODEL]
    assert (path / WEIGHTS_NAME).stat().st_size <= 15 * 1024 * 1024
    loaded = load_checkpoint(DEFAULT_MODEL)
    names = [c.name for c in loaded.card.classes]
    assert names == ["background", "building", "vegetation", "cropland"]
    assert [c.layer for c in loaded.card.classes[1:]] == ["buildings", "vegetation", "cropland"]
    assert loaded.card.licence and loaded.card.provenance and loaded.card.metrics
    # The shipped card names no path of the machine it was trained on.
    text = (path / CARD_NAME).read_text(encoding="utf-8")
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    assert not [v for v in strings if Path(v).is_absolute() or re.match(r"[A-Za-z]:\\", v)]


def test_wheel_ships_the_bundled_model(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1:]}")
    wheel = next(tmp_path.glob("geoseg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"geoseg/models/bundled/{DEFAULT_MODEL}/{WEIGHTS_NAME}" in names
    assert f"geoseg/models/bundled/{DEFAULT_MODEL}/{CARD_NAME}" in names
    # Its ONNX graph too: the core install (no PyTorch) runs it as shipped.
    assert f"geoseg/models/bundled/{DEFAULT_MODEL}/{ONNX_NAME}" in names
    assert f"geoseg/models/bundled/{DEFAULT_MODEL}/{ONNX_META_NAME}" in names


def test_bundled_model_segments_a_generated_scene(tmp_path):
    from geoseg.synth import SceneSpec, write_scene

    spec = SceneSpec(768, 768, pixel_size=1.0, seed=4242)
    image, truth = tmp_path / "img.tif", tmp_path / "truth.tif"
    write_scene(spec, image, truth)
    run_scene(image, tmp_path / "pred.tif", DEFAULT_MODEL, PredictConfig(device="cpu"))
    with rasterio.open(truth) as t, rasterio.open(tmp_path / "pred.tif") as p:
        cm = confusion(t.read(1), p.read(1), 4)
    iou = iou_from_confusion(cm)
    got = {"background": iou[0], "building": iou[1], "vegetation": iou[2], "cropland": iou[3]}
    for name, floor in FLOORS.items():
        assert got[name] >= floor, f"{name} IoU {got[name]:.3f} < {floor} ({got})"


def test_demo_quick_variant_produces_every_output(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoseg",
            "demo",
            str(tmp_path / "demo"),
            "--size",
            "512",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "demo"
    for name in (
        "sample_rgb.tif",
        "sample_classes.tif",
        "sample_classes_predicted.tif",
        "sample.gpkg",
        "sample_quicklook.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "IoU" in r.stdout and "polygons" in r.stdout and "Mpx/s" in r.stdout
    assert Path(out / "sample_quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
