"""suite.checks (the one place for number checks) and suite.images (the one place that reads image files)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from suite.checks import UserError, check_finite, check_int, check_range, finite_float, int_at_least
from suite.images import load_image, open_upload, output_paths, save_image_atomic


@pytest.mark.parametrize("value,ok", [(3, 3), (3.0, 3), ("4", 4)])
def test_check_int_accepts_whole_numbers(value, ok):
    assert check_int(value, "n", 1) == ok


@pytest.mark.parametrize("value,kw,phrase", [
    (2.5, {}, "n must be a whole number, got 2.5"),
    ("x", {}, "must be a whole number"),
    (0, {}, "n must be at least 1, got 0"),
    (500, {"maximum": 100}, "n must be a whole number from 1 to 100, got 500"),
    (float("inf"), {}, "must be a whole number"),
])
def test_check_int_refuses_in_one_sentence(value, kw, phrase):
    with pytest.raises(UserError, match=phrase):
        check_int(value, "n", 1, **kw)


def test_range_and_finite_and_user_error_is_a_value_error():
    assert check_range("0.5", "strength", 0, 1) == 0.5
    with pytest.raises(ValueError, match=r"strength must be between 0 and 1, got 1.5 \(0 keeps it\)"):
        check_range(1.5, "strength", 0, 1, "0 keeps it")
    with pytest.raises(UserError, match="w must be a finite number"):
        check_finite(float("nan"), "w")
    assert finite_float("2") == 2.0 and int_at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1"):
        int_at_least(1)("0")


def test_every_reader_gives_the_same_sentences(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="does not exist: check the path"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="is a folder: give an image file"):
        load_image(tmp_path / "folder.png")
    with pytest.raises(ValueError, match="could not be read as an image"):
        load_image(tmp_path / "notes.png", "control image")
    Image.new("RGBA", (4, 2), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    rgb = load_image(tmp_path / "clear.png")
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="more than the limit of 0.000004 megapixels"):
        load_image(tmp_path / "clear.png", max_pixels=4)
    with pytest.raises(UserError, match="not an image this app can read"):
        open_upload(tmp_path / "notes.png", "photo", 25)


def test_output_paths_and_atomic_save(tmp_path):
    assert output_paths(tmp_path / "a.png", 1) == [tmp_path / "a.png"]
    assert [p.name for p in output_paths(tmp_path / "a.webp", 2)] == ["a-0.webp", "a-1.webp"]
    with pytest.raises(ValueError, match="unknown image format '.bmpx'"):
        output_paths(tmp_path / "a.bmpx", 1)
    with pytest.raises(ValueError, match="output folder .* does not exist"):
        output_paths(tmp_path / "no" / "a.png", 1)
    save_image_atomic(Image.new("RGB", (3, 3), "red"), tmp_path / "a.png")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


@pytest.mark.parametrize("suffix", [".jpg", ".jfif", ".jpe", ".mpo", ".pcx"])
def test_a_transparent_image_is_laid_on_white_where_the_format_has_no_alpha(tmp_path, suffix):
    """Every name of JPEG (and formats such as PCX) takes a transparent image flattened onto white; before, only
    .jpg/.jpeg were flattened (by the edit command alone) and .jfif died with "cannot write mode RGBA as JPEG"."""
    im = Image.new("RGBA", (8, 8), (200, 0, 0, 0))
    im.paste((0, 0, 200, 255), (0, 0, 4, 8))
    save_image_atomic(im, tmp_path / f"a{suffix}")
    back = np.asarray(Image.open(tmp_path / f"a{suffix}").convert("RGB")).astype(int)
    assert (abs(back[:, 6:] - 255) <= 8).all()  # the transparent half is white, not the hidden red
    assert (abs(back[:, :2] - (0, 0, 200)) <= 12).all()
    assert [p.name for p in tmp_path.iterdir()] == [f"a{suffix}"]
    save_image_atomic(im, tmp_path / "b.png")  # a format with alpha keeps it
    assert Image.open(tmp_path / "b.png").getpixel((6, 0))[3] == 0


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "I;16"])
def test_a_transparent_colour_is_laid_on_white_as_an_alpha_channel_is(tmp_path, mode):
    """PNG's tRNS chunk makes one colour of a P, 1, L, RGB or 16-bit image transparent; training, generation and
    the edit read it as transparency (the key colour came through as it was: black where the image is empty),
    and the edit keeps it in its output."""
    from editing.images import prepare_photo
    from suite.images import to_rgb

    rgb = np.zeros((8, 6, 3), np.uint8)
    rgb[:4] = 200
    im = {"RGB": Image.fromarray(rgb), "L": Image.fromarray(rgb[..., 0]), "1": Image.fromarray(rgb[..., 0] == 0),
          "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)}[mode]
    top = 0 if mode == "1" else 200  # a 1-bit image: black on top, its white rows the transparent colour
    path = tmp_path / "key.png"
    im.save(path, transparency={"RGB": (0, 0, 0), "1": 1}.get(mode, 0))
    loaded = np.asarray(to_rgb(load_image(path)))
    assert (loaded[4:] == 255).all() and (loaded[:4] == top).all(), loaded[:, 0]
    with Image.open(path) as again:
        photo = prepare_photo(again)
    assert (photo.rgb[4:] == 255).all() and (photo.alpha[4:] == 0).all() and (photo.alpha[:4] == 255).all()
    from suite.images import has_transparency, open_upload, read_mask

    assert has_transparency(path)  # the 3D flow's cut-out test, and the mask rule, read it too
    assert (read_mask(path, (6, 8)) == np.repeat([1.0, 0.0], 4)[:, None]).all()
    upload = np.asarray(open_upload(str(path), "image", 1.0, keep_alpha=True))
    assert (upload[4:, :, 3] == 0).all() and (upload[:4, :, :3] == top).all()  # 16-bit scaled, not clipped


def test_prompts_are_text_and_a_list_is_not_silently_mangled(tiny_pipe):
    from suite.checks import check_prompt

    assert check_prompt("  a vase ") == "a vase" and check_prompt(None) == "" and check_prompt(["one"]) == "one"
    with pytest.raises(UserError, match="is not valid UTF-8 text"):
        check_prompt("a \udcff vase")
    with pytest.raises(UserError, match="a list of 2 prompts"):
        check_prompt(["a", "b"])  # where one prompt is expected (the CLI, 3D); the pipeline takes lists
    out = tiny_pipe(["a", "b"], num_inference_steps=1, output_type="latent")
    assert out.latents.shape[0] == 2


def test_an_image_over_the_size_limit_is_told_so_not_called_unreadable(tmp_path):
    """The size sentence was wrapped in "could not be read as an image (...): give a PNG" for a valid PNG, and a
    small limit read "0 megapixels"."""
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ValueError) as err:
        load_image(tmp_path / "big.png", max_pixels=50_000)
    text = str(err.value)
    assert "300x200 = 0.06 megapixels, more than the limit of 0.05 megapixels" in text
    assert "could not be read" not in text and "give a PNG" not in text


def test_a_large_16_bit_image_is_scaled_to_8_bits_in_bands():
    """A 16-bit grayscale photo is scaled to 8 bits (65535 -> 255, rounded) without float64 copies of the whole
    image: 20 MP took 480 MB at its peak (24 bytes a pixel; a 120 MP photo 2.9 GB), in bands 127 MB."""
    import tracemalloc

    from suite.images import to_8bit

    a = np.random.default_rng(0).integers(0, 65536, (4000, 5000), dtype=np.uint16)
    a[0, :4] = [0, 128, 32896, 65535]
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    tracemalloc.start()
    try:
        out = to_8bit(im)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    got = np.asarray(out)
    assert out.mode == "L" and got.shape == a.shape
    assert got[0, :4].tolist() == [0, 0, 128, 255]
    assert np.array_equal(got[::97, ::89], np.floor(a[::97, ::89] / 65535.0 * 255.0 + 0.5).astype(np.uint8))
    assert peak < 200e6, peak


@pytest.mark.parametrize("suffix", [".webp", ".tif", ".bmp"])
def test_a_sets_file_of_the_users_is_refused_in_every_format_and_the_suites_own_is_known(tmp_path, suffix):
    """Before, a set's existing file was checked for this suite's record only in PNG and JPEG: ``--output
    holiday.webp --num-images 2`` replaced the user's ``holiday-1.webp`` (TIFF and BMP too). Now WebP and TIFF
    hold the record, and a file of a format that holds none is refused as a file of the user's."""
    from suite.images import check_set_files, read_image_settings

    theirs = tmp_path / f"holiday-1{suffix}"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(theirs)
    with pytest.raises(UserError, match="holds no record of this suite"):
        check_set_files([tmp_path / f"holiday-0{suffix}", theirs], {"--steps": 2}, resume=False)
    ours = save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / f"ours-1{suffix}", {"--steps": 2})
    if suffix == ".bmp":
        assert read_image_settings(ours) is None
    else:
        assert read_image_settings(ours) == {"--steps": 2}
        check_set_files([tmp_path / f"ours-0{suffix}", ours], {"--steps": 2}, resume=False)  # its own: replaced
        with pytest.raises(UserError, match="made with other settings"):
            check_set_files([tmp_path / f"ours-0{suffix}", ours], {"--steps": 3}, resume=True)


