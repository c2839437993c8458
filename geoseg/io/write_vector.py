"""GIS-ready vector output: a styled GeoPackage, or one file per layer.

The last step of the pipeline writes one layer per class (buildings,
vegetation, ...) with a fixed attribute schema:

=============  =======  ==============================================
field          type     meaning
=============  =======  ==============================================
class_id       int      model class index (defaults to the layer's)
class_name     str      class label (defaults to the layer's)
area_m2        float    polygon area in square metres
perimeter_m    float    polygon perimeter in metres
confidence     float    mean class probability; NULL when unknown
source         str      input the polygon came from; NULL when unknown
=============  =======  ==============================================

plus any ``extra_fields`` declared when the writer is created.  Polygons are
written as MultiPolygon so every feature of a layer has the same type.

Formats are chosen by extension:

``.gpkg`` (GeoPackage)
    All layers in one file, each with an R-tree spatial index and a QGIS
    default style (single-symbol fill in the layer colour) in the standard
    ``layer_styles`` table, so QGIS draws the layers in their colours as soon
    as they are added.  The run metadata is GDAL dataset metadata (GeoPackage
    metadata extension): ``pyogrio.read_info(path)["dataset_metadata"]``;
    each layer's metadata holds its original name, class and colour
    (``geoseg_layer_name``, ``geoseg_class_id``, ...).  The file is written as
    GeoPackage 1.2 so that older GDAL (QGIS 3.22 and other LTS builds) opens
    it without warnings.
``.fgb`` (FlatGeobuf), ``.geojson`` (GeoJSON), ``.parquet`` (GeoParquet)
    These formats hold one layer per file, so ``out/scene.fgb`` becomes
    ``out/scene.buildings.fgb``, ``out/scene.vegetation.fgb``, ... (see
    :attr:`VectorWriter.outputs`), without styles.  FlatGeobuf and GeoParquet
    keep the run metadata as layer metadata; GeoJSON has nowhere to keep it,
    and as it has no schema, readers infer field types from the values (an
    empty GeoJSON layer has no fields at all).
    Batches are spooled to a scratch GeoPackage next to the outputs and each
    file is written in one go on close, because FlatGeobuf cannot be appended
    to; a layer is therefore held in memory once, while it is converted.
    GeoParquet needs GDAL's Parquet driver, which not every GDAL build has
    (see :func:`supported_vector_extensions`).

Every file is written under a temporary name and renamed into place only when
complete (:func:`geoseg.io.atomic.atomic_output`).  Layer names become SQL
identifiers (tables, triggers, R-tree indexes), so they are reduced to
``[a-z0-9_]`` by :func:`sanitize_layer_name`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import unicodedata
import urllib.parse
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from xml.sax.saxutils import escape

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyogrio.errors
import pyproj
import shapely

from geoseg.errors import ConfigError, OutputWriteError
from geoseg.io.atomic import atomic_output, check_output_path

__all__ = [
    "CORE_FIELDS",
    "MAX_LAYER_NAME_LENGTH",
    "LayerSpec",
    "VectorWriter",
    "sanitize_layer_name",
    "sanitize_layer_names",
    "supported_vector_extensions",
]

#: Longest layer name produced: PostgreSQL cuts identifiers at 63 bytes and
#: GeoPackage derives longer names (``rtree_<name>_geom``) from it.
MAX_LAYER_NAME_LENGTH: Final = 60

#: The fixed attribute schema, field name -> type ("int", "float" or "str").
CORE_FIELDS: Final[Mapping[str, str]] = {
    "class_id": "int",
    "class_name": "str",
    "area_m2": "float",
    "perimeter_m": "float",
    "confidence": "float",
    "source": "str",
}

_FIELD_TYPES: Final = frozenset({"int", "float", "str"})
_GEOMETRY_COLUMN: Final = "geom"
_FID_COLUMN: Final = "fid"
_GEOMETRY_TYPES: Final = ("MultiPolygon", "Polygon")
_POLYGON_IDS: Final[Mapping[str, frozenset[int]]] = {
    # shapely type ids: 3 Polygon, 6 MultiPolygon
    "MultiPolygon": frozenset({3, 6}),
    "Polygon": frozenset({3}),
}
_DRIVERS: Final[Mapping[str, str]] = {
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".parquet": "Parquet",
}
# GeoPackage 1.2 rather than GDAL's newer default: GDAL < 3.7 (QGIS 3.22 and
# other LTS distributions) warns that 1.4 files "may only be partially
# supported", and nothing geoseg writes needs 1.3 or 1.4.
_GPKG_VERSION: Final = "1.2"

_RESERVED_PREFIXES: Final = ("gpkg_", "rtree_", "sqlite_")
# Tables GDAL, QGIS or SpatiaLite keep in a GeoPackage/SQLite file themselves.
_RESERVED_NAMES: Final = frozenset(
    {"layer_styles", "qgis_projects", "ogr_empty_table", "spatial_ref_sys", "geometry_columns"}
)
# Letters NFKD does not decompose into ASCII.
_TRANSLITERATION: Final = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "đ": "d",
     "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ð": "d", "Ð": "D", "ı": "i"}
)  # fmt: skip
_COLOR_RE: Final = re.compile(r"#[0-9a-fA-F]{6}")
_FIELD_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_METADATA_KEY_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

# Style appearance: a half-transparent fill so imagery shows through, and a
# solid outline of QGIS's default width.
_FILL_ALPHA: Final = 128
_OUTLINE_WIDTH_MM: Final = "0.26"
_OUTLINE_WIDTH_PX: Final = "1"

# layer_styles exactly as QGIS creates it through GDAL (QgsOgrProviderUtils::
# saveStyle), so QGIS can list, load and add styles to it.
_LAYER_STYLES_DDL: Final = (
    'CREATE TABLE "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)
# GDAL registers every non-spatial table it creates as an 'attributes' table
# and keeps its row count in gpkg_ogr_contents with these triggers.
_LAYER_STYLES_REGISTRATION: Final = (
    "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
    "last_change, srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', "
    "strftime('%Y-%m-%dT%H:%M:%fZ','now'), 0)"
)
_LAYER_STYLES_COUNT: Final = (
    "INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES ('layer_styles', 0)",
    'CREATE TRIGGER "trigger_insert_feature_count_layer_styles" AFTER INSERT ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
    'CREATE TRIGGER "trigger_delete_feature_count_layer_styles" AFTER DELETE ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
)
_INSERT_STYLE: Final = (
    'INSERT INTO "layer_styles" (f_table_catalog, f_table_schema, f_table_name, '
    "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner) "
    "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '')"
)


def sanitize_layer_name(name: str, *, taken: Collection[str] = ()) -> str:
    """Turn any text into a layer name that is safe as an SQL identifier.

    The result is lowercase ASCII ``[a-z0-9_]``: accents are transliterated
    (``Bâtiments`` -> ``batiments``), other non-ASCII characters dropped, runs
    of anything else collapsed to one ``_``.  A name that would start with a
    digit, a reserved prefix (``gpkg_``, ``rtree_``, ``sqlite_``) or be a table
    GDAL/QGIS keep (``layer_styles``, ...) gets a ``layer_`` prefix; an empty
    one becomes ``layer_<n>``.  It is at most :data:`MAX_LAYER_NAME_LENGTH`
    characters and differs from every name in `taken` (compared without case,
    as SQLite does) by a ``_2``, ``_3``, ... suffix.

    Parameters
    ----------
    name : str
        Any text, e.g. a class label.
    taken : collection of str, optional
        Names already used in the same file.

    Returns
    -------
    str
        The layer name.

    Examples
    --------
    >>> sanitize_layer_name("Bâtiments 2024")
    'batiments_2024'
    >>> sanitize_layer_name('"; DROP TABLE x; --')
    'drop_table_x'
    >>> sanitize_layer_name("植被")
    'layer_1'
    >>> sanitize_layer_name("2024 roofs")
    'layer_2024_roofs'
    >>> sanitize_layer_name("Roads", taken={"roads"})
    'roads_2'
    """
    text = unicodedata.normalize("NFKD", str(name).translate(_TRANSLITERATION))
    text = text.encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    # "gpkg" itself is reserved too: deduplicating it would give "gpkg_2".
    if text and (
        text[0].isdigit() or f"{text}_".startswith(_RESERVED_PREFIXES) or text in _RESERVED_NAMES
    ):
        text = f"layer_{text}"
    text = text[:MAX_LAYER_NAME_LENGTH].rstrip("_")
    used = {t.lower() for t in taken}
    if not text:
        n = 1
        while f"layer_{n}" in used:
            n += 1
        return f"layer_{n}"
    candidate, n = text, 2
    while candidate in used:
        suffix = f"_{n}"
        candidate = text[: MAX_LAYER_NAME_LENGTH - len(suffix)].rstrip("_") + suffix
        n += 1
    return candidate


def sanitize_layer_names(names: Iterable[str]) -> list[str]:
    """Sanitize several names for one file, keeping them distinct.

    Parameters
    ----------
    names : iterable of str
        Names in order; earlier ones keep the plain form.

    Returns
    -------
    list of str
        One :func:`sanitize_layer_name` result per name, all distinct.

    Examples
    --------
    >>> sanitize_layer_names(["Forêt", "foret", "", "植被"])
    ['foret', 'foret_2', 'layer_1', 'layer_2']
    """
    result: list[str] = []
    for name in names:
        result.append(sanitize_layer_name(name, taken=result))
    return result


def supported_vector_extensions() -> tuple[str, ...]:
    """Output extensions the installed GDAL (the one pyogrio uses) can write.

    Returns
    -------
    tuple of str
        Lowercase extensions with the dot, GeoPackage first, e.g.
        ``('.gpkg', '.fgb', '.geojson')``; ``.parquet`` only when GDAL has the
        Parquet driver.
    """
    writable = pyogrio.list_drivers(write=True)
    return tuple(ext for ext, driver in _DRIVERS.items() if driver in writable)


def _normalise_color(value: object, what: str) -> str:
    if not isinstance(value, str) or not _COLOR_RE.fullmatch(value):
        raise ConfigError(f"{what} must be a hex colour like '#1f78b4', got {value!r}")
    return value.lower()


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass(frozen=True)
class LayerSpec:
    """One output layer: which class it holds and how QGIS should draw it.

    Parameters
    ----------
    name : str
        Layer name as the user sees it (any text; the file gets a sanitized
        form, see :attr:`VectorWriter.table_names`).
    class_id : int
        Model class index of the features.
    class_name : str
        Class label, also the default ``class_name`` attribute.
    color : str
        Fill colour as ``#rrggbb``; stored lowercase.  The style fills at 50 %
        opacity.
    geometry_type : {"MultiPolygon", "Polygon"}
        Layer geometry type.  With the default, polygons are promoted to
        MultiPolygon so one layer type fits every feature.
    outline_color : str, optional
        Outline colour as ``#rrggbb``; the fill colour (opaque) when omitted.

    Raises
    ------
    ConfigError
        A value has the wrong type or form.

    Examples
    --------
    >>> LayerSpec("buildings", 1, "building", "#E31A1C").color
    '#e31a1c'
    """

    name: str
    class_id: int
    class_name: str
    color: str
    geometry_type: str = "MultiPolygon"
    outline_color: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"layer name must be a non-empty string, got {self.name!r}")
        if isinstance(self.class_id, bool) or not isinstance(self.class_id, int | np.integer):
            raise ConfigError(
                f"class_id of layer {self.name!r} must be an integer, got {self.class_id!r}"
            )
        object.__setattr__(self, "class_id", int(self.class_id))
        if not isinstance(self.class_name, str):
            raise ConfigError(
                f"class_name of layer {self.name!r} must be a string, got {self.class_name!r}"
            )
        object.__setattr__(
            self, "color", _normalise_color(self.color, f"colour of layer {self.name!r}")
        )
        if self.outline_color is not None:
            object.__setattr__(
                self,
                "outline_color",
                _normalise_color(self.outline_color, f"outline colour of layer {self.name!r}"),
            )
        if self.geometry_type not in _GEOMETRY_TYPES:
            raise ConfigError(
                f"geometry_type of layer {self.name!r} must be one of {_GEOMETRY_TYPES}, "
                f"got {self.geometry_type!r}"
            )


def _style_colors(spec: LayerSpec) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    fill = _rgb(spec.color)
    return fill, _rgb(spec.outline_color) if spec.outline_color else fill


def _qml(spec: LayerSpec) -> str:
    """QGIS style document: single-symbol simple fill in the layer colour.

    Written in the form QGIS 3.22 exports (``Option`` map plus the older
    ``prop`` elements), which QGIS 3.x releases before and after read.
    """
    (r, g, b), (ro, go, bo) = _style_colors(spec)
    props = {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": f"{r},{g},{b},{_FILL_ALPHA}",
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        "outline_color": f"{ro},{go},{bo},255",
        "outline_style": "solid",
        "outline_width": _OUTLINE_WIDTH_MM,
        "outline_width_unit": "MM",
        "style": "solid",
    }
    options = "\n".join(
        f'       <Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items()
    )
    legacy = "\n".join(f'      <prop k="{k}" v="{v}"/>' for k, v in props.items())
    geometry_type = 2  # QgsWkbTypes::PolygonGeometry
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
 <renderer-v2 type="singleSymbol" symbollevels="0" forceraster="0" enableorderby="0" referencescale="-1">
  <symbols>
   <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
    <layer class="SimpleFill" enabled="1" locked="0" pass="0">
      <Option type="Map">
{options}
      </Option>
{legacy}
    </layer>
   </symbol>
  </symbols>
  <rotation/>
  <sizescale/>
 </renderer-v2>
 <blendMode>0</blendMode>
 <featureBlendMode>0</featureBlendMode>
 <layerOpacity>1</layerOpacity>
 <layerGeometryType>{geometry_type}</layerGeometryType>
</qgis>
"""


