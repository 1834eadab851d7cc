"""The mini world's own models and their trainers: the configurations, the word-level tokenizer, the VAE and the
base text-to-image model trained from scratch, and the optimisation pieces every mini-world trainer shares (the
cosine schedule, the optimiser-and-EMA step, progress lines). The build that runs them in order is
:mod:`training.miniworld`; the mini Zero-1-to-3 is :mod:`training.mini_zero123`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from suite.miniworld import world as W
from suite.miniworld.judge import HEADS, IGNORE, Judge
from suite.progress import LogProgress
from suite.testing import write_word_tokenizer

log = logging.getLogger("training.miniworld")

IMAGE_SIZE = 64
MAX_TOKENS = 20
TEXT_DIM = 128
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 48, 64), latent_channels=4,
                  layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False)
UNET_CONFIG = dict(sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(64, 96, 128),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=16)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
def _text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
                          max_position_embeddings=MAX_TOKENS, projection_dim=TEXT_DIM)


def make_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_word_tokenizer(folder, W.vocabulary(), MAX_TOKENS)
    return CLIPTokenizer.from_pretrained(folder)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX-512 and up)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_autocast():
    """bf16 autocast for the mini world's trainers where the CPU computes bf16 natively (measured there: 2.6 steps/s
    against 1.8 in float32), float32 elsewhere: on an AVX2-only CPU bf16 is emulated, and a mini Zero-1-to-3 step
    (batch 48) took 22.7 s against 1.4 s in float32 on one thread, 13.3 s against 0.8 s on two."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16())


