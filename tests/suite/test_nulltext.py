"""Null-text UNet surgery (paper Eq. 4-5): parameter counts, capture of E, exactness at capture, save/load."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-tests" / "tiny-v3"))

from suite.nulltext import (  # noqa: E402
    SD15_UNET_CONFIG,
    DomainMetadata,
    DomainModel,
    capture_E,
    check_E,
    convert_to_nulltext,
    make_domain_model,
    nulltext_layers,
    parameter_counts,
)


@pytest.fixture(scope="module")
def parts():
    from suite.testing import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture(scope="module")
def F_T(parts):
    from suite.text import encode_prompts

    return encode_prompts(parts["tokenizer"], parts["text_encoder"], ["a photo of a face"])


def _removed_closed_form(config: dict) -> tuple[int, int]:
    """Parameters removed by the surgery, from the config alone: per cross-attention layer of width C with text
    width D, to_q (C*C) + to_k, to_v (D*C each) + to_out (C*C + C) + norm2 (2C). Also the number of layers."""
    chans = list(config["block_out_channels"])
    D = config["cross_attention_dim"]
    lpb = config.get("layers_per_block", 2)
    widths = []
    for i, kind in enumerate(config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            widths += [chans[i]] * lpb
    widths.append(chans[-1])  # mid block (UNetMidBlock2DCrossAttn)
    rev = chans[::-1]
    for i, kind in enumerate(config["up_block_types"]):
        if kind.startswith("CrossAttn"):
            widths += [rev[i]] * (lpb + 1)
    return sum(2 * c * c + 2 * D * c + 3 * c for c in widths), len(widths)


def test_parameter_counts_tiny_and_sd15():
    from suite.testing import tiny_unet_config

    for config in (tiny_unet_config(), SD15_UNET_CONFIG):
        counts = parameter_counts(config)
        removed, layers = _removed_closed_form(config)
        assert counts["layers"] == layers
        assert counts["full"] - counts["nulltext"] == removed
    sd = parameter_counts()
    # SD1.5's UNet has 859,520,964 parameters (published); 16 cross-attention layers, as the paper's Table 1.
    assert sd["full"] == 859_520_964 and sd["layers"] == 16
    assert 800e6 < sd["nulltext"] < 820e6  # the paper reports ~810M


def _attn2_by_hand(attn, x, text):
    """Eq. 4's branch W(softmax(Q K^T / sqrt(d)) V) written out, independent of diffusers' processor."""
    q, k, v = attn.to_q(x), attn.to_k(text), attn.to_v(text)
    h = attn.heads
    b, n, c = q.shape
    d = c // h
    q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, c)
    return attn.to_out[0](out)


def test_capture_E_is_nonzero_and_equals_mean_of_original_layer(parts, F_T):
    unet = copy.deepcopy(parts["unet"])
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(3, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([50, 400, 900])
    # Inputs of every attn2 in an unmodified forward, then the branch recomputed by hand.
    inputs = {}
    hooks = [block.attn2.register_forward_pre_hook(lambda m, a, kw, name=name: inputs.__setitem__(name, a[0] if a else
                                                   kw["hidden_states"]), with_kwargs=True)
             for name, block in unet.named_modules() if getattr(block, "attn2", None) is not None]
    with torch.no_grad():
        unet(latents, timesteps, encoder_hidden_states=F_T.expand(3, -1, -1))
    for h in hooks:
        h.remove()
    E = capture_E(unet, F_T, latents=latents, timesteps=timesteps, batch_size=2)  # chunked: mean over all 3
    assert set(E) == set(inputs) and len(E) == 4  # tiny UNet: 4 cross-attention layers (down, mid, 2 up)
    blocks = dict(unet.named_modules())
    for name, e in E.items():
        with torch.no_grad():
            expected = _attn2_by_hand(blocks[name].attn2, inputs[name], F_T.expand(3, -1, -1)).mean(dim=(0, 1))
        assert e.shape == (1, 1, expected.shape[-1])
        assert e.abs().min() > 0
        torch.testing.assert_close(e.flatten(), expected, rtol=1e-4, atol=1e-6)
    convert_to_nulltext(unet, E)
    check_E(unet)
    for name, layer in nulltext_layers(unet).items():
        torch.testing.assert_close(layer.E, E[name])


def test_conversion_is_exact_at_capture_time(parts, F_T):
    """The null-text UNet equals the original UNet whose cross-attention outputs are replaced by their captured
    means (Eq. 5 is Eq. 4 with the branch replaced by E), and both differ from the untouched original."""
    original = copy.deepcopy(parts["unet"])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([300, 700])
    E = capture_E(original, F_T, latents=latents, timesteps=timesteps)
    null = convert_to_nulltext(copy.deepcopy(original), E)

    hooks = [block.attn2.register_forward_hook(lambda m, a, out, name=name: E[name].expand_as(out))
             for name, block in original.named_modules() if getattr(block, "attn2", None) is not None]
    text = F_T.expand(2, -1, -1)
    with torch.no_grad():
        replaced = original(latents, timesteps, encoder_hidden_states=text).sample
        for h in hooks:
            h.remove()
        untouched = original(latents, timesteps, encoder_hidden_states=text).sample
        eps_d = null(latents, timesteps, encoder_hidden_states=None).sample
        eps_d_text = null(latents, timesteps, encoder_hidden_states=torch.randn_like(text)).sample
    torch.testing.assert_close(eps_d, replaced, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eps_d_text, eps_d, rtol=0, atol=0)  # the null-text UNet ignores text
    assert (untouched - eps_d).abs().max() > 1e-4  # the check above is not vacuous


def test_uncaptured_E_cannot_be_saved_or_loaded(parts, tmp_path):
    from safetensors.torch import load_file, save_file

    unet = convert_to_nulltext(copy.deepcopy(parts["unet"]))  # E left at zero: the authors' release's defect
    with pytest.raises(ValueError, match="never captured"):
        DomainModel(unet, DomainMetadata("face")).save_pretrained(tmp_path / "bad")
    good = make_domain_model(copy.deepcopy(parts["unet"]), parts["text_encoder"], parts["tokenizer"],
                             "a photo of a face", domain="face")
    folder = good.save_pretrained(tmp_path / "good")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    # Zero E written by hand (as a release without capture would): refused on load.
    e_keys = [k for k in state if k.endswith(".E")]
    assert len(e_keys) == 4
    save_file({k: (torch.zeros_like(v) if k in e_keys else v) for k, v in state.items()}, str(weights))
    with pytest.raises(ValueError, match="never captured"):
        DomainModel.from_pretrained(folder)
    # Strict: an extra key or a missing key is an error, not silently ignored.
    save_file({**state, "extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        DomainModel.from_pretrained(folder)
    save_file({k: v for k, v in state.items() if k != e_keys[0]}, str(weights))
    with pytest.raises(RuntimeError, match="Missing key"):
        DomainModel.from_pretrained(folder)
    (folder / "nulltext.json").unlink()
    with pytest.raises(ValueError, match="has no nulltext.json"):
        DomainModel.from_pretrained(folder)


def test_save_load_round_trip_and_pipeline(parts, tmp_path):
    from suite.models import load_domain_model
    from suite.pipeline import InDomainPipeline
    from suite.testing import tiny_model_dir

    model = make_domain_model(copy.deepcopy(parts["unet"]), parts["text_encoder"], parts["tokenizer"],
                              "a photo of porcelain", domain="porcelain", base_model="tiny")
    model.metadata.training_steps = 7
    folder = model.save_pretrained(tmp_path / "dm")
    (folder / "training").mkdir()  # a training run's state next to the model: kept when saving again
    model.save_pretrained(folder)
    assert (folder / "training").is_dir()
    meta = json.loads((folder / "nulltext.json").read_text())
    assert meta["domain"] == "porcelain" and meta["prompt"] == "a photo of porcelain" and meta["training_steps"] == 7
    loaded = load_domain_model(str(folder))
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 990])
    with torch.no_grad():
        a = model.unet(z, t, encoder_hidden_states=None).sample
        b = loaded.unet(z, t, encoder_hidden_states=None).sample
    assert torch.equal(a, b)

    pipe = InDomainPipeline.load(str(tiny_model_dir() / "sd"), domain_model=str(folder))
    with_domain = pipe(num_images_per_prompt=1, seed=0, num_inference_steps=3, height=32, width=32, domain_weight=3.0,
                       output_type="pt")
    without = pipe(num_images_per_prompt=1, seed=0, num_inference_steps=3, height=32, width=32, use_domain=False,
                   output_type="pt")
    assert with_domain.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(with_domain.images).all()
    assert (with_domain.latents - without.latents).abs().max() > 1e-3  # the domain term is in the guidance
