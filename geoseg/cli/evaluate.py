"""``geoseg evaluate``: score a model against labelled imagery and write a report."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import (
    bands_opt,
    device_opt,
    model_opt,
    overwrite_opt,
    precision_opt,
    separate_opt,
    threads_opt,
    tta_opt,
)
from geoseg.cli.progress import TileProgress
from geoseg.cli.train import expand_images


@click.command()
@model_opt
@click.option("--images", multiple=True, help="Rasters to predict and score (files or globs).")
@click.argument("more_images", nargs=-1)
@click.option(
    "--labels",
    "-l",
    multiple=True,
    required=True,
    help="Vector labels (any CRS), or label rasters: one per image or one for all.",
)
@click.option(
    "--label-field",
    default="class",
    show_default=True,
    help="Attribute of vector labels holding the class name or number.",
)
@click.option("--label-layer", default=None, help="Layer of a multi-layer vector file.")
@click.option("--class-map", default=None, help="Label value to class: 1=building,0=ignore.")
@click.option(
    "--labelled-classes",
    default=None,
    help="Classes the labels cover [default: all]; others count as background.",
)
@click.option(
    "--absent-classes",
    default=None,
    help="Classes known to be nowhere in the images; their predictions count as errors.",
)
@click.option(
    "--object-classes",
    default=None,
    help="Classes scored as objects [default: building/cropland/field classes].",
)
@click.option(
    "--iou-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Minimum IoU of a predicted and a true polygon to match.",
)
@click.option(
    "--min-object-pixels",
    type=int,
    default=0,
    show_default=True,
    help="Leave smaller polygons out of the object metrics.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Report directory: metrics.json, report.md, confusion.png, overlay.png.",
)
@click.option(
    "--keep-predictions", is_flag=True, help="Keep the class rasters in OUTPUT/predictions."
)
@click.option("--tile", type=int, default=None, help="Tile edge in pixels [default: the model's].")
@click.option("--overlap", type=int, default=None, help="Tile overlap [default: the model's].")
@click.option("--batch-size", type=int, default=None, help="Tiles per forward pass.")
@bands_opt
@threads_opt
@device_opt
@click.option(
    "--through-polygons",
    is_flag=True,
    help="Score the polygons 'predict -o X.gpkg' writes, rasterized back (pixel metrics too).",
)
@tta_opt
@separate_opt
@precision_opt
@overwrite_opt
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: str,
    images: tuple[str, ...],
    more_images: tuple[str, ...],
    labels: tuple[str, ...],
    label_field: str,
    label_layer: str | None,
    class_map: str | None,
    labelled_classes: str | None,
    absent_classes: str | None,
    object_classes: str | None,
    iou_threshold: float,
    min_object_pixels: int,
    out_dir: Path,
    keep_predictions: bool,
    tile: int | None,
    overlap: int | None,
    batch_size: int | None,
    bands: str | None,
    threads: int | None,
    device: str,
    through_polygons: bool,
    tta: str | None,
    separate: bool,
    precision: str | None,
    overwrite: bool,
) -> None:
    """Predict images as 'geoseg predict' does and score them against labels.

    \b
      geoseg evaluate --model run/model --images val/*.tif --labels val.gpkg -o report/

    Writes per-class pixel IoU, Dice/F1, precision and recall, mean IoU, object
    precision/recall/F1 (one-to-one matches at IoU >= 0.5) and a confusion matrix,
    each image's own class IoUs, and beside each IoU a 95 % interval from
    resampling the images (how far other images like these could move it).
    """
    from geoseg.extras import require

    require("train", "evaluation")
    from geoseg.evaluate import EvalConfig, write_report
    from geoseg.evaluate import evaluate as run_evaluation
    from geoseg.io.atomic import check_output_path
    from geoseg.pipeline import PredictConfig, parse_bands
    from geoseg.training.config import parse_class_map

    def names(text: str | None) -> tuple[str, ...] | None:
        return tuple(c.strip() for c in text.split(",") if c.strip()) if text else None

    # Refuse an existing report before minutes of prediction, not after.
    if out_dir.is_dir():
        for name in ("metrics.json", "report.md", "confusion.png", "overlay.png"):
            check_output_path(out_dir / name, overwrite=overwrite)
    cfg = EvalConfig(
        label_field=label_field,
        label_layer=label_layer,
        class_map=tuple(parse_class_map(class_map).items()) if class_map else (),
        labelled_classes=names(labelled_classes),
        absent_classes=names(absent_classes) or (),
        object_classes=names(object_classes),
        iou_threshold=iou_threshold,
        min_object_pixels=min_object_pixels,
        keep_predictions=out_dir / "predictions" if keep_predictions else None,
        through_polygons=through_polygons,
        predict=PredictConfig(
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            bands=parse_bands(bands),
            threads=threads,
            tta=tta or "none",
            separate=separate,
            precision=precision or "auto",
        ),
    )
    quiet = ctx.obj["quiet"] > 0
    with TileProgress("evaluate", disable=quiet, unit="‰") as bar:
        report = run_evaluation(
            model, expand_images(images + more_images), list(labels), cfg, progress=bar.update
        )
    written = write_report(report, out_dir, overwrite=overwrite)

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    pm = report.pixel
    click.echo(f"mean IoU {fmt(pm.mean_iou)}  pixel accuracy {fmt(pm.accuracy)}")
    for i, c in enumerate(pm.classes):
        iv = report.interval(i)
        span = f" [{iv[0]:.3f}-{iv[1]:.3f}]" if iv is not None else ""
        click.echo(
            f"  {c.name:<14} IoU {fmt(c.iou)}{span}  F1 {fmt(c.dice)}  "
            f"precision {fmt(c.precision)}  recall {fmt(c.recall)}"
        )
    if any(iv is not None for iv in report.pixel_interval):
        click.echo(f"  [..]: {len(report.images)} images resampled, 95 % of the pooled IoUs")
    for o in report.objects:
        click.echo(
            f"  {o.name:<14} objects: precision {fmt(o.precision)}  recall {fmt(o.recall)}  "
            f"F1 {fmt(o.f1)}  ({o.tp} matched, {o.fp} false, {o.fn} missed)"
        )
    for path in written:
        click.echo(f"wrote {path}", err=quiet)
