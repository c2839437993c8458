"""Vector layout of a synthetic scene: every object as a polygon in pixel space.

The layout is built once per :class:`~geoseg.synth.scene.SceneSpec` from the
seed alone, as a list of objects (roads, water, fields, forests, tree crowns,
buildings, ...) whose memory grows with the number of objects, not pixels.

Coordinates are *global pixel coordinates*: x is the column, y the row (y
down), and pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so
its centre is ``(col + 0.5, row + 0.5)``.  Rendering a block is rasterizing
with an integer translation, which keeps pixels identical in any blocking.
Distances given in metres in this module are converted with the pixel size.

Objects are drawn in layers; a later layer wins where objects overlap, and each
layer has one class, so the class raster is the class of the topmost object:

======  ==========================================  ==========
layer   materials                                   class
======  ==========================================  ==========
0       bare ground (no object): dry, sparse, sand  background
1       meadow, lawn                                vegetation
2       bare soil, paved yards                      background
3       crop fields, grass parcels in farmland      cropland
4       canopy: forest, hedgerows, shrubs           vegetation
5       single tree crowns                          vegetation
6       water                                       background
7       roads, dirt tracks                          background
8       road markings                               background
9       roofs                                       building
10      garden tree crowns overhanging roofs        vegetation
======  ==========================================  ==========

The classes follow geoseg's one class definition (README, "Classes"):
*building* is a roofed structure; *vegetation* is trees, shrubs and
uncultivated grass (tree crowns, forest canopy, hedgerows, shrub patches,
meadows, lawns, gardens and parks); *cropland* is cultivated parcels in
farmland at every growth stage, ploughed soil, stubble and grass leys in the
field pattern included; *background* is everything else (dry bare ground,
soil, sand, water, roads, paved areas).  Where a garden tree overhangs a
roof, the crown is what the camera sees and what the class says (vegetation).
Shadows (see
:attr:`Layout.shadow_geoms`) only darken the image and never change a class.

Towns mix detached houses (kept at least about 3.5 m apart) with *attached*
buildings that share side walls exactly: terraced rows of 3 to 10 houses along
some street frontages (European row houses, or packed informal settlements of
small, irregular houses) and small compact clusters of touching houses.
With :attr:`~geoseg.synth.scene.SceneSpec.suburb` above 0, towns also get parks
with sports grounds, garden trees and hedges hugging the houses, parked cars
and turbid water: what temperate suburbs look like from above.  Every
house of a row or cluster is a building of its own, with its own roof material,
colour and height; :attr:`Layout.instance` numbers the buildings and
:func:`building_instances` gives each one's visible outline, so touching
buildings can be told apart in the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np
import shapely
import shapely.affinity
import shapely.ops
from numpy.typing import NDArray
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from geoseg.synth.scene import SceneSpec

__all__ = [
    "BACKGROUND",
    "BUILDING",
    "CROPLAND",
    "VEGETATION",
    "Layout",
    "Material",
    "build_layout",
    "building_instance_map",
    "building_instances",
    "class_regions",
]

BACKGROUND, BUILDING, VEGETATION, CROPLAND = 0, 1, 2, 3


class Material(IntEnum):
    """How an object is textured; also fixes its layer and class."""

    GROUND = 0
    MEADOW = 1
    SOIL = 2
    PAVED = 3
    FIELD = 4
    CANOPY = 5
    CROWN = 6
    WATER = 7
    ROAD = 8
    TRACK = 9
    MARKING = 10
    ROOF_GABLE = 11
    ROOF_HIP = 12
    ROOF_FLAT = 13
    ROOF_METAL = 14
    GRASS_FIELD = 15
    CROWN_OVER = 16


M = Material
_LAYER: dict[Material, int] = {
    M.GROUND: 0,
    M.MEADOW: 1,
    M.SOIL: 2,
    M.PAVED: 2,
    M.FIELD: 3,
    M.GRASS_FIELD: 3,
    M.CANOPY: 4,
    M.CROWN: 5,
    M.WATER: 6,
    M.ROAD: 7,
    M.TRACK: 7,
    M.MARKING: 8,
    M.ROOF_GABLE: 9,
    M.ROOF_HIP: 9,
    M.ROOF_FLAT: 9,
    M.ROOF_METAL: 9,
    M.CROWN_OVER: 10,
}
_ROOF_LAYER = 9
_CLASS: dict[Material, int] = {
    m: (
        BUILDING
        if _LAYER[m] == _ROOF_LAYER
        else VEGETATION
        if m in (M.CANOPY, M.CROWN, M.CROWN_OVER, M.MEADOW)
        else CROPLAND
        if m in (M.FIELD, M.GRASS_FIELD)
        else BACKGROUND
    )
    for m in Material
}

#: Row of each per-object parameter in :attr:`Layout.params`.
CX, CY, COS, SIN, A, B, P0, P1 = range(8)

# Shadow strengths (the value burnt into the shadow raster).
SHADOW_TREE = 1
SHADOW_BUILDING = 2

_Colour = tuple[float, float, float]

_TREE_COLOURS: tuple[_Colour, ...] = (
    (62, 88, 46),
    (74, 98, 52),
    (55, 80, 46),
    (84, 104, 58),
    (68, 84, 50),
)
_CONIFER_COLOURS: tuple[_Colour, ...] = ((42, 62, 44), (48, 68, 48), (38, 58, 46))
_PITCHED_ROOFS: tuple[tuple[_Colour, float], ...] = (
    ((178, 94, 68), 0.25),
    ((162, 82, 60), 0.2),
    ((146, 62, 50), 0.12),
    ((124, 80, 64), 0.1),
    ((122, 124, 128), 0.15),
    ((72, 72, 78), 0.18),
)
_FLAT_ROOFS: tuple[tuple[_Colour, float], ...] = (
    ((150, 147, 140), 0.35),
    ((120, 120, 122), 0.2),
    ((74, 74, 78), 0.2),
    ((212, 212, 206), 0.25),
)
_METAL_ROOFS: tuple[tuple[_Colour, float], ...] = (
    ((104, 128, 152), 0.4),
    ((126, 146, 166), 0.2),
    ((166, 170, 174), 0.4),
)
_WATER_COLOURS: tuple[_Colour, ...] = ((40, 60, 64), (32, 54, 72), (46, 70, 64), (36, 52, 56))
# Rivers and ponds carrying silt or algae (suburb scenes).
_TURBID_WATER: tuple[_Colour, ...] = ((104, 98, 74), (88, 92, 66), (74, 86, 70), (118, 108, 84))
_CAR_COLOURS: tuple[tuple[_Colour, float], ...] = (
    ((226, 226, 224), 0.25),
    ((40, 40, 44), 0.25),
    ((142, 144, 148), 0.25),
    ((150, 36, 34), 0.1),
    ((40, 64, 120), 0.1),
    ((190, 184, 170), 0.05),
)
# Sports surfaces that are not grass: artificial turf (green, blue), hard courts,
# clay and gravel, running tracks (all background: sealed or bare ground).
_TURF_COLOURS: tuple[tuple[_Colour, float], ...] = (
    ((58, 112, 66), 0.45),
    ((44, 78, 150), 0.2),
    ((176, 92, 64), 0.15),
    ((168, 152, 124), 0.2),
)
_SOIL_COLOURS: tuple[_Colour, ...] = (
    (142, 118, 90),
    (124, 102, 80),
    (160, 138, 108),
    (118, 104, 90),
)


@dataclass(frozen=True, eq=False)
class Layout:
    """All objects of a scene, ready for block rendering.

    Object ``i`` (0-based) is ``geoms[i]``; its attributes sit at row ``i + 1``
    of the per-object arrays, whose row 0 describes bare ground (no object),
    so a raster of ``object index + 1`` indexes them directly.

    Attributes
    ----------
    width, height : int
        Scene size in pixels.
    pixel_size : float
        Metres per pixel.
    seed : int
        Scene seed (also salts the texture noise).
    sun : tuple of float
        Unit vector pointing towards the sun in pixel axes (x right, y down).
    geoms : numpy.ndarray of shapely geometries, shape (n,)
        Polygons in pixel coordinates, in draw order (later wins).
    tree : shapely.STRtree
        Index over `geoms`.
    material, classes : numpy.ndarray of uint8, shape (n + 1,)
        :class:`Material` and class id of each object.
    instance : numpy.ndarray of int32, shape (n + 1,)
        Building instance id of each object: >= 1 for every object that is
        part of a building (all roof parts and wings of one footprint share
        the id; each house of an attached row or cluster has its own), 0 for
        every other object and for row 0.  Ids are numbered 1, 2, ... in the
        order the buildings were generated.
    colour, colour2 : numpy.ndarray of float32, shape (n + 1, 3)
        Base RGB colours (0-255); `colour2` is a material-specific second
        colour (soil between crop rows).
    params : numpy.ndarray of float64, shape (8, n + 1)
        Material-specific parameters, rows ``CX, CY, COS, SIN, A, B, P0, P1``
        of this module (centre, orientation, half sizes or radius, extras).
    shadow_geoms : numpy.ndarray of shapely geometries, shape (m,)
        Shadow polygons, tree shadows before building shadows.
    shadow_strength : numpy.ndarray of uint8, shape (m,)
        ``SHADOW_TREE`` or ``SHADOW_BUILDING`` for each shadow polygon.
    shadow_tree : shapely.STRtree
        Index over `shadow_geoms`.
    """

    width: int
    height: int
    pixel_size: float
    seed: int
    sun: tuple[float, float]
    geoms: NDArray[np.object_]
    tree: shapely.STRtree
    material: NDArray[np.uint8]
    classes: NDArray[np.uint8]
    instance: NDArray[np.int32]
    colour: NDArray[np.float32]
    colour2: NDArray[np.float32]
    params: NDArray[np.float64]
    shadow_geoms: NDArray[np.object_]
    shadow_strength: NDArray[np.uint8]
    shadow_tree: shapely.STRtree


@dataclass(frozen=True)
class _Road:
    line: LineString
    poly: BaseGeometry
    width: float
    main: bool


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The polygonal parts of `geom` (empty list for empty or non-areal results)."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    parts: list[Polygon] = []
    for g in getattr(geom, "geoms", ()):
        parts.extend(_polygons(g))
    return parts


def _lines(geom: BaseGeometry) -> list[LineString]:
    if geom.is_empty:
        return []
    if isinstance(geom, LineString):
        return [geom]
    parts: list[LineString] = []
    for g in getattr(geom, "geoms", ()):
        parts.extend(_lines(g))
    return parts


def _rect(cx: float, cy: float, angle: float, a: float, b: float) -> Polygon:
    """Rectangle centred on (cx, cy), half length `a` along `angle`, half width `b` across."""
    ca, sa = math.cos(angle), math.sin(angle)
    ux, uy = a * ca, a * sa
    vx, vy = -b * sa, b * ca
    return Polygon(
        [
            (cx - ux - vx, cy - uy - vy),
            (cx + ux - vx, cy + uy - vy),
            (cx + ux + vx, cy + uy + vy),
            (cx - ux + vx, cy - uy + vy),
        ]
    )


def _shared_rings(
    cells: list[tuple[float, float, float, float]],
) -> list[list[tuple[float, float]]]:
    """Rings of axis-parallel rectangles ``(u0, u1, v0, v1)`` that may share walls.

    Each ring walks its rectangle's sides and also passes through every corner
    of the other rectangles that lies on them, so two rectangles with a common
    wall (equal coordinate values) both hold the shared part as one identical
    segment: once mapped to world coordinates by the same function, they touch
    exactly, with neither gaps nor overlap.
    """
    corners = [(u, v) for u0, u1, v0, v1 in cells for u in (u0, u1) for v in (v0, v1)]
    rings: list[list[tuple[float, float]]] = []
    for u0, u1, v0, v1 in cells:
        bottom = sorted({u for u, v in corners if v == v0 and u0 < u < u1})
        right = sorted({v for u, v in corners if u == u1 and v0 < v < v1})
        top = sorted({u for u, v in corners if v == v1 and u0 < u < u1}, reverse=True)
        left = sorted({v for u, v in corners if u == u0 and v0 < v < v1}, reverse=True)
        rings.append(
            [
                (u0, v0),
                *[(u, v0) for u in bottom],
                (u1, v0),
                *[(u1, v) for v in right],
                (u1, v1),
                *[(u, v1) for u in top],
                (u0, v1),
                *[(u0, v) for v in left],
            ]
        )
    return rings


def _sub_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for a (possibly negative) integer key path."""
    entropy = [seed] + [2 * k if k >= 0 else -2 * k - 1 for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


class _GridIndex:
    """Insert-as-you-go spatial hash for overlap tests while placing objects."""

    def __init__(self, cell: float) -> None:
        self.cell = cell
        self.cells: dict[tuple[int, int], list[BaseGeometry]] = {}

    def _keys(self, geom: BaseGeometry) -> Iterator[tuple[int, int]]:
        x0, y0, x1, y1 = geom.bounds
        c = self.cell
        for i in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
            for j in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                yield i, j

    def insert(self, geom: BaseGeometry) -> None:
        for key in self._keys(geom):
            self.cells.setdefault(key, []).append(geom)

    def hits(self, geom: BaseGeometry) -> bool:
        for key in self._keys(geom):
            found = self.cells.get(key)
            if found and bool(shapely.intersects(geom, found).any()):
                return True
        return False


class _Objects:
    """Accumulates objects and shadows before they are sorted into a Layout."""

    def __init__(self) -> None:
        self.geoms: list[BaseGeometry] = []
        self.material: list[Material] = []
        self.colour: list[_Colour] = []
        self.colour2: list[_Colour] = []
        self.params: list[tuple[float, ...]] = []
        self.instance: list[int] = []
        self.shadows: list[BaseGeometry] = []
        self.strength: list[int] = []

    def add(
        self,
        geom: BaseGeometry,
        material: Material,
        colour: _Colour,
        colour2: _Colour | None = None,
        *,
        cx: float = 0.0,
        cy: float = 0.0,
        angle: float = 0.0,
        a: float = 0.0,
        b: float = 0.0,
        p0: float = 0.0,
        p1: float = 0.0,
        instance: int = 0,
    ) -> None:
        if geom.is_empty or geom.area <= 0.0:
            return
        self.geoms.append(geom)
        self.material.append(material)
        self.colour.append(colour)
        self.colour2.append(colour if colour2 is None else colour2)
        self.params.append((cx, cy, math.cos(angle), math.sin(angle), a, b, p0, p1))
        self.instance.append(instance)

    def shadow(self, geom: BaseGeometry, strength: int) -> None:
        if not geom.is_empty:
            self.shadows.append(geom)
            self.strength.append(strength)


def _scaled(rng: np.random.Generator, colour: _Colour, spread: float = 0.08) -> _Colour:
    f = rng.uniform(1.0 - spread, 1.0 + spread)
    return (colour[0] * f, colour[1] * f, colour[2] * f)


def _pick(rng: np.random.Generator, options: tuple[tuple[_Colour, float], ...]) -> _Colour:
    weights = np.array([w for _, w in options])
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def _mix(c1: _Colour, c2: _Colour, t: float) -> _Colour:
    return (
        c1[0] + (c2[0] - c1[0]) * t,
        c1[1] + (c2[1] - c1[1]) * t,
        c1[2] + (c2[2] - c1[2]) * t,
    )


class _Generator:
    """Builds the objects of one scene; one instance per :func:`build_layout` call."""

    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.k = 1.0 / spec.pixel_size
        self.w = float(spec.width)
        self.h = float(spec.height)
        self.rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5CE7E]))
        self.scene = box(0.0, 0.0, self.w, self.h)
        pad = self.m(80.0)
        self.world = box(-pad, -pad, self.w + pad, self.h + pad)
        azimuth = math.radians(self.rng.uniform(125.0, 235.0))
        elevation = math.radians(self.rng.uniform(48.0, 64.0))
        self.sun = (math.sin(azimuth), -math.cos(azimuth))
        self.shadow_px_per_m = self.k / math.tan(elevation)
        self.objs = _Objects()
        self._yards: list[BaseGeometry] = []
        self.roads: list[_Road] = []
        self.water: list[BaseGeometry] = []
        self.buildings = _GridIndex(self.m(60.0))
        self.instances = 0  # building instance ids handed out so far
        self.road_tree = shapely.STRtree([])
        self.water_tree = shapely.STRtree([])
        self.obstacles: list[BaseGeometry] = []
        self.obstacle_tree = shapely.STRtree([])

    def m(self, metres: float) -> float:
        """Metres to pixels."""
        return metres * self.k

    def shadow_offset(self, height_m: float) -> tuple[float, float]:
        length = height_m * self.shadow_px_per_m
        return -self.sun[0] * length, -self.sun[1] * length

    # ------------------------------------------------------------------ build

    def run(self) -> None:
        self.main_roads()
        self.add_water()
        cells, uses, nearest = self.zones()
        # Neighbouring zones of one use (and, for towns and farms, one main road)
        # merge into a region, so street grids and field grids run on across
        # zone borders instead of stopping at a Voronoi edge.
        groups: dict[tuple[str, int], list[int]] = {}
        for i, use in enumerate(uses):
            key = (use, nearest[i] if use in ("town", "farm") else -1)
            groups.setdefault(key, []).append(i)
        regions = [
            (use, road, region)
            for (use, road), members in groups.items()
            for region in _polygons(shapely.union_all([cells[i] for i in members]))
        ]
        streets = {
            i: self.streets(r, road) for i, (use, road, r) in enumerate(regions) if use == "town"
        }
        self.index_obstacles()
        for i, (use, road, region) in enumerate(regions):
            if use == "town":
                self.town(region, road, streets[i])
            elif use == "farm":
                self.farmland(region, road)
            elif use == "forest":
                self.forest(region)
            elif self.spec.suburb > 0 and self.rng.random() < 0.4 * self.spec.suburb:
                self.sports_ground(region)
            else:
                self.open_land(region)
        self.avenues()
        self.markings()

    def finish(self) -> Layout:
        o = self.objs
        # Rasterizing needs valid polygons; repair any (none are expected).
        fixed = [
            g if g.is_valid else shapely.union_all(_polygons(shapely.make_valid(g)))
            for g in o.geoms
        ]
        order = sorted(
            (i for i, g in enumerate(fixed) if not g.is_empty),
            key=lambda i: (_LAYER[o.material[i]], i),
        )
        geoms = np.empty(len(order), dtype=object)
        geoms[:] = [fixed[i] for i in order]
        mats = [M.GROUND] + [o.material[i] for i in order]
        ground: _Colour = (0.0, 0.0, 0.0)  # bare ground is textured from noise alone
        colour = np.array([ground] + [o.colour[i] for i in order], np.float32)
        colour2 = np.array([ground] + [o.colour2[i] for i in order], np.float32)
        params = np.array([(0.0,) * 8] + [o.params[i] for i in order], np.float64)
        sorder = sorted(range(len(o.shadows)), key=lambda i: (o.strength[i], i))
        shadows = np.empty(len(sorder), dtype=object)
        shadows[:] = [o.shadows[i] for i in sorder]
        return Layout(
            width=self.spec.width,
            height=self.spec.height,
            pixel_size=self.spec.pixel_size,
            seed=self.spec.seed,
            sun=self.sun,
            geoms=geoms,
            tree=shapely.STRtree(geoms),
            material=np.array([int(m) for m in mats], np.uint8),
            classes=np.array([_CLASS[m] for m in mats], np.uint8),
            instance=np.array([0] + [o.instance[i] for i in order], np.int32),
            colour=colour.reshape(-1, 3),
            colour2=colour2.reshape(-1, 3),
            params=np.ascontiguousarray(params.reshape(-1, 8).T),
            shadow_geoms=shadows,
            shadow_strength=np.array([o.strength[i] for i in sorder], np.uint8),
            shadow_tree=shapely.STRtree(shadows),
        )

    # ------------------------------------------------------------------ roads and water

    def _wavy_line(
        self, axis: int, pos: float, slope: float, amp: float, wavelength: float
    ) -> LineString:
        """A line across the scene, along x (axis 0) or y (axis 1), gently bent."""
        rng = self.rng
        length = self.w if axis == 0 else self.h
        ext = self.m(120.0)
        n = max(16, int((length + 2 * ext) / self.m(8.0)))
        t = np.linspace(-ext, length + ext, n)
        phase = rng.uniform(0, 2 * math.pi)
        phase2 = rng.uniform(0, 2 * math.pi)
        off = (
            pos
            + (t - length / 2) * slope
            + amp * np.sin(2 * math.pi * t / wavelength + phase)
            + 0.3 * amp * np.sin(4.7 * math.pi * t / wavelength + phase2)
        )
        coords = np.column_stack([t, off] if axis == 0 else [off, t])
        return LineString(coords)

    def main_roads(self) -> None:
        rng = self.rng
        spacing = self.m(self.spec.road_spacing)
        for axis in (0, 1):
            length = self.w if axis == 0 else self.h
            across = self.h if axis == 0 else self.w
            n = max(1, round(across / spacing + rng.uniform(-0.4, 0.4)))
            for i in range(n):
                pos = (i + rng.uniform(0.25, 0.75)) * across / n
                slope = math.tan(rng.uniform(-0.3, 0.3))
                amp = rng.uniform(0.0, 0.04) * length
                line = self._wavy_line(axis, pos, slope, amp, length * rng.uniform(1.2, 3.0))
                major = (axis == 0 and i == 0) or rng.random() < 0.3
                width = self.m(rng.uniform(7.0, 10.0) if major else rng.uniform(5.0, 6.5))
                self.add_road(line, width, main=True)

    def add_road(self, line: LineString, width: float, *, main: bool, dirt: bool = False) -> None:
        rng = self.rng
        poly = line.buffer(width / 2, cap_style="flat", join_style="round", quad_segs=4)
        if dirt:
            self.objs.add(poly, M.TRACK, _scaled(rng, (150, 134, 106), 0.06))
            return
        grey = rng.uniform(88.0, 122.0)
        tint = rng.uniform(-3.0, 3.0)
        self.objs.add(poly, M.ROAD, (grey + tint, grey + 1.0, grey + 3.0 - tint))
        self.roads.append(_Road(line, poly, width, main))

    def markings(self) -> None:
        """Dashed centre lines on the wider roads, skipped across junctions."""
        half = max(0.55, self.m(0.075))
        dash, period = self.m(3.0), self.m(9.0)
        pieces, owner = self.chop([r.poly for r in self.roads])
        tree = shapely.STRtree(pieces)
        for ri, road in enumerate(self.roads):
            if not road.main or road.width < self.m(6.5):
                continue
            for piece in _lines(road.line.intersection(self.scene.buffer(self.m(10.0)))):
                starts = np.arange(0.0, piece.length - dash, period)
                if starts.size == 0:
                    continue
                mids = shapely.line_interpolate_point(piece, starts + dash / 2)
                hit, other = tree.query(mids, predicate="intersects")
                crossing = np.zeros(starts.size, bool)
                crossing[hit[owner[other] != ri]] = True
                ends = np.stack(
                    [
                        shapely.get_coordinates(shapely.line_interpolate_point(piece, starts)),
                        shapely.get_coordinates(
                            shapely.line_interpolate_point(piece, starts + dash)
                        ),
                    ],
                    axis=1,
                )
                for seg in shapely.linestrings(ends[~crossing]):
                    self.objs.add(
                        seg.buffer(half, cap_style="flat"), M.MARKING, (226.0, 226.0, 220.0)
                    )

    def chop(self, geoms: list[BaseGeometry]) -> tuple[list[BaseGeometry], NDArray[np.intp]]:
        """Cut long polygons into pieces of at most 100 m square, and each piece's source.

        Index queries with an intersects predicate test every vertex of a hit,
        so kilometre-long roads and rivers are indexed piecewise.
        """
        size = self.m(100.0)
        pieces: list[BaseGeometry] = []
        owner: list[int] = []
        for i, g in enumerate(geoms):
            x0, y0, x1, y1 = g.bounds
            if x1 - x0 <= size and y1 - y0 <= size:
                pieces.append(g)
                owner.append(i)
                continue
            xs = np.arange(x0, x1, size)[None, :]
            ys = np.arange(y0, y1, size)[:, None]
            cells = shapely.box(xs, ys, xs + size, ys + size).ravel()
            shapely.prepare(g)
            cut = shapely.intersection(cells[shapely.intersects(g, cells)], g)
            cut = cut[shapely.area(cut) > 0]
            pieces.extend(cut)
            owner.extend([i] * len(cut))
        return pieces, np.array(owner, np.intp)

    def blob(
        self, cx: float, cy: float, rx: float, ry: float, angle: float, rough: float = 0.15
    ) -> Polygon:
        """A star-shaped, smoothly perturbed ellipse (always a valid polygon)."""
        rng = self.rng
        n = 40
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        r = np.ones(n)
        for harmonic in range(2, 6):
            r += rng.uniform(0, rough / harmonic * 2) * np.cos(
                harmonic * t + rng.uniform(0, 2 * math.pi)
            )
        r = np.maximum(r, 0.3)
        ex, ey = rx * r * np.cos(t), ry * r * np.sin(t)
        ca, sa = math.cos(angle), math.sin(angle)
        return Polygon(np.column_stack([cx + ex * ca - ey * sa, cy + ex * sa + ey * ca]))

    def add_water(self) -> None:
        rng = self.rng
        fraction = self.spec.water_fraction
        if fraction <= 0:
            return
        target = fraction * self.w * self.h
        if rng.random() < 0.4 + fraction:
            axis = int(rng.integers(2))
            length = self.w if axis == 0 else self.h
            across = self.h if axis == 0 else self.w
            width = float(np.clip(0.7 * target / length, self.m(8.0), self.m(70.0)))
            line = self._wavy_line(
                axis,
                rng.uniform(0.2, 0.8) * across,
                math.tan(rng.uniform(-0.4, 0.4)),
                rng.uniform(0.04, 0.12) * length,
                length * rng.uniform(0.5, 1.1),
            )
            river = line.buffer(width / 2, quad_segs=6)
            self.add_water_body(river)
            target -= river.intersection(self.scene).area
        road_polys = [r.poly for r in self.roads]
        biggest = (0.22 * min(self.w, self.h)) ** 2 * math.pi
        smallest = math.pi * self.m(12.0) ** 2
        for _ in range(60):
            if target < smallest:
                break
            area = min(target, rng.uniform(0.3, 1.0) * biggest)
            aspect = rng.uniform(0.5, 1.0)
            rx = math.sqrt(area / math.pi / aspect)
            lake = self.blob(
                rng.uniform(0, self.w),
                rng.uniform(0, self.h),
                rx,
                rx * aspect,
                rng.uniform(0, math.pi),
            )
            if any(lake.intersects(p) for p in road_polys) or any(
                lake.intersects(p) for p in self.water
            ):
                continue
            self.add_water_body(lake)
            target -= lake.intersection(self.scene).area

    def add_water_body(self, poly: BaseGeometry) -> None:
        colour = _WATER_COLOURS[int(self.rng.integers(4))]
        if self.spec.suburb > 0 and self.rng.random() < 0.5:
            colour = _TURBID_WATER[int(self.rng.integers(len(_TURBID_WATER)))]
        self.objs.add(poly, M.WATER, _scaled(self.rng, colour))
        self.water.append(poly)

    # ------------------------------------------------------------------ land use

    def zones(self) -> tuple[list[BaseGeometry], list[str], list[int]]:
        """Voronoi land-use zones, their use and the index of their nearest main road."""
        rng, spec = self.rng, self.spec
        size = self.m(min(250.0, max(60.0, min(self.w, self.h) / self.k / 2)))
        nx, ny = math.ceil(self.w / size), math.ceil(self.h / size)
        pts = [
            (
                (i + 0.5 + rng.uniform(-0.35, 0.35)) * size,
                (j + 0.5 + rng.uniform(-0.35, 0.35)) * size,
            )
            for j in range(-1, ny + 1)
            for i in range(-1, nx + 1)
        ]
        vor = shapely.voronoi_polygons(MultiPoint(pts), extend_to=self.world, ordered=True)
        cells = [c.intersection(self.world) for c in vor.geoms]
        cells = [
            c for c in cells if c.intersects(self.scene) and c.intersection(self.scene).area > 0
        ]
        areas = np.array([c.intersection(self.scene).area for c in cells])
        main_lines = [r.line for r in self.roads]
        nearest: list[int] = []
        dist: list[float] = []
        for c in cells:
            d = shapely.distance(main_lines, c.centroid)
            nearest.append(int(np.argmin(d)))
            dist.append(float(d.min()))

        rest = 1.0 - spec.field_fraction
        w_town = spec.building_density
        w_forest = 0.6 * spec.tree_density
        w_open = 0.3
        total = w_town + w_forest + w_open
        shares = {
            "town": rest * w_town / total,
            "farm": spec.field_fraction,
            "forest": rest * w_forest / total,
        }
        uses = ["open"] * len(cells)
        full = areas.sum()
        by_road = list(np.argsort(np.array(dist) + rng.uniform(0, size * 0.5, len(cells))))
        shuffled = list(rng.permutation(len(cells)))
        for use, candidates in (("town", by_road), ("farm", shuffled), ("forest", shuffled)):
            goal = shares[use] * full
            if goal <= 0:
                continue
            got = 0.0
            for c in candidates:
                if uses[c] != "open":
                    continue
                if got > 0 and got >= goal - 0.5 * areas[c]:
                    break
                if got == 0 and shares[use] < 0.04 and areas[c] > 2 * goal:
                    break
                uses[c] = use
                got += areas[c]
        return cells, uses, nearest

    def road_angle(self, road: _Road, near: Point) -> float:
        """Direction (radians) of `road` at its point closest to `near`."""
        line = road.line
        s = line.project(near)
        d = self.m(10.0)
        p0 = line.interpolate(max(s - d, 0.0))
        p1 = line.interpolate(min(s + d, line.length))
        return math.atan2(p1.y - p0.y, p1.x - p0.x)

    def streets(self, cell: BaseGeometry, road_index: int) -> list[_Road]:
        """A grid of local streets inside a town zone, aligned with its main road."""
        rng = self.rng
        theta = self.road_angle(self.roads[road_index], cell.centroid)
        spacing = self.m(rng.uniform(75.0, 110.0))
        inner = cell.buffer(-self.m(4.0))
        if inner.is_empty:
            return []
        c = cell.centroid
        reach = math.hypot(*(np.subtract(cell.bounds[2:], cell.bounds[:2])))
        made: list[_Road] = []
        for angle in (theta, theta + math.pi / 2):
            ux, uy = math.cos(angle), math.sin(angle)
            nx_, ny_ = -uy, ux
            off = -reach / 2 + rng.uniform(0, spacing)
            while off < reach / 2:
                if rng.random() < 0.7:
                    px, py = c.x + nx_ * off, c.y + ny_ * off
                    line = LineString(
                        [(px - ux * reach, py - uy * reach), (px + ux * reach, py + uy * reach)]
                    )
                    piece = line.intersection(inner)
                    for w in self.water:
                        piece = piece.difference(w.buffer(self.m(5.0)))
                    for seg in _lines(piece):
                        if seg.length > self.m(40.0):
                            before = len(self.roads)
                            self.add_road(seg, self.m(rng.uniform(4.5, 6.0)), main=False)
                            made.extend(self.roads[before:])
                off += spacing
        return made

    def index_obstacles(self) -> None:
        """Index roads and water for placement tests; verge-buffered copies for fields."""
        self.road_tree = shapely.STRtree(self.chop([r.poly for r in self.roads])[0])
        self.water_tree = shapely.STRtree(self.chop(self.water)[0])
        verge = self.m(2.5)
        self.obstacles = self.chop(
            [r.poly.buffer(verge, quad_segs=2) for r in self.roads]
            + [w.buffer(self.m(4.0), quad_segs=2) for w in self.water]
        )[0]
        self.obstacle_tree = shapely.STRtree(self.obstacles)

    def clear(self, geom: BaseGeometry) -> BaseGeometry:
        """`geom` minus the verge-buffered roads and water."""
        hits = self.obstacle_tree.query(geom, predicate="intersects")
        if len(hits) == 0:
            return geom
        rest = geom.difference(shapely.union_all([self.obstacles[i] for i in hits]))
        keep = [p for p in _polygons(rest) if p.area >= self.m(4.0) ** 2]
        return shapely.union_all(keep) if keep else Polygon()

    def free(self, geom: BaseGeometry, *, buildings: bool = True) -> bool:
        """Whether `geom` touches no road, water body nor (optionally) building."""
        if len(self.road_tree.query(geom, predicate="intersects")):
            return False
        if len(self.water_tree.query(geom, predicate="intersects")):
            return False
        return not (buildings and self.buildings.hits(geom))

    # ------------------------------------------------------------------ trees

    def crown(
        self,
        cx: float,
        cy: float,
        r: float,
        colour: _Colour,
        height_m: float,
        *,
        over: BaseGeometry | None = None,
    ) -> bool:
        """Add one round-ish tree crown of radius `r` pixels if the spot is free.

        With `over` (house footprints nearby) the crown may stand against and
        overhang those roofs: it is then drawn above them where it touches one,
        and only roads and water keep it away.
        """
        rng = self.rng
        n = 14
        t = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi)
        rr = r * (1.0 + rng.uniform(-0.08, 0.08, n))
        xy = np.column_stack([cx + rr * np.cos(t), cy + rr * np.sin(t)])
        poly = Polygon(xy)
        if not self.free(poly, buildings=over is None):
            return False
        material = M.CROWN
        if over is not None and poly.intersects(over):
            material = M.CROWN_OVER
        self.objs.add(poly, material, colour, cx=cx, cy=cy, a=r)
        # The crown floats above the ground: its shadow is the crown moved by the
        # shadow of its centre height (trunks are too thin to matter).
        dx, dy = self.shadow_offset(0.7 * height_m)
        self.objs.shadow(shapely.affinity.translate(poly, dx, dy), SHADOW_TREE)
        return True

    def tree_colour(self, conifer: bool = False) -> _Colour:
        palette = _CONIFER_COLOURS if conifer else _TREE_COLOURS
        return _scaled(self.rng, palette[int(self.rng.integers(len(palette)))], 0.1)

    def random_tree(self, cx: float, cy: float, scale: float = 1.0) -> bool:
        """Add a deciduous (mostly) or conifer tree of random size if the spot is free."""
        rng = self.rng
        r_m = rng.uniform(1.8, 4.8) * scale
        return self.crown(
            cx,
            cy,
            self.m(r_m),
            self.tree_colour(rng.random() < 0.2),
            r_m * rng.uniform(1.8, 2.8) + 2.0,
        )

    def canopy(
        self,
        poly: BaseGeometry,
        colour: _Colour,
        cell_m: float,
        height_m: float,
        *,
        conifer: bool = False,
    ) -> None:
        """A canopy patch (forest, hedgerow, shrubs) textured as packed crowns."""
        cell = self.m(round(cell_m * 2.0) / 2.0)
        self.objs.add(poly, M.CANOPY, colour, p0=cell, p1=1.0 if conifer else 0.0)
        dx, dy = self.shadow_offset(height_m)
        steps = max(1, min(6, math.ceil(math.hypot(dx, dy) / self.m(3.0))))
        moved = [
            shapely.affinity.translate(poly, dx * s / steps, dy * s / steps)
            for s in range(1, steps + 1)
        ]
        self.objs.shadow(shapely.union_all(moved), SHADOW_TREE)

    # ------------------------------------------------------------------ buildings

    def plan(self, large: bool) -> tuple[list[tuple[float, float, float, float]], float, float]:
        """Parts of a building in a local frame: (cu, cv, half_u, half_v) in metres.

        u runs along the street, v away from it; the front wall is at v = 0.
        Returns the parts, the frontage (extent along u) and the depth.
        """
        rng = self.rng
        if large:
            length, depth = rng.uniform(18.0, 40.0), rng.uniform(12.0, 28.0)
        elif rng.random() < 0.12:
            length, depth = rng.uniform(6.0, 8.0), rng.uniform(4.5, 6.5)
        elif rng.random() < 0.3:
            length, depth = rng.uniform(7.5, 11.0), rng.uniform(10.0, 16.0)
        else:
            length, depth = rng.uniform(9.0, 16.0), rng.uniform(7.5, 11.5)
        parts = [(0.0, depth / 2, length / 2, depth / 2)]
        shape = rng.random()
        if length >= 9.0 and shape < 0.4:
            wing_w = rng.uniform(4.5, max(5.0, min(0.5 * length, 16.0 if large else 8.0)))
            wing_l = rng.uniform(4.0, min(14.0 if large else 8.0, 40.0 - depth))
            if shape < 0.25:
                cu = rng.choice([-1.0, 1.0]) * (length - wing_w) / 2
            else:
                cu = rng.uniform(-0.15, 0.15) * length
            parts.append((cu, depth - 0.5 + (wing_l + 0.5) / 2, wing_w / 2, (wing_l + 0.5) / 2))
            depth += wing_l
        return parts, length, depth

    def building(
        self,
        plan: tuple[list[tuple[float, float, float, float]], float, float],
        anchor: tuple[float, float],
        angle: float,
        inside: BaseGeometry,
        large: bool,
    ) -> BaseGeometry | None:
        """Place `plan` with its front-centre at `anchor` if it fits; return the footprint."""
        parts, _, _ = plan
        ux, uy = math.cos(angle), math.sin(angle)
        vx, vy = -uy, ux
        rects = []
        for cu, cv, hu, hv in parts:
            cx = anchor[0] + self.m(cu) * ux + self.m(cv) * vx
            cy = anchor[1] + self.m(cu) * uy + self.m(cv) * vy
            a, b, ang = self.m(hu), self.m(hv), angle
            if b > a:
                a, b, ang = b, a, angle + math.pi / 2
            rects.append((_rect(cx, cy, ang, a, b), cx, cy, ang, a, b))
        footprint = shapely.union_all([r[0] for r in rects])
        if not inside.contains(footprint):
            return None
        if not self.free(footprint.buffer(self.m(1.5), quad_segs=2)):
            return None
        material, colour, height = self.roof("large" if large else "house")
        self.add_building(rects, material, colour, height)
        self.buildings.insert(footprint.buffer(self.m(2.0), quad_segs=2))
        return footprint

    def roof(self, kind: str, spread: float = 0.07) -> tuple[Material, _Colour, float]:
        """Roof material, colour and height (metres) of one building.

        `kind` is ``"large"`` (halls: metal or flat), ``"house"`` (detached),
        ``"terrace"`` (row houses: mostly pitched) or ``"informal"`` (small
        self-built houses: mostly flat concrete or metal sheets, some tiles).
        """
        rng = self.rng
        roll = rng.random()
        if kind == "large":
            material = M.ROOF_METAL if roll < 0.45 else M.ROOF_FLAT
            colour = _pick(rng, _METAL_ROOFS if roll < 0.45 else _FLAT_ROOFS)
            height = rng.uniform(5.0, 10.0)
        elif kind == "house":
            material = M.ROOF_GABLE if roll < 0.5 else M.ROOF_HIP if roll < 0.75 else M.ROOF_FLAT
            colour = _pick(rng, _FLAT_ROOFS if material == M.ROOF_FLAT else _PITCHED_ROOFS)
            height = rng.uniform(3.5, 7.5)
        elif kind == "terrace":
            material = M.ROOF_GABLE if roll < 0.62 else M.ROOF_HIP if roll < 0.72 else M.ROOF_FLAT
            colour = _pick(rng, _FLAT_ROOFS if material == M.ROOF_FLAT else _PITCHED_ROOFS)
            height = rng.uniform(6.0, 11.0)
        else:
            material = M.ROOF_FLAT if roll < 0.55 else M.ROOF_METAL if roll < 0.8 else M.ROOF_GABLE
            colour = _pick(
                rng,
                {M.ROOF_FLAT: _FLAT_ROOFS, M.ROOF_METAL: _METAL_ROOFS}.get(
                    material, _PITCHED_ROOFS
                ),
            )
            height = rng.uniform(3.0, 9.0)
        return material, _scaled(rng, colour, spread), height

    def add_building(
        self,
        rects: list[tuple[Polygon, float, float, float, float, float]],
        material: Material,
        colour: _Colour,
        height: float,
    ) -> int:
        """Add one building's roof parts ``(polygon, cx, cy, angle, a, b)`` and shadows.

        Returns the building's new instance id (shared by all its parts).
        """
        self.instances += 1
        corrugation = self.m(self.rng.uniform(0.9, 1.6))
        dx, dy = self.shadow_offset(height)
        for poly, cx, cy, ang, a, b in rects:
            self.objs.add(
                poly,
                material,
                colour,
                cx=cx,
                cy=cy,
                angle=ang,
                a=a,
                b=b,
                p0=corrugation,
                instance=self.instances,
            )
            xy = np.asarray(poly.exterior.coords)
            self.objs.shadow(
                shapely.convex_hull(MultiPoint(np.vstack([xy, xy + np.array([dx, dy])]))),
                SHADOW_BUILDING,
            )
        return self.instances

    def attached(
        self,
        cells: list[tuple[float, float, float, float]],
        anchor: tuple[float, float],
        angle: float,
        inside: BaseGeometry,
        kind: str,
        *,
        row: bool,
    ) -> list[Polygon]:
        """Place houses that share walls; return the footprints placed.

        `cells` are rectangles ``(u0, u1, v0, v1)`` in metres in the frame
        with origin `anchor`, u along `angle` and v to its left (away from the
        street); cells meant to touch share exact coordinate values, so their
        walls become identical segments (see :func:`_shared_rings`).  The group
        keeps the clearance of a single building from roads, water and other
        buildings, while its own houses never reject each other.  With `row`,
        the longest run of consecutive cells that fit is placed (a row cut
        short by a junction or a neighbour); otherwise all cells or none.
        """
        rng = self.rng
        k = self.k
        ux, uy = math.cos(angle), math.sin(angle)
        vx, vy = -uy, ux

        def at(u: float, v: float) -> tuple[float, float]:
            return anchor[0] + (u * k) * ux + (v * k) * vx, anchor[1] + (u * k) * uy + (v * k) * vy

        polys = [Polygon([at(u, v) for u, v in ring]) for ring in _shared_rings(cells)]

        def fits(geom: BaseGeometry) -> bool:
            return bool(inside.contains(geom)) and self.free(geom.buffer(self.m(1.5), quad_segs=2))

        first, n = 0, 0
        if row:
            run = 0
            for i, poly in enumerate(polys):
                run = run + 1 if fits(poly) else 0
                if run > n:
                    first, n = i + 1 - run, run
        elif fits(shapely.union_all(polys)):
            n = len(polys)
        if n == 0:
            return []
        previous: _Colour | None = None
        chosen = slice(first, first + n)
        for (u0, u1, v0, v1), poly in zip(cells[chosen], polys[chosen], strict=True):
            material, colour, height = self.roof(kind, 0.12 if kind == "informal" else 0.07)
            # Neighbours usually differ, but some terraces share one roof colour.
            if previous is not None and material != M.ROOF_METAL and rng.random() < 0.25:
                colour = _scaled(rng, previous, 0.03)
            previous = colour
            cx, cy = at((u0 + u1) / 2, (v0 + v1) / 2)
            a, b, ang = (u1 - u0) / 2 * k, (v1 - v0) / 2 * k, angle
            # Gables of a terrace run along the street; other roofs along the long side.
            if b > a and not (kind == "terrace" and material == M.ROOF_GABLE):
                a, b, ang = b, a, angle + math.pi / 2
            self.add_building([(poly, cx, cy, ang, a, b)], material, colour, height)
        placed = polys[chosen]
        self.buildings.insert(shapely.union_all(placed).buffer(self.m(2.0), quad_segs=2))
        return placed

    def terrace(
        self,
        seg: LineString,
        road: _Road,
        side: float,
        s: float,
        informal: bool,
        inside: BaseGeometry,
        occupancy: float,
    ) -> tuple[float, list[Polygon]]:
        """A row of 3 to 10 attached houses fronting `seg` from arc length `s` on one side.

        Terraced rows have similar widths (5-8 m), depths and a common
        building line; informal rows are small houses (3.5-7.5 m wide) of
        irregular depth and front line.  Returns the frontage the row takes up
        including the gap to the next building (pixels), and its footprints.
        """
        rng, spec = self.rng, self.spec
        n = int(rng.integers(3, 11))
        if informal:
            widths = rng.uniform(3.5, 7.5, n)
            depths = rng.uniform(6.0, 10.0) * rng.uniform(0.75, 1.3, n)
            fronts = rng.uniform(0.0, 1.5, n)
            setback = rng.uniform(1.8, 4.0)
        else:
            widths = rng.uniform(5.0, 7.5) * rng.uniform(0.9, 1.12, n)
            depths = rng.uniform(8.0, 12.0) * rng.uniform(0.92, 1.1, n)
            fronts = rng.uniform(0.0, 0.6, n)
            setback = rng.uniform(2.0, 7.0)
        gap = self.m(4.0 + rng.uniform(0.0, 8.0) * (1.2 - spec.building_density))
        edges = [0.0, *np.cumsum(widths).tolist()]
        used = self.m(edges[-1]) + gap
        # Houses that end before the segment does.
        fit = sum(1 for e in edges[1:] if self.m(e) <= seg.length - s)
        if fit == 0 or rng.random() >= occupancy:
            return used, []
        # The row is straight, along the chord of the frontage it covers.
        p = seg.interpolate(s)
        q = seg.interpolate(s + self.m(edges[fit]))
        angle = math.atan2(q.y - p.y, q.x - p.x)
        start = p
        if side < 0:
            angle += math.pi
            start = q
        dist = road.width / 2 + self.m(setback)
        anchor = (start.x - math.sin(angle) * dist, start.y + math.cos(angle) * dist)
        cells = [
            (edges[i], edges[i + 1], float(fronts[i]), float(fronts[i] + depths[i]))
            for i in range(fit)
        ]
        kind = "informal" if informal else "terrace"
        return used, self.attached(cells, anchor, angle, inside, kind, row=True)

    def cluster(
        self, anchor: tuple[float, float], angle: float, inside: BaseGeometry
    ) -> list[Polygon]:
        """A compact block of 2 to 6 small touching houses in two staggered rows.

        The front row's walls and the back row's walls fall in different
        places (a brick pattern) and the back row has ragged ends, depths and
        sometimes a missing house, as in dense informal settlements.
        """
        rng = self.rng
        ncol = int(rng.integers(2, 4))
        edges = [0.0, *np.cumsum(rng.uniform(4.0, 7.5, ncol)).tolist()]
        total = edges[-1]
        depth = float(rng.uniform(5.0, 9.0))
        cells = [
            (edges[i], edges[i + 1], -float(rng.uniform(0.0, 1.2)), depth) for i in range(ncol)
        ]
        u = float(rng.uniform(-1.5, 1.5))
        end = total + float(rng.uniform(-1.5, 1.5))
        back: list[tuple[float, float, float, float]] = []
        while end - u >= 3.0:
            w = float(rng.uniform(4.0, 7.5))
            if end - (u + w) < 3.0:
                w = end - u
            back.append((u, u + w, depth, depth + float(rng.uniform(4.5, 8.5))))
            u = back[-1][1]
        if len(back) > 1 and rng.random() < 0.35:
            back.pop(int(rng.integers(len(back))))
        shift = self.m(total / 2)
        origin = (anchor[0] - math.cos(angle) * shift, anchor[1] - math.sin(angle) * shift)
        return self.attached(cells + back, origin, angle, inside, "informal", row=False)

    def town(self, cell: BaseGeometry, road_index: int, streets: list[_Road]) -> None:
        rng, spec = self.rng, self.spec
        industrial = rng.random() < 0.2
        inside = cell.buffer(-self.m(1.0))
        occupancy = 0.4 + 0.6 * spec.building_density
        # Share of street frontages built up with attached rows, and of the
        # backland placements that become compact clusters of touching houses.
        row_share = 0.15 + 0.25 * spec.building_density
        cluster_share = 0.04 + 0.12 * spec.building_density
        houses: list[BaseGeometry] = []
        self._yards = []
        if spec.suburb > 0:
            self.parks(cell, inside)
        frontage = [r for r in self.roads if r.main and r.line.intersects(cell)] + streets
        for road in frontage:
            for seg in _lines(road.line.intersection(cell)):
                if seg.length < self.m(15.0):
                    continue
                for side in (1.0, -1.0):
                    terraced = not industrial and rng.random() < row_share
                    informal = terraced and rng.random() < 0.4
                    s = self.m(rng.uniform(0.0, 10.0))
                    while s < seg.length:
                        if terraced and rng.random() < 0.85:
                            used, row = self.terrace(
                                seg, road, side, s, informal, inside, occupancy
                            )
                            if row and not informal:
                                houses.append(shapely.union_all(row))
                            s += used
                            continue
                        large = industrial or rng.random() < 0.06
                        plan = self.plan(large)
                        front = self.m(plan[1])
                        gap = self.m(rng.uniform(8.0, 20.0) if large else rng.uniform(2.0, 7.0)) * (
                            1.5 - spec.building_density
                        )
                        mid = s + front / 2
                        if mid < seg.length and rng.random() < occupancy:
                            p = seg.interpolate(mid)
                            q = seg.interpolate(min(mid + 1.0, seg.length))
                            r0 = seg.interpolate(max(mid - 1.0, 0.0))
                            angle = math.atan2(q.y - r0.y, q.x - r0.x)
                            if side < 0:
                                angle += math.pi
                            setback = self.m(
                                rng.uniform(6.0, 14.0) if large else rng.uniform(3.0, 9.0)
                            )
                            dist = road.width / 2 + setback
                            vx, vy = -math.sin(angle), math.cos(angle)
                            anchor = (p.x + vx * dist, p.y + vy * dist)
                            angle += rng.uniform(-0.03, 0.03)
                            fp = self.building(plan, anchor, angle, inside, large)
                            if fp is not None:
                                self.yard(fp, anchor, angle, road.width / 2, setback, large, inside)
                                if not large:
                                    houses.append(fp)
                        s += front + gap
        theta = self.road_angle(self.roads[road_index], cell.centroid)
        x0, y0, x1, y1 = cell.bounds
        tries = int(cell.area / self.m(1.0) ** 2 / 400.0 * spec.building_density)
        for _ in range(tries):
            px, py = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if not inside.contains(Point(px, py)):
                continue
            if not industrial and rng.random() < cluster_share:
                angle = theta + (math.pi / 2 if rng.random() < 0.3 else 0.0)
                self.cluster((px, py), angle + rng.uniform(-0.04, 0.04), inside)
                continue
            large = industrial or rng.random() < 0.05
            plan = self.plan(large)
            angle = theta + (math.pi / 2 if rng.random() < 0.3 else 0.0) + rng.uniform(-0.04, 0.04)
            fp = self.building(plan, (px, py), angle, inside, large)
            if fp is not None and not large:
                houses.append(fp)
        self.lawns(houses, inside)
        self.gardens(houses, inside)
        if spec.suburb > 0:
            self.leafy(houses, inside)
            for road in frontage:
                self.street_cars(road, cell)
        self.scatter(cell, inside, trees=0.4, shrubs=0.5, soil=0.3, ponds=0.0)

    def yard(
        self,
        footprint: BaseGeometry,
        anchor: tuple[float, float],
        angle: float,
        half_road: float,
        setback: float,
        large: bool,
        inside: BaseGeometry,
    ) -> None:
        """Paved yard around a large building, or a driveway in front of a house."""
        rng = self.rng
        concrete = _scaled(rng, (156.0, 154.0, 148.0), 0.06)
        if large:
            yard = self.clear(
                footprint.buffer(self.m(rng.uniform(5.0, 12.0)), join_style="mitre").intersection(
                    inside
                )
            )
            self.objs.add(yard, M.PAVED, concrete)
            self._yards.append(yard)
            if self.spec.suburb > 0:
                self.cars(yard.difference(footprint.buffer(self.m(2.0))), angle)
            return
        if rng.random() < 0.5:
            return
        ux, uy = math.cos(angle), math.sin(angle)
        vx, vy = -uy, ux
        along = self.m(rng.uniform(-2.0, 2.0))
        depth = setback + half_road * 0.5
        cx = anchor[0] + ux * along - vx * depth / 2
        cy = anchor[1] + uy * along - vy * depth / 2
        drive = _rect(cx, cy, angle + math.pi / 2, depth / 2, self.m(1.5)).intersection(inside)
        self.objs.add(drive, M.PAVED, concrete)
        self._yards.append(drive)

    def lawns(self, houses: list[BaseGeometry], inside: BaseGeometry) -> None:
        """Mown lawns (vegetation) on most house plots, around the house, not over the drive."""
        rng = self.rng
        suburb = self.spec.suburb
        plots = [
            fp.buffer(self.m(rng.uniform(4.0, 12.0) + 8.0 * suburb), join_style="mitre")
            for fp in houses
            if rng.random() < 0.7 * min(1.0, 2.0 * self.spec.tree_density) + 0.3 * suburb
        ]
        if not plots:
            return
        lawn = self.clear(shapely.union_all(plots).intersection(inside))
        if self._yards:
            lawn = lawn.difference(shapely.union_all(self._yards))
        green = _mix((88, 128, 60), (118, 140, 76), rng.uniform(0.0, 1.0))
        stripes = self.m(rng.uniform(1.0, 2.0)) if rng.random() < 0.3 else 0.0
        for part in _polygons(lawn):
            if part.area >= self.m(3.0) ** 2:
                self.objs.add(part, M.MEADOW, _scaled(rng, green, 0.06), a=stripes, p0=0.04)

    def gardens(self, houses: list[BaseGeometry], inside: BaseGeometry) -> None:
        rng = self.rng
        lam = 2.6 * self.spec.tree_density
        for fp in houses:
            c = fp.centroid
            radius = math.sqrt(fp.area) * 0.7
            for _ in range(int(rng.poisson(lam))):
                ang = rng.uniform(0, 2 * math.pi)
                dist = radius + self.m(rng.uniform(3.0, 10.0))
                cx, cy = c.x + dist * math.cos(ang), c.y + dist * math.sin(ang)
                if inside.contains(Point(cx, cy)):
                    self.random_tree(cx, cy, 0.85)

    # ------------------------------------------------------------------ suburbs

    def leafy(self, houses: list[BaseGeometry], inside: BaseGeometry) -> None:
        """Garden trees against the houses (overhanging some roofs) and hedges round plots.

        Temperate suburbs: tree crowns stand next to and over the roofs, where
        a model must tell a dark crown with its shadow from a roof.
        """
        rng, suburb = self.rng, self.spec.suburb
        if not houses:
            return
        near = shapely.STRtree(houses)
        for fp in houses:
            if rng.random() > 0.4 + 0.6 * suburb:
                continue
            ring = fp.exterior
            cx0, cy0 = fp.centroid.x, fp.centroid.y
            local = shapely.union_all(
                [houses[i] for i in near.query(fp.buffer(self.m(15.0)), predicate="intersects")]
            )
            for _ in range(int(rng.integers(1, 2 + round(3 * suburb)))):
                p = ring.interpolate(rng.uniform(0.0, ring.length))
                dx, dy = p.x - cx0, p.y - cy0
                norm = math.hypot(dx, dy) or 1.0
                r_m = rng.uniform(2.0, 5.5)
                dist = self.m(r_m * rng.uniform(0.25, 1.4))
                cx, cy = p.x + dx / norm * dist, p.y + dy / norm * dist
                if inside.contains(Point(cx, cy)):
                    self.crown(
                        cx,
                        cy,
                        self.m(r_m),
                        self.tree_colour(rng.random() < 0.15),
                        r_m * rng.uniform(1.8, 2.6) + 3.0,
                        over=local,
                    )
            if rng.random() < 0.5 * suburb:
                plot = fp.buffer(self.m(rng.uniform(6.0, 12.0)), join_style="mitre")
                edge = plot.exterior.buffer(self.m(rng.uniform(0.6, 1.3)), cap_style="flat")
                hedge = self.clear(edge.intersection(inside).difference(local.buffer(self.m(1.0))))
                if not hedge.is_empty and self.free(hedge):
                    self.canopy(hedge, self.tree_colour(), 1.5, rng.uniform(1.5, 2.5))

    def parks(self, cell: BaseGeometry, inside: BaseGeometry) -> None:
        """Town parks: grass with tree clumps and paths, sports pitches and courts.

        Natural grass pitches are vegetation (Urban Atlas 14200, Dynamic World
        *grass*); artificial turf, hard and clay courts, gravel grounds and
        running tracks are background.  Parks are reserved before houses are
        placed, so no house stands in one.
        """
        rng, suburb = self.rng, self.spec.suburb
        area_ha = inside.area / self.m(100.0) ** 2
        x0, y0, x1, y1 = inside.bounds
        for _ in range(min(4, int(rng.poisson(suburb * area_ha / 3.0)))):
            sports = rng.random() < 0.7
            rx = self.m(rng.uniform(72.0, 120.0) if sports else rng.uniform(40.0, 100.0))
            ry = rx * rng.uniform(0.78 if sports else 0.6, 1.0)
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            theta = rng.uniform(0, math.pi)
            park = self.clear(self.blob(cx, cy, rx, ry, theta, 0.12).intersection(inside))
            if park.is_empty or park.area < self.m(30.0) ** 2 or self.buildings.hits(park):
                continue
            self.buildings.insert(park)
            self.park(park, (cx, cy), (rx, ry), theta, pitches=int(sports))

    def sports_ground(self, cell: BaseGeometry) -> None:
        """An open zone turned into a sports ground: pitches, courts, grass and trees."""
        rng = self.rng
        inside = self.clear(cell.buffer(-self.m(1.0)))
        if inside.is_empty:
            return
        c = inside.representative_point()
        x0, y0, x1, y1 = inside.bounds
        self.park(
            inside,
            (c.x, c.y),
            ((x1 - x0) / 2, (y1 - y0) / 2),
            rng.uniform(0, math.pi),
            pitches=int(rng.integers(1, 4)),
        )

    def park(
        self,
        park: BaseGeometry,
        centre: tuple[float, float],
        spread: tuple[float, float],
        theta: float,
        *,
        pitches: int,
    ) -> None:
        """Fill `park` with grass, up to `pitches` pitches, maybe courts, paths and trees."""
        rng, suburb = self.rng, self.spec.suburb
        (cx, cy), (rx, ry) = centre, spread
        grass = _mix((70, 124, 58), (150, 150, 96), rng.uniform(0.0, 0.6) ** 2)
        self.objs.add(park, M.MEADOW, _scaled(rng, grass, 0.05), p0=0.04)
        taken: list[BaseGeometry] = []
        want = [self.pitch] * pitches + [self.courts] * int(rng.random() < 0.5)
        for place in want:
            # The first try is the park's centre, the pitch along its long axis.
            spots = [(cx, cy)] + [
                (cx + rng.normal(0, rx / 2), cy + rng.normal(0, ry / 2)) for _ in range(11)
            ]
            for px, py in spots:
                used = place(park, px, py, theta, taken)
                if used:
                    taken += used
                    break
        for _ in range(int(rng.integers(0, 3))):
            a = park.boundary.interpolate(rng.uniform(0, park.boundary.length))
            b = park.boundary.interpolate(rng.uniform(0, park.boundary.length))
            path = LineString([a, b]).buffer(self.m(rng.uniform(1.0, 1.8)), cap_style="flat")
            path = path.intersection(park)
            if taken:
                path = path.difference(shapely.union_all(taken))
            self.objs.add(path, M.TRACK, _scaled(rng, (176, 166, 146), 0.06))
            taken.append(path)
        blocked = shapely.union_all(taken).buffer(self.m(3.0)) if taken else Polygon()
        px0, py0, px1, py1 = park.bounds
        for _ in range(int(rng.poisson(park.area / self.m(100.0) ** 2 * 40.0 * suburb))):
            tx, ty = rng.uniform(px0, px1), rng.uniform(py0, py1)
            r_m = rng.uniform(2.5, 6.5)
            spot = Point(tx, ty).buffer(self.m(r_m))
            if park.contains(spot) and not spot.intersects(blocked):
                self.crown(
                    tx,
                    ty,
                    self.m(r_m),
                    self.tree_colour(rng.random() < 0.2),
                    r_m * rng.uniform(2.0, 3.0) + 3.0,
                    over=Polygon(),
                )

    def pitch(
        self, park: BaseGeometry, cx: float, cy: float, theta: float, taken: list[BaseGeometry]
    ) -> list[BaseGeometry]:
        """A football pitch, perhaps inside a running track; returns what it covers."""
        rng = self.rng
        a, b = self.m(rng.uniform(45.0, 53.0)), self.m(rng.uniform(30.0, 34.0))
        field = _rect(cx, cy, theta, a, b)
        track = None
        if rng.random() < 0.3:
            track = field.buffer(self.m(rng.uniform(8.0, 11.0))).difference(
                field.buffer(self.m(1.0))
            )
        outer = field if track is None else track.envelope.intersection(field.buffer(self.m(12.0)))
        if not park.contains(outer) or any(outer.intersects(t) for t in taken):
            return []
        if rng.random() < 0.55:
            green = _mix((62, 126, 58), (104, 150, 70), rng.uniform(0, 1))
            stripes = self.m(rng.uniform(4.0, 7.0))
            self.objs.add(
                field,
                M.MEADOW,
                _scaled(rng, green, 0.04),
                angle=theta + math.pi / 2,
                a=stripes,
                p0=0.06,
            )
        else:
            self.objs.add(field, M.PAVED, _scaled(rng, _pick(rng, _TURF_COLOURS), 0.05))
        taken = [field]
        if track is not None:
            self.objs.add(track, M.PAVED, _scaled(rng, (172, 84, 62), 0.06))
            taken.append(track)
        return taken

    def courts(
        self, park: BaseGeometry, cx: float, cy: float, theta: float, taken: list[BaseGeometry]
    ) -> list[BaseGeometry]:
        """A row of 2-6 tennis courts (clay, hard or turf): background."""
        rng = self.rng
        n = int(rng.integers(2, 7))
        w, h = self.m(18.3), self.m(36.6)
        colour = _scaled(rng, _pick(rng, _TURF_COLOURS), 0.05)
        ux, uy = math.cos(theta), math.sin(theta)
        block = _rect(cx, cy, theta, w * n / 2, h / 2)
        if not park.contains(block) or any(block.intersects(t) for t in taken):
            return []
        for k in range(n):
            off = (k - (n - 1) / 2) * w
            self.objs.add(
                _rect(cx + ux * off, cy + uy * off, theta, w / 2 - 0.5, h / 2), M.PAVED, colour
            )
        return [block]

    def street_cars(self, road: _Road, cell: BaseGeometry) -> None:
        """Cars parked along both kerbs of a town street (background)."""
        rng = self.rng
        if rng.random() > 0.7 * self.spec.suburb:
            return
        fill = rng.uniform(0.3, 0.9)
        for seg in _lines(road.line.intersection(cell)):
            s = self.m(rng.uniform(0.0, 5.0))
            while s < seg.length - 1.0:
                p, q = seg.interpolate(s), seg.interpolate(s + 1.0)
                ang = math.atan2(q.y - p.y, q.x - p.x)
                for side in (1.0, -1.0):
                    if rng.random() > fill:
                        continue
                    off = side * (road.width / 2 - self.m(1.3))
                    cx, cy = p.x - math.sin(ang) * off, p.y + math.cos(ang) * off
                    car = _rect(cx, cy, ang, self.m(2.25), self.m(0.9))
                    self.objs.add(car, M.MARKING, _scaled(rng, _pick(rng, _CAR_COLOURS), 0.08))
                s += self.m(rng.uniform(5.2, 7.5))

    def cars(self, lot: BaseGeometry, angle: float) -> None:
        """Parked cars in rows on a paved lot (background, like the lot)."""
        rng = self.rng
        if lot.is_empty or rng.random() > 0.3 + 0.6 * self.spec.suburb:
            return
        ux, uy = math.cos(angle), math.sin(angle)
        vx, vy = -uy, ux
        x0, y0, x1, y1 = lot.bounds
        c = ((x0 + x1) / 2, (y0 + y1) / 2)
        half = math.hypot(x1 - x0, y1 - y0) / 2
        pitch_u, pitch_v = self.m(2.6), self.m(6.5)
        fill = rng.uniform(0.3, 0.9)
        for j in np.arange(-half, half, pitch_v):
            for i in np.arange(-half, half, pitch_u):
                if rng.random() > fill:
                    continue
                px, py = c[0] + ux * i + vx * j, c[1] + uy * i + vy * j
                car = _rect(px, py, angle + math.pi / 2, self.m(2.25), self.m(0.9))
                if lot.contains(car):
                    self.objs.add(car, M.MARKING, _scaled(rng, _pick(rng, _CAR_COLOURS), 0.08))

    def scatter(
        self,
        cell: BaseGeometry,
        inside: BaseGeometry,
        *,
        trees: float,
        shrubs: float,
        soil: float,
        ponds: float,
    ) -> None:
        """Trees, tree clusters, shrub and bare-soil patches and ponds in a zone."""
        rng, spec = self.rng, self.spec
        area_ha = cell.intersection(self.scene).area / self.m(100.0) ** 2
        x0, y0, x1, y1 = inside.bounds if not inside.is_empty else (0, 0, 0, 0)

        def spot() -> tuple[float, float] | None:
            px, py = rng.uniform(x0, x1), rng.uniform(y0, y1)
            return (px, py) if inside.contains(Point(px, py)) else None

        if inside.is_empty:
            return
        for _ in range(int(rng.poisson(area_ha * soil * 0.8))):
            p = spot()
            if p:
                r = self.m(rng.uniform(8.0, 28.0))
                patch = self.blob(*p, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), 0.25)
                if self.free(patch):
                    self.objs.add(patch, M.SOIL, _scaled(rng, _SOIL_COLOURS[int(rng.integers(4))]))
        for _ in range(int(rng.poisson(area_ha * ponds))):
            p = spot()
            if p:
                r = self.m(rng.uniform(8.0, 25.0))
                pond = self.blob(*p, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))
                if self.free(pond.buffer(self.m(3.0))):
                    self.add_water_body(pond)
        for _ in range(int(rng.poisson(area_ha * shrubs * 1.5 * spec.tree_density))):
            p = spot()
            if p:
                r = self.m(rng.uniform(3.0, 12.0))
                patch = self.blob(*p, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi), 0.3)
                if self.free(patch):
                    self.canopy(patch, _scaled(rng, (92, 108, 60), 0.1), rng.uniform(1.5, 2.5), 1.5)
        density = trees * spec.tree_density
        for _ in range(int(rng.poisson(area_ha * 6.0 * density))):
            p = spot()
            if p:
                self.random_tree(*p)
        for _ in range(int(rng.poisson(area_ha * 1.2 * density))):
            p = spot()
            if p:
                spread = self.m(rng.uniform(5.0, 16.0))
                for _ in range(int(rng.integers(3, 11))):
                    self.random_tree(
                        p[0] + rng.normal(0, spread), p[1] + rng.normal(0, spread), 1.1
                    )

    # ------------------------------------------------------------------ farmland

    def farmland(self, cell: BaseGeometry, road_index: int) -> None:
        """Fields on a grid shared by every farm zone of the same main road."""
        spec = self.spec
        road = self.roads[road_index]
        start = road.line.coords[0]
        grid = _sub_rng(spec.seed, 1, road_index)
        theta = math.atan2(
            road.line.coords[-1][1] - start[1], road.line.coords[-1][0] - start[0]
        ) + (math.pi / 2 if grid.random() < 0.25 else 0.0)
        strip_w = self.m(grid.uniform(70.0, 150.0))
        ux, uy = math.cos(theta), math.sin(theta)
        vx, vy = -uy, ux
        xy = shapely.get_coordinates(cell) - start
        us, vs = xy @ (ux, uy), xy @ (vx, vy)
        inside = cell.buffer(-self.m(1.0))

        def to_world(u: float, v: float) -> tuple[float, float]:
            return start[0] + u * ux + v * vx, start[1] + u * uy + v * vy

        def strip_edge(k: int) -> float:
            return (k + _sub_rng(spec.seed, 2, road_index, k).uniform(-0.25, 0.25)) * strip_w

        for k in range(math.floor(vs.min() / strip_w) - 1, math.ceil(vs.max() / strip_w) + 1):
            v0, v1 = strip_edge(k), strip_edge(k + 1)
            srng = _sub_rng(spec.seed, 3, road_index, k)
            length = self.m(srng.uniform(90.0, 280.0))
            hedge = srng.random() < 0.45 * spec.tree_density
            track = srng.random() < 0.2

            def field_edge(j: int, k: int = k, length: float = length) -> float:
                return (j + _sub_rng(spec.seed, 4, road_index, k, j).uniform(-0.3, 0.3)) * length

            for j in range(math.floor(us.min() / length) - 1, math.ceil(us.max() / length) + 1):
                u0, u1 = field_edge(j), field_edge(j + 1)
                frng = _sub_rng(spec.seed, 5, road_index, k, j)
                mu0 = self.m(frng.uniform(0.8, 2.5))
                mu1 = self.m(frng.uniform(0.8, 2.5))
                mv0 = self.m(frng.uniform(0.8, 2.5) + (2.5 if hedge or track else 0.0))
                mv1 = self.m(frng.uniform(0.8, 2.5))
                rect = Polygon(
                    [
                        to_world(u0 + mu0, v0 + mv0),
                        to_world(u1 - mu1, v0 + mv0),
                        to_world(u1 - mu1, v1 - mv1),
                        to_world(u0 + mu0, v1 - mv1),
                    ]
                )
                if not rect.intersects(inside):
                    continue
                field = self.clear(rect.intersection(inside))
                if field.area < self.m(20.0) ** 2:
                    continue
                self.field(field, theta, frng)
            if hedge or track:
                a = to_world(us.min() - 10.0, v0)
                b = to_world(us.max() + 10.0, v0)
                edge = LineString([a, b]).intersection(inside)
                for seg in _lines(edge):
                    if seg.length < self.m(20.0):
                        continue
                    if hedge:
                        self.hedgerow(seg)
                    else:
                        self.add_road(seg, self.m(3.0), main=False, dirt=True)
        self.scatter(cell, inside, trees=0.12, shrubs=0.1, soil=0.0, ponds=0.0)

    def field(self, poly: BaseGeometry, theta: float, frng: np.random.Generator) -> None:
        """One crop field or grass ley (both cropland) with row texture parameters."""
        rng = self.rng
        rows = theta + (math.pi / 2 if frng.random() < 0.3 else 0.0)
        if frng.random() < 0.15:
            grass = _mix((92, 124, 62), (150, 148, 96), frng.uniform(0.0, 0.6))
            stripes = self.m(frng.uniform(3.0, 6.0)) if frng.random() < 0.5 else 0.0
            self.objs.add(
                poly, M.GRASS_FIELD, _scaled(frng, grass, 0.05), angle=rows, a=stripes, p0=0.05
            )
            return
        crop = frng.choice(
            ["cereal", "maize", "rapeseed", "beet", "vegetable"], p=[0.45, 0.2, 0.1, 0.1, 0.15]
        )
        stage = frng.uniform(0.0, 1.0)
        soil = _scaled(frng, _mix((132, 106, 80), (112, 100, 88), frng.uniform(0, 1)), 0.1)
        green = _scaled(frng, _mix((68, 100, 48), (110, 132, 70), frng.uniform(0, 1)), 0.06)
        spacing_m = {
            "cereal": (1.0, 1.6),
            "maize": (1.5, 2.4),
            "rapeseed": (1.0, 1.5),
            "beet": (1.4, 2.0),
            "vegetable": (1.5, 3.0),
        }[crop]
        spacing = frng.uniform(*spacing_m)
        tram = 0.0
        if stage < 0.15:
            row, between, cover = (
                _mix(soil, (0, 0, 0), 0.16),
                _mix(soil, (255, 255, 255), 0.04),
                0.45,
            )
            spacing = frng.uniform(1.2, 2.6)
        elif stage < 0.45:
            t = (stage - 0.15) / 0.3
            row, between, cover = _mix(soil, green, 0.5 + 0.4 * t), soil, 0.3 + 0.4 * t
        elif stage < 0.72:
            t = (stage - 0.45) / 0.27
            row, between, cover = green, _mix(soil, green, 0.4 + 0.5 * t), 0.75 + 0.2 * t
        elif stage < 0.92:
            t = (stage - 0.72) / 0.2
            ripe = {
                "cereal": (204, 182, 118),
                "rapeseed": (214, 200, 74) if frng.random() < 0.5 else (150, 150, 80),
                "maize": (92, 120, 54),
                "beet": (74, 118, 56),
                "vegetable": (110, 136, 70),
            }[crop]
            row = _mix(green, ripe, t)
            between, cover = _mix(row, (0, 0, 0), 0.12), 0.85
        else:
            if crop in ("cereal", "rapeseed"):
                row, between = (196, 182, 140), (172, 152, 112)
                spacing, cover = frng.uniform(4.0, 8.0), 0.55
            else:
                row, between, cover = _mix(soil, (200, 190, 150), 0.3), soil, 0.5
        if crop in ("cereal", "rapeseed") and 0.25 < stage < 0.92:
            tram = self.m(frng.uniform(18.0, 24.0))
        self.objs.add(
            poly,
            M.FIELD,
            _scaled(rng, row, 0.03),
            between,
            angle=rows,
            a=self.m(spacing),
            b=frng.uniform(0.0, 1.0),
            p0=cover,
            p1=tram,
        )

    def hedgerow(self, seg: LineString) -> None:
        """A hedgerow along `seg` (straight), as a canopy strip with wavy edges."""
        rng = self.rng
        (ax, ay), (bx, by) = seg.coords[0], seg.coords[-1]
        length = seg.length
        ux, uy = (bx - ax) / length, (by - ay) / length
        vx, vy = -uy, ux
        n = max(3, int(length / self.m(2.0)))
        t = np.linspace(0.0, length, n)
        half = self.m(rng.uniform(1.5, 3.0))
        left = half * (0.7 + 0.6 * rng.random(n))
        right = half * (0.7 + 0.6 * rng.random(n))
        px, py = ax + t * ux, ay + t * uy
        ring = np.vstack(
            [
                np.column_stack([px + vx * left, py + vy * left]),
                np.column_stack([px - vx * right, py - vy * right])[::-1],
            ]
        )
        poly = self.clear(Polygon(ring))
        if poly.is_empty:
            return
        self.canopy(poly, self.tree_colour(), rng.uniform(2.5, 3.5), rng.uniform(4.0, 8.0))
        for _ in range(int(rng.poisson(length / self.m(40.0)))):
            s = rng.uniform(0, length)
            self.random_tree(ax + s * ux, ay + s * uy, 1.2)

    # ------------------------------------------------------------------ forest and open land

    def forest(self, cell: BaseGeometry) -> None:
        rng = self.rng
        inner = cell.buffer(-self.m(rng.uniform(6.0, 20.0)), quad_segs=4)
        if inner.is_empty:
            return
        if rng.random() < 0.4:
            c = inner.representative_point()
            r = self.m(rng.uniform(20.0, 50.0))
            inner = inner.difference(self.blob(c.x, c.y, r, r * 0.7, rng.uniform(0, math.pi), 0.3))
        forest = self.clear(inner)
        if forest.is_empty:
            return
        conifer = rng.random() < 0.35
        cell_m = rng.uniform(4.0, 5.0) if conifer else rng.uniform(5.5, 8.0)
        self.canopy(
            forest, self.tree_colour(conifer), cell_m, rng.uniform(14.0, 22.0), conifer=conifer
        )
        for part in _polygons(forest):
            for ring in [part.exterior, *part.interiors]:
                s = 0.0
                while s < ring.length:
                    r_m = cell_m * rng.uniform(0.45, 0.65)
                    p = ring.interpolate(s)
                    self.crown(
                        p.x, p.y, self.m(r_m), self.tree_colour(conifer), rng.uniform(10.0, 18.0)
                    )
                    s += self.m(2.0 * r_m * rng.uniform(0.8, 1.4))
        self.scatter(cell, cell.buffer(-self.m(1.0)), trees=0.3, shrubs=0.3, soil=0.0, ponds=0.0)

    def open_land(self, cell: BaseGeometry) -> None:
        rng = self.rng
        inside = cell.buffer(-self.m(1.0))
        if rng.random() < 0.6 * min(1.0, 2.0 * self.spec.tree_density):
            grass = _mix((96, 126, 64), (146, 144, 96), rng.uniform(0.0, 0.7))
            self.objs.add(self.clear(inside), M.MEADOW, _scaled(rng, grass, 0.05))
        self.scatter(
            cell, inside, trees=1.0, shrubs=1.0, soil=0.5, ponds=3.0 * self.spec.water_fraction
        )

    def avenues(self) -> None:
        """Rows of trees along some stretches of the main roads."""
        rng = self.rng
        for road in [r for r in self.roads if r.main]:
            line = road.line.intersection(self.scene)
            for seg in _lines(line):
                if rng.random() > 0.6 * self.spec.tree_density or seg.length < self.m(60.0):
                    continue
                start = rng.uniform(0, seg.length * 0.7)
                stop = min(seg.length, start + self.m(rng.uniform(100.0, 400.0)))
                step = self.m(rng.uniform(8.0, 13.0))
                colour = self.tree_colour()
                r_m = rng.uniform(2.5, 4.0)
                s = start
                while s < stop:
                    p = seg.interpolate(s)
                    q = seg.interpolate(min(s + 1.0, seg.length))
                    ang = math.atan2(q.y - p.y, q.x - p.x)
                    off = road.width / 2 + self.m(r_m + rng.uniform(1.5, 3.0))
                    for side in (1.0, -1.0):
                        self.crown(
                            p.x - side * math.sin(ang) * off,
                            p.y + side * math.cos(ang) * off,
                            self.m(r_m * rng.uniform(0.85, 1.15)),
                            _scaled(rng, colour, 0.05),
                            r_m * 2.5 + 2.0,
                        )
                    s += step


