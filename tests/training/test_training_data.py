"""torchgeo datasets, splits and chips: labels land on the right pixels whatever their CRS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin

from geoseg.errors import ConfigError
from geoseg.training.config import TrainConfig
from geoseg.training.data import (
    ChipCache,
    ChipDataset,
    ChipQuery,
    allowed_values,
    band_statistics,
    build_training_data,
)
from tests.training.conftest import ORIGIN, make_scene, write_labels


def config(images: Any, labels: Any, **overrides: Any) -> TrainConfig:
    src = {"name": "s", "images": images, "labels": labels, "labelled_classes": ["building"]}
    extra = overrides.pop("source", {})
    if "class_map" in extra and "labelled_classes" not in extra:
        del src["labelled_classes"]  # let the class map say what the source labels
    src.update(extra)
    d: dict[str, Any] = {
        "classes": ["background", "building", "vegetation"],
        "sources": [src],
        "architecture": "tinycnn",
        "chip_size": overrides.pop("chip_size", 32),
        "validation": {"fraction": 0.0},
        "samples_per_epoch": 16,
    }
    d.update(overrides)
    return TrainConfig.from_dict(d)


def write_ids(path: Path, values: np.ndarray) -> None:
    """A one-band uint8 label raster of class ids on the scenes' 1 m UTM grid."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=values.shape[1],
        height=values.shape[0],
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 1.0, 1.0),
    ) as ds:
        ds.write(values, 1)


def whole_image_chip(data: Any, size: int) -> dict[str, Any]:
    part = data.parts[0]
    b = tuple(part.dataset.index.total_bounds)
    return ChipDataset(data, [ChipQuery(0, b)])[0]


def test_vector_labels_in_epsg4326_land_on_utm_pixels(tmp_path):
    img = np.full((3, 64, 64), 100, dtype=np.uint8)
    img[0, 10:30, 20:40] = 230
    path = tmp_path / "utm.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 1.0, 1.0),
    ) as ds:
        ds.write(img)
    x0, y0 = ORIGIN
    roof = shapely.box(x0 + 20, y0 - 30, x0 + 40, y0 - 10)  # rows 10-29, cols 20-39
    labels = write_labels(tmp_path / "roof.geojson", [(roof, "building")], to_crs="EPSG:4326")
    data = build_training_data(config(str(path), str(labels), chip_size=64))
    assert data.parts[0].crs.to_epsg() == 32633 and data.parts[0].res == (1.0, 1.0)
    chip = whole_image_chip(data, 64)
    expected = np.zeros((64, 64), dtype=np.int64)
    expected[10:30, 20:40] = 1
    assert (chip["mask"].numpy() == expected).all()
    assert (chip["image"].numpy() == img).all()  # same grid: no resampling
    assert chip["valid"].all()


def test_geographic_images_are_sampled_in_their_utm_zone(tmp_path):
    # a scene in EPSG:4326 (lon 15.0, lat 45.0), labels in UTM 33N
    res = 1e-5
    img = np.full((3, 120, 120), 90, dtype=np.uint8)
    img[0, 30:70, 40:90] = 240
    path = tmp_path / "geo.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=120,
        height=120,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(15.0, 45.0, res, res),
    ) as ds:
        ds.write(img)
    roof = shapely.box(15.0 + 40 * res, 45.0 - 70 * res, 15.0 + 90 * res, 45.0 - 30 * res)
    labels = write_labels(
        tmp_path / "roof.gpkg", [(roof, "building")], crs="EPSG:4326", to_crs="EPSG:32633"
    )
    data = build_training_data(config(str(path), str(labels), chip_size=64, pixel_size_m=1.0))
    part = data.parts[0]
    assert part.crs.to_epsg() == 32633 and part.res == (1.0, 1.0)
    assert part.pixel_size_m == pytest.approx(1.0)
    queries = data.train_queries(0, count=8)
    chips = ChipDataset(data, queries)
    agree = []
    for i in range(len(chips)):
        c = chips[i]
        ok = c["mask"].numpy() != 255
        red = c["image"].numpy()[0] > 165
        agree.append((red[ok] == (c["mask"].numpy()[ok] == 1)).mean())
    assert min(agree) > 0.97


