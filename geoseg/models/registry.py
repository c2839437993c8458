"""Architecture registry: names -> builders of segmentation networks.

Every builder takes ``(in_channels, n_classes, encoder, **params)`` and returns
a ``torch.nn.Module`` mapping ``(N, in_channels, H, W)`` float tensors to
``(N, n_classes, H, W)`` logits, for any ``H``, ``W`` that are multiples of the
architecture's stride.  Encoders never load pretrained weights here: weights
come from geoseg checkpoints (or a file the user wraps), never from a hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelCardError

if TYPE_CHECKING:
    from torch import nn

    from geoseg.models.card import ModelCard


@dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    ``stride`` is the input size multiple the network needs (as a function of
    the encoder name); ``default_encoder`` is used when a card names none.
    ``task`` is ``"semantic"`` (per-pixel class logits) or ``"instance"`` (one
    mask, class and score per object: :mod:`geoseg.models.maskrcnn`).
    """

    name: str
    builder: Callable[..., nn.Module]
    default_encoder: str | None
    description: str
    stride: Callable[[str | None, dict[str, Any]], int]
    task: str = "semantic"


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> None:
    """Add an architecture to the registry (name must be new)."""
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch


def list_models() -> list[str]:
    """Names of every registered architecture, sorted.

    >>> "unet" in list_models()
    True
    """
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by (case-insensitive) name."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _REGISTRY:
        raise ModelCardError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_models())}"
        )
    return _REGISTRY[key]


def build_model(card: ModelCard) -> nn.Module:
    """Build the (untrained) network a model card describes, in eval mode.

    A card with a ``contact_class`` gets the architecture with one more output,
    wrapped in :class:`~geoseg.models.contact.ContactRefine`; a card with
    ``output_groups`` gets it with its finer outputs, wrapped in
    :class:`~geoseg.models.groups.MergedOutputs`.
    """
    arch = get_architecture(card.architecture)
    if arch.task != card.task:
        raise ModelCardError(
            f"{card.architecture} is a {arch.task} architecture but the model card says "
            f"task {card.task!r}; set task: {arch.task}"
        )
    encoder = card.encoder or arch.default_encoder
    try:
        model = arch.builder(card.in_channels, card.n_network_outputs, encoder, **card.arch_params)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelCardError(
            f"cannot build {card.architecture!r} with encoder {encoder!r} and "
            f"arch_params {card.arch_params}: {exc}"
        ) from exc
    if card.contact_class is not None:
        from geoseg.models.contact import ContactRefine

        model = ContactRefine(model, card.in_channels, card.n_classes)
    if card.output_groups:
        from geoseg.models.groups import MergedOutputs

        model = MergedOutputs(model, card.output_groups)
    return model.eval()


def architecture_task(name: str) -> str:
    """``"semantic"`` or ``"instance"``: what an architecture's network outputs.

    >>> architecture_task("unet"), architecture_task("maskrcnn")
    ('semantic', 'instance')
    """
    return get_architecture(name).task


def architecture_stride(
    name: str, encoder: str | None, params: dict[str, Any] | None = None
) -> int:
    """The input size multiple an architecture needs."""
    arch = get_architecture(name)
    return arch.stride(encoder or arch.default_encoder, params or {})


# --- segmentation_models_pytorch ----------------------------------------------------------


def _smp_builder(smp_name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
        import segmentation_models_pytorch as smp

        return smp.create_model(
            smp_name,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=n_classes,
            **params,
        )

    return build


def _smp_stride(default: int) -> Callable[[str | None, dict[str, Any]], int]:
    def stride(encoder: str | None, params: dict[str, Any]) -> int:
        if "encoder_output_stride" in params:
            return int(params["encoder_output_stride"])
        depth = int(params.get("encoder_depth", 5))
        return min(default, 2**depth)

    return stride


for _name, _smp, _stride, _desc in [
    ("unet", "Unet", 32, "U-Net (Ronneberger et al. 2015), smp"),
    ("unetplusplus", "UnetPlusPlus", 32, "U-Net++ nested skip connections, smp"),
    ("fpn", "FPN", 32, "Feature Pyramid Network decoder, smp"),
    ("deeplabv3plus", "DeepLabV3Plus", 16, "DeepLabV3+ with ASPP, smp"),
    ("pspnet", "PSPNet", 8, "Pyramid Scene Parsing Network, smp"),
    ("linknet", "Linknet", 32, "LinkNet, smp"),
    ("segformer", "Segformer", 32, "SegFormer decoder, smp"),
]:
    register(Architecture(_name, _smp_builder(_smp), "resnet18", _desc, _smp_stride(_stride)))


# --- torchvision ------------------------------------------------------------------------------


def _fcn(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
    from torch import nn
    from torchvision.models import segmentation

    builders = {"resnet50": segmentation.fcn_resnet50, "resnet101": segmentation.fcn_resnet101}
    if encoder not in builders:
        raise ValueError(f"FCN encoder must be one of {sorted(builders)}")
    net = builders[encoder](
        weights=None, weights_backbone=None, num_classes=n_classes, aux_loss=False, **params
    )
    if in_channels != 3:
        old = net.backbone.conv1
        net.backbone.conv1 = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )

    class _FCN(nn.Module):
        """torchvision's FCN returns a dict; unwrap the main output."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x)["out"]

    return _FCN(net)


register(
    Architecture(
        "fcn",
        _fcn,
        "resnet50",
        "Fully Convolutional Network (Long et al. 2015), torchvision",
        lambda _e, _p: 8,
    )
)


# --- a small stride-1 network -----------------------------------------------------------------


def _tiny(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
    from torch import nn

    width = int(params.get("width", 16))
    depth = int(params.get("depth", 3))
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
        c = width
    layers.append(nn.Conv2d(c, n_classes, 1))
    return nn.Sequential(*layers)


register(
    Architecture(
        "tinycnn",
        _tiny,
        None,
        "A few 3x3 convolutions at full resolution (receptive field 2*depth+1 px); for tests "
        "and simple spectral tasks",
        lambda _e, _p: 1,
    )
)


# --- SegNet -----------------------------------------------------------------------------------


def _segnet(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
    from geoseg.models.segnet import build_segnet

    return build_segnet(in_channels, n_classes, encoder, **params)


register(
    Architecture(
        "segnet",
        _segnet,
        "vgg16_bn",
        "SegNet (Badrinarayanan et al. 2017): VGG-BN encoder, decoder unpooling with the "
        "encoder's max-pooling indices; encoders vgg11_bn/vgg13_bn/vgg16_bn, arch_params width",
        lambda _e, _p: 32,
    )
)


# --- Mask R-CNN (instances) -------------------------------------------------------------------


def _maskrcnn(in_channels: int, n_classes: int, encoder: str | None, **params: Any) -> nn.Module:
    from geoseg.models.maskrcnn import build_maskrcnn

    return build_maskrcnn(in_channels, n_classes, encoder, **params)


register(
    Architecture(
        "maskrcnn",
        _maskrcnn,
        "resnet50",
        "Mask R-CNN (He et al. 2017), torchvision: one mask, class and score per object "
        "(task: instance); encoders resnet18/34/50 or tu-<timm encoder>, arch_params "
        "fpn_channels, detections, anchors",
        lambda _e, _p: 32,
        task="instance",
    )
)
