"""predict -> vectorize end to end: layers, fields, styles, metadata, seams, QGIS."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.transform import from_origin

from geoseg.errors import ConfigError, OutputExistsError
from geoseg.pipeline import VectorizeConfig, run_vectorize
from geoseg.vectorize.clean import CleanupParams
from tests.conftest import write_raster

NO_CLEAN = {n: CleanupParams(style="none") for n in ("building", "vegetation")}


def class_raster(tmp_path, arr, crs="EPSG:32633", transform=None, tags=None):
    transform = transform or from_origin(500000, 6000000, 1.0, 1.0)
    path = write_raster(
        tmp_path / "cls.tif", arr.astype("uint8"), crs=crs, transform=transform, nodata=255
    )
    classes = [
        {
            "id": 0,
            "name": "background",
            "color": "#000000",
            "layer": "background",
            "vectorize": False,
        },
        {"id": 1, "name": "building", "color": "#e41a1c", "layer": "buildings", "vectorize": True},
        {
            "id": 2,
            "name": "vegetation",
            "color": "#4daf4a",
            "layer": "vegetation",
            "vectorize": True,
        },
    ]
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(GEOSEG_CLASSES=json.dumps(classes), GEOSEG_MODEL="m", **(tags or {}))
    return path


def blobs(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 3, (h // 4 + 1, w // 4 + 1))
    return np.repeat(np.repeat(small, 4, 0), 4, 1)[:h, :w]


def test_streamed_layers_equal_whole_raster_polygons(tmp_path):
    arr = blobs(203, 150)
    arr[:5, :5] = 255
    src = class_raster(tmp_path, arr)
    cfg = VectorizeConfig(cleanup=NO_CLEAN, block_rows=17)
    stats = run_vectorize(src, tmp_path / "o.gpkg", cfg)
    tr = from_origin(500000, 6000000, 1.0, 1.0)
    for value, layer in ((1, "buildings"), (2, "vegetation")):
        want = [
            shapely.geometry.shape(g)
            for g, v in shapes(arr.astype("uint8"), transform=tr)
            if v == value
        ]
        got = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer=layer)
        assert len(got) == len(want) == stats.polygons[layer]
        assert got.geometry.is_valid.all()
        assert (
            shapely.union_all(list(got.geometry)).symmetric_difference(shapely.union_all(want)).area
            == 0
        )
        np.testing.assert_allclose(sorted(got.area_m2), sorted(p.area for p in want))


def test_fields_styles_metadata_and_crs(tmp_path):
    arr = np.zeros((60, 80), np.uint8)
    arr[10:30, 10:40] = 1  # 20 x 30 m building
    arr[40:55, 50:70] = 2
    src = class_raster(tmp_path, arr, tags={"GEOSEG_SOURCE": "scene.tif"})
    probs = np.zeros((3, 60, 80), np.uint8)
    probs[1] = 200
    probs[2] = 100
    write_raster(tmp_path / "p.tif", probs, transform=from_origin(500000, 6000000, 1.0, 1.0))
    run_vectorize(src, tmp_path / "o.gpkg", VectorizeConfig(confidence=tmp_path / "p.tif"))
    b = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer="buildings")
    assert list(b.columns[:6]) == [
        "class_id",
        "class_name",
        "area_m2",
        "perimeter_m",
        "confidence",
        "source",
    ]
    assert len(b) == 1 and b.class_name[0] == "building" and b.source[0] == "scene.tif"
    assert b.area_m2[0] == pytest.approx(600, rel=0.02) and b.perimeter_m[0] == pytest.approx(
        100, rel=0.02
    )
    assert b.confidence[0] == pytest.approx(200 / 255, abs=1e-3)  # unscaled uint8: 255 is 1
    assert pyogrio.read_info(tmp_path / "o.gpkg", layer="buildings")["crs"] == "EPSG:32633"
    meta = pyogrio.read_info(tmp_path / "o.gpkg", layer="buildings")["dataset_metadata"]
    assert meta["model"] == "m" and "geoseg_version" in meta and "cleanup" in meta["parameters"]
    with sqlite3.connect(tmp_path / "o.gpkg") as con:
        styles = dict(con.execute("select f_table_name, styleQML from layer_styles").fetchall())
    assert set(styles) == {"buildings", "vegetation"} and "228,26,28" in styles["buildings"]


def test_building_is_regularized_and_dst_crs(tmp_path):
    arr = np.zeros((80, 80), np.uint8)
    yy, xx = np.mgrid[:80, :80]
    # A 30-degree rotated rectangle with jagged pixel edges.
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    u, v = (xx - 40) * c + (yy - 40) * s, -(xx - 40) * s + (yy - 40) * c
    arr[(abs(u) < 20) & (abs(v) < 10)] = 1
    src = class_raster(tmp_path, arr)
    run_vectorize(src, tmp_path / "o.gpkg", VectorizeConfig(dst_crs="EPSG:4326"))
    b = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer="buildings")
    assert b.crs.to_epsg() == 4326 and len(b) == 1
    assert b.area_m2[0] == pytest.approx(800, rel=0.08)
    ring = np.asarray(shapely.get_exterior_ring(b.geometry[0].geoms[0]).coords)
    assert len(ring) <= 9  # a handful of right-angled corners, not a staircase


def test_refuses_existing_and_needs_class_names(tmp_path):
    src = class_raster(tmp_path, blobs(20, 20))
    (tmp_path / "o.gpkg").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        run_vectorize(src, tmp_path / "o.gpkg")
    assert (tmp_path / "o.gpkg").read_bytes() == b"old"
    bare = write_raster(tmp_path / "bare.tif", blobs(20, 20).astype("uint8"))
    with pytest.raises(ConfigError, match="pass model=NAME"):
        run_vectorize(bare, tmp_path / "b.gpkg")


def test_predict_to_gpkg_in_cli_and_qgis(tiny_model_dir, tmp_path):
    from tests.conftest import random_image

    src = write_raster(tmp_path / "scene.tif", random_image(120, 100))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoseg",
            "predict",
            src,
            "-o",
            tmp_path / "scene.gpkg",
            "--model",
            tiny_model_dir,
            "--device",
            "cpu",
            "--probabilities",
            tmp_path / "p.tif",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "scene_classes.tif").exists()
    layers = dict(pyogrio.list_layers(tmp_path / "scene.gpkg"))
    assert {"buildings", "vegetation"} <= set(layers)
    counts = {
        n: pyogrio.read_info(tmp_path / "scene.gpkg", layer=n)["features"]
        for n in ("buildings", "vegetation")
    }
    assert sum(counts.values()) > 0
    qgis = pytest.importorskip("tests.io.test_qgis")
    home = tmp_path / "qhome"
    home.mkdir()
    probe = subprocess.run(
        [qgis.SYSTEM_PYTHON, "-c", "import qgis.core"],
        env=qgis.qgis_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("PyQGIS not installed (.ci/install-qgis.sh)")
    expectations = {
        "layers": {
            "buildings": {"crs": "EPSG:32633", "count": counts["buildings"], "color": "#e41a1c"},
            "vegetation": {"crs": "EPSG:32633", "count": counts["vegetation"], "color": "#4daf4a"},
        }
    }
    rc, report = qgis.run_check(tmp_path / "scene.gpkg", expectations, home)
    assert rc == 0 and report["ok"], report


def test_cleanup_workers_give_the_same_geopackage(tmp_path, monkeypatch):
    """Batches cleaned in worker processes are written in the order they were formed."""
    from geoseg.io.write_raster import RasterStripWriter
    from tests.conftest import tiny_card

    rng = np.random.default_rng(5)
    classes = np.kron(rng.integers(0, 3, (40, 40)), np.ones((5, 5), np.int64)).astype(np.uint8)
    card = tiny_card()
    src = tmp_path / "cls.tif"
    with RasterStripWriter(
        src,
        crs=rasterio.crs.CRS.from_epsg(32633),
        transform=rasterio.transform.from_origin(500000, 6000000, 0.5, 0.5),
        width=200,
        height=200,
        colormap={c.id: c.rgb for c in card.classes},
        class_names=[c.name for c in card.classes],
    ) as w:
        w.write(0, classes)
    import geoseg.pipeline as pipeline

    pools = []
    submit = pipeline._Cleaner.submit

    def spy(self, *args, **kwargs):
        due = submit(self, *args, **kwargs)
        pools.append(self._pool is not None)
        return due

    monkeypatch.setattr(pipeline._Cleaner, "submit", spy)
    outs = {}
    for workers in (1, 2):
        pools.clear()
        cfg = VectorizeConfig(batch=30, workers=workers, block_rows=64)
        outs[workers] = run_vectorize(src, tmp_path / f"w{workers}.gpkg", cfg)
        # One worker never starts processes; two start them from the second full batch on.
        assert pools[0] is False and any(pools) is (workers == 2)
    assert outs[1].polygons == outs[2].polygons and sum(outs[1].polygons.values()) > 100
    for layer, _ in pyogrio.list_layers(tmp_path / "w1.gpkg"):
        if layer == "layer_styles":
            continue
        a = pyogrio.read_dataframe(tmp_path / "w1.gpkg", layer=layer)
        b = pyogrio.read_dataframe(tmp_path / "w2.gpkg", layer=layer)
        assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
        assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb())
    with pytest.raises(ConfigError, match=r"^workers must be from 1 to"):
        VectorizeConfig(workers=0)


def test_a_dead_cleanup_worker_is_one_clear_error():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from geoseg.errors import GeosegError
    from geoseg.pipeline import _result, _usable_cleanup_workers

    fut: Future = Future()
    fut.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
    with pytest.raises(GeosegError, match="--cleanup-workers 1"):
        _result(fut)
    assert _usable_cleanup_workers(None) == 1 and _usable_cleanup_workers(3) == 3


SPLIT = {
    "building": CleanupParams(
        style="regularize", simplify_tolerance_m=1.0, min_area_m2=10, split_neck_m=3.0
    ),
    "vegetation": CleanupParams(style="none"),
}


def _houses(h: int, w: int) -> np.ndarray:
    """Rows of 12 x 10 px houses; each pair in a row joined by a 2 px-wide bridge."""
    arr = np.zeros((h, w), np.uint8)
    for r0 in range(10, h - 20, 40):
        for c0 in range(10, w - 40, 40):
            arr[r0 : r0 + 12, c0 : c0 + 10] = 1
            arr[r0 : r0 + 12, c0 + 18 : c0 + 28] = 1
            arr[r0 + 5 : r0 + 7, c0 + 10 : c0 + 18] = 1  # the bridge: 2 m wide
    return arr


def test_touching_buildings_come_out_apart_whatever_the_strips(tmp_path):
    arr = _houses(130, 130)
    arr[60:75, 95:125] = 1  # one 30 x 15 m building: no neck, stays whole
    src = class_raster(tmp_path, arr)
    whole = run_vectorize(src, tmp_path / "a.gpkg", VectorizeConfig(cleanup=NO_CLEAN))
    split = run_vectorize(src, tmp_path / "b.gpkg", VectorizeConfig(cleanup=SPLIT))
    merged_blocks = whole.polygons["buildings"]
    assert split.polygons["buildings"] == 2 * merged_blocks - 1  # every pair cut, not the hall
    frame = pyogrio.read_dataframe(tmp_path / "b.gpkg", layer="buildings")
    geoms = frame.geometry.values
    assert all(shapely.get_num_geometries(g) == 1 for g in geoms)
    assert not any(
        geoms[i].intersects(geoms[j]) for i in range(len(geoms)) for j in range(i + 1, len(geoms))
    )
    sizes = sorted(round(a) for a in frame["area_m2"])
    assert sizes[-1] == pytest.approx(450, abs=30) and sizes[0] > 100
    # Cut on whole polygons: the same pieces for any strip height, batch and worker count,
    # buildings across strip seams (every 7th row) included.
    again = run_vectorize(
        src, tmp_path / "c.gpkg", VectorizeConfig(cleanup=SPLIT, block_rows=7, batch=3)
    )
    assert again.polygons == split.polygons
    other = pyogrio.read_dataframe(tmp_path / "c.gpkg", layer="buildings").geometry.values
    assert sorted(shapely.to_wkb(shapely.normalize(geoms))) == sorted(
        shapely.to_wkb(shapely.normalize(other))
    )


def test_split_keeps_a_building_across_a_strip_seam_whole(tmp_path):
    arr = np.zeros((60, 60), np.uint8)
    arr[5:50, 10:30] = 1  # 45 x 20 m, across the seams of 8-row strips
    src = class_raster(tmp_path, arr)
    stats = run_vectorize(src, tmp_path / "o.gpkg", VectorizeConfig(cleanup=SPLIT, block_rows=8))
    assert stats.polygons["buildings"] == 1
