"""Training data through torchgeo: imagery & labels, splits, samplers and chips.

Each source becomes one or more *parts*: the source's images on one grid (a
CRS and a resolution) intersected with its labels, ``images & labels``, a
torchgeo :class:`~torchgeo.datasets.IntersectionDataset`.  Labels are read
in whatever CRS they come in and warped or reprojected onto the images' grid.
A source whose images lie in several UTM zones gets one part per zone, so
metre-sized pixels stay metre-sized.

Training chips are drawn with :class:`~torchgeo.samplers.RandomGeoSampler`,
validation chips with :class:`~torchgeo.samplers.GridGeoSampler`, both over
*views* of a part whose index holds only the training (or validation) files
or spatial blocks; a chip is then read from the whole part.

Where torchgeo 0.8 lacks something geoseg needs, the subclasses below fill the
gap and say why: image validity masks, arbitrary band selection, label values
mapped through a class map, and vector labels read once instead of per chip.
Nothing here downloads anything: no dataset defines ``download``.
"""

from __future__ import annotations

import copy
import glob
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.merge
import shapely
import torch
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import from_bounds
from torchgeo.datasets import IntersectionDataset, RasterDataset, VectorDataset
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

from geoseg.errors import ConfigError, GeoreferenceError, RasterReadError
from geoseg.io.labels import LabelLookup, read_vector_labels
from geoseg.io.read import EARTH_RADIUS_M
from geoseg.training.config import IGNORE_INDEX, SourceConfig, TrainConfig
from geoseg.training.contact import CONTACT_FLAG, contact_pixels, encode_contact
from geoseg.training.instances import encode_instances

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "ChipCache",
    "ChipDataset",
    "ChipQuery",
    "ImageRaster",
    "LabelLookup",
    "LabelRaster",
    "Part",
    "TrainingData",
    "VectorLabels",
    "allowed_values",
    "band_statistics",
    "build_training_data",
    "expand_paths",
    "read_vector_labels",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
_DEG_M = math.pi / 180 * EARTH_RADIUS_M


# --- files ------------------------------------------------------------------------------------


def expand_paths(
    patterns: Sequence[str], where: str, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[str]:
    """Files named by ``patterns``: files, directories (searched recursively) or globs.

    Raises
    ------
    ConfigError
        Naming ``where`` when a pattern matches nothing.
    """
    out: list[str] = []
    for pattern in patterns:
        p = Path(pattern)
        if "://" in pattern or pattern.startswith("/vsi"):
            out.append(pattern)
        elif p.is_dir():
            found = [
                str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in suffixes
            ]
            if not found:
                raise ConfigError(f"{where}: directory {p} holds no {'/'.join(suffixes)} file")
            out += found
        elif p.is_file():
            out.append(str(p))
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(pattern, recursive=True))
            if not found:
                raise ConfigError(f"{where}: pattern {pattern!r} matches no file")
            out += found
        else:
            raise ConfigError(f"{where}: {pattern} does not exist; check the path")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class _ImageInfo:
    path: str
    crs: CRS
    bounds: tuple[float, float, float, float]
    count: int
    res: tuple[float, float]


def _scan(path: str, where: str) -> _ImageInfo:
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise GeoreferenceError(
                    f"{where}: {path} has no CRS; training needs georeferenced imagery "
                    "(assign one with gdal_edit.py -a_srs EPSG:XXXX)"
                )
            return _ImageInfo(path, ds.crs, tuple(ds.bounds), ds.count, ds.res)
    except RasterioError as exc:
        raise RasterReadError(f"{where}: cannot read {path} as a raster ({exc})") from exc


def _grid_crs(info: _ImageInfo, mode: str) -> CRS:
    """The CRS a file is sampled in: see :attr:`SourceConfig.crs`."""
    if mode == "native":
        return info.crs
    if mode != "auto":
        return CRS.from_user_input(mode)
    if info.crs.is_projected:
        return info.crs
    from geoseg.vectorize.metric import metric_crs

    target: ProjCRS = metric_crs(info.crs.to_wkt(), info.bounds)
    epsg = target.to_epsg()
    return CRS.from_epsg(epsg) if epsg else CRS.from_wkt(target.to_wkt())


def _metres_per_unit(crs: CRS, lat: float) -> tuple[float, float]:
    """Metres per CRS unit along x and y (at latitude ``lat`` for geographic CRSs)."""
    if crs.is_geographic:
        return _DEG_M * math.cos(math.radians(max(min(lat, 89.9), -89.9))), _DEG_M
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return factor, factor


