"""Square up building footprints: right angles along the building's own axes.

Segmentation masks outline buildings with pixel staircases and noise.  Like
ArcGIS "Regularize Building Footprint" (right-angles method),
:func:`regularize_polygon` turns such an outline into a polygon whose edges all
run along one of two perpendicular directions:

1. simplify the outline (Douglas-Peucker with topology preserved) so that
   staircases become straight edges;
2. take the building's dominant direction as the length-weighted circular mean
   of the edge directions modulo 90° (refined on the edges near it), falling
   back to the minimum rotated rectangle's direction for round shapes;
3. rotate the outline so that direction is the x axis, label each edge
   horizontal or vertical, and merge runs of equally labelled edges into one
   line each;
4. drop the shortest line while it is shorter than ``min_edge`` (its two
   neighbours, both parallel, merge into one), so noise does not leave steps;
5. hand every edge of the *original* outline to its nearest line, correct the
   direction with the principal axis of those edges (walls pooled, vertical
   ones turned by 90°) and move each line to the length-weighted mean offset
   of its edges: a staircase straddles the true wall, while the vertices that
   Douglas-Peucker keeps are its outer corners;
6. intersect consecutive lines to get the corners, rotate back, and check the
   result: an invalid polygon, or one whose area differs from the input's by
   more than ``max_area_change``, is replaced by the minimum rotated rectangle
   when that is within ``max_area_change`` of the input's area, else by the
   simplified outline: a large, ragged footprint (a curved row of houses that
   merged) is never turned into a rectangle several times its size.

Holes (courtyards) are squared along the same direction; a hole that collapses
or leaves the squared shell is dropped.

Work in a metric CRS (see :mod:`geoseg.vectorize.metric`); every distance here
is in the units of the coordinates.

No dependency is needed: the package ``buildingregulariser`` (PyPI, 0.2.x)
does the same on GeoDataFrames, but geoseg keeps this step on plain shapely
geometries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LinearRing, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from geoseg.errors import ConfigError

__all__ = [
    "dominant_direction",
    "regularize_geometries",
    "regularize_polygon",
]

# Edges within this angle of the first estimate refine the dominant direction;
# wider would let 45° chamfers pull it, narrower would ignore slightly bent walls.
_REFINE_WINDOW = math.radians(20.0)
# The fit on the whole outline only corrects the direction; a larger change
# means the outline disagrees with the walls found, and the estimate is kept.
_MAX_CORRECTION = math.radians(10.0)


@dataclass
class _Line:
    """An axis-parallel line in the rotated frame: y = offset (horizontal) or x = offset."""

    horizontal: bool
    offset: float
    weight: float


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        limit = "zero or more" if allow_zero else "greater than zero"
        raise ConfigError(f"{name} must be finite and {limit}, got {value!r}")
    return v


def _edges(ring: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    d = np.diff(ring, axis=0)
    return d[:, 0], d[:, 1], np.hypot(d[:, 0], d[:, 1])


def dominant_direction(polygon: Polygon, *, simplify_tolerance: float = 0.0) -> float:
    """Direction of a footprint's main walls, in radians in ``[0, pi/2)``.

    Parameters
    ----------
    polygon : shapely.Polygon
        Footprint outline.
    simplify_tolerance : float, optional
        Douglas-Peucker tolerance applied first, in coordinate units; about one
        to two pixel sizes turns pixel staircases into straight walls.

    Returns
    -------
    float
        Angle of the walls from the x axis, counter-clockwise, modulo 90°.

    Examples
    --------
    >>> from shapely import affinity, box
    >>> rect = affinity.rotate(box(0, 0, 40, 20), 30, origin=(0, 0))
    >>> round(math.degrees(dominant_direction(rect)), 6)
    30.0
    """
    tol = _check_positive("simplify_tolerance", simplify_tolerance, allow_zero=True)
    shell = shapely.simplify(polygon, tol, preserve_topology=True) if tol > 0 else polygon
    coords = np.asarray(shell.exterior.coords) if isinstance(shell, Polygon) else np.empty((0, 2))
    if len(coords) >= 4:
        dx, dy, length = _edges(coords)
        quad = np.mod(np.arctan2(dy, dx), np.pi / 2)
        # Four times the angle makes directions 90° apart coincide on the circle.
        s, c = np.sum(length * np.sin(4 * quad)), np.sum(length * np.cos(4 * quad))
        if math.hypot(s, c) > 0.25 * float(length.sum()):
            first = math.atan2(s, c) / 4
            gap = np.abs(np.mod(quad - first + np.pi / 4, np.pi / 2) - np.pi / 4)
            near = gap <= _REFINE_WINDOW
            s = np.sum(length[near] * np.sin(4 * quad[near]))
            c = np.sum(length[near] * np.cos(4 * quad[near]))
            return float(np.mod(math.atan2(s, c) / 4, np.pi / 2))
    rect = shapely.minimum_rotated_rectangle(polygon)
    if not isinstance(rect, Polygon) or rect.is_empty:
        return 0.0
    rc = np.asarray(rect.exterior.coords)
    dx, dy, length = _edges(rc)
    i = int(np.argmax(length))
    return float(np.mod(math.atan2(dy[i], dx[i]), np.pi / 2))


def _rotate(
    xy: npt.NDArray[np.float64], angle: float, origin: tuple[float, float]
) -> npt.NDArray[np.float64]:
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = xy[:, 0] - origin[0], xy[:, 1] - origin[1]
    return np.column_stack([origin[0] + x * cos - y * sin, origin[1] + x * sin + y * cos])


def _lines(ring: npt.NDArray[np.float64]) -> list[_Line]:
    """Merge consecutive edges of a closed ring (rotated frame) into alternating lines."""
    dx, dy, length = _edges(ring)
    keep = length > 0
    if keep.sum() < 4:
        return []
    horizontal = np.abs(dx) >= np.abs(dy)
    mid = (ring[:-1] + ring[1:]) / 2
    offset = np.where(horizontal, mid[:, 1], mid[:, 0])
    horizontal, offset, length = horizontal[keep], offset[keep], length[keep]
    change = np.flatnonzero(horizontal != np.roll(horizontal, 1))
    if len(change) == 0:
        return []
    # Start at a change of direction so no run wraps around the end of the ring.
    order = np.roll(np.arange(len(horizontal)), -int(change[0]))
    horizontal, offset, length = horizontal[order], offset[order], length[order]
    starts = np.flatnonzero(np.r_[True, horizontal[1:] != horizontal[:-1]])
    weights = np.add.reduceat(length, starts)
    offsets = np.add.reduceat(length * offset, starts) / weights
    return [
        _Line(bool(h), float(o), float(w))
        for h, o, w in zip(horizontal[starts], offsets, weights, strict=True)
    ]


def _drop_short(lines: list[_Line], min_edge: float) -> list[_Line]:
    """Remove lines shorter than ``min_edge``, merging their two parallel neighbours."""
    while len(lines) > 4:
        n = len(lines)
        spans = [abs(lines[(i + 1) % n].offset - lines[i - 1].offset) for i in range(n)]
        i = int(np.argmin(spans))
        if spans[i] >= min_edge:
            break
        before, after = lines[i - 1], lines[(i + 1) % n]
        weight = before.weight + after.weight
        merged = _Line(
            before.horizontal,
            (before.offset * before.weight + after.offset * after.weight) / weight,
            weight,
        )
        # Replace the three lines (i-1, i, i+1) by the merged one, cyclically.
        keep = [lines[(i + k) % n] for k in range(2, n - 1)]
        lines = [merged, *keep]
    return lines


def _corners(lines: list[_Line]) -> npt.NDArray[np.float64]:
    pts = []
    for a, b in zip(lines, lines[1:] + lines[:1], strict=True):
        x, y = (b.offset, a.offset) if a.horizontal else (a.offset, b.offset)
        pts.append((x, y))
    pts.append(pts[0])
    return np.asarray(pts, dtype=np.float64)


def _segment_distances(
    pts: npt.NDArray[np.float64], corners: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Distance of every point (rows) to every edge of a closed corner ring (columns)."""
    a, b = corners[:-1], corners[1:]
    ab = b - a
    denom = np.maximum((ab**2).sum(axis=1), 1e-300)
    ap = pts[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab[None]).sum(axis=2) / denom, 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    out: npt.NDArray[np.float64] = np.hypot(*(pts[:, None, :] - nearest).transpose(2, 0, 1))
    return out


