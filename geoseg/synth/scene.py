"""Procedural, georeferenced aerial scenes with exact ground truth.

A scene is described by a :class:`SceneSpec` (size, pixel size, CRS, origin,
seed and density knobs).  Its layout (roads, water, fields, forests, trees,
buildings: detached houses and halls, and attached terraced rows and compact
clusters of houses that share walls, more of them the higher
``building_density``) is generated once as vector objects, then rendered
block by block: every pixel depends only on its global position and the spec,
so any blocking gives identical images, and memory stays bounded by the block
size plus the number of objects.

Classes (geoseg's class definition, README "Classes"): 0 background (dry bare
ground, soil, sand, roads, water, paved areas), 1 building (roofed structures),
2 vegetation (tree crowns, forest, hedgerows, shrubs, meadows, lawns), 3 cropland
(cultivated parcels in farmland at any growth stage, ploughed and harvested
included, and grass leys in the field pattern).  See
:mod:`geoseg.synth.objects` for the layer order that decides overlaps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from geoseg.errors import ConfigError
from geoseg.synth.objects import Layout, build_layout
from geoseg.synth.render import render

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "SceneBlock",
    "SceneSpec",
    "generate_arrays",
    "iter_blocks",
    "render_window",
    "scene_layout",
]

#: Class id -> name of the class raster and ground-truth polygons.
CLASS_NAMES: dict[int, str] = {0: "background", 1: "building", 2: "vegetation", 3: "cropland"}

#: Class id -> RGB colour of the class raster's colour table.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0xD9, 0xD9, 0xD9),
    1: (0xE4, 0x1A, 0x1C),
    2: (0x4D, 0xAF, 0x4A),
    3: (0xFF, 0xD9, 0x2F),
}

# Above this many pixels generate_arrays refuses (about 200 MiB of RGB); use
# iter_blocks or write_scene instead.
_MAX_ARRAY_PIXELS = 1 << 26


def _fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a number between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class SceneSpec:
    """What to generate: size, georeferencing, seed and density knobs.

    Parameters
    ----------
    width, height : int
        Scene size in pixels (1 to 1,000,000 each).
    pixel_size : float, optional
        Ground sampling distance in metres (0.05 to 10); textures and object
        sizes are defined in metres.
    crs : str, optional
        A projected CRS with metre units, as accepted by
        :meth:`rasterio.crs.CRS.from_user_input` (default UTM 33N).
    origin : tuple of float, optional
        (x, y) of the scene's upper-left corner in `crs` units.
    seed : int, optional
        Non-negative; the same spec always gives the same scene.
    building_density : float, optional
        0 to 1: share of land built up, how densely plots are filled and how
        many street frontages are built up with attached rows of houses
        (0: no buildings).
    tree_density : float, optional
        0 to 1: forest share, the number of trees, hedgerows and shrubs, and
        how often open land is meadow and house plots have lawns (0: no
        vegetation).
    field_fraction : float, optional
        0 to 1: share of land zoned as farmland (0: no cropland).
    road_spacing : float, optional
        Mean distance between main roads in metres (>= 50).
    water_fraction : float, optional
        0 to 1: approximate share of the scene covered by rivers and lakes.
    suburb : float, optional
        0 to 1: how leafy and green the towns are, as in temperate suburbs:
        parks with sports pitches (grass pitches are vegetation; artificial
        turf, hard and clay courts and running tracks are background), garden
        trees that stand against houses and overhang their roofs, hedges round
        plots, parked cars, and turbid brown or green water.  0 (the default)
        adds none of these and leaves every other object as it was.

    Raises
    ------
    ConfigError
        A field is out of range or of the wrong type; the message names it.

    Examples
    --------
    >>> spec = SceneSpec(512, 256, seed=3)
    >>> spec.transform.a, spec.shape
    (0.5, (256, 512))
    """

    width: int
    height: int
    pixel_size: float = 0.5
    crs: str = "EPSG:32633"
    origin: tuple[float, float] = (500_000.0, 5_500_000.0)
    seed: int = 0
    building_density: float = 0.5
    tree_density: float = 0.5
    field_fraction: float = 0.4
    road_spacing: float = 400.0
    water_fraction: float = 0.04
    suburb: float = 0.0

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an integer number of pixels, got {value!r}")
            if not 1 <= value <= 1_000_000:
                raise ConfigError(f"{name} must be between 1 and 1000000 pixels, got {value}")
            object.__setattr__(self, name, int(value))
        ps = self.pixel_size
        if not (isinstance(ps, int | float) and math.isfinite(ps) and 0.05 <= ps <= 10.0):
            raise ConfigError(f"pixel_size must be between 0.05 and 10 metres, got {ps!r}")
        object.__setattr__(self, "pixel_size", float(ps))
        try:
            crs = CRS.from_user_input(self.crs)
        except (CRSError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"crs {self.crs!r} is not a CRS rasterio understands; use e.g. 'EPSG:32633'"
            ) from exc
        if not crs.is_projected or crs.linear_units_factor[1] != 1.0:
            raise ConfigError(
                f"crs {self.crs!r} must be projected with metre units (pixel_size is in "
                "metres); use a UTM zone such as 'EPSG:32633'"
            )
        try:
            ox, oy = (float(v) for v in self.origin)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"origin must be a pair of numbers (x, y), got {self.origin!r}"
            ) from exc
        if not (math.isfinite(ox) and math.isfinite(oy)):
            raise ConfigError(f"origin must be finite, got {self.origin!r}")
        object.__setattr__(self, "origin", (ox, oy))
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        object.__setattr__(self, "seed", int(seed))
        for name in (
            "building_density",
            "tree_density",
            "field_fraction",
            "water_fraction",
            "suburb",
        ):
            _fraction(name, getattr(self, name))
        rs = self.road_spacing
        if not (isinstance(rs, int | float) and math.isfinite(rs) and rs >= 50.0):
            raise ConfigError(f"road_spacing must be at least 50 metres, got {rs!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the scene."""
        return self.height, self.width

    @property
    def transform(self) -> Affine:
        """Affine transform from (col, row) to (x, y) in `crs`, north up."""
        ox, oy = self.origin
        return Affine(self.pixel_size, 0.0, ox, 0.0, -self.pixel_size, oy)


