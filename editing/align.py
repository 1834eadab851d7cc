"""Crop geometry: FFHQ-style face alignment, crop extraction from huge photos, feathered paste-back.

A :class:`Region` is an affine map from crop coordinates to image coordinates (continuous pixel
coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, its centre is ``(i + 0.5, j + 0.5)``).
The same map takes the crop out (:func:`extract`) and puts the edited crop back (:func:`paste`), so the
edit lands exactly where it was taken.

Face framing follows the FFHQ alignment script (Karras et al., ``recreate_aligned_images``): from the eye
centres ``e_l, e_r`` (each the mean of its six dlib landmarks) and the mouth centre ``m`` (the mean of the
mouth corners, landmarks 48 and 54),
``x = e2e - rot90(e2m)`` normalised to length ``max(2 |e2e|, 1.8 |e2m|)`` (half the crop side, along the eye
line), ``y = rot90(x)``, centre ``c = eye_avg + 0.1 e2m``. Without dlib, Haar cascades give no mouth, so
``e2m`` is the eye line turned by 90 degrees with length ``MOUTH_RATIO * |e2e|`` (FFHQ's average face: eyes
~0.25 of the crop apart, mouth ~0.245 below them). The crop side is then ``4 |e2e|``, eyes at 47.5% of its
height. FFHQ then resamples the quad to 1024 px (with a 4x supersampled, blurred padding); here the same quad
is warped straight to the model's size with area pre-filtering (:func:`extract`), so only the resampling differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from suite.alignment import ffhq_quad

from .faces import Face

__all__ = ["Region", "ffhq_quad", "face_region", "animal_region", "whole_image_region", "extract", "feather_mask",
           "paste"]

MOUTH_RATIO = 0.98


@dataclass(frozen=True)
class Region:
    """``matrix`` (2x3): crop continuous coords ``(u, v)`` -> image continuous coords. ``size``: crop ``(w, h)``."""

    matrix: np.ndarray
    size: tuple[int, int]

    def corners(self) -> np.ndarray:
        w, h = self.size
        pts = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
        return pts @ self.matrix.T

    def to_image(self, uv) -> np.ndarray:
        uv = np.asarray(uv, np.float64)
        return uv @ self.matrix[:, :2].T + self.matrix[:, 2]

    @property
    def scale(self) -> float:
        """Image pixels per crop pixel (geometric mean of the two axes)."""
        return math.sqrt(abs(np.linalg.det(self.matrix[:, :2])))

    @property
    def angle(self) -> float:
        """Rotation of the crop's x axis in the image, degrees (positive = clockwise on screen)."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    def bbox(self, image_size: tuple[int, int], margin: int = 2) -> tuple[int, int, int, int] | None:
        """Integer bounding box ``(x0, y0, x1, y1)`` of the crop in the image, clipped; None if outside."""
        c = self.corners()
        x0 = max(int(math.floor(c[:, 0].min())) - margin, 0)
        y0 = max(int(math.floor(c[:, 1].min())) - margin, 0)
        x1 = min(int(math.ceil(c[:, 0].max())) + margin, image_size[0])
        y1 = min(int(math.ceil(c[:, 1].max())) + margin, image_size[1])
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _square(c, x, y, size: int) -> Region:
    # crop (u, v) in [0, size]^2 -> c + (2u/size - 1) x + (2v/size - 1) y
    matrix = np.array([[2 * x[0] / size, 2 * y[0] / size, c[0] - x[0] - y[0]],
                       [2 * x[1] / size, 2 * y[1] / size, c[1] - x[1] - y[1]]])
    return Region(matrix, (size, size))


def face_region(face: Face, size: int) -> Region:
    """The FFHQ square crop (``size`` x ``size``) around ``face``: FFHQ's own recipe (:func:`ffhq_quad`) from the
    landmarks' eyes and mouth, or, without a mouth landmark (Haar), the mouth estimated from the eyes."""
    eye_left, eye_right = face.eye_points()
    mouth = face.mouth_point()
    if mouth is None:
        eye_to_eye = eye_right - eye_left
        mouth = (eye_left + eye_right) * 0.5 + np.array([-eye_to_eye[1], eye_to_eye[0]]) * MOUTH_RATIO
    return _square(*ffhq_quad(eye_left, eye_right, mouth), size)


#: The animal domain's framing (AFHQ-like: the head fills the square, a little margin): the square's side is
#: this many times the detected cat-face box's larger side, centred on the box.
ANIMAL_SCALE = 1.15


def animal_region(face: Face, size: int) -> Region:
    """The animal framing: an upright square around the detected animal face (no landmarks to turn it by)."""
    x0, y0, x1, y1 = face.box
    c = np.array([(x0 + x1) * 0.5, (y0 + y1) * 0.5])
    half = 0.5 * ANIMAL_SCALE * max(x1 - x0, y1 - y0)
    return _square(c, np.array([half, 0.0]), np.array([0.0, half]), size)


def whole_image_region(image_size: tuple[int, int], native: int, multiple: int) -> Region:
    """The whole image scaled so that its longer side is ``native`` px, both sides multiples of ``multiple``."""
    w, h = image_size
    s = native / max(w, h)
    cw = max(multiple, int(round(w * s / multiple)) * multiple)
    ch = max(multiple, int(round(h * s / multiple)) * multiple)
    return Region(np.array([[w / cw, 0.0, 0.0], [0.0, h / ch, 0.0]]), (cw, ch))


