"""SDS terms built from the suite's denoisers: the domain multi-guidance on SD1.5's latent space and
Zero-1-to-3 on its own. Shared by the stages of :mod:`generators3d.run` and the threestudio extension.

View-dependent prompting follows threestudio's rules: ``", overhead view"`` above 60 degrees of elevation,
else ``", front view"`` within 45 degrees of the reference azimuth, ``", back view"`` within 45 degrees of
the opposite side, ``", side view"`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from suite.guidance import MultiGuidance
from suite.rules import rule_given

from .sds import TimestepRange, sds

VIEWS = ("side", "front", "back", "overhead")


def view_index(elevation, azimuth, front: float = 45.0, back: float = 45.0, overhead: float = 60.0) -> torch.Tensor:
    """Index into :data:`VIEWS` per camera (azimuth relative to the reference view, degrees)."""
    el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    az = (torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1) + 180.0) % 360.0 - 180.0
    idx = torch.zeros_like(el, dtype=torch.long)
    idx[(az > -front) & (az < front)] = 1
    idx[(az > 180.0 - back) | (az < -180.0 + back)] = 2
    idx[el > overhead] = 3
    return idx


def rebind_control_text(guidance: MultiGuidance, embeds: torch.Tensor, uncond: torch.Tensor | None = None,
                        term_name: str = "control") -> MultiGuidance:
    """A copy of ``guidance`` whose text control term reads ``embeds`` (``[1 or B, 77, D]``, one row per view)
    and, if given, whose unconditional base reads ``uncond`` (e.g. threestudio's negative-prompt embeddings).
    The automatic-weight reference follows the control term when it was that term."""
    terms = []
    new_ref = None
    for term in guidance.terms:
        if term.name == term_name and getattr(term.denoiser, "encoder_hidden_states", None) is not None:
            den = replace(term.denoiser, encoder_hidden_states=embeds)
            if guidance.auto is not None and guidance.auto.reference is term.denoiser:
                new_ref = den
            term = replace(term, denoiser=den)
        terms.append(term)
    auto = guidance.auto
    if auto is not None and new_ref is not None:
        auto = replace(auto, reference=new_ref)
    base = guidance.base
    if uncond is not None:
        base = replace(base, encoder_hidden_states=uncond)
    return MultiGuidance(base, terms, auto, rule=guidance.rule, num_train_timesteps=guidance.num_train_timesteps)


@dataclass
class DomainSDS:
    """SDS with the paper's in-domain multi-guidance (Eq. 3): null-text domain UNet + SD1.5 text control
    + SD1.5 unconditional, built by :meth:`suite.pipeline.InDomainPipeline.build_guidance`.

    ``domain_weight`` / ``control_weight``: as the pipeline reads them (:meth:`InDomainPipeline.guidance_weights`:
    not given, the domain's recommended weights; ``"auto"``, the automatic rule); ``rule``: a guidance rule or its
    string (:mod:`suite.rules`; not given, the domain's recommended one, as :meth:`InDomainPipeline.guidance_rule`
    decides, and only if it fits the SDS timestep range at the start: an annealed range is not checked again;
    its noise-level schedules read each sample's SDS timestep). Automatic weights are recomputed
    at every step (``AutoWeights.every_step``): each SDS step sees a new view and timestep, so there is no single
    "initial" value to freeze."""

    pipe: object
    prompt: str
    domain_weight: float | str | None = None
    control_weight: float | str | None = None
    w0: float = 7.0
    view_dependent: bool = True
    weighting: str = "sds"
    grad_clip: float | None = None
    min_step_percent: float | list = 0.02
    max_step_percent: float | list = 0.98
    rule: str | None = None
    negative_prompt: str = ""  # SD1.5's unconditional prediction takes it, as in the pipeline's sampling

    def __post_init__(self):
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.size = int(size)
        rule = self.pipe.guidance_rule(self.rule, self.domain_weight, self.control_weight)
        domain_weight, control_weight = self.pipe.guidance_weights(self.domain_weight, self.control_weight)
        self.range = TimestepRange(self.min_step_percent, self.max_step_percent,
                                   len(self.pipe.scheduler.alphas_cumprod))
        self.guidance = self.pipe.build_guidance(prompt=self.prompt or None,
                                                 negative_prompt=self.negative_prompt or None,
                                                 domain_weight=domain_weight,
                                                 rule=rule, explicit_rule=rule_given(self.rule),
                                                 noise_range=self.range.noise_range(),
                                                 control_weight=control_weight, w0=self.w0,
                                                 height=self.size, width=self.size)
        if self.guidance.auto is not None:
            self.guidance.auto.every_step = True
        self.view_embeds = None
        if self.view_dependent and self.prompt:
            self.view_embeds = torch.cat([self.pipe.encode_prompt(f"{self.prompt}, {v} view") for v in VIEWS])

    @classmethod
    def from_stage(cls, pipe, prompt: str, stage) -> DomainSDS:
        """The domain term of a refinement :class:`generators3d.config.StageConfig` (its weights, rule, timestep
        range, weighting and view prompts)."""
        return cls(pipe, prompt, stage.domain_weight, stage.control_weight, stage.w0, stage.view_dependent_prompting,
                   stage.weighting, stage.grad_clip, stage.min_step_percent, stage.max_step_percent,
                   stage.guidance_rule)

    def denoiser(self, elevation, azimuth, prompt_embeds: torch.Tensor | None = None) -> MultiGuidance:
        """The guidance for a batch of views (view-dependent text, or given ``[B, 77, D]`` embeddings)."""
        if prompt_embeds is not None:
            return rebind_control_text(self.guidance, prompt_embeds)
        if self.view_embeds is None:
            return self.guidance
        idx = view_index(elevation, azimuth).to(self.view_embeds.device)
        return rebind_control_text(self.guidance, self.view_embeds[idx])

    def encode(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> SD latents (scaled) at the model's size, with gradient. The posterior sample
        draws from ``generator`` (the run's CPU generator; diffusers moves the draw to the latents' device), so a seed
        fixes it."""
        vae = self.pipe.vae
        x = torch.nn.functional.interpolate(rgb, (self.size, self.size), mode="bilinear", align_corners=False)
        lat = vae.encode((x * 2 - 1).to(self.pipe.dtype)).latent_dist.sample(generator)
        return lat * vae.config.scaling_factor

    def __call__(self, rgb: torch.Tensor, cams, generator: torch.Generator | None = None) -> dict:
        latents = self.encode(rgb, generator)
        den = self.denoiser(cams.elevation.cpu(), cams.azimuth.cpu())
        return sds(latents, den, self.pipe.scheduler.alphas_cumprod, timesteps=self.range,
                   weighting=self.weighting, grad_clip=self.grad_clip, generator=generator)


@dataclass
class Zero123SDS:
    """SDS with Zero-1-to-3 conditioned on the reference view (its CFG = a one-term MultiGuidance)."""

    zero123: object  # suite.zero123.Zero123Guidance
    guidance_scale: float = 3.0
    weighting: str = "sds"
    grad_clip: float | None = None
    min_step_percent: float | list = 0.02
    max_step_percent: float | list = 0.98

    def __post_init__(self):
        self.range = TimestepRange(self.min_step_percent, self.max_step_percent,
                                   len(self.zero123.alphas_cumprod))

    def __call__(self, rgb: torch.Tensor, cams, generator: torch.Generator | None = None) -> dict:
        latents = self.zero123.encode(rgb, generator)
        den = self.zero123.guidance(cams.elevation.cpu(), cams.azimuth.cpu(), cams.distance.cpu(),
                                    self.guidance_scale)
        return sds(latents, den, self.zero123.alphas_cumprod, timesteps=self.range, weighting=self.weighting,
                   grad_clip=self.grad_clip, generator=generator)

