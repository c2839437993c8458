"""The xarray/dask path equals the file path."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rioxarray
from distributed import Client

import geoseg.xarray  # noqa: F401  (registers the accessor)
from geoseg.errors import BandError
from geoseg.pipeline import PredictConfig, run_scene
from tests.batch.conftest import PREDICT, read_classes
from tests.conftest import random_image, write_raster


def test_dask_backed_dataarray_equals_run_scene(scene):
    da = rioxarray.open_rasterio(scene.src, chunks={"band": -1, "y": 70, "x": 90})
    out = da.geoseg.predict(scene.model, **PREDICT)
    assert out.dims == ("y", "x") and out.dtype == np.uint8
    assert out.chunks == ((70, 70, 70, 20), (90, 90, 70))
    np.testing.assert_array_equal(out.compute().values, scene.classes)
    np.testing.assert_array_equal(out["x"].values, da["x"].values)
    np.testing.assert_array_equal(out["y"].values, da["y"].values)
    assert out.rio.crs == da.rio.crs
    assert out.rio.transform() == scene.transform
    assert out.rio.nodata == 255
    assert list(out.attrs["flag_values"]) == [0, 1, 2]
    assert out.attrs["flag_meanings"] == "background building vegetation"


def test_computed_on_distributed_workers(scene, cluster_address):
    da = rioxarray.open_rasterio(scene.src, chunks={"band": -1, "y": 128, "x": 128})
    with Client(cluster_address):
        out = da.geoseg.predict(scene.model, **PREDICT).compute()
    np.testing.assert_array_equal(out.values, scene.classes)


def test_nodata_and_numpy_backed_arrays(tiny_model_dir, tmp_path):
    img = random_image(130, 110, seed=7)
    img[:, 20:60, 30:70] = 0
    img[0, 80:90, 10:20] = 0  # one band at nodata is still data
    src = write_raster(tmp_path / "nd.tif", img, nodata=0)
    run_scene(src, tmp_path / "nd_classes.tif", tiny_model_dir, PredictConfig(**PREDICT))
    expected, _ = read_classes(tmp_path / "nd_classes.tif")
    da = rioxarray.open_rasterio(src)  # numpy-backed
    out = da.geoseg.predict(tiny_model_dir, chunks=(50, 60), **PREDICT)
    assert out.chunks == ((50, 50, 30), (60, 50))
    got = out.values
    np.testing.assert_array_equal(got, expected)
    assert (got[20:60, 30:70] == 255).all() and (got[80:90, 10:20] != 255).all()


def test_band_count_must_match_or_be_chosen(scene, tmp_path):
    da = rioxarray.open_rasterio(scene.src)
    four = da.pad(band=(0, 1), constant_values=0)
    with pytest.raises(BandError, match="bands="):
        four.geoseg.predict(scene.model, **PREDICT)
    out = four.geoseg.predict(scene.model, bands=(1, 2, 3), **PREDICT)
    np.testing.assert_array_equal(out.values, scene.classes)
    with rasterio.open(scene.src) as ds:
        assert ds.count == 3


def test_network_options_are_honoured_as_in_predict(scene, tmp_path):
    """backend, tta, workers: the xarray path builds its runner as run_scene does."""
    from geoseg.errors import ConfigError

    options = {**PREDICT, "backend": "torch", "tta": "flips", "workers": 1}
    run_scene(scene.src, tmp_path / "tta.tif", scene.model, PredictConfig(**options))
    expected, _ = read_classes(tmp_path / "tta.tif")
    assert (expected != scene.classes).any()  # TTA changes some pixels of this model
    da = rioxarray.open_rasterio(scene.src, chunks={"band": -1, "y": 100, "x": 100})
    out = da.geoseg.predict(scene.model, **options)
    np.testing.assert_array_equal(out.compute().values, expected)
    with pytest.raises(ConfigError, match="compile applies to the PyTorch backend"):
        da.geoseg.predict(scene.model, backend="onnx", compile=True)
