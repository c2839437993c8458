"""Class-specific clean-up of polygonized segmentation results.

Raw polygons follow pixel edges: staircases, specks and pinholes.  Each class
kind wants a different clean-up, chosen by :attr:`CleanupParams.style`:

``"regularize"`` (buildings)
    right-angled footprints, see :mod:`geoseg.vectorize.regularize`;
``"smooth"`` (vegetation)
    Chaikin corner cutting turns staircases into smooth outlines, then a
    topology-preserving simplification drops the surplus vertices;
``"simplify"`` (cropland)
    a topology-preserving Douglas-Peucker simplification: straight field edges;
``"none"``
    the outline is kept; only the area filters and validity repair apply.

Before the style, parts smaller than ``min_area_m2`` are dropped and holes
smaller than ``fill_holes_below_m2`` are filled.  With ``split_neck_m`` a
footprint that narrows to a neck thinner than that is cut there into separate
objects (:func:`split_at_necks`): two houses joined by a strip of pixels come
out as two buildings.  Splitting works on whole polygons, after the seam-exact
polygonizer has joined them, so it gives the same pieces whatever the strips,
batches or workers.  All of this happens in a
metric CRS (:func:`geoseg.vectorize.metric.metric_crs`), and the results come
back in the input CRS, valid, as Polygon or MultiPolygon.

Simplification works on each polygon alone, so neighbouring polygons of a
coverage may drift apart by up to the tolerance along shared edges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from geoseg.errors import ConfigError
from geoseg.vectorize.metric import from_metric, metric_frame, to_metric
from geoseg.vectorize.regularize import regularize_polygon

__all__ = [
    "STYLES",
    "CleanupParams",
    "clean_geometries",
    "default_cleanup",
    "polygonal",
    "smooth_polygon",
    "split_at_necks",
]

STYLES = ("none", "regularize", "smooth", "simplify")
"""Clean-up styles: none, regularize (buildings), smooth (vegetation), simplify (cropland)."""


@dataclass(frozen=True)
class CleanupParams:
    """How to clean the polygons of one class.

    Attributes
    ----------
    min_area_m2 : float
        Polygons (and parts of multipolygons) smaller than this, in m², are
        dropped.  0 keeps everything.
    fill_holes_below_m2 : float
        Holes smaller than this, in m², are filled.  0 keeps every hole.
    simplify_tolerance_m : float
        Douglas-Peucker tolerance in metres: the largest distance a simplified
        outline may stray from the original.  Required (> 0) for
        ``"regularize"`` and ``"simplify"``; optional for ``"smooth"``; must
        be 0 for ``"none"``.
    style : str
        One of :data:`STYLES`.
    smooth_iterations : int
        Chaikin corner-cutting passes for ``"smooth"`` (1 to 8); each pass
        doubles the vertex count before simplification.
    split_neck_m : float
        Cut a polygon into separate objects where it narrows to less than this
        width, in metres (see :func:`split_at_necks`); 0 keeps polygons whole.
        The pieces are written as separate features, a small gap apart.
    """

    min_area_m2: float = 0.0
    fill_holes_below_m2: float = 0.0
    simplify_tolerance_m: float = 0.0
    style: str = "none"
    smooth_iterations: int = 3
    split_neck_m: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_area_m2", "fill_holes_below_m2", "simplify_tolerance_m", "split_neck_m"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.integer | np.floating)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"CleanupParams.{name} must be a finite number >= 0, got {value!r}; "
                    "give it in metres (m² for areas) or 0 to switch the step off"
                )
        if self.style not in STYLES:
            raise ConfigError(
                f"CleanupParams.style must be one of {', '.join(STYLES)}, got {self.style!r}"
            )
        if self.style in ("regularize", "simplify") and self.simplify_tolerance_m <= 0:
            raise ConfigError(
                f"CleanupParams.simplify_tolerance_m must be > 0 for style {self.style!r}; "
                "set it to about one or two pixel sizes in metres (e.g. 1.0)"
            )
        if self.style == "none" and self.simplify_tolerance_m > 0:
            raise ConfigError(
                "CleanupParams.simplify_tolerance_m is "
                f"{self.simplify_tolerance_m!r} but style 'none' keeps outlines as they are; "
                "set style='simplify' or simplify_tolerance_m=0"
            )
        it = self.smooth_iterations
        if isinstance(it, bool) or not isinstance(it, int | np.integer) or not 1 <= it <= 8:
            raise ConfigError(
                f"CleanupParams.smooth_iterations must be an integer from 1 to 8, got {it!r}"
            )

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> CleanupParams:
        """Build parameters from a mapping, e.g. one class's section of a config file.

        Parameters
        ----------
        options : mapping
            Keys among the attribute names; missing keys take their defaults.

        Returns
        -------
        CleanupParams

        Raises
        ------
        ConfigError
            If a key is unknown or a value is invalid.

        Examples
        --------
        >>> params = CleanupParams.from_dict({"style": "simplify", "simplify_tolerance_m": 2})
        >>> params.style, params.simplify_tolerance_m, params.min_area_m2
        ('simplify', 2, 0.0)
        """
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"clean-up options must be a mapping of names to values, got {options!r}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown clean-up option(s) {', '.join(map(str, unknown))}; "
                f"valid options are {', '.join(sorted(known))}"
            )
        return cls(**dict(options))


_DEFAULTS: dict[str, CleanupParams] = {
    "none": CleanupParams(),
    "regularize": CleanupParams(
        min_area_m2=10.0, fill_holes_below_m2=10.0, simplify_tolerance_m=1.0, style="regularize"
    ),
    "smooth": CleanupParams(
        min_area_m2=25.0, fill_holes_below_m2=25.0, simplify_tolerance_m=0.5, style="smooth"
    ),
    "simplify": CleanupParams(
        min_area_m2=200.0, fill_holes_below_m2=100.0, simplify_tolerance_m=2.0, style="simplify"
    ),
}


def default_cleanup(style: str) -> CleanupParams:
    """Sensible clean-up for a class kind, for imagery of about 0.3-1 m pixels.

    ========== ============ ========== ============= ===============================
    style      min area     fill holes tolerance     why
    ========== ============ ========== ============= ===============================
    none       0            0          0             keep the raw pixel outlines
    regularize 10 m²        10 m²      1.0 m         buildings: below 10 m² is noise
                                                     or a shed; walls ~1-2 px
    smooth     25 m²        25 m²      0.5 m         vegetation: drop single trees'
                                                     specks and canopy pinholes
    simplify   200 m²       100 m²     2.0 m         cropland: fields are large,
                                                     their edges straight
    ========== ============ ========== ============= ===============================

    Scale areas with the square of the pixel size for coarser imagery.

    Parameters
    ----------
    style : str
        One of :data:`STYLES`.

    Returns
    -------
    CleanupParams

    Raises
    ------
    ConfigError
        If ``style`` is unknown.

    Examples
    --------
    >>> default_cleanup("regularize").min_area_m2
    10.0
    """
    try:
        return _DEFAULTS[style]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown clean-up style {style!r}; choose one of {', '.join(STYLES)}"
        ) from None


def polygonal(geom: BaseGeometry | None) -> Polygon | MultiPolygon | None:
    """Valid polygonal part of a geometry: Polygon, MultiPolygon, or None when empty.

    Invalid input is repaired with :func:`shapely.make_valid`; points and lines
    (from collapsed parts) are dropped.

    Examples
    --------
    >>> from shapely import Polygon
    >>> bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    >>> polygonal(bowtie).geom_type, polygonal(bowtie).area
    ('MultiPolygon', 2.0)
    """
    if geom is None or geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon | MultiPolygon):
        return None if geom.is_empty else geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon | MultiPolygon)]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _chaikin(ring: npt.NDArray[np.float64], iterations: int) -> npt.NDArray[np.float64]:
    pts = ring[:-1]
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        cut = np.empty((2 * len(pts), 2))
        cut[0::2] = 0.75 * pts + 0.25 * nxt
        cut[1::2] = 0.25 * pts + 0.75 * nxt
        pts = cut
    return np.vstack([pts, pts[:1]])


def smooth_polygon(
    polygon: Polygon, iterations: int = 3, tolerance: float = 0.0
) -> Polygon | MultiPolygon | None:
    """Chaikin corner cutting of every ring of a polygon, then optional simplification.

    Each pass replaces every corner by two points at 1/4 and 3/4 along its
    edges, so pixel staircases turn into smooth curves; the outline moves
    inwards at convex corners by at most a quarter of the edge lengths.

    Parameters
    ----------
    polygon : shapely.Polygon
        Polygon to smooth.
    iterations : int, optional
        Number of passes; each doubles the vertex count.
    tolerance : float, optional
        Douglas-Peucker tolerance applied to each smoothed ring (0: none); see
        :func:`simplify_polygon` for why ring by ring.

    Returns
    -------
    shapely.Polygon, shapely.MultiPolygon or None
        The valid smoothed polygon (repaired where rings came to cross), or
        None when nothing polygonal is left.

    Examples
    --------
    >>> from shapely import box
    >>> round(smooth_polygon(box(0, 0, 4, 4), iterations=1).area, 2)
    14.0
    """
    if polygon.is_empty:
        return None
    rings = np.empty(1 + len(polygon.interiors), dtype=object)
    rings[:] = [
        shapely.linearrings(_chaikin(np.asarray(r.coords), iterations))
        for r in (polygon.exterior, *polygon.interiors)
    ]
    if tolerance > 0:
        rings = shapely.simplify(rings, tolerance, preserve_topology=True)
    return _assemble(rings)


def simplify_polygon(polygon: Polygon, tolerance: float) -> Polygon | MultiPolygon | None:
    """Douglas-Peucker simplification ring by ring, repairing only where rings meet.

    ``shapely.simplify(polygon, preserve_topology=True)`` checks every ring
    against every other and took 17 s on one vegetation polygon of a 4096²
    raster with 9,000 holes; simplifying the rings one by one (each kept
    simple) and then fixing the few holes that came to touch the shell or
    each other takes well under a second and gives the same outlines
    elsewhere.

    Returns
    -------
    shapely.Polygon, shapely.MultiPolygon or None
        Valid, or None when nothing polygonal is left.

    Examples
    --------
    >>> from shapely import box
    >>> stair = shapely.Polygon([(0, 0), (4, 0), (4, 1), (4.1, 1), (4.1, 4), (0, 4)])
    >>> len(simplify_polygon(stair, 0.5).exterior.coords)
    5
    """
    if polygon.is_empty:
        return None
    rings = np.empty(1 + len(polygon.interiors), dtype=object)
    rings[:] = [polygon.exterior, *polygon.interiors]
    if tolerance > 0:
        rings = shapely.simplify(rings, tolerance, preserve_topology=True)
    return _assemble(rings)


def _assemble(rings: npt.NDArray[np.object_]) -> Polygon | MultiPolygon | None:
    """A valid polygon from an exterior ring and hole rings that may have come to cross.

    Holes that are valid, strictly inside the shell and touch no other hole go
    in as they are; the few others (and the shell, when it crosses itself) are
    repaired by overlay, which keeps the cost near linear in the vertex count
    where :func:`shapely.make_valid` on the whole polygon is not.
    """
    shell = polygonal(shapely.polygons(rings[0]))
    if shell is None:
        return None
    holes = shapely.polygons(rings[1:])
    if not len(holes):
        return shell
    ok = shapely.is_valid(holes) & shapely.contains_properly(shell, holes)
    a, b = shapely.STRtree(holes).query(holes, predicate="intersects")
    touching = a != b
    ok[a[touching]] = False
    ok[b[touching]] = False
    if isinstance(shell, Polygon):
        base: BaseGeometry = Polygon(shell.exterior, [h.exterior for h in holes[ok]])
    else:
        base, ok[:] = shell, False
    if not ok.all():
        bad = shapely.make_valid(holes[~ok])
        base = shapely.difference(base, shapely.union_all(bad))
    return polygonal(base)


#: Cells of the grid a polygon is split on, at the most (a finer grid is coarsened).
_SPLIT_MAX_CELLS = 2_000_000


def _cut_width(neck: float) -> float:
    """Width of the gap left between the pieces of a cut polygon, in metres."""
    return min(0.2, neck / 10)


def split_at_necks(polygon: Polygon, neck: float, gap: float | None = None) -> list[Polygon]:
    """Cut a polygon where it narrows to less than ``neck`` into separate pieces.

    The *cores* of the polygon are the parts farther than ``neck / 2`` from its
    outline; a polygon with one core (a rectangle, an L, any shape without a
    narrow waist) is returned whole.  With several cores, every point goes to
    the nearest core (a seeded split of the polygon's distance map), so the cuts
    run across the middle of the necks; the pieces are shrunk by ``gap / 2``
    along the cuts only, so they neither touch nor overlap.

    Parameters
    ----------
    polygon : shapely.Polygon
        In a metric CRS (units of metres).
    neck : float
        Narrowest width, in metres, that still holds one object together.
    gap : float, optional
        Width of the cut (default ``min(0.2, neck / 10)``).

    Returns
    -------
    list of shapely.Polygon
        The pieces, largest core first; ``[polygon]`` when there is nothing to cut.

    Examples
    --------
    >>> from shapely import box
    >>> two = box(0, 0, 10, 10).union(box(10, 4, 12, 6)).union(box(12, 0, 22, 10))
    >>> [round(p.area) for p in split_at_necks(two, 3.0)]
    [102, 101]
    >>> len(split_at_necks(box(0, 0, 30, 8), 3.0))
    1
    """
    import rasterio.features
    from rasterio.transform import from_origin
    from scipy import ndimage

    if neck <= 0 or polygon.is_empty:
        return [polygon]
    gap = _cut_width(neck) if gap is None else gap
    minx, miny, maxx, maxy = polygon.bounds
    res = neck / 4
    cells = (maxx - minx) * (maxy - miny) / res**2
    if cells > _SPLIT_MAX_CELLS:
        res *= math.sqrt(cells / _SPLIT_MAX_CELLS)
    width = math.ceil((maxx - minx) / res) + 2
    height = math.ceil((maxy - miny) / res) + 2
    transform = from_origin(minx - res, maxy + res, res, res)
    inside = rasterio.features.rasterize(
        [polygon], out_shape=(height, width), transform=transform, dtype="uint8"
    ).astype(bool)
    depth = ndimage.distance_transform_edt(inside) * res
    labels, n = ndimage.label(depth > neck / 2)
    if n < 2:
        return [polygon]
    # A core must hold at least a neck-wide square's middle, else it is a bump.
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes * res * res >= (neck / 2) ** 2) + 1
    if len(keep) < 2:
        return [polygon]
    order = keep[np.argsort(-sizes[keep - 1], kind="stable")]
    cores = np.zeros_like(labels)
    for rank, lab in enumerate(order, start=1):
        cores[labels == lab] = rank
    _, (iy, ix) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    owner = cores[iy, ix].astype(np.int32)
    pieces: list[Polygon] = []
    for rank in range(1, len(order) + 1):
        region = shapely.union_all(
            [
                shapely.geometry.shape(g)
                for g, v in rasterio.features.shapes(owner, mask=owner == rank, transform=transform)
                if v == rank
            ]
        )
        part = polygonal(polygon.intersection(region.buffer(-gap / 2, join_style="mitre")))
        if part is not None:
            pieces += [q for q in shapely.get_parts(part) if q.area > 0]
    return pieces or [polygon]


def _fill_small_holes(polygon: Polygon, below: float) -> Polygon:
    if below <= 0 or not polygon.interiors:
        return polygon
    keep = [r for r in polygon.interiors if Polygon(r).area >= below]
    if len(keep) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, keep)


def _style_part(polygon: Polygon, params: CleanupParams) -> BaseGeometry | None:
    tol = params.simplify_tolerance_m
    if params.style == "regularize":
        return regularize_polygon(polygon, simplify_tolerance=tol)
    if params.style == "smooth":
        return smooth_polygon(polygon, params.smooth_iterations, tol)
    if params.style == "simplify":
        return simplify_polygon(polygon, tol)
    return polygon


def _clean_one(geom: BaseGeometry | None, params: CleanupParams) -> Polygon | MultiPolygon | None:
    valid = polygonal(geom)
    if valid is None:
        return None
    parts = [
        _fill_small_holes(p, params.fill_holes_below_m2)
        for p in shapely.get_parts(valid)
        if p.area >= params.min_area_m2 and p.area > 0
    ]
    if not parts:
        return None
    if params.split_neck_m > 0:
        return _clean_split(parts, params)
    styled = [polygonal(_style_part(p, params)) for p in parts]
    kept = [q for s in styled if s is not None for q in shapely.get_parts(s)]
    if not kept:
        return None
    if len(kept) == 1:
        return polygonal(kept[0])
    # Parts styled one by one (smoothed, squared) may come to overlap.
    return polygonal(shapely.union_all(kept))


def _clean_split(parts: list[Polygon], params: CleanupParams) -> Polygon | MultiPolygon | None:
    """Cut parts at their necks, style each piece, keep the pieces apart (one MultiPolygon)."""
    gap = _cut_width(params.split_neck_m)
    kept: list[Polygon] = []
    taken: BaseGeometry | None = None
    for part in parts:
        for piece in split_at_necks(part, params.split_neck_m, gap):
            if piece.area < params.min_area_m2:
                continue
            styled = polygonal(_style_part(piece, params))
            if styled is None:
                continue
            # Squared or smoothed pieces may grow into their neighbours: the larger
            # core, styled first, keeps the contested strip.
            if taken is not None and styled.intersects(taken):
                styled = polygonal(styled.difference(taken.buffer(gap, join_style="mitre")))
                if styled is None:
                    continue
            kept += [q for q in shapely.get_parts(styled) if q.area >= params.min_area_m2]
            taken = styled if taken is None else shapely.union_all([taken, styled])
    kept = [q for q in kept if q.area > 0]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else polygonal(MultiPolygon(kept))


def clean_geometries(
    geoms: Iterable[BaseGeometry | None],
    params: CleanupParams,
    *,
    crs: Any,
    bounds: tuple[float, float, float, float] | None = None,
) -> list[Polygon | MultiPolygon | None]:
    """Clean polygons of one class: area filter, hole filling, style, validity.

    Parameters
    ----------
    geoms : iterable of shapely geometries or None
        Polygons in ``crs`` coordinates (e.g. from
        :func:`geoseg.vectorize.polygonize.polygonize_strips`).
    params : CleanupParams
        What to do; thresholds are in metres and m².
    crs : pyproj.CRS, rasterio.crs.CRS, str or int
        CRS of ``geoms``.
    bounds : tuple of 4 floats, optional
        ``(left, bottom, right, top)`` in ``crs`` used to choose the metric CRS;
        the bounds of ``geoms`` when None.  Pass the raster's bounds so every
        batch of one raster is processed in the same metric CRS.

    Returns
    -------
    list
        One entry per input, in ``crs`` coordinates: a valid Polygon or
        MultiPolygon, or None where the input was dropped (below
        ``min_area_m2``, empty, or not polygonal).

    Raises
    ------
    ConfigError
        If ``params`` is not a :class:`CleanupParams`.
    GeoreferenceError
        If ``crs`` is missing or unreadable.

    Examples
    --------
    >>> from shapely import box
    >>> ring = box(0, 0, 10, 10).difference(box(4, 4, 5, 5))
    >>> out = clean_geometries([ring, box(20, 20, 21, 21)],
    ...                        CleanupParams(min_area_m2=2, fill_holes_below_m2=2), crs=32633)
    >>> out[0].area, out[1]
    (100.0, None)
    """
    if not isinstance(params, CleanupParams):
        raise ConfigError(
            f"params must be a CleanupParams, got {type(params).__name__}; "
            "build one with CleanupParams(...) or CleanupParams.from_dict(...)"
        )
    items = list(geoms)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    present = np.array([g is not None and not g.is_empty for g in items], dtype=bool)
    if not present.any():
        return [None] * len(items)
    if bounds is None:
        box = shapely.total_bounds(arr[present])
        bounds = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    frame = metric_frame(crs, bounds)
    metric = to_metric(arr, frame)
    cleaned = np.empty(len(items), dtype=object)
    cleaned[:] = [_clean_one(g, params) for g in metric]
    back = from_metric(cleaned, frame)
    if frame.is_identity:
        return list(back)
    # Reprojection can bend edges enough to make a near-touching ring cross.
    return [polygonal(g) for g in back]
