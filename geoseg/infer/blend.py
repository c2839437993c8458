"""Blend overlapping tile predictions with smooth weights, in bounded memory.

Weights fall off with a raised-cosine ramp towards every tile side that lies
inside the raster, and are exactly zero on a thin margin along those sides:
the pixels a CNN computes from zero padding never reach the result, so a
network whose receptive field fits in that margin gives the same probabilities
tiled as on the whole image.  Sides on the raster border do not fade (no
neighbour would take over).  Nodata pixels get zero weight, and every pixel is
normalised by the exact sum of the weights that reached it.

:class:`StreamingBlender` takes tiles in grid order (row-major) and hands back
finished blocks as soon as no later tile can touch them.  It keeps only a band
of about ``overlap`` rows across the raster width plus one tile-sized buffer, so
its float memory is O(width x overlap + tile^2) and does not depend on the
height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from geoseg.errors import ConfigError
from geoseg.types import CLASS_NODATA, Tile, TileGrid


def default_margin(overlap: int) -> int:
    """Zero-weight margin (pixels) along inner tile sides for a given overlap.

    >>> default_margin(64)
    16
    """
    return overlap // 4


def ramp_1d(length: int, overlap: int, margin: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    """1-D blending weights along one tile axis.

    Parameters
    ----------
    length : int
        Tile size along the axis, in pixels.
    overlap : int
        Nominal overlap with the neighbouring tile, in pixels.
    margin : int
        Pixels at a faded side whose weight is exactly 0 (``2 * margin < overlap``
        unless ``overlap`` is 0).
    fade_start, fade_end : bool
        Whether the low / high side borders another tile (fades) or the raster
        edge (stays at 1).

    Returns
    -------
    numpy.ndarray
        float64 weights in [0, 1], shape ``(length,)``.

    Examples
    --------
    >>> ramp_1d(8, 4, 1, True, False).round(2).tolist()
    [0.0, 0.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    w = np.ones(length, dtype=np.float64)
    if overlap <= 0:
        return w
    if overlap > 0 and 2 * margin >= overlap:
        raise ConfigError(f"blend margin {margin} must be less than half the overlap {overlap}")
    ramp_len = overlap - 2 * margin
    i = np.arange(1, ramp_len + 1, dtype=np.float64)
    ramp = 0.5 - 0.5 * np.cos(np.pi * i / (ramp_len + 1))
    ramp_up = np.concatenate([np.zeros(margin), ramp])
    n = min(len(ramp_up), length)
    if fade_start:
        w[:n] = np.minimum(w[:n], ramp_up[:n])
    if fade_end:
        w[length - n :] = np.minimum(w[length - n :], ramp_up[:n][::-1])
    return w


@lru_cache(maxsize=64)
def _window(
    tile_h: int, tile_w: int, overlap: int, margin: int, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    top, bottom, left, right = edges
    wy = ramp_1d(tile_h, overlap, margin, not top, not bottom)
    wx = ramp_1d(tile_w, overlap, margin, not left, not right)
    out = np.outer(wy, wx).astype(np.float32)
    out.setflags(write=False)
    return out


def tile_weights(grid: TileGrid, tile: Tile, margin: int | None = None) -> np.ndarray:
    """Blending weights of one tile, shape ``(tile_h, tile_w)``, float32, read-only."""
    m = default_margin(grid.overlap) if margin is None else margin
    return _window(grid.tile_h, grid.tile_w, grid.overlap, m, tile.edges)


#: Contact probability above which a pixel of a model's ``contact_class`` is carved
#: out (becomes background), separating touching objects.
CONTACT_THRESHOLD = 0.5


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``argmax`` over the first axis of ``(classes, H, W)`` scores, as uint8.

    Ties go to the lower class id, as with :func:`numpy.argmax`, which is
    about 10x slower on this layout (a reduction across the outermost axis);
    this runs one compare, one mask and one maximum per class, all contiguous.

    >>> argmax_classes(np.array([[[0.2, 0.5]], [[0.7, 0.5]]], np.float32)).tolist()
    [[1, 0]]
    """
    best = scores[0].copy()
    idx = np.zeros(scores.shape[1:], np.uint8)
    better = np.empty(scores.shape[1:], bool)
    for c in range(1, scores.shape[0]):
        np.greater(scores[c], best, out=better)
        idx *= ~better
        idx += better.view(np.uint8) * np.uint8(c)
        np.maximum(best, scores[c], out=best)
    return idx


@dataclass(frozen=True, slots=True)
class BlendedBlock:
    """A finished block of the raster.

    ``classes`` is uint8 ``(rows, cols)``: the most probable class, or
    :data:`CLASS_NODATA` where ``covered`` is False (nodata, or no tile).
    ``probs``, when the blender was asked for probabilities, is float32
    ``(classes, rows, cols)`` normalised so classes sum to 1 wherever ``covered``
    is True, and 0 elsewhere; otherwise None.  All three are numpy arrays
    whichever device blended them.
    """

    row_off: int
    col_off: int
    classes: np.ndarray
    probs: np.ndarray | None
    covered: np.ndarray


class StreamingBlender:
    """Accumulate weighted tile probabilities and release finished strips.

    Tiles must be added in the grid's row-major order (``for tile in grid``);
    tiles entirely nodata may be passed with ``probs=None``.  Each call returns
    the strips that became final, top to bottom; together they cover every
    raster pixel exactly once, left to right within each grid row's band.

    Parameters
    ----------
    grid : TileGrid
        The grid the tiles come from.
    n_classes : int
        Number of probability channels per tile.
    margin : int, optional
        Zero-weight margin along inner tile sides (default ``overlap // 4``).
    probabilities : bool
        Also return normalised float probabilities with each block (default
        True).  Without them a block's classes come from the weighted sums
        directly (dividing every class by the same positive weight sum does
        not change which is largest), which saves a pass over every class.
    contact_class : int, optional
        For a model with a contact output (one more channel after the
        classes: the probability that a pixel lies where two objects of this
        class meet): the blended contact probability is carried like a class,
        and pixels of ``contact_class`` whose contact probability exceeds
        :data:`CONTACT_THRESHOLD` become background (0), so that touching
        objects come out as separate polygons.  Carving is per pixel, after
        blending, so tiles and strips change nothing.  Returned probabilities
        hold the classes only.
    """

    def __init__(
        self,
        grid: TileGrid,
        n_classes: int,
        *,
        margin: int | None = None,
        probabilities: bool = True,
        contact_class: int | None = None,
    ) -> None:
        self.grid = grid
        self.n_classes = n_classes
        self.contact_class = contact_class
        #: Input channels per tile: the classes, then the contact output if any.
        self.n_channels = n_classes + (contact_class is not None)
        self.margin = default_margin(grid.overlap) if margin is None else margin
        self.probabilities = probabilities
        th, tw = grid.tile_h, grid.tile_w
        # One tile-sized buffer for the current tile row (channels: inputs, then weight sum).
        self._buf = self._zeros((self.n_channels + 1, th, tw))
        self._buf_col = 0  # raster column of self._buf[..., 0]
        # Rows of the current tile row already touched by the previous tile row.
        self._carry = self._zeros((self.n_channels + 1, 0, grid.width))
        self._next_carry = self._zeros((self.n_channels + 1, 0, grid.width))
        self._expected = 0  # index of the next tile in row-major order
        self._scratch: np.ndarray | None = None  # numpy path: one tile plane, reused

    # -- array backend: numpy here, torch in TorchBlender --------------------------------------

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape, dtype=np.float32)

    def _accumulate(self, tile: Tile, probs: Any, valid: np.ndarray | None) -> None:
        w = tile_weights(self.grid, tile, self.margin)
        if valid is not None and not valid.all():
            w = w * valid
        buf = self._buf
        # Each class times the weights into one reused scratch plane, then added: no temporaries.
        scratch = self._scratch_for(probs)
        for c in range(self.n_channels):
            np.multiply(probs[c], w, out=scratch)
            buf[c] += scratch
        buf[-1] += w

    def _scratch_for(self, probs: np.ndarray) -> np.ndarray:
        if self._scratch is None or self._scratch.shape != probs.shape[1:]:
            self._scratch = np.empty(probs.shape[1:], np.float32)
        return self._scratch

    def _shift(self, n: int) -> None:
        """Shift the tile buffer left by ``n`` columns; vacated columns become zero."""
        keep = self._buf.shape[2] - n
        if keep > 0:
            self._buf[:, :, :keep] = self._buf[:, :, n:]
            self._buf[:, :, keep:] = 0
        else:
            self._buf[:] = 0

    def _finish(self, final: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Classes, optional normalised probabilities and coverage of finished sums."""
        wsum = final[-1]
        covered = wsum > 0
        sums = final[: self.n_classes]
        classes = argmax_classes(sums)
        if self.contact_class is not None:
            # contact / wsum > threshold, without dividing (wsum > 0 wherever it can hold).
            carve = final[self.n_classes] > wsum * np.float32(CONTACT_THRESHOLD)
            carve &= classes == self.contact_class
            classes[carve] = 0
        classes[~covered] = CLASS_NODATA
        probs = None
        if self.probabilities:
            probs = sums.copy()
            np.divide(probs, wsum, out=probs, where=covered)
            probs[:, ~covered] = 0
        return classes, probs, covered

    # -- grid bookkeeping (array-agnostic) -----------------------------------------------------

    def add(self, tile: Tile, probs: Any, valid: np.ndarray | None) -> Iterator[BlendedBlock]:
        """Add one tile's class probabilities.

        Parameters
        ----------
        tile : Tile
            The tile, which must be the next one in row-major grid order.
        probs : array or None
            float32 ``(n_classes, tile_h, tile_w)`` probabilities (a numpy array
            here, a tensor on the blender's device for :class:`TorchBlender`),
            then the contact probability when the blender has a
            ``contact_class`` (channels beyond those are ignored); None for a
            tile with no valid pixel (it contributes nothing).
        valid : numpy.ndarray or None
            bool ``(tile_h, tile_w)``; False marks nodata (weight 0).

        Yields
        ------
        BlendedBlock
            Blocks that are final after this tile.
        """
        grid = self.grid
        index = tile.row * grid.shape[1] + tile.col
        if index != self._expected:
            raise ValueError(
                f"tiles must arrive in row-major order; expected #{self._expected}, got #{index}"
            )
        self._expected += 1
        if tile.col == 0:
            self._start_row(tile.row)
        if probs is not None:
            self._accumulate(tile, probs, valid)
        last_col = tile.col == grid.shape[1] - 1
        upto = grid.width if last_col else grid.col_starts[tile.col + 1]
        block = self._flush_columns(upto)
        if block is not None:
            yield block

    def _start_row(self, row: int) -> None:
        grid = self.grid
        self._row = row
        self._row_start = grid.row_starts[row]
        self._final_rows = grid.final_row(row) - self._row_start
        self._carry = self._next_carry
        rows_next = (
            0 if row == grid.shape[0] - 1 else self._row_start + grid.tile_h - grid.final_row(row)
        )
        rows_next = max(rows_next, 0)
        self._next_carry = self._zeros((self.n_channels + 1, rows_next, grid.width))
        self._buf[:] = 0
        self._buf_col = 0

    def _flush_columns(self, upto: int) -> BlendedBlock | None:
        """Finish columns [buf_col, upto) of the tile buffer; keep what the next grid row needs."""
        c0, c1 = self._buf_col, min(upto, self.grid.width)
        if c1 <= c0:
            return None
        n = c1 - c0
        part = self._buf[:, :, :n]
        rows = min(self.grid.tile_h, self.grid.height - self._row_start)
        part = part[:, :rows]
        ch = self._carry.shape[1]
        if ch:
            part[:, :ch] += self._carry[:, :, c0:c1]
        f = self._final_rows
        final = part[:, :f]
        nc = self._next_carry.shape[1]
        if nc:
            self._next_carry[:, :, c0:c1] = part[:, f : f + nc]
        # Classes (and probabilities) are computed before the shift reuses the buffer.
        classes, probs, covered = self._finish(final)
        self._shift(n)
        self._buf_col = c1
        return BlendedBlock(self._row_start, c0, classes, probs, covered)


class TorchBlender(StreamingBlender):
    """:class:`StreamingBlender` whose sums live on a torch device (a GPU).

    Tile probabilities arrive as tensors already on ``device`` (straight from
    the network, never copied to the host); weighting, accumulation, the
    argmax and the normalisation run there, and only the finished uint8
    classes, the coverage mask and (when asked) the probabilities of each
    block come back to the host.  With the same inputs it returns the same
    blocks as the numpy blender (within float rounding).

    Parameters
    ----------
    device : torch.device or str
        Where the sums are kept.
    """

    def __init__(
        self,
        grid: TileGrid,
        n_classes: int,
        *,
        device: Any,
        margin: int | None = None,
        probabilities: bool = True,
        contact_class: int | None = None,
    ) -> None:
        import torch

        self.device = torch.device(device)
        self._weights: dict[tuple[bool, bool, bool, bool], Any] = {}
        super().__init__(
            grid,
            n_classes,
            margin=margin,
            probabilities=probabilities,
            contact_class=contact_class,
        )

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        import torch

        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def _accumulate(self, tile: Tile, probs: Any, valid: np.ndarray | None) -> None:
        import torch

        w = self._weights.get(tile.edges)
        if w is None:
            host = tile_weights(self.grid, tile, self.margin)
            w = self._weights[tile.edges] = torch.from_numpy(host.copy()).to(self.device)
        if valid is not None and not valid.all():
            w = w * torch.from_numpy(valid).to(self.device, non_blocking=False)
        p = torch.as_tensor(probs, device=self.device, dtype=torch.float32)[: self.n_channels]
        self._buf[:-1].addcmul_(p, w.expand_as(p))
        self._buf[-1] += w

    def _shift(self, n: int) -> None:
        keep = self._buf.shape[2] - n
        if keep > 0:
            # Source and destination overlap: copy the kept columns out first.
            self._buf[:, :, :keep] = self._buf[:, :, n:].clone()
            self._buf[:, :, keep:] = 0
        else:
            self._buf.zero_()

    def _finish(self, final: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        import torch

        wsum = final[-1]
        covered = wsum > 0
        sums = final[: self.n_classes]
        classes = torch.argmax(sums, dim=0).to(torch.uint8)
        if self.contact_class is not None:
            carve = (final[self.n_classes] > wsum * CONTACT_THRESHOLD) & (
                classes == self.contact_class
            )
            classes[carve] = 0
        classes[~covered] = CLASS_NODATA
        probs = None
        if self.probabilities:
            probs_t = torch.where(covered, sums / torch.where(covered, wsum, 1.0), 0.0)
            probs = probs_t.cpu().numpy()
        return classes.cpu().numpy(), probs, covered.cpu().numpy()
