"""Write synthetic scenes to disk; the only module of :mod:`geoseg.synth` that opens files.

Outputs:

- the image: tiled, DEFLATE-compressed RGB GeoTIFF (photometric RGB, band
  descriptions ``red``/``green``/``blue``),
- the class raster: tiled, compressed uint8 GeoTIFF without nodata, with a
  colour table (:data:`~geoseg.synth.scene.CLASS_COLOURS`) and the class names
  as ``CLASS_<id>`` tags,
- the ground truth: a GeoPackage with one layer, ``ground_truth``, holding one
  polygon per connected region of building, vegetation and cropland (columns
  ``class_id`` and ``class_name``).  Background is everything not covered.  The
  polygons are the exact vector overlay of the layout, so rasterizing them
  (pixel-centre rule) reproduces the class raster.  :func:`scene_polygons`
  can instead give one polygon per building instance (houses of attached rows
  apart), for models that separate touching buildings.

Rasters are written block by block through windows, so memory stays bounded
for any scene size; each file appears under its final name only once complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError

from geoseg.errors import ConfigError, OutputWriteError
from geoseg.io.atomic import atomic_output
from geoseg.synth.objects import BUILDING, building_instance_map, class_regions
from geoseg.synth.scene import (
    CLASS_COLOURS,
    CLASS_NAMES,
    SceneSpec,
    check_block_size,
    iter_blocks,
    scene_layout,
)

if TYPE_CHECKING:
    import geopandas

__all__ = ["POLYGON_LAYER", "SceneFiles", "make_sample_scene", "scene_polygons", "write_scene"]

#: Name of the ground-truth layer in the GeoPackage.
POLYGON_LAYER = "ground_truth"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SceneFiles:
    """Paths of a written scene: RGB image, class raster and ground-truth polygons."""

    image: Path
    classes: Path
    polygons: Path


def scene_polygons(spec: SceneSpec, *, instances: bool = False) -> geopandas.GeoDataFrame:
    """Ground-truth polygons of the foreground classes, in the scene CRS.

    Parameters
    ----------
    spec : SceneSpec
        The scene.
    instances : bool, optional
        Give buildings one row per building instance (the visible area of one
        building, see :func:`geoseg.synth.objects.building_instances`) instead
        of one per connected building region: the houses of an attached row
        are then separate rows that share their common walls.  Adds the
        column ``instance``.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per connected polygon, columns ``class_id`` (uint8: 1
        building, 2 vegetation, 3 cropland), ``class_name`` and ``geometry``
        (Polygon), CRS ``spec.crs``.  Background (0) is everything else.
        With `instances`, building rows are instances instead (Polygon, or
        MultiPolygon in the rare case the scene edge cuts a building into
        pieces) and the column ``instance`` (int32) holds the building's
        instance id (``Layout.instance``; >= 1), 0 in the other rows.

    Examples
    --------
    >>> gdf = scene_polygons(SceneSpec(256, 256, seed=1))
    >>> list(gdf.columns), str(gdf.crs)
    (['class_id', 'class_name', 'geometry'], 'EPSG:32633')
    >>> gdf = scene_polygons(SceneSpec(256, 256, seed=1), instances=True)
    >>> list(gdf.columns)
    ['class_id', 'class_name', 'instance', 'geometry']
    """
    import geopandas

    layout = scene_layout(spec)
    ids: list[int] = []
    parts: list[Any] = []
    instance: list[int] = []
    for cls, region in class_regions(layout).items():
        if instances and cls == BUILDING:
            by_id = building_instance_map(layout, region)
            parts.extend(by_id.values())
            ids.extend([cls] * len(by_id))
            instance.extend(by_id)
            continue
        polys = shapely.get_parts(shapely.get_parts(region))
        polys = polys[(shapely.get_type_id(polys) == 3) & (shapely.area(polys) > 0)]
        parts.extend(polys)
        ids.extend([cls] * len(polys))
        instance.extend([0] * len(polys))
    ox, oy = spec.origin
    ps = spec.pixel_size
    geoms = shapely.transform(
        np.array(parts, dtype=object),
        lambda xy: np.column_stack([ox + xy[:, 0] * ps, oy - xy[:, 1] * ps]),
    )
    class_id = np.array(ids, np.uint8)
    columns: dict[str, Any] = {
        "class_id": class_id,
        "class_name": np.array([CLASS_NAMES[int(c)] for c in class_id], dtype=object),
    }
    if instances:
        columns["instance"] = np.array(instance, np.int32)
    return geopandas.GeoDataFrame(
        columns,
        geometry=geopandas.GeoSeries(geoms, crs=spec.crs),
        crs=spec.crs,
    )


def _tile(spec: SceneSpec, block_size: int) -> int:
    """GeoTIFF tile side: one that divides the block size where possible.

    Blocks made of whole tiles leave no half-written tile waiting in GDAL's
    cache, which would otherwise hold up to a full row of tiles.
    """
    small = min(spec.width, spec.height) < 512
    for tile in (256, 512) if small else (512, 256):
        if block_size % tile == 0:
            return tile
    return 256


def _profile(spec: SceneSpec, count: int, tile: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": spec.width,
        "height": spec.height,
        "count": count,
        "dtype": "uint8",
        "crs": spec.crs,
        "transform": spec.transform,
        "nodata": None,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "compress": "deflate",
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }


def _spec_tags(spec: SceneSpec) -> dict[str, str]:
    return {
        "GEOSEG_SYNTH_SEED": str(spec.seed),
        "GEOSEG_SYNTH_SPEC": repr(spec),
    }


def write_scene(
    spec: SceneSpec,
    image_path: str | os.PathLike[str],
    classes_path: str | os.PathLike[str] | None = None,
    polygons_path: str | os.PathLike[str] | None = None,
    *,
    block_size: int = 1024,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> None:
    """Render `spec` to an RGB GeoTIFF and optionally its class raster and polygons.

    Parameters
    ----------
    spec : SceneSpec
        The scene.
    image_path : str or os.PathLike
        RGB GeoTIFF to write (tiled, DEFLATE, photometric RGB).
    classes_path : str or os.PathLike, optional
        uint8 class GeoTIFF (0 background, 1 building, 2 vegetation, 3
        cropland; colour table, no nodata).
    polygons_path : str or os.PathLike, optional
        GeoPackage with the ground-truth layer :data:`POLYGON_LAYER`.
    block_size : int, optional
        Rendering block side in pixels (16 to 16384); memory is about 50
        bytes per block pixel.  Use a multiple of 256: the GeoTIFF tiles
        (512, or 256 for scenes under 512 pixels or blocks that are not
        multiples of 512) then fill block by block; otherwise GDAL caches up to
        a row of tiles.  The pixels do not depend on it.
    overwrite : bool, optional
        Replace existing outputs instead of raising.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block.

    Raises
    ------
    OutputExistsError
        An output exists and `overwrite` is false (checked before any work).
    OutputWriteError
        An output directory is missing or unwritable, or writing failed.
    ConfigError
        `block_size` is out of range, or two outputs share a path.
    """
    paths = [Path(p) for p in (image_path, classes_path, polygons_path) if p is not None]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ConfigError(f"image, classes and polygons paths must differ, got {paths}")
    size = check_block_size(block_size)
    total = -(-spec.height // size) * -(-spec.width // size)
    tile = _tile(spec, size)
    with ExitStack() as stack:
        tmp_image = stack.enter_context(atomic_output(image_path, overwrite=overwrite))
        tmp_classes = (
            stack.enter_context(atomic_output(classes_path, overwrite=overwrite))
            if classes_path is not None
            else None
        )
        tmp_polygons = (
            stack.enter_context(atomic_output(polygons_path, overwrite=overwrite))
            if polygons_path is not None
            else None
        )
        try:
            with ExitStack() as files:
                img = files.enter_context(
                    rasterio.open(
                        tmp_image,
                        "w",
                        **_profile(spec, 3, tile),
                        photometric="RGB",
                        interleave="pixel",
                        predictor=2,
                    )
                )
                img.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
                for band, name in enumerate(("red", "green", "blue"), start=1):
                    img.set_band_description(band, name)
                img.update_tags(**_spec_tags(spec))
                cls = None
                if tmp_classes is not None:
                    cls = files.enter_context(
                        rasterio.open(tmp_classes, "w", **_profile(spec, 1, tile))
                    )
                    cls.write_colormap(1, {k: (*rgb, 255) for k, rgb in CLASS_COLOURS.items()})
                    cls.set_band_description(1, "class")
                    cls.update_tags(
                        **{f"CLASS_{k}": v for k, v in CLASS_NAMES.items()}, **_spec_tags(spec)
                    )
                for done, (window, image, classes) in enumerate(iter_blocks(spec, size), start=1):
                    img.write(image, window=window)
                    if cls is not None:
                        cls.write(classes, 1, window=window)
                    if progress is not None:
                        progress(done, total)
        except RasterioError as exc:
            raise OutputWriteError(f"could not write {image_path}: {exc}") from exc
        if tmp_polygons is not None:
            _write_polygons(spec, tmp_polygons)


def _write_polygons(spec: SceneSpec, path: Path) -> None:
    import pyogrio

    gdf = scene_polygons(spec)
    try:
        pyogrio.write_dataframe(
            gdf, path, layer=POLYGON_LAYER, driver="GPKG", geometry_type="Polygon"
        )
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        raise OutputWriteError(f"could not write the ground-truth polygons: {exc}") from exc


def make_sample_scene(
    outdir: str | os.PathLike[str],
    size: int = 4096,
    seed: int = 0,
    pixel_size: float = 0.5,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SceneFiles:
    """Write a square sample scene (image, classes, polygons) into `outdir`.

    Parameters
    ----------
    outdir : str or os.PathLike
        Directory for the three files; created if missing.
    size : int, optional
        Width and height in pixels.
    seed : int, optional
        Scene seed.
    pixel_size : float, optional
        Metres per pixel.
    overwrite : bool, optional
        Replace existing files instead of raising.
    progress : callable, optional
        Called as ``progress(done, total)`` after each rendered block.

    Returns
    -------
    SceneFiles
        ``sample_rgb.tif``, ``sample_classes.tif`` and ``sample_truth.gpkg``
        in `outdir`.

    Raises
    ------
    ConfigError
        `size`, `seed` or `pixel_size` is invalid.
    OutputExistsError
        A file exists and `overwrite` is false.
    OutputWriteError
        `outdir` cannot be created or written.
    """
    spec = SceneSpec(size, size, pixel_size=pixel_size, seed=seed)
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(
            f"could not create output directory {out}: {exc.strerror or exc}; choose another"
        ) from exc
    files = SceneFiles(
        image=out / "sample_rgb.tif",
        classes=out / "sample_classes.tif",
        polygons=out / "sample_truth.gpkg",
    )
    write_scene(
        spec,
        files.image,
        files.classes,
        files.polygons,
        overwrite=overwrite,
        progress=progress,
    )
    return files
