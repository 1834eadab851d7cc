"""In-domain sampling: equality with diffusers, seeds, controls, start images, bundle save/load."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from suite.checks import UserError
from suite.pipeline import Control
from tests.common import diffusers_sd


@pytest.mark.parametrize("w", [1.0, 7.5])
def test_single_text_term_equals_diffusers(tiny_pipe, w):
    ours = tiny_pipe("a photo of a face wearing glasses", domain_weight=0.0, control_weight=w, num_images_per_prompt=2,
                     num_inference_steps=12, seed=3, output_type="np").images
    ref = diffusers_sd(tiny_pipe)
    theirs = ref("a photo of a face wearing glasses", guidance_scale=w, num_images_per_prompt=2,
                 num_inference_steps=12, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert ours.shape == theirs.shape == (2, 64, 64, 3)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_a_list_of_prompts_equals_diffusers(tiny_pipe):
    """What every diffusers user writes: a list of prompts, several images each, per-prompt negative prompts."""
    prompts, negatives = ["a photo of a face", "a vase"], ["glasses", "the face"]
    ours = tiny_pipe(prompts, negative_prompt=negatives, domain_weight=0.0, control_weight=6.0, num_images_per_prompt=2,
                     num_inference_steps=8, seed=4, output_type="np").images
    ref = diffusers_sd(tiny_pipe)
    theirs = ref(prompts, negative_prompt=negatives, guidance_scale=6.0, num_images_per_prompt=2,
                 num_inference_steps=8, generator=torch.Generator().manual_seed(4), output_type="np").images
    assert ours.shape == theirs.shape == (4, 64, 64, 3)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours[0] - ours[2]).max() > 1e-3  # the two prompts differ


def test_negative_prompt_equals_diffusers(tiny_pipe):
    ours = tiny_pipe("a vase", negative_prompt="the face", domain_weight=0.0, control_weight=5.0,
                     num_inference_steps=8, seed=1, output_type="np").images
    ref = diffusers_sd(tiny_pipe)
    theirs = ref("a vase", negative_prompt="the face", guidance_scale=5.0, num_inference_steps=8,
                 generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5


def test_seeds_reproduce_and_differ(tiny_pipe):
    kw = dict(num_inference_steps=5, output_type="np")
    a = tiny_pipe("wearing glasses", seed=7, **kw).images
    b = tiny_pipe("wearing glasses", seed=7, **kw).images
    c = tiny_pipe("wearing glasses", seed=8, **kw).images
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # a seed that is not one: 1.5 made seed 1's images, -1 was taken, 2**64 was torch's overflow
    for bad in (1.5, -1, 2**64, "x"):
        with pytest.raises(UserError, match="the seed must be a whole number"):
            tiny_pipe("wearing glasses", seed=bad, **kw)
    assert np.array_equal(tiny_pipe("wearing glasses", seed=7.0, **kw).images, a)
    big = tiny_pipe("wearing glasses", seed=2**64 - 1, **kw).images  # torch's largest; 2**53 + 1 is no float
    assert np.array_equal(tiny_pipe("wearing glasses", seed=torch.Generator().manual_seed(2**64 - 1).initial_seed(),
                                    **kw).images, big)


def test_unconditional_in_domain_uses_domain_term_with_auto_weight(tiny_pipe):
    out = tiny_pipe(None, num_inference_steps=4, seed=0, output_type="np")
    assert list(out.weights) == ["domain"]
    assert np.isfinite(out.weights["domain"]) and out.weights["domain"] > 0
    # the domain term changes the result compared with SD's unconditional sampling
    plain = tiny_pipe(None, use_domain=False, num_inference_steps=4, seed=0, output_type="np")
    assert plain.weights == {}
    assert np.abs(out.images - plain.images).max() > 1e-3


def test_controlnet_and_several_controls(tiny_pipe, tiny_dir):
    from suite.models import load_unet

    edges = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) > 0.8).astype(np.uint8) * 255)
    kw = dict(num_inference_steps=4, seed=0, output_type="np", domain_weight=2.0)
    with_cn = tiny_pipe("wearing glasses", control_weight=3.0, control_image=edges, **kw)
    without = tiny_pipe("wearing glasses", control_weight=3.0, **kw)
    assert np.abs(with_cn.images - without.images).max() > 1e-3
    community = load_unet(str(tiny_dir / "community"))
    multi = tiny_pipe("wearing glasses", control_weight=2.0, control_image=edges,
                      controls=[Control(prompt="wearing glasses", weight=1.5, unet=community, name="community")], **kw)
    assert set(multi.weights) == {"domain", "control", "community"}
    assert np.abs(multi.images - with_cn.images).max() > 1e-3


def test_wrong_aspect_control_image_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="aspect"):
        tiny_pipe("x", control_image=Image.new("RGB", (128, 32)), width=64, height=64, num_inference_steps=2)


def test_without_a_size_the_output_takes_the_control_images_shape(tiny_pipe, tmp_path, capsys):
    """A 640x480 photo as the control image (the README's ``--control-image photo.jpg --canny``) was refused: the
    output was the model's square. As diffusers' ControlNet pipelines, the output now takes its shape (the longer
    side the native size); a size given is kept, and one of another shape is still refused."""
    import launch

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    kw = dict(num_inference_steps=2, seed=0, output_type="np")
    assert tiny_pipe("x", control_image=photo, **kw).images.shape[1:3] == (48, 64)  # the tiny model's 64 px
    assert tiny_pipe("x", control_image=photo.rotate(90, expand=True), **kw).images.shape[1:3] == (64, 48)
    assert tiny_pipe("x", control_image=photo, width=32, height=24, **kw).images.shape[1:3] == (24, 32)
    with pytest.raises(ValueError, match="aspect"):
        tiny_pipe("x", control_image=photo, width=64, height=64, **kw)
    strip = Image.new("RGB", (2000, 297))  # 6.7:1: its rounded size is 11% off its ratio, and still its own
    assert tiny_pipe("x", control_image=strip, **kw).images.shape[1:3] == (10, 64)
    near = Image.new("RGB", (208, 200))  # latents given: their size, as before (the control within 5% of it)
    lat = tiny_pipe.prepare_latents(1, seed=0)
    assert tiny_pipe("x", control_image=near, latents=lat, num_inference_steps=2, output_type="np").images.shape[1:3] \
        == (64, 64)
    photo.save(tmp_path / "photo.jpg")
    assert launch.main(["generate", "--preset", "tiny", "--domain", "face", "--control-image", str(tmp_path / "photo.jpg"),
                        "--canny", "--steps", "2", "--output", str(tmp_path / "canny.png")]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "canny.png").size == (64, 48)


def test_start_image_strength_zero_returns_vae_roundtrip(tiny_pipe):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tiny_pipe("wearing glasses", image=img, strength=0.0, num_inference_steps=10, seed=0,
                    output_type="latent")
    pixels = tiny_pipe.image_processor.preprocess(img)
    init = tiny_pipe.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    assert torch.allclose(out.latents, init * tiny_pipe.vae.config.scaling_factor, atol=1e-6)


def test_a_masked_edit_keeps_the_start_latents_where_the_mask_is_black(tiny_pipe):
    """mask_image (blended latent diffusion, as diffusers' inpainting with a plain UNet): after every step the kept
    part is the start image's latents at the next step's noise, so at the end it is the start image's latents,
    whatever the prompt; the white part changes with it. An all-white mask is no mask."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kw = dict(image=img, strength=0.8, num_inference_steps=5, seed=0, output_type="latent", control_weight=5.0)
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1  # the right half may change
    a = tiny_pipe("wearing glasses", mask_image=mask, **kw).latents
    b = tiny_pipe("a smiling face with a hat", mask_image=mask, **kw).latents
    init = tiny_pipe("wearing glasses", **{**kw, "strength": 0.0}).latents  # the start latents, same draw
    torch.testing.assert_close(a[..., :4], init[..., :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(b[..., :4], init[..., :4], atol=1e-5, rtol=0)
    assert (a[..., 4:] - b[..., 4:]).abs().mean() > 1e-3
    free = tiny_pipe("wearing glasses", **kw).latents
    assert torch.equal(tiny_pipe("wearing glasses", mask_image=torch.ones(1, 1, 64, 64), **kw).latents, free)
    with pytest.raises(ValueError, match="give the image too"):
        tiny_pipe("x", mask_image=mask, num_inference_steps=2)
    with pytest.raises(ValueError, match="aspect ratio"):
        tiny_pipe("x", mask_image=np.ones((64, 32), np.float32), **kw)
    # a mask of the start image's own size, where the image is sampled at a size rounded down to the VAE's multiple
    # (it was compared with the rounded size and refused: 519 x 384 against 512 x 384 for SD1.5)
    m = tiny_pipe.vae_scale_factor
    odd = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64 + m - 1, 3), dtype=np.uint8))
    out = tiny_pipe("x", **{**kw, "image": odd}, mask_image=np.ones((64, 64 + m - 1), np.float32))
    assert out.latents.shape[-1] == 64 // m


@pytest.mark.parametrize("bad,match", [(dict(num_inference_steps=0), "steps"), (dict(strength=1.5), "strength"),
                                       (dict(domain_weight=float("nan")), "domain weight"),
                                       (dict(num_images_per_prompt="two"), "number of images"),
                                       (dict(height=63), "multiples"),
                                       # a typo's size is one sentence, not an allocation of 40 / 16 / 7 GB
                                       (dict(height=100000), "from 1 to 16384"),
                                       (dict(num_images_per_prompt=10**6), "from 1 to 1024"),
                                       (dict(num_inference_steps=10**9), "use at most 999")])
def test_bad_arguments_give_one_sentence(tiny_pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe("x", **bad)


def test_as_many_steps_as_the_schedule_has_timesteps_are_one_sentence_and_repeats_by_design_run(tiny_pipe):
    """At 1000 steps of a 1000-step schedule the mini world's image was black (NaN latents) and SD1.5's schedule took
    timestep 1 a thousand times, exit 0. Schedulers that repeat a timestep by design (PNDM, Karras sigmas) still
    run."""
    import copy

    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    pipe = copy.copy(tiny_pipe)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config, num_train_timesteps=100)
    with pytest.raises(ValueError, match="use at most 99"):
        pipe("x", num_inference_steps=100)
    assert np.isfinite(pipe("x", num_inference_steps=50, output_type="np").images).all()
    for scheduler in (PNDMScheduler.from_config(tiny_pipe.scheduler.config, skip_prk_steps=True),
                      DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config, use_karras_sigmas=True)):
        pipe.scheduler = scheduler
        scheduler.set_timesteps(50)
        assert len(torch.unique(scheduler.timesteps)) < len(scheduler.timesteps)  # a repeat, by design
        assert np.isfinite(pipe("x", num_inference_steps=50, output_type="np").images).all()


