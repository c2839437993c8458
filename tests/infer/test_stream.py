"""The streaming loop's stages: readers, concurrent workers and the blenders agree."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.infer import backends
from geoseg.infer.blend import CLASS_NODATA, StreamingBlender, TorchBlender, argmax_classes
from geoseg.infer.predictor import Predictor, normalize
from geoseg.infer.stream import Strip, stream_segment
from geoseg.models import load_checkpoint
from geoseg.tiling import make_grid
from geoseg.types import PixelWindow, TileGrid
from tests.conftest import random_image

needs_ort = pytest.mark.skipif(
    not backends.onnxruntime_available(), reason="onnxruntime and onnx not installed"
)


def _reader(img: np.ndarray, valid: np.ndarray) -> Callable[[PixelWindow], tuple]:
    h, w = img.shape[1:]

    def read(win: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        c = win.clip(h, w)
        data = img[:, c.row_off : c.row_end, c.col_off : c.col_end]
        v = valid[c.row_off : c.row_end, c.col_off : c.col_end]
        pad = (
            (c.row_off - win.row_off, win.row_end - c.row_end),
            (c.col_off - win.col_off, win.col_end - c.col_end),
        )
        return np.pad(data, ((0, 0), *pad), mode="reflect"), np.pad(v, pad, mode="reflect")

    return read


def _assemble(strips: list[Strip], h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
    classes = np.full((h, w), 77, np.uint8)
    probs = None
    for s in strips:
        rows = s.classes.shape[0]
        classes[s.row_off : s.row_off + rows] = s.classes
        if s.probs_f32 is not None:
            if probs is None:
                probs = np.zeros((s.probs_f32.shape[0], h, w), np.float32)
            probs[:, s.row_off : s.row_off + rows] = s.probs_f32
    return classes, probs


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    h, w = 150, 230
    img = random_image(h, w, seed=7)
    valid = np.ones((h, w), bool)
    valid[:40, :60] = False  # a nodata corner: whole tiles and parts of tiles
    valid[100:, 200:] = False
    return img, valid


def _run(loaded, img, valid, grid, **kw) -> tuple[np.ndarray, np.ndarray | None]:
    pred = kw.pop("predict", None) or Predictor(
        loaded.model, loaded.card, device="cpu", backend="torch", channels_last=False
    )
    reads = kw.pop("reads", None) or _reader(img, valid)
    strips = list(
        stream_segment(
            grid,
            reads,
            lambda d, v: normalize(d, v, loaded.card),
            pred,
            loaded.card.n_classes,
            **kw,
        )
    )
    return _assemble(strips, *img.shape[1:])


def _join_geoseg_threads(timeout: float = 30.0) -> None:
    """Wait for the streaming loop's threads to end (a join, not a sleep); a thread that
    is still alive after `timeout` fails the caller's check."""
    for t in threading.enumerate():
        if t.name.startswith("geoseg-") and t is not threading.current_thread():
            t.join(timeout)


def test_readers_and_workers_do_not_change_a_pixel(tiny_model_dir, scene) -> None:
    img, valid = scene
    loaded = load_checkpoint(tiny_model_dir)
    grid = make_grid(*img.shape[1:], tile=48, overlap=16, stride=1)
    ref_cls, ref_p = _run(loaded, img, valid, grid, batch_size=2, exact_probabilities=True)
    assert (ref_cls[~valid] == CLASS_NODATA).all() and (ref_cls[valid] < 3).all()
    seen: set[str] = set()

    def noting(fn: Callable) -> Callable:
        def read(win: PixelWindow):
            seen.add(threading.current_thread().name)
            time.sleep(0.001 * (hash(win) % 3))  # readers finish out of order
            return fn(win)

        return read

    reads = [noting(_reader(img, valid)) for _ in range(3)]
    cls, p = _run(
        loaded,
        img,
        valid,
        grid,
        batch_size=1,
        workers=3,
        reads=reads,
        exact_probabilities=True,
    )
    assert seen == {"geoseg-reader-0", "geoseg-reader-1", "geoseg-reader-2"}
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_allclose(p, ref_p, atol=1e-6)


