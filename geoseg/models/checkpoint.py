"""Checkpoints: safetensors weights plus a JSON model card, never pickles.

A checkpoint is a directory holding ``model.safetensors`` and
``model_card.json``, and optionally ``model.onnx`` with ``model.onnx.json``: its
ONNX graph, exported from those very weights (the JSON records their sha256), so
that ONNX Runtime runs it without PyTorch installed (the core install).  Loading parses the card, builds the architecture from
the registry and loads tensors with safetensors, which cannot execute code.
Plain state dicts a user already has (``.pth``/``.pt`` from smp or torchgeo)
are read with ``torch.load(weights_only=True)`` and wrapped with a card by
:func:`wrap_state_dict`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import CheckpointError, ModelCardError, OutputExistsError
from geoseg.models.card import ModelCard
from geoseg.models.registry import build_model

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.json"
ONNX_NAME = "model.onnx"
ONNX_META_NAME = "model.onnx.json"
BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_MODEL = "default"


class LoadedModel:
    """A checkpoint ready to run: its card, the sha256 of its weights file, and the network.

    The network (``model``, in eval mode) may be built on first use: a model
    loaded with ``load_checkpoint(..., lazy=True)`` reads and checks its card
    and hashes its weights file but leaves PyTorch unimported until something
    asks for ``model``.  The ONNX Runtime path finds its cached export by that
    hash and never does, which saves seconds of start-up and hundreds of MB.

    Parameters
    ----------
    model : torch.nn.Module or None
        The network; None with ``build``.
    card : ModelCard
    sha256 : str
        sha256 of the weights file.
    path : Path
        The checkpoint directory.
    build : callable, optional
        Builds the network when ``model`` is None.
    """

    def __init__(
        self,
        model: nn.Module | None,
        card: ModelCard,
        sha256: str,
        path: Path,
        *,
        build: Callable[[], nn.Module] | None = None,
    ) -> None:
        if model is None and build is None:
            raise ValueError("LoadedModel needs a model or a function that builds it")
        self._model = model
        self._build = build
        self._lock = threading.Lock()
        self.card = card
        self.sha256 = sha256
        self.path = Path(path)

    @property
    def model(self) -> nn.Module:
        """The network in eval mode, built (once) on first access when loaded lazily."""
        with self._lock:
            if self._model is None:
                assert self._build is not None
                self._model = self._build()
        return self._model

    def model_builder(self) -> nn.Module:
        """The network, as a zero-argument function (builds it on the first call)."""
        return self.model

    @property
    def built(self) -> bool:
        """Whether the network exists yet (False until a lazy model is first used)."""
        return self._model is not None

    def with_model(self, model: nn.Module) -> LoadedModel:
        """The same checkpoint with another network object (a copy to modify, say)."""
        return LoadedModel(model, self.card, self.sha256, self.path)

    @property
    def onnx_graph(self) -> tuple[Path, dict[str, Any]] | None:
        """The ONNX graph shipped in the checkpoint directory and its record, or None.

        Only a graph exported from these very weights counts (see :func:`shipped_onnx`).
        """
        return shipped_onnx(self.path, self.sha256)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LoadedModel({self.card.name!r}, path={str(self.path)!r}, built={self.built})"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_onnx(directory: Path, weights_sha256: str) -> tuple[Path, dict[str, Any]] | None:
    """A checkpoint's own ONNX graph, if it was exported from the weights beside it.

    ``model.onnx.json`` records the sha256 of the weights file the graph came
    from and of the graph itself; a graph whose record is missing, unreadable or
    names other bytes is ignored with a warning (it would run other weights).

    Returns
    -------
    (path, record) or None
    """
    graph, meta = directory / ONNX_NAME, directory / ONNX_META_NAME
    if not graph.is_file():
        return None
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.warning(
            "%s has no readable %s (%s); its ONNX graph is not used", directory, meta.name, exc
        )
        return None
    if record.get("weights_sha256") != weights_sha256:
        log.warning(
            "%s was exported from other weights than %s; it is not used "
            "(re-export it: geoseg models export %s --overwrite)",
            graph,
            WEIGHTS_NAME,
            directory,
        )
        return None
    if record.get("onnx_sha256") != sha256_file(graph):
        log.warning("%s does not match the sha256 in %s; it is not used", graph, meta.name)
        return None
    return graph, record


def bundled_models() -> dict[str, Path]:
    """Models shipped inside the package, by name."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / CARD_NAME).is_file()}


def resolve_model_path(model: str | Path) -> Path:
    """Turn a bundled model name, a checkpoint directory or its card/weights file into a directory.

    Raises
    ------
    CheckpointError
        If nothing usable is found, with the names of the bundled models.
    """
    bundled = bundled_models()
    if isinstance(model, str) and model in bundled:
        return bundled[model]
    p = Path(model)
    if p.is_dir():
        return p
    if p.is_file() and p.name in (WEIGHTS_NAME, CARD_NAME):
        return p.parent
    if p.is_file():
        raise CheckpointError(
            f"{p} is a single file, but a geoseg checkpoint is a directory with {WEIGHTS_NAME} and "
            f"{CARD_NAME}; wrap plain weights with 'geoseg models wrap {p} ...'"
        )
    names = ", ".join(bundled) or "none installed"
    raise CheckpointError(
        f"model {str(model)!r} is neither a bundled model ({names}) nor a checkpoint directory; "
        "pass model=NAME, a bundled model name or a checkpoint directory"
    )


