"""Tests of the miniature's parts (fast): the world, the tokenizer, the autoencoder, the method-blind metrics, LoRA.

The end-to-end quick run (the CI check that ours keeps more text control than fine-tuning) is in
tests/test_miniature_quick.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.miniature import metrics as MET
from bench.miniature import world as W


def test_geometry_recovers_every_attribute_of_real_images():
    for images, attrs in (W.open_images(300, 11), W.domain_images(300, 12)):
        acc = MET.control_accuracy(images, [(a.colour, a.shape, a.position) for a in attrs])
        assert acc == {"colour": 1.0, "shape": 1.0, "position": 1.0, "align": 1.0, "all": 1.0}


def test_geometry_rejects_wrong_targets_and_empty_images():
    images, attrs = W.open_images(60, 13)
    colours = list(W.COLOURS)
    wrong = [(colours[(colours.index(a.colour) + 1) % 4], a.shape, a.position) for a in attrs]
    acc = MET.control_accuracy(images, wrong)
    assert acc["colour"] == 0.0 and acc["all"] == 0.0 and acc["shape"] == 1.0
    assert acc["align"] == pytest.approx(2 / 3)
    blank = np.full((32, 32, 3), 128, np.uint8)
    assert MET.measure(blank).colour is None
    assert MET.control_accuracy(blank[None], [("red", "circle", "left")])["all"] == 0.0


def test_domain_images_differ_from_open_world_only_in_style():
    a = W.Attributes("red", "circle", "left", "large", "grey", domain=False)
    d = W.Attributes("red", "circle", "left", "large", "cream", domain=True)
    im_a, im_d = W.render(a), W.render(d)
    assert MET.measure(im_a) == MET.measure(im_d)  # same control attributes...
    assert np.abs(im_a.astype(int) - im_d.astype(int)).mean() > 50  # ...different pixels (style)


def test_tokenizer_makes_one_token_per_word(tmp_path):
    from transformers import CLIPTokenizer

    W.write_tokenizer(tmp_path, W.vocabulary(), 20)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    text = " ".join(W.vocabulary())
    ids = tok(text).input_ids
    assert len(ids) == len(W.vocabulary()) + 2
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text.replace(" ,", ",")


def test_patch_autoencoder_is_lossless_with_the_vae_surface():
    vae = W.PatchAutoencoder(4)
    x = W.to_tensor(W.open_images(3, 14)[0])
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (3, 48, 8, 8)
    assert torch.equal(vae.decode(z).sample, x)
    assert torch.equal(vae.decode(z, return_dict=False)[0], x)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4 and vae.config.scaling_factor == 1.0
    np.testing.assert_array_equal(W.to_uint8(x), W.open_images(3, 14)[0])


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert MET.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(m, 4 I): |m|^2 + tr(I + 4I - 2 * 2I) = |m|^2 + 3
    b = rng.normal(size=(4000, 3)) * 2 + np.array([1.0, 2.0, 0.0])
    assert MET.frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.08)


def test_diversity_is_mean_pairwise_distance():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert MET.diversity(f) == pytest.approx((5 + 5 + 5 + 5 + 0 + 0) / 6)


def test_lora_starts_as_the_base_and_trains_only_its_matrices():
    from diffusers import UNet2DConditionModel

    from bench.miniature import models as M

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**M.unet_config(8)).eval()
    lora = M.clone(unet)
    n = M.add_lora(lora, rank=2)
    z, t, e = torch.randn(2, 48, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, M.TEXT_DIM)
    with torch.no_grad():
        torch.testing.assert_close(lora(z, t, e).sample, unet(z, t, e).sample)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert n == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_denoising_loss_targets_v_for_a_v_model():
    from diffusers import DDPMScheduler

    from bench.miniature.train import denoising_loss

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    z0 = torch.randn(4, 3, 2, 2)
    gen = torch.Generator().manual_seed(0)
    captured = {}

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))  # the loss reads the network's dtype

        def forward(self, noisy, t, encoder_hidden_states=None, return_dict=False):
            # The exact v from the same draws: recompute eps from z_t and z_0.
            a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
            eps = (noisy - a.sqrt() * z0) / (1 - a).sqrt()
            captured["ehs"] = encoder_hidden_states
            return (a.sqrt() * eps - (1 - a).sqrt() * z0,)

    assert denoising_loss(Oracle(), z0, None, sched, gen).item() == pytest.approx(0.0, abs=1e-8)
    assert captured["ehs"] is None


class _DeltaVModel(torch.nn.Module):
    """The exact v-prediction network for data that is one point ``x*`` (a closed form)."""

    def __init__(self, xstar, alphas_cumprod):
        super().__init__()
        from types import SimpleNamespace

        self.xstar, self.ac = xstar, alphas_cumprod
        self.config = SimpleNamespace(sample_size=8, in_channels=48, block_out_channels=[1, 1])
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t, encoder_hidden_states=None, return_dict=False, **kwargs):
        a = self.ac[t.long()].view(-1, 1, 1, 1)
        eps = (z - a.sqrt() * self.xstar) / (1 - a).sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * self.xstar,)


def test_pipeline_samples_a_v_prediction_model_exactly():
    """A v-model's outputs are converted to epsilon by the denoiser, so the sampler must step as an epsilon
    scheduler (a v-configured scheduler used as-is would convert twice and leave noise in the image)."""
    from bench.miniature import models as M
    from suite.pipeline import InDomainPipeline

    parts = M.build_components(0, 8)
    sched = M.sampling_scheduler()
    assert sched.config.prediction_type == "v_prediction"
    xstar = torch.rand(1, 48, 8, 8) * 2 - 1
    unet = _DeltaVModel(xstar, sched.alphas_cumprod)
    pipe = InDomainPipeline(parts["vae"], parts["text_encoder"], parts["tokenizer"], unet, sched)
    out = pipe("a red circle", num_images=2, seed=0, num_inference_steps=10, output_type="latent", progress=False)
    assert (out.latents - xstar).abs().max() < 1e-4
    assert sched.config.prediction_type == "v_prediction"  # the pipeline's scheduler is left as it was


def test_quick_run_uses_the_full_runs_base_model():
    from bench.miniature.experiment import _BASE_FIELDS, FULL, QUICK

    assert QUICK.fingerprint(*_BASE_FIELDS) == FULL.fingerprint(*_BASE_FIELDS)
    assert max(QUICK.adapt_steps) < max(FULL.adapt_steps)


def test_pipeline_domain_term_of_a_v_prediction_model_is_converted():
    """With w_d = 1 and no control, Eq. 3 gives the domain model's own prediction: sampling must land on the
    domain model's data point, not the base's (the domain UNet shares the base's v parameterisation)."""
    from bench.miniature import models as M
    from suite.nulltext import DomainMetadata, DomainModel
    from suite.pipeline import InDomainPipeline

    parts = M.build_components(0, 8)
    sched = M.sampling_scheduler()
    x_base, x_domain = torch.rand(1, 48, 8, 8) * 2 - 1, torch.rand(1, 48, 8, 8) * 2 - 1
    domain = DomainModel(_DeltaVModel(x_domain, sched.alphas_cumprod), DomainMetadata(domain="d"))
    pipe = InDomainPipeline(parts["vae"], parts["text_encoder"], parts["tokenizer"],
                            _DeltaVModel(x_base, sched.alphas_cumprod), sched, domain_model=domain)
    out = pipe(domain_weight=1.0, num_images=1, seed=0, num_inference_steps=10, output_type="latent", progress=False)
    assert (out.latents - x_domain).abs().max() < 1e-4
