"""Clean-up and measurement of one batch of polygons: what the clean-up workers run.

Styles per class kind, the clean-up itself (:mod:`geoseg.vectorize.clean`), and areas and
perimeters in metres: geodesic on the WGS 84 ellipsoid, from the polygons' own CRS.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.models.card import ClassInfo
from geoseg.vectorize.clean import CleanupParams, clean_geometries, default_cleanup
from geoseg.vectorize.metric import utm_epsg

log = logging.getLogger(__name__)


def _style_for(name: str) -> str:
    n = name.lower()
    if "build" in n or "roof" in n or "house" in n:
        return "regularize"
    if any(k in n for k in ("veg", "tree", "forest", "shrub", "canopy", "wood")):
        return "smooth"
    return "simplify"


def cleanup_for(
    cls: ClassInfo, card_post: Mapping[str, Any], override: Mapping[str, CleanupParams] | None
) -> CleanupParams:
    """Clean-up of one class: explicit override, else the card's, else a default by kind."""
    if override and cls.name in override:
        return override[cls.name]
    if cls.name in card_post:
        return CleanupParams.from_dict(card_post[cls.name])
    return default_cleanup(_style_for(cls.name))


#: Longitude span (degrees) beyond which one metric CRS cannot serve a whole raster.
ZONE_SPAN_DEG = 6.0