def optimise(opt, loss: torch.Tensor, params, emas, step: int, ema_decay: float) -> None:
    """One optimiser step on ``loss`` (gradient norm clipped to 1), then each ``(ema, live)`` module pair of ``emas``
    moves towards the live weights (decay ``min(ema_decay, (1 + step) / (10 + step))``: a short warm-up)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    d = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema, live in emas:
            for pe, pl in zip(ema.parameters(), live.parameters()):
                pe.lerp_(pl, 1 - d)


_LINES = {}


def progress_lines(unit: str = "step"):
    """The build's :class:`suite.progress.LogProgress` (prefix ``mini world``; on a terminal too: the build always
    wrote its progress as lines), one per counted ``unit``."""
    if unit not in _LINES:
        _LINES[unit] = LogProgress("mini world", unit=unit, enabled=True, logger=log, clock=time.time)
    return _LINES[unit]


def log_progress(name: str, step: int, total: int, t0: float, loss: float) -> None:
    """A line for training step ``step`` of ``total`` (begun at ``time.time()`` = ``t0``), with the rate and the time
    left, at most every ``$INDOMAIN_PROGRESS_INTERVAL`` seconds (20) and at the first and last step."""
    lines = progress_lines()
    if step == 1:
        lines.start(name, total, since=t0)
    lines(name, step, total, {"loss": loss})


# ---------------------------------------------------------------------------------------------------------
# 2. VAE
def train_vae(images: np.ndarray, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0):
    """A small ``AutoencoderKL`` trained on renders: MSE + L1 reconstruction, a very small KL term (as SD's)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    data = to_tensor(images)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - 1, steps, lr)
        x = data[torch.randint(0, len(data), (batch,), generator=gen)]
        with cpu_autocast():
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(gen)).sample
        err = rec.float() - x
        loss = err.pow(2).mean() + 0.5 * err.abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log_progress("vae", step, steps, t0, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        deterministic_posterior(vae)
        sample = data[torch.randperm(len(data), generator=gen)[:512]]
        lat = torch.cat([vae.encode(sample[i:i + 64]).latent_dist.mean for i in range(0, len(sample), 64)])
        vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return vae


def deterministic_posterior(vae, log_variance: float = -30.0) -> None:
    """Make the encoder's posterior a point mass at its mean: the log-variance half of ``quant_conv`` outputs a
    constant ``log_variance`` (std ~3e-7). A short training leaves the posterior std far from SD's (here about 0.4
    of the latents' spread), and every latent the models see (the base's training latents, the domain trainer's
    sampled latents, SDEdit's encoded image) must come from the same distribution. The decoder, trained on
    samples around the mean, decodes the mean at least as well."""
    conv = vae.quant_conv
    c = conv.out_channels // 2
    conv.weight[c:] = 0
    conv.bias[c:] = log_variance


def encode_latents(vae, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """Posterior means (unscaled) of every image."""
    data = to_tensor(images)
    with torch.no_grad():
        return torch.cat([vae.encode(data[i:i + batch]).latent_dist.mean for i in range(0, len(data), batch)])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# ---------------------------------------------------------------------------------------------------------
# 3. base text-to-image model
def train_base(latents: torch.Tensor, captions: list[str], tokenizer, scaling: float, steps: int, batch: int = 64,
               lr: float = 1e-3, seed: int = 0, caption_dropout: float = 0.1, ema_decay: float = 0.999):
    """UNet and text encoder trained jointly from scratch on ``(latent, caption)`` pairs (v-prediction; the
    empty caption for ``caption_dropout`` of the samples, which classifier-free guidance needs). Returns the EMA
    UNet and the EMA text encoder."""
    import copy

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    text = CLIPTextModel(_text_config(tokenizer))
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    z_all = latents * scaling
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - 1, steps, lr)
        idx = torch.randint(0, len(z_all), (batch,), generator=gen)
        tok = ids[idx].clone()
        drop = torch.rand(batch, generator=gen) < caption_dropout
        tok[drop] = empty
        z0 = z_all[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        with cpu_autocast():
            ehs = text(tok)[0]
            pred = unet(zt, t, encoder_hidden_states=ehs).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        optimise(opt, loss, params, ((ema_unet, unet), (ema_text, text)), step, ema_decay)
        log_progress("base", step, steps, t0, loss.item())
    return ema_unet.eval(), ema_text.eval()


def save_sd_folder(folder: Path, unet, vae, text_encoder, tokenizer, dtype=torch.float16) -> None:
    """A diffusers Stable Diffusion folder (what ``suite.models.load_sd`` reads), weights in ``dtype``."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                           if k not in ("clip_sample", "set_alpha_to_one")})
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.to(dtype=torch.float32)


def run_chunks(fn, jobs: list, workers: int = 2, name: str | None = None) -> list:
    """``[fn(job) for job in jobs]``, in this process (``workers <= 1``: no start-up, torch's thread count kept)
    or over a pool of ``workers`` spawned processes (the renderers of the mini world's data sets). With ``name``, a
    progress line per finished part (at most every ``$INDOMAIN_PROGRESS_INTERVAL`` seconds)."""
    import multiprocessing as mp

    lines = progress_lines("part")
    if name:
        lines.start(name, len(jobs))

    def done(parts):
        if name:
            lines(name, len(parts), len(jobs))

    parts = []
    if workers <= 1:
        threads = torch.get_num_threads()
        for j in jobs:
            parts.append(fn(j))
            done(parts)
        torch.set_num_threads(threads)
        return parts
    with mp.get_context("spawn").Pool(workers) as pool:
        for part in pool.imap(fn, jobs):  # in order, as map
            parts.append(part)
            done(parts)
    return parts


# ----------------------------------------------------------------------------------------------------------
# the judge (suite.miniworld.judge): trained on augmented renders only, never on generated images
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Renders made to look like imperfect samples: shifts, blur, noise, contrast and brightness changes."""
    b = x.shape[0]
    shift = torch.randint(-4, 5, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    if torch.rand(1, generator=gen).item() < 0.5:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None]) / 16
        x = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                 k.expand(3, 1, 3, 3), groups=3)
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    sigma = 0.12 * torch.rand(b, 1, 1, 1, generator=gen)
    x = x * gain + bias + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_judge(images: np.ndarray, labels: np.ndarray, steps: int, batch: int = 64, lr: float = 2e-3,
                seed: int = 0, log=print) -> Judge:
    """Train on renders ``images [N, 64, 64, 3] uint8`` with ``labels [N, len(HEADS)]`` (one column per head of
    :data:`suite.miniworld.judge.HEADS`; ``IGNORE`` where a head does not apply: a face's colour, an object's hair,
    the porcelain glaze's colour and pattern)."""
    torch.manual_seed(seed)
    net = Judge()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(labels)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x, y = augment(x_all[idx], gen), y_all[idx]
        out = net(x)
        loss = 0.0
        for j, head in enumerate(HEADS):
            keep = y[:, j] != IGNORE
            if keep.any():
                loss = loss + nn.functional.cross_entropy(out[head][keep], y[keep, j])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"judge step {step}/{steps}  loss {loss.item():.4f}  {step / (time.time() - t0):.2f} steps/s")
    return net.eval().requires_grad_(False)
