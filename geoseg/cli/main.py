"""Entry point: the click group, error mapping and signal handling."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from geoseg import __version__
from geoseg.cli.flags import cli_message
from geoseg.cli.options import configure_logging
from geoseg.cli.progress import one_line
from geoseg.errors import GeosegError, GeosegWarning, InterruptedRunError, request_stop
from geoseg.runtime import bound_malloc, passive_openmp


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More log output; -v also shows tracebacks.")
@click.option("-q", "--quiet", count=True, help="Less output (no progress bars with -q).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Segment large GeoTIFFs into maps of buildings, vegetation and cropland."""
    configure_logging(verbose, quiet)
    ctx.obj = {"verbose": verbose, "quiet": quiet}


def _register() -> None:
    from geoseg.cli import batch, demo, info, models, predict, qgis, tune, vectorize

    cli.add_command(predict.predict)
    cli.add_command(batch.batch)
    cli.add_command(vectorize.vectorize)
    cli.add_command(models.models)
    cli.add_command(info.info)
    cli.add_command(demo.demo)
    cli.add_command(tune.tune)
    cli.add_command(qgis.qgis_plugin)
    from geoseg.cli import evaluate, train

    cli.add_command(train.train)
    cli.add_command(evaluate.evaluate)
    _name_flags(cli)


def _name_flags(command: click.Command) -> None:
    """Make geoseg errors raised under `command` name its flags, not library parameters.

    See :func:`cli_message`; the exception keeps its type (and its other attributes).
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _name_flags(sub)
    callback = command.callback
    if callback is None or getattr(callback, "_geoseg_flags", False):
        return

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except GeosegError as exc:
            text = str(exc)
            said = cli_message(text, getattr(exc, "field", None), command)
            if said == text:
                raise
            flagged = copy.copy(exc)
            flagged.args = (said,)
            raise flagged from exc

    run._geoseg_flags = True  # type: ignore[attr-defined]
    command.callback = run


_register()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise request_stop(f"stopped by signal {signal.Signals(signum).name}")


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    if issubclass(category, GeosegWarning):
        click.echo(f"geoseg: warning: {message}", err=True)
    else:
        click.echo(f"warning: {category.__name__}: {message}", err=True)


@contextlib.contextmanager
def _native_stderr_to(log_path: str | None) -> Iterator[None]:
    """Send what C libraries print on fd 2 (libtiff, GDAL) to a file, not the terminal.

    Python's ``sys.stderr`` keeps the real terminal through a duplicate of fd 2,
    so progress bars and geoseg's own one-line messages still show.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stderr


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map geoseg errors to one line and a non-zero exit."""
    args = argv if argv is not None else sys.argv[1:]
    verbose = any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in args)
    bound_malloc()
    passive_openmp()
    signal.signal(signal.SIGTERM, _on_sigterm)
    warnings.showwarning = _show_warning
    try:
        if verbose:
            cli.main(args=argv, prog_name="geoseg", standalone_mode=False)
        else:
            with _native_stderr_to(os.environ.get("GEOSEG_NATIVE_LOG")):
                cli.main(args=argv, prog_name="geoseg", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (and so our SIGTERM error) into Abort.
        if isinstance(exc.__cause__, InterruptedRunError):
            click.echo(
                f"geoseg: interrupted ({exc.__cause__}); no output was written under the final name",
                err=True,
            )
            sys.exit(143)
        click.echo("geoseg: interrupted; no output was written under the final name", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except InterruptedRunError as exc:
        click.echo(
            f"geoseg: interrupted ({exc}); no output was written under the final name", err=True
        )
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("geoseg: interrupted; no output was written under the final name", err=True)
        sys.exit(130)
    except GeosegError as exc:
        if verbose:
            traceback.print_exc()
        # One line, whatever a library below put in the message, as --progress json says it.
        click.echo(f"geoseg: error: {one_line(exc)}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("geoseg: error: out of memory; try a smaller --tile or --batch-size", err=True)
        sys.exit(1)
