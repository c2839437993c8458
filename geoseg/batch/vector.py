"""Vectorize where you predict: regions polygonized on their workers, only seams joined after.

Window regions (``grid`` and ``aoi`` work) are vectorized by the task that
predicted them, from the class raster it has just written:

1. The region's pixels: its window, less the pixels of any larger window
   that overlaps it (ties: the earlier region wins).  These *owned* areas
   partition the mosaic, and none encloses another (a window that wins
   pixels of a region is at least as large, so it reaches that region's
   edge), which the seam join relies on.  Grid windows do not overlap: each
   owns its window.
2. :func:`geoseg.vectorize.polygonize.polygonize_region` polygonizes the
   owned pixels on the mosaic's pixel grid, with the mosaic's transform, and
   keeps apart the components that touch a pixel owned by another region
   (the shared borders; the mosaic's outer edge and pixels no window covers
   are no seam).
3. The other components are whole: they are cleaned (the class's clean-up,
   in the metric frame of the whole mosaic, clipped to the mosaic), measured
   and reprojected on the worker, and stored with the raw seam pieces in the
   region's vector part (:mod:`geoseg.batch.parts`).

The client then joins the seam pieces of all regions
(:func:`geoseg.vectorize.polygonize.join_seams`: 4-connectivity, same class,
pieces sharing an edge along a seam become one, unioned exactly in pixel
coordinates), cleans the joined polygons (on the cluster, in batches: the
clean-up must see a whole polygon, so only after the join), and writes one
GeoPackage.  Every polygon is the polygon a single ``geoseg predict`` over the
mosaic gives, vertex for vertex before clean-up and identical after.

Features are written region by region in plan order, each region's in raster
order of their first pixel (a joined polygon goes with the region holding its
first pixel), so the GeoPackage is the same whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from affine import Affine

from geoseg import __version__
from geoseg.batch.parquet import SEAMS_PART, ParquetDataset
from geoseg.batch.parts import InteriorPolygons, read_interior, read_seams
from geoseg.io.read import RasterSpec
from geoseg.models.card import ClassInfo
from geoseg.pipeline import clean_and_measure, cleanup_for
from geoseg.types import PixelWindow
from geoseg.vectorize.clean import CleanupParams
from geoseg.vectorize.polygonize import RegionPolygons, join_seams, polygonize_region

__all__ = [
    "CLASS_NODATA",
    "LayerPlan",
    "RegionShare",
    "VectorPlan",
    "clean_layer",
    "merge_parts",
    "plan_shares",
    "region_masks",
    "vector_metadata",
    "vectorize_region",
]

CLASS_NODATA = 255

#: ``mapper(function, *iterables)``: the results of ``function`` over the
#: iterables, in order (the builtin ``map``, or tasks on a dask cluster).
Mapper = Callable[..., Iterable[Any]]


@dataclass(frozen=True)
class LayerPlan:
    """One output layer: a class that is vectorized, and its clean-up."""

    class_id: int
    name: str
    layer: str
    color: str
    cleanup: CleanupParams


@dataclass(frozen=True)
class VectorPlan:
    """What the vectorization of every region of one mosaic shares.

    ``transform``, ``width`` and ``height`` describe the mosaic (the class
    VRT of the batch), ``skip`` the class values that make no polygons,
    ``source`` the value of every feature's ``source`` field.
    """

    transform: Affine
    width: int
    height: int
    layers: tuple[LayerPlan, ...]
    skip: tuple[int, ...]
    dst_crs: str | None
    source: str

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Bounds of the mosaic, as :attr:`geoseg.io.read.RasterSpec.bounds` gives them."""
        spec = RasterSpec(
            path="",
            width=self.width,
            height=self.height,
            count=1,
            dtype="uint8",
            crs=None,
            transform=self.transform,
            nodata=CLASS_NODATA,
            band_names=(),
            colorinterp=(),
            block_shape=(1, 1),
            driver="VRT",
        )
        return spec.bounds

    @classmethod
    def of(
        cls,
        classes: Sequence[ClassInfo],
        postprocess: Mapping[str, Any],
        cleanup: Mapping[str, CleanupParams] | None,
        *,
        transform: Affine,
        width: int,
        height: int,
        dst_crs: str | None,
        source: str,
    ) -> VectorPlan:
        """The plan for a model's classes, as :func:`geoseg.pipeline.run_vectorize` chooses them."""
        layers = tuple(
            LayerPlan(c.id, c.name, c.layer, c.color, cleanup_for(c, postprocess, cleanup))
            for c in classes
            if c.vectorize
        )
        skip = tuple(c.id for c in classes if not c.vectorize)
        return cls(transform, width, height, layers, skip, dst_crs, source)


