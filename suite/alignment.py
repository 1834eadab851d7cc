"""FFHQ's face alignment, the one formula: :mod:`editing.align` frames a user's photo with it, and the mini world
renders its face domain at the framing it gives (:func:`suite.miniworld.faces.aligned_cameras`), so that an edit's
crop and the domain model's training images agree."""

from __future__ import annotations

import numpy as np


def ffhq_quad(eye_left, eye_right, mouth_avg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFHQ's alignment (``recreate_aligned_images`` in the FFHQ dataset script): ``(c, x, y)``, the crop's centre
    and its half-axes, from the eye centres and the mouth centre (image pixels, y down). The crop is the quad
    ``[c - x - y, c - x + y, c + x + y, c + x - y]`` (side ``2 |x|``)."""
    eye_left, eye_right, mouth_avg = (np.asarray(p, np.float64) for p in (eye_left, eye_right, mouth_avg))
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y
