"""Render one window of a synthetic scene from its vector layout.

A window is rendered with a one-pixel halo: objects and shadows are rasterized
(pixel-centre rule) with an integer translation, each material is textured
with noise seeded by global coordinates, shadows darken what lies beneath
them, a light blur softens the edges and sensor noise is added.  Every pixel
depends only on its global position and the layout, never on the window, so
any blocking of a scene gives identical pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from shapely.geometry import box

from geoseg.synth.noise import fbm, hash2, salt, worley
from geoseg.synth.objects import (
    BUILDING,
    COS,
    CX,
    CY,
    P0,
    P1,
    SHADOW_BUILDING,
    SHADOW_TREE,
    SIN,
    A,
    B,
    Layout,
    Material,
)

__all__ = ["render"]

F32 = np.float32
M = Material

# Texture scales in metres: landscape patches, clumps, grain.
_LOW_M = (160.0, 80.0, 40.0)
_MID_M = (12.0, 6.0, 3.0)
_FINE_M = (1.5, 0.75)

# Bare ground is background: dry, sparse grass, dust and sand, never a green sward
# (meadows and lawns are objects of their own, and vegetation).
_DRY = np.array([146.0, 140.0, 102.0], F32)
_BARE = np.array([168.0, 152.0, 124.0], F32)
_HAZE = np.array([178.0, 186.0, 200.0], F32)
_HAZE_WEIGHT = F32(0.08)
_SHADOW = {
    SHADOW_TREE: np.array([0.58, 0.6, 0.66], F32),
    SHADOW_BUILDING: np.array([0.46, 0.48, 0.55], F32),
}
_BLUR = F32(0.18)
_SENSOR_DN = F32(2.5)
_ROOFS = (M.ROOF_GABLE, M.ROOF_HIP, M.ROOF_FLAT, M.ROOF_METAL)


class _Pixels:
    """The pixels of one material within the halo block; values computed on demand."""

    def __init__(
        self,
        lay: Layout,
        sel: NDArray[np.intp],
        obj: NDArray[np.intp],
        rows: NDArray[np.int64],
        cols: NDArray[np.int64],
        noise: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
    ) -> None:
        self.lay = lay
        self.sel = sel
        self.obj = obj
        self._rows = rows
        self._cols = cols
        self._noise = noise

    def par(self, row: int) -> NDArray[np.float64]:
        """Parameter `row` (CX, CY, ...) of each pixel's object."""
        out: NDArray[np.float64] = self.lay.params[row][self.obj]
        return out

    @functools.cached_property
    def _rc(self) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        r, c = np.divmod(self.sel, self._cols.size)
        return r, c

    @functools.cached_property
    def x(self) -> NDArray[np.float64]:
        """Global pixel-centre x (column + 0.5)."""
        x = (self._cols[self._rc[1]] + 0.5).astype(np.float64, copy=False)
        return x

    @functools.cached_property
    def y(self) -> NDArray[np.float64]:
        """Global pixel-centre y (row + 0.5)."""
        y = (self._rows[self._rc[0]] + 0.5).astype(np.float64, copy=False)
        return y

    @functools.cached_property
    def low(self) -> NDArray[np.float32]:
        return self._noise[0][self.sel]

    @functools.cached_property
    def mid(self) -> NDArray[np.float32]:
        return self._noise[1][self.sel]

    @functools.cached_property
    def fine(self) -> NDArray[np.float32]:
        return self._noise[2][self.sel]


def _frac(v: NDArray[np.float64]) -> NDArray[np.float32]:
    return (v - np.floor(v)).astype(F32)


