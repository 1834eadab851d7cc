"""Validation samples during domain training: ``(1 - w_d) eps_sd + w_d eps_d`` (paper Sec. 3.4) through the
same multi-guidance module and pipeline as ``generate``, saved as one image grid per checkpoint and logged."""

from __future__ import annotations

from pathlib import Path

import torch

from suite.denoisers import UNetDenoiser
from suite.guidance import MultiGuidance, Term
from suite.images import save_image_atomic
from suite.pipeline import InDomainPipeline


def sample_validation(config, accelerator, sd_unet, vae, scheduler, uncond, unet, ema, output: Path, step: int):
    """Validation images with MultiGuidance: ``(1 - w_d) eps_sd + w_d eps_d`` (Sec. 3.4), SD1.5 unconditional
    base + the null-text domain term (EMA weights when EMA is on). Saved as one image grid, logged."""
    from contextlib import nullcontext

    from PIL import Image

    model = accelerator.unwrap_model(unet)
    was_training = model.training
    model.eval()
    pipe = InDomainPipeline(vae, None, None, sd_unet, scheduler, domain_unet=model)
    pipe.set_progress_bar_config(disable=True)
    guidance = MultiGuidance(UNetDenoiser(sd_unet, uncond, name="uncond"),
                             [Term(UNetDenoiser(model, None, name="domain"), config.validation_domain_weight, "domain")])
    # the EMA weights in the trained UNet for the sampling, its own back after (no second UNet on the device)
    with ema.applied(model) if ema is not None else nullcontext(), torch.no_grad(), accelerator.autocast():
        out = pipe(guidance=guidance, num_images_per_prompt=config.validation_images, seed=config.seed,
                   num_inference_steps=config.validation_inference_steps,
                   height=config.resolution, width=config.resolution)
    model.train(was_training)
    w, h = out.images[0].size
    grid = Image.new("RGB", (w * len(out.images), h))
    for i, im in enumerate(out.images):
        grid.paste(im, (i * w, 0))
    folder = output / "training" / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = save_image_atomic(grid, folder / f"step-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path