def _centre_lat(crs: CRS, bounds: Sequence[float]) -> float:
    from pyproj import Transformer

    to_ll = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    _, lat = to_ll.transform((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
    return float(lat)


# --- torchgeo datasets ------------------------------------------------------------------------


class _MaskedRaster(RasterDataset):
    """A RasterDataset that also returns which pixels hold data.

    torchgeo 0.8 merges files with ``rasterio.merge.merge`` and fills gaps with 0
    (or the nodata value), indistinguishable from real zeros; geoseg needs the
    mask to keep nodata, scene borders and the corners of reprojected tiles out
    of the loss.  ``_merge_files`` therefore merges with ``masked=True`` and
    appends validity as an extra channel, which ``__getitem__`` splits off.
    """

    filename_glob = "*"

    def __init__(
        self,
        paths: Sequence[str],
        *,
        crs: CRS | None,
        res: tuple[float, float] | None,
        band_indexes: Sequence[int] | None,
    ) -> None:
        super().__init__(paths=list(paths), crs=crs, res=res, cache=True)
        # torchgeo selects bands by name only for subclasses that list all_bands;
        # geoseg's sources name 1-based band numbers.
        self.band_indexes = list(band_indexes) if band_indexes else None

    def _merge_files(
        self,
        filepaths: Sequence[str],
        query: Any,
        band_indexes: Sequence[int] | None = None,
    ) -> torch.Tensor:
        handles = [self._cached_load_warp_file(fp) for fp in filepaths]
        x, y, _ = self._disambiguate_slice(query)
        # Merged as float64 with NaN for "no data": rasterio's merge otherwise fills
        # gaps with the first file's nodata, or 0 where a file declares none, and then
        # masks every pixel equal to that fill, so a real 0 (class 0 of a label raster
        # without nodata, say) would be taken for a gap and silently ignored.  The
        # files' own nodata and masks still keep their pixels out (``masked=True``).
        dest, _ = rasterio.merge.merge(
            handles,
            (x.start, y.start, x.stop, y.stop),
            (x.step, y.step),
            indexes=band_indexes,
            resampling=self.resampling,
            masked=True,
            nodata=np.nan,
            dtype="float64",
        )
        data: np.ndarray = np.ma.getdata(dest)
        valid: np.ndarray = np.isfinite(data).all(axis=0)
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        return torch.from_numpy(np.concatenate([data, valid[None].astype(np.float32)]))

    def _split(self, query: Any) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        sample = super().__getitem__(query)
        stacked = sample.pop("image")
        return sample, stacked[:-1], stacked[-1] > 0


class ImageRaster(_MaskedRaster):
    """Imagery of one source on one grid; samples hold ``image`` and ``valid``.

    Parameters
    ----------
    paths : sequence of str
        Raster files.
    crs, res
        Grid to warp to (default: the first file's).
    band_indexes : sequence of int, optional
        1-based bands to read in the model's order.
    nodata : float, optional
        Value marking missing pixels (all bands equal to it) beyond the files' own masks.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        crs: CRS | None = None,
        res: tuple[float, float] | None = None,
        band_indexes: Sequence[int] | None = None,
        nodata: float | None = None,
    ) -> None:
        super().__init__(paths, crs=crs, res=res, band_indexes=band_indexes)
        self.nodata_value = nodata

    def __getitem__(self, query: Any) -> dict[str, Any]:
        sample, image, valid = self._split(query)
        if self.nodata_value is not None:
            valid &= ~(image == self.nodata_value).all(dim=0)
        sample["image"] = image
        sample["valid"] = valid
        return sample


class LabelRaster(_MaskedRaster):
    """Label rasters mapped to class ids; samples hold ``mask`` (int64, 255 = ignore).

    Parameters
    ----------
    paths : sequence of str
        Label rasters (class values in band 1, or RGB colours in bands 1-3).
    lookup : mapping
        Pixel value (int) or ``#rrggbb`` colour -> class id (255 to ignore).
        Values not in the map, nodata and areas outside the rasters are ignored.
    crs, res
        Grid to warp to (nearest-neighbour).
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        lookup: Mapping[str | int, int],
        crs: CRS | None = None,
        res: tuple[float, float] | None = None,
    ) -> None:
        self.lookup = LabelLookup(lookup)
        super().__init__(paths, crs=crs, res=res, band_indexes=self.lookup.bands)

    @property
    def resampling(self) -> Resampling:
        """Class values must never be interpolated."""
        return Resampling.nearest

    def __getitem__(self, query: Any) -> dict[str, Any]:
        sample, values, valid = self._split(query)
        sample["mask"] = torch.from_numpy(self.lookup(values.numpy(), valid.numpy()))
        return sample


class VectorLabels(VectorDataset):
    """Polygons with a class attribute, rasterized per chip; samples hold ``mask``.

    torchgeo 0.8's ``VectorDataset`` re-reads every file for every chip and
    casts label values with ``int()``; geoseg reads each file once, maps values
    (names or numbers) through the source's class map and finds a chip's
    polygons with a spatial index.  Its index covers ``extent`` (the images)
    rather than the polygons' bounding box: the labels of a source are complete
    within its images, so image margins without polygons are labelled background.

    Parameters
    ----------
    paths : sequence of str
        Vector files.
    label_field : str
        Attribute with the class value.
    lookup : mapping
        Attribute value -> class id (255 to ignore).
    crs, res
        Grid of the chips (the images').
    layer : str, optional
        Layer of multi-layer files.
    extent : shapely geometry, optional
        Area (in ``crs``) within which the labels are complete.
    where : str
        Config field path for error messages.
    contact_class : int, optional
        Class id whose polygons are objects to keep apart: pixels where two of
        them meet get :data:`~geoseg.training.contact.CONTACT_FLAG` added to
        their class id (:mod:`geoseg.training.contact`).
    contact_radius : int
        Neighbourhood radius of the contact target, in pixels.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        label_field: str,
        lookup: Mapping[str | int, int],
        crs: CRS,
        res: tuple[float, float],
        layer: str | None = None,
        extent: shapely.Geometry | None = None,
        where: str = "labels",
        contact_class: int | None = None,
        contact_radius: int = 1,
        instances: bool = False,
    ) -> None:
        super().__init__(paths=list(paths), crs=crs, res=res, label_name=label_field, layer=layer)
        self.contact_class = contact_class
        self.contact_radius = contact_radius
        self.instances = instances
        self._geoms: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._trees: list[shapely.STRtree] = []
        for path in self.files:
            frame = read_vector_labels(
                path, label_field=label_field, lookup=lookup, layer=layer, where=where
            ).to_crs(self.crs)
            geoms = np.asarray(frame.geometry.values, dtype=object)
            self._geoms.append(geoms)
            self._ids.append(frame["class_id"].to_numpy())
            self._trees.append(shapely.STRtree(geoms))
        if extent is not None:
            total = sum(len(g) for g in self._geoms)
            if total and not any(len(t.query(extent, predicate="intersects")) for t in self._trees):
                raise ConfigError(
                    f"{where}: none of the {total} label polygons lies on the images, so the labels "
                    "do not overlap the images; check the CRS of both and that they show the same place"
                )
            self.index = self.index.set_geometry([extent] * len(self.index), crs=self.index.crs)

    def __getitem__(self, query: Any) -> dict[str, Any]:
        x, y, _ = self._disambiguate_slice(query)
        width = round((x.stop - x.start) / x.step)
        height = round((y.stop - y.start) / y.step)
        transform = from_bounds(x.start, y.start, x.stop, y.stop, width, height)
        window = shapely.box(x.start, y.start, x.stop, y.stop)
        shapes: list[tuple[Any, int]] = []
        for geoms, ids, tree in zip(self._geoms, self._ids, self._trees, strict=True):
            hits = np.sort(tree.query(window, predicate="intersects"))
            shapes += list(zip(geoms[hits], ids[hits].tolist(), strict=True))
        if shapes:
            mask = rasterio.features.rasterize(
                shapes, out_shape=(height, width), transform=transform, fill=0, dtype="uint8"
            )
        else:
            mask = np.zeros((height, width), dtype=np.uint8)
        if self.instances:
            # Every polygon of a class (not background, not ignored) is one object.
            objects = [g for g, c in shapes if 0 < c < CONTACT_FLAG]
            ids = (
                rasterio.features.rasterize(
                    zip(objects, range(1, len(objects) + 1), strict=True),
                    out_shape=(height, width),
                    transform=transform,
                    fill=0,
                    dtype="int32",
                )
                if objects
                else np.zeros((height, width), np.int32)
            )
            return {
                "crs": self.crs,
                "bounds": query,
                "mask": torch.from_numpy(encode_instances(mask, ids)),
            }
        objects = [g for g, c in shapes if c == self.contact_class]
        if objects:
            ids = rasterio.features.rasterize(
                zip(objects, range(1, len(objects) + 1), strict=True),
                out_shape=(height, width),
                transform=transform,
                fill=0,
                dtype="int32",
            )
            mask = encode_contact(mask, contact_pixels(ids, self.contact_radius))
        return {"crs": self.crs, "bounds": query, "mask": torch.from_numpy(mask.astype(np.int64))}


# --- parts, splits and chips ------------------------------------------------------------------


@dataclass
class Part:
    """A source's imagery on one grid, intersected with its labels.

    ``train_index`` and ``val_index`` are the rows (image footprints, or
    footprints cut into spatial blocks) chips are drawn from; each row is a box.
    """

    source_index: int
    source: SourceConfig
    crs: CRS
    res: tuple[float, float]
    dataset: IntersectionDataset
    files: list[str]
    val_files: list[str]
    train_index: Any
    val_index: Any
    pixel_size_m: float
    chip_extent: tuple[float, float] = (0.0, 0.0)

    def view(self, index: Any) -> IntersectionDataset:
        """The part's dataset with another index, for samplers."""
        v = copy.copy(self.dataset)
        v.index = index
        return v

    def describe(self) -> dict[str, Any]:
        """JSON-friendly provenance."""
        return {
            "crs": self.crs.to_string(),
            "res": list(self.res),
            "pixel_size_m": self.pixel_size_m,
            "train_files": sorted(set(self.files) - set(self.val_files)),
            "val_files": sorted(self.val_files),
            "train_area_px": float(_area(self.train_index) / (self.res[0] * self.res[1])),
            "val_area_px": float(_area(self.val_index) / (self.res[0] * self.res[1])),
        }


def _area(index: Any) -> float:
    return float(index.geometry.area.sum()) if len(index) else 0.0


def _trainable_area(part: Part) -> float:
    """Area of the training rows a chip fits in (the only ones the sampler draws from)."""
    rows = [g for g in part.train_index.geometry if _fits_box(g.bounds, part.chip_extent)]
    return float(sum(g.area for g in rows))


def _fits_box(bounds: Sequence[float], extent: tuple[float, float]) -> bool:
    xmin, ymin, xmax, ymax = bounds
    return xmax - xmin >= extent[0] - 1e-9 and ymax - ymin >= extent[1] - 1e-9


@dataclass(frozen=True)
class ChipQuery:
    """Where to read one chip: a part and bounds ``(xmin, ymin, xmax, ymax)`` in its CRS.

    ``clip`` (validation only) is the box the chip's labels count in; pixels
    outside it belong to training blocks or other files and are ignored.
    """

    part: int
    bounds: tuple[float, float, float, float]
    clip: tuple[float, float, float, float] | None = None


@dataclass
class TrainingData:
    """Everything the loop needs to draw chips."""

    config: TrainConfig
    parts: list[Part]
    val_queries: list[ChipQuery]
    labelled: list[list[int]]
    pixel_size_m: float
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: Per source: whether its masks carry the contact target (config.contact_class).
    contact_known: list[bool] = field(default_factory=list)

    def train_queries(self, seed: int, count: int | None = None) -> list[ChipQuery]:
        """Random training chips for one epoch (``samples_per_epoch`` by default).

        Chips are shared among sources by their ``weight`` and within a source
        among parts by training area; the order is shuffled.  Equal seeds give
        equal chips.
        """
        cfg = self.config
        total = cfg.samples_per_epoch if count is None else count
        weights = np.array([s.weight for s in cfg.sources], dtype=np.float64)
        per_source = _apportion(total, weights)
        queries: list[ChipQuery] = []
        generator = torch.Generator().manual_seed(seed)
        # RandomGeoSampler picks tiles with the global torch RNG; keep that seeded
        # and isolated so the chips depend on ``seed`` alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for si, n_source in enumerate(per_source):
                parts = [(pi, p) for pi, p in enumerate(self.parts) if p.source_index == si]
                areas = np.array([_trainable_area(p) for _, p in parts])
                for (pi, part), n in zip(parts, _apportion(n_source, areas), strict=True):
                    if n == 0:
                        continue
                    sampler = RandomGeoSampler(
                        part.view(part.train_index),
                        size=cfg.chip_size,
                        length=n,
                        generator=generator,
                    )
                    if not sampler.bounds:
                        continue
                    for x, y, _ in sampler:
                        queries.append(ChipQuery(pi, (x.start, y.start, x.stop, y.stop)))
        order = torch.randperm(len(queries), generator=generator).tolist()
        return [queries[i] for i in order]


def _apportion(total: int, weights: np.ndarray) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainders)."""
    if len(weights) == 0 or weights.sum() <= 0:
        return [0] * len(weights)
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


def _split_seed(config: TrainConfig) -> int:
    """Seed of the held-out choice: ``validation.seed``, else the run's seed."""
    seed = config.validation.seed
    return config.seed if seed is None else seed


