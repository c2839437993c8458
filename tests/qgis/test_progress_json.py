"""``--progress json``: the machine-readable progress the QGIS plugin follows (no QGIS needed)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from geoseg.cli.progress import JsonProgress
from tests.conftest import random_image, write_raster


def geoseg(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line that looks like JSON, parsed (a bad one fails the test)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def assert_monotonic(events: list[dict[str, Any]], stages: list[str]) -> None:
    progress = [e for e in events if "total" in e]
    order = [e["stage"] for e in progress]
    assert order == sorted(order, key=stages.index) and set(order) == set(stages)
    for stage in stages:
        done = [e["done"] for e in progress if e["stage"] == stage]
        total = {e["total"] for e in progress if e["stage"] == stage}
        assert len(total) == 1 and done[-1] == total.pop()
        assert all(a < b for a, b in itertools.pairwise(done)), (stage, done)


def test_predict_reports_json_progress_then_done(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", random_image(300, 260))
    r = geoseg(
        "predict", src, "-o", tmp_path / "scene.gpkg", "--model", tiny_model_dir,
        "--tile", "64", "--overlap", "16", "--batch-size", "1", "--device", "cpu",
        "--progress", "json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = json_lines(r.stderr)
    assert_monotonic(events, ["predict", "vectorize"])
    assert len([e for e in events if e.get("stage") == "predict"]) > 5
    assert events[-1] == {"stage": "done"}
    assert r.stderr.splitlines()[-1] == '{"stage": "done"}'
    assert "\r" not in r.stderr, "no progress bars with --progress json"
    assert "px" in r.stdout.splitlines()[-1], "the summary stays on stdout"


def test_vectorize_reports_json_progress(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", random_image(200, 180))
    classes = tmp_path / "classes.tif"
    r = geoseg("predict", src, "-o", classes, "--model", tiny_model_dir, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = geoseg("vectorize", classes, "-o", tmp_path / "out.gpkg", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = json_lines(r.stderr)
    assert_monotonic(events, ["vectorize"])
    assert events[-1] == {"stage": "done"}


def test_errors_end_with_one_json_error_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", random_image(40, 40))
    (tmp_path / "exists.gpkg").write_bytes(b"keep")
    cases = [
        ["predict", src, "-o", tmp_path / "exists.gpkg", "--model", tiny_model_dir],
        ["predict", tmp_path / "missing.tif", "-o", tmp_path / "o.tif"],
        ["vectorize", tmp_path / "missing.tif", "-o", tmp_path / "o.gpkg"],
    ]
    for args in cases:
        r = geoseg(*args, "--progress", "json")
        assert r.returncode == 1, r.stderr
        events = json_lines(r.stderr)
        assert list(events[-1]) == ["error"]
        message = events[-1]["error"]
        assert message and "\n" not in message
        # The same message as without --progress json, which still ends the output.
        assert r.stderr.strip().splitlines()[-1] == f"geoseg: error: {message}"
        assert "Traceback" not in r.stderr


def test_sigterm_ends_with_an_interrupted_error_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", random_image(1024, 1024))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "geoseg", "predict", str(src), "-o", str(out / "s.tif"),
            "--model", str(tiny_model_dir), "--device", "cpu", "--tile", "128",
            "--overlap", "32", "--batch-size", "1", "--tta", "d4", "--progress", "json",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    first = json.loads(proc.stderr.readline())
    assert first["stage"] == "predict" and first["done"] < first["total"]
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, rest
    assert json_lines(rest)[-1] == {
        "error": "interrupted (stopped by signal SIGTERM); no output was written under the "
        "final name"
    }
    assert sorted(p.name for p in out.iterdir()) == []


def test_json_progress_is_throttled_and_monotonic(capsys: pytest.CaptureFixture[str]) -> None:
    bar = JsonProgress("vectorize")
    for done in [0, *range(1, 100_001), 100_000, 5]:
        bar.update(done, 100_000)
    events = json_lines(capsys.readouterr().err)
    done = [e["done"] for e in events]
    assert done[0] == 0 and done[-1] == 100_000
    assert all(a < b for a, b in itertools.pairwise(done))
    assert len(done) <= 1002
