"""Regular tile grids with overlap: a pure function of shape, tile size and overlap."""

from __future__ import annotations

from geoseg.errors import ConfigError
from geoseg.types import TileGrid


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
            f"try --tile {round_up(max(tile, stride), stride)}"
        )
    if overlap < 0 or 2 * overlap >= tile:
        raise ConfigError(
            f"overlap {overlap} must be >= 0 and less than half the tile size {tile}; "
            f"try --overlap {tile // 8}"
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
