"""Regular tile grids with overlap: a pure function of shape, tile size and overlap."""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

from geoseg.errors import ConfigError
from geoseg.types import PixelWindow, TileGrid

if TYPE_CHECKING:
    from geoseg.io.read import RasterSpec


def round_up(value: int, multiple: int) -> int:
    """Round ``value`` up to a multiple of ``multiple``.

    >>> round_up(70, 32)
    96
    """
    return -(-value // multiple) * multiple


def _starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    # Fewest tiles whose step is at most tile - overlap, spread evenly from 0 to
    # length - tile: the last row and column are covered flush with the edge and
    # no pair of neighbours overlaps by much more than ``overlap`` (a last tile
    # pushed back against the edge would, and the blender's carry would grow).
    span = length - tile
    n = -(-span // (tile - overlap)) + 1
    return tuple((i * span) // (n - 1) for i in range(n))


def make_grid(
    height: int, width: int, *, tile: int = 512, overlap: int = 64, stride: int = 1
) -> TileGrid:
    """Build a tile grid that covers every pixel of a ``height`` x ``width`` raster.

    Parameters
    ----------
    height, width : int
        Raster shape in pixels (rows, columns).
    tile : int
        Nominal tile edge in pixels; must be a multiple of ``stride``.
    overlap : int
        Minimum overlap between neighbouring tiles in pixels, ``0 <= overlap < tile / 2``.
    stride : int
        The model's size requirement: tile edges are multiples of it.  When the
        raster is smaller than one tile along an axis, the tile shrinks to the
        raster size rounded up to ``stride`` (the excess is filled by reflection).

    Returns
    -------
    TileGrid
        Tiles of ``tile_h`` x ``tile_w`` pixels whose union covers the raster.
        Neighbours overlap by at least ``overlap`` pixels.

    Raises
    ------
    ConfigError
        If a size is not positive, or overlap is too large for the tile.

    Examples
    --------
    >>> g = make_grid(1000, 300, tile=256, overlap=32)
    >>> g.row_starts, g.col_starts
    ((0, 186, 372, 558, 744), (0, 44))
    """
    if height <= 0 or width <= 0:
        raise ConfigError(f"raster shape must be positive, got {height}x{width}")
    if stride <= 0:
        raise ConfigError(f"stride must be positive, got {stride}")
    if tile <= 0 or tile % stride:
        raise ConfigError(
            f"tile size {tile} must be a positive multiple of the model stride {stride}; "
            f"try tile={round_up(max(tile, stride), stride)}"
        )
    if overlap < 0 or 2 * overlap >= tile:
        raise ConfigError(
            f"overlap {overlap} must be >= 0 and less than half the tile size {tile}; "
            f"try overlap={tile // 8}"
        )
    tile_h = min(tile, round_up(height, stride))
    tile_w = min(tile, round_up(width, stride))
    return TileGrid(
        height=height,
        width=width,
        tile_h=tile_h,
        tile_w=tile_w,
        overlap=overlap,
        row_starts=_starts(height, tile_h, overlap),
        col_starts=_starts(width, tile_w, overlap),
    )


def region_grid(grid: TileGrid, core: PixelWindow) -> TileGrid:
    """The part of ``grid`` needed to compute ``core`` exactly as the whole grid would.

    Every tile of ``grid`` that touches ``core`` is kept, with its global
    position and blending edges, so the blended result over ``core`` is
    identical (bit for bit) to the one the whole-raster run gives: the same
    tiles, the same weights, added in the same order.  Pixels of the returned
    grid outside ``core`` may lack contributions and must be discarded.

    Parameters
    ----------
    grid : TileGrid
        A whole-raster grid (origin ``(0, 0)``).
    core : PixelWindow
        The region to compute, inside the raster.

    Returns
    -------
    TileGrid
        A grid whose ``origin`` is the upper-left raster pixel of its first tile.

    Examples
    --------
    >>> g = make_grid(1000, 1000, tile=256, overlap=32)
    >>> r = region_grid(g, PixelWindow(500, 0, 100, 100))
    >>> r.origin, r.row_starts, r.col_starts, r.border
    ((372, 0), (0, 186), (0,), (False, False, True, False))
    """
    if grid.origin != (0, 0):
        raise ConfigError("region_grid needs a whole-raster grid")
    clip = core.clip(grid.height, grid.width)
    if clip != core:
        raise ConfigError(f"region {core} is not inside the {grid.height}x{grid.width} raster")

    def span(starts: tuple[int, ...], size: int, lo: int, hi: int) -> tuple[int, int]:
        first = max(0, bisect.bisect_right(starts, lo - size))
        while starts[first] + size <= lo:
            first += 1
        last = bisect.bisect_left(starts, hi) - 1
        return first, max(first, last)

    r0, r1 = span(grid.row_starts, grid.tile_h, core.row_off, core.row_end)
    c0, c1 = span(grid.col_starts, grid.tile_w, core.col_off, core.col_end)
    rows = grid.row_starts[r0 : r1 + 1]
    cols = grid.col_starts[c0 : c1 + 1]
    oy, ox = rows[0], cols[0]
    return TileGrid(
        height=min(rows[-1] + grid.tile_h, grid.height) - oy,
        width=min(cols[-1] + grid.tile_w, grid.width) - ox,
        tile_h=grid.tile_h,
        tile_w=grid.tile_w,
        overlap=grid.overlap,
        row_starts=tuple(r - oy for r in rows),
        col_starts=tuple(c - ox for c in cols),
        origin=(oy, ox),
        border=(r0 == 0, r1 == len(grid.row_starts) - 1, c0 == 0, c1 == len(grid.col_starts) - 1),
    )


def model_window(region: PixelWindow, spec: RasterSpec, model: RasterSpec) -> PixelWindow:
    """The window of the model grid whose pixels the read-back of ``region`` uses.

    ``region`` is a window of the input grid (``spec``), ``model`` the same extent
    resampled to the model's pixel size (north-up, as
    :class:`~geoseg.io.read.RasterSource` builds it).  The result covers the
    region's extent with a margin of two model pixels (nearest classes and the
    bilinear kernel of the probabilities), clipped to the model grid.

    Raises
    ------
    ConfigError
        The input is rotated or sheared: its read-back goes through a warper
        whose approximations depend on the window, so a region would not equal
        the whole run.
    """
    t, mt = spec.transform, model.transform
    if t.b or t.d or mt.b or mt.d:
        raise ConfigError(
            f"{spec.path} has a rotated grid at another pixel size than the model's; regions of "
            "it cannot be resampled exactly as one run; warp it north-up first (gdalwarp -r "
            "bilinear IN OUT.tif), or set 'resample: never'"
        )
    x0, y0 = t * (region.col_off, region.row_off)
    x1, y1 = t * (region.col_off + region.width, region.row_off + region.height)
    c0, r0 = ~mt * (min(x0, x1), max(y0, y1))
    c1, r1 = ~mt * (max(x0, x1), min(y0, y1))
    margin = 2
    row0 = max(0, math.floor(r0) - margin)
    col0 = max(0, math.floor(c0) - margin)
    row1 = min(model.height, math.ceil(r1) + margin)
    col1 = min(model.width, math.ceil(c1) + margin)
    return PixelWindow(row0, col0, row1 - row0, col1 - col0)
