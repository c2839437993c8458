"""The polygons of a batch as a partitioned GeoParquet dataset.

``geoseg batch --format parquet`` writes ``polygons.parquet/``, a directory
that geopandas (``geopandas.read_parquet(dir)``), dask-geopandas and DuckDB
(``read_parquet('dir/*.parquet')``) read as one table:

* ``<region id>.parquet``: the finished polygons of one region, those that
  touch no other region, in the order the GeoPackage has them;
* ``seams.parquet``: the polygons joined across region borders;
* ``_geoseg.json``: the run's metadata and the classes with their colours
  (readers skip names starting with ``_``).

Every file has the same columns (``class``, ``class_id``, ``area_m2``,
``perimeter_m``, ``confidence``, ``source``, ``region``, ``geometry``: a
MultiPolygon, as in the GeoPackage layers) and
GeoParquet 1.1 metadata with a ``bbox`` covering column, so readers can skip
row groups outside a query box.  geopandas and pyarrow do the encoding.  The
directory is built under a temporary name and renamed into place; a run that
stops half-way leaves no ``polygons.parquet``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from geoseg.errors import GeosegError, OutputWriteError, raise_if_stop_requested
from geoseg.io.env import no_pam_sidecars

__all__ = [
    "PARQUET_NAME",
    "SEAMS_PART",
    "ParquetDataset",
    "dataset_files",
    "layer_rows",
    "require_parquet",
]

#: The dataset directory inside a batch output directory.
PARQUET_NAME = "polygons.parquet"
#: The part that holds the polygons joined across region borders.
SEAMS_PART = "seams"
_META = "_geoseg.json"


def require_parquet() -> None:
    """Fail with one line when pyarrow (or a GeoParquet 1.1 capable geopandas) is missing.

    Raises
    ------
    GeosegError
        With the install command.
    """
    try:
        import geopandas
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise GeosegError(
            f"GeoParquet output needs pyarrow ({exc.name} is not installed); "
            "pip install 'geoseg[parquet]' or write formats=gpkg only"
        ) from exc
    major = int(geopandas.__version__.split(".")[0])
    if major < 1:
        raise GeosegError(
            f"GeoParquet 1.1 output needs geopandas >= 1.0 (found {geopandas.__version__}); "
            "pip install 'geoseg[parquet]' or write formats=gpkg only"
        )


class ParquetDataset:
    """Writes one GeoParquet file per part into a directory that appears whole.

    Parameters
    ----------
    dst : Path
        The dataset directory; an existing one is replaced when the writer
        closes without error.
    crs : pyproj.CRS
        CRS of every geometry written.
    classes : mapping
        Class id -> class name, for the ``class`` column.
    metadata : mapping
        Run metadata, written to ``_geoseg.json`` with ``extra``.
    extra : mapping, optional
        More JSON-serialisable entries for ``_geoseg.json`` (e.g. class colours).
    """

    def __init__(
        self,
        dst: Path,
        *,
        crs: Any,
        classes: Mapping[int, str],
        metadata: Mapping[str, str],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        require_parquet()
        self.dst = Path(dst)
        self.crs = crs
        self.classes = dict(classes)
        self.metadata = dict(metadata)
        self.extra = dict(extra or {})
        self.counts: dict[str, int] = {}
        #: Rows written per class id.
        self.class_counts: dict[int, int] = {}
        self._tmp = self.dst.parent / f".{self.dst.name}.geoseg-{uuid.uuid4().hex[:12]}"
        try:
            self._tmp.mkdir(parents=True)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot create {self._tmp.parent}: {exc.strerror or exc}; "
                "choose a writable output directory"
            ) from exc

    def write(self, part: str, **columns: Any) -> int:
        """Write the polygons of one part (a region id or :data:`SEAMS_PART`) to ``<part>.parquet``.

        ``columns`` are those of :func:`write_part_file`: ``class_id``, ``area_m2``,
        ``perimeter_m``, ``confidence`` (NaN where unknown, written as null),
        ``geometry`` and ``source`` (one value for every row or one per row).
        Returns the number of rows written.
        """
        n = write_part_file(self._tmp, part, crs=self.crs, classes=self.classes, **columns)
        self.record(part, n, np.asarray(columns["class_id"], dtype=np.int32))
        return n

    @property
    def staging(self) -> Path:
        """The directory the parts are written to until :meth:`close` (workers may write
        parts there themselves with :func:`write_part_file`, then :meth:`record` them)."""
        return self._tmp

    def record(self, part: str, rows: int, class_id: np.ndarray) -> None:
        """Count a part written into :attr:`staging` (by this process or a worker)."""
        self.counts[part] = int(rows)
        ids = np.asarray(class_id, dtype=np.int64)
        for c, k in zip(*np.unique(ids, return_counts=True), strict=True):
            self.class_counts[int(c)] = self.class_counts.get(int(c), 0) + int(k)

    def close(self) -> None:
        """Write the metadata file and move the directory into place."""
        raise_if_stop_requested()  # a stop whose exception was lost (geoseg.errors)
        doc = {"metadata": self.metadata, **self.extra, "rows": self.counts}
        (self._tmp / _META).write_text(json.dumps(doc, indent=1, sort_keys=True))
        old: Path | None = None
        if self.dst.exists():
            old = self.dst.parent / f".{self.dst.name}.geoseg-old-{uuid.uuid4().hex[:12]}"
            os.replace(self.dst, old)
        os.replace(self._tmp, self.dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Remove what was written; the final directory is left as it was."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ParquetDataset:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def write_part_file(
    directory: Path,
    part: str,
    *,
    crs: Any,
    classes: Mapping[int, str],
    class_id: np.ndarray,
    area_m2: np.ndarray,
    perimeter_m: np.ndarray,
    confidence: np.ndarray,
    geometry: np.ndarray,
    source: str | Sequence[str],
) -> int:
    """Write the polygons of one part to ``directory/<part>.parquet``; the number of rows.

    GeoParquet 1.1 with a bbox covering column, zstd, MultiPolygon geometries (as in
    the GeoPackage layers: one type per column).  Any process that sees ``directory``
    may call it: batch workers write their regions' files side by side.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely

    n = len(class_id)
    ids = np.asarray(class_id, dtype=np.int32)
    geoms = np.asarray(geometry, dtype=object)
    single = shapely.get_type_id(geoms) == 3
    if single.any():
        geoms = geoms.copy()
        geoms[single] = [shapely.MultiPolygon([g]) for g in geoms[single]]
    names = [classes.get(int(c), str(int(c))) for c in ids]
    frame = gpd.GeoDataFrame(
        {
            "class": pd.array(names, dtype="string"),
            "class_id": ids,
            "area_m2": np.asarray(area_m2, dtype=np.float64),
            "perimeter_m": np.asarray(perimeter_m, dtype=np.float64),
            "confidence": np.asarray(confidence, dtype=np.float64),
            "source": pd.array(
                [source] * n if isinstance(source, str) else list(source), dtype="string"
            ),
            "region": pd.array([part] * n, dtype="string"),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )
    path = Path(directory) / f"{_safe_part(part)}.parquet"
    try:
        frame.to_parquet(
            path,
            index=False,
            compression="zstd",
            schema_version="1.1.0",
            write_covering_bbox=True,
        )
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write {path.name} of a GeoParquet dataset: {exc}; free space or choose "
            "another output"
        ) from exc
    return n


