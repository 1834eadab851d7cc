"""SDEdit editing through the pipeline (equal to diffusers' img2img), the face crop and paste-back: far pixels identical, masks, several faces."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("cv2")
from editing import EditResult, edit_photo
from editing.align import extract, face_region
from suite.pipeline import InDomainPipeline, report_steps

from .common import FixedDetector, face_at, photo_array

STEPS = 3  # few steps: these tests check plumbing and numerics, not image quality


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
             seed=3, output_type="np", callback_on_step_end=report_steps(lambda i, n: steps_run.append(n))).images
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
    assert set(res.timings) == {"detect", "align", "encode", "denoise", "decode", "paste"}
    assert all(v >= 0 for v in res.timings.values()) and res.timings["denoise"] > 0


class IdentityVAE(torch.nn.Module):
    """An exactly invertible 'VAE' (latent = RGB + a zero channel at full resolution; std 3e-7), so strength 0
    must give the photo back to 8-bit precision; a real VAE's round trip adds its own error (see below)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(4,), scaling_factor=1.0, latent_channels=4)

    device = property(lambda self: torch.device("cpu"))  # what diffusers reads of a pipeline's models
    dtype = property(lambda self: torch.float32)

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
    assert np.array_equal(np.asarray(res.images[0]), photo)  # no model runs at strength 0 (test_images)
    # the pipeline's own start-image path at strength 0: the crop comes back to 8-bit precision
    crop = photo[20:52, 30:62]
    out = ident("x", image=Image.fromarray(crop), strength=0.0, seed=1, output_type="np").images[0]
    assert np.array_equal(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), crop)


def test_strength_zero_with_tiny_vae_is_its_round_trip(parts, pipe):
    # With the random tiny VAE, strength 0 returns decode(encode(crop)): the VAE's own round trip, nothing more.
    start = Image.fromarray(photo_array(64, 64, seed=7))
    out = pipe("", image=start, strength=0.0, seed=1, output_type="np").images[0]
    px = pipe.image_processor.preprocess(start)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = pipe.vae.encode(px).latent_dist.sample(gen)
        rt = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="np")[0]
    assert np.abs(out - rt).max() < 1e-5
    # (the stated round-trip error of this random VAE; a trained SD VAE is ~0.01-0.03 mean absolute error)
    assert np.abs(rt - np.asarray(start) / 255.0).mean() > 0.01


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


def test_a_user_mask_also_holds_the_denoising_of_the_part_it_keeps(pipe, monkeypatch):
    """mask_blend=True: the pipeline gets the user's mask in the crop's frame (mask_image), so the kept part holds the
    denoising; by default (measured better on the mini faces) the whole crop is redrawn and only the mask pasted."""
    photo = photo_array(120, 160, seed=9)
    mask = np.zeros((120, 160), np.uint8)
    mask[:55] = 255  # the top of the photo (a hat's place), about half of the face's crop
    given = []
    call = type(pipe).__call__

    def spy(self, *a, **kw):
        given.append(kw.get("mask_image"))
        return call(self, *a, **kw)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    face = face_at((80.0, 55.0), 10.0)
    for blend in (True, False):
        res = edit_photo(pipe, Image.fromarray(photo), strength=1.0, mask=Image.fromarray(mask), steps=2,
                         detector=FixedDetector(face), mask_blend=blend)
        out = np.asarray(res.images[0])
        assert np.array_equal(out[mask == 0], photo[mask == 0])
    crop_mask, none = given
    assert none is None and crop_mask.shape == (64, 64)
    edit_photo(pipe, Image.fromarray(photo), strength=1.0, mask=Image.fromarray(mask), steps=2,
               detector=FixedDetector(face))
    assert given[-1] is None  # the default
    expected = extract(mask.astype(np.float32) / 255, face_region(face, 64))
    assert np.abs(crop_mask - expected).max() < 1e-6 and 0.2 < crop_mask.mean() < 0.8


def test_all_faces_or_the_largest(pipe, caplog):
    photo = photo_array(120, 200, seed=10)
    small, large = face_at((50.0, 60.0), 8.0), face_at((140.0, 60.0), 12.0)
    with caplog.at_level("WARNING", logger="editing"):
        one = edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, detector=FixedDetector(small, large))
    assert "2 faces found: editing the largest (pass --all-faces" in caplog.text
    both = edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, all_faces=True,
                      detector=FixedDetector(small, large))
    assert one.face_boxes == [large.box] and both.face_boxes == [large.box, small.box]
    changed_one = (np.asarray(one.images[0]) != photo).any(-1)
    changed_both = (np.asarray(both.images[0]) != photo).any(-1)
    assert not changed_one[:, :90].any() and changed_both[:, :90].any()
    # the largest face is edited identically in both runs (same seed for face 0)
    assert np.array_equal(np.asarray(one.images[0])[:, 100:], np.asarray(both.images[0])[:, 100:])