def _sld(spec: LayerSpec, layer: str) -> str:
    """SLD 1.1 document matching :func:`_qml`, in the form QGIS exports."""
    outline = spec.outline_color or spec.color
    opacity = f"{_FILL_ALPHA / 255:.2f}"
    name = escape(layer)
    title = escape(spec.class_name)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:ogc="http://www.opengis.net/ogc" xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:se="http://www.opengis.net/se" version="1.1.0" xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd">
 <NamedLayer>
  <se:Name>{name}</se:Name>
  <UserStyle>
   <se:Name>{name}</se:Name>
   <se:FeatureTypeStyle>
    <se:Rule>
     <se:Name>Single symbol</se:Name>
     <se:Description>
      <se:Title>{title}</se:Title>
     </se:Description>
     <se:PolygonSymbolizer>
      <se:Fill>
       <se:SvgParameter name="fill">{spec.color}</se:SvgParameter>
       <se:SvgParameter name="fill-opacity">{opacity}</se:SvgParameter>
      </se:Fill>
      <se:Stroke>
       <se:SvgParameter name="stroke">{outline}</se:SvgParameter>
       <se:SvgParameter name="stroke-width">{_OUTLINE_WIDTH_PX}</se:SvgParameter>
       <se:SvgParameter name="stroke-linejoin">bevel</se:SvgParameter>
      </se:Stroke>
     </se:PolygonSymbolizer>
    </se:Rule>
   </se:FeatureTypeStyle>
  </UserStyle>
 </NamedLayer>
