"""Models trained on finer classes than they ship (ModelCard.output_groups, geoseg models merge)."""

import json

import pytest
import rasterio
import torch

from geoseg.errors import ModelCardError
from geoseg.models import build_model, load_checkpoint, save_checkpoint
from geoseg.models.groups import merge_classes
from tests.conftest import tiny_card


def five_class_model(tmp_path):
    """A tiny trained-looking 5-class network (background, building, vegetation, cropland, water)."""
    card = tiny_card(n_classes=5)
    torch.manual_seed(3)
    net = build_model(card)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)  # confident outputs, so merging changes some argmaxes
    return card, net, save_checkpoint(net, card, tmp_path / "five")


def test_merged_probabilities_are_the_sums_of_the_merged_classes(tmp_path):
    card, net, _ = five_class_model(tmp_path)
    merged = merge_classes(card, {"background": ["water"], "vegetation": ["cropland"]})
    assert [c.name for c in merged.classes] == ["background", "building", "vegetation"]
    assert [c.id for c in merged.classes] == [0, 1, 2]
    assert merged.output_groups == ((0, 4), (1,), (2, 3))
    wrapped = build_model(merged)
    wrapped.base.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        fine = net(x).softmax(1)
        coarse = wrapped(x).softmax(1)
    assert coarse.shape == (2, 3, 24, 24)
    expect = torch.stack([fine[:, [0, 4]].sum(1), fine[:, 1], fine[:, [2, 3]].sum(1)], 1)
    assert torch.allclose(coarse, expect, atol=1e-6)
    # Merging changes decisions, not only names: a pixel whose background and water together
    # outweigh its building is background, though building was its single most probable class.
    flips = (fine.argmax(1) == 1) & (coarse.argmax(1) == 0)
    assert flips.any()


def test_card_with_groups_round_trips_and_bad_groups_are_refused(tmp_path):
    card, _, _ = five_class_model(tmp_path)
    merged = merge_classes(card, {"background": ["water"]})
    again = type(card).from_json(merged.to_json())
    assert again.output_groups == ((0, 4), (1,), (2,), (3,))
    assert again.n_network_outputs == 5 and again.n_outputs == 4
    assert "output_groups" not in json.loads(card.to_json())  # only written where used
    with pytest.raises(ModelCardError, match="exactly one group"):
        merged.replace(output_groups=((0, 4), (1,), (2,), (2,)))
    with pytest.raises(ModelCardError, match="one group of network outputs per class"):
        merged.replace(output_groups=((0, 4), (1, 2, 3)))
    with pytest.raises(ModelCardError, match="no class 'road'"):
        merge_classes(card, {"background": ["road"]})
    with pytest.raises(ModelCardError, match="merged twice or into itself"):
        merge_classes(card, {"background": ["water"], "building": ["water"]})


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_merge_writes_a_checkpoint_whose_predictions_use_the_summed_classes(
    tmp_path, make_raster, backend
):
    pytest.importorskip("onnxruntime")
    from tests.test_cli_commands import error_line, run

    _, _, src_dir = five_class_model(tmp_path)
    dst = tmp_path / "merged"
    code, _, err = run("models", "merge", src_dir, "-o", dst, "--into", "background=water")
    assert code == 0, err
    loaded = load_checkpoint(dst)
    assert [c.name for c in loaded.card.classes] == [
        "background", "building", "vegetation", "cropland"
    ]  # fmt: skip
    image = make_raster(shape=(64, 72))
    for model, name in ((src_dir, "fine.tif"), (dst, "coarse.tif")):
        code, _, err = run("predict", image, "-o", tmp_path / name, "-m", model,
                           "--backend", backend)  # fmt: skip
        assert code == 0, err
    with rasterio.open(tmp_path / "fine.tif") as a, rasterio.open(tmp_path / "coarse.tif") as b:
        fine, coarse = a.read(1), b.read(1)
    assert (fine == 4).any() and not (coarse == 4).any()  # water is gone as a class
    # A pixel changes only to background (its water joined it) or away from water.
    assert ((fine == coarse) | (fine == 4) | (coarse == 0)).all()
    assert (coarse[fine == 4] == 0).mean() > 0.5
    code, _, err = run("models", "merge", src_dir, "-o", tmp_path / "x", "--into", "water")
    assert code != 0 and "background=road,water" in err
    code, _, err = run(
        "models", "merge", src_dir, "-o", tmp_path / "y", "--into", "background=road"
    )
    assert code != 0 and "no class 'road'" in error_line(err)
    assert not (tmp_path / "y").exists()