def _cv_inverse_map(matrix: np.ndarray, dst_offset=(0.0, 0.0), src_offset=(0.0, 0.0), src_scale=1.0) -> np.ndarray:
    """The matrix for ``cv2.warpAffine(..., WARP_INVERSE_MAP)`` (dst index -> src index, pixel centres at
    integers) from ``matrix`` (dst continuous -> src continuous) where dst pixel ``p`` is at continuous
    ``p + 0.5 + dst_offset`` and src continuous ``q`` is src index ``(q - src_offset) / src_scale - 0.5``."""
    a, t = matrix[:, :2], matrix[:, 2]
    dst_off = np.asarray(dst_offset, np.float64) + 0.5
    lin = a / src_scale
    trans = (a @ dst_off + t - np.asarray(src_offset, np.float64)) / src_scale - 0.5
    return np.hstack([lin, trans[:, None]])


def extract(image: np.ndarray, region: Region) -> np.ndarray:
    """The crop ``[h, w, C]`` (uint8) of ``region`` from ``image`` ``[H, W, C]``.

    Only the region's bounding box is read. When the crop shrinks the photo by 2x or more (a face in a
    12 MP photo), that box is first reduced by an integer factor with area averaging, so the final bilinear
    warp does not alias. Parts of the crop outside the photo are filled by reflection (as FFHQ pads).
    """
    import cv2

    size = (image.shape[1], image.shape[0])
    box = region.bbox(size)
    if box is None:
        raise ValueError("the crop lies outside the image: check the face box")
    x0, y0, x1, y1 = box
    sub = image[y0:y1, x0:x1]
    k = int(region.scale // 1.0) if region.scale >= 2.0 else 1
    if k > 1:
        hk, wk = max(1, sub.shape[0] // k), max(1, sub.shape[1] // k)
        sub = cv2.resize(np.ascontiguousarray(sub[:hk * k, :wk * k]), (wk, hk), interpolation=cv2.INTER_AREA)
    m = _cv_inverse_map(region.matrix, src_offset=(x0, y0), src_scale=k)
    out = cv2.warpAffine(np.ascontiguousarray(sub), m, region.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(region.size[1], region.size[0], -1) if image.ndim == 3 else out


def feather_mask(size: tuple[int, int], feather: float = 0.08) -> np.ndarray:
    """``[h, w]`` float32 weights: 1 inside, falling smoothly (smoothstep) to exactly 0 at the crop border
    over ``feather`` of the shorter side. ``feather=0``: all ones."""
    w, h = size
    if feather <= 0:
        return np.ones((h, w), np.float32)
    f = max(feather * min(w, h), 1.0)

    def ramp(n):
        d = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n))  # distance of pixel centres to the border
        r = np.clip((d - 1.0) / f, 0.0, 1.0)  # the outermost pixel is 0: the paste stays inside the crop
        return r * r * (3 - 2 * r)

    return (ramp(h)[:, None] * ramp(w)[None, :]).astype(np.float32)


def paste(canvas: np.ndarray, crop: np.ndarray, weight: np.ndarray, region: Region,
          user_mask: np.ndarray | None = None, changed: np.ndarray | None = None) -> None:
    """Blend the edited ``crop`` back into ``canvas`` (``[H, W, 3]`` uint8, in place):
    ``canvas = (1 - a) canvas + a crop`` with ``a`` = the crop's ``weight`` mapped into the image (times
    ``user_mask``). Pixels where ``a == 0`` are not written at all, so they stay bit-identical.
    Only the crop's bounding box is touched. ``changed`` (bool ``[H, W]``), if given, is set where ``a > 0``.
    """
    import cv2

    size = (canvas.shape[1], canvas.shape[0])
    box = region.bbox(size)
    if box is None:
        return
    x0, y0, x1, y1 = box
    # image continuous -> crop continuous (the inverse of region.matrix)
    a_inv = np.linalg.inv(region.matrix[:, :2])
    inv = np.hstack([a_inv, (-a_inv @ region.matrix[:, 2])[:, None]])
    m = _cv_inverse_map(inv, dst_offset=(x0, y0))
    dsize = (x1 - x0, y1 - y0)
    up = region.scale > 1.0
    warped = cv2.warpAffine(np.ascontiguousarray(crop), m, dsize,
                            flags=(cv2.INTER_CUBIC if up else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    alpha = cv2.warpAffine(weight, m, dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    # Inside the crop's footprint the weight's outer pixels are replicated, not blended with the zero border (that
    # gave a pixel whose centre falls in the crop's outermost half pixel part of its weight, so a whole-image edit
    # left a frame of the original a few pixels wide round the photo); outside it the zero border keeps the edge
    # of a crop with no feathering anti-aliased.
    inner = cv2.warpAffine(weight, m, dsize, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    (ux, uy, u0), (vx, vy, v0) = inv.astype(np.float32)
    cw, ch = crop.shape[1], crop.shape[0]
    u = ux * xs + (uy * ys + u0)
    inside = (u >= 0) & (u <= cw)
    del u
    v = vx * xs + (vy * ys + v0)
    inside &= (v >= 0) & (v <= ch)
    del v
    alpha = np.where(inside, inner, alpha)
    if user_mask is not None:
        alpha = alpha * user_mask[y0:y1, x0:x1]
    alpha = np.clip(alpha, 0.0, 1.0)
    sel = alpha > 0
    if not sel.any():
        return
    view = canvas[y0:y1, x0:x1]
    a = alpha[..., None]
    blended = view.astype(np.float32) * (1.0 - a) + warped.reshape(view.shape).astype(np.float32) * a
    np.copyto(view, np.clip(np.rint(blended), 0, 255).astype(np.uint8), where=sel[..., None])
    if changed is not None:
        changed[y0:y1, x0:x1] |= sel