def _safe_part(part: str) -> str:
    """A file name for a part: region ids are plain already; anything else is replaced."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part)
    return safe.lstrip(".") or "part"


def dataset_files(dst: Path) -> list[Path]:
    """The ``.parquet`` files of a dataset directory, sorted by name."""
    return sorted(p for p in Path(dst).glob("*.parquet") if p.is_file())


@no_pam_sidecars()
def layer_rows(
    sources: Sequence[tuple[str, Path]],
    dataset: ParquetDataset,
    *,
    class_ids: Mapping[str, int],
    source: str,
) -> None:
    """Copy per-raster GeoPackages into the dataset, one part per GeoPackage.

    ``sources`` are ``(region id, path)``; ``class_ids`` maps layer names to
    class ids; ``source`` fills the column where a layer has none.  Each
    GeoPackage is read whole (one raster's polygons).
    """
    import pyogrio

    for region, path in sources:
        ids, area, perim, conf, geoms = [], [], [], [], []
        srcs: list[str] = []
        for layer, _ in pyogrio.list_layers(path):
            if layer not in class_ids or layer == "layer_styles":
                continue
            frame = pyogrio.read_dataframe(path, layer=layer)
            n = len(frame)
            ids.append(np.full(n, class_ids[layer], dtype=np.int32))
            area.append(frame["area_m2"].to_numpy(np.float64))
            perim.append(frame["perimeter_m"].to_numpy(np.float64))
            if "confidence" in frame:
                conf.append(frame["confidence"].to_numpy(np.float64, na_value=np.nan))
            else:
                conf.append(np.full(n, np.nan))
            geoms.append(frame.geometry.to_numpy())
            srcs.extend(frame["source"].astype(str) if "source" in frame else [source] * n)
        dataset.write(
            region,
            class_id=np.concatenate(ids) if ids else np.zeros(0, np.int32),
            area_m2=np.concatenate(area) if area else np.zeros(0),
            perimeter_m=np.concatenate(perim) if perim else np.zeros(0),
            confidence=np.concatenate(conf) if conf else np.zeros(0),
            geometry=np.concatenate(geoms) if geoms else np.empty(0, object),
            source=srcs,
        )
