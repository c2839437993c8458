"""The contact output's full-resolution refinement (see :mod:`geoseg.training.contact`).

Where two buildings meet is a line one or two pixels wide, usually a change
of roof colour or material.  Encoder-decoder networks see the image at full
resolution only through their first layers: an smp U-Net's last decoder
stage upsamples stride-2 features with no full-resolution skip, so a contact
output read off its head is a blur around buildings and learns its lines
slowly.  :class:`ContactRefine` adds a small stack of full-resolution
convolutions that sees the input bands beside the network's class
probabilities and contact logit, and corrects the contact logit.  Its last
convolution starts at zero, so a network warm-started from a checkpoint
without it begins exactly where that checkpoint was.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ContactRefine"]


class ContactRefine(nn.Module):
    """``base`` (classes then a contact logit) with the contact logit refined at full resolution.

    Parameters
    ----------
    base : torch.nn.Module
        Network returning ``(N, n_classes + 1, H, W)`` logits.
    in_channels, n_classes : int
        Input bands and classes.
    width : int
        Channels of the refinement convolutions.

    Examples
    --------
    >>> net = ContactRefine(nn.Conv2d(3, 3, 1), in_channels=3, n_classes=2)
    >>> x = torch.zeros(1, 3, 8, 8)
    >>> bool(torch.equal(net(x), net.base(x)))  # the refinement starts at zero
    True
    """

    def __init__(self, base: nn.Module, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.base = base
        self.n_classes = n_classes
        self.refine = nn.Sequential(
            nn.Conv2d(in_channels + n_classes + 1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )
        last = self.refine[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        k = self.n_classes
        classes, contact = y[:, :k], y[:, k : k + 1]
        guide = torch.cat([x, torch.softmax(classes, dim=1), contact], dim=1)
        return torch.cat([classes, contact + self.refine(guide)], dim=1)
