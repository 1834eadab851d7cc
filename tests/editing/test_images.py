"""Photos as people have them: modes, alpha, EXIF orientation, decompression bombs, mask sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
from editing import edit_photo
from editing.images import load_mask, load_photo, prepare_photo

from .common import FixedDetector, face_at, photo_array, png_header_only


def test_modes_are_converted():
    rgb = photo_array(20, 30, seed=11)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(prepare_photo(Image.fromarray(gray, "L")).rgb, np.repeat(gray[..., None], 3, 2))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    assert np.array_equal(prepare_photo(sixteen).rgb[..., 0], gray)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(prepare_photo(cmyk).rgb.astype(int) - rgb).max() <= 1
    alpha = np.full((20, 30), 255, np.uint8)
    alpha[:, :10] = 0
    p = prepare_photo(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    assert (p.rgb[:, :10] == 255).all() and np.array_equal(p.rgb[:, 10:], rgb[:, 10:])  # on white
    assert np.array_equal(p.alpha, alpha)


def test_float_and_32_bit_grayscale_keep_their_tones():
    """A float TIFF (mode F) of 0-1 values came out black (PIL's conversion clips to 0 or 1 of 255), and 32-bit
    integers above 65535 white: each is scaled by the range its values show."""
    gray = np.asarray(Image.fromarray(photo_array(20, 30, seed=13)).convert("L"))
    for values in (gray / 255.0, gray.astype(np.float64), gray * 257.0):
        floats = Image.fromarray(values.astype(np.float32), "F")
        assert np.abs(prepare_photo(floats).rgb[..., 0].astype(int) - gray).max() <= 1
    dark = Image.fromarray((gray // 2).astype(np.uint16))  # a dark 16-bit photo stays dark (its mode says 16 bits)
    assert dark.mode == "I;16" and prepare_photo(dark).rgb.max() <= 1
    wide = Image.fromarray((gray.astype(np.int32) * 1_000_000), "I")
    assert np.abs(prepare_photo(wide).rgb[..., 0].astype(int) - gray.astype(int) * 255 // int(gray.max())).max() <= 1


def test_rgba_output_keeps_alpha_and_untouched_pixels(pipe):
    rgb = photo_array(96, 128, seed=12)
    alpha = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))
    rgba = np.dstack([rgb, alpha])
    res = edit_photo(pipe, Image.fromarray(rgba, "RGBA"), strength=1.0, steps=1, whole_image=True,
                     mask=Image.fromarray((np.arange(128)[None, :].repeat(96, 0) > 64).astype(np.uint8) * 255))
    out = np.asarray(res.images[0])
    assert res.images[0].mode == "RGBA"
    assert np.array_equal(out[:, :64], rgba[:, :64]) and np.array_equal(out[..., 3], alpha)


def test_strength_zero_gives_the_photo_itself_without_running_the_model(pipe, monkeypatch):
    """Strength 0 "keeps the photo": bit-identical (alpha included), not its round trip through the VAE, and no
    model runs; the faces are still found and reported."""
    rgb = photo_array(96, 128, seed=15)
    rgba = np.dstack([rgb, np.tile(np.linspace(40, 255, 128).astype(np.uint8), (96, 1))])
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("strength 0 ran the pipeline"))
    res = edit_photo(pipe, Image.fromarray(rgba, "RGBA"), strength=0.0, num_images=2,
                     detector=FixedDetector(face_at((60.0, 48.0), 10.0)))
    assert len(res.images) == 2 and all(np.array_equal(np.asarray(im), rgba) for im in res.images)
    assert len(res.face_boxes) == 1


def test_an_edit_that_changes_nothing_gives_a_partly_transparent_photo_back():
    """The network sees the photo laid on white; its colours are taken off white again where the photo is partly
    transparent, so a viewer does not lay them on white twice: (200, 30, 30) at alpha 128 came back (227, 142,
    142), washed out, from an edit that changed nothing."""
    rgb = photo_array(40, 64, seed=14)
    alpha = np.tile(np.linspace(32, 255, 64).round().astype(np.uint8), (40, 1))
    photo = prepare_photo(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    out = np.asarray(photo.output(photo.rgb.copy(), np.ones(alpha.shape, bool))).astype(int)
    assert np.array_equal(out[..., 3], alpha)
    tolerance = np.ceil(0.5 * 255 / alpha.astype(float))[..., None] + 1  # the 8-bit white blend, undone
    assert (np.abs(out[..., :3] - rgb) <= tolerance).all()

def test_exif_orientation_is_applied_and_kept(pipe, tmp_path):
    stored = photo_array(60, 80, seed=13)  # stored 80 wide x 60 high, displayed rotated: 60 x 80
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    photo = load_photo(path)
    assert photo.size == (60, 80)
    shown = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(photo.rgb, shown)
    with Image.open(path) as im:
        res = edit_photo(pipe, im, strength=1.0, steps=1, detector=FixedDetector(face_at((30.0, 30.0), 5.0)))
    out = np.asarray(res.images[0])
    assert out.shape == (80, 60, 3)
    assert np.array_equal(out[60:], shown[60:])  # below the face crop: the upright input, untouched


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))  # 2.5 gigapixels claimed in a few bytes
    with pytest.raises(ValueError, match="megapixels"):
        load_photo(bomb)
    with pytest.raises(ValueError, match="megapixels"):
        load_photo(bomb, max_pixels=None)  # PIL's own guard still refuses it
    ok = tmp_path / "ok.png"
    Image.fromarray(photo_array(40, 50)).save(ok)
    with pytest.raises(ValueError, match="limit"):
        load_photo(ok, max_pixels=1000)


def test_mask_size_must_match(tmp_path):
    assert load_mask(Image.new("L", (50, 40), 255), (100, 80)).shape == (80, 100)  # same aspect: scaled
    with pytest.raises(ValueError, match="mask"):
        load_mask(Image.new("L", (50, 50), 255), (100, 80))
    transparent = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    assert load_mask(transparent, (10, 10)).max() == 0  # transparent = keep


def test_a_mask_array_is_read_as_its_grey_image_and_a_bad_one_is_one_sentence():
    """``edit_photo(mask=array)`` was pathlib's TypeError: an array was read as a path."""
    grey = np.zeros((8, 10), np.uint8)
    grey[2:6, 3:7] = 255
    grey[0, 0] = 128
    want = load_mask(Image.fromarray(grey), (10, 8))
    assert np.array_equal(load_mask(grey, (10, 8)), want)
    assert np.array_equal(load_mask(grey[..., None], (10, 8)), want)
    assert np.array_equal(load_mask(grey == 255, (10, 8)), want * (want == 1))  # bool: region or not
    assert np.allclose(load_mask(grey / 255.0, (10, 8)), want, atol=1 / 255)
    binary = (grey == 255).astype(np.uint8)  # 0 and 1, as bool.astype(uint8) gives: the region, not 1/255 grey
    assert np.array_equal(load_mask(binary, (10, 8)), load_mask(grey == 255, (10, 8)))
    rgb = np.repeat(grey[..., None], 3, -1)
    assert np.array_equal(load_mask(rgb, (10, 8)), load_mask(Image.fromarray(rgb), (10, 8)))
    for bad, phrase in ((grey.astype(np.int64), "must be uint8 \\(0-255\\), bool or floats"),
                        (grey.astype(np.float32), "holds values in \\[0, 1\\]"),
                        (np.zeros((8, 10, 2), np.uint8), "must be \\[height, width\\]")):
        with pytest.raises(ValueError, match=phrase):
            load_mask(bad, (10, 8))
