"""The mini world's Zero-1-to-3, trained from scratch on view pairs (a step of ``python -m training.miniworld``).

Data: random objects of every shape (a third with the porcelain glaze), each seen from one input view (elevation
-5..30 degrees, any azimuth) and ``targets`` other views (elevation -10..60, any azimuth), all framed as the 3D
flow frames its input (:func:`suite.miniworld.views.reference_framing`: the input's object centred and filling
80% of the frame; every view of the object shares that camera framing) and rendered on white.

Model: Zero-1-to-3's layout at the mini world's size, loaded by :func:`suite.zero123.load_zero123` like the real
one: an 8-channel ``UNet2DConditionModel`` (noisy target latent + the input view's unscaled latent), the mini
world's VAE, a ``CLIPVisionModelWithProjection`` and the ``(D + 4) -> D`` projection of ``[CLIP embedding, pose]``
with the real model's pose ``[d_polar, sin d_azimuth, cos d_azimuth, d_radius]``; epsilon prediction on
Stable Diffusion's scaled-linear schedule (``DDIMScheduler``). Both conditions are dropped together (zeros, as
:class:`suite.zero123.Zero123Guidance` feeds its unconditional branch) for 10% of the samples.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch

from suite.miniworld import world as W
from suite.miniworld.views import reference_framing, render_framed
from suite.miniworld.world import CAMERA_DISTANCE
from suite.zero123 import CLIP_MEAN, CLIP_STD, relative_pose

from .mini_models import cosine_lr, cpu_autocast, encode_latents, log_progress, optimise, run_chunks, to_tensor

log = logging.getLogger("training.miniworld")

IMAGE_SIZE = 64
EMBED_DIM = 64
UNET_CONFIG = dict(sample_size=IMAGE_SIZE // 4, in_channels=8, out_channels=4, layers_per_block=1,
                   block_out_channels=(64, 96, 96),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   cross_attention_dim=EMBED_DIM, attention_head_dim=4, norm_num_groups=16)
ENCODER_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                      image_size=IMAGE_SIZE, patch_size=8, projection_dim=EMBED_DIM)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
INPUT_ELEVATION = (-5.0, 30.0)
TARGET_ELEVATION = (-10.0, 60.0)


HARD_SHAPES = ("box", "box", "box", "cup", "cup", "cup", "bowl", "bowl", "cone", "vase", "bottle", "ball")
"""The shapes of the extra pairs, repeated by weight: the shapes whose novel views a copy or a blur
gets most nearly right (boxes: flat faces and sharp edges; cups: the handle; bowls: the inside)."""

BOX_SHAPES = ("box",) * 4 + ("cup", "cup", "bowl", "cone", "cone", "vase", "bottle", "ball")
"""The shapes of the third phase's fresh pairs (a third boxes, every shape still present so that none is forgotten)."""


def _pair_draws(seed: int, n: int, targets: int, shapes):
    """The objects and views of one chunk of :func:`render_pairs`: ``(object, elevations, azimuths)`` per object,
    view 0 the input."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        obj = W.random_object(rng, porcelain=bool(rng.random() < 1 / 3), shapes=shapes)
        el0, az0 = float(rng.uniform(*INPUT_ELEVATION)), float(rng.uniform(-180, 180))
        els = [el0] + list(rng.uniform(*TARGET_ELEVATION, targets))
        azs = [az0] + list(az0 + rng.uniform(-180, 180, targets))
        yield obj, els, azs


def pair_objects(n_objects: int, targets: int, seed: int, shapes=W.SHAPES) -> list:
    """The objects and views :func:`render_pairs` renders with the same arguments (``(object, elevations,
    azimuths)`` each, view 0 the input), without rendering: what a training phase saw, to measure a model on."""
    chunk = 100
    return [d for i in range(math.ceil(n_objects / chunk))
            for d in _pair_draws(seed * 100003 + i, min(chunk, n_objects - i * chunk), targets, tuple(shapes))]


def _pair_chunk(args):
    seed, n, targets, shapes = args
    torch.set_num_threads(1)
    images, poses = [], []
    for obj, els, azs in _pair_draws(seed, n, targets, shapes):
        rgb, _ = render_framed(obj, reference_framing(obj, els[0], azs[0]), els, azs, IMAGE_SIZE)
        images.append((rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        poses.append(np.stack([els, azs], -1))
    return np.stack(images), np.stack(poses).astype(np.float32)


def render_pairs(n_objects: int, targets: int, seed: int, workers: int = 2, shapes=W.SHAPES) -> dict:
    """``images [n, 1 + targets, 64, 64, 3] uint8`` (view 0 is the input) and ``poses [n, 1 + targets, 2]``
    (elevation, azimuth in degrees); the objects' shapes are drawn uniformly from ``shapes`` (repeat one to
    weight it)."""
    chunk = 100
    jobs = [(seed * 100003 + i, min(chunk, n_objects - i * chunk), targets, tuple(shapes))
            for i in range(math.ceil(n_objects / chunk))]

    parts = run_chunks(_pair_chunk, jobs, workers, name="render zero123 views")
    return dict(images=np.concatenate([p[0] for p in parts]), poses=np.concatenate([p[1] for p in parts]))


def build_parts(vae, seed: int = 0) -> dict:
    """Untrained Zero-1-to-3 parts around the mini world's (trained) ``vae``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER_CONFIG))
    torch.manual_seed(seed + 2)
    projection = torch.nn.Linear(EMBED_DIM + 4, EMBED_DIM)
    return dict(unet=unet, vae=vae, image_encoder=encoder, projection=projection,
                scheduler=DDIMScheduler(**SCHEDULER_CONFIG))


