"""Evaluation: pixel and object metrics equal hand-computed values; reports are written."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely import box

from geoseg.errors import ConfigError, OutputExistsError
from geoseg.evaluate import EvalConfig, evaluate, match_objects, object_metrics, write_report
from geoseg.models import ModelCard, build_model, save_checkpoint
from geoseg.pipeline import PredictConfig

X0, Y0 = 500000.0, 6000000.0
CPU = PredictConfig(device="cpu")


def test_match_objects_greedy_one_to_one():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(50, 0, 60, 10)]
    pred = [
        box(0, 0, 10, 10),  # T0, IoU 1
        box(20, 0, 30, 6),  # T1, IoU 0.6
        box(20, 4, 30, 10),  # T1 too, IoU 0.6: a tie, the lower index wins
        box(40, 0, 41, 1),  # nothing
        box(50, 0, 54, 10),  # T2, IoU 0.4 < 0.5
        box(0, 0, 10, 9),  # T0, IoU 0.9, but T0 already went to the IoU-1 match
    ]
    matches = match_objects(pred, truth)
    assert [(p, t) for p, t, _ in matches] == [(0, 0), (1, 1)]
    assert [round(iou, 6) for _, _, iou in matches] == [1.0, 0.6]
    m = object_metrics("building", pred, truth)
    assert (m.tp, m.fp, m.fn) == (2, 4, 1)
    assert m.precision == pytest.approx(2 / 6) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(4 / (4 + 4 + 1))
    assert m.mean_matched_iou == pytest.approx(0.8)
    loose = object_metrics("building", pred, truth, iou_threshold=0.4)
    assert loose.tp == 3
    empty = object_metrics("building", [], truth)
    assert (empty.tp, empty.fn, empty.precision, empty.recall) == (0, 3, None, 0.0)


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory):
    """A 1x1 convolution: building where red > 127.5, vegetation where green > 127.5."""
    card = ModelCard.from_dict(
        {
            "name": "threshold",
            "architecture": "tinycnn",
            "arch_params": {"depth": 0},
            "bands": ["red", "green", "blue"],
            "classes": [
                {"id": 0, "name": "background", "color": "#000000", "vectorize": False},
                {"id": 1, "name": "building", "color": "#e41a1c"},
                {"id": 2, "name": "vegetation", "color": "#4daf4a"},
            ],
            "stride": 1,
            "tile_size": 32,
            "overlap": 4,
        }
    )
    model = build_model(card)
    conv = model[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0] = 100.0
        conv.bias[1] = -50.0
        conv.weight[2, 1] = 100.0
        conv.bias[2] = -50.0
    return save_checkpoint(model, card, tmp_path_factory.mktemp("m") / "threshold")


@pytest.fixture
def scene(tmp_path):
    """40x40 UTM scene: predicted building rows 0-19 cols 0-19, vegetation rows 20-29 cols 0-9,
    nodata rows 30-39; the true building (EPSG:4326 labels) covers rows 0-19, cols 10-29."""
    img = np.full((3, 40, 40), 50, dtype=np.uint8)
    img[0, :20, :20] = 200
    img[1, 20:30, :10] = 200
    img[:, 30:] = 0
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=40,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(X0, Y0, 1.0, 1.0),
        nodata=0,
    ) as ds:
        ds.write(img)
    truth = box(X0 + 10, Y0 - 20, X0 + 30, Y0)
    labels = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[truth], crs="EPSG:32633").to_crs(
        "EPSG:4326"
    ).to_file(labels)
    return path, labels


def test_pixel_and_object_metrics_by_hand(threshold_model, scene):
    image, labels = scene
    report = evaluate(threshold_model, [image], [labels], EvalConfig(predict=CPU, strip_rows=7))
    # 400 nodata pixels are out; truth building 400 px, predicted building 400 px, 200 shared;
    # vegetation (100 px) is predicted on true background.
    assert report.pixel.confusion.tolist() == [[500, 200, 100], [200, 200, 0], [0, 0, 0]]
    bg, bld, veg = report.pixel.classes
    assert bld.iou == pytest.approx(200 / 600) and bld.dice == pytest.approx(400 / 800)
    assert bld.precision == pytest.approx(0.5) and bld.recall == pytest.approx(0.5)
    assert bg.iou == pytest.approx(500 / (500 + 300 + 200))
    assert veg.iou == 0.0 and veg.precision == 0.0 and veg.recall is None
    assert report.pixel.mean_iou == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    assert report.images[0].labelled_pixels == 1200
    per_image = report.images[0].class_iou  # one image: its own scores are the pooled ones
    assert report.pixel_interval == (None, None, None)  # no spread to measure on one image
    assert per_image == pytest.approx({"background": 0.5, "building": 1 / 3, "vegetation": 0.0})
    # objects: the predicted and true squares overlap at IoU 1/3
    (obj,) = report.objects
    assert (obj.name, obj.tp, obj.fp, obj.fn) == ("building", 0, 1, 1)
    loose = evaluate(threshold_model, [image], [labels], EvalConfig(predict=CPU, iou_threshold=0.3))
    assert (loose.objects[0].tp, loose.objects[0].fp, loose.objects[0].fn) == (1, 0, 0)
    assert loose.pixel.confusion.tolist() == report.pixel.confusion.tolist()  # strips don't matter


def test_partial_labels_leave_other_classes_unscored(threshold_model, scene):
    image, labels = scene
    cfg = EvalConfig(predict=CPU, labelled_classes=("building",))
    report = evaluate(threshold_model, [image], [labels], cfg)
    # the vegetation prediction counts as background: the labels know nothing about trees
    assert report.pixel.confusion.tolist() == [[600, 200, 0], [200, 200, 0], [0, 0, 0]]
    assert report.pixel.classes[2].iou is None
    assert report.labelled_classes == ("building",)
    assert report.images[0].class_iou == pytest.approx({"background": 0.6, "building": 1 / 3})


def test_label_rasters(threshold_model, scene, tmp_path):
    image, _ = scene
    ids = np.zeros((40, 40), dtype=np.uint8)
    ids[:20, 10:30] = 3  # building, in the label raster's own numbering
    ids[35:, :] = 9  # unlabelled (and nodata in the image anyway)
    path = tmp_path / "ids.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=40,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(X0, Y0, 1.0, 1.0),
    ) as ds:
        ds.write(ids, 1)
    cfg = EvalConfig(predict=CPU, class_map=((3, "building"), (0, "background"), (9, "ignore")))
    report = evaluate(threshold_model, [image], [path], cfg)
    assert report.pixel.confusion.tolist() == [[500, 200, 100], [200, 200, 0], [0, 0, 0]]
    assert (report.objects[0].fp, report.objects[0].fn) == (1, 1)


def test_report_files_and_cli(threshold_model, scene, tmp_path):
    image, labels = scene
    report = evaluate(threshold_model, [image, image], [labels], EvalConfig(predict=CPU))
    assert report.pixel.confusion.sum() == 2 * 1200
    out = tmp_path / "report"
    written = write_report(report, out)
    assert sorted(p.name for p in written) == [
        "confusion.png",
        "metrics.json",
        "overlay.png",
        "report.md",
    ]
    data = json.loads((out / "metrics.json").read_text())
    assert data["pixel"]["classes"]["building"]["iou"] == pytest.approx(1 / 3)
    assert data["objects"]["building"]["fn"] == 2
    md = (out / "report.md").read_text()
    assert "Mean IoU" in md and "| building |" in md
    assert [im["class_iou"]["building"] for im in data["images"]] == pytest.approx([1 / 3] * 2)
    # two identical images: every resample pools the same counts, so the interval is a point
    assert data["pixel_interval"]["classes"]["building"] == pytest.approx([1 / 3, 1 / 3])
    assert data["images"][0]["confusion"] == (report.pixel.confusion // 2).tolist()
    assert "| building IoU |" in md and "| 0.333 |" in md
    assert report.sample is not None and report.sample.rgb.shape == (40, 40, 3)
    with pytest.raises(OutputExistsError):
        write_report(report, out)

    runner = CliRunner()
    from geoseg.cli.main import cli

    args = [
        "evaluate",
        "--model",
        str(threshold_model),
        "--images",
        str(image),
        str(image),
        "--labels",
        str(labels),
        "--label-field",
        "class",
        "-o",
        str(tmp_path / "cli"),
        "--device",
        "cpu",
        "--keep-predictions",
    ]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "mean IoU" in r.output and "objects" in r.output
    assert "building       IoU 0.333 [0.333-0.333]" in r.output and "2 images resampled" in r.output
    cli_data = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli_data["pixel"]["confusion"] == report.pixel.confusion.tolist()
    assert len(list((tmp_path / "cli" / "predictions").glob("*.tif"))) == 2
    r = runner.invoke(cli, args)
    assert isinstance(r.exception, OutputExistsError)


def test_bad_inputs(threshold_model, scene):
    image, labels = scene
    with pytest.raises(ConfigError, match="no images"):
        evaluate(threshold_model, [], [labels])
    with pytest.raises(ConfigError, match="labelled_classes"):
        evaluate(threshold_model, [image], [labels], EvalConfig(labelled_classes=("tree",)))
    with pytest.raises(ConfigError, match="object_classes"):
        evaluate(threshold_model, [image], [labels], EvalConfig(object_classes=("tree",)))
    with pytest.raises(ConfigError, match="iou_threshold must be in"):
        EvalConfig(iou_threshold=0)


def test_scores_through_the_written_polygons(threshold_model, scene, tmp_path):
    """--through-polygons scores what 'predict -o X.gpkg' writes, rasterized back."""
    image, labels = scene
    direct = evaluate(threshold_model, [image], [labels], EvalConfig(predict=CPU))
    keep = tmp_path / "kept"
    via = evaluate(
        threshold_model,
        [image],
        [labels],
        EvalConfig(predict=CPU, through_polygons=True, keep_predictions=keep),
    )
    assert (keep / "000_scene_classes.gpkg").is_file()
    with rasterio.open(keep / "000_scene_classes_polygons.tif") as ds:
        painted = ds.read(1)
    assert (painted[30:] == 255).all()  # nodata stays nodata
    assert (painted[:20, :20] == 1).all()  # the square building is written square
    # vegetation is smoothed (a 10 px square loses its corners); buildings stay as they are
    d, v = direct.pixel.confusion, via.pixel.confusion
    assert v[:, 1].tolist() == d[:, 1].tolist()
    assert 0.7 * d[:, 2].sum() <= v[:, 2].sum() < d[:, 2].sum()
    obj = via.objects[0]
    assert (obj.tp, obj.fp, obj.fn) == (0, 1, 1)
