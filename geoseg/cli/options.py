"""Shared click options and the error/verbosity plumbing of every command."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from geoseg.cli.progress import PROGRESS_MODES, reported_outcome
from geoseg.errors import DeprecatedOptionWarning

F = TypeVar("F", bound=Callable[..., Any])


def renamed_opt(new: str, old: str, dest: str, *, help: str, **kwargs: Any) -> Callable[[F], F]:
    """Option ``new`` (stored as ``dest``) that still accepts its old name ``old``.

    ``old`` is hidden from ``--help``; using it works as before and prints one
    deprecation warning naming the new spelling.  One option name then keeps one
    meaning across commands (``--workers`` is the batch cluster's worker processes).
    """

    def keep_alias(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        # The alias may have been processed first (it came first on the command line).
        return value if value is not None else ctx.params.get(dest)

    def alias(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None:
            return
        name = ctx.command_path
        warnings.warn(
            f"{old} of '{name}' is now {new}; the old name will be removed in a later release",
            DeprecatedOptionWarning,
            stacklevel=2,
        )
        ctx.params[dest] = value

    def decorate(f: F) -> F:
        f = click.option(old, hidden=True, expose_value=False, callback=alias, **kwargs)(f)
        return click.option(new, dest, help=help, callback=keep_alias, **kwargs)(f)

    return decorate


def bands_opt(f: F) -> F:
    """``--bands 3,2,1``: 1-based raster band numbers in the model's band order."""
    return click.option(
        "--bands", default=None, help="1-based raster bands in the model's order, e.g. 3,2,1."
    )(f)


def threads_opt(f: F) -> F:
    """``--threads``: CPU threads for the network."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads for the network [default: all].",
    )(f)


def overwrite_opt(f: F) -> F:
    """``--overwrite``: required before an existing output is replaced."""
    return click.option(
        "--overwrite", is_flag=True, default=False, help="Replace outputs that already exist."
    )(f)


def model_opt(f: F) -> F:
    """``--model``: a bundled model name or a checkpoint directory."""
    return click.option(
        "--model",
        "-m",
        default="default",
        show_default=True,
        help="Bundled model name or checkpoint directory (model.safetensors + model_card.json).",
    )(f)


def device_opt(f: F) -> F:
    """``--device``."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
    )(f)


def precision_opt(f: F) -> F:
    """``--precision``: the float32 graph, the checkpoint's int8 graph, or auto."""
    return click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "int8"]),
        default=None,
        help="Network precision on the CPU (ONNX Runtime): int8 runs the checkpoint's "
        "quantized graph (geoseg models quantize); auto does only when its accuracy check "
        "passed [default: auto].",
    )(f)


def tta_opt(f: F) -> F:
    """``--tta``: test-time augmentation (``flips``: 4 passes, ``d4``: 8 passes per tile)."""
    return click.option(
        "--tta",
        type=click.Choice(["none", "flips", "d4"]),
        default=None,
        help="Test-time augmentation: average the tile turned and flipped (flips: 4 passes, "
        "d4: 8) [default: none].",
    )(f)


def separate_opt(f: F) -> F:
    """``--separate/--no-separate``: use a model's contact output to cut touching buildings apart."""
    return click.option(
        "--separate/--no-separate",
        default=True,
        show_default=True,
        help="With a model that has a contact output (geoseg models lists it): carve the "
        "pixels where two buildings meet, so touching buildings become separate polygons. "
        "No effect on other models.",
    )(f)


def progress_opt(f: F) -> F:
    """``--progress bar|json``; with ``json`` the command also ends with a done or error line.

    The command receives the mode as its ``progress`` argument (for
    :func:`geoseg.cli.progress.stage_progress`).
    """

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        with reported_outcome(kwargs["progress"]):
            return f(*args, **kwargs)

    option = click.option(
        "--progress",
        type=click.Choice(PROGRESS_MODES),
        default="bar",
        show_default=True,
        help="Progress as bars, or as JSON lines on stderr for programs that run geoseg: "
        '{"stage": "predict", "done": 12, "total": 40}, then {"stage": "done"} or '
        '{"error": "message"}.',
    )
    return cast(F, option(run))


def cleanup_opts(f: F) -> F:
    """``--config`` (clean-up YAML per class) and ``--dst-crs`` for vector outputs."""
    f = click.option(
        "--dst-crs",
        default=None,
        help="Write polygons in this CRS, e.g. EPSG:4326 (vector outputs).",
    )(f)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML of clean-up settings per class name (vector outputs).",
    )(f)


def class_groups(items: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``("background=road,water", ...)`` as ``{"background": ["road", "water"]}``.

    Raises
    ------
    click.BadParameter
        Naming ``option`` when an item is not ``CLASS=CLASS,CLASS``.
    """
    groups: dict[str, list[str]] = {}
    for item in items:
        keep, sep, rest = item.partition("=")
        others = [n.strip() for n in rest.split(",") if n.strip()]
        if not sep or not keep.strip() or not others:
            raise click.BadParameter(
                f"{item!r}: give CLASS=CLASS,CLASS, e.g. background=road,water", param_hint=option
            )
        groups.setdefault(keep.strip(), []).extend(others)
    return groups


def configure_logging(verbose: int, quiet: int) -> None:
    """Map -v/-q counts to log levels (only the CLI touches logging configuration)."""
    level = logging.WARNING - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
