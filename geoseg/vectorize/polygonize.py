"""Polygonize class rasters strip by strip, with seams that leave no trace.

:func:`polygonize_strips` takes a class raster as horizontal strips, top to
bottom, and yields exactly the polygons that
``rasterio.features.shapes(whole_raster, mask=valid, connectivity=4)`` would
give: one polygon (with holes) per 4-connected component of equal class, with
the very same vertex coordinates.  Components are merged across strip seams
with a union-find over the two rows that meet there, so a polygon is yielded as
soon as the strip below it no longer touches it; only components that cross
the current seam are carried over, and memory follows the raster width, not
its height.

How one strip is processed:

1. label the 4-connected components of every class present
   (:func:`scipy.ndimage.label`), giving one integer id per component;
2. polygonize the label image with :func:`rasterio.features.shapes` in pixel
   coordinates (integers, so unions across seams are exact);
3. count pixels (and sum confidences) per component with :func:`numpy.bincount`;
4. link components of this strip's first row to the open groups of the last
   strip's bottom row (same class, vertically adjacent pixels);
5. yield groups that no longer touch the bottom row: the parts' shells are
   unioned with :func:`shapely.union_all` (their holes never cross a seam and
   are put back as they are), collinear seam vertices are dropped, and the
   polygon is mapped to raster coordinates with the same arithmetic GDAL uses
   (``x = c + col * a + row * b``), so the coordinates match the whole-raster
   polygons bit for bit.

An open group keeps its parts' outlines (in pixel coordinates, for exact
unions) apart from their holes (mapped to raster coordinates as soon as their
strip is done): the outlines are unioned now and then to keep their number
small, the holes are only collected, and copied once, into the polygon yielded
when the group closes.  So a component that stays open for the whole raster
(a road-connected background with every building as a hole) costs about its
own polygon, not a multiple of it, and nothing of a yielded polygon stays
behind in the polygonizer.

A raster cut into rectangular (or any non-overlapping) regions, each
polygonized on its own, is put back together the same way:
:func:`polygonize_region` keeps apart the components that touch a border
shared with another region (:class:`SeamPiece`, in whole-raster pixel
coordinates) with the pixels they have on that border, and
:func:`join_seams` links pieces whose border pixels are 4-neighbours of equal
class, unions each linked group as the strip seams do and gives the polygons
of one whole-raster ``shapes`` call.

Labelling and polygonizing are done in C for the whole strip; Python work is
per polygon, not per pixel.  Streaming 256-row strips costs roughly 1.5-2x a
single whole-raster ``shapes`` call, and memory holds one strip's labels plus
the components crossing the current seam.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import rasterio.features
import shapely
from rasterio.transform import Affine
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon

from geoseg.errors import ConfigError

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "JoinedPolygon",
    "PolygonRecord",
    "RegionPolygons",
    "SeamPiece",
    "gdal_vertex_order",
    "join_seams",
    "polygonize_array",
    "polygonize_region",
    "polygonize_strips",
]

DEFAULT_BLOCK_ROWS = 512
"""Strip height used by :func:`polygonize_array` when ``block_rows`` is None."""

_FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)

# A group that stays open for many strips (1-row strips, a very tall component)
# collects many parts.  They are unioned once there are more than this many and
# more than half of all the parts the group ever had: the number of parts stays
# bounded while each union at least doubles the size it covers, so the
# intermediate unions cost O(n log n) overall instead of O(n^2).
_MAX_OPEN_PARTS = 64


class AffineLike(Protocol):
    """The six coefficients of an affine transform (``rasterio``'s ``Affine``)."""

    @property
    def a(self) -> float: ...
    @property
    def b(self) -> float: ...
    @property
    def c(self) -> float: ...
    @property
    def d(self) -> float: ...
    @property
    def e(self) -> float: ...
    @property
    def f(self) -> float: ...


@dataclass(frozen=True)
class PolygonRecord:
    """One polygon of a class raster with its pixel statistics.

    Attributes
    ----------
    value : int
        Class value of the component.
    geometry : shapely.Polygon
        The component's outline (with holes) in the coordinates of the raster
        transform.
    pixel_count : int
        Number of pixels in the component (at least 1).
    confidence_sum : float or None
        Sum of the per-pixel confidences over the component, in the units of
        the confidence array (0-1 or 0-255), or None without confidences.
    """

    value: int
    geometry: Polygon
    pixel_count: int
    confidence_sum: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_count < 1:
            raise ConfigError(
                f"PolygonRecord.pixel_count must be at least 1, got {self.pixel_count}"
            )

    @property
    def mean_confidence(self) -> float | None:
        """Mean confidence over the component's pixels, or None without confidences."""
        if self.confidence_sum is None:
            return None
        return self.confidence_sum / self.pixel_count


# Maps pixel (col, row) coordinates, an (n, 2) array, to raster coordinates.
_ToRaster = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
# One piece of an open group's outline: its exterior ring in pixel coordinates and
# its holes in raster coordinates (an object array of LinearRings, in the order
# they go into the polygon).
_Piece = tuple[shapely.LinearRing, npt.NDArray[np.object_]]
# A part is one strip component, or the pieces one union of parts gave (one piece
# unless the union left them apart).
_Part = list[_Piece]


@dataclass
class _Group:
    """A component that touches the current seam: its parts so far (see ``_Piece``)."""

    value: int
    parts: list[_Part]
    pixel_count: int
    confidence_sum: float
    first_pixel: int
    raw_parts: int


@dataclass
class _Columns:
    """Finished components as columns, geometries in raster coordinates."""

    first_pixel: npt.NDArray[np.int64]
    value: npt.NDArray[np.int64]
    geometry: npt.NDArray[np.object_]
    pixel_count: npt.NDArray[np.int64]
    confidence_sum: npt.NDArray[np.float64]

    @classmethod
    def of_strip(cls, s: _Strip, labels: npt.NDArray[np.intp], to_raster: _ToRaster) -> _Columns:
        sums = np.zeros(len(labels)) if s.conf_sums is None else s.conf_sums[labels]
        return cls(
            s.first_pixels[labels],
            s.values[labels],
            shapely.transform(s.polygons[labels], to_raster),
            s.counts[labels],
            sums,
        )

    @classmethod
    def of_groups(
        cls, groups: list[_Group], to_raster: _ToRaster, to_pixel: _ToRaster | None = None
    ) -> _Columns:
        geoms = np.empty(len(groups), dtype=object)
        for i, g in enumerate(groups):
            # A component joined across strips is put in the vertex order GDAL gives it
            # when it traces it whole, so that clean-up (which depends on where a ring
            # starts) does not depend on the strip height.
            order = to_pixel if g.raw_parts > 1 else None
            geoms[i] = _polygon(g.parts, to_raster, order)
            g.parts = []  # the polygon holds the holes now; let the parts go
        return cls(
            np.array([g.first_pixel for g in groups], dtype=np.int64),
            np.array([g.value for g in groups], dtype=np.int64),
            geoms,
            np.array([g.pixel_count for g in groups], dtype=np.int64),
            np.array([g.confidence_sum for g in groups], dtype=np.float64),
        )

    def concat(self, other: _Columns) -> _Columns:
        return _Columns(
            np.concatenate([self.first_pixel, other.first_pixel]),
            np.concatenate([self.value, other.value]),
            np.concatenate([self.geometry, other.geometry]),
            np.concatenate([self.pixel_count, other.pixel_count]),
            np.concatenate([self.confidence_sum, other.confidence_sum]),
        )


@dataclass
class _Strip:
    """Everything known about one labelled strip (labels are 1..n, 0 is no data)."""

    row_off: int
    labels: npt.NDArray[np.int32]
    values: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]
    conf_sums: npt.NDArray[np.float64] | None
    polygons: npt.NDArray[np.object_]
    first_pixels: npt.NDArray[np.int64]
    touches_bottom: npt.NDArray[np.bool_] = field(init=False)

    def __post_init__(self) -> None:
        self.touches_bottom = np.zeros(len(self.values), dtype=bool)
        self.touches_bottom[self.labels[-1]] = True
        self.touches_bottom[0] = False