def build_layout(spec: SceneSpec) -> Layout:
    """Generate every object of the scene described by `spec`.

    Parameters
    ----------
    spec : SceneSpec
        Scene size, pixel size, seed and density knobs.

    Returns
    -------
    Layout
        Objects in pixel coordinates, sorted into draw order, with indexes.
    """
    gen = _Generator(spec)
    gen.run()
    return gen.finish()


def class_regions(layout: Layout) -> dict[int, BaseGeometry]:
    """The area of each foreground class after the layer overlay, clipped to the scene.

    A point belongs to class ``c`` when the topmost object covering it has
    class ``c``, so rasterizing these regions (pixel-centre rule) reproduces
    the rendered class raster; pixels in none of them are background.

    Parameters
    ----------
    layout : Layout
        The scene layout.

    Returns
    -------
    dict
        ``{BUILDING: geometry, VEGETATION: geometry, CROPLAND: geometry}`` in
        pixel coordinates; a class with no pixel has an empty geometry.
    """
    scene = box(0.0, 0.0, float(layout.width), float(layout.height))
    geoms = layout.geoms
    material = layout.material[1:]
    classes = layout.classes[1:]
    layers = np.array([_LAYER[Material(int(m))] for m in material], dtype=np.int64)
    inside = shapely.intersects(geoms, scene)
    parts: dict[int, list[BaseGeometry]] = {BUILDING: [], VEGETATION: [], CROPLAND: []}
    covered: BaseGeometry = Polygon()
    # Painter's algorithm from the top layer down: what a layer shows is what no
    # layer above it covers.  Every layer holds one class.
    for layer in sorted(set(layers[inside].tolist()), reverse=True):
        here = inside & (layers == layer)
        drawn = shapely.union_all(geoms[here])
        cls = int(classes[here][0])
        if cls in parts:
            parts[cls].append(shapely.difference(drawn, covered) if not covered.is_empty else drawn)
        covered = shapely.union_all([covered, drawn])
    return {
        cls: shapely.intersection(shapely.union_all(p), scene) if p else Polygon()
        for cls, p in parts.items()
    }


