"""``geoseg info``: describe a raster or a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("target", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target: str, as_json: bool) -> None:
    """Describe TARGET: a raster (size, CRS, bands, nodata, pixel size) or a checkpoint."""
    from geoseg.models.checkpoint import CARD_NAME, bundled_models, card_summary, load_card

    p = Path(target)
    if (
        target in bundled_models()
        or (p.is_dir() and (p / CARD_NAME).is_file())
        or p.name == CARD_NAME
    ):
        d = card_summary(load_card(p if target not in bundled_models() else target))
        d["kind"] = "checkpoint"
    else:
        from geoseg.io.read import describe

        s = describe(target)
        d = {
            "kind": "raster",
            "path": s.path,
            "driver": s.driver,
            "size": [s.width, s.height],
            "bands": [{"index": i + 1, "name": n} for i, n in enumerate(s.band_names)],
            "dtype": s.dtype,
            "nodata": s.nodata,
            "crs": s.crs.to_string() if s.crs else None,
            "transform": list(s.transform)[:6],
            "bounds": list(s.bounds),
            "pixel_size_m": s.pixel_size_m,
            "area_km2": s.area_km2,
            "block_shape": list(s.block_shape),
        }
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    for key, value in d.items():
        click.echo(f"{key:>14}: {value}")
