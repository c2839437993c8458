"""What a batch run does: the work file (``regions.yaml``) and the regions it plans.

A batch is one of three kinds of work:

``rasters``
    Many rasters (a list of paths and/or glob patterns); each is one region,
    segmented whole, exactly as ``geoseg predict`` would.
``grid``
    One (huge) raster or VRT mosaic cut into a grid of ``region_size`` pixel
    windows; each window is computed on the raster's global tile grid
    (:attr:`geoseg.pipeline.PredictConfig.region`), so the regions put
    together are bit-identical to a single run over the whole raster.
``aoi``
    The pixel windows of the polygons of an AOI vector file over one raster
    (each polygon's bounding window, on the global tile grid as for ``grid``).

Window regions are exact because each computes every tile of the global grid
that touches it, so tiles straddling a region border are computed once per
region they touch: up to ``(1 + tile / region_size)²`` times the tiles of one
run (512-px tiles: about 25 % more with 4096-px regions; 44 % more measured
with 1024-px regions).  Keep regions many tiles wide.

Relative paths in a work file are relative to the file's directory.  See
``examples/regions.yaml`` for every key.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from geoseg import __version__
from geoseg.errors import ConfigError, GeosegWarning
from geoseg.pipeline import RESAMPLE_TOLERANCE, PredictConfig, VectorizeConfig
from geoseg.types import PixelWindow

__all__ = [
    "Region",
    "WorkSpec",
    "grid_windows",
    "load_work",
    "plan_regions",
    "region_id",
    "vector_fingerprint",
]

WorkMode = Literal["rasters", "grid", "aoi"]

_TOP_KEYS = frozenset(
    {
        "rasters",
        "raster",
        "region_size",
        "aoi",
        "aoi_layer",
        "aoi_id",
        "model",
        "predict",
        "vectorize",
    }
)
_PREDICT_KEYS = frozenset(
    {
        "tile",
        "overlap",
        "batch_size",
        "device",
        "bands",
        "input_range",
        "assume_crs",
        "amp",
        "threads",
        "resample",
        "tta",
        "precision",
        "separate",
    }
)
_VECTORIZE_KEYS = frozenset({"dst_crs", "cleanup", "block_rows", "batch"})
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class WorkSpec:
    """A batch run's work, as read from ``regions.yaml`` (or built in code).

    Parameters
    ----------
    mode : {"rasters", "grid", "aoi"}
        Kind of work (see the module docs).
    sources : tuple of str
        ``rasters``: the input rasters (globs already expanded, in order);
        ``grid``/``aoi``: the one raster or VRT.
    region_size : (int, int), optional
        ``grid``: region (rows, cols) in pixels.
    aoi : str, optional
        ``aoi``: vector file whose polygons give the regions.
    aoi_layer : str, optional
        Layer of ``aoi`` (default: its first).
    aoi_id : str, optional
        Attribute of ``aoi`` holding region ids (default: ``aoi00000``, ... by feature order).
    model : str
        Bundled model name or checkpoint directory.
    predict : PredictConfig
        Options of every region's :func:`~geoseg.pipeline.run_scene`; the batch
        sets ``region`` and ``overwrite``, and writes no ``probabilities``.
    vectorize : VectorizeConfig
        Options of the polygonization (``dst_crs``, ``cleanup``, ``block_rows``, ``batch``).

    Raises
    ------
    ConfigError
        If the fields do not describe exactly one kind of work.
    """

    mode: WorkMode
    sources: tuple[str, ...]
    region_size: tuple[int, int] | None = None
    aoi: str | None = None
    aoi_layer: str | None = None
    aoi_id: str | None = None
    model: str = "default"
    predict: PredictConfig = field(default_factory=PredictConfig)
    vectorize: VectorizeConfig = field(default_factory=VectorizeConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("rasters", "grid", "aoi"):
            raise ConfigError(f"work mode must be rasters, grid or aoi, got {self.mode!r}")
        if not self.sources:
            raise ConfigError("the work names no raster; give 'rasters:' or 'raster:'")
        if self.mode != "rasters" and len(self.sources) != 1:
            raise ConfigError(f"{self.mode} work takes one raster, got {len(self.sources)}")
        if self.mode == "grid":
            if self.region_size is None or min(self.region_size) < 1:
                raise ConfigError(
                    f"region_size must be a positive pixel count, got {self.region_size}; "
                    "e.g. region_size: 4096"
                )
        elif self.region_size is not None:
            raise ConfigError(
                f"region_size only applies to one raster cut into a grid, not to {self.mode} work"
            )
        if (self.mode == "aoi") != (self.aoi is not None):
            raise ConfigError("aoi work needs 'aoi:' (a polygon file) and one 'raster:'")
        if self.predict.probabilities is not None:
            raise ConfigError("batch runs do not write probabilities; remove 'probabilities'")


def _as_size(value: Any) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ConfigError(f"region_size must be a pixel count or [rows, cols], got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        rows, cols = value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (rows, cols)):
            return rows, cols
    raise ConfigError(f"region_size must be a pixel count or [rows, cols], got {value!r}")


def _resolve(path: Any, base: Path, what: str) -> str:
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise ConfigError(f"{what} must be a path, got {path!r}")
    text = os.path.expanduser(os.fspath(path))
    if "://" in text or text.startswith("/vsi"):
        return text
    return os.path.abspath(os.path.join(base, text))


def _expand_rasters(items: Any, base: Path) -> tuple[str, ...]:
    entries = [items] if isinstance(items, str) else items
    if not isinstance(entries, Sequence) or not entries:
        raise ConfigError(f"'rasters' must be a path, a glob or a list of them, got {items!r}")
    out: dict[str, None] = {}
    for entry in entries:
        path = _resolve(entry, base, "each entry of 'rasters'")
        if glob.has_magic(path):
            hits = sorted(glob.glob(path))
            if not hits:
                raise ConfigError(
                    f"'rasters' pattern {entry!r} matches no file (looked for {path})"
                )
            out.update(dict.fromkeys(hits))
        else:
            out[path] = None
    return tuple(out)


def _predict_config(d: Mapping[str, Any]) -> PredictConfig:
    unknown = sorted(set(d) - _PREDICT_KEYS)
    if unknown:
        raise ConfigError(f"unknown 'predict' keys {unknown}; known: {sorted(_PREDICT_KEYS)}")
    return PredictConfig.from_dict(d, section="predict")


def _vectorize_config(d: Mapping[str, Any]) -> VectorizeConfig:
    unknown = sorted(set(d) - _VECTORIZE_KEYS)
    if unknown:
        raise ConfigError(f"unknown 'vectorize' keys {unknown}; known: {sorted(_VECTORIZE_KEYS)}")
    return VectorizeConfig.from_dict(d, section="vectorize")


def load_work(path: str | os.PathLike[str], *, model: str | None = None) -> WorkSpec:
    """Read a work file (``regions.yaml``) into a :class:`WorkSpec`.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML file; relative paths inside are relative to its directory.
    model : str, optional
        Overrides the file's ``model``.

    Returns
    -------
    WorkSpec

    Raises
    ------
    ConfigError
        Unreadable YAML, unknown keys, or not exactly one kind of work.
    """

    p = Path(path)
    from geoseg.settings import read_yaml_file

    data = read_yaml_file(p, f"the work file {p}")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{p} must be a YAML mapping with 'rasters:' or 'raster:'; see examples/regions.yaml"
        )
    return work_from_dict(data, base=p.resolve().parent, model=model, where=str(p))


def work_from_dict(
    data: Mapping[str, Any], *, base: Path, model: str | None = None, where: str = "work"
) -> WorkSpec:
    """Build a :class:`WorkSpec` from the mapping of a work file (see :func:`load_work`)."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_TOP_KEYS)}")
    if ("rasters" in data) == ("raster" in data):
        raise ConfigError(
            f"{where} must have either 'rasters:' (many rasters) or 'raster:' (one raster "
            "with 'region_size:' or 'aoi:')"
        )
    predict = _predict_config(data.get("predict") or {})
    vectorize = _vectorize_config(data.get("vectorize") or {})
    chosen_model = model or str(data.get("model") or "default")
    if chosen_model != "default" and not Path(chosen_model).is_absolute():
        candidate = base / chosen_model
        if candidate.exists():
            chosen_model = str(candidate)
    common: dict[str, Any] = {"model": chosen_model, "predict": predict, "vectorize": vectorize}
    if "rasters" in data:
        for key in ("region_size", "aoi", "aoi_layer", "aoi_id"):
            if key in data:
                raise ConfigError(f"{where}: '{key}' applies to one 'raster:', not to 'rasters:'")
        return WorkSpec("rasters", _expand_rasters(data["rasters"], base), **common)
    source = _resolve(data["raster"], base, "'raster'")
    if ("region_size" in data) == ("aoi" in data):
        raise ConfigError(
            f"{where}: one 'raster:' needs either 'region_size:' (a grid of regions) or 'aoi:' "
            "(the windows of AOI polygons)"
        )
    if "region_size" in data:
        return WorkSpec("grid", (source,), region_size=_as_size(data["region_size"]), **common)
    return WorkSpec(
        "aoi",
        (source,),
        aoi=_resolve(data["aoi"], base, "'aoi'"),
        aoi_layer=data.get("aoi_layer"),
        aoi_id=data.get("aoi_id"),
        **common,
    )