def test_long_prompt_is_truncated_with_warning(tiny_pipe, caplog):
    with caplog.at_level(logging.WARNING):
        emb = tiny_pipe.encode_prompt("a photo of a face " * 40)
    assert emb.shape[1] == 77
    assert any("truncated" in r.message for r in caplog.records)


def test_start_image_batch_equals_diffusers_img2img(tiny_pipe):
    """Several variations of one start image: one VAE encoding shared by all, as diffusers' img2img does."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ours = tiny_pipe("wearing glasses", image=img, strength=0.5, control_weight=4.0, domain_weight=0.0, num_images_per_prompt=2,
                     num_inference_steps=6, seed=5, output_type="np").images
    ref = StableDiffusionImg2ImgPipeline(vae=tiny_pipe.vae, text_encoder=tiny_pipe.text_encoder,
                                         tokenizer=tiny_pipe.tokenizer, unet=tiny_pipe.unet,
                                         scheduler=tiny_pipe.scheduler, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    theirs = ref("wearing glasses", image=img, strength=0.5, guidance_scale=4.0, num_images_per_prompt=2,
                 num_inference_steps=6, generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # the variations differ


def test_a_switched_off_prompt_is_not_the_automatic_weights_reference_and_zero_weights_stop_calling(tiny_pipe):
    """``control_weight=0`` with a prompt: the prompt takes no part, so the automatic domain weight is balanced
    against the domain prompt's guidance exactly as without a prompt (it was balanced against the unused prompt's);
    ``w0=0``: every automatic weight is 0, so after the first step only the base is called (every model ran every
    step)."""
    calls = []
    hook = tiny_pipe.domain_unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        lat = tiny_pipe.prepare_latents(1, seed=0)
        kw = dict(num_inference_steps=3, output_type="latent", latents=lat, domain_weight="auto")
        off = tiny_pipe("a photo", control_weight=0, **kw).weights["domain"]
        none = tiny_pipe(None, **kw).weights["domain"]
        assert off == pytest.approx(none, rel=1e-5) and off > 0
        calls.clear()
        out = tiny_pipe("a photo", w0=0, control_weight="auto", **kw)
        assert out.weights == {"domain": 0.0, "control": 0.0}
        assert calls == [1]  # the domain model at the first step only, where its weight was measured
    finally:
        hook.remove()


def test_a_long_prompts_embeddings_run_beside_the_77_token_negative(tiny_pipe):
    """``prompt_embeds`` of 154 tokens (a long prompt, as compel makes them) with the default 77-token negative
    prompt: a bare torch.cat error before. The same 77 tokens twice attend exactly as once (each key and value
    twice), so the image must be the one the 77 give."""
    e = tiny_pipe.encode_prompt("a photo")
    kw = dict(num_inference_steps=2, output_type="latent", latents=tiny_pipe.prepare_latents(1, seed=0))
    once = tiny_pipe(prompt_embeds=e, **kw)
    twice = tiny_pipe(prompt_embeds=torch.cat([e, e], 1), **kw)
    assert torch.allclose(once.latents, twice.latents, atol=1e-4)


def test_start_images_of_any_mode_and_a_strength_that_runs_no_step(tiny_pipe):
    """A start image in RGBA, L, P, 16-bit or CMYK was torch's "expected input ... to have 3 channels"; a strength
    that runs no step (0.1 of 2 steps) silently returned the VAE round trip, which edit_photo refuses."""
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kw = dict(strength=0.5, num_inference_steps=2, seed=0, output_type="latent")
    ref = tiny_pipe("x", image=rgb, **kw).latents
    assert torch.equal(tiny_pipe("x", image=rgb.convert("RGBA"), **kw).latents, ref)  # opaque: the same image
    for mode in ("L", "P", "CMYK"):
        assert tiny_pipe("x", image=rgb.convert(mode), **kw).latents.shape == ref.shape, mode
    # read as the CLI reads them (suite.images.to_rgb): a real 16-bit ramp scaled, not clipped to white (a bare
    # convert("RGB") gave a mean of 254 for a mid-grey 16-bit image), and transparency laid on white, not black
    from suite.images import to_rgb

    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1)), "I;16")
    cut = rgb.convert("RGBA")
    cut.putalpha(Image.fromarray(np.where(np.arange(64)[:, None] < 32, 255, 0).astype(np.uint8).repeat(64, 1)))
    for im in (ramp, cut):
        assert torch.equal(tiny_pipe("x", image=im, **kw).latents, tiny_pipe("x", image=to_rgb(im), **kw).latents)
    assert 100 < np.asarray(to_rgb(ramp)).mean() < 155 and np.asarray(to_rgb(cut))[40:].min() == 255
    with pytest.raises(ValueError, match="strength 0.1 of 2 steps runs no step, so the start image would come back "
                                         "unchanged: raise num_inference_steps to at least 10"):
        tiny_pipe("x", image=rgb, **{**kw, "strength": 0.1})


def test_a_tensor_control_image_is_checked_as_a_pil_one(tiny_pipe):
    """A tensor control image of another shape was stretched to the output unchecked (a PIL one is refused), 0-255
    values were used as they were, and one channel was torch's error; a NaN conditioning scale drew black."""
    from suite.pipeline import Control

    kw = dict(num_inference_steps=2, output_type="latent", latents=tiny_pipe.prepare_latents(1, seed=0))
    t = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = tiny_pipe("a photo", control_image=t, **kw).latents
    assert torch.equal(tiny_pipe("a photo", control_image=t[0], **kw).latents, ref)  # [3, H, W]
    two = tiny_pipe("a photo", control_image=torch.cat([t, t.flip(-1)]), num_images_per_prompt=2,  # one per image
                    **{**kw, "latents": tiny_pipe.prepare_latents(2, seed=0)}).latents
    assert torch.allclose(two[:1], ref, atol=1e-4) and (two[1:] - ref).abs().max() > 1e-2  # batched: last bits
    grey = tiny_pipe("a photo", control_image=t[:, :1], **kw).latents  # one channel: repeated
    assert torch.equal(grey, tiny_pipe("a photo", control_image=t[:, :1].repeat(1, 3, 1, 1), **kw).latents)
    for bad, match in ((torch.rand(1, 3, 64, 32), "the control image is 32x64 but the output is 64x64"),
                       (t * 255, "holds values in \\[0, 1\\], got .* divide a 0-255 image by 255"),
                       (torch.rand(1, 2, 64, 64), "must be \\[1 or one per image, 3, height, width\\]")):
        with pytest.raises(ValueError, match=match):
            tiny_pipe("a photo", control_image=bad, **kw)
    with pytest.raises(ValueError, match="the conditioning scale of edges must be a finite number"):
        tiny_pipe("a photo", controls=[Control(prompt="e", image=t, weight=2.0, conditioning_scale=float("nan"),
                                               name="edges")], **kw)


