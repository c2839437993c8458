"""Model cards: the JSON document that travels with every checkpoint.

A card says everything needed to rebuild and run a model: architecture and
encoder, the bands it expects (names and order), how raw pixel values are
normalised, the pixel size it was trained at, tile size and overlap, the
classes (id, name, colour, GeoPackage layer), and where it came from
(licence, provenance, training config, metrics).  Cards are validated field by
field; errors name the field and the fix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from geoseg.errors import ModelCardError

FORMAT_VERSION = 1
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ModelCardError(f"model card {where} is missing required field {key!r}")
    return d[key]


def _as_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelCardError(f"model card field {name!r} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ModelCardError(f"model card field {name!r} must be in [{lo}, {hi}], got {value}")
    return value


def _as_float(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelCardError(f"model card field {name!r} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ModelCardError(f"model card field {name!r} must be > 0, got {value}")
    return float(value)


def _as_str(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ModelCardError(f"model card field {name!r} must be a non-empty string, got {value!r}")
    return value


def _as_mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelCardError(f"model card field {name!r} must be a JSON object, got {value!r}")
    return dict(value)


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ModelCardError(f"model card field {name!r} must be a JSON list, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class ClassInfo:
    """One output class.

    Parameters
    ----------
    id : int
        Class value in the class raster, 0-254 (255 is nodata).
    name : str
        Human-readable name, e.g. ``"building"``.
    color : str
        ``#rrggbb`` colour used in the raster colour table and the QGIS style.
    layer : str, optional
        GeoPackage layer name for its polygons (default: ``name``).
    vectorize : bool
        Whether polygons are produced for this class (False for background).
    definition : str, optional
        What the class covers, in words (e.g. "trees, shrubs and uncultivated
        grass"), so that users and training sources mean the same thing.
    """

    id: int
    name: str
    color: str
    layer: str = ""
    vectorize: bool = True
    definition: str = ""

    def __post_init__(self) -> None:
        _as_int(self.id, "classes[].id", lo=0, hi=254)
        _as_str(self.name, "classes[].name")
        if not isinstance(self.color, str) or not _COLOR.match(self.color):
            raise ModelCardError(
                f"class {self.name!r} colour must look like '#1f78b4', got {self.color!r}"
            )
        if not self.layer:
            object.__setattr__(self, "layer", self.name)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as 0-255 integers."""
        c = self.color
        return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)

    @classmethod
    def from_dict(cls, d: Any) -> ClassInfo:
        d = _as_mapping(d, "classes[]")
        return cls(
            id=_req(d, "id", "class entry"),
            name=_req(d, "name", "class entry"),
            color=_req(d, "color", "class entry"),
            layer=d.get("layer") or "",
            vectorize=bool(d.get("vectorize", True)),
            definition=str(d.get("definition") or ""),
        )


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, run and describe a segmentation model.

    Normalisation: a raw value ``x`` of band ``i`` becomes
    ``((x - lo) / (hi - lo) - mean[i]) / std[i]`` with ``(lo, hi) = input_range``.

    ``contact_class`` (None for most models, and for every card written before
    it existed) names the class whose touching objects the model separates:
    such a network has one more output channel after the classes, the logit of
    "this pixel lies where two objects of that class meet" (see
    :mod:`geoseg.training.contact`).  Prediction carves those pixels out of the
    class so that touching buildings become separate polygons.

    ``task`` is ``"semantic"`` (a class per pixel; every card written before the
    field existed) or ``"instance"``: the network finds objects one by one (Mask
    R-CNN, :mod:`geoseg.models.maskrcnn`), prediction writes each kept object as
    a polygon with its score and paints the class raster from them
    (:mod:`geoseg.infer.instances`).

    ``output_groups`` (empty for most models) says that the network has more
    outputs than the card has classes: class ``i``'s probability is the sum of
    the softmax probabilities of the outputs in ``output_groups[i]``.  A model
    trained on finer classes than it ships (Dubai's land, road and water as
    three outputs of one "background") is built with
    :class:`~geoseg.models.groups.MergedOutputs`, which returns the classes'
    logits, so everything downstream sees ``n_classes`` outputs.
    """

    name: str
    architecture: str
    bands: tuple[str, ...]
    classes: tuple[ClassInfo, ...]
    encoder: str | None = None
    arch_params: dict[str, Any] = field(default_factory=dict)
    input_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pixel_size_m: float | None = None
    tile_size: int = 512
    overlap: int = 64
    stride: int = 32
    nodata_class: int = 255
    description: str = ""
    licence: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    contact_class: int | None = None
    task: str = "semantic"
    output_groups: tuple[tuple[int, ...], ...] = ()
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _as_str(self.name, "name")
        _as_str(self.architecture, "architecture")
        if not self.bands:
            raise ModelCardError("model card field 'bands' must list at least one band name")
        for b in self.bands:
            _as_str(b, "bands[]")
        if len(self.classes) < 2:
            raise ModelCardError("model card field 'classes' must list at least two classes")
        ids = [c.id for c in self.classes]
        if sorted(ids) != list(range(len(ids))):
            raise ModelCardError(
                f"class ids must be 0..{len(ids) - 1} without gaps (they index the model "
                f"outputs), got {ids}"
            )
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ModelCardError(f"class names must be unique, got {names}")
        n = len(self.bands)
        mean = self.mean or (0.0,) * n
        std = self.std or (1.0,) * n
        if len(mean) != n or len(std) != n:
            raise ModelCardError(
                f"normalisation has {len(mean)} means and {len(std)} stds for {n} bands {list(self.bands)}"
            )
        object.__setattr__(self, "mean", tuple(_as_float(m, "mean[]") for m in mean))
        object.__setattr__(self, "std", tuple(_as_float(s, "std[]", positive=True) for s in std))
        lo, hi = (_as_float(v, "input_range[]") for v in self.input_range)
        if not hi > lo:
            raise ModelCardError(f"input_range must be [low, high] with high > low, got {[lo, hi]}")
        object.__setattr__(self, "input_range", (lo, hi))
        if self.pixel_size_m is not None:
            _as_float(self.pixel_size_m, "pixel_size_m", positive=True)
        _as_int(self.stride, "stride", lo=1, hi=1024)
        _as_int(self.tile_size, "tile_size", lo=self.stride, hi=16384)
        if self.tile_size % self.stride:
            raise ModelCardError(
                f"tile_size {self.tile_size} must be a multiple of the stride {self.stride}"
            )
        _as_int(self.overlap, "overlap", lo=0, hi=self.tile_size // 2 - 1)
        _as_int(self.nodata_class, "nodata_class", lo=0, hi=255)
        if self.nodata_class in ids:
            raise ModelCardError(f"nodata_class {self.nodata_class} collides with a class id")
        if self.contact_class is not None:
            _as_int(self.contact_class, "contact_class", lo=1, hi=len(ids) - 1)
        if self.task not in ("semantic", "instance"):
            raise ModelCardError(f"task must be 'semantic' or 'instance', got {self.task!r}")
        if self.task == "instance" and self.contact_class is not None:
            raise ModelCardError("an instance model separates its objects itself: no contact_class")
        if self.output_groups:
            self._check_output_groups()
        _as_int(self.format_version, "format_version", lo=1, hi=FORMAT_VERSION)

    def _check_output_groups(self) -> None:
        groups = self.output_groups
        if len(groups) != len(self.classes):
            raise ModelCardError(
                f"output_groups must give one group of network outputs per class "
                f"({len(self.classes)}), got {len(groups)}"
            )
        flat = [_as_int(o, "output_groups[][]", lo=0, hi=255) for g in groups for o in g]
        if any(not g for g in groups) or sorted(flat) != list(range(len(flat))):
            raise ModelCardError(
                "output_groups must split the network outputs 0..N-1 into one non-empty "
                f"group per class, each output in exactly one group; got {[list(g) for g in groups]}"
            )
        if self.contact_class is not None or self.task != "semantic":
            raise ModelCardError("output_groups is for semantic models without a contact output")

    @property
    def n_network_outputs(self) -> int:
        """Output channels of the network itself: its grouped outputs, or :attr:`n_outputs`."""
        if self.output_groups:
            return sum(len(g) for g in self.output_groups)
        return self.n_outputs

    @property
    def n_classes(self) -> int:
        """Number of classes (the class probabilities the network outputs)."""
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Number of network output channels: the classes, then the contact output if any."""
        return len(self.classes) + (self.contact_class is not None)

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    def class_by_id(self, class_id: int) -> ClassInfo:
        """Return the class with id ``class_id``."""
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    @classmethod
    def from_dict(cls, d: Any) -> ModelCard:
        """Build and validate a card from parsed JSON.

        Raises
        ------
        ModelCardError
            On any missing, mistyped or inconsistent field.
        """
        d = _as_mapping(d, "<root>")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelCardError(
                f"model card has unknown field(s) {unknown}; known: {sorted(known)}"
            )
        try:
            classes = tuple(
                ClassInfo.from_dict(c) for c in _as_list(_req(d, "classes", ""), "classes")
            )
            kwargs: dict[str, Any] = {
                "name": _req(d, "name", ""),
                "architecture": _req(d, "architecture", ""),
                "bands": tuple(_as_list(_req(d, "bands", ""), "bands")),
                "classes": classes,
            }
            for key in ("encoder", "description", "licence", "task"):
                if key in d and d[key] is not None:
                    kwargs[key] = _as_str(d[key], key, allow_empty=key != "encoder")
            for key in ("arch_params", "provenance", "metrics", "training", "postprocess"):
                if key in d:
                    kwargs[key] = _as_mapping(d[key], key)
            for key in ("input_range", "mean", "std"):
                if key in d:
                    kwargs[key] = tuple(_as_list(d[key], key))
            if "input_range" in kwargs and len(kwargs["input_range"]) != 2:
                raise ModelCardError(f"input_range must be [low, high], got {d['input_range']!r}")
            if d.get("pixel_size_m") is not None:
                kwargs["pixel_size_m"] = _as_float(d["pixel_size_m"], "pixel_size_m", positive=True)
            if d.get("contact_class") is not None:
                kwargs["contact_class"] = _as_int(d["contact_class"], "contact_class")
            if d.get("output_groups"):
                kwargs["output_groups"] = tuple(
                    tuple(_as_list(g, "output_groups[]"))
                    for g in _as_list(d["output_groups"], "output_groups")
                )
            for key in ("tile_size", "overlap", "stride", "nodata_class", "format_version"):
                if key in d:
                    kwargs[key] = _as_int(d[key], key)
            return cls(**kwargs)
        except (TypeError, KeyError) as exc:
            raise ModelCardError(f"model card is malformed: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        """Parse and validate a card from JSON text."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON-serialisable data."""
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["input_range"] = list(self.input_range)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        # Written only where used, so cards without groups read in versions without the field.
        d["output_groups"] = [list(g) for g in self.output_groups]
        if not self.output_groups:
            del d["output_groups"]
        return d

    def to_json(self) -> str:
        """The card as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def replace(self, **changes: Any) -> ModelCard:
        """Return a copy with some fields changed (validated again)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(changes)
        return ModelCard(**d)
