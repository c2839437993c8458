"""The contact output: its target, its loss, its training and how prediction uses it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin

from geoseg.errors import ConfigError, ModelCardError
from geoseg.infer.blend import CLASS_NODATA, StreamingBlender
from geoseg.models.card import ClassInfo, ModelCard
from geoseg.models.registry import build_model
from geoseg.tiling import make_grid
from geoseg.training.config import IGNORE_INDEX, TrainConfig
from geoseg.training.contact import CONTACT_FLAG, contact_pixels, encode_contact, split_contact
from geoseg.training.data import VectorLabels
from geoseg.training.losses import contact_loss
from geoseg.vectorize.polygonize import polygonize_array

from .conftest import ORIGIN, roof_config, write_labels


def test_contact_marks_both_sides_of_a_shared_wall_and_nothing_inside():
    ids = np.zeros((10, 12), np.int32)
    ids[2:8, 1:6] = 1
    ids[2:8, 6:11] = 2  # shares the wall between columns 5 and 6
    got = contact_pixels(ids, radius=1)
    assert got[2:8, 5:7].all()
    assert got.sum() == got[1:9, 5:7].sum()  # the wall and its two end pixels, nothing else
    assert not got[:, :4].any() and not got[:, 8:].any()
    wide = contact_pixels(ids, radius=2)
    assert wide[2:8, 4:8].all() and not wide[:, :3].any()


def test_contact_marks_narrow_gaps_but_not_lone_objects():
    ids = np.zeros((5, 9), np.int32)
    ids[1:4, 0:3] = 1
    ids[1:4, 4:7] = 2  # one-pixel gap at column 3
    got = contact_pixels(ids)
    assert got[1:4, 3].all() and got.sum() == got[:, 3].sum()
    alone = np.zeros((6, 6), np.int32)
    alone[1:5, 1:5] = 7
    assert not contact_pixels(alone).any()


def test_encoding_round_trips_and_keeps_ignored_pixels():
    mask = np.array([[0, 1, 2, IGNORE_INDEX]], np.uint8)
    flag = np.array([[True, True, False, True]])
    enc = encode_contact(mask, flag)
    assert enc.tolist() == [[CONTACT_FLAG, CONTACT_FLAG + 1, 2, IGNORE_INDEX]]
    classes, contact = split_contact(torch.from_numpy(enc.astype(np.int64)))
    assert classes.tolist() == mask.tolist()
    assert contact.tolist() == [[True, True, False, False]]


def test_contact_loss_counts_only_known_pixels():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :, 1] = True
    logit = torch.where(target, 6.0, -6.0)
    known = torch.ones_like(target)
    good = contact_loss(logit, target, known)
    bad = contact_loss(-logit, target, known)
    assert float(good) < 0.05 < float(bad)
    # Pixels whose contact state nobody knows change nothing.
    nobody = torch.zeros_like(target)
    assert float(contact_loss(-logit, target, nobody)) == 0.0
    part = known.clone()
    part[0, :, 2:] = False
    wrong_where_unknown = logit.clone()
    wrong_where_unknown[0, :, 2:] = -wrong_where_unknown[0, :, 2:]
    assert float(contact_loss(wrong_where_unknown, target, part)) == pytest.approx(
        float(contact_loss(logit, target, part))
    )


def test_vector_labels_flag_where_two_polygons_of_the_class_meet(tmp_path):
    x0, y0 = ORIGIN
    a = shapely.box(x0 + 4, y0 - 20, x0 + 12, y0 - 4)
    b = shapely.box(x0 + 12, y0 - 20, x0 + 22, y0 - 4)  # touches a along x = x0 + 12
    tree = shapely.box(x0 + 22, y0 - 20, x0 + 28, y0 - 4)  # touches b: another class
    path = write_labels(
        tmp_path / "l.gpkg", [(a, "building"), (b, "building"), (tree, "vegetation")]
    )
    ds = VectorLabels(
        [str(path)],
        label_field="class",
        lookup={"building": 1, "vegetation": 2},
        crs=rasterio.crs.CRS.from_epsg(32633),
        res=(1.0, 1.0),
        contact_class=1,
    )
    sample = ds[slice(x0, x0 + 32, 1.0), slice(y0 - 32, y0, 1.0)]
    mask = sample["mask"].numpy()
    classes, contact = (t.numpy() for t in split_contact(sample["mask"]))
    assert (classes[4:20, 4:22] == 1).all() and (classes[4:20, 22:28] == 2).all()
    assert contact[4:20, 11:13].all()  # the shared wall, both sides
    assert not contact[:, 20:].any()  # a building touching a tree is no contact
    assert contact.sum() == contact[3:21, 11:13].sum()
    plain = VectorLabels(
        [str(path)],
        label_field="class",
        lookup={"building": 1, "vegetation": 2},
        crs=rasterio.crs.CRS.from_epsg(32633),
        res=(1.0, 1.0),
    )[slice(x0, x0 + 32, 1.0), slice(y0 - 32, y0, 1.0)]["mask"].numpy()
    assert plain.max() < CONTACT_FLAG and (plain == classes).all() and mask.max() > CONTACT_FLAG


def _card(**changes: Any) -> ModelCard:
    classes = tuple(
        ClassInfo(i, n, c)
        for i, (n, c) in enumerate([("background", "#000000"), ("building", "#ff0000")])
    )
    fields: dict[str, Any] = {
        "name": "t",
        "architecture": "tinycnn",
        "bands": ("red", "green", "blue"),
        "classes": classes,
        "arch_params": {"width": 4, "depth": 1},
        "stride": 1,
        "tile_size": 64,
        "overlap": 8,
    }
    fields.update(changes)
    return ModelCard(**fields)


def test_card_contact_class_adds_an_output_and_old_cards_have_none():
    plain = _card()
    assert plain.contact_class is None and plain.n_outputs == plain.n_classes == 2
    card = _card(contact_class=1)
    assert card.n_outputs == 3 and card.n_classes == 2
    assert ModelCard.from_json(card.to_json()) == card
    old = json.loads(plain.to_json())
    old.pop("contact_class")  # a card written before the field existed
    assert ModelCard.from_dict(old).contact_class is None
    out = build_model(card)(torch.zeros(1, 3, 16, 16))
    assert out.shape[1] == 3
    for bad in (0, 2, 5):
        with pytest.raises(ModelCardError, match="contact_class"):
            _card(contact_class=bad)


def _blend_whole(
    probs: np.ndarray, tile: int, overlap: int, contact_class: int | None
) -> np.ndarray:
    """Blend ``probs`` (channels, H, W), the same for every tile, as the stream would."""
    c, h, w = probs.shape
    grid = make_grid(h, w, tile=tile, overlap=overlap, stride=1)
    n = c - (contact_class is not None)
    blender = StreamingBlender(grid, n, probabilities=False, contact_class=contact_class)
    out = np.full((h, w), 255, np.uint8)
    for t in grid:
        r0, c0 = t.window.row_off, t.window.col_off
        rh, cw = min(grid.tile_h, h - r0), min(grid.tile_w, w - c0)
        tile_p = np.zeros((c, grid.tile_h, grid.tile_w), np.float32)
        tile_p[:, :rh, :cw] = probs[:, r0 : r0 + rh, c0 : c0 + cw]
        valid = np.zeros((grid.tile_h, grid.tile_w), bool)
        valid[:rh, :cw] = True
        for b in blender.add(t, tile_p, valid):
            out[
                b.row_off : b.row_off + b.classes.shape[0],
                b.col_off : b.col_off + b.classes.shape[1],
            ] = b.classes
    return out


def test_blender_carves_contact_pixels_so_touching_buildings_come_out_apart():
    h, w = 70, 90
    probs = np.zeros((3, h, w), np.float32)
    probs[0] = 1.0
    inst = np.zeros((h, w), np.int32)
    inst[10:40, 5:45] = 1
    inst[10:40, 45:80] = 2  # a terrace: two houses sharing a wall at column 45
    inst[50:65, 20:60] = 3  # a building across the tile seams, touching nobody
    building = inst > 0
    probs[1, building], probs[0, building] = 0.9, 0.1
    probs[2] = contact_pixels(inst).astype(np.float32) * 0.8
    carved = _blend_whole(probs, tile=32, overlap=8, contact_class=1)
    assert (carved != CLASS_NODATA).all()
    assert (carved[inst > 0] == 1).sum() == building.sum() - (contact_pixels(inst) & building).sum()
    # Strips of 16 rows: every building crosses strip seams as well as tile seams.
    polys = polygonize_array(carved, from_origin(0, h, 1, 1), block_rows=16)
    buildings = [p for p in polys if p.value == 1]
    assert len(buildings) == 3  # the terrace splits in two; the seam-crossing one stays whole
    assert sorted(int(p.pixel_count) for p in buildings) == sorted(
        int(((inst == i) & ~contact_pixels(inst)).sum()) for i in (1, 2, 3)
    )
    merged = _blend_whole(probs[:2], tile=32, overlap=8, contact_class=None)
    assert len([p for p in polygonize_array(merged, from_origin(0, h, 1, 1)) if p.value == 1]) == 2
    # Contact never carves another class.
    probs[2] = 1.0
    assert (_blend_whole(probs, tile=32, overlap=8, contact_class=1)[~building] == 0).all()


def test_config_needs_a_vector_source_labelling_the_contact_class(roofs, tmp_path):
    cfg = roof_config(roofs, tmp_path / "r", contact_class="building")
    assert TrainConfig.from_dict(cfg).contact_class == "building"
    with pytest.raises(ConfigError, match="contact_class"):
        TrainConfig.from_dict(roof_config(roofs, tmp_path / "r", contact_class="tree"))
    with pytest.raises(ConfigError, match="contact_class"):
        TrainConfig.from_dict(roof_config(roofs, tmp_path / "r", contact_class="background"))
    # A config without the contact output serialises as before (runs resume unchanged).
    assert (
        "contact_class" not in TrainConfig.from_dict(roof_config(roofs, tmp_path / "r")).to_dict()
    )


@pytest.fixture(scope="module")
def terraces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Scenes of terraced red roofs (alternating tones, shared walls), each roof a polygon."""
    d = tmp_path_factory.mktemp("terraces")
    rng = np.random.default_rng(5)
    shapes: list[tuple[Any, str]] = []
    images = []
    size = 96
    for i in range(3):
        x0, y0 = ORIGIN[0] + 200 * i, ORIGIN[1]
        img = np.empty((3, size, size), np.uint8)
        img[0] = rng.integers(70, 110, (size, size))
        img[1] = rng.integers(120, 160, (size, size))
        img[2] = rng.integers(60, 100, (size, size))
        for r0 in (8, 40, 70):
            c = 6
            for k in range(6):
                wdt = int(rng.integers(8, 13))
                tone = (230, 60, 50) if k % 2 else (170, 40, 35)
                for b in range(3):
                    img[b, r0 : r0 + 16, c : c + wdt] = tone[b]
                shapes.append(
                    (shapely.box(x0 + c, y0 - r0 - 16, x0 + c + wdt, y0 - r0), "building")
                )
                c += wdt
        path = d / f"t{i}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=3,
            dtype="uint8",
            crs="EPSG:32633",
            transform=from_origin(x0, y0, 1, 1),
        ) as ds:
            ds.write(img)
        images.append(path)
    labels = write_labels(d / "terraces.gpkg", shapes)
    return {"images": images, "labels": labels}


