"""Training augmentations: what each one changes, and what it must leave alone."""

from __future__ import annotations

import torch

from geoseg.training.augment import augment_batch
from geoseg.training.config import AugmentConfig

OFF = {"flips": False, "rot90": False, "brightness": 0.0, "contrast": 0.0, "scale": 0.0}


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = torch.full((n, 3, 8, 8), 0.8)
    valid = torch.ones(n, 8, 8, dtype=torch.bool)
    mask = torch.randint(0, 3, (n, 8, 8), generator=torch.Generator().manual_seed(0))
    return image, valid, mask


def test_colour_gain_changes_each_band_on_its_own_and_nothing_else() -> None:
    image, valid, mask = batch()
    cfg = AugmentConfig(**OFF, colour=0.5)
    out, ok, m = augment_batch(image, valid, mask, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(m, mask) and torch.equal(ok, valid)
    per_band = out[:, :, 0, 0]  # (N, bands): a constant chip stays constant per band
    assert torch.equal(out, per_band[:, :, None, None].expand_as(out))
    # 0.8 = 0.5 + 0.3: a gain g in [0.5, 1.5] gives 0.5 + 0.3 g in [0.65, 0.95].
    assert (per_band >= 0.65 - 1e-6).all() and (per_band <= 0.95 + 1e-6).all()
    assert len(torch.unique(per_band.round(decimals=5))) > per_band.shape[0]  # bands differ
    again, _, _ = augment_batch(image, valid, mask, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_no_augmentation_leaves_the_batch_as_it_is() -> None:
    image, valid, mask = batch()
    out, ok, m = augment_batch(
        image, valid, mask, AugmentConfig(**OFF), torch.Generator().manual_seed(1)
    )
    assert torch.equal(out, image) and torch.equal(ok, valid) and torch.equal(m, mask)
    assert AugmentConfig.from_dict(False).colour == 0.0
