"""threestudio extension: the in-domain multi-guidance (paper Eq. 3) as a threestudio guidance.

Install: ``pip install in-domain-suite[3d]`` in threestudio's environment, then copy (or symlink) this folder
into threestudio's ``custom/`` (e.g. ``custom/in_domain``); threestudio loads ``custom/*/__init__.py`` at
start-up. Use ``guidance_type: "in-domain-guidance"`` (see ``configs/in-domain-porcelain.yaml``).

Registers ``in-domain-guidance`` and ``in-domain-zero123-guidance`` (for zero123 systems: no ``prompt_utils``).

Interface of ``in-domain-guidance`` (threestudio's ``stable-diffusion-guidance``): ``guidance(rgb [B,H,W,3], prompt_utils, elevation
[B], azimuth [B], camera_distances [B], rgb_as_latents=False, guidance_eval=False, **kwargs)`` returns
``loss_sds`` (or the name in ``loss_name``: ``loss_sd`` for Magic123-style systems, whose configs weigh
``lambda_sd``), ``grad_norm``, ``min_step``, ``max_step`` and, with ``guidance_eval``, ``eval`` (threestudio's
keys); ``update_step(epoch, global_step, on_load_weights=False)`` anneals the timestep range and gradient clip
with threestudio's schedules (an integer end counts steps, a float end epochs; six or more entries are
piecewise; ``sqrt_anneal``); ``set_min_max_steps(min, max)``. With ``use_prompt_utils`` (default) the text
control term and the unconditional base read threestudio's (view-dependent) prompt embeddings, and the text
encoder is freed after configure, as threestudio's guidance does; otherwise ``prompt`` is used with our own
view-dependent suffixes. ``rgb_as_latents=True`` takes the input as SD latents, resized to 64x64 (no rescaling,
as threestudio's SD guidance). The UNet calls run outside Lightning's autocast, in the weights' own dtype.
``view_dependent_prompting`` is on by default, as threestudio's, except on the mini preset, whose text model knows
none of the suffixes' words: off there unless set, with a note at build (a warning if set to true).
``weighting_strategy`` is ``sds`` (w = 1 - alpha_bar; ``dreamfusion``, the unified guidances' name, is the same),
``uniform`` or ``fantasia3d``, checked at build.

Keys of ``stable-diffusion-guidance`` configs are accepted, so that a user can switch ``guidance_type``:
``guidance_scale`` ``s`` is the control weight ``w = s + 1`` (threestudio's ``eps_text + s (eps_text -
eps_uncond)``; used when ``control_weight`` is not set; a config of ``stable-diffusion-unified-guidance``, whose
``eps_uncond + s (eps_text - eps_uncond)`` makes ``s`` the weight itself, should set ``control_weight: s`` instead), ``enable_attention_slicing`` and
``enable_channels_last_format`` are applied to every UNet, ``enable_sequential_cpu_offload`` and
``enable_model_cpu_offload`` are diffusers' (the pipeline is a DiffusionPipeline; sequential offload is refused at
build without a CUDA GPU, as threestudio's fails there), ``max_items_eval: -1`` shows all items,
``enable_memory_efficient_attention`` is PyTorch's scaled-dot-product attention (already the default of diffusers'
attention processors), and
``sqrt_anneal`` with ``trainer_max_steps`` anneals as threestudio does. ``use_img_loss``, ``token_merging`` and
Perp-Neg (``prompt_processor.use_perp_neg``) are not implemented: they are refused with one sentence instead of
being ignored.

Everything numerical comes from the ``suite`` / ``generators3d`` packages: the guidance formula
(:class:`suite.guidance.MultiGuidance`) and SDS (:func:`generators3d.sds.sds`). Nothing is copied here.
This file is loaded by path (no package context): absolute imports only.
"""

import gc
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import threestudio
import torch
import torch.nn.functional as F
from threestudio.utils.base import BaseObject

from generators3d.guidance3d import DomainSDS, rebind_control_text
from generators3d.sds import TimestepRange, schedule_value, sds, sds_weight
from suite.domains import SD15_HUB_ID
from suite.images import load_image
from suite.presets import ZERO123_HUB_ID, build_pipeline, get_preset, zero123_ref
from suite.zero123 import Zero123Guidance, load_zero123

