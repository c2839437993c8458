"""Instance models: objects kept once across tile overlaps, written whole, with scores.

The pipeline tests run a small deterministic detector (``blobs``, registered here as an
instance architecture): every connected patch of bright pixels of one green value is an
object, found in whichever tile sees it, cut where the tile's edge cuts it.  That is
exactly what a real detector does at tile borders, with an answer known to the pixel.
A real (untrained) Mask R-CNN runs through the same path in the last tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

import geoseg
from geoseg.errors import ConfigError
from geoseg.infer.instances import InstanceMerger, InstanceParams, tile_instances
from geoseg.models.checkpoint import load_checkpoint, save_checkpoint
from geoseg.models.registry import _REGISTRY, build_model
from geoseg.tiling import make_grid
from tests.conftest import tiny_card, write_raster
from tests.instance_detector import blobs_scene as _scene
from tests.instance_detector import register_blobs

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _blobs_architecture():
    """``blobs`` is in the registry for these tests only."""
    register_blobs()
    yield
    del _REGISTRY["blobs"]


PX = 0.5
ORIGIN = (500000.0, 6000000.0)


@pytest.fixture
def blobs_model(tmp_path: Path) -> Path:
    card = tiny_card(
        n_classes=2, architecture="blobs", task="instance", tile_size=64, overlap=16,
        mean=[0.0] * 3, std=[1.0] * 3,
    )  # fmt: skip
    card = card.replace(
        postprocess={
            "building": {"style": "simplify", "min_area_m2": 1.0, "simplify_tolerance_m": 0.1}
        }
    )
    return save_checkpoint(build_model(card), card, tmp_path / "blobs")


def test_a_building_cut_by_a_tile_edge_is_kept_once_whole_from_the_tile_that_saw_it_all():
    grid = make_grid(64, 112, tile=64, overlap=16)
    assert grid.col_starts == (0, 48)
    left, right = grid.tile(0, 0), grid.tile(0, 1)
    tf = Affine(PX, 0, ORIGIN[0], 0, -PX, ORIGIN[1])
    whole = np.zeros((1, 1, 64, 64), np.float32)
    whole[0, 0, 20:30, 8:22] = 1  # raster cols 56..70, whole in the right tile
    cut = np.zeros((1, 1, 64, 64), np.float32)
    cut[0, 0, 20:30, 56:64] = 1  # the same building, cut by the left tile's edge at col 64
    params = InstanceParams(score_threshold=0.5)
    valid = np.ones((64, 64), bool)

    def det(mask: np.ndarray, score: float) -> dict[str, Any]:
        return {"masks": mask, "scores": np.array([score]), "labels": np.array([1])}

    a = tile_instances(det(cut, 0.99), left, valid, tf, (64, 112), params)
    b = tile_instances(det(whole, 0.6), right, valid, tf, (64, 112), params)
    assert a[0].margin == 0 and b[0].margin == 8
    merger = InstanceMerger(tf, params.match_iou)
    merger.add(a)
    merger.add(b)
    kept = list(merger.release(None))
    assert len(kept) == 1 and kept[0].tile == (0, 1)  # the whole one, despite its lower score
    assert kept[0].geometry.area == pytest.approx(10 * 14 * PX * PX)
    # Arriving in the other order gives the same answer.
    merger = InstanceMerger(tf, params.match_iou)
    merger.add(b)
    merger.add(a)
    assert [i.tile for i in merger.release(None)] == [(0, 1)]


def test_instances_that_do_not_overlap_enough_are_both_kept_and_released_in_order():
    grid = make_grid(112, 64, tile=64, overlap=16)
    top, bottom = grid.tile(0, 0), grid.tile(1, 0)
    tf = Affine(PX, 0, ORIGIN[0], 0, -PX, ORIGIN[1])
    params = InstanceParams()
    m1 = np.zeros((2, 1, 64, 64), np.float32)
    m1[0, 0, 2:10, 2:10] = 1  # far above the bottom tile
    m1[1, 0, 50:60, 2:10] = 1  # in the overlap, seen by both tiles
    m2 = np.zeros((1, 1, 64, 64), np.float32)
    m2[0, 0, 2:12, 20:30] = 1  # another object in the overlap
    merger = InstanceMerger(tf, params.match_iou)
    merger.add(tile_instances({"masks": m1, "scores": np.array([0.9, 0.9]),
                               "labels": np.array([1, 1])}, top, np.ones((64, 64), bool), tf,
                              (112, 64), params))  # fmt: skip
    # Before the bottom row: only the object ending above its first row (48) is final.
    assert [i.rows for i in merger.release(grid.row_starts[1])] == [(2, 10)]
    merger.add(tile_instances({"masks": m2, "scores": np.array([0.9]), "labels": np.array([1])},
                              bottom, np.ones((64, 64), bool), tf, (112, 64), params))  # fmt: skip
    assert len(list(merger.release(None))) == 2 and merger.merged == 0


def test_instance_params_come_from_the_card_and_are_checked():
    assert InstanceParams.from_card({}).score_threshold == 0.5
    assert InstanceParams.from_card({"instances": {"match_iou": 0.3}}).match_iou == 0.3
    with pytest.raises(ConfigError, match="score_threshold must be in"):
        InstanceParams(score_threshold=1.5)
    with pytest.raises(ConfigError, match="unknown keys"):
        InstanceParams.from_card({"instances": {"iou": 0.3}})


def test_predict_keeps_every_building_once_whole_across_tile_borders(tmp_path, blobs_model):
    # Tiles of 64 px overlapping by >= 16 px: buildings across every kind of border,
    # two of them touching (one wall), one at a tile corner.
    boxes = [
        (20, 56, 32, 70),  # across the first column border
        (40, 100, 52, 110),  # in the overlap of two columns
        (44, 20, 58, 30),  # across the first row border
        (44, 30, 58, 40),  # touching the one before
        (90, 90, 104, 106),  # near a tile corner
        (5, 5, 10, 12),  # small, in one tile only
    ]
    img, truth = _scene(130, 150, boxes)
    tf = Affine(PX, 0, ORIGIN[0], 0, -PX, ORIGIN[1])
    scene = write_raster(tmp_path / "scene.tif", img, transform=tf)
    result = geoseg.predict(scene, tmp_path / "out.gpkg", model=blobs_model, device="cpu")
    frame = pyogrio.read_dataframe(tmp_path / "out.gpkg", layer="buildings")
    assert len(frame) == len(boxes) == result.vector_stats.polygons["buildings"]
    assert frame["confidence"].between(0.5, 1).all()
    for i, (r0, c0, r1, c1) in enumerate(boxes, start=1):
        want = shapely.box(*(tf * (c0, r1)), *(tf * (c1, r0)))
        ious = [g.intersection(want).area / g.union(want).area for g in frame.geometry]
        assert max(ious) > 0.98, (i, ious)
    with rasterio.open(result.classes) as ds:
        classes = ds.read(1)
        assert ds.tags()["GEOSEG_TASK"] == "instance"
    assert np.array_equal(classes, (truth > 0).astype(np.uint8))
    assert result.stats.class_pixels[1] == int((truth > 0).sum())


def test_the_answer_does_not_depend_on_the_tiling(tmp_path, blobs_model):
    boxes = [(r, c, r + 9, c + 11) for r in range(3, 120, 23) for c in range(2, 140, 19)]
    img, truth = _scene(130, 150, boxes)
    scene = write_raster(tmp_path / "scene.tif", img)
    areas = []
    for tile, overlap in ((64, 16), (96, 32), (160, 0)):
        out = tmp_path / f"t{tile}.gpkg"
        geoseg.predict(scene, out, model=blobs_model, device="cpu", tile=tile, overlap=overlap)
        frame = pyogrio.read_dataframe(out, layer="buildings")
        assert len(frame) == len(boxes), tile
        areas.append(sorted(np.round(frame.geometry.area, 6)))
        with rasterio.open(out.with_name(out.stem + "_classes.tif")) as ds:
            assert np.array_equal(ds.read(1), (truth > 0).astype(np.uint8))
    assert areas[0] == areas[1] == areas[2]


def test_nodata_carries_no_object_and_is_nodata_in_the_class_raster(tmp_path, blobs_model):
    img, _ = _scene(80, 80, [(10, 10, 30, 30)])
    img[:, :, 20:] = 0
    scene = write_raster(tmp_path / "scene.tif", img, nodata=0)
    result = geoseg.predict(scene, tmp_path / "o.gpkg", model=blobs_model, device="cpu")
    frame = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer="buildings")
    assert len(frame) == 1 and frame.geometry[0].area == pytest.approx(20 * 10 * PX * PX)
    with rasterio.open(result.classes) as ds:
        assert (ds.read(1)[:, 20:] == 255).all()


def test_instance_models_refuse_what_they_cannot_do(tmp_path, blobs_model):
    img, _ = _scene(64, 64, [(10, 10, 20, 20)])
    scene = write_raster(tmp_path / "scene.tif", img)
    with pytest.raises(ConfigError, match="tta is for semantic models"):
        geoseg.predict(scene, tmp_path / "a.tif", model=blobs_model, tta="flips")
    with pytest.raises(ConfigError, match="no class probabilities"):
        geoseg.predict(scene, tmp_path / "b.tif", model=blobs_model,
                       probabilities=tmp_path / "p.tif")  # fmt: skip
    assert not list(tmp_path.glob("[ab].*"))


def _maskrcnn_card(**params: Any) -> Any:
    return tiny_card(
        n_classes=2, architecture="maskrcnn", encoder="resnet18", task="instance", stride=32,
        tile_size=64, overlap=16, arch_params={"fpn_channels": 32, "detections": 20, **params},
    )  # fmt: skip


def test_mask_rcnn_checkpoints_save_load_and_say_their_task(tmp_path):
    torch.manual_seed(0)
    card = _maskrcnn_card()
    model = build_model(card)
    assert model.task == "instance"
    path = save_checkpoint(model, card, tmp_path / "mrcnn")
    loaded = load_checkpoint(path)
    assert loaded.card.task == "instance"
    a = model.state_dict()
    b = loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="instance architecture but the model card says"):
        build_model(card.replace(task="semantic"))


def test_an_untrained_mask_rcnn_runs_through_predict(tmp_path):
    torch.manual_seed(0)
    card = _maskrcnn_card()
    card = card.replace(postprocess={"instances": {"score_threshold": 0.01}})
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "mrcnn")
    img, _ = _scene(96, 80, [(10, 10, 30, 30), (50, 40, 70, 60)])
    scene = write_raster(tmp_path / "scene.tif", img)
    result = geoseg.predict(scene, tmp_path / "o.gpkg", model=ckpt, device="cpu")
    info = pyogrio.read_info(tmp_path / "o.gpkg", layer="buildings")
    assert info["features"] == result.vector_stats.polygons["buildings"]
    with rasterio.open(result.classes) as ds:
        assert ds.shape == (96, 80) and set(np.unique(ds.read(1))) <= {0, 1}


def test_evaluate_scores_an_instance_model_on_its_own_polygons(tmp_path, blobs_model):
    import geopandas as gpd

    # A row of four touching houses (one wall each) and one alone: semantic
    # vectorization would give two objects; the instance model's polygons give five.
    boxes = [(20, 10 + 12 * i, 34, 22 + 12 * i) for i in range(4)] + [(60, 60, 72, 74)]
    img, _ = _scene(96, 96, boxes)
    tf = Affine(PX, 0, ORIGIN[0], 0, -PX, ORIGIN[1])
    scene = write_raster(tmp_path / "scene.tif", img, transform=tf)
    polys = [shapely.box(*(tf * (c0, r1)), *(tf * (c1, r0))) for r0, c0, r1, c1 in boxes]
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": ["building"] * 5}, geometry=polys, crs="EPSG:32633").to_file(labels)
    report = geoseg.evaluate(scene, labels, model=blobs_model)
    [objects] = report.objects
    assert (objects.tp, objects.fp, objects.fn) == (5, 0, 0)
    assert report.pixel.classes[1].iou == pytest.approx(1.0)


def test_instance_models_have_no_onnx_int8_or_tuning(tmp_path):
    from geoseg.infer.backends import ship_onnx
    from geoseg.infer.quantize import quantize_checkpoint
    from geoseg.infer.tune import tune

    card = _maskrcnn_card()
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "mrcnn")
    with pytest.raises(ConfigError, match="has no ONNX graph"):
        ship_onnx(ckpt)
    with pytest.raises(ConfigError, match="no int8 graph"):
        quantize_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="no engine to choose"):
        tune(load_checkpoint(ckpt), card)
    assert not (ckpt / "model.onnx").exists()


def test_memory_holds_about_one_row_of_tiles_of_instances(tmp_path, blobs_model, monkeypatch):
    # 23 x 23 tiles of 64 px, 31 x 31 buildings: every building once, and never more than
    # three rows of tiles' worth of them held at once.
    boxes = [(r, c, r + 10, c + 12) for r in range(4, 1090, 36) for c in range(6, 1090, 36)]
    img, truth = _scene(1100, 1100, boxes)
    scene = write_raster(tmp_path / "big.tif", img)
    held: list[int] = []
    add = InstanceMerger.add

    def counting(self, instances):
        add(self, instances)
        held.append(len(self))

    monkeypatch.setattr(InstanceMerger, "add", counting)
    result = geoseg.predict(scene, tmp_path / "big.gpkg", model=blobs_model, device="cpu")
    assert result.vector_stats.polygons["buildings"] == len(boxes) == 31 * 31
    per_row = 31 * 48 / 36  # about the buildings one 48-row band of tiles finds
    assert max(held) <= 3 * per_row, max(held)
    with rasterio.open(result.classes) as ds:
        assert np.array_equal(ds.read(1), (truth > 0).astype(np.uint8))


def test_a_finer_raster_is_resampled_for_the_model_and_painted_on_its_own_grid(
    tmp_path, blobs_model
):
    from geoseg.models.checkpoint import load_card

    card = load_card(blobs_model).replace(pixel_size_m=1.0)
    model = save_checkpoint(build_model(card), card, tmp_path / "blobs1m")
    boxes = [(20, 20, 44, 48), (20, 60, 44, 84), (80, 100, 120, 140)]  # 0.5 m pixels
    img, truth = _scene(160, 180, boxes)
    scene = write_raster(tmp_path / "fine.tif", img)
    loaded = load_checkpoint(model)
    loaded.model.min_pixels = 6  # resampling blends colours along edges: no slivers
    result = geoseg.predict(scene, tmp_path / "fine.gpkg", model=loaded, device="cpu")
    assert result.stats.resampled_to_m == 1.0
    frame = pyogrio.read_dataframe(tmp_path / "fine.gpkg", layer="buildings")
    assert len(frame) == 3
    with rasterio.open(result.classes) as ds:
        assert ds.shape == (160, 180)
        agree = (ds.read(1) == (truth > 0)).mean()
    assert agree > 0.98
