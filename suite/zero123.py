"""Zero-1-to-3 (novel-view diffusion) as a denoiser for SDS, loaded from a diffusers-format folder or hub id.

Layout (community conversions such as ``kxic/zero123-xl`` or ``ashawkey/zero123-xl-diffusers``): ``unet/``
(8 input channels: noisy latent + the input view's latent), ``vae/``, ``image_encoder/`` (CLIP ViT-L with
projection), ``scheduler/``, and a 772 -> 768 linear projection in ``cc_projection/`` or
``clip_camera_projection/`` (either name; the weight is found by its shape).

Conditioning of a target view relative to the input view (threestudio's ``zero123-guidance``):
``T = [deg2rad(d_polar), sin(d_azimuth), cos(d_azimuth), d_radius]`` with ``d_polar = el_ref - el`` (polar =
90 - elevation); the token is ``projection(cat(CLIP_image_embedding, T))`` ``[B, 1, 768]``; the input view's
VAE latent (mode, NOT multiplied by the scaling factor) is concatenated on channels. Unconditional: zeros
for both. Zero-1-to-3's classifier-free guidance is a :class:`suite.guidance.MultiGuidance` with ONE term
(conditional, weight = guidance scale) over the unconditional base: no second copy of the formula. Both
branches are :class:`suite.denoisers.UNetDenoiser` adapters of the one UNet (the latent on ``concat``), so
:func:`suite.denoisers.evaluate_batched` runs them in one forward.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .denoisers import UNetDenoiser, epsilon_scheduler, finite_terminal_snr
from .files import atomic_dir
from .guidance import MultiGuidance, Term
from .models import ModelLoadError, describe, load_errors, offline, resolve
from .threads import building_models

PROJECTION_FOLDERS = ("cc_projection", "clip_camera_projection")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Zero123Model:
    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    projection: torch.nn.Linear
    scheduler: object

    @property
    def image_size(self) -> int:
        """Native image size (256 for Zero-1-to-3): UNet sample size times the VAE factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * factor

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts (its scheduler's ``prediction_type``): ``"epsilon"`` (the published Zero-1-to-3
        and zero123-xl) or ``"v_prediction"``; the guidance converts v to epsilon."""
        return getattr(self.scheduler.config, "prediction_type", "epsilon")

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype


def _projection_from_state(state: dict, what: str) -> torch.nn.Linear:
    """The 772 -> 768 Linear, whatever its key names (``projection.*`` or ``proj.*``)."""
    weights = [(k, v) for k, v in state.items() if v.ndim == 2 and v.shape[1] == v.shape[0] + 4]
    if len(weights) != 1:
        raise ValueError(f"{what} has no single (D, D+4) projection weight")
    key, w = weights[0]
    bias = state.get(key[: -len("weight")] + "bias")
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _read_state(folder: Path) -> dict:
    """Weights of a small module folder: safetensors, else a PyTorch file loaded with weights_only=True."""
    from safetensors.torch import load_file

    for name in sorted(folder.glob("*.safetensors")):
        return load_file(str(name))
    for name in sorted(folder.glob("*.bin")):
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing what it holds
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(name), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in {folder}")


def load_zero123(ref: str | os.PathLike | None, device="cpu", dtype=torch.float32,
                 flag: str = "--zero123-model") -> Zero123Model:
    """Load Zero-1-to-3 from a diffusers-format folder or a hub id (one clear sentence on failure)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    ref, local = resolve(ref, "Zero-1-to-3 model", flag, required=("unet", "vae", "image_encoder"))
    try:
        if local:
            folder = Path(ref)
        else:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ref, local_files_only=offline()))
        proj_dir = next((folder / n for n in PROJECTION_FOLDERS if (folder / n).is_dir()), None)
        if proj_dir is None:
            raise ModelLoadError(
                f"Zero-1-to-3 model {ref!r} has neither cc_projection/ nor clip_camera_projection/: it is not a "
                f"Zero-1-to-3 diffusers folder; pass {flag} with one (e.g. a local copy of kxic/zero123-xl)")
        kw = {"local_files_only": True}
        with building_models():  # one load at a time in the process (suite.threads)
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder, subfolder="image_encoder", **kw)
            sched_dir = folder / "scheduler"
            scheduler = (DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **kw) if sched_dir.is_dir()
                         else DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
            projection = _projection_from_state(_read_state(proj_dir), f"{proj_dir}")
    except ModelLoadError:
        raise
    except load_errors() as err:
        how = (f"the folder is incomplete or corrupt; pass {flag} with a complete Zero-1-to-3 diffusers folder"
               if local else f"if this machine is offline, download it elsewhere (hf download {ref}) "
                             f"and pass {flag} with the local folder")
        raise ModelLoadError(f"could not load the Zero-1-to-3 model {ref!r} ({describe(err)}): {how}") from err
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"the scheduler of {ref!r} says prediction_type {kind!r}: only 'epsilon' and "
                             f"'v_prediction' Zero-1-to-3 models are supported; pass {flag} with one of those")
    want = (image_encoder.config.projection_dim + 4, unet.config.cross_attention_dim)
    if (projection.in_features, projection.out_features) != want:
        raise ModelLoadError(f"the camera projection in {ref!r} maps {projection.in_features} -> "
                             f"{projection.out_features} features, but its image encoder and UNet need {want[0]} -> "
                             f"{want[1]} (the image embedding plus the 4 pose numbers): its parts are from different "
                             f"models; pass {flag} with a complete Zero-1-to-3 folder")
    if unet.config.in_channels != 2 * vae.config.latent_channels:
        raise ModelLoadError(f"the UNet in {ref!r} has {unet.config.in_channels} input channels, not "
                             f"{2 * vae.config.latent_channels}: it is not a Zero-1-to-3 UNet; pass {flag} correctly")
    for m in (unet, vae, image_encoder, projection):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # a zero-terminal-SNR schedule (a v-prediction model trained so) ends at alpha_bar = 0: made finite here, so
    # that the epsilon its guidance returns keeps the model's prediction at the first step
    return Zero123Model(unet, vae, image_encoder, projection, finite_terminal_snr(scheduler))


