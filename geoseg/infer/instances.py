"""Instances from overlapping tiles: detect per tile, keep each object once.

An instance model (Mask R-CNN, :mod:`geoseg.models.maskrcnn`) finds objects
one by one in each tile.  Tiles overlap, so an object near a tile border is
found twice or more: whole by a tile that holds it, cut by a tile whose edge
runs through it.  :class:`InstanceMerger` keeps it once:

* **Matching**: two instances of one class from different tiles are the same
  object when their masks agree *where both tiles see the ground*: the IoU of
  the two masks clipped to the intersection of the tiles' windows is at least
  ``match_iou``.  A cut instance is compared only over the part its tile saw,
  so a building cut in half still matches its whole twin.
* **Choice**: of a matched pair the instance farther from its tile's inner
  edges wins (it saw the most context; raster borders do not count as edges),
  ties broken by score.
* **Streaming**: tiles arrive row by row; an instance whose lowest row lies
  above the first row of every tile still to come can no longer be matched and
  is released (:meth:`InstanceMerger.release`), so memory holds only the
  instances of about one row of tiles, however large the raster.

Geometry is in map coordinates (the tile transform places each mask), so the
same merging serves any grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.types import PixelWindow, Tile

__all__ = ["Instance", "InstanceMerger", "InstanceParams", "tile_instances"]


@dataclass(frozen=True)
class InstanceParams:
    """Thresholds of instance prediction (a card's ``postprocess.instances``).

    Parameters
    ----------
    score_threshold : float
        Instances scored below are dropped.
    mask_threshold : float
        A pixel belongs to an instance where its mask probability is at least this.
    match_iou : float
        Mask IoU, over the overlap of two tiles, from which two instances are one object.
    """

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    match_iou: float = 0.5

    def __post_init__(self) -> None:
        from geoseg.errors import ConfigError

        for name in ("score_threshold", "mask_threshold", "match_iou"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
                raise ConfigError(f"instances.{name} must be in (0, 1), got {v!r}", field=name)

    @classmethod
    def from_card(cls, postprocess: dict[str, Any]) -> InstanceParams:
        """The card's ``postprocess.instances`` (defaults where absent)."""
        from geoseg.errors import ConfigError

        raw = postprocess.get("instances") or {}
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"postprocess.instances has unknown keys {unknown}")
        return cls(**raw)


@dataclass
class Instance:
    """One detected object, placed on the map.

    ``rows`` is the span of model-grid rows its mask covers (top, bottom exclusive);
    ``window`` the tile that found it; ``margin`` its distance in pixels to that
    tile's nearest inner edge (``inf`` when every side of the tile is a raster border).
    """

    geometry: Any
    class_id: int
    score: float
    window: PixelWindow
    rows: tuple[int, int]
    margin: float
    tile: tuple[int, int]
    cols: tuple[int, int] = (0, 0)
    key: int = field(default=-1, compare=False)


def _margin(tile: Tile, box: tuple[int, int, int, int]) -> float:
    """Pixels from box ``(row0, col0, row1, col1)`` (tile-local) to the tile's inner edges."""
    top, bottom, left, right = tile.edges
    r0, c0, r1, c1 = box
    w = tile.window
    gaps = [
        d
        for d, border in (
            (r0, top),
            (w.height - r1, bottom),
            (c0, left),
            (w.width - c1, right),
        )
        if not border
    ]
    return float(min(gaps)) if gaps else math.inf


def tile_instances(
    output: dict[str, Any],
    tile: Tile,
    valid: np.ndarray,
    transform: Any,
    raster_shape: tuple[int, int],
    params: InstanceParams,
) -> list[Instance]:
    """The instances of one tile's detector output, as map polygons.

    Parameters
    ----------
    output : dict
        One image's detector output (numpy or torch): ``masks`` ``(K, 1, H, W)``
        probabilities, ``scores`` ``(K,)``, ``labels`` ``(K,)``.
    tile : Tile
        The tile (its window in the grid's pixels and which sides are raster borders).
    valid : numpy.ndarray
        bool ``(H, W)``: the tile's valid pixels; objects never cover nodata.
    transform : affine.Affine
        Transform of the grid (pixel -> map).
    raster_shape : tuple of int
        ``(height, width)`` of the grid: the parts of a tile past it are cut off.
    params : InstanceParams

    Returns
    -------
    list of Instance
        One per instance scored at least ``params.score_threshold`` with a mask of
        at least one valid pixel; its polygon is the largest connected part of the mask.
    """
    import rasterio.features
    import shapely
    from affine import Affine

    win = tile.window
    h = min(win.height, raster_shape[0] - win.row_off)
    w = min(win.width, raster_shape[1] - win.col_off)
    tf = transform * Affine.translation(win.col_off, win.row_off)
    scores = np.asarray(output["scores"], dtype=np.float64)
    labels = np.asarray(output["labels"], dtype=np.int64)
    masks = output["masks"]
    out: list[Instance] = []
    for k in np.flatnonzero(scores >= params.score_threshold):
        prob = np.asarray(masks[k][0][:h, :w])
        mask = (prob >= params.mask_threshold) & valid[:h, :w]
        if not mask.any():
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        sub = mask[r0:r1, c0:c1].astype(np.uint8)
        parts = [
            shapely.geometry.shape(g)
            for g, _ in rasterio.features.shapes(
                sub, mask=sub.astype(bool), transform=tf * Affine.translation(c0, r0)
            )
        ]
        geom = max(parts, key=lambda g: g.area)
        out.append(
            Instance(
                geometry=geom,
                class_id=int(labels[k]),
                score=float(scores[k]),
                window=win,
                rows=(win.row_off + r0, win.row_off + r1),
                cols=(win.col_off + c0, win.col_off + c1),
                margin=_margin(tile, (r0, c0, r1, c1)),
                tile=(tile.row, tile.col),
            )
        )
    return out