def test_gpu_style_path_blends_device_tensors_like_numpy(tiny_model_dir, scene) -> None:
    """The CUDA path (probabilities kept as tensors, blended by TorchBlender), run on the CPU."""
    img, valid = scene
    loaded = load_checkpoint(tiny_model_dir)
    grid = make_grid(*img.shape[1:], tile=64, overlap=24, stride=1)
    ref_cls, ref_p = _run(loaded, img, valid, grid, exact_probabilities=True)
    pred = Predictor(loaded.model, loaded.card, device="cpu", backend="torch", channels_last=False)
    outputs: list[torch.Tensor] = []

    def on_device(batch: np.ndarray) -> torch.Tensor:
        out = pred.predict_on_device(batch)
        outputs.append(out)
        return out

    cls, p = _run(
        loaded,
        img,
        valid,
        grid,
        predict=on_device,
        blend_device="cpu",
        exact_probabilities=True,
    )
    assert outputs and all(isinstance(o, torch.Tensor) for o in outputs)
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_allclose(p, ref_p, atol=1e-5)


def test_predict_on_device_needs_the_torch_backend(tiny_model_dir) -> None:
    loaded = load_checkpoint(tiny_model_dir)
    pred = Predictor(loaded.model, loaded.card, device="cpu", backend="torch")
    assert pred.blend_device is None  # on a CPU the host blender is used
    if backends.onnxruntime_available():
        onnx = Predictor(loaded.model, loaded.card, device="cpu", backend="onnx")
        with pytest.raises(Exception, match="backend='torch'"):
            onnx.predict_on_device(np.zeros((1, 3, 8, 8), np.float32))


def _blend_all(blender: StreamingBlender, grid: TileGrid, tiles: dict) -> dict:
    out = {}
    for t in grid:
        probs, valid = tiles[(t.row, t.col)]
        for b in blender.add(t, probs, valid):
            out[(b.row_off, b.col_off)] = b
    return out


@pytest.mark.parametrize("probabilities", [True, False])
def test_torch_blender_matches_numpy_blender(probabilities: bool) -> None:
    g = make_grid(97, 141, tile=40, overlap=12)
    rng = np.random.default_rng(3)
    tiles = {}
    for t in g:
        p = rng.random((4, g.tile_h, g.tile_w)).astype(np.float32)
        v = rng.random((g.tile_h, g.tile_w)) > 0.2
        tiles[(t.row, t.col)] = (None, v) if (t.row + t.col) % 5 == 4 else (p, v)
    ref = _blend_all(StreamingBlender(g, 4, probabilities=probabilities), g, tiles)
    dev = {k: (None if p is None else torch.from_numpy(p), v) for k, (p, v) in tiles.items()}
    got = _blend_all(TorchBlender(g, 4, device="cpu", probabilities=probabilities), g, dev)
    assert ref.keys() == got.keys()
    for key, a in ref.items():
        b = got[key]
        np.testing.assert_array_equal(a.covered, b.covered)
        np.testing.assert_array_equal(a.classes, b.classes)
        assert (a.classes[~a.covered] == CLASS_NODATA).all()
        if probabilities:
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
        else:
            assert a.probs is None and b.probs is None


def test_classes_without_probabilities_are_the_argmax_of_the_probabilities() -> None:
    g = make_grid(120, 90, tile=48, overlap=16)
    rng = np.random.default_rng(5)
    tiles = {(t.row, t.col): (rng.random((3, 48, 48)).astype(np.float32), None) for t in g}
    with_p = _blend_all(StreamingBlender(g, 3), g, tiles)
    without = _blend_all(StreamingBlender(g, 3, probabilities=False), g, tiles)
    for key, a in with_p.items():
        np.testing.assert_array_equal(a.classes, np.argmax(a.probs, axis=0))
        np.testing.assert_array_equal(without[key].classes, a.classes)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_argmax_classes_is_numpy_argmax(c: int, h: int, w: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((c, h, w)).astype(np.float32)
    if ties:  # coarse values: many exact ties, which go to the lowest class
        x = np.round(x * 2) / 2
    got = argmax_classes(x)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.argmax(x, axis=0))