@dataclass
class _Outline:
    """Edges of an original ring in the rotated frame: midpoints, vectors, lengths."""

    mid: npt.NDArray[np.float64]
    vec: npt.NDArray[np.float64]
    length: npt.NDArray[np.float64]

    @classmethod
    def of(cls, ring: npt.NDArray[np.float64]) -> _Outline:
        vec = np.diff(ring, axis=0)
        return cls((ring[:-1] + ring[1:]) / 2, vec, np.hypot(vec[:, 0], vec[:, 1]))


def _owners(lines: list[_Line], outline: _Outline) -> npt.NDArray[np.intp]:
    """Index of the line nearest to each edge (by its midpoint) of the original outline."""
    # Edge j of the corner ring runs from corner j to corner j + 1, i.e. along line j + 1.
    nearest = np.argmin(_segment_distances(outline.mid, _corners(lines)), axis=1)
    out: npt.NDArray[np.intp] = (nearest + 1) % len(lines)
    return out


def _direction_correction(
    lines: list[_Line], outline: _Outline, owner: npt.NDArray[np.intp]
) -> float:
    """Small rotation (radians) that best aligns the lines with the outline they own.

    Each wall's share of the original outline is treated as a curve of uniform
    density; its second moments (about the wall's own centroid) are pooled over
    the walls, those of vertical walls turned by -90° so that every wall shares
    one direction, and the principal axis of the pool is that direction.  A
    staircase straddles its wall evenly, so this is much finer than the
    direction of the simplified edges.
    """
    pooled = np.zeros((2, 2))
    for i, line in enumerate(lines):
        mine = owner == i
        w = outline.length[mine]
        if w.sum() <= 0:
            continue
        mid, vec = outline.mid[mine], outline.vec[mine]
        if not line.horizontal:
            mid = np.column_stack([mid[:, 1], -mid[:, 0]])
            vec = np.column_stack([vec[:, 1], -vec[:, 0]])
        centred = mid - (w[:, None] * mid).sum(axis=0) / w.sum()
        # Second moment of a segment of uniform density: its midpoint's plus d d^T / 12.
        pooled += (w[:, None] * centred).T @ centred + (w[:, None] * vec).T @ vec / 12.0
    if not pooled.any():
        return 0.0
    _, vectors = np.linalg.eigh(pooled)
    vx, vy = vectors[:, -1]
    delta = math.atan2(vy, vx)
    if delta > math.pi / 2:
        delta -= math.pi
    elif delta < -math.pi / 2:
        delta += math.pi
    return delta if abs(delta) <= _MAX_CORRECTION else 0.0


