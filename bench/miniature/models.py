"""The miniature's models in Stable Diffusion's architecture, at toy size, and LoRA for the LoRA baseline.

* UNet: diffusers ``UNet2DConditionModel`` on the 8x8x48 latent of :class:`~bench.miniature.world.PatchAutoencoder`
  (cross-attention at 8x8 and in the middle block, as SD has it at every resolution but the smallest).
* Text encoder: transformers ``CLIPTextModel`` (2 layers, width 64), trained jointly with the base UNet and then
  frozen (SD's CLIP is frozen in every method here too).
* Tokenizer: ``CLIPTokenizer`` on a word-level BPE vocabulary (:func:`~bench.miniature.world.write_tokenizer`).
* Scheduler: SD1.5's scaled-linear betas with v-prediction (as SD2; an undertrained tiny
  epsilon model gives noisy samples at high noise), converted to epsilon by ``suite.denoisers``; sampling uses DPM-Solver++ on its config.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from .world import IMAGE_SIZE, PatchAutoencoder, vocabulary, write_tokenizer

PATCH = 4
LATENT_CHANNELS = 3 * PATCH * PATCH
TEXT_DIM = 64
MAX_TOKENS = 20

SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        num_train_timesteps=1000, prediction_type="v_prediction", steps_offset=1, clip_sample=False,
                        set_alpha_to_one=False)


def unet_config(width: int = 64) -> dict:
    """Two levels (8x8, 4x4) of ``width`` channels; ``width`` must be at least the latent's 48 channels, or the
    first convolution cannot keep the per-pixel detail the denoiser needs."""
    return dict(
        sample_size=IMAGE_SIZE // PATCH,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(width, width),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_components(seed: int, width: int = 64) -> dict:
    """Fresh (untrained) base components: unet, text_encoder, tokenizer, vae, scheduler (a DDPM scheduler for
    training; :func:`sampling_scheduler` gives the sampler)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), vocabulary(), MAX_TOKENS)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(width))
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM))
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    return dict(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, vae=PatchAutoencoder(PATCH),
                scheduler=scheduler)


def sampling_scheduler():
    """DPM-Solver++ (the paper's sampler) on SD1.5's noise schedule."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")}
    return DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def clone(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)


class LoRALinear(nn.Module):
    """``y = W x + (alpha / r) B A x`` with ``W`` frozen, ``A`` small random, ``B`` zero (LoRA, Hu et al. 2021)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 4.0, seed: int = 0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / rank)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.lora_A.t() @ self.lora_B.t())


def add_lora(unet: nn.Module, rank: int = 4, seed: int = 0) -> int:
    """In place: freeze ``unet`` and wrap every attention projection (``to_q/k/v``, ``to_out[0]``) with LoRA.
    Returns the number of trainable parameters."""
    for p in unet.parameters():
        p.requires_grad_(False)
    i = 0
    for module in list(unet.modules()):
        for name in ("to_q", "to_k", "to_v"):
            lin = getattr(module, name, None)
            if isinstance(lin, nn.Linear):
                setattr(module, name, LoRALinear(lin, rank, seed=seed + i))
                i += 1
        out = getattr(module, "to_out", None)
        if isinstance(out, nn.ModuleList) and isinstance(out[0], nn.Linear):
            out[0] = LoRALinear(out[0], rank, seed=seed + i)
            i += 1
    return count_parameters(unet, trainable_only=True)
