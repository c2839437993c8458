"""The training loop: plain PyTorch, one function, reporting through a callback.

:func:`train` builds the torchgeo data (:mod:`geoseg.training.data`), estimates
the per-band normalisation from training chips, builds the network from the
registry (optionally with encoder weights from a local file), and runs
``epochs`` epochs of AdamW with a warm-up and cosine learning rate, the
partial-label loss, augmentations and, on CUDA, mixed precision.  After each
epoch it validates on held-out files or blocks, keeps the checkpoint with the
best validation mean IoU in ``OUTPUT/model`` and the latest in ``OUTPUT/last``,
and writes the log and curves (:class:`~geoseg.training.rundir.RunDir`).

Repeatability: every random choice of an epoch (chips, augmentations, dropout)
is seeded from ``(seed, epoch)``, so a resumed run continues exactly as an
uninterrupted one would on the same machine.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg import __version__
from geoseg.errors import CheckpointError, ConfigError
from geoseg.models.card import ModelCard
from geoseg.training.config import IGNORE_INDEX, TrainConfig, init_card
from geoseg.training.rundir import RunDir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geoseg.training.data import TrainingData

log = logging.getLogger(__name__)

__all__ = [
    "TrainCallback",
    "TrainEvent",
    "TrainResult",
    "load_encoder_weights",
    "load_init_weights",
    "lr_at",
    "train",
]

#: Config fields that may change when a run is resumed.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "overwrite", "device", "workers", "threads", "amp", "cache"}
)


@dataclass(frozen=True)
class TrainEvent:
    """What the loop reports to its callback.

    ``kind`` is ``"setup"`` (``message`` says what is being prepared),
    ``"step"`` (after each optimizer step; ``loss`` is the epoch's running
    mean) or ``"epoch"`` (after validation and saving; ``metrics`` is the log
    row, ``message`` says whether the best checkpoint was replaced).  ``epoch``
    and ``step`` are 1-based.
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""


TrainCallback = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run left its outputs and how good it got."""

    best: Path
    last: Path
    card: ModelCard
    best_epoch: int
    best_miou: float | None
    history: tuple[dict[str, Any], ...]
    log: Path
    curves: Path


def lr_at(
    step: int,
    total: int,
    base: float,
    *,
    warmup: float = 0.05,
    floor: float = 0.01,
    schedule: str = "cosine",
) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then ``schedule`` down to ``floor * base``.

    ``cosine`` and ``linear`` reach ``floor * base`` at the last step; ``constant``
    stays at ``base`` after the warm-up.

    >>> round(lr_at(0, 100, 1.0), 3), round(lr_at(5, 100, 1.0), 3), round(lr_at(99, 100, 1.0), 3)
    (0.2, 1.0, 0.01)
    >>> round(lr_at(52, 100, 1.0, schedule="linear"), 3), lr_at(99, 100, 1.0, schedule="constant")
    (0.505, 1.0)
    """
    warm = max(1, int(total * warmup)) if warmup > 0 else 0
    if step < warm:
        return base * (step + 1) / warm
    if schedule == "constant":
        return base
    t = min(1.0, (step - warm) / max(1, total - warm - 1))
    fall = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t
    return base * (floor + (1 - floor) * fall)


