"""Int8 graphs: quantized by ONNX Runtime, checked against float32, chosen only when checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geoseg.errors import ConfigError
from geoseg.extras import missing
from geoseg.infer import backends
from geoseg.infer.backends import ship_onnx
from geoseg.infer.predictor import Predictor
from geoseg.infer.quantize import INT8_META_NAME, INT8_NAME, quantize_checkpoint
from geoseg.models import build_model, load_checkpoint, save_checkpoint
from geoseg.pipeline import PredictConfig, run_scene
from geoseg.synth import SceneSpec, write_scene
from tests.conftest import tiny_card

pytestmark = [
    pytest.mark.usefixtures("onnx_cache"),
    pytest.mark.skipif(
        not backends.onnxruntime_available() or bool(missing("torch")),
        reason="needs onnxruntime and geoseg[torch]",
    ),
]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    card = tiny_card(
        n_classes=4, pixel_size_m=1.0, architecture="tinycnn", arch_params={"depth": 4}
    )
    ckpt = save_checkpoint(build_model(card), card, tmp_path_factory.mktemp("q") / "tiny")
    ship_onnx(ckpt)
    quantize_checkpoint(ckpt, tiles=4, tile_size=64)
    return ckpt


def test_quantized_graph_records_its_check_and_runs_with_precision_int8(quantized: Path) -> None:
    record = json.loads((quantized / INT8_META_NAME).read_text())
    check = record["check"]
    assert record["precision"] == "int8" and check["tiles"] == 4 and check["pixels"] == 4 * 64 * 64
    assert 0.0 <= check["agreement"] <= 1.0 and isinstance(check["passed"], bool)
    assert set(check["iou_fp32"]) == set(check["iou_int8"])  # generated tiles carry truth
    loaded = load_checkpoint(quantized, lazy=True)
    int8 = Predictor(loaded, loaded.card, device="cpu", backend="onnx", precision="int8")
    fp32 = Predictor(loaded, loaded.card, device="cpu", backend="onnx", precision="fp32")
    assert int8.precision == "int8" and int8.backend.path == quantized / INT8_NAME  # type: ignore[attr-defined]
    assert fp32.precision == "fp32"
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 40), dtype=np.float32)
    a, b = fp32(x), int8(x)
    assert a.shape == b.shape
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-3)  # still probabilities
    assert np.abs(a - b).max() < 0.2  # close, not equal: it is int8


def test_auto_runs_int8_only_when_its_check_passed(quantized: Path) -> None:
    meta = quantized / INT8_META_NAME
    record = json.loads(meta.read_text())
    loaded = load_checkpoint(quantized, lazy=True)
    try:
        for passed, want in ((False, "fp32"), (True, "int8")):
            record["check"]["passed"] = passed
            meta.write_text(json.dumps(record))
            pred = Predictor(loaded, loaded.card, device="cpu", backend="onnx")
            assert pred.precision == want
    finally:
        record["check"]["passed"] = False
        meta.write_text(json.dumps(record))


def test_outputs_record_the_engine_and_precision(quantized: Path, tmp_path: Path) -> None:
    src = tmp_path / "scene.tif"
    write_scene(SceneSpec(96, 80, pixel_size=1.0, seed=3), src)
    for precision in ("int8", "fp32"):
        out = tmp_path / f"{precision}.tif"
        run_scene(src, out, quantized, PredictConfig(device="cpu", precision=precision))
        with rasterio.open(out) as ds:
            tags = ds.tags()
        assert tags["GEOSEG_ENGINE"] == f"onnx {precision}"
        assert json.loads(tags["GEOSEG_PARAMETERS"])["precision"] == precision


def test_int8_without_a_graph_or_on_torch_is_a_config_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = tiny_card()
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "plain")
    loaded = load_checkpoint(ckpt, lazy=True)
    with pytest.raises(ConfigError, match="geoseg models quantize"):
        Predictor(loaded, card, device="cpu", backend="onnx", precision="int8")
    with pytest.raises(ConfigError, match="ONNX Runtime"):
        Predictor(loaded, card, device="cpu", backend="torch", precision="int8")
    with pytest.raises(ConfigError, match="precision"):
        PredictConfig(precision="int4")


def test_models_quantize_command_writes_a_copy(
    quantized: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from geoseg.cli import main

    out = tmp_path / "copy"
    main(["models", "quantize", str(quantized), "-o", str(out), "--tiles", "2"])
    line = capfd.readouterr().out
    assert "agreement" in line and ("passed" in line or "FAILED" in line)
    assert (out / INT8_NAME).is_file() and (out / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["models", "quantize", str(quantized), "-o", str(out)])
    assert exc.value.code == 1 and "--overwrite" in capfd.readouterr().err
    # A run that fails (here: a calibration raster that does not exist) leaves no copy.
    failed = tmp_path / "failed"
    with pytest.raises(SystemExit) as exc:
        main(["models", "quantize", str(quantized), "-o", str(failed), "--calibration", "nope.tif"])
    err = capfd.readouterr().err
    assert exc.value.code == 1 and "nope.tif does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_the_search_keeps_the_fewest_leading_float_convs_that_pass(quantized: Path) -> None:
    record = json.loads((quantized / INT8_META_NAME).read_text())
    tried = record["selection"]["tried"]
    steps = [t["leading_float_convs"] for t in tried]
    assert steps == sorted(steps) and steps[0] == 1
    # It stops at the first that passes on its own tiles (or tries every step).
    assert all(not t["passed"] for t in tried[:-1])
    convs = record["selection"]["convs"]
    assert tried[-1]["passed"] or steps[-1] == min(16, convs - 2)
    assert len(record["float_convs"]) == steps[-1] + 1  # the leading ones and the last


def test_an_explicit_keep_float_is_used_without_a_search(tmp_path: Path) -> None:
    torch.manual_seed(1)
    card = tiny_card(
        n_classes=3, pixel_size_m=1.0, architecture="tinycnn", arch_params={"depth": 4}
    )
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "tiny")
    ship_onnx(ckpt)
    quantize_checkpoint(ckpt, tiles=2, tile_size=64, keep_float=2)
    record = json.loads((ckpt / INT8_META_NAME).read_text())
    assert record["selection"] is None and len(record["float_convs"]) == 3
    assert "the first 2 and the last Conv in float32" in record["method"]


def _passed_copy(src: Path, dst: Path) -> Path:
    """A copy of a quantized checkpoint whose record says the check passed."""
    import shutil

    shutil.copytree(src, dst)
    record = json.loads((dst / INT8_META_NAME).read_text())
    record["check"]["passed"] = True
    (dst / INT8_META_NAME).write_text(json.dumps(record))
    return dst


def test_tune_times_int8_beside_fp32_and_auto_follows_it(
    quantized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoseg.infer.backends import HostCPU
    from geoseg.infer.tune import candidates, tune
    from geoseg.infer.tuning import (
        Candidate,
        Measurement,
        Tuning,
        entry_key,
        machine_identity,
        model_key,
        store_tuning,
    )

    monkeypatch.setenv("GEOSEG_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = _passed_copy(quantized, tmp_path / "passed")
    labels = [c.label for c in candidates(HostCPU(), 2, int8=True)]
    assert "onnx x2 int8" in labels and "onnx x2" in labels
    loaded = load_checkpoint(ckpt, lazy=True)
    result = tune(loaded, loaded.card, device="cpu", threads=2, seconds=0.4, rounds=1)
    timed = {m.candidate.label: m.mpx_s for m in result.measurements}
    assert timed["onnx x2 int8"] is not None and timed["onnx x2"] is not None
    assert result.timed_int8 and result.precision in ("fp32", "int8")
    # auto follows the measurement: int8 when it won, float32 when float32 won.
    key = entry_key(machine_identity(HostCPU(), 2), model_key(loaded, loaded.card))
    for winner in ("fp32", "int8"):
        rows = [
            Measurement(Candidate("onnx", 2, precision="int8"), 2.0 if winner == "int8" else 1.0),
            Measurement(Candidate("onnx", 2), 2.0 if winner == "fp32" else 1.0),
        ]
        store_tuning(key, Tuning("onnx", 2, 2.0, rows, precision=winner))
        pred = Predictor(loaded, loaded.card, device="cpu", threads=2)
        assert pred.tuning is not None and pred.precision == winner
    # A tuning that never timed int8 (stored before it existed) leaves the check's rule.
    store_tuning(key, Tuning("onnx", 2, 2.0, [Measurement(Candidate("onnx", 2), 2.0)]))
    assert Predictor(loaded, loaded.card, device="cpu", threads=2).precision == "int8"
