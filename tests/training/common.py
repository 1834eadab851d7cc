"""Helpers shared by this folder's tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def blob(seed: int, size=(40, 40)) -> Image.Image:
    """A smooth synthetic 'domain' image: one coloured blob on a dark background."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    img = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 * w * h))[..., None] * np.array([220, 120, 60]) + 20
    return Image.fromarray(img.astype(np.uint8))
