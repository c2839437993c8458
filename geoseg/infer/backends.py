"""Inference backends: the engines behind :class:`~geoseg.infer.predictor.Predictor`.

Every backend is a callable ``backend(batch) -> probs`` taking a float32
``(N, bands, H, W)`` array of normalised tiles and returning float32
``(N, classes, H, W)`` softmax probabilities, so the predictor, the stream and
the blender never need to know which engine ran.

``torch``
    PyTorch eager, channels_last by default, optionally ``torch.compile``; on
    CUDA with pinned staging memory, asynchronous host-to-device copies and
    bf16/fp16 autocast.
``onnx``
    ONNX Runtime on a graph exported from the registry model (softmax
    included).  Exports are cached on disk, keyed by the sha256 of the weights
    and everything else that shapes the graph, so a model is exported once per
    machine.  Batch, height and width are dynamic axes.
``auto``
    The fastest measured engine for the device (see :func:`choose_backend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from geoseg.errors import ConfigError, GeosegError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geoseg.models.card import ModelCard

log = logging.getLogger(__name__)

#: Names accepted by ``Predictor(backend=...)`` and ``--backend``.
BACKENDS = ("auto", "torch", "onnx")

#: ONNX opset of exported graphs (17: LayerNormalization as one op; ORT >= 1.14 runs it).
ONNX_OPSET = 17

#: Bump when the exported graph changes for the same weights (wrapper, axes, exporter options).
EXPORT_FORMAT = 1

#: Largest difference in probability between the export and PyTorch accepted when an export
#: is checked; a graph that baked in a tile shape or mistranslated an op is far off this.
EXPORT_ATOL = 1e-3


#: A network, or a zero-argument function that builds it on demand.
ModelLike: TypeAlias = "nn.Module | Callable[[], nn.Module]"


@dataclass(frozen=True)
class HostCPU:
    """The CPU as a device, named without importing PyTorch.

    The ONNX Runtime path on a machine without a GPU never needs torch; this
    stands in for ``torch.device("cpu")`` there (same ``type`` and ``index``).
    """

    type: str = "cpu"
    index: int | None = None

    def __str__(self) -> str:
        return "cpu"


#: What the backends accept as a device.
Device: TypeAlias = "torch.device | HostCPU"


class Backend(Protocol):
    """What the predictor calls: normalised float32 tiles in, float32 probabilities out."""

    name: str
    #: Calls that may run at once from different threads.
    workers: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class ExportError(GeosegError, RuntimeError):
    """A model could not be exported to ONNX, or its export disagrees with PyTorch."""


# --- machine ----------------------------------------------------------------------------------


def default_threads() -> int:
    """Intra-op threads for the network: the cores this process may use.

    The affinity mask, capped by a cgroup v2 CPU quota and by the number of
    physical cores.  ``os.cpu_count()`` reports the host's logical CPUs, which in
    a container limited to two CPUs would start dozens of threads fighting over
    two; SMT siblings share one core's vector units, so a second thread per core
    adds contention rather than FLOPs.

    >>> default_threads() >= 1
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    if physical:
        n = min(n, physical)
    return max(1, n)


#: Most concurrent network runs chosen by default (each holds a tile's activations).
MAX_DEFAULT_WORKERS = 4


def default_workers(threads: int) -> int:
    """Concurrent single-threaded network runs for ``threads`` CPU cores.

    One per core up to :data:`MAX_DEFAULT_WORKERS`; beyond that the cores are
    shared out as intra-op threads (``threads // workers`` each), which keeps
    the activation memory of the runs in flight bounded on big machines.
    ``benchmarks/bench_backends.py`` measured 2 workers of 1 thread at 1.2x
    the throughput of 1 worker of 2 threads on a 2-core machine, and more
    stable under load.

    >>> default_workers(1), default_workers(2), default_workers(32)
    (1, 2, 4)
    """
    return max(1, min(threads, MAX_DEFAULT_WORKERS))


