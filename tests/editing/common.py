"""Helpers shared by this folder's tests."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
from editing import Face


class FixedDetector:
    """A detector double: the faces it is given, whatever the image (and records the image size it saw)."""

    def __init__(self, *faces: Face):
        self.faces, self.seen = list(faces), []

    def detect(self, rgb):
        self.seen.append(rgb.shape)
        return list(self.faces)


def photo_array(h=96, w=128, seed=0) -> np.ndarray:
    """A smooth random colour field (something a VAE can see) at h x w."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def face_at(mid, eye_dist, angle=0.0) -> Face:
    a = math.radians(angle)
    half = 0.5 * eye_dist * np.array([math.cos(a), math.sin(a)])
    mid = np.asarray(mid, float)
    return Face(box=(mid[0] - eye_dist, mid[1] - eye_dist, mid[0] + eye_dist, mid[1] + 1.5 * eye_dist),
                eyes=(tuple(mid - half), tuple(mid + half)))


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