def _seeded_pick(items: Sequence[Any], fraction: float, seed: int) -> set[Any]:
    """A seeded choice of ``round(fraction * n)`` items (at least one, never all)."""
    n = len(items)
    if fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)[:k]
    return {items[i] for i in order}


def _block_split(index: Any, block: float, val_cells: set[tuple[int, int]]) -> tuple[Any, Any]:
    """Cut every row of ``index`` into block cells; return (train rows, val rows)."""
    train_rows: list[tuple[int, Any]] = []
    val_rows: list[tuple[int, Any]] = []
    for i in range(len(index)):
        xmin, ymin, xmax, ymax = index.geometry.iloc[i].bounds
        for cx in range(math.floor(xmin / block), math.ceil(xmax / block)):
            for cy in range(math.floor(ymin / block), math.ceil(ymax / block)):
                cell = shapely.box(
                    max(xmin, cx * block),
                    max(ymin, cy * block),
                    min(xmax, (cx + 1) * block),
                    min(ymax, (cy + 1) * block),
                )
                if cell.area <= 0:
                    continue
                row = (i, cell)
                (val_rows if (cx, cy) in val_cells else train_rows).append(row)

    def frame(rows: list[tuple[int, Any]]) -> Any:
        if not rows:
            return index.iloc[:0]
        sub = index.iloc[[r for r, _ in rows]].copy()
        sub["geometry"] = np.array([g for _, g in rows], dtype=object)
        return sub

    return frame(train_rows), frame(val_rows)