def test_a_numpy_control_image_is_read_as_its_pil_twin_and_another_type_is_one_sentence(tiny_pipe):
    """diffusers takes a control image as a numpy array too; here it was a bare TypeError from ``image.size``."""
    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    kw = dict(num_inference_steps=2, output_type="latent", latents=tiny_pipe.prepare_latents(1, seed=0))
    from_pil = tiny_pipe("a photo", control_image=Image.fromarray(arr), **kw).latents
    assert torch.equal(tiny_pipe("a photo", control_image=arr, **kw).latents, from_pil)
    assert torch.allclose(tiny_pipe("a photo", control_image=arr / 255.0, **kw).latents, from_pil, atol=1e-4)
    with pytest.raises(ValueError, match="control image must be"):
        tiny_pipe("a photo", control_image="edges.png", **kw)
    with pytest.raises(ValueError, match="uint8"):  # 0-255 as int64 read as floats came out white
        tiny_pipe("a photo", control_image=arr.astype(np.int64), **kw)


def test_prompts_mixing_empty_and_non_empty_are_one_sentence(tiny_pipe):
    """``["a photo", ""]``: the empty row's automatic weights came out 0 (its reference was its own empty prompt)
    and it got the prompt's guidance rule, so it was not the image the empty prompt makes alone."""
    with pytest.raises(ValueError, match="mix empty and non-empty"):
        tiny_pipe(["a photo", ""], num_inference_steps=2, output_type="latent")