def test_training_with_a_contact_output_saves_a_model_that_predicts_with_it(
    roofs, terraces, tmp_path
):
    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.training import train

    base = roof_config(roofs, tmp_path / "base", epochs=1, samples_per_epoch=16)
    base_run = train(TrainConfig.from_dict(base))
    cfg = roof_config(
        {**roofs, "images": terraces["images"], "labels": terraces["labels"]},
        tmp_path / "contact",
        epochs=2,
        samples_per_epoch=32,
        contact_class="building",
        init_weights=str(base_run.best),
    )
    result = train(TrainConfig.from_dict(cfg))
    assert result.card.contact_class == 1 and result.card.n_outputs == 3
    assert "val_contact_f1" in result.history[-1]
    assert 0.0 <= result.history[-1]["val_contact_f1"] <= 1.0
    loaded = load_checkpoint(result.best)
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape[1] == 3
    from geoseg.api import predict

    # The ONNX graph (softmax over the classes, sigmoid of the contact output) and
    # PyTorch carve the same pixels.
    runs = {}
    for backend in ("onnx", "torch"):
        out = predict(
            terraces["images"][0], tmp_path / f"{backend}.tif", model=result.best, backend=backend
        )
        with rasterio.open(out.classes) as ds:
            runs[backend] = ds.read(1)
        assert set(np.unique(runs[backend]).tolist()) <= {0, 1}
    assert (runs["onnx"] == runs["torch"]).mean() > 0.999
    # separate=False ignores the contact output: it only ever gives pixels back to the class.
    whole = predict(
        terraces["images"][0], tmp_path / "whole.tif", model=result.best, separate=False
    )
    with rasterio.open(whole.classes) as ds:
        kept = ds.read(1)
        assert '"separate": false' in ds.tags()["GEOSEG_PARAMETERS"]
    differ = kept != runs["onnx"]
    assert (kept[differ] == 1).all() and (runs["onnx"][differ] == 0).all()
    from geoseg.cli import main

    src = str(terraces["images"][0])
    main(["-q", "predict", src, "-o", str(tmp_path / "cli.tif"), "-m", str(result.best)])
    main(["-q", "predict", src, "-o", str(tmp_path / "cli_whole.tif"), "-m", str(result.best),
          "--no-separate"])  # fmt: skip
    for name, expect in (("cli.tif", runs["onnx"]), ("cli_whole.tif", kept)):
        with rasterio.open(tmp_path / name) as ds:
            assert np.array_equal(ds.read(1), expect)


