"""Synthetic face-like photos that OpenCV's Haar cascades detect (for tests and the benchmark, no downloads).

:func:`draw_face` paints a blurred cartoon face (head ellipse, dark eyes under brows, bright nose ridge, dark
mouth) whose eye centres are known exactly; :func:`place_face` rotates it and puts it on a background at a
known position, returning the true eye centres in the photo's pixel coordinates.
"""

from __future__ import annotations

import math

import numpy as np

EYE_DX, EYE_DY = 0.12, -0.08  # eye centres relative to the face centre, in units of the face image size


def draw_face(size: int, background: int = 200) -> np.ndarray:
    """``[size, size]`` uint8 gray face, centred; eyes at ``centre + (+-EYE_DX, EYE_DY) * size``."""
    import cv2

    im = np.full((size, size), background, np.uint8)
    c = size / 2.0

    def P(x, y):
        return int(round(c + x * size - 0.5)), int(round(c + y * size - 0.5))

    def R(a, b):
        return max(1, int(round(a * size))), max(1, int(round(b * size)))

    cv2.ellipse(im, P(0, 0), R(0.3, 0.4), 0, 0, 360, 150, -1)
    for dx in (-1, 1):
        cv2.ellipse(im, P(dx * EYE_DX, EYE_DY), R(0.06, 0.035), 0, 0, 360, 40, -1)
        cv2.line(im, P(dx * 0.06, -0.16), P(dx * 0.19, -0.16), 60, max(2, size // 60))
    cv2.ellipse(im, P(0, 0.05), R(0.03, 0.08), 0, 0, 360, 185, -1)
    cv2.ellipse(im, P(0, 0.2), R(0.1, 0.03), 0, 0, 360, 70, -1)
    return cv2.GaussianBlur(im, (0, 0), size / 100)


def place_face(canvas: np.ndarray, centre: tuple[float, float], size: int, angle: float = 0.0,
               background: int = 200) -> tuple[tuple[float, float], tuple[float, float]]:
    """Paint a face of ``size`` px centred at ``centre`` (x, y), rolled by ``angle`` degrees (positive =
    clockwise on screen) onto ``canvas`` (``[H, W]`` or ``[H, W, 3]`` uint8, in place). Returns the true
    (left, right) eye centres in canvas coordinates (continuous, pixel ``i`` covers ``[i, i+1)``)."""
    import cv2

    face = draw_face(size, background)
    pad = int(size * 0.75)
    big = np.full((pad * 2, pad * 2), background, np.uint8)
    o = pad - size // 2
    big[o:o + size, o:o + size] = face
    # rotate about the big patch's centre; cv2's positive angle is counter-clockwise on screen
    m = cv2.getRotationMatrix2D((pad - 0.5, pad - 0.5), -angle, 1.0)
    rot = cv2.warpAffine(big, m, (2 * pad, 2 * pad), flags=cv2.INTER_LINEAR, borderValue=background)
    cx, cy = centre
    x0, y0 = int(round(cx - pad)), int(round(cy - pad))
    h, w = canvas.shape[:2]
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(w, x0 + 2 * pad), min(h, y0 + 2 * pad)
    patch = rot[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
    region = canvas[dy0:dy1, dx0:dx1]
    # only the rotated disc of the face (not the square patch's corners) is painted
    yy, xx = np.mgrid[dy0:dy1, dx0:dx1]
    disc = (xx + 0.5 - (x0 + pad)) ** 2 + (yy + 0.5 - (y0 + pad)) ** 2 <= (0.72 * size) ** 2
    if canvas.ndim == 3:
        region[disc] = patch[disc][:, None]
    else:
        region[disc] = patch[disc]
    # true eye centres: face-centre offsets rotated by `angle` (clockwise on screen, y down)
    a = math.radians(angle)
    fc = (x0 + pad, y0 + pad)
    eyes = []
    for dx in (-EYE_DX, EYE_DX):
        ox, oy = dx * size, EYE_DY * size
        eyes.append((fc[0] + ox * math.cos(a) - oy * math.sin(a), fc[1] + ox * math.sin(a) + oy * math.cos(a)))
    return eyes[0], eyes[1]
