"""Shared click options and the error/verbosity plumbing of every command."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


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


def configure_logging(verbose: int, quiet: int) -> None:
    """Map -v/-q counts to log levels (only the CLI touches logging configuration)."""
    level = logging.WARNING - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
