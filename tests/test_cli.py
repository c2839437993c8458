"""The command line: outputs, one-line errors, exit codes."""

import json
import subprocess
import sys

import rasterio

from tests.conftest import random_image, write_raster


def geoseg(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_predict_writes_cog_and_reports_throughput(tiny_model_dir, tmp_path):
    src = write_raster(tmp_path / "scene.tif", random_image(150, 130))
    r = geoseg(
        "predict",
        src,
        "-o",
        tmp_path / "cls.tif",
        "--model",
        tiny_model_dir,
        "--tile",
        "64",
        "--overlap",
        "16",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    for token in ("px", "km²", " s,", "Mpx/s", "peak memory"):
        assert token in last
    with rasterio.open(tmp_path / "cls.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1) or ds.width < 512


def test_errors_are_one_line_with_nonzero_exit(tiny_model_dir, tmp_path):
    src = write_raster(tmp_path / "scene.tif", random_image(40, 40))
    (tmp_path / "exists.tif").write_bytes(b"keep")
    cases = [
        (["predict", tmp_path / "missing.tif", "-o", tmp_path / "o.tif"], "does not exist"),
        (["predict", src, "-o", tmp_path / "exists.tif", "--model", tiny_model_dir], "--overwrite"),
        (["predict", src, "-o", tmp_path / "nodir" / "o.tif", "--model", tiny_model_dir], "mkdir"),
        (["predict", src, "-o", tmp_path / "o.tif", "--model", tmp_path / "nomodel"], "--model"),
        (
            ["predict", src, "-o", tmp_path / "o.tif", "--model", tiny_model_dir, "--bands", "x"],
            "--bands",
        ),
        (
            [
                "predict",
                src,
                "-o",
                tmp_path / "o.tif",
                "--model",
                tiny_model_dir,
                "--device",
                "cuda:7",
            ],
            "device",
        ),
        (["info", tmp_path / "missing.tif"], "does not exist"),
    ]
    for args, needle in cases:
        r = geoseg(*args)
        assert r.returncode != 0, args
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1, r.stderr
        assert needle in lines[0] and "Traceback" not in r.stderr
    assert (tmp_path / "exists.tif").read_bytes() == b"keep"
    assert not (tmp_path / "o.tif").exists()


def test_verbose_shows_traceback(tmp_path):
    r = geoseg("-v", "info", tmp_path / "missing.tif")
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_models_and_info(tiny_model_dir, tmp_path):
    r = geoseg("models")
    assert r.returncode == 0 and "unet" in r.stdout and "deeplabv3plus" in r.stdout
    r = geoseg("models", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and "unet" in doc["architectures"]
    assert doc["bundled"]["default"]["classes"][0] == "background"
    # The bundled model ships an int8 graph whose accuracy check passed (--precision auto).
    assert doc["bundled"]["default"]["int8"]["passed"] is True
    assert doc["bundled"]["default"]["int8"]["agreement"] >= 0.99
    r = geoseg("info", tiny_model_dir)
    assert r.returncode == 0 and "tinycnn" in r.stdout
    src = write_raster(tmp_path / "scene.tif", random_image(40, 40))
    r = geoseg("info", src, "--json")
    assert r.returncode == 0 and "EPSG:32633" in r.stdout


def test_models_wrap(tmp_path):
    import torch

    from geoseg.models import build_model, load_checkpoint
    from tests.conftest import tiny_card

    model = build_model(tiny_card())
    torch.save(model.state_dict(), tmp_path / "w.pth")
    r = geoseg(
        "models",
        "wrap",
        tmp_path / "w.pth",
        "-o",
        tmp_path / "ck",
        "--arch",
        "tinycnn",
        "--bands",
        "red,green,blue",
        "--classes",
        "background,building,vegetation:#00ff00",
    )
    assert r.returncode == 0, r.stderr
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.card.classes[2].color == "#00ff00"
