"""Build configuration dataclasses from mappings (YAML, JSON, dicts), naming bad fields.

Every options class of the public API (:class:`~geoseg.pipeline.PredictConfig`,
:class:`~geoseg.pipeline.VectorizeConfig`, :class:`~geoseg.evaluate.EvalConfig`)
reads its settings through :func:`from_mapping`: unknown keys are refused with the
closest known name, values are converted to the field's type (a YAML list becomes a
tuple, a string a :class:`~pathlib.Path`), and every error names the offending
field as ``section.field`` and carries it in :attr:`ConfigError.field
<geoseg.errors.ConfigError.field>`, so that the command line can name its flag
instead.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Opts:
...     tile: int | None = None
...     bands: tuple[int, ...] | None = None
>>> from_mapping(Opts, {"tile": 256, "bands": [3, 2, 1]}, section="predict")
Opts(tile=256, bands=(3, 2, 1))
>>> from_mapping(Opts, {"tlie": 256}, section="predict")
Traceback (most recent call last):
...
geoseg.errors.ConfigError: predict: unknown setting 'tlie' (did you mean 'tile'?); known: bands, tile
>>> from_mapping(Opts, {"tile": "big"}, section="predict")
Traceback (most recent call last):
...
geoseg.errors.ConfigError: predict.tile must be an integer, got 'big'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from geoseg.errors import ConfigError

__all__ = ["from_mapping", "load_yaml_mapping"]

T = TypeVar("T")

_NONE = type(None)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path"
    if origin is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, field: str) -> Any:
    """`value` as type `tp` (a dataclass field's resolved annotation)."""

    def bad() -> ConfigError:
        return ConfigError(f"{where} must be {_describe(tp)}, got {value!r}", field=field)

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        inner = [a for a in args if a is not _NONE]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, field)
        for a in inner:
            try:
                return _coerce(value, a, where, field)
            except ConfigError:
                continue
        raise ConfigError(
            f"{where} must be {' or '.join(_describe(a) for a in inner)}, got {value!r}",
            field=field,
        )
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}", field=field)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise bad()
        return Path(value)
    if origin is tuple:
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
            raise bad()
        items = list(value)
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]", field) for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(
                f"{where} must be a list of {len(args)} values, got {value!r}", field=field
            )
        return tuple(
            _coerce(v, a, f"{where}[{i}]", field)
            for i, (v, a) in enumerate(zip(items, args, strict=True))
        )
    return value


def from_mapping(
    cls: type[T],
    data: Any,
    *,
    section: str,
    exclude: Iterable[str] = (),
    convert: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> T:
    """Build dataclass `cls` from the mapping `data`, naming any bad field.

    Parameters
    ----------
    cls : dataclass type
        The options class; its fields' annotations decide the conversions.
    data : mapping or None
        Settings by field name (None: all defaults).
    section : str
        What the settings are called in messages, e.g. ``"predict"``.
    exclude : iterable of str, optional
        Fields that may not be set from a mapping (set by code only).
    convert : mapping, optional
        Field name -> ``convert(value, where)`` for fields whose values need more
        than a type conversion (nested options); it raises ConfigError itself.

    Returns
    -------
    cls
        The options; the class's own checks (``__post_init__``) ran, and their
        errors name ``section.field``.

    Raises
    ------
    ConfigError
        Not a mapping, an unknown key (with the closest known one), a value of the
        wrong type, or a value the class refuses.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{section} must be a mapping of settings, got {type(data).__name__}", field=section
        )
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip)  # type: ignore[arg-type]
    kw: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{section}: unknown setting {name!r}{hint}; known: {', '.join(known)}",
                field=name,
            )
        where = f"{section}.{name}"
        if convert and name in convert:
            kw[name] = convert[name](value, where)
        else:
            kw[name] = _coerce(value, hints[name], where, name)
    try:
        return cls(**kw)
    except ConfigError as exc:
        field = exc.field
        if field and field in known and not str(exc).startswith(f"{section}."):
            text = str(exc)
            if text.startswith(field):
                text = text[len(field) :]
                raise ConfigError(f"{section}.{field}{text}", field=field) from exc
        raise


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse a YAML settings file called `what` in messages (one line on failure)."""
    from geoseg.errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from exc
    return load_yaml_mapping(text, what)


def load_yaml_mapping(text: str, what: str) -> Any:
    """Parse YAML `text` (a settings file called `what` in messages)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} is not valid YAML{at}: {problem}") from exc
