"""Measure and process polygons in metres, whatever the raster's CRS.

Clean-up thresholds (minimum areas, simplification tolerances) are given in
metres and square metres.  :func:`metric_crs` picks a CRS in which those units
hold: the raster's own CRS when it is projected in metres with a true scale
(within 0.5 %) at the centre of the raster's bounds, otherwise the UTM zone (or
UPS polar zone) around that centre.  A UTM zone
distorts lengths by at most about 0.1 % within the zone, so areas are good to
about 0.2 % for rasters that stay within a zone or two of its centre; a raster
spanning many zones should be cut into regions first.

Coordinates are always handled as (x, y) = (easting or longitude, northing or
latitude), whatever axis order the CRS declares (``always_xy=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import CRS, Proj, Transformer
from pyproj.exceptions import CRSError, ProjError

from geoseg.errors import GeoreferenceError

__all__ = [
    "MAX_SCALE_ERROR",
    "MetricFrame",
    "area_perimeter_m",
    "from_metric",
    "metric_crs",
    "metric_frame",
    "to_metric",
    "utm_epsg",
]

Bounds = tuple[float, float, float, float]
"""``(left, bottom, right, top)`` in the coordinates of a CRS, x before y."""

_WGS84 = CRS.from_epsg(4326)

MAX_SCALE_ERROR = 0.005
"""Largest linear scale error (0.5 %) at which a metre-based CRS is used as it is."""


@dataclass(frozen=True)
class MetricFrame:
    """A source CRS, the metric CRS chosen for it, and transformers both ways.

    Attributes
    ----------
    source : pyproj.CRS
        CRS of the geometries handed in.
    target : pyproj.CRS
        Metric CRS the work is done in (may be ``source`` itself).
    forward : pyproj.Transformer or None
        ``source`` to ``target``, x/y order; None when they are the same CRS.
    backward : pyproj.Transformer or None
        ``target`` to ``source``, x/y order; None when they are the same CRS.
    """

    source: CRS
    target: CRS
    forward: Transformer | None
    backward: Transformer | None

    def __post_init__(self) -> None:
        if (self.forward is None) != (self.backward is None):
            raise GeoreferenceError(
                "MetricFrame needs both transformers or neither; build it with metric_frame()"
            )

    @property
    def is_identity(self) -> bool:
        """True when the source CRS is already metric and nothing is transformed."""
        return self.forward is None


def _as_crs(crs: Any) -> CRS:
    if crs is None:
        raise GeoreferenceError(
            "no CRS given; polygons can only be measured in metres in a known CRS "
            "(assign one to the raster, e.g. with rio edit-info --crs EPSG:32633)"
        )
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise GeoreferenceError(
            f"cannot read CRS {crs!r}: {exc}; pass an EPSG code, WKT or a pyproj/rasterio CRS"
        ) from exc


def _check_bounds(bounds: Sequence[float]) -> Bounds:
    try:
        left, bottom, right, top = (float(v) for v in bounds)
    except (TypeError, ValueError) as exc:
        raise GeoreferenceError(
            f"bounds must be (left, bottom, right, top), got {bounds!r}"
        ) from exc
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise GeoreferenceError(f"bounds must be finite, got {bounds!r}")
    if left > right or bottom > top:
        raise GeoreferenceError(
            f"bounds {bounds!r} are not ordered (left, bottom, right, top); "
            "pass left <= right and bottom <= top"
        )
    return left, bottom, right, top


def _horizontal(crs: CRS) -> CRS:
    return crs.sub_crs_list[0] if crs.is_compound else crs


def _is_metric(crs: CRS) -> bool:
    horizontal = _horizontal(crs)
    if not horizontal.is_projected:
        return False
    axes = horizontal.axis_info[:2]
    return len(axes) == 2 and all(ax.unit_conversion_factor == 1.0 for ax in axes)


def _scale_error(crs: CRS, lon: float, lat: float) -> float:
    """Largest relative error of the projection's linear scale at (lon, lat)."""
    try:
        factors = Proj(_horizontal(crs)).get_factors(lon, lat)
    except (CRSError, ProjError):
        return 0.0  # no factors for this kind of CRS: trust its metres
    errors = (factors.meridional_scale - 1.0, factors.parallel_scale - 1.0)
    worst = max(abs(e) for e in errors)
    return worst if math.isfinite(worst) else math.inf


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone (UPS beyond 84°N / 80°S) around ``(lon, lat)``.

    >>> utm_epsg(12.5, 41.9), utm_epsg(-43.2, -22.9)
    (32633, 32723)
    """
    if lat > 84.0:
        return 32661  # UPS North
    if lat < -80.0:
        return 32761  # UPS South
    zone = math.floor((lon + 180.0) / 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def metric_crs(crs: Any, bounds: Sequence[float]) -> CRS:
    """CRS in which to measure geometries of ``crs`` lying within ``bounds``.

    Parameters
    ----------
    crs : pyproj.CRS, rasterio.crs.CRS, str or int
        CRS of the geometries (anything :meth:`pyproj.CRS.from_user_input` takes).
    bounds : sequence of 4 floats
        ``(left, bottom, right, top)`` of the data in ``crs`` coordinates, x
        first (longitude first for geographic CRSs).

    Returns
    -------
    pyproj.CRS
        ``crs`` itself when it is projected with metre axes and its linear
        scale at the bounds' centre is true within :data:`MAX_SCALE_ERROR`;
        otherwise the WGS 84 UTM zone of the bounds' centre (UPS north of
        84°N or south of 80°S).  Web Mercator (EPSG:3857) is in metres but
        off by 1/cos(latitude), so it is replaced by UTM away from the equator.

    Raises
    ------
    GeoreferenceError
        If ``crs`` is missing or unreadable, or ``bounds`` are not finite and
        ordered.

    Examples
    --------
    >>> metric_crs("EPSG:4326", (12.0, 41.0, 12.1, 41.1)).to_epsg()
    32633
    >>> metric_crs(32633, (500000, 4500000, 500100, 4500100)).to_epsg()
    32633
    """
    source = _as_crs(crs)
    left, bottom, right, top = _check_bounds(bounds)
    metric = _is_metric(source)
    try:
        to_lonlat = Transformer.from_crs(source, _WGS84, always_xy=True)
        lon, lat = to_lonlat.transform((left + right) / 2.0, (bottom + top) / 2.0)
    except (CRSError, ProjError):
        lon = lat = math.nan
    if not (math.isfinite(lon) and math.isfinite(lat)):
        if metric:
            return source  # cannot place it on Earth, but its units are metres
        raise GeoreferenceError(
            f"the centre of bounds {tuple(bounds)!r} cannot be placed on Earth in {source.name}; "
            "check that the bounds are in the CRS's own units and x/y order"
        )
    if metric and _scale_error(source, lon, lat) <= MAX_SCALE_ERROR:
        return source
    return CRS.from_epsg(utm_epsg(lon, lat))


def metric_frame(crs: Any, bounds: Sequence[float]) -> MetricFrame:
    """Pair ``crs`` with its :func:`metric_crs` and the transformers between them.

    Parameters
    ----------
    crs : pyproj.CRS, rasterio.crs.CRS, str or int
        CRS of the geometries.
    bounds : sequence of 4 floats
        ``(left, bottom, right, top)`` of the data in ``crs`` coordinates.

    Returns
    -------
    MetricFrame
        With ``forward``/``backward`` set to None when ``crs`` is already metric.

    Raises
    ------
    GeoreferenceError
        As :func:`metric_crs`.

    Examples
    --------
    >>> frame = metric_frame("EPSG:4326", (12.0, 41.0, 12.1, 41.1))
    >>> frame.target.to_epsg(), frame.is_identity
    (32633, False)
    """
    source = _as_crs(crs)
    target = metric_crs(source, bounds)
    if target == source:
        return MetricFrame(source=source, target=target, forward=None, backward=None)
    return MetricFrame(
        source=source,
        target=target,
        forward=Transformer.from_crs(source, target, always_xy=True),
        backward=Transformer.from_crs(target, source, always_xy=True),
    )


def _apply(geoms: npt.ArrayLike, transformer: Transformer | None) -> npt.NDArray[np.object_]:
    arr = np.asarray(geoms, dtype=object)
    if transformer is None:
        return arr

    def move(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    # One pyproj call for every vertex of every geometry.
    out: npt.NDArray[np.object_] = shapely.transform(arr, move)
    return out


def to_metric(geoms: npt.ArrayLike, frame: MetricFrame) -> npt.NDArray[np.object_]:
    """Geometries of ``frame.source`` in ``frame.target`` (an object array, None kept).

    Examples
    --------
    >>> from shapely import box
    >>> frame = metric_frame(32633, (0, 0, 10, 10))
    >>> to_metric([box(0, 0, 10, 10)], frame)[0].area
    100.0
    """
    return _apply(geoms, frame.forward)


def from_metric(geoms: npt.ArrayLike, frame: MetricFrame) -> npt.NDArray[np.object_]:
    """Geometries of ``frame.target`` back in ``frame.source`` (an object array, None kept)."""
    return _apply(geoms, frame.backward)


def area_perimeter_m(
    geoms: npt.ArrayLike, crs: Any, bounds: Sequence[float] | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Areas (m²) and perimeters (m) of polygons, measured in :func:`metric_crs`.

    Parameters
    ----------
    geoms : array_like of shapely geometries
        Polygons in ``crs`` coordinates; None gives NaN.
    crs : pyproj.CRS, rasterio.crs.CRS, str or int
        CRS of ``geoms``.
    bounds : sequence of 4 floats, optional
        ``(left, bottom, right, top)`` used to choose the metric CRS; the
        bounds of ``geoms`` when None (pass the raster's bounds so every batch
        of one raster is measured in the same CRS).

    Returns
    -------
    areas, perimeters : numpy.ndarray
        float64 arrays with one value per geometry.  The perimeter includes
        the rings of holes.

    Raises
    ------
    GeoreferenceError
        As :func:`metric_crs`, or when ``bounds`` is None and every geometry
        is empty.

    Examples
    --------
    >>> from shapely import box
    >>> area_perimeter_m([box(0, 0, 20, 20)], "EPSG:32633")
    (array([400.]), array([80.]))
    """
    arr = np.asarray(geoms, dtype=object)
    if bounds is None:
        bounds = tuple(float(v) for v in shapely.total_bounds(arr))
        if not all(math.isfinite(v) for v in bounds):
            raise GeoreferenceError(
                "cannot choose a metric CRS: every geometry is empty and no bounds were given"
            )
    metric = to_metric(arr, metric_frame(crs, bounds))
    areas: npt.NDArray[np.float64] = shapely.area(metric)
    perimeters: npt.NDArray[np.float64] = shapely.length(metric)
    return areas, perimeters
