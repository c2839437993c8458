"""Training Mask R-CNN with ``geoseg train`` from vector labels (each polygon one object)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from geoseg.errors import ConfigError
from geoseg.training import TrainConfig
from geoseg.training.data import VectorLabels
from geoseg.training.instances import INSTANCE_SHIFT, instance_targets
from tests.training.conftest import ORIGIN, roof_config, write_labels

torch = pytest.importorskip("torch")


def mrcnn_config(roofs: dict[str, Any], out: Any, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "architecture": "maskrcnn", "encoder": "resnet18",
        "arch_params": {"fpn_channels": 32, "detections": 30}, "chip_size": 64,
        "tile_size": 64, "overlap": 16, "epochs": 1, "batch_size": 4, "samples_per_epoch": 8,
        "lr": 0.002, "validation": {"split": "files", "fraction": 0.34, "max_chips": 4},
    }  # fmt: skip
    return roof_config(roofs, out, **{**settings, **overrides})


def test_vector_labels_give_touching_polygons_their_own_object_ids(tmp_path):
    x0, y0 = ORIGIN
    a = shapely.box(x0 + 4, y0 - 20, x0 + 12, y0 - 4)
    b = shapely.box(x0 + 12, y0 - 20, x0 + 22, y0 - 4)  # shares a wall with a
    tree = shapely.box(x0 + 24, y0 - 20, x0 + 28, y0 - 4)
    path = write_labels(
        tmp_path / "l.gpkg", [(a, "building"), (b, "building"), (tree, "vegetation")]
    )
    ds = VectorLabels(
        [str(path)],
        label_field="class",
        lookup={"building": 1, "vegetation": 2},
        crs=rasterio.crs.CRS.from_epsg(32633),
        res=(1.0, 1.0),
        instances=True,
    )
    mask = ds[slice(x0, x0 + 32, 1.0), slice(y0 - 32, y0, 1.0)]["mask"]
    assert set((mask % INSTANCE_SHIFT).unique().tolist()) == {0, 1, 2}
    targets = instance_targets(mask[None])[0]
    got = sorted(zip(targets["labels"].tolist(), targets["boxes"].tolist(), strict=True))
    assert got == [(1, [4.0, 4.0, 12.0, 20.0]), (1, [12.0, 4.0, 22.0, 20.0]),
                   (2, [24.0, 4.0, 28.0, 20.0])]  # fmt: skip
    assert targets["masks"].sum((1, 2)).tolist() == [8 * 16, 10 * 16, 4 * 16]


def test_instance_targets_skip_ignored_pixels_and_images_without_objects():
    empty = torch.full((1, 8, 8), 255, dtype=torch.int64)
    t = instance_targets(empty)[0]
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 8, 8)


def test_instance_models_need_vector_labels_and_no_contact_output(roofs, tmp_path):
    cfg = mrcnn_config(roofs, tmp_path / "r", contact_class="building")
    with pytest.raises(ConfigError, match="separates its objects itself"):
        TrainConfig.from_dict(cfg)
    raster_labels = tmp_path / "labels.tif"
    with rasterio.open(roofs["images"][0]) as src:
        profile = {**src.profile, "count": 1}
    with rasterio.open(raster_labels, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    cfg = mrcnn_config({**roofs, "images": roofs["images"][:1], "labels": raster_labels},
                       tmp_path / "r")  # fmt: skip
    cfg["sources"][0]["class_map"] = {0: "background", 1: "building"}
    with pytest.raises(ConfigError, match="learns building object by object"):
        TrainConfig.from_dict(cfg)


def test_mask_rcnn_trains_resumes_exactly_and_predicts(roofs, tmp_path):
    from geoseg.api import predict
    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.training import train

    straight = train(TrainConfig.from_dict(mrcnn_config(roofs, tmp_path / "a", epochs=2)))
    assert straight.card.task == "instance" and straight.card.architecture == "maskrcnn"
    assert all("val_miou" in row for row in straight.history)
    train(TrainConfig.from_dict(mrcnn_config(roofs, tmp_path / "b", epochs=1)))
    resumed = train(
        TrainConfig.from_dict(mrcnn_config(roofs, tmp_path / "b", epochs=2, resume=True))
    )
    a = load_checkpoint(straight.last).model.state_dict()
    b = load_checkpoint(resumed.last).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    out = predict(roofs["holdout"], tmp_path / "holdout.gpkg", model=straight.best, device="cpu")
    [(layer, count)] = out.vector_stats.polygons.items()
    assert pyogrio.read_info(out.vector, layer=layer)["features"] == count