def _refit(lines: list[_Line], outline: _Outline, owner: npt.NDArray[np.intp]) -> list[_Line]:
    """Move each line to the length-weighted mean offset of the outline it owns.

    Douglas-Peucker keeps extreme vertices (the outer corners of a staircase),
    which biases offsets taken from the simplified edges; the mean along the
    whole original outline sits on the wall itself.
    """
    out = []
    for i, line in enumerate(lines):
        mine = owner == i
        w = outline.length[mine]
        if w.sum() > 0:
            axis = 1 if line.horizontal else 0
            offset = float((w * outline.mid[mine, axis]).sum() / w.sum())
            line = _Line(line.horizontal, offset, line.weight)
        out.append(line)
    return out


def _square_ring(
    ring: LinearRing,
    original: LinearRing,
    angle: float,
    origin: tuple[float, float],
    min_edge: float,
    *,
    refine_direction: bool = False,
) -> tuple[npt.NDArray[np.float64] | None, float]:
    """Corners of the squared ring (closed, source frame) and the direction used."""
    lines = _drop_short(_lines(_rotate(np.asarray(ring.coords), -angle, origin)), min_edge)
    if len(lines) < 4:
        return None, angle
    raw = np.asarray(original.coords, dtype=np.float64)
    outline = _Outline.of(_rotate(raw, -angle, origin))
    owner = _owners(lines, outline)
    if refine_direction:
        delta = _direction_correction(lines, outline, owner)
        if delta:
            angle += delta
            outline = _Outline.of(_rotate(raw, -angle, origin))
    return _rotate(_corners(_refit(lines, outline, owner)), angle, origin), angle