def _lonlat(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Representative points of ``geoms`` as an (n, 2) lon/lat array."""
    import pyproj
    import shapely

    pts = shapely.get_coordinates(shapely.point_on_surface(geoms))
    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if src.is_geographic:
        return pts
    tr = pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    return np.column_stack(tr.transform(pts[:, 0], pts[:, 1]))


def _geodesic(geoms: list[Any], crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m²) and perimeters (m) on the WGS 84 ellipsoid, for any extent."""
    import pyproj
    import shapely

    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    tr = (
        None if src.is_geographic else pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    )
    geod = pyproj.Geod(ellps="WGS84")
    areas, perims = np.zeros(len(geoms)), np.zeros(len(geoms))
    for i, g in enumerate(geoms):
        if g is None:
            continue
        if tr is not None:
            g = shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        a, p = geod.geometry_area_perimeter(g)
        areas[i], perims[i] = abs(a), p
    return areas, perims


def clean_and_measure(
    geoms: list[Any], params: CleanupParams, crs: Any, bounds: tuple[float, float, float, float]
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Clean polygons and measure them in metres, whatever the raster's extent.

    A raster spanning more than a UTM zone (world or continental mosaics in
    EPSG:4326 or 3857) is handled zone by zone: each polygon is cleaned in the
    UTM zone of its representative point.  Polygons too large for any
    transverse Mercator zone are kept as they are (made valid) and measured on
    the ellipsoid.  Cleaned polygons are clipped to the raster's ``bounds``.

    Returns
    -------
    cleaned, areas_m2, perimeters_m, origin
        One entry per input (``None`` where dropped; NaN measures there), except
        that with ``params.split_neck_m`` a polygon cut into pieces gives one
        entry per piece; ``origin`` holds the input index of every entry.
    """
    import shapely

    from geoseg.vectorize import area_perimeter_m, metric_frame, polygonal

    footprint = shapely.box(*bounds)
    n = len(geoms)
    cleaned: list[Any] = [None] * n
    areas, perims = np.full(n, np.nan), np.full(n, np.nan)
    arr = np.array(geoms, dtype=object)
    frame = metric_frame(crs, bounds)
    wide = not frame.target.equals(frame.source) and _lon_span(crs, bounds) > ZONE_SPAN_DEG
    if wide and n:
        lonlat = _lonlat(arr, crs)
        zones = np.array([utm_epsg(lon, lat) for lon, lat in lonlat.tolist()], dtype=int)
    else:
        zones = np.zeros(n, int)
    for zone in np.unique(zones):
        idx = np.flatnonzero(zones == zone)
        part = arr[idx]
        # A wide raster's polygons are cleaned in the UTM zone of their representative
        # point: the same frame whichever polygons are cleaned together (a batch region's
        # or a whole run's), so both give the same polygons.
        b = _zone_bounds(int(zone), crs) if wide else bounds
        try:
            with np.errstate(all="ignore"):
                out = clean_geometries(list(part), params, crs=crs, bounds=b)
                # Smoothing, squaring and the round trip through a metric CRS may
                # nudge border vertices past the raster; polygons stay inside it.
                out = [
                    g
                    if g is None or footprint.contains(g)
                    else polygonal(g.intersection(footprint))
                    for g in out
                ]
                kept = np.array([g for g in out if g is not None], dtype=object)
                a, p = area_perimeter_m(kept, crs, b) if len(kept) else (np.zeros(0), np.zeros(0))
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(p))):
                raise ValueError("non-finite measures")
        except Exception as exc:  # GEOS rejects coordinates a far-off zone turned to inf
            log.debug("zone %s: falling back to geodesic measures (%s)", zone, exc)
            out = [polygonal(g) for g in part]
            kept = np.array([g for g in out if g is not None], dtype=object)
            a, p = _geodesic(list(kept), crs)
        j = 0
        for k, g in zip(idx, out, strict=True):
            cleaned[k] = g
            if g is not None:
                areas[k], perims[k] = a[j], p[j]
                j += 1
    if params.split_neck_m > 0:
        return _separate_pieces(cleaned, areas, perims, crs, bounds)
    return cleaned, areas, perims, np.arange(n)


def _separate_pieces(
    cleaned: list[Any],
    areas: np.ndarray,
    perims: np.ndarray,
    crs: Any,
    bounds: tuple[float, float, float, float],
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """One entry per piece of the polygons the clean-up cut at their necks, measured again."""
    from geoseg.vectorize import area_perimeter_m

    out: list[Any] = []
    origin: list[int] = []
    split: list[bool] = []
    for k, g in enumerate(cleaned):
        parts = list(g.geoms) if g is not None and g.geom_type == "MultiPolygon" else [g]
        out += parts
        origin += [k] * len(parts)
        split += [len(parts) > 1] * len(parts)
    if len(out) == len(cleaned):
        return cleaned, areas, perims, np.arange(len(cleaned))
    src = np.array(origin)
    new_areas, new_perims = areas[src].copy(), perims[src].copy()
    redo = np.flatnonzero(split)
    pieces = np.empty(len(redo), dtype=object)
    pieces[:] = [out[i] for i in redo]
    try:
        a, p = area_perimeter_m(pieces, crs, bounds)
    except Exception as exc:  # far-off zones: measure on the ellipsoid
        log.debug("falling back to geodesic measures of split pieces (%s)", exc)
        a, p = _geodesic(list(pieces), crs)
    new_areas[redo], new_perims[redo] = a, p
    return out, new_areas, new_perims, src


def _lon_span(crs: Any, bounds: tuple[float, float, float, float]) -> float:
    """Degrees of longitude that ``bounds`` (in ``crs``) span."""
    import pyproj

    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if src.is_geographic:
        return float(bounds[2] - bounds[0])
    try:
        tr = pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
        west, _, east, _ = tr.transform_bounds(*bounds, densify_pts=21)
    except pyproj.exceptions.ProjError:
        return 0.0
    span = east - west
    return float(span if np.isfinite(span) and span >= 0 else 360.0)


def _zone_bounds(epsg: int, crs: Any) -> tuple[float, float, float, float]:
    """Bounds (in ``crs``) of a point whose metric frame is the UTM/UPS zone ``epsg``."""
    import pyproj

    if epsg in (32661, 32761):
        lon, lat = 0.0, 88.0 if epsg == 32661 else -88.0
    else:
        z = epsg % 100
        lon, lat = -183.0 + 6.0 * z, 45.0 if epsg < 32700 else -45.0
    src = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if src.is_geographic:
        x, y = lon, lat
    else:
        x, y = pyproj.Transformer.from_crs("EPSG:4326", src, always_xy=True).transform(lon, lat)
    return float(x), float(y), float(x), float(y)


def shapely_total_bounds(geoms: np.ndarray) -> tuple[float, float, float, float]:
    """Bounds of an array of geometries."""
    import shapely

    b = shapely.total_bounds(geoms)
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


@dataclass
class VectorStats:
    """What a vectorization run produced."""

    pixels: int = 0
    polygons: dict[str, int] = field(default_factory=dict)
    area_m2: dict[str, float] = field(default_factory=dict)
    dropped: int = 0
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: polygons per layer, throughput, peak memory."""
        total = sum(self.polygons.values())
        per = ", ".join(f"{k} {v:,}" for k, v in self.polygons.items())
        rate = self.pixels / 1e6 / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{total:,} polygons ({per}), {self.elapsed_s:.1f} s, {rate:.2f} Mpx/s, "
            f"peak memory {self.peak_rss_mb:.0f} MB"
        )


def output_crs(crs: Any, dst_crs: str | None) -> tuple[Any, Any]:
    """The polygons' CRS, and the coordinate transform to it (None: the raster's own)."""
    import pyproj

    own = pyproj.CRS.from_user_input(crs.to_wkt())
    if not dst_crs:
        return own, None
    out = pyproj.CRS.from_user_input(dst_crs)
    return out, pyproj.Transformer.from_crs(own, out, always_xy=True).transform
