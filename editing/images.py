"""Photos as people have them: any file PIL reads, any mode, EXIF orientation, very large or hostile files.

:func:`load_photo` opens a file (refusing decompression bombs before decoding a pixel) and
:func:`prepare_photo` turns any PIL image into a :class:`Photo`: the upright (EXIF-transposed) 8-bit RGB
pixels the network sees, plus what is needed to give the output back in the input's form (alpha channel,
ICC profile). :func:`load_mask` reads a user mask (white = edit, black or transparent = keep).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from suite.images import DEFAULT_MAX_PIXELS, HIGH_DEPTH_GRAY, as_rgba, check_size, open_image, read_mask, to_8bit


@dataclass
class Photo:
    """An input photo, upright, as 8-bit RGB for the network plus what the output needs.

    ``rgb``: ``[H, W, 3]`` uint8, EXIF orientation applied, transparency composited on white, CMYK / 16-bit /
    grayscale converted. ``alpha``: ``[H, W]`` uint8 or None (the input's own alpha, restored in the output
    together with the untouched pixels' original colour values ``rgb_raw``). ``icc_profile``: the input's
    profile when its RGB values are kept as they are (RGB/RGBA inputs), so the output is shown in the same
    colours.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    rgb_raw: np.ndarray | None = None
    icc_profile: bytes | None = None
    mode: str = "RGB"

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as the user sees the photo (after EXIF orientation)."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def output(self, rgb: np.ndarray, changed: np.ndarray) -> Image.Image:
        """The output image in the input's form: ``rgb`` where ``changed``, the input's own pixels elsewhere
        (bit-identical, alpha included). ``rgb`` must equal :attr:`rgb` wherever ``changed`` is False (as
        :func:`editing.align.paste` guarantees: it never writes there)."""
        if self.alpha is None:
            im = Image.fromarray(rgb if rgb is not self.rgb else rgb.copy())
        else:
            raw = self.rgb_raw if self.rgb_raw is not None else self.rgb
            # The network saw the colours laid on white; a viewer lays them on white again by alpha, so where the
            # photo is partly transparent the edit's colours are taken off white first (an edit that changes
            # nothing gives the input back, not a paler copy of it).
            a = self.alpha[..., None].astype(np.float32) / 255.0
            unlaid = (rgb.astype(np.float32) - (1.0 - a) * 255.0) / np.maximum(a, 1e-6)
            edited = np.where(a > 0, np.clip(np.rint(unlaid), 0, 255).astype(np.uint8), rgb)
            out = np.where(changed[..., None], edited, raw)
            im = Image.fromarray(np.dstack([out, self.alpha]))
        if self.icc_profile:
            im.info["icc_profile"] = self.icc_profile
        return im


def load_photo(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Photo:
    """Read a photo file as a :class:`Photo` (see :func:`prepare_photo`)."""
    return prepare_photo(open_image(path, "image", max_pixels), max_pixels)


def prepare_photo(im: Image.Image, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Photo:
    """Any PIL image -> :class:`Photo`: EXIF orientation applied, then the mode converted to 8-bit RGB.

    * RGBA / LA / a transparent colour (PNG's tRNS, in P, L, RGB or 16-bit images): composited on white for the
      network; alpha and the original colour values are kept for the output.
    * L, 1, P, I: expanded to gray RGB. I;16 (16-bit): scaled by 1/257 to 8 bits.
    * CMYK (and other colour spaces): converted with the embedded ICC profile to sRGB when there is one
      (littlecms), else with PIL's standard conversion.
    """
    if not isinstance(im, Image.Image):
        raise ValueError(f"the image must be a PIL image, got {type(im).__name__}: load it with PIL.Image.open")
    check_size(*im.size, max_pixels)
    im = ImageOps.exif_transpose(im)
    icc = im.info.get("icc_profile")
    rgba = as_rgba(im)  # an alpha channel or a transparent colour (PNG's tRNS)
    if rgba is not None:
        arr = np.asarray(rgba)
        white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return Photo(rgb=np.asarray(white).copy(), alpha=arr[..., 3].copy(), rgb_raw=arr[..., :3].copy(),
                     icc_profile=icc if im.mode in ("RGBA", "RGBa", "RGB") else None, mode=im.mode)
    if im.mode in HIGH_DEPTH_GRAY:  # 16-bit over 0-65535, 32-bit and floats by their range (suite.images.to_8bit)
        gray = np.asarray(to_8bit(im))
        return Photo(rgb=np.repeat(gray[..., None], 3, axis=2), mode=im.mode)
    if im.mode == "RGB":
        return Photo(rgb=np.asarray(im).copy(), icc_profile=icc, mode=im.mode)
    if im.mode not in ("L", "1", "P") and icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            im_rgb = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            return Photo(rgb=np.asarray(im_rgb).copy(), mode=im.mode)
        except Exception:  # noqa: BLE001 - a broken profile falls back to PIL's standard conversion
            pass
    try:
        converted = im.convert("RGB")
    except (ValueError, OSError):
        raise ValueError(f"images in mode {im.mode} cannot be converted to RGB: save it as an RGB PNG or JPEG") from None
    return Photo(rgb=np.asarray(converted).copy(), mode=im.mode)


def load_mask(source, size: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A user mask as ``[H, W]`` float32 weights in [0, 1] at the photo's ``size``: the suite's one mask rule
    (:func:`suite.images.read_mask`: white = edit, black = keep, gray = blend; transparent = keep; a scaled copy is
    resized, another aspect ratio refused)."""
    return read_mask(source, size, "mask", max_pixels=max_pixels)