def test_the_callers_objects_of_the_wrong_kind_are_one_sentence(tiny_pipe):
    """Each was a bare error from inside diffusers or torch, or a silent change: an unknown output_type came back as
    numpy, numpy latents or embeddings were AttributeError '.to', a short list of generators an IndexError, a
    callback returning None AttributeError 'pop', and one returning latents of another shape changed the output's
    size."""
    kw = dict(num_inference_steps=2)
    lat = tiny_pipe.prepare_latents(1, seed=0)
    for bad, phrase in ((dict(output_type="jpeg"), "output_type must be pil, np, pt or latent"),
                        (dict(latents=lat.numpy()), "latents must be a torch tensor, got ndarray"),
                        (dict(prompt_embeds=tiny_pipe.encode_prompt("x").numpy(), prompt=None),
                         "prompt_embeds must be a torch tensor"),
                        (dict(num_images_per_prompt=3, generator=[torch.Generator(), torch.Generator()]),
                         "a list of 2 generators for 3 images"),
                        (dict(callback_on_step_end=lambda p, i, t, k: None), "must return a dict"),
                        (dict(callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"][..., :8]}),
                         "change their values, not their shape")):
        args = {"prompt": "x", **kw, **bad}
        with pytest.raises(ValueError, match=phrase):
            tiny_pipe(args.pop("prompt"), **args)
    # a callback that changes the values is taken, as before
    out = tiny_pipe("x", latents=lat, output_type="latent",
                    callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"] * 0}, **kw)
    assert out.latents.abs().max() == 0


def test_start_images_controls_and_auto_norm_given_loosely(tiny_pipe):
    """A file path as the start image was diffusers' "Input is in incorrect format", two start images for one output
    said "give 1 or 1", one Control not in a list was "not iterable", and a misspelt auto_norm was ignored when both
    weights were fixed."""
    from suite.pipeline import Control

    kw = dict(num_inference_steps=2, output_type="latent")
    im = Image.new("RGB", (64, 64), "gray")
    with pytest.raises(ValueError, match="a start image must be a PIL image, a numpy array or a tensor, got str"):
        tiny_pipe("x", image="photo.png", **kw)
    with pytest.raises(ValueError, match="got 2 start images for 1 output\\(s\\): .*num_images_per_prompt=2"):
        tiny_pipe("x", image=[im, im], **kw)
    with pytest.raises(ValueError, match="auto_norm must be 'direction' or 'prediction', got 'directon'"):
        tiny_pipe("x", domain_weight=1.0, control_weight=2.0, auto_norm="directon", **kw)
    lat = tiny_pipe.prepare_latents(1, seed=0)
    one = Control(prompt="a face", weight=2.0)
    assert torch.equal(tiny_pipe("x", controls=one, latents=lat, **kw).latents,
                       tiny_pipe("x", controls=[one], latents=lat, **kw).latents)
