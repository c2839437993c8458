"""A deterministic instance detector for the tests (``blobs``), and scenes it reads.

Every connected patch of bright pixels of one green value is an object, found in
whichever tile sees it, cut where the tile's edge cuts it: exactly what a real
detector does at tile borders, with an answer known to the pixel.  Importable by
dask worker processes (see ``tests/batch/plugins.py``), which need it registered too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geoseg.models.registry import _REGISTRY, Architecture, register


class Blobs(torch.nn.Module):
    """Objects = 4-connected patches of one green value where red is bright."""

    task = "instance"

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.min_pixels = 1

    def forward(self, x: Any) -> list[dict[str, Any]]:
        from scipy import ndimage

        out = []
        for img in x.detach().cpu().numpy():
            # Roofs are red 220 with green 3 + 10 i: colours blended a little along edges
            # (by resampling) still read as the same roof.
            bright = img[0] > 0.75
            group = np.round((img[1] * 255 - 3) / 10).astype(int)
            masks, scores = [], []
            for value in np.unique(group[bright]):
                labels, n = ndimage.label(bright & (group == value))
                for k in range(1, n + 1):
                    if (labels == k).sum() >= self.min_pixels:
                        masks.append(labels == k)
                        scores.append(0.5 + value / 64)
            k = len(masks)
            m = (
                np.stack(masks)[:, None].astype(np.float32)
                if k
                else np.zeros((0, 1, *img.shape[1:]))
            )
            out.append(
                {
                    "masks": torch.from_numpy(m),
                    "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.ones(k, dtype=torch.int64),
                    "boxes": torch.zeros((k, 4)),
                }
            )
        return out


def register_blobs() -> None:
    """Put ``blobs`` in this process's registry (idempotent)."""
    if "blobs" not in _REGISTRY:
        register(
            Architecture("blobs", lambda *a, **k: Blobs(), None, "test detector", lambda e, p: 1,
                         task="instance")
        )  # fmt: skip


def blobs_scene(
    h: int, w: int, boxes: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """RGB scene and the truth instance ids of ``boxes`` (row0, col0, row1, col1)."""
    img = np.full((3, h, w), 30, np.uint8)
    ids = np.zeros((h, w), np.int32)
    for i, (r0, c0, r1, c1) in enumerate(boxes, start=1):
        img[0, r0:r1, c0:c1] = 220
        img[1, r0:r1, c0:c1] = 3 + (10 * i) % 250
        ids[r0:r1, c0:c1] = i
    return img, ids