class SceneBlock(NamedTuple):
    """One rendered block: where it lies, its RGB pixels and its classes."""

    window: Window
    image: NDArray[np.uint8]
    """RGB, shape (3, rows, cols)."""
    classes: NDArray[np.uint8]
    """Class ids, shape (rows, cols)."""


@functools.lru_cache(maxsize=4)
def scene_layout(spec: SceneSpec) -> Layout:
    """The vector layout of `spec` (cached: the last few specs are kept).

    Parameters
    ----------
    spec : SceneSpec
        The scene.

    Returns
    -------
    Layout
        Objects in pixel coordinates; memory grows with their number only.
    """
    return build_layout(spec)


def check_block_size(block_size: int) -> int:
    """Validate a rendering block size (16 to 16384 pixels); raise ConfigError otherwise."""
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise ConfigError(f"block_size must be an integer, got {block_size!r}")
    if not 16 <= block_size <= 16384:
        raise ConfigError(f"block_size must be between 16 and 16384 pixels, got {block_size}")
    return int(block_size)


def render_window(spec: SceneSpec, window: Window) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Render any window inside the scene.

    Parameters
    ----------
    spec : SceneSpec
        The scene.
    window : rasterio.windows.Window
        Integer offsets and a positive size, inside ``(0, 0, width, height)``.

    Returns
    -------
    image : numpy.ndarray of uint8, shape (3, rows, cols)
    classes : numpy.ndarray of uint8, shape (rows, cols)

    Raises
    ------
    ConfigError
        The window is not integral, empty or reaches outside the scene.
    """
    vals = (window.col_off, window.row_off, window.width, window.height)
    if any(float(v) != int(v) for v in vals):
        raise ConfigError(f"window must have integer offsets and size, got {window!r}")
    col, row, w, h = (int(v) for v in vals)
    if w <= 0 or h <= 0 or col < 0 or row < 0 or col + w > spec.width or row + h > spec.height:
        raise ConfigError(
            f"window {window!r} must be non-empty and inside the {spec.width} x {spec.height} scene"
        )
    return render(scene_layout(spec), col, row, w, h)


def iter_blocks(spec: SceneSpec, block_size: int = 1024) -> Iterator[SceneBlock]:
    """Render the scene block by block, row-major; lazily, one block in memory at a time.

    Parameters
    ----------
    spec : SceneSpec
        The scene.
    block_size : int, optional
        Side of the square blocks in pixels (16 to 16384); the last row and
        column of blocks are cut to the scene.  Pixels do not depend on it.

    Yields
    ------
    SceneBlock
        ``(window, image (3, h, w) uint8, classes (h, w) uint8)``.

    Raises
    ------
    ConfigError
        `block_size` is out of range.

    Examples
    --------
    >>> spec = SceneSpec(64, 48, seed=1)
    >>> [b.window.width for b in iter_blocks(spec, block_size=32)]
    [32, 32, 32, 32]
    """
    size = check_block_size(block_size)
    layout = scene_layout(spec)
    for row in range(0, spec.height, size):
        for col in range(0, spec.width, size):
            w = min(size, spec.width - col)
            h = min(size, spec.height - row)
            image, classes = render(layout, col, row, w, h)
            yield SceneBlock(Window(col, row, w, h), image, classes)


def generate_arrays(
    spec: SceneSpec, *, block_size: int = 1024
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The whole scene in memory, for small scenes (tests, training chips).

    Parameters
    ----------
    spec : SceneSpec
        The scene; at most 2**26 pixels.
    block_size : int, optional
        Passed to :func:`iter_blocks`; the result does not depend on it.

    Returns
    -------
    image : numpy.ndarray of uint8, shape (3, height, width)
    classes : numpy.ndarray of uint8, shape (height, width)

    Raises
    ------
    ConfigError
        The scene is too large to hold in memory; use :func:`iter_blocks` or
        :func:`geoseg.synth.write_scene`.

    Examples
    --------
    >>> image, classes = generate_arrays(SceneSpec(96, 64, seed=2))
    >>> image.shape, classes.shape, image.dtype.name
    ((3, 64, 96), (64, 96), 'uint8')
    """
    if spec.width * spec.height > _MAX_ARRAY_PIXELS:
        raise ConfigError(
            f"a {spec.width} x {spec.height} scene is too large for generate_arrays "
            f"(max {_MAX_ARRAY_PIXELS} pixels); use iter_blocks or write_scene"
        )
    image = np.empty((3, spec.height, spec.width), np.uint8)
    classes = np.empty((spec.height, spec.width), np.uint8)
    for window, img, cls in iter_blocks(spec, block_size):
        rows, cols = window.toslices()
        image[:, rows, cols] = img
        classes[rows, cols] = cls
    return image, classes
