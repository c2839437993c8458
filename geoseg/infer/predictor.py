"""Run a segmentation network on batches of normalised tiles.

The predictor owns device choice (cuda, then mps, then cpu unless told), the
choice of inference engine (PyTorch or ONNX Runtime, see
:mod:`geoseg.infer.backends`), CPU thread count, mixed precision (bf16/fp16
autocast on GPUs), channels_last memory format, and the conversion from logits
to class probabilities.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geoseg import extras
from geoseg.errors import ConfigError, MissingExtraError
from geoseg.infer.backends import (
    EXPORT_FORMAT,
    Backend,
    Device,
    HostCPU,
    OnnxBackend,
    TorchBackend,
    choose_backend,
    default_threads,
    default_workers,
    onnx_backend,
    onnxruntime_available,
)
from geoseg.infer.tuning import Tuning, stored_tuning

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geoseg.models.card import ModelCard
    from geoseg.models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

#: Test-time augmentation modes: the dihedral transforms (rot90 turns ``k``,
#: then a left-right flip or not) each runs the network on.
TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, f) for k in range(4) for f in (False, True)),
}


def tta_transforms(mode: str | None) -> tuple[tuple[int, bool], ...]:
    """The ``(quarter turns, flip)`` pairs of a test-time augmentation mode.

    ``none`` is the identity alone; ``flips`` adds the left-right flip, the
    up-down flip and the half turn (4 passes, tile shape kept); ``d4`` is all 8
    rotations and reflections of the square (8 passes).

    Raises
    ------
    ConfigError
        For an unknown mode.

    Examples
    --------
    >>> len(tta_transforms("flips")), len(tta_transforms("d4")), tta_transforms(None)
    (4, 8, ((0, False),))
    """
    key = "none" if mode is None else str(mode).lower()
    if key not in TTA_MODES:
        raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}", field="tta")
    return TTA_MODES[key]


def _forward(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = np.rot90(x, k, axes=(-2, -1)) if k else x
    return np.ascontiguousarray(y[..., ::-1] if flip else y)


def _inverse(p: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = p[..., ::-1] if flip else p
    return np.rot90(y, -k, axes=(-2, -1)) if k else y


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into an available torch device.

    Raises
    ------
    ConfigError
        If the requested device does not exist on this machine.
    """
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"device={device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} asked for CUDA but no CUDA GPU is available; use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(
                f"device={device!r} asked for MPS but it is not available; use device='cpu'"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device={device!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def _gpu_possible() -> bool:
    """Whether this machine might have a GPU torch could use (cheap, without importing torch).

    Linux: an NVIDIA device node or driver entry (ROCm builds of torch also use
    ``cuda``: ``/dev/kfd``).  macOS may have MPS; elsewhere we cannot tell
    cheaply, so the answer is yes and torch decides.
    """
    if sys.platform == "darwin":
        return True
    if not sys.platform.startswith("linux"):
        return True
    dev = Path("/dev")
    return (
        any(dev.glob("nvidia[0-9]*"))
        or Path("/dev/kfd").exists()
        or any(Path("/proc/driver/nvidia/gpus").glob("*"))
    )


def _host_cpu_if_enough(device: str, backend: str) -> HostCPU | None:
    """The CPU without importing torch, when that is certainly where ONNX Runtime will run.

    Only for ``backend`` auto/onnx, ``device`` cpu (or auto on a machine with no
    GPU), onnxruntime installed, and torch not imported yet (once it is, asking
    it costs nothing).
    """
    name = (device or "auto").lower()
    if "torch" not in sys.modules and not extras.installed("torch"):
        # The core install: ONNX Runtime on the CPU is all there is.
        if backend not in ("auto", "onnx"):
            extras.require("torch", f"backend={backend!r}")
        if name not in ("auto", "cpu"):
            extras.require("torch", f"device={device!r}")
        return HostCPU()
    if backend not in ("auto", "onnx") or name not in ("auto", "cpu"):
        return None
    if "torch" in sys.modules or not onnxruntime_available():
        return None
    if name == "auto" and _gpu_possible():
        return None
    return HostCPU()


class Predictor:
    """Batched, device-aware inference returning class probabilities.

    The network runs on one of the engines of :mod:`geoseg.infer.backends`;
    whichever it is, a call takes float32 ``(N, bands, H, W)`` tiles and returns
    float32 ``(N, classes, H, W)`` probabilities.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
        Network mapping ``(N, bands, H, W)`` to ``(N, classes, H, W)`` logits, or
        a checkpoint loaded with ``load_checkpoint(..., lazy=True)``: then the
        ONNX Runtime path finds its cached export by the weights file's hash
        and neither builds the network nor imports PyTorch on a CPU-only machine.
    card : ModelCard
        Its card (band count, classes, stride).
    device : str
        ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    batch_size : int, optional
        Tiles per forward pass (default 8 on GPU; on CPU 1 per worker when
        several run at once, else 2).
    amp : bool, optional
        Mixed precision (bf16 where supported, else fp16); default on for GPUs
        only (on CPUs bf16 measured slower than fp32).  PyTorch backend only.
    channels_last : bool, optional
        Use the channels_last memory format (default True; faster convolutions on
        CPU and GPU alike).  PyTorch backend only.
    threads : int, optional
        CPU cores for the network (default: the cores this process may use, see
        :func:`~geoseg.infer.backends.default_threads`).
    workers : int, optional
        Network runs that may go on at once on the CPU with ONNX Runtime, each
        with ``threads // workers`` intra-op threads (default
        :func:`~geoseg.infer.backends.default_workers`: one per core, up to 4).
        PyTorch and GPUs run one call at a time (``workers`` is 1).
    backend : {"auto", "torch", "onnx"}
        Inference engine; ``auto`` picks the fastest one measured for this
        machine, device, thread count and model by ``geoseg tune``
        (:func:`~geoseg.infer.tune.tune`, with its number of workers unless
        ``workers`` is given), and without a measurement follows
        :func:`~geoseg.infer.backends.choose_backend` (ONNX Runtime on CPU when
        it is installed, PyTorch on GPUs).  When the model cannot be exported
        to ONNX the predictor logs a warning and runs PyTorch.
    compile : bool
        ``torch.compile`` the network (PyTorch backend; ``auto`` then means torch).
    cache_dir : str or Path, optional
        Where ONNX exports are cached (default
        :func:`~geoseg.infer.backends.cache_dir`).
    tta : {"none", "flips", "d4"}
        Test-time augmentation: each tile also runs flipped (``flips``, 4
        passes) or flipped and turned (``d4``, 8 passes), every output is turned
        back and the probabilities are averaged before blending, so memory does
        not grow and time grows with the number of passes.

    Attributes
    ----------
    backend : Backend
        The engine that runs; ``backend.name`` is ``torch``, ``torch-compile`` or
        ``onnx``.
    workers : int
        Calls the predictor is built to serve at once from different threads
        (the stream keeps that many batches in flight).

    Raises
    ------
    ConfigError
        Unknown device or backend, ``batch_size < 1``, ``compile`` with the ONNX
        backend, or ``backend="onnx"`` without onnxruntime installed.

    Examples
    --------
    >>> import numpy as np
    >>> from geoseg.models import ModelCard, build_model
    >>> card = ModelCard.from_dict({"name": "t", "architecture": "tinycnn", "bands": ["r"],
    ...     "classes": [{"id": 0, "name": "a", "color": "#000000"},
    ...                 {"id": 1, "name": "b", "color": "#ffffff"}]})
    >>> pred = Predictor(build_model(card), card, device="cpu", backend="torch")
    >>> pred(np.zeros((1, 1, 8, 8), np.float32)).shape
    (1, 2, 8, 8)
    """

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        card: ModelCard,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        amp: bool | None = None,
        channels_last: bool | None = None,
        threads: int | None = None,
        backend: str = "auto",
        compile: bool = False,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        tta: str | None = "none",
        precision: str = "auto",
    ) -> None:
        self.card = card
        self._source = model
        if precision not in ("auto", "fp32", "int8"):
            raise ConfigError(
                f"precision must be auto, fp32 or int8, got {precision!r}", field="precision"
            )
        self._want_precision = precision
        #: The precision of the network that runs: ``fp32`` or ``int8``.
        self.precision = "fp32"
        self.tta = "none" if tta is None else str(tta).lower()
        self._transforms = tta_transforms(self.tta)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}", field="threads")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}", field="workers")
        name = (backend or "auto").lower()
        if compile and name == "onnx":
            raise ConfigError(
                "compile applies to the PyTorch backend; drop it or use backend 'torch'",
                field="compile",
            )
        if compile and name == "auto":
            name = "torch"
        self.device: Device = _host_cpu_if_enough(device, name) or resolve_device(device)
        gpu = self.device.type in ("cuda", "mps")
        self.amp = gpu if amp is None else bool(amp)
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.threads = threads or default_threads()
        self._want_workers = workers or default_workers(self.threads)
        #: What ``geoseg tune`` measured here for this model, when ``auto`` found it.
        self.tuning: Tuning | None = None
        if name == "auto":
            self.tuning = stored_tuning(model, card, self.device, self.threads)
        if self.tuning is not None:
            name = self.tuning.backend
            if workers is None:
                self._want_workers = self.tuning.workers
            log.info(
                "backend auto: %s, the fastest engine geoseg tune measured here (%.2f Mpx/s, %s)",
                self.tuning.label,
                self.tuning.mpx_s,
                self.tuning.measured_at,
            )
        name = choose_backend(name, self.device)
        if name == "onnx" and not onnxruntime_available():
            raise ConfigError(
                "backend='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx "
                "(or use backend='auto' or backend='torch')"
            )
        self.backend: Backend = self._make_backend(name, compile, cache_dir)
        self.workers: int = self.backend.workers
        self.batch_size = batch_size or (8 if gpu else 1 if self.workers > 1 else 2)
        log.info(
            "inference on %s with %s (batch %d, threads %d, workers %d, tta %s)",
            self.device,
            self.backend.name,
            self.batch_size,
            self.threads,
            self.workers,
            self.tta,
        )

    @property
    def model(self) -> nn.Module:
        """The network (built on first use when the predictor got a lazily loaded checkpoint)."""
        from geoseg.models.checkpoint import LoadedModel

        src = self._source
        return src.model if isinstance(src, LoadedModel) else src

    def _make_backend(self, name: str, compile: bool, cache_dir: str | Path | None) -> Backend:
        from geoseg.models.checkpoint import LoadedModel

        if self._want_precision == "int8" and (name != "onnx" or self.device.type != "cpu"):
            raise ConfigError(
                "precision='int8' runs on the CPU with ONNX Runtime; drop backend='torch' / "
                "the GPU device, or use precision='fp32'"
            )
        if name == "onnx":
            src = self._source
            workers = self._want_workers if self.device.type == "cpu" else 1
            int8 = self._int8_graph()
            if int8 is not None:
                self.precision = "int8"
                return OnnxBackend(int8, self.device, threads=self.threads, workers=workers)
            shipped = src.onnx_graph if isinstance(src, LoadedModel) else None
            if shipped is not None and shipped[1].get("format") == EXPORT_FORMAT:
                # The checkpoint's own graph, exported from these weights: no PyTorch.
                try:
                    return OnnxBackend(
                        shipped[0], self.device, threads=self.threads, workers=workers
                    )
                except ConfigError:
                    raise
                except Exception as exc:
                    log.warning(
                        "ONNX Runtime cannot load %s (%s); exporting again", shipped[0], exc
                    )
            # A lazy checkpoint is built only if its export is not cached yet.
            model, key = (
                (src.model_builder, src.sha256) if isinstance(src, LoadedModel) else (src, None)
            )
            try:
                return onnx_backend(
                    model,
                    self.card,
                    self.device,
                    threads=self.threads,
                    workers=workers,
                    directory=cache_dir,
                    weights_key=key,
                )
            except Exception as exc:  # any failure to export or load: PyTorch still works
                if not extras.installed("torch"):
                    reason = "" if isinstance(exc, ImportError) else f" ({exc})"
                    raise MissingExtraError(
                        f"model {self.card.name!r} carries no ONNX graph{reason}, and exporting "
                        "one needs PyTorch: pip install 'geoseg[torch]' (or, where PyTorch is "
                        "installed, ship the graph with the model: geoseg models export CHECKPOINT)"
                    ) from exc
                log.warning(
                    "ONNX Runtime cannot run %s/%s (%s); falling back to PyTorch",
                    self.card.architecture,
                    self.card.encoder,
                    exc,
                )
        extras.require("torch", f"the PyTorch backend (backend={name!r})")
        import torch

        if isinstance(self.device, HostCPU):
            self.device = torch.device("cpu")
        gpu = self.device.type in ("cuda", "mps")
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = torch.float16 if gpu else torch.bfloat16
        return TorchBackend(
            self.model,
            self.device,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            compile=compile,
            threads=self.threads,
            n_classes=self.card.n_classes,
        )

    def _int8_graph(self) -> Path | None:
        """The int8 graph to run, per ``precision``; raises if ``int8`` has none."""
        from geoseg.infer.quantize import int8_graph
        from geoseg.models.checkpoint import LoadedModel

        if self._want_precision == "fp32" or self.device.type != "cpu":
            return None
        src = self._source
        found = int8_graph(src.path, src.sha256) if isinstance(src, LoadedModel) else None
        if self._want_precision == "int8":
            if found is None:
                raise ConfigError(
                    f"model {self.card.name!r} has no int8 graph; make one with "
                    "'geoseg models quantize CHECKPOINT', or use precision='fp32'"
                )
            return found[0]
        if found is not None and found[1].get("check", {}).get("passed") is True:
            tuned = self.tuning
            if tuned is not None and tuned.timed_int8 and tuned.precision != "int8":
                log.info(
                    "precision auto: fp32, faster than int8 here as geoseg tune measured (%s)",
                    tuned.measured_at,
                )
                return None
            log.info("precision auto: int8, its accuracy check passed (%s)", found[0])
            return found[0]
        return None

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return self.card.n_classes

    @property
    def blend_device(self) -> torch.device | None:
        """Where the stream should blend this predictor's output: its GPU, or None (host).

        On a CUDA device with the PyTorch backend the probabilities stay on the
        GPU (:meth:`predict_on_device`) and are blended there; every other
        combination hands numpy arrays to the host blender.
        """
        if isinstance(self.backend, TorchBackend) and self.backend.device.type == "cuda":
            return self.backend.device
        return None

    def predict_on_device(self, batch: np.ndarray) -> torch.Tensor:
        """Like calling the predictor, but the probabilities stay on the device as a tensor.

        Raises
        ------
        ConfigError
            If the backend is not PyTorch (ONNX Runtime returns host arrays), or
            the batch has the wrong shape.
        """
        if not isinstance(self.backend, TorchBackend):
            raise ConfigError(
                f"the {self.backend.name} backend returns host arrays; use backend='torch' "
                "to keep probabilities on the device"
            )
        x = self._check(batch)
        if len(self._transforms) == 1:
            return self.backend.run_on_device(x)
        import torch

        total: torch.Tensor | None = None
        for k, flip in self._transforms:
            p = self.backend.run_on_device(_forward(x, k, flip))
            if flip:
                p = p.flip(-1)
            if k:
                p = torch.rot90(p, -k, dims=(-2, -1))
            total = p if total is None else total + p
        assert total is not None
        return total / len(self._transforms)

    def __call__(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities for a batch of normalised tiles.

        Parameters
        ----------
        batch : numpy.ndarray
            float32 ``(N, bands, H, W)``, already normalised; H and W multiples of
            the model stride.  A C-contiguous float32 array is passed on without
            a copy.

        Returns
        -------
        numpy.ndarray
            float32 ``(N, outputs, H, W)``: softmax probabilities of the classes,
            then, for a model with a contact output (``card.contact_class``),
            the contact probability.

        Raises
        ------
        ConfigError
            If the batch is not 4-D with the card's band count.
        """
        x = self._check(batch)
        if len(self._transforms) == 1:
            return self.backend(x)
        total: np.ndarray | None = None
        for k, flip in self._transforms:
            p = _inverse(self.backend(_forward(x, k, flip)), k, flip)
            total = p.copy() if total is None else np.add(total, p, out=total)
        assert total is not None
        total /= np.float32(len(self._transforms))
        return total

    def _check(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.card.in_channels:
            raise ConfigError(
                f"expected a batch of shape (N, {self.card.in_channels}, H, W), got {x.shape}"
            )
        return x


def normalize(
    data: np.ndarray,
    valid: np.ndarray,
    card: ModelCard,
    input_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale raw pixels to what the network was trained on.

    ``x -> ((x - lo) / (hi - lo) - mean) / std`` per band with ``(lo, hi)`` from
    the card (or ``input_range``); nodata pixels become 0 (the training mean),
    so they cannot pull predictions in their neighbourhood towards an arbitrary
    fill value.

    Parameters
    ----------
    data : numpy.ndarray
        ``(bands, H, W)`` of any real dtype.
    valid : numpy.ndarray
        bool ``(H, W)``.

    Returns
    -------
    numpy.ndarray
        float32 ``(bands, H, W)``.
    """
    lo, hi = input_range or card.input_range
    scale = np.asarray(card.std, dtype=np.float32)[:, None, None] * np.float32(hi - lo)
    offset = np.float32(lo) + np.asarray(card.mean, dtype=np.float32)[:, None, None] * np.float32(
        hi - lo
    )
    # Cast and shift in one pass, in float32 whatever the input dtype (as astype would).
    out = np.subtract(data, offset, dtype=np.float32, casting="unsafe")
    out /= scale
    if not valid.all():
        out[:, ~valid] = 0.0
    if data.dtype.kind in "fc" or not np.isfinite(scale).all() or not (scale != 0).all():
        # isfinite + all is ~20x cheaper than nan_to_num, and almost every tile is all finite;
        # integer pixels with a finite, non-zero scale cannot produce NaN or inf at all.
        finite = np.isfinite(out)
        if not finite.all():
            out[~finite] = 0.0
    return out