SD15_HUB_IDS = (SD15_HUB_ID, "runwayml/stable-diffusion-v1-5")  # the second: threestudio's default and configs'
# the zero123 guidance's model left at a default (ours, or threestudio's checkpoints in its zero123 configs, which the
# suite's diffusers loader cannot read): the preset's own; any other folder or hub id given is loaded as given
ZERO123_DEFAULTS = (ZERO123_HUB_ID, "load/zero123/105000.ckpt", "./load/zero123/zero123-xl.ckpt",
                    "./load/zero123/stable_zero123.ckpt", "load/zero123/zero123-xl.ckpt", "load/zero123/stable_zero123.ckpt")

RETURN_KEYS = ("grad_norm", "min_step", "max_step")
LOSS_NAMES = ("loss_sds", "loss_sd")
# threestudio's unified guidances name the SDS weighting w(t) = 1 - alpha_bar_t "dreamfusion" (their default);
# its stable-diffusion-guidance names the same weighting "sds"
WEIGHTING_SYNONYMS = {"dreamfusion": "sds"}


def _check_common(cfg, name: str) -> None:
    """Keys both guidances share with threestudio's: refuse what is not implemented, in one sentence."""
    if cfg.guidance_type != "sds":  # the key of threestudio's unified guidances (Magic123's configs)
        raise ValueError(f"{name} implements guidance_type 'sds' only, got {cfg.guidance_type!r}: set "
                         f"system.guidance.guidance_type=sds")
    if cfg.loss_name not in LOSS_NAMES:
        raise ValueError(f"loss_name must be loss_sds or loss_sd, got {cfg.loss_name!r}")


def _weighting(cfg, name: str) -> str:
    """``weighting_strategy`` checked at build against :func:`generators3d.sds.sds_weight` (the one list), with
    threestudio's unified-guidance name ``dreamfusion`` read as ``sds``."""
    weighting = WEIGHTING_SYNONYMS.get(cfg.weighting_strategy, cfg.weighting_strategy)
    try:
        sds_weight(weighting, torch.tensor([0.5]))
    except ValueError:
        raise ValueError(f"{name} has no weighting_strategy {cfg.weighting_strategy!r}: set "
                         f"system.guidance.weighting_strategy to sds (alias dreamfusion), uniform or fantasia3d") from None
    return weighting


def _placement(obj, half: bool) -> tuple[str, str]:
    """``(device, dtype name)`` for a guidance: threestudio's ``obj.device`` (cuda when there is none and a GPU is);
    float16 weights only on a GPU and when ``half``."""
    device = getattr(obj, "device", None)
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return device, "float16" if half and torch.device(device).type == "cuda" else "float32"


class _Annealed:
    """threestudio's timestep annealing and gradient-clip schedule (shared by both guidances): ``update_step``
    with threestudio's ``C()`` rules and ``sqrt_anneal``, ``set_min_max_steps``. Needs ``self.range`` and the
    config fields ``grad_clip``, ``min_step_percent``, ``max_step_percent``, ``sqrt_anneal``, ``trainer_max_steps``."""

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        self.range.set_min_max_steps(min_step_percent, max_step_percent)
        self.min_step, self.max_step = self.range.min_step, self.range.max_step

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = schedule_value(self.cfg.grad_clip, global_step, epoch)
        if self.cfg.sqrt_anneal:  # threestudio's: one timestep that falls from max to min with sqrt(progress)
            lo = schedule_value(self.cfg.min_step_percent, global_step, epoch)
            top = self.cfg.max_step_percent
            top = float(top) if isinstance(top, int | float) else float(list(top)[1])
            progress = min(1.0, float(global_step) / self.cfg.trainer_max_steps)  # past the end: stays at min
            percent = (top - lo) * (1 - progress ** 0.5) + lo
            self.set_min_max_steps(percent, percent)
        else:
            self.range.update_step(global_step, epoch)
            self.min_step, self.max_step = self.range.min_step, self.range.max_step