def building_instance_map(
    layout: Layout, building_region: BaseGeometry | None = None
) -> dict[int, BaseGeometry]:
    """The visible area of each building instance, by instance id.

    Like :func:`building_instances`, with each outline keyed by its
    :attr:`Layout.instance` id (ascending); instances with no visible area in
    the scene are left out.

    Parameters
    ----------
    layout : Layout
        The scene layout.
    building_region : shapely geometry, optional
        ``class_regions(layout)[BUILDING]`` if already computed.

    Returns
    -------
    dict
        ``{instance id: Polygon or MultiPolygon}`` in pixel coordinates.
    """
    region = class_regions(layout)[BUILDING] if building_region is None else building_region
    ids = layout.instance[1:]
    objs = np.flatnonzero(ids > 0)
    if objs.size == 0 or region.is_empty:
        return {}
    objs = objs[np.argsort(ids[objs], kind="stable")]
    uniq, starts = np.unique(ids[objs], return_index=True)
    groups = np.split(objs, starts[1:])
    footprints = np.array([shapely.union_all(layout.geoms[g]) for g in groups], dtype=object)
    # Draw order: where two buildings overlap (none are expected: attached
    # houses only share walls), the one holding the later-drawn object shows.
    top = np.array([int(g.max()) for g in groups])
    tree = shapely.STRtree(footprints)
    i, j = tree.query(footprints, predicate="intersects")
    later = top[j] > top[i]
    i, j = i[later], j[later]
    overlap = shapely.area(shapely.intersection(footprints[i], footprints[j])) > 0
    i, j = i[overlap], j[overlap]
    visible = footprints.copy()
    for k in np.unique(i).tolist():
        visible[k] = shapely.difference(footprints[k], shapely.union_all(footprints[j[i == k]]))
    # Clip to the class region (what higher layers and the scene edge leave),
    # one connected part of it at a time.
    parts = shapely.get_parts(region)
    hit_inst, hit_part = shapely.STRtree(parts).query(visible, predicate="intersects")
    order = np.argsort(hit_inst, kind="stable")
    hit_inst, hit_part = hit_inst[order], hit_part[order]
    hit, first = np.unique(hit_inst, return_index=True)
    out: dict[int, BaseGeometry] = {}
    for k, part_ids in zip(hit.tolist(), np.split(hit_part, first[1:]), strict=True):
        clip = shapely.union_all(parts[part_ids])
        polys = [p for p in _polygons(shapely.intersection(visible[k], clip)) if p.area > 0]
        if polys:
            out[int(uniq[k])] = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
    return out


def building_instances(layout: Layout) -> list[BaseGeometry]:
    """The visible area of every building, one polygon per building instance.

    A building instance is a footprint with all its parts and wings (see
    :attr:`Layout.instance`); each house of an attached row or cluster is an
    instance of its own.  Its visible area is its footprint intersected with
    ``class_regions(layout)[BUILDING]``: what the scene edge and any object
    drawn above it leave.  The outlines do not overlap, touching buildings
    share their common wall, and their union is the building class region.

    Parameters
    ----------
    layout : Layout
        The scene layout.

    Returns
    -------
    list of shapely Polygon or MultiPolygon
        In pixel coordinates, in instance id order; buildings with no visible
        area are left out.
    """
    return list(building_instance_map(layout).values())
