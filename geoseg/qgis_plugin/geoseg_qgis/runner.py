"""Run geoseg as a program and follow its ``--progress json`` lines.

No QGIS imports here: QGIS's Python is not geoseg's, so the plugin runs the
``geoseg`` of the user's own environment in a subprocess and reads one JSON
object per stderr line: ``{"stage": "predict", "done": 12, "total": 40}``,
then ``{"stage": "done"}`` or ``{"error": "one-line message"}``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

#: Written by ``geoseg qgis-plugin --install``: the command of the geoseg that installed us.
COMMAND_FILE = Path(__file__).with_name("geoseg_command.json")

# QGIS sets these for its own Python, GDAL and PROJ (PYTHONHOME on Windows and
# macOS); inherited, they would make geoseg's Python and its rasterio wheels
# load QGIS's modules and data files instead of their own.
_QGIS_ONLY_VARIABLES = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)

ProgressFn = Callable[[str, int, int], None]


class GeosegRunError(Exception):
    """geoseg could not be run or stopped with an error; the message is one line."""


class GeosegCancelled(GeosegRunError):
    """The run was cancelled; geoseg was stopped and nothing is left under the output names."""


def geoseg_command(configured: str | None = None) -> list[str]:
    """The command that runs geoseg.

    In this order: `configured` (the provider's setting), ``$GEOSEG_EXECUTABLE``,
    the geoseg that installed the plugin (``geoseg qgis-plugin --install``), and
    ``geoseg`` on the PATH.

    Raises
    ------
    GeosegRunError
        None of them is there.
    """
    explicit = (configured or "").strip() or os.environ.get("GEOSEG_EXECUTABLE", "").strip()
    if explicit:
        return [explicit]
    if COMMAND_FILE.is_file():
        recorded = json.loads(COMMAND_FILE.read_text(encoding="utf-8"))
        if Path(recorded[0]).is_file():
            return [str(part) for part in recorded]
    found = shutil.which("geoseg")
    if found:
        return [found]
    raise GeosegRunError(
        "geoseg not found: set its path in Processing > Options > Providers > geoseg > "
        "geoseg executable, or run 'geoseg qgis-plugin --install --overwrite' from geoseg's "
        "environment"
    )


def bundled_models(command: Sequence[str]) -> list[str]:
    """Names of the models bundled with geoseg (``geoseg models --json``).

    ``["default"]`` when that geoseg cannot list them: every geoseg bundles ``default``.
    """
    try:
        proc = subprocess.run(
            [*command, "models", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
            check=False,
            **_own_process_group(),
        )
        names = sorted(json.loads(proc.stdout)["bundled"]) if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        names = []
    return names or ["default"]


def run_geoseg(
    command: Sequence[str],
    args: Sequence[str],
    *,
    outputs: Iterable[str | os.PathLike[str]],
    on_progress: ProgressFn,
    on_message: Callable[[str], None],
    is_cancelled: Callable[[], bool],
    stop_timeout_s: float = 30.0,
) -> None:
    """Run ``command args --progress json`` and report what it does until it ends.

    Parameters
    ----------
    command : sequence of str
        How to start geoseg (:func:`geoseg_command`).
    args : sequence of str
        The subcommand and its arguments, e.g. ``["predict", "in.tif", "-o", "out.gpkg"]``.
    outputs : iterable of path
        The files the run writes.  On failure or cancel, any of them that this run
        created or replaced is removed, and so are geoseg's hidden temporary files
        for them: geoseg's writes are all-or-nothing per file, but ``predict`` to a
        GeoPackage renames the class raster into place before it vectorizes, and a
        geoseg that crashes on SIGTERM leaves its temporary files behind.
    on_progress : callable
        ``on_progress(stage, done, total)`` for each progress line.
    on_message : callable
        Every other line geoseg prints (its summary, warnings).
    is_cancelled : callable
        Polled about ten times a second; when it returns true geoseg and its worker
        processes get SIGTERM (and SIGKILL after `stop_timeout_s`).

    Raises
    ------
    GeosegCancelled
        `is_cancelled` returned true.
    GeosegRunError
        geoseg could not start or exited with an error; the message is geoseg's own
        one-line message.
    """
    paths = [Path(p) for p in outputs]
    before = {p: _identity(p) for p in paths}
    try:
        proc = subprocess.Popen(
            [*command, *args, "--progress", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=_environment(),
            **_own_process_group(),
        )
    except OSError as exc:
        raise GeosegRunError(
            f"cannot run {command[0]} ({exc.strerror or exc}); set the geoseg executable in "
            "Processing > Options > Providers > geoseg"
        ) from exc
    with proc:
        try:
            error = _follow(proc, on_progress, on_message, is_cancelled, stop_timeout_s)
        except GeosegCancelled:
            _clean_up(paths, before)
            raise
    if proc.returncode != 0:
        _clean_up(paths, before)
        raise GeosegRunError(error or f"geoseg exited with status {proc.returncode}")


def _follow(
    proc: subprocess.Popen[str],
    on_progress: ProgressFn,
    on_message: Callable[[str], None],
    is_cancelled: Callable[[], bool],
    stop_timeout_s: float,
) -> str | None:
    """Pass on geoseg's lines until it ends; return its error message, if any.

    Whatever stops the loop early (a cancel, a failing callback) stops geoseg too.
    """
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_read_lines, args=(stream, name, lines), daemon=True)
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
    ]
    for reader in readers:
        reader.start()
    try:
        return _pass_on(lines, len(readers), on_progress, on_message, is_cancelled)
    finally:
        if proc.poll() is None:
            _stop(proc, stop_timeout_s)
        for reader in readers:
            reader.join()


def _pass_on(
    lines: queue.Queue[tuple[str, str | None]],
    open_streams: int,
    on_progress: ProgressFn,
    on_message: Callable[[str], None],
    is_cancelled: Callable[[], bool],
) -> str | None:
    error: str | None = None
    last_stderr: str | None = None
    while open_streams:
        if is_cancelled():
            raise GeosegCancelled(
                "cancelled: geoseg was stopped and nothing was written under the output names"
            )
        try:
            name, line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        event = _event(line) if name == "stderr" else None
        if event is None:
            text = line.rstrip()
            # geoseg repeats its error as "geoseg: error: ..." after the JSON line.
            if text and not (error and text.endswith(error)):
                on_message(text)
                if name == "stderr":
                    last_stderr = text
        elif "error" in event:
            error = str(event["error"])
        elif "total" in event:
            on_progress(str(event["stage"]), int(event["done"]), int(event["total"]))
    return error or last_stderr


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _QGIS_ONLY_VARIABLES}


def _own_process_group() -> dict[str, Any]:
    """Popen options: geoseg and its worker processes in a group of their own, no console window."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _read_lines(stream: IO[str], name: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    for line in stream:
        lines.put((name, line))
    lines.put((name, None))


def _event(line: str) -> dict[str, Any] | None:
    """A progress object of ``--progress json``, or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and ("stage" in obj or "error" in obj) else None


def _stop(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """Stop geoseg and its worker processes: SIGTERM, then SIGKILL if they do not end.

    On SIGTERM geoseg removes its temporary files.  Windows has no SIGTERM:
    there the process is terminated at once.
    """
    _signal_group(proc, kill=False)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc, kill=True)
        proc.wait()


def _signal_group(proc: subprocess.Popen[str], *, kill: bool) -> None:
    if sys.platform == "win32":
        proc.kill() if kill else proc.terminate()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _clean_up(paths: list[Path], before: dict[Path, tuple[int, int, int] | None]) -> None:
    """Remove the outputs this run created or replaced, and geoseg's temporaries for them."""
    for path in paths:
        if _identity(path) != before[path]:
            path.unlink(missing_ok=True)
        # geoseg's names: .NAME.geoseg-tmp-XXXX.EXT, .NAME.geoseg-part-XXXX.tif, + sidecars.
        for temporary in path.parent.glob(f".{glob.escape(path.stem)}.geoseg-*"):
            temporary.unlink(missing_ok=True)