def test_label_rasters_with_a_class_map(tmp_path):
    img_path = tmp_path / "img.tif"
    make_scene(img_path, seed=1)
    values = np.zeros((96, 96), dtype=np.uint8)
    values[:, 20:40] = 1  # building
    values[:, 40:60] = 2  # "land" -> background
    values[:, 60:70] = 7  # not in the map -> ignored
    values[:, 70:] = 4  # vegetation: not labelled by this source -> ignored
    with rasterio.open(
        tmp_path / "mask.tif",
        "w",
        driver="GTiff",
        width=96,
        height=96,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 1.0, 1.0),
        nodata=0,
    ) as ds:
        ds.write(values, 1)
    cmap = {1: "building", 2: "background", 4: "vegetation"}
    with pytest.raises(ConfigError, match="not in labelled_classes"):
        config(
            str(img_path),
            str(tmp_path / "mask.tif"),
            source={"class_map": cmap, "labelled_classes": ["building"]},
        )
    cmap[4] = "ignore"
    cfg = config(
        str(img_path), str(tmp_path / "mask.tif"), chip_size=96, source={"class_map": cmap}
    )
    mask = whole_image_chip(build_training_data(cfg), 96)["mask"].numpy()
    assert (mask[:, :20] == 255).all()  # nodata 0
    assert (mask[:, 20:40] == 1).all() and (mask[:, 40:60] == 0).all()
    assert (mask[:, 60:] == 255).all()


def test_rgb_label_masks(tmp_path):
    img_path = tmp_path / "img.tif"
    make_scene(img_path, seed=2)
    rgb = np.zeros((3, 96, 96), dtype=np.uint8)
    rgb[0, :48] = 255  # red = building
    rgb[1, 48:] = 255  # green = vegetation
    with rasterio.open(
        tmp_path / "rgb.tif",
        "w",
        driver="GTiff",
        width=96,
        height=96,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 1.0, 1.0),
    ) as ds:
        ds.write(rgb)
    cmap = {"#ff0000": "building", "#00ff00": "vegetation"}
    cfg = config(str(img_path), str(tmp_path / "rgb.tif"), chip_size=96, source={"class_map": cmap})
    assert cfg.sources[0].labelled_classes == ("building", "vegetation")
    mask = whole_image_chip(build_training_data(cfg), 96)["mask"].numpy()
    assert (mask[:48] == 1).all() and (mask[48:] == 2).all()


def test_unlabelled_classes_and_nodata_are_ignored(tmp_path):
    img_path = tmp_path / "img.tif"
    make_scene(img_path, seed=3)
    with rasterio.open(img_path, "r+") as ds:
        data = ds.read()
        data[:, :, :10] = 0  # a black border that declares no nodata
        ds.write(data)
    values = np.full((96, 96), 2, dtype=np.uint8)  # all vegetation ...
    values[:50] = 1
    write_ids(tmp_path / "ids.tif", values)
    # ... in a source that only labels buildings (identity class map)
    cfg = config(str(img_path), str(tmp_path / "ids.tif"), chip_size=96, source={"nodata": 0})
    chip = whole_image_chip(build_training_data(cfg), 96)
    mask = chip["mask"].numpy()
    assert (mask[:, :10] == 255).all() and not chip["valid"][:, :10].any()
    assert (mask[:50, 10:] == 1).all() and (mask[50:] == 255).all()


def scenes(tmp_path: Path, n: int) -> tuple[list[str], Path]:
    shapes = []
    paths = []
    for i in range(n):
        polys = make_scene(tmp_path / f"s{i}.tif", seed=i, origin=(ORIGIN[0] + 150 * i, ORIGIN[1]))
        shapes += [(p, "building") for p in polys["building"]]
        paths.append(str(tmp_path / f"s{i}.tif"))
    return paths, write_labels(tmp_path / "l.gpkg", shapes)


