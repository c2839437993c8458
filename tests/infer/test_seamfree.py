"""Tiled + blended inference equals whole-image inference (the seam-free property)."""

import numpy as np
import pytest
import rasterio
import torch

from geoseg.infer.predictor import Predictor, normalize
from geoseg.infer.stream import stream_segment
from geoseg.models import load_checkpoint
from geoseg.pipeline import PredictConfig, run_scene
from geoseg.tiling import make_grid
from geoseg.types import PixelWindow
from tests.conftest import random_image


def _whole_image_probs(loaded, img):
    card = loaded.card
    x = normalize(img, np.ones(img.shape[1:], bool), card)[None]
    with torch.inference_mode():
        return torch.softmax(loaded.model(torch.from_numpy(x)), 1)[0].numpy()


def _reader(img):
    h, w = img.shape[1:]

    def read(win: PixelWindow):
        c = win.clip(h, w)
        data = img[:, c.row_off : c.row_end, c.col_off : c.col_end]
        pad = (
            (c.row_off - win.row_off, win.row_end - c.row_end),
            (c.col_off - win.col_off, win.col_end - c.col_end),
        )
        valid = np.ones(data.shape[1:], bool)
        return np.pad(data, ((0, 0), *pad), mode="reflect"), np.pad(valid, pad, mode="reflect")

    return read


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [
        (200, 300, 80, 32),  # not divisible by the tile
        (257, 129, 96, 40),
        (40, 50, 80, 16),  # smaller than one tile
        (64, 64, 64, 16),  # exactly one tile
        (150, 33, 48, 16),
    ],
)
def test_tiled_equals_whole_image(tiny_model_dir, h, w, tile, overlap):
    loaded = load_checkpoint(tiny_model_dir)
    # Receptive field of the test network: 3 convolutions of 3x3 -> 3 px each side,
    # smaller than the zero-weight margin overlap // 4 of every case above.
    assert overlap // 4 >= 3
    img = random_image(h, w, seed=h * w)
    ref = _whole_image_probs(loaded, img)
    predictor = Predictor(loaded.model, loaded.card, device="cpu", channels_last=False)
    grid = make_grid(h, w, tile=tile, overlap=overlap, stride=1)
    out = np.zeros_like(ref)
    covered_rows = 0
    for strip in stream_segment(
        grid,
        _reader(img),
        lambda d, v: normalize(d, v, loaded.card),
        predictor,
        loaded.card.n_classes,
        batch_size=3,
        exact_probabilities=True,
    ):
        rows = strip.classes.shape[0]
        out[:, strip.row_off : strip.row_off + rows] = strip.probs_f32
        np.testing.assert_array_equal(
            strip.classes, ref[:, strip.row_off : strip.row_off + rows].argmax(0)
        )
        covered_rows += rows
    assert covered_rows == h
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(("h", "w", "tile"), [(130, 170, 64), (20, 300, 64)])
def test_file_path_classes_equal_whole_image(tiny_model_dir, make_raster, tmp_path, h, w, tile):
    loaded = load_checkpoint(tiny_model_dir)
    img = random_image(h, w, seed=7)
    src = make_raster(img)
    run_scene(src, tmp_path / "cls.tif", loaded, PredictConfig(tile=tile, overlap=16, device="cpu"))
    ref = _whole_image_probs(loaded, img).argmax(0)
    with rasterio.open(tmp_path / "cls.tif") as ds:
        got = ds.read(1)
    # Ties in argmax are possible only on exactly equal probabilities; allow none.
    assert (got == ref).mean() == 1.0