def _derive(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _fresh_file_handles(worker_id: int) -> None:
    """Drop raster handles a DataLoader worker inherited from its parent by fork.

    torchgeo caches open datasets (``_cached_load_warp_file``, an ``lru_cache``
    shared by the class).  Handles opened in the parent (band statistics,
    validation) share file offsets with every forked worker, and concurrent
    reads through them decode garbage ("ZIPDecode: decoding error").  Each
    worker starts with an empty cache and opens its own handles.
    """
    from torchgeo.datasets import RasterDataset

    RasterDataset._cached_load_warp_file.cache_clear()


def load_encoder_weights(model: nn.Module, path: Path) -> int:
    """Initialise ``model.encoder`` from a local state-dict file; never from a hub.

    Tensors whose names (after removing an ``encoder.`` prefix) and shapes match
    are loaded; others (a classifier head, a first convolution with another band
    count) are skipped and logged.

    Returns
    -------
    int
        Number of tensors loaded.

    Raises
    ------
    ConfigError
        If the architecture has no encoder or no tensor fits.
    CheckpointError
        If the file is not plain weights (see :func:`geoseg.models.checkpoint.read_state_dict`).
    """
    from geoseg.models.checkpoint import read_state_dict

    # A contact model (geoseg.models.contact.ContactRefine) wraps the network as ``base``.
    encoder = getattr(model, "encoder", None) or getattr(
        getattr(model, "base", None), "encoder", None
    )
    if encoder is None:
        raise ConfigError(
            f"encoder_weights: this architecture ({type(model).__name__}) has no encoder to "
            "initialise; remove encoder_weights or choose an encoder-decoder architecture"
        )
    state = {k.removeprefix("encoder."): v for k, v in read_state_dict(path).items()}
    return _load_matching(encoder, state, "encoder_weights", path, "the encoder")


def load_init_weights(
    model: nn.Module,
    path: Path,
    shared_outputs: int | None = None,
    split: Mapping[int, int] | None = None,
    card: ModelCard | None = None,
) -> int:
    """Start the whole network from another checkpoint's weights (a warm start).

    ``path`` is a geoseg checkpoint directory or a weights file.  Tensors whose
    names and shapes match are loaded (cast to the model's dtype); the rest, such
    as a head for a different set of classes, keep their initial values.

    ``shared_outputs`` (the number of classes, when the checkpoint has the same
    classes and the new network adds a contact output after them): the head's
    first ``shared_outputs`` outputs are taken from the checkpoint and only the
    added ones start fresh.

    ``split`` (added output -> shared output it is split from, see
    ``TrainConfig.split_init``): such an added output starts as a copy of the
    shared one's head row, and every output of the group has its bias lowered by
    ``log`` of the group's size, so the group's summed probability starts as the
    checkpoint's probability of the shared class.

    ``card`` (the new network's): when the checkpoint's card lays out its outputs
    otherwise (merged outputs or a contact output the new network does not have in
    the same way), its output layer is left out, since its rows mean other things
    than the new network's rows even where the shapes agree; the body is loaded.

    Returns
    -------
    int
        Number of tensors loaded.

    Raises
    ------
    ConfigError
        If no tensor fits.
    CheckpointError
        If the file is not plain weights.
    """
    from geoseg.models.checkpoint import read_state_dict

    p = Path(path)
    file = p / "model.safetensors" if p.is_dir() else p
    state = read_state_dict(file)
    donor = init_card(p)
    if card is not None and donor is not None and _other_layout(donor, card):
        state = _without_output_layer(state, donor)
    return _load_matching(model, state, "init_weights", file, "this network", shared_outputs, split)


def _other_layout(donor: ModelCard, card: ModelCard) -> bool:
    """Whether a warm start's output rows (merged groups, a contact row) mean other things."""
    if not donor.output_groups and donor.contact_class is None:
        return False  # plain rows, one per class: matched by shape or grown (shared_outputs)
    return (
        donor.output_groups != card.output_groups
        or donor.contact_class != card.contact_class
        or [c.name for c in donor.classes] != [c.name for c in card.classes]
    )


def _without_output_layer(
    state: Mapping[str, torch.Tensor], donor: ModelCard
) -> dict[str, torch.Tensor]:
    """``state`` less the last layer (in order) with one row per output of ``donor``'s network."""
    wrapped = any(k.startswith("base.") for k in state)
    inner = ((k, v) for k, v in state.items() if not wrapped or k.startswith("base."))
    layer = _last_layer(inner, donor.n_network_outputs)
    if layer is None:
        return dict(state)
    log.info("init_weights: the output layer %s is left out (its rows mean other things)", layer)
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[0] != layer}


def _load_matching(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    field: str,
    path: Path,
    what: str,
    shared_outputs: int | None = None,
    split: Mapping[int, int] | None = None,
) -> int:
    """Load the tensors of ``state`` whose names and shapes fit ``module``; log the rest."""
    own = module.state_dict()
    # A network wrapped for a contact output (geoseg.models.contact.ContactRefine) holds
    # the checkpoint's network as ``base``; so does a network with merged outputs
    # (geoseg.models.groups.MergedOutputs), whose body fits a network without them.
    state = {_own_name(k, own): v for k, v in state.items()}
    fitting = {
        k: v.to(own[k].dtype)
        for k, v in state.items()
        if k in own and tuple(own[k].shape) == tuple(v.shape)
    }
    # A head with more outputs (a contact output added after the classes) keeps the
    # trained rows of the outputs it shares with the checkpoint; the new ones start fresh.
    # The head is the last layer whose tensors differ from the checkpoint's only in their
    # first (output) dimension.
    grows = [
        k
        for k, mine in own.items()
        if k not in fitting
        and k in state
        and state[k].ndim == mine.ndim >= 1
        and tuple(state[k].shape[1:]) == tuple(mine.shape[1:])
        and state[k].shape[0] == shared_outputs < mine.shape[0]
    ]
    if grows:
        layer = grows[-1].rsplit(".", 1)[0]
        for k in grows:
            if k.rsplit(".", 1)[0] != layer:
                continue
            grown = own[k].clone()
            grown[: state[k].shape[0]] = state[k].to(grown.dtype)
            if split:
                _split_rows(grown, state[k].to(grown.dtype), split, is_bias=k.endswith("bias"))
            fitting[k] = grown
            log.info(
                "%s: %s keeps %d of its %d outputs", field, k, state[k].shape[0], grown.shape[0]
            )
        if split and not any(k.endswith("bias") for k in grows):
            log.warning(
                "%s: the output layer has no bias, so the split classes' group does not start "
                "with the checkpoint's probability",
                field,
            )
    elif split:
        raise ConfigError(
            f"{field}: split_init needs a checkpoint whose classes this run's classes begin "
            f"with and an output layer that grows by the new classes; {path} has none"
        )
    if not fitting:
        raise ConfigError(
            f"{field}: no tensor of {path} fits {what} (its names start {sorted(state)[:3]}, "
            f"{what}'s {sorted(own)[:3]}); check the architecture and encoder names"
        )
    skipped = sorted(set(state) - set(fitting))
    if skipped:
        log.info("%s: skipped %d tensor(s) that do not fit: %s", field, len(skipped), skipped[:5])
    missing = sorted(set(own) - set(fitting))
    if missing:
        log.info("%s: %d tensor(s) keep their initial values", field, len(missing))
    module.load_state_dict(fitting, strict=False)
    return len(fitting)