def _full_cells(
    index: Any, block: float, chip_extent: tuple[float, float]
) -> list[tuple[int, int]]:
    """Block cells in which at least one chip fits inside some row."""
    cells: set[tuple[int, int]] = set()
    for geom in index.geometry:
        xmin, ymin, xmax, ymax = geom.bounds
        for cx in range(math.floor(xmin / block), math.ceil(xmax / block)):
            for cy in range(math.floor(ymin / block), math.ceil(ymax / block)):
                w = min(xmax, (cx + 1) * block) - max(xmin, cx * block)
                h = min(ymax, (cy + 1) * block) - max(ymin, cy * block)
                if w >= chip_extent[0] and h >= chip_extent[1]:
                    cells.add((cx, cy))
    return sorted(cells)


def build_training_data(config: TrainConfig) -> TrainingData:
    """Build the torchgeo datasets, the train/validation split and the validation chips.

    Raises
    ------
    ConfigError
        When images or labels are missing, do not overlap, or are smaller than a chip.
    GeoreferenceError
        When images or vector labels have no CRS.
    """
    parts: list[Part] = []
    summaries: list[dict[str, Any]] = []
    names = config.class_names
    val_cfg = config.validation
    contact_ids = [
        names.index(config.contact_class)
        if config.contact_class is not None
        and src.kind == "vector"
        and config.contact_class in src.labelled_classes
        else None
        for src in config.sources
    ]
    for si, src in enumerate(config.sources):
        where = f"sources[{si}] ({src.name})"
        files = expand_paths(src.images, f"{where}.images")
        explicit_val = expand_paths(src.val_images, f"{where}.val_images") if src.val_images else []
        files = list(dict.fromkeys(files + explicit_val))
        infos = [_scan(f, f"{where}.images") for f in files]
        n_bands = len(config.bands)
        bands = list(src.bands) if src.bands else list(range(1, n_bands + 1))
        for info in infos:
            if max(bands) > info.count:
                raise ConfigError(
                    f"{where}.bands: {info.path} has {info.count} band(s) but bands {bands} are "
                    f"needed for {list(config.bands)}; set the source's bands"
                )
        label_kind = src.kind
        label_files = expand_paths(
            src.labels,
            f"{where}.labels",
            suffixes=IMAGE_SUFFIXES
            if label_kind == "raster"
            else (Path(src.labels[0]).suffix.lower(),),
        )
        lookup = src.class_lookup(config.classes)
        if val_cfg.fraction > 0 and explicit_val:
            val_files = set(explicit_val)
            mode = "files"
        elif val_cfg.fraction > 0 and val_cfg.split == "files" and len(files) >= 2:
            val_files = _seeded_pick(
                sorted(files), val_cfg.fraction, _split_seed(config) * 7919 + si
            )
            mode = "files"
        else:
            val_files = set()
            mode = "blocks" if val_cfg.fraction > 0 else "none"
            if val_cfg.fraction > 0 and val_cfg.split == "files":
                log.info("source %s has a single image: validating on spatial blocks", src.name)
        groups: dict[str, list[_ImageInfo]] = {}
        grid_crs: dict[str, CRS] = {}
        for info in infos:
            crs = _grid_crs(info, src.crs)
            groups.setdefault(crs.to_string(), []).append(info)
            grid_crs[crs.to_string()] = crs
        source_parts: list[Part] = []
        for key in sorted(groups):
            members = groups[key]
            crs = grid_crs[key]
            paths = [m.path for m in members]
            res = _grid_res(config.pixel_size_m, crs, members)
            images = ImageRaster(paths, crs=crs, res=res, band_indexes=bands, nodata=src.nodata)
            extent = shapely.box(*images.index.total_bounds)
            labels: RasterDataset | VectorDataset
            if label_kind == "vector":
                labels = VectorLabels(
                    label_files,
                    label_field=src.label_field,
                    lookup=lookup,
                    crs=images.crs,
                    res=images.res,
                    layer=src.label_layer,
                    extent=extent,
                    where=f"{where}.labels",
                    contact_class=contact_ids[si],
                    contact_radius=config.contact_radius,
                    instances=config.task == "instance",
                )
            else:
                labels = LabelRaster(label_files, lookup=lookup, crs=images.crs, res=images.res)
            try:
                dataset = IntersectionDataset(images, labels)
            except RuntimeError as exc:
                raise ConfigError(
                    f"{where}: its labels do not overlap its images in {key} ({exc}); check "
                    "that both are georeferenced and in the right place"
                ) from exc
            index = dataset.index
            is_val = index["filepath_1"].isin(sorted(val_files)).to_numpy()
            lat = _centre_lat(crs, extent.bounds)
            mx, my = _metres_per_unit(crs, lat)
            part = Part(
                source_index=si,
                source=src,
                crs=crs,
                res=tuple(images.res),  # type: ignore[arg-type]
                dataset=dataset,
                files=paths,
                val_files=sorted(set(paths) & val_files),
                train_index=index[~is_val],
                val_index=index[is_val],
                pixel_size_m=math.sqrt(images.res[0] * mx * images.res[1] * my),
                chip_extent=(config.chip_size * images.res[0], config.chip_size * images.res[1]),
            )
            source_parts.append(part)
        if mode == "blocks":
            _split_blocks(source_parts, config, si)
        if not any(_fits(p.train_index, p.chip_extent) for p in source_parts):
            raise ConfigError(
                f"{where}: no training image (or block) is at least chip_size={config.chip_size} "
                "pixels on each side where it overlaps the labels; lower chip_size or "
                "validation.fraction, or use larger images"
            )
        parts += source_parts
        summaries.append(
            {
                "name": src.name,
                "images": files,
                "labels": label_files,
                "label_kind": label_kind,
                "labelled_classes": list(src.labelled_classes),
                "absent_classes": list(src.absent_classes),
                "validation": mode,
                "parts": [p.describe() for p in source_parts],
            }
        )
    # The loss and the metrics give a class its own slot wherever the source states
    # its presence or its absence.
    labelled = [[names.index(c) for c in s.known_classes] for s in config.sources]
    data = TrainingData(
        config=config,
        parts=parts,
        val_queries=_val_queries(parts, config),
        labelled=labelled,
        pixel_size_m=config.pixel_size_m or float(np.mean([p.pixel_size_m for p in parts])),
        sources=summaries,
        contact_known=[c is not None for c in contact_ids],
    )
    return data


