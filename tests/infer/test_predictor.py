"""geoseg.infer.predictor directly: shapes, probabilities, normalisation, engines agree."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.infer.predictor import Predictor, normalize
from geoseg.models import load_checkpoint


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_checkpoint(tiny_model_dir)


def test_probabilities_have_the_batch_shape_and_sum_to_one(loaded):
    p = Predictor(loaded, loaded.card, device="cpu", backend="torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 48)).astype(np.float32)
    out = p(x)
    assert out.shape == (2, loaded.card.n_classes, 32, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"expected a batch of shape \(N, 3, H, W\)"):
        p(x[:, :2])


def test_engines_agree(loaded):
    pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).normal(size=(1, 3, 64, 64)).astype(np.float32)
    torch_p = Predictor(loaded, loaded.card, device="cpu", backend="torch")(x)
    onnx_p = Predictor(loaded, loaded.card, device="cpu", backend="onnx")(x)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)


def test_normalize_scales_by_the_card_and_zeroes_nodata(loaded):
    card = loaded.card  # mean 0.5, std 0.25 on [0, 255]
    data = np.array([[[0, 255], [127.5, 51]]] * 3, dtype=np.float32)
    valid = np.array([[True, True], [True, False]])
    out = normalize(data, valid, card)
    np.testing.assert_allclose(out[:, 0, 0], -2.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], 2.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1, 0], 0.0, atol=1e-6)
    assert (out[:, 1, 1] == 0).all()  # nodata: the training mean, whatever its value
    custom = normalize(data * 40, valid, card, input_range=(0, 10200))
    np.testing.assert_allclose(custom[:, 0, 1], 2.0, atol=1e-6)