@dataclass(frozen=True)
class Region:
    """One unit of work: a raster, or a window of one.

    ``id`` is unique in the batch and safe as a file name; ``window`` is None
    for a whole raster (``rasters`` work).
    """

    id: str
    src: str
    window: PixelWindow | None = None


def region_id(text: str) -> str:
    """A file-name-safe region id.

    >>> region_id("tile 12/ä.tif")
    'tile_12_.tif'
    """
    out = _ID_UNSAFE.sub("_", text).strip("._") or "region"
    return out[:100]


def grid_windows(height: int, width: int, size: tuple[int, int]) -> list[tuple[str, PixelWindow]]:
    """Cut a ``height`` x ``width`` raster into windows of ``size`` (rows, cols) pixels.

    The last row and column of windows are smaller when the size does not
    divide the raster.  Ids are ``r<row>_c<col>`` (grid indices).

    >>> [(i, (w.row_off, w.col_off, w.height, w.width)) for i, w in grid_windows(5, 7, (4, 4))]
    [('r0000_c0000', (0, 0, 4, 4)), ('r0000_c0001', (0, 4, 4, 3)), ('r0001_c0000', (4, 0, 1, 4)), ('r0001_c0001', (4, 4, 1, 3))]
    """
    rows, cols = size
    out = []
    for i, r in enumerate(range(0, height, rows)):
        for j, c in enumerate(range(0, width, cols)):
            h, w = min(rows, height - r), min(cols, width - c)
            out.append((f"r{i:04d}_c{j:04d}", PixelWindow(r, c, h, w)))
    return out


