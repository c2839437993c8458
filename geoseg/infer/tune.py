"""Measure the inference engines on this machine and remember the fastest.

``--backend auto`` first looks for a measurement stored by :func:`tune` (the
``geoseg tune`` command) for this machine, device, thread count and model; only
without one does it fall back to the rule of
:func:`~geoseg.infer.backends.choose_backend`, which comes from
``benchmarks/bench_backends.py`` on two 2-core machines and cannot know a
16-core server or a GPU.

What is measured: each candidate engine (ONNX Runtime with one or several
concurrent workers, PyTorch eager channels_last, ``torch.compile`` when asked)
runs the model on synthetic tiles of the card's tile size, with the batch size
and concurrency the predictor would use, for a fixed time after a warm-up
call per worker.  The measurements are stored in ``tuning.json`` in the geoseg
cache (:func:`tuning_path`), keyed by a fingerprint of the machine (CPU or GPU
model, threads, onnxruntime and torch versions) and of the model (the same key
as its ONNX export), so a new machine, a new library version or new weights
are measured again rather than trusting a stale figure.

Measuring is explicit and never happens inside ``geoseg predict``: the choice of
engine changes probabilities in the last few bits (the engines agree within
1e-4), and a run should not depend on how busy the machine was at its start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg import extras
from geoseg.errors import ConfigError
from geoseg.infer.backends import (
    Device,
    default_workers,
    onnxruntime_available,
)

# The store lives in geoseg.infer.tuning (the predictor reads it without importing this
# module); its names stay importable from here.
from geoseg.infer.tuning import (
    MAX_TUNED_WORKERS,
    TUNING_FORMAT,
    Candidate,
    Measurement,
    Tuning,
    _first_line,
    entry_key,
    machine_identity,
    model_key,
    store_tuning,
    stored_tuning,
    tuning_path,
)

if TYPE_CHECKING:
    from torch import nn

    from geoseg.infer.predictor import Predictor
    from geoseg.models.card import ModelCard
    from geoseg.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)


# --- measuring --------------------------------------------------------------------------------


def candidates(
    device: Device, threads: int, *, compile: bool = False, int8: bool = False
) -> list[Candidate]:
    """The engine configurations worth timing on ``device`` with ``threads`` cores.

    On a CPU: ONNX Runtime with the default number of concurrent workers, with
    one worker using every core, and with one single-threaded worker per core
    (up to :data:`MAX_TUNED_WORKERS`); PyTorch eager; ``torch.compile`` only
    when asked (it compiles for 30-60 s first); with ``int8`` (a checkpoint whose
    int8 graph passed its accuracy check) the same ONNX Runtime layouts on that
    graph.  On CUDA: PyTorch (bf16/fp16
    autocast) and ONNX Runtime when its CUDA provider is installed.  On MPS:
    PyTorch.

    >>> from geoseg.infer.backends import HostCPU
    >>> [c.label for c in candidates(HostCPU(), 4)]  # doctest: +SKIP
    ['onnx x4', 'onnx x1', 'torch']
    """
    out: list[Candidate] = []
    if device.type == "cpu":
        if onnxruntime_available():
            for precision in ("fp32", "int8") if int8 else ("fp32",):
                for w in (default_workers(threads), 1, min(threads, MAX_TUNED_WORKERS)):
                    if Candidate("onnx", w, precision=precision) not in out:
                        out.append(Candidate("onnx", w, precision=precision))
    elif device.type == "cuda" and onnxruntime_available():
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(Candidate("onnx", 1))
    if extras.installed("torch"):  # the core install has no PyTorch engine to time
        out.append(Candidate("torch"))
        if compile:
            out.append(Candidate("torch", 1, True))
    return out


def _checked_int8(model: Any) -> bool:
    """Whether ``model`` is a checkpoint whose int8 graph passed its accuracy check."""
    from geoseg.infer.quantize import int8_graph
    from geoseg.models.checkpoint import LoadedModel

    if not isinstance(model, LoadedModel):
        return False
    found = int8_graph(model.path, model.sha256)
    return found is not None and found[1].get("check", {}).get("passed") is True


def measure(predictor: Predictor, candidate: Candidate, tile: int, seconds: float) -> Measurement:
    """Throughput of ``predictor`` (built as ``candidate``) on synthetic ``tile`` x ``tile`` batches.

    One warm-up call per worker (arenas, kernels, compilation), then every
    worker calls the network back to back until ``seconds`` have passed and it
    has run at least twice; throughput is all tiles over the time until the
    last call ended.  The input is fixed random noise: dense convolutions take
    the same time whatever the pixel values.
    """
    rng = np.random.default_rng(0)
    shape = (predictor.batch_size, predictor.card.in_channels, tile, tile)
    batch = rng.standard_normal(shape, dtype=np.float32)
    workers = max(1, predictor.workers)

    def run_all(fn: Callable[[], Any]) -> list[Any]:
        results: list[Any] = [None] * workers
        errors: list[BaseException] = []

        def target(i: int) -> None:
            try:
                results[i] = fn()
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

        threads = [threading.Thread(target=target, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    run_all(lambda: predictor(batch))
    start = time.perf_counter()
    deadline = start + seconds

    def loop() -> tuple[int, float]:
        calls = 0
        while calls < 2 or time.perf_counter() < deadline:
            predictor(batch)
            calls += 1
        return calls, time.perf_counter()

    done = run_all(loop)
    elapsed = max(end for _, end in done) - start
    tiles = sum(calls for calls, _ in done) * predictor.batch_size
    return Measurement(
        candidate,
        tiles * tile * tile / elapsed / 1e6,
        tiles,
        elapsed,
    )


def tune(
    model: nn.Module | LoadedModel,
    card: ModelCard,
    *,
    device: str = "auto",
    threads: int | None = None,
    tile: int | None = None,
    seconds: float = 4.0,
    rounds: int = 2,
    compile: bool = False,
    onnx_cache: str | Path | None = None,
    path: Path | None = None,
    store: bool = True,
    progress: Callable[[Measurement], None] | None = None,
) -> Tuning:
    """Time every :func:`candidates` engine for ``model`` here and store the fastest.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
        The network (a lazily loaded checkpoint is built only for the PyTorch
        candidates).
    card : ModelCard
    device : str
        As for :class:`~geoseg.infer.predictor.Predictor`.
    threads : int, optional
        Cores for the network (default: all this process may use).
    tile : int, optional
        Tile edge (default: the card's).
    seconds : float
        Timed run per candidate in all, after its warm-up.
    rounds : int
        The candidates are timed in turn this many times (``seconds / rounds``
        each) and each keeps its best round.
    compile : bool
        Also time ``torch.compile`` (compiles first: 30-60 s on a CPU).
    onnx_cache : str or Path, optional
        ONNX export cache (default :func:`~geoseg.infer.backends.cache_dir`).
    path : Path, optional
        Tuning file (default :func:`tuning_path`).
    store : bool
        Write the result to ``path``.
    progress : callable, optional
        Called with each candidate's final :class:`Measurement`.

    Returns
    -------
    Tuning

    Raises
    ------
    ConfigError
        Bad arguments, or no candidate could run at all.
    """
    from geoseg.infer.backends import default_threads
    from geoseg.infer.predictor import Predictor, _host_cpu_if_enough, resolve_device

    if seconds <= 0:
        raise ConfigError(f"seconds must be > 0, got {seconds}", field="seconds")
    if card.task == "instance":
        raise ConfigError(
            f"{card.name} is an instance model: it runs on PyTorch in float32, there is no "
            "engine to choose"
        )
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}", field="rounds")
    threads = threads or default_threads()
    tile = tile or card.tile_size
    if tile % card.stride:
        raise ConfigError(
            f"tile {tile} must be a multiple of the model stride {card.stride}", field="tile"
        )
    dev = _host_cpu_if_enough(device, "auto") or resolve_device(device)
    # Build every engine first, then time them in interleaved rounds and keep each one's
    # best: a shared machine's load drifts, and interleaving spreads the drift over all.
    engines: dict[Candidate, Predictor] = {}
    errors: dict[Candidate, str] = {}
    order = candidates(dev, threads, compile=compile, int8=_checked_int8(model))
    for cand in order:
        try:
            pred = Predictor(
                model,
                card,
                device=device,
                threads=threads,
                backend=cand.backend,
                workers=cand.workers,
                compile=cand.compile,
                cache_dir=onnx_cache,
                precision=cand.precision,
            )
            if pred.backend.name.split("-")[0] != cand.backend:
                raise RuntimeError(f"{cand.backend} cannot run this model here")
            if pred.precision != cand.precision:
                raise RuntimeError(f"{cand.precision} cannot run this model here")
            engines[cand] = pred
        except Exception as exc:  # an engine that cannot run is reported, not fatal
            log.warning("%s cannot run: %s", cand.label, exc)
            errors[cand] = _first_line(exc)
    best_of: dict[Candidate, Measurement] = {}
    for _ in range(rounds):
        for cand, pred in list(engines.items()):
            try:
                m = measure(pred, cand, tile, seconds / rounds)
            except Exception as exc:
                log.warning("%s failed while timed: %s", cand.label, exc)
                errors[cand] = _first_line(exc)
                del engines[cand]
                best_of.pop(cand, None)
                continue
            if cand not in best_of or (m.mpx_s or 0) > (best_of[cand].mpx_s or 0):
                best_of[cand] = m
    results = [best_of.get(c) or Measurement(c, None, error=errors.get(c)) for c in order]
    if progress is not None:
        for m in results:
            progress(m)
    # torch.compile is timed when asked but never chosen: its compile time is paid on every run.
    ran = [m for m in results if m.mpx_s is not None and not m.candidate.compile]
    if not ran:
        raise ConfigError(
            "no inference engine could run this model here: "
            + "; ".join(f"{m.candidate.label}: {m.error}" for m in results)
        )
    best = max(ran, key=lambda m: m.mpx_s or 0.0)
    identity = machine_identity(dev, threads)
    tuning = Tuning(
        backend=best.candidate.backend,
        workers=best.candidate.workers,
        precision=best.candidate.precision,
        mpx_s=float(best.mpx_s or 0.0),
        measurements=results,
        machine=identity,
        tile=tile,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if store:
        store_tuning(entry_key(identity, model_key(model, card)), tuning, path)
    return tuning


__all__ = [
    "MAX_TUNED_WORKERS",
    "TUNING_FORMAT",
    "Candidate",
    "Measurement",
    "Tuning",
    "candidates",
    "entry_key",
    "machine_identity",
    "measure",
    "model_key",
    "store_tuning",
    "stored_tuning",
    "tune",
    "tuning_path",
]