def polygonize_strips(
    strips: Iterable[tuple[int, npt.NDArray[np.integer] | npt.NDArray[np.bool_]]],
    transform: AffineLike,
    *,
    nodata: float | None = None,
    skip_values: Sequence[int] = (),
    confidence: Iterable[npt.NDArray[np.floating] | npt.NDArray[np.integer]] | None = None,
) -> Iterator[PolygonRecord]:
    """Polygonize a class raster given as consecutive horizontal strips.

    The polygons are identical to those of
    ``rasterio.features.shapes(raster, mask=valid, connectivity=4,
    transform=transform)`` on the whole raster: one polygon per 4-connected
    component of equal class, with the same vertex coordinates.

    Parameters
    ----------
    strips : iterable of (int, numpy.ndarray)
        ``(row_off, class_strip)`` pairs, top to bottom.  ``class_strip`` is a
        2-D integer (or bool) array of shape ``(rows, width)`` covering the
        full raster width; ``row_off`` is the raster row of its first row, and
        each strip starts where the previous one ended.  Heights may vary,
        down to a single row.
    transform : affine.Affine
        Transform of the whole raster (pixel ``(col, row)`` to coordinates).
    nodata : int or float, optional
        Class value that marks missing data: those pixels yield no polygon and
        connect nothing.
    skip_values : sequence of int, optional
        Further class values that yield no polygon, e.g. ``(0,)`` for
        background.
    confidence : iterable of numpy.ndarray, optional
        Per-pixel confidences, one array per strip with the strip's shape
        (float, or uint8 in 0-255).  Each record then carries the sum over its
        pixels; NaN confidences make that sum NaN.

    Yields
    ------
    PolygonRecord
        Records in raster coordinates.  A record is yielded with the first
        strip that no longer touches its component; records freed by the same
        strip come in raster order of their first (top-most, then left-most)
        pixel, so the order is deterministic.

    Raises
    ------
    ConfigError
        If a strip is not 2-D, not integer, has no rows, changes width, does
        not start where the previous one ended, or if confidences are missing
        or mis-shaped.  Raised when the offending strip is reached.

    Examples
    --------
    >>> import numpy as np
    >>> from rasterio.transform import from_origin
    >>> arr = np.array([[1, 1, 0], [0, 1, 0], [2, 1, 1]], dtype=np.uint8)
    >>> strips = [(0, arr[:1]), (1, arr[1:])]
    >>> recs = list(polygonize_strips(strips, from_origin(0, 3, 1, 1), skip_values=(0,)))
    >>> [(r.value, r.pixel_count, r.geometry.area) for r in recs]
    [(1, 5, 5.0), (2, 1, 1.0)]
    """
    coeffs = _check_transform(transform)
    skip = _check_skip(nodata, skip_values)
    return _polygonize(strips, coeffs, skip, confidence)


