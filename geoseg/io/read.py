"""Open rasters and read pixel windows with masks, reflection and band selection.

This module (with the other ``geoseg.io`` modules) is the only place that
opens paths.  Everything downstream receives arrays and value objects.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.errors import BandError, RasterReadError
from geoseg.types import PixelWindow

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6371008.8


@dataclass(frozen=True)
class RasterSpec:
    """What geoseg needs to know about a raster (no pixel data).

    ``shape`` is ``(rows, cols)``; ``res`` is ``(x, y)`` pixel size in CRS units;
    ``georef`` says how pixels are placed: ``"transform"`` (a geotransform),
    ``"gcps"`` or ``"rpcs"`` (no geotransform; needs warping) or ``"none"``;
    ``pixel_size_m`` is the mean pixel edge in metres (approximate for
    geographic CRSs, evaluated at the raster centre).
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    band_names: tuple[str, ...]
    colorinterp: tuple[str, ...]
    block_shape: tuple[int, int]
    driver: str
    georef: str = "transform"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.height, self.width

    @property
    def res(self) -> tuple[float, float]:
        """Pixel edges in CRS units: along a row (x), along a column (y); rotation-proof."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)

    @property
    def north_up(self) -> bool:
        """Whether the geotransform has no rotation or shear terms."""
        return self.transform.b == 0 and self.transform.d == 0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units: the box around all four corners."""
        xs, ys = zip(
            *(self.transform * (c, r) for c in (0, self.width) for r in (0, self.height)),
            strict=True,
        )
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def pixel_size_m(self) -> float | None:
        """Mean pixel edge in metres, or None without a CRS."""
        return pixel_size_m(self.crs, self.transform, self.width, self.height)

    @property
    def area_km2(self) -> float | None:
        """Ground area of the whole raster in km², or None without a CRS."""
        ps = pixel_size_m_xy(self.crs, self.transform, self.width, self.height)
        if ps is None:
            return None
        # A pixel's area is |det| of the geotransform; rx * ry overstates it under shear.
        t = self.transform
        skew = abs(t.determinant) / (math.hypot(t.a, t.d) * math.hypot(t.b, t.e))
        return ps[0] * ps[1] * skew * self.width * self.height / 1e6