@threestudio.register("in-domain-guidance")
class InDomainGuidance(_Annealed, BaseObject):
    """SD1.5 unconditional + null-text domain UNet + SD1.5 text control, combined by Eq. 3, as SDS."""

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = SD15_HUB_ID
        domain: str = "porcelain"
        domain_model: Optional[str] = None  # folder or hub id; default: the domain preset's folder
        preset: str = "full"  # "tiny": tiny random models (tests)
        prompt: str = ""
        negative_prompt: str = ""
        # None: the domain's recommended weights, as InDomainPipeline decides for every caller (the mini world's
        # porcelain: 1 and 7; a domain without them: automatic); "auto": the paper's automatic rule
        domain_weight: Optional[Any] = None
        control_weight: Optional[Any] = None
        # None: the domain's recommended guidance rule, where it fits the timestep range; "paper": none; or a rule
        # string (suite.rules), e.g. "domain=0-0.7, control=0.5-1"; its schedules read each sample's SDS timestep
        guidance_rule: Optional[str] = None
        w0: float = 7.0
        use_prompt_utils: bool = True
        view_dependent_prompting: Optional[bool] = None  # None: on, except on the mini preset (see configure)
        weighting_strategy: str = "sds"  # or threestudio's unified-guidance name "dreamfusion"; uniform; fantasia3d
        grad_clip: Optional[Any] = None
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        half_precision_weights: bool = True
        loss_name: str = "loss_sds"  # "loss_sd" for systems that weigh lambda_sd (Magic123's configs)
        guidance_type: str = "sds"  # threestudio's unified guidance key: only "sds" is implemented
        # keys of threestudio's stable-diffusion-guidance (see the module docstring)
        guidance_scale: Optional[float] = None
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_model_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False
        sqrt_anneal: bool = False
        trainer_max_steps: int = 25000
        use_img_loss: bool = False
        token_merging: bool = False
        use_sjc: bool = False
        token_merging_params: Optional[dict] = field(default_factory=dict)
        max_items_eval: int = 4  # -1 (or 0): all items, as threestudio
        cache_dir: Optional[str] = None
        local_files_only: Optional[bool] = False
        var_red: bool = True
        extra: dict = field(default_factory=dict)

    cfg: Config

    def configure(self) -> None:
        if self.cfg.use_img_loss:
            raise ValueError("in-domain-guidance does not implement use_img_loss: set system.guidance.use_img_loss=false")
        if self.cfg.token_merging:
            raise ValueError("in-domain-guidance does not implement token merging: set "
                             "system.guidance.token_merging=false")
        if self.cfg.use_sjc:
            raise ValueError("in-domain-guidance does not implement SJC: set system.guidance.use_sjc=false")
        if self.cfg.negative_prompt and self.cfg.use_prompt_utils:  # it was accepted and used nowhere
            raise ValueError("in-domain-guidance: with use_prompt_utils the prompt processor's embeddings are the text: "
                             "set system.prompt_processor.negative_prompt instead of system.guidance.negative_prompt")
        _check_common(self.cfg, "in-domain-guidance")
        self.weighting = _weighting(self.cfg, "in-domain-guidance")
        device, dtype = _placement(self, self.cfg.half_precision_weights)
        if self.cfg.enable_sequential_cpu_offload and (torch.device(device).type != "cuda"
                                                       or not torch.cuda.is_available()):
            # threestudio's guidance fails here too (diffusers finds no accelerator); ours would fail at the first call
            raise ValueError("in-domain-guidance: sequential CPU offload needs a CUDA GPU and none is available: set "
                             "system.guidance.enable_sequential_cpu_offload=false (or use enable_model_cpu_offload)")
        sd = self.cfg.pretrained_model_name_or_path
        # SD1.5's hub ids (ours, and runwayml's, which threestudio's guidance and its configs default to): the
        # preset's own SD model (INDOMAIN_SD_MODEL or SD1.5); loaded by its old id it would pair the full SD1.5 with a
        # mini or tiny domain model
        sd = None if sd in SD15_HUB_IDS else sd
        self.pipe = build_pipeline(self.cfg.preset, self.cfg.domain, sd, self.cfg.domain_model, None, False,
                                   device, dtype)
        self.view_dependent = self._view_dependent()
        control_weight = self.cfg.control_weight
        if control_weight is None and self.cfg.guidance_scale is not None:
            control_weight = float(self.cfg.guidance_scale) + 1.0  # threestudio's s is our w - 1
        self.term = DomainSDS(self.pipe, self.cfg.prompt or ("an object" if self.cfg.use_prompt_utils else ""),
                              self.cfg.domain_weight, control_weight, self.cfg.w0,
                              self.view_dependent and not self.cfg.use_prompt_utils, self.weighting,
                              min_step_percent=self.cfg.min_step_percent, max_step_percent=self.cfg.max_step_percent,
                              rule=self.cfg.guidance_rule, negative_prompt=self.cfg.negative_prompt)
        if self.cfg.use_prompt_utils:  # threestudio's prompt processor encodes the prompts: free what it frees
            self.pipe.text_encoder = None  # before any offload hook could hold on to it
            gc.collect()
        self._apply_memory_flags(device)
        self._device_type = self.pipe._execution_device.type  # where the models run (under offload: not where they rest)
        self.num_train_timesteps = len(self.pipe.scheduler.alphas_cumprod)
        self.range = TimestepRange(self.cfg.min_step_percent, self.cfg.max_step_percent, self.num_train_timesteps)
        self.grad_clip_val: Optional[float] = None
        self.set_min_max_steps()  # threestudio's default until the first update_step

    def _view_dependent(self) -> bool:
        """``view_dependent_prompting``: threestudio's default (on), except on the mini preset, whose text model
        knows a few dozen words (not the suffixes' "front", "side", "back", "overhead", "view") and reads a few tokens: off
        there unless set, as in the suite's own 3D flow; said once, here at build."""
        chosen = self.cfg.view_dependent_prompting
        if not get_preset(self.cfg.preset).small_vocabulary:
            return True if chosen is None else bool(chosen)
        tokens = getattr(self.pipe.tokenizer, "model_max_length", "few")
        from suite.miniworld.world import vocabulary

        words = len(vocabulary())
        if chosen is None:
            threestudio.info(f"in-domain-guidance: view-dependent prompting is off on the mini preset, whose text model "
                             f"knows {words} words, none of the view suffixes, and reads {tokens} tokens (set "
                             f"system.guidance.view_dependent_prompting=true to force it)")
            return False
        if chosen:
            threestudio.warn(f"in-domain-guidance: the view-dependent suffixes (', front view', ...) are not words of "
                             f"the mini preset's text model ({words} words, {tokens} tokens), which spells and cuts them: "
                             f"set system.guidance.view_dependent_prompting=false")
        return bool(chosen)

    def _apply_memory_flags(self, device: str) -> None:
        unets = [m for m in (self.pipe.unet, self.pipe.domain_unet) if m is not None]
        for unet in unets:
            if self.cfg.enable_attention_slicing:
                unet.set_attention_slice("auto")
            if self.cfg.enable_channels_last_format:
                unet.to(memory_format=torch.channels_last)
        if self.cfg.enable_sequential_cpu_offload:  # diffusers' own offload, as threestudio's SD guidance calls it
            self.pipe.enable_sequential_cpu_offload(device=device)
        elif self.cfg.enable_model_cpu_offload:
            self.pipe.enable_model_cpu_offload(device=device)

    def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents=False,
                 guidance_eval=False, **kwargs):
        if prompt_utils is not None and getattr(prompt_utils, "use_perp_neg", False):
            raise ValueError("in-domain-guidance does not implement Perp-Neg: set "
                             "system.prompt_processor.use_perp_neg=false")
        with torch.autocast(device_type=self._device_type, enabled=False):  # the weights' own dtype, not Lightning's
            rgb_bchw = rgb.permute(0, 3, 1, 2).float()
            if rgb_as_latents:  # already SD latents: resized to the UNet's size only, as threestudio's SD guidance
                size = int(self.pipe.unet.config.sample_size)  # 64 for SD1.5 (threestudio's fixed 64x64)
                latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False)
            else:
                latents = self.term.encode(rgb_bchw.to(self.pipe.dtype))
            if prompt_utils is not None and self.cfg.use_prompt_utils:
                embeds = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, self.view_dependent)
                width = int(self.pipe.unet.config.cross_attention_dim)
                if embeds.shape[-1] != width:  # a prompt processor of SD1.5 (768) beside the mini SD (128)
                    raise ValueError(f"in-domain-guidance: the prompt processor's text embeddings are {embeds.shape[-1]}"
                                     f"-wide and the {self.cfg.preset} preset's SD UNet reads {width}: set "
                                     f"system.prompt_processor.pretrained_model_name_or_path to the preset's SD "
                                     f"model ({get_preset(self.cfg.preset).sd()}), or use_prompt_utils: false")
                cond, uncond = embeds.chunk(2)  # cat([cond, uncond]); the UNet call casts them to its device
                denoiser = rebind_control_text(self.term.guidance, cond, uncond)
            else:
                denoiser = self.term.denoiser(elevation.detach().cpu(), azimuth.detach().cpu())
            out = sds(latents, denoiser, self.pipe.scheduler.alphas_cumprod, timesteps=self.range,
                      weighting=self.weighting, grad_clip=self.grad_clip_val)
            result = {self.cfg.loss_name: out["loss_sds"], **{k: out[k] for k in RETURN_KEYS}}
            if guidance_eval:
                result["eval"] = self._guidance_eval(out, elevation, azimuth, camera_distances)
        return result

    @torch.no_grad()
    def _guidance_eval(self, out, elevation, azimuth, camera_distances) -> dict:
        """threestudio's evaluation dict (``bs``, ``noise_levels`` = t / T, ``imgs_noisy``, ``imgs_1step``,
        ``imgs_1orig``, ``imgs_final``: [bs, H, W, 3] in [0, 1]; ``texts``: the captions its
        ``guidance_evaluation_save`` writes). ``imgs_1step`` and ``imgs_final`` are the one-step prediction of the
        clean image: no sampling loop runs (threestudio's runs a full DDIM loop from t)."""
        n, batch = self.cfg.max_items_eval, out["noisy"].shape[0]
        bs = min(n, batch) if n > 0 else batch  # threestudio's rule: -1 (0 or less) means all items
        t = out["timesteps"][:bs].cpu().long()
        noise_levels = (t.float() / self.num_train_timesteps).tolist()
        views = zip(noise_levels, elevation[:bs], azimuth[:bs], camera_distances[:bs])
        texts = [f"n{n:.02f}\ne{e.item():.01f}\na{a.item():.01f}\nc{c.item():.02f}" for n, e, a, c in views]
        a = self.pipe.scheduler.alphas_cumprod.float()[t].view(-1, 1, 1, 1).to(out["noisy"].device)
        z, eps = out["noisy"][:bs].float(), out["eps"][:bs].float()
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        size = z.shape[-2:]

        def decode(lat):
            return self.decode_latents(lat, *size).permute(0, 2, 3, 1)

        orig = decode(x0)
        return {"bs": bs, "noise_levels": noise_levels, "imgs_noisy": decode(z), "imgs_1step": orig,
                "imgs_1orig": orig, "imgs_final": orig, "texts": texts}

    def decode_latents(self, latents, latent_height: int | None = None, latent_width: int | None = None):
        """SD latents ``[B, 4, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1], in the latents' dtype, as threestudio's
        SD guidance decodes them: Latent-NeRF's and SJC's systems call it to show their latent renders (it was
        missing, and they failed at their first validation). Resized first to ``latent_height`` x ``latent_width``
        (default: the UNet's latent size, threestudio's fixed 64 for SD1.5)."""
        size = int(self.pipe.unet.config.sample_size)
        latents_in = latents
        latents = F.interpolate(latents.float(), (latent_height or size, latent_width or size), mode="bilinear",
                                align_corners=False)
        vae = self.pipe.vae
        with torch.autocast(device_type=self._device_type, enabled=False):
            image = vae.decode((latents / vae.config.scaling_factor).to(self.pipe.dtype)).sample
        return (image.float() * 0.5 + 0.5).clamp(0, 1).to(latents_in.dtype)


