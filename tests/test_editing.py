"""SDEdit photo editing: equality with diffusers' img2img, strength 0, untouched pixels, inputs, CLI."""

from __future__ import annotations

import copy
import math
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("cv2")

from editing import EditResult, Face, edit_photo  # noqa: E402
from editing.align import face_region  # noqa: E402
from editing.images import load_mask, load_photo, prepare_photo  # noqa: E402
from editing.synthetic import place_face  # noqa: E402
from suite.pipeline import InDomainPipeline  # noqa: E402

STEPS = 3  # few steps: these tests check plumbing and numerics, not image quality


class FixedDetector:
    """A detector double: the faces it is given, whatever the image (and records the image size it saw)."""

    def __init__(self, *faces: Face):
        self.faces, self.seen = list(faces), []

    def detect(self, rgb):
        self.seen.append(rgb.shape)
        return list(self.faces)


@pytest.fixture(scope="module")
def parts(tiny_parts):
    return tiny_parts


@pytest.fixture(scope="module")
def pipe(parts):
    return InDomainPipeline(**{**parts, "scheduler": copy.deepcopy(parts["scheduler"])})  # own scheduler state


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


# ------------------------------------------------------------------------------------------------------
# Numerics: the edit is diffusers' img2img with one text term


def _img2img(parts, scheduler):
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                          tokenizer=parts["tokenizer"], unet=parts["unet"], scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("scheduler_name", ["ddim", "dpmsolver++"])
def test_sdedit_equals_diffusers_img2img(parts, scheduler_name):
    from diffusers import DPMSolverMultistepScheduler

    base = parts["scheduler"]
    sched = base if scheduler_name == "ddim" else DPMSolverMultistepScheduler.from_config(
        base.config, algorithm_type="dpmsolver++")
    ours = InDomainPipeline(**{**parts, "scheduler": copy.deepcopy(sched)})
    theirs = _img2img(parts, copy.deepcopy(sched))
    start = Image.fromarray(photo_array(64, 64, seed=4))
    steps_run = []
    a = ours("a photo of a face wearing glasses", image=start, strength=0.7, control_weight=7.5, num_inference_steps=4,
             seed=3, output_type="np", progress=False, callback=lambda i, n: steps_run.append(n)).images
    b = theirs("a photo of a face wearing glasses", image=start, strength=0.7, guidance_scale=7.5,
               num_inference_steps=4, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert steps_run and steps_run[0] == int(4 * 0.7)  # the same start step as img2img: 2 of 4 steps
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5


def test_edit_photo_whole_image_equals_img2img(parts, pipe):
    # A 64x64 photo edited as a whole is exactly img2img's output (crop = photo, weight 1 everywhere).
    start = Image.fromarray(photo_array(64, 64, seed=5))
    res = edit_photo(pipe, start, prompt="wearing glasses", strength=0.7, domain_weight=0, control_weight=5.0,
                     whole_image=True, seed=2, steps=STEPS)
    ref = _img2img(parts, copy.deepcopy(parts["scheduler"]))(
        "wearing glasses", image=start, strength=0.7, guidance_scale=5.0, num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(2), output_type="pil").images[0]
    diff = np.abs(np.asarray(res.images[0], int) - np.asarray(ref, int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # 1e-5 in float; a rounding flip at most in uint8
    assert isinstance(res, EditResult) and res.face_boxes == []
    assert set(res.timings) == {"detect", "encode", "denoise", "decode", "paste"}
    assert all(v >= 0 for v in res.timings.values()) and res.timings["denoise"] > 0


# ------------------------------------------------------------------------------------------------------
# Strength 0 returns the input


class IdentityVAE(torch.nn.Module):
    """An exactly invertible 'VAE' (latent = RGB + a zero channel at full resolution; std 3e-7), so strength 0
    must give the photo back to 8-bit precision; a real VAE's round trip adds its own error (see below)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(4,), scaling_factor=1.0, latent_channels=4)

    def encode(self, x):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        mean = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, -30)], 1)))

    def decode(self, z, return_dict=False):
        return (z[:, :3],)


def test_strength_zero_returns_the_photo(parts):
    from suite.testing import build_tiny_unet

    unet = build_tiny_unet(seed=1)  # sample_size 32 -> native crop 32 px with the identity VAE
    ident = InDomainPipeline(vae=IdentityVAE(), text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                             unet=unet, scheduler=copy.deepcopy(parts["scheduler"]))
    photo = photo_array(80, 100, seed=6)
    # eye distance 8 px -> crop side 32 px = native: scale 1, crop grid on the photo's pixel grid
    face = face_at((50.0, 40.0 - 0.1 * 0.98 * 8), 8.0)
    res = edit_photo(ident, Image.fromarray(photo), prompt="x", strength=0.0, detector=FixedDetector(face))
    assert np.array_equal(np.asarray(res.images[0]), photo)


def test_strength_zero_with_tiny_vae_is_its_round_trip(parts, pipe):
    # With the random tiny VAE, strength 0 returns decode(encode(crop)): the VAE's own round trip, nothing more.
    start = Image.fromarray(photo_array(64, 64, seed=7))
    out = pipe("", image=start, strength=0.0, seed=1, output_type="np", progress=False).images[0]
    px = pipe.image_processor.preprocess(start)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = pipe.vae.encode(px).latent_dist.sample(gen)
        rt = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="np")[0]
    assert np.abs(out - rt).max() < 1e-5
    # (the stated round-trip error of this random VAE; a trained SD VAE is ~0.01-0.03 mean absolute error)
    assert np.abs(rt - np.asarray(start) / 255.0).mean() > 0.01


# ------------------------------------------------------------------------------------------------------
# Untouched pixels, masks, several faces, large photos


def test_pixels_outside_the_face_mask_are_identical(pipe):
    photo = photo_array(120, 160, seed=8)
    face = face_at((80.0, 55.0), 10.0, angle=20.0)
    res = edit_photo(pipe, Image.fromarray(photo), prompt="wearing glasses", strength=1.0, num_images=2,
                     detector=FixedDetector(face), steps=2, seed=1)
    region = face_region(face, 64)
    assert res.face_boxes == [face.box] and len(res.images) == 2
    import cv2

    quad = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillConvexPoly(quad, np.round(region.corners() * 16 - 8).astype(np.int32), 1, shift=4)
    for im in res.images:
        out = np.asarray(im)
        assert out.shape == photo.shape
        assert np.array_equal(out[quad == 0], photo[quad == 0])  # exact equality outside the crop
        assert (np.abs(out.astype(int) - photo).sum(-1) > 0).sum() > 0.5 * quad.sum()  # and the face did change
    assert not np.array_equal(np.asarray(res.images[0]), np.asarray(res.images[1]))  # two variations


def test_user_mask_limits_the_change(pipe):
    photo = photo_array(120, 160, seed=9)
    mask = np.zeros((120, 160), np.uint8)
    mask[45:65, 60:100] = 255
    res = edit_photo(pipe, Image.fromarray(photo), strength=1.0, mask=Image.fromarray(mask), steps=2,
                     detector=FixedDetector(face_at((80.0, 55.0), 10.0)))
    out = np.asarray(res.images[0])
    assert np.array_equal(out[mask == 0], photo[mask == 0])
    assert (out[mask > 0] != photo[mask > 0]).any()


def test_all_faces_or_the_largest(pipe):
    photo = photo_array(120, 200, seed=10)
    small, large = face_at((50.0, 60.0), 8.0), face_at((140.0, 60.0), 12.0)
    one = edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, detector=FixedDetector(small, large))
    both = edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, all_faces=True,
                      detector=FixedDetector(small, large))
    assert one.face_boxes == [large.box] and both.face_boxes == [large.box, small.box]
    changed_one = (np.asarray(one.images[0]) != photo).any(-1)
    changed_both = (np.asarray(both.images[0]) != photo).any(-1)
    assert not changed_one[:, :90].any() and changed_both[:, :90].any()
    # the largest face is edited identically in both runs (same seed for face 0)
    assert np.array_equal(np.asarray(one.images[0])[:, 100:], np.asarray(both.images[0])[:, 100:])


def test_no_face_is_a_clear_error_naming_whole_image(pipe):
    with pytest.raises(ValueError, match="whole.image"):
        edit_photo(pipe, Image.fromarray(photo_array(64, 64)), detector=FixedDetector())


def test_large_photo_is_edited_on_a_native_size_crop(pipe, monkeypatch):
    # 12 MP: the network only ever sees the 64 x 64 crop; the output has the input's size.
    h, w = 3000, 4000
    photo = np.full((h, w, 3), 120, np.uint8)
    photo[::7] = 30  # some texture
    seen = []
    original = InDomainPipeline.__call__

    def spy(self, *a, **kw):
        seen.append(kw["image"].size)
        return original(self, *a, **kw)

    monkeypatch.setattr(InDomainPipeline, "__call__", spy)
    det = FixedDetector(face_at((2500.0, 1200.0), 300.0, angle=-10))
    res = edit_photo(pipe, Image.fromarray(photo), strength=0.5, steps=2, detector=det)
    assert seen == [(64, 64)] and res.images[0].size == (w, h)
    out = np.asarray(res.images[0])
    assert np.array_equal(out[:, :1500], photo[:, :1500]) and np.array_equal(out[2300:], photo[2300:])


# ------------------------------------------------------------------------------------------------------
# Inputs people have: modes, EXIF orientation, decompression bombs


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


def test_rgba_output_keeps_alpha_and_untouched_pixels(pipe):
    rgb = photo_array(96, 128, seed=12)
    alpha = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))
    rgba = np.dstack([rgb, alpha])
    res = edit_photo(pipe, Image.fromarray(rgba, "RGBA"), strength=1.0, steps=1, whole_image=True,
                     mask=Image.fromarray((np.arange(128)[None, :].repeat(96, 0) > 64).astype(np.uint8) * 255))
    out = np.asarray(res.images[0])
    assert res.images[0].mode == "RGBA"
    assert np.array_equal(out[:, :64], rgba[:, :64]) and np.array_equal(out[..., 3], alpha)


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


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 gigapixels claimed in a few bytes
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


# ------------------------------------------------------------------------------------------------------
# CLI


def _run(argv, tiny_dir, monkeypatch, capsys):
    import launch

    monkeypatch.setenv("INDOMAIN_TINY_DIR", str(tiny_dir))
    code = launch.main(argv)
    return code, capsys.readouterr().err


def test_cli_edits_a_face_photo(tmp_path, tiny_dir, monkeypatch, capsys):
    photo = np.clip(np.random.default_rng(14).normal(200, 6, (300, 400, 3)), 0, 255).astype(np.uint8)
    place_face(photo, (200.0, 150.0), 160, 8.0)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "edited.png"
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "photo.png"),
                      "--prompt", "wearing glasses", "--strength", "0.6", "--steps", "2", "--output", str(out)],
                     tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    edited = np.asarray(Image.open(out))
    assert edited.shape == photo.shape
    changed = (edited != photo).any(-1)
    ys, xs = np.nonzero(changed)
    assert changed.any() and 60 < xs.mean() < 340 and 40 < ys.mean() < 260  # around the face at (200, 150)
    assert not changed[:, :40].any() and not changed[:, 360:].any()


@pytest.mark.parametrize("args, expected", [
    (["--image", "{missing}"], "does not exist"),
    (["--image", "{text}"], "could not be read"),
    (["--image", "{bomb}"], "megapixels"),
    (["--image", "{flat}"], "--whole-image"),
    (["--image", "{flat}", "--strength", "1.5"], "strength"),
    (["--image", "{flat}", "--mask", "{square}"], "mask"),
    (["--image", "{flat}", "--output", "{tmp}/out.xyz"], "format"),
    (["--image", "{flat}", "--output", "{tmp}/no/such/dir/out.png"], "folder"),
])
def test_cli_bad_inputs_give_one_sentence(tmp_path, tiny_dir, monkeypatch, capsys, args, expected):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(40_000, 40_000))
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    Image.new("L", (50, 50), 255).save(tmp_path / "square.png")
    names = dict(missing=tmp_path / "missing.jpg", text=tmp_path / "text.jpg", bomb=tmp_path / "bomb.png",
                 flat=tmp_path / "flat.png", square=tmp_path / "square.png", tmp=tmp_path)
    argv = ["edit", "--preset", "tiny", "--steps", "1", "--output", str(tmp_path / "o.png")]
    argv += [a.format(**names) for a in args]
    code, err = _run(argv, tiny_dir, monkeypatch, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_cli_whole_image_without_a_face(tmp_path, tiny_dir, monkeypatch, capsys):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo_array(48, 64, seed=15)).save(tmp_path / "flat.png", icc_profile=icc)
    out = tmp_path / "out.jpg"
    code, err = _run(["edit", "--preset", "tiny", "--image", str(tmp_path / "flat.png"), "--whole-image",
                      "--steps", "1", "--num-images", "2", "--output", str(out)], tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    for i in range(2):
        with Image.open(tmp_path / f"out-{i}.jpg") as im:
            assert im.size == (64, 48) and im.info.get("icc_profile") == icc  # colours shown as in the input
    assert not list(tmp_path.glob(".out*"))  # no temporary files left behind


def test_help_lists_the_flags(capsys):
    import launch

    with pytest.raises(SystemExit):
        launch.main(["edit", "--help"])
    text = capsys.readouterr().out
    for flag in ("--image", "--prompt", "--strength", "--output", "--mask", "--all-faces", "--whole-image",
                 "--num-images", "--seed", "--preset", "--domain"):
        assert flag in text