def load_card(path: str | Path) -> ModelCard:
    """Read and validate the card of a checkpoint (or bundled model name)."""
    d = resolve_model_path(path)
    card_path = d / CARD_NAME
    if not card_path.is_file():
        raise CheckpointError(f"{d} has no {CARD_NAME}; a geoseg checkpoint needs one")
    try:
        return ModelCard.from_json(card_path.read_bytes())
    except ModelCardError as exc:
        raise ModelCardError(f"{card_path}: {exc}") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); geoseg never unpickles checkpoints: "
            "convert plain weights with 'geoseg models wrap'"
        ) from exc


def load_checkpoint(path: str | Path, *, lazy: bool = False) -> LoadedModel:
    """Load a checkpoint directory (or bundled model name) into an eval-mode network.

    Parameters
    ----------
    path : str or Path
        Checkpoint directory or bundled model name.
    lazy : bool
        Check the card and hash the weights now, but read the weights and build
        the network only when ``.model`` is first used (errors in the weights
        then surface there).

    Raises
    ------
    CheckpointError
        If the weights are not safetensors or do not fit the architecture.
    ModelCardError
        If the card is invalid.
    """
    d = resolve_model_path(path)
    card = load_card(d)
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{d} has no {WEIGHTS_NAME}")
    digest = sha256_file(weights)
    if lazy:
        return LoadedModel(
            None, card, digest, d, build=functools.partial(_build_network, card, weights)
        )
    return LoadedModel(_build_network(card, weights), card, digest, d)


def _build_network(card: ModelCard, weights: Path) -> nn.Module:
    state = _read_safetensors(weights)
    model = build_model(card)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"weights in {weights} do not fit {card.architecture}/{card.encoder} with "
            f"{card.in_channels} bands and {card.n_classes} classes: {first}"
        ) from exc
    return model.eval()


def save_checkpoint(
    model: nn.Module,
    card: ModelCard,
    path: str | Path,
    *,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write ``model``'s weights and ``card`` as a checkpoint directory, atomically.

    The directory is assembled under a temporary name beside ``path`` and
    renamed into place when complete.  ``half=True`` stores floating-point
    tensors as float16 (half the size, for shipped models); loading casts them
    back to the model's dtype.
    """
    from safetensors.torch import save_file

    dst = Path(path)
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists; pass overwrite=True to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.geoseg-tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"geoseg_card_name": card.name})
        (tmp / CARD_NAME).write_text(card.to_json() + "\n", encoding="utf-8")
        # mkdtemp makes a private directory; a checkpoint (and a shipped model) is
        # readable like any file the user creates.
        tmp.chmod(0o777 & ~umask)
        for f in (tmp / WEIGHTS_NAME, tmp / CARD_NAME):
            f.chmod(0o666 & ~umask)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read plain weights from ``.safetensors`` or a ``.pt``/``.pth``/``.ckpt`` file.

    ``torch.load`` runs with ``weights_only=True``: a file that needs arbitrary
    unpickling is refused.  Lightning/torchgeo checkpoints (``state_dict`` key,
    ``model.`` prefixes) and DataParallel ``module.`` prefixes are unwrapped.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        state: Any = _read_safetensors(p)
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{p} cannot be read as plain weights with weights_only=True ({type(exc).__name__}); "
                "geoseg refuses files that need unpickling code — save a state_dict instead"
            ) from exc
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("model.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def wrap_state_dict(
    weights: str | Path, card: ModelCard, dst: str | Path, *, overwrite: bool = False
) -> Path:
    """Turn plain weights on disk into a geoseg checkpoint described by ``card``.

    Raises
    ------
    CheckpointError
        If the weights do not fit the card's architecture.
    """
    state = read_state_dict(weights)
    model = build_model(card)
    if card.task == "instance" and not any(k.startswith("net.") for k in state):
        # torchvision's own detector weights (backbone., rpn., roi_heads.): ours wrap them.
        state = {f"net.{k}": v for k, v in state.items()}
    if card.output_groups and not any(k.startswith("base.") for k in state):
        # The network with its finer outputs, as trained: MergedOutputs holds it as ``base``.
        state = {f"base.{k}": v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights in {weights} do not fit {card.architecture}/{card.encoder}: "
            f"{str(exc).splitlines()[0]}; check the card's architecture, encoder, bands and classes"
        ) from exc
    return save_checkpoint(model, card, dst, overwrite=overwrite)


def card_summary(card: ModelCard) -> dict[str, Any]:
    """A compact, JSON-friendly description for ``geoseg info``."""
    return json.loads(
        json.dumps(
            {
                "name": card.name,
                "architecture": card.architecture,
                "task": card.task,
                "encoder": card.encoder,
                "bands": list(card.bands),
                "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in card.classes],
                "pixel_size_m": card.pixel_size_m,
                "tile_size": card.tile_size,
                "overlap": card.overlap,
                "licence": card.licence,
                "metrics": card.metrics,
            }
        )
    )