def _last_layer(named: Iterable[tuple[str, torch.Tensor]], rows: int) -> str | None:
    """The name of the last layer (in order) whose tensors have ``rows`` rows: an output layer."""
    layer = None
    for name, t in named:
        if t.ndim >= 1 and t.shape[0] == rows:
            layer = name.rsplit(".", 1)[0]
    return layer


def output_layer(model: nn.Module, card: ModelCard) -> list[torch.nn.Parameter]:
    """The parameters of ``model``'s output layer (the one with a row per network output).

    The last layer of the network proper (inside a contact or merged-outputs wrapper,
    which hold it as ``base``) whose parameters have one row per network output
    (``card.n_network_outputs``): smp's ``segmentation_head`` conv, or a small
    network's last conv.

    Raises
    ------
    ConfigError
        When no such layer is found (instance models, unusual networks).
    """
    import torch

    net = model
    inner = getattr(net, "base", None)
    while isinstance(inner, torch.nn.Module):
        net, inner = inner, getattr(inner, "base", None)
    layer = _last_layer(net.named_parameters(), card.n_network_outputs)
    if layer is None or card.task != "semantic":
        raise ConfigError(
            f"head_lr_scale: no output layer with one row per class found in {card.architecture}"
        )
    return [p for name, p in net.named_parameters() if name.rsplit(".", 1)[0] == layer]


def _own_name(key: str, own: Mapping[str, Any]) -> str:
    """A checkpoint tensor's name in ``own``, with or without a wrapper's ``base.``."""
    if key in own:
        return key
    if f"base.{key}" in own:
        return f"base.{key}"
    if key.startswith("base.") and key[5:] in own:
        return key[5:]
    return key


def _split_rows(
    grown: torch.Tensor, theirs: torch.Tensor, split: Mapping[int, int], is_bias: bool
) -> None:
    """Added head rows copied from the rows they split from; a bias shared out by group size."""
    for child, parent in split.items():
        grown[child] = theirs[parent]
    if is_bias:
        sizes: dict[int, int] = {}
        for parent in split.values():
            sizes[parent] = sizes.get(parent, 1) + 1
        for child, parent in split.items():
            grown[child] -= math.log(sizes[parent])
        for parent, size in sizes.items():
            grown[parent] -= math.log(size)


def _split_ids(config: TrainConfig, shared: int | None) -> dict[int, int]:
    """``config.split_init`` as output ids: added class -> the checkpoint class it splits."""
    if not config.split_init:
        return {}
    if shared is None:
        raise ConfigError(
            f"split_init: this run's classes must begin with those of init_weights "
            f"({config.init_weights}) and add the split classes after them"
        )
    ids = {name: i for i, name in enumerate(config.class_names)}
    out = {}
    for parent, children in config.split_init:
        if ids[parent] >= shared:
            raise ConfigError(
                f"split_init: {parent!r} is not a class of init_weights ({config.init_weights}); "
                "only its classes can be split"
            )
        for child in children:
            if ids[child] < shared:
                raise ConfigError(
                    f"split_init: {child!r} is a class init_weights already has; only classes "
                    "the run adds after the checkpoint's can be split off"
                )
            out[ids[child]] = ids[parent]
    return out


def _shared_outputs(config: TrainConfig, card: ModelCard) -> int | None:
    """Class outputs a warm start shares with a network that has more outputs after them.

    A new contact head after the same classes, or new classes after the checkpoint's
    (its classes, by name and in order, the first of this run's): the shared outputs keep
    their trained head rows (see :func:`load_init_weights`).
    """
    theirs = init_card(config.init_weights)
    if theirs is None or theirs.output_groups or theirs.contact_class is not None:
        return None
    mine = [c.name for c in card.classes]
    shared = [c.name for c in theirs.classes]
    if mine == shared and card.contact_class is not None:
        return card.n_classes
    if len(mine) > len(shared) and mine[: len(shared)] == shared:
        return len(shared)
    return None


