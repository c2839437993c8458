"""Tests for geoseg.io.write_vector and geoseg.io.atomic.

Outputs are read back with pyogrio (GDAL) and, for the GeoPackage internals
GDAL does not expose (R-tree tables, layer_styles), with sqlite3 opened
read-only.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pyogrio.errors
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError, OutputExistsError, OutputWriteError
from geoseg.io import atomic, write_vector
from geoseg.io.atomic import atomic_output, check_output_path, remove_with_sidecars
from geoseg.io.write_vector import (
    CORE_FIELDS,
    MAX_LAYER_NAME_LENGTH,
    LayerSpec,
    VectorWriter,
    sanitize_layer_name,
    sanitize_layer_names,
    supported_vector_extensions,
)

METADATA = {
    "geoseg_version": "0.1.0",
    "model_name": "unet-demo",
    "model_sha256": "ab" * 32,
    "parameters": '{"tile_size": 512, "overlap": 64}',
    "input": "/data/scene 1.tif",
    "time": "2026-01-02T03:04:05Z",
}

SPECS = (
    LayerSpec("Bâtiments", 1, "building", "#E31A1C"),
    LayerSpec("植被", 2, "vegetation", "#33a02c", outline_color="#000000"),
    LayerSpec("water", 3, "water", "#1f78b4"),
)
TABLES = {"Bâtiments": "batiments", "植被": "layer_1", "water": "water"}

# Coordinates that make sense in each CRS: metres in UTM 33N, degrees near 15°E.
ORIGINS = {"EPSG:32633": (500_000.0, 5_000_000.0, 10.0), "EPSG:4326": (15.0, 45.0, 1e-4)}


def boxes(crs: str, count: int, *, start: int = 0) -> list[shapely.Geometry]:
    x0, y0, size = ORIGINS[crs]
    return [
        shapely.box(x0 + (start + i) * 2 * size, y0, x0 + (start + i) * 2 * size + size, y0 + size)
        for i in range(count)
    ]


def attributes(count: int, **more: Any) -> dict[str, Any]:
    return {"area_m2": [100.0] * count, "perimeter_m": [40.0] * count, **more}


def write_sample(path: Path, crs: str = "EPSG:32633", **kwargs: Any) -> VectorWriter:
    """Two layers with features (two batches for the first) and one empty layer."""
    with VectorWriter(path, crs=crs, layers=SPECS, metadata=METADATA, **kwargs) as writer:
        writer.write(
            "Bâtiments",
            boxes(crs, 2),
            attributes(2, confidence=[0.9, None], source=["a.tif", None]),
        )
        writer.write(
            "Bâtiments",
            [shapely.MultiPolygon(boxes(crs, 2, start=2))],
            attributes(1, confidence=[0.5]),
        )
        writer.write("植被", boxes(crs, 3, start=5), attributes(3, class_name=["tree"] * 3))
    return writer


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{urllib.parse.quote(os.fspath(path))}?mode=ro", uri=True)


# --------------------------------------------------------------------------------------
# GeoPackage output
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_geopackage_layers_crs_counts_fields(tmp_path: Path, crs: str) -> None:
    out = tmp_path / "scene.gpkg"
    writer = write_sample(out, crs=crs)

    # Only the finished file; no temporary or side file was left behind.
    assert listing(tmp_path) == ["scene.gpkg"]
    assert writer.outputs == dict.fromkeys(TABLES, out)
    assert writer.table_names == TABLES
    assert writer.feature_counts == {"Bâtiments": 3, "植被": 3, "water": 0}

    info = {name: gtype for name, gtype in pyogrio.list_layers(out)}
    assert info == {
        "batiments": "MultiPolygon",
        "layer_1": "MultiPolygon",
        "water": "MultiPolygon",
        "layer_styles": None,
    }
    expected_counts = {"batiments": 3, "layer_1": 3, "water": 0}
    for table, count in expected_counts.items():
        layer = pyogrio.read_info(out, layer=table)
        assert layer["crs"] == crs
        assert layer["features"] == count
        assert layer["geometry_type"] == "MultiPolygon"
        assert list(layer["fields"]) == list(CORE_FIELDS)
        assert list(layer["dtypes"]) == [
            "int64",
            "object",
            "float64",
            "float64",
            "float64",
            "object",
        ]

    frame = pyogrio.read_dataframe(out, layer="batiments")
    assert frame.crs == crs
    assert list(frame["class_id"]) == [1, 1, 1]
    assert list(frame["class_name"]) == ["building"] * 3
    assert frame["confidence"].iloc[0] == pytest.approx(0.9)
    assert np.isnan(frame["confidence"].iloc[1])
    assert frame["source"].iloc[0] == "a.tif"
    assert frame["source"].iloc[1:].isna().all()
    assert set(frame.geometry.geom_type) == {"MultiPolygon"}
    assert shapely.equals(frame.geometry.iloc[0], shapely.MultiPolygon(boxes(crs, 1)))
    vegetation = pyogrio.read_dataframe(out, layer="layer_1")
    assert list(vegetation["class_name"]) == ["tree"] * 3


def test_geopackage_empty_layer_has_schema_and_crs(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    with VectorWriter(out, crs=32633, layers=SPECS, metadata=METADATA):
        pass
    for table in TABLES.values():
        layer = pyogrio.read_info(out, layer=table)
        assert layer["features"] == 0
        assert layer["crs"] == "EPSG:32633"
        assert layer["geometry_type"] == "MultiPolygon"
        assert list(layer["fields"]) == list(CORE_FIELDS)


def test_geopackage_metadata_is_dataset_metadata(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    write_sample(out)
    # Dataset metadata: the same whichever layer read_info is pointed at.
    assert pyogrio.read_info(out, layer="water")["dataset_metadata"] == METADATA
    with pytest.warns(UserWarning, match="More than one layer"):
        assert pyogrio.read_info(out)["dataset_metadata"] == METADATA
    # The original (non-ASCII) layer name and the colour stay with each layer.
    layer_metadata = pyogrio.read_info(out, layer="layer_1")["layer_metadata"]
    assert layer_metadata["geoseg_layer_name"] == "植被"
    assert layer_metadata["geoseg_color"] == "#33a02c"
    assert layer_metadata["DESCRIPTION"] == "vegetation"


def test_geopackage_is_version_1_2(tmp_path: Path) -> None:
    # GDAL < 3.7 (QGIS 3.22) warns about newer GeoPackage versions.
    out = tmp_path / "scene.gpkg"
    write_sample(out)
    with connect_ro(out) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200


def test_geopackage_spatial_index(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    write_sample(out)
    con = connect_ro(out)
    try:
        for table, count in {"batiments": 3, "layer_1": 3, "water": 0}.items():
            rtree = f"rtree_{table}_geom"
            sql = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (rtree,)).fetchone()
            assert sql is not None and "USING rtree" in sql[0]
            assert con.execute(f'SELECT COUNT(*) FROM "{rtree}"').fetchone()[0] == count
            extension = con.execute(
                "SELECT extension_name FROM gpkg_extensions WHERE table_name = ?", (table,)
            ).fetchall()
            assert ("gpkg_rtree_index",) in extension
    finally:
        con.close()
    assert pyogrio.read_info(out, layer="batiments")["capabilities"]["fast_spatial_filter"]


def test_the_spatial_index_is_built_once_when_the_file_is_complete(tmp_path: Path) -> None:
    """No index while batches are appended; one bulk build on close, exact, kept up by GDAL."""
    out = tmp_path / "many.gpkg"
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 5000, 250), rng.uniform(0, 5000, 250)
    geoms = list(shapely.box(x, y, x + rng.uniform(1, 30, 250), y + 7))
    seen_during = []
    with VectorWriter(out, crs="EPSG:32633", layers=SPECS, metadata=METADATA) as writer:
        for i in range(0, 250, 50):
            writer.write("Bâtiments", geoms[i : i + 50], attributes(50))
            with connect_ro(writer._store) as con:  # the file being written
                seen_during.append(
                    con.execute(
                        "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'rtree_%'"
                    ).fetchone()[0]
                )
    assert seen_during == [0] * 5
    with connect_ro(out) as con:
        rows = con.execute("SELECT id, minx, maxx, miny, maxy FROM rtree_batiments_geom").fetchall()
        triggers = {
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
    assert len(rows) == 250
    frame = pyogrio.read_dataframe(out, layer="batiments", fid_as_index=True)
    for fid, x0, x1, y0, y1 in rows:
        bx0, by0, bx1, by1 = frame.geometry.loc[fid].bounds
        # R-tree boxes are float32, rounded outwards.
        assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1
        assert max(bx0 - x0, by0 - y0, x1 - bx1, y1 - by1) < 1e-3
    assert {f"rtree_batiments_geom_{t}" for t in ("insert", "delete", "update1")} <= triggers
    # GDAL answers bbox queries from it, and keeps it up to date on later appends.
    assert pyogrio.read_info(out, layer="batiments")["capabilities"]["fast_spatial_filter"]
    box = (1000, 1000, 2000, 2000)
    want = sum(g.intersects(shapely.box(*box)) for g in geoms)
    assert len(pyogrio.read_dataframe(out, layer="batiments", bbox=box)) == want
    extra = gpd.GeoDataFrame(
        {"class_id": [1]},
        geometry=[shapely.MultiPolygon([shapely.box(1500, 1500, 1510, 1510)])],
        crs="EPSG:32633",
    )
    pyogrio.write_dataframe(extra, out, layer="batiments", append=True)
    assert len(pyogrio.read_dataframe(out, layer="batiments", bbox=box)) == want + 1
    with connect_ro(out) as con:
        assert con.execute("SELECT COUNT(*) FROM rtree_batiments_geom").fetchone()[0] == 251


def test_geopackage_layer_styles(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    write_sample(out)
    con = connect_ro(out)
    try:
        columns = [
            (name, kind, notnull, default, pk)
            for _, name, kind, notnull, default, pk in con.execute(
                "PRAGMA table_info(layer_styles)"
            )
        ]
        contents = con.execute(
            "SELECT data_type, identifier FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
        ogr_count = con.execute(
            "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
        rows = con.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
            "styleQML, styleSLD, useAsDefault, owner, update_time FROM layer_styles ORDER BY id"
        ).fetchall()
    finally:
        con.close()

    # The table exactly as QGIS creates it, registered as GDAL registers it.
    assert columns == [
        ("id", "INTEGER", 1, None, 1),
        ("f_table_catalog", "TEXT(256)", 0, None, 0),
        ("f_table_schema", "TEXT(256)", 0, None, 0),
        ("f_table_name", "TEXT(256)", 0, None, 0),
        ("f_geometry_column", "TEXT(256)", 0, None, 0),
        ("styleName", "TEXT(30)", 0, None, 0),
        ("styleQML", "TEXT", 0, None, 0),
        ("styleSLD", "TEXT", 0, None, 0),
        ("useAsDefault", "BOOLEAN", 0, None, 0),
        ("description", "TEXT", 0, None, 0),
        ("owner", "TEXT(30)", 0, None, 0),
        ("ui", "TEXT(30)", 0, None, 0),
        ("update_time", "DATETIME", 0, "strftime('%Y-%m-%dT%H:%M:%fZ','now')", 0),
    ]
    assert contents == ("attributes", "layer_styles")
    assert ogr_count == (3,)
    assert pyogrio.read_info(out, layer="layer_styles")["features"] == 3

    expected = {
        "batiments": ("227,26,28,128", "227,26,28,255", "#e31a1c", "#e31a1c"),
        "layer_1": ("51,160,44,128", "0,0,0,255", "#33a02c", "#000000"),
        "water": ("31,120,180,128", "31,120,180,255", "#1f78b4", "#1f78b4"),
    }
    assert [row[2] for row in rows] == list(expected)
    for catalog, schema, table, geom, style_name, qml, sld, default, owner, updated in rows:
        fill, outline, fill_hex, outline_hex = expected[table]
        assert (catalog, schema, geom, style_name, default, owner) == ("", "", "geom", table, 1, "")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", updated)

        assert qml.startswith("<!DOCTYPE qgis")
        root = ET.fromstring(qml)
        renderer = root.find("renderer-v2")
        assert renderer is not None and renderer.get("type") == "singleSymbol"
        layer = root.find("renderer-v2/symbols/symbol/layer")
        assert layer is not None and layer.get("class") == "SimpleFill"
        options = {o.get("name"): o.get("value") for o in layer.findall("Option/Option")}
        legacy = {p.get("k"): p.get("v") for p in layer.findall("prop")}
        for props in (options, legacy):
            assert props["color"] == fill
            assert props["outline_color"] == outline
            assert props["style"] == "solid"
            assert props["outline_style"] == "solid"

        se = "{http://www.opengis.net/se}"
        sld_root = ET.fromstring(sld.encode())
        params = {p.get("name"): p.text for p in sld_root.iter(f"{se}SvgParameter")}
        assert params["fill"] == fill_hex
        assert params["fill-opacity"] == "0.50"
        assert params["stroke"] == outline_hex
        assert sld_root.find(f".//{se}Name").text == table  # type: ignore[union-attr]


def test_hostile_layer_names_end_up_as_safe_tables(tmp_path: Path) -> None:
    out = tmp_path / "hostile.gpkg"
    specs = [
        LayerSpec('"; DROP TABLE x; --', 1, "a'; DELETE FROM gpkg_contents; --", "#ff0000"),
        LayerSpec("gpkg_contents", 2, "b", "#00ff00"),
        LayerSpec("layer_styles", 3, "c", "#0000ff"),
    ]
    with VectorWriter(out, crs=32633, layers=specs, metadata={}) as writer:
        writer.write('"; DROP TABLE x; --', boxes("EPSG:32633", 1), attributes(1))
    assert writer.table_names == {
        '"; DROP TABLE x; --': "drop_table_x",
        "gpkg_contents": "layer_gpkg_contents",
        "layer_styles": "layer_layer_styles",
    }
    names = [name for name, _ in pyogrio.list_layers(out)]
    assert names == ["drop_table_x", "layer_gpkg_contents", "layer_layer_styles", "layer_styles"]
    assert pyogrio.read_info(out, layer="drop_table_x")["features"] == 1
    frame = pyogrio.read_dataframe(out, layer="drop_table_x")
    assert frame["class_name"].iloc[0] == "a'; DELETE FROM gpkg_contents; --"


def test_extra_fields(tmp_path: Path) -> None:
    out = tmp_path / "extra.gpkg"
    spec = LayerSpec("roofs", 7, "roof", "#aa5500")
    with VectorWriter(
        out,
        crs=32633,
        layers=[spec],
        metadata={},
        extra_fields={"tile_id": "int", "height_m": "float", "material": "str"},
    ) as writer:
        writer.write(
            "roofs",
            boxes("EPSG:32633", 2),
            attributes(2, tile_id=[4, None], height_m=[3.5, None], material=["tile", None]),
        )
        with pytest.raises(ConfigError, match="unknown fields \\['colour'\\]"):
            writer.write("roofs", boxes("EPSG:32633", 1), attributes(1, colour=["red"]))
    info = pyogrio.read_info(out, layer="roofs")
    assert list(info["fields"]) == [*CORE_FIELDS, "tile_id", "height_m", "material"]
    frame = pyogrio.read_dataframe(out, layer="roofs")
    assert frame["tile_id"].iloc[0] == 4 and np.isnan(frame["tile_id"].iloc[1])
    assert frame["material"].iloc[0] == "tile" and frame["material"].isna().iloc[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"class_id": "int"}, "clashes"),
        ({"GEOM": "str"}, "clashes"),
        ({"a b": "str"}, "letters, digits"),
        ({"x": "bool"}, "must be one of"),
    ],
)
def test_bad_extra_fields(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VectorWriter(tmp_path / "x.gpkg", crs=32633, layers=SPECS, metadata={}, extra_fields=extra)


# --------------------------------------------------------------------------------------
# Atomicity of the writer
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "scene.gpkg"
    with (
        pytest.raises(type(error)),
        VectorWriter(out, crs=32633, layers=SPECS, metadata=METADATA) as writer,
    ):
        writer.write("Bâtiments", boxes("EPSG:32633", 2), attributes(2))
        assert any(name.startswith(".scene.geoseg-tmp-") for name in listing(tmp_path))
        raise error
    assert listing(tmp_path) == []


def test_failure_mid_write_keeps_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    write_sample(out)
    before = out.read_bytes()
    with (
        pytest.raises(ConfigError),
        VectorWriter(out, crs=32633, layers=SPECS, metadata={}, overwrite=True) as writer,
    ):
        writer.write("Bâtiments", boxes("EPSG:32633", 1), attributes(1))
        writer.write("Bâtiments", [shapely.Point(0, 0)], attributes(1))
    assert listing(tmp_path) == ["scene.gpkg"]
    assert out.read_bytes() == before


def test_existing_output_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    out.write_bytes(b"previous")
    writer = VectorWriter(out, crs=32633, layers=SPECS, metadata={})
    with (
        pytest.raises(OutputExistsError, match="exists; pass overwrite=True to replace it"),
        writer,
    ):
        pass  # pragma: no cover
    assert out.read_bytes() == b"previous"
    assert listing(tmp_path) == ["scene.gpkg"]


def test_overwrite_replaces_output_and_stale_side_files(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    out.write_bytes(b"previous")
    Path(f"{out}.aux.xml").write_text("<PAMDataset/>")
    write_sample(out, overwrite=True)
    assert listing(tmp_path) == ["scene.gpkg"]
    assert pyogrio.read_info(out, layer="batiments")["features"] == 3


def test_disk_full_during_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pyogrio.write_dataframe
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if kwargs.get("append"):
            raise pyogrio.errors.DataSourceError("sqlite3_step() failed: database or disk is full")
        real(*args, **kwargs)

    monkeypatch.setattr(write_vector.pyogrio, "write_dataframe", failing)
    out = tmp_path / "scene.gpkg"
    with (
        pytest.raises(
            OutputWriteError,
            match=f"disk full \\(or file size limit reached\\) while writing {re.escape(str(out))}",
        ),
        VectorWriter(out, crs=32633, layers=SPECS, metadata={}) as writer,
    ):
        writer.write("water", boxes("EPSG:32633", 1), attributes(1))
    assert calls["n"] == len(SPECS) + 1
    assert listing(tmp_path) == []


def test_writer_can_only_be_used_once(tmp_path: Path) -> None:
    writer = write_sample(tmp_path / "scene.gpkg")
    with pytest.raises(ConfigError, match="needs an open writer"):
        writer.write("water", boxes("EPSG:32633", 1), attributes(1))
    with (
        pytest.raises(ConfigError, match="one `with` block"),
        writer,
    ):
        pass  # pragma: no cover


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


@pytest.fixture
def open_writer(tmp_path: Path) -> Iterator[VectorWriter]:
    with VectorWriter(tmp_path / "v.gpkg", crs=32633, layers=SPECS, metadata={}) as writer:
        yield writer


@pytest.mark.parametrize(
    ("layer", "geometries", "attrs", "message"),
    [
        ("roads", [shapely.box(0, 0, 1, 1)], attributes(1), "unknown layer 'roads'"),
        ("water", [shapely.Point(0, 0)], attributes(1), "got Point at position 0"),
        ("water", [None], attributes(1), "got None at position 0"),
        ("water", ["POLYGON"], attributes(1), "must be shapely geometries"),
        ("water", [shapely.box(0, 0, 1, 1)], {"area_m2": [1.0]}, "'perimeter_m' is required"),
        ("water", [shapely.box(0, 0, 1, 1)], attributes(2), "has 2 values for 1 geometries"),
        ("water", [shapely.box(0, 0, 1, 1)], attributes(1, class_id=["x"]), "needs integers"),
        ("water", [shapely.box(0, 0, 1, 1)], attributes(1, class_id=[None]), "must not be null"),
        ("water", [shapely.box(0, 0, 1, 1)], attributes(1, source=[3]), "needs strings"),
        (
            "water",
            [shapely.box(0, 0, 1, 1)],
            {"area_m2": [float("nan")], "perimeter_m": [1.0]},
            "must be finite",
        ),
    ],
)
def test_write_rejects_bad_batches(
    open_writer: VectorWriter,
    layer: str,
    geometries: list[Any],
    attrs: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_writer.write(layer, geometries, attrs)


def test_write_accepts_sanitized_name_and_geoseries(open_writer: VectorWriter) -> None:
    series = gpd.GeoSeries(boxes("EPSG:32633", 2), crs=32633)
    assert open_writer.write("layer_1", series, attributes(2)) == 2
    assert open_writer.write("water", [], {}) == 0
    wrong = gpd.GeoSeries(boxes("EPSG:4326", 1), crs=4326)
    with pytest.raises(ConfigError, match="reproject them first"):
        open_writer.write("water", wrong, attributes(1))


def test_polygon_layers_refuse_multipolygons(tmp_path: Path) -> None:
    spec = LayerSpec("fields", 4, "field", "#ffff99", geometry_type="Polygon")
    out = tmp_path / "p.gpkg"
    with VectorWriter(out, crs=32633, layers=[spec], metadata={}) as writer:
        writer.write("fields", boxes("EPSG:32633", 1), attributes(1))
        with pytest.raises(ConfigError, match="takes Polygon geometries; got MultiPolygon"):
            writer.write("fields", [shapely.MultiPolygon(boxes("EPSG:32633", 1))], attributes(1))
    assert pyogrio.read_info(out, layer="fields")["geometry_type"] == "Polygon"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"color": "red"}, "hex colour"),
        ({"color": "#12345"}, "hex colour"),
        ({"outline_color": "#gggggg"}, "outline colour"),
        ({"class_id": True}, "class_id"),
        ({"class_id": 1.5}, "class_id"),
        ({"geometry_type": "LineString"}, "geometry_type"),
        ({"name": " "}, "non-empty"),
    ],
)
def test_layer_spec_validation(kwargs: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"name": "a", "class_id": 1, "class_name": "a", "color": "#000000"}
    with pytest.raises(ConfigError, match=message):
        LayerSpec(**{**values, **kwargs})


def test_layer_spec_normalises() -> None:
    spec = LayerSpec("a", np.int64(3), "a", "#ABCDEF", outline_color="#FFFFFF")  # type: ignore[arg-type]
    assert (spec.class_id, spec.color, spec.outline_color) == (3, "#abcdef", "#ffffff")
    assert type(spec.class_id) is int


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": []}, "no layers"),
        ({"layers": [SPECS[0], SPECS[0]]}, "repeated"),
        ({"crs": "EPSG:999999"}, "cannot understand the CRS"),
        ({"crs": None}, "CRS is required"),
        ({"metadata": {"a:b": "x"}}, "metadata key"),
        ({"metadata": {"a=b": "x"}}, "metadata key"),
        ({"metadata": {"n": 1}}, "must be a string"),
    ],
)
def test_writer_validation(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"crs": 32633, "layers": SPECS, "metadata": {}}
    with pytest.raises(ConfigError, match=message):
        VectorWriter(tmp_path / "x.gpkg", **{**values, **kwargs})


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.shp.*\.gpkg, \.fgb, \.geojson"):
        VectorWriter(tmp_path / "x.shp", crs=32633, layers=SPECS, metadata={})
    with pytest.raises(ConfigError, match="none"):
        VectorWriter(tmp_path / "x", crs=32633, layers=SPECS, metadata={})


def test_parquet_needs_the_gdal_driver(tmp_path: Path) -> None:
    if "Parquet" in pyogrio.list_drivers(write=True):
        pytest.skip("this GDAL has the Parquet driver")
    assert ".parquet" not in supported_vector_extensions()
    with pytest.raises(ConfigError, match=r"Parquet driver.*use one of \.gpkg"):
        VectorWriter(tmp_path / "x.parquet", crs=32633, layers=SPECS, metadata={})


# --------------------------------------------------------------------------------------
# Single-layer formats
# --------------------------------------------------------------------------------------


def test_flatgeobuf_one_file_per_layer(tmp_path: Path) -> None:
    out = tmp_path / "scene.fgb"
    writer = write_sample(out, extra_fields={"tile_id": "int"})
    files = {name: tmp_path / f"scene.{table}.fgb" for name, table in TABLES.items()}
    assert writer.outputs == files
    assert listing(tmp_path) == sorted(p.name for p in files.values())
    for name, count in {"Bâtiments": 3, "植被": 3}.items():
        info = pyogrio.read_info(files[name])
        assert (info["features"], info["crs"], info["geometry_type"]) == (
            count,
            "EPSG:32633",
            "MultiPolygon",
        )
        assert list(info["fields"]) == [*CORE_FIELDS, "tile_id"]
        assert list(info["dtypes"]) == [
            "int64", "object", "float64", "float64", "float64", "object", "int64"
        ]  # fmt: skip
        # FlatGeobuf has no dataset metadata; the run metadata is layer metadata.
        assert info["layer_metadata"].items() >= METADATA.items()
        assert info["layer_metadata"]["geoseg_layer_name"] == name
    empty = pyogrio.read_info(files["water"])
    assert list(empty["fields"]) == [*CORE_FIELDS, "tile_id"]
    assert empty["geometry_type"] == "MultiPolygon"
    assert len(pyogrio.read_dataframe(files["water"])) == 0
    # The spatial index orders features along a Hilbert curve, not as written.
    frame = pyogrio.read_dataframe(files["Bâtiments"])
    assert frame["source"].dropna().tolist() == ["a.tif"]
    assert sorted(frame["confidence"].dropna()) == [0.5, 0.9]
    assert frame["confidence"].isna().sum() == 1


def test_geojson_one_file_per_layer(tmp_path: Path) -> None:
    out = tmp_path / "scene.geojson"
    writer = write_sample(out, crs="EPSG:4326")
    assert listing(tmp_path) == sorted(p.name for p in writer.outputs.values())
    info = pyogrio.read_info(writer.outputs["植被"])
    assert (info["features"], info["crs"]) == (3, "EPSG:4326")
    assert pyogrio.read_dataframe(writer.outputs["植被"])["class_name"].tolist() == ["tree"] * 3


def test_single_layer_failure_leaves_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        VectorWriter(tmp_path / "s.fgb", crs=32633, layers=SPECS, metadata={}) as writer,
    ):
        writer.write("water", boxes("EPSG:32633", 1), attributes(1))
        raise RuntimeError("boom")
    assert listing(tmp_path) == []


def test_single_layer_outputs_all_checked_before_writing(tmp_path: Path) -> None:
    (tmp_path / "s.water.fgb").write_bytes(b"previous")
    with (
        pytest.raises(OutputExistsError, match=r"s\.water\.fgb exists"),
        VectorWriter(tmp_path / "s.fgb", crs=32633, layers=SPECS, metadata={}),
    ):
        pass  # pragma: no cover
    assert listing(tmp_path) == ["s.water.fgb"]


# --------------------------------------------------------------------------------------
# Layer name sanitization
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("buildings", "buildings"),
        ("Bâtiments", "batiments"),
        ("Forêt dense", "foret_dense"),
        ("Straße", "strasse"),
        ("植被", "layer_1"),
        ("植被 2020", "layer_2020"),
        ("", "layer_1"),
        ("   ", "layer_1"),
        ("---", "layer_1"),
        ('"; DROP TABLE x; --', "drop_table_x"),
        ("it's", "it_s"),
        ("a;b", "a_b"),
        ('"quoted"', "quoted"),
        ("[brackets]`tick`", "brackets_tick"),
        ("a  --  b", "a_b"),
        ("2020", "layer_2020"),
        ("gpkg_contents", "layer_gpkg_contents"),
        ("RTREE_x_geom", "layer_rtree_x_geom"),
        ("sqlite_master", "layer_sqlite_master"),
        ("GPKG", "layer_gpkg"),
        ("layer_styles", "layer_layer_styles"),
        ("x" * 100, "x" * MAX_LAYER_NAME_LENGTH),
    ],
)
def test_sanitize_layer_name(name: str, expected: str) -> None:
    assert sanitize_layer_name(name) == expected


def test_sanitize_layer_names_deduplicates() -> None:
    assert sanitize_layer_names(["Roads", "roads", "ROADS!", "", "", "layer_1"]) == [
        "roads",
        "roads_2",
        "roads_3",
        "layer_1",
        "layer_2",
        "layer_1_2",
    ]
    long = ["y" * 80, "y" * 90]
    first, second = sanitize_layer_names(long)
    assert first == "y" * MAX_LAYER_NAME_LENGTH
    assert second == "y" * (MAX_LAYER_NAME_LENGTH - 2) + "_2"


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=120), st.lists(st.text(max_size=30), max_size=6))
def test_sanitize_layer_name_properties(name: str, others: list[str]) -> None:
    taken = sanitize_layer_names(others)
    assert len(set(taken)) == len(taken)
    result = sanitize_layer_name(name, taken=taken)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", result)
    assert 0 < len(result) <= MAX_LAYER_NAME_LENGTH
    assert not f"{result}_".startswith(("gpkg_", "rtree_", "sqlite_"))
    assert result not in {"layer_styles", "qgis_projects", "ogr_empty_table"}
    assert result not in taken
    assert sanitize_layer_name(name, taken=taken) == result


# --------------------------------------------------------------------------------------
# geoseg.io.atomic
# --------------------------------------------------------------------------------------


def test_atomic_output_success(tmp_path: Path) -> None:
    out = tmp_path / "result.tif"
    with atomic_output(out, overwrite=False) as tmp:
        assert tmp.parent == tmp_path
        assert re.fullmatch(r"\.result\.geoseg-tmp-[0-9a-f]{8}\.tif", tmp.name)
        assert not tmp.exists()
        tmp.write_bytes(b"new")
        Path(f"{tmp}.aux.xml").write_text("<PAMDataset/>")
        Path(f"{tmp}-journal").write_bytes(b"")
        assert not out.exists()
    assert out.read_bytes() == b"new"
    # .aux.xml describes the file and moves with it; a journal does not.
    assert listing(tmp_path) == ["result.tif", "result.tif.aux.xml"]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_atomic_output_failure_removes_temporary_files(
    tmp_path: Path, error: BaseException
) -> None:
    out = tmp_path / "result.gpkg"
    with pytest.raises(type(error)), atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"partial")
        for suffix in ("-wal", "-shm", "-journal", ".aux.xml"):
            Path(f"{tmp}{suffix}").write_bytes(b"x")
        raise error
    assert listing(tmp_path) == []


def test_atomic_output_failure_keeps_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "result.gpkg"
    out.write_bytes(b"complete previous file")
    with pytest.raises(ValueError), atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("boom")
    assert out.read_bytes() == b"complete previous file"
    assert listing(tmp_path) == ["result.gpkg"]


def test_atomic_output_overwrite_removes_stale_side_files(tmp_path: Path) -> None:
    out = tmp_path / "result.gpkg"
    out.write_bytes(b"old")
    for suffix in (".aux.xml", "-wal", "-shm"):
        Path(f"{out}{suffix}").write_bytes(b"stale")
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert listing(tmp_path) == ["result.gpkg"]


def test_atomic_output_refuses_existing(tmp_path: Path) -> None:
    out = tmp_path / "result.gpkg"
    out.write_bytes(b"old")
    with (
        pytest.raises(
            OutputExistsError, match=r"result\.gpkg exists; pass overwrite=True to replace it"
        ),
        atomic_output(out, overwrite=False),
    ):
        pytest.fail("body must not run")  # pragma: no cover
    assert out.read_bytes() == b"old"
    assert listing(tmp_path) == ["result.gpkg"]
    with pytest.raises(FileExistsError):  # also a builtin FileExistsError
        check_output_path(out, overwrite=False)


def test_atomic_output_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "deeper"
    with (
        pytest.raises(OutputWriteError, match=f"{re.escape(str(missing))} does not exist; create"),
        atomic_output(missing / "out.gpkg", overwrite=False),
    ):
        pytest.fail("body must not run")  # pragma: no cover
    assert not missing.exists()


def test_atomic_output_parent_is_a_file_and_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputWriteError, match="is not a directory"):
        check_output_path(tmp_path / "file" / "out.gpkg", overwrite=False)
    (tmp_path / "dir.gpkg").mkdir()
    with pytest.raises(OutputWriteError, match="is a directory"):
        check_output_path(tmp_path / "dir.gpkg", overwrite=True)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_atomic_output_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match="is not writable"):
            check_output_path(locked / "out.gpkg", overwrite=False)
    finally:
        locked.chmod(0o700)


def test_atomic_output_unwritable_directory_by_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(OutputWriteError, match=f"{re.escape(str(tmp_path))} is not writable"):
        check_output_path(tmp_path / "out.gpkg", overwrite=False)


def test_atomic_output_unwritable_directory_by_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.access says yes but creating a file fails: a read-only mount, an ACL.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputWriteError, match="not writable \\(Read-only file system\\)"):
        check_output_path(tmp_path / "out.gpkg", overwrite=False)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("sqlite3_step() failed: database or disk is full"),
        RuntimeError("Write error: No space left on device"),
    ],
)
def test_atomic_output_disk_full(tmp_path: Path, error: Exception) -> None:
    out = tmp_path / "result.gpkg"
    with (
        pytest.raises(
            OutputWriteError,
            match=r"disk full \(or file size limit reached\) while writing .*result\.gpkg; free space",
        ),
        atomic_output(out, overwrite=False) as tmp,
    ):
        tmp.write_bytes(b"partial")
        raise error
    assert listing(tmp_path) == []


def test_atomic_output_disk_full_in_cause_chain(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputWriteError, match="disk full") as info,
        atomic_output(tmp_path / "r.gpkg", overwrite=False),
    ):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ValueError("wrapped") from exc
    assert isinstance(info.value.__cause__, ValueError)


def test_atomic_output_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_output(tmp_path / "r.gpkg", overwrite=False):
        raise PermissionError(errno.EACCES, "input not readable")


def test_atomic_output_body_must_create_the_file(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputWriteError, match="produced no file"),
        atomic_output(tmp_path / "r.gpkg", overwrite=False),
    ):
        pass
    assert listing(tmp_path) == []


def test_remove_with_sidecars(tmp_path: Path) -> None:
    base = tmp_path / "a.gpkg"
    for suffix in ("", "-wal", ".aux.xml", ".other"):
        Path(f"{base}{suffix}").write_bytes(b"")
    remove_with_sidecars(base)
    remove_with_sidecars(base)  # missing files are fine
    assert listing(tmp_path) == ["a.gpkg.other"]