def _aoi_windows(spec: WorkSpec, raster: Any) -> list[tuple[str, PixelWindow]]:
    import pyogrio
    import pyproj
    import shapely

    assert spec.aoi is not None
    try:
        frame = pyogrio.read_dataframe(spec.aoi, layer=spec.aoi_layer)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise ConfigError(f"cannot read the AOI {spec.aoi}: {exc}") from exc
    if spec.aoi_id is not None and spec.aoi_id not in frame.columns:
        raise ConfigError(
            f"aoi_id {spec.aoi_id!r} is not a field of {spec.aoi}; fields: "
            f"{[c for c in frame.columns if c != frame.geometry.name]}"
        )
    if raster.crs is not None and frame.crs is not None:
        target = pyproj.CRS.from_user_input(raster.crs.to_wkt())
        if not target.equals(frame.crs):
            frame = frame.to_crs(target)
    inverse = ~raster.transform
    out: list[tuple[str, PixelWindow]] = []
    seen: set[str] = set()
    for i, (geom, label) in enumerate(
        zip(
            frame.geometry,
            frame[spec.aoi_id] if spec.aoi_id else range(len(frame)),
            strict=True,
        )
    ):
        if geom is None or shapely.is_empty(geom):
            continue
        x0, y0, x1, y1 = geom.bounds
        # All four corners: on a rotated raster the box's pixel-space extent needs them.
        corners = [inverse * (x, y) for x in (x0, x1) for y in (y0, y1)]
        cols = [c for c, _ in corners]
        rows = [r for _, r in corners]
        window = PixelWindow(
            math.floor(min(rows)),
            math.floor(min(cols)),
            max(1, math.ceil(max(rows)) - math.floor(min(rows))),
            max(1, math.ceil(max(cols)) - math.floor(min(cols))),
        ).clip(raster.height, raster.width)
        if window is None:
            warnings.warn(
                f"AOI feature {i} of {spec.aoi} lies outside {raster.path}; skipped",
                GeosegWarning,
                stacklevel=3,
            )
            continue
        rid = region_id(str(label)) if spec.aoi_id else f"aoi{i:05d}"
        if rid in seen:
            raise ConfigError(
                f"AOI id {rid!r} (field {spec.aoi_id!r}) repeats; region ids must be unique"
            )
        seen.add(rid)
        out.append((rid, window))
    if not out:
        raise ConfigError(f"no AOI polygon of {spec.aoi} overlaps {raster.path}")
    return out


