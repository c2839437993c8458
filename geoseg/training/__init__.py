"""Train segmentation models on the user's own labelled imagery (through torchgeo).

- :mod:`~geoseg.training.config`: :class:`TrainConfig` and friends, from YAML or flags;
- :mod:`~geoseg.training.data`: torchgeo datasets, splits, samplers and chips;
- :mod:`~geoseg.training.losses`: partial-label cross-entropy, Dice and focal losses;
- :mod:`~geoseg.training.metrics`: a confusion matrix filled window by window;
- :mod:`~geoseg.training.augment`: flips, rotations, zoom, brightness and contrast;
- :mod:`~geoseg.training.loop`: :func:`train`;
- :mod:`~geoseg.training.rundir`: the files of a run.

Importing this package is cheap; torch and torchgeo load with :func:`train`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geoseg.training.config import AugmentConfig, SourceConfig, TrainConfig, ValidationConfig

if TYPE_CHECKING:
    from geoseg.training.loop import TrainEvent, TrainResult

__all__ = [
    "AugmentConfig",
    "SourceConfig",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "ValidationConfig",
    "train",
]


def train(config: TrainConfig, callback: Any = None) -> TrainResult:
    """Train as ``config`` says; see :func:`geoseg.training.loop.train`."""
    from geoseg.training.loop import train as _train

    return _train(config, callback)


def __getattr__(name: str) -> Any:
    if name in ("TrainEvent", "TrainResult"):
        from geoseg.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'geoseg.training' has no attribute {name!r}")
