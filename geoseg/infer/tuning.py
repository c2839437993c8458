"""Stored engine measurements: where they live, under which key, and how they are read.

:mod:`geoseg.infer.tune` measures the engines (it builds predictors);
:class:`~geoseg.infer.predictor.Predictor` only reads what was stored, through
this module, so the two do not import each other.  See :mod:`geoseg.infer.tune`
for what is measured and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.infer.backends import (
    Device,
    cache_dir,
    export_key,
    export_key_for_weights,
    package_version,
)

if TYPE_CHECKING:
    from torch import nn

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
    #: ``fp32``, or ``int8`` for a checkpoint's quantized ONNX graph.
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """Short human name, e.g. ``onnx x2``, ``onnx x2 int8`` or ``torch-compile``."""
        if self.backend == "torch":
            return "torch-compile" if self.compile else "torch"
        extra = " int8" if self.precision == "int8" else ""
        return f"{self.backend} x{self.workers}{extra}"


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
    #: Precision of the winner (``fp32`` in tunings stored before int8 was timed).
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """The winner's :attr:`Candidate.label`."""
        return Candidate(self.backend, self.workers, precision=self.precision).label

    @property
    def timed_int8(self) -> bool:
        """Whether an int8 graph ran in this measurement (so it competed with float32)."""
        return any(
            m.candidate.precision == "int8" and m.mpx_s is not None for m in self.measurements
        )

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
                    Candidate(
                        str(m["backend"]),
                        int(m["workers"]),
                        bool(m["compile"]),
                        str(m.get("precision", "fp32")),
                    ),
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
                precision=str(data.get("precision", "fp32")),
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
