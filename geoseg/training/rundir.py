"""The files of a training run, all written here and all written atomically.

::

    OUTPUT/
      model/              best checkpoint by validation mean IoU (safetensors + model_card.json)
      last/               checkpoint after the last finished epoch
      train_state.json    epoch, best score, history, the config: what resuming needs
      optimizer.pt        optimizer and grad-scaler state (tensors and numbers only)
      log.csv             one row per epoch
      curves.png          loss and mean IoU per epoch

Every file is written under a temporary name and renamed into place
(:func:`geoseg.io.atomic.atomic_output`; checkpoints through
:func:`geoseg.models.save_checkpoint`), so an interrupted run leaves the
previous epoch's files intact and can be resumed.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import CheckpointError, ConfigError, OutputExistsError
from geoseg.io.atomic import atomic_output
from geoseg.models.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from torch import nn

    from geoseg.models.card import ModelCard

__all__ = ["RunDir"]

STATE_VERSION = 1


class RunDir:
    """Paths and writers of one training run directory.

    Parameters
    ----------
    root : Path
        The run directory (``TrainConfig.output``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.best = self.root / "model"
        self.last = self.root / "last"
        self.state = self.root / "train_state.json"
        self.optimizer = self.root / "optimizer.pt"
        self.log = self.root / "log.csv"
        self.curves = self.root / "curves.png"

    def _ours(self) -> list[Path]:
        return [self.best, self.last, self.state, self.optimizer, self.log, self.curves]

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Check the directory before a run starts (cheap; nothing is changed).

        Raises
        ------
        OutputExistsError
            An earlier run is there and neither ``resume`` nor ``overwrite`` was given.
        ConfigError
            ``resume`` was given but there is nothing to resume.
        """
        if resume:
            if not (self.state.is_file() and self.last.is_dir()):
                raise ConfigError(
                    f"nothing to resume in {self.root}: it has no {self.state.name} and "
                    f"{self.last.name}/; drop resume to start a new run"
                )
            return
        existing = [p for p in self._ours() if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{self.root} already holds a training run ({', '.join(p.name for p in existing)}); "
                "pass resume=True to continue it or overwrite=True to start again"
            )

    def clear(self) -> None:
        """Remove an earlier run's files (only geoseg's own) and create the directory."""
        for p in self._ours():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def save_model(self, model: nn.Module, card: ModelCard, *, best: bool) -> Path:
        """Write a checkpoint to ``model/`` (best) or ``last/``."""
        return save_checkpoint(model, card, self.best if best else self.last, overwrite=True)

    def write_state(self, state: dict[str, Any]) -> None:
        """Write ``train_state.json``."""
        with atomic_output(self.state, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"version": STATE_VERSION, **state}, indent=1) + "\n")

    def read_state(self) -> dict[str, Any]:
        """Read ``train_state.json``.

        Raises
        ------
        CheckpointError
            If it is not a geoseg training state.
        """
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {self.state} ({exc}); start again with overwrite=True"
            ) from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"{self.state} is not a geoseg training state; start again with overwrite=True"
            )
        return state

    def save_optimizer(self, state: dict[str, Any]) -> None:
        """Write optimizer (and scaler) state with ``torch.save``."""
        import torch

        with atomic_output(self.optimizer, overwrite=True) as tmp:
            torch.save(state, tmp)

    def load_optimizer(self) -> dict[str, Any]:
        """Read optimizer state with ``torch.load(weights_only=True)``: no code is unpickled.

        Raises
        ------
        CheckpointError
            If the file is missing or needs more than tensors and plain data.
        """
        import torch

        try:
            state: dict[str, Any] = torch.load(self.optimizer, "cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, OSError, ...
            raise CheckpointError(
                f"cannot read {self.optimizer} with weights_only=True ({type(exc).__name__}); "
                "start again with overwrite=True"
            ) from exc
        return state

    def write_log(self, history: Sequence[dict[str, Any]]) -> None:
        """Write ``log.csv`` with one row per epoch (columns: union of the rows' keys)."""
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        with atomic_output(self.log, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for row in history:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})

    def plot(self, history: Sequence[dict[str, Any]]) -> None:
        """Draw ``curves.png``: training/validation loss and validation mean IoU per epoch."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = [r["epoch"] for r in history]
        fig = Figure(figsize=(9, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_iou = fig.subplots(1, 2)
        ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
        val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
        if val:
            ax_loss.plot(*zip(*val, strict=True), "s-", label="validation")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        miou = [(r["epoch"], r["val_miou"]) for r in history if r.get("val_miou") is not None]
        if miou:
            ax_iou.plot(*zip(*miou, strict=True), "s-", color="tab:green")
        ax_iou.set_xlabel("epoch")
        ax_iou.set_ylabel("validation mean IoU")
        ax_iou.set_ylim(0, 1)
        ax_iou.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_output(self.curves, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
