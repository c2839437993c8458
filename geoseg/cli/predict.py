"""``geoseg predict``: one scene to a class COG (and a GeoPackage)."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import (
    bands_opt,
    cleanup_opts,
    device_opt,
    model_opt,
    overwrite_opt,
    precision_opt,
    progress_opt,
    renamed_opt,
    separate_opt,
    threads_opt,
    tta_opt,
)
from geoseg.cli.progress import stage_progress


@click.command()
@click.argument("src", type=str)
@click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Output: a class COG (.tif).",
)
@model_opt
@click.option("--tile", type=int, default=None, help="Tile edge in pixels [default: the model's].")
@click.option(
    "--overlap", type=int, default=None, help="Tile overlap in pixels [default: the model's]."
)
@click.option(
    "--batch-size", type=int, default=None, help="Tiles per forward pass [default: 8 GPU, 2 CPU]."
)
@device_opt
@bands_opt
@click.option(
    "--probabilities",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write per-class probabilities (uint8 COG, p*254) here.",
)
@click.option(
    "--quicklook",
    type=click.Path(path_type=Path),
    default=None,
    help="Also draw a PNG of the image with the class overlay and polygon outlines.",
)
@click.option("--input-range", default=None, help="Raw value range LOW,HIGH mapped to the model's.")
@click.option("--assume-crs", default=None, help="CRS for rasters that have none, e.g. EPSG:32633.")
@click.option(
    "--resample",
    "resample",
    type=click.Choice(["auto", "never", "force"]),
    default="auto",
    show_default=True,
    help="Resample to the model's pixel size: auto (refuses inputs over 2.5x coarser than "
    "the model's), never, or force.",
)
@click.option("--no-resample", is_flag=True, help="Same as --resample never.")
@click.option(
    "--rpc-height",
    type=float,
    default=None,
    help="For rasters placed by RPCs: constant ground height in metres above the WGS 84 "
    "ellipsoid [default: the RPCs' mean scene height].",
)
@click.option(
    "--rpc-dem",
    type=click.Path(path_type=Path),
    default=None,
    help="For rasters placed by RPCs: elevation raster used instead of a constant height.",
)
@precision_opt
@threads_opt
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnx"]),
    default="auto",
    show_default=True,
    help="Inference engine: auto is the fastest that 'geoseg tune' measured here, else "
    "ONNX Runtime on CPU (when installed) and PyTorch on GPUs.",
)
@click.option(
    "--compile", "compile_model", is_flag=True, help="torch.compile the network (PyTorch backend)."
)
@renamed_opt(
    "--net-workers",
    "--workers",
    "workers",
    type=int,
    default=None,
    help="Network runs at once on CPU (ONNX), threads/N cores each [default: 1 per core, max 4].",
)
@click.option(
    "--readers",
    type=int,
    default=None,
    help="Threads reading tiles ahead of the network [default: 1 on CPU, up to 4 on GPU].",
)
@tta_opt
@separate_opt
@cleanup_opts
@overwrite_opt
@progress_opt
@click.pass_context
def predict(
    ctx: click.Context,
    src: str,
    dst: Path,
    model: str,
    tile: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str,
    bands: str | None,
    probabilities: Path | None,
    quicklook: Path | None,
    input_range: str | None,
    assume_crs: str | None,
    resample: str,
    no_resample: bool,
    rpc_height: float | None,
    rpc_dem: Path | None,
    threads: int | None,
    backend: str,
    compile_model: bool,
    workers: int | None,
    readers: int | None,
    tta: str | None,
    separate: bool,
    precision: str | None,
    config_path: Path | None,
    dst_crs: str | None,
    overwrite: bool,
    progress: str,
) -> None:
    """Segment raster SRC tile by tile into a class COG on its exact grid (and polygons)."""
    from geoseg.api import predict as run_predict
    from geoseg.cli.vectorize import load_cleanup_config
    from geoseg.pipeline import default_cleanup_workers, parse_bands, parse_range

    cleanup = load_cleanup_config(config_path)
    quiet = ctx.obj["quiet"] > 0
    with (
        stage_progress("predict", progress, disable=quiet) as bar,
        stage_progress("vectorize", progress, disable=quiet, unit="row") as vbar,
    ):

        def vector_progress(done: int, total: int) -> None:
            bar.close()  # the raster stage is over
            vbar.update(done, total)

        result = run_predict(
            src,
            dst,
            model,
            cleanup=cleanup,
            dst_crs=dst_crs,
            vectorize_workers=default_cleanup_workers(),
            progress=bar.update,
            vector_progress=vector_progress,
            quicklook=quicklook,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            bands=parse_bands(bands),
            probabilities=probabilities,
            overwrite=overwrite,
            input_range=parse_range(input_range),
            assume_crs=assume_crs,
            resample="never" if no_resample else resample,
            threads=threads,
            backend=backend,
            compile=compile_model,
            readers=readers,
            workers=workers,
            tta=tta or "none",
            separate=separate,
            precision=precision or "auto",
            rpc_height=rpc_height,
            rpc_dem=rpc_dem,
        )
    stats, outputs = result.stats, result.outputs
    if result.vector_stats is not None:
        click.echo(result.vector_stats.summary(), err=True)
    for out in outputs:
        click.echo(f"wrote {out}", err=quiet)
    click.echo(stats.summary())
