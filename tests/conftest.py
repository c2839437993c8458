"""Shared fixtures: tiny rasters generated on the fly and tiny checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.models import ModelCard, build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


# Scripts that the QGIS tests run under Debian's python3-qgis, not test modules: with
# --doctest-modules pytest would import them here, where qgis does not exist.
collect_ignore = ["io/qgis_check.py", "qgis/qgis_driver.py"]

#: Modules whose tests start clusters or subprocesses, walk the shared corpus or build
#: virtual environments: marked ``slow`` so that ``pytest -m "not slow"`` is a fast lane
#: (under two minutes on a 2-core machine); CI runs everything.
SLOW_MODULES = frozenset(
    {
        "tests/test_core_install.py",
        "tests/test_bundled.py",
        "tests/test_cli.py",
        "tests/test_faults.py",
        "tests/batch/test_batch.py",
        "tests/batch/test_cli_cluster.py",
        "tests/batch/test_filesystems.py",
        "tests/batch/test_manifest_damage.py",
        "tests/batch/test_vector.py",
        "tests/batch/test_vector_stage.py",
        "tests/batch/test_xarray.py",
        "tests/batch/test_parquet.py",
        "tests/batch/test_instances_batch.py",
        "tests/robustness/test_corpus.py",
        "tests/robustness/test_corpus_bundled.py",
        "tests/robustness/test_odd_inputs.py",
        "tests/synth/test_synth_write.py",
        "tests/qgis/test_progress_json.py",
        "tests/qgis/test_runner.py",
        "tests/qgis/test_plugin_cli.py",
        "tests/qgis/test_plugin_qgis.py",
    }
)
#: Single slow tests in otherwise fast modules (memory growth checks in subprocesses).
SLOW_TESTS = frozenset(
    {
        "test_peak_memory_does_not_grow_with_height",
        "test_cached_onnx_runs_never_import_torch",
        "test_block_memory_does_not_grow_with_the_scene",
        "test_suburb_trees_overhang_roofs_and_win_the_pixels",
        "test_suburb_parks_hold_pitches_and_no_house",
        "test_streamed_equals_whole_raster",
        "test_mask_rcnn_trains_resumes_exactly_and_predicts",
        "test_memory_holds_about_one_row_of_tiles_of_instances",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parents[1]
    for item in items:
        try:
            module = Path(item.fspath).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        if module in SLOW_MODULES or getattr(item, "originalname", None) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def shared_data() -> Path | None:
    """../shared/data (or $GEOSEG_TEST_DATA) when present."""
    env = os.environ.get("GEOSEG_TEST_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    **extra: Any,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    count, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform if transform is not None else from_origin(500000, 6000000, 0.5, 0.5),
        "nodata": nodata,
    }
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def random_image(h: int, w: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 imagery (blocky so classes form regions)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (bands, h // 8 + 2, w // 8 + 2)).astype(np.uint8)
    img = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)[:, :h, :w]
    noise = rng.integers(0, 30, img.shape).astype(np.uint8)
    return img // 2 + noise


def tiny_card(
    bands: Sequence[str] = ("red", "green", "blue"),
    n_classes: int = 3,
    **overrides: Any,
) -> ModelCard:
    names = ["background", "building", "vegetation", "cropland", "water"][:n_classes]
    colors = ["#000000", "#e41a1c", "#4daf4a", "#ffd92f", "#377eb8"]
    layers = ["background", "buildings", "vegetation", "cropland", "water"]
    d: dict[str, Any] = {
        "name": "tiny-test",
        "architecture": "tinycnn",
        "bands": list(bands),
        "classes": [
            {"id": i, "name": n, "color": colors[i], "vectorize": i != 0, "layer": layers[i]}
            for i, n in enumerate(names)
        ],
        "stride": 1,
        "tile_size": 128,
        "overlap": 32,
        "mean": [0.5] * len(bands),
        "std": [0.25] * len(bands),
    }
    d.update(overrides)
    return ModelCard.from_dict(d)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stride-1 three-class checkpoint with a 7-pixel receptive field."""
    import torch

    torch.manual_seed(0)
    card = tiny_card()
    model = build_model(card)
    return save_checkpoint(model, card, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(
        data: np.ndarray | None = None, *, shape: tuple[int, int] = (100, 120), **kw: Any
    ) -> Path:
        if data is None:
            data = random_image(*shape)
        return write_raster(tmp_path / f"in{next(counter)}.tif", data, **kw)

    return make


@pytest.fixture(autouse=True, scope="session")
def _private_geoseg_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ONNX exports made by the suite go to a temporary directory, not the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOSEG_CACHE_DIR", str(tmp_path_factory.mktemp("geoseg-cache")))
        yield
