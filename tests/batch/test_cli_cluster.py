"""``geoseg batch`` on a cluster started as users start theirs: ``dask scheduler`` + ``dask worker``."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

from tests.batch.conftest import write_work
from tests.batch.test_batch import assert_same_as_single_run

pytestmark = pytest.mark.timeout(300)

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session, with everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@contextlib.contextmanager
def dask_cluster(workers: int, *, user: str | None = None) -> Iterator[tuple[str, list]]:
    """A scheduler and ``workers`` one-thread workers on free local ports.

    With ``user``, the workers run as that user (root only): they cannot see
    files private to the test, as a machine without the shared disk.
    """
    scratch = Path(tempfile.mkdtemp(prefix="geoseg-dask-"))
    scratch.chmod(0o777)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "HOME": str(scratch)}
    procs = []
    log = open(scratch / "cluster.log", "wb")  # noqa: SIM115 - closed below
    try:
        procs.append(
            subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        )
        for i in range(workers):
            local = scratch / f"worker{i}"
            local.mkdir()
            local.chmod(0o777)
            cmd = [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1"]
            cmd += ["--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(local)]
            if user is not None:
                pw = pwd.getpwnam(user)
                ids = [f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
                # No nanny: its worker process would not start as another user here.
                cmd = ["setpriv", *ids, *cmd, "--no-nanny"]
            procs.append(
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address, procs[1:]
    finally:
        for proc in reversed(procs):
            stop(proc)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


def batch_cli(work: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "geoseg", "batch", str(work), "-o", str(out), *args]


def started_on(out: Path, worker: subprocess.Popen) -> bool:
    """Whether a region attempt has started in a process of ``worker``'s session."""
    try:
        lines = (out / "attempts.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        with contextlib.suppress(ValueError, ProcessLookupError):
            if os.getpgid(json.loads(line)["pid"]) == worker.pid:
                return True
    return False


def test_a_worker_killed_mid_run_and_the_run_still_completes(scene, tmp_path):
    work = write_work(
        tmp_path / "regions.yaml", raster=str(scene.src), region_size=46, model=str(scene.model)
    )
    out = tmp_path / "out"
    with dask_cluster(2) as (address, (victim, _)):
        run = subprocess.Popen(
            batch_cli(work, out, "--scheduler", address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while run.poll() is None and not started_on(out, victim) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the run ended before a region started on the victim"
        os.killpg(victim.pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=240)
    assert run.returncode == 0, stderr
    assert "30 regions: 30 computed, 0 reused, 0 failed" in stdout
    assert_same_as_single_run(out, scene)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="starts a worker as another user, which needs root and setpriv",
)
def test_workers_that_cannot_see_the_files_fail_with_one_line(scene, tmp_path):
    work = write_work(
        tmp_path / "regions.yaml", raster=str(scene.src), region_size=100, model=str(scene.model)
    )
    out = tmp_path / "out"
    with dask_cluster(1, user="nobody") as (address, _):
        r = subprocess.run(
            batch_cli(work, out, "--scheduler", address),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("geoseg: error: dask worker tcp://127.0.0.1:")
    assert f"cannot read {scene.src}" in last
    assert "shared" in last and "same paths" in last
    assert not (out / "manifest.jsonl").exists()
