"""Domain training: full fine-tuning of the null-text UNet on a folder of images (paper Sec. 3.3).

:func:`train_domain` reads top to bottom: load SD1.5, check the images, cache their latents (the VAE
runs once per image), optimise the text features ``F_T`` (:mod:`training.textinit`), capture ``E`` from
them and convert a copy of the UNet to null-text (:mod:`suite.nulltext`; the text encoder is freed
here), then fine-tune every remaining UNet weight with the denoising loss, on accelerate (one GPU,
``accelerate launch --multi_gpu``, several nodes, or CPU), with checkpoints, validation samples made
with :class:`suite.guidance.MultiGuidance` (SD1.5 unconditional + domain), and an atomic final save.

Determinism and resume: the data order, the flips, the timesteps and every noise draw of the sample at
stream position ``p`` are a pure function of ``(seed, p)`` (:class:`SampleOrder`). A run's state is
therefore its step count plus the weights, optimizer, EMA and loss-scaler state that a checkpoint holds:
``--resume`` continues exactly where the checkpoint left off (bit-identical on CPU in float32, a test
checks it), and the way the global batch is split over processes and accumulation steps does not change
the samples (a test checks a 2-process run against a 1-process one).

Checkpoints are folders ``OUTPUT/training/checkpoints/step-NNNNNN`` written under a temporary name and
renamed when complete: a run killed at any moment, even during a checkpoint write, loses at most one
checkpoint interval and never corrupts the last good checkpoint. Each checkpoint is itself a loadable
domain-model folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, dict], None]
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


# ----------------------------------------------------------------------------------------------------
# configuration
@dataclass
class TrainConfig:
    """Domain-training settings. Defaults follow the paper (Sec. 4.1) and the authors' released config.

    The paper: SD1.5 at 512x512, images resized without crop, AdamW, lr 1e-5 constant, batch 32; ``F_T``
    optimised for 100 steps at batch 32 on 3,200 images. The authors' config adds weight decay 1e-2,
    gradient-norm clipping 1.0, EMA, fp16 and 8-bit AdamW (here EMA, fp16 and 8-bit AdamW are opt-in:
    fp16 needs a GPU, 8-bit AdamW needs bitsandbytes).
    """

    # what to train
    domain: str = "face"                  # domain name (a preset or your own)
    data: str = ""                        # folder of images (recursive .jpg/.png/.webp)
    output: str = ""                      # output domain-model folder (training state in OUTPUT/training/)
    sd_model: str | None = None           # SD1.5 folder / hub id (None: $INDOMAIN_SD_MODEL or SD1.5's hub id)
    prompt: str | None = None             # F_T's initial prompt (None: the domain's "a photo of <domain>")
    preset: str = "full"                  # "full", "tiny" (tiny random SD built offline) or "mini" (mini world)
    # data
    resolution: int = 512
    center_crop: bool = False             # paper: resize without crop
    hflip: float = 0.5                    # horizontal-flip probability
    small_images: str = "upscale"         # images smaller than the resolution: "upscale" (warn) or "skip"
    cache_latents: bool = True            # VAE once per image (both flips) instead of every step
    num_workers: int = 2                  # image-decoding threads
    # optimisation
    batch_size: int = 32                  # total per optimizer step = per-device x processes x accumulation
    gradient_accumulation_steps: int = 1
    max_steps: int = 20000
    lr: float = 1e-5                      # constant (after the optional warmup)
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0            # 0 disables clipping
    mixed_precision: str = "no"           # "no", "fp16" or "bf16"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    # text-feature initialisation (F_T) and capture of E
    text_init_steps: int = 100            # 0: E from the prompt's plain text features
    text_init_lr: float = 1e-3
    text_init_batch_size: int = 32
    text_init_images: int = 3200
    capture_images: int = 32              # noised image latents at which E is averaged
    # checkpoints, validation, logging
    checkpoint_steps: int = 1000
    checkpoints_keep: int = 2
    validation_steps: int = 1000          # 0 disables validation samples
    validation_images: int = 4
    validation_inference_steps: int = 25
    validation_domain_weight: float = 3.0  # w_d in (1 - w_d) eps_sd + w_d eps_d (Sec. 3.4)
    log_steps: int = 10
    report_to: str = "tensorboard"        # "tensorboard" or "none"
    seed: int = 0
    resume: bool = False
    cpu: bool = False                     # force CPU even when a GPU is present

    @classmethod
    def for_preset(cls, preset: str = "full", **overrides) -> TrainConfig:
        """The preset's defaults (``full``: the paper's; ``tiny``: :meth:`tiny`) with ``overrides``."""
        if preset == "tiny":
            return cls.tiny(**overrides)
        if preset == "mini":
            return cls.mini(**overrides)
        return cls(preset=preset, **overrides)

    @classmethod
    def mini(cls, **overrides) -> TrainConfig:
        """The mini preset: fine-tune the mini world's trained base (64x64 images) on CPU in minutes. These are
        the settings that trained the shipped porcelain model (``python -m training.miniworld``)."""
        base = dict(preset="mini", resolution=64, batch_size=32, max_steps=1200, lr=2e-4, text_init_steps=100,
                    text_init_batch_size=32, text_init_images=2000, text_init_lr=1e-2, capture_images=32,
                    checkpoint_steps=400, validation_steps=0, validation_images=4, validation_inference_steps=20,
                    log_steps=50, report_to="none", num_workers=0, hflip=0.5)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides) -> TrainConfig:
        """The tiny preset: tiny random SD1.5-architecture models, 64x64 images, CPU in seconds. Its larger
        learning rate lets a few steps move a random model measurably (it shows the flow, not quality)."""
        base = dict(preset="tiny", resolution=32, batch_size=4, max_steps=20, lr=1e-4, text_init_steps=10,
                    text_init_batch_size=4, text_init_images=64, text_init_lr=1e-2, capture_images=8,
                    checkpoint_steps=10, validation_steps=0, validation_images=2, validation_inference_steps=4,
                    log_steps=5, report_to="none", num_workers=0)
        base.update(overrides)
        return cls(**base)

    def validate(self, num_processes: int = 1) -> int:
        """Check the settings; return the per-device batch size. One clear sentence per problem."""
        if not self.data:
            raise ValueError("no image folder given: pass --data DIR")
        if not self.output:
            raise ValueError("no output folder given: pass --output DIR")
        checks = [
            (self.preset in ("full", "tiny", "mini"), f"--preset must be 'full', 'tiny' or 'mini', got {self.preset!r}"),
            (self.mixed_precision in ("no", "fp16", "bf16"),
             f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}"),
            (self.report_to in ("tensorboard", "none"), f"--report-to must be tensorboard or none, got {self.report_to!r}"),
            (self.resolution >= 8 and self.resolution % 8 == 0, f"--resolution must be a multiple of 8, got {self.resolution}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, "--gradient-accumulation-steps must be at least 1"),
            (self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (0 <= self.hflip <= 1, f"--hflip must be a probability between 0 and 1, got {self.hflip}"),
            (0 < self.ema_decay < 1, f"--ema-decay must be between 0 and 1, got {self.ema_decay}"),
            (self.checkpoint_steps >= 1, "--checkpoint-steps must be at least 1"),
            (self.checkpoints_keep >= 1, "--checkpoints-keep must be at least 1"),
            (self.text_init_steps >= 0 and self.text_init_batch_size >= 1, "--text-init-steps must be >= 0"),
            (self.small_images in ("upscale", "skip"), "--small-images must be upscale or skip"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        per = self.batch_size // (num_processes * self.gradient_accumulation_steps)
        if per * num_processes * self.gradient_accumulation_steps != self.batch_size:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by {num_processes} process(es) x "
                f"{self.gradient_accumulation_steps} accumulation step(s): choose a batch size that is a multiple "
                f"of {num_processes * self.gradient_accumulation_steps}"
            )
        return per

    def resolved_sd_model(self) -> str:
        if self.sd_model:
            return self.sd_model
        if self.preset == "tiny":
            from suite.testing import tiny_model_dir

            return str(tiny_model_dir() / "sd")
        if self.preset == "mini":
            from suite.miniworld import assets

            assets.check()  # a missing or corrupt shipped file: one sentence naming it and the rebuild command
            return str(assets.default_dir() / "sd")
        from suite.domains import SD15_HUB_ID

        return os.environ.get("INDOMAIN_SD_MODEL") or SD15_HUB_ID

    def resolved_prompt(self) -> str:
        if self.prompt:
            return self.prompt
        from suite.domains import PRESETS

        return PRESETS[self.domain].prompt if self.domain in PRESETS else f"a photo of {self.domain}"


# Settings that must not change between a checkpoint and its resume (they change the samples or the model).
_RESUME_KEYS = ("resolution", "center_crop", "hflip", "batch_size", "seed", "domain")


# ----------------------------------------------------------------------------------------------------
# the loss (Eq. 1 of latent diffusion: || eps - eps_theta(z_t, t, c) ||^2)
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


# ----------------------------------------------------------------------------------------------------
# deterministic sample stream
class SampleOrder:
    """Sample at stream position ``p``: image ``perm_e[p mod N]`` of epoch ``e = p div N`` (a fresh seeded
    permutation per epoch), its flip, timestep and noise, all drawn from a generator seeded by ``(seed, p)``.
    The optimizer step ``s`` with global batch ``B`` reads positions ``s*B ... s*B + B - 1`` however they are
    split over processes and accumulation steps."""

    def __init__(self, n: int, seed: int, hflip: float, num_train_timesteps: int):
        self.n, self.seed, self.hflip, self.T = n, int(seed), float(hflip), int(num_train_timesteps)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7919 + 17) % (2**63))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def draw(self, positions, latent_shape) -> dict:
        idx, flips, ts, noise, eps = [], [], [], [], []
        for p in positions:
            p = int(p)
            idx.append(int(self._perm(p // self.n)[p % self.n]))
            g = torch.Generator().manual_seed((self.seed * 2_654_435_761 + p * 40_503 + 1) % (2**63))
            flips.append(bool(torch.rand((), generator=g) < self.hflip))
            ts.append(int(torch.randint(0, self.T, (), generator=g)))
            noise.append(torch.randn(latent_shape, generator=g))
            eps.append(torch.randn(latent_shape, generator=g))
        return dict(indices=idx, flips=flips, timesteps=torch.tensor(ts, dtype=torch.long),
                    noise=torch.stack(noise), eps=torch.stack(eps))


# ----------------------------------------------------------------------------------------------------
# EMA
class EMA:
    """Exponential moving average of the trainable weights: ``shadow <- shadow + (1 - d_t)(w - shadow)`` with
    ``d_t = min(decay, (1 + t) / (10 + t))`` (the usual warmup, as diffusers' EMAModel)."""

    def __init__(self, named_params: dict[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().clone() for k, v in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [named_params[k].detach().float() for k in keys], 1 - d)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        params = dict(module.named_parameters())
        for k, v in self.shadow.items():
            params[k].copy_(v.to(params[k].dtype))


# ----------------------------------------------------------------------------------------------------
# checkpoints
def checkpoint_dir(output: Path) -> Path:
    return output / "training" / "checkpoints"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place), oldest first. Temporary ``.tmp-*`` folders are ignored."""
    root = checkpoint_dir(output)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file():
                try:
                    found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(found)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(output: Path, step: int, unet, metadata, optimizer, ema: EMA | None, state: dict,
                    keep: int) -> Path:
    """Write checkpoint ``step`` atomically (temporary folder, fsync, rename), then prune old ones."""
    from safetensors.torch import save_file

    from suite.nulltext import DomainModel

    root = checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    DomainModel(unet, metadata).save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if ema is not None:
        save_file({k: v.cpu().contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2, default=str))
    _fsync_tree(tmp)
    if final.exists():  # a checkpoint of the same step from an earlier run that crashed after writing it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------
def _reusable_text_features(path: Path, prompt: str, steps: int) -> bool:
    """An ``F_T`` file from an earlier attempt of this run (same prompt and steps) is reused, not recomputed."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return meta.get("prompt") == prompt and meta.get("steps") == str(steps)


def _lr_at(config: TrainConfig, step: int) -> float:
    """Constant learning rate after a linear warmup of ``lr_warmup_steps`` (paper: constant 1e-5)."""
    if config.lr_warmup_steps > 0:
        return config.lr * min(1.0, (step + 1) / config.lr_warmup_steps)
    return config.lr


def _make_optimizer(config: TrainConfig, params):
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes, or drop the flag") from None
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
               weight_decay=config.weight_decay)


