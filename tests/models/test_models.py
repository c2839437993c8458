"""Every registered architecture: builds, runs on odd sizes, round-trips through a checkpoint."""

import json
import pickle

import numpy as np
import pytest
import torch

from geoseg.errors import CheckpointError, ModelCardError, OutputExistsError
from geoseg.models import (
    ModelCard,
    architecture_stride,
    build_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
    wrap_state_dict,
)
from geoseg.models.checkpoint import CARD_NAME, WEIGHTS_NAME
from geoseg.models.registry import architecture_task
from tests.conftest import tiny_card

LIGHT_ENCODER = {"fcn": "resnet50", "segnet": "vgg11_bn"}


def card_for(arch: str, bands: int = 4, classes: int = 3) -> ModelCard:
    encoder = LIGHT_ENCODER.get(arch, "resnet18" if arch != "tinycnn" else None)
    return tiny_card(
        bands=[f"b{i}" for i in range(bands)],
        n_classes=classes,
        architecture=arch,
        encoder=encoder,
        stride=architecture_stride(arch, encoder),
        tile_size=64,
        overlap=16,
    )


def test_registry_has_the_required_architectures():
    required = {
        "unet",
        "unetplusplus",
        "fpn",
        "deeplabv3plus",
        "pspnet",
        "linknet",
        "segformer",
        "fcn",
        "segnet",
        "maskrcnn",
    }
    assert required <= set(list_models())


SEMANTIC = [a for a in list_models() if architecture_task(a) == "semantic"]


# Instance architectures (maskrcnn) output objects, not logits: tests/infer/test_instances.py.
@pytest.mark.parametrize("arch", SEMANTIC)
def test_forward_odd_sizes_and_checkpoint_roundtrip(arch, tmp_path):
    card = card_for(arch)
    torch.manual_seed(0)
    model = build_model(card)
    s = card.stride
    h, w = s * 3, s * 5 if s > 1 else 37
    x = torch.randn(2, card.in_channels, h, w)
    with torch.inference_mode():
        y = model(x)
    assert tuple(y.shape) == (2, card.n_classes, h, w)
    path = save_checkpoint(model, card, tmp_path / arch)
    loaded = load_checkpoint(path)
    assert loaded.card == card
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x).numpy(), y.numpy(), atol=1e-5)


def test_card_json_roundtrip_and_validation():
    card = tiny_card()
    assert ModelCard.from_json(card.to_json()) == card
    d = card.to_dict()
    for bad, match in [
        ({**d, "classes": [{"id": 0, "name": "a", "color": "red"}, d["classes"][1]]}, "colour"),
        ({**d, "classes": d["classes"][:1]}, "at least two"),
        ({**d, "mean": [0.1]}, "normalisation"),
        ({**d, "tile_size": "big"}, "integer"),
        ({**d, "input_range": [5, 1]}, "input_range"),
        ({**d, "surprise": 1}, "unknown field"),
        ({k: v for k, v in d.items() if k != "bands"}, "bands"),
        ({**d, "classes": [{**c, "id": c["id"] + 1} for c in d["classes"]]}, "without gaps"),
    ]:
        with pytest.raises(ModelCardError, match=match):
            ModelCard.from_dict(bad)
    with pytest.raises(ModelCardError, match="JSON"):
        ModelCard.from_json("{not json")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_checkpoint_is_refused_without_running(tmp_path, tiny_model_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / CARD_NAME).write_text((tiny_model_dir / CARD_NAME).read_text())
    (evil / WEIGHTS_NAME).write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(evil)
    pth = tmp_path / "evil.pth"
    pth.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    torch.save({"w": _Evil(str(marker))}, tmp_path / "evil2.pt")
    for f in (pth, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError):
            wrap_state_dict(f, tiny_card(), tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_wrap_plain_state_dict_with_prefixes(tmp_path):
    card = tiny_card()
    torch.manual_seed(3)
    model = build_model(card)
    state = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(state, tmp_path / "lightning.ckpt")
    out = wrap_state_dict(tmp_path / "lightning.ckpt", card, tmp_path / "wrapped")
    loaded = load_checkpoint(out)
    for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(OutputExistsError):
        wrap_state_dict(tmp_path / "lightning.ckpt", card, tmp_path / "wrapped")
    wrong = tiny_card(n_classes=4)
    with pytest.raises(CheckpointError, match="do not fit"):
        wrap_state_dict(tmp_path / "lightning.ckpt", wrong, tmp_path / "w2")


def test_missing_and_wrong_model_paths(tmp_path):
    with pytest.raises(CheckpointError, match="bundled"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="models wrap"):
        load_checkpoint(tmp_path / "file.pt")
    d = tmp_path / "d"
    d.mkdir()
    (d / CARD_NAME).write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelCardError):
        load_checkpoint(d)


