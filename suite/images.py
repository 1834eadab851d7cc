"""Image files in and out, in one place for every command: open (size guard before decoding), convert any mode
to 8-bit RGB, the output-format check, and the atomic save.

Every reader of an image file (the generate and edit commands, training's image folder, the 3D flow, the app)
goes through :func:`open_image` / :func:`load_image`, so a missing, damaged, renamed or oversized file gives
the same sentence everywhere.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .checks import UserError, changed_settings, said_changes, warn_unrecorded
from .files import atomic_path, check_output_file

__all__ = ["DEFAULT_MAX_PIXELS", "check_size", "check_same_aspect", "open_image", "load_image", "to_rgb", "oriented_size",
           "check_output_format", "output_paths", "save_image_atomic", "open_upload", "UPLOAD_FORMATS"]

#: Default limit on input size, in pixels (120 MP: above today's 108 MP phone sensors, far below what
#: would exhaust memory). Larger files are refused before decoding (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 120_000_000


def check_size(width: int, height: int, max_pixels: int | None, what: str = "image",
               fix: str = "downscale it first, or raise the limit with --max-megapixels") -> None:
    """Refuse images above ``max_pixels`` (a decompression bomb, or simply too large) in one sentence."""
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"the {what} is {width}x{height} = {_megapixels(width * height)} megapixels, more than the limit of "
            f"{_megapixels(max_pixels)} megapixels (decompression-bomb guard): {fix}"
        )


def _megapixels(pixels: int) -> str:
    """``12``, ``0.5``, ``0.004``: enough digits that a small limit does not read as 0."""
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{float(f'{pixels / 1e6:.2g}'):f}".rstrip("0").rstrip(".")


def open_image(path: str | os.PathLike, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and decode an image file (first frame), checking its size from the header BEFORE decoding.

    The image is returned as stored (mode, EXIF orientation not applied): :func:`load_image` gives the upright
    RGB pixels; editing keeps alpha and ICC profile (:mod:`editing.images`)."""
    path = Path(path).expanduser()  # "~/m.png" from Python: it "did not exist"
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"the {what} {str(path)!r} is a folder: give an image file")
        if path.exists():  # a FIFO, a device such as /dev/zero, a socket: reading it could block or never end
            raise ValueError(f"the {what} {str(path)!r} is not a regular file (a pipe, device or socket): give an "
                             f"image file")
        raise ValueError(f"the {what} {str(path)!r} does not exist: check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(_bomb(what, path)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as err:
        raise ValueError(_unreadable(what, path, err)) from None
    check_size(*im.size, max_pixels, f"{what} {str(path)!r}")  # readable but too large: its own sentence
    try:
        im.load()
        return im
    except Image.DecompressionBombError:
        raise ValueError(_bomb(what, path)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as err:
        # ValueError: e.g. PIL's "Decompressed Data Too Large" for a huge PNG text chunk
        raise ValueError(_unreadable(what, path, err)) from None


def check_max_megapixels(value: float, flag: str = "--max-megapixels") -> float:
    """A megapixel limit that can take effect: positive, and at most what PIL decodes at all (twice its
    ``MAX_IMAGE_PIXELS``, 179 MP; --max-megapixels 300 let a 200 MP photo through to PIL's own refusal)."""
    from .checks import UserError

    most = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    if not value > 0:
        raise UserError(f"{flag} must be positive, got {value}")
    if most and value > most:
        shown = math.floor(most * 100) / 100  # rounded down: the value it names is accepted
        raise UserError(f"{flag} is {value:g}, but images over {shown:g} megapixels are not decoded at all (PIL's "
                        f"decompression-bomb guard): give at most {shown:g}, and downscale larger photos first")
    return value


def _bomb(what: str, path: Path) -> str:
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return (f"the {what} {str(path)!r} claims more than {limit:.0f} megapixels, too large to decode safely "
            f"(decompression-bomb guard): downscale it first")


def _unreadable(what: str, path: Path, err: BaseException) -> str:
    return f"the {what} {str(path)!r} could not be read as an image ({err}): give a PNG, JPEG or WebP file"


def load_image(path: str | os.PathLike, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file as upright 8-bit RGB (EXIF orientation applied, transparency on white)."""
    im = open_image(path, what, max_pixels)
    try:
        return to_rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"the {what} {str(path)!r} could not be converted to RGB ({err}): save it as an RGB PNG "
                         f"or JPEG") from None


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")  # PIL's 16-bit grayscale modes (each byte order)
HIGH_DEPTH_GRAY = (*SIXTEEN_BIT, "I", "F")  # grayscale of more than 8 bits: 16-bit, 32-bit integers, floats


def to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grayscale image as 8-bit ``L``: 16-bit modes (``I;16``...) over 0-65535; 32-bit integers
    (``I``) and floats (``F``), whose range the mode does not say, by the range their values show: 0-1 (floats only),
    0-255, 0-65535, else 0 to their maximum (NaN and infinities as 0). Others as they are. (A float TIFF of 0-1 values
    came out black, and 32-bit integers above 65535 white.)"""
    if im.mode in HIGH_DEPTH_GRAY:
        arr = np.asarray(im)  # its own numbers: 2 or 4 bytes a pixel
        if im.mode == "F":
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        hi = (65535.0 if im.mode in SIXTEEN_BIT else 1.0 if im.mode == "F" and top <= 1.0 else 255.0 if top <= 255
              else 65535.0 if top <= 65535 else top)
        out = np.empty(arr.shape, np.uint8)
        rows = max(1, (1 << 22) // max(1, arr.shape[1]))  # scaled in bands of about 4 M pixels: a 120 MP photo took
        for r in range(0, arr.shape[0], rows):  # 2.9 GB at once in float64 copies, now about 0.5 GB
            out[r:r + rows] = np.clip(arr[r:r + rows] / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(out)  # 8-bit L
    return im


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def as_rgba(im: Image.Image) -> Image.Image | None:
    """``im`` as 8-bit RGBA when it has transparency: an alpha channel, or a transparent colour (PNG's tRNS chunk,
    which P, 1, L, RGB and 16-bit grayscale images carry as ``info["transparency"]``); None when it has none."""
    if im.mode in ALPHA_MODES:
        return im.convert("RGBA")
    key = im.info.get("transparency")
    if key is None:
        return None
    if im.mode in ("P", "1", "L", "RGB"):  # PIL applies the key itself
        return im.convert("RGBA")
    if im.mode in (*SIXTEEN_BIT, "I") and isinstance(key, int):
        rgba = np.array(to_8bit(im).convert("RGBA"))
        # the key compared at full depth, not rounded; uint8 (an int64 mask took 8 bytes a pixel)
        rgba[..., 3] = np.where(np.asarray(im) == key, np.uint8(0), np.uint8(255))
        return Image.fromarray(rgba)
    return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (transparency laid on white, grayscale, CMYK, 16-bit) as 8-bit RGB."""
    rgba = as_rgba(im)
    if rgba is not None:
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return to_8bit(im).convert("RGB")


def check_same_aspect(size: tuple[int, int], image_size: tuple[int, int], what: str = "mask") -> None:
    """A mask (or other companion image) may be a scaled copy of the image, never another aspect ratio (it would be
    stretched onto the wrong pixels): one sentence if the ratios differ by more than a pixel."""
    (w, h), (iw, ih) = size, image_size
    if (w, h) != (iw, ih) and abs(w * ih - h * iw) > max(w, h, iw, ih):
        raise ValueError(f"the {what} is {w}x{h} but the image is {iw}x{ih}: give a {what} with the image's size, "
                         f"or its aspect ratio (a scaled copy)")


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as the user sees ``im``: swapped when its EXIF orientation turns it by 90 degrees."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF = no orientation
        orientation = 1
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def has_transparency(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bool:
    """Whether an image file has transparency (an alpha channel or a transparent colour) that is not opaque
    everywhere (a cut-out), which :func:`read_mask` would read as its mask."""
    rgba = as_rgba(open_image(path, "image", max_pixels))
    return rgba is not None and rgba.getchannel("A").getextrema()[0] < 255


def _array_mask(arr: np.ndarray, what: str) -> Image.Image:
    """A mask given as an array, as a grey PIL image (1 or True = the region)."""
    a = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:  # RGB or RGBA: as the PIL image
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[-1] == 3 else "RGBA")
    if a.ndim != 2:
        raise ValueError(f"the {what} array must be [height, width] (or uint8 RGB or RGBA), got {list(arr.shape)}")
    if a.dtype == np.uint8 and a.size and a.max() <= 1:  # 0 and 1 (bool.astype(uint8)), not 1/255 grey: invisible
        a = a * 255
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if a.size == 0 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"a {what} array of floats holds values in [0, 1] (1 = the region): scale it, e.g. "
                             f"array / 255")
        a = (a * 255 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"the {what} array must be uint8 (0-255), bool or floats in [0, 1], got {a.dtype}: convert "
                         f"it, e.g. array.astype(numpy.uint8)")
    return Image.fromarray(np.ascontiguousarray(a), "L")


def read_mask(source, size: tuple[int, int], what: str = "mask", binary: bool = False,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The one mask rule of the suite (editing, 3D, the app): ``[H, W]`` float32 in [0, 1] at ``size`` (``(width,
    height)``) from a file, a PIL image or a ``[H, W]`` array (uint8 0-255 or 0/1, bool, floats in [0, 1]; uint8
    RGB or RGBA as the PIL image).

    White marks the region (the part to edit, the object), black the rest, gray blends. A mask with any transparency
    is read by its alpha instead (a cut-out or a drawing: opaque = region, transparent = not). EXIF orientation is
    applied, as to the photo. A mask made on a scaled copy of the image (the same aspect ratio) is resized; another
    aspect ratio is refused in one sentence, never stretched. ``binary``: 0 or 1 (at 0.5, nearest-neighbour
    resize), and an empty mask is refused."""
    if isinstance(source, np.ndarray):  # it was read as a path: pathlib's TypeError
        source = _array_mask(source, what)
    im = open_image(source, what, max_pixels) if not isinstance(source, Image.Image) else source
    im = ImageOps.exif_transpose(im)
    rgba = as_rgba(im) or to_8bit(im).convert("RGBA")  # a transparent colour (tRNS) is transparency too
    alpha = rgba.getchannel("A")
    gray = alpha if alpha.getextrema()[0] < 255 else rgba.convert("L")
    if gray.size != tuple(size):
        check_same_aspect(gray.size, tuple(size), what)
        gray = gray.resize(tuple(size), Image.Resampling.NEAREST if binary else Image.Resampling.BILINEAR)
    m = np.asarray(gray, dtype=np.float32) / 255.0
    if binary:
        m = (m > 0.5).astype(np.float32)
        if m.mean() < 0.005:
            where = f" {str(source)!r}" if not isinstance(source, Image.Image) else ""
            raise ValueError(f"the {what}{where} is empty (no white or opaque pixels): white marks the region")
    return m


# ----------------------------------------------------------------------------------------------------------
# output
def check_output_format(path: str | os.PathLike) -> str:
    """PIL's format name for an output path's extension, or one sentence naming the formats to use."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image format {path.suffix!r} for {str(path)!r}: use .png, .jpg or .webp")
    try:  # PIL knows formats it cannot write (.h5, .fits) or cannot write in colour (.xbm): found now, not after sampling
        Image.new("RGB", (2, 2)).save(io.BytesIO(), format=fmt)
    except (KeyError, OSError, ValueError) as err:
        raise ValueError(f"the image format {path.suffix!r} cannot store a colour image ({fmt}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}): use .png, .jpg or .webp "
                         f"for {str(path)!r}") from None
    return fmt


MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}  # the most pixels a side the format stores (libwebp and libjpeg refuse more)


def check_output_size(path: str | os.PathLike, width: int, height: int) -> None:
    """One sentence, before any work, when an output of ``width`` x ``height`` is larger than ``path``'s format can
    store (a 17,000 px panorama as WebP failed only at the save, after the whole edit)."""
    fmt = check_output_format(path)
    most = MAX_SIDE.get(fmt)
    if most is not None and max(width, height) > most:
        raise UserError(f"{Path(path).suffix} stores at most {most} pixels a side, and the output is {width}x{height}: "
                        f"use .png for {str(path)!r}")


def check_not_an_input(paths, output, inputs: dict, what: str = "result") -> None:
    """One sentence when one of the output ``paths`` is one of the command's input files (``{flag: path or None}``):
    the ``what`` would replace the user's original."""
    for flag, given in inputs.items():
        if given and Path(given).exists() and any(p.exists() and p.samefile(given) for p in paths):
            raise UserError(f"--output {str(output)!r} is the {flag} file itself: the {what} would replace your "
                            f"original; choose another --output")


def output_paths(output: str | os.PathLike, n: int) -> list[Path]:
    """The files an ``--output`` names for ``n`` images (``NAME-0.png ...`` when ``n > 1``), checked before any
    work: the folder exists and is writable, no path is an existing folder, and the format is known."""
    out = check_output_file(output)
    check_output_format(out)
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]
    for p in paths:
        check_output_file(p)
    return paths


def _stores_alpha(fmt: str) -> bool:
    """Whether PIL can write a transparent image in format ``fmt`` (PNG, WebP, TIFF: yes; JPEG and its .jfif/.jpe
    /.mpo names, EPS, PCX: no)."""
    try:
        Image.new("RGBA", (2, 2)).save(io.BytesIO(), format=fmt)
    except (KeyError, OSError, ValueError):
        return False
    return True


SETTINGS_KEY = "in-domain-suite"  # a PNG text chunk (a JPEG comment): what an image was made with, as JSON
IMAGE_DESCRIPTION = 0x010E  # the EXIF/TIFF tag that holds the record in a WebP or a TIFF
RECORDED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")  # the formats save_image_atomic writes the record into
QUALITY = {"JPEG": dict(quality=95, subsampling=0), "WEBP": dict(lossless=True, exact=True)}
"""How outputs are encoded: WebP losslessly (exact, as PNG, the colour under transparent pixels too), JPEG at
quality 95 with full chroma. At PIL's defaults (quality 75, 4:2:0 chroma; WebP lossy) a quality-95 photo came back
with the pixels an edit never touched 2.6 levels off on average (35.7 dB), so only PNG kept them exactly."""


def save_image_atomic(image: Image.Image, path: str | os.PathLike, settings: dict | None = None) -> Path:
    """Save to a temporary file in the same folder, then rename: no half-written file on failure. A transparent
    image is laid on white where the format cannot store transparency (JPEG). ``settings``: recorded in the file
    (PNG, JPEG, WebP and TIFF; :func:`read_image_settings`). JPEG and WebP are saved at :data:`QUALITY`."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"the output folder {str(path.parent)!r} does not exist: create it or choose another --output")
    fmt = check_output_format(path)
    icc = image.info.get("icc_profile")  # PNG keeps it by itself; JPEG and WebP only when passed
    if image.mode in ("RGBA", "LA") and not _stores_alpha(fmt):
        image = to_rgb(image)
    extra = {"icc_profile": icc} if icc else {}
    if settings is not None:
        import json

        text = json.dumps({SETTINGS_KEY: settings}, sort_keys=True)
        if fmt == "PNG":
            from PIL.PngImagePlugin import PngInfo

            extra["pnginfo"] = PngInfo()
            extra["pnginfo"].add_text(SETTINGS_KEY, text)
        elif fmt == "JPEG":
            extra["comment"] = text.encode("utf-8")
        elif fmt == "WEBP":  # its EXIF's image description (no comment field)
            exif = Image.Exif()
            exif[IMAGE_DESCRIPTION] = text
            extra["exif"] = exif.tobytes()
        elif fmt == "TIFF":
            extra["description"] = text
    extra.update(QUALITY.get(fmt, {}))
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp, format=fmt, **extra)
    return path


def read_image_settings(path: str | os.PathLike) -> dict | None:
    """The settings :func:`save_image_atomic` recorded in an image file; None where it holds none (an image this
    suite did not write, a format that holds none such as BMP, an unreadable file)."""
    import json

    try:
        with Image.open(path) as im:
            raw = im.info.get(SETTINGS_KEY) or im.info.get("comment") or im.getexif().get(IMAGE_DESCRIPTION)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        data = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - unreadable, too large (DecompressionBombError), not JSON: no record
        return None
    if isinstance(data, dict) and SETTINGS_KEY in data and isinstance(data[SETTINGS_KEY], dict):
        return data[SETTINGS_KEY]
    return None


def check_set_files(paths: list, settings: dict, resume: bool, equivalent: dict | None = None) -> None:
    """A set's existing files (``NAME-i.png``, names the tool made up): with ``--resume``, each must have been made
    with the same settings (else the set would mix two runs; one without a record, from a version of the suite
    before the record, is kept with a warning); without it, each must be one this suite wrote (a user's
    ``photo-1.png`` was silently replaced). The single ``--output`` file is replaced, as any command does.
    ``equivalent``: ``{setting: values}`` taken as the same (as :func:`suite.batch.check_same_batch`'s)."""
    import logging

    warned = set()
    for p in paths:
        if not p.is_file() or (len(paths) == 1 and not resume):
            continue
        made = read_image_settings(p)
        if made is None:  # a format that holds no record (BMP, GIF) cannot tell this suite's file from the user's
            if resume:
                logging.getLogger("suite").warning("--resume: %s holds no record of its settings (made by an earlier "
                                                   "version?): kept as it is, unchecked", p.name)
                continue
            cannot = check_output_format(p) not in RECORDED_FORMATS
            raise UserError(f"{str(p)!r} is a file of this set's name that holds no record of this suite (a file of "
                            f"yours, or one an earlier version made"
                            f"{f'; a {p.suffix} file cannot hold one' if cannot else ''}), and the set would replace "
                            f"it: move or delete it, or choose another --output"
                            f"{' (.png, .jpg, .webp or .tif hold the record)' if cannot else ''}")
        if resume:
            changed = changed_settings(made, settings, equivalent)
            if changed:
                raise UserError(f"--resume: {p.name} was made with other settings "
                                f"({said_changes(made, settings, changed)}), so the set would mix two runs: give the "
                                f"same settings, or another --output")
            warn_unrecorded(made, settings, warned)  # once per set


# ----------------------------------------------------------------------------------------------------------
# uploads (the app): bytes or a server-side path, a byte limit, and only the formats a browser shows
UPLOAD_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}


# uploads
def open_upload(source, what: str, max_megapixels: float, max_bytes: int | None = None, keep_alpha: bool = False):
    """Open an uploaded image (a path or bytes) and return it as RGB with EXIF orientation applied (``keep_alpha``:
    as RGBA when it has transparency, which a mask's rule reads: :func:`read_mask`).

    Refused with one sentence each: an empty file, a file over ``max_bytes``, anything PIL cannot read (a text
    file renamed ``.png``), a format other than PNG/JPEG/WebP, more than ``max_megapixels`` (checked from the
    header, before any pixel is decoded, so a decompression bomb never reaches memory).
    """
    if isinstance(source, bytes | bytearray):
        data, name = bytes(source), what
        size = len(data)
        opener = io.BytesIO(data)
    else:
        path = Path(source)
        name = path.name
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"the {what} upload could not be found on the server: upload it again") from None
        opener = path
    if size == 0:
        raise UserError(f"the {what} {name!r} is an empty file (0 bytes): upload a PNG, JPEG or WebP image")
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"the {what} {name!r} is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB "
                        "this app accepts: upload a smaller file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(opener)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            raise UserError(f"the {what} {name!r} is not an image this app can read (a renamed or damaged file?): "
                            "upload a PNG, JPEG or WebP image") from None
        with im:
            if im.format not in UPLOAD_FORMATS:
                raise UserError(f"the {what} {name!r} is a {im.format} file: upload a PNG, JPEG or WebP image")
            w, h = im.size
            if w * h > max_megapixels * 1e6:
                raise UserError(f"the {what} {name!r} is {w}x{h} ({w * h / 1e6:.0f} megapixels), more than the "
                                f"{max_megapixels:g} megapixels this app accepts: downscale it first "
                                "(or start the app with a larger --max-megapixels)")
            try:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgba = as_rgba(im) if keep_alpha else None  # a 16-bit image scaled, not clipped
                return rgba if rgba is not None else to_rgb(im)
            except (OSError, ValueError, SyntaxError):
                raise UserError(f"the {what} {name!r} is damaged (its pixels could not be decoded): "
                                "upload another PNG, JPEG or WebP image") from None


def tile_grid(rows: list[list[Image.Image]], labels: list[str], col_labels: list[str] | None = None, scale: int = 2,
              label_w: int = 110) -> Image.Image:
    """Images in rows (each scaled by ``scale``, nearest neighbour), a label left of each row and optional labels
    over the columns, on white."""
    from PIL import ImageDraw

    t = rows[0][0].size[0] * scale
    top = 16 if col_labels else 0
    img = Image.new("RGB", (label_w + t * max(len(r) for r in rows), top + t * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(col_labels or []):
        draw.text((label_w + j * t + 3, 2), name, fill="black")
    for i, (row, name) in enumerate(zip(rows, labels)):
        draw.text((4, top + i * t + t // 2 - 6), name, fill="black")
        for j, im in enumerate(row):
            img.paste(im.resize((t, t), Image.NEAREST), (label_w + j * t, top + i * t))
    return img