</StyledLayerDescriptor>
"""


def _driver_for(path: Path) -> str:
    supported = supported_vector_extensions()
    ext = path.suffix.lower()
    if ext not in _DRIVERS:
        raise ConfigError(
            f"cannot tell the vector format of {path} from its extension {ext or '(none)'!r}; "
            f"use one of {', '.join(supported)}"
        )
    if ext not in supported:
        raise ConfigError(
            f"{path}: writing {ext} needs GDAL's {_DRIVERS[ext]} driver, which the GDAL "
            f"used by pyogrio ({pyogrio.__gdal_version_string__}) lacks; use one of "
            f"{', '.join(supported)}"
        )
    return _DRIVERS[ext]


def _parse_crs(crs: object) -> pyproj.CRS:
    if crs is None:
        raise ConfigError("a CRS is required for vector output, e.g. crs='EPSG:32633'")
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise ConfigError(f"cannot understand the CRS {crs!r}: {exc}") from exc


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a mapping of str to str, got {type(metadata)}")
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        # GDAL splits metadata items at the first '=' or ':'.
        if not isinstance(key, str) or not _METADATA_KEY_RE.fullmatch(key):
            raise ConfigError(
                f"metadata key {key!r} must be letters, digits, '_', '.' or '-' "
                "(GDAL would split it at '=' or ':')"
            )
        if not isinstance(value, str):
            raise ConfigError(
                f"metadata value for {key!r} must be a string, got {value!r}; "
                "serialise it first (e.g. json.dumps)"
            )
        checked[key] = value
    return checked


def _check_extra_fields(extra_fields: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    reserved = {*CORE_FIELDS, _FID_COLUMN, _GEOMETRY_COLUMN, "geometry"}
    for name, kind in (extra_fields or {}).items():
        if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name):
            raise ConfigError(
                f"extra field name {name!r} must be letters, digits and '_' "
                "(not starting with a digit, at most 63 characters)"
            )
        if name.lower() in reserved or name.lower() in {c.lower() for c in checked}:
            raise ConfigError(f"extra field {name!r} clashes with another field name")
        if kind not in _FIELD_TYPES:
            raise ConfigError(
                f"type of extra field {name!r} must be one of {sorted(_FIELD_TYPES)}, got {kind!r}"
            )
        checked[name] = kind
    return checked


def _int_column(values: Any, field: str) -> Any:
    """Nullable integer column (pandas Int64) from any sequence."""
    try:
        return pd.array(list(values), dtype="Int64")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"field {field!r} needs integers: {exc}") from exc


def _float_column(values: Any, field: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"field {field!r} needs numbers: {exc}") from exc


def _str_column(values: Any, field: str) -> np.ndarray[Any, np.dtype[np.object_]]:
    items = list(values)
    column = np.empty(len(items), dtype=object)
    for i, value in enumerate(items):
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"field {field!r} needs strings (or None), got {value!r} at position {i}"
            )
        column[i] = value
    return column


_RTREE_TRIGGERS: Final = (
    # The GeoPackage R-tree extension's triggers (as GDAL writes them), which keep the
    # index right when the layer is edited later, e.g. in QGIS.
    'CREATE TRIGGER "{r}_insert" AFTER INSERT ON "{t}" WHEN (new."{g}" NOT NULL AND NOT '
    'ST_IsEmpty(NEW."{g}")) BEGIN INSERT OR REPLACE INTO "{r}" VALUES (NEW."{f}",'
    'ST_MinX(NEW."{g}"), ST_MaxX(NEW."{g}"),ST_MinY(NEW."{g}"), ST_MaxY(NEW."{g}")); END',
    'CREATE TRIGGER "{r}_update1" AFTER UPDATE OF "{g}" ON "{t}" WHEN OLD."{f}" = NEW."{f}" '
    'AND (NEW."{g}" NOTNULL AND NOT ST_IsEmpty(NEW."{g}")) BEGIN INSERT OR REPLACE INTO "{r}" '
    'VALUES (NEW."{f}",ST_MinX(NEW."{g}"), ST_MaxX(NEW."{g}"),ST_MinY(NEW."{g}"), '
    'ST_MaxY(NEW."{g}")); END',
    'CREATE TRIGGER "{r}_update2" AFTER UPDATE OF "{g}" ON "{t}" WHEN OLD."{f}" = NEW."{f}" '
    'AND (NEW."{g}" ISNULL OR ST_IsEmpty(NEW."{g}")) BEGIN DELETE FROM "{r}" WHERE id = '
    'OLD."{f}"; END',
    'CREATE TRIGGER "{r}_update3" AFTER UPDATE ON "{t}" WHEN OLD."{f}" != NEW."{f}" AND '
    '(NEW."{g}" NOTNULL AND NOT ST_IsEmpty(NEW."{g}")) BEGIN DELETE FROM "{r}" WHERE id = '
    'OLD."{f}"; INSERT OR REPLACE INTO "{r}" VALUES (NEW."{f}",ST_MinX(NEW."{g}"), '
    'ST_MaxX(NEW."{g}"),ST_MinY(NEW."{g}"), ST_MaxY(NEW."{g}")); END',
    'CREATE TRIGGER "{r}_update4" AFTER UPDATE ON "{t}" WHEN OLD."{f}" != NEW."{f}" AND '
    '(NEW."{g}" ISNULL OR ST_IsEmpty(NEW."{g}")) BEGIN DELETE FROM "{r}" WHERE id IN '
    '(OLD."{f}", NEW."{f}"); END',
    'CREATE TRIGGER "{r}_delete" AFTER DELETE ON "{t}" WHEN old."{g}" NOT NULL BEGIN DELETE '
    'FROM "{r}" WHERE id = OLD."{f}"; END',
)

_GPKG_EXTENSIONS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT, "
    "extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL, "
    "CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))"
)

#: Bytes of a GeoPackage geometry blob's envelope, by its envelope indicator.
_ENVELOPE_DOUBLES: Final = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}


def _envelopes(blobs: Sequence[bytes]) -> np.ndarray[Any, Any]:
    """``(n, 4)`` minx, maxx, miny, maxy of GeoPackage geometry blobs (NaN rows: empty)."""
    out = np.full((len(blobs), 4), np.nan)
    for i, blob in enumerate(blobs):
        flags = blob[3]
        if flags & 0x10:  # empty geometry: not in the index
            continue
        kind = (flags >> 1) & 0x07
        n = _ENVELOPE_DOUBLES.get(kind)
        if n is None:
            raise OutputWriteError(f"unexpected GeoPackage geometry header flags {flags:#x}")
        if n:
            out[i] = np.frombuffer(blob, dtype="<f8" if flags & 1 else ">f8", count=4, offset=8)
        else:
            x0, y0, x1, y1 = shapely.from_wkb(bytes(blob[8:])).bounds
            out[i] = (x0, x1, y0, y1)
    return out


def _build_rtree(connection: sqlite3.Connection, table: str, chunk: int = 20_000) -> None:
    """Create and fill the R-tree spatial index of a finished layer in one pass.

    Bounding boxes come from the geometry blobs' envelopes (read ``chunk`` rows at
    a time, so memory stays bounded), the extension's triggers and registration
    follow the GeoPackage standard, so GDAL and QGIS use and maintain the index.
    """
    g, f = _GEOMETRY_COLUMN, _FID_COLUMN
    rtree = f"rtree_{table}_{g}"
    connection.execute("BEGIN")
    try:
        connection.execute(
            f'CREATE VIRTUAL TABLE "{rtree}" USING rtree(id, minx, maxx, miny, maxy)'
        )
        # The header's flags byte and the 4 doubles after it: GDAL writes every polygon
        # with a little-endian xy envelope (flags 0x03); anything else is parsed in full.
        rows = connection.execute(
            f'SELECT "{f}", substr("{g}", 4, 1), substr("{g}", 9, 32), '
            f'CASE WHEN substr("{g}", 4, 1) = x\'03\' THEN NULL ELSE "{g}" END '
            f'FROM "{table}" WHERE "{g}" IS NOT NULL'
        )
        while batch := rows.fetchmany(chunk):
            fids = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            if all(r[1] == b"\x03" and len(r[2]) == 32 for r in batch):
                env = np.frombuffer(b"".join(r[2] for r in batch), dtype="<f8").reshape(-1, 4)
            else:
                env = _envelopes([r[3] for r in batch])
            keep = ~np.isnan(env[:, 0])
            connection.executemany(
                f'INSERT INTO "{rtree}" VALUES (?, ?, ?, ?, ?)',
                zip(fids[keep].tolist(), *env[keep].T.tolist(), strict=True),
            )
        for trigger in _RTREE_TRIGGERS:
            connection.execute(trigger.format(r=rtree, t=table, g=g, f=f))
        connection.execute(_GPKG_EXTENSIONS_DDL)
        connection.execute(
            "INSERT OR REPLACE INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
            "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
            (table, g),
        )
        connection.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


class VectorWriter:
    """Write polygon layers in batches to a GeoPackage (or one file per layer).

    Use it as a context manager.  Entering checks every output path
    (:func:`~geoseg.io.atomic.check_output_path`) and creates every layer,
    empty, with its schema, CRS, R-tree spatial index and metadata;
    :meth:`write` appends batches; a clean exit adds the QGIS styles, checks
    the spatial indexes (single-layer formats: writes each file) and renames
    the finished file(s) into place.  An exception inside the block (Ctrl-C
    included) removes everything written, leaving any previous output as it
    was.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; the extension picks the format (see the module docs).
        For single-layer formats the layers go to ``<stem>.<layer><ext>`` next
        to it, see :attr:`outputs`.
    crs : pyproj.CRS, rasterio CRS, str or int
        CRS of the geometries passed to :meth:`write` (anything
        :meth:`pyproj.CRS.from_user_input` accepts).
    layers : sequence of LayerSpec
        The layers, each with a distinct :attr:`LayerSpec.name`.
    metadata : mapping of str to str
        Run metadata (geoseg version, model name and sha256, parameters as
        JSON, input file, time, ...), stored as dataset metadata.
    overwrite : bool, default False
        Replace existing outputs instead of raising
        :class:`~geoseg.errors.OutputExistsError`.
    extra_fields : mapping of str to {"int", "float", "str"}, optional
        Fields beyond :data:`CORE_FIELDS`, present (nullable) in every layer.

    Raises
    ------
    ConfigError
        Unknown or unsupported extension, no or duplicate layers, bad CRS,
        metadata or extra field declaration.

    Examples
    --------
    >>> import shapely, tempfile
    >>> spec = LayerSpec("Buildings", 1, "building", "#e31a1c")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = Path(d) / "scene.gpkg"
    ...     with VectorWriter(out, crs="EPSG:32633", layers=[spec],
    ...                       metadata={"model": "demo"}) as writer:
    ...         n = writer.write("Buildings", [shapely.box(0, 0, 10, 10)],
    ...                          {"area_m2": [100.0], "perimeter_m": [40.0]})
    ...     pyogrio.read_info(out, layer="buildings")["features"]
    1
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crs: Any,
        layers: Sequence[LayerSpec],
        metadata: Mapping[str, str],
        overwrite: bool = False,
        extra_fields: Mapping[str, str] | None = None,
    ) -> None:
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._driver = _driver_for(self._path)
        if not layers:
            raise ConfigError(f"no layers given for {self._path}; pass at least one LayerSpec")
        for spec in layers:
            if not isinstance(spec, LayerSpec):
                raise ConfigError(f"layers must be LayerSpec objects, got {spec!r}")
        names = [spec.name for spec in layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"layer names must be distinct; repeated: {duplicates}")
        self._layers = tuple(layers)
        self._specs = {spec.name: spec for spec in layers}
        self._tables = dict(zip(names, sanitize_layer_names(names), strict=True))
        self._crs = _parse_crs(crs)
        self._metadata = _check_metadata(metadata)
        self._extra_fields = _check_extra_fields(extra_fields)
        self._overwrite = bool(overwrite)
        if self._driver == "GPKG":
            self._outputs = dict.fromkeys(names, self._path)
        else:
            stem = self._path.name[: -len(self._path.suffix)]
            self._outputs = {
                name: self._path.with_name(f"{stem}.{table}{self._path.suffix}")
                for name, table in self._tables.items()
            }
        self._counts = dict.fromkeys(names, 0)
        self._state = "new"
        self._stack: contextlib.ExitStack | None = None
        self._store: Path | None = None
        self._scratch_dir: Path | None = None
        self._temporaries: dict[str, Path] = {}

    @property
    def path(self) -> Path:
        """The output path given, made absolute."""
        return self._path

    @property
    def driver(self) -> str:
        """The GDAL driver used (``"GPKG"``, ``"FlatGeobuf"``, ...)."""
        return self._driver

    @property
    def crs(self) -> pyproj.CRS:
        """CRS of the layers."""
        return self._crs

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """The layer specs, in order."""
        return self._layers

    @property
    def table_names(self) -> dict[str, str]:
        """Layer name as given -> sanitized name used in the file(s)."""
        return dict(self._tables)

    @property
    def outputs(self) -> dict[str, Path]:
        """Layer name as given -> final file holding it."""
        return dict(self._outputs)

    @property
    def feature_counts(self) -> dict[str, int]:
        """Layer name as given -> features written so far."""
        return dict(self._counts)

    def __enter__(self) -> Self:
        if self._state != "new":
            raise ConfigError("a VectorWriter can be used for one `with` block only")
        self._state = "open"
        try:
            self._open()
        except BaseException:
            self._state = "closed"
            raise
        return self

    def _open(self) -> None:
        with contextlib.ExitStack() as stack:
            for output in dict.fromkeys(self._outputs.values()):
                check_output_path(output, overwrite=self._overwrite)
            if self._driver == "GPKG":
                self._store = stack.enter_context(
                    atomic_output(self._path, overwrite=self._overwrite)
                )
            else:
                self._temporaries = {
                    name: stack.enter_context(atomic_output(out, overwrite=self._overwrite))
                    for name, out in self._outputs.items()
                }
                stem = self._path.name[: -len(self._path.suffix)]
                self._scratch_dir = Path(
                    tempfile.mkdtemp(dir=self._path.parent, prefix=f".{stem}.geoseg-scratch-")
                )
                stack.callback(shutil.rmtree, self._scratch_dir, ignore_errors=True)
                self._store = self._scratch_dir / "layers.gpkg"
            self._create_layers(self._store)
            self._stack = stack.pop_all()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._state = "closed"
        if stack is None:
            return
        if exc is not None:
            # Each atomic_output removes its temporary file and re-raises.
            stack.__exit__(exc_type, exc, tb)
            return
        with stack:
            if self._driver == "GPKG":
                assert self._store is not None
                self._finish_geopackage(self._store)
            else:
                self._finish_single_layer_files()

    def write(
        self,
        layer_name: str,
        geometries: Sequence[Any] | np.ndarray[Any, Any] | gpd.GeoSeries,
        attributes: Mapping[str, Sequence[Any]],
    ) -> int:
        """Append a batch of features to a layer.

        Parameters
        ----------
        layer_name : str
            :attr:`LayerSpec.name` of the layer (its sanitized name works too).
        geometries : sequence of shapely Polygon or MultiPolygon
            The features' geometries, in the writer's CRS (a GeoSeries with a
            different CRS is refused, not reprojected).  Polygons are promoted
            to MultiPolygon for MultiPolygon layers.
        attributes : mapping of str to sequence
            Field name -> one value per geometry.  ``area_m2`` and
            ``perimeter_m`` are required; ``class_id`` and ``class_name``
            default to the layer's; ``confidence``, ``source`` and declared
            extra fields default to NULL (None and NaN also mean NULL).

        Returns
        -------
        int
            Number of features written.

        Raises
        ------
        ConfigError
            The writer is not open, the layer is unknown, a geometry is not
            polygonal, a field is unknown, missing or has the wrong length or
            type.
        OutputWriteError
            GDAL failed to write the batch.
        """
        if self._state != "open" or self._store is None:
            raise ConfigError(
                "VectorWriter.write() needs an open writer: use `with VectorWriter(...)`"
            )
        spec = self._spec(layer_name)
        frame = self._frame(spec, geometries, attributes)
        if len(frame) == 0:
            return 0
        self._write_frame(frame, self._store, spec, append=True)
        self._counts[spec.name] += len(frame)
        return len(frame)

    def _spec(self, layer_name: str) -> LayerSpec:
        if layer_name in self._specs:
            return self._specs[layer_name]
        for name, table in self._tables.items():
            if table == layer_name:
                return self._specs[name]
        raise ConfigError(f"unknown layer {layer_name!r}; this writer has {sorted(self._specs)}")

    def _frame(
        self, spec: LayerSpec, geometries: Any, attributes: Mapping[str, Sequence[Any]]
    ) -> gpd.GeoDataFrame:
        geoseries_crs = getattr(geometries, "crs", None)
        if geoseries_crs is not None and not self._crs.equals(geoseries_crs):
            raise ConfigError(
                f"geometries for layer {spec.name!r} are in {geoseries_crs}, the writer "
                f"in {self._crs.to_string()}; reproject them first"
            )
        items = list(geometries)
        n = len(items)
        geoms = np.empty(n, dtype=object)
        geoms[:] = items
        if n:
            try:
                type_ids = shapely.get_type_id(geoms)
            except TypeError as exc:
                raise ConfigError(
                    f"geometries for layer {spec.name!r} must be shapely geometries: {exc}"
                ) from exc
            allowed = _POLYGON_IDS[spec.geometry_type]
            bad = [i for i, t in enumerate(type_ids) if int(t) not in allowed]
            if bad:
                first = geoms[bad[0]]
                got = "None" if first is None else first.geom_type
                raise ConfigError(
                    f"layer {spec.name!r} takes {spec.geometry_type} geometries; got {got} "
                    f"at position {bad[0]} ({len(bad)} such geometries in the batch)"
                )
        fields = {**CORE_FIELDS, **self._extra_fields}
        unknown = sorted(set(attributes) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown fields {unknown} for layer {spec.name!r}; known fields are "
                f"{sorted(fields)} (declare more with VectorWriter(extra_fields=...))"
            )
        for field in ("area_m2", "perimeter_m"):
            if field not in attributes and n:
                raise ConfigError(f"field {field!r} is required for layer {spec.name!r}")
        defaults: dict[str, Any] = {
            "class_id": [spec.class_id] * n,
            "class_name": [spec.class_name] * n,
        }
        columns: dict[str, Any] = {}
        for field, kind in fields.items():
            values = attributes.get(field, defaults.get(field, [None] * n))
            if len(values) != n:
                raise ConfigError(
                    f"field {field!r} of layer {spec.name!r} has {len(values)} values "
                    f"for {n} geometries"
                )
            if kind == "int":
                columns[field] = _int_column(values, field)
            elif kind == "float":
                columns[field] = _float_column(values, field)
            else:
                columns[field] = _str_column(values, field)
        if n and columns["class_id"].isna().any():
            raise ConfigError(f"field 'class_id' of layer {spec.name!r} must not be null")
        if n and pd.isna(columns["class_name"]).any():
            raise ConfigError(f"field 'class_name' of layer {spec.name!r} must not be null")
        for field in ("area_m2", "perimeter_m"):
            if not np.isfinite(columns[field]).all():
                raise ConfigError(f"field {field!r} of layer {spec.name!r} must be finite numbers")
        return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=self._crs))

    def _write_frame(
        self,
        frame: gpd.GeoDataFrame,
        path: Path,
        spec: LayerSpec,
        *,
        append: bool,
        driver: str = "GPKG",
        dataset_options: Mapping[str, str] | None = None,
        dataset_metadata: Mapping[str, str] | None = None,
        layer_options: Mapping[str, str] | None = None,
        layer_metadata: Mapping[str, str] | None = None,
    ) -> None:
        table = self._tables[spec.name]
        try:
            pyogrio.write_dataframe(
                frame,
                path,
                layer=table,
                driver=driver,
                append=append,
                geometry_type=spec.geometry_type,
                promote_to_multi=spec.geometry_type == "MultiPolygon",
                dataset_options=dict(dataset_options) if dataset_options else None,
                dataset_metadata=dict(dataset_metadata) if dataset_metadata else None,
                layer_options=dict(layer_options) if layer_options else None,
                layer_metadata=dict(layer_metadata) if layer_metadata else None,
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
            raise OutputWriteError(
                f"GDAL could not write layer {table!r} of {self._path}: {exc}"
            ) from exc

    def _layer_metadata(self, spec: LayerSpec) -> dict[str, str]:
        return {
            "geoseg_layer_name": spec.name,
            "geoseg_class_id": str(spec.class_id),
            "geoseg_class_name": spec.class_name,
            "geoseg_color": spec.color,
        }

    def _create_layers(self, store: Path) -> None:
        """Create every layer, empty, in the GeoPackage `store`."""
        for i, spec in enumerate(self._layers):
            empty = self._frame(spec, [], {})
            first = i == 0
            self._write_frame(
                empty,
                store,
                spec,
                append=False,
                dataset_options={"VERSION": _GPKG_VERSION} if first else None,
                dataset_metadata=self._metadata if first and self._driver == "GPKG" else None,
                layer_options={
                    "GEOMETRY_NAME": _GEOMETRY_COLUMN,
                    "FID": _FID_COLUMN,
                    # Built once, in bulk, when the file is complete (_build_rtree): an
                    # index kept up to date row by row by GDAL's triggers costs about as
                    # much as writing the features themselves.
                    "SPATIAL_INDEX": "NO",
                    "DESCRIPTION": spec.class_name,
                },
                layer_metadata=self._layer_metadata(spec),
            )

    def _finish_geopackage(self, gpkg: Path) -> None:
        """Build the spatial indexes of `gpkg` and add the QGIS styles."""
        uri = f"file:{urllib.parse.quote(os.fspath(gpkg))}?mode=rw"
        try:
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            try:
                for table in self._tables.values():
                    _build_rtree(connection, table)
                self._write_styles(connection)
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise OutputWriteError(
                f"could not finish {self._path} (spatial index, QGIS layer styles): {exc}"
            ) from exc

    def _write_styles(self, connection: sqlite3.Connection) -> None:
        has_counts = (
            connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
            ).fetchone()
            is not None
        )
        connection.execute("BEGIN")
        try:
            connection.execute(_LAYER_STYLES_DDL)
            connection.execute(_LAYER_STYLES_REGISTRATION)
            if has_counts:
                for statement in _LAYER_STYLES_COUNT:
                    connection.execute(statement)
            for spec in self._layers:
                table = self._tables[spec.name]
                connection.execute(
                    _INSERT_STYLE,
                    (
                        table,
                        _GEOMETRY_COLUMN,
                        table,
                        _qml(spec),
                        _sld(spec, table),
                        f"geoseg default style: {spec.class_name} (class {spec.class_id})",
                    ),
                )
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _finish_single_layer_files(self) -> None:
        """Copy each spooled layer into its own file, in one write each."""
        assert self._store is not None and self._scratch_dir is not None
        fields = {**CORE_FIELDS, **self._extra_fields}
        for spec in self._layers:
            table = self._tables[spec.name]
            try:
                frame = pyogrio.read_dataframe(self._store, layer=table)
            except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
                raise OutputWriteError(
                    f"could not read back the spooled layer {table!r} for {self._path}: {exc}"
                ) from exc
            # NULLs come back as NaN (also in integer and string columns); restore the
            # declared types so each file gets the same schema as the GeoPackage.
            for field, kind in fields.items():
                if kind == "int":
                    frame[field] = pd.array(
                        [None if pd.isna(v) else int(v) for v in frame[field]], dtype="Int64"
                    )
                elif kind == "str":
                    frame[field] = _str_column(
                        [None if pd.isna(v) else v for v in frame[field]], field
                    )
            layer_options: dict[str, str] = {}
            layer_metadata: dict[str, str] | None = None
            if self._driver == "FlatGeobuf":
                layer_options = {
                    "SPATIAL_INDEX": "YES",
                    "TITLE": spec.name,
                    "DESCRIPTION": spec.class_name,
                    "TEMPORARY_DIR": os.fspath(self._scratch_dir),
                }
                layer_metadata = {**self._metadata, **self._layer_metadata(spec)}
            elif self._driver == "GeoJSON":
                layer_options = {"DESCRIPTION": spec.class_name}
            else:
                layer_metadata = {**self._metadata, **self._layer_metadata(spec)}
            self._write_frame(
                frame,
                self._temporaries[spec.name],
                spec,
                append=False,
                driver=self._driver,
                layer_options=layer_options,
                layer_metadata=layer_metadata,
            )
