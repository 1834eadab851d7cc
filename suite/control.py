"""Control-image helpers (ControlNet conditioning)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges as a 3-channel white-on-black image, the input the SD1.5 canny ControlNet expects."""
    from .extras import load

    cv2 = load("cv2", "canny edges")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
