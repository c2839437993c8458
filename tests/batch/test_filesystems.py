"""Batch outputs on a read-only and on a full filesystem (real mounts, not mocks).

Each test mounts a tmpfs in a private user and mount namespace (``unshare -rm``): read-only
for one, a few hundred kilobytes for the other, and runs the ``geoseg batch`` command in
it.  Skipped where the system does not allow unprivileged namespaces.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.batch.conftest import layers, read_classes, write_work

pytestmark = pytest.mark.timeout(300)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt && umount /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _namespaces_work(), reason="unprivileged mount namespaces (unshare -rm) not available"
)


def _batch(work: Path, out: Path, *extra: str) -> str:
    argv = [sys.executable, "-m", "geoseg", "batch", str(work), "-o", str(out)]
    argv += ["--workers", "1", "--dashboard-address", "", *extra]
    return shlex.join(argv)


def _run_in_namespace(script: str, tmp_path: Path) -> list[tuple[int, str, str]]:
    """Run `script` (lines separated by ``\\n``; the output and exit code of each line that
    starts with ``geoseg:`` are kept) in a private mount namespace; return (exit code,
    stdout, stderr) per geoseg call."""
    lines = []
    for i, line in enumerate(script.strip().splitlines()):
        if line.startswith("geoseg:"):
            cmd = line.removeprefix("geoseg:")
            lines.append(
                f"{cmd} > {tmp_path}/out{i} 2> {tmp_path}/err{i}; echo $? > {tmp_path}/rc{i}"
            )
        else:
            lines.append(line)
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "set -u\n" + "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    return [
        (
            int((tmp_path / f"rc{i}").read_text()),
            (tmp_path / f"out{i}").read_text(),
            (tmp_path / f"err{i}").read_text(),
        )
        for i in range(len(lines))
        if (tmp_path / f"rc{i}").exists()
    ]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("geoseg: error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


@needs_mounts
def test_read_only_output_filesystem_fails_in_one_line(scene, tmp_path):
    work = write_work(
        tmp_path / "w.yaml", raster=str(scene.src), region_size=100, model=str(scene.model)
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    ((rc, _, err),) = _run_in_namespace(
        f"mount -t tmpfs -o ro,size=1m none {ro}\ngeoseg:{_batch(work, ro / 'out')}",
        tmp_path,
    )
    assert rc != 0
    line = _one_error_line(err)
    assert f"cannot create the output directory {ro / 'out'} (Read-only file system)" in line
    assert "choose a writable directory" in line


@needs_mounts
def test_full_filesystem_fails_in_one_line_then_resumes_to_the_single_run(scene, tmp_path):
    """The disk fills before the merge: one error line, no polygons file, and after space
    is freed ``--resume`` reuses every region and ends with the single run's outputs."""
    work = write_work(
        tmp_path / "w.yaml", raster=str(scene.src), region_size=100, model=str(scene.model)
    )
    full = tmp_path / "full"
    full.mkdir()
    out = full / "out"
    keep = tmp_path / "kept"
    (rc1, _, err1), (rc2, out2, err2) = _run_in_namespace(
        # Room for the nine regions (~340 kB) but not for the merged GeoPackage as well.
        f"mount -t tmpfs -o size=400k none {full}\n"
        f"geoseg:{_batch(work, out)}\n"
        f"ls -a {out} > {tmp_path}/after_full.txt\n"
        f"mount -o remount,size=20m {full}\n"
        f"geoseg:{_batch(work, out, '--resume')}\n"
        f"cp -r {out} {keep}",
        tmp_path,
    )
    assert rc1 != 0
    line = _one_error_line(err1)
    assert "disk full" in line and "free space" in line
    left = (tmp_path / "after_full.txt").read_text().split()
    # Nothing half-written under a final name: no polygons, no mosaic yet.
    assert "polygons.gpkg" not in left and "classes.vrt" not in left
    assert rc2 == 0, err2
    assert "9 regions: 0 computed, 9 reused, 0 failed" in out2 + err2
    classes, transform = read_classes(keep / "classes.vrt")
    assert transform == scene.transform
    assert (classes == scene.classes).all()
    assert layers(keep / "polygons.gpkg") == layers(scene.polygons)