def polygonize_array(
    arr: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    transform: AffineLike,
    *,
    nodata: float | None = None,
    skip_values: Sequence[int] = (),
    confidence: npt.NDArray[np.floating] | npt.NDArray[np.integer] | None = None,
    block_rows: int | None = None,
) -> Iterator[PolygonRecord]:
    """Polygonize an in-memory class raster through :func:`polygonize_strips`.

    Parameters
    ----------
    arr : numpy.ndarray
        2-D integer class raster, shape ``(rows, cols)``.
    transform : affine.Affine
        Transform of ``arr``.
    nodata, skip_values
        As in :func:`polygonize_strips`.
    confidence : numpy.ndarray, optional
        Per-pixel confidences with the shape of ``arr``.
    block_rows : int, optional
        Strip height in rows; :data:`DEFAULT_BLOCK_ROWS` when None.  Smaller
        strips use less memory for labels, the polygons are the same.

    Returns
    -------
    iterator of PolygonRecord
        As yielded by :func:`polygonize_strips`.

    Raises
    ------
    ConfigError
        If ``arr`` is not 2-D, ``confidence`` has another shape, or
        ``block_rows`` is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from rasterio.transform import from_origin
    >>> arr = np.zeros((6, 6), dtype=np.uint8)
    >>> arr[1:5, 1:5] = 3
    >>> [r.geometry.area for r in polygonize_array(arr, from_origin(0, 12, 2, 2), block_rows=1)]
    [64.0, 80.0]

    The square is complete once row 5 is read; the frame around it only ends
    with the raster.
    """
    if arr.ndim != 2:
        raise ConfigError(f"arr must be a 2-D class raster, got shape {arr.shape}")
    if confidence is not None and confidence.shape != arr.shape:
        raise ConfigError(
            f"confidence shape {confidence.shape} differs from the class raster's {arr.shape}; "
            "pass a confidence array of the same shape"
        )
    rows = DEFAULT_BLOCK_ROWS if block_rows is None else block_rows
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise ConfigError(f"block_rows must be a positive integer or None, got {block_rows!r}")
    rows = int(rows)
    offsets = range(0, arr.shape[0], rows)
    strips = ((r, arr[r : r + rows]) for r in offsets)
    conf = None if confidence is None else (confidence[r : r + rows] for r in offsets)
    return polygonize_strips(
        strips, transform, nodata=nodata, skip_values=skip_values, confidence=conf
    )


def _check_transform(transform: AffineLike) -> tuple[float, float, float, float, float, float]:
    try:
        coeffs = tuple(float(getattr(transform, k)) for k in "abcdef")
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"transform must be an affine.Affine (rasterio's dataset.transform), got {transform!r}"
        ) from exc
    a, b, c, d, e, f = coeffs
    if not all(math.isfinite(v) for v in coeffs) or a * e - b * d == 0:
        raise ConfigError(f"transform {transform!r} is not finite and invertible; check the raster")
    return a, b, c, d, e, f


def _check_skip(nodata: float | None, skip_values: Sequence[int]) -> tuple[float, ...]:
    values = [*skip_values, *([] if nodata is None else [nodata])]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ConfigError(
                f"nodata and skip_values must be numbers, got nodata={nodata!r}, "
                f"skip_values={skip_values!r}"
            )
    return tuple(values)


def _polygonize(
    strips: Iterable[tuple[int, npt.NDArray[np.integer] | npt.NDArray[np.bool_]]],
    coeffs: tuple[float, float, float, float, float, float],
    skip: tuple[float, ...],
    confidence: Iterable[npt.NDArray[np.floating] | npt.NDArray[np.integer]] | None,
) -> Iterator[PolygonRecord]:
    conf_iter = None if confidence is None else iter(confidence)
    to_raster = _to_raster(coeffs)
    to_pixel = _to_pixel(coeffs)
    groups: dict[int, _Group] = {}
    # Group id (or -1) and class of every pixel of the previous strip's bottom row.
    seam_gids: npt.NDArray[np.int64] | None = None
    seam_values: npt.NDArray[np.generic] | None = None
    next_gid = 0
    expected_row: int | None = None
    width: int | None = None

    for row_off, class_strip in strips:
        strip = np.asarray(class_strip)
        _check_strip(strip, row_off, expected_row, width)
        width = strip.shape[1]
        expected_row = int(row_off) + strip.shape[0]
        conf = _next_confidence(conf_iter, strip.shape, int(row_off))

        s = _label_strip(strip, int(row_off), skip, conf)
        closed: list[_Group] = []
        label_gid = np.full(len(s.values), -1, dtype=np.int64)
        linked = np.zeros(len(s.values), dtype=bool)
        survivors: dict[int, _Group] = {}

        if seam_gids is not None and seam_values is not None:
            top = s.labels[0]
            touching = (seam_gids >= 0) & (top > 0) & (seam_values == strip[0])
            pairs = np.unique(np.stack([seam_gids[touching], top[touching]], axis=1), axis=0)
            linked_gids = set(pairs[:, 0].tolist())
            closed.extend(g for gid, g in groups.items() if gid not in linked_gids)
            for gids, labels in _link(pairs):
                linked[labels] = True
                merged = _merge(s, [groups[g] for g in gids], labels, to_raster)
                if s.touches_bottom[labels].any():
                    label_gid[labels] = next_gid
                    survivors[next_gid] = merged
                    next_gid += 1
                else:
                    closed.append(merged)

        linked[0] = True
        for lab in np.flatnonzero(~linked & s.touches_bottom):
            label_gid[lab] = next_gid
            survivors[next_gid] = _merge(s, [], np.array([lab]), to_raster)
            next_gid += 1
        # Components inside the strip, touching neither seam: the bulk, handled as arrays.
        inside = np.flatnonzero(~linked & ~s.touches_bottom)

        groups = survivors
        seam_gids = label_gid[s.labels[-1]]
        seam_values = strip[-1].copy()
        yield from _records(
            _Columns.of_strip(s, inside, to_raster).concat(
                _Columns.of_groups(closed, to_raster, to_pixel)
            ),
            conf_iter is not None,
        )

    if conf_iter is not None and next(conf_iter, None) is not None:
        raise ConfigError(
            "confidence has more arrays than there are class strips; give one per strip"
        )
    yield from _records(
        _Columns.of_groups(list(groups.values()), to_raster, to_pixel), conf_iter is not None
    )


