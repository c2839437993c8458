"""Predict a scene with an instance model: polygons with scores, and a class raster.

The tiles of the model grid go through the detector row by row; each tile's
instances are placed on the map and merged with those of the tiles it overlaps
(:class:`geoseg.infer.instances.InstanceMerger`: one object, one polygon, the
instance farthest from its tile's inner edges winning).  As soon as no later
tile can touch an instance it is final: it is cleaned as its class says (the
card's clean-up, as for semantic models), written to its layer with its score
(``confidence``), and painted into the class raster, which is written strip by
strip on the input's own grid.  Memory holds about one row of tiles of
instances and one strip of the class raster, whatever the raster's size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from geoseg import __version__
from geoseg.errors import ConfigError, GeoreferenceError
from geoseg.infer.instances import Instance, InstanceMerger, InstanceParams, tile_instances
from geoseg.infer.predictor import normalize, resolve_device
from geoseg.io.atomic import check_output_path
from geoseg.io.read import RasterSource
from geoseg.io.write_raster import RasterStripWriter
from geoseg.pipeline.measure import VectorStats, cleanup_for, output_crs
from geoseg.tiling import make_grid, model_window
from geoseg.types import PixelWindow, Tile

if TYPE_CHECKING:
    from geoseg.io.write_vector import VectorWriter
    from geoseg.pipeline.predict import ProgressFn, RunStats, ScenePlan
    from geoseg.vectorize import CleanupParams

log = logging.getLogger(__name__)

__all__ = ["InstanceCollector", "InstanceVectors", "anchor_pixel", "execute_instances"]


def anchor_pixel(geometry: Any, transform: Any) -> tuple[int, int]:
    """The pixel ``(row, col)`` of ``transform``'s grid under a point on ``geometry``'s surface."""
    p = geometry.point_on_surface()
    col, row = ~transform * (p.x, p.y)
    return int(np.floor(row)), int(np.floor(col))


@dataclass(frozen=True)
class InstanceVectors:
    """Where and how an instance run writes its polygons.

    Attributes
    ----------
    dst : Path, optional
        The vector file (GeoPackage: one styled layer per instance class); None
        with ``collect``.
    cleanup : mapping of class name to CleanupParams, optional
        Clean-up overrides per class (else the card's).
    dst_crs : str, optional
        CRS of the polygons (default: the raster's).
    collect : InstanceCollector, optional
        Keep the polygons in memory instead of writing a file (a batch window
        region: its worker stores them in the region's vector part).
    """

    dst: Path | None
    cleanup: Mapping[str, CleanupParams] | None = None
    dst_crs: str | None = None
    collect: InstanceCollector | None = None


@dataclass
class InstanceCollector:
    """The polygons of a region's instances, for :mod:`geoseg.batch` (no file written).

    A batch window region runs the tiles that reach its window
    (:func:`execute_instances`), so each object that touches the window is merged
    as a run over the whole raster merges it.  Neighbouring regions find
    the same object; it is kept only by the region that ``owns`` its *anchor*:
    the input-grid pixel ``(row, col)`` under a point on the surface of its raw
    polygon, the same in every region.

    Attributes
    ----------
    owns : callable
        ``owns(row, col)``: whether this region keeps an object anchored at that
        pixel of the input raster.
    class_id, anchor, area_m2, perimeter_m, confidence, geometry : list
        One entry per kept polygon (cleaned, measured, in the output CRS); filled
        by the run.
    """

    owns: Callable[[int, int], bool]
    class_id: list[int] = field(default_factory=list)
    anchor: list[tuple[int, int]] = field(default_factory=list)
    area_m2: list[float] = field(default_factory=list)
    perimeter_m: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    geometry: list[Any] = field(default_factory=list)


class _Painter:
    """Paints final instances into class strips of the output window, top to bottom.

    Rows are rows of the input raster; the writer's row 0 is ``window.row_off``.
    """

    def __init__(
        self,
        writer: RasterStripWriter,
        source: RasterSource,
        counts: np.ndarray,
        window: PixelWindow,
    ):
        self.writer, self.source, self.counts = writer, source, counts
        self.spec, self.window = source.spec, window
        self.done = window.row_off  # input rows written
        self.pending: list[tuple[Any, int, float]] = []  # geometry, class id, last input row

    def add(self, inst: Instance, geometry: Any) -> None:
        x0, y0, x1, y1 = geometry.bounds
        inv = ~self.spec.transform
        last = max((inv * (x, y))[1] for x, y in ((x0, y0), (x1, y1)))
        self.pending.append((geometry, inst.class_id, last))

    def paint(self, until: int) -> None:
        """Write output rows ``done .. until`` (exclusive) from the instances added so far."""
        import rasterio.features
        from affine import Affine

        spec, window = self.spec, self.window
        until = min(until, window.row_end)
        step = 512
        while self.done < until:
            rows = min(step, until - self.done)
            win = PixelWindow(self.done, window.col_off, rows, window.width)
            _, valid = self.source.read(win)
            classes = np.zeros((rows, window.width), np.uint8)
            tf = spec.transform * Affine.translation(window.col_off, self.done)
            shapes = [(g, c) for g, c, _ in self.pending]
            if shapes:
                rasterio.features.rasterize(
                    shapes, out=classes, transform=tf, all_touched=False, dtype=np.uint8
                )
            classes[~valid] = 255
            self.counts[:] += np.bincount(classes.ravel(), minlength=256)
            self.writer.write(self.done - window.row_off, classes)
            self.done += rows
            # Instances wholly above the rows written are done with.
            self.pending = [p for p in self.pending if p[2] > self.done]


def _out_row(model_row: int, model_tf: Any, out_tf: Any) -> int:
    """The output-grid row at the top edge of model-grid row ``model_row`` (rounded down)."""
    y = (model_tf * (0, model_row))[1]
    return int(np.floor((~out_tf * (out_tf.c, y))[1] + 1e-9))


def _check_instance_run(plan: ScenePlan) -> None:
    """Refuse, before any work, what an instance model cannot do."""
    src, cfg, spec, card = plan.src, plan.cfg, plan.spec, plan.loaded.card
    if spec.transform.b != 0 or spec.transform.d != 0:
        raise ConfigError(
            f"{src} is rotated; instance models need a north-up raster (warp it first, "
            "e.g. gdalwarp in.tif out.tif)"
        )
    if cfg.tta not in (None, "none"):
        raise ConfigError("tta is for semantic models; instance models run without it")
    if cfg.probabilities is not None:
        raise ConfigError(
            "an instance model has no class probabilities to write; its polygons carry each "
            "object's score (confidence)",
            field="probabilities",
        )
    if cfg.backend not in (None, "auto", "torch") or cfg.precision == "int8":
        raise ConfigError(
            f"{card.name} is an instance model: it runs on PyTorch in float32 "
            "(use backend='auto' and precision='auto')"
        )


def _region_tiles(
    plan: ScenePlan, grid: Any, rspec: Any
) -> tuple[PixelWindow, list[int], list[int]]:
    """The output window (input pixels) and the grid rows and columns of tiles to run.

    A whole raster runs every tile; a batch window region the tiles of the whole
    run's grid that reach its window (on the model grid).  Every tile that sees an
    object touching the window whole reaches the window too, so such an object is
    kept, merged and painted as the whole run keeps it; only an object that no tile
    sees whole (larger than a tile) may be merged from other cut pieces.
    """
    spec, region = plan.spec, plan.cfg.region
    n_rows, n_cols = grid.shape
    if region is None:
        return PixelWindow(0, 0, spec.height, spec.width), list(range(n_rows)), list(range(n_cols))
    core = region if plan.resolution is None else model_window(region, spec, rspec)
    r0, r1, c0, c1 = core.row_off, core.row_end, core.col_off, core.col_end
    rows = [i for i, s in enumerate(grid.row_starts) if s < r1 and s + grid.tile_h > r0]
    cols = [i for i, s in enumerate(grid.col_starts) if s < c1 and s + grid.tile_w > c0]
    return region, rows, cols


class _Detector:
    """Runs tiles through the detector: each tile's instances, placed on the map."""

    def __init__(
        self,
        model: Any,
        device: Any,
        card: Any,
        input_range: tuple[float, float] | None,
        grid_spec: Any,
        params: InstanceParams,
    ) -> None:
        self.model, self.device, self.card = model, device, card
        self.input_range, self.spec, self.params = input_range, grid_spec, params

    def __call__(
        self, tiles: list[Tile], reader: RasterSource, stats: RunStats
    ) -> list[list[Instance]]:
        import torch

        reads = [reader.read(t.window) for t in tiles]
        keep = [(t, d, v) for t, (d, v) in zip(tiles, reads, strict=True) if v.any()]
        stats.tiles += len(tiles)
        stats.skipped_tiles += len(tiles) - len(keep)
        if not keep:
            return []
        x = np.stack([normalize(d, v, self.card, self.input_range) for _, d, v in keep])
        with torch.inference_mode():
            outs = self.model(torch.from_numpy(x).to(self.device))
        found = []
        for (t, _, v), o in zip(keep, outs, strict=True):
            arrays = {k: val.detach().cpu().numpy() for k, val in o.items()}
            found.append(
                tile_instances(arrays, t, v, self.spec.transform, self.spec.shape, self.params)
            )
        return found


def execute_instances(
    plan: ScenePlan,
    stats: RunStats,
    tags: dict[str, str],
    progress: ProgressFn | None = None,
    vectors: InstanceVectors | None = None,
) -> VectorStats | None:
    """Run a planned scene through an instance model; see the module docs.

    Fills the raster run's ``stats`` (tiles, class pixels, outputs) and writes
    the class raster with ``tags``; returns the polygons' statistics when
    ``vectors`` is given.
    """
    import torch

    src, dst, cfg, spec, loaded = plan.src, plan.dst, plan.cfg, plan.spec, plan.loaded
    card = loaded.card
    _check_instance_run(plan)
    params = InstanceParams.from_card(card.postprocess)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = loaded.model.to(device).eval()
    tags["GEOSEG_ENGINE"] = "torch fp32"
    tags["GEOSEG_TASK"] = "instance"
    counts = np.zeros(256, np.int64)
    vstats = VectorStats() if vectors is not None else None
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(
            RasterSource(
                src, bands=list(plan.bands), resolution=plan.resolution, assume_crs=cfg.assume_crs
            )
        )
        out_valid = stack.enter_context(
            RasterSource(src, bands=list(plan.bands), assume_crs=cfg.assume_crs)
        )
        rspec = reader.spec
        grid = make_grid(
            rspec.height,
            rspec.width,
            tile=cfg.tile or card.tile_size,
            overlap=card.overlap if cfg.overlap is None else cfg.overlap,
            stride=card.stride,
        )
        window, rows_run, cols_run = _region_tiles(plan, grid, rspec)
        if cfg.region is not None:
            stats.width, stats.height = window.width, window.height
            stats.pixels = window.width * window.height
            if stats.area_km2 is not None:
                stats.area_km2 *= stats.pixels / (spec.width * spec.height)
        writer = stack.enter_context(
            RasterStripWriter(
                dst,
                crs=rspec.crs,
                transform=spec.transform * Affine.translation(window.col_off, window.row_off),
                width=window.width,
                height=window.height,
                colormap={c.id: c.rgb for c in card.classes},
                class_names=[c.name for c in card.classes],
                overwrite=cfg.overwrite,
                tags=tags,
            )
        )
        painter = _Painter(writer, out_valid, counts, window)
        sink = (
            _VectorSink(stack, vectors, card, spec, tags, vstats, overwrite=cfg.overwrite)
            if vectors
            else None
        )
        merger = InstanceMerger(rspec.transform, params.match_iou)

        def finish(instances: Iterator[Instance]) -> None:
            batch = list(instances)
            geoms = sink.write(batch) if sink is not None else [i.geometry for i in batch]
            for inst, g in zip(batch, geoms, strict=True):
                if g is not None:
                    painter.add(inst, g)

        detect = _Detector(model, device, card, cfg.input_range, rspec, params)
        batch_size = max(1, cfg.batch_size or 2)
        total, done = len(rows_run) * len(cols_run), 0
        for k, r in enumerate(rows_run):
            tiles = [grid.tile(r, c) for c in cols_run]
            for i in range(0, len(tiles), batch_size):
                chunk = tiles[i : i + batch_size]
                for found in detect(chunk, reader, stats):
                    merger.add(found)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            nxt = grid.row_starts[rows_run[k + 1]] if k + 1 < len(rows_run) else None
            finish(merger.release(nxt))
            # Output rows above every instance still held and every tile to come are final.
            limits = [v for v in (nxt, merger.top()) if v is not None]
            if limits:
                painter.paint(_out_row(min(limits), rspec.transform, spec.transform))
        painter.paint(window.row_end)
        if sink is not None:
            sink.close()
    stats.class_pixels = {c.id: int(counts[c.id]) for c in card.classes}
    stats.outputs = [str(dst)]
    log.info("%d instances merged away across tile overlaps", merger.merged)
    if vstats is not None:
        vstats.pixels = stats.pixels
        vstats.elapsed_s = time.perf_counter() - plan.started
    return vstats


class _VectorSink:
    """Cleans final instances as their class says; writes them with their scores or collects them."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        vectors: InstanceVectors,
        card: Any,
        spec: Any,
        tags: Mapping[str, str],
        vstats: VectorStats | None,
        *,
        overwrite: bool,
    ) -> None:
        from geoseg.io.write_vector import LayerSpec, VectorWriter

        if spec.crs is None:
            raise GeoreferenceError(f"{tags['GEOSEG_SOURCE']} has no CRS; polygons need one")
        if (vectors.dst is None) == (vectors.collect is None):
            raise ConfigError("instance polygons need one of dst and collect")
        wanted = [c for c in card.classes[1:] if c.vectorize]
        self.params = {c.id: cleanup_for(c, card.postprocess, vectors.cleanup) for c in wanted}
        self.by_id = {c.id: c for c in wanted}
        self.crs, self.bounds, self.transform = spec.crs, spec.bounds, spec.transform
        out_crs, self.to_out = output_crs(spec.crs, vectors.dst_crs)
        self.collect = vectors.collect
        self.writer: VectorWriter | None = None
        if vectors.dst is not None:
            check_output_path(vectors.dst, overwrite=overwrite)
            metadata = {
                "geoseg_version": __version__,
                "model": tags["GEOSEG_MODEL"],
                "model_sha256": tags["GEOSEG_MODEL_SHA256"],
                "input": tags["GEOSEG_SOURCE"],
                "task": "instance",
                "predict_parameters": tags["GEOSEG_PARAMETERS"],
                "parameters": json.dumps(
                    {
                        "cleanup": {self.by_id[k].name: asdict(v) for k, v in self.params.items()},
                        "dst_crs": vectors.dst_crs,
                        "instances": asdict(InstanceParams.from_card(card.postprocess)),
                    }
                ),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.writer = stack.enter_context(
                VectorWriter(
                    vectors.dst,
                    crs=out_crs,
                    layers=[LayerSpec(c.layer, c.id, c.name, c.color) for c in wanted],
                    metadata=metadata,
                    overwrite=overwrite,
                )
            )
        self.vstats = vstats
        if vstats is not None:
            vstats.polygons = {c.layer: 0 for c in wanted}
            vstats.area_m2 = {c.layer: 0.0 for c in wanted}
            if self.writer is not None:
                vstats.outputs = [str(p) for p in dict.fromkeys(self.writer.outputs.values())]
        self.source = tags["GEOSEG_SOURCE"]

    def write(self, batch: list[Instance]) -> list[Any]:
        """Clean and write (or collect) final instances; their cleaned geometries (None: dropped).

        With a collector every instance is cleaned (the class raster is painted from
        the cleaned shapes) but only those the region owns are kept.
        """
        from geoseg.vectorize import clean_geometries

        out: list[Any] = [None] * len(batch)
        for cid in self.by_id:
            idx = [i for i, inst in enumerate(batch) if inst.class_id == cid]
            if not idx:
                continue
            cleaned = clean_geometries(
                [batch[i].geometry for i in idx], self.params[cid], crs=self.crs, bounds=self.bounds
            )
            for i, g in zip(idx, cleaned, strict=True):
                out[i] = g
            # Anchors only matter to a batch region's collector (which objects it owns).
            anchors = (
                {i: anchor_pixel(batch[i].geometry, self.transform) for i in idx}
                if self.collect is not None
                else {}
            )
            mine = [i for i in idx if self.collect is None or self.collect.owns(*anchors[i])]
            kept = [(i, out[i]) for i in mine if out[i] is not None]
            if self.vstats is not None:
                self.vstats.dropped += len(mine) - len(kept)
            if kept:
                self._emit(cid, batch, kept, [anchors.get(i, (0, 0)) for i, _ in kept])
        return out

    def _emit(
        self,
        cid: int,
        batch: list[Instance],
        kept: list[tuple[int, Any]],
        anchors: list[tuple[int, int]],
    ) -> None:
        import shapely

        from geoseg.vectorize.metric import area_perimeter_m

        cls = self.by_id[cid]
        geoms = [g for _, g in kept]
        area, perim = area_perimeter_m(geoms, self.crs, self.bounds)
        placed = (
            geoms
            if self.to_out is None
            else list(shapely.transform(np.asarray(geoms, object), self._xy, interleaved=False))
        )
        scores = [batch[i].score for i, _ in kept]
        if self.writer is not None:
            self.writer.write(
                cls.layer,
                placed,
                {
                    "area_m2": list(area),
                    "perimeter_m": list(perim),
                    "confidence": scores,
                    "source": [self.source] * len(kept),
                },
            )
        if self.collect is not None:
            c = self.collect
            c.class_id.extend([cid] * len(kept))
            c.anchor.extend(anchors)
            c.area_m2.extend(float(a) for a in area)
            c.perimeter_m.extend(float(p) for p in perim)
            c.confidence.extend(scores)
            c.geometry.extend(placed)
        if self.vstats is not None:
            self.vstats.polygons[cls.layer] += len(kept)
            self.vstats.area_m2[cls.layer] += float(np.sum(area))

    def _xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.to_out(x, y)

    def close(self) -> None:
        """Nothing to do: the writer finishes with the run's exit stack."""
