"""Every command through click's CliRunner, in process: exit codes and the one error line.

``run`` calls :func:`geoseg.cli.main.main` (what the ``geoseg`` executable runs) inside
CliRunner's isolation, so geoseg's error mapping is exercised without a subprocess; the
subprocess smoke tests stay in ``test_cli.py``.
"""

from __future__ import annotations

import json
import signal
import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.cli.main import main
from tests.conftest import random_image, write_raster


def run(*args: object) -> tuple[int, str, str]:
    """``geoseg ARGS`` in this process: (exit code, stdout, stderr)."""
    runner = CliRunner()
    handler = signal.getsignal(signal.SIGTERM)
    show = warnings.showwarning
    code = 0
    try:
        with runner.isolation() as (out, err, _), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()
    finally:
        signal.signal(signal.SIGTERM, handler)
        warnings.showwarning = show


def error_line(err: str) -> str:
    """The one ``geoseg: error:`` line, last on stderr, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("geoseg: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif", random_image(48, 40))


@pytest.mark.parametrize(
    "command",
    ["predict", "vectorize", "batch", "train", "evaluate", "tune", "demo", "info", "models",
     "qgis-plugin"],
)  # fmt: skip
def test_every_command_has_help(command):
    code, out, _ = run(command, "--help")
    assert code == 0 and out.startswith(f"Usage: geoseg {command}")


def test_predict_exit_codes_and_error_lines(tmp_path, scene, tiny_model_dir):
    code, _, err = run("predict", tmp_path / "missing.tif", "-o", tmp_path / "o.tif")
    assert code == 1 and "does not exist" in error_line(err)
    code, _, err = run("predict", scene, "-o", tmp_path / "o.tif", "--net-workers", "0")
    assert code == 1 and error_line(err) == "geoseg: error: --net-workers must be >= 1, got 0"
    # Library messages name parameters (bands=, input_range=); the CLI says its flags.
    code, _, err = run("predict", scene, "-o", tmp_path / "o.tif", "--bands", "3,x")
    assert code == 1 and "error: --bands must be comma-separated" in error_line(err)
    code, _, err = run("predict", scene, "-o", tmp_path / "o.tif", "--input-range", "0")
    assert code == 1 and "error: --input-range must be LOW,HIGH" in error_line(err)
    code, _, err = run("predict", scene, "-o", tmp_path / "o.tif", "--tta", "x4")
    assert code == 2 and "Invalid value for '--tta'" in err  # click's usage error
    code, out, err = run(
        "-q", "predict", scene, "-o", tmp_path / "o.tif", "--model", tiny_model_dir,
        "--device", "cpu", "--tile", "32", "--overlap", "8",
    )  # fmt: skip
    assert code == 0, err
    assert "Mpx/s" in out and (tmp_path / "o.tif").exists()
    code, _, err = run("predict", scene, "-o", tmp_path / "o.tif", "--model", tiny_model_dir)
    assert code == 1 and "--overwrite" in error_line(err)


def test_renamed_options_keep_working_with_one_warning(tmp_path, scene, tiny_model_dir):
    # -v: stderr stays Python's (without it native stderr goes to the terminal's fd 2,
    # which CliRunner does not capture).
    code, _, err = run(
        "-v", "predict", scene, "-o", tmp_path / "o.tif", "--model", tiny_model_dir, "--device",
        "cpu", "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("geoseg: warning:")]
    assert warned == [
        "geoseg: warning: --workers of 'geoseg predict' is now --net-workers; the old name "
        "will be removed in a later release"
    ]
    # The old spelling reaches the same parameter: its checks name the new flag.
    code, _, err = run("predict", scene, "-o", tmp_path / "x.tif", "--workers", "0")
    assert code == 1 and error_line(err).endswith("--net-workers must be >= 1, got 0")


def test_vectorize_exit_codes_and_error_lines(tmp_path, scene):
    code, _, err = run("vectorize", tmp_path / "missing.tif", "-o", tmp_path / "o.gpkg")
    assert code == 1 and "does not exist" in error_line(err)
    code, _, err = run("vectorize", scene, "-o", tmp_path / "o.gpkg", "--cleanup-workers", "9")
    assert code == 2 and "Invalid value for '--cleanup-workers'" in err
    bad = tmp_path / "post.yaml"
    bad.write_text("building: {colour: 3}\n")
    code, _, err = run("vectorize", scene, "-o", tmp_path / "o.gpkg", "--config", bad)
    assert code == 1 and "colour" in error_line(err)
    assert not (tmp_path / "o.gpkg").exists()


def test_batch_exit_codes_and_error_lines(tmp_path, scene):
    code, _, err = run("batch", tmp_path / "missing.yaml", "-o", tmp_path / "out")
    assert code == 1 and "missing.yaml" in error_line(err)
    work = tmp_path / "regions.yaml"
    work.write_text(f"raster: {scene}\nregion_size: 32\npredict: {{tlie: 64}}\n")
    code, _, err = run("batch", work, "-o", tmp_path / "out")
    assert code == 1 and "tlie" in error_line(err)
    work.write_text(f"raster: {scene}\nregion_size: 32\npredict: {{tile: 0}}\n")
    code, _, err = run("batch", work, "-o", tmp_path / "out")
    assert code == 1 and "predict.tile must be >= 1, got 0" in error_line(err)
    work.write_text(f"raster: {scene}\nregion_size: 32\n")
    code, _, err = run(
        "batch", work, "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"
    )
    assert code == 1 and "error: --workers sizes the local cluster" in error_line(err)
    assert not (tmp_path / "out").exists()


def test_train_exit_codes_and_error_lines(tmp_path):
    code, _, err = run("train", "-o", tmp_path / "run")
    assert code == 1 and error_line(err)
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: [\n")
    code, _, err = run("train", "--config", cfg, "-o", tmp_path / "run")
    assert code == 1 and "YAML" in error_line(err)
    assert not (tmp_path / "run").exists()


def test_evaluate_exit_codes_and_error_lines(tmp_path, scene, tiny_model_dir):
    labels = write_raster(tmp_path / "labels.tif", random_image(48, 40, bands=1) % 3)
    code, _, err = run(
        "evaluate", "--model", tiny_model_dir, "--images", scene, "--labels", labels,
        "-o", tmp_path / "report", "--iou-threshold", "2",
    )  # fmt: skip
    assert code == 1
    assert error_line(err) == "geoseg: error: --iou-threshold must be in (0, 1], got 2.0"
    code, _, err = run(
        "evaluate", "--model", tiny_model_dir, "--images", tmp_path / "none*.tif", "--labels",
        labels, "-o", tmp_path / "report",
    )  # fmt: skip
    assert code == 1 and error_line(err)
    code, _, err = run(
        "evaluate", "--model", tiny_model_dir, "--labels", labels, "-o", tmp_path / "r"
    )
    assert code == 1 and error_line(err).endswith("no images to evaluate; pass --images PATHS")
    assert not (tmp_path / "report").exists()


def test_tune_info_demo_models_and_qgis_plugin(tmp_path, scene, tiny_model_dir):
    code, _, err = run("tune", "--model", tmp_path / "nomodel", "--dry-run")
    assert code == 1 and "nomodel" in error_line(err)
    code, out, _ = run("info", scene, "--json")
    assert code == 0 and json.loads(out)["size"] == [40, 48]
    code, _, err = run("info", tmp_path / "missing.tif")
    assert code == 1 and "does not exist" in error_line(err)
    (tmp_path / "demo").mkdir()
    code, _, err = run("demo", tmp_path / "demo", "--size", "10")
    assert code == 2 and "Invalid value for '--size'" in err
    code, out, _ = run("models", "--json")
    assert code == 0 and "default" in json.loads(out)["bundled"]
    code, _, err = run("models", "wrap", tmp_path / "w.pt", "-o", tmp_path / "ck", "--arch",
                       "tinycnn", "--classes", "background,building")  # fmt: skip
    assert code == 2 and "Missing option '--band-names'" in err
    code, out, err = run("qgis-plugin", "--zip", tmp_path)
    assert code == 0, err
    (archive,) = tmp_path.glob("geoseg_qgis-*.zip")
    assert "geoseg_qgis/metadata.txt" in zipfile.ZipFile(archive).namelist()