def _fits(index: Any, extent: tuple[float, float]) -> bool:
    return any(_fits_box(geom.bounds, extent) for geom in index.geometry)


def _grid_res(
    pixel_size_m: float | None, crs: CRS, members: Sequence[_ImageInfo]
) -> tuple[float, float] | None:
    """Resolution in CRS units for ``pixel_size_m`` (None: torchgeo's default)."""
    if pixel_size_m is None:
        return None
    lat = _centre_lat(members[0].crs, members[0].bounds) if crs.is_geographic else 0.0
    mx, my = _metres_per_unit(crs, lat)
    return pixel_size_m / mx, pixel_size_m / my


def _split_blocks(parts: list[Part], config: TrainConfig, si: int) -> None:
    """Hold out square blocks of every part of source ``si`` for validation."""
    val_cfg = config.validation
    cells: list[tuple[int, tuple[int, int]]] = []
    blocks: list[float] = []
    for pi, part in enumerate(parts):
        extent = part.chip_extent
        size = val_cfg.block_size_m
        if size is not None:
            mx, _ = _metres_per_unit(
                part.crs, _centre_lat(part.crs, part.dataset.index.total_bounds)
            )
            block = size / mx
        else:
            block = 4 * max(extent)
        if block < max(extent):
            raise ConfigError(
                f"validation.block_size_m ({size}) is smaller than a chip "
                f"({config.chip_size} px = {max(extent):g} CRS units); raise it"
            )
        blocks.append(block)
        cells += [(pi, c) for c in _full_cells(part.train_index, block, extent)]
    chosen = _seeded_pick(cells, val_cfg.fraction, _split_seed(config) * 7919 + si)
    for pi, part in enumerate(parts):
        val_cells = {c for p, c in chosen if p == pi}
        part.train_index, part.val_index = _block_split(part.train_index, blocks[pi], val_cells)


