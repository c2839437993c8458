"""Checkpoints that carry their ONNX graph run on ONNX Runtime without exporting (or PyTorch)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.cli import main as cli_main
from geoseg.errors import MissingExtraError, OutputExistsError
from geoseg.extras import missing, require
from geoseg.infer import backends
from geoseg.infer.backends import ship_onnx
from geoseg.infer.predictor import Predictor
from geoseg.models import ModelCard, build_model
from geoseg.models.checkpoint import (
    ONNX_META_NAME,
    ONNX_NAME,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = [
    pytest.mark.usefixtures("onnx_cache"),
    pytest.mark.skipif(
        not backends.onnxruntime_available() or bool(missing("torch")),
        reason="needs onnxruntime and geoseg[torch]",
    ),
]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    card = ModelCard.from_dict(
        {
            "name": "tiny",
            "architecture": "tinycnn",
            "bands": ["r", "g", "b"],
            "classes": [{"id": i, "name": f"c{i}", "color": "#000000"} for i in range(3)],
            "tile_size": 64,
            "overlap": 16,
        }
    )
    torch.manual_seed(seed)
    return save_checkpoint(build_model(card), card, path)


def reference(ckpt: Path, x: np.ndarray) -> np.ndarray:
    model = load_checkpoint(ckpt).model
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def test_a_shipped_graph_is_used_as_is_and_agrees_with_pytorch(
    tmp_path: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ck")
    graph = ship_onnx(ckpt)
    assert graph == ckpt / ONNX_NAME
    record = json.loads((ckpt / ONNX_META_NAME).read_text())
    assert record["weights_sha256"] == load_checkpoint(ckpt).sha256
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        ship_onnx(ckpt)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint with its own graph must not be exported")

    monkeypatch.setattr(backends, "export_onnx", no_export)
    loaded = load_checkpoint(ckpt, lazy=True)
    pred = Predictor(loaded, loaded.card, device="cpu", backend="onnx")
    assert pred.backend.path == graph  # type: ignore[attr-defined]
    assert not loaded.built  # the network was never built
    assert not onnx_cache.exists() or not any(onnx_cache.iterdir())
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 24), dtype=np.float32)
    np.testing.assert_allclose(pred(x), reference(ckpt, x), atol=1e-4, rtol=0)


def test_a_graph_of_other_weights_or_bytes_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ck")
    ship_onnx(ckpt)
    # Retrained weights under the same directory: the old graph is stale.
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    (ckpt / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    loaded = load_checkpoint(ckpt, lazy=True)
    with caplog.at_level(logging.WARNING):
        assert loaded.onnx_graph is None
    assert "other weights" in caplog.text
    pred = Predictor(loaded, loaded.card, device="cpu", backend="onnx")
    assert pred.backend.path != ckpt / ONNX_NAME  # type: ignore[attr-defined]
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(pred(x), reference(ckpt, x), atol=1e-4, rtol=0)
    # A graph whose bytes changed after its record was written is not trusted either.
    ship_onnx(ckpt, overwrite=True)
    assert load_checkpoint(ckpt, lazy=True).onnx_graph is not None
    with open(ckpt / ONNX_NAME, "ab") as f:
        f.write(b"\0")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(ckpt, lazy=True).onnx_graph is None
    assert "does not match" in caplog.text


def test_the_bundled_model_ships_a_graph_that_matches_its_weights() -> None:
    loaded = load_checkpoint("default", lazy=True)
    shipped = loaded.onnx_graph
    assert shipped is not None, "run: geoseg models export geoseg/models/bundled/default"
    pred = Predictor(loaded, loaded.card, device="cpu", backend="onnx", precision="fp32")
    assert pred.backend.path == shipped[0]  # type: ignore[attr-defined]
    x = np.random.default_rng(2).standard_normal((1, 3, 128, 96), dtype=np.float32)
    np.testing.assert_allclose(pred(x), reference(loaded.path, x), atol=1e-4, rtol=0)
    # Its int8 graph passed the accuracy check, so the default (auto) runs it on the CPU.
    auto = Predictor(loaded, loaded.card, device="cpu", backend="onnx")
    assert auto.precision == "int8"
    assert auto.backend.path == loaded.path / "model.int8.onnx"  # type: ignore[attr-defined]
    # Its record names the calibration files, not where they lay on the machine that made it.
    record = json.loads((loaded.path / "model.int8.onnx.json").read_text())
    assert all("/" not in name for name in record["calibration"]["source"])
    size = sum(f.stat().st_size for f in loaded.path.iterdir())
    assert size <= 40e6  # the wheel stays small


def test_models_export_command(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ck")
    cli_main(["models", "export", str(ckpt)])
    assert "wrote" in capfd.readouterr().out
    assert (ckpt / ONNX_NAME).is_file()
    with pytest.raises(SystemExit) as exc:
        cli_main(["models", "export", str(ckpt)])
    assert exc.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]


def test_a_missing_extra_names_the_feature_and_the_pip_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "torchgeo", None)
    assert missing("train") == ["torchgeo"]
    with pytest.raises(MissingExtraError, match=r"training needs .*pip install 'geoseg\[train\]'"):
        require("train", "training")
    require("torch", "the PyTorch backend")  # installed: no error
