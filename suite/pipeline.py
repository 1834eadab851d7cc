"""In-domain sampling with multi-guidance on diffusers components and a diffusers scheduler.

One loop serves every use: unconditional in-domain generation, text-guided, ControlNet-guided, several
control terms at once, and generation from a start image with a strength (SDEdit: noise the image's
latent to the start step, then the same loop). The scheduler is diffusers' (DPM-Solver++ by default);
nothing here is a hand-written sampler.

Default steps: 25 DPM-Solver++ steps (the authors' released example; DPM-Solver++ is converged by
20-30 steps). The paper's figures use 100 (``--steps 100``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from .checks import check_int, check_prompt, check_range, check_weight
from .denoisers import ControlNetInput, UNetDenoiser
from .domains import Domain
from .files import atomic_dir
from .guidance import AutoWeights, MultiGuidance, Term
from .text import encode_prompts

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25


@dataclass
class Control:
    """One control term (paper: control guidance ``w_c eps_c(z, c)``).

    * text: ``prompt`` through SD1.5 (the default);
    * ControlNet: ``image`` (a PIL image or ``[1, 3, H, W]`` tensor in [0, 1], e.g. a canny edge map) with
      ``controlnet`` (default: the pipeline's), together with ``prompt``;
    * a community SD1.5 fine-tune: ``unet`` (its unconditional prediction still comes from SD1.5 when the
      pipeline rectifies, paper Sec. 4.5).

    ``weight=None`` is automatic; a negative weight pushes away from this condition.
    """

    prompt: str = ""
    weight: float | None = None
    image: Image.Image | torch.Tensor | None = None
    controlnet: torch.nn.Module | None = None
    unet: torch.nn.Module | None = None
    conditioning_scale: float = 1.0
    name: str = ""


@dataclass
class InDomainOutput:
    images: list
    latents: torch.Tensor
    weights: dict = field(default_factory=dict)


def seeded_generator(seed: int | None, device="cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class InDomainPipeline:
    """SD1.5 components + an optional null-text domain model + an optional ControlNet.

    ``pipe(prompt, ...)`` samples with ``(1 - w_d - w_c) eps_sd + w_d eps_d + w_c eps_c`` (Sec. 3.4).
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, domain_model=None, controlnet=None,
                 domain: Domain | None = None, community_unets: dict | None = None):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.scheduler = scheduler
        self.domain_model = domain_model
        self.controlnet = controlnet
        self.domain = domain
        self.community_unets = dict(community_unets or {})
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        from diffusers.image_processor import VaeImageProcessor

        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                         do_convert_rgb=True, do_normalize=False)

    # ----------------------------------------------------------------------------------------------
    # loading and saving
    @classmethod
    def load(cls, sd_model: str, domain_model: str | None = None, controlnet: str | None = None,
             domain: Domain | None = None, community: dict[str, str] | None = None,
             device="cpu", dtype=torch.float32) -> InDomainPipeline:
        """Load every part through :mod:`suite.models` (local folders or hub ids)."""
        from . import models

        parts = models.load_sd(sd_model, device=device, dtype=dtype)
        dm = models.load_domain_model(domain_model, device=device, dtype=dtype) if domain_model else None
        cn = models.load_controlnet(controlnet, device=device, dtype=dtype) if controlnet else None
        extra = {name: models.load_unet(ref, device=device, dtype=dtype) for name, ref in (community or {}).items()}
        return cls(**parts, domain_model=dm, controlnet=cn, domain=domain, community_unets=extra)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device="cpu", dtype=torch.float32) -> InDomainPipeline:
        """Load a bundle written by :meth:`save_pretrained`."""
        folder = Path(folder)
        info = json.loads((folder / "bundle.json").read_text())
        domain = Domain(**info["domain"]) if info.get("domain") else None
        community = {name: str(folder / "community" / name) for name in info.get("community", [])}
        return cls.load(
            str(folder / "sd"),
            domain_model=str(folder / "domain") if info.get("has_domain_model") else None,
            controlnet=str(folder / "controlnet") if info.get("has_controlnet") else None,
            domain=domain, community=community, device=device, dtype=dtype,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the whole bundle (``sd/``, ``domain/``, ``controlnet/``, ``community/<name>/``, ``bundle.json``)
        to a temporary sibling folder, then rename it into place."""
        from dataclasses import asdict

        from diffusers import StableDiffusionPipeline

        with atomic_dir(folder) as tmp:
            StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                    unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                    feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp / "sd")
            if self.domain_model is not None:
                self.domain_model.save_pretrained(tmp / "domain")
            if self.controlnet is not None:
                self.controlnet.save_pretrained(tmp / "controlnet")
            for name, unet in self.community_unets.items():
                unet.save_pretrained(tmp / "community" / name)
            info = {"has_domain_model": self.domain_model is not None, "has_controlnet": self.controlnet is not None,
                    "community": sorted(self.community_unets),
                    "domain": asdict(self.domain) if self.domain else None}
            (tmp / "bundle.json").write_text(json.dumps(info, indent=2))
        return Path(folder)

    def to(self, device=None, dtype=None) -> InDomainPipeline:
        for m in self._modules():
            m.to(device=device, dtype=dtype)
        return self

    def enable_model_cpu_offload(self, device="cuda") -> InDomainPipeline:
        """Keep every model on the CPU and move each one to ``device`` only while it runs (the others go back).

        For GPUs too small for SD1.5 + the domain UNet + a ControlNet at once (diffusers' method of the same
        name, adapted to multi-guidance, where the SD and domain UNets alternate every step). Slower: weights
        cross the bus at every switch.
        """
        device = torch.device(device)
        modules = self._modules()
        for m in modules:
            m.to("cpu")
        for hook in getattr(self, "_offload_hooks", []):
            hook.remove()

        def pre_hook(module, args, kwargs):
            self._activate(module)
            moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
            kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            return moved, kw

        self._offload_hooks = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in modules]
        self._execution_device = device
        return self

    def _activate(self, module) -> None:
        """With CPU offload: move ``module`` to the execution device and every other model to the CPU."""
        device = getattr(self, "_execution_device", None)
        if device is None:
            return
        for other in self._modules():
            if other is not module and next(other.parameters()).device.type != "cpu":
                other.to("cpu")
        module.to(device)

    def _modules(self):
        mods = [m for m in (self.vae, self.text_encoder, self.unet) if m is not None]  # a freed text encoder
        if self.domain_model is not None:
            mods.append(self.domain_model.unet)
        if self.controlnet is not None:
            mods.append(self.controlnet)
        return mods + list(self.community_unets.values())

    @property
    def device(self) -> torch.device:
        """Where sampling runs (with CPU offload: the execution device, not where weights rest)."""
        return getattr(self, "_execution_device", None) or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ----------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, [prompt], device=self.device, dtype=self.dtype)

    def _sd(self, prompt_embeds, unet=None, control: ControlNetInput | None = None, name="sd") -> UNetDenoiser:
        unet = unet if unet is not None else self.unet
        pred = getattr(self.scheduler.config, "prediction_type", "epsilon")
        return UNetDenoiser(unet, prompt_embeds, control=control, prediction_type=pred,
                            alphas_cumprod=self.scheduler.alphas_cumprod, name=name)

    def prepare_control_image(self, image, height: int, width: int) -> torch.Tensor:
        """A ControlNet conditioning image as ``[1, 3, H, W]`` in [0, 1] at the output size."""
        if isinstance(image, torch.Tensor):
            img = image if image.ndim == 4 else image.unsqueeze(0)
            if img.shape[-2:] != (height, width):
                img = torch.nn.functional.interpolate(img.float(), size=(height, width), mode="bilinear")
            return img.to(self.device, self.dtype)
        w, h = image.size
        if abs(math.log((w / h) / (width / height))) > 0.05:
            raise ValueError(
                f"the control image is {w}x{h} but the output is {width}x{height}: their aspect ratios differ; "
                f"crop the control image or pass --width/--height matching it"
            )
        return self.control_image_processor.preprocess(image, height=height, width=width).to(self.device, self.dtype)

    def build_guidance(self, *, prompt: str | None = None, negative_prompt: str | None = None,
                       domain_weight: float | None = None, control_weight: float | None = None,
                       control_image=None, controls: Sequence[Control] = (), height: int = 512, width: int = 512,
                       w0: float = 7.0, auto_norm: str = "direction", rectify: bool = True,
                       use_domain: bool = True, images_per_prompt: int = 1) -> MultiGuidance:
        """The multi-guidance denoiser for one request (reads top to bottom).

        ``domain_weight`` / ``control_weight``: a number, or ``None`` for automatic (``AutoWeights(w0, auto_norm)``).
        ``rectify=False`` takes the unconditional prediction from the first community model in ``controls``
        (the customised model's own), to show what rectification fixes. ``prompt`` (and ``negative_prompt``) may
        be a list, one prompt per group of ``images_per_prompt`` rows of the batch (diffusers' order).
        """
        # 1. Control terms: the prompt (with the ControlNet image, if any), then the extra controls.
        prompts = _prompt_list(prompt, "the prompt")
        negatives = _prompt_list(negative_prompt, "the negative prompt")
        if len(prompts) > 1 and len(negatives) not in (1, len(prompts)):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one each")
        k = check_int(images_per_prompt, "the number of images per prompt", 1)

        def rows(texts: list[str]) -> torch.Tensor:  # one embedding per prompt, repeated for its images
            if len(texts) == 1 and len(prompts) == 1:
                return self.encode_prompt(texts[0])
            embeds = torch.cat([self.encode_prompt(t) for t in texts])
            return embeds.repeat_interleave(k * (len(prompts) // len(texts)), dim=0)
        all_controls: list[Control] = []
        text_rows = rows(prompts) if len(prompts) > 1 else None
        if any(prompts) or control_image is not None:
            all_controls.append(Control(prompt=prompts[0] if text_rows is None else " | ".join(prompts),
                                        weight=control_weight, image=control_image, name="control"))
        all_controls += [replace(c, prompt=check_prompt(c.prompt, f"the prompt of {c.name}")) for c in controls]

        # 2. Base (unconditional) prediction eps_0: SD1.5 with the negative prompt ("" by default).
        #    Rectification (Sec. 4.5) = the base stays SD1.5 even when a control is a customised model.
        neg = rows(negatives) if len(prompts) > 1 else self.encode_prompt(negatives[0])
        base_unet = self.unet
        if not rectify:
            customised = [c.unet for c in all_controls if c.unet is not None]
            if customised:
                base_unet = customised[0]
        base = self._sd(neg, unet=base_unet, name="uncond")

        # 3. Terms: domain guidance (null-text domain UNet, no text), then control guidance.
        terms: list[Term] = []
        if use_domain and self.domain_model is not None and (domain_weight is None or domain_weight != 0):
            domain_unet = self.domain_model.unet
            # same parameterisation as SD1.5 (a v-prediction base gives a v-prediction domain model)
            terms.append(Term(self._sd(None, unet=domain_unet, name="domain"), domain_weight, name="domain"))
        first_text = None
        for i, c in enumerate(all_controls):
            if i == 0 and text_rows is not None and c.name == "control":
                embeds = text_rows
            else:
                embeds = self.encode_prompt(c.prompt) if c.prompt else neg
            cn = None
            if c.image is not None:
                controlnet = c.controlnet or self.controlnet
                if controlnet is None:
                    raise ValueError("a control image needs a ControlNet: pass --controlnet FOLDER_OR_HUB_ID")
                cn = ControlNetInput(controlnet, self.prepare_control_image(c.image, height, width),
                                     c.conditioning_scale)
            den = self._sd(embeds, unet=c.unet, control=cn, name=c.name or f"control{i}")
            if first_text is None and c.prompt and c.unet is None and cn is None:
                first_text = den
            terms.append(Term(den, c.weight, name=c.name or f"control{i}"))

        # 4. Automatic weights: balanced against SD's own guidance for the reference prompt (the text control
        #    if there is one, else the domain prompt); see AutoWeights.
        auto = None
        if any(t.weight is None for t in terms):
            reference = None
            if auto_norm == "direction":
                if first_text is not None:
                    reference = first_text
                else:
                    ref_prompt = self.domain.prompt if self.domain else (
                        self.domain_model.metadata.prompt if self.domain_model is not None else "")
                    ref_prompt = ref_prompt or next((c.prompt for c in all_controls if c.prompt), "")
                    reference = self._sd(self.encode_prompt(ref_prompt), name="reference")
            auto = AutoWeights(w0=w0, norm=auto_norm, reference=reference)
        return MultiGuidance(base, terms, auto)

    def _epsilon_sampler(self):
        """The scheduler for the denoising loop, configured for epsilon (the guidance's output)."""
        if getattr(self.scheduler.config, "prediction_type", "epsilon") == "epsilon":
            return self.scheduler
        return type(self.scheduler).from_config(self.scheduler.config, prediction_type="epsilon")

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | None = None, *, negative_prompt: str | None = None,
                 domain_weight: float | None = None, control_weight: float | None = None, control_image=None,
                 controls: Sequence[Control] = (), image=None, strength: float = 0.8, num_images: int = 1,
                 num_inference_steps: int = DEFAULT_STEPS, seed: int | None = None,
                 generator: torch.Generator | None = None, height: int | None = None, width: int | None = None,
                 w0: float = 7.0, auto_norm: str = "direction", rectify: bool = True, use_domain: bool = True,
                 guidance=None, output_type: str = "pil", progress: bool = True,
                 callback: Callable[[int, int], None] | None = None) -> InDomainOutput:
        """Sample ``num_images`` images. With ``image`` (a start image) this is SDEdit: the image's latent is
        noised to the step that ``strength`` selects (0 = unchanged, 1 = from pure noise) and denoised by the
        same loop. ``guidance`` replaces the default multi-guidance with any denoiser (e.g. a custom one)."""
        # 1. Check inputs (one clear sentence each).
        steps = check_int(num_inference_steps, "the number of steps", minimum=1)
        num_images = check_int(num_images, "the number of images", minimum=1)
        strength = check_range(strength, "strength", 0.0, 1.0, "0 keeps the image, 1 ignores it")
        for value, what in ((domain_weight, "the domain weight"), (control_weight, "the control weight"), (w0, "w0")):
            check_weight(value, what)
        if image is not None and not isinstance(image, list | tuple):
            image = [image]
        if image is not None and height is None and width is None and isinstance(image[0], Image.Image):
            width, height = image[0].size
        native = self.unet.config.sample_size * self.vae_scale_factor
        height = native if height is None else check_int(height, "the height", 1)
        width = native if width is None else check_int(width, "the width", 1)
        m = self.vae_scale_factor  # diffusers' rule; the UNet handles latents that are not a power-of-2 size
        if height % m or width % m:
            raise ValueError(f"height and width must be multiples of {m}, got {width}x{height}")
        device, dtype = self.device, self.dtype
        generator = generator if generator is not None else seeded_generator(seed)

        # 2. The guidance: one denoiser built from SD1.5, the domain model and the controls. A list of prompts
        #    gives num_images images per prompt, in diffusers' order.
        n_prompts = len(prompt) if isinstance(prompt, list | tuple) else 1
        images_per_prompt, num_images = num_images, num_images * n_prompts
        if guidance is None:
            guidance = self.build_guidance(prompt=prompt, negative_prompt=negative_prompt,
                                           images_per_prompt=images_per_prompt,
                                           domain_weight=domain_weight, control_weight=control_weight,
                                           control_image=control_image, controls=controls, height=height,
                                           width=width, w0=w0, auto_norm=auto_norm, rectify=rectify,
                                           use_domain=use_domain)
        if hasattr(guidance, "reset"):
            guidance.reset()

        # 3. Timesteps (for a start image, only the last `strength` fraction of them, as img2img does).
        #    The guidance returns epsilon whatever the networks predict (UNetDenoiser converts v), so the
        #    scheduler steps as an epsilon scheduler.
        sampler = self._epsilon_sampler()
        sampler.set_timesteps(steps, device=device)
        timesteps = sampler.timesteps
        latent_shape = (num_images, self.unet.config.in_channels, height // self.vae_scale_factor,
                        width // self.vae_scale_factor)

        # 4. Initial latents: noise, or the start image's latent noised to the first timestep (SDEdit).
        from diffusers.utils.torch_utils import randn_tensor

        if image is None:
            latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
            latents = latents * sampler.init_noise_sigma
        else:
            pixels = self.image_processor.preprocess(image, height=height, width=width).to(device, dtype)
            if pixels.shape[0] not in (1, num_images):
                raise ValueError(f"got {pixels.shape[0]} start images for {num_images} outputs: give 1 or {num_images}")
            self._activate(self.vae)
            init = self.vae.encode(pixels).latent_dist.sample(generator) * self.vae.config.scaling_factor
            if init.shape[0] == 1 and num_images > 1:
                init = init.repeat(num_images, 1, 1, 1)  # one encoding shared by all outputs, as diffusers does
            init_steps = min(int(steps * strength), steps)
            t_start = max(steps - init_steps, 0)
            timesteps = timesteps[t_start * sampler.order:]
            if hasattr(sampler, "set_begin_index"):
                sampler.set_begin_index(t_start * sampler.order)
            noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
            latents = sampler.add_noise(init, noise, timesteps[:1].repeat(num_images)) if len(timesteps) else init

        # 5. Denoising loop: one multi-guidance prediction per step, then the scheduler's update.
        from tqdm.auto import tqdm

        for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
            model_input = sampler.scale_model_input(latents, t)
            eps = guidance(model_input, t)
            latents = sampler.step(eps, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, len(timesteps))

        # 6. Decode.
        weights = guidance.weights_used() if isinstance(guidance, MultiGuidance) else {}
        if output_type == "latent":
            return InDomainOutput(images=[], latents=latents, weights=weights)
        self._activate(self.vae)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        images = self.image_processor.postprocess(decoded, output_type=output_type,
                                                  do_denormalize=[True] * decoded.shape[0])
        return InDomainOutput(images=images, latents=latents, weights=weights)


def _prompt_list(prompt, what: str) -> list[str]:
    """A prompt, or a list of prompts, as a checked list (one item for a single prompt)."""
    if isinstance(prompt, list | tuple):
        if not prompt:
            raise ValueError(f"{what} is an empty list: give at least one prompt")
        return [check_prompt(p, f"{what} {i + 1}") for i, p in enumerate(prompt)]
    return [check_prompt(prompt, what)]
