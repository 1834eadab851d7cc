"""Foreground mask of an object on a plain background, and the reference view Zero-1-to-3 expects.

Method (``"auto"``, offline, no model): the background colour is the median of the image border; each
pixel's distance to it (RGB, 0-255) is thresholded at Otsu's level, or lower where the backdrop is plain: at
the border's own spread (median + 6 robust standard deviations), never below 25 levels, so that a pale object
on a pale backdrop (white porcelain on grey) is not cut where it is bright; the largest connected component is
kept and its holes filled. It works for product-style shots on a plain backdrop, which
stage 1 asks for (the prompt gets ", plain white background"). It refuses images without a clear foreground
(no separation, or a "foreground" touching most of the border). ``"center"``: a centred disc (for tests and the
tiny preset, whose random models draw no object). Or pass your own mask (white = object).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from suite.images import read_mask

MIN_CONTRAST = 25.0


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, float(values.max()) + 1e-6))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_mask(image: Image.Image, method: str = "auto") -> Image.Image:
    """A binary mask (mode ``L``, 255 = object) of ``image``; one clear error if there is no clear object."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    if method == "center":
        yy, xx = np.mgrid[0:h, 0:w]
        disc = ((yy + 0.5 - h / 2) / (0.35 * h)) ** 2 + ((xx + 0.5 - w / 2) / (0.35 * w)) ** 2 <= 1.0
        return Image.fromarray((disc * 255).astype(np.uint8), "L")
    if method != "auto":
        raise ValueError(f"unknown mask method {method!r}: use 'auto' or 'center', or pass --mask FILE")
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(rgb - bg, axis=-1)
    border_dist = np.linalg.norm(border - bg, axis=-1)
    spread = np.median(border_dist) + 6 * 1.4826 * np.median(np.abs(border_dist - np.median(border_dist)))
    level = max(min(_otsu(dist), spread), MIN_CONTRAST)
    fg = dist > level
    labels, n = ndimage.label(fg)
    if n == 0:
        raise ValueError("could not find a clear foreground object in the image (it looks like plain background): "
                         "use an image of one object on a plain background, or pass --mask FILE")
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    obj = ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))
    area = obj.mean()
    edge = np.concatenate([obj[0], obj[-1], obj[:, 0], obj[:, -1]]).mean()
    if area < 0.01 or area > 0.9 or edge > 0.25:
        raise ValueError(f"could not find a clear foreground object in the image (object covers {area:.0%} of it "
                         f"and {edge:.0%} of its border): use an image of one object on a plain background, or pass "
                         f"--mask FILE (white = object)")
    return Image.fromarray((obj * 255).astype(np.uint8), "L")


def load_mask(path, size: tuple[int, int]) -> Image.Image:
    """A user mask file as a binary ``L`` mask of ``size`` (white or opaque = the object): the suite's one mask rule
    (:func:`suite.images.read_mask`; another aspect ratio than the image's is refused, not stretched)."""
    m = read_mask(path, size, "mask (--mask)", binary=True)
    return Image.fromarray((m * 255).astype(np.uint8), "L")


def _frame_box(mask: Image.Image, image_size: tuple[int, int], size: int, fill: float):
    """The object's box in the image ``(y0, y1, x0, x1)``, its mask inside it, and the frame's ``(nh, nw, top,
    left)``: the box scaled so that its larger side is ``fill`` of a ``size`` frame, centred."""
    m = (np.asarray(mask.convert("L").resize(image_size, Image.NEAREST), dtype=np.float32) / 255.0) > 0.5
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("the mask is empty: white marks the object")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = fill * size / max(y1 - y0, x1 - x0)
    nh, nw = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    return (y0, y1, x0, x1), m[y0:y1, x0:x1], (nh, nw, (size - nh) // 2, (size - nw) // 2)


def reference_view(image: Image.Image, mask: Image.Image, size: int, fill: float = 0.8) -> tuple[Image.Image, Image.Image]:
    """Centre the object, scale its larger side to ``fill`` of a ``size x size`` frame, composite on white
    (what Zero-1-to-3 was trained on). Returns ``(rgb, mask)`` at ``size``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    (y0, y1, x0, x1), crop_m, (nh, nw, top, left) = _frame_box(mask, image.size, size, fill)
    crop = rgb[y0:y1, x0:x1] * crop_m[..., None] + (1.0 - crop_m[..., None])
    crop_im = Image.fromarray((crop * 255 + 0.5).astype(np.uint8)).resize((nw, nh), Image.LANCZOS)
    crop_mask = Image.fromarray((crop_m * 255).astype(np.uint8)).resize((nw, nh), Image.BILINEAR)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out_m = Image.new("L", (size, size), 0)
    out.paste(crop_im, (left, top))
    out_m.paste(crop_mask, (left, top))
    return out, out_m


def reference_depth(near: np.ndarray, mask: Image.Image, size: int, fill: float = 0.8) -> np.ndarray:
    """The input image's depth ``near [H, W]`` (bright = near) framed as :func:`reference_view` frames the image:
    float32 ``[size, size]``, 0 off the object."""
    h, w = near.shape
    (y0, y1, x0, x1), crop_m, (nh, nw, top, left) = _frame_box(mask, (w, h), size, fill)
    def resized(a):
        return np.asarray(Image.fromarray(a.astype(np.float32)).resize((nw, nh), Image.BILINEAR))

    on = resized(crop_m.astype(np.float32))  # the object's depth only: the backdrop is not blended in at its edge
    crop = np.where(on > 1e-3, resized(near[y0:y1, x0:x1] * crop_m) / np.maximum(on, 1e-3), 0.0)
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + nh, left:left + nw] = crop
    return out
