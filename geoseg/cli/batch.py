"""``geoseg batch``: many regions on a dask cluster into one mosaic and one GeoPackage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import overwrite_opt, precision_opt, separate_opt, tta_opt
from geoseg.cli.progress import TileProgress

_UNITS = {"regions": "region", "merge": "region"}


class _StageProgress:
    """One bar per stage of ``progress(stage, done, total)`` callbacks."""

    def __init__(self, *, disable: bool) -> None:
        self._disable = disable
        self._stage: str | None = None
        self._bar: TileProgress | None = None

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = TileProgress(stage, disable=self._disable, unit=_UNITS.get(stage, "step"))
        assert self._bar is not None
        self._bar.update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> _StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@click.command()
@click.argument("work_file", metavar="REGIONS_YAML", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory: region COGs, manifest.jsonl, classes.vrt, polygons.gpkg "
    "and/or polygons.parquet/.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run on this dask scheduler, e.g. tcp://host:8786 [default: a local cluster].",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Worker processes of the local cluster [default: one per GPU, else one per core, 2 GB each].",
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="Bundled model name or checkpoint directory [default: the work file's].",
)
@click.option(
    "--device", default=None, help="auto, cpu, cuda, cuda:N or mps [default: the work file's]."
)
@click.option(
    "--retries",
    type=int,
    default=2,
    show_default=True,
    help="Extra attempts of a failing region.",
)
@click.option(
    "--resume", is_flag=True, help="Keep regions whose outputs match the manifest; run the rest."
)
@click.option(
    "--dashboard-address",
    default=":8787",
    show_default=True,
    help="Dashboard of the local cluster.",
)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["gpkg", "parquet", "both"]),
    default="gpkg",
    show_default=True,
    help="Polygons as one styled GeoPackage, a partitioned GeoParquet dataset "
    "(polygons.parquet/: one file per region plus seams.parquet; needs pyarrow), or both.",
)
@tta_opt
@separate_opt
@precision_opt
@overwrite_opt
@click.pass_context
def batch(
    ctx: click.Context,
    work_file: Path,
    out_dir: Path,
    scheduler: str | None,
    workers: int | None,
    model: str | None,
    device: str | None,
    retries: int,
    resume: bool,
    dashboard_address: str,
    tta: str | None,
    separate: bool,
    precision: str | None,
    overwrite: bool,
    formats: str,
) -> None:
    """Segment the regions of REGIONS_YAML on a dask cluster, then merge them.

    REGIONS_YAML lists many rasters, or one raster/VRT with a region_size (a
    grid of regions) or an aoi (the windows of its polygons); see
    examples/regions.yaml.  The merged mosaic and polygons equal a single
    'geoseg predict' over the same raster.
    """
    from dataclasses import replace

    from geoseg.batch import BatchError, ClusterInfo, load_work, run_batch

    # dask logs every worker start and stop at INFO; keep them for -v.
    if ctx.obj["verbose"] == 0:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    work = load_work(work_file, model=model)
    if device is not None:
        work = replace(work, predict=replace(work.predict, device=device))
    if tta is not None:
        work = replace(work, predict=replace(work.predict, tta=tta))
    if precision is not None:
        work = replace(work, predict=replace(work.predict, precision=precision))
    if not separate:
        work = replace(work, predict=replace(work.predict, separate=False))
    quiet = ctx.obj["quiet"] > 0

    def on_cluster(info: ClusterInfo) -> None:
        kind = "local cluster" if info.local else "scheduler"
        extra = f", {info.torch_threads} torch thread(s) each" if info.torch_threads else ""
        gpus = f", GPUs {','.join(info.gpus)}" if info.gpus else ""
        click.echo(f"dask {kind} {info.address}: {info.workers} worker(s){extra}{gpus}", err=True)
        dash = info.dashboard or "unavailable (pip install bokeh)"
        click.echo(f"dashboard: {dash}", err=True)

    with _StageProgress(disable=quiet) as bar:
        result = run_batch(
            work,
            out_dir,
            address=scheduler,
            workers=workers,
            resume=resume,
            overwrite=overwrite,
            retries=retries,
            progress=bar.update,
            on_cluster=on_cluster,
            dashboard_address=dashboard_address or None,
            formats=("gpkg", "parquet") if formats == "both" else (formats,),
        )
    for region, error in sorted(result.failed.items()):
        click.echo(f"geoseg: region {region} failed: {error}", err=True)
    if not result.ok:
        raise BatchError(
            f"{len(result.failed)} of {result.regions} regions failed (see "
            f"{result.out_dir / 'manifest.jsonl'}); fix the cause and rerun with --resume"
        )
    outputs: list[Any] = [result.mosaic, result.polygons, result.parquet]
    for out in outputs:
        if out is not None:
            click.echo(f"wrote {out}", err=quiet)
    click.echo(result.summary())
