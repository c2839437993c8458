"""Coordinate-seeded noise for the synthetic scene renderer.

Every value here is a pure function of integer global coordinates (pixels or
lattice cells) and a 32-bit salt, so a scene rendered in any blocking has
identical pixels.  Per-pixel values only go through IEEE-exact operations
(``+ - * /``, ``sqrt``, ``floor``, integer hashing): numpy's SIMD and scalar
code paths for ``sin``/``exp``/``hypot`` may differ in the last bit, which
would make a pixel depend on where it sits in a block.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["fbm", "hash2", "salt", "unit", "value_noise", "worley"]

_MX = np.uint32(0x8DA6B343)
_MY = np.uint32(0xD8163841)
_F1 = np.uint32(0x7FEB352D)
_F2 = np.uint32(0x846CA68B)
_S15 = np.uint32(15)
_S16 = np.uint32(16)
_INV24 = np.float32(1.0 / (1 << 24))
_INV10 = np.float32(1.0 / 1023.0)
_MASK10 = np.uint32(0x3FF)


def salt(seed: int, name: str) -> int:
    """A 32-bit salt for the noise field `name` of scene `seed`.

    Parameters
    ----------
    seed : int
        Scene seed (non-negative).
    name : str
        Name of the noise field; different names give independent fields.

    Returns
    -------
    int
        A value in ``[0, 2**32)``.

    Examples
    --------
    >>> salt(0, "ground") == salt(0, "ground") != salt(1, "ground")
    True
    """
    ss = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def hash2(x: NDArray[np.int64], y: NDArray[np.int64], salt: int) -> NDArray[np.uint32]:
    """Hash integer coordinates to uint32 (broadcasting `x` against `y`).

    Negative coordinates wrap modulo 2**32, which is harmless: scenes are far
    smaller than 2**32 pixels.
    """
    h = (x.astype(np.uint32) * _MX) ^ (y.astype(np.uint32) * _MY) ^ np.uint32(salt)
    h ^= h >> _S16
    h *= _F1
    h ^= h >> _S15
    h *= _F2
    h ^= h >> _S16
    return h


def unit(h: NDArray[np.uint32]) -> NDArray[np.float32]:
    """Map hashes to float32 in ``[0, 1)`` using their top 24 bits (exact in float32)."""
    return (h >> np.uint32(8)).astype(np.float32) * _INV24


def _axis(
    coords: NDArray[np.int64], period: float
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Lattice index and smoothstep weight of each pixel centre along one axis."""
    g = (coords.astype(np.float64) + 0.5) / period
    i = np.floor(g)
    f = (g - i).astype(np.float32)
    return i.astype(np.int64), f * f * (np.float32(3.0) - np.float32(2.0) * f)


def value_noise(
    rows: NDArray[np.int64], cols: NDArray[np.int64], period: float, salt: int
) -> NDArray[np.float32]:
    """Smooth value noise on the grid of global pixel `rows` x `cols`.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (h,) and (w,)
        Increasing, consecutive global pixel indices.
    period : float
        Lattice spacing in pixels (> 0).
    salt : int
        32-bit salt selecting the field.

    Returns
    -------
    numpy.ndarray of float32, shape (h, w)
        Values in ``[0, 1)``, bilinear between hashed lattice values with a
        smoothstep fade.
    """
    ix, sx = _axis(cols, period)
    iy, sy = _axis(rows, period)
    lx = np.arange(ix[0], ix[-1] + 2, dtype=np.int64)
    ly = np.arange(iy[0], iy[-1] + 2, dtype=np.int64)
    lattice = unit(hash2(lx[None, :], ly[:, None], salt))
    jx = ix - ix[0]
    left = lattice[:, jx]
    along = left + (lattice[:, jx + 1] - left) * sx
    jy = iy - iy[0]
    top = along[jy]
    return top + (along[jy + 1] - top) * sy[:, None]


