"""Training configuration: frozen dataclasses built from YAML files or CLI flags.

A configuration names the classes the model predicts (the first one is the
background: "none of the others"), the bands it reads, one or more labelled
*sources* and how to train.  Every value is checked in ``__post_init__``; a
:class:`~geoseg.errors.ConfigError` names the offending field with its path,
e.g. ``sources[1].labelled_classes``.  :meth:`TrainConfig.to_dict` gives back a
plain dict that :meth:`TrainConfig.from_dict` accepts, so the configuration a
model was trained with travels in its card.

Nothing here opens a file: existence of images and labels is checked when the
datasets are built (:mod:`geoseg.training.data`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError, ModelCardError
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.types import IGNORE_INDEX  # target value of ignored pixels in label chips

__all__ = [
    "IGNORE",
    "IGNORE_INDEX",
    "INHERITED",
    "LOSSES",
    "LR_SCHEDULES",
    "AugmentConfig",
    "SourceConfig",
    "TrainConfig",
    "ValidationConfig",
    "init_card",
    "parse_class_list",
    "parse_class_map",
    "parse_loss",
]

#: Class-map target that marks label values to leave out of the loss and the metrics.
IGNORE = "ignore"
#: Loss terms that can be combined, e.g. ``ce+dice``.
LOSSES = ("ce", "dice", "focal", "lovasz")
#: How the learning rate moves after the warm-up.
LR_SCHEDULES = ("cosine", "linear", "constant")

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet", ".geoparquet", ".gml")
PALETTE = ("#000000", "#e41a1c", "#4daf4a", "#ffd92f", "#377eb8", "#984ea3", "#ff7f00", "#a65628")


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"config field '{where}' {message}")


def _num(value: Any, where: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(where, f"must be in [{lo}, {hi}], got {value}")
    return float(value)


def _int(value: Any, where: str, *, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise _fail(where, f"must be >= {lo}, got {value}")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str | Path):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str | Path) for v in value):
        raise _fail(where, f"must be a string or a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _prefixed(where: str, exc: ConfigError) -> ConfigError:
    text = str(exc)
    marker = "config field '"
    if text.startswith(marker):
        return ConfigError(f"{marker}{where}.{text[len(marker) :]}")
    return ConfigError(f"{where}: {text}")


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        place = f"{where} " if where else ""
        raise ConfigError(f"unknown config field(s) {place}{unknown}; known: {sorted(known)}")


def _resolve(path: str, base: Path | None) -> str:
    if base is None or "://" in path or path.startswith("/vsi") or Path(path).is_absolute():
        return path
    return str(base / path)


def parse_loss(value: Any) -> tuple[tuple[str, float], ...]:
    """Parse ``"ce+dice"``, ``"0.5*focal+dice"`` or ``{"ce": 1.0, "dice": 0.5}``.

    Returns
    -------
    tuple of (str, float)
        Loss terms with their weights, in the order given.

    Raises
    ------
    ConfigError
        For unknown terms, repeated terms or non-positive weights.

    Examples
    --------
    >>> parse_loss("ce+0.5*dice")
    (('ce', 1.0), ('dice', 0.5))
    """
    items: list[tuple[str, float]] = []
    if isinstance(value, str):
        for part in value.replace(" ", "").split("+"):
            weight, _, name = part.rpartition("*")
            try:
                items.append((name.lower(), float(weight) if weight else 1.0))
            except ValueError as exc:
                raise _fail("loss", f"has a bad weight in {part!r}; write e.g. 0.5*dice") from exc
    elif isinstance(value, Mapping):
        items = [(str(k).lower(), _num(v, f"loss.{k}", lo=0)) for k, v in value.items()]
    elif isinstance(value, Sequence):
        items = [(str(k).lower(), float(w)) for k, w in value]
    else:
        raise _fail("loss", f"must be like 'ce+dice' or {{ce: 1, dice: 0.5}}, got {value!r}")
    names = [n for n, _ in items]
    bad = [n for n in names if n not in LOSSES]
    if bad or not items:
        raise _fail("loss", f"has unknown term(s) {bad}; combine {', '.join(LOSSES)}, e.g. ce+dice")
    if len(set(names)) != len(names):
        raise _fail("loss", f"repeats a term: {names}")
    if any(w <= 0 or not math.isfinite(w) for _, w in items):
        raise _fail("loss", f"weights must be > 0, got {dict(items)}")
    return tuple(items)


def parse_class_map(text: str) -> dict[str | int, str]:
    """Parse ``"1=building,2=background,0=ignore"`` (integers become int keys).

    Raises
    ------
    ConfigError
        For items without ``=``.

    Examples
    --------
    >>> parse_class_map("1=building, crop=cropland, #ff0000=building")
    {1: 'building', 'crop': 'cropland', '#ff0000': 'building'}
    """
    out: dict[str | int, str] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"class_map items must look like VALUE=CLASS, got {item!r}", field="class_map"
            )
        k = key.strip()
        out[int(k) if k.lstrip("-").isdigit() else k] = value.strip()
    return out


def parse_class_list(text: str) -> list[dict[str, str]]:
    """Parse ``"background,building:#e41a1c,cropland"`` into class entries.

    >>> parse_class_list("background,building:#e41a1c")
    [{'name': 'background'}, {'name': 'building', 'color': '#e41a1c'}]
    """
    out: list[dict[str, str]] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, _, color = item.partition(":")
        out.append({"name": name, "color": color} if color else {"name": name})
    return out


def _parse_classes(value: Any) -> tuple[ClassInfo, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) < 2:
        raise _fail("classes", f"must list at least two classes, background first, got {value!r}")
    out: list[ClassInfo] = []
    for i, item in enumerate(value):
        d = {"name": item} if isinstance(item, str) else item
        if not isinstance(d, Mapping) or "name" not in d:
            raise _fail(f"classes[{i}]", f"must be a name or {{name, color}}, got {item!r}")
        _check_keys(d, ClassInfo, f"classes[{i}]")
        try:
            out.append(
                ClassInfo(
                    id=i,
                    name=d["name"],
                    color=d.get("color") or PALETTE[i % len(PALETTE)],
                    layer=d.get("layer") or "",
                    vectorize=bool(d.get("vectorize", i != 0)),
                    definition=str(d.get("definition") or ""),
                )
            )
        except ModelCardError as exc:
            raise _fail(f"classes[{i}]", f"is invalid: {exc}") from exc
    return tuple(out)


@dataclass(frozen=True)
class SourceConfig:
    """One labelled source: imagery, its labels and which classes those labels cover.

    Parameters
    ----------
    name : str
        Short name used in logs, provenance and errors.
    images : tuple of str
        Raster files, directories (searched recursively for ``*.tif``/``*.tiff``/
        ``*.vrt``/``*.jp2``/``*.img``) or glob patterns.
    labels : tuple of str
        Vector files with one polygon per object and a class attribute
        (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet) or label
        rasters (class values, or RGB colours), in any CRS.
    labelled_classes : tuple of str
        Classes this source labels.  Pixels it calls background mean "none of
        these", not "background": a tree in a cropland-only source is not taught
        to be background.  Default: the classes ``class_map`` maps to.
    absent_classes : tuple of str
        Classes the source states are nowhere in its images (e.g. cropland in
        a city).  Its background then counts as a negative for them: a pixel it
        calls background must not be any of them.  Only list a class whose
        absence is certain over every image of the source.
    label_field : str
        Attribute of vector labels holding the class value.
    label_layer : str, optional
        Layer of a multi-layer vector file (default: the first).
    label_type : {"auto", "vector", "raster"}
        ``auto`` decides by file extension.
    class_map : tuple of (value, class name) pairs
        Label value to class name, or ``"ignore"``.  Values are attribute values
        for vectors; pixel values or ``"#rrggbb"`` colours (RGB masks) for
        rasters.  Default: vector values equal to class names, raster values
        equal to class ids.  Label-raster nodata is always ignored.
    bands : tuple of int, optional
        1-based image bands in the model's band order (default: the first ones).
    nodata : float, optional
        Image value marking missing pixels where the files declare none (e.g. 0
        for black borders); such pixels are ignored.
    crs : str
        ``auto`` (each file's CRS when projected, else the UTM zone of the file),
        ``native`` (each file's CRS) or a CRS such as ``EPSG:32633``.
    weight : float
        Relative share of training chips drawn from this source.
    val_images : tuple of str
        Images of this source used only for validation (overrides the split).
    """

    name: str
    images: tuple[str, ...]
    labels: tuple[str, ...]
    labelled_classes: tuple[str, ...] = ()
    absent_classes: tuple[str, ...] = ()
    label_field: str = "class"
    label_layer: str | None = None
    label_type: str = "auto"
    class_map: tuple[tuple[str | int, str], ...] = ()
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    crs: str = "auto"
    weight: float = 1.0
    val_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise _fail("name", f"must be a non-empty string, got {self.name!r}")
        if not self.images:
            raise _fail("images", "must name at least one raster, directory or glob pattern")
        if not self.labels:
            raise _fail("labels", "must name at least one vector file or label raster")
        if self.label_type not in ("auto", "vector", "raster"):
            raise _fail("label_type", f"must be auto, vector or raster, got {self.label_type!r}")
        kinds = {self.kind_of(p) for p in self.labels}
        if len(kinds) > 1:
            raise _fail("labels", f"mixes vector files and rasters: {list(self.labels)}")
        if not isinstance(self.label_field, str) or not self.label_field:
            raise _fail("label_field", f"must be an attribute name, got {self.label_field!r}")
        if self.bands is not None and (
            not self.bands
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.bands)
        ):
            raise _fail("bands", f"must be 1-based band numbers, got {self.bands!r}")
        if self.nodata is not None:
            _num(self.nodata, "nodata")
        if not isinstance(self.crs, str) or not self.crs:
            raise _fail("crs", f"must be auto, native or a CRS like EPSG:32633, got {self.crs!r}")
        if self.crs not in ("auto", "native"):
            from pyproj import CRS
            from pyproj.exceptions import CRSError

            try:
                CRS.from_user_input(self.crs)
            except CRSError as exc:
                raise _fail("crs", f"is not a CRS pyproj knows: {self.crs!r}") from exc
        _num(self.weight, "weight", lo=0)
        if self.weight <= 0:
            raise _fail("weight", f"must be > 0, got {self.weight}")
        for key, target in self.class_map:
            if not isinstance(target, str):
                raise _fail(
                    f"class_map[{key}]", f"must be a class name or 'ignore', got {target!r}"
                )
        if not self.labelled_classes and not self.class_map:
            raise _fail(
                "labelled_classes",
                "is required: list the classes this source labels, e.g. [building]",
            )

    @property
    def kind(self) -> str:
        """``vector`` or ``raster``."""
        return self.kind_of(self.labels[0])

    def kind_of(self, path: str) -> str:
        """Whether ``path`` is read as vector labels or as a label raster."""
        if self.label_type != "auto":
            return self.label_type
        return "vector" if Path(path).suffix.lower() in VECTOR_SUFFIXES else "raster"

    def checked(self, classes: Sequence[ClassInfo]) -> SourceConfig:
        """Validate against the model's classes and fill in ``labelled_classes``.

        Raises
        ------
        ConfigError
            If a labelled class or class-map target is not a class, or the
            class map sends values to classes the source does not label.
        """
        names = [c.name for c in classes]
        background = names[0]
        for key, target in self.class_map:
            if target != IGNORE and target not in names:
                raise _fail(
                    f"class_map[{key}]",
                    f"maps to {target!r}, which is not one of {names} or 'ignore'",
                )
            if self.kind == "raster" and not (
                (isinstance(key, int) and not isinstance(key, bool))
                or (isinstance(key, str) and _is_colour(key))
            ):
                raise _fail(
                    f"class_map[{key}]",
                    "of a label raster must be a pixel value (integer) or an RGB colour '#rrggbb'",
                )
        targets = [t for _, t in self.class_map if t not in (IGNORE, background)]
        labelled = self.labelled_classes or tuple(dict.fromkeys(targets))
        unknown = [c for c in labelled if c not in names]
        if unknown:
            raise _fail(
                "labelled_classes", f"names unknown class(es) {unknown}; classes are {names}"
            )
        if background in labelled:
            raise _fail(
                "labelled_classes",
                f"must not list the background class {background!r}; list the classes the "
                "source labels, its background is 'none of them'",
            )
        if not labelled:
            raise _fail("labelled_classes", "is empty; list at least one class this source labels")
        absent = tuple(dict.fromkeys(self.absent_classes))
        bad = [c for c in absent if c not in names]
        if bad:
            raise _fail("absent_classes", f"names unknown class(es) {bad}; classes are {names}")
        if background in absent:
            raise _fail(
                "absent_classes",
                f"must not list the background class {background!r}: it is 'none of the others'",
            )
        both = [c for c in absent if c in labelled]
        if both:
            raise _fail(
                "absent_classes",
                f"lists {both}, which the source labels; a class is labelled or absent, not both",
            )
        stray = sorted({t for t in targets if t not in labelled})
        if stray:
            raise _fail(
                "class_map",
                f"maps values to {stray}, which are not in labelled_classes {list(labelled)}; "
                "add them there or map those values to 'ignore'",
            )
        return replace(self, labelled_classes=tuple(labelled), absent_classes=absent)

    @property
    def known_classes(self) -> tuple[str, ...]:
        """Classes whose presence the source states: labelled ones, then absent ones."""
        return (*self.labelled_classes, *self.absent_classes)

    def class_lookup(self, classes: Sequence[ClassInfo]) -> dict[str | int, int]:
        """Label value -> class id (:data:`IGNORE_INDEX` for ignored values)."""
        ids = {c.name: c.id for c in classes}
        if self.class_map:
            return {k: IGNORE_INDEX if t == IGNORE else ids[t] for k, t in self.class_map}
        if self.kind == "vector":
            return {c.name: c.id for c in classes}
        return {c.id: c.id for c in classes}

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | None = None) -> SourceConfig:
        """Build from parsed YAML; relative paths are taken relative to ``base_dir``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a source must be a mapping of fields, got {data!r}")
        _check_keys(data, cls, "in a source")
        d = dict(data)
        for key in ("images", "labels", "val_images"):
            if key in d:
                d[key] = tuple(_resolve(p, base_dir) for p in _strs(d[key], key))
        for key in ("labelled_classes", "absent_classes"):
            if key in d:
                d[key] = _strs(d[key], key)
        if "class_map" in d:
            cmap = d["class_map"]
            if not isinstance(cmap, Mapping):
                raise _fail("class_map", f"must map label values to class names, got {cmap!r}")
            d["class_map"] = tuple((k, v) for k, v in cmap.items())
        if d.get("bands") is not None:
            bands = d["bands"]
            if isinstance(bands, str):
                try:
                    bands = [int(b) for b in bands.split(",")]
                except ValueError as exc:
                    raise _fail("bands", f"must be band numbers like 3,2,1, got {bands!r}") from exc
            d["bands"] = tuple(bands)
        d.setdefault("name", Path(str(_strs(d.get("images", "source"), "images")[0])).stem)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` accepts."""
        return {
            "name": self.name,
            "images": list(self.images),
            "labels": list(self.labels),
            "labelled_classes": list(self.labelled_classes),
            "absent_classes": list(self.absent_classes),
            "label_field": self.label_field,
            "label_layer": self.label_layer,
            "label_type": self.label_type,
            "class_map": dict(self.class_map),
            "bands": list(self.bands) if self.bands is not None else None,
            "nodata": self.nodata,
            "crs": self.crs,
            "weight": self.weight,
            "val_images": list(self.val_images),
        }


def _is_colour(text: str) -> bool:
    return (
        len(text) == 7
        and text.startswith("#")
        and all(c in "0123456789abcdefABCDEF" for c in text[1:])
    )


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentations applied to training batches.

    Parameters
    ----------
    flips : bool
        Random horizontal and vertical flips.
    rot90 : bool
        Random rotations by multiples of 90 degrees.
    brightness, contrast : float
        Maximum change, as a fraction of the input range: a pixel ``x`` scaled to
        [0, 1] becomes ``(x - 0.5) * c + 0.5 + b`` with ``c`` in ``1 ± contrast``
        and ``b`` in ``± brightness``, per chip.
    scale : float
        Maximum relative zoom: chips are resized by a factor in
        ``[1 / (1 + scale), 1 + scale]`` and cropped or padded back.
    colour : float
        Maximum per-band gain change: each band of a chip is multiplied by its own
        factor in ``1 ± colour`` (around the band's mid value), the white-balance
        and sensor-response differences between cameras and satellites.
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    scale: float = 0.0
    colour: float = 0.0

    def __post_init__(self) -> None:
        _num(self.brightness, "augment.brightness", lo=0, hi=1)
        _num(self.contrast, "augment.contrast", lo=0, hi=0.9)
        _num(self.scale, "augment.scale", lo=0, hi=1)
        _num(self.colour, "augment.colour", lo=0, hi=0.9)

    @classmethod
    def from_dict(cls, data: Any) -> AugmentConfig:
        if data is None or data is False:
            return cls(
                flips=False, rot90=False, brightness=0.0, contrast=0.0, scale=0.0, colour=0.0
            )
        if data is True:
            return cls()
        if not isinstance(data, Mapping):
            raise _fail("augment", f"must be a mapping, true or false, got {data!r}")
        _check_keys(data, cls, "in augment")
        return cls(**data)


@dataclass(frozen=True)
class ValidationConfig:
    """How validation chips are kept apart from training chips.

    Parameters
    ----------
    split : {"files", "blocks"}
        ``files``: a fraction of each source's images is held out (a source with
        a single image falls back to blocks).  ``blocks``: square spatial blocks
        of ``block_size_m`` are held out.  Never random pixels of one image.
    fraction : float
        Share of images or blocks held out; 0 disables validation.
    block_size_m : float, optional
        Block edge in CRS units of the training grid (metres for projected
        CRSs); default four chips.
    max_chips : int, optional
        At most this many validation chips per source (evenly spread).
    every : int
        Validate every this many epochs (and after the last).
    seed : int, optional
        Seed of the held-out choice (default: the run's ``seed``), so that runs
        with different seeds can be compared on one split.
    """

    split: str = "files"
    fraction: float = 0.2
    block_size_m: float | None = None
    max_chips: int | None = None
    every: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.split not in ("files", "blocks"):
            raise _fail("validation.split", f"must be 'files' or 'blocks', got {self.split!r}")
        _num(self.fraction, "validation.fraction", lo=0, hi=0.9)
        if self.block_size_m is not None:
            _num(self.block_size_m, "validation.block_size_m", lo=0)
            if self.block_size_m <= 0:
                raise _fail("validation.block_size_m", f"must be > 0, got {self.block_size_m}")
        if self.max_chips is not None:
            _int(self.max_chips, "validation.max_chips", lo=1)
        _int(self.every, "validation.every", lo=1)
        if self.seed is not None:
            _int(self.seed, "validation.seed", lo=0)

    @classmethod
    def from_dict(cls, data: Any) -> ValidationConfig:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise _fail("validation", f"must be a mapping, got {data!r}")
        _check_keys(data, cls, "in validation")
        return cls(**data)


#: Settings a warm start (``init_weights``) takes from its checkpoint's card when the
#: config leaves them out: the network and the classes it predicts stay the same.
INHERITED = (
    "classes",
    "bands",
    "architecture",
    "encoder",
    "arch_params",
    "pixel_size_m",
    "input_range",
    "tile_size",
    "overlap",
    "contact_class",
)


def _init_weights_path(value: str, base_dir: Path | None) -> Path:
    """``init_weights`` as a path: a bundled model's name is its folder (as ``--model``)."""
    from geoseg.models.checkpoint import bundled_models

    bundled = bundled_models()
    if value in bundled:
        return bundled[value]
    return Path(_resolve(value, base_dir))


def _with_inherited(d: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """``d`` with the :data:`INHERITED` settings it leaves out filled in.

    A run being resumed takes them from its own saved config (what it started
    with); a new run from the card of its ``init_weights`` checkpoint, keeping the
    groups consistent: the checkpoint's encoder and parameters only with its
    architecture, its contact class only with its classes.
    """
    if d.get("init_weights") is None:
        return d
    d["init_weights"] = _init_weights_path(str(d["init_weights"]), base_dir)
    if d.get("resume") and d.get("output") is not None:
        state = Path(_resolve(str(d["output"]), base_dir)) / "train_state.json"
        if state.is_file():
            import json

            try:
                saved = json.loads(state.read_text(encoding="utf-8")).get("config") or {}
            except (OSError, ValueError):
                saved = {}
            return {**{k: saved[k] for k in INHERITED if k in saved}, **d}
    donor = init_card(d["init_weights"])
    if donor is None:
        return d
    inherited = _inherited(donor)
    if d.get("architecture", donor.architecture) != donor.architecture:
        inherited.pop("encoder")
        inherited.pop("arch_params")
    if "classes" in d:
        inherited.pop("contact_class")
    return {**inherited, **d}


def init_card(path: Path | None) -> ModelCard | None:
    """The card of the checkpoint a warm start begins from (None for plain weights).

    Parameters
    ----------
    path : Path, optional
        ``init_weights``: a checkpoint directory, its ``model.safetensors``, or a
        plain weights file.
    """
    if path is None:
        return None
    p = Path(path)
    folder = p if p.is_dir() else p.parent if p.name == "model.safetensors" else None
    if folder is None or not (folder / "model_card.json").is_file():
        return None
    from geoseg.models.checkpoint import load_card

    try:
        return load_card(folder)
    except ModelCardError as exc:
        raise _fail("init_weights", f"has an invalid card: {exc}") from exc


def _class_data(classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """Classes as config data (what ``classes:`` in a YAML file holds)."""
    return [
        {
            "name": c.name,
            "color": c.color,
            "layer": c.layer,
            "vectorize": c.vectorize,
            "definition": c.definition,
        }
        for c in classes
    ]


def _inherited(card: ModelCard) -> dict[str, Any]:
    """The :data:`INHERITED` settings of ``card``, as config data."""
    return {
        "classes": _class_data(card.classes),
        "bands": list(card.bands),
        "architecture": card.architecture,
        "encoder": card.encoder,
        "arch_params": dict(card.arch_params),
        "pixel_size_m": card.pixel_size_m,
        "input_range": list(card.input_range),
        "tile_size": card.tile_size,
        "overlap": card.overlap,
        "contact_class": (
            None if card.contact_class is None else card.class_by_id(card.contact_class).name
        ),
    }


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs.

    Parameters
    ----------
    sources : tuple of SourceConfig
        Labelled sources; each declares the classes it labels.
    classes : tuple of ClassInfo
        Output classes; the first is the background ("none of the others").
    bands : tuple of str
        Band names in the model's input order (e.g. red, green, blue).
    output : Path
        Run directory: ``model/`` (best checkpoint), ``last/``, ``train_state.json``,
        ``optimizer.pt``, ``log.csv``, ``curves.png``.
    name : str
        Model name written into the card.
    architecture, encoder : str
        Registry architecture (see ``geoseg models``) and encoder.
    arch_params : dict
        Extra keyword arguments of the architecture.
    encoder_weights : Path, optional
        Local state-dict file (.safetensors, or .pt/.pth read with
        ``weights_only=True``) to initialise the encoder from; never a hub.
    init_weights : Path, optional
        A geoseg checkpoint directory (or its ``model.safetensors``), or the name
        of a bundled model, whose weights the whole network starts from (a warm
        start); tensors whose names or shapes differ, e.g. a head for other
        classes, keep their initial values.  :meth:`from_dict` fills the
        settings in :data:`INHERITED` that the config leaves out from that
        checkpoint's card (a resumed run from its own saved config), and
        training takes the card's normalisation (``mean``, ``std``) when the
        bands and input range are the card's: the weights were learnt on
        inputs scaled that way.
    chip_size : int
        Training chip edge in pixels (a multiple of the architecture's stride).
    pixel_size_m : float, optional
        Pixel size to train at, in metres (default: each source's own).
    tile_size, overlap : int, optional
        Inference tile and overlap stored in the card (default: the larger of
        512 and the chip size, rounded to the stride; 64, or a quarter tile).
    input_range : (float, float)
        Raw value range mapped to [0, 1] before normalisation.
    mean, std : tuple of float, optional
        Per-band normalisation after scaling to [0, 1] (default: a warm start's
        card's, else measured on ``stats_chips`` training chips).
    epochs, batch_size, samples_per_epoch : int
        Length of training; chips per step; chips per epoch over all sources.
    lr, weight_decay : float
        AdamW peak learning rate and weight decay.
    head_lr_scale : float
        Multiplier of the learning rate for the output layer (the head with one
        row per class), e.g. 10 for a fine-tune that adds classes at a small
        ``lr``: their rows must move far while the body moves little.  AdamW's
        decoupled weight decay scales with the learning rate, so the head's
        decay is scaled too.
    lr_schedule : str
        How the learning rate moves after the warm-up: ``cosine`` (down to 1 % of
        ``lr`` at the last step), ``linear`` (straight down to 1 %) or ``constant``.
    warmup : float
        Fraction of all steps spent rising linearly to ``lr`` (0 to 0.5).
    loss : tuple of (str, float)
        Weighted terms among ``ce``, ``dice``, ``focal``, ``lovasz`` (partial-label aware).
    focal_gamma : float
        Focusing exponent of the focal term.
    class_weights : tuple of float, optional
        One weight per class for every loss term.
    contact_class : str, optional
        Name of a class whose touching objects the model learns to separate
        (e.g. ``building``): the network gets one more output, "this pixel
        lies where two objects of the class meet", trained where a source
        knows its objects one by one (vector labels that label the class,
        each polygon an object) and ignored elsewhere; prediction carves
        those pixels out so touching buildings become separate polygons
        (:mod:`geoseg.training.contact`).
    contact_weight : float
        Weight of the contact loss (binary cross-entropy plus Dice) beside the
        class loss.
    contact_radius : int
        A pixel is a contact pixel when the square of ``2 * radius + 1``
        pixels around it holds pixels of two different objects.
    distill : float
        Weight of a "learning without forgetting" term for fine-tunes (0: off).
        Where a source calls a pixel background ("none of my labelled classes"),
        the network is asked to share that pixel between background and the
        classes the source does not label as the ``init_weights`` network
        does (a KL divergence to its prediction, which runs beside training),
        so a building-only fine-tune does not drift in the classes it says
        nothing about.  Needs ``init_weights`` with the same classes, bands and
        input range.
    split_init : tuple of (str, tuple of str)
        Classes a warm start splits into finer ones, e.g. ``{background: [road,
        water]}``: the new classes (after the checkpoint's own, which the run's
        classes begin with) start with the output weights of the class they come
        from, and every member of the group has its bias lowered by ``log`` of the
        group's size, so the group's summed probability, and therefore the network
        with the group merged back (``geoseg models merge``), starts exactly as the
        checkpoint.  Without it a new class starts from random weights and must
        out-shout a trained one before it is ever predicted.
    augment : AugmentConfig
    validation : ValidationConfig
    stats_chips : int
        Training chips sampled to estimate the per-band mean and std.
    seed : int
        Seed for every random choice; equal configs give equal runs on one machine.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    amp : bool, optional
        Mixed precision (default: on for CUDA).
    threads : int, optional
        CPU threads for torch (default: torch's choice).
    workers : int
        DataLoader worker processes (0 reads chips in the main process).
    cache : bool
        Read every training and validation image once into memory and slice
        chips from it (falls back to reading chip by chip when that would take
        more than half of the available memory).
    resume : bool
        Continue from ``output/last`` and ``output/train_state.json``.
    overwrite : bool
        Start afresh even when ``output`` holds an earlier run.
    description, licence : str
        Copied into the card.
    """

    sources: tuple[SourceConfig, ...]
    classes: tuple[ClassInfo, ...]
    bands: tuple[str, ...] = ("red", "green", "blue")
    output: Path = Path("geoseg-run")
    name: str = "geoseg-model"
    architecture: str = "unet"
    encoder: str | None = None
    arch_params: dict[str, Any] = field(default_factory=dict)
    encoder_weights: Path | None = None
    init_weights: Path | None = None
    chip_size: int = 256
    pixel_size_m: float | None = None
    tile_size: int | None = None
    overlap: int | None = None
    input_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    epochs: int = 20
    batch_size: int = 8
    samples_per_epoch: int = 512
    lr: float = 1e-3
    head_lr_scale: float = 1.0
    lr_schedule: str = "cosine"
    warmup: float = 0.05
    weight_decay: float = 1e-4
    loss: tuple[tuple[str, float], ...] = (("ce", 1.0),)
    focal_gamma: float = 2.0
    class_weights: tuple[float, ...] | None = None
    contact_class: str | None = None
    contact_weight: float = 1.0
    contact_radius: int = 1
    distill: float = 0.0
    split_init: tuple[tuple[str, tuple[str, ...]], ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    stats_chips: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    threads: int | None = None
    workers: int = 0
    cache: bool = True
    resume: bool = False
    overwrite: bool = False
    description: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        self._check_classes_and_sources()
        if not isinstance(self.name, str) or not self.name.strip():
            raise _fail("name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.arch_params, dict):
            raise _fail("arch_params", f"must be a mapping, got {self.arch_params!r}")
        self._check_grid()
        names = [c.name for c in self.classes]
        lo, hi = (_num(v, "input_range") for v in self.input_range)
        if not hi > lo:
            raise _fail("input_range", f"must be [low, high] with high > low, got {[lo, hi]}")
        object.__setattr__(self, "input_range", (lo, hi))
        self._check_normalisation()
        _int(self.epochs, "epochs", lo=1)
        _int(self.batch_size, "batch_size", lo=1)
        _int(self.samples_per_epoch, "samples_per_epoch", lo=1)
        if self.samples_per_epoch < self.batch_size:
            raise _fail(
                "samples_per_epoch",
                f"({self.samples_per_epoch}) must be at least batch_size ({self.batch_size})",
            )
        _num(self.lr, "lr", lo=0)
        if self.lr <= 0:
            raise _fail("lr", f"must be > 0, got {self.lr}")
        _num(self.head_lr_scale, "head_lr_scale", lo=0)
        if self.head_lr_scale <= 0:
            raise _fail("head_lr_scale", f"must be > 0, got {self.head_lr_scale}")
        if self.head_lr_scale != 1.0 and self.task == "instance":
            raise _fail("head_lr_scale", f"is for semantic models; {self.architecture} has none")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _fail(
                "lr_schedule",
                f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            )
        _num(self.warmup, "warmup", lo=0, hi=0.5)
        _num(self.weight_decay, "weight_decay", lo=0)
        object.__setattr__(self, "loss", parse_loss(self.loss))
        _num(self.focal_gamma, "focal_gamma", lo=0)
        if self.class_weights is not None:
            weights = tuple(_num(w, "class_weights", lo=0) for w in self.class_weights)
            if len(weights) != len(self.classes):
                raise _fail(
                    "class_weights",
                    f"needs one weight per class ({len(self.classes)}: {names}), got {len(weights)}",
                )
            if not any(w > 0 for w in weights):
                raise _fail("class_weights", "must have at least one weight > 0")
            object.__setattr__(self, "class_weights", weights)
        if self.contact_class is not None:
            if self.contact_class not in names[1:]:
                raise _fail(
                    "contact_class",
                    f"must name one of the classes {names[1:]}, got {self.contact_class!r}",
                )
            if not any(
                s.kind == "vector" and self.contact_class in s.labelled_classes
                for s in self.sources
            ):
                raise _fail(
                    "contact_class",
                    f"needs a source with vector labels that label {self.contact_class!r} "
                    "(each polygon one object) to learn where objects touch; none does",
                )
        if self.task == "instance":
            self._check_instance_sources()
        _num(self.contact_weight, "contact_weight", lo=0)
        _int(self.contact_radius, "contact_radius", lo=1)
        self._check_distill()
        self._check_split_init()
        _int(self.stats_chips, "stats_chips", lo=1)
        _int(self.seed, "seed", lo=0)
        if not isinstance(self.device, str):
            raise _fail("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.threads is not None:
            _int(self.threads, "threads", lo=1)
        _int(self.workers, "workers", lo=0)

    def _check_distill(self) -> None:
        """``distill`` needs a warm start from a checkpoint with the same classes."""
        _num(self.distill, "distill", lo=0)
        if not self.distill:
            return
        if self.task == "instance":
            raise _fail("distill", f"is for semantic models; {self.architecture} has none")
        donor = init_card(self.init_weights)
        if donor is None:
            raise _fail(
                "distill",
                "keeps what the init_weights network predicts: set init_weights to a "
                "checkpoint folder or a bundled model name",
            )
        if [c.name for c in donor.classes] != list(self.class_names):
            raise _fail(
                "distill",
                f"needs the classes of init_weights ({', '.join(c.name for c in donor.classes)}), "
                f"got {', '.join(self.class_names)}",
            )
        if tuple(donor.bands) != tuple(self.bands) or tuple(donor.input_range) != tuple(
            self.input_range
        ):
            raise _fail(
                "distill",
                f"needs the bands and input range of init_weights ({', '.join(donor.bands)}; "
                f"{list(donor.input_range)}), got {', '.join(self.bands)}; "
                f"{list(self.input_range)}",
            )

    def _check_split_init(self) -> None:
        """``split_init`` names classes of the run, each split class once, and a warm start."""
        if not self.split_init:
            return
        names = list(self.class_names)
        seen: set[str] = set()
        groups = []
        for parent, children in self.split_init:
            if not isinstance(children, (list, tuple)) or not children:
                raise _fail(f"split_init[{parent}]", "must list the classes it splits into")
            children = tuple(children)
            for name in (parent, *children):
                if name not in names:
                    raise _fail(
                        f"split_init[{parent}]",
                        f"names unknown class {name!r}; classes are {', '.join(names)}",
                    )
            for name in children:
                if name == parent or name in dict(self.split_init):
                    raise _fail(
                        f"split_init[{parent}]",
                        f"class {name!r} is split itself; it cannot also be split off",
                    )
                if name in seen:
                    raise _fail(
                        f"split_init[{parent}]", f"class {name!r} cannot be split from twice"
                    )
                seen.add(name)
            groups.append((parent, children))
        if self.init_weights is None:
            raise _fail(
                "split_init",
                "starts new classes from a warm start's trained ones: set init_weights",
            )
        object.__setattr__(self, "split_init", tuple(groups))

    def _check_normalisation(self) -> None:
        """``mean`` and ``std`` come together, one number per band, std > 0."""
        if (self.mean is None) != (self.std is None):
            raise _fail("mean", "and std go together: give both, or neither")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise _fail(key, f"must be a list of numbers, one per band, got {value!r}")
            if len(value) != len(self.bands):
                raise _fail(
                    key, f"has {len(value)} value(s) but the model reads {len(self.bands)} band(s)"
                )
            nums = tuple(_num(v, key) for v in value)
            if key == "std" and any(v <= 0 for v in nums):
                raise _fail("std", f"must be > 0 for every band, got {list(nums)}")
            object.__setattr__(self, key, nums)

    def _check_classes_and_sources(self) -> None:
        """Classes, bands and each source checked against them; paths become Paths."""
        if not self.sources:
            raise _fail("sources", "must list at least one labelled source")
        if len(self.classes) < 2:
            raise _fail("classes", "must list at least two classes, background first")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise _fail("classes", f"must have unique names, got {names}")
        if not self.bands or not all(isinstance(b, str) and b for b in self.bands):
            raise _fail(
                "bands", f"must list band names like [red, green, blue], got {self.bands!r}"
            )
        checked = []
        for i, src in enumerate(self.sources):
            try:
                checked.append(src.checked(self.classes))
            except ConfigError as exc:
                raise _prefixed(f"sources[{i}]", exc) from exc
            if src.bands is not None and len(src.bands) != len(self.bands):
                raise _fail(
                    f"sources[{i}].bands",
                    f"selects {len(src.bands)} band(s) but the model reads {len(self.bands)} "
                    f"({', '.join(self.bands)})",
                )
        src_names = [s.name for s in checked]
        if len(set(src_names)) != len(src_names):
            raise _fail("sources", f"need unique names, got {src_names}")
        object.__setattr__(self, "sources", tuple(checked))
        object.__setattr__(self, "output", Path(self.output))
        for key in ("encoder_weights", "init_weights"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, Path(getattr(self, key)))

    def _check_instance_sources(self) -> None:
        """An instance model learns objects one by one: from vector labels only."""
        if self.contact_class is not None:
            raise _fail(
                "contact_class",
                f"{self.architecture} separates its objects itself; remove contact_class",
            )
        for i, src in enumerate(self.sources):
            objects = [c for c in src.labelled_classes if c != self.classes[0].name]
            if objects and src.kind != "vector":
                raise _fail(
                    f"sources[{i}].labels",
                    f"are rasters, but {self.architecture} learns {', '.join(objects)} object "
                    "by object: give vector labels (each polygon one object), or leave "
                    "this source out",
                )

    def _check_grid(self) -> None:
        """Chip, tile and overlap sizes fit the architecture's stride; the pixel size."""
        from geoseg.models.registry import architecture_stride

        try:
            stride = architecture_stride(self.architecture, self.encoder, self.arch_params)
        except ModelCardError as exc:
            raise _fail("architecture", f"is invalid: {exc}") from exc
        _int(self.chip_size, "chip_size", lo=stride)
        if self.chip_size % stride:
            raise _fail(
                "chip_size",
                f"must be a multiple of {stride} (the stride of {self.architecture}), "
                f"got {self.chip_size}; try {max(stride, self.chip_size // stride * stride)}",
            )
        if self.pixel_size_m is not None:
            _num(self.pixel_size_m, "pixel_size_m", lo=0)
            if self.pixel_size_m <= 0:
                raise _fail("pixel_size_m", f"must be > 0, got {self.pixel_size_m}")
        tile = self.tile_size
        if tile is None:
            tile = -(-max(512, self.chip_size) // stride) * stride
            object.__setattr__(self, "tile_size", tile)
        _int(tile, "tile_size", lo=stride)
        if tile % stride:
            raise _fail("tile_size", f"must be a multiple of the stride {stride}, got {tile}")
        if self.overlap is None:
            object.__setattr__(self, "overlap", min(64, tile // 4))
        overlap = _int(self.overlap, "overlap", lo=0)
        if overlap >= tile // 2:
            raise _fail("overlap", f"must be < tile_size / 2 = {tile // 2}, got {overlap}")

    @property
    def task(self) -> str:
        """``"semantic"`` or ``"instance"`` (Mask R-CNN), as the architecture is."""
        from geoseg.models.registry import architecture_task

        return architecture_task(self.architecture)

    @property
    def stride(self) -> int:
        """Input size multiple the architecture needs."""
        from geoseg.models.registry import architecture_stride

        return architecture_stride(self.architecture, self.encoder, self.arch_params)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in id order."""
        return tuple(c.name for c in self.classes)

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | None = None) -> TrainConfig:
        """Build from parsed YAML (or JSON); relative paths resolve against ``base_dir``.

        Raises
        ------
        ConfigError
            Naming the offending field.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a training config must be a mapping of fields, got {type(data).__name__}"
            )
        _check_keys(data, cls, "")
        d = _with_inherited(dict(data), base_dir)
        if "sources" not in d or "classes" not in d:
            missing = [k for k in ("sources", "classes") if k not in d]
            raise ConfigError(f"config is missing required field(s) {missing}")
        sources = d.pop("sources")
        if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
            raise _fail("sources", "must be a non-empty list of sources")
        built = []
        for i, s in enumerate(sources):
            try:
                built.append(SourceConfig.from_dict(s, base_dir))
            except ConfigError as exc:
                raise _prefixed(f"sources[{i}]", exc) from exc
            except TypeError as exc:
                raise ConfigError(f"sources[{i}]: {exc}") from exc
        d["sources"] = tuple(built)
        d["classes"] = _parse_classes(d["classes"])
        if "bands" in d:
            d["bands"] = _strs(d["bands"], "bands")
        for key in ("output", "encoder_weights"):
            if d.get(key) is not None:
                d[key] = Path(_resolve(str(d[key]), base_dir))
        for key in ("mean", "std"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        if "input_range" in d:
            rng = d["input_range"]
            if not isinstance(rng, Sequence) or isinstance(rng, str) or len(rng) != 2:
                raise _fail("input_range", f"must be [low, high], got {rng!r}")
            d["input_range"] = tuple(rng)
        if d.get("class_weights") is not None:
            cw = d["class_weights"]
            if not isinstance(cw, Sequence) or isinstance(cw, str):
                raise _fail("class_weights", f"must be a list of numbers, got {cw!r}")
            d["class_weights"] = tuple(cw)
        if "augment" in d:
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        if d.get("split_init") is not None:
            split = d["split_init"]
            if not isinstance(split, Mapping):
                raise _fail(
                    "split_init", f"must map a class to the classes it splits into, got {split!r}"
                )
            d["split_init"] = tuple(
                (str(k), tuple(_strs(v, f"split_init[{k}]"))) for k, v in split.items()
            )
        else:
            d.pop("split_init", None)
        if "validation" in d:
            d["validation"] = ValidationConfig.from_dict(d["validation"])
        if d.get("arch_params") is None:
            d.pop("arch_params", None)
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"training config is malformed: {exc}") from exc

    @classmethod
    def from_yaml(cls, text: str, base_dir: Path | None = None) -> TrainConfig:
        """Parse YAML text (``yaml.safe_load``) into a config.

        Raises
        ------
        ConfigError
            If the text is not valid YAML or a field is invalid.
        """
        from geoseg.settings import load_yaml_mapping

        return cls.from_dict(load_yaml_mapping(text, "training config"), base_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data that :meth:`from_dict` turns back into an equal config."""
        return {
            "name": self.name,
            "classes": _class_data(self.classes),
            "bands": list(self.bands),
            "sources": [s.to_dict() for s in self.sources],
            "output": str(self.output),
            "architecture": self.architecture,
            "encoder": self.encoder,
            "arch_params": dict(self.arch_params),
            "encoder_weights": str(self.encoder_weights) if self.encoder_weights else None,
            "init_weights": str(self.init_weights) if self.init_weights else None,
            "chip_size": self.chip_size,
            "pixel_size_m": self.pixel_size_m,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "input_range": list(self.input_range),
            # mean and std only when set, so that older runs' configs compare equal
            **({"mean": list(self.mean)} if self.mean is not None else {}),
            **({"std": list(self.std)} if self.std is not None else {}),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "samples_per_epoch": self.samples_per_epoch,
            "lr": self.lr,
            # Written only when they differ from the defaults, so that runs started
            # before the keys existed resume with configs that compare equal.
            **({"lr_schedule": self.lr_schedule} if self.lr_schedule != "cosine" else {}),
            **({"warmup": self.warmup} if self.warmup != 0.05 else {}),
            **({"head_lr_scale": self.head_lr_scale} if self.head_lr_scale != 1.0 else {}),
            "weight_decay": self.weight_decay,
            "loss": dict(self.loss),
            "focal_gamma": self.focal_gamma,
            "class_weights": list(self.class_weights) if self.class_weights else None,
            # Only models with a contact output carry these, so that runs started before
            # they existed resume with configs that compare equal.
            **(
                {
                    "contact_class": self.contact_class,
                    "contact_weight": self.contact_weight,
                    "contact_radius": self.contact_radius,
                }
                if self.contact_class is not None
                else {}
            ),
            # distill only when set, so that older runs' configs compare equal
            **({"distill": self.distill} if self.distill else {}),
            # split_init only when set, so that older runs' configs compare equal
            **({"split_init": {k: list(v) for k, v in self.split_init}} if self.split_init else {}),
            "augment": {f.name: getattr(self.augment, f.name) for f in fields(self.augment)},
            # validation.seed only when set, so that older runs' configs compare equal
            "validation": {
                f.name: getattr(self.validation, f.name)
                for f in fields(self.validation)
                if f.name != "seed" or self.validation.seed is not None
            },
            "stats_chips": self.stats_chips,
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
            "threads": self.threads,
            "workers": self.workers,
            "cache": self.cache,
            "resume": self.resume,
            "overwrite": self.overwrite,
            "description": self.description,
            "licence": self.licence,
        }

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``None`` values leave a field as it is)."""
        d = self.to_dict()
        for key, value in changes.items():
            if value is not None:
                d[key] = value
        return TrainConfig.from_dict(d)
