"""Inference backends: ONNX Runtime agrees with PyTorch, exports are cached, failures fall back."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoseg.errors import ConfigError
from geoseg.infer import backends
from geoseg.infer.backends import (
    TorchBackend,
    cache_dir,
    cached_export,
    choose_backend,
    default_threads,
    weights_sha256,
)
from geoseg.infer.predictor import Predictor, normalize
from geoseg.models import ModelCard, build_model
from geoseg.models.registry import architecture_stride

needs_ort = pytest.mark.skipif(
    not backends.onnxruntime_available(), reason="onnxruntime and onnx not installed"
)


pytestmark = pytest.mark.usefixtures("onnx_cache")


def card_for(architecture: str, encoder: str | None = None, bands: int = 3) -> ModelCard:
    return ModelCard.from_dict(
        {
            "name": f"test-{architecture}",
            "architecture": architecture,
            "encoder": encoder,
            "bands": [f"b{i}" for i in range(bands)],
            "classes": [{"id": i, "name": f"class{i}", "color": "#000000"} for i in range(4)],
            "stride": architecture_stride(architecture, encoder),
            "tile_size": 64,
            "overlap": 16,
        }
    )


def model_for(card: ModelCard, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(card)


def reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eager fp32 PyTorch probabilities, computed without geoseg's backends."""
    with torch.inference_mode():
        return torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()


def tiles(n: int, bands: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, bands, h, w), dtype=np.float32)


@needs_ort
@pytest.mark.parametrize(
    ("architecture", "encoder"),
    [
        ("tinycnn", None),
        ("unet", "resnet18"),
        ("unet", "tu-efficientnet_lite0"),
        ("segnet", "vgg11_bn"),
    ],
)
def test_onnx_agrees_with_eager_pytorch(architecture: str, encoder: str | None) -> None:
    card = card_for(architecture, encoder)
    model = model_for(card)
    pred = Predictor(model, card, device="cpu", backend="onnx")
    assert pred.backend.name == "onnx"
    # A batch and tile shape other than the traced one: the axes really are dynamic.
    for x in (tiles(2, 3, 64, 64), tiles(1, 3, 64, 96, seed=2)):
        got = pred(x)
        assert got.dtype == np.float32
        assert got.shape == (x.shape[0], 4, *x.shape[2:])
        np.testing.assert_allclose(got, reference(model, x), atol=1e-4, rtol=0)


def test_torch_backend_layouts_agree() -> None:
    card = card_for("unet", "resnet18")
    x = tiles(2, 3, 64, 64)
    ref = reference(model_for(card), x)
    for channels_last in (False, True):
        pred = Predictor(
            model_for(card), card, device="cpu", backend="torch", channels_last=channels_last
        )
        got = pred(x)
        assert got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_cpu_autocast_path_returns_fp32_probabilities() -> None:
    # The GPU autocast code path, exercised with bf16 on the CPU.
    card = card_for("tinycnn")
    model = model_for(card)
    x = tiles(2, 3, 32, 32)
    pred = Predictor(model, card, device="cpu", backend="torch", amp=True)
    got = pred(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, reference(model, x), atol=5e-2)


