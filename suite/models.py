"""Resolve and load models from a local folder or a hub id, with one clear sentence when that fails.

Every loader takes a *reference*: an existing local folder (diffusers layout), or a hub id
(``owner/name``). Weights are read from safetensors only (no pickle: loading never runs code).
With no network, or ``HF_HUB_OFFLINE=1``, a hub id works only if it is already in the local cache;
otherwise :class:`ModelLoadError` says what is missing and which flag provides it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

import torch

from .nulltext import METADATA_FILE, DomainModel
from .threads import building_models

log = logging.getLogger("suite")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """A model could not be found or read. The message is one sentence that names the fix."""


def describe(err: BaseException) -> str:
    """A load error in a few words: its type and first line; a refused pickle says what it is instead of torch's
    advice to load it unsafely."""
    import pickle

    if isinstance(err, pickle.UnpicklingError):
        return "a pickle file that could run code, refused: only safetensors and plain-tensor files are loaded"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # one-file checkpoints (not diffusers folders)


def resolve(ref: str | os.PathLike, what: str, flag: str, required: tuple[str, ...] = ()) -> tuple[str, bool]:
    """``(reference, is_local)``; checks a local folder exists and has the ``required`` entries."""
    if ref is None or str(ref).strip() == "":
        raise ModelLoadError(f"no {what} given: pass {flag} with a local folder or a hub id")
    ref = str(ref)
    path = Path(os.path.expanduser(ref))
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() in SINGLE_FILE_SUFFIXES:  # a model site's one-file download (e.g. an SD1.5 fine-tune)
                raise ModelLoadError(
                    f"{what} {ref!r} is a single-file checkpoint, and the suite reads diffusers-format folders: convert "
                    f"it once with diffusers' from_single_file (for an SD1.5 fine-tune: StableDiffusionPipeline."
                    f"from_single_file(FILE).save_pretrained(FOLDER), on a machine that can reach the hub for its "
                    f"configs) and pass {flag} with that folder")
            raise ModelLoadError(f"{what} {ref!r} is a file, not a model folder: pass {flag} with a diffusers-format folder")
        missing = [r for r in required if not (path / r).exists()]
        if missing:
            raise ModelLoadError(
                f"{what} folder {ref!r} has no {', '.join(missing)}: it is not a diffusers-format folder "
                f"(pass {flag} with the right folder)"
            )
        return str(path), True
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return ref, False
    raise ModelLoadError(f"{what} folder {ref!r} does not exist: pass {flag} with an existing folder or a hub id")


def load_errors() -> tuple[type[BaseException], ...]:
    """What a loader raises for a missing, incomplete, corrupt or unsafe model file (each becomes a
    :class:`ModelLoadError` sentence): I/O and format errors, a damaged safetensors file, a pickle refused by
    ``torch.load(weights_only=True)``."""
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, KeyError, StopIteration, pickle.UnpicklingError, SafetensorError


def diffusers_files(sub: str = "") -> list[str]:
    """The files ``from_pretrained(..., use_safetensors=True)`` reads for one diffusers model in folder ``sub`` of a
    hub repository (its configs and safetensors weights, sharded or not; not the fp16, non-EMA or .bin copies)."""
    at = f"{sub}/" if sub else ""
    return [f"{at}*.json", f"{at}diffusion_pytorch_model.safetensors", f"{at}diffusion_pytorch_model-*-of-*.safetensors"]


def transformers_files(sub: str = "") -> list[str]:
    """The same for a transformers model (and its tokenizer or processor files)."""
    at = f"{sub}/" if sub else ""
    return [f"{at}*.json", f"{at}*.txt", f"{at}model.safetensors", f"{at}model-*-of-*.safetensors"]


def prefetch(ref: str, is_local: bool, patterns) -> None:
    """Download a hub model's files (``patterns``) into the hub cache *before* its load takes the loading lock
    (:func:`suite.threads.building_models`): a first download of several GB inside the lock held every other job's
    load (the app with ``--max-jobs 2``) until it ended. The load then finds them cached. Nothing happens for a
    local folder or offline; a failure here is left to the load itself, which says it in its own sentence."""
    if is_local or offline():
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(ref, allow_patterns=list(patterns))
    except Exception as err:  # noqa: BLE001 - the load below tries again and names the cause
        log.warning("could not download %s before loading it (%s): the load tries again", ref, describe(err))


def _load(what: str, flag: str, ref: str, is_local: bool, fn, patterns=None):
    """``fn()`` under the loading lock, its failures as one sentence; ``patterns``: a hub model's files, fetched
    first outside the lock (:func:`prefetch`)."""
    try:
        if patterns:
            prefetch(ref, is_local, patterns)
        with building_models():  # one load at a time in the process (suite.threads)
            return fn()
    except ModelLoadError:
        raise
    except load_errors() as err:
        if is_local:
            raise ModelLoadError(
                f"could not read {what} from {ref!r} ({describe(err)}): the folder is incomplete or corrupt; "
                f"pass {flag} with a complete diffusers-format folder"
            ) from err
        raise ModelLoadError(
            f"could not load {what} {ref!r} from the hub ({describe(err)}): if this machine is offline, download "
            f"it on a connected machine (hf download {ref}) and pass {flag} with the local folder"
        ) from err


def offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to 1, true, yes or on (read
    when asked, not at import)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_kwargs(is_local: bool) -> dict:
    return {"local_files_only": True} if is_local or offline() else {}


def place(module, device, dtype):
    """Move to ``device``; cast only when the dtype differs (diffusers warns on every cast)."""
    if dtype is not None and next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module.to(device=device).eval().requires_grad_(False)


def load_sd(ref: str, device="cpu", dtype=torch.float32, flag: str = "--sd-model") -> dict:
    """SD1.5 components ``unet, vae, text_encoder, tokenizer, scheduler`` from a diffusers SD folder or hub id."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    ref, local = resolve(ref, "Stable Diffusion 1.5 model", flag,
                         required=("unet", "vae", "text_encoder", "tokenizer", "scheduler"))
    kw = _hub_kwargs(local)

    def go():
        unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", use_safetensors=True, **kw)
        vae = AutoencoderKL.from_pretrained(ref, subfolder="vae", use_safetensors=True, **kw)
        text_encoder = CLIPTextModel.from_pretrained(ref, subfolder="text_encoder", use_safetensors=True, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer", **kw)
        scheduler = DPMSolverMultistepScheduler.from_pretrained(ref, subfolder="scheduler", **kw)
        return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    files = ["model_index.json", *diffusers_files("unet"), *diffusers_files("vae"), *transformers_files("text_encoder"),
             "tokenizer/*", "scheduler/*"]
    parts = _load("Stable Diffusion 1.5 model", flag, ref, local, go, files)
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = place(parts[name], device, dtype)
    return parts


def native_size(ref: str) -> int | None:
    """The image side a Stable Diffusion model makes by default (the pipeline's: its UNet's ``sample_size`` times
    the VAE's scale factor), read from the configs alone; None where they cannot be read (a hub id not cached)."""
    geometry = image_geometry(ref)
    return None if geometry is None else geometry[0]


def image_geometry(ref: str) -> tuple[int, int] | None:
    """``(native size, VAE scale factor)`` of a Stable Diffusion model from its configs alone (:func:`native_size`);
    None where they cannot be read."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        ref, local = resolve(ref, "Stable Diffusion 1.5 model", "--sd-model")
        kw = _hub_kwargs(local)
        unet = UNet2DConditionModel.load_config(ref, subfolder="unet", **kw)
        vae = AutoencoderKL.load_config(ref, subfolder="vae", **kw)
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        return int(unet["sample_size"]) * factor, factor
    except (ModelLoadError, *load_errors(), KeyError, TypeError, ValueError):
        return None


FITS = {  # what a model must share with the base UNet to be used beside it
    "community SD1.5 model": ("in_channels", "out_channels", "cross_attention_dim"),  # the same latents and text
    # a null-text fine-tune of the base UNet itself: its architecture (the tiny models' beside the mini world's ran)
    "domain model": ("in_channels", "out_channels", "cross_attention_dim", "block_out_channels"),
    "ControlNet": ("in_channels", "cross_attention_dim", "block_out_channels", "layers_per_block"),  # + its residuals
}


def check_fits(base, other, what: str, ref: str, flag: str) -> None:
    """One sentence when ``other`` (a community UNet, a domain UNet or a ControlNet) was made for another base model
    than ``base`` (the SD1.5 UNet it is used beside): SD2 or SDXL's, or the mini world's beside tiny models. It used
    to fail at the first step with a bare tensor-shape error."""
    def value(model, key):
        v = getattr(model.config, key, None)
        return list(v) if isinstance(v, list | tuple) else v

    for key in FITS[what]:
        mine, theirs = value(other, key), value(base, key)
        if mine != theirs:
            raise ModelLoadError(f"the {what} {ref!r} does not fit the base model (its {key} is {mine}, the base "
                                 f"UNet's {theirs}): it was made for another one (e.g. SD2 or SDXL); pass {flag} with "
                                 f"one made for this base model, or --sd-model with its own base")


def check_community_model(ref: str, flag: str = "--community-model") -> None:
    """One sentence, before any model loads, when a local folder given as an SD1.5 fine-tune is not one: a null-text
    domain model (it failed deep inside diffusers with "Cannot copy out of meta tensor", after the other methods'
    images were made) or another diffusers class."""
    ref, local = resolve(ref, "community SD1.5 model", flag)
    if not local:
        return
    folder = Path(ref)
    if (folder / METADATA_FILE).is_file():
        raise ModelLoadError(f"the folder {str(folder)!r} is a null-text domain model, not an SD1.5 fine-tune: pass it "
                             f"as --domain-model (the domain guidance), not as {flag}")
    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    _check_class(unet / "config.json", ("UNet2DConditionModel",), "UNet of an SD1.5 fine-tune", flag)


def load_unet(ref: str, device="cpu", dtype=torch.float32, flag: str = "--community-model", like=None):
    """A community SD1.5 fine-tune's UNet: a full diffusers SD folder (``unet/`` inside) or a UNet folder.
    ``like``: the base UNet it will be used beside (:func:`check_fits`)."""
    from diffusers import UNet2DConditionModel

    what = "community SD1.5 model"
    check_community_model(ref, flag)
    ref, local = resolve(ref, what, flag)
    sub = "unet" if (not local or (Path(ref) / "unet").is_dir()) else None
    kw = _hub_kwargs(local)
    unet = _load(what, flag, ref, local,
                 lambda: UNet2DConditionModel.from_pretrained(ref, subfolder=sub, use_safetensors=True, **kw),
                 diffusers_files(sub or ""))
    if like is not None:
        check_fits(like, unet, what, ref, flag)
    return place(unet, device, dtype)


def load_controlnet(ref: str, device="cpu", dtype=torch.float32, flag: str = "--controlnet", like=None):
    """A SD1.5 ControlNet (e.g. canny) from a diffusers folder or hub id. ``like``: the base UNet whose blocks its
    residuals go into (:func:`check_fits`)."""
    from diffusers import ControlNetModel

    ref, local = resolve(ref, "ControlNet", flag, required=("config.json",))
    if local:
        _check_class(Path(ref) / "config.json", ("ControlNetModel",), "ControlNet", flag)
    kw = _hub_kwargs(local)
    cn = _load("ControlNet", flag, ref, local,
               lambda: ControlNetModel.from_pretrained(ref, use_safetensors=True, **kw), diffusers_files())
    if like is not None:
        check_fits(like, cn, "ControlNet", ref, flag)
    return place(cn, device, dtype)


def _check_class(config: Path, expected: tuple[str, ...], what: str, flag: str) -> None:
    """A local model folder's ``config.json`` names one of the ``expected`` diffusers classes (a UNet folder given
    as a ControlNet fails deep inside diffusers with "Cannot copy out of meta tensor")."""
    import json

    try:
        found = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the loader says so in its own sentence
    if found and found not in expected:
        raise ModelLoadError(f"the folder {str(config.parent)!r} holds a {found}, not a {what}: pass {flag} with a "
                             f"{what} folder")


DOMAIN_FILES = ["*.json", "*.safetensors"]  # a domain model's files on the hub


def load_domain_model(ref: str, device="cpu", dtype=torch.float32, flag: str = "--domain-model", like=None):
    """A null-text domain model (:class:`suite.nulltext.DomainModel`) from its folder or a hub id. ``like``: the
    base UNet it will be used beside (:func:`check_fits`)."""
    ref, local = resolve(ref, "domain model", flag)
    if local and not (Path(ref) / METADATA_FILE).is_file() and (Path(ref) / "training").is_dir():
        steps = sorted(p for p in (Path(ref) / "training" / "checkpoints").glob("step-*")
                       if (p / METADATA_FILE).is_file())
        use = f", or pass {flag} {str(steps[-1])!r}, its last checkpoint" if steps else ""
        raise ModelLoadError(
            f"the training in {ref!r} has not finished (its model is written at the end): continue it with `python "
            f"launch.py train --resume --output {shlex.quote(ref)}` and the same other flags{use}")
    if local and not (Path(ref) / METADATA_FILE).is_file():
        raise ModelLoadError(
            f"domain model folder {ref!r} has no {METADATA_FILE}: it is not a null-text domain model; train one "
            f"with `python launch.py train --data DIR --output FOLDER` and pass {flag} FOLDER"
        )

    def go():
        folder = ref
        if not local:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(ref, allow_patterns=DOMAIN_FILES, **_hub_kwargs(False))
        return DomainModel.from_pretrained(folder)

    model = _load("domain model", flag, ref, local, go, DOMAIN_FILES)
    if like is not None:
        check_fits(like, model.unet, "domain model", ref, flag)
    place(model.unet, device, dtype)
    return model