def fbm(
    rows: NDArray[np.int64], cols: NDArray[np.int64], periods: Sequence[float], salt: int
) -> NDArray[np.float32]:
    """Sum of value-noise octaves, coarsest first, halving weights; in ``[-1, 1]``.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64
        As for :func:`value_noise`.
    periods : sequence of float
        Lattice spacing of each octave in pixels.
    salt : int
        32-bit salt; each octave derives its own.

    Returns
    -------
    numpy.ndarray of float32, shape (h, w)
    """
    total = np.zeros((rows.size, cols.size), np.float32)
    weight = 1.0
    norm = 0.0
    for k, period in enumerate(periods):
        total += np.float32(2.0 * weight) * value_noise(
            rows, cols, period, (salt + 7919 * k) & 0xFFFFFFFF
        )
        norm += weight
        weight *= 0.5
    total *= np.float32(1.0 / norm)
    total -= np.float32(1.0)
    return total


def worley(
    x: NDArray[np.float64], y: NDArray[np.float64], cell: float, salt: int, jitter: float = 0.75
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Nearest jittered feature point of a cellular lattice (Worley F1), for scattered pixels.

    One feature point per lattice cell of side `cell` pixels, placed at the cell
    centre plus up to ``jitter / 2`` of a cell in x and y.  Only the 2 x 2
    cells nearest each pixel are searched, exact for ``jitter <= 0.5`` and a
    close approximation above.

    Parameters
    ----------
    x, y : numpy.ndarray of float64, shape (n,)
        Global pixel-centre coordinates (column + 0.5, row + 0.5).
    cell : float
        Lattice spacing in pixels.
    salt : int
        32-bit salt selecting the field.
    jitter : float, optional
        Feature point spread as a fraction of a cell.

    Returns
    -------
    distance, dx, dy, tone : numpy.ndarray of float32, shape (n,)
        Distance to the nearest feature point and the offset pixel - point,
        all in cell units, and a per-cell random value in ``[0, 1]``.
    """
    if x.size == 0:
        empty = np.zeros(0, np.float32)
        return empty, empty, empty, empty
    gx = x / cell
    gy = y / cell
    ix = np.floor(gx)
    iy = np.floor(gy)
    fx = (gx - ix).astype(np.float32)
    fy = (gy - iy).astype(np.float32)
    cx = ix.astype(np.int64)
    cy = iy.astype(np.int64)
    x0 = int(cx.min()) - 1
    y0 = int(cy.min()) - 1
    nx = int(cx.max()) + 2 - x0
    ny = int(cy.max()) + 2 - y0
    h = hash2(
        np.arange(x0, x0 + nx, dtype=np.int64)[None, :],
        np.arange(y0, y0 + ny, dtype=np.int64)[:, None],
        salt,
    ).ravel()
    jit = np.float32(jitter)
    half = np.float32(0.5)
    px = half + jit * ((h & _MASK10).astype(np.float32) * _INV10 - half)
    py = half + jit * (((h >> np.uint32(10)) & _MASK10).astype(np.float32) * _INV10 - half)
    tones = ((h >> np.uint32(20)) & _MASK10).astype(np.float32) * _INV10

    base = (cy - y0) * nx + (cx - x0)
    right = fx >= half
    below = fy >= half
    ox = np.where(right, np.int64(1), np.int64(-1))
    oy = np.where(below, np.int64(nx), np.int64(-nx))
    fox = np.where(right, np.float32(1), np.float32(-1))
    foy = np.where(below, np.float32(1), np.float32(-1))
    # Own cell first, then the three neighbours towards the pixel's quadrant.
    bdx = fx - px[base]
    bdy = fy - py[base]
    best = bdx * bdx + bdy * bdy
    bli = base
    for li, sx, sy in ((base + ox, fox, None), (base + oy, None, foy), (base + ox + oy, fox, foy)):
        dx = fx - px[li] if sx is None else fx - (sx + px[li])
        dy = fy - py[li] if sy is None else fy - (sy + py[li])
        d2 = dx * dx + dy * dy
        closer = d2 < best
        best = np.where(closer, d2, best)
        bdx = np.where(closer, dx, bdx)
        bdy = np.where(closer, dy, bdy)
        bli = np.where(closer, li, bli)
    btone = tones[bli]
    return np.sqrt(best), bdx, bdy, btone
