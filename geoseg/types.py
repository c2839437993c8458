"""Small immutable value objects shared by every stage of the pipeline.

Axis order is explicit in names: ``shape`` is ``(rows, cols)``; windows are
``(row_off, col_off, height, width)`` in pixels of the full raster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of raster pixels; may extend past the raster edge.

    Parameters
    ----------
    row_off, col_off : int
        Offset of the upper-left pixel (may be negative for reads past the edge).
    height, width : int
        Size in pixels (rows, columns), both > 0.
    """

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"window size must be positive, got {self.height}x{self.width}")

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    def clip(self, height: int, width: int) -> PixelWindow | None:
        """Return the part of this window inside a ``height`` x ``width`` raster, or None."""
        r0, c0 = max(self.row_off, 0), max(self.col_off, 0)
        r1, c1 = min(self.row_end, height), min(self.col_end, width)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    ``window`` is the pixel window the model sees (always ``tile_h`` x ``tile_w``;
    parts past the raster edge are filled by reflection).  ``row``/``col`` index
    the tile within the grid.  ``edges`` tells which sides lie on the raster
    border (top, bottom, left, right): blending does not fade towards those.
    """

    row: int
    col: int
    window: PixelWindow
    edges: tuple[bool, bool, bool, bool]


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A regular grid of overlapping tiles covering a ``height`` x ``width`` raster.

    Build it with :func:`geoseg.tiling.make_grid`.  ``row_starts`` and
    ``col_starts`` are the tile origins along each axis, relative to
    ``origin`` (the raster pixel ``(row, col)`` of this grid's upper-left
    corner: ``(0, 0)`` for a whole raster, elsewhere for a region cut out of a
    larger grid with :func:`geoseg.tiling.region_grid`).  ``border`` tells which
    sides of the grid (top, bottom, left, right) are raster borders, where
    blending does not fade.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    origin: tuple[int, int] = (0, 0)
    border: tuple[bool, bool, bool, bool] = (True, True, True, True)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles as (rows, cols)."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def tile(self, row: int, col: int) -> Tile:
        """Return tile ``(row, col)``."""
        r0, c0 = self.row_starts[row], self.col_starts[col]
        edges = (
            row == 0 and self.border[0],
            row == len(self.row_starts) - 1 and self.border[1],
            col == 0 and self.border[2],
            col == len(self.col_starts) - 1 and self.border[3],
        )
        return Tile(row, col, PixelWindow(r0, c0, self.tile_h, self.tile_w), edges)

    def tiles_in_row(self, row: int) -> Iterator[Tile]:
        """Yield the tiles of grid row ``row``, left to right."""
        for col in range(len(self.col_starts)):
            yield self.tile(row, col)

    def __iter__(self) -> Iterator[Tile]:
        for row in range(len(self.row_starts)):
            yield from self.tiles_in_row(row)

    def final_row(self, row: int) -> int:
        """First raster row that a tile of grid row ``row + 1`` or later may still touch.

        Rows above it are complete once grid row ``row`` has been blended.
        """
        if row + 1 < len(self.row_starts):
            return self.row_starts[row + 1]
        return self.height


#: Class value of pixels no valid input reached (nodata in the class raster).
CLASS_NODATA = 255
#: Label value of pixels that no loss or metric looks at (unlabelled, nodata).
IGNORE_INDEX = 255
#: Value of probability bands where the input is nodata.
PROB_NODATA = 255
#: uint8 probability bands hold ``round(p * PROB_SCALE)``.
PROB_SCALE = 254


@dataclass(frozen=True)
class Strip:
    """Finished output rows ``row_off .. row_off + rows`` over the full raster width.

    ``classes`` is uint8 ``(rows, width)`` with :data:`CLASS_NODATA` where no valid
    input pixel was; ``probs`` (when requested) is uint8 ``(classes, rows, width)``
    holding ``round(p * 254)`` and :data:`PROB_NODATA` on nodata;
    ``probs_f32`` (when requested) keeps the float probabilities for tests
    and callers that need them exactly.
    """

    row_off: int
    classes: np.ndarray
    probs: np.ndarray | None = None
    probs_f32: np.ndarray | None = None
