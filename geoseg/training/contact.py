"""The contact target: where two objects of one class meet.

Semantic segmentation paints a row of terraced houses as one block of
"building" pixels; its polygon is one building.  The SpaceNet building
challenges were won by adding a target that marks the pixels between
neighbouring objects, learning it with the classes, and cutting the objects
apart along it.  geoseg does the same with one extra network output:

* **Target** (:func:`contact_pixels`): a pixel is a *contact* pixel when the
  ``(2r + 1)``-pixel square around it holds pixels of two different objects
  of the class.  That marks both sides of a shared wall and the pixels of a
  narrow gap (up to ``2r`` pixels) between two objects, which a network would
  otherwise bridge.  Only sources that know their objects one by one (vector
  labels, each polygon one object) can say where that is; elsewhere the
  output is not trained.
* **Encoding**: a contact pixel keeps its class id and gets
  :data:`CONTACT_FLAG` added (class ids stay below 128, 255 is "ignore"), so
  the flag rides through chip caches and geometric augmentation with the mask
  it belongs to; :func:`split_contact` takes it apart again.
* **Prediction**: the output is a sigmoid probability blended like the class
  probabilities; pixels of the class where it exceeds 0.5 become background
  (:class:`geoseg.infer.blend.StreamingBlender`), a per-pixel rule that keeps
  tiled prediction and strip polygonization seam-exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from geoseg.training.config import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

__all__ = ["CONTACT_FLAG", "contact_pixels", "encode_contact", "split_contact"]

#: Added to the class id of a contact pixel in a training mask.
CONTACT_FLAG = 128


def contact_pixels(instances: np.ndarray, radius: int = 1) -> np.ndarray:
    """Pixels whose neighbourhood holds two different objects.

    Parameters
    ----------
    instances : numpy.ndarray
        int ``(H, W)``: object ids, 0 where there is no object.
    radius : int
        Half size of the square neighbourhood (Chebyshev radius) in pixels.

    Returns
    -------
    numpy.ndarray
        bool ``(H, W)``.

    Examples
    --------
    Two objects sharing a wall, and a third alone:

    >>> ids = np.array([[1, 1, 2, 2, 0, 0, 3]])
    >>> contact_pixels(ids).astype(int).tolist()
    [[0, 1, 1, 0, 0, 0, 0]]

    The pixel of a one-pixel gap between two objects is one too:

    >>> contact_pixels(np.array([[1, 1, 0, 2, 2]])).astype(int).tolist()
    [[0, 0, 1, 0, 0]]
    """
    ids = np.asarray(instances)
    h, w = ids.shape
    big = np.iinfo(np.int64).max
    lo = np.where(ids > 0, ids.astype(np.int64), big)
    hi = ids.astype(np.int64)
    pad_lo = np.pad(lo, radius, constant_values=big)
    pad_hi = np.pad(hi, radius, constant_values=0)
    wmin = np.full((h, w), big, dtype=np.int64)
    wmax = np.zeros((h, w), dtype=np.int64)
    size = 2 * radius + 1
    for dy in range(size):
        for dx in range(size):
            np.minimum(wmin, pad_lo[dy : dy + h, dx : dx + w], out=wmin)
            np.maximum(wmax, pad_hi[dy : dy + h, dx : dx + w], out=wmax)
    # The smallest and the largest object id in the window differ: two objects.
    return (wmax > 0) & (wmin != big) & (wmin != wmax)


def encode_contact(mask: np.ndarray, contact: np.ndarray) -> np.ndarray:
    """``mask`` with :data:`CONTACT_FLAG` added where ``contact`` (ignored pixels stay 255).

    >>> encode_contact(np.array([0, 1, 255], np.uint8), np.array([True, True, True])).tolist()
    [128, 129, 255]
    """
    out = np.array(mask, copy=True)
    add = np.asarray(contact, bool) & (out != IGNORE_INDEX)
    out[add] = out[add] + CONTACT_FLAG
    return out


def split_contact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids (255 where ignored) and the bool contact target of an encoded mask.

    >>> import torch
    >>> classes, contact = split_contact(torch.tensor([0, 1, 129, 128, 255]))
    >>> classes.tolist(), contact.tolist()
    ([0, 1, 1, 0, 255], [False, False, True, True, False])
    """
    import torch

    ignored = mask == IGNORE_INDEX
    contact = (mask >= CONTACT_FLAG) & ~ignored
    classes = torch.where(contact, mask - CONTACT_FLAG, mask)
    return classes, contact