@dataclass(frozen=True)
class RegionShare:
    """A region's part of the mosaic (pixel windows of the mosaic grid).

    ``beaten_by`` are the windows that own some pixels of ``window``;
    ``others`` every other window that overlaps or touches it (within one
    pixel, diagonal neighbours included).
    """

    window: PixelWindow
    beaten_by: tuple[PixelWindow, ...] = ()
    others: tuple[PixelWindow, ...] = ()


def plan_shares(windows: Sequence[PixelWindow]) -> list[RegionShare]:
    """The :class:`RegionShare` of each window of a mosaic, in the same order.

    A pixel covered by several windows belongs to the largest (ties: the
    first in ``windows``).

    >>> a, b = PixelWindow(0, 0, 4, 4), PixelWindow(2, 2, 4, 3)
    >>> [len(s.beaten_by) for s in plan_shares([a, b])]
    [0, 1]
    """
    if not windows:
        return []
    rows0 = np.array([w.row_off for w in windows])
    cols0 = np.array([w.col_off for w in windows])
    rows1 = np.array([w.row_end for w in windows])
    cols1 = np.array([w.col_end for w in windows])
    tree = shapely.STRtree(shapely.box(cols0, rows0, cols1, rows1))
    # Boxes one pixel larger: their envelopes meet every window within one pixel.
    me, other = tree.query(shapely.box(cols0 - 1, rows0 - 1, cols1 + 1, rows1 + 1))
    near = (me != other) & (
        (np.maximum(rows0[me] - 1, rows0[other]) < np.minimum(rows1[me] + 1, rows1[other]))
        & (np.maximum(cols0[me] - 1, cols0[other]) < np.minimum(cols1[me] + 1, cols1[other]))
    )
    me, other = me[near], other[near]
    overlap = (np.maximum(rows0[me], rows0[other]) < np.minimum(rows1[me], rows1[other])) & (
        np.maximum(cols0[me], cols0[other]) < np.minimum(cols1[me], cols1[other])
    )
    area = (rows1 - rows0) * (cols1 - cols0)
    wins = overlap & ((area[other] > area[me]) | ((area[other] == area[me]) & (other < me)))
    beaten: dict[int, list[int]] = {}
    near_by: dict[int, list[int]] = {}
    for i, j, w in zip(me.tolist(), other.tolist(), wins.tolist(), strict=True):
        near_by.setdefault(i, []).append(j)
        if w:
            beaten.setdefault(i, []).append(j)
    return [
        RegionShare(
            window,
            tuple(windows[j] for j in sorted(beaten.get(i, []))),
            tuple(windows[j] for j in sorted(near_by.get(i, []))),
        )
        for i, window in enumerate(windows)
    ]


def _paint(mask: npt.NDArray[np.bool_], origin: tuple[int, int], window: PixelWindow) -> None:
    """Set the pixels of ``window`` inside ``mask`` (whose first pixel is at ``origin``)."""
    r0, c0 = max(window.row_off - origin[0], 0), max(window.col_off - origin[1], 0)
    r1 = min(window.row_end - origin[0], mask.shape[0])
    c1 = min(window.col_end - origin[1], mask.shape[1])
    if r0 < r1 and c0 < c1:
        mask[r0:r1, c0:c1] = True


