"""Run a segmentation network on batches of normalised tiles.

The predictor owns device choice (cuda, then mps, then cpu unless told),
mixed precision (bf16/fp16 autocast on GPUs), channels_last memory format, and
the conversion from logits to class probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geoseg.models.card import ModelCard

log = logging.getLogger(__name__)


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
            f"--device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device} asked for CUDA but no CUDA GPU is available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(
                f"--device {device} asked for MPS but it is not available; use --device cpu"
            )
    elif dev.type != "cpu":
        raise ConfigError(
            f"--device {device!r} is not supported; use auto, cpu, cuda, cuda:N or mps"
        )
    return dev


class Predictor:
    """Batched, device-aware inference returning class probabilities.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping ``(N, bands, H, W)`` to ``(N, classes, H, W)`` logits.
    card : ModelCard
        Its card (band count, classes).
    device : str
        ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    batch_size : int, optional
        Tiles per forward pass (default 8 on GPU, 2 on CPU).
    amp : bool, optional
        Mixed precision (bf16 where supported, else fp16); default on for GPUs only.
    channels_last : bool, optional
        Use the channels_last memory format (default True; faster convolutions on
        CPU and GPU alike).
    threads : int, optional
        torch intra-op threads on CPU (default: all cores).
    """

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        amp: bool | None = None,
        channels_last: bool | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        self.card = card
        self.device = resolve_device(device)
        gpu = self.device.type in ("cuda", "mps")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or (8 if gpu else 2)
        self.amp = gpu if amp is None else bool(amp)
        self.channels_last = True if channels_last is None else bool(channels_last)
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = torch.float16 if gpu else torch.bfloat16
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device).to(memory_format=fmt)
        self.pin = self.device.type == "cuda"

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return self.card.n_classes

    def __call__(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities for a batch of normalised tiles.

        Parameters
        ----------
        batch : numpy.ndarray
            float32 ``(N, bands, H, W)``, already normalised; H and W multiples of
            the model stride.

        Returns
        -------
        numpy.ndarray
            float32 ``(N, classes, H, W)`` softmax probabilities.
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(np.asarray(batch, dtype=np.float32)))
        if self.pin:
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp:
                with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=1)
        out: Any = probs.contiguous().cpu().numpy()
        return out


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
    out = data.astype(np.float32, copy=True)
    out -= offset
    out /= scale
    if not valid.all():
        out[:, ~valid] = 0.0
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out
