"""Random augmentations of training batches, drawn from an explicit generator.

Geometric changes (flips, 90-degree rotations, zoom) move the image, its
validity and its labels together; photometric ones (brightness, contrast)
touch the image only.  All random numbers come from the ``generator`` argument,
so a seeded run sees the same augmentations wherever it runs and whether or not
it was resumed.  Plain torch operations keep this independent of kornia's API.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geoseg.training.config import IGNORE_INDEX, AugmentConfig

__all__ = ["augment_batch"]


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def augment_batch(
    image: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch of square chips.

    Parameters
    ----------
    image : torch.Tensor
        float ``(N, bands, S, S)`` scaled to [0, 1] (before mean/std normalisation).
    valid : torch.Tensor
        bool ``(N, S, S)``.
    mask : torch.Tensor
        int64 ``(N, S, S)`` class ids, 255 ignored.
    config : AugmentConfig
    generator : torch.Generator
        CPU generator all random draws come from.

    Returns
    -------
    (image, valid, mask)
        Same shapes and dtypes; zoomed-out chips are padded with invalid,
        ignored pixels.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> img, ok, m = torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), torch.zeros(2, 8, 8, dtype=torch.long)
    >>> out = augment_batch(img, ok, m, AugmentConfig(scale=0.5), g)
    >>> [tuple(t.shape) for t in out]
    [(2, 3, 8, 8), (2, 8, 8), (2, 8, 8)]
    """
    n = image.shape[0]
    device = image.device
    image, valid, mask = image.clone(), valid.clone(), mask.clone()
    if config.flips:
        for dim in (-1, -2):
            sel = (torch.rand(n, generator=generator) < 0.5).to(device)
            image = torch.where(sel[:, None, None, None], image.flip(dim), image)
            valid = torch.where(sel[:, None, None], valid.flip(dim), valid)
            mask = torch.where(sel[:, None, None], mask.flip(dim), mask)
    if config.rot90 and image.shape[-1] == image.shape[-2]:
        ks = torch.randint(0, 4, (n,), generator=generator).to(device)
        for k in (1, 2, 3):
            sel = ks == k
            if sel.any():
                image[sel] = torch.rot90(image[sel], k, dims=(-2, -1))
                valid[sel] = torch.rot90(valid[sel], k, dims=(-2, -1))
                mask[sel] = torch.rot90(mask[sel], k, dims=(-2, -1))
    if config.scale > 0:
        factors = torch.exp(
            _uniform(n, -1.0, 1.0, generator) * torch.log1p(torch.tensor(config.scale))
        )
        offsets = torch.rand(n, 2, generator=generator)
        for i in range(n):
            image[i], valid[i], mask[i] = _zoom(
                image[i], valid[i], mask[i], float(factors[i]), offsets[i]
            )
    if config.brightness > 0 or config.contrast > 0:
        c = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator).to(device)
        b = _uniform(n, -config.brightness, config.brightness, generator).to(device)
        image = (image - 0.5) * c[:, None, None, None] + 0.5 + b[:, None, None, None]
    if config.colour > 0:
        bands = image.shape[1]
        gain = _uniform(n * bands, 1 - config.colour, 1 + config.colour, generator)
        image = (image - 0.5) * gain.view(n, bands, 1, 1).to(device) + 0.5
    return image, valid, mask


def _zoom(
    image: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    factor: float,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize one chip by ``factor`` and crop (at ``offset``) or pad it back to its size."""
    size = image.shape[-1]
    new = max(1, round(size * factor))
    if new == size:
        return image, valid, mask
    img = F.interpolate(image[None], size=(new, new), mode="bilinear", align_corners=False)[0]
    near = F.interpolate(
        torch.stack([valid.float(), mask.float()])[None], size=(new, new), mode="nearest"
    )[0]
    ok, m = near[0] > 0.5, near[1].long()
    if new > size:
        r0, c0 = (offset * (new - size + 1)).long().clamp(max=new - size).tolist()
        return (
            img[:, r0 : r0 + size, c0 : c0 + size],
            ok[r0 : r0 + size, c0 : c0 + size],
            m[r0 : r0 + size, c0 : c0 + size],
        )
    r0, c0 = (offset * (size - new + 1)).long().clamp(max=size - new).tolist()
    out_img = torch.zeros_like(image)
    out_ok = torch.zeros_like(valid)
    out_m = torch.full_like(mask, IGNORE_INDEX)
    out_img[:, r0 : r0 + new, c0 : c0 + new] = img
    out_ok[r0 : r0 + new, c0 : c0 + new] = ok
    out_m[r0 : r0 + new, c0 : c0 + new] = m
    return out_img, out_ok, out_m