def plan_regions(spec: WorkSpec) -> list[Region]:
    """List the regions of a batch, opening the rasters only to read their size.

    Returns
    -------
    list of Region
        In a stable order (the order of ``rasters``, row-major for grids, AOI
        feature order), with unique ids.

    Raises
    ------
    RasterReadError
        If a raster cannot be opened.
    ConfigError
        For an AOI that is unreadable or misses the raster.
    """
    from geoseg.io.read import describe

    if spec.mode == "rasters":
        regions: list[Region] = []
        taken: set[str] = set()
        for src in spec.sources:
            base = region_id(Path(src).stem)
            rid, n = base, 1
            while rid in taken:
                n += 1
                rid = f"{base}_{n}"
            taken.add(rid)
            regions.append(Region(rid, src))
        return regions
    raster = describe(spec.sources[0])
    if spec.mode == "grid":
        assert spec.region_size is not None
        pairs = grid_windows(raster.height, raster.width, spec.region_size)
    else:
        pairs = _aoi_windows(spec, raster)
    return [Region(rid, spec.sources[0], window) for rid, window in pairs]


def check_resolution(spec: WorkSpec, model_pixel_size_m: float | None) -> None:
    """Refuse, before any work, window regions that cannot be resampled as one run.

    ``geoseg predict`` resamples a raster whose pixels differ from the model's by
    more than 25 % onto the model's grid; batch regions of a north-up raster are
    computed on the same model grid, with the same tiles, and brought back the
    same way (:func:`geoseg.pipeline.model_window`), so they agree with it.  A
    rotated raster's read-back goes through a warper whose approximations depend
    on the window, so its regions are refused unless ``resample: never``.

    Raises
    ------
    ConfigError
        A rotated or sheared raster at another pixel size than the model's, and
        ``resample`` is not ``never``.
    """
    if spec.mode == "rasters" or not model_pixel_size_m or spec.predict.resample == "never":
        return
    from geoseg.io.read import describe

    raster = describe(spec.sources[0])
    ps = raster.pixel_size_m
    t = raster.transform
    if ps and abs(ps / model_pixel_size_m - 1) > RESAMPLE_TOLERANCE and (t.b or t.d):
        m = f"{model_pixel_size_m:g}"
        raise ConfigError(
            f"{spec.sources[0]} has a rotated grid with {ps:.3g} m pixels but the model was "
            f"trained at {model_pixel_size_m:.3g} m, and regions of a rotated grid cannot be "
            f"resampled exactly as 'geoseg predict' resamples it; warp it north-up first "
            f"(gdalwarp -tr {m} {m} -r bilinear IN OUT), or set 'resample: never' under "
            "predict: in the work file to run at its own pixel size"
        )


def fingerprint(region: Region, spec: WorkSpec, model_sha256: str, predict: PredictConfig) -> str:
    """Hex digest of everything a region's class COG depends on (for ``--resume``).

    The source is identified by its path, size and modification time (a VRT by
    its own file only), the model by the sha256 of its weights.  What its
    polygons depend on besides is in :func:`vector_fingerprint`.
    """
    try:
        st = os.stat(region.src)
        stamp: list[int] | None = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    w = region.window
    doc = {
        "geoseg": __version__,
        "src": region.src,
        "stamp": stamp,
        "window": None if w is None else [w.row_off, w.col_off, w.height, w.width],
        "model": model_sha256,
        "predict": {
            k: getattr(predict, k)
            for k in (
                "tile",
                "overlap",
                "bands",
                "input_range",
                "assume_crs",
                "resample",
                "tta",
                "precision",
                "separate",
            )
        },
    }
    return _digest(doc)


def vector_fingerprint(doc: Mapping[str, Any]) -> str:
    """Hex digest of what a region's polygons depend on besides its class COG.

    ``doc`` is plain JSON data: the vectorize options, and for a window the
    mosaic grid, the layers and the region's share of the mosaic.
    """
    return _digest({"geoseg": __version__, **doc})


def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def vectorize_doc(cfg: VectorizeConfig) -> dict[str, Any]:
    """The options of a :class:`VectorizeConfig` that change polygons, as plain JSON data."""
    return {
        "dst_crs": cfg.dst_crs,
        "cleanup": {k: asdict(v) for k, v in sorted((cfg.cleanup or {}).items())},
    }


def region_predict_config(
    spec: WorkSpec, region: Region, *, device: str | None = None, threads: int | None = None
) -> PredictConfig:
    """The :class:`PredictConfig` of one region: the work's, with its window, overwriting."""
    cfg = replace(spec.predict, region=region.window, overwrite=True)
    if device is not None:
        cfg = replace(cfg, device=device)
    if threads is not None and cfg.threads is None:
        cfg = replace(cfg, threads=threads)
    return cfg
