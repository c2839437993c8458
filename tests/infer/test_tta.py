"""Test-time augmentation: the mean of the network over turned and flipped tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.infer import backends
from geoseg.infer.predictor import Predictor, tta_transforms
from geoseg.models import build_model
from geoseg.pipeline import PredictConfig, run_scene
from tests.conftest import random_image, tiny_card, write_raster


def _by_hand(pred: Predictor, x: np.ndarray, mode: str) -> np.ndarray:
    """Mean over the mode's transforms of T^-1(net(T(x))), written out with numpy."""
    outs = []
    for k, flip in tta_transforms(mode):
        t = np.rot90(x, k, axes=(2, 3))
        if flip:
            t = t[..., ::-1]
        p = pred(np.ascontiguousarray(t))
        if flip:
            p = p[..., ::-1]
        outs.append(np.rot90(p, -k, axes=(2, 3)))
    return np.mean(outs, axis=0)


@pytest.fixture(scope="module")
def net() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(3)
    card = tiny_card()
    return build_model(card).eval(), card


@pytest.mark.parametrize("mode", ["flips", "d4"])
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 24, 40)])
def test_tta_is_the_mean_of_the_transformed_predictions(net, mode, shape):
    model, card = net
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    plain = Predictor(model, card, device="cpu", backend="torch")
    tta = Predictor(model, card, device="cpu", backend="torch", tta=mode)
    got = tta(x)
    assert got.shape == (shape[0], card.n_classes, *shape[2:]) and got.dtype == np.float32
    np.testing.assert_allclose(got, _by_hand(plain, x, mode), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # An asymmetric network sees something else when the tile is flipped.
    assert np.abs(got - plain(x)).max() > 1e-4
    on_device = tta.predict_on_device(x).numpy()
    np.testing.assert_allclose(on_device, got, atol=1e-6)


@pytest.mark.skipif(not backends.onnxruntime_available(), reason="onnxruntime not installed")
def test_tta_on_onnx_runtime_matches_pytorch(net, tmp_path):
    model, card = net
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    torch_tta = Predictor(model, card, device="cpu", backend="torch", tta="d4")(x)
    onnx = Predictor(model, card, device="cpu", backend="onnx", tta="d4", cache_dir=tmp_path)
    assert onnx.backend.name == "onnx"
    np.testing.assert_allclose(onnx(x), torch_tta, atol=1e-4)


def test_unknown_tta_is_refused(net):
    model, card = net
    with pytest.raises(ConfigError, match="tta must be one of"):
        Predictor(model, card, device="cpu", backend="torch", tta="rotate")
    with pytest.raises(ConfigError, match="tta must be"):
        PredictConfig(tta="x8")
    assert tta_transforms("none") == ((0, False),)


def test_tiled_run_with_tta_equals_the_mean_of_runs_on_flipped_rasters(tiny_model_dir, tmp_path):
    """Streaming and blending stay as they are: TTA on tiles == TTA of the whole raster."""
    img = random_image(90, 150, seed=4)
    src = write_raster(tmp_path / "in.tif", img)
    cfg = PredictConfig(tile=64, overlap=16, device="cpu", backend="torch")
    run_scene(
        src, tmp_path / "tta.tif", tiny_model_dir, _with(cfg, tmp_path / "tta_p.tif", "flips")
    )
    with rasterio.open(tmp_path / "tta_p.tif") as ds:
        got = ds.read().astype(np.float64) / 254
    expected = np.zeros_like(got)
    for i, (k, flip) in enumerate(tta_transforms("flips")):
        assert k in (0, 2)  # half turns keep the raster's shape
        t = np.rot90(img, k, axes=(1, 2))
        t = np.ascontiguousarray(t[..., ::-1] if flip else t)
        path = write_raster(tmp_path / f"t{i}.tif", t)
        run_scene(
            path, tmp_path / f"t{i}_c.tif", tiny_model_dir, _with(cfg, tmp_path / f"t{i}_p.tif")
        )
        with rasterio.open(tmp_path / f"t{i}_p.tif") as ds:
            p = ds.read().astype(np.float64) / 254
        p = p[..., ::-1] if flip else p
        expected += np.rot90(p, -k, axes=(1, 2))
    expected /= len(tta_transforms("flips"))
    # uint8 probabilities: each run rounds to 1/254
    assert np.abs(got - expected).max() <= 1.5 / 254
    with rasterio.open(tmp_path / "tta.tif") as ds:
        assert json.loads(ds.tags()["GEOSEG_PARAMETERS"])["tta"] == "flips"


def _with(cfg: PredictConfig, probs, tta: str = "none") -> PredictConfig:
    from dataclasses import replace

    return replace(cfg, probabilities=probs, tta=tta)


def test_cli_predict_and_evaluate_take_tta(tiny_model_dir, tmp_path):
    src = write_raster(tmp_path / "in.tif", random_image(70, 80, seed=2))
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "-q",
            "predict",
            str(src),
            "-o",
            str(tmp_path / "o.tif"),
            "-m",
            str(tiny_model_dir),
            "--backend",
            "torch",
            "--tta",
            "d4",
        ],
    )
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert json.loads(ds.tags()["GEOSEG_PARAMETERS"])["tta"] == "d4"
    r = runner.invoke(cli, ["predict", str(src), "-o", str(tmp_path / "x.tif"), "--tta", "spin"])
    assert r.exit_code == 2 and "spin" in r.output
    assert "--tta" in runner.invoke(cli, ["evaluate", "--help"]).output
    assert "--tta" in runner.invoke(cli, ["batch", "--help"]).output
