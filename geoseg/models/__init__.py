"""Model registry, model cards and safe checkpoints."""

from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.checkpoint import (
    DEFAULT_MODEL,
    LoadedModel,
    bundled_models,
    load_card,
    load_checkpoint,
    save_checkpoint,
    wrap_state_dict,
)
from geoseg.models.registry import architecture_stride, build_model, get_architecture, list_models

__all__ = [
    "DEFAULT_MODEL",
    "ClassInfo",
    "LoadedModel",
    "ModelCard",
    "architecture_stride",
    "build_model",
    "bundled_models",
    "get_architecture",
    "list_models",
    "load_card",
    "load_checkpoint",
    "save_checkpoint",
    "wrap_state_dict",
]
