"""Minimal training for the miniature: the base model, vanilla fine-tuning, LoRA, F_T optimisation and the
null-text domain model. One loss function, the training package's ``training.train.denoising_loss``, serves
all of them. (:func:`optimize_text_features` here is a small loop over pre-encoded latents; the training
package's ``training.textinit.optimize_text_features`` does the same over a dataset.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from training.train import denoising_loss  # noqa: F401 - re-exported for the experiment

from .world import DOMAIN_TEMPLATE, OpenWorld, to_tensor


class TokenCache:
    """Token ids per caption string (captions repeat, and python BPE is slow)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


def _loop(params, steps: int, lr: float, step_fn: Callable[[int], torch.Tensor], desc: str, progress: bool,
          on_step: Callable[[int], None] | None = None, warmup: int = 0) -> list[float]:
    """AdamW on ``params`` for ``steps`` steps of ``step_fn(i) -> loss``; grad-norm clip 1.0 (the authors'
    setting); linear warm-up; ``on_step(i + 1)`` after each update (checkpoints). Returns the losses."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=2.0)
    for i in bar:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (i + 1) / warmup) if warmup else lr
        loss = step_fn(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if i % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if on_step is not None:
            on_step(i + 1)
    return losses


def train_base(parts: dict, steps: int, batch: int, lr: float, seed: int, p_uncond: float = 0.1,
               progress: bool = True) -> list[float]:
    """Train the base text-to-image model (UNet and CLIP text encoder together) on the open world, with
    caption dropout ``p_uncond`` (the empty caption) so classifier-free guidance works."""
    unet, text_encoder, vae, scheduler = parts["unet"], parts["text_encoder"], parts["vae"], parts["scheduler"]
    tokens = TokenCache(parts["tokenizer"])
    world = OpenWorld(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    unet.train()
    text_encoder.train()

    def step(i):
        images, captions, _ = world.batch(batch)
        captions = ["" if rng.random() < p_uncond else c for c in captions]
        latents = vae.encode(to_tensor(images)).latent_dist.sample() * vae.config.scaling_factor
        ehs = text_encoder(tokens(captions))[0]
        return denoising_loss(unet, latents, ehs, scheduler, gen)

    losses = _loop(list(unet.parameters()) + list(text_encoder.parameters()), steps, lr, step, "base model",
                   progress, warmup=min(100, steps // 10))
    unet.eval()
    text_encoder.eval().requires_grad_(False)
    return losses


def _domain_latents(vae, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(to_tensor(images)).latent_dist.sample() * vae.config.scaling_factor


def finetune(unet, ehs_template: torch.Tensor | None, ehs_empty: torch.Tensor | None, vae, scheduler,
             images: np.ndarray, steps: int, batch: int, lr: float, seed: int, checkpoints: Sequence[int] = (),
             p_uncond: float = 0.1, desc: str = "fine-tuning", progress: bool = True) -> dict[int, torch.nn.Module]:
    """Train ``unet`` (in place) on the domain images with one fixed conditioning:

    * vanilla fine-tuning (paper Sec. 4.4): ``ehs_template`` = features of "a photo of porcelain", with the same
      caption dropout as the base (``ehs_empty``), so the model's unconditional prediction is trained too;
    * LoRA: the same, on a UNet whose only trainable parameters are the LoRA matrices;
    * the null-text domain model (Sec. 3.3): ``ehs_template=None`` (a null-text UNet reads no text).

    Returns frozen copies of the UNet after each step count in ``checkpoints``.
    """
    latents = _domain_latents(vae, images)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    saved: dict[int, torch.nn.Module] = {}
    unet.train()

    def step(i):
        idx = torch.from_numpy(rng.integers(0, len(latents), size=batch))
        ehs = None
        if ehs_template is not None:
            drop = torch.from_numpy(rng.random(batch) < p_uncond).view(-1, 1, 1)
            ehs = torch.where(drop, ehs_empty, ehs_template)
        return denoising_loss(unet, latents[idx], ehs, scheduler, gen)

    def on_step(n):
        if n in checkpoints:
            saved[n] = copy.deepcopy(unet).eval().requires_grad_(False)

    _loop(unet.parameters(), steps, lr, step, desc, progress, on_step)
    unet.eval()
    return saved


def optimize_text_features(unet, F_T: torch.Tensor, vae, scheduler, images: np.ndarray, steps: int, batch: int,
                           lr: float, seed: int, progress: bool = True) -> torch.Tensor:
    """Paper Sec. 3.3: start from ``F_T`` = text-encoder output of "a photo of <domain>" (``[1, L, D]``) and
    optimise it (the UNet frozen) by the denoising loss on domain images. Returns the optimised ``F_T``."""
    latents = _domain_latents(vae, images)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    requires = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    feats = torch.nn.Parameter(F_T.detach().clone())

    def step(i):
        idx = torch.from_numpy(rng.integers(0, len(latents), size=batch))
        return denoising_loss(unet, latents[idx], feats, scheduler, gen)

    try:
        _loop([feats], steps, lr, step, "F_T optimisation", progress)
    finally:
        for p, r in zip(unet.parameters(), requires):
            p.requires_grad_(r)
    return feats.detach()


__all__ = ["DOMAIN_TEMPLATE", "TokenCache", "denoising_loss", "finetune", "optimize_text_features", "train_base"]