def test_a_grown_head_keeps_the_warm_start_rows(tmp_path):
    from geoseg.models.checkpoint import save_checkpoint
    from geoseg.training.loop import load_init_weights

    card = _card(arch_params={"width": 4, "depth": 1})
    torch.manual_seed(0)
    old = build_model(card)
    save_checkpoint(old, card, tmp_path / "old")
    new = build_model(card.replace(contact_class=1))
    load_init_weights(new, tmp_path / "old", shared_outputs=2)
    o, n = old.state_dict(), new.state_dict()
    assert set(n) == {f"base.{k}" for k in o} | {k for k in n if k.startswith("refine.")}
    grown = [k for k in o if n[f"base.{k}"].shape != o[k].shape]
    assert grown
    for k in grown:
        assert torch.equal(n[f"base.{k}"][: o[k].shape[0]], o[k])
    for k in o:
        if k not in grown:
            assert torch.equal(n[f"base.{k}"], o[k])
    # Without shared outputs (other classes) the head keeps its fresh values.
    fresh = build_model(card.replace(contact_class=1))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_init_weights(fresh, tmp_path / "old")
    assert all(torch.equal(fresh.state_dict()[f"base.{k}"], before[f"base.{k}"]) for k in grown)
    # The refinement starts at zero: the warm-started network gives the old class logits.
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(new(x)[:, :2], old(x), atol=1e-6)


def test_pixels_of_a_whole_prediction_equal_tiled_with_contact(tmp_path):
    """Per-pixel carving after blending: tile size changes nothing."""
    rng = np.random.default_rng(1)
    h, w = 61, 77
    probs = rng.random((3, h, w)).astype(np.float32)
    probs[:2] /= probs[:2].sum(0)
    a = _blend_whole(probs, tile=32, overlap=0, contact_class=1)
    b = _blend_whole(probs, tile=128, overlap=0, contact_class=1)
    assert np.array_equal(a, b)
    expect = np.where((probs[1] > probs[0]) & (probs[2] <= 0.5), 1, 0)
    assert np.array_equal(a, expect)
