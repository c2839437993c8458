"""``geoseg train``: train a model on labelled imagery from a YAML config or flags."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import class_groups, device_opt, overwrite_opt, renamed_opt


def expand_images(values: tuple[str, ...]) -> list[str]:
    """Expand quoted glob patterns (the shell expands unquoted ones)."""
    out: list[str] = []
    for v in values:
        out += sorted(glob.glob(v, recursive=True)) if glob.has_magic(v) else [v]
    return out


class _Progress:
    """Draws training progress from the library's events (only the CLI draws)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        if event.kind == "setup":
            if not self.quiet:
                click.echo(f"geoseg: {event.message}", err=True)
        elif event.kind == "step":
            if self.bar is None:
                self.bar = tqdm(
                    total=event.steps,
                    desc=f"epoch {event.epoch}/{event.epochs}",
                    unit="batch",
                    leave=False,
                    dynamic_ncols=True,
                    disable=True if self.quiet else None,
                )
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.1e}", refresh=False)
        elif event.kind == "epoch":
            self.close()
            m = event.metrics
            parts = [f"epoch {event.epoch}/{event.epochs}", f"loss {m['train_loss']:.4f}"]
            if m.get("val_loss") is not None:
                parts.append(f"val loss {m['val_loss']:.4f}")
            if m.get("val_miou") is not None:
                parts.append(f"val mIoU {m['val_miou']:.3f}")
            parts.append(f"{m['time_s']:.1f} s")
            line = "  ".join(parts) + (f"  ({event.message})" if event.message else "")
            if not self.quiet:
                click.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with, from its ``train_state.json``."""
    import json

    from geoseg.errors import ConfigError

    state_file = run_dir / "train_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"--resume {run_dir}: no {state_file.name} there; give the run directory of a run "
            "that finished at least one epoch"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read {state_file} ({exc})") from exc
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"--resume {run_dir}: {state_file} holds no training config")
    return dict(config)


def _is_bundled_name(value: Path) -> bool:
    from geoseg.models.checkpoint import bundled_models

    return str(value) in bundled_models()


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML training config (see examples/train_config.yaml); flags override it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory: model/ (best), last/, log.csv, curves.png.",
)
@click.option(
    "--images",
    multiple=True,
    help="Without --config: imagery of a single source (files, directories, globs).",
)
@click.argument("more_images", nargs=-1)
@click.option("--labels", multiple=True, help="Without --config: vector labels or label rasters.")
@click.option("--label-field", default=None, help="Attribute holding the class [default: class].")
@click.option(
    "--classes",
    default=None,
    help="Classes, background first, optional colours: background,building:#e41a1c,...",
)
@click.option(
    "--labelled-classes",
    default=None,
    help="Classes the labels cover, e.g. building (default: the class map's).",
)
@click.option(
    "--absent-classes",
    default=None,
    help="Classes known to be nowhere in the images, e.g. cropland for a city.",
)
@click.option(
    "--nodata",
    type=float,
    default=None,
    help="Without --config: image value of missing pixels where the files declare none, "
    "e.g. 0 for black borders (ignored in training).",
)
@click.option(
    "--class-map", default=None, help="Label value to class: 1=building,2=background,0=ignore."
)
@renamed_opt(
    "--band-names",
    "--bands",
    "band_names",
    default=None,
    help="Band names in the model's order: red,green,blue.",
)
@click.option("--name", default=None, help="Model name in the card.")
@click.option("--arch", default=None, help="Architecture (see 'geoseg models').")
@click.option("--encoder", default=None, help="Encoder, e.g. resnet18.")
@click.option(
    "--encoder-weights",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Local state-dict file to initialise the encoder (never downloaded).",
)
@click.option(
    "--init-weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Start the whole network from this checkpoint (a bundled model name such as default, a "
    "checkpoint folder or a weights file); a checkpoint's classes, bands, architecture, pixel "
    "size and normalisation are kept unless given.",
)
@click.option("--chip-size", type=int, default=None, help="Training chip edge in pixels.")
@click.option("--pixel-size", type=float, default=None, help="Train at this pixel size in metres.")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--samples-per-epoch", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Learning rate (AdamW).")
@click.option(
    "--head-lr-scale",
    type=float,
    default=None,
    help="Learning-rate multiplier of the output layer, e.g. 10 for new classes in a fine-tune.",
)
@click.option("--loss", default=None, help="Loss terms: ce, dice, focal, lovasz, e.g. ce+dice.")
@click.option(
    "--distill",
    type=float,
    default=None,
    help="With --init-weights: weight of keeping that network's split of background pixels "
    "among the classes the labels leave out (e.g. 1; 0: off).",
)
@click.option(
    "--split-init",
    "split_init",
    multiple=True,
    metavar="CLASS=CLASS,CLASS",
    help="With --init-weights and new classes after its own: start the classes after '=' as "
    "copies of the one before it, e.g. background=road,water (repeatable; see "
    "'geoseg models merge').",
)
@click.option(
    "--val-split",
    type=click.Choice(["files", "blocks"]),
    default=None,
    help="Hold out whole files or spatial blocks for validation.",
)
@click.option("--val-fraction", type=float, default=None, help="Share held out (0: none).")
@click.option("--seed", type=int, default=None)
@device_opt
@click.option("--amp/--no-amp", default=None, help="Mixed precision [default: on CUDA].")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@renamed_opt(
    "--loader-workers", "--workers", "workers", type=int, default=None,
    help="DataLoader worker processes.",
)  # fmt: skip
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN_DIR]",
    help="Continue a run from its last checkpoint: --resume RUN_DIR (its saved config), or "
    "--resume with --config/--output.",
)
@overwrite_opt
@click.pass_context
def train(
    ctx: click.Context,
    config_path: Path | None,
    output: Path | None,
    images: tuple[str, ...],
    more_images: tuple[str, ...],
    labels: tuple[str, ...],
    label_field: str | None,
    classes: str | None,
    labelled_classes: str | None,
    absent_classes: str | None,
    nodata: float | None,
    class_map: str | None,
    band_names: str | None,
    name: str | None,
    arch: str | None,
    encoder: str | None,
    encoder_weights: Path | None,
    init_weights: Path | None,
    chip_size: int | None,
    pixel_size: float | None,
    epochs: int | None,
    batch_size: int | None,
    samples_per_epoch: int | None,
    lr: float | None,
    head_lr_scale: float | None,
    loss: str | None,
    distill: float | None,
    split_init: tuple[str, ...],
    val_split: str | None,
    val_fraction: float | None,
    seed: int | None,
    device: str,
    amp: bool | None,
    threads: int | None,
    workers: int | None,
    resume: str | None,
    overwrite: bool,
) -> None:
    """Train a segmentation model on labelled imagery (torchgeo datasets and samplers).

    Give sources in a YAML --config, or one source as flags:

    \b
      geoseg train --config train.yaml
      geoseg train --images tiles/*.tif --labels roofs.gpkg --classes background,building \\
          --labelled-classes building --arch unet --encoder resnet18 -o run/
      geoseg train --init-weights default --images mine/*.tif --labels roofs.gpkg \\
          --labelled-classes building --distill 1 -o run/   # fine-tune the bundled model

    The best checkpoint (by validation mean IoU) lands in OUTPUT/model and works
    with 'geoseg predict --model OUTPUT/model'.  A stopped run continues where
    it stopped (weights, optimizer, schedule and chip sampling) with
    'geoseg train --resume OUTPUT' (add --epochs N to extend it).
    """
    from geoseg.extras import require

    require("train", "training")

    from geoseg.errors import ConfigError
    from geoseg.training import TrainConfig
    from geoseg.training.config import parse_class_list, parse_class_map
    from geoseg.training.loop import train as run_training

    all_images = expand_images(images + more_images)
    data: dict[str, Any] = {}
    base_dir = None
    if resume and config_path is None and not (all_images or labels):
        run_dir = Path(resume)  # --resume RUN_DIR alone: the run's own config
        data = _saved_config(run_dir)
        data["output"] = str(run_dir)
    elif config_path is not None:
        if all_images or labels:
            raise ConfigError("give sources either in --config or with --images/--labels, not both")
        data, base_dir = _read_config(config_path), config_path.parent
    elif not (all_images and labels):
        raise ConfigError("pass --config train.yaml, or --images and --labels (with --classes)")
    else:
        if classes is None and init_weights is None:
            raise ConfigError(
                "--classes is required without --config, e.g. background,building "
                "(or --init-weights MODEL to fine-tune MODEL with its classes)"
            )
        source: dict[str, Any] = {"name": "flags", "images": all_images, "labels": list(labels)}
        if label_field:
            source["label_field"] = label_field
        if labelled_classes:
            source["labelled_classes"] = [c.strip() for c in labelled_classes.split(",")]
        if absent_classes:
            source["absent_classes"] = [c.strip() for c in absent_classes.split(",")]
        if nodata is not None:
            source["nodata"] = nodata
        if class_map:
            source["class_map"] = parse_class_map(class_map)
        data["sources"] = [source]
    if classes is not None:
        data["classes"] = parse_class_list(classes)
    if base_dir is not None:
        # Paths in the config are relative to its folder; paths given on the command line
        # are relative to where the command runs, as with every other command.
        output = output.absolute() if output is not None else None
        encoder_weights = encoder_weights.absolute() if encoder_weights is not None else None
        if init_weights is not None and not _is_bundled_name(init_weights):
            init_weights = init_weights.absolute()
    overrides = {
        "output": output,
        "bands": band_names.split(",") if band_names else None,
        "name": name,
        "architecture": arch,
        "encoder": encoder,
        "encoder_weights": encoder_weights,
        "init_weights": init_weights,
        "chip_size": chip_size,
        "pixel_size_m": pixel_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "samples_per_epoch": samples_per_epoch,
        "lr": lr,
        "head_lr_scale": head_lr_scale,
        "loss": loss,
        "distill": distill,
        "seed": seed,
        "amp": amp,
        "threads": threads,
        "workers": workers,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if split_init:
        data["split_init"] = class_groups(split_init, "--split-init")
    if device != "auto" or "device" not in data:
        data["device"] = device
    if val_split is not None or val_fraction is not None:
        val = dict(data.get("validation") or {})
        if val_split is not None:
            val["split"] = val_split
        if val_fraction is not None:
            val["fraction"] = val_fraction
        data["validation"] = val
    if resume and config_path is not None and output is None:
        data["output"] = str(Path(resume).absolute())
    data["resume"] = resume is not None
    data["overwrite"] = overwrite
    config = TrainConfig.from_dict(data, base_dir)

    progress = _Progress(quiet=ctx.obj["quiet"] > 0)
    try:
        result = run_training(config, progress)
    finally:
        progress.close()
    _report(result)


def _report(result: Any) -> None:
    """The run's best checkpoint and where its log and curves are."""
    if result.best_miou is None:
        score = "no validation: the last epoch"
    else:
        score = f"val mIoU {result.best_miou:.3f} at epoch {result.best_epoch}"
    click.echo(f"best model: {result.best} ({score})")
    click.echo(f"log: {result.log}  curves: {result.curves}")


def _read_config(path: Path) -> dict[str, Any]:
    """The settings mapping of a training YAML file."""
    from geoseg.errors import ConfigError
    from geoseg.settings import read_yaml_file

    loaded = read_yaml_file(path, f"--config {path}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path} must hold a mapping of settings")
    return loaded
