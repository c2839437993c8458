"""End to end: train on tiny generated scenes, then predict and evaluate with the checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from geoseg.cli.main import cli
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.evaluate import EvalConfig, evaluate
from geoseg.models import ModelCard, build_model, load_card
from geoseg.pipeline import PredictConfig
from geoseg.training import TrainConfig, train
from geoseg.training.loop import load_encoder_weights, load_init_weights, lr_at
from tests.training.conftest import roof_config


def test_training_learns_roofs_and_the_checkpoint_predicts(roofs, tmp_path):
    cfg = TrainConfig.from_dict(roof_config(roofs, tmp_path / "run"))
    events = []
    result = train(cfg, events.append)

    assert {e.kind for e in events} == {"setup", "step", "epoch"}
    assert [e.epoch for e in events if e.kind == "epoch"] == [1, 2, 3, 4]
    assert result.best_miou is not None and result.best_miou > 0.8
    run = tmp_path / "run"
    for name in (
        "model/model.safetensors",
        "model/model_card.json",
        "last/model.safetensors",
        "train_state.json",
        "optimizer.pt",
        "log.csv",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run / "log.csv").read_text().splitlines()) == 1 + cfg.epochs

    card = load_card(result.best)
    assert [c.name for c in card.classes] == ["background", "building"]
    assert card.pixel_size_m == pytest.approx(1.0) and card.tile_size == 64
    assert len(card.mean) == 3 and all(0 < s < 1 for s in card.std)
    assert card.training["chip_size"] == 32 and card.training["seed"] == 0
    assert card.metrics["val_miou"] == pytest.approx(result.best_miou)
    source = card.provenance["sources"][0]
    assert source["labelled_classes"] == ["building"] and source["validation"] == "files"
    assert len(source["parts"][0]["val_files"]) == 1

    # the held-out scene, through the same tiled path as `geoseg predict`
    report = evaluate(
        result.best,
        [roofs["holdout"]],
        [roofs["holdout_labels"]],
        EvalConfig(predict=PredictConfig(device="cpu"), keep_predictions=tmp_path / "pred"),
    )
    assert report.pixel.classes[1].iou > 0.8
    assert report.objects[0].name == "building" and report.objects[0].recall > 0.5

    out = tmp_path / "cli.tif"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoseg",
            "predict",
            str(roofs["holdout"]),
            "-o",
            str(out),
            "--model",
            str(result.best),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with rasterio.open(out) as a, rasterio.open(report.images[0].prediction) as b:
        assert (a.read(1) == b.read(1)).all()
        assert (a.read(1) == 1).sum() > 500


def stop_after_first_epoch(event):
    """A training callback that kills the run once its first epoch is saved."""
    if event.kind == "epoch":
        raise KeyboardInterrupt


def test_resume_continues_exactly(roofs, tmp_path):
    base = roof_config(roofs, tmp_path / "a", epochs=2, samples_per_epoch=32)
    straight = train(TrainConfig.from_dict(base))
    part = {**base, "output": str(tmp_path / "b")}
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict(part), stop_after_first_epoch)
    resumed = train(TrainConfig.from_dict({**part, "resume": True}))
    a = load_file(straight.last / "model.safetensors")
    b = load_file(resumed.last / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]

    with pytest.raises(OutputExistsError, match="resume=True"):
        train(TrainConfig.from_dict(part))
    with pytest.raises(ConfigError, match="cannot resume: lr"):
        train(TrainConfig.from_dict({**part, "resume": True, "lr": 0.5}))
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(TrainConfig.from_dict({**part, "output": str(tmp_path / "c"), "resume": True}))


def test_resume_takes_the_same_paths_spelled_another_way(roofs, tmp_path):
    """A run started from a config elsewhere saved ``examples/x/../../runs/r``: resuming it as
    ``runs/r`` is the same run; another output or an edited value is still refused."""
    from geoseg.training.loop import _check_resumable

    config = TrainConfig.from_dict(roof_config(roofs, tmp_path / "runs" / "r"))
    saved = config.to_dict()
    spelled = tmp_path / "examples" / "x" / ".." / ".." / "runs" / "r"
    saved["output"] = str(spelled)
    saved["sources"] = [
        {**s, "images": [os.path.join(p, ".") for p in s["images"]]}
        if isinstance(s["images"], list)
        else {**s, "images": os.path.join(s["images"], ".")}
        for s in saved["sources"]
    ]
    _check_resumable(saved, config)
    with pytest.raises(ConfigError, match="cannot resume: output"):
        _check_resumable({**saved, "output": str(tmp_path / "other")}, config)
    with pytest.raises(ConfigError, match="cannot resume: lr"):
        _check_resumable({**saved, "lr": 0.123}, config)


def test_cli_resume_run_dir_continues_exactly(roofs, tmp_path):
    """``geoseg train --resume RUN_DIR`` takes the run's saved config and goes on exactly."""
    base = roof_config(roofs, tmp_path / "a", epochs=2, samples_per_epoch=32)
    straight = train(TrainConfig.from_dict(base))
    part = {**base, "output": str(tmp_path / "b")}
    with pytest.raises(KeyboardInterrupt):  # a run killed after one of its two epochs ...
        train(TrainConfig.from_dict(part), stop_after_first_epoch)
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--resume", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output  # ... goes on to the same weights as the straight run
    a = load_file(straight.last / "model.safetensors")
    b = load_file(tmp_path / "b" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert [h["train_loss"] for h in state["history"]] == [
        h["train_loss"] for h in straight.history
    ]
    r = runner.invoke(cli, ["train", "--resume", str(tmp_path / "nowhere")])
    assert r.exit_code != 0 and "train_state.json" in str(r.exception or r.output)


def test_a_run_can_start_from_another_runs_weights(roofs, tmp_path):
    first = train(TrainConfig.from_dict(roof_config(roofs, tmp_path / "a", epochs=1)))
    donor = load_file(first.last / "model.safetensors")
    # A warm start for three classes from a two-class model: the body is taken, the head
    # (another shape) keeps its fresh values.
    cfg = roof_config(roofs, tmp_path / "b", classes=["background", "building", "vegetation"])
    card = ModelCard.from_dict(
        {
            "name": "x",
            "architecture": "tinycnn",
            "arch_params": {"width": 12, "depth": 2},
            "bands": ["red", "green", "blue"],
            "classes": [
                {"id": i, "name": n, "color": "#000000"} for i, n in enumerate(cfg["classes"])
            ],
        }
    )
    torch.manual_seed(5)
    model = build_model(card)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = load_init_weights(model, first.last)
    after = model.state_dict()
    same = [k for k in donor if k in after and donor[k].shape == after[k].shape]
    assert n == len(same) and 0 < n < len(after)
    assert all(torch.equal(after[k], donor[k].to(after[k].dtype)) for k in same)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in same)
    with pytest.raises(ConfigError, match="init_weights"):
        load_init_weights(
            build_model(card.replace(arch_params={"width": 5, "depth": 1})), first.last
        )
    # The training config takes it too, and the run starts from those weights.
    run = train(TrainConfig.from_dict({**cfg, "init_weights": str(first.last), "epochs": 1}))
    assert run.card.training["init_weights"] == str(first.last)