def _provenance(config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    import torch
    import torchgeo

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "geoseg_version": __version__,
        "torch_version": torch.__version__,
        "torchgeo_version": torchgeo.__version__,
        "seed": config.seed,
        "sources": data.sources,
    }


def _card(
    config: TrainConfig,
    data: TrainingData,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    donor: ModelCard | None = None,
    normalisation: str = "",
) -> ModelCard:
    from geoseg.models.registry import architecture_task

    names = ", ".join(c.name for c in config.classes[1:])
    description = config.description or f"{config.architecture} trained by geoseg on {names}"
    licence = config.licence
    postprocess: dict[str, Any] = {}
    provenance = _provenance(config, data)
    if normalisation:
        provenance["normalisation"] = normalisation
    if donor is not None:
        # A fine-tune keeps the clean-up its classes had and says where it came from.
        postprocess = {k: v for k, v in donor.postprocess.items() if k in config.class_names}
        provenance["init_weights"] = {"name": donor.name, "description": donor.description}
        if not config.description:
            description = f"{config.architecture} fine-tuned by geoseg from {donor.name} on {names}"
        if not licence and donor.licence:
            licence = f"Fine-tuned from {donor.name}, whose card says: {donor.licence}"
    # A warm start from a network with finer outputs than its classes (geoseg models merge)
    # keeps them when the run keeps its classes: the same network, trained on through the
    # merged outputs, so every tensor of the checkpoint fits.
    groups = (
        donor.output_groups
        if donor is not None
        and donor.output_groups
        and tuple(c.name for c in donor.classes) == config.class_names
        and config.contact_class is None
        else ()
    )
    return ModelCard(
        name=config.name,
        architecture=config.architecture,
        task=architecture_task(config.architecture),
        encoder=config.encoder,
        arch_params=dict(config.arch_params),
        bands=config.bands,
        classes=config.classes,
        contact_class=(
            config.class_names.index(config.contact_class)
            if config.contact_class is not None
            else None
        ),
        input_range=config.input_range,
        mean=mean,
        std=std,
        pixel_size_m=round(data.pixel_size_m, 6),
        tile_size=config.tile_size or 512,
        overlap=config.overlap if config.overlap is not None else 64,
        stride=config.stride,
        description=description,
        licence=licence,
        postprocess=postprocess,
        provenance=provenance,
        training=config.to_dict(),
        output_groups=groups,
    )


