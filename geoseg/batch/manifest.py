"""The manifest of a batch run: one JSON line per finished region, in ``out/manifest.jsonl``.

Only the process driving the batch (the dask client) writes the manifest, so
its lines never interleave; workers report attempts to a side log,
``out/attempts.jsonl``, one line per task start.  While a run is going the
manifest is an append-only log (a crash loses at most the line being
written, which readers skip); at the end of every run, interrupted or not, it
is compacted atomically to exactly one final record per region of the plan,
plus the run header and the last merge record.

Lines are JSON objects with a ``kind``:

``batch``
    Run header: ``run`` id, ``format``, ``geoseg`` version, ``mode``, ``model``
    and ``model_sha256``, ``regions`` count, ``time``.
``region``
    Final record of a region: ``region`` id, ``status`` (``done`` or
    ``failed``), ``run`` that produced it, ``fingerprint`` of what its class
    COG depends on and ``vector_fingerprint`` of what its polygons depend on
    besides, ``src``, ``window`` ``[row_off, col_off, height, width]`` or null,
    ``outputs`` (name -> ``{path, sha256, bytes}``, paths relative to the
    output directory), ``attempts`` (task starts in that run, retries and
    restarts after a worker died included), ``error`` (null when done),
    ``worker``, ``elapsed_s`` (``predict_s`` of it predicting, ``vectorize_s``
    vectorizing), ``pixels``, ``tiles``, ``valid_pixels``, ``class_pixels``,
    ``polygons`` (per layer: a whole raster's, or a window's finished
    polygons), ``seam_pieces`` (a window's polygons left for the merge),
    ``warnings``, ``time``.  ``outputs`` are
    ``classes`` (the COG) and ``polygons`` (a whole raster's GeoPackage) or
    ``vector`` (a window's vector part).  A region whose COG was kept and
    polygons redone (``--resume``) keeps its earlier pixel counts.
``merge``
    The merged outputs: ``inputs`` (digest of the region checksums they were
    built from), ``outputs`` as above, ``polygons`` per layer, ``time``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.io.atomic import atomic_output

__all__ = [
    "ATTEMPTS_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "AttemptLog",
    "Manifest",
    "ManifestState",
    "OutputFile",
    "append_line",
    "outputs_valid",
    "sha256_of",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
ATTEMPTS_NAME = "attempts.jsonl"
FORMAT_VERSION = 1


def now_iso() -> str:
    """UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sha256_of(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Hex sha256 and size in bytes of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class OutputFile:
    """One output file of a region: path relative to the output directory, checksum, size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, out_dir: Path, path: Path) -> OutputFile:
        """Describe ``path`` (inside ``out_dir``) as it is on disk now."""
        digest, size = sha256_of(path)
        return cls(path.relative_to(out_dir).as_posix(), digest, size)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputFile:
        return cls(str(d["path"]), str(d["sha256"]), int(d["bytes"]))


def outputs_valid(out_dir: Path, outputs: Mapping[str, OutputFile]) -> bool:
    """True when every output exists with its recorded size and sha256."""
    if not outputs:
        return False
    for out in outputs.values():
        p = out_dir / out.path
        try:
            if p.stat().st_size != out.bytes:
                return False
        except OSError:
            return False
        if sha256_of(p)[0] != out.sha256:
            return False
    return True


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``path`` in a single locked, synced write.

    ``O_APPEND`` writes of one line are not torn on local filesystems; the
    advisory lock keeps writers of other processes (and NFS clients, where
    flock maps to POSIX locks) from interleaving.
    """
    data = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_lines(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` from byte ``offset``; returns them and the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.warning("skipping a damaged line of %s", path)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out, offset + end


@dataclass
class ManifestState:
    """What a manifest says: the last header, final record per region, and merge record."""

    header: dict[str, Any] | None = None
    regions: dict[str, dict[str, Any]] = field(default_factory=dict)
    merge: dict[str, Any] | None = None

    def outputs(self, region: str) -> dict[str, OutputFile]:
        """The recorded outputs of a region (empty when it has none, or a damaged record)."""
        return parse_outputs((self.regions.get(region) or {}).get("outputs"), f"region {region}")


def parse_outputs(outputs: Any, what: str) -> dict[str, OutputFile]:
    """Output records of a manifest record; empty (redo it) when they are damaged.

    A manifest edited by hand, or one a crash cut short, must cost a redo of
    what it no longer describes, never a traceback.
    """
    if not outputs:
        return {}
    try:
        return {str(k): OutputFile.from_dict(v) for k, v in dict(outputs).items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        log.warning("the manifest's record of %s is damaged; it will be redone", what)
        return {}


class Manifest:
    """The manifest file of an output directory (see the module docs)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.attempts_path = self.out_dir / ATTEMPTS_NAME

    def exists(self) -> bool:
        """Whether a manifest is there (a previous or running batch)."""
        return self.path.exists()

    def read(self) -> ManifestState:
        """Parse the manifest; later records win, damaged lines are skipped."""
        state = ManifestState()
        records, _ = _read_lines(self.path)
        for rec in records:
            kind = rec.get("kind")
            if kind == "batch":
                state.header = rec
            elif kind == "region" and isinstance(rec.get("region"), str):
                state.regions[rec["region"]] = rec
            elif kind == "merge":
                state.merge = rec
        return state

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record."""
        append_line(self.path, record)

    def compact(self, state: ManifestState, regions: Iterable[str]) -> None:
        """Rewrite the manifest atomically: the header, one record per region in ``regions``
        (in that order, those that have one), and the merge record."""
        lines = [state.header] if state.header else []
        lines += [state.regions[r] for r in regions if r in state.regions]
        if state.merge:
            lines.append(state.merge)
        with atomic_output(self.path, overwrite=True) as tmp:
            tmp.write_text(
                "".join(json.dumps(rec, sort_keys=True, default=str) + "\n" for rec in lines),
                encoding="utf-8",
            )
        with contextlib.suppress(FileNotFoundError):
            self.attempts_path.unlink()

    def reset(self) -> None:
        """Forget previous runs (``--overwrite``): remove the manifest and the attempt log."""
        for p in (self.path, self.attempts_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class AttemptLog:
    """Counts the task starts of one run in ``attempts.jsonl``, reading only new lines."""

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.run = run
        self._offset = 0
        self._counts: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        """Region id -> task starts in this run so far."""
        records, self._offset = _read_lines(self.path, self._offset)
        for rec in records:
            if rec.get("run") == self.run and isinstance(rec.get("region"), str):
                self._counts[rec["region"]] = self._counts.get(rec["region"], 0) + 1
        return dict(self._counts)
