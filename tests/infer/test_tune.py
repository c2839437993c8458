"""``geoseg tune``: engines are timed, the fastest is stored, ``--backend auto`` follows it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.infer import backends
from geoseg.infer.backends import HostCPU
from geoseg.infer.predictor import Predictor
from geoseg.infer.tune import (
    Candidate,
    Measurement,
    Tuning,
    candidates,
    entry_key,
    machine_identity,
    model_key,
    store_tuning,
    stored_tuning,
    tune,
    tuning_path,
)
from geoseg.models import build_model, load_checkpoint
from tests.conftest import tiny_card

needs_ort = pytest.mark.skipif(
    not backends.onnxruntime_available(), reason="onnxruntime and onnx not installed"
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache: a stored tuning must not steer other tests' predictors."""
    monkeypatch.setenv("GEOSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_card())


def fake(backend: str, workers: int, mpx: float = 1.0) -> Tuning:
    return Tuning(
        backend=backend,
        workers=workers,
        mpx_s=mpx,
        measurements=[Measurement(Candidate(backend, workers), mpx, 4, 0.5)],
        tile=128,
        measured_at="2026-01-01T00:00:00+00:00",
    )


def store_for(model: torch.nn.Module, tuning: Tuning, threads: int = 2) -> Path:
    key = entry_key(machine_identity(torch.device("cpu"), threads), model_key(model, tiny_card()))
    return store_tuning(key, tuning)


def test_tuning_path_follows_the_cache(own_cache: Path) -> None:
    assert tuning_path() == own_cache / "tuning.json"


@needs_ort
def test_cpu_candidates_cover_workers_and_torch() -> None:
    labels = [c.label for c in candidates(HostCPU(), 4)]
    assert labels == ["onnx x4", "onnx x1", "torch"]
    assert [c.label for c in candidates(HostCPU(), 1)] == ["onnx x1", "torch"]
    assert [c.label for c in candidates(HostCPU(), 32)] == [
        "onnx x4",
        "onnx x1",
        "onnx x8",
        "torch",
    ]
    assert candidates(HostCPU(), 2, compile=True)[-1] == Candidate("torch", 1, True)


@needs_ort
def test_tune_times_every_engine_and_stores_the_fastest(own_cache: Path) -> None:
    model, card = tiny(), tiny_card()
    seen: list[Measurement] = []
    result = tune(model, card, device="cpu", threads=2, seconds=0.3, rounds=2, progress=seen.append)
    assert [m.candidate.label for m in result.measurements] == ["onnx x2", "onnx x1", "torch"]
    assert seen == result.measurements
    for m in result.measurements:
        assert m.error is None and m.mpx_s is not None and m.mpx_s > 0
        assert m.tiles >= 2 and m.seconds > 0
        # Throughput is what was run over the time it took.
        assert m.mpx_s == pytest.approx(m.tiles * 128 * 128 / m.seconds / 1e6)
    best = max(result.measurements, key=lambda m: m.mpx_s or 0)
    assert (result.backend, result.workers, result.mpx_s) == (
        best.candidate.backend,
        best.candidate.workers,
        best.mpx_s,
    )
    assert result.machine["threads"] == 2 and result.machine["device"] == "cpu"
    assert result.tile == card.tile_size
    again = stored_tuning(model, card, torch.device("cpu"), 2)
    assert again is not None and again.to_json() == result.to_json()
    # The file is plain JSON a person can read.
    data = json.loads((own_cache / "tuning.json").read_text())
    assert data["format"] == 1 and len(data["entries"]) == 1


@needs_ort
def test_auto_follows_the_stored_measurement() -> None:
    model, card = tiny(), tiny_card()
    pred = Predictor(model, card, device="cpu", threads=2)
    assert pred.tuning is None and pred.backend.name == "onnx"  # the rule
    store_for(model, fake("torch", 1))
    pred = Predictor(model, card, device="cpu", threads=2)
    assert pred.tuning is not None and pred.backend.name == "torch"
    store_for(model, fake("onnx", 1))
    pred = Predictor(model, card, device="cpu", threads=2)
    assert (pred.backend.name, pred.workers) == ("onnx", 1)
    # An explicit --workers wins over the measured count; an explicit backend ignores tuning.
    assert Predictor(model, card, device="cpu", threads=2, workers=2).workers == 2
    explicit = Predictor(model, card, device="cpu", threads=2, backend="torch")
    assert explicit.tuning is None and explicit.backend.name == "torch"
    # Same probabilities whichever engine the measurement picked.
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(pred(x), explicit(x), atol=1e-5)


def test_measurement_is_per_machine_threads_and_weights() -> None:
    model, card = tiny(0), tiny_card()
    store_for(model, fake("torch", 1), threads=2)
    cpu = torch.device("cpu")
    assert stored_tuning(model, card, cpu, 2) is not None
    assert stored_tuning(model, card, cpu, 1) is None  # other thread count
    assert stored_tuning(tiny(1), card, cpu, 2) is None  # other weights
    other = machine_identity(cpu, 2) | {"onnxruntime": "0.0.1"}
    assert entry_key(other, model_key(model, card)) != entry_key(
        machine_identity(cpu, 2), model_key(model, card)
    )


def test_lazy_checkpoint_lookup_needs_no_network(tiny_model_dir: Path) -> None:
    lazy = load_checkpoint(tiny_model_dir, lazy=True)
    store_tuning(
        entry_key(machine_identity(HostCPU(), 2), model_key(lazy, lazy.card)), fake("torch", 1)
    )
    got = stored_tuning(lazy, lazy.card, HostCPU(), 2)
    assert got is not None and got.backend == "torch"
    assert not lazy.built, "looking up a measurement must not build the network"


def test_damaged_tuning_file_is_ignored(own_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, card = tiny(), tiny_card()
    own_cache.mkdir(parents=True)
    (own_cache / "tuning.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="geoseg.infer.tune"):
        assert stored_tuning(model, card, torch.device("cpu"), 2) is None
    assert any("unreadable tuning file" in r.getMessage() for r in caplog.records)
    # A later tune repairs it; an entry of the wrong shape is skipped with a warning.
    path = store_for(model, fake("torch", 1))
    data = json.loads(path.read_text())
    (key,) = data["entries"]
    good = data["entries"][key]
    for bad in (
        {"backend": "torch"},
        "oops",
        [1],
        {**good, "backend": "tensorrt"},
        {**good, "workers": 0},
        {**good, "mpx_s": -1},
    ):
        data["entries"][key] = bad
        path.write_text(json.dumps(data))
        assert stored_tuning(model, card, torch.device("cpu"), 2) is None, bad
        # And the predictor follows the rule instead of failing.
        assert Predictor(model, card, device="cpu", threads=2).tuning is None
    # Written readable by all (a shared cache), not 0600 as mkstemp makes files.
    assert path.stat().st_mode & 0o044 == 0o044


def test_concurrent_stores_keep_every_entry() -> None:
    cpu = torch.device("cpu")

    def put(i: int) -> None:
        store_tuning(entry_key(machine_identity(cpu, i + 1), "m"), fake("torch", 1, float(i)))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = json.loads(tuning_path().read_text())["entries"]
    assert len(entries) == 8
    assert not list(tuning_path().parent.glob(".tuning-*")), "no temporary file left behind"


@needs_ort
def test_engine_that_cannot_run_is_reported_not_chosen() -> None:
    from tests.infer.test_backends import card_for, model_for

    # PSPNet does not export with dynamic height/width: both ONNX candidates fail.
    card = card_for("pspnet", "resnet18")
    result = tune(model_for(card), card, device="cpu", threads=2, seconds=0.2, rounds=1)
    by = {m.candidate.label: m for m in result.measurements}
    assert by["onnx x2"].mpx_s is None and by["onnx x2"].error
    assert by["torch"].mpx_s is not None
    assert result.backend == "torch"


def test_bad_arguments_are_config_errors() -> None:
    model, card = tiny(), tiny_card()
    with pytest.raises(ConfigError, match="seconds must be > 0"):
        tune(model, card, device="cpu", seconds=0)
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        tune(model, card, device="cpu", rounds=0)


@needs_ort
def test_cli_tune_prints_and_stores(tiny_model_dir: Path, own_cache: Path) -> None:
    runner = CliRunner()
    args = ["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--threads", "2"]
    res = runner.invoke(cli, [*args, "--seconds", "0.2", "--rounds", "1", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "onnx x2" in res.output and "torch" in res.output and "fastest:" in res.output
    assert "not stored" in res.output and not (own_cache / "tuning.json").exists()
    res = runner.invoke(cli, [*args, "--seconds", "0.2", "--rounds", "1"])
    assert res.exit_code == 0, res.output
    assert str(own_cache / "tuning.json") in res.output
    lazy = load_checkpoint(tiny_model_dir, lazy=True)
    assert stored_tuning(lazy, lazy.card, HostCPU(), 2) is not None
    bad = runner.invoke(cli, [*args, "--seconds", "-1"])
    assert bad.exit_code != 0 and "--seconds" in bad.output


NO_TORCH_LOOKUP = textwrap.dedent(
    """
    import json, sys
    from geoseg.infer.predictor import Predictor
    from geoseg.models import load_checkpoint
    lazy = load_checkpoint(sys.argv[1], lazy=True)
    pred = Predictor(lazy, lazy.card, device="cpu", threads=2)
    print(json.dumps({"torch": "torch" in sys.modules, "workers": pred.workers,
                      "tuned": pred.tuning is not None}))
    """
)


@needs_ort
def test_measured_onnx_choice_still_needs_no_torch(tiny_model_dir: Path, own_cache: Path) -> None:
    """Reading a stored measurement keeps the no-PyTorch start-up of a cached export."""
    lazy = load_checkpoint(tiny_model_dir, lazy=True)
    store_tuning(
        entry_key(machine_identity(HostCPU(), 2), model_key(lazy, lazy.card)), fake("onnx", 1)
    )
    Predictor(lazy, lazy.card, device="cpu", threads=2)  # exports once, into own_cache
    env = {**os.environ, "GEOSEG_CACHE_DIR": str(own_cache)}
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH_LOOKUP, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"torch": False, "workers": 1, "tuned": True}