def test_half_precision_checkpoint_loads_into_float32(tmp_path):
    card = tiny_card()
    torch.manual_seed(4)
    model = build_model(card)
    path = save_checkpoint(model, card, tmp_path / "half", half=True)
    full = save_checkpoint(model, card, tmp_path / "full")
    assert (path / "model.safetensors").stat().st_size < 0.6 * (
        full / "model.safetensors"
    ).stat().st_size
    loaded = load_checkpoint(path)
    x = torch.randn(1, 3, 16, 16)
    assert next(loaded.model.parameters()).dtype == torch.float32
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x).numpy(), model(x).numpy(), atol=2e-2)


def test_lazy_checkpoint_builds_the_network_on_first_use(tmp_path, tiny_model_dir):
    eager = load_checkpoint(tiny_model_dir)
    lazy = load_checkpoint(tiny_model_dir, lazy=True)
    assert not lazy.built and lazy.sha256 == eager.sha256 and lazy.card == eager.card
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        np.testing.assert_array_equal(lazy.model(x).numpy(), eager.model(x).numpy())
    assert lazy.built and lazy.model is lazy.model
    # It travels to dask workers: the lock is not pickled, the state is.
    again = pickle.loads(pickle.dumps(load_checkpoint(tiny_model_dir, lazy=True)))
    assert not again.built and again.model is not None and again.built
    # Bad weights surface when the network is first needed, as a CheckpointError.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CARD_NAME).write_text((tiny_model_dir / CARD_NAME).read_text())
    (broken / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    loaded = load_checkpoint(broken, lazy=True)
    with pytest.raises(CheckpointError, match="safetensors"):
        _ = loaded.model


def test_segnet_unpools_with_the_encoder_indices_and_takes_torchvision_vgg_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    from geoseg.models.segnet import SegNet
    from geoseg.training.loop import load_encoder_weights

    # The decoder puts values back only where the encoder's maxima were: the last
    # unpooling's non-zero outputs sit at the first pooling's indices.
    net = SegNet(3, 2, "vgg11_bn", width=0.25).eval()
    x = torch.randn(1, 3, 64, 96)
    _, indices, sizes = net.encoder(x)
    assert sizes[0] == (64, 96) and indices[0].shape[-2:] == (32, 48)
    seen = []
    stage = net.decoder[-1]  # the last decoder stage receives the last unpooling's output
    stage.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.inference_mode():
        net(x)
    last = seen[-1][0]  # (C, 64, 96)
    assert last.shape[-2:] == (64, 96)
    for c in range(last.shape[0]):
        nonzero = set(torch.nonzero(last[c].flatten()).flatten().tolist())
        assert nonzero <= set(indices[0][0, c].flatten().tolist())
    # ImageNet VGG weights from a local torchvision state dict fill the whole encoder.
    vgg = torchvision.models.vgg11_bn(weights=None)
    save_file(
        {k: v.contiguous() for k, v in vgg.state_dict().items()}, str(tmp_path / "vgg.safetensors")
    )
    seg = SegNet(3, 4, "vgg11_bn")
    n = load_encoder_weights(seg, tmp_path / "vgg.safetensors")
    assert n == len(seg.encoder.state_dict())
    torch.testing.assert_close(seg.encoder.features[0].weight, vgg.features[0].weight)
    with pytest.raises(ValueError, match="encoder must be one of"):
        SegNet(3, 4, "resnet18")
