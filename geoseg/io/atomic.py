"""All-or-nothing output files.

Every geoseg writer builds its output under a hidden temporary name in the
destination directory and renames it onto the final name only once the file is
complete, so a crash, a full disk or Ctrl-C leaves either nothing or the
complete previous file under the final name, never a truncated one.  The
temporary file sits in the same directory so the final :func:`os.replace` is a
rename within one filesystem, which POSIX makes atomic.

GDAL drivers keep state in files next to a dataset (SQLite journals, PAM
``.aux.xml``, external overviews and masks); they are cleaned up with the
temporary file, moved with it on success, and stale ones left by a replaced
output are removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geoseg.errors import OutputExistsError, OutputWriteError, raise_if_stop_requested

__all__ = [
    "SIDECAR_SUFFIXES",
    "atomic_output",
    "check_output_path",
    "output_lock",
    "probe_writable",
    "remove_with_sidecars",
]

#: Files GDAL and SQLite may keep next to a dataset, as suffixes of its name.
SIDECAR_SUFFIXES: tuple[str, ...] = ("-journal", "-wal", "-shm", ".aux.xml", ".ovr", ".msk")

# Sidecars that describe a finished file and so move with it; journals and WAL
# files belong to an open connection and are never carried over.
_CARRIED_SIDECARS: tuple[str, ...] = (".aux.xml", ".ovr", ".msk")

# EFBIG: a file size limit (ulimit -f, filesystem maximum) stops a write just as a full disk does.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})

# How GDAL and SQLite word a full disk in the messages of the exceptions that
# pyogrio and rasterio raise (they carry no errno).
_DISK_FULL_MESSAGES = (
    "no space left on device",
    "database or disk is full",
    "disk quota exceeded",
    "file too large",
)


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that `path` can be (re)written, before any work starts.

    Parameters
    ----------
    path : str or os.PathLike
        The final output file.
    overwrite : bool
        Whether an existing file at `path` may be replaced.

    Returns
    -------
    pathlib.Path
        `path` as an absolute :class:`~pathlib.Path`.

    Raises
    ------
    OutputExistsError
        `path` exists and `overwrite` is false.
    OutputWriteError
        `path` is a directory, its parent directory is missing or not a
        directory, or the directory is not writable (checked with
        :func:`os.access` and by creating and removing a probe file, which also
        catches read-only mounts and ACLs that ``os.access`` misses).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     check_output_path(Path(d) / "out.gpkg", overwrite=False).name
    'out.gpkg'
    """
    target = Path(os.path.abspath(os.fspath(path)))
    parent = target.parent
    if target.is_dir():
        raise OutputWriteError(f"output {target} is a directory; choose a file name")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputExistsError(f"output {target} exists; pass overwrite=True to replace it")
    if not parent.exists():
        raise OutputWriteError(
            f"output directory {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if not parent.is_dir():
        raise OutputWriteError(f"output directory {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputWriteError(
            f"output directory {parent} is not writable; fix its permissions "
            "or choose another output directory"
        )
    probe_writable(parent)
    return target


def probe_writable(directory: Path) -> None:
    """Create and remove a file in `directory`, raising OutputWriteError if that fails."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".geoseg-probe-")
    except OSError as exc:
        raise OutputWriteError(
            f"output directory {directory} is not writable ({exc.strerror or exc}); "
            "fix its permissions or choose another output directory"
        ) from exc
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


# Locks this process holds: path -> (fd, depth).  flock locks belong to an open file
# description, so a second open of the same lock file in this process would conflict
# with the first; nested holders (predict -> its vector writer) share one.
_HELD: dict[Path, tuple[int | None, int]] = {}
_HELD_GUARD = threading.Lock()


def _lock_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.geoseg-lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the right to write ``path`` for the body; another run that wants it fails at once.

    Two runs writing the same output at once would otherwise both succeed and
    leave the files of one beside the files of the other (``x_classes.tif``
    from one, ``x.gpkg`` from the other).  The lock is an ``flock`` on a
    hidden ``.<name>.geoseg-lock`` file next to the output, removed on release;
    a crashed holder's lock dies with its process.  Re-entrant within a
    process.  Local filesystems only (NFS gives flock no cross-host meaning
    on some setups).

    Raises
    ------
    OutputWriteError
        Another process holds the lock.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with output_lock(Path(d) / "out.gpkg"), output_lock(Path(d) / "out.gpkg"):
    ...         pass
    ...     sorted(p.name for p in Path(d).iterdir())
    []
    """
    import fcntl

    target = Path(os.path.abspath(os.fspath(path)))
    with _HELD_GUARD:
        if target in _HELD:
            fd, depth = _HELD[target]
            _HELD[target] = (fd, depth + 1)
        else:
            _HELD[target] = (_acquire(target, fcntl), 1)
    try:
        yield target
    finally:
        with _HELD_GUARD:
            held, depth = _HELD[target]
            if depth > 1:
                _HELD[target] = (held, depth - 1)
            else:
                del _HELD[target]
                if held is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(_lock_name(target))
                    os.close(held)  # releases the flock


def _acquire(target: Path, fcntl: Any) -> int | None:
    """Open and flock the lock file of ``target``; fail at once when someone else holds it.

    None where no lock file can be made (a missing or read-only directory):
    :func:`check_output_path` then says what is wrong.
    """
    lock = _lock_name(target)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # No locking on this filesystem (an NFS mount with nolock, some FUSE
                # filesystems): write without the guard rather than refuse to write.
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                return None
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise OutputWriteError(
                f"another geoseg run{holder} is writing {target} now; wait for it to finish "
                "or choose another output"
            ) from None
        # The holder before us may have removed the file between our open and our lock:
        # then the lock is on an unlinked inode, and we start again.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            # The holder's pid is for the message of a run that finds the lock taken;
            # a full disk may refuse it, and the lock holds without it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)


def _temporary_sibling(target: Path) -> Path:
    """A free hidden name next to `target` that keeps its extension.

    GDAL picks drivers by extension, so ``scene.gpkg`` becomes
    ``.scene.geoseg-tmp-1a2b3c4d.gpkg``.
    """
    suffix = target.suffix
    stem = target.name[: -len(suffix)] if suffix else target.name
    while True:
        candidate = target.with_name(f".{stem}.geoseg-tmp-{secrets.token_hex(4)}{suffix}")
        if not any(Path(f"{candidate}{s}").exists() for s in ("", *SIDECAR_SUFFIXES)):
            return candidate


def remove_with_sidecars(path: str | os.PathLike[str]) -> None:
    """Remove `path` and the GDAL/SQLite side files next to it, if present.

    Parameters
    ----------
    path : str or os.PathLike
        A file (or a name that may not exist).  Each name in
        ``path`` + :data:`SIDECAR_SUFFIXES` is removed too; missing ones are
        ignored.
    """
    base = os.fspath(path)
    for name in (base, *(base + s for s in SIDECAR_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


#: Free space under which a failed write is taken for a full disk whatever GDAL said (a
#: GeoPackage that could not grow can fail with a message about missing tables).
_NEARLY_FULL_BYTES = 1 << 20


def is_disk_full(exc: BaseException, directory: str | os.PathLike[str] | None = None) -> bool:
    """Whether `exc` (or an exception it was raised from) comes from a full disk.

    Known by errno, by GDAL's and SQLite's wording, or, with `directory`, by
    less than 1 MiB left on the filesystem that holds it.
    """
    if directory is not None:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(directory).free < _NEARLY_FULL_BYTES:
                return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(m in str(current).lower() for m in _DISK_FULL_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush `path` to stable storage; best effort for directories."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Write a file under a temporary name and rename it onto `path` on success.

    The checks of :func:`check_output_path` run first, before anything is
    created.  The body receives a temporary path in the same directory (a
    hidden name that keeps the extension, so GDAL picks the same driver) that
    does not exist yet; the body must create it.  When the body returns, the
    file is flushed to disk and renamed onto `path` with :func:`os.replace`.
    If the body raises anything, KeyboardInterrupt included, the temporary
    file and its side files are removed and the exception propagates (a full
    disk, recognised by errno or by GDAL's and SQLite's wording, becomes an
    :class:`~geoseg.errors.OutputWriteError` that says so); `path` then holds
    nothing or the untouched previous file.

    Parameters
    ----------
    path : str or os.PathLike
        The final output file.
    overwrite : bool
        Whether an existing file at `path` may be replaced.

    Yields
    ------
    pathlib.Path
        The temporary path to write to.

    Raises
    ------
    OutputExistsError
        `path` exists and `overwrite` is false.
    OutputWriteError
        The directory is missing or not writable, the disk filled up while
        writing, the body did not create the temporary file, or the final
        rename failed.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with atomic_output(Path(d) / "out.txt", overwrite=False) as tmp:
    ...         _ = tmp.write_text("done")
    ...     sorted(p.name for p in Path(d).iterdir())
    ['out.txt']
    """
    with output_lock(path):
        target = check_output_path(path, overwrite=overwrite)
        with _replace_on_success(target) as tmp:
            yield tmp


@contextlib.contextmanager
def _replace_on_success(target: Path) -> Iterator[Path]:
    tmp = _temporary_sibling(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputWriteError(f"writing {target} produced no file (expected {tmp.name})")
        _fsync_path(tmp)
        # A SIGTERM whose exception was lost on the way (see geoseg.errors) still stops
        # the run here, before the previous file is replaced.
        raise_if_stop_requested()
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputWriteError(
                f"could not move the finished {tmp.name} onto {target}: {exc.strerror or exc}"
            ) from exc
    except BaseException as exc:
        remove_with_sidecars(tmp)
        if isinstance(exc, Exception) and is_disk_full(exc, target.parent):
            raise OutputWriteError(
                f"disk full (or file size limit reached) while writing {target}; free space on "
                f"the disk holding {target.parent} or choose another output directory"
            ) from exc
        raise
    for suffix in SIDECAR_SUFFIXES:
        produced = Path(f"{tmp}{suffix}")
        stale = Path(f"{target}{suffix}")
        if suffix in _CARRIED_SIDECARS and produced.exists():
            os.replace(produced, stale)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(produced)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
    _fsync_path(target.parent, directory=True)