def _clip_input(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, 64, 64] in [0, 1] -> the CLIP encoder's input, exactly as Zero123Guidance prepares it."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def train_zero123(data: dict, vae, steps: int, batch: int = 48, lr: float = 1e-3, seed: int = 0,
                  cond_dropout: float = 0.1, ema_decay: float = 0.999, init: dict | None = None,
                  prediction_type: str | None = None, zero_snr: bool | None = None) -> dict:
    """Train the parts of :func:`build_parts` (or ``init``'s, to continue a run) on :func:`render_pairs` data;
    returns the EMA parts. A continued run encodes its data with ``init``'s own VAE (the latent space its UNet
    was trained in), not ``vae``. ``prediction_type`` (``"epsilon"`` or ``"v_prediction"``; default: the
    scheduler's, epsilon for a new model) sets what the UNet learns to predict, and the returned scheduler says so
    (a continued run may switch, as Stable Diffusion 2 was switched from epsilon to v). ``zero_snr`` (default: as
    ``init``'s scheduler, off for a new model) trains on the schedule rescaled to zero terminal SNR (Lin et al.
    2024: the last timestep is pure noise, as sampling starts, so the target's outline cannot be read from what the
    noise leaves of it), which needs v-prediction; the returned scheduler samples from that last timestep
    (``timestep_spacing="trailing"``)."""
    from diffusers import DDPMScheduler

    parts = build_parts(vae, seed) if init is None else dict(init)
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r}: use 'epsilon' or 'v_prediction'")
        parts["scheduler"] = type(parts["scheduler"]).from_config(parts["scheduler"].config,
                                                                  prediction_type=prediction_type)
    if zero_snr is not None:
        parts["scheduler"] = type(parts["scheduler"]).from_config(
            parts["scheduler"].config, rescale_betas_zero_snr=zero_snr,
            timestep_spacing="trailing" if zero_snr else SCHEDULER_CONFIG.get("timestep_spacing", "leading"))
    kind = getattr(parts["scheduler"].config, "prediction_type", "epsilon")
    rescaled = bool(getattr(parts["scheduler"].config, "rescale_betas_zero_snr", False))
    if rescaled and kind != "v_prediction":
        raise ValueError("zero terminal SNR needs prediction_type='v_prediction': at the last timestep the noise is "
                         "the input, so there is no epsilon to learn")
    vae = parts["vae"]
    for name in ("unet", "image_encoder", "projection"):
        parts[name] = parts[name].float().train().requires_grad_(True)
    unet, encoder, projection = parts["unet"], parts["image_encoder"], parts["projection"]
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"}
                          | dict(prediction_type=kind, rescale_betas_zero_snr=rescaled))
    images, poses = data["images"], torch.from_numpy(data["poses"])
    n, views = images.shape[:2]
    lat = encode_latents(vae, images.reshape(-1, *images.shape[2:])).reshape(n, views, 4, 16, 16)
    scaling = vae.config.scaling_factor
    params = list(unet.parameters()) + list(encoder.parameters()) + list(projection.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    live = (unet, encoder, projection)
    ema = tuple(copy.deepcopy(m).requires_grad_(False) for m in live)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - 1, steps, lr)
        obj = torch.randint(0, n, (batch,), generator=gen)
        tgt = torch.randint(1, views, (batch,), generator=gen)
        x_in = (to_tensor(images[obj.numpy(), 0]) + 1) / 2
        concat = lat[obj, 0]
        z0 = lat[obj, tgt] * scaling
        pose = relative_pose(poses[obj, tgt, 0], poses[obj, tgt, 1], CAMERA_DISTANCE,
                             poses[obj, 0, 0], poses[obj, 0, 1], CAMERA_DISTANCE)
        keep = (torch.rand(batch, generator=gen) >= cond_dropout).float()
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        with cpu_autocast():
            emb = encoder(_clip_input(x_in)).image_embeds
            token = projection(torch.cat([emb.float(), pose], -1))[:, None] * keep[:, None, None]
            x = torch.cat([zt, concat * keep[:, None, None, None]], 1)
            pred = unet(x, t, encoder_hidden_states=token).sample
        target = noise if kind == "epsilon" else sched.get_velocity(z0, noise, t)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        optimise(opt, loss, params, zip(ema, live), step, ema_decay)
        log_progress("zero123", step, steps, t0, loss.item())
    parts.update(unet=ema[0].eval(), image_encoder=ema[1].eval(), projection=ema[2].eval())
    return parts
