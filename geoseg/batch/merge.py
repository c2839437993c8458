"""Put the regions of a batch back together: a VRT mosaic and one GeoPackage.

Windows of one raster lie on its pixel grid, so the mosaic is a hand-written
GDAL VRT with one ``SimpleSource`` per region COG at the region's pixel
offset: no resampling, and reading the VRT gives the very pixels a single run
would have written.  Polygons of window regions are made on the workers and
only those cut by region borders are joined by the client
(:mod:`geoseg.batch.vector`), so objects cut by region borders come out
whole, as in one run over the VRT.  Polygons of separate rasters are
vectorized per raster (on the workers) and appended layer by layer into one
GeoPackage.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine

from geoseg.io.atomic import atomic_output
from geoseg.io.env import no_pam_sidecars
from geoseg.models.card import ClassInfo
from geoseg.types import PixelWindow

__all__ = ["MosaicSource", "append_geopackages", "mosaic_layout", "vrt_xml", "write_mosaic_vrt"]

#: Block edge of geoseg's class COGs (``geoseg.io.write_raster``); declared in the
#: VRT so GDAL need not open every source just to describe it.
COG_BLOCK = 512
CLASS_NODATA = 255

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class MosaicSource:
    """A class raster and where it goes in the mosaic (pixel window of the mosaic grid)."""

    path: Path
    window: PixelWindow


def _num(value: float) -> str:
    # repr round-trips exactly, so the VRT's geotransform is bit-identical to the input's.
    return repr(float(value))


def vrt_xml(
    *,
    width: int,
    height: int,
    transform: Affine,
    crs_wkt: str | None,
    sources: Sequence[MosaicSource],
    base: Path,
    tags: Mapping[str, str] | None = None,
    colormap: Mapping[int, Sequence[int]] | None = None,
    description: str = "class",
) -> str:
    """The XML of a one-band uint8 VRT placing each source at its window, nodata 255.

    Parameters
    ----------
    width, height : int
        Mosaic size in pixels.
    transform : Affine
        Mosaic geotransform (any, rotated included: sources are placed in pixel space).
    crs_wkt : str, optional
        Mosaic CRS as WKT.
    sources : sequence of MosaicSource
        Later sources win where windows overlap.
    base : Path
        Directory of the VRT; source paths are written relative to it.
    tags : mapping, optional
        Dataset metadata.
    colormap : mapping of int to (r, g, b[, a]), optional
        Colour table of the band.
    description : str
        Band description.

    Examples
    --------
    >>> xml = vrt_xml(width=4, height=2, transform=Affine(1, 0, 0, 0, -1, 2), crs_wkt=None,
    ...               sources=[MosaicSource(Path("/d/a.tif"), PixelWindow(0, 2, 2, 2))],
    ...               base=Path("/d"))
    >>> '<DstRect xOff="2" yOff="0" xSize="2" ySize="2" />' in xml
    True
    """
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs_wkt:
        ET.SubElement(root, "SRS").text = crs_wkt
    ET.SubElement(root, "GeoTransform").text = ", ".join(_num(v) for v in transform.to_gdal())
    if tags:
        md = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(md, "MDI", key=key).text = value
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "Description").text = description
    ET.SubElement(band, "NoDataValue").text = str(CLASS_NODATA)
    if colormap:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for i in range(max(colormap) + 1):
            entry = tuple(colormap.get(i, (0, 0, 0, 0)))
            alpha = entry[3] if len(entry) > 3 else 255
            rgba = {f"c{k + 1}": str(v) for k, v in enumerate((*entry[:3], alpha))}
            ET.SubElement(table, "Entry", attrib=rgba)
    for src in sources:
        w = src.window
        simple = ET.SubElement(band, "SimpleSource")
        rel = os.path.relpath(src.path, base)
        relative = not rel.startswith("..")
        name = ET.SubElement(simple, "SourceFilename", relativeToVRT="1" if relative else "0")
        name.text = Path(rel).as_posix() if relative else os.fspath(src.path)
        ET.SubElement(simple, "SourceBand").text = "1"
        ET.SubElement(
            simple,
            "SourceProperties",
            RasterXSize=str(w.width),
            RasterYSize=str(w.height),
            DataType="Byte",
            BlockXSize=str(COG_BLOCK),
            BlockYSize=str(COG_BLOCK),
        )
        ET.SubElement(
            simple, "SrcRect", xOff="0", yOff="0", xSize=str(w.width), ySize=str(w.height)
        )
        ET.SubElement(
            simple,
            "DstRect",
            xOff=str(w.col_off),
            yOff=str(w.row_off),
            xSize=str(w.width),
            ySize=str(w.height),
        )
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_mosaic_vrt(
    dst: Path,
    *,
    width: int,
    height: int,
    transform: Affine,
    sources: Sequence[MosaicSource],
    tags_from: Path | None = None,
    tag_overrides: Mapping[str, str] | None = None,
) -> Path:
    """Write a class mosaic VRT atomically (see :func:`vrt_xml`).

    CRS, dataset tags (class names and colours, model, parameters) and the
    colour table are copied from ``tags_from`` (default: the first source), so
    :func:`geoseg.pipeline.run_vectorize` reads the VRT like one class COG.

    Raises
    ------
    RasterReadError
        If the tag source cannot be read.
    OutputWriteError
        If the VRT cannot be written.
    """
    from geoseg.io.read import read_tags

    first = tags_from or sources[0].path
    tags, cmap, spec = read_tags(first)
    tags = {k: v for k, v in tags.items() if k != "AREA_OR_POINT"}
    tags.update(tag_overrides or {})
    xml = vrt_xml(
        width=width,
        height=height,
        transform=transform,
        crs_wkt=spec.crs.to_wkt() if spec.crs is not None else None,
        sources=sources,
        base=dst.parent,
        tags=tags,
        colormap=cmap,
    )
    with atomic_output(dst, overwrite=True) as tmp:
        tmp.write_text(xml, encoding="utf-8")
    return dst


def mosaic_layout(
    grids: Sequence[tuple[Affine, int, int]], *, tolerance: float = 1e-6
) -> tuple[Affine, int, int, list[PixelWindow]] | None:
    """A common pixel grid for rasters given as ``(transform, width, height)``.

    Returns the mosaic transform, width, height and each raster's window in
    it, or None when the rasters are not north-up with equal pixel sizes and
    origins on one pixel grid (a VRT would have to resample them).

    >>> t = Affine(0.5, 0, 100, 0, -0.5, 200)
    >>> mosaic_layout([(t, 4, 4), (t * Affine.translation(4, 2), 4, 4)])[1:]
    (8, 6, [PixelWindow(row_off=0, col_off=0, height=4, width=4), PixelWindow(row_off=2, col_off=4, height=4, width=4)])
    """
    if not grids:
        return None
    a, e = grids[0][0].a, grids[0][0].e
    for t, _, _ in grids:
        if (
            t.b != 0
            or t.d != 0
            or not math.isclose(t.a, a, rel_tol=1e-9)
            or not math.isclose(t.e, e, rel_tol=1e-9)
        ):
            return None
    x0 = min(t.c for t, _, _ in grids)
    y0 = max(t.f for t, _, _ in grids) if e < 0 else min(t.f for t, _, _ in grids)
    origin = Affine(a, 0, x0, 0, e, y0)
    windows = []
    for t, w, h in grids:
        col, row = (t.c - x0) / a, (t.f - y0) / e
        if abs(col - round(col)) > tolerance or abs(row - round(row)) > tolerance:
            return None
        windows.append(PixelWindow(round(row), round(col), h, w))
    width = max(win.col_end for win in windows)
    height = max(win.row_end for win in windows)
    return origin, width, height, windows


@no_pam_sidecars()
def append_geopackages(
    sources: Sequence[Path],
    dst: Path,
    *,
    classes: Sequence[ClassInfo],
    metadata: Mapping[str, str],
    batch: int = 20_000,
    progress: ProgressFn | None = None,
) -> dict[str, int]:
    """Append the class layers of per-raster GeoPackages into one styled GeoPackage.

    Parameters
    ----------
    sources : sequence of Path
        GeoPackages written by :func:`geoseg.pipeline.run_vectorize` for the
        same classes, all in one CRS.
    dst : Path
        The merged GeoPackage (replaced atomically).
    classes : sequence of ClassInfo
        The model's classes; one layer per class with ``vectorize`` set.
    metadata : mapping
        Dataset metadata of the merged file.
    batch : int
        Features read and written at once (bounds memory).
    progress : callable, optional
        ``progress(files_done, files_total)``.

    Returns
    -------
    dict
        Layer name -> features written.

    Raises
    ------
    OutputWriteError
        If a source cannot be read or the output cannot be written.
    """
    import pyogrio
    import pyogrio.errors

    from geoseg.errors import OutputWriteError
    from geoseg.io.write_vector import CORE_FIELDS, LayerSpec, VectorWriter

    layers = [LayerSpec(c.layer, c.id, c.name, c.color) for c in classes if c.vectorize]
    crs: Any = pyogrio.read_info(sources[0], layer=0)["crs"]
    with VectorWriter(dst, crs=crs, layers=layers, metadata=metadata, overwrite=True) as writer:
        tables = writer.table_names
        for i, src in enumerate(sources):
            for spec in layers:
                skip = 0
                while True:
                    try:
                        frame = pyogrio.read_dataframe(
                            src, layer=tables[spec.name], skip_features=skip, max_features=batch
                        )
                    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
                        raise OutputWriteError(
                            f"cannot read layer {tables[spec.name]!r} of {src} to merge it: {exc}"
                        ) from exc
                    if len(frame) == 0:
                        break
                    attrs = {k: frame[k].tolist() for k in CORE_FIELDS if k in frame.columns}
                    writer.write(spec.name, frame.geometry.values, attrs)
                    skip += len(frame)
                    if len(frame) < batch:
                        break
            if progress is not None:
                progress(i + 1, len(sources))
        return writer.feature_counts
