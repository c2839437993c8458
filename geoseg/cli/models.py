"""``geoseg models``: list architectures and bundled models; wrap plain weights; ship an ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import class_groups, overwrite_opt, renamed_opt


@click.group(invoke_without_command=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the bundled models and architectures as JSON."
)
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List bundled models and registered architectures."""
    if ctx.invoked_subcommand is not None:
        return
    from geoseg.models import bundled_models, list_models, load_card
    from geoseg.models.registry import get_architecture

    if as_json:
        import json

        doc = {
            "bundled": {
                name: {
                    "path": str(path),
                    "bands": list(card.bands),
                    "classes": [c.name for c in card.classes],
                    "pixel_size_m": card.pixel_size_m,
                    "contact_class": (
                        None
                        if card.contact_class is None
                        else card.class_by_id(card.contact_class).name
                    ),
                    "int8": _int8_status(path),
                }
                for name, path in bundled_models().items()
                for card in (load_card(path),)
            },
            "architectures": list_models(),
        }
        click.echo(json.dumps(doc, indent=2))
        return

    click.echo("Bundled models:")
    bundled = bundled_models()
    if not bundled:
        click.echo("  (none installed)")
    for name, path in bundled.items():
        card = load_card(path)
        classes = ", ".join(c.name for c in card.classes)
        separates = (
            f"  separates touching {card.class_by_id(card.contact_class).name}s"
            if card.contact_class is not None
            else ""
        )
        int8 = _int8_status(path)
        quantized = (
            ""
            if int8 is None
            else f"  int8 graph ({'check passed' if int8['passed'] else 'check FAILED'}, "
            f"agreement {int8['agreement']:.3f})"
        )
        click.echo(
            f"  {name:<12} {card.architecture}/{card.encoder}  bands={','.join(card.bands)}  "
            f"classes={classes}{separates}{quantized}"
        )
    click.echo("Architectures (for --arch in 'geoseg models wrap' and training configs):")
    for name in list_models():
        arch = get_architecture(name)
        click.echo(
            f"  {name:<14} default encoder {arch.default_encoder or '-':<10} {arch.description}"
        )


def _int8_status(path: Path) -> dict[str, Any] | None:
    """The int8 graph's accuracy check, when the checkpoint carries a valid one."""
    from geoseg.infer.quantize import int8_graph
    from geoseg.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, lazy=True)
    found = int8_graph(Path(loaded.path), loaded.sha256)
    if found is None:
        return None
    check = found[1].get("check", {})
    return {"passed": bool(check.get("passed")), "agreement": float(check.get("agreement", 0))}


def _parse_classes(text: str) -> list[dict[str, object]]:
    palette = [
        "#000000",
        "#e41a1c",
        "#4daf4a",
        "#ffd92f",
        "#377eb8",
        "#984ea3",
        "#ff7f00",
        "#a65628",
    ]
    out: list[dict[str, object]] = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        name, _, color = item.partition(":")
        out.append(
            {
                "id": i,
                "name": name,
                "color": color or palette[i % len(palette)],
                "vectorize": i != 0,
            }
        )
    return out


#: ``-o DIR``: the checkpoint directory a command creates.
_checkpoint_output = click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint directory to create.",
)


@models.command()
@click.argument("weights", type=click.Path(path_type=Path))
@_checkpoint_output
@click.option("--arch", required=True, help="Architecture name (see 'geoseg models').")
@click.option(
    "--encoder", default=None, help="Encoder name, e.g. resnet34 or tu-efficientnet_lite0."
)
@renamed_opt(
    "--band-names",
    "--bands",
    "band_names",
    default=None,
    help="Band names in input order, e.g. red,green,blue.  [required]",
)
@click.option(
    "--classes",
    required=True,
    help="Class names in output order with optional colours: background,building:#e41a1c,...",
)
@click.option("--name", default=None, help="Model name [default: output directory name].")
@click.option("--pixel-size", type=float, default=None, help="Training pixel size in metres.")
@click.option(
    "--mean", default=None, help="Per-band means after scaling to [0, 1], comma-separated."
)
@click.option("--std", default=None, help="Per-band stds after scaling to [0, 1], comma-separated.")
@click.option("--input-range", default="0,255", show_default=True, help="Raw value range LOW,HIGH.")
@click.option("--tile", type=int, default=512, show_default=True)
@click.option("--overlap", type=int, default=64, show_default=True)
@click.option("--licence", default="", help="Licence of the weights.")
@overwrite_opt
def wrap(
    weights: Path,
    dst: Path,
    arch: str,
    encoder: str | None,
    band_names: str | None,
    classes: str,
    name: str | None,
    pixel_size: float | None,
    mean: str | None,
    std: str | None,
    input_range: str,
    tile: int,
    overlap: int,
    licence: str,
    overwrite: bool,
) -> None:
    """Wrap plain weights (smp/torchgeo state dict) with a model card.

    WEIGHTS is a .safetensors file or a .pt/.pth/.ckpt state dict; it is read
    with torch.load(weights_only=True), so files needing code are refused.
    """
    if not band_names:
        raise click.UsageError("Missing option '--band-names'.")
    from geoseg.extras import require

    require("torch", "wrapping weights")
    from geoseg.models import ModelCard, wrap_state_dict
    from geoseg.models.registry import architecture_stride, architecture_task
    from geoseg.pipeline import parse_range

    bands = tuple(b.strip() for b in band_names.split(","))

    def floats(text: str | None) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(",")) if text else ()

    card = ModelCard.from_dict(
        {
            "name": name or dst.name,
            "architecture": arch,
            "task": architecture_task(arch),
            "encoder": encoder,
            "bands": list(bands),
            "classes": _parse_classes(classes),
            "mean": list(floats(mean)),
            "std": list(floats(std)),
            "input_range": list(parse_range(input_range) or (0, 255)),
            "pixel_size_m": pixel_size,
            "tile_size": tile,
            "overlap": overlap,
            "stride": architecture_stride(arch, encoder),
            "licence": licence,
            "provenance": {"wrapped_from": weights.name},
        }
    )
    out = wrap_state_dict(weights, card, dst, overwrite=overwrite)
    click.echo(f"wrote {out}")


