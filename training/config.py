"""Domain-training settings (no torch: ``launch.py train --help`` and the app read them without loading it).

:class:`TrainConfig` holds every setting with the paper's defaults and the ``mini`` / ``tiny`` presets;
:meth:`TrainConfig.validate` checks them in one sentence each. :data:`RESUME_KEYS` are the settings a resume
must not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# settings of TrainConfig that `train` has no flag for (Python and the app set them): named as themselves
_NO_FLAG = ("capture_images", "validation_inference_steps", "log_steps", "adam_beta1", "adam_beta2", "adam_epsilon")


def _named(setting: str) -> str:
    """A setting as a message names it: its flag (``--log-steps``), or itself where ``train`` has no flag for it."""
    return setting if setting in _NO_FLAG else "--" + setting.replace("_", "-")


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
    cache_batch_size: int = 8             # images per VAE call when caching (same batches for any process count)
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
        """The preset's defaults (``full``: the paper's; ``mini``: :meth:`mini`; ``tiny``: :meth:`tiny`) with
        ``overrides``."""
        sizes = {"mini": cls.mini, "tiny": cls.tiny}  # this package's one table of sizes by preset name
        return sizes[preset](**overrides) if preset in sizes else cls(preset=preset, **overrides)

    @classmethod
    def mini(cls, **overrides) -> TrainConfig:
        """The mini preset: fine-tune the mini world's trained base (64x64 images) on CPU (about a second a step on
        2 cores). These are the settings that trained the shipped domain models (``python -m training.miniworld``),
        except their number of steps: 800 there (its ``domain_steps``), 1,200 by default here."""
        base = dict(preset="mini", resolution=64, batch_size=32, max_steps=1200, lr=2e-4, text_init_steps=100,
                    text_init_batch_size=32, text_init_images=2000, text_init_lr=1e-2, capture_images=32,
                    checkpoint_steps=400, validation_steps=0, validation_images=4, validation_inference_steps=20,
                    log_steps=50, report_to="none", num_workers=0, hflip=0.5)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides) -> TrainConfig:
        """The tiny preset: tiny random SD1.5-architecture models, 32x32 images, CPU in seconds. Its larger
        learning rate lets a few steps move a random model measurably (it shows the flow, not quality)."""
        base = dict(preset="tiny", resolution=32, batch_size=4, max_steps=20, lr=1e-4, text_init_steps=10,
                    text_init_batch_size=4, text_init_images=64, text_init_lr=1e-2, capture_images=8,
                    checkpoint_steps=10, validation_steps=0, validation_images=2, validation_inference_steps=4,
                    log_steps=5, report_to="none", num_workers=0)
        base.update(overrides)
        return cls(**base)

    def validate(self, num_processes: int = 1) -> int:
        """Check the settings; return the per-device batch size. One clear sentence per problem."""
        from suite.checks import MAX_SEED, check_finite, check_int, check_prompt
        from suite.presets import PRESET_NAMES

        if not self.data:
            raise ValueError("no image folder given: pass --data DIR")
        self.prompt = check_prompt(self.prompt, "--prompt") or None
        self.domain = check_prompt(self.domain, "--domain")
        if not self.domain:
            raise ValueError("the domain name is empty: pass --domain NAME")
        if not self.output:
            raise ValueError("no output folder given: pass --output DIR")
        # switches are True or False (from Python center_crop="false" turned cropping on, resume="no" resumed)
        for name in ("center_crop", "cache_latents", "use_8bit_adam", "gradient_checkpointing", "ema", "resume", "cpu"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        # whole numbers, exactly (from Python a float or a string came through: max_steps=2.5 trained 3 steps,
        # log_steps=0 divided by zero and capture_images=0 failed after the cache and F_T had run)
        for name, least in (("resolution", 8), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                            ("max_steps", 1), ("lr_warmup_steps", 0), ("text_init_steps", 0),
                            ("text_init_batch_size", 1), ("text_init_images", 1 if self.text_init_steps else 0),
                            ("capture_images", 1), ("checkpoint_steps", 1), ("checkpoints_keep", 1),
                            ("validation_steps", 0), ("validation_images", 1 if self.validation_steps else 0),
                            ("validation_inference_steps", 1), ("log_steps", 1), ("cache_batch_size", 1),
                            ("num_workers", 0)):
            setattr(self, name, check_int(getattr(self, name), _named(name), least))
        self.seed = check_int(self.seed, "--seed", 0, MAX_SEED)
        check_finite(self.validation_domain_weight, "--validation-domain-weight")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= check_finite(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be at least 0 and below 1, got {getattr(self, name)}")
        for name in ("lr", "hflip", "ema_decay", "weight_decay", "max_grad_norm", "text_init_lr", "adam_epsilon"):
            setattr(self, name, check_finite(getattr(self, name), _named(name)))
        if self.adam_epsilon <= 0:
            raise ValueError(f"adam_epsilon must be a positive number, got {self.adam_epsilon}")
        checks = [
            (self.preset in PRESET_NAMES, f"--preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}"),
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
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be 0 or more, got {self.weight_decay}"),
            (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
             f"--max-grad-norm must be 0 (no clipping) or more, got {self.max_grad_norm}"),
            (math.isfinite(self.text_init_lr) and self.text_init_lr > 0,
             f"--text-init-lr must be a positive number, got {self.text_init_lr}"),
            (self.checkpoint_steps >= 1, "--checkpoint-steps must be at least 1"),
            (self.checkpoints_keep >= 1, "--checkpoints-keep must be at least 1"),
            (self.text_init_steps >= 0 and self.text_init_batch_size >= 1, "--text-init-steps must be >= 0"),
            (self.small_images in ("upscale", "skip"), "--small-images must be upscale or skip"),
            (self.cache_batch_size >= 1, "--cache-batch-size must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.check_optional_packages()
        per = self.batch_size // (num_processes * self.gradient_accumulation_steps)
        if per * num_processes * self.gradient_accumulation_steps != self.batch_size:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by {num_processes} process(es) x "
                f"{self.gradient_accumulation_steps} accumulation step(s): choose a batch size that is a multiple "
                f"of {num_processes * self.gradient_accumulation_steps}"
            )
        return per

    def check_optional_packages(self) -> None:
        """The packages the chosen options need, before any model loads or image is cached (they were found missing
        only after the latent cache and the text features were made)."""
        from accelerate.utils import is_bnb_available, is_tensorboard_available

        if self.use_8bit_adam and not is_bnb_available():
            raise ValueError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes, or drop the flag")
        if self.report_to == "tensorboard" and not is_tensorboard_available():
            from suite.extras import install_command

            raise ValueError(f"--report-to tensorboard needs tensorboard, of the train extra: "
                             f"{install_command('train')}, or pass --report-to none")

    def resolved_sd_model(self) -> str:
        """``--sd-model``, else the preset's SD1.5 (the mini world's checked against its manifest)."""
        from suite.presets import sd_ref

        return self.sd_model or sd_ref(self.preset)

    def resolved_prompt(self) -> str:
        if self.prompt:
            return self.prompt
        from suite.domains import domain_prompt

        return domain_prompt(self.domain)


# Settings that must not change between a checkpoint and its resume (they change the samples or the model).
RESUME_KEYS = ("resolution", "center_crop", "hflip", "batch_size", "seed", "domain", "ema", "ema_decay", "preset",
               "mixed_precision",
               "sd_model", "prompt",
               # the optimiser's and the data's: the optimiser state of a checkpoint brought its weight decay back
               # whatever --weight-decay said (and train_config.json recorded the new value), a forgotten --lr or
               # --lr-warmup-steps changed the schedule without a word, and another --small-images was blamed on
               # the image folder ("restore it")
               "lr", "lr_warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon",
               "use_8bit_adam", "small_images")