def test_a_fine_tune_keeps_the_checkpoints_classes_network_and_normalisation(roofs, tmp_path):
    from geoseg.models import load_checkpoint, save_checkpoint

    first = train(TrainConfig.from_dict(roof_config(roofs, tmp_path / "a", epochs=1)))
    loaded = load_checkpoint(first.last)
    donor = tmp_path / "donor"
    save_checkpoint(
        loaded.model,
        loaded.card.replace(
            name="donor",
            mean=(0.1, 0.2, 0.3),
            std=(0.4, 0.5, 0.6),
            licence="CC0",
            postprocess={"building": {"min_area_m2": 7.0}},
        ),
        donor,
    )
    base = roof_config(roofs, tmp_path / "b", epochs=1)
    for key in ("classes", "architecture", "arch_params", "tile_size", "overlap"):
        base.pop(key)
    cfg = TrainConfig.from_dict({**base, "init_weights": str(donor)})
    assert cfg.class_names == ("background", "building") and cfg.architecture == "tinycnn"
    assert cfg.arch_params == {"width": 12, "depth": 2} and (cfg.tile_size, cfg.overlap) == (64, 8)
    run = train(cfg)
    # the weights were learnt on inputs scaled by the donor's card: the fine-tune keeps it
    assert run.card.mean == (0.1, 0.2, 0.3) and run.card.std == (0.4, 0.5, 0.6)
    assert run.card.provenance["normalisation"] == "from the card of init_weights (donor)"
    assert run.card.postprocess == {"building": {"min_area_m2": 7.0}}
    assert "donor" in run.card.licence and "CC0" in run.card.licence
    assert run.card.provenance["init_weights"]["name"] == "donor"
    # distill's teacher sees a batch scaled by the run's normalisation as the donor scaled it
    from geoseg.training.loop import _teacher

    own = run.card.replace(mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.1))
    teacher = _teacher(cfg.with_overrides(distill=1.0), own, torch.device("cpu"))
    assert teacher is not None
    raw = torch.rand(1, 3, 32, 32)
    mean_t, std_t = (
        torch.tensor(v)[None, :, None, None] for v in ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    )
    mean_o, std_o = (torch.tensor(v)[None, :, None, None] for v in (own.mean, own.std))
    with torch.no_grad():
        expected = loaded.model((raw - mean_t) / std_t)
        assert torch.allclose(teacher((raw - mean_o) / std_o), expected, atol=1e-4)
    # another input range: the donor's statistics no longer apply and are measured
    other = train(
        TrainConfig.from_dict(
            {**base, "init_weights": str(donor), "input_range": [0, 1000], "overwrite": True}
        )
    )
    assert other.card.mean != (0.1, 0.2, 0.3)
    assert other.card.provenance["normalisation"] == "measured on 8 training chips"
    # the CLI: a fine-tune needs no --classes
    r = CliRunner().invoke(
        cli,
        [
            "train",
            "--init-weights",
            str(donor),
            "--images",
            *[str(p) for p in roofs["images"]],
            "--labels",
            str(roofs["labels"]),
            "--labelled-classes",
            "building",
            "--nodata",
            "0",
            "--chip-size",
            "32",
            "--epochs",
            "1",
            "--samples-per-epoch",
            "16",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 0, r.output
    card = load_card(tmp_path / "c" / "last")
    assert [c.name for c in card.classes] == ["background", "building"]
    assert card.mean == (0.1, 0.2, 0.3) and card.architecture == "tinycnn"
    assert card.training["sources"][0]["nodata"] == 0
    # the Python API takes the same settings as a mapping
    import geoseg

    api = geoseg.train({**base, "init_weights": str(donor), "output": str(tmp_path / "d")})
    assert load_card(api.last).mean == (0.1, 0.2, 0.3)
    r = CliRunner().invoke(cli, ["train", "--images", str(roofs["images"][0]), "--labels", "x"])
    assert r.exit_code != 0 and "--init-weights" in str(r.exception or r.output)


def test_distill_keeps_what_the_labels_leave_open(roofs, tmp_path):
    """A building-only fine-tune of a three-class model: with ``distill`` the background
    pixels keep the donor's split between background and vegetation."""
    from geoseg.models import load_checkpoint

    three = ["background", "building", "vegetation"]
    donor = train(
        TrainConfig.from_dict(roof_config(roofs, tmp_path / "donor", classes=three, epochs=1))
    ).last
    with rasterio.open(roofs["holdout"]) as src:
        raw = torch.from_numpy(src.read().astype("float32"))[None]

    def probs(model_dir):
        loaded = load_checkpoint(model_dir)
        mean = torch.tensor(loaded.card.mean)[:, None, None]
        std = torch.tensor(loaded.card.std)[:, None, None]
        with torch.no_grad():
            return loaded.model((raw / 255 - mean) / std).softmax(1)[0]

    def share(p):  # the vegetation share of background + vegetation
        return p[2] / (p[0] + p[2])

    before = probs(donor)
    open_ = before[1] < 0.5  # pixels the donor does not call building
    base = roof_config(roofs, tmp_path / "x", epochs=2)
    for key in ("classes", "architecture", "arch_params"):
        base.pop(key)
    drift = {}
    for weight in (0.0, 5.0):
        out = tmp_path / f"ft{weight}"
        cfg = {**base, "init_weights": str(donor), "distill": weight, "output": str(out)}
        run = train(TrainConfig.from_dict(cfg))
        assert run.card.training.get("distill", 0.0) == weight
        drift[weight] = float((share(probs(run.last)) - share(before)).abs()[open_].mean())
    assert drift[5.0] < 0.5 * drift[0.0], drift


def test_encoder_weights_come_from_a_local_file(tmp_path):
    card = ModelCard.from_dict(
        {
            "name": "u",
            "architecture": "unet",
            "encoder": "resnet18",
            "bands": ["red", "green", "blue"],
            "classes": [
                {"id": 0, "name": "background", "color": "#000000"},
                {"id": 1, "name": "building", "color": "#ff0000"},
            ],
        }
    )
    torch.manual_seed(1)
    donor = build_model(card)
    state = dict(donor.encoder.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # a classifier head the encoder lacks
    torch.save(state, tmp_path / "resnet18.pth")
    torch.manual_seed(2)
    model = build_model(card)
    n = load_encoder_weights(model, tmp_path / "resnet18.pth")
    assert n == len(donor.encoder.state_dict())
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    # A contact model wraps the network; its encoder is found inside.
    wrapped = build_model(card.replace(contact_class=1))
    assert load_encoder_weights(wrapped, tmp_path / "resnet18.pth") == n
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(wrapped.base.encoder.state_dict()[k], v)
    tiny = build_model(card.replace(architecture="tinycnn", encoder=None, stride=1))
    with pytest.raises(ConfigError, match="no encoder"):
        load_encoder_weights(tiny, tmp_path / "resnet18.pth")


def test_cli_train_paths_on_the_command_line_are_relative_to_the_working_directory(
    roofs, tmp_path, monkeypatch
):
    cfg = roof_config(roofs, tmp_path / "ignored", epochs=1, samples_per_epoch=16)
    cfg["output"] = "from-config"
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "train.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["train", "--config", "configs/train.yaml", "-o", "here"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "here" / "model" / "model_card.json").is_file()
    assert not (configs / "here").exists() and not (configs / "from-config").exists()
    # the config's own relative paths stay relative to its folder
    r = CliRunner().invoke(cli, ["train", "--config", "configs/train.yaml"])
    assert r.exit_code == 0, r.output
    assert (configs / "from-config" / "model" / "model_card.json").is_file()


def test_cli_train_from_yaml_and_flags(roofs, tmp_path):
    cfg = roof_config(roofs, tmp_path / "ignored", epochs=1, samples_per_epoch=16)
    cfg.pop("output")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(
        cli, ["train", "--config", str(path), "-o", str(tmp_path / "y"), "--seed", "3"]
    )
    assert r.exit_code == 0, r.output
    assert "best model" in r.output and "epoch 1/1" in r.output
    saved = json.loads((tmp_path / "y" / "model" / "model_card.json").read_text())
    assert saved["training"]["seed"] == 3 and saved["training"]["epochs"] == 1

    args = [
        "train",
        "--images",
        str(roofs["images"][0]),
        *map(str, roofs["images"][1:]),
        "--labels",
        str(roofs["labels"]),
        "--classes",
        "background,building:#ff0000",
        "--labelled-classes",
        "building",
        "--arch",
        "tinycnn",
        "--chip-size",
        "32",
        "--epochs",
        "1",
        "--samples-per-epoch",
        "16",
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "f"),
    ]
    r = runner.invoke(cli, [*args, "--val-fraction", "0"])
    assert r.exit_code == 0, r.output
    assert "no validation" in r.output
    card = load_card(tmp_path / "f" / "model")
    assert card.classes[1].color == "#ff0000" and "val_miou" not in card.metrics


def test_cli_config_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "classes": ["background", "building"],
                "chip_size": 7,
                "sources": [
                    {"images": "x.tif", "labels": "x.gpkg", "labelled_classes": ["building"]}
                ],
            }
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "geoseg", "train", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "chip_size" in lines[0] and "Traceback" not in r.stderr


def test_learning_rate_schedule():
    rates = [lr_at(s, 100, 1e-3) for s in range(100)]
    assert rates[4] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    assert np.all(np.diff(rates[5:]) <= 0)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_learning_rate_schedules(schedule):
    rates = np.array([lr_at(s, 200, 1e-3, warmup=0.1, schedule=schedule) for s in range(200)])
    assert np.all(np.diff(rates[:20]) > 0) and rates[19] == pytest.approx(1e-3)
    after = rates[20:]
    if schedule == "constant":
        assert np.all(after == pytest.approx(1e-3))
    else:
        assert np.all(np.diff(after) < 0) and after[-1] == pytest.approx(1e-5)
        mid = after[len(after) // 2]
        # cosine stays high longer than a straight line halfway down
        assert mid == pytest.approx(5.05e-4, rel=0.02) or schedule == "cosine"
    no_warmup = lr_at(0, 200, 1e-3, warmup=0.0, schedule=schedule)
    assert no_warmup == pytest.approx(1e-3)


def test_split_init_starts_new_classes_as_copies_whose_group_is_the_checkpoint(tmp_path):
    """A class split into finer ones: merged back, the network starts as the checkpoint."""
    from geoseg.models.checkpoint import save_checkpoint
    from geoseg.models.groups import MergedOutputs

    def card_of(names):
        return ModelCard.from_dict(
            {
                "name": "x",
                "architecture": "tinycnn",
                "arch_params": {"width": 6, "depth": 1},
                "bands": ["red", "green", "blue"],
                "classes": [{"id": i, "name": n, "color": "#000000"} for i, n in enumerate(names)],
            }
        )

    old_card = card_of(["background", "building", "vegetation"])
    torch.manual_seed(2)
    old = build_model(old_card)
    with torch.no_grad():
        for p in old.parameters():
            p.mul_(3.0)
    save_checkpoint(old, old_card, tmp_path / "old")
    new_card = card_of(["background", "building", "vegetation", "road", "water", "cropland"])
    split = {3: 0, 4: 0, 5: 2}  # road and water from background, cropland from vegetation
    new = build_model(new_card)
    load_init_weights(new, tmp_path / "old", shared_outputs=3, split=split)
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        before = old(x).softmax(1)
        fine = new(x).softmax(1)
        merged = MergedOutputs(new, [[0, 3, 4], [1], [2, 5]])(x).softmax(1)
    assert torch.allclose(merged, before, atol=1e-5)
    # The members of a group share its probability equally at the start.
    assert torch.allclose(fine[:, 3], before[:, 0] / 3, atol=1e-5)
    assert torch.allclose(fine[:, 5], before[:, 2] / 2, atol=1e-5)
    # Without split the new classes start from their random rows: not the checkpoint.
    plain = build_model(new_card)
    load_init_weights(plain, tmp_path / "old", shared_outputs=3)
    with torch.no_grad():
        other = MergedOutputs(plain, [[0, 3, 4], [1], [2, 5]])(x).softmax(1)
    assert not torch.allclose(other, before, atol=1e-3)
    # A split needs a head that grows from the checkpoint's classes.
    with pytest.raises(ConfigError, match="split_init"):
        load_init_weights(build_model(new_card), tmp_path / "old", split=split)


def test_split_init_in_a_run_and_its_config_errors(roofs, tmp_path):
    first = train(TrainConfig.from_dict(roof_config(roofs, tmp_path / "a", epochs=1)))
    cfg = roof_config(
        roofs,
        tmp_path / "b",
        epochs=1,
        classes=["background", "building", "shadow"],
        init_weights=str(first.last),
        split_init={"background": ["shadow"]},
    )
    config = TrainConfig.from_dict(cfg)
    assert config.split_init == (("background", ("shadow",)),)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert "split_init" not in TrainConfig.from_dict(roof_config(roofs, tmp_path / "c")).to_dict()
    run = train(config)
    assert [c.name for c in run.card.classes] == ["background", "building", "shadow"]
    assert run.card.training["split_init"] == {"background": ["shadow"]}
    # The command line says the same with --split-init CLASS=CLASS,CLASS.
    cli_cfg = {k: v for k, v in cfg.items() if k not in ("split_init", "output")}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(cli_cfg))
    args = ["train", "--config", str(path), "-o", str(tmp_path / "e")]
    r = CliRunner().invoke(cli, [*args, "--split-init", "background=shadow"])
    assert r.exit_code == 0, r.output
    assert load_card(tmp_path / "e" / "model").training["split_init"] == {"background": ["shadow"]}
    r = CliRunner().invoke(cli, [*args, "--split-init", "background", "--overwrite"])
    assert r.exit_code != 0 and "CLASS=CLASS,CLASS" in r.output
    bad = [
        ({"split_init": {"background": ["road"]}}, "unknown class 'road'"),
        ({"split_init": {"background": ["background"]}}, "is split itself"),
        ({"split_init": {"background": ["shadow"], "building": ["shadow"]}}, "split from twice"),
        ({"split_init": {"background": []}}, "must list the classes"),
        ({"split_init": ["shadow"]}, "must map a class"),
        ({"init_weights": None}, "set init_weights"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict({**cfg, **change})
    # A class the checkpoint already has cannot be split off; one it lacks cannot be split.
    for split in ({"background": ["building"]}, {"shadow": ["building"]}):
        with pytest.raises(ConfigError, match="split_init"):
            train(
                TrainConfig.from_dict({**cfg, "split_init": split, "output": str(tmp_path / "d")})
            )


def test_a_warm_start_from_a_merged_model_keeps_its_finer_outputs(roofs, tmp_path):
    """Fine-tuning a model made by `geoseg models merge` trains the same grouped network."""
    from geoseg.models import load_checkpoint, wrap_state_dict
    from geoseg.models.groups import merge_classes

    classes = ["background", "building", "shadow"]
    fine = train(
        TrainConfig.from_dict(roof_config(roofs, tmp_path / "a", epochs=1, classes=classes))
    )
    grouped = merge_classes(load_checkpoint(fine.last).card, {"background": ["shadow"]})
    wrap_state_dict(fine.last / "model.safetensors", grouped, tmp_path / "merged")
    donor = load_file(tmp_path / "merged" / "model.safetensors")
    cfg = roof_config(roofs, tmp_path / "b", epochs=1, init_weights=str(tmp_path / "merged"))
    cfg.pop("classes")  # inherited from the merged card: background, building
    config = TrainConfig.from_dict(cfg)
    assert config.class_names == ("background", "building")
    assert load_init_weights(build_model(grouped), tmp_path / "merged") == len(donor)
    run = train(config)
    assert run.card.output_groups == ((0, 2), (1,))
    again = load_checkpoint(run.last)
    assert again.card.n_network_outputs == 3
    with torch.no_grad():
        assert again.model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    # Other classes: the body is taken from under the wrapper, the head starts fresh ...
    plain = build_model(grouped.replace(output_groups=()))
    n = load_init_weights(plain, tmp_path / "merged")
    assert 0 < n < len(donor)
    # ... even where its rows have the shape of the new head's: background, building and
    # road are not the merged network's background, building and shadow.
    fine_card = load_checkpoint(fine.last).card
    road = dataclasses.replace(fine_card.classes[2], name="road", layer="road")
    other_card = fine_card.replace(classes=(*fine_card.classes[:2], road))
    other = build_model(other_card)
    fresh = {k: v.clone() for k, v in other.state_dict().items()}
    n = load_init_weights(other, tmp_path / "merged", card=other_card)
    after = other.state_dict()
    head = [k for k in after if k.rsplit(".", 1)[0] == max(after).rsplit(".", 1)[0]]
    assert n == len(donor) - len(head)
    assert all(torch.equal(after[k], fresh[k]) for k in head)


def test_head_lr_scale_moves_the_output_layer_faster(roofs, tmp_path):
    from geoseg.models.contact import ContactRefine
    from geoseg.models.groups import MergedOutputs
    from geoseg.training.loop import output_layer

    first = train(TrainConfig.from_dict(roof_config(roofs, tmp_path / "a", epochs=1)))
    card = first.card
    net = build_model(card)
    last = [p for p in net.parameters()][-2:]  # the tiny network's last conv: weight, bias
    assert [id(p) for p in output_layer(net, card)] == [id(p) for p in last]
    # Inside a wrapper it is the wrapped network's head, found by the network's output count.
    grouped = card.replace(
        classes=(*card.classes, card.classes[0].__class__(2, "shadow", "#000000")),
    )
    grouped_net = build_model(grouped)
    merged_card = grouped.replace(classes=card.classes, output_groups=((0, 2), (1,)))
    wrapped = MergedOutputs(grouped_net, [[0, 2], [1]])
    head = output_layer(wrapped, merged_card)
    assert [id(p) for p in head] == [id(p) for p in list(grouped_net.parameters())[-2:]]
    assert head[0].shape[0] == 3
    contact = build_model(card.replace(contact_class=1))
    assert isinstance(contact, ContactRefine)
    head = output_layer(contact, card.replace(contact_class=1))
    assert head[0].shape[0] == 3 and all(
        any(p is q for q in contact.base.parameters()) for p in head
    )
    start = load_file(first.last / "model.safetensors")
    head_names = [k for k in start if k.rsplit(".", 1)[0] == max(start).rsplit(".", 1)[0]]
    assert head_names and all(start[k].shape[0] == 2 for k in head_names)
    moved: dict[float, tuple[float, float]] = {}
    for scale in (1.0, 10.0):
        cfg = roof_config(
            roofs, tmp_path / f"s{scale}", epochs=1, lr=1e-4, init_weights=str(first.last)
        )
        config = TrainConfig.from_dict({**cfg, "head_lr_scale": scale})
        assert TrainConfig.from_dict(config.to_dict()) == config
        end = load_file(train(config).last / "model.safetensors")

        def change(names, end=end):
            return max(float((end[k] - start[k]).abs().max()) for k in names)

        moved[scale] = (change(head_names), change([k for k in end if k not in head_names]))
    assert moved[10.0][0] > 5 * moved[1.0][0]  # the head moves ten times as far ...
    assert moved[10.0][1] < 2 * moved[1.0][1]  # ... the body about as far
    with pytest.raises(ConfigError, match="head_lr_scale"):
        TrainConfig.from_dict({**roof_config(roofs, tmp_path / "x"), "head_lr_scale": 0})


def test_resume_with_head_lr_scale_continues_exactly_and_keeps_it(roofs, tmp_path):
    base = roof_config(roofs, tmp_path / "a", epochs=2, samples_per_epoch=32, head_lr_scale=5.0)
    straight = train(TrainConfig.from_dict(base))
    part = {**base, "output": str(tmp_path / "b")}
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict(part), stop_after_first_epoch)
    # Left out on resume, the scale would change: refused, by name.
    without = {k: v for k, v in part.items() if k != "head_lr_scale"}
    with pytest.raises(ConfigError, match="cannot resume: head_lr_scale"):
        train(TrainConfig.from_dict({**without, "resume": True}))
    resumed = train(TrainConfig.from_dict({**part, "resume": True}))
    a = load_file(straight.last / "model.safetensors")
    b = load_file(resumed.last / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