@models.command("merge")
@click.argument("checkpoint", type=str)
@_checkpoint_output
@click.option(
    "--into",
    "into",
    multiple=True,
    required=True,
    metavar="CLASS=CLASS,CLASS",
    help="Merge the classes after '=' into the one before it, e.g. background=road,water "
    "(repeatable).",
)
@overwrite_opt
def merge(checkpoint: str, dst: Path, into: tuple[str, ...], overwrite: bool) -> None:
    """Merge some of CHECKPOINT's classes into others: train fine, ship coarse.

    A model trained with finer classes than it should ship (road and water beside
    background) keeps its network; a class's probability becomes the sum of its
    merged classes' probabilities, computed inside the network (and its ONNX graph),
    so every command sees the coarser classes only.
    """
    from geoseg.extras import require

    require("torch", "merging classes")
    from geoseg.models import load_checkpoint, wrap_state_dict
    from geoseg.models.checkpoint import WEIGHTS_NAME, resolve_model_path
    from geoseg.models.groups import merge_classes

    groups = class_groups(into, "--into")
    src = resolve_model_path(checkpoint)
    card = merge_classes(load_checkpoint(src, lazy=True).card, groups)
    out = wrap_state_dict(src / WEIGHTS_NAME, card, dst, overwrite=overwrite)
    click.echo(f"wrote {out}: classes {', '.join(c.name for c in card.classes)}")


@models.command("export")
@click.argument("checkpoint", type=str)
@overwrite_opt
def export(checkpoint: str, overwrite: bool) -> None:
    """Export CHECKPOINT's ONNX graph into its directory (model.onnx + model.onnx.json).

    A checkpoint that carries its graph runs with ONNX Runtime on the core install,
    without PyTorch, and never exports at run time.  The graph is checked against
    PyTorch before it is written; retraining the weights makes it stale, and a
    stale graph is ignored (export again with --overwrite).
    """
    from geoseg.infer.backends import ship_onnx

    graph = ship_onnx(checkpoint, overwrite=overwrite)
    click.echo(f"wrote {graph} ({graph.stat().st_size / 1e6:.1f} MB)")


@models.command("quantize")
@click.argument("checkpoint", type=str)
@click.option(
    "-o",
    "--output",
    "dst",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a copy of CHECKPOINT here with the int8 graph [default: into CHECKPOINT].",
)
@click.option(
    "--calibration",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Raster(s) of imagery like the model's to calibrate on [default: generated scenes].",
)
@click.option(
    "--check",
    "check_rasters",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Raster(s) for the accuracy check [default: other generated scenes, with truth].",
)
@click.option("--tiles", type=int, default=16, show_default=True, help="Calibration tiles.")
@click.option(
    "--keep-float",
    type=click.IntRange(min=1),
    default=None,
    help="Leading convolutions kept in float32 [default: the fewest of 1, 2, 4, 6, 8, 12, 16 "
    "that pass the check on tiles of their own].",
)
@overwrite_opt
def quantize(
    checkpoint: str,
    dst: Path | None,
    calibration: tuple[Path, ...],
    check_rasters: tuple[Path, ...],
    tiles: int,
    keep_float: int | None,
    overwrite: bool,
) -> None:
    """Add a statically quantized int8 ONNX graph to CHECKPOINT, checked against float32.

    The check (class agreement with float32 >= 99 %, per-class IoU within 0.01 where the
    check tiles have truth) is recorded in model.int8.onnx.json; --precision auto runs
    the int8 graph only when it passed, --precision int8 always.
    """
    import os
    import shutil

    from geoseg.errors import OutputExistsError
    from geoseg.infer.quantize import quantize_checkpoint
    from geoseg.models.checkpoint import resolve_model_path

    src = resolve_model_path(checkpoint)
    target = src
    if dst is not None:
        if dst.exists() and not overwrite:
            raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it")
        # The copy is quantized under a temporary name: a failed run leaves no COPY behind.
        target = dst.parent / f".{dst.name}.geoseg-{os.getpid()}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target)
    try:
        graph, result = quantize_checkpoint(
            target,
            calibration=calibration,
            check=check_rasters,
            tiles=tiles,
            overwrite=overwrite or dst is not None,
            keep_float=keep_float,
        )
    except BaseException:
        if dst is not None:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if dst is not None:
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(target, dst)
        graph = dst / graph.name
    verdict = "passed" if result.passed else "FAILED (auto keeps float32)"
    drops = ", ".join(
        f"{k} {result.iou_fp32[k]:.3f}->{result.iou_int8.get(k, float('nan')):.3f}"
        for k in result.iou_fp32
    )
    click.echo(
        f"wrote {graph} ({graph.stat().st_size / 1e6:.1f} MB); check on {result.tiles} tiles: "
        f"agreement {result.agreement:.4f}{'; IoU ' + drops if drops else ''}: {verdict}"
    )