def test_split_by_files(tmp_path):
    paths, labels = scenes(tmp_path, 4)
    data = build_training_data(config(paths, str(labels), validation={"fraction": 0.25}))
    part = data.parts[0]
    assert len(part.val_files) == 1
    val = shapely.box(*rasterio.open(part.val_files[0]).bounds)
    for q in data.train_queries(0, count=40):
        assert not shapely.box(*q.bounds).intersection(val).area
    assert data.val_queries and all(shapely.box(*q.bounds).within(val) for q in data.val_queries)
    assert data.sources[0]["validation"] == "files"


def test_validation_seed_fixes_the_split_across_run_seeds(tmp_path):
    paths, labels = scenes(tmp_path, 5)

    def held(seed: int, split_seed: int | None) -> list[list[str]]:
        val = {"fraction": 0.4, "seed": split_seed}
        cfg = config(paths, str(labels), seed=seed, validation=val)
        return [sorted(p.val_files) for p in build_training_data(cfg).parts]

    # the held-out files follow validation.seed, not the run's seed ...
    assert held(0, 0) == held(1, 0) == held(7, 0)
    # ... and default to the run's seed
    assert held(3, None) == held(0, 3) and held(0, None) == held(5, 0)
    assert {tuple(held(0, k)[0]) for k in range(6)} != {tuple(held(0, 0)[0])}


def test_split_by_blocks(tmp_path):
    paths, labels = scenes(tmp_path, 1)
    cfg = config(
        paths,
        str(labels),
        chip_size=16,
        validation={"split": "files", "fraction": 0.3, "block_size_m": 32},
    )
    data = build_training_data(cfg)  # a single image falls back to blocks
    part = data.parts[0]
    assert data.sources[0]["validation"] == "blocks"
    train = shapely.union_all(part.train_index.geometry.values)
    val = shapely.union_all(part.val_index.geometry.values)
    assert val.area > 0 and train.intersection(val).area == 0
    assert train.union(val).area == pytest.approx(96 * 96)
    for q in data.train_queries(1, count=40):
        assert shapely.box(*q.bounds).intersection(val).area < 1e-6
    chips = ChipDataset(data, data.val_queries)
    for i, q in enumerate(data.val_queries):
        assert shapely.box(*q.clip).within(val.buffer(1e-6))
        assert chips[i]["mask"].shape == (16, 16)


def test_chips_are_repeatable(tmp_path):
    paths, labels = scenes(tmp_path, 2)
    data = build_training_data(config(paths, str(labels)))
    assert data.train_queries(5) == data.train_queries(5)
    assert data.train_queries(5) != data.train_queries(6)
    assert len(data.train_queries(5)) == 16


def test_band_statistics(tmp_path):
    path = tmp_path / "flat.tif"
    img = np.stack([np.full((40, 40), v, dtype=np.uint8) for v in (51, 102, 204)])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=40,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, 1.0, 1.0),
    ) as ds:
        ds.write(img)
    labels = write_labels(
        tmp_path / "l.gpkg",
        [(shapely.box(ORIGIN[0], ORIGIN[1] - 5, ORIGIN[0] + 5, ORIGIN[1]), "building")],
    )
    data = build_training_data(config(str(path), str(labels)))
    mean, std = band_statistics(ChipDataset(data, data.train_queries(0, count=4)), (0, 255))
    assert mean == pytest.approx((0.2, 0.4, 0.8))
    assert std == pytest.approx((1e-3, 1e-3, 1e-3))