@needs_ort
def test_second_predictor_reuses_the_cached_export(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = card_for("tinycnn")
    model = model_for(card)
    calls = []
    real_export = backends.export_onnx

    def counting_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(backends, "export_onnx", counting_export)
    first = Predictor(model, card, device="cpu", backend="onnx")
    path = first.backend.path  # type: ignore[attr-defined]
    assert path.parent == onnx_cache == cache_dir()
    mtime = path.stat().st_mtime_ns
    second = Predictor(model, card, device="cpu", backend="onnx")
    assert second.backend.path == path  # type: ignore[attr-defined]
    assert len(calls) == 1
    assert path.stat().st_mtime_ns == mtime
    # Written atomically: no temporary file left beside it.
    assert sorted(p.name for p in onnx_cache.iterdir()) == [path.name]
    # Other weights, other file.
    third = Predictor(model_for(card, seed=1), card, device="cpu", backend="onnx")
    assert third.backend.path != path  # type: ignore[attr-defined]
    assert len(calls) == 2


@needs_ort
def test_cached_file_that_does_not_load_is_exported_again(onnx_cache: Path) -> None:
    card = card_for("tinycnn")
    model = model_for(card)
    path, exported = cached_export(model, card)
    assert exported
    path.write_bytes(b"not an onnx graph")
    pred = Predictor(model, card, device="cpu", backend="onnx")
    assert pred.backend.name == "onnx"
    x = tiles(1, 3, 16, 16)
    np.testing.assert_allclose(pred(x), reference(model, x), atol=1e-4, rtol=0)


def test_weights_hash_follows_the_weights_not_the_layout() -> None:
    card = card_for("tinycnn")
    a, b = model_for(card), model_for(card)
    assert weights_sha256(a) == weights_sha256(b)
    b.to(memory_format=torch.channels_last)
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        next(b.parameters())[0, 0, 0, 0] += 1
    assert weights_sha256(a) != weights_sha256(b)


@needs_ort
def test_export_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("export tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    card = card_for("unet", "tu-efficientnet_lite0")
    pred = Predictor(model_for(card, seed=3), card, device="cpu", backend="onnx")
    assert pred.backend.name == "onnx"


@needs_ort
def test_architecture_that_fails_to_export_falls_back_to_torch(
    caplog: pytest.LogCaptureFixture, onnx_cache: Path
) -> None:
    # PSPNet's adaptive pooling to a fixed grid has no ONNX form with dynamic height/width.
    card = card_for("pspnet", "resnet18")
    model = model_for(card)
    with caplog.at_level(logging.WARNING, logger="geoseg.infer.predictor"):
        pred = Predictor(model, card, device="cpu", backend="onnx")
    assert pred.backend.name == "torch"
    assert any("falling back to PyTorch" in r.getMessage() for r in caplog.records)
    x = tiles(1, 3, 64, 64)
    np.testing.assert_allclose(pred(x), reference(model, x), atol=1e-5)
    assert not onnx_cache.exists() or not any(onnx_cache.iterdir())


class _ShapeBaking(nn.Module):
    """Exports without error, but the tracer freezes its Python branch on the traced width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 3 if x.shape[-1] > 64 else y


@needs_ort
def test_export_that_disagrees_with_torch_is_not_cached(
    caplog: pytest.LogCaptureFixture, onnx_cache: Path
) -> None:
    card = card_for("tinycnn")
    with caplog.at_level(logging.WARNING, logger="geoseg.infer.predictor"):
        pred = Predictor(_ShapeBaking(), card, device="cpu", backend="auto")
    assert pred.backend.name == "torch"
    assert any("differs from PyTorch" in r.getMessage() for r in caplog.records)
    assert not onnx_cache.exists() or not any(onnx_cache.iterdir())


@needs_ort
def test_unwritable_cache_exports_for_this_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GEOSEG_CACHE_DIR", str(blocker / "cache"))
    card = card_for("tinycnn")
    model = model_for(card)
    pred = Predictor(model, card, device="cpu", backend="onnx")
    assert pred.backend.name == "onnx"
    x = tiles(1, 3, 16, 16)
    np.testing.assert_allclose(pred(x), reference(model, x), atol=1e-4, rtol=0)


def test_auto_picks_a_valid_backend() -> None:
    cpu = choose_backend("auto", torch.device("cpu"))
    assert cpu in ("onnx", "torch")
    assert (cpu == "onnx") == backends.onnxruntime_available()
    assert choose_backend("auto", torch.device("cuda")) == "torch"
    assert choose_backend("AUTO", torch.device("mps")) == "torch"
    assert choose_backend("torch", torch.device("cpu")) == "torch"
    card = card_for("tinycnn")
    pred = Predictor(model_for(card), card, device="cpu")
    assert pred.backend.name == cpu
    x = tiles(1, 3, 16, 16)
    np.testing.assert_allclose(pred(x).sum(axis=1), 1.0, atol=1e-5)


def test_bad_backend_options_are_config_errors() -> None:
    card = card_for("tinycnn")
    with pytest.raises(ConfigError, match="backend must be one of"):
        choose_backend("tensorrt", torch.device("cpu"))
    with pytest.raises(ConfigError, match="compile applies to the PyTorch backend"):
        Predictor(model_for(card), card, device="cpu", backend="onnx", compile=True)
    pred = Predictor(model_for(card), card, device="cpu", backend="torch")
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        pred(np.zeros((1, 4, 8, 8), np.float32))


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(model: nn.Module, **kwargs: object):  # type: ignore[no-untyped-def]
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    card = card_for("tinycnn")
    model = model_for(card)
    pred = Predictor(model, card, device="cpu", compile=True)
    assert pred.backend.name == "torch-compile"
    x = tiles(1, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        got = pred(x)
    assert pred.backend.name == "torch"
    np.testing.assert_allclose(got, reference(model, x), atol=1e-5)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSEG_CACHE_DIR", "/somewhere/geoseg")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/somewhere/geoseg/onnx")
    monkeypatch.delenv("GEOSEG_CACHE_DIR")
    assert cache_dir() == Path("/xdg/geoseg/onnx")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "geoseg" / "onnx"


def test_threads_default_to_the_usable_cores() -> None:
    n = default_threads()
    assert 1 <= n <= (len(__import__("os").sched_getaffinity(0)) or 1)
    card = card_for("tinycnn")
    Predictor(model_for(card), card, device="cpu", backend="torch", threads=1)
    assert torch.get_num_threads() == 1
    Predictor(model_for(card), card, device="cpu", backend="torch")
    assert torch.get_num_threads() == n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_pins_reuses_staging_and_agrees() -> None:
    card = card_for("unet", "resnet18")
    x = tiles(2, 3, 64, 64)
    ref = reference(model_for(card), x)
    backend = TorchBackend(model_for(card), torch.device("cuda"), amp=False)
    np.testing.assert_allclose(backend(x), ref, atol=1e-3)
    backend(x)
    buffers = [buf for buf, _ in backend._staging]
    assert all(buf is not None and buf.is_pinned() for buf in buffers)
    # Two buffers in turn, reused from then on; results left on the GPU agree too.
    on_device = backend.run_on_device(x)
    assert on_device.device.type == "cuda"
    np.testing.assert_allclose(on_device.cpu().numpy(), ref, atol=1e-3)
    backend(x)
    assert [buf for buf, _ in backend._staging] == buffers
    amp = Predictor(model_for(card), card, device="cuda")
    assert amp.amp and amp.backend.name == "torch"
    np.testing.assert_allclose(amp(x), ref, atol=5e-2)


def _normalize_reference(data: np.ndarray, valid: np.ndarray, card: ModelCard) -> np.ndarray:
    """The straightforward formula normalize() must reproduce bit for bit."""
    lo, hi = card.input_range
    mean = np.asarray(card.mean, np.float32)[:, None, None]
    std = np.asarray(card.std, np.float32)[:, None, None]
    out = data.astype(np.float32)
    out -= np.float32(lo) + mean * np.float32(hi - lo)
    out /= std * np.float32(hi - lo)
    out[:, ~valid] = 0
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_normalize_is_the_documented_formula(dtype: str) -> None:
    card = card_for("tinycnn").replace(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    rng = np.random.default_rng(0)
    data = (rng.random((3, 16, 16)) * 250).astype(dtype)
    valid = rng.random((16, 16)) > 0.2
    if data.dtype.kind == "f":
        data[0, 0, 0], data[1, 2, 3], data[2, 4, 5] = np.nan, np.inf, -np.inf
    got = normalize(data, valid, card)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _normalize_reference(data, valid, card))