def test_a_failing_network_stops_every_stage(tiny_model_dir, scene) -> None:
    img, valid = scene
    loaded = load_checkpoint(tiny_model_dir)
    grid = make_grid(*img.shape[1:], tile=48, overlap=16, stride=1)
    calls = 0

    def flaky(batch: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory on purpose")
        return np.full((len(batch), 3, *batch.shape[2:]), 1 / 3, np.float32)

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="on purpose"):
        _run(loaded, img, valid, grid, predict=flaky, batch_size=1, workers=2)
    _join_geoseg_threads()
    left = {t.name for t in threading.enumerate()} - before
    assert not any(n.startswith("geoseg-") for n in left), left


def test_closing_the_stream_early_ends_its_threads(tiny_model_dir, scene) -> None:
    img, valid = scene
    loaded = load_checkpoint(tiny_model_dir)
    grid = make_grid(*img.shape[1:], tile=32, overlap=8, stride=1)
    pred = Predictor(loaded.model, loaded.card, device="cpu", backend="torch")
    strips = stream_segment(
        grid,
        [_reader(img, valid), _reader(img, valid)],
        lambda d, v: normalize(d, v, loaded.card),
        pred,
        3,
        batch_size=1,
        workers=2,
        prefetch=1,
    )
    first = next(strips)
    assert first.row_off == 0
    strips.close()
    _join_geoseg_threads()
    assert not any(t.name.startswith("geoseg-") for t in threading.enumerate())


@needs_ort
def test_onnx_workers_share_one_session_safely(tiny_model_dir) -> None:
    loaded = load_checkpoint(tiny_model_dir)
    pred = Predictor(loaded.model, loaded.card, device="cpu", backend="onnx", threads=2, workers=2)
    assert pred.workers == 2 and pred.batch_size == 1
    assert pred.backend.intra_threads == 1
    x = np.random.default_rng(0).standard_normal((6, 3, 40, 40), dtype=np.float32)
    serial = [pred(x[i : i + 1]) for i in range(6)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        results[i] = pred(x[i : i + 1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(results[i], serial[i])
    one = Predictor(loaded.model, loaded.card, device="cpu", backend="onnx", threads=2, workers=1)
    assert one.workers == 1 and one.batch_size == 2 and one.backend.intra_threads == 2
    torch_pred = Predictor(loaded.model, loaded.card, device="cpu", backend="torch", workers=2)
    assert torch_pred.workers == 1  # torch's CPU pool is process-wide: one call at a time


def test_cpu_is_named_without_torch_only_when_onnx_certainly_runs_there(monkeypatch) -> None:
    import sys
    from types import SimpleNamespace

    from geoseg.infer import predictor as predictor_mod
    from geoseg.infer.backends import HostCPU
    from geoseg.pipeline import default_readers

    pick = predictor_mod._host_cpu_if_enough
    assert pick("cpu", "auto") is None  # torch is imported in this process: ask it
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(predictor_mod, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(predictor_mod, "_gpu_possible", lambda: False)
    assert pick("cpu", "auto") == HostCPU() and pick("auto", "onnx") == HostCPU()
    assert str(HostCPU()) == "cpu" and HostCPU().index is None
    for device, backend in [("cuda", "auto"), ("cpu", "torch"), ("mps", "onnx")]:
        assert pick(device, backend) is None
    monkeypatch.setattr(predictor_mod, "_gpu_possible", lambda: True)
    assert pick("auto", "auto") is None and pick("cpu", "auto") == HostCPU()
    monkeypatch.setattr(predictor_mod, "onnxruntime_available", lambda: False)
    assert pick("cpu", "auto") is None
    assert default_readers(HostCPU()) == 1
    assert 1 <= default_readers(SimpleNamespace(type="cuda")) <= 4
