"""Instance models in batch on a real cluster: whole rasters and window regions, as predict does."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from geoseg.batch import load_work, run_batch
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


@pytest.fixture
def blobs(tmp_path, cluster_address):
    """The deterministic test detector, registered here and on the cluster's workers."""
    from distributed import Client

    from geoseg.models.registry import _REGISTRY
    from tests.batch.plugins import RegisterBlobs
    from tests.instance_detector import register_blobs

    register_blobs()
    card = tiny_card(
        n_classes=2, architecture="blobs", task="instance", tile_size=64, overlap=16,
        mean=[0.0] * 3, std=[1.0] * 3,
        postprocess={"building": {"style": "simplify", "min_area_m2": 1.0,
                                  "simplify_tolerance_m": 0.1}},
    )  # fmt: skip
    model = save_checkpoint(build_model(card), card, tmp_path / "blobs")
    with Client(cluster_address) as client:
        client.register_plugin(RegisterBlobs())
        try:
            yield model
        finally:
            client.unregister_worker_plugin(RegisterBlobs.name)
            del _REGISTRY["blobs"]


@pytest.mark.parametrize("region", [48, 40])
def test_window_regions_keep_each_building_once_whole_as_predict_does(
    blobs, tmp_path, cluster_address, region
):
    """Buildings across region borders (and corners) come out once, whole, as in predict."""
    from geoseg.api import predict
    from tests.instance_detector import blobs_scene

    boxes = [
        (40, 40, 56, 58),  # across the corner of four 48 px regions
        (10, 88, 22, 104),  # across a column border
        (90, 10, 104, 24),  # across a row border
        (92, 24, 104, 36),  # touching the one before
        (60, 60, 70, 70),  # inside a region
        (110, 120, 126, 146),  # across borders of the 40 px regions
    ]
    img, truth = blobs_scene(130, 150, boxes)
    tf = rasterio.transform.from_origin(500000, 6000000, 0.5, 0.5)
    scene = write_raster(tmp_path / "scene.tif", img, transform=tf)
    ref = predict(scene, tmp_path / "ref.gpkg", model=blobs, **PREDICT)
    work = load_work(
        write_work(tmp_path / "regions.yaml", raster=str(scene), region_size=region,
                   model=str(blobs))
    )  # fmt: skip
    out = tmp_path / "out"
    result = run_batch(work, out, address=cluster_address)
    assert result.ok and len(result.computed) == -(-130 // region) * -(-150 // region)
    mosaic, _ = read_classes(out / "classes.vrt")
    np.testing.assert_array_equal(mosaic, (truth > 0).astype(np.uint8))
    theirs, _ = read_classes(ref.classes)
    np.testing.assert_array_equal(mosaic, theirs)
    got = layers(out / "polygons.gpkg")
    assert got == layers(ref.vector)
    frame = pyogrio.read_dataframe(out / "polygons.gpkg", layer="buildings")
    assert len(frame) == len(boxes)
    for r0, c0, r1, c1 in boxes:
        want = shapely.box(*(tf * (c0, r1)), *(tf * (c1, r0)))
        assert max(g.intersection(want).area / g.union(want).area for g in frame.geometry) > 0.98


def test_window_regions_of_a_finer_raster_match_predict(blobs, tmp_path, cluster_address):
    """A 0.5 m raster under a 1 m model: regions run on the model grid, painted back exactly."""
    from geoseg.api import predict
    from geoseg.models.checkpoint import load_card
    from tests.instance_detector import blobs_scene

    card = load_card(blobs).replace(pixel_size_m=1.0)
    model = save_checkpoint(build_model(card), card, tmp_path / "blobs1m")
    boxes = [(20, 20, 44, 48), (40, 60, 70, 100), (80, 100, 120, 140), (90, 30, 110, 52)]
    img, _ = blobs_scene(160, 180, boxes)
    scene = write_raster(tmp_path / "fine.tif", img)
    ref = predict(scene, tmp_path / "ref.gpkg", model=model, **PREDICT)
    assert ref.stats.resampled_to_m == 1.0
    work = load_work(
        write_work(tmp_path / "regions.yaml", raster=str(scene), region_size=56, model=str(model))
    )
    out = tmp_path / "out"
    assert run_batch(work, out, address=cluster_address).ok
    mosaic, _ = read_classes(out / "classes.vrt")
    theirs, _ = read_classes(ref.classes)
    np.testing.assert_array_equal(mosaic, theirs)
    assert layers(out / "polygons.gpkg") == layers(ref.vector)
    assert len(pyogrio.read_dataframe(out / "polygons.gpkg", layer="buildings")) >= len(boxes)