def region_masks(share: RegionShare) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The pixels a region owns, and those of them next to a pixel another region owns.

    Returns
    -------
    owned, seam : numpy.ndarray of bool
        Both of the window's shape; ``seam`` pixels have a 4-neighbour owned
        by another region.

    >>> share = plan_shares([PixelWindow(0, 0, 2, 2), PixelWindow(0, 2, 2, 1)])[0]
    >>> [m.astype(int).tolist() for m in region_masks(share)]
    [[[1, 1], [1, 1]], [[0, 1], [0, 1]]]
    """
    w = share.window
    beaten = np.zeros((w.height, w.width), dtype=bool)
    for other in share.beaten_by:
        _paint(beaten, (w.row_off, w.col_off), other)
    owned = ~beaten
    # The window and a one-pixel ring around it: pixels other regions own.
    theirs = np.zeros((w.height + 2, w.width + 2), dtype=bool)
    for other in share.others:
        _paint(theirs, (w.row_off - 1, w.col_off - 1), other)
    theirs[1:-1, 1:-1] &= beaten
    seam = owned & (theirs[:-2, 1:-1] | theirs[2:, 1:-1] | theirs[1:-1, :-2] | theirs[1:-1, 2:])
    return owned, seam


def clean_layer(
    geoms: Sequence[Any],
    first: npt.NDArray[np.int64],
    confidence: npt.NDArray[np.float64],
    layer: LayerPlan,
    crs: Any,
    bounds: tuple[float, float, float, float],
    dst_crs: str | None,
) -> tuple[InteriorPolygons, npt.NDArray[np.int64]]:
    """Clean, measure and reproject whole polygons of one class.

    The same steps, in the same frame, as :func:`geoseg.pipeline.run_vectorize`
    takes for the polygons of a whole raster, so each polygon comes out the same.

    Parameters
    ----------
    geoms : sequence of shapely.Polygon
        Whole polygons of the class ``layer.class_id``, in ``crs``.
    first : numpy.ndarray
        ``(n, 2)`` first pixel ``(row, col)`` of each: its order key.
    confidence : numpy.ndarray
        ``(n,)`` mean confidence of each, NaN where unknown.
    layer : LayerPlan
    crs : rasterio.crs.CRS
        CRS of ``geoms`` (the class raster's).
    bounds : tuple of 4 floats
        Bounds of the whole mosaic (the metric frame, and where polygons are clipped).
    dst_crs : str, optional
        Output CRS (default: ``crs``).

    Returns
    -------
    (InteriorPolygons, numpy.ndarray)
        The polygons kept (a polygon cut at its necks gives several, with
        ``piece`` 0, 1, ...) in input order, and the input index of each.
    """
    if not len(geoms):
        return InteriorPolygons.empty(), np.zeros(0, dtype=np.int64)
    cleaned, areas, perims, origin = clean_and_measure(list(geoms), layer.cleanup, crs, bounds)
    origin = np.asarray(origin, dtype=np.int64)
    piece = np.arange(len(origin)) - np.searchsorted(origin, origin, side="left")
    kept = np.array([i for i, g in enumerate(cleaned) if g is not None], dtype=np.intp)
    out = np.empty(len(kept), dtype=object)
    out[:] = [cleaned[i] for i in kept]
    if dst_crs and len(out):
        import pyproj

        tr = pyproj.Transformer.from_crs(
            pyproj.CRS.from_user_input(crs.to_wkt()),
            pyproj.CRS.from_user_input(dst_crs),
            always_xy=True,
        )
        out = shapely.transform(out, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    src = origin[kept]
    polygons = InteriorPolygons(
        class_id=np.full(len(kept), layer.class_id, dtype=np.int64),
        row=first[src, 0].astype(np.int64),
        col=first[src, 1].astype(np.int64),
        piece=piece[kept].astype(np.int64),
        area_m2=np.asarray(areas, dtype=np.float64)[kept],
        perimeter_m=np.asarray(perims, dtype=np.float64)[kept],
        confidence=confidence[src].astype(np.float64),
        geometry=out,
    )
    return polygons, src


def _mean_confidence(csum: float | None, count: int) -> float:
    if csum is None:
        return float("nan")
    mean = csum / count
    return mean if np.isfinite(mean) else float("nan")


def vectorize_region(
    classes: npt.NDArray[np.uint8], crs: Any, plan: VectorPlan, share: RegionShare
) -> tuple[InteriorPolygons, RegionPolygons]:
    """Polygonize a region's class raster: its whole polygons cleaned, its seam pieces raw.

    Parameters
    ----------
    classes : numpy.ndarray
        The region's class raster (its whole window), nodata 255.
    crs : rasterio.crs.CRS
        CRS of the class raster.
    plan : VectorPlan
    share : RegionShare

    Returns
    -------
    (InteriorPolygons, RegionPolygons)
        The finished polygons in write order, and the seam pieces of the
        vectorized classes with their border pixels (``interior`` empty).
    """
    w = share.window
    owned, seam = region_masks(share)
    arr = np.where(owned, classes, np.uint8(CLASS_NODATA))
    polys = polygonize_region(
        arr,
        plan.transform,
        offset=(w.row_off, w.col_off),
        seam=seam if seam.any() else None,
        nodata=CLASS_NODATA,
        skip_values=plan.skip,
    )
    wanted = {layer.class_id for layer in plan.layers}
    keep = np.array([i for i, p in enumerate(polys.seams) if p.value in wanted], dtype=np.int64)
    renumber = np.full(len(polys.seams), -1, dtype=np.int64)
    renumber[keep] = np.arange(len(keep))
    owner = renumber[polys.seam_owner]
    seams = RegionPolygons(
        interior=[],
        interior_first=np.zeros((0, 2), dtype=np.int64),
        seams=[polys.seams[i] for i in keep.tolist()],
        seam_pixels=polys.seam_pixels[owner >= 0],
        seam_owner=owner[owner >= 0],
    )
    values = np.array([r.value for r in polys.interior], dtype=np.int64)
    parts = []
    for layer in plan.layers:
        idx = np.flatnonzero(values == layer.class_id)
        recs = [polys.interior[i] for i in idx.tolist()]
        conf = np.array(
            [_mean_confidence(r.confidence_sum, r.pixel_count) for r in recs], dtype=np.float64
        )
        cleaned, _ = clean_layer(
            [r.geometry for r in recs],
            polys.interior_first[idx],
            conf,
            layer,
            crs,
            plan.bounds,
            plan.dst_crs,
        )
        parts.append(cleaned)
    return InteriorPolygons.concat(parts).sorted(), seams


def vector_metadata(tags: Mapping[str, str], plan: VectorPlan, class_raster: str) -> dict[str, str]:
    """Dataset metadata of the merged GeoPackage, as :func:`geoseg.pipeline.run_vectorize` writes it.

    ``tags`` are those of a region's class raster (model, source, parameters).
    """
    return {
        "geoseg_version": __version__,
        "model": tags.get("GEOSEG_MODEL", "unknown"),
        "model_sha256": tags.get("GEOSEG_MODEL_SHA256", "unknown"),
        "input": tags.get("GEOSEG_SOURCE", class_raster),
        "class_raster": class_raster,
        "predict_parameters": tags.get("GEOSEG_PARAMETERS", "{}"),
        "parameters": json.dumps(
            {
                "cleanup": {layer.name: asdict(layer.cleanup) for layer in plan.layers},
                "dst_crs": plan.dst_crs,
                "confidence": None,
            }
        ),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _join_and_clean(
    parts: Sequence[Path], plan: VectorPlan, crs: Any, batch: int, mapper: Mapper
) -> tuple[InteriorPolygons, npt.NDArray[np.int64]]:
    """The joined seam polygons, cleaned, and the region each belongs to."""
    joined = join_seams([read_seams(p) for p in parts], plan.transform)
    jobs: list[tuple[Any, ...]] = []
    homes: list[npt.NDArray[np.int64]] = []
    for layer in plan.layers:
        mine = [j for j in joined if j.record.value == layer.class_id]
        for k in range(0, len(mine), batch):
            chunk = mine[k : k + batch]
            jobs.append(
                (
                    [j.record.geometry for j in chunk],
                    np.array([j.first_pixel for j in chunk], dtype=np.int64).reshape(-1, 2),
                    np.array(
                        [
                            _mean_confidence(j.record.confidence_sum, j.record.pixel_count)
                            for j in chunk
                        ],
                        dtype=np.float64,
                    ),
                    layer,
                )
            )
            homes.append(np.array([j.region for j in chunk], dtype=np.int64))
    if not jobs:
        return InteriorPolygons.empty(), np.zeros(0, dtype=np.int64)
    n = len(jobs)
    results = list(
        mapper(
            clean_layer,
            [j[0] for j in jobs],
            [j[1] for j in jobs],
            [j[2] for j in jobs],
            [j[3] for j in jobs],
            [crs] * n,
            [plan.bounds] * n,
            [plan.dst_crs] * n,
        )
    )
    cleaned = InteriorPolygons.concat([polys for polys, _ in results])
    home = np.concatenate([h[src] for h, (_, src) in zip(homes, results, strict=True)])
    return cleaned, home.astype(np.int64)


def merge_parts(
    parts: Sequence[Path],
    plan: VectorPlan,
    dst: Path | None,
    *,
    crs: Any,
    metadata: Mapping[str, str],
    batch: int = 2000,
    mapper: Mapper | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    parquet: Path | None = None,
    region_ids: Sequence[str] | None = None,
) -> dict[str, int]:
    """Join the seams of the regions' vector parts and write one GeoPackage and/or GeoParquet.

    Parameters
    ----------
    parts : sequence of Path
        The vector part of every region, in plan order (the order of the
        shares the parts were made with).
    plan : VectorPlan
    dst : Path or None
        The GeoPackage, replaced atomically; None writes none.
    crs : rasterio.crs.CRS
        CRS of the class rasters.
    metadata : mapping
        Dataset metadata (see :func:`vector_metadata`).
    batch : int
        Joined polygons cleaned per task, and features written at once.
    mapper : callable, optional
        Runs the clean-up of the joined polygons (see :data:`Mapper`); the
        builtin ``map`` when None.
    progress : callable, optional
        ``progress(regions_written, regions_total)``.
    timings : dict, optional
        Receives the wall seconds of ``seams`` (join and clean-up) and
        ``write`` (the GeoPackage and the GeoParquet dataset).
    parquet : Path, optional
        Also write a partitioned GeoParquet dataset here
        (:mod:`geoseg.batch.parquet`): one file per region with its own
        polygons, and ``seams.parquet`` with the joined ones.  With a
        ``mapper``, the region files are written through it (on the cluster,
        side by side); only the seam file is written here.
    region_ids : sequence of str, optional
        Region ids of ``parts`` (the parquet file names); default the part
        file names without ``.vector.npz``.

    Returns
    -------
    dict
        Layer name -> features written.

    Raises
    ------
    BatchError
        A part is missing or damaged.
    OutputWriteError
        The GeoPackage cannot be written.
    """
    import pyproj

    from geoseg.io.write_vector import LayerSpec, VectorWriter

    t0 = time.perf_counter()
    seams, home = _join_and_clean(parts, plan, crs, batch, mapper or map)
    t1 = time.perf_counter()
    by_home = np.argsort(home, kind="stable")
    cuts = np.searchsorted(home[by_home], np.arange(len(parts) + 1))
    out_crs = pyproj.CRS.from_user_input(plan.dst_crs or crs.to_wkt())
    layers = [LayerSpec(lp.layer, lp.class_id, lp.name, lp.color) for lp in plan.layers]
    pending: dict[int, list[InteriorPolygons]] = {lp.class_id: [] for lp in plan.layers}
    names = {lp.class_id: lp.layer for lp in plan.layers}
    counts = {lp.class_id: 0 for lp in plan.layers}

    def flush(writer: VectorWriter, class_id: int) -> None:
        rows = InteriorPolygons.concat(pending[class_id])
        pending[class_id] = []
        if not len(rows):
            return
        writer.write(
            names[class_id],
            rows.geometry,
            {
                "area_m2": rows.area_m2.tolist(),
                "perimeter_m": rows.perimeter_m.tolist(),
                "confidence": [None if np.isnan(c) else c for c in rows.confidence.tolist()],
                "source": [plan.source] * len(rows),
            },
        )

    ids = list(region_ids) if region_ids is not None else [_part_id(p) for p in parts]
    with contextlib.ExitStack() as stack:
        writer = (
            stack.enter_context(
                VectorWriter(dst, crs=out_crs, layers=layers, metadata=metadata, overwrite=True)
            )
            if dst is not None
            else None
        )
        dataset = (
            stack.enter_context(
                ParquetDataset(
                    parquet,
                    crs=out_crs,
                    classes={lp.class_id: lp.name for lp in plan.layers},
                    metadata=metadata,
                    extra={
                        "layers": [
                            {"class_id": lp.class_id, "class": lp.name, "color": lp.color}
                            for lp in plan.layers
                        ]
                    },
                )
            )
            if parquet is not None
            else None
        )
        mapped = False
        if dataset is not None and mapper is not None:
            # Each region's file is written where the cluster runs, side by side: the
            # GeoParquet dataset has no single writer (the GeoPackage has one, below).
            n_parts = len(parts)
            written = list(
                mapper(
                    write_region_file,
                    [str(dataset.staging)] * n_parts,
                    ids,
                    [str(p) for p in parts],
                    [out_crs.to_wkt()] * n_parts,
                    [dict(dataset.classes)] * n_parts,
                    [plan.source] * n_parts,
                )
            )
            for part_id, (n_rows, class_ids) in zip(ids, written, strict=True):
                dataset.record(part_id, n_rows, class_ids)
            mapped = True
        if mapped and writer is None:
            # Nothing left to read here: the regions' rows were counted as they were written.
            assert dataset is not None
            for class_id in counts:
                counts[class_id] += dataset.class_counts.get(class_id, 0)
            if progress is not None:
                progress(len(parts), len(parts))
            parts_here: Sequence[Path] = ()
        else:
            parts_here = parts
        for i, path in enumerate(parts_here):
            interior = read_interior(path)
            if dataset is not None and not mapped:
                _write_part(dataset, ids[i], interior.sorted(), plan.source)
            if writer is not None:
                mine = seams.take(by_home[cuts[i] : cuts[i + 1]])
                region = InteriorPolygons.concat([interior, mine]).sorted()
                for class_id in pending:
                    rows = region.take(np.flatnonzero(region.class_id == class_id))
                    if len(rows):
                        pending[class_id].append(rows)
                    if sum(len(r) for r in pending[class_id]) >= batch:
                        flush(writer, class_id)
            else:
                region = interior
            for class_id in counts:
                counts[class_id] += int(np.count_nonzero(region.class_id == class_id))
            if progress is not None:
                progress(i + 1, len(parts))
        if writer is not None:
            for class_id in pending:
                flush(writer, class_id)
        if dataset is not None:
            _write_part(dataset, SEAMS_PART, seams.take(by_home), plan.source)
            if writer is None:
                for class_id in counts:
                    counts[class_id] += int(np.count_nonzero(seams.class_id == class_id))
    if timings is not None:
        timings["seams"] = t1 - t0
        timings["write"] = time.perf_counter() - t1
    return {names[c]: n for c, n in counts.items()} if writer is None else writer.feature_counts


def write_region_file(
    directory: str, part: str, path: str, crs_wkt: str, classes: dict[int, str], source: str
) -> tuple[int, npt.NDArray[np.int32]]:
    """Write one region's finished polygons (its vector part) as ``<part>.parquet``.

    Runs on a worker; returns the rows written and their class ids.
    """
    import pyproj

    from geoseg.batch.parquet import write_part_file

    rows = read_interior(Path(path)).sorted()
    crs = pyproj.CRS.from_wkt(crs_wkt)
    n = write_part_file(Path(directory), part, crs=crs, classes=classes, **_columns(rows, source))
    return n, np.asarray(rows.class_id, dtype=np.int32)


def _columns(rows: InteriorPolygons, source: str) -> dict[str, Any]:
    """The GeoParquet columns of some polygons (see :func:`~geoseg.batch.parquet.write_part_file`)."""
    return {
        "class_id": rows.class_id,
        "area_m2": rows.area_m2,
        "perimeter_m": rows.perimeter_m,
        "confidence": rows.confidence,
        "geometry": rows.geometry,
        "source": source,
    }


def _part_id(path: Path) -> str:
    name = Path(path).name
    return name[: -len(".vector.npz")] if name.endswith(".vector.npz") else Path(path).stem


def _write_part(dataset: ParquetDataset, part: str, rows: InteriorPolygons, source: str) -> None:
    dataset.write(part, **_columns(rows, source))
