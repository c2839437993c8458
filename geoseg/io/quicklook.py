"""Quicklook PNGs: the image with its class overlay and polygon outlines, at a glance.

A quicklook reads decimated views of the image and of the class raster (GDAL
serves them from overviews where present), so its memory does not depend on
the scene's size; polygon outlines are drawn only while the layers hold few
enough polygons to read (``max_outlines``).  Class colours and names come from
the class raster's ``GEOSEG_CLASSES`` tag, which ``geoseg predict`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import ColorInterp, Resampling

from geoseg.errors import ModelCardError
from geoseg.io.atomic import atomic_output
from geoseg.models.card import ClassInfo

__all__ = ["QUICKLOOK_PX", "display_rgb", "write_quicklook"]

#: Longest edge of a quicklook, in pixels.
QUICKLOOK_PX = 1400


def display_rgb(data: npt.NDArray[np.generic], valid: npt.NDArray[np.bool_]) -> np.ndarray:
    """uint8 (H, W, 3) from 1+ bands, stretched between the 2nd and 98th percentiles.

    Invalid pixels stay black.  One band is shown as grey.

    >>> rgb = display_rgb(np.arange(12.0).reshape(3, 2, 2), np.ones((2, 2), bool))
    >>> rgb.shape, rgb.dtype.name, int(rgb[0, 0, 0]), int(rgb[1, 1, 0])
    ((2, 2, 3), 'uint8', 0, 255)
    """
    bands = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    out = np.zeros((*bands.shape[1:], 3), dtype=np.uint8)
    for i, b in enumerate(bands.astype(np.float64)):
        vals = b[valid] if valid.any() else b.ravel()
        vals = vals[np.isfinite(vals)]
        lo, hi = np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0)
        scaled = np.nan_to_num((b - lo) / max(hi - lo, 1e-9) * 255, nan=0.0)
        out[..., i] = np.clip(scaled, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out


def _classes(tags: dict[str, str], values: npt.NDArray[np.uint8]) -> list[ClassInfo]:
    """The raster's classes from its GEOSEG_CLASSES tag, else a palette over its values."""
    try:
        return [ClassInfo.from_dict(c) for c in json.loads(tags["GEOSEG_CLASSES"])]
    except (KeyError, ValueError, TypeError, ModelCardError):
        import matplotlib
        from matplotlib.colors import to_hex

        palette = matplotlib.colormaps["tab10"]
        found = sorted(int(x) for x in np.unique(values) if x != 0)
        return [ClassInfo(v, f"class {v}", to_hex(palette(v % 10))) for v in found]


def _image_bands(src: rasterio.DatasetReader, tags: dict[str, str]) -> list[int]:
    """The bands the run read (GEOSEG_PARAMETERS), else the first three non-alpha ones."""
    try:
        chosen = json.loads(tags["GEOSEG_PARAMETERS"]).get("bands")
    except (KeyError, ValueError, AttributeError):
        chosen = None
    if chosen and all(1 <= int(b) <= src.count for b in chosen):
        return [int(b) for b in chosen][:3]
    plain = [i + 1 for i, c in enumerate(src.colorinterp) if c != ColorInterp.alpha]
    return plain[:3] if len(plain) >= 3 else plain[:1] or [1]


def _outlines(polygons: Path, max_outlines: int) -> tuple[dict[str, Any], int]:
    """Layer name -> geometries of a vector file, or nothing when it holds too many."""
    import pyogrio

    from geoseg.io.env import no_pam_sidecars

    with no_pam_sidecars():
        try:
            layers = [n for n, _ in pyogrio.list_layers(polygons) if n != "layer_styles"]
            counts = [int(pyogrio.read_info(polygons, layer=n)["features"]) for n in layers]
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError):
            return {}, 0  # a format this GDAL does not read (GeoParquet without Arrow)
        total = sum(max(c, 0) for c in counts)
        if total > max_outlines:
            return {}, total
        out = {n: pyogrio.read_dataframe(polygons, layer=n, columns=[]).geometry for n in layers}
    return out, total


