"""Face detection, offline: OpenCV 4.x Haar cascades shipped in the wheel (``cv2.data.haarcascades``).

The detector is pluggable: anything with ``detect(rgb) -> list[Face]`` (the :class:`FaceDetector`
protocol) can replace :class:`HaarFaceDetector`, e.g. a landmark detector you have weights for, or a test
double at a known box and angle.

:class:`HaarFaceDetector` finds frontal faces on a downscaled gray copy of the photo (so a 12 MP photo costs
no more than a 1 MP one), then looks for the two eyes (``haarcascade_eye``) inside each face box at full
resolution. Eyes give the roll angle and scale for the alignment (:mod:`editing.align`); without them the
framing is derived from the box alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

Point = tuple[float, float]

#: Where the eyes sit in an OpenCV frontal-face box, as fractions of its width/height (box-only framing;
#: measured on scikit-image's astronaut portrait: eyes at 0.25 / 0.74 of the width, 0.36-0.39 of the height).
BOX_EYE_X = (0.27, 0.73)
BOX_EYE_Y = 0.38


@dataclass(frozen=True)
class Face:
    """A detected face in image pixel coordinates (x right, y down; pixel ``(i, j)`` covers ``[i, i+1)``).

    ``box``: ``(x0, y0, x1, y1)``. ``eyes``: ``(left, right)`` eye centres as seen in the image (left = smaller
    x), or None when they were not found (the alignment then uses :meth:`eye_points`' estimate from the box).
    """

    box: tuple[float, float, float, float]
    eyes: tuple[Point, Point] | None = None
    score: float = 1.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def eye_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The eyes, detected or estimated from the box (:data:`BOX_EYE_X`, :data:`BOX_EYE_Y`)."""
        if self.eyes is not None:
            return np.asarray(self.eyes[0], np.float64), np.asarray(self.eyes[1], np.float64)
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        y = y0 + BOX_EYE_Y * h
        return np.array([x0 + BOX_EYE_X[0] * w, y]), np.array([x0 + BOX_EYE_X[1] * w, y])

    @property
    def angle(self) -> float:
        """Roll in degrees: the angle of the line from the left to the right eye (positive = clockwise on screen,
        since y points down). 0 without detected eyes."""
        left, right = self.eye_points()
        return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))

    def scaled(self, s: float) -> Face:
        eyes = None if self.eyes is None else tuple((x * s, y * s) for x, y in self.eyes)
        return Face(tuple(v * s for v in self.box), eyes, self.score)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an ``[H, W, 3]`` uint8 RGB array; returns them in that array's pixel coordinates."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class HaarFaceDetector:
    """OpenCV Haar cascades (frontal face + eyes), offline, from the opencv-python(-headless) 4.x wheel.

    ``max_side``: faces are searched on a copy whose longer side is at most this many pixels.
    ``min_face``: smallest face searched, as a fraction of the copy's shorter side.
    ``scale_factor`` / ``min_neighbors``: OpenCV's ``detectMultiScale`` parameters (higher neighbours = fewer
    false detections).
    """

    def __init__(self, max_side: int = 1024, min_face: float = 0.04, scale_factor: float = 1.1,
                 min_neighbors: int = 5, find_eyes: bool = True):
        cv2 = _cv2()
        root = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not root:
            raise ValueError("this OpenCV build carries no Haar cascade files (OpenCV 5 dropped them): "
                             "pip install 'opencv-python-headless<5'")
        self.face_cascade = _cascade(cv2, root, "haarcascade_frontalface_default.xml")
        self.eye_cascade = _cascade(cv2, root, "haarcascade_eye.xml") if find_eyes else None
        self.max_side, self.min_face = int(max_side), float(min_face)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        # 1. A small gray copy: detection cost does not grow with the photo's megapixels.
        h, w = rgb.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
        # 2. Faces on the copy (as is, then with equalised contrast for dim photos), mapped back to full size.
        min_side = max(20, int(self.min_face * min(gray.shape)))
        boxes = _detect_plain_then_equalised(self.face_cascade, gray, scaleFactor=self.scale_factor,
                                             minNeighbors=self.min_neighbors, minSize=(min_side, min_side))
        sx, sy = w / small.shape[1], h / small.shape[0]
        faces = []
        for x, y, bw, bh in (boxes if len(boxes) else []):
            box = (float(x * sx), float(y * sy), float((x + bw) * sx), float((y + bh) * sy))
            # 3. Eyes at full resolution inside the box (they set the roll angle and the scale).
            eyes = self.find_eyes(rgb, box) if self.eye_cascade is not None else None
            faces.append(Face(box, eyes))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def find_eyes(self, rgb: np.ndarray, box) -> tuple[Point, Point] | None:
        """The most plausible pair of eyes in the upper part of ``box``, or None."""
        cv2 = _cv2()
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, rgb.shape[1]), min(y1, rgb.shape[0])
        bw, bh = x1 - x0, y1 - y0
        if bw < 16 or bh < 16:
            return None
        roi = rgb[y0:y0 + int(0.62 * bh), x0:x1]
        k = 200.0 / bw  # eyes are searched on the face box scaled to 200 px wide
        roi = cv2.resize(np.ascontiguousarray(roi), (200, max(1, round(roi.shape[0] * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        gray = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY)
        found = _detect_plain_then_equalised(self.eye_cascade, gray, scaleFactor=1.1, minNeighbors=3,
                                             minSize=(20, 20), maxSize=(90, 90))
        centres = [((ex + ew / 2) / 200.0, (ey + eh / 2) / 200.0) for ex, ey, ew, eh in (found if len(found) else [])]
        best, best_cost = None, math.inf
        for lx, ly in centres:  # fractions of the box width
            for rx, ry in centres:
                if not (lx < 0.5 < rx):
                    continue
                dist = math.hypot(rx - lx, ry - ly)
                tilt = abs(math.degrees(math.atan2(ry - ly, rx - lx)))
                if not (0.2 <= dist <= 0.7) or tilt > 35:
                    continue
                cost = abs(dist - (BOX_EYE_X[1] - BOX_EYE_X[0])) + abs((lx + rx) / 2 - 0.5) + abs((ly + ry) / 2 - BOX_EYE_Y)
                if cost < best_cost:
                    best, best_cost = ((lx, ly), (rx, ry)), cost
        if best is None:
            return None
        return tuple((x0 + fx * bw, y0 + fy * bw) for fx, fy in best)


def _detect_plain_then_equalised(cascade, gray: np.ndarray, **kwargs):
    """``detectMultiScale`` on the gray image; if nothing is found, once more after histogram equalisation
    (helps dim or low-contrast photos; hurts flat synthetic ones, hence not first)."""
    found = cascade.detectMultiScale(gray, **kwargs)
    if len(found) == 0:
        found = cascade.detectMultiScale(_cv2().equalizeHist(gray), **kwargs)
    return found


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ValueError("face detection needs OpenCV: pip install 'opencv-python-headless<5' "
                         "(or edit the whole image with --whole-image)") from None
    return cv2


def _cascade(cv2, root: str, name: str):
    import os

    path = os.path.join(root, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ValueError(f"the OpenCV cascade {path!r} could not be loaded: reinstall opencv-python-headless<5")
    return cascade
