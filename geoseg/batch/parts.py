"""The vector part of a region: its finished polygons and its seam pieces, in one ``.npz`` file.

A part holds two things (see :mod:`geoseg.batch.vector`):

interior polygons
    Components that touch no border shared with another region: cleaned,
    measured and in the output CRS, exactly as they go into the merged
    GeoPackage, each with its order key (first pixel ``row``, ``col`` in the
    mosaic and ``piece``, the index of a piece of a polygon the clean-up cut
    at a neck).
seam pieces
    Components that touch a shared border, raw: outlines in mosaic pixel
    coordinates (integers, so the join is exact), pixel counts, first
    pixels, and the border pixels that link them to the neighbours' pieces.

Geometries are stored as WKB (exact doubles) in one byte buffer with
offsets, so the file is plain numeric arrays: no pickle, and
:func:`numpy.load` reads only the arrays a caller touches.  Parts are
written under a temporary name and renamed into place when complete
(:func:`geoseg.io.atomic.atomic_output`): a full disk leaves no part under
its final name.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from geoseg.errors import BatchError
from geoseg.io.atomic import atomic_output
from geoseg.vectorize.polygonize import RegionPolygons, SeamPiece

__all__ = ["PART_FORMAT", "InteriorPolygons", "read_interior", "read_seams", "write_part"]

#: Version of the part layout; parts of another version are not read.
PART_FORMAT = 1


@dataclass
class InteriorPolygons:
    """Finished polygons of a region, in the order they are written (``row``, ``col``, ``piece``).

    Geometries are in the output CRS; ``confidence`` is NaN where unknown.
    """

    class_id: npt.NDArray[np.int64]
    row: npt.NDArray[np.int64]
    col: npt.NDArray[np.int64]
    piece: npt.NDArray[np.int64]
    area_m2: npt.NDArray[np.float64]
    perimeter_m: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    geometry: npt.NDArray[np.object_]

    def __len__(self) -> int:
        return len(self.class_id)

    @classmethod
    def empty(cls) -> InteriorPolygons:
        i, f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return cls(i, i, i, i, f, f, f, np.empty(0, dtype=object))

    @classmethod
    def concat(cls, items: list[InteriorPolygons]) -> InteriorPolygons:
        if not items:
            return cls.empty()
        return cls(
            *(
                np.concatenate([getattr(it, name) for it in items])
                for name in (
                    "class_id",
                    "row",
                    "col",
                    "piece",
                    "area_m2",
                    "perimeter_m",
                    "confidence",
                    "geometry",
                )
            )
        )

    def take(self, index: npt.NDArray[np.intp]) -> InteriorPolygons:
        """The polygons at ``index``, in that order."""
        return InteriorPolygons(
            self.class_id[index],
            self.row[index],
            self.col[index],
            self.piece[index],
            self.area_m2[index],
            self.perimeter_m[index],
            self.confidence[index],
            self.geometry[index],
        )

    def sorted(self) -> InteriorPolygons:
        """The polygons in order of ``(row, col, piece)``."""
        return self.take(np.lexsort((self.piece, self.col, self.row)))


def _pack(geoms: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    blobs = shapely.to_wkb(geoms) if len(geoms) else np.empty(0, dtype=object)
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _unpack(buffer: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    data = buffer.tobytes()
    blobs = np.empty(len(offsets) - 1, dtype=object)
    blobs[:] = [data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    return shapely.from_wkb(blobs) if len(blobs) else np.empty(0, dtype=object)


def write_part(path: Path, interior: InteriorPolygons, seams: RegionPolygons) -> None:
    """Write a region's vector part atomically (replacing an older one).

    Raises
    ------
    OutputWriteError
        The directory is not writable or the disk filled up; no part is left
        under ``path`` (an older one stays as it was).
    """
    geometry, geometry_offsets = _pack(interior.geometry)
    pieces = np.empty(len(seams.seams), dtype=object)
    pieces[:] = [p.geometry for p in seams.seams]
    seam_geometry, seam_offsets = _pack(pieces)
    firsts = np.array([p.first_pixel for p in seams.seams], dtype=np.int64).reshape(-1, 2)
    arrays = {
        "format": np.array([PART_FORMAT], dtype=np.int64),
        "class_id": interior.class_id,
        "row": interior.row,
        "col": interior.col,
        "piece": interior.piece,
        "area_m2": interior.area_m2,
        "perimeter_m": interior.perimeter_m,
        "confidence": interior.confidence,
        "geometry": geometry,
        "geometry_offsets": geometry_offsets,
        "seam_value": np.array([p.value for p in seams.seams], dtype=np.int64),
        "seam_first": firsts,
        "seam_pixel_count": np.array([p.pixel_count for p in seams.seams], dtype=np.int64),
        "seam_confidence": np.array(
            [np.nan if p.confidence_sum is None else p.confidence_sum for p in seams.seams],
            dtype=np.float64,
        ),
        "seam_geometry": seam_geometry,
        "seam_geometry_offsets": seam_offsets,
        "border_pixels": seams.seam_pixels.reshape(-1, 2),
        "border_owner": seams.seam_owner,
    }
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _open(path: Path) -> Any:
    try:
        data = np.load(path, allow_pickle=False)
        version = int(data["format"][0])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchError(f"cannot read the vector part {path}: {exc}") from exc
    if version != PART_FORMAT:
        raise BatchError(
            f"the vector part {path} has format {version}, this geoseg reads {PART_FORMAT}"
        )
    return data


def read_interior(path: Path) -> InteriorPolygons:
    """The finished polygons of a part.

    Raises
    ------
    BatchError
        The file is missing, damaged or of another format.
    """
    data = _open(path)
    try:
        with data:
            return InteriorPolygons(
                data["class_id"],
                data["row"],
                data["col"],
                data["piece"],
                data["area_m2"],
                data["perimeter_m"],
                data["confidence"],
                _unpack(data["geometry"], data["geometry_offsets"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchError(f"cannot read the vector part {path}: {exc}") from exc


def read_seams(path: Path) -> RegionPolygons:
    """The seam pieces of a part and their border pixels (``interior`` left empty).

    Raises
    ------
    BatchError
        The file is missing, damaged or of another format.
    """
    data = _open(path)
    try:
        with data:
            geoms = _unpack(data["seam_geometry"], data["seam_geometry_offsets"])
            conf = data["seam_confidence"].tolist()
            pieces = [
                SeamPiece(
                    int(v),
                    g,
                    int(n),
                    (int(r), int(c)),
                    None if np.isnan(s) else float(s),
                )
                for v, g, n, (r, c), s in zip(
                    data["seam_value"].tolist(),
                    geoms,
                    data["seam_pixel_count"].tolist(),
                    data["seam_first"].tolist(),
                    conf,
                    strict=True,
                )
            ]
            return RegionPolygons(
                interior=[],
                interior_first=np.zeros((0, 2), dtype=np.int64),
                seams=pieces,
                seam_pixels=data["border_pixels"],
                seam_owner=data["border_owner"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchError(f"cannot read the vector part {path}: {exc}") from exc