def test_outputs_keep_the_pixels_webp_exactly_and_jpeg_nearly(tmp_path):
    """Outputs were saved at PIL's defaults (JPEG quality 75 with 4:2:0 chroma, WebP lossy): a drawing came back
    3.8 (JPEG) and 3.1 (WebP) levels off on average, the pixels an edit never touched included. WebP is now
    lossless, JPEG quality 95 with full chroma (0.8)."""
    from PIL import ImageDraw

    yy, xx = np.mgrid[:128, :128]
    image = Image.fromarray(np.stack([xx * 2, yy * 2, xx + yy], -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 30, 60, 90], fill=(200, 30, 40))
    draw.ellipse([70, 10, 120, 60], fill=(20, 160, 220))
    photo = np.asarray(image).astype(np.int16)
    back = {s: np.asarray(Image.open(save_image_atomic(image, tmp_path / f"p{s}")).convert("RGB")).astype(np.int16)
            for s in (".webp", ".jpg")}
    assert np.array_equal(back[".webp"], photo)
    assert np.abs(back[".jpg"] - photo).mean() < 1.5
    rgba = np.dstack([np.asarray(image), np.where(np.arange(128) < 64, 0, 255).astype(np.uint8)[None].repeat(128, 0)])
    path = save_image_atomic(Image.fromarray(rgba, "RGBA"), tmp_path / "t.webp")  # the colour under alpha 0 too
    assert np.array_equal(np.asarray(Image.open(path).convert("RGBA")), rgba)


def test_an_output_larger_than_its_format_stores_is_refused_before_any_work(tmp_path):
    """A 17,000 px panorama edited to .webp ran the whole edit and then failed at the save ("encoding error 5")."""
    from suite.images import check_output_size

    with pytest.raises(UserError, match=r"\.webp stores at most 16383 pixels a side, and the output is 17000x300: "
                                        r"use \.png"):
        check_output_size(tmp_path / "pano.webp", 17000, 300)
    for name in ("pano.png", "pano.jpg"):
        check_output_size(tmp_path / name, 17000, 300)
    check_output_size(tmp_path / "long.jpg", 65500, 2)
    with pytest.raises(UserError, match="at most 65500"):  # libjpeg's own limit
        check_output_size(tmp_path / "long.jpg", 65501, 2)
    with pytest.raises((OSError, ValueError), match="16383"):  # the encoder's own limit: one pixel more is refused
        Image.new("RGB", (16384, 2)).save(tmp_path / "x.webp")