def _val_queries(parts: Sequence[Part], config: TrainConfig) -> list[ChipQuery]:
    """Validation chips: a grid over every validation row, clipped to the row."""
    out: list[ChipQuery] = []
    max_chips = config.validation.max_chips
    for si in range(len(config.sources)):
        source_queries: list[ChipQuery] = []
        for pi, part in enumerate(parts):
            if part.source_index != si:
                continue
            for i in range(len(part.val_index)):
                row = part.val_index.iloc[i : i + 1]
                sampler = GridGeoSampler(
                    part.view(row), size=config.chip_size, stride=config.chip_size
                )
                clip = tuple(row.geometry.iloc[0].bounds)
                for x, y, _ in sampler:
                    source_queries.append(ChipQuery(pi, (x.start, y.start, x.stop, y.stop), clip))
        if max_chips is not None and len(source_queries) > max_chips:
            keep = np.linspace(0, len(source_queries) - 1, max_chips).round().astype(int)
            source_queries = [source_queries[i] for i in sorted(set(keep.tolist()))]
        out += source_queries
    return out


@dataclass(frozen=True)
class _CachedRow:
    """One index row of a part read whole: the chips inside it are array slices."""

    bounds: tuple[float, float, float, float]
    image: np.ndarray  # (bands, H, W), uint8 when the pixels are 8-bit integers, else float32
    valid: np.ndarray  # bool (H, W)
    mask: np.ndarray  # uint8 (H, W) class ids, IGNORE_INDEX where ignored


