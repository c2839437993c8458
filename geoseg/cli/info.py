"""``geoseg info``: describe a raster or a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("target", type=str, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target: str | None, as_json: bool) -> None:
    """Describe TARGET: a raster (size, CRS, bands, nodata, pixel size) or a checkpoint.

    Without TARGET: geoseg's version, which extras are installed and the backends
    that can run here.
    """
    from geoseg.models.checkpoint import CARD_NAME, bundled_models, card_summary, load_card

    if target is None:
        d = _installation()
    elif target in bundled_models() or (
        (Path(target).is_dir() and (Path(target) / CARD_NAME).is_file())
        or Path(target).name == CARD_NAME
    ):
        d = card_summary(load_card(target))
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


def _installation() -> dict[str, object]:
    """What is installed: version, extras (with the pip line of a missing one), backends."""
    from geoseg import __version__
    from geoseg.extras import EXTRAS, missing
    from geoseg.infer.backends import onnxruntime_available, package_version

    extras = {}
    for extra in EXTRAS:
        gone = missing(extra)
        extras[extra] = "installed" if not gone else f"not installed: pip install 'geoseg[{extra}]'"
    backends = []
    if onnxruntime_available():
        backends.append(f"onnx (onnxruntime {package_version('onnxruntime')})")
    if not missing("torch"):
        backends.append(f"torch (torch {package_version('torch')})")
    return {
        "kind": "installation",
        "geoseg": __version__,
        "extras": extras,
        "backends": backends,
    }
