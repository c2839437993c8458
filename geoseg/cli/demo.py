"""``geoseg demo``: the offline end-to-end demo on a generated sample scene."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import device_opt, model_opt, overwrite_opt
from geoseg.cli.progress import TileProgress


@click.command()
@click.argument("outdir", type=click.Path(path_type=Path), default=Path("geoseg-demo"))
@click.option(
    "--size",
    type=click.IntRange(256, 65536),
    default=4096,
    show_default=True,
    help="Scene width and height in pixels (0.5 m pixels).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Scene seed.")
@model_opt
@device_opt
@overwrite_opt
@click.pass_context
def demo(
    ctx: click.Context, outdir: Path, size: int, seed: int, model: str, device: str, overwrite: bool
) -> None:
    """Generate a sample scene in OUTDIR, map it with the bundled model and score it.

    Writes the image, its ground truth, the class COG, a styled GeoPackage and a
    quicklook PNG; prints per-class IoU, polygon counts and areas, and throughput.
    Needs no download.
    """
    from geoseg.demo import run_demo

    bars: dict[str, TileProgress] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.__exit__(None, None, None)
            bars[stage] = TileProgress(stage, disable=ctx.obj["quiet"] > 0, unit="step")
        bars[stage].update(done, total)

    try:
        report = run_demo(
            outdir,
            size=size,
            seed=seed,
            model=model,
            overwrite=overwrite,
            device=device,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
    for line in report.lines():
        click.echo(line)
