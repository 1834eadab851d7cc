"""Checks on real weights. Skipped unless the model folders are given through environment variables:

  INDOMAIN_SD_MODEL=/path/to/stable-diffusion-v1-5        (diffusers layout)
  INDOMAIN_DOMAIN_MODEL=/path/to/domain-model             (optional: a null-text domain model folder)
"""

import os

import numpy as np
import pytest

SD = os.environ.get("INDOMAIN_SD_MODEL")
DOMAIN = os.environ.get("INDOMAIN_DOMAIN_MODEL")

pytestmark = pytest.mark.realweights
needs_sd = pytest.mark.skipif(not SD or not os.path.isdir(SD),
                              reason="real SD1.5 weights not given (set INDOMAIN_SD_MODEL to a diffusers folder)")


@needs_sd
def test_real_sd_single_term_equals_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    from suite.pipeline import InDomainPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = InDomainPipeline.load(SD, device=device)
    ours = pipe("a photo of a face", control_weight=7.5, num_inference_steps=4, seed=0, height=256, width=256,
                output_type="np").images
    ref = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                  unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                  feature_extractor=None, requires_safety_checker=False)
    theirs = ref("a photo of a face", guidance_scale=7.5, num_inference_steps=4, height=256, width=256,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-4


@needs_sd
@pytest.mark.skipif(not DOMAIN, reason="no real domain model given (set INDOMAIN_DOMAIN_MODEL)")
def test_real_domain_model_generates():
    from suite.pipeline import InDomainPipeline

    pipe = InDomainPipeline.load(SD, domain_model=DOMAIN)
    out = pipe("wearing glasses", num_inference_steps=4, seed=0, height=256, width=256, output_type="np")
    assert set(out.weights) == {"domain", "control"}
    assert np.isfinite(out.images).all() and out.images.std() > 0.01
