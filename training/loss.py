"""The training loss of latent diffusion (Eq. 1: ``|| eps - eps_theta(z_t, t, c) ||^2``) and its noise schedule,
shared by the domain trainer, the ``F_T`` optimisation (:mod:`training.textinit`) and the mini world's trainers.
"""

from __future__ import annotations

import torch


def denoising_loss(unet, latents: torch.Tensor, encoder_hidden_states: torch.Tensor | None, scheduler,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                   timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """The denoising loss ``E_{t, eps} || target - unet(z_t, t, c) ||^2`` for clean ``latents`` (already scaled).

    ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` with the scheduler's ``add_noise``; the target is ``eps`` for an
    epsilon model and ``v`` for a v-prediction one. ``encoder_hidden_states=None`` for a null-text UNet.
    ``noise`` / ``timesteps`` default to draws from ``generator`` (on the CPU, so a seed gives the same draws on
    every device). Returns the mean squared error in float32.
    """
    b = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = noise.to(latents.device, torch.float32)
    timesteps = timesteps.to(latents.device).long()
    noisy = scheduler.add_noise(latents.float(), noise, timesteps)
    pred_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if pred_type == "epsilon":
        target = noise
    elif pred_type == "v_prediction":
        target = scheduler.get_velocity(latents.float(), noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {pred_type!r}: use epsilon or v_prediction")
    dtype = next(unet.parameters()).dtype
    ehs = None if encoder_hidden_states is None else encoder_hidden_states.to(latents.device)
    if ehs is not None and ehs.shape[0] == 1 and b > 1:
        ehs = ehs.expand(b, *ehs.shape[1:])
    pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=ehs if ehs is None else ehs.to(dtype),
                return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def training_scheduler(scheduler):
    """The DDPM noise schedule (``add_noise``) of a SD1.5 scheduler config (whatever sampler it names)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)