def _check_strip(
    strip: npt.NDArray[np.generic], row_off: int, expected_row: int | None, width: int | None
) -> None:
    if isinstance(row_off, bool) or not isinstance(row_off, int | np.integer) or row_off < 0:
        raise ConfigError(f"strip row_off must be a non-negative integer, got {row_off!r}")
    if strip.ndim != 2 or strip.shape[0] == 0:
        raise ConfigError(
            f"strip at row_off={row_off} must be a 2-D array with at least one row, "
            f"got shape {strip.shape}"
        )
    if strip.dtype.kind not in "iub":
        raise ConfigError(
            f"strip at row_off={row_off} has dtype {strip.dtype}; class rasters must be "
            "integer (cast with .astype(np.int32) after rounding)"
        )
    if width is not None and strip.shape[1] != width:
        raise ConfigError(
            f"strip at row_off={row_off} is {strip.shape[1]} columns wide, earlier strips were "
            f"{width}; every strip must cover the full raster width"
        )
    if expected_row is not None and row_off != expected_row:
        raise ConfigError(
            f"strip row_off={row_off} does not follow the previous strip, which ended at row "
            f"{expected_row}; give strips top to bottom without gaps or overlaps"
        )


def _next_confidence(
    conf_iter: Iterator[npt.NDArray[np.floating] | npt.NDArray[np.integer]] | None,
    shape: tuple[int, ...],
    row_off: int,
) -> npt.NDArray[np.float64] | None:
    if conf_iter is None:
        return None
    try:
        conf = np.asarray(next(conf_iter))
    except StopIteration:
        raise ConfigError(
            f"confidence ran out before the strip at row_off={row_off}; give one confidence "
            "array per class strip"
        ) from None
    if conf.shape != shape:
        raise ConfigError(
            f"confidence for the strip at row_off={row_off} has shape {conf.shape}, the class "
            f"strip {shape}; they must match"
        )
    return conf.astype(np.float64, copy=False)


def _present_classes(strip: npt.NDArray[np.generic], skip: tuple[float, ...]) -> list[int]:
    if strip.dtype == np.bool_:
        strip = strip.view(np.uint8)
    if strip.dtype.kind == "u" and strip.dtype.itemsize <= 2:
        present = np.flatnonzero(np.bincount(strip.ravel()))
    else:
        lo, hi = int(strip.min()), int(strip.max())
        if hi - lo < 1 << 16:
            present = np.flatnonzero(np.bincount((strip.astype(np.int64) - lo).ravel())) + lo
        else:
            present = np.unique(strip)
    # Python compares int and float exactly, even past 2**53.
    return [v for v in map(int, present) if not any(v == x for x in skip)]


def _label_strip(
    strip: npt.NDArray[np.generic],
    row_off: int,
    skip: tuple[float, ...],
    conf: npt.NDArray[np.float64] | None,
) -> _Strip:
    labels = np.zeros(strip.shape, dtype=np.int32)
    values = [np.zeros(1, dtype=np.int64)]
    firsts = [np.zeros(1, dtype=np.int64)]
    n = 0
    for value in _present_classes(strip, skip):
        lab, count = ndimage.label(strip == value, structure=_FOUR_CONNECTED, output=np.int32)
        if count == 0:
            continue
        np.add(lab, n, out=labels, where=lab > 0)
        values.append(np.full(count, value, dtype=np.int64))
        firsts.append(_first_pixels(lab.ravel(), count))
        n += count

    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)
    conf_sums: npt.NDArray[np.float64] | None = None
    if conf is not None:
        conf_sums = np.bincount(flat, weights=conf.ravel(), minlength=n + 1).astype(np.float64)
    return _Strip(
        row_off=row_off,
        labels=labels,
        values=np.concatenate(values),
        counts=counts.astype(np.int64),
        conf_sums=conf_sums,
        polygons=_label_polygons(labels, n, row_off),
        first_pixels=np.concatenate(firsts) + row_off * strip.shape[1],
    )


def _first_pixels(flat: npt.NDArray[np.int32], count: int) -> npt.NDArray[np.int64]:
    """Flat index of the first pixel (raster order) of labels 1..count."""
    # scipy numbers labels in raster order of their first pixel, so a label's first
    # pixel is where it exceeds every label seen before: one O(N) pass, no sort.
    seen = np.maximum.accumulate(flat)
    new = np.flatnonzero(flat[1:] > seen[:-1]) + 1
    if flat[0] > 0:
        new = np.concatenate([[0], new])
    if len(new) == count and np.array_equal(flat[new], np.arange(1, count + 1)):
        return new.astype(np.int64)
    labels, first = np.unique(flat, return_index=True)
    out: npt.NDArray[np.int64] = first[labels > 0].astype(np.int64)
    return out


def _label_polygons(labels: npt.NDArray[np.int32], n: int, row_off: int) -> npt.NDArray[np.object_]:
    """Polygon of every label (index 0 is an unused None), in pixel coordinates."""
    polygons = np.full(n + 1, None, dtype=object)
    if n == 0:
        return polygons
    # Integer pixel coordinates: exact, so seam unions never need snapping.
    pixel_space = Affine(1.0, 0.0, 0.0, 0.0, 1.0, float(row_off))
    found: list[float] = []
    points: list[tuple[float, float]] = []
    ring_sizes: list[int] = []
    rings_per_polygon: list[int] = []
    for geom, lab_value in rasterio.features.shapes(
        labels, mask=labels > 0, connectivity=4, transform=pixel_space
    ):
        found.append(lab_value)
        rings = geom["coordinates"]
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_sizes.append(len(ring))
            points.extend(ring)
    # Building all rings and polygons in two vectorised calls is several times
    # faster than shapely.geometry.shape() on each GeoJSON mapping.
    rings_arr = shapely.linearrings(
        np.asarray(points, dtype=np.float64),
        indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes),
    )
    polygons[np.asarray(found, dtype=np.int64)] = shapely.polygons(
        rings_arr, indices=np.repeat(np.arange(len(found)), rings_per_polygon)
    )
    return polygons


