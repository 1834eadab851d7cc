"""threestudio extension: the in-domain multi-guidance (paper Eq. 3) as a threestudio guidance.

Install: ``pip install in-domain-suite[3d]`` in threestudio's environment, then copy (or symlink) this folder
into threestudio's ``custom/`` (e.g. ``custom/in_domain``); threestudio loads ``custom/*/__init__.py`` at
start-up. Use ``guidance_type: "in-domain-guidance"`` (see ``configs/in-domain-porcelain.yaml``).

Interface (threestudio's ``stable-diffusion-guidance``): ``guidance(rgb [B,H,W,3], prompt_utils, elevation
[B], azimuth [B], camera_distances [B], rgb_as_latents=False, guidance_eval=False, **kwargs)`` returns
``loss_sds``, ``grad_norm``, ``min_step``, ``max_step``; ``update_step(epoch, global_step,
on_load_weights=False)`` anneals the timestep range and gradient clip; ``set_min_max_steps(min, max)``.
With ``use_prompt_utils`` (default) the text control term and the unconditional base read threestudio's
(view-dependent) prompt embeddings; otherwise ``prompt`` is used with our own view-dependent suffixes.

Everything numerical comes from the ``suite`` / ``generators3d`` packages: the guidance formula
(:class:`suite.guidance.MultiGuidance`) and SDS (:func:`generators3d.sds.sds`). Nothing is copied here.
This file is loaded by path (no package context): absolute imports only.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import threestudio
import torch
import torch.nn.functional as F
from threestudio.utils.base import BaseObject

from generators3d.guidance3d import DomainSDS, rebind_control_text
from generators3d.sds import TimestepRange, schedule_value, sds

RETURN_KEYS = ("loss_sds", "grad_norm", "min_step", "max_step")


@threestudio.register("in-domain-guidance")
class InDomainGuidance(BaseObject):
    """SD1.5 unconditional + null-text domain UNet + SD1.5 text control, combined by Eq. 3, as SDS."""

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
        domain: str = "porcelain"
        domain_model: Optional[str] = None  # folder or hub id; default: the domain preset's folder
        preset: str = "full"  # "tiny": tiny random models (tests)
        prompt: str = ""
        negative_prompt: str = ""
        domain_weight: Optional[float] = None  # None: the paper's automatic weights
        control_weight: Optional[float] = None
        w0: float = 7.0
        use_prompt_utils: bool = True
        view_dependent_prompting: bool = True
        weighting_strategy: str = "sds"
        grad_clip: Optional[Any] = None
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        half_precision_weights: bool = True
        extra: dict = field(default_factory=dict)

    cfg: Config

    def configure(self) -> None:
        from suite.presets import build_pipeline

        device = getattr(self, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "float16" if self.cfg.half_precision_weights and torch.device(device).type == "cuda" else "float32"
        sd = None if self.cfg.preset == "tiny" else self.cfg.pretrained_model_name_or_path
        self.pipe = build_pipeline(self.cfg.preset, self.cfg.domain, sd, self.cfg.domain_model, None, False,
                                   str(device), dtype)
        self.term = DomainSDS(self.pipe, self.cfg.prompt or ("an object" if self.cfg.use_prompt_utils else ""),
                              self.cfg.domain_weight, self.cfg.control_weight, self.cfg.w0,
                              self.cfg.view_dependent_prompting and not self.cfg.use_prompt_utils,
                              self.cfg.weighting_strategy)
        self.num_train_timesteps = len(self.pipe.scheduler.alphas_cumprod)
        self.range = TimestepRange(self.cfg.min_step_percent, self.cfg.max_step_percent, self.num_train_timesteps)
        self.grad_clip_val: Optional[float] = None
        self.set_min_max_steps()  # threestudio's default until the first update_step

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        self.range.set_min_max_steps(min_step_percent, max_step_percent)
        self.min_step, self.max_step = self.range.min_step, self.range.max_step

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = schedule_value(self.cfg.grad_clip, global_step)
        self.set_min_max_steps(schedule_value(self.cfg.min_step_percent, global_step),
                               schedule_value(self.cfg.max_step_percent, global_step))

    def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents=False,
                 guidance_eval=False, **kwargs):
        if guidance_eval:
            raise ValueError("in-domain-guidance does not implement guidance_eval: set system.freq.guidance_eval=0")
        rgb_bchw = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            size = self.pipe.unet.config.sample_size
            latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False) * 2 - 1
        else:
            latents = self.term.encode(rgb_bchw)
        if prompt_utils is not None and self.cfg.use_prompt_utils:
            embeds = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                      self.cfg.view_dependent_prompting)
            cond, uncond = embeds.to(self.pipe.device, self.pipe.dtype).chunk(2)  # threestudio: cat([cond, uncond])
            denoiser = rebind_control_text(self.term.guidance, cond, uncond)
        else:
            denoiser = self.term.denoiser(elevation.detach().cpu(), azimuth.detach().cpu())
        out = sds(latents, denoiser, self.pipe.scheduler.alphas_cumprod, timesteps=self.range,
                  weighting=self.cfg.weighting_strategy, grad_clip=self.grad_clip_val)
        return {k: out[k] for k in RETURN_KEYS}
