"""geoseg.io.atomic directly: checks before work, all-or-nothing writes, the output lock."""

from __future__ import annotations

import errno
import importlib
import os
import signal

import pytest

from geoseg.errors import (
    InterruptedRunError,
    OutputExistsError,
    OutputWriteError,
    clear_stop_request,
    stop_requested,
)
from geoseg.io.atomic import atomic_output, check_output_path, is_disk_full, output_lock


def test_output_checks_name_the_problem(tmp_path):
    (tmp_path / "here.tif").write_bytes(b"x")
    assert check_output_path(tmp_path / "new.tif", overwrite=False) == tmp_path / "new.tif"
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        check_output_path(tmp_path / "here.tif", overwrite=False)
    assert check_output_path(tmp_path / "here.tif", overwrite=True).name == "here.tif"
    with pytest.raises(OutputWriteError, match="is a directory"):
        check_output_path(tmp_path, overwrite=True)
    with pytest.raises(OutputWriteError, match="mkdir -p"):
        check_output_path(tmp_path / "no" / "x.tif", overwrite=False)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputWriteError, match="not a directory"):
        check_output_path(tmp_path / "file" / "x.tif", overwrite=False)


def test_atomic_output_publishes_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target, overwrite=False) as tmp:
        assert tmp != target and tmp.parent == tmp_path and tmp.suffix == ".txt"
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "new"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left
    with pytest.raises(OutputExistsError):
        atomic_output(target, overwrite=False).__enter__()


def test_a_full_disk_becomes_one_clear_error_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with (
        pytest.raises(OutputWriteError, match="disk full"),
        atomic_output(target, overwrite=False) as tmp,
    ):
        tmp.write_text("part")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    assert is_disk_full(RuntimeError("sqlite3: database or disk is full"))
    assert not is_disk_full(ValueError("bad value"))


def test_the_lock_is_reentrant_in_a_process_and_removed_after(tmp_path):
    target = tmp_path / "x.tif"
    lock = tmp_path / ".x.tif.geoseg-lock"
    with output_lock(target):
        assert lock.exists()
        assert int(lock.read_text()) == os.getpid()
        with output_lock(target):  # nested holders (predict -> its writers) share it
            pass
        assert lock.exists()
    assert not lock.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_whose_exception_was_lost_still_replaces_nothing(tmp_path):
    # The CLI's SIGTERM handler raises; Python drops an exception raised while a __del__
    # runs ("Exception ignored in ..."), and the run would go on to replace the output.
    target = tmp_path / "out.gpkg"
    target.write_bytes(b"keep")

    class SignalledWhileCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass

    on_sigterm = importlib.import_module("geoseg.cli.main")._on_sigterm
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with (
            pytest.raises(InterruptedRunError, match="SIGTERM"),
            atomic_output(target, overwrite=True) as tmp,
        ):
            tmp.write_bytes(b"new")
            SignalledWhileCollected()  # collected at once; its exception is lost
            assert stop_requested() == "stopped by signal SIGTERM"
        assert target.read_bytes() == b"keep"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]
    finally:
        signal.signal(signal.SIGTERM, previous)
        clear_stop_request()