def write_quicklook(
    image: str | Path,
    classes: str | Path,
    dst: str | Path,
    *,
    polygons: str | Path | None = None,
    title: str | None = None,
    overwrite: bool = False,
    max_px: int = QUICKLOOK_PX,
    max_outlines: int = 20_000,
    min_px: int = 800,
    bands: Sequence[int] | None = None,
) -> Path:
    """Draw ``image`` with the class overlay of ``classes`` (and polygon outlines) as a PNG.

    Parameters
    ----------
    image : str or Path
        The raster that was predicted.
    classes : str or Path
        Its class raster, on the same grid (as ``geoseg predict`` writes it).
    dst : str or Path
        The PNG to write (atomically; an existing file only with ``overwrite``).
    polygons : str or Path, optional
        The vector output; its outlines are drawn when it holds at most
        ``max_outlines`` polygons in all (the legend says when they are not).
    title : str, optional
        Figure title (default: the image's file name).
    max_px, min_px : int
        Longest edge of the drawn raster, in pixels: rasters are read decimated
        down to ``max_px`` and small ones drawn enlarged up to ``min_px``.
    bands : sequence of int, optional
        Image bands shown as red, green, blue (default: the bands the run read).

    Returns
    -------
    Path
        ``dst``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dst = Path(dst)
    with rasterio.open(classes) as cls_src:
        tags = cls_src.tags()
        scale = max(1.0, max(cls_src.width, cls_src.height) / max_px)
        shape = (max(1, round(cls_src.height / scale)), max(1, round(cls_src.width / scale)))
        cls = cls_src.read(1, out_shape=shape, resampling=Resampling.nearest)
        bounds, crs = cls_src.bounds, cls_src.crs
    with rasterio.open(image) as src:
        # (an image without a CRS was predicted with --assume-crs: same grid, if same bounds)
        same_grid = (src.crs is None or src.crs == crs) and np.allclose(
            tuple(src.bounds), tuple(bounds), rtol=0, atol=abs(src.transform.a) * 1.01
        )
        if same_grid:
            picked = list(bands) if bands else _image_bands(src, tags)
            data = src.read(
                picked,
                out_shape=(len(picked), *shape),
                masked=True,
                resampling=Resampling.average,
            )
            valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
            raw = np.ma.getdata(data)
            if raw.dtype == np.uint8 and len(picked) >= 3:
                rgb = np.moveaxis(raw[:3], 0, -1).copy()
                rgb[~valid] = 0
            else:
                rgb = display_rgb(raw, valid)
    if not same_grid:
        # A class raster on a grid of its own (GCP/RPC inputs are predicted on a fitted
        # north-up grid): draw the classes over grey.
        rgb = np.full((*shape, 3), 128, dtype=np.uint8)
    info = _classes(tags, cls)
    overlay = np.zeros((*shape, 4), dtype=float)
    share: dict[int, float] = {}
    for k in info:
        hit = cls == k.id
        share[k.id] = float(hit.mean())
        if k.vectorize:
            overlay[hit] = (*(v / 255 for v in k.rgb), 0.38)
    outlines: dict[str, Any] = {}
    total = 0
    if polygons is not None:
        outlines, total = _outlines(Path(polygons), max_outlines)
    # Small rasters are drawn enlarged, so that the legend and title fit beside them.
    zoom = max(1.0, min_px / max(shape))
    fig, ax = plt.subplots(figsize=(shape[1] * zoom / 100, shape[0] * zoom / 100 + 0.5), dpi=100)
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    ax.imshow(rgb, extent=extent, interpolation="nearest")
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    handles = []
    for k in info:
        if not k.vectorize:
            continue
        label = f"{k.layer}: {share.get(k.id, 0.0):.1%} of pixels"
        geoms = outlines.get(k.layer)
        if geoms is not None:
            if len(geoms):
                geoms.boundary.plot(ax=ax, color=k.color, linewidth=0.6)
            label += f", {len(geoms):,} polygons"
        handles.append(Patch(facecolor=k.color, edgecolor=k.color, label=label))
    if polygons is not None and not outlines:
        note = f"({total:,} polygons: outlines not drawn)"
        handles.append(Patch(facecolor="none", edgecolor="none", label=note))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)
    ax.set_axis_off()
    ax.set_title(title or Path(image).name, fontsize=11)
    fig.tight_layout()
    with atomic_output(dst, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dst
