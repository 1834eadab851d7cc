"""``launch.py train``: make a null-text domain model from a folder of unlabeled images (paper Sec. 3.3).

Runs on one GPU, on CPU, or under ``accelerate launch`` (several GPUs or nodes: the batch size is the total
per optimizer step, split over processes and accumulation steps). Heavy libraries are imported in
:func:`main` only, so ``launch.py --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

HELP = "train a null-text domain model on a folder of images (F_T initialisation, E capture, fine-tuning)"
log = logging.getLogger("training")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from suite.checks import MAX_IMAGES, finite_float, int_at_least, seed_arg
    from suite.cli import add_domain_argument, add_preset_argument, add_sd_model_argument

    from .config import TrainConfig

    d, m, t = TrainConfig(), TrainConfig.mini(), TrainConfig.tiny()

    def both(name):  # "default: X; --preset mini: Y; --preset tiny: Z"
        a = getattr(d, name)
        return f"default: {a}" + "".join(f"; --preset {n}: {getattr(c, name)}" for n, c in (("mini", m), ("tiny", t))
                                         if getattr(c, name) != a)

    g = p.add_argument_group("what to train")
    add_domain_argument(g, default="face",
                        help="domain name: a preset (face, animal, porcelain) or your own; names the model and gives the "
                             "prompt 'a photo of <domain>' (default: %(default)s)")
    g.add_argument("--data", required=True, help="folder of domain images (recursive; .jpg/.png/.webp; any mode)")
    g.add_argument("--output", required=True,
                   help="output folder: becomes the domain model (use it with generate --domain-model OUTPUT); "
                        "training state goes to OUTPUT/training/")
    add_preset_argument(g, help="'full': SD1.5 at 512 (paper settings); 'mini': fine-tune the mini world's trained base at "
                        "64x64 on CPU in minutes (the settings that trained its shipped porcelain model); 'tiny': tiny "
                        "random SD1.5-architecture models built offline, trains on CPU in seconds (shows the flow, "
                        "not quality) (default: %(default)s)")
    add_sd_model_argument(g, extra="; --preset tiny: the tiny SD; --preset mini: the mini world's")
    g.add_argument("--prompt", default=None,
                   help="prompt that initialises F_T (default: the domain's, 'a photo of <domain>')")
    g.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in OUTPUT/training/checkpoints (same optimizer, EMA "
                        "and data order)")

    g = p.add_argument_group("data")
    g.add_argument("--resolution", type=int_at_least(1), default=None, help=f"training resolution ({both('resolution')})")
    g.add_argument("--center-crop", action="store_true",
                   help="resize the short side and center-crop (default: resize to a square without crop, as the paper)")
    g.add_argument("--hflip", type=finite_float, default=None, help=f"horizontal-flip probability ({both('hflip')})")
    g.add_argument("--small-images", choices=["upscale", "skip"], default="upscale",
                   help="images smaller than the resolution: upscale them with a warning, or skip them "
                        "(default: %(default)s)")
    g.add_argument("--no-latent-cache", action="store_true",
                   help="run the VAE every step instead of once per image (default: cache latents)")
    g.add_argument("--cache-batch-size", type=int_at_least(1), default=None,
                   help="images per VAE call while caching latents; lower it if the VAE runs out of memory "
                        "(default: 8; the cache is the same for any number of processes)")
    g.add_argument("--num-workers", type=int_at_least(0), default=None, help=f"image-decoding threads ({both('num_workers')})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int_at_least(1), default=None, help=f"optimizer steps ({both('max_steps')})")
    g.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help=f"total batch per optimizer step = per-device x processes x accumulation ({both('batch_size')})")
    g.add_argument("--gradient-accumulation-steps", type=int_at_least(1), default=1,
                   help="accumulation steps per optimizer step (default: %(default)s)")
    g.add_argument("--lr", type=finite_float, default=None, help=f"AdamW learning rate, constant ({both('lr')})")
    g.add_argument("--lr-warmup-steps", type=int_at_least(0), default=0, help="linear warmup steps (default: %(default)s)")
    g.add_argument("--weight-decay", type=finite_float, default=1e-2, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--use-8bit-adam", action="store_true", help="8-bit AdamW from bitsandbytes (must be installed)")
    g.add_argument("--max-grad-norm", type=finite_float, default=1.0,
                   help="gradient-norm clipping, 0 = off (default: %(default)s)")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                   help="mixed precision: float16 or bfloat16 autocast through accelerate (fp16 needs a GPU and is refused on "
                        "a CPU, where accelerate does not autocast it; bf16 works on both; default: %(default)s)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights and save it as the model")
    g.add_argument("--ema-decay", type=finite_float, default=0.9999, help="EMA decay (default: %(default)s)")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of data order, noise and timesteps (default: %(default)s)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")

    g = p.add_argument_group("text-feature initialisation (F_T) and E")
    g.add_argument("--text-init-steps", type=int_at_least(0), default=None,
                   help=f"F_T optimisation steps, 0 = use the prompt's features ({both('text_init_steps')})")
    g.add_argument("--text-init-lr", type=finite_float, default=None, help=f"F_T learning rate ({both('text_init_lr')})")
    g.add_argument("--text-init-batch-size", type=int_at_least(1), default=None,
                   help=f"F_T batch ({both('text_init_batch_size')})")
    g.add_argument("--text-init-images", type=int_at_least(1), default=None,
                   help=f"images used for F_T ({both('text_init_images')})")

    g = p.add_argument_group("checkpoints, validation, logging")
    g.add_argument("--checkpoint-steps", type=int_at_least(1), default=None,
                   help=f"checkpoint every N steps ({both('checkpoint_steps')})")
    g.add_argument("--checkpoints-keep", type=int_at_least(1), default=2, help="checkpoints kept (default: %(default)s)")
    g.add_argument("--validation-steps", type=int_at_least(0), default=None,
                   help=f"validation samples every N steps, 0 = off ({both('validation_steps')})")
    g.add_argument("--validation-images", type=int_at_least(1, MAX_IMAGES, "images in one sampling call"), default=None, help=f"({both('validation_images')})")
    g.add_argument("--validation-domain-weight", type=finite_float, default=3.0,
                   help="w_d of the validation samples, (1 - w_d) eps_sd + w_d eps_d (default: %(default)s)")
    g.add_argument("--report-to", choices=["tensorboard", "none"], default=None,
                   help=f"logging backend; logs in OUTPUT/training/logs ({both('report_to')})")



def config_from_args(args):
    """The :class:`TrainConfig`: the preset's defaults, overridden by every flag given."""
    from .config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    given["cache_latents"] = not args.no_latent_cache
    given.pop("preset", None)
    return TrainConfig.for_preset(args.preset, **given)


def main(args) -> int:
    from suite.presets import DEFAULT_PRESET

    from .train import train_domain

    # 1. Settings from the preset and the flags (checked inside train_domain, one sentence per problem).
    config = config_from_args(args)
    # 2. Train; the output folder is the domain model.
    try:
        out = train_domain(config)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say how to go on from the last checkpoint
        checkpoints = Path(config.output) / "training" / "checkpoints"
        if os.environ.get("RANK", "0") == "0" and any(checkpoints.glob("step-*")):
            print(f"training stopped; continue it from its last checkpoint with `python launch.py train --resume "
                  f"--output {shlex.quote(str(config.output))}` and the same other flags", file=sys.stderr)
        raise
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch, the main process reports
        return 0
    print(f"domain model written to {out}")
    print(f"use it: python launch.py generate --domain-model {shlex.quote(str(out))}"  # pasted into a shell as is
          + (f" --preset {config.preset}" if config.preset != DEFAULT_PRESET else "")
          + f" --domain {shlex.quote(config.domain)}")
    return 0
