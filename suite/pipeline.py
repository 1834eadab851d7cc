"""In-domain sampling with multi-guidance on diffusers components and a diffusers scheduler.

One loop serves every use: unconditional in-domain generation, text-guided, ControlNet-guided, several
control terms at once, and generation from a start image with a strength (SDEdit: noise the image's
latent to the start step, then the same loop). The scheduler is diffusers' (DPM-Solver++ by default);
nothing here is a hand-written sampler.

Default steps: 25 DPM-Solver++ steps (the authors' released example; DPM-Solver++ is converged by
20-30 steps). The paper's figures use 100 (``--steps 100``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import IPAdapterMixin, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from . import models
from .checks import (
    AUTO,
    UserError,
    check_finite,
    check_guidance_settings,
    check_int,
    check_prompt,
    check_range,
    check_runs_a_step,
    check_weight,
)
from .components import UNetCollection, read_bundle
from .denoisers import ControlNetInput, UNetDenoiser, epsilon_scheduler, finite_alphas
from .devices import resolve_device
from .domains import Domain, domain_from_dict, get_domain
from .files import OS_METADATA, atomic_dir, is_temporary
from .guidance import AutoWeights, MultiGuidance, Term, noise_level
from .images import read_mask, to_rgb
from .models import resolve
from .nulltext import NullTextUNet
from .rules import GuidanceRule, check_rule_terms, format_rule, parse_rule, rule_fits, rule_given
from .text import encode_prompts

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25


def noise_range(timesteps, num_train_timesteps: int) -> tuple[float, float] | None:
    """``(lo, hi)`` of ``t / T`` over a run's timesteps (``None`` when there are none)."""
    if len(timesteps) == 0:
        return None
    t = torch.as_tensor(timesteps, dtype=torch.float32)
    return float(t.min()) / num_train_timesteps, float(t.max()) / num_train_timesteps


@dataclass
class Control:
    """One control term (paper: control guidance ``w_c eps_c(z, c)``).

    * text: ``prompt`` through SD1.5 (the default);
    * ControlNet: ``image`` (a PIL image or ``[1, 3, H, W]`` tensor in [0, 1], e.g. a canny edge map) with
      ``controlnet`` (default: the pipeline's), together with ``prompt``;
    * a community SD1.5 fine-tune: ``unet`` (its unconditional prediction still comes from SD1.5 when the
      pipeline rectifies, paper Sec. 4.5).

    ``weight=None`` (or ``"auto"``) is automatic; a negative weight pushes away from this condition.
    """

    prompt: str = ""
    weight: float | None = None
    image: Image.Image | torch.Tensor | None = None
    controlnet: torch.nn.Module | None = None
    unet: torch.nn.Module | None = None
    conditioning_scale: float = 1.0
    name: str = ""


