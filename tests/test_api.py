"""The public Python API: ``geoseg.predict`` and friends, the same runs the CLI does."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

import geoseg
from geoseg.errors import ConfigError, GeosegError, OutputExistsError


def test_import_geoseg_is_cheap_and_names_load_on_first_use() -> None:
    code = (
        "import sys, geoseg; heavy = [m for m in ('numpy', 'torch', 'rasterio', 'dask') "
        "if m in sys.modules]; print(heavy); geoseg.PredictConfig; print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
    for name in geoseg.__all__:
        assert getattr(geoseg, name) is not None
    with pytest.raises(AttributeError):
        geoseg.no_such_name  # noqa: B018


def test_predict_writes_classes_and_polygons_like_the_cli(
    tmp_path: Path, tiny_model_dir: Path, make_raster
) -> None:
    src = make_raster(shape=(90, 110))
    result = geoseg.predict(
        src, tmp_path / "api.gpkg", tiny_model_dir, device="cpu", tile=64, overlap=16
    )
    assert result.classes == tmp_path / "api_classes.tif" and result.vector == tmp_path / "api.gpkg"
    assert result.stats.pixels == 90 * 110 and result.stats.mpx_per_s > 0
    assert set(result.polygons) <= {name for name, _ in pyogrio.list_layers(result.vector)}
    assert sum(result.polygons.values()) > 0
    assert result.vector in result.outputs and result.classes in result.outputs
    from geoseg.cli import main

    main(
        [
            "-q",
            "predict",
            str(src),
            "-o",
            str(tmp_path / "cli.gpkg"),
            "-m",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--tile",
            "64",
            "--overlap",
            "16",
        ]
    )
    with rasterio.open(result.classes) as a, rasterio.open(tmp_path / "cli_classes.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # A second call refuses to overwrite, with the library's error.
    with pytest.raises(OutputExistsError):
        geoseg.predict(src, tmp_path / "api.gpkg", tiny_model_dir, device="cpu")


def test_vectorize_and_load_model(tmp_path: Path, tiny_model_dir: Path, make_raster) -> None:
    model = geoseg.load_model(tiny_model_dir)
    assert model.card.n_classes == 3
    raster = geoseg.predict(make_raster(), tmp_path / "c.tif", model, device="cpu").classes
    stats = geoseg.vectorize(raster, tmp_path / "v.gpkg")
    assert sum(stats.polygons.values()) > 0
    # geoseg.vectorize is also a subpackage: once imported, it still runs the function.
    importlib.import_module("geoseg.vectorize.clean")
    assert isinstance(geoseg.vectorize, types.ModuleType)

    again = geoseg.vectorize(raster, tmp_path / "w.gpkg")
    assert again.polygons == stats.polygons
    assert "default" in geoseg.list_models()


def test_unknown_options_name_themselves() -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*tiel") as exc:
        geoseg.predict("x.tif", "y.tif", tiel=256)
    assert isinstance(exc.value, GeosegError)


def test_a_failed_vector_stage_leaves_no_class_raster(
    tmp_path: Path, tiny_model_dir: Path, make_raster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geoseg.pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(geoseg.pipeline, "run_vectorize", interrupted)
    probs = tmp_path / "p.tif"
    src = make_raster(shape=(40, 50))
    with pytest.raises(KeyboardInterrupt):
        geoseg.predict(
            src,
            tmp_path / "x.gpkg",
            tiny_model_dir,
            device="cpu",
            probabilities=probs,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