def package_version(name: str) -> str:
    """An installed distribution's version from its metadata (no import), or ``"none"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime imports (it runs shipped and cached graphs; exporting needs more)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str, device: Device) -> str:
    """Resolve ``auto`` to a concrete backend for ``device``; check explicit names.

    The rule, from ``benchmarks/bench_backends.py`` (U-Net with an
    efficientnet-lite0 encoder, 512 px tiles, 2 cores, fp32), measured on two
    different 2-core x86-64 machines:

    * CPU: ``onnx`` when onnxruntime and onnx import, else ``torch``.  On an
      AVX2 machine ONNX Runtime ran the network at 1.76-1.92 Mpx/s against
      1.61-1.62 for ``torch.compile`` (after a 30 s compile), 1.08-1.15 for
      eager channels_last and 0.65-0.77 for eager contiguous.  On an AVX-512
      machine (bundled model, all 49 tiles of a 3072² raster), ONNX Runtime
      with two concurrent single-threaded workers reached 1.83 Mpx/s, one
      2-thread run 1.37, ``torch.compile`` 1.29 (after a 57 s compile),
      eager channels_last 1.06 and eager contiguous 0.69.  With libgomp's
      default ``OMP_WAIT_POLICY=ACTIVE`` on a machine shared with other work
      the PyTorch figures dropped a further 1.7-3.2x while ONNX Runtime's did
      not move.
    * CUDA and MPS: ``torch``, whose bf16/fp16 autocast with channels_last
      tensor-core convolutions the fp32 ONNX graph does not get (not measured
      here: no GPU was available to this project yet).

    Raises
    ------
    ConfigError
        If ``requested`` is not one of :data:`BACKENDS`.
    """
    name = (requested or "auto").lower()
    if name not in BACKENDS:
        raise ConfigError(
            f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}", field="backend"
        )
    if name != "auto":
        return name
    if device.type == "cpu" and onnxruntime_available():
        return "onnx"
    return "torch"


# --- PyTorch ----------------------------------------------------------------------------------


class TorchBackend:
    """PyTorch inference: eager or compiled, channels_last, autocast on GPUs.

    Parameters
    ----------
    model : torch.nn.Module
        Logits network; moved to ``device`` (and channels_last) in place.
    device : torch.device
        Where it runs.
    amp : bool
        Autocast to ``amp_dtype`` (GPUs).
    amp_dtype : torch.dtype
        bf16 or fp16.
    channels_last : bool
        NHWC memory format for weights and inputs.
    compile : bool
        Wrap the model in ``torch.compile``; when compiling fails (no C++
        compiler, unsupported op) the backend warns and stays eager.
    threads : int, optional
        torch intra-op threads on CPU (process-wide; default :func:`default_threads`).
    """

    name = "torch"
    #: One call at a time: torch's CPU thread pool is process-wide, and the CUDA path
    #: reuses pinned staging buffers.
    workers = 1

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        amp: bool = False,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = True,
        compile: bool = False,
        threads: int | None = None,
        n_classes: int | None = None,
    ) -> None:
        import torch

        if device.type == "cpu":
            torch.set_num_threads(threads or default_threads())
        self.device = device
        self.n_classes = n_classes
        self.amp = amp
        self.amp_dtype = amp_dtype or torch.bfloat16
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device).to(memory_format=fmt)
        self.cuda = device.type == "cuda"
        if self.cuda:
            # Tiles all have one shape, so cuDNN's one-off search for the fastest kernels pays.
            torch.backends.cudnn.benchmark = True
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.compiled = False
        if compile:
            self._forward = torch.compile(self.model)
            self.compiled = True
            self.name = "torch-compile"
        self._staging: list[tuple[torch.Tensor | None, torch.cuda.Event | None]] = [
            (None, None)
        ] * 2
        self._slot = 0

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        import torch

        if not self.cuda:
            return torch.from_numpy(batch).to(self.device)
        # Page-locked buffers reused across batches (a fresh pin_memory() per batch costs a
        # cudaHostAlloc each time), two of them in turn: while the network runs on one
        # batch, the next is copied into the other.  An event recorded after each upload
        # says when its buffer may be overwritten; results that stay on the GPU
        # (run_on_device) mean no device-to-host copy synchronises for us.
        slot = self._slot = (self._slot + 1) % 2
        buf, done = self._staging[slot]
        if buf is None or buf.shape != batch.shape:
            buf = torch.empty(batch.shape, dtype=torch.float32, pin_memory=True)
            done = None
        elif done is not None:
            done.synchronize()
        np.copyto(buf.numpy(), batch, casting="no")
        x = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._staging[slot] = (buf, event)
        return x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                logits = self._forward(x)
        else:
            logits = self._forward(x)
        # Softmax in fp32 whatever autocast produced; NCHW so numpy sees the layout it expects.
        return output_probabilities(logits, self.n_classes).contiguous()

    def run_on_device(self, batch: np.ndarray) -> torch.Tensor:
        """Probabilities left on the model's device, float32 ``(N, classes, H, W)``.

        For a consumer on the same device (the GPU blender): the probabilities
        never travel to the host and back, and nothing waits for the GPU here.
        """
        import torch

        with torch.inference_mode():
            x = self._to_device(batch)
            try:
                return self._run(x)
            except Exception as exc:
                if not self.compiled:
                    raise
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "running the model eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._forward, self.compiled, self.name = self.model, False, "torch"
                return self._run(x)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.run_on_device(batch).cpu().numpy()
        return out


# --- ONNX export and cache --------------------------------------------------------------------


def cache_dir() -> Path:
    """Where exported ONNX graphs are kept.

    ``$GEOSEG_CACHE_DIR/onnx`` if set, else ``$XDG_CACHE_HOME/geoseg/onnx``, else
    ``~/.cache/geoseg/onnx``.
    """
    root = os.environ.get("GEOSEG_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "geoseg" / "onnx"


def weights_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict: tensor names, dtypes, shapes and bytes.

    Hashing the tensors rather than a checkpoint file keys the cache on what
    will actually run, including models built or changed in memory.
    """
    import torch

    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def export_key(model: nn.Module, card: ModelCard) -> str:
    """Cache key of a model's ONNX export: weights, architecture and export settings."""
    return _export_key({"weights": weights_sha256(model)}, card)