def _tint(colour: NDArray[np.float32], factor: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = colour * factor[:, None]
    return out


def _ground(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
    bare = np.clip(F32(0.45) + F32(0.8) * p.low, F32(0), F32(1))
    base = _DRY + (_BARE - _DRY) * bare[:, None]
    return _tint(base, F32(1) + F32(0.12) * p.mid + F32(0.09) * p.fine)


def _plain(low: float, mid: float, fine: float) -> Callable[[Layout, _Pixels], NDArray[np.float32]]:
    def shade(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
        f = F32(1) + F32(mid) * p.mid + F32(fine) * p.fine
        if low:
            f += F32(low) * p.low
        return _tint(lay.colour[p.obj], f)

    return shade


def _meadow(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
    f = F32(1) + F32(0.08) * p.low + F32(0.09) * p.mid + F32(0.06) * p.fine
    spacing = p.par(A)
    striped = np.flatnonzero(spacing > 0)
    if striped.size:
        obj = p.obj[striped]
        v = -p.x[striped] * lay.params[SIN][obj] + p.y[striped] * lay.params[COS][obj]
        half = _frac(v / spacing[striped]) < F32(0.5)
        contrast = lay.params[P0][obj].astype(F32)
        f[striped] *= F32(1) + np.where(half, contrast, -contrast)
    return _tint(lay.colour[p.obj], f)


def _field(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
    v = p.y * p.par(COS) - p.x * p.par(SIN)
    spacing = p.par(A)
    phase = p.par(B)
    t = _frac(v / spacing + phase)
    rowness = F32(1) - np.abs(F32(2) * t - F32(1))
    # Patchy growth: the crop covers more of the row period in some parts of a field.
    cover = np.clip(p.par(P0).astype(F32) + F32(0.15) * p.low, F32(0.05), F32(1))
    sp = spacing.astype(F32)
    r = np.clip((rowness - (F32(1) - cover)) * sp * F32(0.5) + F32(0.5), F32(0), F32(1))
    amp = np.clip((sp - F32(2)) * F32(1 / 1.5), F32(0), F32(1))
    r = cover + amp * (r - cover)
    row = lay.colour[p.obj]
    between = lay.colour2[p.obj]
    rgb = between + (row - between) * r[:, None]
    tram = p.par(P1)
    has = np.flatnonzero(tram > 0)
    if has.size:
        px = 1.0 / lay.pixel_size
        q = _frac(v[has] / tram[has] + phase[has]) * tram[has].astype(F32)
        half = F32(max(0.6, 0.25 * px))
        track = (q < half) | (np.abs(q - F32(1.8 * px)) < half)
        idx = has[track]
        rgb[idx] = between[idx] * F32(0.92)
    f = F32(1) + F32(0.08) * p.low + F32(0.05) * p.mid + F32(0.03) * p.fine
    return _tint(rgb, f)


def _leaf_colour(
    colour: NDArray[np.float32], shade: NDArray[np.float32], tone: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Crown colour: per-crown brightness and a yellow/blue-green hue shift."""
    shift = (tone - F32(0.5))[:, None] * np.array([14.0, 8.0, -6.0], F32)
    out: NDArray[np.float32] = (colour * (F32(0.88) + F32(0.24) * tone)[:, None] + shift) * shade[
        :, None
    ]
    return out


def _canopy(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
    out = np.empty((p.obj.size, 3), F32)
    sx, sy = F32(lay.sun[0]), F32(lay.sun[1])
    cells = p.par(P0)
    conifers = p.par(P1) > 0
    canopy_salt = salt(lay.seed, "canopy")
    for cell in np.unique(cells):
        g = np.flatnonzero(cells == cell)
        d, dx, dy, tone = worley(p.x[g], p.y[g], float(cell), canopy_salt)
        radius = np.where(conifers[g], F32(0.48), F32(0.58)) * (F32(0.85) + F32(0.3) * tone)
        dr = d / radius
        lit = (dx * sx + dy * sy) / radius
        crown = (F32(1.08) - F32(0.5) * dr * dr) * (F32(1) + F32(0.3) * lit)
        shade = np.where(dr < F32(1.1), crown, F32(0.55))
        shade *= F32(1) + F32(0.16) * p.fine[g] + F32(0.05) * p.mid[g]
        out[g] = _leaf_colour(lay.colour[p.obj[g]], shade, tone)
    return out


def _crown(lay: Layout, p: _Pixels) -> NDArray[np.float32]:
    r = p.par(A)
    dx = ((p.x - p.par(CX)) / r).astype(F32)
    dy = ((p.y - p.par(CY)) / r).astype(F32)
    lit = dx * F32(lay.sun[0]) + dy * F32(lay.sun[1])
    shade = (F32(1.08) - F32(0.5) * (dx * dx + dy * dy)) * (F32(1) + F32(0.3) * lit)
    shade *= F32(1) + F32(0.14) * p.fine + F32(0.05) * p.mid
    tone = F32(0.5) + F32(0.25) * p.low
    return _leaf_colour(lay.colour[p.obj], shade, tone)


def _roof(lay: Layout, p: _Pixels, material: Material) -> NDArray[np.float32]:
    dx = p.x - p.par(CX)
    dy = p.y - p.par(CY)
    ca, sa = p.par(COS), p.par(SIN)
    u = (dx * ca + dy * sa).astype(F32)
    v = (dy * ca - dx * sa).astype(F32)
    edge_u = p.par(A).astype(F32) - np.abs(u)
    edge_v = p.par(B).astype(F32) - np.abs(v)
    edge = np.minimum(edge_u, edge_v)
    one = F32(1)
    if material == M.ROOF_FLAT:
        shade = one + F32(0.05) * p.mid + F32(0.03) * p.fine + F32(0.03) * p.low
        parapet = F32(max(0.7, 0.5 / lay.pixel_size))
        shade = np.where(edge < parapet, shade * F32(1.12), shade)
        return _tint(lay.colour[p.obj], shade)
    sun_u = (lay.sun[0] * ca + lay.sun[1] * sa).astype(F32)
    sun_v = (lay.sun[1] * ca - lay.sun[0] * sa).astype(F32)
    lit = np.where(v >= 0, sun_v, -sun_v)
    if material == M.ROOF_HIP:
        lit = np.where(edge_u < edge_v, np.where(u >= 0, sun_u, -sun_u), lit)
    if material == M.ROOF_METAL:
        rib = np.abs(F32(2) * _frac(u / p.par(P0)) - one)
        shade = (F32(0.95) + F32(0.1) * rib) * (one + F32(0.08) * lit)
        shade *= one + F32(0.02) * p.fine
    else:
        shade = (F32(0.88) + F32(0.3) * lit) * (one + F32(0.05) * p.fine + F32(0.04) * p.mid)
        shade = np.where(np.abs(v) < F32(0.7), shade * F32(1.05), shade)
    shade = np.where(edge < F32(0.8), shade * F32(0.88), shade)
    return _tint(lay.colour[p.obj], shade)


_SHADERS: dict[Material, Callable[[Layout, _Pixels], NDArray[np.float32]]] = {
    M.GROUND: _ground,
    M.MEADOW: _meadow,
    M.GRASS_FIELD: _meadow,
    M.SOIL: _plain(0.06, 0.1, 0.07),
    M.PAVED: _plain(0.03, 0.03, 0.04),
    M.FIELD: _field,
    M.CANOPY: _canopy,
    M.CROWN: _crown,
    M.CROWN_OVER: _crown,
    M.WATER: _plain(0.05, 0.02, 0.01),
    M.ROAD: _plain(0.03, 0.04, 0.05),
    M.TRACK: _plain(0.03, 0.08, 0.07),
    M.MARKING: _plain(0.0, 0.0, 0.03),
    **{m: functools.partial(_roof, material=m) for m in _ROOFS},
}


def _burn(
    geoms: NDArray[np.object_],
    values: NDArray[np.uint8] | None,
    tree: object,
    col: int,
    row: int,
    width: int,
    height: int,
    dtype: str,
) -> NDArray[np.generic]:
    """Rasterize the geometries touching the window, in index order (later wins).

    Each geometry burns its value, or its index + 1 when `values` is None.
    """
    hits = np.sort(tree.query(box(col, row, col + width, row + height)))  # type: ignore[attr-defined]
    if hits.size == 0:
        return np.zeros((height, width), dtype)
    burnt = hits + 1 if values is None else values[hits]
    shapes = zip(geoms[hits], burnt.tolist(), strict=True)
    out: NDArray[np.generic] = rasterize(
        shapes,
        out_shape=(height, width),
        transform=Affine.translation(col, row),
        fill=0,
        dtype=dtype,
    )
    return out


def render(
    layout: Layout, col_off: int, row_off: int, width: int, height: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Render the window of `layout` starting at pixel (`row_off`, `col_off`).

    Parameters
    ----------
    layout : Layout
        The scene layout.
    col_off, row_off : int
        Global pixel offsets of the window's upper-left corner.
    width, height : int
        Window size in pixels (> 0).

    Returns
    -------
    image : numpy.ndarray of uint8, shape (3, height, width)
        RGB.
    classes : numpy.ndarray of uint8, shape (height, width)
        0 background, 1 building, 2 vegetation, 3 cropland.
    """
    c0, r0, w2, h2 = col_off - 1, row_off - 1, width + 2, height + 2
    idx = _burn(layout.geoms, None, layout.tree, c0, r0, w2, h2, "int32")
    shadow = _burn(
        layout.shadow_geoms, layout.shadow_strength, layout.shadow_tree, c0, r0, w2, h2, "uint8"
    )

    rows = np.arange(r0, r0 + h2, dtype=np.int64)
    cols = np.arange(c0, c0 + w2, dtype=np.int64)
    px = 1.0 / layout.pixel_size
    seed = layout.seed
    noise = (
        fbm(rows, cols, [m * px for m in _LOW_M], salt(seed, "low")).ravel(),
        fbm(rows, cols, [max(1.5, m * px) for m in _MID_M], salt(seed, "mid")).ravel(),
        fbm(rows, cols, [max(1.2, m * px) for m in _FINE_M], salt(seed, "fine")).ravel(),
    )

    flat = idx.ravel().astype(np.intp)
    material = layout.material[flat]
    # Group the pixels by material with one stable (radix) sort, shade each
    # group into a sorted buffer and scatter it back once.
    order = np.argsort(material, kind="stable")
    ends = np.cumsum(np.bincount(material, minlength=len(Material)))
    sorted_rgb = np.empty((flat.size, 3), F32)
    start = 0
    for m, end in enumerate(ends.tolist()):
        if end > start:
            sel = order[start:end]
            pixels = _Pixels(layout, sel, flat[sel], rows, cols, noise)
            sorted_rgb[start:end] = _SHADERS[Material(m)](layout, pixels)
        start = end
    rgb = np.empty_like(sorted_rgb)
    rgb[order] = sorted_rgb

    shaded = np.flatnonzero(shadow.ravel())
    if shaded.size:
        obj = flat[shaded]
        mat = layout.material[obj]
        value = shadow.ravel()[shaded]
        under_tree = (mat == M.CANOPY) | (mat == M.CROWN) | (mat == M.CROWN_OVER)
        keep = (layout.classes[obj] != BUILDING) & ((value != SHADOW_TREE) | ~under_tree)
        factors = np.stack([np.ones(3, F32), _SHADOW[SHADOW_TREE], _SHADOW[SHADOW_BUILDING]])
        rgb[shaded[keep]] *= factors[value[keep]]

    # Haze lifts the blacks and desaturates like a real atmosphere; it is folded
    # into the blur weights, with the +0.5 of rounding and the sensor noise offset.
    img = rgb.reshape(h2, w2, 3)
    side = _BLUR * (F32(1) - _HAZE_WEIGHT)
    centre = (F32(1) - F32(2) * _BLUR) * (F32(1) - _HAZE_WEIGHT)
    img = img[1:-1] * centre + (img[:-2] + img[2:]) * side
    img = img[:, 1:-1] * (F32(1) - F32(2) * _BLUR) + (img[:, :-2] + img[:, 2:]) * _BLUR
    scale = _SENSOR_DN / F32(127.5)
    img += _HAZE * _HAZE_WEIGHT + F32(0.5) - F32(127.5) * scale
    sensor = hash2(cols[None, 1:-1], rows[1:-1, None], salt(seed, "sensor"))
    img += sensor.view(np.uint8).reshape(height, width, 4)[..., :3] * scale
    np.clip(img, F32(0), F32(255), out=img)
    image = np.ascontiguousarray(img.astype(np.uint8).transpose(2, 0, 1))
    classes = np.ascontiguousarray(layout.classes[idx[1:-1, 1:-1]])
    return image, classes
