"""Progress output: only the CLI draws it; the library reports through callbacks.

Two forms: a tqdm bar for people (``--progress bar``, the default) and JSON
lines on stderr for programs that run geoseg, such as the QGIS plugin
(``--progress json``)::

    {"stage": "predict", "done": 12, "total": 40}
    {"stage": "vectorize", "done": 512, "total": 2048}
    {"stage": "done"}                               # or: {"error": "one-line message"}
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click
from tqdm import tqdm

from geoseg.cli.flags import cli_message
from geoseg.errors import GeosegError

#: Values of ``--progress``.
PROGRESS_MODES = ("bar", "json")

# A stage sends at most about this many JSON lines, however many tiles or rows it has.
_JSON_STEPS = 1000


class TileProgress:
    """A tqdm bar driven by ``update(done, total)`` callbacks."""

    def __init__(self, desc: str, *, disable: bool = False, unit: str = "tile") -> None:
        self._bar: Any = None
        self._desc = desc
        self._disable = disable
        self._unit = unit

    def update(self, done: int, total: int) -> None:
        if self._disable:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                desc=self._desc,
                unit=self._unit,
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )
        self._bar.n = done
        self._bar.refresh()

    def __enter__(self) -> TileProgress:
        return self

    def close(self) -> None:
        """Close the bar (again: no-op); a later update would open a new one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def emit_json(obj: dict[str, Any]) -> None:
    """Write one JSON object as one line on stderr (flushed: a reader sees it at once)."""
    click.echo(json.dumps(obj), err=True)


class JsonProgress:
    """``update(done, total)`` callbacks as ``{"stage", "done", "total"}`` lines on stderr.

    Within a stage ``done`` only grows; lines that would not move it by a
    thousandth of ``total`` are left out, except the last (``done == total``).
    """

    def __init__(self, stage: str) -> None:
        self._stage = stage
        self._sent: int | None = None

    def update(self, done: int, total: int) -> None:
        if self._sent is not None and (
            done <= self._sent or (done < total and _step(done, total) == _step(self._sent, total))
        ):
            return
        self._sent = done
        emit_json({"stage": self._stage, "done": done, "total": total})

    def close(self) -> None:
        """Nothing to close (for symmetry with :class:`TileProgress`)."""

    def __enter__(self) -> JsonProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _step(done: int, total: int) -> int:
    return done * _JSON_STEPS // total if total > 0 else done


def stage_progress(
    stage: str, mode: str, *, disable: bool = False, unit: str = "tile"
) -> TileProgress | JsonProgress:
    """The progress of one stage in the form ``--progress`` asked for (``bar`` or ``json``)."""
    if mode == "json":
        return JsonProgress(stage)
    return TileProgress(stage, disable=disable, unit=unit)


def one_line(exc: BaseException) -> str:
    """The message ``geoseg`` prints for `exc`, on one line, without the ``geoseg:`` prefix."""
    if isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
        why = f" ({exc})" if isinstance(exc, GeosegError) else ""
        return f"interrupted{why}; no output was written under the final name"
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
    elif isinstance(exc, GeosegError):
        # Flags, not parameter names, as in the final error line (geoseg.cli.flags).
        ctx = click.get_current_context(silent=True)
        field = getattr(exc, "field", None)
        text = str(exc) if ctx is None else cli_message(str(exc), field, ctx.command)
    elif isinstance(exc, MemoryError):
        text = "out of memory; try a smaller --tile or --batch-size"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


@contextlib.contextmanager
def reported_outcome(mode: str) -> Iterator[None]:
    """With ``mode == "json"``, end with ``{"stage": "done"}`` or ``{"error": message}``.

    The exception still propagates, so the exit status and the plain
    ``geoseg: error:`` line stay as they are without ``--progress json``.
    """
    if mode != "json":
        yield
        return
    try:
        yield
    except BaseException as exc:
        emit_json({"error": one_line(exc)})
        raise
    emit_json({"stage": "done"})
