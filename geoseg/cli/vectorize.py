"""``geoseg vectorize``: a class raster to styled polygon layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import cleanup_opts, overwrite_opt, progress_opt, renamed_opt
from geoseg.cli.progress import stage_progress


def load_cleanup_config(path: Path | None) -> dict[str, Any] | None:
    """Read a post-processing YAML: ``{class name: {style, min_area_m2, ...}}``."""
    if path is None:
        return None

    from geoseg.errors import ConfigError
    from geoseg.settings import read_yaml_file
    from geoseg.vectorize.clean import CleanupParams

    data = read_yaml_file(path, f"--config {path}")
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {path} must map class names to clean-up settings, e.g. 'building: {{style: regularize}}'"
        )
    return {str(k): CleanupParams.from_dict(v or {}) for k, v in data.items()}


@click.command()
@click.argument("classes", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Output .gpkg (styled layers), .fgb or .geojson.",
)
@click.option(
    "--confidence",
    type=click.Path(path_type=Path),
    default=None,
    help="Probability raster from 'predict --probabilities' for mean confidence.",
)
@cleanup_opts
@click.option(
    "--model", default=None, help="Model whose classes the raster holds, when it does not say."
)
@renamed_opt(
    "--cleanup-workers",
    "--workers",
    "workers",
    type=click.IntRange(1, 8),
    default=None,
    help="Processes cleaning polygons side by side [default: 1 per core, max 8].",
)
@overwrite_opt
@progress_opt
@click.pass_context
def vectorize(
    ctx: click.Context,
    classes: Path,
    dst: Path,
    confidence: Path | None,
    config_path: Path | None,
    dst_crs: str | None,
    model: str | None,
    workers: int | None,
    overwrite: bool,
    progress: str,
) -> None:
    """Polygonize class raster CLASSES into one styled layer per class."""
    from geoseg.pipeline import VectorizeConfig, default_cleanup_workers, run_vectorize

    card_classes = None
    if model is not None:
        from geoseg.models import load_card

        card_classes = load_card(model).classes
    cfg = VectorizeConfig(
        confidence=confidence,
        cleanup=load_cleanup_config(config_path),
        dst_crs=dst_crs,
        classes=card_classes,
        overwrite=overwrite,
        workers=workers or default_cleanup_workers(),
    )
    with stage_progress("vectorize", progress, disable=ctx.obj["quiet"] > 0, unit="row") as bar:
        stats = run_vectorize(classes, dst, cfg, progress=bar.update)
    for out in stats.outputs:
        click.echo(f"wrote {out}", err=ctx.obj["quiet"] > 0)
    click.echo(stats.summary())