@threestudio.register("in-domain-zero123-guidance")
class InDomainZero123Guidance(_Annealed, BaseObject):
    """Zero-1-to-3 SDS for threestudio's zero123 systems (``guidance(rgb, elevation, azimuth, camera_distances,
    rgb_as_latents=False, guidance_eval=False)``, no ``prompt_utils``), built on :mod:`suite.zero123`: a diffusers
    Zero-1-to-3 folder or hub id (``kxic/zero123-xl``-style), or the mini world's / tiny one with ``preset``. The
    reference view is ``cond_image_path`` (RGBA on white, as threestudio) seen from ``cond_elevation_deg``,
    ``cond_azimuth_deg``, ``cond_camera_distance``; classifier-free guidance ``eps_u + s (eps_c - eps_u)`` with
    ``guidance_scale`` ``s`` (threestudio's zero123 convention; one MultiGuidance term). threestudio's ``ldm``
    checkpoint keys (``pretrained_config``, ``vram_O``) and ``max_items_eval`` are accepted and unused (its
    ``guidance_eval`` is not implemented and is refused)."""

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = ZERO123_HUB_ID
        preset: str = "full"  # "mini": the mini world's shipped model; "tiny": a random one (tests)
        pretrained_config: str = ""  # threestudio's ldm config: not needed for a diffusers folder
        vram_O: bool = True
        cond_image_path: str = ""
        cond_elevation_deg: float = 0.0
        cond_azimuth_deg: float = 0.0
        cond_camera_distance: float = 1.2
        guidance_scale: float = 5.0
        grad_clip: Optional[Any] = None
        half_precision_weights: bool = False
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        weighting_strategy: str = "sds"  # or "dreamfusion" (threestudio's zero123-unified-guidance default), ...
        sqrt_anneal: bool = False
        trainer_max_steps: int = 25000
        max_items_eval: int = 4  # threestudio's zero123 key: accepted; guidance_eval is not implemented (refused)
        loss_name: str = "loss_sds"  # "loss_sd" for Magic123, which weighs guidance_3d's outputs by lambda_3d_sd
        guidance_type: str = "sds"

    cfg: Config

    def configure(self) -> None:
        _check_common(self.cfg, "in-domain-zero123-guidance")
        self.weighting = _weighting(self.cfg, "in-domain-zero123-guidance")
        if not self.cfg.cond_image_path:
            raise ValueError("in-domain-zero123-guidance needs system.guidance.cond_image_path (the reference view)")
        device, dtype = _placement(self, self.cfg.half_precision_weights)
        ref = self.cfg.pretrained_model_name_or_path
        if ref in ZERO123_DEFAULTS:  # left at a default: the preset's (INDOMAIN_ZERO123_MODEL); a folder given wins
            ref = zero123_ref(self.cfg.preset)
        model = load_zero123(ref, device=device, dtype=getattr(torch, dtype), flag="system.guidance.pretrained_model_name_or_path")
        image = load_image(self.cfg.cond_image_path, "cond image")  # RGBA composited on white
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None]
        self.zero123 = Zero123Guidance(model, pixels, self.cfg.cond_elevation_deg, self.cfg.cond_azimuth_deg,
                                       self.cfg.cond_camera_distance)
        self.range = TimestepRange(self.cfg.min_step_percent, self.cfg.max_step_percent,
                                   len(self.zero123.alphas_cumprod))
        self.grad_clip_val: Optional[float] = None
        self.set_min_max_steps()

    def __call__(self, rgb, elevation, azimuth, camera_distances, rgb_as_latents=False, guidance_eval=False,
                 **kwargs):
        if guidance_eval:
            raise ValueError("in-domain-zero123-guidance does not implement guidance_eval: set "
                             "system.freq.guidance_eval=0")
        with torch.autocast(device_type=self.zero123.model.device.type, enabled=False):
            rgb_bchw = rgb.permute(0, 3, 1, 2).float()
            if rgb_as_latents:  # threestudio's zero123 guidance: resized to the latent size (32 for 256 px), x2-1
                size = int(self.zero123.model.unet.config.sample_size)
                latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False) * 2 - 1
            else:
                latents = self.zero123.encode(rgb_bchw.to(self.zero123.model.dtype))
            denoiser = self.zero123.guidance(elevation.detach().cpu(), azimuth.detach().cpu(),
                                             camera_distances.detach().cpu(), self.cfg.guidance_scale)
            out = sds(latents, denoiser, self.zero123.alphas_cumprod, timesteps=self.range,
                      weighting=self.weighting, grad_clip=self.grad_clip_val)
        return {self.cfg.loss_name: out["loss_sds"], **{k: out[k] for k in RETURN_KEYS}}