def _same_paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with its file paths spelled one way (``a/b/../c`` and ``a/c`` are one path)."""

    def norm(v: Any) -> Any:
        if isinstance(v, str) and "://" not in v and not v.startswith("/vsi"):
            return os.path.normpath(os.path.abspath(v))
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return v

    out = dict(config)
    for key in ("output", "encoder_weights", "init_weights"):
        if out.get(key):
            out[key] = norm(out[key])
    if isinstance(out.get("sources"), list):
        out["sources"] = [
            {k: norm(v) if k in ("images", "labels") else v for k, v in src.items()}
            if isinstance(src, Mapping)
            else src
            for src in out["sources"]
        ]
    return out


def _check_resumable(saved: Mapping[str, Any], config: TrainConfig) -> None:
    now = _same_paths(config.to_dict())
    saved = _same_paths(saved)
    # Keys written only when set (head_lr_scale, distill, split_init, ...): one the saved run
    # had and this config leaves out is compared with this config's value of it.
    keys = set(now) | {k for k in saved if hasattr(config, k)}
    changed = sorted(
        k
        for k in keys
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k, getattr(config, k, None))
    )
    if changed:
        raise ConfigError(
            f"cannot resume: {', '.join(changed)} differ from the run being resumed; restore "
            "them, or start a new run with overwrite=True (only epochs, device, workers, threads "
            "and amp may change)"
        )


class _Batches:
    """Turns loader batches into normalised, augmented tensors on the device."""

    def __init__(self, config: TrainConfig, card: ModelCard, device: torch.device) -> None:
        import torch

        self.config = config
        self.device = device
        self.lo, self.hi = config.input_range
        self.mean = torch.tensor(card.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(card.std, device=device).view(1, -1, 1, 1)

    def __call__(
        self, batch: Mapping[str, Any], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        from geoseg.training.augment import augment_batch

        nb = self.device.type == "cuda"
        x = (batch["image"].to(self.device, non_blocking=nb) - self.lo) / (self.hi - self.lo)
        valid = batch["valid"].to(self.device, non_blocking=nb)
        mask = batch["mask"].to(self.device, non_blocking=nb)
        if generator is not None:
            x, valid, mask = augment_batch(x, valid, mask, self.config.augment, generator)
        x = (x - self.mean) / self.std
        x = torch.where(valid[:, None], x, torch.zeros_like(x))
        x = x.contiguous(memory_format=torch.channels_last)
        source = batch["source"].to(self.device)
        return x, mask, source


def _chip_cache(config: TrainConfig, data: Any, emit: TrainCallback) -> Any:
    """The images in memory as chips (:class:`ChipCache`) when asked and there is room."""
    if not config.cache:
        return None
    if config.task == "instance":
        log.info("instance training reads chips one by one (the chip cache keeps no object ids)")
        return None
    import psutil

    from geoseg.training.data import ChipCache, allowed_values

    need = ChipCache.estimate_bytes(data)
    room = psutil.virtual_memory().available // 2
    if need > room:
        log.warning(
            "the images need about %.0f MB in memory, more than half of what is free "
            "(%.0f MB): reading chips one by one",
            need / 1e6,
            room / 1e6,
        )
        return None
    emit(TrainEvent("setup", 0, config.epochs, message="reading the images into memory"))
    cache = ChipCache(data, allowed_values(data))
    log.info("chip cache: %.0f MB", cache.nbytes / 1e6)
    return cache


def _initial_model(
    config: TrainConfig,
    run: RunDir,
    data: Any,
    cache: Any,
    state: dict[str, Any] | None,
    emit: TrainCallback,
) -> tuple[Any, ModelCard]:
    """The network and card to train: the last checkpoint of a resumed run, else a new
    network (band statistics measured on training chips, encoder and initial weights)."""
    import torch

    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.models.registry import build_model
    from geoseg.training.data import ChipDataset, band_statistics

    if state is not None:
        _check_resumable(state.get("config", {}), config)
        loaded = load_checkpoint(run.last)
        return loaded.model, loaded.card
    # Only now that the data is known to be usable is an earlier run replaced.
    run.clear()
    donor = init_card(config.init_weights)
    if config.mean is not None and config.std is not None:
        mean, std = config.mean, config.std
        normalisation = "given in the config"
    elif (
        donor is not None
        and donor.mean
        and donor.std
        and tuple(donor.bands) == tuple(config.bands)
        and tuple(donor.input_range) == tuple(config.input_range)
    ):
        # The warm start's weights were learnt on inputs scaled by its card: keep that.
        mean, std = tuple(donor.mean), tuple(donor.std)
        normalisation = f"from the card of init_weights ({donor.name})"
        log.info("band statistics %s", normalisation)
    else:
        emit(TrainEvent("setup", 0, config.epochs, message="estimating band statistics"))
        stats_seed = _derive(config.seed, 1 << 20)
        stats_chips = ChipDataset(
            data, data.train_queries(stats_seed, count=config.stats_chips), cache
        )
        mean, std = band_statistics(stats_chips, config.input_range)
        normalisation = f"measured on {config.stats_chips} training chips"
    card = _card(config, data, mean, std, donor, normalisation)
    torch.manual_seed(config.seed)
    model = build_model(card)
    if config.encoder_weights is not None:
        n = load_encoder_weights(model, config.encoder_weights)
        log.info("initialised %d encoder tensors from %s", n, config.encoder_weights)
    if config.init_weights is not None:
        shared = _shared_outputs(config, card)
        n = load_init_weights(
            model, config.init_weights, shared, _split_ids(config, shared) or None, card
        )
        log.info("initialised %d tensors from %s", n, config.init_weights)
    return model, card


def _epoch_steps(
    loader: Any,
    one_step: Any,
    emit: TrainCallback,
    epoch: int,
    config: TrainConfig,
) -> tuple[float, int, float]:
    """Run ``one_step(step, batch) -> (loss, lr)`` over an epoch's batches, reporting each.

    Returns the summed loss, the number of steps and the last learning rate.
    """
    total_loss, n_steps, lr = 0.0, 0, config.lr
    n_batches = len(loader)
    for step, batch in enumerate(loader):
        loss, lr = one_step(step, batch)
        total_loss += loss
        n_steps += 1
        emit(
            TrainEvent(
                "step",
                epoch + 1,
                config.epochs,
                step + 1,
                n_batches,
                loss=total_loss / n_steps,
                lr=lr,
            )
        )
    return total_loss, n_steps, lr


def train(config: TrainConfig, callback: TrainCallback | None = None) -> TrainResult:
    """Train a segmentation model as ``config`` says and save it as a geoseg checkpoint.

    Parameters
    ----------
    config : TrainConfig
    callback : callable, optional
        Receives a :class:`TrainEvent` at setup stages, after every step and
        after every epoch (the CLI draws its progress bar from these).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        Bad data paths, labels, chip sizes, an impossible resume.
    OutputExistsError
        ``config.output`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    CheckpointError
        Unreadable encoder weights or resume state.
    """
    import torch

    from geoseg.infer.predictor import resolve_device
    from geoseg.training.data import (
        build_training_data,
    )
    from geoseg.training.losses import PartialLabelLoss, labelled_matrix

    emit: TrainCallback = callback or (lambda _e: None)
    run = RunDir(config.output)
    run.check(resume=config.resume, overwrite=config.overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    use_amp, amp_dtype = _mixed_precision(config, device)

    emit(TrainEvent("setup", 0, config.epochs, message="indexing imagery and labels"))
    data = build_training_data(config)
    cache = _chip_cache(config, data, emit)
    n_classes = len(config.classes)
    state: dict[str, Any] | None = run.read_state() if config.resume else None
    model, card = _initial_model(config, run, data, cache, state, emit)
    # Convolutions run faster on NHWC tensors on CPUs (oneDNN) and GPUs (tensor cores).
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer, scaler = _optimizer(
        model,
        config,
        run,
        card=card,
        resumed=state is not None,
        device=device,
        fp16=use_amp and amp_dtype == torch.float16,
    )
    loss_fn = PartialLabelLoss(
        config.loss, class_weights=config.class_weights, gamma=config.focal_gamma
    ).to(device)
    labelled = labelled_matrix(data.labelled, n_classes).to(device)
    objective = _Objective(loss_fn, labelled, n_classes, config, data.contact_known, device)
    teacher = _teacher(config, card, device)
    batches = _Batches(config, card, device)
    instance = card.task == "instance"
    steps = config.samples_per_epoch // config.batch_size
    step_fn = _Step(
        model,
        (optimizer, scaler),
        batches,
        objective,
        config,
        (use_amp, amp_dtype),
        instance,
        teacher,
    )
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    best_miou: float | None = state.get("best_miou") if state else None
    best_epoch: int = int(state.get("best_epoch", 0)) if state else 0
    start = int(state["epoch"]) if state else 0
    validate_any = bool(data.val_queries)
    if config.validation.fraction > 0 and not validate_any:
        log.warning("no validation chips could be drawn; the last epoch is kept as the best model")

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        loader = _epoch_loader(config, data, epoch, cache, device)
        generator = torch.Generator().manual_seed(_derive(config.seed, epoch, 1))
        model.train()
        n_batches = len(loader)

        total_loss, n_steps, lr = _epoch_steps(
            loader,
            lambda step, batch, e=epoch, g=generator: step_fn(e * steps + step, batch, g),
            emit,
            epoch,
            config,
        )
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(1, n_steps),
            "lr": lr,
        }
        due = (epoch + 1) % config.validation.every == 0 or epoch + 1 == config.epochs
        if validate_any and due:
            row.update(
                _validate_instances(model, data, batches, config)
                if instance
                else _validate(model, data, batches, objective, config, use_amp, amp_dtype, cache)
            )
        row["time_s"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        score = row.get("val_miou")
        improved = (not validate_any) or (
            score is not None and (best_miou is None or score > best_miou)
        )
        if improved:
            best_miou, best_epoch = score, epoch + 1
        card = _save_epoch(
            run, model, card, (optimizer, scaler), config, history, improved,
            {"best_miou": best_miou, "best_epoch": best_epoch},
        )  # fmt: skip
        emit(
            TrainEvent(
                "epoch",
                epoch + 1,
                config.epochs,
                n_steps,
                n_batches,
                loss=row["train_loss"],
                lr=lr,
                metrics=row,
                message="best so far" if improved else "",
            )
        )
    if not run.best.is_dir():
        run.save_model(model, card, best=True)
    from geoseg.models.checkpoint import load_card

    return TrainResult(
        best=run.best,
        last=run.last,
        card=load_card(run.best),
        best_epoch=best_epoch,
        best_miou=best_miou,
        history=tuple(history),
        log=run.log,
        curves=run.curves,
    )


def _epoch_loader(
    config: TrainConfig, data: TrainingData, epoch: int, cache: Any, device: torch.device
) -> Any:
    """The epoch's training chips, drawn from the epoch's seed (so a resumed run draws the same)."""
    import torch
    from torch.utils.data import DataLoader

    from geoseg.training.data import ChipDataset

    seed = _derive(config.seed, epoch)
    torch.manual_seed(seed)
    return DataLoader(
        ChipDataset(data, data.train_queries(seed), cache),
        batch_size=config.batch_size,
        shuffle=False,
        drop_last=True,
        # Cached chips are array slices: worker processes would only compete with
        # the network for the cores.
        num_workers=0 if cache is not None else config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_fresh_file_handles,
    )


class _Step:
    """One optimisation step: learning rate of the schedule, augmented batch, loss, update."""

    def __init__(
        self,
        model: nn.Module,
        opt: tuple[torch.optim.Optimizer, torch.amp.GradScaler],
        batches: _Batches,
        objective: _Objective,
        config: TrainConfig,
        amp: tuple[bool, torch.dtype],
        instance: bool,
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, (self.optimizer, self.scaler) = model, opt
        self.batches, self.objective, self.config = batches, objective, config
        self.use_amp, self.amp_dtype = amp
        self.instance = instance
        self.teacher = teacher
        self.total = config.samples_per_epoch // config.batch_size * config.epochs

    def __call__(self, step: int, batch: Any, generator: torch.Generator) -> tuple[float, float]:
        """Run global step ``step`` on a loader batch; its loss and learning rate."""
        import torch

        from geoseg.training.instances import instance_loss

        lr = lr_at(
            step,
            self.total,
            self.config.lr,
            warmup=self.config.warmup,
            schedule=self.config.lr_schedule,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x, mask, source = self.batches(batch, generator)
        device = self.batches.device
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            if self.instance:
                loss = instance_loss(self.model, x, mask)
            else:
                logits = self.model(x)
                loss = self.objective(logits, mask, source)
                if self.teacher is not None:
                    with torch.no_grad():
                        taught = self.teacher(x)
                    loss = loss + self.config.distill * self.objective.distill(
                        logits, taught, mask, source
                    )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), lr


def _teacher(config: TrainConfig, card: ModelCard, device: torch.device) -> nn.Module | None:
    """The frozen ``init_weights`` network a ``distill`` run keeps close to, or None.

    It sees each training batch scaled by its own card: where the run's
    normalisation (``card``) differs, the batch is rescaled before it.
    """
    if not config.distill or config.init_weights is None:
        return None
    import torch
    from torch import nn

    from geoseg.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(config.init_weights)
    network = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
    for param in network.parameters():
        param.requires_grad_(False)

    def column(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float32, device=device)[None, :, None, None]

    # x_teacher = (x * std + mean - mean_t) / std_t: the identity when the cards agree
    scale = column(card.std) / column(loaded.card.std)
    shift = (column(card.mean) - column(loaded.card.mean)) / column(loaded.card.std)

    class Teacher(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x * scale + shift)

    log.info("distill: the %s network predicts beside training", config.init_weights)
    return Teacher().eval()


def _mixed_precision(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether steps autocast, and to which dtype (bfloat16 where the GPU has it)."""
    import torch

    use_amp = (
        device.type == "cuda" if config.amp is None else bool(config.amp and device.type != "cpu")
    )
    amp_dtype = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float16
    )
    if device.type == "cuda":  # deterministic convolution algorithms: reruns match
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return use_amp, amp_dtype


def _optimizer(
    model: nn.Module,
    config: TrainConfig,
    run: RunDir,
    *,
    card: ModelCard,
    resumed: bool,
    device: torch.device,
    fp16: bool,
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """AdamW and its gradient scaler, with their saved state when the run resumes.

    With ``config.head_lr_scale`` the output layer is a parameter group of its own
    whose ``lr_scale`` the step multiplies the schedule's learning rate by.
    """
    import torch

    params: Any = model.parameters()
    if config.head_lr_scale != 1.0:
        head = output_layer(model, card)
        ids = {id(p) for p in head}
        params = [
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0},
            {"params": head, "lr_scale": config.head_lr_scale},
        ]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    if resumed:
        opt_state = run.load_optimizer()
        try:
            optimizer.load_state_dict(opt_state["optimizer"])
            scaler.load_state_dict(opt_state.get("scaler", {}))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{run.optimizer} does not fit this model ({exc}); use overwrite=True"
            ) from exc
    return optimizer, scaler


def _save_epoch(
    run: RunDir,
    model: nn.Module,
    card: ModelCard,
    opt: tuple[torch.optim.Optimizer, torch.amp.GradScaler],
    config: TrainConfig,
    history: list[dict[str, Any]],
    improved: bool,
    best: dict[str, Any],
) -> ModelCard:
    """Checkpoint an epoch: last (and best) model, optimizer, resume state, log and curves.

    Returns the card with the epoch's metrics.
    """
    row = history[-1]
    metrics = {
        "epoch": row["epoch"],
        "train_loss": row["train_loss"],
        **{k: v for k, v in row.items() if k.startswith("val_")},
    }
    card = card.replace(metrics=metrics)
    run.save_model(model, card, best=False)
    if improved:
        run.save_model(model, card, best=True)
    optimizer, scaler = opt
    run.save_optimizer({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()})
    run.write_state({"epoch": row["epoch"], **best, "history": history, "config": config.to_dict()})
    run.write_log(history)
    run.plot(history)
    return card


def _validate(
    model: nn.Module,
    data: TrainingData,
    batches: _Batches,
    objective: _Objective,
    config: TrainConfig,
    use_amp: bool,
    amp_dtype: torch.dtype,
    cache: Any = None,
) -> dict[str, Any]:
    """Validation loss, mean IoU and per-class IoU (and contact F1) over the validation chips."""
    import torch
    from torch.utils.data import DataLoader

    from geoseg.metrics import ConfusionMatrix
    from geoseg.training.data import ChipDataset

    device = batches.device
    chips = ChipDataset(data, data.val_queries, cache)
    loader = DataLoader(
        chips,
        batch_size=config.batch_size,
        num_workers=0 if cache is not None else config.workers,
        worker_init_fn=_fresh_file_handles,
    )
    cm = ConfusionMatrix(config.class_names)
    total, n = 0.0, 0
    counts = np.zeros(3, np.int64)  # contact true positives, false positives, false negatives
    k = objective.n_classes
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            x, mask, source = batches(batch, None)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
            loss = objective(logits, mask, source)
            total += float(loss) * len(x)
            n += len(x)
            classes, contact, known = objective.split(mask, source)
            pred = logits[:, :k].argmax(1).cpu().numpy()
            truth = classes.cpu().numpy()
            rows = objective.labelled[source].cpu().numpy()
            for i in range(len(pred)):
                cm.update(truth[i], pred[i], rows[i])
            if known is not None and contact is not None:
                hit = (logits[:, k] > 0) & known
                counts += [
                    int((hit & contact).sum()),
                    int((hit & ~contact).sum()),
                    int((~hit & contact & known).sum()),
                ]
    model.train()
    m = cm.metrics()
    out: dict[str, Any] = {"val_loss": total / max(1, n), "val_miou": m.mean_iou}
    for c in m.classes:
        out[f"val_iou_{c.name}"] = c.iou
    if objective.contact_known is not None and counts.sum():
        tp, fp, fn = (int(v) for v in counts)
        out["val_contact_f1"] = 2 * tp / max(1, 2 * tp + fp + fn)
    return out


def _validate_instances(
    model: nn.Module, data: TrainingData, batches: _Batches, config: TrainConfig
) -> dict[str, Any]:
    """Mean and per-class IoU of the class maps painted from the detector's instances."""
    import torch
    from torch.utils.data import DataLoader

    from geoseg.infer.instances import InstanceParams
    from geoseg.metrics import ConfusionMatrix
    from geoseg.training.data import ChipDataset
    from geoseg.training.instances import INSTANCE_SHIFT, paint_instances
    from geoseg.training.losses import labelled_matrix

    params = InstanceParams()
    labelled = labelled_matrix(data.labelled, len(config.classes)).numpy()
    loader = DataLoader(
        ChipDataset(data, data.val_queries),
        batch_size=config.batch_size,
        num_workers=config.workers,
        worker_init_fn=_fresh_file_handles,
    )
    cm = ConfusionMatrix(config.class_names)
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            x, mask, source = batches(batch, None)
            pred = paint_instances(
                model(x),
                (int(x.shape[-2]), int(x.shape[-1])),
                params.score_threshold,
                params.mask_threshold,
            )
            truth = mask.cpu().numpy()
            truth = np.where(truth == IGNORE_INDEX, truth, truth % INSTANCE_SHIFT)
            rows = labelled[source.cpu().numpy()]
            for i in range(len(pred)):
                cm.update(truth[i], pred[i], rows[i])
    model.train()
    m = cm.metrics()
    out: dict[str, Any] = {"val_miou": m.mean_iou}
    for c in m.classes:
        out[f"val_iou_{c.name}"] = c.iou
    return out


class _Objective:
    """The training loss: partial-label class loss, plus the contact loss when configured."""

    def __init__(
        self,
        loss_fn: nn.Module,
        labelled: torch.Tensor,
        n_classes: int,
        config: TrainConfig,
        contact_known: Sequence[bool],
        device: torch.device,
    ) -> None:
        import torch

        self.loss_fn = loss_fn
        self.labelled = labelled
        self.n_classes = n_classes
        self.weight = config.contact_weight
        self.contact_known = (
            torch.tensor(list(contact_known), dtype=torch.bool, device=device)
            if config.contact_class is not None
            else None
        )

    def split(
        self, mask: torch.Tensor, source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Class target, contact target and where the contact state is known."""
        from geoseg.training.contact import split_contact

        if self.contact_known is None:
            return mask, None, None
        classes, contact = split_contact(mask)
        known = (classes != IGNORE_INDEX) & self.contact_known[source][:, None, None]
        return classes, contact, known

    def distill(
        self,
        logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor,
        source: torch.Tensor,
    ) -> torch.Tensor:
        """The ``distill`` term (:func:`~geoseg.training.losses.distill_unlabelled`)."""
        from geoseg.training.losses import distill_unlabelled

        classes, _, _ = self.split(mask, source)
        k = self.n_classes
        return distill_unlabelled(
            logits[:, :k], teacher_logits[:, :k], classes, self.labelled[source]
        )

    def __call__(
        self, logits: torch.Tensor, mask: torch.Tensor, source: torch.Tensor
    ) -> torch.Tensor:
        from geoseg.training.losses import contact_loss

        classes, contact, known = self.split(mask, source)
        k = self.n_classes
        loss, _ = self.loss_fn(logits[:, :k].float(), classes, self.labelled[source])
        if contact is not None and known is not None:
            loss = loss + self.weight * contact_loss(logits[:, k], contact, known)
        return loss