def _sample_validation(config, accelerator, sd_unet, vae, scheduler, uncond, unet, ema, output: Path, step: int):
    """Validation images with MultiGuidance: ``(1 - w_d) eps_sd + w_d eps_d`` (Sec. 3.4), SD1.5 unconditional
    base + the null-text domain term (EMA weights when EMA is on). Saved as one image grid, logged."""
    import copy

    from PIL import Image

    from suite.denoisers import UNetDenoiser
    from suite.guidance import MultiGuidance, Term
    from suite.images import save_image_atomic
    from suite.nulltext import DomainMetadata, DomainModel
    from suite.pipeline import InDomainPipeline

    model = accelerator.unwrap_model(unet)
    if ema is not None:
        model = copy.deepcopy(model)
        ema.copy_to(model)
    was_training = model.training
    model.eval()
    pipe = InDomainPipeline(vae, None, None, sd_unet, scheduler,
                            domain_model=DomainModel(model, DomainMetadata(domain=config.domain)))
    guidance = MultiGuidance(UNetDenoiser(sd_unet, uncond, name="uncond"),
                             [Term(UNetDenoiser(model, None, name="domain"), config.validation_domain_weight, "domain")])
    with torch.no_grad(), accelerator.autocast():
        out = pipe(guidance=guidance, num_images=config.validation_images, seed=config.seed,
                   num_inference_steps=config.validation_inference_steps, progress=False,
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


# ----------------------------------------------------------------------------------------------------
def train_domain(config: TrainConfig, progress: Progress | None = None) -> Path:
    """Train a null-text domain model on ``config.data``; return ``config.output``, a domain-model folder
    (``python launch.py generate --domain-model OUTPUT``). ``progress(stage, done, total, info)`` is called for
    the stages ``"scan"``, ``"cache"``, ``"text_init"``, ``"train"`` (info has ``loss``, ``images_per_s``,
    ``lr``) and ``"checkpoint"``."""
    import copy

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from suite import models
    from suite.nulltext import DomainMetadata, check_E, make_domain_model
    from suite.text import encode_prompts

    from .data import ImageFolderDataset
    from .latents import CachedLatents, OnTheFlyLatents, build_latent_cache
    from .textinit import optimize_text_features

    def report(stage, done, total, info=None):
        if progress is not None and accelerator.is_main_process:
            progress(stage, done, total, dict(info or {}))

    # 1. Accelerator (one GPU, several, several nodes, or CPU), settings, output folder.
    output = Path(os.path.expanduser(config.output)).resolve()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                              log_with=None if config.report_to == "none" else config.report_to,
                              project_dir=str(output / "training" / "logs"))
    per_device = config.validate(accelerator.num_processes)
    set_seed(config.seed)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    checkpoints = list_checkpoints(output)
    if checkpoints and not config.resume:
        raise ValueError(f"{str(output)!r} already holds a training run (checkpoint {checkpoints[-1][1].name}): "
                         f"pass --resume to continue it, or choose another --output")
    resume_from = checkpoints[-1][1] if (config.resume and checkpoints) else None
    if config.resume and resume_from is None and accelerator.is_main_process:
        log.warning("--resume: no checkpoint in %s yet, starting from the beginning", output)
    output.mkdir(parents=True, exist_ok=True)
    train_dir = output / "training"
    train_dir.mkdir(exist_ok=True)

    # 2. SD1.5 components (frozen) and the DDPM noise schedule.
    sd_ref = config.resolved_sd_model()
    parts = models.load_sd(sd_ref, device=device, dtype=torch.float32)
    vae, sd_unet, noise_scheduler = parts["vae"], parts["unet"], training_scheduler(parts["scheduler"])
    unet = copy.deepcopy(sd_unet)  # the weights to fine-tune: float32 master copy
    sd_unet.to(weight_dtype)       # frozen SD1.5: F_T optimisation, capture of E, validation
    prompt = config.resolved_prompt()

    # 3. Images: scan (corrupt files skipped and counted), then latents: cached (VAE once per image) or not.
    report("scan", 0, 1)
    dataset = ImageFolderDataset(config.data, resolution=config.resolution, center_crop=config.center_crop,
                                 hflip=config.hflip, small_images=config.small_images,
                                 progress=accelerator.is_main_process)
    report("scan", 1, 1, {"images": len(dataset), "corrupt": len(dataset.scan.corrupt)})
    if accelerator.is_main_process:
        log.info("%s", dataset.scan.summary())
    if config.cache_latents:
        cache_dtype = "float32" if config.mixed_precision == "no" else "float16"
        cache_path = build_latent_cache(dataset, vae, train_dir / "latents", vae_id=f"{sd_ref}|{vae.config}",
                                        accelerator=accelerator, batch_size=max(1, per_device),
                                        dtype=cache_dtype, num_workers=config.num_workers, progress=report)
        source = CachedLatents(cache_path, vae.config.scaling_factor, device)
    else:
        source = OnTheFlyLatents(dataset, vae, num_workers=config.num_workers)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (vae.config.latent_channels, config.resolution // f, config.resolution // f)
    order = SampleOrder(len(dataset), config.seed, config.hflip, noise_scheduler.config.num_train_timesteps)

    # 4. F_T (optimised text features, main process) and E captured from it; or the checkpoint's weights.
    uncond = encode_prompts(parts["tokenizer"], parts["text_encoder"], [""], device=device, dtype=weight_dtype)
    ft_path = output / "text_features.safetensors"
    from safetensors.torch import load_file, save_file

    if resume_from is None:
        if accelerator.is_main_process and not _reusable_text_features(ft_path, prompt, config.text_init_steps):
            with accelerator.autocast():
                F_T, losses = optimize_text_features(
                    sd_unet, vae, parts["text_encoder"], parts["tokenizer"], noise_scheduler, source, prompt,
                    steps=config.text_init_steps, batch_size=config.text_init_batch_size, lr=config.text_init_lr,
                    device=device, num_images=config.text_init_images, seed=config.seed,
                    progress=lambda d, t, info: report("text_init", d, t, info))
            tmp = train_dir / ".text_features.tmp.safetensors"
            save_file({"F_T": F_T.detach().float().cpu().contiguous()}, str(tmp),
                      metadata={"prompt": prompt, "steps": str(config.text_init_steps)})
            (train_dir / "text_init_losses.json").write_text(json.dumps({"prompt": prompt, "losses": losses}))
            os.replace(tmp, ft_path)
        accelerator.wait_for_everyone()
        F_T = load_file(str(ft_path))["F_T"].to(device)
        # E: mean cross-attention output for F_T over noised image latents (conditional features only).
        n_cap = min(len(dataset), config.capture_images)
        cap = order.draw(range(n_cap), latent_shape)
        with torch.no_grad():
            cap_latents = source.get(cap["indices"], cap["flips"], cap["eps"]).float().cpu()
        unet = unet.to(device)
        # Capture from the float32 UNet that will be trained (its E matches its own cross-attention exactly).
        model = make_domain_model(unet, None, None, prompt, domain=config.domain, base_model=sd_ref,
                                  text_features=F_T, latents=cap_latents, scheduler=noise_scheduler, seed=config.seed)
        unet = model.unet
        start_step = 0
    else:
        from suite.nulltext import DomainModel

        unet = DomainModel.from_pretrained(resume_from).unet.to(device)
        state = json.loads((resume_from / TRAINER_STATE).read_text())
        changed = [k for k in _RESUME_KEYS if k in state["config"] and state["config"][k] != getattr(config, k)]
        if changed:
            raise ValueError(f"--resume with changed settings ({', '.join(changed)}) would not continue the same run: "
                             f"use the original values or a new --output")
        if state.get("num_images") != len(dataset):
            raise ValueError(f"the image folder changed since the checkpoint ({state.get('num_images')} -> "
                             f"{len(dataset)} usable images): restore it, or start a new run with another --output")
        start_step = int(state["step"])
    check_E(unet)
    # The text encoder is not needed any more: E holds what the domain prompt contributed.
    del parts["text_encoder"]
    parts.pop("tokenizer")
    metadata = DomainMetadata(domain=config.domain, base_model=sd_ref, prompt=prompt, training_steps=start_step,
                              extra={"resolution": config.resolution, "batch_size": config.batch_size,
                                     "lr": config.lr, "text_init_steps": config.text_init_steps,
                                     "num_images": len(dataset), "center_crop": config.center_crop})

    # 5. Trainable null-text UNet, optimizer (+ state on resume), EMA, accelerate.
    unet.train().requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = _make_optimizer(config, [p for p in unet.parameters() if p.requires_grad])
    ema = EMA(dict(unet.named_parameters()), config.ema_decay) if config.ema else None
    scaler_state = None
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=True))
        if ema is not None:
            if not (resume_from / "ema.safetensors").is_file():
                raise ValueError("--ema was added on --resume but the checkpoint has no EMA: resume without --ema")
            ema.shadow = {k: v.to(device) for k, v in load_file(str(resume_from / "ema.safetensors")).items()}
        scaler_state = state.get("scaler")
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if scaler_state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers("domain-training", config={k: v for k, v in asdict(config).items()
                                                             if isinstance(v, int | float | str | bool)})
    if accelerator.is_main_process:
        (train_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
        log.info("training %s on %d image(s): %d process(es) x %d per device x %d accumulation step(s) = batch %d, "
                 "steps %d -> %d, device %s", config.domain, len(dataset), accelerator.num_processes, per_device,
                 config.gradient_accumulation_steps, config.batch_size, start_step, config.max_steps, device)

    # 6. Training loop: global batch B = per-device x processes x accumulation, sample positions s*B + k.
    B, P, A, rank = config.batch_size, accelerator.num_processes, config.gradient_accumulation_steps, \
        accelerator.process_index
    bar = tqdm(total=config.max_steps, initial=start_step, desc=f"training {config.domain}", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    t0, seen, losses_log = time.perf_counter(), 0, []
    step = start_step
    last_loss = float("nan")

    def state_dict_for(step):
        return dict(step=step, num_images=len(dataset), images_seen=step * B, loss=last_loss,
                    config={k: getattr(config, k) for k in _RESUME_KEYS},
                    scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None)

    while step < config.max_steps:
        lr = _lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for m in range(A):
            first = (step * A + m) * P * per_device + rank * per_device
            batch = order.draw(range(first, first + per_device), latent_shape)
            latents = source.get(batch["indices"], batch["flips"], batch["eps"])
            sync = m == A - 1
            ctx = accelerator.no_sync(unet) if not sync and P > 1 else _nullcontext()
            with ctx, accelerator.autocast():
                loss = denoising_loss(unet, latents, None, noise_scheduler, noise=batch["noise"],
                                      timesteps=batch["timesteps"])
                accelerator.backward(loss / A)
            step_loss += loss.detach() / A
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.update(dict(accelerator.unwrap_model(unet).named_parameters()), step)
        last_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"the loss became {last_loss} at step {step}: lower --lr, or use bf16 instead "
                                     f"of fp16; resume from the last checkpoint with --resume")
        seen += B
        ips = seen / max(time.perf_counter() - t0, 1e-9)
        losses_log.append(last_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
        report("train", step, config.max_steps, {"loss": last_loss, "images_per_s": ips, "lr": lr})
        if step % config.log_steps == 0 or step == config.max_steps:
            accelerator.log({"loss": last_loss, "lr": lr, "images_per_s": ips}, step=step)
        if step % config.checkpoint_steps == 0 or step == config.max_steps:
            if accelerator.is_main_process:
                metadata.training_steps = step
                save_checkpoint(output, step, accelerator.unwrap_model(unet), metadata, optimizer, ema,
                                state_dict_for(step), config.checkpoints_keep)
                report("checkpoint", step, config.max_steps, {"loss": last_loss})
            accelerator.wait_for_everyone()
        if config.validation_steps and (step % config.validation_steps == 0 or step == config.max_steps):
            if accelerator.is_main_process:
                _sample_validation(config, accelerator, sd_unet, vae, parts["scheduler"], uncond, unet, ema,
                                   output, step)
            accelerator.wait_for_everyone()
    bar.close()

    # 7. Final domain model (EMA weights when EMA is on) written atomically into OUTPUT.
    if accelerator.is_main_process:
        from suite.nulltext import DomainModel

        final = accelerator.unwrap_model(unet)
        if ema is not None:
            final = copy.deepcopy(final)
            ema.copy_to(final)
        metadata.training_steps = step
        DomainModel(final.eval(), metadata).save_pretrained(output)
        (train_dir / "losses.json").write_text(json.dumps({"start_step": start_step, "losses": losses_log}))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def config_from_dict(values: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)
