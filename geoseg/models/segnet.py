"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017).

An encoder-decoder whose decoder upsamples with the *max-pooling indices* of the
encoder: each decoder stage puts every value back where the encoder's max came
from (``MaxUnpool2d``), a sparse map that the stage's convolutions then densify.
Boundaries stay where the encoder saw them without learning upsampling filters or
carrying whole feature maps across (as U-Net does), which keeps the decoder small.

The encoder is VGG with batch norm (``vgg11_bn``, ``vgg13_bn`` or ``vgg16_bn``, the
paper's), laid out exactly as torchvision's ``vgg*_bn().features``, so ImageNet
weights saved from torchvision load into ``encoder.features`` from a local file
(``encoder_weights:`` in a training config; nothing is downloaded).  The decoder
mirrors the encoder: each stage unpools, then runs as many 3x3 conv + BN + ReLU
layers as its encoder stage, the last one mapping to the previous stage's width;
a final 3x3 convolution gives the class logits.  ``width`` (an ``arch_params``
entry, default 1.0) scales every layer's channels for a lighter CPU model.

Any input size works (unpooling restores the exact pre-pooling size); the registry
states a stride of 32 so tiles align with the five pooling levels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Convolution widths per stage of torchvision's VGG configurations ("M" = max pool).
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg11_bn": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13_bn": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16_bn": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SegNetEncoder(nn.Module):
    """VGG-BN features whose max pools also return their indices.

    ``features`` has torchvision's layer order and indices, so a torchvision
    ``vgg*_bn`` state dict's ``features.*`` tensors load as they are.
    """

    def __init__(self, in_channels: int, stages: list[list[int]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index of each stage's max pool in ``features``
        c = in_channels
        for widths in stages:
            for w in widths:
                layers += _conv_bn_relu(c, w)
                c = w
            self.stage_ends.append(len(layers))
            layers.append(nn.MaxPool2d(2, 2, return_indices=True))
        self.features = nn.Sequential(*layers)
        self.out_channels = c

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[tuple[int, int]]]:
        """Deepest features, the pooling indices and the pre-pooling sizes, per stage."""
        indices: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append((x.shape[-2], x.shape[-1]))
                x, idx = layer(x)
                indices.append(idx)
            else:
                x = layer(x)
        return x, indices, sizes


class SegNet(nn.Module):
    """SegNet: VGG-BN encoder, index-unpooling decoder, 3x3 classifier.

    Parameters
    ----------
    in_channels, n_classes : int
    encoder : {"vgg11_bn", "vgg13_bn", "vgg16_bn"}
    width : float
        Channel multiplier for every layer (``0.25`` gives a CPU-sized network).
    """

    def __init__(
        self, in_channels: int, n_classes: int, encoder: str = "vgg16_bn", width: float = 1.0
    ) -> None:
        super().__init__()
        if encoder not in VGG_STAGES:
            raise ValueError(f"SegNet encoder must be one of {sorted(VGG_STAGES)}, got {encoder!r}")
        if not 0 < width <= 4:
            raise ValueError(f"SegNet width must be in (0, 4], got {width}")
        stages = [[max(8, round(w * width)) for w in s] for s in VGG_STAGES[encoder]]
        self.encoder = SegNetEncoder(in_channels, stages)
        decoder: list[nn.Module] = []
        for i in reversed(range(len(stages))):
            widths = stages[i]
            out = stages[i - 1][-1] if i > 0 else widths[0]
            layers: list[nn.Module] = []
            for j, w in enumerate(widths):
                layers += _conv_bn_relu(w, out if j == len(widths) - 1 else w)
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)
        self.classifier = nn.Conv2d(stages[0][0], n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, indices, sizes = self.encoder(x)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = stage(unpool(x, idx, size))
        out: torch.Tensor = self.classifier(x)
        return out


def unpool(x: torch.Tensor, indices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Max-unpooling: each value of ``x`` back at its max's position in a ``size`` plane.

    ``indices`` are per-plane flat positions, as ``MaxPool2d(return_indices=True)``
    gives them; every other position is zero.  Written as a scatter, which ONNX
    exports with dynamic sizes (``nn.MaxUnpool2d`` does not trace in torch 2.14)
    and which restores odd sizes exactly.
    """
    n, c = x.shape[0], x.shape[1]
    h, w = size
    out = x.new_zeros((n, c, h * w)).scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(n, c, h, w)


def build_segnet(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
    """Registry builder: ``arch_params`` may hold ``width``."""
    unknown = set(params) - {"width"}
    if unknown:
        raise ValueError(f"SegNet takes arch_params width only, got {sorted(unknown)}")
    return SegNet(in_channels, n_classes, encoder or "vgg16_bn", float(params.get("width", 1.0)))