class ChipCache:
    """Every training and validation row of every part, read once and kept in memory.

    Reading a chip through torchgeo warps and merges its files and rasterizes its
    vector labels, every time: most of an epoch went there, not into the network.
    The rows chips are drawn from are read once instead (the same datasets, the
    same grid), and a chip becomes a slice of them.  Only the allowed classes of a
    row's source survive in its mask, exactly as :class:`ChipDataset` filters them.

    Parameters
    ----------
    data : TrainingData
    allowed : numpy.ndarray
        bool ``(sources, 256)``: label values a source may carry.
    """

    def __init__(self, data: TrainingData, allowed: np.ndarray) -> None:
        self.rows: list[list[_CachedRow]] = []
        for part in data.parts:
            rows = []
            for index in (part.train_index, part.val_index):
                for geom in index.geometry:
                    rows.append(self._read(part, tuple(geom.bounds), allowed))
            self.rows.append(rows)
        self.nbytes = sum(
            r.image.nbytes + r.valid.nbytes + r.mask.nbytes for rows in self.rows for r in rows
        )

    @staticmethod
    def estimate_bytes(data: TrainingData) -> int:
        """Bytes the cache would take with 8-bit imagery (float imagery takes 4x more)."""
        total = 0.0
        bands = len(data.config.bands)
        for part in data.parts:
            px = (_area(part.train_index) + _area(part.val_index)) / (part.res[0] * part.res[1])
            total += px * (bands + 2)
        return int(total)

    @staticmethod
    def _read(
        part: Part, bounds: tuple[float, float, float, float], allowed: np.ndarray
    ) -> _CachedRow:
        xmin, ymin, xmax, ymax = bounds
        rx, ry = part.res
        sample = part.dataset[slice(xmin, xmax, rx), slice(ymin, ymax, ry)]
        image = sample["image"].numpy()
        valid = sample["valid"].numpy().astype(bool)
        mask = sample["mask"].numpy().astype(np.int64)
        h = min(image.shape[-2], valid.shape[-2], mask.shape[-2])
        w = min(image.shape[-1], valid.shape[-1], mask.shape[-1])
        image, valid, mask = image[:, :h, :w], valid[:h, :w], mask[:h, :w]
        mask = np.where(valid, mask, IGNORE_INDEX)
        # Class ids without the contact flag (geoseg.training.contact) decide what is allowed.
        cls = np.where(mask == IGNORE_INDEX, IGNORE_INDEX, mask % CONTACT_FLAG)
        mask = np.where(allowed[part.source_index][np.clip(cls, 0, 255)], mask, IGNORE_INDEX)
        if (
            image.size
            and image.min() >= 0
            and image.max() <= 255
            and (image == np.round(image)).all()
        ):
            image = image.astype(np.uint8)
        else:
            image = image.astype(np.float32)
        return _CachedRow(bounds, np.ascontiguousarray(image), valid, mask.astype(np.uint8))

    def chip(
        self, q: ChipQuery, part: Part, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(image, valid, mask)`` of the query, or None when no cached row holds it."""
        xmin, ymin, xmax, ymax = q.bounds
        rx, ry = part.res
        tol_x, tol_y = 0.5 * rx, 0.5 * ry
        for row in self.rows[q.part]:
            bxmin, bymin, bxmax, bymax = row.bounds
            if (
                xmin < bxmin - tol_x
                or xmax > bxmax + tol_x
                or ymin < bymin - tol_y
                or ymax > bymax + tol_y
            ):
                continue
            c0 = round((xmin - bxmin) / rx)
            r0 = round((bymax - ymax) / ry)
            image = np.zeros((row.image.shape[0], size, size), dtype=np.float32)
            valid = np.zeros((size, size), dtype=bool)
            mask = np.full((size, size), IGNORE_INDEX, dtype=np.int64)
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r0 + size, row.valid.shape[0]), min(c0 + size, row.valid.shape[1])
            if re > rs and ce > cs:
                dst = (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))
                image[:, dst[0], dst[1]] = row.image[:, rs:re, cs:ce]
                valid[dst] = row.valid[rs:re, cs:ce]
                mask[dst] = row.mask[rs:re, cs:ce]
            return torch.from_numpy(image), torch.from_numpy(valid), torch.from_numpy(mask)
        return None


class ChipDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Chips of a list of queries as tensors the loop can batch.

    Each item holds ``image`` (float32 ``(bands, chip, chip)``, raw values),
    ``valid`` (bool ``(chip, chip)``), ``mask`` (int64 ``(chip, chip)`` class ids,
    255 where ignored: nodata, outside the labels or the validation clip, or a
    class the source does not label) and ``source`` (int).  With ``cache``, chips
    are sliced from rows read once (:class:`ChipCache`) instead of read one by one.
    """

    def __init__(
        self, data: TrainingData, queries: Sequence[ChipQuery], cache: ChipCache | None = None
    ) -> None:
        self.parts = data.parts
        self.queries = list(queries)
        self.chip = data.config.chip_size
        self.cache = cache
        self.allowed = torch.from_numpy(allowed_values(data))

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.queries[i]
        part = self.parts[q.part]
        xmin, ymin, xmax, ymax = q.bounds
        rx, ry = part.res
        cached = self.cache.chip(q, part, self.chip) if self.cache is not None else None
        if cached is not None:
            image, valid, mask = cached
        else:
            sample = part.dataset[slice(xmin, xmax, rx), slice(ymin, ymax, ry)]
            image = _fit(sample["image"].float(), self.chip, 0.0)
            valid = _fit(sample["valid"], self.chip, False)
            mask = _fit(sample["mask"].long(), self.chip, IGNORE_INDEX)
            mask[~valid] = IGNORE_INDEX
            cls = torch.where(mask == IGNORE_INDEX, mask, mask % CONTACT_FLAG)
            mask[~self.allowed[part.source_index][cls.clamp(0, 255)]] = IGNORE_INDEX
        if q.clip is not None:
            cxmin, cymin, cxmax, cymax = q.clip
            cols = xmin + (torch.arange(self.chip) + 0.5) * rx
            rows = ymax - (torch.arange(self.chip) + 0.5) * ry
            inside = ((rows > cymin) & (rows < cymax))[:, None] & ((cols > cxmin) & (cols < cxmax))[
                None
            ]
            mask[~inside] = IGNORE_INDEX
        return {"image": image, "valid": valid, "mask": mask, "source": part.source_index}


def allowed_values(data: TrainingData) -> np.ndarray:
    """bool ``(sources, 256)``: the class ids each source's masks may hold (0 and its known classes)."""
    allowed = np.zeros((len(data.labelled), 256), dtype=bool)
    for si, ids in enumerate(data.labelled):
        allowed[si, [0, *ids]] = True
    return allowed


def _fit(t: torch.Tensor, size: int, fill: float | bool | int) -> torch.Tensor:
    """Crop or pad the last two axes to ``size`` (float rounding may give +-1 pixel)."""
    h, w = t.shape[-2:]
    if h == size and w == size:
        return t
    out = torch.full((*t.shape[:-2], size, size), fill, dtype=t.dtype)
    hh, ww = min(h, size), min(w, size)
    out[..., :hh, :ww] = t[..., :hh, :ww]
    return out


def band_statistics(
    dataset: ChipDataset, input_range: tuple[float, float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std of valid pixels scaled to [0, 1] by ``input_range``.

    Returns
    -------
    (mean, std) : tuple of tuple of float
        The card's normalisation; std is at least 1e-3.

    Raises
    ------
    ConfigError
        If the chips hold no valid pixel.
    """
    lo, hi = input_range
    total = 0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None
    for i in range(len(dataset)):
        item = dataset[i]
        valid = item["valid"].numpy()
        if not valid.any():
            continue
        x = (item["image"].numpy()[:, valid].astype(np.float64) - lo) / (hi - lo)
        s1 = x.sum(axis=1) if s1 is None else s1 + x.sum(axis=1)
        s2 = (x**2).sum(axis=1) if s2 is None else s2 + (x**2).sum(axis=1)
        total += x.shape[1]
    if total == 0 or s1 is None or s2 is None:
        raise ConfigError(
            "the training chips hold no valid pixel; check the images' nodata and the sources' nodata"
        )
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)