def _link(
    pairs: npt.NDArray[np.int64],
) -> list[tuple[list[int], npt.NDArray[np.int64]]]:
    """Connected groups of (open group ids, strip labels) linked across the seam."""
    if len(pairs) == 0:
        return []
    gids, gid_idx = np.unique(pairs[:, 0], return_inverse=True)
    labels, lab_idx = np.unique(pairs[:, 1], return_inverse=True)
    n_nodes = len(gids) + len(labels)
    graph = coo_matrix(
        (np.ones(len(pairs)), (gid_idx, lab_idx + len(gids))), shape=(n_nodes, n_nodes)
    )
    n_comp, comp = connected_components(graph, directed=False)
    gid_comp, lab_comp = comp[: len(gids)], comp[len(gids) :]
    order_g = np.argsort(gid_comp, kind="stable")
    order_l = np.argsort(lab_comp, kind="stable")
    split_g = np.searchsorted(gid_comp[order_g], np.arange(1, n_comp))
    split_l = np.searchsorted(lab_comp[order_l], np.arange(1, n_comp))
    return [
        (g.tolist(), lab)
        for g, lab in zip(
            np.split(gids[order_g], split_g), np.split(labels[order_l], split_l), strict=True
        )
    ]


def _merge(
    s: _Strip, previous: list[_Group], labels: npt.NDArray[np.int64], to_raster: _ToRaster
) -> _Group:
    parts = [p for g in previous for p in g.parts]
    parts.extend(_split(s.polygons[labels], to_raster))
    raw_parts = sum(g.raw_parts for g in previous) + len(labels)
    if len(parts) > max(_MAX_OPEN_PARTS, raw_parts // 2):
        parts = [_union(parts, to_raster)]
    firsts = [g.first_pixel for g in previous] + s.first_pixels[labels].tolist()
    value = previous[0].value if previous else int(s.values[labels[0]])
    csum = sum(g.confidence_sum for g in previous)
    if s.conf_sums is not None:
        csum += float(s.conf_sums[labels].sum())
    return _Group(
        value=value,
        parts=parts,
        pixel_count=sum(g.pixel_count for g in previous) + int(s.counts[labels].sum()),
        confidence_sum=csum,
        first_pixel=min(firsts),
        raw_parts=raw_parts,
    )


def _split(polygons: npt.NDArray[np.object_], to_raster: _ToRaster) -> list[_Part]:
    """One single-piece part per strip polygon: its exterior ring and its holes."""
    rings, owner = shapely.get_rings(polygons, return_index=True)
    exterior = np.r_[True, owner[1:] != owner[:-1]]
    n_holes = np.bincount(owner[~exterior], minlength=len(polygons))
    # Holes are final: map them now, so the polygon is never transformed as a whole.
    holes = np.split(shapely.transform(rings[~exterior], to_raster), np.cumsum(n_holes)[:-1])
    return [[(ring, h)] for ring, h in zip(rings[exterior], holes, strict=True)]


def _union(parts: list[_Part], to_raster: _ToRaster) -> _Part:
    """The pieces of the union of a group's parts (outlines in pixel, holes in raster space).

    A part's holes lie strictly inside its own strip (a hole reaching the
    strip's edge would be open, i.e. a notch of the shell), and the shells of
    a group's parts never overlap.  So only the shells are unioned and the
    parts' holes are put back unchanged: holes carry most of the vertices of a
    large component, and they are neither copied nor looked at here.
    """
    pieces = [piece for part in parts for piece in part]
    rings = np.empty(len(pieces), dtype=object)
    rings[:] = [ring for ring, _ in pieces]
    shells = shapely.polygons(rings)
    holes = np.concatenate([h for _, h in pieces])
    merged = shapely.get_parts(shapely.union_all(shells))
    out: _Part = []
    for poly in merged:
        mine = holes
        if len(merged) > 1 and len(holes):
            inside = shapely.point_on_surface(shapely.polygons(holes))
            mine = holes[shapely.contains(shapely.transform(poly, to_raster), inside)]
        # The seams leave collinear vertices where GDAL has none; they would move
        # off the line under a rotated transform and break bit-exact equality.
        new_holes = np.empty(len(poly.interiors), dtype=object)
        new_holes[:] = [shapely.linearrings(_drop_collinear(r.coords)) for r in poly.interiors]
        new_holes = shapely.transform(new_holes, to_raster)
        shell = shapely.linearrings(_drop_collinear(poly.exterior.coords))
        out.append((shell, np.concatenate([new_holes, mine])))
    return out


def _polygon(
    parts: list[_Part], to_raster: _ToRaster, to_pixel: _ToRaster | None = None
) -> shapely.Geometry:
    """The polygon of a closed group from its parts, in raster coordinates.

    With ``to_pixel`` (the inverse of ``to_raster``) its rings are put in GDAL's
    vertex order (:func:`gdal_vertex_order`).
    """
    pieces = parts[0] if len(parts) == 1 else _union(parts, to_raster)
    if to_pixel is None:
        out = [
            shapely.polygons(shapely.transform(ring, to_raster), holes) for ring, holes in pieces
        ]
    else:
        out = []
        for ring, holes in pieces:
            # Pixel corners are integers: rounding the inverse gives them back exactly.
            pixel_holes = shapely.transform(holes, lambda xy: np.round(to_pixel(xy)))
            ordered = gdal_vertex_order(shapely.polygons(ring, pixel_holes))
            out.append(shapely.transform(ordered, to_raster))
    return out[0] if len(out) == 1 else shapely.MultiPolygon(out)


def _drop_collinear(ring: shapely.coords.CoordinateSequence) -> npt.NDArray[np.float64]:
    """A closed ring without vertices in the middle of a straight run.

    ``shapely.simplify(geom, 0)`` keeps some of them, so this is done by hand;
    pixel coordinates are integers, so the cross products are exact.
    """
    pts = np.asarray(ring)[:-1]
    into = pts - np.roll(pts, 1, axis=0)
    out = np.roll(pts, -1, axis=0) - pts
    cross = into[:, 0] * out[:, 1] - into[:, 1] * out[:, 0]
    straight = (cross == 0) & ((into * out).sum(axis=1) > 0)
    kept = pts[~straight]
    return np.vstack([kept, kept[:1]])


def _to_pixel(coeffs: tuple[float, float, float, float, float, float]) -> _ToRaster:
    """The inverse of :func:`_to_raster` (not bit-exact: round the result to pixel corners)."""
    a, b, c, d, e, f = coeffs
    det = a * e - b * d

    def to_pixel(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = xy[:, 0] - c, xy[:, 1] - f
        return np.column_stack([(e * x - b * y) / det, (a * y - d * x) / det])

    return to_pixel


def _to_raster(coeffs: tuple[float, float, float, float, float, float]) -> _ToRaster:
    a, b, c, d, e, f = coeffs

    def to_raster(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # Same operation order as GDAL's polygonizer, so coordinates match bit for bit.
        col, row = xy[:, 0], xy[:, 1]
        return np.column_stack([c + col * a + row * b, f + col * d + row * e])

    return to_raster


def _records(done: _Columns, with_confidence: bool) -> Iterator[PolygonRecord]:
    if len(done.first_pixel) == 0:
        return
    order = np.argsort(done.first_pixel, kind="stable")
    geoms = done.geometry[order]
    values = done.value[order].tolist()
    counts = done.pixel_count[order].tolist()
    sums = done.confidence_sum[order].tolist() if with_confidence else [None] * len(order)
    for value, geom, count, csum in zip(values, geoms, counts, sums, strict=True):
        yield PolygonRecord(value=value, geometry=geom, pixel_count=count, confidence_sum=csum)


@dataclass(frozen=True)
class SeamPiece:
    """A component of one region that touches a border shared with another region.

    Attributes
    ----------
    value : int
        Class value of the component.
    geometry : shapely.Polygon
        Its outline (with holes) in pixel coordinates of the whole raster:
        ``x`` is a column, ``y`` a row of pixel corners.  The coordinates are
        integers, so unions across regions are exact.
    pixel_count : int
        Number of pixels of the component in this region.
    first_pixel : tuple of int
        ``(row, col)`` of its first pixel in raster order (top-most, then
        left-most), in whole-raster pixel coordinates.
    confidence_sum : float or None
        Sum of the confidences over its pixels, or None without confidences.
    """

    value: int
    geometry: Polygon
    pixel_count: int
    first_pixel: tuple[int, int]
    confidence_sum: float | None = None


@dataclass(frozen=True)
class RegionPolygons:
    """The polygons of one region of a raster (see :func:`polygonize_region`).

    Attributes
    ----------
    interior : list of PolygonRecord
        Components that touch no shared border: whole already, in raster
        coordinates, in raster order of their first pixel.
    interior_first : numpy.ndarray
        ``(n, 2)`` int64 ``(row, col)`` of each interior record's first pixel,
        whole-raster pixel coordinates.
    seams : list of SeamPiece
        Components that touch a shared border, in raster order of their first pixel.
    seam_pixels : numpy.ndarray
        ``(k, 2)`` int64 ``(row, col)`` of every pixel on a shared border that
        belongs to a seam piece, whole-raster pixel coordinates.
    seam_owner : numpy.ndarray
        ``(k,)`` int64 index into ``seams`` of each of those pixels.
    """

    interior: list[PolygonRecord]
    interior_first: npt.NDArray[np.int64]
    seams: list[SeamPiece]
    seam_pixels: npt.NDArray[np.int64]
    seam_owner: npt.NDArray[np.int64]


@dataclass(frozen=True)
class JoinedPolygon:
    """A component of the whole raster put together from seam pieces (see :func:`join_seams`).

    Attributes
    ----------
    record : PolygonRecord
        The whole component, in raster coordinates.
    first_pixel : tuple of int
        ``(row, col)`` of its first pixel in raster order.
    region : int
        Index (in the sequence given to :func:`join_seams`) of the region
        holding that first pixel.
    pieces : int
        Number of seam pieces it was joined from.
    """

    record: PolygonRecord
    first_pixel: tuple[int, int]
    region: int
    pieces: int


def polygonize_region(
    arr: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    transform: AffineLike,
    *,
    offset: tuple[int, int] = (0, 0),
    seam: npt.NDArray[np.bool_] | None = None,
    nodata: float | None = None,
    skip_values: Sequence[int] = (),
    confidence: npt.NDArray[np.floating] | npt.NDArray[np.integer] | None = None,
) -> RegionPolygons:
    """Polygonize one region of a raster, keeping apart what touches its shared borders.

    The region is labelled and polygonized whole (memory: about 10 bytes per
    pixel of the region).  Components with a pixel in ``seam`` become
    :class:`SeamPiece` objects, to be joined with the pieces of the
    neighbouring regions by :func:`join_seams`; the others are final and
    come out as the very polygons of one whole-raster
    ``rasterio.features.shapes`` call.

    Parameters
    ----------
    arr : numpy.ndarray
        2-D integer class raster of the region, shape ``(rows, cols)``.
        Pixels the region does not own (another region's, in a partition of
        overlapping windows) must be ``nodata``.
    transform : affine.Affine
        Transform of the **whole** raster, not of the region: polygons are
        mapped with the whole raster's arithmetic, so their coordinates match
        a whole-raster polygonization bit for bit.
    offset : (int, int)
        ``(row, col)`` of the region's first pixel in the whole raster.
    seam : numpy.ndarray of bool, optional
        Pixels of the region that are 4-neighbours of a pixel of another
        region (the shared borders; the raster's outer edge is no seam).
        None: no shared border, everything is interior.
    nodata, skip_values
        As in :func:`polygonize_strips`.
    confidence : numpy.ndarray, optional
        Per-pixel confidences with the shape of ``arr``.

    Returns
    -------
    RegionPolygons

    Raises
    ------
    ConfigError
        If ``arr`` is not a 2-D integer array, ``seam`` or ``confidence``
        has another shape, ``offset`` is not two non-negative integers, or
        ``transform`` is not invertible.

    Examples
    --------
    Two regions of a 3 x 3 raster, the first two columns and the last one:

    >>> import numpy as np
    >>> from rasterio.transform import from_origin
    >>> arr = np.array([[1, 1, 0], [0, 1, 0], [2, 1, 1]], dtype=np.uint8)
    >>> t = from_origin(0, 3, 1, 1)
    >>> left_seam = np.zeros((3, 2), bool)
    >>> left_seam[:, 1] = True
    >>> a = polygonize_region(arr[:, :2], t, seam=left_seam, skip_values=(0,))
    >>> b = polygonize_region(arr[:, 2:], t, offset=(0, 2), seam=np.ones((3, 1), bool),
    ...                       skip_values=(0,))
    >>> [r.value for r in a.interior], [p.pixel_count for p in a.seams + b.seams]
    ([2], [4, 1])
    """
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"arr must be a non-empty 2-D class raster, got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ConfigError(
            f"arr has dtype {arr.dtype}; class rasters must be integer "
            "(cast with .astype(np.int32) after rounding)"
        )
    if seam is not None and seam.shape != arr.shape:
        raise ConfigError(
            f"seam mask shape {seam.shape} differs from the region's {arr.shape}; "
            "pass one flag per pixel of the region"
        )
    if confidence is not None and confidence.shape != arr.shape:
        raise ConfigError(
            f"confidence shape {confidence.shape} differs from the region's {arr.shape}; "
            "pass a confidence array of the same shape"
        )
    row0, col0 = _check_offset(offset)
    to_raster = _to_raster(_check_transform(transform))
    skip = _check_skip(nodata, skip_values)
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64)

    s = _label_strip(arr, row0, skip, conf)
    n = len(s.values) - 1
    width = arr.shape[1]
    # _label_strip numbers rows from row0 already; columns are shifted here (integers: exact).
    pixel_polys = shapely.transform(s.polygons[1:], lambda xy: xy + np.array([col0, 0.0]))
    firsts = s.first_pixels[1:]
    first = np.column_stack([firsts // width, firsts % width + col0]).astype(np.int64)
    on_seam = np.zeros(n + 1, dtype=bool)
    if seam is not None:
        on_seam[s.labels[seam]] = True
    on_seam = on_seam[1:]
    order = np.argsort(firsts, kind="stable")
    inner = order[~on_seam[order]]
    outer = order[on_seam[order]]

    sums: list[float | None] = (
        [None] * n if s.conf_sums is None else [float(v) for v in s.conf_sums[1:]]
    )
    values = s.values[1:].tolist()
    counts = s.counts[1:].tolist()
    geoms = shapely.transform(pixel_polys[inner], to_raster)
    interior = [
        PolygonRecord(values[i], g, counts[i], sums[i])
        for i, g in zip(inner.tolist(), geoms, strict=True)
    ]
    seams = [
        SeamPiece(
            values[i], pixel_polys[i], counts[i], (int(first[i, 0]), int(first[i, 1])), sums[i]
        )
        for i in outer.tolist()
    ]
    piece_of_label = np.full(n + 1, -1, dtype=np.int64)
    piece_of_label[outer + 1] = np.arange(len(outer))
    if seam is None:
        rows = cols = np.zeros(0, dtype=np.int64)
        owner = np.zeros(0, dtype=np.int64)
    else:
        rows, cols = np.nonzero(seam & (s.labels > 0))
        owner = piece_of_label[s.labels[rows, cols]]
    return RegionPolygons(
        interior=interior,
        interior_first=first[inner],
        seams=seams,
        seam_pixels=np.column_stack([rows + row0, cols + col0]).astype(np.int64),
        seam_owner=owner,
    )


def join_seams(regions: Sequence[RegionPolygons], transform: AffineLike) -> list[JoinedPolygon]:
    """Join the seam pieces of the regions of one raster into whole polygons.

    Two pieces belong to one component when a border pixel of one is a
    4-neighbour of a border pixel of the other and both have the same class,
    as at the strip seams of :func:`polygonize_strips`; each group's outlines
    are unioned exactly in pixel coordinates, their holes put back as they
    are, and the result is mapped with the whole raster's arithmetic.  With
    the regions' interior polygons, the result is exactly the set of polygons
    of ``rasterio.features.shapes`` over the whole raster.

    Parameters
    ----------
    regions : sequence of RegionPolygons
        From :func:`polygonize_region`, for regions that do not overlap
        (only ``seams``, ``seam_pixels`` and ``seam_owner`` are used).
    transform : affine.Affine
        Transform of the whole raster.

    Returns
    -------
    list of JoinedPolygon
        In raster order of their first pixel.

    Raises
    ------
    ConfigError
        If two regions claim the same border pixel (the regions overlap),
        or ``transform`` is not invertible.

    Examples
    --------
    The regions of :func:`polygonize_region`'s example: the 5-pixel class-1
    component crosses the border, and comes out whole.

    >>> import numpy as np
    >>> from rasterio.transform import from_origin
    >>> arr = np.array([[1, 1, 0], [0, 1, 0], [2, 1, 1]], dtype=np.uint8)
    >>> t = from_origin(0, 3, 1, 1)
    >>> left_seam = np.zeros((3, 2), bool)
    >>> left_seam[:, 1] = True
    >>> a = polygonize_region(arr[:, :2], t, seam=left_seam, skip_values=(0,))
    >>> b = polygonize_region(arr[:, 2:], t, offset=(0, 2), seam=np.ones((3, 1), bool),
    ...                       skip_values=(0,))
    >>> [(j.record.value, j.record.pixel_count, j.record.geometry.area, j.pieces)
    ...  for j in join_seams([a, b], t)]
    [(1, 5, 5.0, 2)]
    """
    to_raster = _to_raster(_check_transform(transform))
    pieces = [p for r in regions for p in r.seams]
    n = len(pieces)
    if n == 0:
        return []
    sizes = [len(r.seams) for r in regions]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    region_of = np.repeat(np.arange(len(regions)), sizes)
    pixels = np.concatenate([r.seam_pixels.reshape(-1, 2) for r in regions]).astype(np.int64)
    owner = np.concatenate(
        [r.seam_owner.astype(np.int64) + s for r, s in zip(regions, starts, strict=True)]
    )
    values = np.array([p.value for p in pieces], dtype=np.int64)
    a, b = _linked_pieces(pixels, owner, values)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)

    firsts = np.array([p.first_pixel for p in pieces], dtype=np.int64).reshape(n, 2)
    # Raster order of first pixels, so each group lists the piece holding its first pixel first.
    order = np.lexsort((firsts[:, 1], firsts[:, 0]))
    groups: dict[int, list[int]] = {}
    for i in order.tolist():
        groups.setdefault(int(comp[i]), []).append(i)
    geoms = np.empty(n, dtype=object)
    geoms[:] = [p.geometry for p in pieces]
    # Joined in pixel space, put in GDAL's vertex order there, then mapped.
    parts = _split(geoms, _pixel_space)
    with_conf = pieces[0].confidence_sum is not None
    out: list[JoinedPolygon] = []
    for members in groups.values():
        head = pieces[members[0]]
        csum = sum(pieces[i].confidence_sum or 0.0 for i in members) if with_conf else None
        joined = _polygon([parts[i] for i in members], _pixel_space)
        record = PolygonRecord(
            value=head.value,
            geometry=shapely.transform(gdal_vertex_order(joined), to_raster),
            pixel_count=sum(pieces[i].pixel_count for i in members),
            confidence_sum=csum,
        )
        out.append(
            JoinedPolygon(record, head.first_pixel, int(region_of[members[0]]), len(members))
        )
    return out


def _pixel_space(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return xy


def gdal_vertex_order(polygon: shapely.Geometry) -> shapely.Geometry:
    """A pixel-space polygon with its rings in the order GDAL's polygonizer writes them.

    GDAL starts every ring at its top-most, then left-most vertex, walks an
    exterior ring down first and a hole to the right first, and lists holes
    by their starting vertex.  Clean-up (simplification, smoothing) depends on
    where a ring starts, so a polygon unioned from parts must be put in this
    order to clean up exactly like the one GDAL traces whole.

    Parameters
    ----------
    polygon : shapely.Polygon or shapely.MultiPolygon
        In pixel coordinates (``x`` column, ``y`` row, growing downwards) on
        pixel corners, each ring without repeated vertices, as the
        polygonizers give them.

    Returns
    -------
    shapely.Polygon or shapely.MultiPolygon
        The same polygon (same vertices), rings reordered.

    Examples
    --------
    >>> from shapely import Polygon
    >>> ring = [(1, 1), (1, 0), (0, 0), (0, 1), (1, 1)]
    >>> list(gdal_vertex_order(Polygon(ring)).exterior.coords)
    [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    """
    if isinstance(polygon, shapely.MultiPolygon):
        return shapely.MultiPolygon([gdal_vertex_order(p) for p in polygon.geoms])
    # All rings at once: a large polygon may have tens of thousands of holes.
    rings = shapely.get_rings(polygon)
    coords, owner = shapely.get_coordinates(rings, return_index=True)
    sizes = np.bincount(owner, minlength=len(rings))
    open_ = np.ones(len(coords), dtype=bool)
    open_[np.cumsum(sizes) - 1] = False  # each ring's closing vertex
    pts, owner = coords[open_], owner[open_]
    n = sizes - 1
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    # Each ring's top-most, then left-most vertex ...
    top_left = np.lexsort((pts[:, 0], pts[:, 1], owner))[first]
    k = top_left - first
    # ... where one edge runs right and the other down: exteriors go down, holes right.
    goes_down = pts[first + (k + 1) % n, 0] == pts[top_left, 0]
    wants_down = np.zeros(len(rings), dtype=bool)
    wants_down[0] = True
    step = np.where(goes_down == wants_down, 1, -1)
    j = np.arange(len(pts)) - np.repeat(first, n)
    src = np.repeat(first, n) + (np.repeat(k, n) + np.repeat(step, n) * j) % np.repeat(n, n)
    ordered = pts[src]
    closed = np.insert(ordered, np.cumsum(n), ordered[first], axis=0)
    out = shapely.linearrings(closed, indices=np.repeat(np.arange(len(rings)), n + 1))
    starts = ordered[first[1:]]
    return shapely.polygons(out[0], out[1:][np.lexsort((starts[:, 0], starts[:, 1]))])


def _check_offset(offset: tuple[int, int]) -> tuple[int, int]:
    try:
        row0, col0 = offset
    except (TypeError, ValueError):
        raise ConfigError(f"offset must be (row, col), got {offset!r}") from None
    for v in (row0, col0):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ConfigError(f"offset must be two non-negative integers, got {offset!r}")
    return int(row0), int(col0)


def _linked_pieces(
    pixels: npt.NDArray[np.int64], owner: npt.NDArray[np.int64], values: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pairs of pieces with border pixels that are 4-neighbours of the same class."""
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows = pixels[:, 0] - pixels[:, 0].min()
    cols = pixels[:, 1] - pixels[:, 1].min()
    # One spare column, so the right-hand neighbour of the last column is never in the next row.
    width = int(cols.max()) + 2
    key = rows * width + cols
    order = np.argsort(key, kind="stable")
    keys, owners = key[order], owner[order]
    if np.any(keys[1:] == keys[:-1]):
        dup = int(order[1:][keys[1:] == keys[:-1]][0])
        raise ConfigError(
            f"two regions claim pixel (row {int(pixels[dup, 0])}, col {int(pixels[dup, 1])}); "
            "regions joined at seams must not overlap"
        )
    a_parts, b_parts = [], []
    for step in (1, width):
        pos = np.searchsorted(keys, keys + step)
        hit = pos < len(keys)
        hit[hit] = keys[pos[hit]] == keys[hit] + step
        a, b = owners[hit], owners[pos[hit]]
        keep = (a != b) & (values[a] == values[b])
        a_parts.append(a[keep])
        b_parts.append(b[keep])
    return np.concatenate(a_parts), np.concatenate(b_parts)