def test_all_faces_leaves_a_face_too_small_to_edit_and_edits_the_others(pipe, caplog):
    photo = photo_array(120, 200, seed=10)
    tiny, large = face_at((30.0, 30.0), 2.0), face_at((140.0, 60.0), 12.0)  # 4 px wide: under the tiny model's 8
    with caplog.at_level("WARNING", logger="editing"):
        res = edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, all_faces=True,
                         detector=FixedDetector(tiny, large))
    assert res.face_boxes == [large.box] and "1 face(s) under 8 px wide" in caplog.text
    with pytest.raises(ValueError, match="only 4 px wide"):
        edit_photo(pipe, Image.fromarray(photo), strength=1.0, steps=1, all_faces=True, detector=FixedDetector(tiny))


def test_no_face_is_a_clear_error_naming_whole_image(pipe):
    with pytest.raises(ValueError, match="whole.image"):
        edit_photo(pipe, Image.fromarray(photo_array(64, 64)), detector=FixedDetector())


def test_whole_image_with_a_face_framing_is_one_sentence(pipe):
    """``whole_image=True, framing="face"`` edited the whole photo and said nothing of the framing asked for."""
    with pytest.raises(ValueError, match="drop one of the two"):
        edit_photo(pipe, Image.fromarray(photo_array(64, 64)), whole_image=True, framing="face")
    res = edit_photo(pipe, Image.fromarray(photo_array(64, 64)), whole_image=True, framing="whole", steps=2)
    assert res.images[0].size == (64, 64)


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


def test_a_strength_that_runs_no_step_is_one_sentence_and_strength_0_is_taken(pipe):
    """img2img runs int(steps x strength) steps: 0.3 of 3 steps runs none, and the photo came back unchanged (the
    app's edit tab too); diffusers refuses it. Strength 0 (the documented "keep the photo") is still taken."""
    photo = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="raise --steps to at least 4"):
        edit_photo(pipe, photo, strength=0.3, steps=3, whole_image=True)
    assert len(edit_photo(pipe, photo, strength=0.0, steps=3, whole_image=True).images) == 1


def test_the_feather_and_the_prompts_are_checked_by_edit_photo_too(pipe, monkeypatch):
    """Only the CLI checked them: ``feather=nan`` or ``5`` gave the photo back unedited after the whole denoise, and
    ``prompt=["a", "b"]`` edited with "a" alone."""
    photo = Image.fromarray(photo_array(64, 64))
    called = []
    monkeypatch.setattr(InDomainPipeline, "__call__", lambda *a, **kw: called.append(1))
    for feather in (float("nan"), 5.0, -1.0):
        with pytest.raises(ValueError, match="feather \\(--feather\\) must be"):
            edit_photo(pipe, photo, feather=feather, detector=FixedDetector(face_at((32.0, 32.0), 30.0)))
    with pytest.raises(ValueError, match="the prompt is a list of 2 prompts"):
        edit_photo(pipe, photo, prompt=["a", "b"], whole_image=True)
    with pytest.raises(ValueError, match="the negative prompt is a list of 2 prompts"):
        edit_photo(pipe, photo, negative_prompt=["a", "b"], whole_image=True)
    assert not called  # refused before any denoising


def test_at_strength_0_the_guidance_settings_are_still_checked(pipe):
    """Strength 0 returns the photo before the pipeline (which checks them) is called: a NaN weight, a rule that does
    not parse or a misspelt auto_norm were taken without a word."""
    photo = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    for bad, phrase in ((dict(domain_weight=float("nan")), "the domain weight"),
                        (dict(guidance_rule="nope"), "unknown guidance-rule item 'nope'"),
                        (dict(auto_norm="directon"), "auto_norm must be"), (dict(w0="x"), "w0 must be a number")):
        with pytest.raises(ValueError, match=phrase):
            edit_photo(pipe, photo, strength=0.0, whole_image=True, **bad)
    assert len(edit_photo(pipe, photo, strength=0.0, whole_image=True, guidance_rule="paper").images) == 1


def test_more_edited_copies_than_memory_holds_is_one_sentence(pipe, monkeypatch):
    """Every edited copy of the photo is held until edit_photo returns: 64 copies of a 120 MP photo needed 23 GB and
    grew until the machine ran out. The bound is checked before any model runs (here scaled down to a small photo)."""
    import editing.edit

    monkeypatch.setattr(editing.edit, "MAX_COPIES_BYTES", 120 * 160 * 3 * 4)
    photo = Image.fromarray(photo_array(120, 160, seed=3))
    face = FixedDetector(face_at((80.0, 55.0), 10.0))
    with pytest.raises(ValueError, match="5 edited copies of a 160x120 photo would hold about 0 GB"):
        edit_photo(pipe, photo, strength=0.5, num_images=5, steps=2, detector=face)
    assert len(edit_photo(pipe, photo, strength=0.5, num_images=4, steps=2, detector=face).images) == 4


def test_a_mask_path_with_a_tilde_is_the_users_file(pipe, monkeypatch, tmp_path):
    """edit_photo(mask="~/m.png") said the file did not exist (image and output paths were expanded, masks not)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    photo = photo_array(120, 160, seed=9)
    mask = np.zeros((120, 160), np.uint8)
    mask[45:65, 60:100] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    res = edit_photo(pipe, Image.fromarray(photo), strength=1.0, mask="~/m.png", steps=2,
                     detector=FixedDetector(face_at((80.0, 55.0), 10.0)))
    assert np.array_equal(np.asarray(res.images[0])[mask == 0], photo[mask == 0])