def _image_size(image) -> tuple[int, int] | None:
    """``(width, height)`` of a PIL image, an array (``H x W (x C)``, or ``N x H x W x C``) or a tensor (``C x H x W``
    or ``N x C x H x W``); None for anything else."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return (image.shape[1], image.shape[0]) if image.ndim <= 3 else (image.shape[-2], image.shape[-3])
    if isinstance(image, torch.Tensor) and image.ndim >= 2:
        return image.shape[-1], image.shape[-2]
    return None


def _checked_image_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    """An image tensor as ``[N, 3, H, W]`` float in [0, 1] (``[H, W]``, ``[C, H, W]``; one channel repeated), or one
    sentence naming ``what``."""
    img = image.reshape(1, 1, *image.shape) if image.ndim == 2 else image.unsqueeze(0) if image.ndim == 3 else image
    if img.ndim != 4 or img.shape[0] < 1 or img.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be [1 or one per image, 3, height, width] (or [3, height, width]; one "
                         f"channel is repeated), got {list(image.shape)}")
    img = img.float().expand(img.shape[0], 3, *img.shape[-2:])
    lo, hi = float(img.min()), float(img.max())
    if not (0 <= lo and hi <= 1):  # NaN fails too
        raise ValueError(f"{what} holds values in [0, 1], got {lo:g} to {hi:g}: divide a 0-255 image by 255")
    return img


def _image_from_array(image: np.ndarray, what: str) -> Image.Image:
    """An ``[H, W]`` / ``[H, W, 1 | 3 | 4]`` array, uint8 or floats in [0, 1], as an RGB PIL image (transparency on
    white, as :func:`suite.images.to_rgb` lays it), or one sentence naming ``what``."""
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 (0-255) or floats in [0, 1], got {image.dtype}: convert it, e.g. "
                         f"array.astype(numpy.uint8)")
    if np.issubdtype(image.dtype, np.floating) and not (0 <= float(np.min(image)) and float(np.max(image)) <= 1):
        raise ValueError(f"{what} of floats holds values in [0, 1], got {float(np.min(image)):g} to "
                         f"{float(np.max(image)):g}: divide a 0-255 image by 255, or give it as uint8")
    arr = image if image.dtype == np.uint8 else (image * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} must be [height, width, 3] (or 1 or 4 channels), got {list(image.shape)}")
    if arr.shape[-1] == 4:
        return to_rgb(Image.fromarray(arr, "RGBA"))
    return Image.fromarray(np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr)


# the Python API's bounds, above the CLI's (which --allow-large lifts up to these): num_images_per_prompt=10**6 tried
# to allocate 16 GB and height=100000 40 GB before any message
MAX_CALL_IMAGES = 1024  # images per prompt in one call
MAX_CALL_SIDE = 16384   # pixels a side


def latent_mask(mask, image_size: tuple[int, int], width: int, height: int, factor: int) -> torch.Tensor:
    """An edit's mask as ``[1, 1, height/factor, width/factor]`` in [0, 1], averaged over each latent pixel's block:
    the suite's one mask rule (:func:`suite.images.read_mask`: white = may change, black or transparent = kept, gray
    blends; a file, a PIL image or an array, of the start image's aspect ratio), or a tensor (``H x W``, ``1 x H x W``
    or ``1 x 1 x H x W``) in [0, 1]. ``image_size``: the start image's ``(w, h)`` as given (a mask of its size was
    refused when the image is sampled at a size rounded to the VAE's multiple: 519 x 384 at 512 x 384)."""
    if isinstance(mask, torch.Tensor):
        m = mask.detach().cpu().float()
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        mask = m.numpy()
    m = read_mask(mask, tuple(image_size), "mask_image", max_pixels=None)
    small = Image.fromarray(m, mode="F").resize((width // factor, height // factor), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).clip(0, 1).copy())[None, None]


@dataclass
class InDomainOutput(BaseOutput):
    """``images`` (PIL images, an array for ``output_type="np"``, a tensor for ``"pt"``, and for ``"latent"`` the
    latents, as diffusers returns them), the final
    ``latents``, the guidance ``weights`` used (name -> weight before any schedule; the automatic ones as
    resolved) and the ``guidance_rule`` applied (its string, ``"paper"`` for none)."""

    images: list | np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None
    weights: dict | None = None
    guidance_rule: str | None = None


def size_like(w: int, h: int, native: int, multiple: int) -> tuple[int, int]:
    """``(width, height)`` of the output for a control image of ``w x h`` when no size is given: its aspect ratio,
    the longer side the model's ``native`` size, the other rounded to the VAE's ``multiple`` (a 640x480 photo:
    512x384 for SD1.5), as diffusers' ControlNet pipelines take the control image's shape."""
    if max(w, h) > 8 * min(w, h):  # a 4000x10 strip made a 512x8 output (64x2 on the tiny preset)
        raise ValueError(f"the control image is {w}x{h}, longer than 8:1, and the output takes its shape: crop it "
                         f"closer to the picture you want, or give the output's width and height")
    short = max(multiple, round(native * min(w, h) / max(w, h) / multiple) * multiple)
    return (native, short) if w >= h else (short, native)


def seeded_generator(seed: int | None, device="cpu") -> torch.Generator:
    """A generator seeded with ``seed`` (a whole number from 0 to 2**64 - 1, torch's range: ``1.5`` made seed 1's
    images and ``2**64`` torch's overflow), or from the system's randomness for ``None``. The CLIs take seeds up to
    ``MAX_SEED`` (numpy's range); seeds derived from them (``seed + i``) may go beyond it."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(check_int(seed, "the seed", 0, 2**64 - 1))
    return gen


# model_index.json names the class as [module file, class]: that is how DiffusionPipeline.from_pretrained finds a
# class diffusers does not ship (with trust_remote_code=True, which runs SHIM_FILE). InDomainPipeline.from_pretrained
# never runs it (see _dict_from_json_file).
SHIM_FILE = "pipeline.py"
SHIM = (
    "# Lets diffusers' DiffusionPipeline.from_pretrained(this_folder, trust_remote_code=True) find the pipeline class.\n"
    "# Needs the in-domain-suite package installed. InDomainPipeline.from_pretrained(this_folder) never runs this file.\n"
    "from suite.pipeline import InDomainPipeline  # noqa: F401\n"
)


def _check_save_folder(folder: Path) -> None:
    """A save replaces its folder whole, so the folder must be new, empty, or a saved pipeline holding only what a
    save writes: anything else (a user's files, another model) is refused in one sentence, never deleted."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is a file: save the pipeline into a folder (a new one)")
    entries = sorted(p.name for p in folder.iterdir() if not is_temporary(p) and p.name not in OS_METADATA)
    if not entries:
        return
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        ours = isinstance(index.get("_class_name"), list) and index["_class_name"][-1] == InDomainPipeline.__name__
    except (OSError, ValueError, AttributeError):
        index, ours = {}, False
    written = {"model_index.json", SHIM_FILE, *(k for k in index if not k.startswith("_"))}
    others = [name for name in entries if name not in written]
    if not ours or others:
        shown = ", ".join(repr(n) for n in (others or entries)[:3]) + (", ..." if len(others or entries) > 3 else "")
        raise UserError(f"the folder {str(folder)!r} holds files that are not a saved pipeline ({shown}); a save "
                        f"replaces its folder whole: save into a new or empty folder")


class InDomainPipeline(DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin,
                       StableDiffusionLoraLoaderMixin, IPAdapterMixin):
    """SD1.5 components + an optional null-text domain UNet + optional ControlNet and community UNets, as a
    diffusers ``DiffusionPipeline``.

    ``pipe(prompt, ...)`` samples with ``(1 - w_d - w_c) eps_sd + w_d eps_d + w_c eps_c`` (Sec. 3.4).
    Components (registered with diffusers, so ``save_pretrained``/``from_pretrained``, ``.to``, CPU offload,
    the progress bar, LoRA and textual-inversion loading work as for any diffusers pipeline): ``vae``,
    ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``, ``domain_unet`` (a
    :class:`suite.nulltext.NullTextUNet`, with its ``E`` and metadata), ``controlnet`` and ``community_unets``
    (a :class:`suite.components.UNetCollection`; pass a dict ``name -> UNet``). ``domain`` (a
    :class:`suite.domains.Domain`) is saved in the config.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"  # the domain UNet etc. alternate with the UNet
    _optional_components = ["text_encoder", "tokenizer", "domain_unet", "controlnet", "community_unets",
                            "image_encoder", "feature_extractor"]
    # IP-Adapter image embeddings exactly as StableDiffusionPipeline computes them (same components, same rules)
    encode_image = StableDiffusionPipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusionPipeline.prepare_ip_adapter_image_embeds
    _callback_tensor_inputs = ["latents"]

    @classmethod
    def _get_signature_types(cls) -> dict[str, tuple]:
        """Each ``__init__`` parameter's annotated types, resolved (this module's annotations are strings): what
        diffusers' ``from_pipe`` and ``from_pretrained`` check components against. diffusers 0.37 and later resolve
        them themselves; 0.35-0.36 read the raw strings, found no type for any parameter and raised KeyError."""
        import inspect
        import types
        import typing

        hints = typing.get_type_hints(cls.__init__)
        out = {}
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            hint = hints.get(name, inspect.Parameter.empty)
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            out[name] = typing.get_args(hint) if union else (hint,)
        return out

    # The annotations are diffusers' (its StableDiffusionPipeline's, where they are the same): from_pipe switches a
    # model over only when its type is the one annotated (without them it raised for every model)
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: SchedulerMixin, domain_unet: NullTextUNet | None = None,
                 controlnet: ControlNetModel | None = None, community_unets: UNetCollection | dict | None = None,
                 image_encoder: CLIPVisionModelWithProjection | None = None,
                 feature_extractor: CLIPImageProcessor | None = None, domain: Domain | dict | None = None):
        super().__init__()
        if isinstance(community_unets, dict):
            community_unets = UNetCollection.of(community_unets) if community_unets else None
        if domain_unet is not None and not isinstance(domain_unet, NullTextUNet):
            raise ValueError("domain_unet must be a null-text domain UNet (suite.nulltext.NullTextUNet): load it "
                             "with suite.models.load_domain_model or NullTextUNet.from_pretrained")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, domain_unet=domain_unet, controlnet=controlnet,
                              community_unets=community_unets, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.domain = domain
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                         do_convert_rgb=True, do_normalize=False)
        self._interrupt = False
        self._num_timesteps = 0

    @property
    def domain(self) -> Domain | None:
        """The domain preset, kept in the config (``model_index.json``) and read from there."""
        stored = self.config.get("domain")
        return domain_from_dict(stored) if stored else None

    @domain.setter
    def domain(self, value: Domain | dict | None) -> None:
        if isinstance(value, dict):
            value = domain_from_dict(value)  # checked now, not at the first read
        elif isinstance(value, str):  # a preset's name (it was asdict's TypeError)
            value = get_domain(value)
        elif value is not None and not isinstance(value, Domain):
            raise ValueError(f"domain must be a Domain, a preset's name or None, got {type(value).__name__}")
        self.register_to_config(domain=asdict(value) if value is not None else None)

    def guidance_weights(self, domain_weight=None, control_weight=None) -> tuple[float | None, float | None]:
        """``(w_d, w_c)`` as this pipeline uses them, the one place that decides the default: a number as given;
        ``"auto"``: ``None``, the paper's automatic rule (Sec. 3.4); not given (``None`` or ``"recommended"``): the
        domain's recommended weight, which its preset holds (:data:`suite.presets.PRESET_TABLE`; the mini world's
        porcelain: ``w_d = 1, w_c = 7``), else automatic. The CLI, Python callers, the app, the 3D stages and the
        threestudio extension all go through here, so the same call gives the same weights from each."""
        dom = self.domain
        picked = []
        for value, what, recommended in ((domain_weight, "the domain weight", dom.domain_weight if dom else None),
                                         (control_weight, "the control weight", dom.control_weight if dom else None)):
            v = check_weight(value, what)
            picked.append(None if v == AUTO else recommended if v is None else v)
        return picked[0], picked[1]

    def guidance_rule(self, rule=None, domain_weight=None, control_weight=None) -> GuidanceRule | None:
        """The guidance rule (:mod:`suite.rules`) this pipeline uses, decided here as the weights are: a rule or
        its string as given (``"paper"``: none); not given (``None`` or ``"recommended"``): the domain's
        recommended rule, unless a weight is ``"auto"`` (the paper's automatic rule is an explicit choice of the
        paper's Eq. 3). A recommended rule applies only to requests with every term it names (see
        :meth:`build_guidance`)."""
        if rule_given(rule):
            return parse_rule(rule)
        dom = self.domain
        if dom is None or dom.rule is None or AUTO in (check_weight(domain_weight, "the domain weight"),
                                                       check_weight(control_weight, "the control weight")):
            return None
        return parse_rule(dom.rule)

    @property
    def community(self) -> dict[str, torch.nn.Module]:
        """The community UNets by name (empty when there are none)."""
        return self.community_unets.as_dict() if self.community_unets is not None else {}

    @property
    def interrupt(self) -> bool:
        """Set by ``pipe._interrupt = True`` in a ``callback_on_step_end``: the remaining steps are skipped."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ----------------------------------------------------------------------------------------------
    # loading and saving
    @classmethod
    def load(cls, sd_model: str, domain_model: str | None = None, controlnet: str | None = None,
             domain: Domain | None = None, community: dict[str, str] | None = None,
             device="cpu", dtype=torch.float32) -> InDomainPipeline:
        """Load every part from its own reference (local folder or hub id) through :mod:`suite.models`, with one
        sentence naming the flag to fix when a part cannot be read (what the CLI and the app use). ``device`` and
        ``dtype`` are checked as :func:`suite.presets.build_pipeline` checks them (a dtype by name too);
        ``community`` is ``{name: reference}``, or a list of references named ``community0``, ``community1``, ...
        as the CLI names them."""
        # a device this machine lacks: a sentence, not torch's (None: the CPU, the default)
        device, dtype = resolve_device("cpu" if device is None else str(device), dtype)
        if isinstance(community, list | tuple):
            community = {f"community{i}": ref for i, ref in enumerate(community)}
        elif community is not None and not isinstance(community, dict):
            raise ValueError(f"community must be {{name: folder or hub id}} or a list of them, got "
                             f"{type(community).__name__}")
        parts = models.load_sd(sd_model, device=device, dtype=dtype)
        base = parts["unet"]
        dm = models.load_domain_model(domain_model, device=device, dtype=dtype, like=base) if domain_model else None
        cn = models.load_controlnet(controlnet, device=device, dtype=dtype, like=base) if controlnet else None
        extra = {name: models.load_unet(ref, device=device, dtype=dtype, like=base)
                 for name, ref in (community or {}).items()}
        return cls(**parts, domain_unet=dm.unet if dm is not None else None, controlnet=cn, domain=domain,
                   community_unets=extra or None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> InDomainPipeline:
        """diffusers' ``from_pretrained`` for a folder written by :meth:`save_pretrained` or its hub id (only
        ``*.json``, ``*.txt`` and ``*.safetensors`` files are fetched: weights are read from safetensors only).

        A folder in the format used before this class was a diffusers pipeline (``bundle.json``) still loads,
        with a warning that ``pipe.save_pretrained(NEW_FOLDER)`` converts it. ``device=`` places the result.
        """
        device = kwargs.pop("device", None)
        ref, local = resolve(pretrained_model_name_or_path, "in-domain pipeline", "the folder or hub id")
        path = Path(ref)
        bundle = read_bundle(path) if local else None
        if not local:
            path = _download(ref, kwargs)
        if bundle is not None:
            log.warning("%s is an InDomainPipeline folder in the old format (bundle.json): it loads, but convert it "
                        "with InDomainPipeline.from_pretrained(old).save_pretrained(NEW_FOLDER)", path)
            domain = domain_from_dict(bundle["domain"]) if bundle["domain"] else None
            pipe = cls.load(bundle["sd"], domain_model=bundle["domain_model"], controlnet=bundle["controlnet"],
                            domain=domain, community=bundle["community"],
                            dtype=kwargs.get("dtype") or kwargs.get("torch_dtype") or torch.float32)
        else:
            kwargs.setdefault("use_safetensors", True)
            pipe = super().from_pretrained(str(path), **kwargs)
        for m in pipe.components.values():
            if isinstance(m, torch.nn.Module):
                m.eval().requires_grad_(False)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """model_index.json names this class as ``[module file, class]`` for DiffusionPipeline; loaded through this
        class itself, the name is enough, and no file from the folder is run."""
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, list | tuple) and len(name) == 2 and name[1] == InDomainPipeline.__name__:
            config["_class_name"] = name[1]
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> Path:
        """diffusers' ``save_pretrained`` (``model_index.json`` + one sub-folder per component, safetensors),
        written to a temporary sibling folder and renamed into place. The folder loads with
        ``InDomainPipeline.from_pretrained(folder)``, and with
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (diffusers then runs the folder's
        two-line ``pipeline.py``, which imports this class)."""
        if not kwargs.pop("safe_serialization", True):
            raise ValueError("InDomainPipeline saves safetensors only (its loader never reads pickles): drop "
                             "safe_serialization=False")
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            # transformers writes its models' weights only on rank 0: this rank's folder would lack the text
            # encoder's, and renamed into place it could replace rank 0's complete one
            raise UserError(f"process {torch.distributed.get_rank()} of a distributed run cannot save the pipeline "
                            "(only process 0 writes every component): save it from the main process only, e.g. under "
                            "`if accelerator.is_main_process:`")
        push = kwargs.pop("push_to_hub", False)
        hub = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "private", "token", "create_pr") if k in kwargs}
        _check_save_folder(Path(save_directory))
        with atomic_dir(save_directory) as tmp:
            super().save_pretrained(tmp, safe_serialization=True, **kwargs)
            index = json.loads((tmp / "model_index.json").read_text())
            index["_class_name"] = [Path(SHIM_FILE).stem, InDomainPipeline.__name__]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            (tmp / SHIM_FILE).write_text(SHIM)
        if push:  # diffusers' push_to_hub saves through this method into its own folder, then uploads that
            self.push_to_hub(hub.pop("repo_id", Path(save_directory).name), variant=kwargs.get("variant"), **hub)
        return Path(save_directory)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """diffusers' model offload: every model rests on the CPU and moves to ``device`` when it runs. The text
        encoder, UNet and VAE follow each other (``model_cpu_offload_seq``); the domain UNet, ControlNet and
        community UNets, which run at every step beside the UNet, each get their own hook (as diffusers treats a
        ControlNet) and go back to the CPU when sampling ends. For GPUs that cannot hold the UNets of one step at
        once, ``enable_sequential_cpu_offload`` moves weights layer by layer instead."""
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        collection = self.community_unets
        if collection is not None:  # the container is never called: hook each of its UNets instead
            from accelerate import cpu_offload_with_hook

            for hook in [h for h in self._all_hooks if h.model is collection]:
                hook.remove()
                self._all_hooks.remove(hook)
            for unet in collection.unets.values():
                self._all_hooks.append(cpu_offload_with_hook(unet, self._offload_device)[1])
        return self

    # ----------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, clip_skip: int | None = None) -> torch.Tensor:
        """CLIP features ``[1, 77, D]`` of one prompt (textual-inversion tokens expanded, as diffusers does)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder (it was freed): pass prompt_embeds instead of a prompt")
        prompt = self.maybe_convert_prompt(prompt, self.tokenizer)
        return encode_prompts(self.tokenizer, self.text_encoder, [prompt], device=self._execution_device,
                              dtype=self.unet.dtype, clip_skip=clip_skip)

    def _sd(self, prompt_embeds, unet=None, control: ControlNetInput | None = None, name="sd",
            image_embeds: list[torch.Tensor] | None = None) -> UNetDenoiser:
        """An SD1.5-type UNet (default: ``self.unet``) with its conditioning. ``image_embeds`` (IP-Adapter) reach
        only ``self.unet``, the model the adapters were loaded into."""
        unet = unet if unet is not None else self.unet
        pred = getattr(self.scheduler.config, "prediction_type", "epsilon")
        # a zero-terminal-SNR schedule's last alpha_bar made finite, as the sampler's copy is (epsilon_scheduler):
        # with 0 there the v -> epsilon conversion dropped the model's prediction at the first step
        return UNetDenoiser(unet, prompt_embeds, control=control, prediction_type=pred,
                            image_embeds=image_embeds if unet is self.unet else None,
                            alphas_cumprod=finite_alphas(self.scheduler.alphas_cumprod), name=name)

    def prepare_control_image(self, image, height: int, width: int) -> torch.Tensor:
        """A ControlNet conditioning image as ``[1, 3, H, W]`` in [0, 1] at the output size."""
        device, dtype = self._execution_device, self.unet.dtype
        if isinstance(image, torch.Tensor):  # checked as a PIL image is (it was stretched to any shape, unchecked)
            img = _checked_image_tensor(image, "a control image tensor")
            self._check_control_shape(img.shape[-1], img.shape[-2], height, width)
            if img.shape[-2:] != (height, width):
                img = torch.nn.functional.interpolate(img, size=(height, width), mode="bilinear")
            return img.to(device, dtype)
        if isinstance(image, np.ndarray):  # as diffusers takes it: [H, W, C], uint8 or floats in [0, 1]
            image = _image_from_array(image, "a control image array")
        elif not isinstance(image, Image.Image):
            raise ValueError(f"the control image must be a PIL image, a numpy array or a tensor, got "
                             f"{type(image).__name__}")
        self._check_control_shape(*image.size, height, width)
        image = to_rgb(image)  # transparency on white, 16-bit scaled (a bare convert("RGB") made 16-bit white)
        return self.control_image_processor.preprocess(image, height=height, width=width).to(device, dtype)

    def _check_control_shape(self, w: int, h: int, height: int, width: int) -> None:
        """One sentence where a ``w x h`` control image would be stretched to the output's other shape."""
        # the size its shape gives (size_like) is taken even where rounding moved it further (a 6.7:1 strip)
        if abs(math.log((w / h) / (width / height))) > 0.05 and (width, height) != self.size_like(w, h):
            raise ValueError(
                f"the control image is {w}x{h} but the output is {width}x{height}: their aspect ratios differ; "
                f"crop the control image or pass --width/--height matching it"
            )

    def _text_rows(self, texts: list[str] | None, embeds: torch.Tensor | None, n_prompts: int, per_prompt: int,
                   what: str, clip_skip: int | None = None) -> torch.Tensor:
        """Text features for the batch: ``[1, 77, D]`` when one prompt serves every image, else one row per image
        (diffusers' order: ``per_prompt`` images of prompt 1, then of prompt 2, ...). From ``texts`` (1 or
        ``n_prompts`` prompts) or from precomputed ``embeds`` (1 or ``n_prompts`` rows)."""
        if embeds is not None:
            if embeds.ndim != 3 or embeds.shape[0] not in (1, n_prompts):
                raise ValueError(f"{what} must be [1 or {n_prompts}, tokens, dim] (one row per prompt), "
                                 f"got {tuple(embeds.shape)}")
            width = self.unet.config.cross_attention_dim
            if isinstance(width, int) and embeds.shape[-1] != width:  # a matmul error deep in the UNet
                raise ValueError(f"{what} are {embeds.shape[-1]}-wide and this model's UNet reads {width}: encode them "
                                 f"with this pipeline's text encoder (pipe.encode_prompt)")
            rows = embeds.to(self._execution_device, self.unet.dtype)
        elif len(texts) == 1:
            rows = self.encode_prompt(texts[0], clip_skip)
        else:
            rows = torch.cat([self.encode_prompt(t, clip_skip) for t in texts])
        if rows.shape[0] == 1:
            return rows
        return rows.repeat_interleave(per_prompt, dim=0)

    def build_guidance(self, *, prompt: str | list[str] | None = None,
                       negative_prompt: str | list[str] | None = None, prompt_embeds: torch.Tensor | None = None,
                       negative_prompt_embeds: torch.Tensor | None = None, domain_weight: float | None = None,
                       control_weight: float | None = None, control_image=None, controls: Sequence[Control] = (),
                       height: int = 512, width: int = 512, w0: float = 7.0, auto_norm: str = "direction",
                       rectify: bool = True, use_domain: bool = True, images_per_prompt: int = 1,
                       ip_adapter_embeds: tuple[list, list] | None = None,
                       clip_skip: int | None = None, rule: GuidanceRule | str | None = None,
                       explicit_rule: bool = True, noise_range: tuple[float, float] | None = None) -> MultiGuidance:
        """The multi-guidance denoiser for one request (reads top to bottom).

        ``domain_weight`` / ``control_weight``: a number, or ``None`` for automatic (``AutoWeights(w0, auto_norm)``).
        ``rectify=False`` takes the unconditional prediction from the first community model in ``controls``
        (the customised model's own), to show what rectification fixes. ``prompt`` (and ``negative_prompt``) may
        be a list, one prompt per group of ``images_per_prompt`` rows of the batch (diffusers' order);
        ``prompt_embeds`` / ``negative_prompt_embeds`` replace the encoded prompts (one row per prompt).
        ``ip_adapter_embeds``: ``(positive, negative)`` IP-Adapter image embeddings (one tensor per adapter): the
        conditional calls of the SD UNet read the positive ones, its unconditional base the negative ones.
        ``clip_skip`` applies to the prompts, not to the negative prompt (as in diffusers' encode_prompt).
        ``rule``: a guidance rule (:mod:`suite.rules`) or its string, as given (no default is applied here:
        :meth:`guidance_rule` decides it); one that names a term this request lacks is refused, unless
        ``explicit_rule=False`` (a domain's recommended rule), which then does not apply: it was tuned for requests
        with the terms it names, acting within the request's ``noise_range`` (``(lo, hi)`` of ``t / T``; the mini
        porcelain's hands the noisy steps to a prompt: a request without a prompt, or an SDEdit that starts below
        them, gets the recommended weights under the paper's Eq. 3; see :func:`suite.rules.rule_fits`).
        """
        rule = parse_rule(rule)
        # the weights as __call__ checks them (from here, True was weight 1 and 500 skipped the +-100 bound)
        check_guidance_settings(domain_weight, control_weight, w0, auto_norm)
        ip_pos, ip_neg = ip_adapter_embeds or (None, None)
        # 1. The prompt term's text features (a list of prompts gives one row per image), then the negative ones.
        k = check_int(images_per_prompt, "the number of images per prompt", 1)
        if prompt_embeds is not None and prompt is not None and prompt != "":
            raise ValueError("give a prompt or prompt_embeds, not both")
        if negative_prompt_embeds is not None and negative_prompt is not None and negative_prompt != "":
            raise ValueError("give a negative prompt or negative_prompt_embeds, not both")
        prompts = None if prompt_embeds is not None else _prompt_list(prompt, "the prompt")
        n = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        negatives = None if negative_prompt_embeds is not None else _prompt_list(negative_prompt, "the negative prompt")
        if negatives is not None and len(negatives) not in (1, n):
            raise ValueError(f"{len(negatives)} negative prompts for {n} prompts: give one, or one each")
        has_text = prompt_embeds is not None or any(prompts)
        if has_text and prompts is not None and not all(prompts):
            raise ValueError("the prompts mix empty and non-empty ones: an image without a prompt is guided by the "
                             "domain alone and one with a prompt by both, so make them in separate calls")
        if clip_skip is not None and self.text_encoder is not None:
            clip_skip = check_int(clip_skip, "clip_skip", 0, self.text_encoder.config.num_hidden_layers - 1)
        text = self._text_rows(prompts, prompt_embeds, n, k, "prompt_embeds", clip_skip) if has_text else None
        neg = self._text_rows(negatives, negative_prompt_embeds, n, k, "negative_prompt_embeds")
        if text is not None and neg.shape[0] != text.shape[0] and 1 not in (neg.shape[0], text.shape[0]):
            raise ValueError("prompt_embeds and negative_prompt_embeds must have the same number of rows")
        extra = [replace(c, prompt=check_prompt(c.prompt, f"the prompt of {c.name}")) for c in controls]

        # 2. Base (unconditional) prediction eps_0: SD1.5 with the negative prompt ("" by default).
        #    Rectification (Sec. 4.5) = the base stays SD1.5 even when a control is a customised model.
        base_unet = self.unet
        if not rectify:
            customised = [c.unet for c in extra if c.unet is not None]
            if customised:
                base_unet = customised[0]
        base = self._sd(neg, unet=base_unet, name="uncond", image_embeds=ip_neg)

        # 3. Terms: domain guidance (null-text domain UNet, no text), then control guidance: the prompt (with the
        #    ControlNet image, if any), then the extra controls.
        terms: list[Term] = []
        if use_domain and self.domain_unet is not None and (domain_weight is None or domain_weight != 0):
            # same parameterisation as SD1.5 (a v-prediction base gives a v-prediction domain model)
            terms.append(Term(self._sd(None, unet=self.domain_unet, name="domain"), domain_weight, name="domain"))
        first_text = ref_text = None
        if text is not None or control_image is not None:
            den = self._sd(text if text is not None else neg, control=self._controlnet_input(control_image, None, 1.0,
                                                                                            height, width),
                           name="control", image_embeds=ip_pos)
            if text is not None and (control_weight is None or control_weight != 0):
                # the reference of the automatic weights (a prompt switched off is not one): SD's own guidance for
                # the prompt, without the ControlNet's residuals (with them it was the domain prompt's instead)
                if control_image is None:
                    first_text = den
                else:
                    ref_text = text
            terms.append(Term(den, control_weight, name="control"))
        for i, c in enumerate(extra):
            embeds = self.encode_prompt(c.prompt, clip_skip) if c.prompt else neg
            scale = check_finite(c.conditioning_scale, f"the conditioning scale of {c.name or 'a control'}")  # NaN: black
            cn = self._controlnet_input(c.image, c.controlnet, scale, height, width)
            den = self._sd(embeds, unet=c.unet, control=cn, name=c.name or f"control{i}", image_embeds=ip_pos)
            weight = None if check_weight(c.weight, f"the weight of {c.name or 'a control'}") == AUTO else c.weight
            if first_text is None and ref_text is None and c.prompt and c.unet is None and cn is None and weight != 0:
                first_text = den
            terms.append(Term(den, weight, name=c.name or f"control{i}"))

        # 4. Automatic weights: balanced against SD's own guidance for the reference prompt (the text control
        #    if there is one, else the domain prompt); see AutoWeights.
        auto = None
        if any(t.weight is None for t in terms):
            reference = None
            if auto_norm == "direction":
                if first_text is not None:
                    reference = first_text
                elif ref_text is not None:
                    reference = self._sd(ref_text, name="reference", image_embeds=ip_pos)
                else:
                    metadata = getattr(self.domain_unet, "metadata", None)
                    ref_prompt = self.domain.prompt if self.domain else (metadata.prompt if metadata else "")
                    ref_prompt = ref_prompt or next((c.prompt for c in extra if c.prompt), "")
                    reference = self._sd(self.encode_prompt(ref_prompt, clip_skip), name="reference",
                                         image_embeds=ip_pos)
            auto = AutoWeights(w0=w0, norm=auto_norm, reference=reference)
        acting = [t.name for t in terms if t.weight is None or t.weight != 0]
        if explicit_rule:
            check_rule_terms(rule, acting, noise_range=noise_range)
        elif not rule_fits(rule, acting, noise_range):
            rule = None  # a recommended rule applies to the requests it was tuned for (e.g. with a prompt)
        return MultiGuidance(base, terms, auto, rule=rule,
                             num_train_timesteps=self.scheduler.config.num_train_timesteps)

    def _controlnet_input(self, image, controlnet, scale: float, height: int, width: int) -> ControlNetInput | None:
        if image is None:
            return None
        controlnet = controlnet or self.controlnet
        if controlnet is None:
            raise ValueError("a control image needs a ControlNet: load the pipeline with one (--controlnet "
                             "FOLDER_OR_HUB_ID; from Python, build_pipeline(..., need_controlnet=True) for the preset's "
                             "own, or InDomainPipeline.load(..., controlnet=...))")
        return ControlNetInput(controlnet, self.prepare_control_image(image, height, width), scale)

    def size_like(self, w: int, h: int) -> tuple[int, int]:
        """The output size for a control image of ``w x h`` when none is given (:func:`size_like`)."""
        return size_like(w, h, self._native_size, self.vae_scale_factor)

    def check_inputs(self, num_inference_steps, num_images_per_prompt, strength, height, width, image, latents,
                     domain_weight, control_weight, w0, callback_on_step_end_tensor_inputs,
                     control_size: tuple[int, int] | None = None, auto_norm: str = "direction") -> tuple:
        """diffusers' ``check_inputs``: one clear sentence per bad input; returns ``(steps, images per prompt,
        strength, height, width)`` with the size taken from the start image, the first control image's shape
        (``control_size``, ``(w, h)``: :meth:`size_like`) or the model when not given."""
        # bounds against a typo's allocation (height 100000: 40 GB before any message), as the CLI's, per call
        steps = check_int(num_inference_steps, "the number of steps", minimum=1)
        schedule = self.scheduler.config.num_train_timesteps
        if steps >= schedule:  # checked before the scheduler allocates them (10**9 steps: 7.45 GB)
            # as many steps as the schedule has timesteps: the mini world's at 1000 made NaN latents and a black image,
            # exit 0 (SD1.5's took timestep 1 a thousand times)
            raise ValueError(f"{steps} steps need a schedule of more than {schedule} timesteps: use at most "
                             f"{schedule - 1} (the paper samples with 100)")
        per_prompt = check_int(num_images_per_prompt, "the number of images", minimum=1, maximum=MAX_CALL_IMAGES)
        strength = check_range(strength, "strength", 0.0, 1.0, "0 keeps the image, 1 ignores it")
        check_guidance_settings(domain_weight, control_weight, w0, auto_norm)
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, "
                             f"not {unknown}: the prompts live in the guidance terms")
        if image is not None and latents is not None:
            raise ValueError("latents are the starting noise of text-to-image; with a start image (SDEdit) the "
                             "noise comes from the generator: drop one of them")
        if image is not None and strength > 0:  # 0 keeps the image; above it, a change was asked for
            check_runs_a_step(steps, strength, "the start image", "num_inference_steps", "strength")
        m = self.vae_scale_factor  # diffusers' rule; the UNet handles latents that are not a power-of-2 size
        if image is not None and height is None and width is None and _image_size(image[0]) is not None:
            # the start image's size (a PIL image, an array or a tensor), rounded down to the VAE's multiple as
            # diffusers' img2img does (a 102 x 70 photo is sampled at 96 x 64 with SD1.5's factor 8)
            width, height = (max(m, v // m * m) for v in _image_size(image[0]))
        elif image is not None and (height is None) != (width is None) and _image_size(image[0]) is not None:
            # one side given: the other keeps the start image's shape (it was the model's native size: a 64 x 128
            # photo with width=64 came back 64 x 64, stretched)
            iw, ih = _image_size(image[0])
            if width is None:
                width = max(m, round(check_int(height, "the height", 1, MAX_CALL_SIDE) * iw / ih / m) * m)
            else:
                height = max(m, round(check_int(width, "the width", 1, MAX_CALL_SIDE) * ih / iw / m) * m)
        elif latents is not None and height is None and width is None and latents.ndim == 4:  # the latents' size
            height, width = latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor
        elif image is None and height is None and width is None and control_size is not None:
            width, height = self.size_like(*control_size)
        height = self._native_size if height is None else check_int(height, "the height", 1, MAX_CALL_SIDE)
        width = self._native_size if width is None else check_int(width, "the width", 1, MAX_CALL_SIDE)
        if height % m or width % m:
            w, h = max(m, round(width / m) * m), max(m, round(height / m) * m)
            raise ValueError(f"height and width must be multiples of {m} for this model, got {width}x{height}: "
                             f"round them, e.g. width={w}, height={h} (--width {w} --height {h})")
        return steps, per_prompt, strength, height, width

    def _noise_range(self, timesteps) -> tuple[float, float] | None:
        return noise_range(timesteps, self.scheduler.config.num_train_timesteps)

    @staticmethod
    def get_timesteps(sampler, num_inference_steps: int, strength: float) -> torch.Tensor:
        """img2img's ``get_timesteps`` (SDEdit): the last ``strength`` fraction of the sampler's timesteps, and the
        sampler told where it begins."""
        init_steps = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_steps, 0)
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(t_start * sampler.order)
        return sampler.timesteps[t_start * sampler.order:]

    def prepare_latents(self, num_images: int, height: int | None = None, width: int | None = None,
                        generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        """The starting noise of ``num_images`` text-to-image samples (diffusers' name), as ``__call__`` draws it:
        image ``i`` of a call with ``seed`` starts from row ``i`` of this tensor, so a batch can be completed later
        (``generate --resume``) by passing the missing rows as ``latents``."""
        generator = generator if generator is not None else seeded_generator(seed)
        return randn_tensor(self._latent_shape(num_images, height, width), generator=generator,
                            device=self._execution_device, dtype=self.unet.dtype)

    @property
    def _native_size(self) -> int:
        """The image side the UNet was trained at (its default height and width)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def _latent_shape(self, num_images: int, height: int | None, width: int | None) -> tuple[int, int, int, int]:
        height, width = height or self._native_size, width or self._native_size
        return (num_images, self.unet.config.in_channels, height // self.vae_scale_factor,
                width // self.vae_scale_factor)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, *, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = DEFAULT_STEPS,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 domain_weight: float | None = None, control_weight: float | None = None, control_image=None,
                 controls: Sequence[Control] = (), image=None, strength: float = 0.8, seed: int | None = None,
                 w0: float = 7.0, auto_norm: str = "direction", rectify: bool = True, use_domain: bool = True,
                 ip_adapter_image=None, ip_adapter_image_embeds: list[torch.Tensor] | None = None,
                 clip_skip: int | None = None, guidance=None,
                 guidance_rule: GuidanceRule | str | None = None, mask_image=None) -> InDomainOutput | tuple:
        """Sample ``num_images_per_prompt`` images per prompt. diffusers' arguments mean what they mean in
        ``StableDiffusionPipeline``; the guidance weights replace ``guidance_scale``.

        With ``image`` (a start image) this is SDEdit: the image's latent is noised to the step that ``strength``
        selects (0 = unchanged, 1 = from pure noise) and denoised by the same loop. ``guidance`` replaces the
        default multi-guidance with any denoiser (e.g. a custom one). ``seed`` is a shortcut for ``generator``.
        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` may return new latents, and may stop
        sampling with ``pipe._interrupt = True`` (the latents so far are decoded). ``ip_adapter_image`` /
        ``ip_adapter_image_embeds`` (after ``pipe.load_ip_adapter(...)``) are diffusers' (embeddings as
        ``cat([negative, positive])`` per adapter). ``guidance_rule``: a guidance rule or its string
        (:mod:`suite.rules`; ``"paper"`` for none); not given, the domain's recommended one (:meth:`guidance_rule`).
        ``mask_image`` (with ``image``; white = may change, black = kept, :func:`latent_mask`): after every step the
        kept part of the latents is replaced by the start image's latents noised to the next step with the same
        noise (diffusers' inpainting with a plain UNet; blended latent diffusion), so what changes is drawn to fit
        what is kept. The decoded image is the VAE's everywhere: paste the kept pixels back for exact ones.
        """
        # 1. Check inputs (one clear sentence each).
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if image is not None and not isinstance(image, list | tuple):
            image = [image]
        other = next((im for im in image or () if not isinstance(im, Image.Image | np.ndarray | torch.Tensor)), None)
        if other is not None:
            raise ValueError(f"a start image must be a PIL image, a numpy array or a tensor, got "
                             f"{type(other).__name__}: open a file with PIL.Image.open(path)")
        if image is not None:  # any PIL mode (RGBA, L, P, 16-bit, CMYK) as the CLI reads it (was torch's channel error);
            # arrays and tensors by the control image's rules (a uint8 array reached the VAE at 0-509, a gray one
            # failed in torch's words)
            image = [to_rgb(im) if isinstance(im, Image.Image)
                     else _image_from_array(im, "a start image array") if isinstance(im, np.ndarray) and im.ndim <= 3
                     else _checked_image_tensor(im, "a start image tensor") if isinstance(im, torch.Tensor)
                     else im for im in image]
        if isinstance(controls, Control):  # one control, not in a list (it was "'Control' object is not iterable")
            controls = [controls]
        firsts = [control_image] + [c.image for c in controls]
        first = next((c for c in firsts if c is not None), None)
        control_size = _image_size(first)
        steps, per_prompt, strength, height, width = self.check_inputs(
            num_inference_steps, num_images_per_prompt, strength, height, width, image, latents, domain_weight,
            control_weight, w0, callback_on_step_end_tensor_inputs, control_size, auto_norm)
        device, dtype = self._execution_device, self.unet.dtype
        if generator is not None and seed is not None:  # the seed was ignored without a word
            raise ValueError("give seed or generator, not both: seed=N is a shortcut for "
                             "generator=torch.Generator().manual_seed(N)")
        generator = generator if generator is not None else seeded_generator(seed)
        if mask_image is not None and image is None:
            raise ValueError("mask_image says which part of a start image may change: give the image too (image=...)")
        keep = None if mask_image is None else 1 - latent_mask(
            mask_image, _image_size(image[0]) or (width, height), width, height, self.vae_scale_factor)
        if output_type not in ("pil", "np", "pt", "latent"):  # diffusers falls back to numpy with a warning
            raise ValueError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        for value, what in ((latents, "latents"), (prompt_embeds, "prompt_embeds"),
                            (negative_prompt_embeds, "negative_prompt_embeds")):
            if value is not None and not isinstance(value, torch.Tensor):  # a numpy array: AttributeError '.to'
                raise ValueError(f"{what} must be a torch tensor, got {type(value).__name__}: e.g. "
                                 f"torch.from_numpy(array)")

        # 2. The request's size (a list of prompts gives num_images_per_prompt images per prompt, in diffusers'
        #    order) and its IP-Adapter embeddings.
        if prompt_embeds is not None:
            n_prompts = prompt_embeds.shape[0]
        else:
            n_prompts = len(prompt) if isinstance(prompt, list | tuple) else 1
        num_images = per_prompt * n_prompts
        if isinstance(generator, list | tuple) and len(generator) != num_images:  # diffusers' rule (an IndexError)
            raise ValueError(f"got a list of {len(generator)} generators for {num_images} images: give one generator, "
                             f"or one per image")
        ip_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            if getattr(self.unet, "encoder_hid_proj", None) is None:
                raise ValueError("an IP-Adapter image needs an IP-Adapter: load one with pipe.load_ip_adapter(...)")
            both = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device,
                                                        num_images, True)
            ip_embeds = ([e.chunk(2)[1] for e in both], [e.chunk(2)[0] for e in both])

        # 3. Timesteps (for a start image, only the last `strength` fraction of them, as img2img does).
        #    The guidance returns epsilon whatever the networks predict (UNetDenoiser converts v), so the
        #    scheduler steps as an epsilon scheduler.
        sampler = epsilon_scheduler(self.scheduler)  # the guidance's output is epsilon
        sampler.set_timesteps(steps, device=device)
        timesteps = sampler.timesteps if image is None else self.get_timesteps(sampler, steps, strength)
        # The guidance: one denoiser built from SD1.5, the domain model and the controls, under the rule the
        # pipeline decides (a recommended rule only where it fits this request's noise range).
        if guidance is not None and rule_given(guidance_rule):
            raise ValueError("guidance_rule applies to the pipeline's own guidance: with guidance=..., build the "
                             "rule into that denoiser (MultiGuidance(..., rule=parse_rule(...)))")
        if guidance is not None:  # each was dropped without a word: the given denoiser is the whole guidance
            ignored = [name for name, value, default in (
                ("negative_prompt", negative_prompt, None), ("negative_prompt_embeds", negative_prompt_embeds, None),
                ("domain_weight", domain_weight, None), ("control_weight", control_weight, None),
                ("control_image", control_image, None), ("controls", list(controls), []), ("w0", w0, 7.0),
                ("auto_norm", auto_norm, "direction"), ("rectify", rectify, True), ("use_domain", use_domain, True),
                ("clip_skip", clip_skip, None), ("ip_adapter_image", ip_adapter_image, None),
                ("ip_adapter_image_embeds", ip_adapter_image_embeds, None))
                if ((value is not None) if default is None else value != default)]
            if ignored:
                raise ValueError(f"{', '.join(ignored)} set{'s' if len(ignored) == 1 else ''} the pipeline's own "
                                 f"guidance, which guidance=... replaces: build {'it' if len(ignored) == 1 else 'them'} "
                                 f"into that denoiser (pipe.build_guidance(...)), or drop guidance=")
        if guidance is None:
            rule = self.guidance_rule(guidance_rule, domain_weight, control_weight)
            domain_weight, control_weight = self.guidance_weights(domain_weight, control_weight)
            guidance = self.build_guidance(prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                                           negative_prompt_embeds=negative_prompt_embeds, images_per_prompt=per_prompt,
                                           domain_weight=domain_weight, control_weight=control_weight,
                                           control_image=control_image, controls=controls, height=height,
                                           width=width, w0=w0, auto_norm=auto_norm, rectify=rectify,
                                           use_domain=use_domain, ip_adapter_embeds=ip_embeds, clip_skip=clip_skip,
                                           rule=rule, explicit_rule=rule_given(guidance_rule),
                                           noise_range=self._noise_range(timesteps))
        if rule_given(guidance_rule) and getattr(guidance, "rule", None) is not None and len(timesteps):
            # a rule's interval between this call's steps would never act (3 steps sample 0.75, 0.5, 0.25: a prompt
            # given 0.55-0.7 only was silently off); the range check above sees only the steps' span
            levels = [float(v) for v in noise_level(timesteps, guidance.num_train_timesteps, len(timesteps))]
            present = {term.name for term in guidance.terms}
            for name, sched in guidance.rule.schedules:
                if name in present and not sched.always_zero and not any(sched.factor(x) for x in levels):
                    shown = ", ".join(f"{x:.2f}" for x in levels[:6]) + (", ..." if len(levels) > 6 else "")
                    raise ValueError(f"the guidance rule gives {name} the noise levels {sched.lo:g}-{sched.hi:g} only, "
                                     f"where none of this call's {len(levels)} steps falls (their levels: {shown}): "
                                     f"widen the interval, or take more steps")
        if hasattr(guidance, "reset"):
            guidance.reset()
        latent_shape = self._latent_shape(num_images, height, width)

        # 4. Initial latents: noise (or the given latents), or the start image's latent noised to the first
        #    timestep (SDEdit).
        if image is None:
            if latents is None:
                latents = self.prepare_latents(num_images, height, width, generator)
            elif tuple(latents.shape) != latent_shape:
                raise ValueError(f"latents must have shape {latent_shape} for {num_images} image(s) of "
                                 f"{width}x{height}, got {tuple(latents.shape)}")
            latents = latents.to(device, torch.float32) * sampler.init_noise_sigma
        else:
            pixels = self.image_processor.preprocess(image, height=height, width=width).to(device, self.vae.dtype)
            if pixels.shape[0] not in (1, num_images):
                raise ValueError(f"got {pixels.shape[0]} start images for {num_images} output(s): give one start image "
                                 f"for all, or one per output (num_images_per_prompt={pixels.shape[0]} for "
                                 f"{pixels.shape[0]} of one prompt)")
            posterior = self.vae.encode(pixels).latent_dist
            if isinstance(generator, list | tuple):
                # one draw per output with its own generator, as diffusers' img2img: output i is then the single
                # call with generator i (one shared draw spent only the first generator)
                rows = posterior.mean.shape[0]
                init = torch.cat([posterior.mean[i % rows:i % rows + 1] + posterior.std[i % rows:i % rows + 1]
                                  * randn_tensor(posterior.mean[:1].shape, generator=g, device=device,
                                                 dtype=posterior.mean.dtype) for i, g in enumerate(generator)])
            else:
                init = posterior.sample(generator)
                if init.shape[0] == 1 and num_images > 1:
                    init = init.repeat(num_images, 1, 1, 1)  # one encoding shared by all outputs, as diffusers does
            init = init.float() * self.vae.config.scaling_factor
            noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype).float()
            latents = sampler.add_noise(init, noise, timesteps[:1].repeat(num_images)) if len(timesteps) else init

        # 5. Denoising loop: one multi-guidance prediction per step, then the scheduler's update. The sampler's
        #    state stays in float32 whatever the networks' dtype (they get it cast): its update divides by
        #    sqrt(alpha_bar), 5e-5 at the first step of a zero-terminal-SNR schedule, so a half-precision epsilon
        #    or latent was amplified 20,000 times (fp16 images 0.027 off fp32 on average; diffusers' v-prediction
        #    step never divides, and ours steps on the epsilon the guidance returns)
        # a scheduler that draws noise at each step (Euler ancestral, DDPM, SDE-DPM-Solver: swapped in by the user)
        # draws it from the call's generator, as diffusers' prepare_extra_step_kwargs passes it (the same seed gave
        # other images)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(sampler.step).parameters else {}
        self._interrupt = False
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                eps = guidance(sampler.scale_model_input(latents, t), t).to(latents.dtype)
                latents = sampler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
                if keep is not None:  # the kept part: the start image's latents at the next step's noise level
                    known = init if i + 1 == len(timesteps) else sampler.add_noise(
                        init, noise, timesteps[i + 1:i + 2].repeat(num_images))
                    latents = latents + keep.to(latents.device) * (known - latents)
                if callback_on_step_end is not None:
                    # in the networks' dtype, as diffusers gives them (a preview decoding them with the VAE); the
                    # float32 state is kept unless the callback changed them
                    given = latents.to(dtype)
                    before = given.clone() if given is not latents else None
                    available = {"latents": given}
                    outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                    if not isinstance(outputs, dict):  # None: AttributeError 'pop'
                        raise ValueError(f"callback_on_step_end must return a dict (its callback_kwargs, changed or "
                                         f"not), got {type(outputs).__name__}")
                    new = outputs.pop("latents", given)
                    if not isinstance(new, torch.Tensor) or new.shape != latents.shape:  # the output's size changed
                        raise ValueError(f"callback_on_step_end returned latents of shape "
                                         f"{tuple(getattr(new, 'shape', ()))}, not {tuple(latents.shape)}: change "
                                         f"their values, not their shape")
                    if before is None or new is not given or not torch.equal(given, before):
                        latents = new.float()  # a half tensor changed (in place or new) replaces the state
                progress_bar.update()

        # 6. Decode.
        weights = guidance.weights_used() if isinstance(guidance, MultiGuidance) else {}
        if output_type == "latent":
            images = latents.to(dtype, copy=True)  # diffusers' convention: the latents in place of the images
        else:
            decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype),
                                      return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type,
                                                      do_denormalize=[True] * decoded.shape[0])
        self.maybe_free_model_hooks()
        latents = latents.to(dtype)  # in the networks' dtype, as diffusers returns them
        if not return_dict:
            return images, latents, weights
        applied = format_rule(guidance.rule) or "paper" if isinstance(guidance, MultiGuidance) else None
        return InDomainOutput(images=images, latents=latents, weights=weights, guidance_rule=applied)


def _download(repo_id: str, kwargs: dict) -> Path:
    """The files of a saved InDomainPipeline on the hub: model_index.json, then for each component named in it its
    configs, tokenizer files and safetensors weights (of ``variant`` if given, else the plain ones), nothing else."""
    from huggingface_hub import hf_hub_download, snapshot_download

    hub = dict(revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"),
               local_files_only=bool(kwargs.get("local_files_only")), force_download=bool(kwargs.get("force_download")),
               proxies=kwargs.get("proxies"))
    index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", **hub)).read_text())
    names = [k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is not None]
    variant = kwargs.get("variant")
    weights = f"*.{variant}.safetensors" if variant else "*.safetensors"
    patterns = ["model_index.json"] + [f"{n}/{p}" for n in names for p in ("*.json", "*.txt", weights)]
    ignore = None if variant else ["*.*.safetensors"]  # fp16 and other variants, unless asked for
    return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=ignore, **hub))


@contextlib.contextmanager
def quiet(pipe):
    """Within: no diffusers progress bar on ``pipe`` (the caller reports progress itself); restored after."""
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        yield pipe
    finally:
        pipe._progress_bar_config = saved


def report_steps(report: Callable[[int, int], None]) -> Callable:
    """A ``callback_on_step_end`` that calls ``report(step, total)`` after each step (1-based) and changes nothing."""
    def callback(pipe, i, t, tensors):
        report(i + 1, pipe.num_timesteps)
        return {}

    return callback


def _prompt_list(prompt, what: str) -> list[str]:
    """A prompt, or a list of prompts, as a checked list (one item for a single prompt)."""
    if isinstance(prompt, list | tuple):
        if not prompt:
            raise ValueError(f"{what} is an empty list: give at least one prompt")
        return [check_prompt(p, f"{what} {i + 1}") for i, p in enumerate(prompt)]
    return [check_prompt(prompt, what)]
