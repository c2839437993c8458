"""Predictions made on the model's grid come back onto the input grid as a warped view would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.transform import from_origin

from geoseg.io import resample
from geoseg.models import build_model, save_checkpoint
from geoseg.pipeline import PredictConfig, run_scene
from tests.conftest import random_image, tiny_card


@pytest.fixture(scope="module")
def one_metre_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = tiny_card(pixel_size_m=1.0)
    torch.manual_seed(1)
    return save_checkpoint(build_model(card), card, tmp_path_factory.mktemp("m") / "m1")


def _run(src: Path, out: Path, model: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    cfg = PredictConfig(
        device="cpu", tile=64, overlap=16, probabilities=out.with_suffix(".p.tif"), overwrite=True
    )
    run_scene(src, out, model, cfg)
    with rasterio.open(out) as c, rasterio.open(out.with_suffix(".p.tif")) as p:
        return c.read(1), p.read(), c.tags()


@pytest.mark.parametrize(
    ("pixel", "shape"),
    [(0.3, (157, 201)), (0.25, (120, 96)), (2.0, (60, 82))],
    ids=["0.3m", "0.25m", "2m"],
)
def test_direct_read_back_equals_the_warped_view(
    pixel: float,
    shape: tuple[int, int],
    one_metre_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h, w = shape
    img = random_image(h, w)
    img[:, : h // 5, : w // 4] = 0  # a nodata corner
    img[:, h // 2 : h // 2 + 3, :] = 0  # and a nodata band across
    src = tmp_path / "src.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000.1, 6000000.3, pixel, pixel),
        nodata=0,
    ) as ds:
        ds.write(img)
    used: list[bool] = []
    original = resample._same_extent_north_up

    def spy(*args: object) -> bool:
        used.append(original(*args))  # type: ignore[arg-type]
        return used[-1]

    monkeypatch.setattr(resample, "_same_extent_north_up", spy)
    cls_fast, prob_fast, tags = _run(src, tmp_path / "fast.tif", one_metre_model)
    assert used == [True] and tags["GEOSEG_RESAMPLED"] == "1"
    monkeypatch.setattr(resample, "_same_extent_north_up", lambda *a: False)
    cls_warp, prob_warp, _ = _run(src, tmp_path / "warp.tif", one_metre_model)
    np.testing.assert_array_equal(cls_fast, cls_warp)
    # Bilinear probabilities agree to one unit of 254 (rounding), nodata at the same pixels.
    assert np.abs(prob_fast.astype(int) - prob_warp).max() <= 1
    np.testing.assert_array_equal(prob_fast == 255, prob_warp == 255)
    with rasterio.open(src) as ds:
        invalid = ds.dataset_mask() == 0
    assert (cls_fast[invalid] == 255).all()
    # Valid pixels get a class except beside nodata, where the coarser model pixel was nodata.
    assert (cls_fast[~invalid] != 255).mean() > 0.85


class _Stage:
    """What ``_same_extent_north_up`` reads of the model grid's spec."""

    def __init__(self, transform: Affine, width: int, height: int, crs: str = "EPSG:32633"):
        self.transform, self.crs = transform, rasterio.crs.CRS.from_user_input(crs)
        self.width, self.height = width, height
        west, south, east, north = (
            transform.c,
            transform.f + height * transform.e,
            transform.c + width * transform.a,
            transform.f,
        )
        self.bounds = (west, south, east, north)


def test_direct_read_back_only_for_the_same_extent_north_up() -> None:
    crs = rasterio.crs.CRS.from_epsg(32633)
    src = from_origin(500000.1, 6000000.3, 0.3, 0.3)
    w, h = 201, 157
    same = _Stage(from_origin(500000.1, 6000000.3, 201 * 0.3 / 60, 157 * 0.3 / 47), 60, 47)
    check = resample._same_extent_north_up
    assert check(src, w, h, same, crs)  # type: ignore[arg-type]
    shifted = _Stage(from_origin(500000.6, 6000000.3, 201 * 0.3 / 60, 157 * 0.3 / 47), 60, 47)
    assert not check(src, w, h, shifted, crs)  # type: ignore[arg-type]
    assert not check(src, w, h, same, rasterio.crs.CRS.from_epsg(32634))  # type: ignore[arg-type]
    rotated = src * Affine.rotation(10)
    assert not check(rotated, w, h, same, crs)  # type: ignore[arg-type]