def relative_pose(elevation, azimuth, distance, ref_elevation, ref_azimuth, ref_distance) -> torch.Tensor:
    """``[B, 4]``: ``[deg2rad(d_polar), sin(d_azimuth), cos(d_azimuth), d_radius]`` (polar = 90 - elevation).
    The reference angles are numbers, or ``[B]`` tensors (one input view per target, as in training)."""
    el, az, dist = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float32).reshape(-1)
                                             for v in (elevation, azimuth, distance)))
    for name, v in (("elevation", el), ("azimuth", az), ("distance", dist), ("reference elevation", ref_elevation),
                    ("reference azimuth", ref_azimuth), ("reference distance", ref_distance)):
        if not bool(torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all()):  # NaN views, without a word
            raise ValueError(f"the Zero-1-to-3 camera's {name} is not a finite number: give degrees (and a distance)")
    d_polar = torch.deg2rad((90.0 - el) - (90.0 - ref_elevation))
    d_az = torch.deg2rad(az - ref_azimuth)
    return torch.stack([d_polar, d_az.sin(), d_az.cos(), dist - ref_distance], -1)


class Zero123Guidance:
    """Zero-1-to-3 conditioned on one input view: builds the SDS denoiser for target cameras.

    ``image``: ``[1, 3, H, W]`` in [0, 1] (the object on white), taken from the reference camera
    (``ref_elevation``, ``ref_azimuth``, ``ref_distance``)."""

    def __init__(self, model: Zero123Model, image: torch.Tensor, ref_elevation: float = 0.0,
                 ref_azimuth: float = 0.0, ref_distance: float = 3.8):
        self.model = model
        self.ref = (float(ref_elevation), float(ref_azimuth), float(ref_distance))
        img = image.to(model.device, torch.float32)
        size = model.image_size
        img = torch.nn.functional.interpolate(img, (size, size), mode="bilinear", align_corners=False,
                                              antialias=img.shape[-1] > size)  # a larger reference: no aliasing
        with torch.no_grad():
            enc_size = model.image_encoder.config.image_size
            clip_in = torch.nn.functional.interpolate(img, (enc_size, enc_size), mode="bicubic", align_corners=False)
            mean = torch.tensor(CLIP_MEAN, device=img.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=img.device).view(1, 3, 1, 1)
            clip_in = ((clip_in.clamp(0, 1) - mean) / std).to(model.dtype)
            self.c_clip = model.image_encoder(clip_in).image_embeds[:, None, :]  # [1, 1, D]
            self.c_concat = model.vae.encode((img * 2 - 1).to(model.dtype)).latent_dist.mode()  # unscaled

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.alphas_cumprod

    def encode(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> scaled latents at the model's size (with gradient); the posterior
        sample draws from ``generator`` (a seed fixes it)."""
        size = self.model.image_size
        x = torch.nn.functional.interpolate(rgb, (size, size), mode="bilinear", align_corners=False)
        lat = self.model.vae.encode((x * 2 - 1).to(self.model.dtype)).latent_dist.sample(generator)
        return lat * self.model.vae.config.scaling_factor

    def guidance(self, elevation, azimuth, distance, guidance_scale: float = 3.0) -> MultiGuidance:
        """The CFG denoiser for target cameras: ``MultiGuidance(uncond, [Term(cond, guidance_scale)])``."""
        pose = relative_pose(elevation, azimuth, distance, *self.ref).to(self.model.device, self.model.dtype)
        with torch.no_grad():
            c_cross = self.model.projection(torch.cat([self.c_clip.expand(len(pose), -1, -1), pose[:, None]], -1))
        unet = self.model.unet
        # Two adapters of one UNet (UNetDenoiser batch_key): evaluate_batched runs both in one forward.
        kind = dict(prediction_type=self.model.prediction_type, alphas_cumprod=self.model.alphas_cumprod)
        uncond = UNetDenoiser(unet, torch.zeros_like(c_cross), concat=torch.zeros_like(self.c_concat),
                              name="zero123-uncond", **kind)
        cond = UNetDenoiser(unet, c_cross, concat=self.c_concat, name="zero123-cond", **kind)
        return MultiGuidance(uncond, [Term(cond, float(guidance_scale), "zero123")])


@torch.no_grad()
def novel_views(guide: Zero123Guidance, elevation, azimuth, distance, guidance_scale: float = 3.0,
                steps: int = 50, generator: torch.Generator | None = None, init: torch.Tensor | None = None,
                strength: float = 1.0, keep: torch.Tensor | None = None, start: str = "noise") -> torch.Tensor:
    """Sample Zero-1-to-3's views of the input object from target cameras: the model's own scheduler (DDIM for
    Zero-1-to-3) over the classifier-free guided denoiser of :meth:`Zero123Guidance.guidance`. Returns
    ``[B, 3, H, W]`` in [0, 1] at the model's image size. ``init`` (``[B, 3, H, W]`` in [0, 1], e.g. renders of
    the object from those cameras) with ``strength`` < 1: SDEdit, the images noised to that fraction of the
    schedule and denoised from there, so the views keep their outline and large colours (the fraction of ``steps``
    run is ``strength``). ``keep`` (``[B, 1, H, W]`` in [0, 1], with ``init``): where the views keep ``init``: after
    every step the latent is blended towards ``init``'s, noised to the next step's level, by ``keep`` averaged over
    each latent cell (blended latent diffusion, Avrahami et al. 2023), so the model draws the rest to join it.

    ``start`` (where ``init`` does not set it): what the first step denoises. ``"noise"`` (the default, Zero-1-to-3's
    own sampler): pure noise. ``"input"``: the input view's latent noised to the first step's level, ``sqrt(a) *
    z_input + sqrt(1 - a) * noise``. The schedule keeps ``sqrt(a)`` of the clean latent at the first step (0.087 at
    t = 958, the first of 30 DDIM steps on SD's schedule), so in training the model saw the target's layout faintly
    there and learned to read it (the mini model's boxes gain 0.047 IoU when it is the truth's); the input view's
    layout is the one the sampler has. It is a pull towards copying the input: on the mini world's held-out views at
    a 90-degree turn it takes boxes from level with copying to above it (+0.022 +- 0.008 IoU over copying, +0.032 +-
    0.005 over pure noise, four seeds) and leaves cups level on average, but a cup whose handle swings to the back
    keeps it at the side (0.81 -> 0.71 over eight seeds); docs/mini-world.md, "Starting from the input view"."""
    import copy

    if start not in ("input", "noise"):
        raise ValueError(f"start must be 'input' or 'noise', not {start!r}")
    if start == "input" and init is not None and (strength < 1.0 or keep is not None):
        raise ValueError("start='input' draws the view from the input view; with init (SDEdit from strength < 1, or "
                         "keep) the first latent is init's: drop one of the two")

    if not (isinstance(strength, int | float) and 0.0 < strength <= 1.0):  # 5.0, or 0.3 without init: ignored
        raise ValueError(f"strength must be in (0, 1], not {strength!r}")
    if init is None and strength != 1.0:
        raise ValueError("strength applies to an init image (SDEdit): give init, or drop strength")
    model = guide.model
    schedule = int(model.scheduler.config.num_train_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= schedule:  # 0: ZeroDivisionError
        raise ValueError(f"steps must be a whole number from 1 to {schedule}, not {steps!r}")
    pose = relative_pose(elevation, azimuth, distance, *guide.ref)
    denoiser = guide.guidance(elevation, azimuth, distance, guidance_scale)
    scheduler = copy.deepcopy(epsilon_scheduler(model.scheduler))  # the guidance returns epsilon
    scheduler.set_timesteps(steps)
    latent = model.image_size // (2 ** (len(model.vae.config.block_out_channels) - 1))
    shape = (len(pose), model.vae.config.latent_channels, latent, latent)
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(model.device) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if keep is not None:
        if init is None:
            raise ValueError("keep needs an init image: the views keep the init where keep is 1")
        if keep.ndim != 4 or keep.shape[1] != 1 or keep.shape[0] not in (1, shape[0]):
            raise ValueError(f"keep must be [B, 1, H, W] (B = 1 or the number of views, {shape[0]}), not "
                             f"{list(keep.shape)}")
    if init is not None and (strength < 1.0 or keep is not None):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], not {strength}")
        first = len(timesteps) - max(1, round(strength * len(timesteps)))
        timesteps = timesteps[first:]
        z0 = guide.encode(init.to(model.device, torch.float32), generator).float()
        noise = z.to(z0) / scheduler.init_noise_sigma
        if strength < 1.0:
            z = scheduler.add_noise(z0, noise, timesteps[:1].to(z0.device))
    elif start == "input":
        z_input = (guide.c_concat.float() * model.vae.config.scaling_factor).expand(shape)
        z = scheduler.add_noise(z_input, z / scheduler.init_noise_sigma, timesteps[:1].to(z.device))
    hold = None
    if keep is not None:
        hold = torch.nn.functional.adaptive_avg_pool2d(keep.to(z0.device, torch.float32).clamp(0, 1), z0.shape[-2:])
    for i, t in enumerate(timesteps):
        eps = denoiser(z.to(model.dtype), t.to(model.device)).float()
        z = scheduler.step(eps, t, z).prev_sample
        if hold is not None:
            held = z0 if i + 1 == len(timesteps) else scheduler.add_noise(z0, noise, timesteps[i + 1:i + 2].to(z0.device))
            z = hold * held + (1 - hold) * z
    image = model.vae.decode((z / model.vae.config.scaling_factor).to(model.dtype)).sample.float()
    return (image / 2 + 0.5).clamp(0, 1)


def save_zero123(parts: dict, folder: str | os.PathLike, projection_name: str = "cc_projection") -> Path:
    """Write a Zero-1-to-3 diffusers folder (temporary sibling, then rename)."""
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        parts["unet"].save_pretrained(tmp / "unet")
        parts["vae"].save_pretrained(tmp / "vae")
        parts["image_encoder"].save_pretrained(tmp / "image_encoder")
        parts["scheduler"].save_pretrained(tmp / "scheduler")
        (tmp / projection_name).mkdir()
        lin = parts["projection"]
        key = "projection" if projection_name == "cc_projection" else "proj"
        tensors = {f"{key}.weight": lin.weight.detach().contiguous()}
        if lin.bias is not None:  # a projection without one loads, and was an AttributeError here
            tensors[f"{key}.bias"] = lin.bias.detach().contiguous()
        save_file(tensors, str(tmp / projection_name / "diffusion_pytorch_model.safetensors"))
        (tmp / projection_name / "config.json").write_text(json.dumps(
            {"in_channel": lin.in_features, "out_channel": lin.out_features}))
        (tmp / "model_index.json").write_text(json.dumps({"_class_name": "Zero1to3StableDiffusionPipeline"}))
    return Path(folder)