def _overlap(a: PixelWindow, b: PixelWindow) -> tuple[int, int, int, int] | None:
    """``(row0, col0, row1, col1)`` where two windows overlap, None if they do not."""
    r0, c0 = max(a.row_off, b.row_off), max(a.col_off, b.col_off)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    return (r0, c0, r1, c1) if r0 < r1 and c0 < c1 else None


class InstanceMerger:
    """Keeps each object once across overlapping tiles; see the module docs.

    Parameters
    ----------
    transform : affine.Affine
        The grid's transform (to place tile overlaps on the map).
    match_iou : float
        See :class:`InstanceParams`.
    """

    def __init__(self, transform: Any, match_iou: float) -> None:
        self._transform = transform
        self._match_iou = match_iou
        self._active: dict[int, Instance] = {}
        # Held instances by the tile that found them: a new instance is compared only
        # with those of tiles overlapping its own, so a row of many tiles stays cheap.
        self._tiles: dict[tuple[int, int], tuple[PixelWindow, set[int]]] = {}
        self._next = 0
        self.merged = 0

    def __len__(self) -> int:
        return len(self._active)

    def _overlap_box(self, a: PixelWindow, b: PixelWindow) -> Any:
        import shapely

        box = _overlap(a, b)
        if box is None:
            return None
        r0, c0, r1, c1 = box
        t = self._transform
        x0, y0 = t * (c0, r0)
        x1, y1 = t * (c1, r1)
        return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def _same(self, a: Instance, b: Instance) -> bool:
        """Whether two instances of different tiles are one object (IoU over their overlap)."""
        if a.class_id != b.class_id or a.tile == b.tile:
            return False
        if a.rows[1] <= b.rows[0] or b.rows[1] <= a.rows[0]:
            return False
        if a.cols[1] <= b.cols[0] or b.cols[1] <= a.cols[0]:
            return False
        box = self._overlap_box(a.window, b.window)
        if box is None:
            return False
        ga, gb = a.geometry.intersection(box), b.geometry.intersection(box)
        union = ga.union(gb).area
        return union > 0 and ga.intersection(gb).area / union >= self._match_iou

    def add(self, instances: Sequence[Instance]) -> None:
        """Add one tile's instances, dropping whichever of a matched pair loses."""
        for inst in instances:
            near = [
                k
                for window, keys in self._tiles.values()
                if _overlap(window, inst.window) is not None
                for k in keys
            ]
            matched = [k for k in near if self._same(inst, self._active[k])]
            rank = (inst.margin, inst.score)
            if any((self._active[k].margin, self._active[k].score) >= rank for k in matched):
                self.merged += 1
                continue
            for k in matched:
                self._drop(k)
                self.merged += 1
            inst.key = self._next
            self._next += 1
            self._active[inst.key] = inst
            self._tiles.setdefault(inst.tile, (inst.window, set()))[1].add(inst.key)

    def _drop(self, key: int) -> Instance:
        inst = self._active.pop(key)
        keys = self._tiles[inst.tile][1]
        keys.discard(key)
        if not keys:
            del self._tiles[inst.tile]
        return inst

    def release(self, before_row: int | None) -> Iterator[Instance]:
        """Instances no later tile can match: those ending above ``before_row`` (all if None).

        Released in the order they were found.
        """
        done = [
            k
            for k, inst in self._active.items()
            if before_row is None or inst.rows[1] <= before_row
        ]
        for k in done:
            yield self._drop(k)

    def top(self) -> int | None:
        """The first row any instance still held covers (None when none is held)."""
        return min((i.rows[0] for i in self._active.values()), default=None)