def pixel_size_m_xy(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> tuple[float, float] | None:
    """Pixel width and height in metres (at the raster centre for geographic CRSs)."""
    if crs is None:
        return None
    rx = math.hypot(transform.a, transform.d)
    ry = math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        _, lat = transform * (width / 2, height / 2)
        k = math.pi / 180 * EARTH_RADIUS_M
        return rx * k * math.cos(math.radians(max(min(lat, 89.9), -89.9))), ry * k
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return rx * factor, ry * factor


def pixel_size_m(crs: CRS | None, transform: Affine, width: int, height: int) -> float | None:
    """Mean pixel edge in metres; see :func:`pixel_size_m_xy`."""
    xy = pixel_size_m_xy(crs, transform, width, height)
    return None if xy is None else math.sqrt(xy[0] * xy[1])


def _check_path(path: str) -> None:
    if "://" in path or path.startswith("/vsi") or path.lower().startswith(("vrt:", "gti:")):
        return
    p = Path(path)
    if not p.exists():
        raise RasterReadError(f"input {path} does not exist; check the path")
    if p.is_dir():
        raise RasterReadError(f"input {path} is a directory, not a raster; pass a raster file")
    if not os.access(p, os.R_OK):
        raise RasterReadError(
            f"input {path} is not readable (permission denied); fix its permissions"
        )


def _spec(ds: Any, path: str) -> RasterSpec:
    descs = tuple(d or "" for d in ds.descriptions)
    ci = tuple(c.name for c in ds.colorinterp)
    names = tuple(d or c for d, c in zip(descs, ci, strict=True))
    if ds.transform.is_identity and ds.gcps[0]:
        georef = "gcps"
    elif ds.transform.is_identity and ds.rpcs:
        georef = "rpcs"
    elif ds.transform.is_identity and ds.crs is None:
        georef = "none"
    else:
        georef = "transform"
    return RasterSpec(
        georef=georef,
        path=path,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        crs=ds.crs,
        transform=ds.transform,
        nodata=ds.nodata,
        band_names=names,
        colorinterp=ci,
        block_shape=tuple(ds.block_shapes[0]) if ds.count else (0, 0),
        driver=ds.driver,
    )


def describe(path: str | Path) -> RasterSpec:
    """Open ``path`` just long enough to describe it.

    Raises
    ------
    RasterReadError
        If the path is missing, a directory, unreadable or not a raster.
    """
    with RasterSource(path) as src:
        return src.spec


def select_bands(
    spec: RasterSpec, wanted: Sequence[str], bands: Sequence[int] | None
) -> tuple[int, ...]:
    """Choose which raster bands (1-based) feed a model expecting ``wanted`` bands.

    Explicit ``bands`` win.  Otherwise: the non-alpha bands when their count
    matches; else bands whose colour interpretation or description matches the
    wanted names (e.g. red, green, blue out of an RGBN raster).

    Raises
    ------
    BandError
        Naming the raster's bands, the model's, and the ``bands`` parameter.
    """
    n = len(wanted)
    listing = ", ".join(f"{i + 1}:{name}" for i, name in enumerate(spec.band_names))
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= spec.count]
        if bad:
            raise BandError(
                f"bands={','.join(map(str, bands))} names band(s) {bad} but the raster has bands "
                f"{listing}"
            )
        if len(bands) != n:
            raise BandError(
                f"bands={','.join(map(str, bands))} selects {len(bands)} band(s) but the model "
                f"expects {n} ({', '.join(wanted)})"
            )
        return tuple(bands)
    non_alpha = [i + 1 for i, c in enumerate(spec.colorinterp) if c != ColorInterp.alpha.name]
    if len(non_alpha) == n:
        return tuple(non_alpha)
    # Then by colour interpretation, then by a band description that names the
    # band as a word ("B04 red" is red).
    for names in (
        [c.lower() for c in spec.colorinterp],
        [re.split(r"[^a-z0-9]+", name.lower()) for name in spec.band_names],
    ):
        picked: list[int] = []
        for w in wanted:
            hits = [
                i + 1
                for i, name in enumerate(names)
                if (w.lower() in name if isinstance(name, list) else name == w.lower())
            ]
            if len(hits) != 1:
                break
            picked.append(hits[0])
        if len(picked) == n:
            return tuple(picked)
    if len(non_alpha) >= n:
        hint = ",".join(str(i) for i in non_alpha[:n])
    else:  # e.g. a grey band repeated for an RGB model
        hint = ",".join(str(non_alpha[i % len(non_alpha)] if non_alpha else 1) for i in range(n))
    raise BandError(
        f"the raster has {spec.count} band(s) ({listing}) but the model expects {n} "
        f"({', '.join(wanted)}); choose them with bands=..., e.g. bands={hint}"
    )


