"""The geoseg exception tree.

Every error geoseg raises on purpose derives from :class:`GeosegError`, and
concrete classes also inherit the builtin a caller would expect, so
``except OSError`` still catches an unreadable raster.  Messages name what
failed, the offending value and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations

from typing import Any


class GeosegError(Exception):
    """Root of every error raised deliberately by geoseg."""


class GeosegWarning(UserWarning):
    """Root of geoseg warnings (all-nodata inputs, dtype mismatches, ...)."""


class DeprecatedOptionWarning(GeosegWarning, FutureWarning):
    """A command-line option was renamed; the old spelling still works for now."""


class RasterReadError(GeosegError, OSError):
    """A raster is missing, unreadable, corrupt or not a raster at all."""


class GeoreferenceError(GeosegError, ValueError):
    """A raster lacks a CRS or has georeferencing geoseg cannot honour."""


class BandError(GeosegError, ValueError):
    """The raster's bands do not match what the model expects."""


class OutputExistsError(GeosegError, FileExistsError):
    """An output already exists and ``overwrite`` was not given."""


class OutputWriteError(GeosegError, OSError):
    """An output could not be written (unwritable directory, disk full, ...)."""


class ConfigError(GeosegError, ValueError):
    """An option or configuration value is invalid.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it, naming the parameter (``tile must be
        positive, got 0``).
    field : str, optional
        The parameter's name; the command line uses it to name its flag instead
        (``--tile must be positive, got 0``).
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:  # keeps `field` across processes (dask)
        return (_config_error, (str(self), self.field))


def _config_error(message: str, field: str | None) -> ConfigError:
    return ConfigError(message, field=field)


class ModelCardError(GeosegError, ValueError):
    """A model card is missing fields, malformed or inconsistent."""


class CheckpointError(GeosegError, ValueError):
    """A checkpoint cannot be loaded safely (wrong format, pickle, mismatch)."""


class InterruptedRunError(GeosegError, KeyboardInterrupt):
    """A run was stopped by SIGINT/SIGTERM; no partial output was kept."""


# Why the process was asked to stop (a signal's name), once it was.  An exception raised by
# a signal handler can be lost: Python prints and drops one raised while a ``__del__`` or
# a weakref callback runs, and a worker thread never sees it.  Writers check this before
# they put a finished file under its final name, so a stopped run replaces nothing.
_stop_reason: str | None = None


def request_stop(reason: str) -> InterruptedRunError:
    """Record that this process was asked to stop; return the error to raise.

    Examples
    --------
    >>> err = request_stop("stopped by signal SIGTERM")
    >>> stop_requested()
    'stopped by signal SIGTERM'
    >>> clear_stop_request()
    """
    global _stop_reason
    _stop_reason = reason
    return InterruptedRunError(reason)


def stop_requested() -> str | None:
    """The reason given to :func:`request_stop`, or None while no stop was asked for."""
    return _stop_reason


def raise_if_stop_requested() -> None:
    """Raise :class:`InterruptedRunError` if this process was asked to stop."""
    if _stop_reason is not None:
        raise InterruptedRunError(_stop_reason)


def clear_stop_request() -> None:
    """Forget an earlier stop request (a library caller that handled it, tests)."""
    global _stop_reason
    _stop_reason = None


class BatchError(GeosegError, RuntimeError):
    """Some regions of a batch failed after their retries (the others finished)."""


class MissingExtraError(GeosegError, ImportError):
    """A feature needs an optional part of geoseg that is not installed (``geoseg[train]``, ...)."""


class AllNodataWarning(GeosegWarning):
    """The input holds no valid pixel; outputs are valid but empty."""
