"""Training configs: YAML in, validated frozen dataclasses out, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.errors import ConfigError
from geoseg.training.config import TrainConfig, parse_class_map, parse_loss

REPO = Path(__file__).resolve().parents[2]


def minimal(**overrides):
    d = {
        "classes": ["background", "building", "vegetation", "cropland"],
        "sources": [
            {"name": "a", "images": "a/*.tif", "labels": "a.gpkg", "labelled_classes": ["building"]}
        ],
        "architecture": "tinycnn",
        "chip_size": 32,
    }
    d.update(overrides)
    return d


def test_example_config_is_valid():
    path = REPO / "examples" / "train_config.yaml"
    cfg = TrainConfig.from_yaml(path.read_text(encoding="utf-8"), path.parent)
    assert [s.name for s in cfg.sources] == ["dubai", "agoro-fields", "spacenet-rio"]
    dubai, agoro, rio = cfg.sources
    assert dubai.labelled_classes == ("building", "vegetation")  # from the class map
    assert dubai.kind == "raster" and agoro.kind == "vector"
    assert agoro.labelled_classes == ("cropland",) and rio.nodata == 0
    assert Path(dubai.images[0]).is_absolute()
    assert cfg.loss == (("ce", 1.0), ("dice", 1.0))
    assert cfg.chip_size % cfg.stride == 0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_defaults_and_round_trip(tmp_path):
    cfg = TrainConfig.from_dict(minimal(), tmp_path)
    assert cfg.sources[0].images == (str(tmp_path / "a/*.tif"),)
    assert cfg.tile_size == 512 and cfg.overlap == 64
    assert cfg.classes[0].vectorize is False and cfg.classes[1].vectorize is True
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_overrides(epochs=3, lr=None).epochs == 3
    # the schedule keys are written only when changed: older runs' configs compare equal
    assert "lr_schedule" not in cfg.to_dict() and "warmup" not in cfg.to_dict()
    lin = TrainConfig.from_dict(minimal(lr_schedule="linear", warmup=0.0), tmp_path)
    assert lin.to_dict()["lr_schedule"] == "linear" and lin.to_dict()["warmup"] == 0.0
    assert TrainConfig.from_dict(lin.to_dict()) == lin
    assert "seed" not in cfg.to_dict()["validation"]
    fixed = TrainConfig.from_dict(minimal(validation={"seed": 3}), tmp_path)
    assert fixed.to_dict()["validation"]["seed"] == 3
    assert TrainConfig.from_dict(fixed.to_dict()) == fixed
    # normalisation likewise: only when given
    assert "mean" not in cfg.to_dict() and cfg.mean is None
    norm = TrainConfig.from_dict(minimal(mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.25]), tmp_path)
    assert norm.mean == (0.4, 0.5, 0.6) and norm.to_dict()["std"] == [0.2, 0.2, 0.25]
    assert TrainConfig.from_dict(norm.to_dict()) == norm


def test_a_warm_start_from_a_bundled_model_takes_its_network_and_classes(tmp_path):
    from geoseg.models import load_card
    from geoseg.models.checkpoint import bundled_models

    card = load_card("default")
    d = minimal()
    for key in ("classes", "architecture"):
        d.pop(key)
    cfg = TrainConfig.from_dict({**d, "init_weights": "default", "chip_size": 192}, tmp_path)
    assert cfg.init_weights == bundled_models()["default"]
    assert cfg.classes == card.classes and cfg.bands == card.bands
    assert (cfg.architecture, cfg.encoder) == (card.architecture, card.encoder)
    assert cfg.pixel_size_m == card.pixel_size_m and cfg.tile_size == card.tile_size
    assert cfg.mean is None  # the loop takes the card's normalisation (tests/training)
    # what the config says wins; a folder of that name beside the config wins over the name
    own = TrainConfig.from_dict({**minimal(), "init_weights": "default"}, tmp_path)
    assert own.architecture == "tinycnn" and own.classes[1].definition == ""
    assert card.classes[1].definition
    # a bundled name means the bundled model, as --model does; a folder is ./default
    (tmp_path / "default").mkdir()
    assert (
        TrainConfig.from_dict(minimal(init_weights="default"), tmp_path).init_weights
        == (bundled_models()["default"])
    )
    assert TrainConfig.from_dict(minimal(init_weights="./default"), tmp_path).init_weights == (
        tmp_path / "default"
    )
    # another architecture does not take the checkpoint's encoder
    other = {**d, "init_weights": "default", "architecture": "tinycnn", "chip_size": 32}
    assert TrainConfig.from_dict(other, tmp_path).encoder is None
    # a round trip through to_dict gives the same config
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_a_resumed_warm_start_takes_what_it_left_out_from_its_saved_config(tmp_path):
    import json

    from geoseg.models import load_card

    card = load_card("default")
    d = minimal()
    for key in ("classes", "architecture"):
        d.pop(key)
    # a run started before warm starts inherited anything: its saved config has
    # the settings it ran with, not the checkpoint's
    run = tmp_path / "run"
    run.mkdir()
    saved = {**minimal(), "pixel_size_m": None, "tile_size": 256}
    (run / "train_state.json").write_text(json.dumps({"config": saved}))
    cfg = TrainConfig.from_dict(
        {**d, "init_weights": "default", "output": str(run), "resume": True}, tmp_path
    )
    assert cfg.architecture == "tinycnn" and cfg.pixel_size_m is None and cfg.tile_size == 256
    assert cfg.classes != card.classes
    fresh = TrainConfig.from_dict({**d, "init_weights": "default", "chip_size": 192}, tmp_path)
    assert fresh.pixel_size_m == card.pixel_size_m


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"chip_size": 30, "architecture": "unet"}, "chip_size"),
        ({"classes": ["background"]}, "classes"),
        ({"epochs": 0}, "epochs"),
        ({"loss": "ce+tversky"}, "loss"),
        ({"class_weights": [1, 2]}, "class_weights"),
        ({"architecture": "nonet"}, "architecture"),
        ({"validation": {"split": "pixels"}}, "validation.split"),
        ({"augment": {"contrast": 2}}, "augment.contrast"),
        ({"overlap": 300}, "overlap"),
        ({"input_range": [10, 0]}, "input_range"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"warmup": 0.9}, "warmup"),
        ({"validation": {"seed": -1}}, "validation.seed"),
        ({"mean": [0.5, 0.5, 0.5]}, "mean"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "mean"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}, "std"),
        ({"distill": 1.0}, "distill"),
        ({"distill": -1.0}, "distill"),
        (
            {"distill": 1.0, "init_weights": "default", "classes": ["background", "building"]},
            "distill",
        ),
    ],
)
def test_errors_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.from_dict(minimal(**change))


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"labelled_classes": ["tree"]}, "sources[0].labelled_classes"),
        ({"labelled_classes": ["background"]}, "sources[0].labelled_classes"),
        ({"labelled_classes": []}, "sources[0].labelled_classes"),
        ({"class_map": {"roof": "building", "tree": "vegetation"}}, "sources[0].class_map"),
        ({"class_map": {"roof": "house"}}, "sources[0].class_map"),
        ({"crs": "EPSG:999999"}, "sources[0].crs"),
        ({"weight": 0}, "sources[0].weight"),
        ({"bands": [1, 2]}, "sources[0].bands"),
        ({"absent_classes": ["tree"]}, "sources[0].absent_classes"),
        ({"absent_classes": ["background"]}, "sources[0].absent_classes"),
        ({"absent_classes": ["building"]}, "sources[0].absent_classes"),
    ],
)
def test_source_errors_name_the_field(source, field):
    src = {"name": "a", "images": "a.tif", "labels": "a.gpkg", "labelled_classes": ["building"]}
    src.update(source)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_dict(minimal(sources=[src]))


def test_absent_classes_are_known_but_not_labelled():
    src = {
        "name": "city",
        "images": "a.tif",
        "labels": "m.tif",
        "class_map": {1: "building", 2: "background", 4: "vegetation"},
        "absent_classes": "cropland",
    }
    cfg = TrainConfig.from_dict(minimal(sources=[src]))
    city = cfg.sources[0]
    assert city.labelled_classes == ("building", "vegetation")
    assert city.absent_classes == ("cropland",)
    assert city.known_classes == ("building", "vegetation", "cropland")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_bundled_recipe_follows_the_class_definition():
    """Every source of the bundled model's recipe maps its labels to the one definition."""
    path = REPO / "examples" / "bundled" / "train.yaml"
    cfg = TrainConfig.from_yaml(path.read_text(encoding="utf-8"), path.parent)
    by_name = {s.name: s for s in cfg.sources}
    dubai = by_name["dubai"]
    # Dubai: land, road, water are background; its vegetation (lawns and gardens too) is
    # vegetation; a city has no farmland, so its background is a negative for cropland.
    assert dict(dubai.class_map) == {
        0: "ignore",
        1: "building",
        2: "background",
        3: "background",
        4: "vegetation",
        5: "background",
    }
    assert dubai.absent_classes == ("cropland",)
    # agoro: non-exhaustive field outlines say nothing about other classes.
    assert by_name["agoro-fields"].known_classes == ("cropland",)
    synth = by_name["synthetic"]
    assert synth.known_classes == ("building", "vegetation", "cropland")
    assert "spacenet-rio" not in by_name  # held out whole for the Rio building scores


def test_unknown_fields_and_raster_class_maps():
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict(minimal(epoch=3))
    src = {"images": "a.tif", "labels": "m.tif", "class_map": {"roof": "building"}}
    with pytest.raises(ConfigError, match="pixel value"):
        TrainConfig.from_dict(minimal(sources=[src]))
    src["class_map"] = {1: "building", 0: "ignore", "#00ff00": "vegetation"}
    cfg = TrainConfig.from_dict(minimal(sources=[src]))
    assert cfg.sources[0].labelled_classes == ("building", "vegetation")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml("classes: [a, b\n")


def test_parsers():
    assert parse_loss({"focal": 1, "dice": 0.25}) == (("focal", 1.0), ("dice", 0.25))
    assert parse_loss("0.5*ce + dice") == (("ce", 0.5), ("dice", 1.0))
    with pytest.raises(ConfigError):
        parse_loss("ce+ce")
    assert parse_class_map("0=ignore,1=building") == {0: "ignore", 1: "building"}
    with pytest.raises(ConfigError, match="VALUE=CLASS"):
        parse_class_map("building")