def export_key_for_weights(weights_sha256: str, card: ModelCard) -> str:
    """Cache key from the sha256 of a checkpoint's weights *file* (no network needed).

    Lets a checkpoint loaded lazily find its export without importing PyTorch or
    building the network; a file with the same bytes always builds the same
    network, so the key is as faithful as :func:`export_key`.
    """
    return _export_key({"weights_file": weights_sha256}, card)


def _export_key(weights: dict[str, str], card: ModelCard) -> str:
    """sha256 prefix over the weights' identity and everything that shapes the graph."""
    torch_version = package_version("torch").split("+")[0]
    spec = {
        **weights,
        "architecture": card.architecture,
        "encoder": card.encoder,
        "arch_params": card.arch_params,
        "in_channels": card.in_channels,
        "n_classes": card.n_classes,
        "inputs": "float32 NCHW, dynamic N/H/W",
        "outputs": "float32 softmax",
        **({"contact_class": card.contact_class} if card.contact_class is not None else {}),
        "opset": ONNX_OPSET,
        "format": EXPORT_FORMAT,
        "torch": torch_version,
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _network(model: ModelLike) -> nn.Module:
    """The module itself, or what a zero-argument builder returns."""
    from torch import nn

    return model if isinstance(model, nn.Module) else model()


def _slug(card: ModelCard) -> str:
    raw = f"{card.architecture}-{card.encoder or 'default'}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)


def _example_size(stride: int) -> int:
    return stride * max(1, -(-64 // stride))


def output_probabilities(logits: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """float32 probabilities of ``(N, outputs, H, W)`` logits.

    A softmax over the first ``n_classes`` channels (all of them when None);
    the channels after the classes (a contact output, see
    :attr:`geoseg.models.card.ModelCard.contact_class`) are independent
    yes/no outputs and go through a sigmoid.
    """
    import torch

    logits = logits.float()
    if n_classes is None or n_classes >= logits.shape[1]:
        return torch.softmax(logits, dim=1)
    return torch.cat(
        [torch.softmax(logits[:, :n_classes], dim=1), torch.sigmoid(logits[:, n_classes:])], dim=1
    )


def with_softmax(model: nn.Module, n_classes: int | None = None) -> nn.Module:
    """``model`` followed by :func:`output_probabilities` (the graph that gets exported)."""
    from torch import nn

    class Probabilities(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return output_probabilities(self.inner(x), n_classes)

    return Probabilities(model).eval()


@contextlib.contextmanager
def _on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """The model on the CPU in eval mode for tracing, restored afterwards."""
    import torch

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    model.to("cpu")
    try:
        yield model
    finally:
        # The exporter restores the training flag of the module it was handed; the
        # wrapped network must stay in eval mode whatever that was.
        model.to(device).eval()


@contextlib.contextmanager
def _exporter_log_to_debug() -> Iterator[None]:
    """Route the TorchScript exporter's C++ log to this module's debug log.

    ``torch.onnx``'s ``setup_onnx_logging`` tests a function object instead of
    calling it, so its log is always on during an export, and a failed export
    writes the whole IR graph (thousands of lines) to stderr.
    """
    import torch

    original = getattr(torch._C, "_jit_onnx_log", None)
    if original is None:
        yield
        return

    def to_debug(*parts: object) -> None:
        log.debug("torch.onnx: %s", " ".join(map(str, parts))[:2000])

    setattr(torch._C, "_jit_onnx_log", to_debug)  # noqa: B010
    try:
        yield
    finally:
        setattr(torch._C, "_jit_onnx_log", original)  # noqa: B010


def _semantic_only(card: ModelCard, what: str) -> None:
    """Refuse ``what`` for an instance model (it runs on PyTorch only)."""
    if card.task == "instance":
        raise ConfigError(
            f"{card.name} is an instance model ({card.architecture}): it runs on PyTorch in "
            f"float32 and has no {what}"
        )


def export_onnx(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Export ``model`` (logits) as an ONNX graph of softmax probabilities, checked.

    The graph takes ``input`` float32 ``(N, bands, H, W)`` and returns ``probs``
    float32 ``(N, classes, H, W)`` with N, H and W dynamic.  Before it is
    written to ``path`` (atomically: a temporary file beside it, then a rename),
    it is run by ONNX Runtime at a batch and tile shape other than the traced
    one and compared with PyTorch, so a graph that baked in a shape never
    reaches the cache.  Nothing is downloaded: the network exported is the
    one in memory.

    Raises
    ------
    ExportError
        If the exporter fails or the exported graph disagrees with PyTorch.
    """
    from geoseg.extras import require

    require("torch", "exporting a checkpoint to ONNX")
    import torch

    path = Path(path)
    stride = max(1, card.stride)
    size = _example_size(stride)
    example = torch.zeros(1, card.in_channels, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
    try:
        with _on_cpu(model) as cpu_model, warnings.catch_warnings(), _exporter_log_to_debug():
            # The TorchScript-based exporter warns that it is deprecated; the dynamo exporter
            # needs onnxscript, which geoseg does not depend on.  When torch drops the old
            # exporter this raises and the predictor falls back to PyTorch.
            warnings.simplefilter("ignore")
            wrapped = with_softmax(cpu_model, card.n_classes)
            try:
                with torch.inference_mode(False), torch.no_grad():
                    torch.onnx.export(
                        wrapped,
                        (example,),
                        str(tmp),
                        dynamo=False,
                        input_names=["input"],
                        output_names=["probs"],
                        dynamic_axes={
                            "input": {0: "batch", 2: "height", 3: "width"},
                            "probs": {0: "batch", 2: "height", 3: "width"},
                        },
                        opset_version=ONNX_OPSET,
                        do_constant_folding=True,
                    )
            except Exception as exc:
                raise ExportError(
                    f"torch.onnx.export failed for {card.architecture}/{card.encoder}: "
                    f"{type(exc).__name__}: {str(exc)[:300]}"
                ) from exc
            _check_export(tmp, wrapped, card, size + stride, size + 2 * stride)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_export(path: Path, wrapped: nn.Module, card: ModelCard, h: int, w: int) -> None:
    """Run the graph at a shape other than the traced one and compare with PyTorch."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((2, card.in_channels, h, w), dtype=np.float32)
    try:
        sess = ort.InferenceSession(
            str(path), _session_options(1), providers=["CPUExecutionProvider"]
        )
        got = sess.run(None, {"input": x})[0]
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime cannot run the export of {card.architecture}/{card.encoder}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    with torch.inference_mode():
        ref = wrapped(torch.from_numpy(x)).numpy()
    if got.shape != ref.shape:
        raise ExportError(f"ONNX export returns shape {got.shape} where PyTorch gives {ref.shape}")
    err = float(np.max(np.abs(got - ref)))
    if not err <= EXPORT_ATOL:
        raise ExportError(
            f"ONNX export of {card.architecture}/{card.encoder} differs from PyTorch by {err:.2g} "
            f"in probability (tolerance {EXPORT_ATOL:g})"
        )


def cached_export(
    model: ModelLike,
    card: ModelCard,
    *,
    directory: str | Path | None = None,
    weights_key: str | None = None,
) -> tuple[Path, bool]:
    """The cached ONNX export of ``model``, exporting it on first use.

    Parameters
    ----------
    model : torch.nn.Module or callable
        Logits network, or a zero-argument function building it (called only
        when the export is not cached yet).
    card : ModelCard
        Its card.
    directory : str or Path, optional
        Cache directory (default :func:`cache_dir`).
    weights_key : str, optional
        sha256 of the checkpoint's weights file: the cache is keyed by it
        (:func:`export_key_for_weights`) instead of hashing the network's
        tensors, so a cache hit needs no network at all.

    Returns
    -------
    path, exported : (Path, bool)
        The ``.onnx`` file and whether this call wrote it.

    Raises
    ------
    ExportError
        If the model cannot be exported faithfully.
    OSError
        If the cache directory cannot be written.
    """
    folder = Path(directory) if directory is not None else cache_dir()
    if weights_key is not None:
        key = export_key_for_weights(weights_key, card)
    else:
        model = _network(model)
        key = export_key(model, card)
    path = folder / f"{_slug(card)}-{key}.onnx"
    if path.is_file():
        log.debug("ONNX export cache hit: %s", path)
        return path, False
    log.info("exporting %s/%s to ONNX (once per model): %s", card.architecture, card.encoder, path)
    return export_onnx(_network(model), card, path), True


def ship_onnx(checkpoint: str | Path, *, overwrite: bool = False) -> Path:
    """Export a checkpoint's ONNX graph into its own directory (``model.onnx`` + record).

    With the graph beside the weights, the core install (no PyTorch) runs the
    checkpoint with ONNX Runtime and nothing is exported at run time.  The graph
    is checked against PyTorch as every export is (:func:`export_onnx`); the
    record ``model.onnx.json`` holds the sha256 of the weights it came from and of
    the graph, so a graph left behind by retrained weights is never used.

    Raises
    ------
    OutputExistsError
        If the checkpoint already has a graph and ``overwrite`` is false.
    MissingExtraError
        Without PyTorch (``geoseg[torch]``).
    ExportError
        If the export fails or disagrees with PyTorch.
    """
    from geoseg.errors import OutputExistsError
    from geoseg.models.checkpoint import (
        ONNX_META_NAME,
        ONNX_NAME,
        load_checkpoint,
        resolve_model_path,
        sha256_file,
    )

    directory = resolve_model_path(checkpoint)
    graph, meta = directory / ONNX_NAME, directory / ONNX_META_NAME
    if graph.exists() and not overwrite:
        raise OutputExistsError(f"{graph} exists; pass overwrite=True to export it again")
    loaded = load_checkpoint(directory)
    _semantic_only(loaded.card, "ONNX graph")
    export_onnx(loaded.model, loaded.card, graph)
    record = {
        "weights_sha256": loaded.sha256,
        "onnx_sha256": sha256_file(graph),
        "inputs": "input: float32 NCHW normalised bands, dynamic N/H/W",
        "outputs": "probs: float32 softmax over the card's classes"
        + (
            ", then the sigmoid of the contact output"
            if loaded.card.contact_class is not None
            else ""
        ),
        "opset": ONNX_OPSET,
        "format": EXPORT_FORMAT,
        "torch": package_version("torch").split("+")[0],
        "onnx": package_version("onnx"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta)
    return graph


# --- ONNX Runtime -----------------------------------------------------------------------------


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Idle ORT workers would otherwise busy-wait between batches, taking the cores the
    # reader (decode, normalise) and the blender need while the network waits for them.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def onnx_providers(device: Device) -> list[Any]:
    """ONNX Runtime execution providers for ``device``.

    Raises
    ------
    ConfigError
        If ``device`` is a GPU this onnxruntime build cannot use.
    """
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise ConfigError(
        f"onnxruntime {ort.__version__} has no execution provider for {device}; install "
        "onnxruntime-gpu for CUDA, or use backend='torch'"
    )


class OnnxBackend:
    """ONNX Runtime inference on an exported probability graph.

    Parameters
    ----------
    path : str or Path
        ``.onnx`` file from :func:`export_onnx`.
    device : torch.device
        CPU, or a CUDA device when onnxruntime-gpu is installed.
    threads : int, optional
        Cores to use in all (default: :func:`default_threads`).
    workers : int
        Calls that may run at once, from different threads, each with
        ``threads // workers`` intra-op threads (one session: the weights and
        the arena are shared; ``InferenceSession.run`` is thread-safe).  On a
        few CPU cores several single-threaded runs side by side beat one run
        spread over every core: a convolution split across threads waits for
        its slowest thread at every layer, and any other thread of the process
        (reading, blending, writing) that takes a core stalls the whole layer,
        while independent runs merely slow down one tile.

    Attributes
    ----------
    workers : int
        Concurrent calls this backend is built for (the stream runs that many).
    """

    name = "onnx"

    def __init__(
        self,
        path: str | Path,
        device: Device,
        *,
        threads: int | None = None,
        workers: int = 1,
    ) -> None:
        import onnxruntime as ort

        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}", field="workers")
        self.path = Path(path)
        self.device = device
        self.threads = threads or default_threads()
        self.workers = workers if device.type == "cpu" else 1
        self.intra_threads = max(1, self.threads // self.workers)
        self.session = ort.InferenceSession(
            str(self.path),
            _session_options(self.intra_threads),
            providers=onnx_providers(device),
        )
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(["probs"], {"input": batch})[0]
        return out


def onnx_backend(
    model: ModelLike,
    card: ModelCard,
    device: Device,
    *,
    threads: int | None = None,
    workers: int = 1,
    directory: str | Path | None = None,
    weights_key: str | None = None,
) -> OnnxBackend:
    """An :class:`OnnxBackend` for ``model``, exporting it to the cache on first use.

    A cached file ONNX Runtime refuses to load (say, written by another version)
    is exported again.  When the cache cannot be written (read-only home, full
    disk) the graph is exported to a temporary file for this session only.

    Raises
    ------
    ExportError
        If the model cannot be exported faithfully.
    ConfigError
        If onnxruntime has no provider for ``device``.
    """
    try:
        path, exported = cached_export(model, card, directory=directory, weights_key=weights_key)
        try:
            return OnnxBackend(path, device, threads=threads, workers=workers)
        except ConfigError:
            raise
        except Exception as exc:
            if exported:
                raise
            log.warning("cached ONNX export %s does not load (%s); exporting again", path, exc)
            path.unlink(missing_ok=True)
            path, _ = cached_export(model, card, directory=directory, weights_key=weights_key)
            return OnnxBackend(path, device, threads=threads, workers=workers)
    except OSError as exc:
        log.warning("cannot write the ONNX cache (%s); exporting for this run only", exc)
        with tempfile.TemporaryDirectory(prefix="geoseg-onnx-") as tmp:
            path, _ = cached_export(model, card, directory=tmp, weights_key=weights_key)
            return OnnxBackend(path, device, threads=threads, workers=workers)