class RasterSource:
    """An open raster to read windows from, with optional on-the-fly resampling.

    Parameters
    ----------
    path : str or Path
        Anything GDAL opens: GeoTIFF/COG, VRT, JPEG2000, ``/vsicurl/`` URLs.
    bands : sequence of int, optional
        1-based bands to read (default: all).
    resolution : float, optional
        Read through a warped view resampled (bilinear) to this pixel size in CRS
        units, same CRS and extent; ``spec`` then describes that grid.
    assume_crs : str, optional
        CRS to use when the file has none.

    Notes
    -----
    Not thread-safe: use one instance per thread.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: Sequence[int] | None = None,
        resolution: float | None = None,
        assume_crs: str | None = None,
    ) -> None:
        self.path = str(path)
        _check_path(self.path)
        self._stack = ExitStack()
        try:
            self._src = self._stack.enter_context(rasterio.open(self.path))
            if self._src.count == 0:
                raise RasterReadError(f"{self.path} has no raster bands (subdatasets only?)")
            self.source_spec = _spec(self._src, self.path)
            self._ds: Any = self._src
            if assume_crs is not None and self._src.crs is None:
                self._crs_override: CRS | None = CRS.from_user_input(assume_crs)
            else:
                self._crs_override = None
            if resolution is not None:
                self._ds = self._stack.enter_context(self._warped(resolution))
        except RasterioError as exc:
            self._stack.close()
            raise RasterReadError(
                f"cannot read {self.path} as a raster ({exc}); is it a valid, complete GeoTIFF/COG?"
            ) from exc
        except BaseException:
            self._stack.close()
            raise
        spec = _spec(self._ds, self.path)
        if self._crs_override is not None:
            spec = RasterSpec(**{**spec.__dict__, "crs": self._crs_override})
        self.spec = spec
        self.bands = tuple(bands) if bands is not None else tuple(range(1, spec.count + 1))
        self._float = spec.dtype.startswith("complex") or np.dtype(spec.dtype).kind in "fc"
        # No nodata value, mask band or alpha on any selected band: every pixel is data,
        # and reading GDAL's all-255 masks (one per band) would only cost time.
        self._all_valid = self._ds is self._src and all(
            list(self._src.mask_flag_enums[b - 1]) == [MaskFlags.all_valid] for b in self.bands
        )

    def _warped(self, resolution: float) -> WarpedVRT:
        src = self._src
        spec = _spec(src, self.path)
        if spec.north_up:
            left, bottom, right, top = spec.bounds
            width = max(1, round((right - left) / resolution))
            height = max(1, round((top - bottom) / resolution))
            transform = Affine((right - left) / width, 0, left, 0, -(top - bottom) / height, top)
        else:
            # The same rotated grid, its pixels scaled: same corners, same orientation.
            rx, ry = spec.res
            width = max(1, round(spec.width * rx / resolution))
            height = max(1, round(spec.height * ry / resolution))
            transform = spec.transform * Affine.scale(spec.width / width, spec.height / height)
        return WarpedVRT(
            src,
            crs=src.crs,
            transform=transform,
            width=width,
            height=height,
            resampling=Resampling.bilinear,
        )

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying datasets."""
        self._stack.close()

    def read(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """Read the selected bands and validity over ``window``.

        Parts of the window past the raster edge are filled by reflection of the
        pixels inside (so edge tiles see natural context); their validity is
        reflected too.

        Returns
        -------
        data : numpy.ndarray
            ``(bands, height, width)`` in the raster's dtype.
        valid : numpy.ndarray
            bool ``(height, width)``: False where every selected band is nodata
            (nodata value, internal/external mask, alpha band) or any band is NaN.

        Raises
        ------
        RasterReadError
            When GDAL fails to decode a block (corrupt or truncated file).
        """
        h, w = self.spec.shape
        inner = window.clip(h, w)
        if inner is None:
            raise ValueError(f"window {window} lies entirely outside the {h}x{w} raster")
        rw = Window(inner.col_off, inner.row_off, inner.width, inner.height)
        try:
            data = self._ds.read(self.bands, window=rw)
            if self._all_valid:
                valid = np.ones(data.shape[1:], dtype=bool)
            else:
                masks = self._ds.read_masks(self.bands, window=rw)
                # GDAL's dataset-mask rule: a pixel is nodata only when every band is;
                # a dark pixel with one band at the nodata value is still data.
                valid = np.any(masks > 0, axis=0)
        except RasterioError as exc:
            detail = str(exc.__cause__ or exc)
            raise RasterReadError(
                f"failed to read pixels of {self.path} at rows {inner.row_off}-{inner.row_end}, "
                f"cols {inner.col_off}-{inner.col_end} ({detail}); the file may be corrupt or truncated"
            ) from exc
        if self._float:
            valid &= np.all(np.isfinite(data), axis=0)
        if inner != window:
            pad = (
                (inner.row_off - window.row_off, window.row_end - inner.row_end),
                (inner.col_off - window.col_off, window.col_end - inner.col_end),
            )
            data = np.pad(data, ((0, 0), *pad), mode="reflect")
            valid = np.pad(valid, pad, mode="reflect")
        return data, valid


def iter_strips(
    path: str | Path, *, rows: int = 512, band: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row_off, array)`` strips of one band over the full raster width.

    Raises
    ------
    RasterReadError
        If the raster cannot be opened or a block cannot be decoded.
    """
    with RasterSource(path, bands=[band]) as src:
        h, w = src.spec.shape
        for r in range(0, h, rows):
            n = min(rows, h - r)
            try:
                arr = src._ds.read(band, window=Window(0, r, w, n))
            except RasterioError as exc:
                raise RasterReadError(
                    f"failed to read {path} rows {r}-{r + n}: {exc.__cause__ or exc}"
                ) from exc
            yield r, arr


def iter_confidence_strips(path: str | Path, *, rows: int = 512) -> Iterator[np.ndarray]:
    """Yield float32 per-pixel confidence strips in [0, 1] from a probability raster.

    A one-band raster is the confidence itself (its band scale applied, or
    unscaled unsigned integers divided by their top value); a
    raster with a band per class gives the highest class probability, which is
    the probability of the predicted class.  Nodata pixels give NaN.
    """
    with RasterSource(path) as src:
        h, w = src.spec.shape
        scales = np.asarray(src._ds.scales, dtype=np.float32)[:, None, None]
        nodata = src._ds.nodata
        dt = np.dtype(src.spec.dtype)
        if dt.kind == "u" and np.all(scales == 1):
            # Unscaled integers: full range means 1 (geoseg's own rasters carry a 1/254 scale).
            top = np.iinfo(dt).max - (1 if nodata == np.iinfo(dt).max else 0)
            scales = scales / np.float32(top)
        for r in range(0, h, rows):
            n = min(rows, h - r)
            try:
                raw = src._ds.read(window=Window(0, r, w, n))
            except RasterioError as exc:
                raise RasterReadError(
                    f"failed to read {path} rows {r}-{r + n}: {exc.__cause__ or exc}"
                ) from exc
            bad = np.all(raw == nodata, axis=0) if nodata is not None else np.zeros((n, w), bool)
            conf = (raw.astype(np.float32) * scales).max(axis=0)
            conf[bad] = np.nan
            yield conf


def read_tags(
    path: str | Path,
) -> tuple[dict[str, str], dict[int, tuple[int, int, int]], RasterSpec]:
    """Dataset tags, band-1 colour table and spec of a raster."""
    with RasterSource(path, bands=[1]) as src:
        tags = dict(src._ds.tags())
        try:
            cmap = {k: tuple(v[:3]) for k, v in src._ds.colormap(1).items()}
        except ValueError:
            cmap = {}
        return tags, cmap, src.spec


@contextlib.contextmanager
def north_up_vrt(path: str | Path) -> Iterator[str]:
    """A GCP-georeferenced raster as a north-up warped VRT (a temporary file).

    GDAL fits the transformation to the ground control points (a polynomial, or a
    thin-plate spline when there are many: its choice) and warps bilinearly onto a
    north-up grid in the GCPs' CRS at about the source's resolution.  An alpha
    band marks the pixels the source does not cover, so they are nodata.  The VRT
    reads the source lazily, window by window: memory stays bounded.

    Yields
    ------
    str
        Path of the VRT, removed on exit.

    Raises
    ------
    GeoreferenceError
        If the GCPs carry no CRS or GDAL cannot fit them.
    """
    import shutil
    import tempfile

    from rasterio.shutil import copy as rio_copy

    from geoseg.errors import GeoreferenceError

    src_path = str(Path(path).resolve()) if Path(path).exists() else str(path)
    tmp = tempfile.mkdtemp(prefix="geoseg-gcps-")
    out = Path(tmp) / (Path(str(path)).stem + ".north-up.vrt")
    try:
        with rasterio.open(src_path) as src:
            gcps, gcp_crs = src.gcps
            if not gcps or gcp_crs is None:
                raise GeoreferenceError(
                    f"{path} has ground control points without a CRS; set one "
                    "(gdal_translate -a_srs EPSG:XXXX) so they can be placed on a map"
                )
            try:
                with WarpedVRT(
                    src, crs=gcp_crs, resampling=Resampling.bilinear, add_alpha=True
                ) as vrt:
                    rio_copy(vrt, str(out), driver="VRT")
            except RasterioError as exc:
                raise GeoreferenceError(
                    f"cannot warp {path} by its {len(gcps)} ground control points ({exc}); "
                    "check them, or warp it first: gdalwarp -r bilinear IN OUT.tif"
                ) from exc
        yield str(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _utm_for(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone CRS around a longitude/latitude."""
    zone = min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


@contextlib.contextmanager
def north_up_rpc(
    path: str | Path, *, height: float | None = None, dem: str | Path | None = None
) -> Iterator[str]:
    """An RPC-georeferenced raster warped onto a north-up UTM grid (a temporary GeoTIFF).

    GDAL's RPC transformer places each pixel from the rational polynomial
    coefficients and a ground height: the constant `height` (metres above the
    ellipsoid; default the RPCs' own ``HEIGHT_OFF``, the mean height of the
    scene) or the heights of a `dem` raster.  The grid is in the UTM zone of the
    scene's centre at about the source's resolution; pixels are warped
    bilinearly, window by window within GDAL's warp memory limit, so memory stays
    bounded whatever the raster's size.  An alpha band marks the pixels the
    source does not cover (and its nodata), so they are nodata downstream.

    The warped copy needs about the source's size on disk (DEFLATE), under the
    system's temporary directory (``TMPDIR``).

    Yields
    ------
    str
        Path of the warped GeoTIFF, removed on exit.

    Raises
    ------
    GeoreferenceError
        If the RPCs cannot place the raster, or `dem` cannot be read.
    """
    import shutil
    import tempfile

    from rasterio.warp import calculate_default_transform, reproject

    from geoseg.errors import GeoreferenceError

    src_path = str(Path(path).resolve()) if Path(path).exists() else str(path)
    if dem is not None and not Path(dem).exists():
        raise GeoreferenceError(
            f"the DEM {dem} for placing {path} by its RPCs does not exist; give an existing "
            "elevation raster (heights above the WGS 84 ellipsoid) or leave the DEM out"
        )
    if height is not None and not math.isfinite(height):
        raise GeoreferenceError(f"the RPC height must be a finite number of metres, got {height}")
    tmp = tempfile.mkdtemp(prefix="geoseg-rpcs-")
    out = Path(tmp) / (Path(str(path)).stem + ".north-up.tif")
    try:
        with rasterio.open(src_path) as src:
            rpcs = src.rpcs
            if rpcs is None:
                raise GeoreferenceError(f"{path} has no RPC coefficients to place it by")
            opts: dict[str, Any]
            if dem is not None:
                opts = {"RPC_DEM": str(Path(dem).resolve())}
                where = f"heights of {dem}"
            else:
                h = float(rpcs.height_off) if height is None else float(height)
                opts = {"RPC_HEIGHT": h}
                where = f"a constant height of {h:g} m"
            crs = _utm_for(float(rpcs.long_off), float(rpcs.lat_off))
            count = src.count
            bands = list(range(1, count + 1))
            try:
                transform, width, height_px = calculate_default_transform(
                    "EPSG:4326", crs, src.width, src.height, rpcs=rpcs, **opts
                )
                profile: dict[str, Any] = {
                    "driver": "GTiff",
                    "width": width,
                    "height": height_px,
                    "count": count + 1,
                    "dtype": src.dtypes[0],
                    "crs": crs,
                    "transform": transform,
                    "tiled": True,
                    "blockxsize": 512,
                    "blockysize": 512,
                    "compress": "deflate",
                    "BIGTIFF": "IF_SAFER",
                }
                with rasterio.open(out, "w", **profile) as dst:
                    dst.colorinterp = [*src.colorinterp, ColorInterp.alpha]
                    for i, desc in enumerate(src.descriptions, start=1):
                        if desc:
                            dst.set_band_description(i, desc)
                    reproject(
                        rasterio.band(src, bands),
                        rasterio.band(dst, bands),
                        rpcs=rpcs,
                        src_crs="EPSG:4326",
                        src_nodata=src.nodata,
                        dst_transform=transform,
                        dst_crs=crs,
                        dst_alpha=count + 1,
                        resampling=Resampling.bilinear,
                        warp_mem_limit=256,
                        **opts,
                    )
            except RasterioError as exc:
                raise GeoreferenceError(
                    f"cannot place {path} by its RPC coefficients ({exc}); check them and the "
                    "DEM, or warp it first: gdalwarp -rpc -r bilinear IN OUT.tif"
                ) from exc
        log.info(
            "%s is placed by RPCs: warped north-up onto %s at %.3g m with %s",
            path,
            crs.to_string(),
            transform.a,
            where,
        )
        yield str(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
