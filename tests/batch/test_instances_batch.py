"""Instance models (Mask R-CNN) in batch: whole rasters on a real cluster, as predict does."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoseg.batch import load_work, run_batch
from geoseg.errors import ConfigError
from geoseg.models.checkpoint import save_checkpoint
from geoseg.models.registry import build_model
from tests.batch.conftest import PREDICT, layers, read_classes, write_work
from tests.conftest import random_image, tiny_card, write_raster

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mrcnn(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    card = tiny_card(
        n_classes=2, architecture="maskrcnn", encoder="resnet18", task="instance", stride=32,
        tile_size=64, overlap=16, arch_params={"fpn_channels": 32, "detections": 20},
        postprocess={"instances": {"score_threshold": 0.01},
                     "building": {"style": "simplify", "min_area_m2": 0.5,
                                  "simplify_tolerance_m": 0.5}},
    )  # fmt: skip
    return save_checkpoint(build_model(card), card, tmp_path_factory.mktemp("m") / "mrcnn")


def test_rasters_run_as_predict_runs_them(mrcnn, tmp_path, cluster_address):
    from geoseg.api import predict

    t = rasterio.transform.from_origin(500000, 6000000, 0.5, 0.5)
    a = write_raster(tmp_path / "a.tif", random_image(90, 80, seed=1), transform=t)
    b = write_raster(
        tmp_path / "b.tif", random_image(70, 96, seed=2),
        transform=t * rasterio.Affine.translation(80, 0),
    )  # fmt: skip
    work = load_work(
        write_work(
            tmp_path / "regions.yaml",
            rasters=["a.tif", "b.tif"],
            model=str(mrcnn),
            predict={**PREDICT, "threads": 1},
        )
    )
    out = tmp_path / "out"
    result = run_batch(work, out, address=cluster_address)
    assert result.ok and sorted(result.computed) == ["a", "b"]
    total = 0
    for src in (a, b):
        ref = predict(src, tmp_path / f"{src.stem}_ref.gpkg", model=mrcnn, threads=1, **PREDICT)
        got = layers(out / "regions" / f"{src.stem}.gpkg")
        assert got == layers(ref.vector)
        total += sum(len(v) for v in got.values())
        mine, _ = read_classes(out / "regions" / f"{src.stem}.tif")
        theirs, _ = read_classes(ref.classes)
        np.testing.assert_array_equal(mine, theirs)
    assert total > 0  # an untrained detector at a 0.01 score threshold finds something


def test_window_regions_of_one_raster_are_refused_before_any_work(mrcnn, tmp_path):
    scene = write_raster(tmp_path / "s.tif", random_image(96, 96))
    work = load_work(
        write_work(tmp_path / "regions.yaml", raster=str(scene), region_size=48, model=str(mrcnn))
    )
    with pytest.raises(ConfigError, match="instance model: batch runs it over whole rasters"):
        run_batch(work, tmp_path / "out", workers=1, dashboard_address=None)
    assert not (tmp_path / "out").exists()
