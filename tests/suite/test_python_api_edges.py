"""Edges of the Python API that a review found (each test fails on the code before it): what a researcher passes to
InDomainPipeline, MultiGuidance and AutoWeights directly, not through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from suite.checks import UserError


def _latents(pipe, **kw):
    return pipe(**{"num_inference_steps": 3, "output_type": "latent", "seed": 0, **kw}).images


def test_a_scheduler_that_draws_noise_takes_the_calls_seed(tiny_pipe):
    """Euler ancestral (or DDPM, SDE-DPM-Solver) swapped in drew its per-step noise from torch's global generator:
    the same seed gave other images."""
    from diffusers import EulerAncestralDiscreteScheduler

    saved = tiny_pipe.scheduler
    try:
        tiny_pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(saved.config)
        a = _latents(tiny_pipe, prompt="a face")
        torch.manual_seed(123)  # the global stream moved: the call's seed alone decides
        b = _latents(tiny_pipe, prompt="a face")
        c = _latents(tiny_pipe, prompt="a face", seed=1)
    finally:
        tiny_pipe.scheduler = saved
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_a_start_image_keeps_its_shape_when_one_side_is_given(tiny_pipe):
    photo = Image.new("RGB", (64, 128), (120, 80, 40))
    assert tiny_pipe._native_size == 64  # the old fallback: 16 x 64, 64 x 16
    out = tiny_pipe("a face", image=photo, strength=0.5, width=16, num_inference_steps=4, seed=0).images[0]
    assert out.size == (16, 32)  # was 16 x the model's native size: stretched
    out = tiny_pipe("a face", image=photo, strength=0.5, height=16, num_inference_steps=4, seed=0).images[0]
    assert out.size == (8, 16)


def test_start_images_as_arrays_and_tensors_are_read_as_images(tiny_pipe):
    """A uint8 array reached the VAE at 0-509 (silently other latents than the same pixels as PIL); a gray or RGBA
    array failed in torch's words; a 0-255 tensor was taken as is."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    kw = dict(prompt="a face", strength=0.5, num_inference_steps=4)
    pil = _latents(tiny_pipe, image=Image.fromarray(pixels), **kw)
    assert torch.allclose(_latents(tiny_pipe, image=pixels, **kw), pil, atol=1e-4)
    assert torch.allclose(_latents(tiny_pipe, image=pixels / 255.0, **kw), pil, atol=1e-2)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    assert torch.allclose(_latents(tiny_pipe, image=tensor, **kw), pil, atol=1e-2)
    gray = _latents(tiny_pipe, image=pixels[..., 0], **kw)
    assert torch.allclose(gray, _latents(tiny_pipe, image=Image.fromarray(pixels[..., 0]), **kw), atol=1e-4)
    rgba = np.concatenate([pixels, np.full((32, 32, 1), 255, np.uint8)], -1)
    assert torch.allclose(_latents(tiny_pipe, image=rgba, **kw), pil, atol=1e-4)
    for bad, phrase in ((tensor * 255, "holds values in \\[0, 1\\]"), (pixels * 2.0, "of floats holds values"),
                        (pixels.astype(np.int32), "must be uint8")):
        with pytest.raises(ValueError, match=phrase):
            _latents(tiny_pipe, image=bad, **kw)


def test_guidance_given_whole_refuses_the_settings_it_replaces(tiny_pipe):
    """guidance=... dropped the weights, negative prompt and controls without a word."""
    mg = tiny_pipe.build_guidance(prompt="a face", domain_weight=1.0, control_weight=2.0, height=64, width=64)
    assert tiny_pipe(guidance=mg, num_inference_steps=2, seed=0).weights == {"domain": 1.0, "control": 2.0}
    for kw in (dict(domain_weight=50), dict(negative_prompt="blurry"), dict(w0=3.0), dict(use_domain=False)):
        with pytest.raises(ValueError, match="which guidance=... replaces"):
            tiny_pipe(guidance=mg, num_inference_steps=2, seed=0, **kw)


def test_two_terms_of_one_name_are_refused(tiny_pipe):
    """A control named 'control' (or 'domain') shared the name of the pipeline's own term: the weights reported,
    and a rule's schedules, applied to both."""
    from suite.pipeline import Control

    with pytest.raises(ValueError, match="two guidance terms are named 'control'"):
        tiny_pipe("a face", domain_weight=1, control_weight=3, num_inference_steps=2,
                  controls=[Control(prompt="smiling", weight=2, name="control")])
    out = tiny_pipe("a face", domain_weight=1, control_weight=3, num_inference_steps=2, seed=0,
                    controls=[Control(prompt="smiling", weight=2, name="smile")])
    assert out.weights == {"domain": 1.0, "control": 3.0, "smile": 2.0}


def test_a_rule_interval_between_the_calls_steps_is_refused(tiny_pipe):
    """3 steps sample noise levels 0.75, 0.5 and 0.25: a prompt given 0.55-0.7 only never acted, without a word."""
    with pytest.raises(ValueError, match="where none of this call's 3 steps falls"):
        tiny_pipe("a face", control_weight=5, guidance_rule="control=0.55-0.7", num_inference_steps=3, seed=0)
    tiny_pipe("a face", control_weight=5, guidance_rule="control=0.55-0.8", num_inference_steps=3, seed=0)


def test_the_automatic_text_weight_is_its_share_of_w0_above_the_cap(tiny_pipe):
    """A text term that is the reference gets exactly w0 / K (the docs): with w0 = 30 it was clipped to 20."""
    out = tiny_pipe("a face", domain_weight=0, control_weight="auto", w0=30, num_inference_steps=2, seed=0)
    assert out.weights["control"] == pytest.approx(30.0)


def test_direct_inputs_of_the_guidance_are_checked(tiny_pipe):
    from suite.guidance import AutoWeights, MultiGuidance, Term

    with pytest.raises(ValueError, match="are 999-wide and this model's UNet reads"):
        tiny_pipe(prompt_embeds=torch.randn(1, 77, 999), num_inference_steps=2)
    with pytest.raises(UserError):
        tiny_pipe.build_guidance(prompt="a face", control_weight=True)
    with pytest.raises(UserError):
        tiny_pipe.build_guidance(prompt="a face", domain_weight=500)
    for bad in (float("nan"), -5.0):
        with pytest.raises(ValueError, match="AutoWeights.max_weight"):
            AutoWeights(w0=7, norm="prediction", max_weight=bad)
    mg = tiny_pipe.build_guidance(prompt="a face", domain_weight=1.0, control_weight=2.0, height=64, width=64)
    with pytest.raises(ValueError, match="give a number"):
        MultiGuidance(mg.base, [Term(mg.terms[0].denoiser, True, name="domain")])
    ruled = MultiGuidance(mg.base, mg.terms, rule="domain=0-0.7")  # a rule's text, as the pipeline takes it
    assert ruled.rule.schedule("domain").hi == 0.7
