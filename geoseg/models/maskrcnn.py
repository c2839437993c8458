"""Mask R-CNN (He et al. 2017) as a geoseg *instance* model.

torchvision's :class:`~torchvision.models.detection.MaskRCNN` with an FPN over
a ResNet (torchvision) or any timm encoder (``tu-<name>``, e.g.
``tu-efficientnet_lite0``), built without downloading anything: weights come
from geoseg checkpoints, and an ImageNet encoder from a local file through the
training config's ``encoder_weights`` (the encoder is ``model.encoder``, with
the same tensor names as the segmentation models' encoders).

Differences from torchvision's defaults, for tiles of aerial imagery:

* images are **not resized** (a tile is already at the model's pixel size) and
  arrive normalised by geoseg (:func:`geoseg.infer.predictor.normalize`), so the
  detector's own transform only batches them;
* anchors are smaller (8-128 px by default: buildings at 0.3-1 m pixels) and
  up to ``detections`` instances are kept per tile.

In training mode ``forward(x, targets)`` returns torchvision's loss dict; in
eval mode ``forward(x)`` returns one dict per image with ``boxes`` (x0, y0,
x1, y1 in pixels), ``labels`` (class ids, 1..n-1), ``scores`` and ``masks``
(``(K, 1, H, W)`` probabilities).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MaskRCNNNet", "build_maskrcnn"]

#: Anchor sizes per FPN level (pixels), finest level first.
DEFAULT_ANCHORS = (8, 16, 32, 64, 128)


class _TimmBody(nn.Module):
    """A timm encoder's feature maps at strides 4, 8, 16 and 32, keyed "0".."3"."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        import timm

        model: Any = timm.create_model(
            name,
            features_only=True,
            pretrained=False,
            in_chans=in_channels,
            out_indices=(1, 2, 3, 4),
        )
        self.channels: list[int] = list(model.feature_info.channels())
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self.model(x)))


class _Backbone(nn.Module):
    """Encoder body + feature pyramid: what torchvision's detectors call a backbone."""

    def __init__(self, body: nn.Module, channels: list[int], out_channels: int) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        self.body = body
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


def _backbone(encoder: str, in_channels: int, fpn_channels: int) -> _Backbone:
    if encoder.startswith("tu-"):
        timm_body = _TimmBody(encoder[3:], in_channels)
        return _Backbone(timm_body, timm_body.channels, fpn_channels)
    from torchvision.models import resnet
    from torchvision.models._utils import IntermediateLayerGetter

    builders = {
        "resnet18": resnet.resnet18,
        "resnet34": resnet.resnet34,
        "resnet50": resnet.resnet50,
    }
    if encoder not in builders:
        raise ValueError(f"Mask R-CNN encoder must be tu-<timm name> or one of {sorted(builders)}")
    net = builders[encoder](weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    wide = encoder == "resnet50"
    channels = [c * (4 if wide else 1) for c in (64, 128, 256, 512)]
    layers = {f"layer{i + 1}": str(i) for i in range(4)}
    return _Backbone(IntermediateLayerGetter(net, return_layers=layers), channels, fpn_channels)


class MaskRCNNNet(nn.Module):
    """Mask R-CNN over geoseg-normalised bands; see the module docs.

    Parameters
    ----------
    in_channels : int
        Input bands.
    n_classes : int
        Classes including background (class 0): instances are of classes 1..n-1.
    encoder : str
        ``resnet18``, ``resnet34``, ``resnet50`` or ``tu-<timm encoder>``.
    fpn_channels : int
        Width of the feature pyramid (torchvision: 256).
    detections : int
        Most instances kept per tile.
    anchors : sequence of int
        Anchor size per pyramid level, pixels (five levels).
    """

    task = "instance"

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        encoder: str,
        *,
        fpn_channels: int = 256,
        detections: int = 200,
        anchors: tuple[int, ...] | list[int] = DEFAULT_ANCHORS,
    ) -> None:
        super().__init__()
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        if len(anchors) != 5:
            raise ValueError(f"anchors needs one size per pyramid level (5), got {list(anchors)}")
        generator = AnchorGenerator(
            sizes=tuple((int(a),) for a in anchors), aspect_ratios=((0.5, 1.0, 2.0),) * 5
        )
        self.net = MaskRCNN(
            _backbone(encoder, in_channels, int(fpn_channels)),
            num_classes=n_classes,
            rpn_anchor_generator=generator,
            image_mean=[0.0] * in_channels,
            image_std=[1.0] * in_channels,
            min_size=32,
            max_size=1 << 15,
            box_detections_per_img=int(detections),
            box_score_thresh=0.05,
        )
        # Tiles are already at the model's pixel size and normalised: batch them only.
        self.net.transform.resize = _no_resize
        self.net.transform.normalize = _identity

    @property
    def encoder(self) -> nn.Module:
        """The encoder body (what ``encoder_weights`` initialise)."""
        return self.net.backbone.body

    def forward(self, x: Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        images = list(x.contiguous(memory_format=torch.contiguous_format))
        if self.training:
            if targets is None:
                raise ValueError("Mask R-CNN needs targets in training mode")
            return self.net(images, targets)
        return self.net(images)


def _no_resize(image: Tensor, target: Any = None) -> tuple[Tensor, Any]:
    return image, target


def _identity(image: Tensor) -> Tensor:
    return image


def build_maskrcnn(
    in_channels: int, n_classes: int, encoder: str | None, **params: Any
) -> MaskRCNNNet:
    """The registry's builder: Mask R-CNN with ``encoder`` (default resnet50)."""
    return MaskRCNNNet(in_channels, n_classes, encoder or "resnet50", **params)
