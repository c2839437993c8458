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

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg import extras
from geoseg.errors import ConfigError
from geoseg.infer.backends import (
    Device,
    cache_dir,
    default_workers,
    export_key,
    export_key_for_weights,
    onnxruntime_available,
    package_version,
)

if TYPE_CHECKING:
    from torch import nn

    from geoseg.infer.predictor import Predictor
    from geoseg.models.card import ModelCard
    from geoseg.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

#: Bump when the meaning of a stored measurement changes (what is timed, how).
TUNING_FORMAT = 1

#: Most single-threaded ONNX Runtime workers tried (each holds a tile's activations).
MAX_TUNED_WORKERS = 8


@dataclass(frozen=True)
class Candidate:
    """One engine configuration to time."""

    backend: str
    workers: int = 1
    compile: bool = False

    @property
    def label(self) -> str:
        """Short human name, e.g. ``onnx x2`` or ``torch-compile``."""
        if self.backend == "torch":
            return "torch-compile" if self.compile else "torch"
        return f"{self.backend} x{self.workers}"


@dataclass
class Measurement:
    """What one candidate reached (``mpx_s`` None when it could not run)."""

    candidate: Candidate
    mpx_s: float | None
    tiles: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Tuning:
    """The stored result of :func:`tune` for one machine and model."""

    backend: str
    workers: int
    mpx_s: float
    measurements: list[Measurement] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    tile: int = 0
    measured_at: str = ""

    @property
    def label(self) -> str:
        """The winner's :attr:`Candidate.label`."""
        return Candidate(self.backend, self.workers).label

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (what :func:`tuning_path` holds per entry)."""
        out = asdict(self)
        out["measurements"] = [
            {**asdict(m.candidate), **{k: v for k, v in asdict(m).items() if k != "candidate"}}
            for m in self.measurements
        ]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tuning:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            If ``data`` is not a stored tuning.
        """
        if not isinstance(data, dict):
            raise ValueError(f"an entry must be an object, got {type(data).__name__}")
        if data.get("backend") not in ("torch", "onnx"):
            raise ValueError(f"unknown backend {data.get('backend')!r}")
        try:
            ms = [
                Measurement(
                    Candidate(str(m["backend"]), int(m["workers"]), bool(m["compile"])),
                    None if m["mpx_s"] is None else float(m["mpx_s"]),
                    int(m["tiles"]),
                    float(m["seconds"]),
                    m.get("error"),
                )
                for m in data.get("measurements", [])
            ]
            tuning = cls(
                backend=str(data["backend"]),
                workers=int(data["workers"]),
                mpx_s=float(data["mpx_s"]),
                measurements=ms,
                machine=dict(data.get("machine", {})),
                tile=int(data.get("tile", 0)),
                measured_at=str(data.get("measured_at", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a stored tuning: {exc}") from exc
        if tuning.workers < 1 or not tuning.mpx_s > 0:
            raise ValueError(f"workers {tuning.workers} and Mpx/s {tuning.mpx_s} must be positive")
        return tuning


# --- where and under which key ----------------------------------------------------------------


def tuning_path() -> Path:
    """The file measurements are stored in: ``tuning.json`` beside the ONNX cache.

    ``$GEOSEG_CACHE_DIR/tuning.json`` if set, else
    ``$XDG_CACHE_HOME/geoseg/tuning.json``, else ``~/.cache/geoseg/tuning.json``.
    """
    return cache_dir().parent / "tuning.json"


def _cpu_name() -> str:
    """The CPU model as the kernel names it (``platform.processor()`` is often empty)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_identity(device: Device, threads: int) -> dict[str, Any]:
    """What a measurement depends on besides the model: hardware, threads, libraries.

    Never imports PyTorch for a CPU (versions come from package metadata).
    """
    ident: dict[str, Any] = {
        "arch": platform.machine(),
        "cpu": _cpu_name(),
        "device": device.type,
        "threads": int(threads),
        "onnxruntime": package_version("onnxruntime"),
        "onnxruntime-gpu": package_version("onnxruntime-gpu"),
        "torch": package_version("torch"),
        "format": TUNING_FORMAT,
    }
    if device.type == "cuda":
        import torch

        ident["gpu"] = torch.cuda.get_device_name(device.index or 0)
    return ident


def model_key(model: nn.Module | LoadedModel, card: ModelCard) -> str:
    """The model's side of the key: the key of its ONNX export (weights and architecture)."""
    from geoseg.models.checkpoint import LoadedModel

    if isinstance(model, LoadedModel):
        return export_key_for_weights(model.sha256, card)
    return export_key(model, card)


def entry_key(identity: dict[str, Any], key: str) -> str:
    """Key of one stored measurement: machine identity and model key.

    The tile size is recorded in the entry but is not part of the key: the
    latest measurement for a machine and model is the one that counts.
    """
    text = json.dumps({"machine": identity, "model": key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- the store --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (POSIX), so two tuners do not lose each other's entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: last writer wins
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_store(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable tuning file %s (%s)", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def store_tuning(key: str, tuning: Tuning, path: Path | None = None) -> Path:
    """Add or replace one entry of the tuning file (atomically, under a lock).

    Raises
    ------
    OSError
        If the cache directory cannot be written.
    """
    path = Path(path) if path is not None else tuning_path()
    with _locked(path):
        entries = _read_store(path)
        entries[key] = tuning.to_json()
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
        try:
            # Readable by all, as a file written with open() would be (mkstemp makes it 0600).
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as fh:
                json.dump({"format": TUNING_FORMAT, "entries": entries}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def stored_tuning(
    model: nn.Module | LoadedModel,
    card: ModelCard,
    device: Device,
    threads: int,
    *,
    path: Path | None = None,
) -> Tuning | None:
    """The measurement :func:`tune` stored for this machine, device, threads and model.

    Cheap when nothing was ever measured (no file: the model is not hashed).
    A damaged file or entry is ignored with a warning, never an error: the
    predictor then uses the rule.
    """
    path = Path(path) if path is not None else tuning_path()
    if not path.is_file():
        return None
    entries = _read_store(path)
    if not entries:
        return None
    key = entry_key(machine_identity(device, threads), model_key(model, card))
    data = entries.get(key)
    if data is None:
        return None
    try:
        return Tuning.from_json(data)
    except ValueError as exc:
        log.warning("ignoring a damaged entry of %s (%s)", path, exc)
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


# --- measuring --------------------------------------------------------------------------------


def candidates(device: Device, threads: int, *, compile: bool = False) -> list[Candidate]:
    """The engine configurations worth timing on ``device`` with ``threads`` cores.

    On a CPU: ONNX Runtime with the default number of concurrent workers, with
    one worker using every core, and with one single-threaded worker per core
    (up to :data:`MAX_TUNED_WORKERS`); PyTorch eager; ``torch.compile`` only
    when asked (it compiles for 30-60 s first).  On CUDA: PyTorch (bf16/fp16
    autocast) and ONNX Runtime when its CUDA provider is installed.  On MPS:
    PyTorch.

    >>> from geoseg.infer.backends import HostCPU
    >>> [c.label for c in candidates(HostCPU(), 4)]  # doctest: +SKIP
    ['onnx x4', 'onnx x1', 'torch']
    """
    out: list[Candidate] = []
    if device.type == "cpu":
        if onnxruntime_available():
            for w in (default_workers(threads), 1, min(threads, MAX_TUNED_WORKERS)):
                if Candidate("onnx", w) not in out:
                    out.append(Candidate("onnx", w))
    elif device.type == "cuda" and onnxruntime_available():
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(Candidate("onnx", 1))
    if extras.installed("torch"):  # the core install has no PyTorch engine to time
        out.append(Candidate("torch"))
        if compile:
            out.append(Candidate("torch", 1, True))
    return out


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
        raise ConfigError(f"--seconds must be > 0, got {seconds}")
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    threads = threads or default_threads()
    tile = tile or card.tile_size
    if tile % card.stride:
        raise ConfigError(f"--tile {tile} must be a multiple of the model stride {card.stride}")
    dev = _host_cpu_if_enough(device, "auto") or resolve_device(device)
    # Build every engine first, then time them in interleaved rounds and keep each one's
    # best: a shared machine's load drifts, and interleaving spreads the drift over all.
    engines: dict[Candidate, Predictor] = {}
    errors: dict[Candidate, str] = {}
    order = candidates(dev, threads, compile=compile)
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
            )
            if pred.backend.name.split("-")[0] != cand.backend:
                raise RuntimeError(f"{cand.backend} cannot run this model here")
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
        mpx_s=float(best.mpx_s or 0.0),
        measurements=results,
        machine=identity,
        tile=tile,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if store:
        store_tuning(entry_key(identity, model_key(model, card)), tuning, path)
    return tuning
