"""Control-image helpers (ControlNet conditioning)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges as a 3-channel white-on-black image, the input the SD1.5 canny ControlNet expects."""
    try:
        import cv2
    except ImportError:
        from .extras import require

        require("canny edges", "cv2")
        raise
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