def test_errors_name_the_source(tmp_path):
    paths, labels = scenes(tmp_path, 1)
    with pytest.raises(ConfigError, match=r"sources\[0\] \(s\)\.images.*matches no file"):
        build_training_data(config(str(tmp_path / "nothing*.tif"), str(labels)))
    far = write_labels(
        tmp_path / "far.gpkg", [(shapely.box(0, 0, 10, 10), "building")], crs="EPSG:32633"
    )
    with pytest.raises(ConfigError, match="do not overlap"):
        build_training_data(config(paths, str(far), source={"label_type": "vector"}))
    odd = write_labels(
        tmp_path / "odd.gpkg", [(shapely.box(*ORIGIN, ORIGIN[0] + 5, ORIGIN[1] + 5), "roof")]
    )
    with pytest.raises(ConfigError, match=r"values \['roof'\].*class_map"):
        build_training_data(config(paths, str(odd)))
    with pytest.raises(ConfigError, match="no attribute 'kind'"):
        build_training_data(config(paths, str(labels), source={"label_field": "kind"}))
    with pytest.raises(ConfigError, match="chip_size"):
        build_training_data(config(paths, str(labels), chip_size=128))


def test_cached_chips_equal_chips_read_one_by_one(tmp_path):
    paths, labels = scenes(tmp_path, 3)
    cfg = config(paths, str(labels), validation={"split": "files", "fraction": 0.34})
    data = build_training_data(cfg)
    cache = ChipCache(data, allowed_values(data))
    assert cache.nbytes > 0
    assert all(r.image.dtype == np.uint8 for rows in cache.rows for r in rows)
    queries = data.train_queries(3, count=24) + data.val_queries
    direct = ChipDataset(data, queries)
    cached = ChipDataset(data, queries, cache)
    for i in range(len(queries)):
        a, b = direct[i], cached[i]
        for key in ("image", "valid", "mask"):
            assert a[key].dtype == b[key].dtype
            assert torch.equal(a[key], b[key]), (i, key)
    # A chip outside every cached row falls back to a direct read.
    far = ChipQuery(0, (0.0, 0.0, 32.0, 32.0))
    assert cache.chip(far, data.parts[0], 32) is None


def test_absent_classes_keep_their_slot_and_stay_out_of_the_masks(tmp_path):
    img_path = tmp_path / "img.tif"
    make_scene(img_path, seed=4)
    values = np.full((96, 96), 2, dtype=np.uint8)
    values[:40] = 1
    write_ids(tmp_path / "ids.tif", values)
    cfg = config(
        str(img_path),
        str(tmp_path / "ids.tif"),
        chip_size=96,
        source={"class_map": {1: "building", 2: "background"}, "absent_classes": ["vegetation"]},
    )
    data = build_training_data(cfg)
    # building is labelled, vegetation declared absent: both get a slot in the loss
    assert data.labelled == [[1, 2]]
    assert data.sources[0]["absent_classes"] == ["vegetation"]
    mask = whole_image_chip(data, 96)["mask"].numpy()
    assert (mask[:40] == 1).all() and (mask[40:] == 0).all()


def test_zero_is_a_class_where_a_label_raster_declares_no_nodata(tmp_path):
    """A 0 in a file without nodata is data: class 0 of the labels, black pixels of the image.

    rasterio's merge fills and then masks a file's nodata, or 0 where it declares none,
    which once made every background pixel of such label rasters "unlabelled".
    """
    img_path = tmp_path / "img.tif"
    make_scene(img_path, seed=4)
    with rasterio.open(img_path, "r+") as ds:
        data = ds.read()
        data[:, :8, :] = 0  # black pixels, but no nodata declared: real data
        ds.write(data)
    values = np.zeros((96, 96), dtype=np.uint8)  # 0 = background, no nodata declared
    values[30:60, 30:60] = 1
    write_ids(tmp_path / "ids.tif", values)
    cfg = config(
        str(img_path),
        str(tmp_path / "ids.tif"),
        chip_size=96,
        source={"class_map": {0: "background", 1: "building"}},
    )
    data_ = build_training_data(cfg)
    chip = whole_image_chip(data_, 96)
    assert chip["valid"].all()
    np.testing.assert_array_equal(chip["mask"].numpy(), values)
    cached = ChipDataset(
        data_,
        [ChipQuery(0, tuple(data_.parts[0].dataset.index.total_bounds))],
        cache=ChipCache(data_, allowed_values(data_)),
    )[0]
    np.testing.assert_array_equal(cached["mask"].numpy(), values)
    assert cached["valid"].all()
