"""GeoParquet output of batch runs: one table, the same polygons as the GeoPackage, whole or absent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pytest

pytest.importorskip("pyarrow")

import geopandas as gpd
import pyarrow.parquet as pq
import shapely

from geoseg.batch import run_batch
from geoseg.batch.parquet import ParquetDataset
from geoseg.batch.parts import write_part
from geoseg.batch.vector import VectorPlan, merge_parts, plan_shares, vectorize_region
from geoseg.io.read import read_tags
from tests.batch.test_batch import grid_work, region_records
from tests.batch.test_vector import (
    CLASSES,
    RAW,
    ROTATED,
    TRANSFORM,
    blobs,
    class_raster,
    grid_windows,
)


def region_parts(tmp: Path, arr: np.ndarray, transform, windows) -> tuple[list[Path], VectorPlan]:
    """The vector parts the workers of a batch would write, made in this process."""
    crs = read_tags(class_raster(tmp / "crs.tif", arr[:1, :1], transform))[2].crs
    h, w = arr.shape
    plan = VectorPlan.of(
        CLASSES, {}, RAW, transform=transform, width=w, height=h, dst_crs=None, source="s.tif"
    )
    parts = []
    for i, share in enumerate(plan_shares(windows)):
        win = share.window
        interior, seams = vectorize_region(
            arr[win.row_off : win.row_end, win.col_off : win.col_end], crs, plan, share
        )
        parts.append(tmp / f"r{i:02d}.vector.npz")
        write_part(parts[-1], interior, seams)
    return parts, plan


def gpkg_rows(path: Path) -> Counter:
    """(class name, WKB) of every feature of a GeoPackage, as a multiset."""
    by_layer = {c.layer: c.name for c in CLASSES}
    rows: Counter = Counter()
    for layer, _ in pyogrio.list_layers(path):
        if layer in by_layer:
            frame = pyogrio.read_dataframe(path, layer=layer)
            rows.update((by_layer[layer], g) for g in frame.geometry.to_wkb())
    return rows


@pytest.mark.parametrize(("seed", "transform"), [(0, TRANSFORM), (1, ROTATED)])
def test_the_dataset_holds_the_geopackage_polygons_as_one_table(tmp_path, seed, transform):
    arr = blobs(45, 38, seed)
    parts, plan = region_parts(tmp_path, arr, transform, grid_windows(45, 38, 16, 13))
    crs = read_tags(tmp_path / "crs.tif")[2].crs
    gpkg, dataset = tmp_path / "p.gpkg", tmp_path / "p.parquet"
    counts = merge_parts(parts, plan, gpkg, crs=crs, metadata={"model": "t"}, parquet=dataset)

    files = sorted(p.name for p in dataset.glob("*.parquet"))
    assert files == [f"r{i:02d}.parquet" for i in range(len(parts))] + ["seams.parquet"]
    table = gpd.read_parquet(dataset)
    assert Counter(zip(table["class"], table.geometry.to_wkb(), strict=True)) == gpkg_rows(gpkg)
    assert dict(Counter(table["class_id"].map({c.id: c.layer for c in CLASSES}))) == {
        k: v for k, v in counts.items() if v
    }
    # Seam polygons are those that more than one region's pixels made.
    assert 0 < (table["region"] == "seams").sum() < len(table)
    assert table.crs == gpd.read_file(gpkg, layer="buildings").crs
    # GeoParquet 1.1 with a bbox covering column that matches the geometries.
    geo = json.loads(pq.read_schema(dataset / "seams.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    raw = pq.read_table(dataset / "seams.parquet").to_pydict()
    bounds = shapely.bounds(shapely.from_wkb(raw["geometry"]))
    np.testing.assert_array_equal(bounds[:, 0], [b["xmin"] for b in raw["bbox"]])
    np.testing.assert_array_equal(bounds[:, 3], [b["ymax"] for b in raw["bbox"]])
    meta = json.loads((dataset / "_geoseg.json").read_text())
    assert meta["metadata"] == {"model": "t"}
    assert [lp["class"] for lp in meta["layers"]] == ["building", "vegetation", "cropland"]


def test_parquet_alone_counts_the_same_polygons(tmp_path):
    arr = blobs(30, 30, 4)
    parts, plan = region_parts(tmp_path, arr, TRANSFORM, grid_windows(30, 30, 11, 11))
    crs = read_tags(tmp_path / "crs.tif")[2].crs
    both = merge_parts(
        parts, plan, tmp_path / "a.gpkg", crs=crs, metadata={}, parquet=tmp_path / "a.parquet"
    )
    alone = merge_parts(parts, plan, None, crs=crs, metadata={}, parquet=tmp_path / "b.parquet")
    assert alone == both
    assert not (tmp_path / "b.gpkg").exists()
    assert len(gpd.read_parquet(tmp_path / "b.parquet")) == sum(both.values())


def test_duckdb_and_dask_geopandas_read_the_directory_as_one_table(tmp_path):
    arr = blobs(30, 30, 5)
    parts, plan = region_parts(tmp_path, arr, TRANSFORM, grid_windows(30, 30, 10, 10))
    crs = read_tags(tmp_path / "crs.tif")[2].crs
    counts = merge_parts(parts, plan, None, crs=crs, metadata={}, parquet=tmp_path / "d.parquet")
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path / 'd.parquet'}/*.parquet')")
    assert n.fetchall() == [(sum(counts.values()),)]
    dgpd = pytest.importorskip("dask_geopandas")
    frame = dgpd.read_parquet(tmp_path / "d.parquet").compute()
    assert len(frame) == sum(counts.values()) and frame.crs == crs


def test_a_failed_write_leaves_the_old_dataset_and_no_temporary(tmp_path, monkeypatch):
    arr = blobs(30, 30, 6)
    parts, plan = region_parts(tmp_path, arr, TRANSFORM, grid_windows(30, 30, 10, 10))
    crs = read_tags(tmp_path / "crs.tif")[2].crs
    dst = tmp_path / "out.parquet"
    merge_parts(parts, plan, None, crs=crs, metadata={"run": "1"}, parquet=dst)
    before = {p.name: p.read_bytes() for p in dst.iterdir()}

    real = ParquetDataset.write
    calls = []

    def fail_third(self, part, **kw):
        calls.append(part)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, part, **kw)

    monkeypatch.setattr(ParquetDataset, "write", fail_third)
    with pytest.raises(OSError, match="No space"):
        merge_parts(parts, plan, None, crs=crs, metadata={"run": "2"}, parquet=dst)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.timeout(180)
def test_batch_format_parquet_and_both(scene, tmp_path, cluster_address):
    work = grid_work(tmp_path, scene, size=70)
    out = tmp_path / "out"
    first = run_batch(work, out, address=cluster_address, formats=("parquet",))
    assert first.ok and first.polygons is None and first.parquet == out / "polygons.parquet"
    assert not (out / "polygons.gpkg").exists()
    table = gpd.read_parquet(first.parquet)
    assert len(table) == sum(first.polygon_counts.values()) > 0
    regions = {r["region"] for r in region_records(out)}
    # One file per region (empty where a region's polygons all touch another) and the seams.
    assert "seams" in set(table["region"]) and set(table["region"]) <= regions | {"seams"}
    assert sorted(p.stem for p in first.parquet.glob("*.parquet")) == sorted(regions | {"seams"})
    # The manifest checksums every file of the dataset: an unchanged resume merges nothing.
    again = run_batch(work, out, address=cluster_address, formats=("parquet",), resume=True)
    assert again.merge_reused and again.parquet == first.parquet
    # Asking for both formats redoes the merge only; the two agree.
    both = run_batch(work, out, address=cluster_address, formats=("gpkg", "parquet"), resume=True)
    assert not both.merge_reused and both.reused and not both.computed
    assert both.polygon_counts == first.polygon_counts
    by_layer = {c.layer: c.name for c in CLASSES}
    gpkg: Counter = Counter()
    for layer, _ in pyogrio.list_layers(out / "polygons.gpkg"):
        if layer in by_layer:
            frame = pyogrio.read_dataframe(out / "polygons.gpkg", layer=layer)
            gpkg.update((by_layer[layer], g) for g in frame.geometry.to_wkb())
    table = gpd.read_parquet(out / "polygons.parquet")
    assert Counter(zip(table["class"], table.geometry.to_wkb(), strict=True)) == gpkg
    # A damaged dataset file is noticed on resume and the merge is redone.
    victim = next((out / "polygons.parquet").glob("*.parquet"))
    victim.write_bytes(b"not parquet")
    fixed = run_batch(work, out, address=cluster_address, formats=("parquet",), resume=True)
    assert not fixed.merge_reused
    assert len(gpd.read_parquet(out / "polygons.parquet")) == len(table)


def test_without_pyarrow_the_run_stops_before_any_work_with_the_install_line(
    tmp_path, monkeypatch, scene
):
    import sys

    from geoseg.errors import GeosegError

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(
        GeosegError, match=r"pip install 'geoseg\[parquet\]' or write formats=gpkg only"
    ):
        run_batch(grid_work(tmp_path, scene, size=70), tmp_path / "out", formats=("parquet",))
    assert not (tmp_path / "out").exists()


def test_region_files_are_written_through_the_mapper_side_by_side(tmp_path):
    """With a mapper (the cluster), each region's file is written by a task of its own; the
    dataset is the same as the one this process writes alone, with and without a GeoPackage."""
    from concurrent.futures import ThreadPoolExecutor

    arr = blobs(40, 36, 7)
    parts, plan = region_parts(tmp_path, arr, TRANSFORM, grid_windows(40, 36, 14, 12))
    crs = read_tags(tmp_path / "crs.tif")[2].crs
    calls: list[str] = []

    def mapper(fn, *iterables):
        calls.append(fn.__name__)
        with ThreadPoolExecutor(4) as pool:  # tasks run concurrently, as on workers
            return list(pool.map(fn, *iterables))

    alone = merge_parts(parts, plan, None, crs=crs, metadata={}, parquet=tmp_path / "a.parquet")
    mapped = merge_parts(
        parts, plan, None, crs=crs, metadata={}, parquet=tmp_path / "b.parquet", mapper=mapper
    )
    both = merge_parts(
        parts, plan, tmp_path / "c.gpkg", crs=crs, metadata={}, parquet=tmp_path / "c.parquet",
        mapper=mapper,
    )  # fmt: skip
    assert calls.count("write_region_file") == 2
    assert mapped == alone == both
    a, b, c = (gpd.read_parquet(tmp_path / f"{x}.parquet") for x in "abc")
    for other in (b, c):
        assert Counter(zip(other["region"], other.geometry.to_wkb(), strict=True)) == Counter(
            zip(a["region"], a.geometry.to_wkb(), strict=True)
        )
    assert (
        json.loads((tmp_path / "b.parquet" / "_geoseg.json").read_text())["rows"]
        == json.loads((tmp_path / "a.parquet" / "_geoseg.json").read_text())["rows"]
    )