def regularize_polygon(
    polygon: Polygon,
    *,
    simplify_tolerance: float,
    min_edge: float | None = None,
    max_area_change: float = 0.25,
) -> Polygon:
    """Right-angled version of a building footprint.

    Parameters
    ----------
    polygon : shapely.Polygon
        Footprint, in a metric CRS; holes (courtyards) are squared too.
    simplify_tolerance : float
        Douglas-Peucker tolerance in coordinate units, about 1-2 pixel sizes.
    min_edge : float, optional
        Walls shorter than this are removed (steps from noise);
        ``2 * simplify_tolerance`` when None.
    max_area_change : float, optional
        Largest accepted relative change of area; beyond it, or when the
        squared polygon is invalid, the minimum rotated rectangle is returned
        if its area is within that change too, else the simplified outline.

    Returns
    -------
    shapely.Polygon
        A polygon whose consecutive edges meet at 90° or 270°; empty input is
        returned as is.

    Raises
    ------
    ConfigError
        If a tolerance is not a positive finite number.

    Examples
    --------
    A 20 m x 10 m footprint with a small notch in its top wall:

    >>> from shapely import Polygon
    >>> notched = Polygon([(0, 0), (20, 0), (20, 10), (10.5, 10), (10.5, 9.5), (9.5, 9.5),
    ...                    (9.5, 10), (0, 10)])
    >>> square = regularize_polygon(notched, simplify_tolerance=1.0)
    >>> len(square.exterior.coords) - 1, [round(v, 2) for v in square.bounds]
    (4, [0.0, 0.0, 20.0, 9.96])
    """
    tol = _check_positive("simplify_tolerance", simplify_tolerance)
    edge = 2 * tol if min_edge is None else _check_positive("min_edge", min_edge, allow_zero=True)
    change = _check_positive("max_area_change", max_area_change)
    if polygon.is_empty or polygon.area == 0:
        return polygon

    simple = shapely.simplify(polygon, tol, preserve_topology=True)
    if not isinstance(simple, Polygon) or simple.is_empty:
        return _fallback(polygon, polygon, change)
    angle = dominant_direction(simple)
    centre = polygon.centroid
    origin = (centre.x, centre.y)

    shell, angle = _square_ring(
        simple.exterior, polygon.exterior, angle, origin, edge, refine_direction=True
    )
    if shell is None:
        return _fallback(polygon, simple, change)
    shell_poly = Polygon(shell)
    holes = []
    # Topology-preserving simplification keeps every ring, in order.
    originals = list(polygon.interiors)
    if len(originals) != len(simple.interiors):
        originals = list(simple.interiors)
    for interior, original in zip(simple.interiors, originals, strict=True):
        hole, _ = _square_ring(interior, original, angle, origin, edge)
        if hole is not None and Polygon(hole).is_valid and shell_poly.contains(Polygon(hole)):
            holes.append(hole)
    result = Polygon(shell, holes)
    if not result.is_valid:
        # Holes squared on their own may touch each other; keep the squared shell.
        result = shell_poly
    if not result.is_valid or abs(result.area - polygon.area) > change * polygon.area:
        return _fallback(polygon, simple, change)
    return result


def _fallback(polygon: Polygon, simple: Polygon, change: float) -> Polygon:
    """The minimum rotated rectangle when it keeps the area, else the simplified outline."""
    rect = shapely.minimum_rotated_rectangle(polygon)
    if (
        isinstance(rect, Polygon)
        and rect.area > 0
        and abs(rect.area - polygon.area) <= change * polygon.area
    ):
        return rect
    if isinstance(simple, Polygon) and simple.is_valid and not simple.is_empty:
        return simple
    return polygon


def regularize_geometries(
    geoms: Iterable[BaseGeometry | None],
    *,
    simplify_tolerance: float,
    min_edge: float | None = None,
    max_area_change: float = 0.25,
) -> list[Polygon | MultiPolygon | None]:
    """Apply :func:`regularize_polygon` to polygons and to each part of multipolygons.

    Parameters
    ----------
    geoms : iterable of shapely geometries or None
        Footprints in a metric CRS.  None and empty geometries give None;
        other non-polygonal geometries give None too.
    simplify_tolerance, min_edge, max_area_change
        As :func:`regularize_polygon`.

    Returns
    -------
    list
        One Polygon, MultiPolygon or None per input.  Squared parts of a
        multipolygon that come to overlap are unioned.

    Raises
    ------
    ConfigError
        If a tolerance is not a positive finite number.
    """
    tol = _check_positive("simplify_tolerance", simplify_tolerance)
    if min_edge is not None:
        _check_positive("min_edge", min_edge, allow_zero=True)
    _check_positive("max_area_change", max_area_change)
    out: list[Polygon | MultiPolygon | None] = []
    for geom in geoms:
        if geom is None or geom.is_empty:
            out.append(None)
        elif isinstance(geom, Polygon):
            out.append(
                regularize_polygon(
                    geom,
                    simplify_tolerance=tol,
                    min_edge=min_edge,
                    max_area_change=max_area_change,
                )
            )
        elif isinstance(geom, MultiPolygon):
            parts = [
                regularize_polygon(
                    p,
                    simplify_tolerance=tol,
                    min_edge=min_edge,
                    max_area_change=max_area_change,
                )
                for p in geom.geoms
            ]
            multi = MultiPolygon(parts)
            if multi.is_valid:
                out.append(multi)
            else:
                merged = shapely.union_all(parts)
                out.append(merged if isinstance(merged, Polygon | MultiPolygon) else None)
        else:
            out.append(None)
    return out
