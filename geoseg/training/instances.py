"""Training instance models (Mask R-CNN) from the same vector labels.

Each label polygon of a class is one object.  The chips carry them in the mask
itself: a pixel's value is ``class id + INSTANCE_SHIFT * object id``
(:func:`encode_instances`; ignored pixels stay 255), so object ids ride
through chip reading, cropping and every geometric augmentation exactly like
the class ids (nearest-neighbour resampling keeps them whole).  Per batch,
:func:`instance_targets` turns that back into what torchvision's detectors
learn from: per image, one box, class and binary mask per object.

Validation runs the detector in eval mode, paints its kept instances into a
class map (score and mask thresholds of :class:`~geoseg.infer.instances.InstanceParams`)
and scores that map like a semantic model's, so ``val_miou`` picks the best
epoch on the same scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["INSTANCE_SHIFT", "encode_instances", "instance_targets", "paint_instances"]

#: Object ids are stored in a chip's mask as multiples of this (class ids stay below 128).
INSTANCE_SHIFT = 256


def encode_instances(mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A class mask with object ids folded in: ``class + INSTANCE_SHIFT * id`` (int64).

    >>> encode_instances(np.array([[0, 1, 1]], np.uint8), np.array([[0, 3, 3]])).tolist()
    [[0, 769, 769]]
    """
    return mask.astype(np.int64) + INSTANCE_SHIFT * ids.astype(np.int64)


def instance_targets(mask: torch.Tensor, ignore: int = 255) -> list[dict[str, torch.Tensor]]:
    """torchvision detection targets from encoded masks ``(N, H, W)``.

    Each object id present in an image gives one target: its box (x0, y0, x1, y1,
    pixel edges), its class (the most frequent class id under it) and its binary
    mask.  Pixels of ignored value are no object.

    Examples
    --------
    >>> import torch
    >>> m = torch.tensor([[[0, 1 + 256, 1 + 256], [0, 1 + 512, 255]]])
    >>> t = instance_targets(m)[0]
    >>> t["boxes"].tolist(), t["labels"].tolist(), t["masks"].sum((1, 2)).tolist()
    ([[1.0, 0.0, 3.0, 1.0], [1.0, 1.0, 2.0, 2.0]], [1, 1], [2, 1])
    """
    import torch

    out = []
    h, w = mask.shape[-2:]
    for m in mask:
        real = m != ignore
        ids = torch.where(real, m // INSTANCE_SHIFT, torch.zeros_like(m))
        cls = torch.where(real, m % INSTANCE_SHIFT, torch.zeros_like(m))
        present = [int(v) for v in torch.unique(ids) if int(v) > 0]
        boxes, labels, masks = [], [], []
        for oid in present:
            pix = ids == oid
            ys = torch.nonzero(pix.any(1)).flatten()
            xs = torch.nonzero(pix.any(0)).flatten()
            label = int(torch.mode(cls[pix]).values)
            if label <= 0:
                continue
            boxes.append([float(xs[0]), float(ys[0]), float(xs[-1]) + 1, float(ys[-1]) + 1])
            labels.append(label)
            masks.append(pix)
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32, device=mask.device).reshape(
                    -1, 4
                ),
                "labels": torch.tensor(labels, dtype=torch.int64, device=mask.device),
                "masks": (
                    torch.stack(masks).to(torch.uint8)
                    if masks
                    else torch.zeros((0, h, w), dtype=torch.uint8, device=mask.device)
                ),
            }
        )
    return out


def instance_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The detector's summed training losses (RPN, boxes, classes, masks) on a batch."""
    losses: Mapping[str, torch.Tensor] = model(x, instance_targets(mask))
    return sum(losses.values())  # type: ignore[return-value]


def paint_instances(
    outputs: Sequence[Mapping[str, Any]],
    shape: tuple[int, int],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Class maps ``(N, H, W)`` painted from detector outputs, lowest score first.

    >>> import torch
    >>> out = {"masks": torch.ones(1, 1, 2, 2), "scores": torch.tensor([0.9]),
    ...        "labels": torch.tensor([2])}
    >>> paint_instances([out], (2, 2)).tolist()
    [[[2, 2], [2, 2]]]
    """
    maps = np.zeros((len(outputs), *shape), np.int64)
    for i, o in enumerate(outputs):
        scores = o["scores"].detach().cpu().numpy()
        labels = o["labels"].detach().cpu().numpy()
        masks = o["masks"].detach().cpu().numpy()
        for k in np.argsort(scores):
            if scores[k] >= score_threshold:
                maps[i][masks[k][0] >= mask_threshold] = labels[k]
    return maps
