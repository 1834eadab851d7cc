"""``launch.py eval``: methods side by side against a folder of real domain images (:mod:`training.evaluate`).

Heavy libraries are imported in :func:`main` only, so ``launch.py --help`` stays fast."""

from __future__ import annotations

import argparse
import logging

HELP = ("measure a domain model as the paper's Table 1 does: Fréchet distance and KID to real domain images, text "
        "alignment, methods side by side")
log = logging.getLogger("suite")

DEFAULT_METHODS = ("base", "ours")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from suite.checks import MAX_IMAGES, int_at_least, seed_arg
    from suite.cli import add_model_arguments

    g = p.add_argument_group("what to compare")
    g.add_argument("--method", action="append", default=None, metavar="[LABEL=]KIND[;key=value...]",
                   help="a row of the table, repeatable: 'base' (SD alone), 'ours' (SD + the domain model at the "
                        "recommended weights and rule), 'ours-2=ours;domain_weight=2;guidance_rule=paper', "
                        "'ft=model:FOLDER;caption=a photo of porcelain;control_weight=5' (an SD1.5 fine-tune alone; its "
                        "unconditional images are prompted with its caption) (default: base and ours)")
    g.add_argument("--real", default=None, metavar="FOLDER",
                   help="real images of the domain (recursive; broken files are skipped and counted) (default on "
                        "--preset mini: 500 held-out renders of its porcelain or face domain, written to "
                        "OUTPUT/real-mini or OUTPUT/real-mini-face; a domain of your own needs --real)")
    g.add_argument("--num-real", type=int_at_least(3), default=None, metavar="N",
                   help="use the first N real images in name order (default: all)")
    g.add_argument("--output", default="eval", help="output folder: table.md, table.csv, results.json, images/ "
                                                     "(default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="complete an interrupted evaluation in --output (finished images are kept)")
    s = p.add_argument_group("samples")
    s.add_argument("--num-images", type=int_at_least(3), default=None, metavar="N",
                   help="unconditional images per method for FD and KID (default: 200 on mini and tiny, 2000 otherwise; "
                        "the paper's FID uses 50,000)")
    s.add_argument("--seed", type=seed_arg, default=0, help="the first unconditional image's seed (image i: seed + i) (default: %(default)s)")
    s.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="prompts for text alignment, one a line (or JSON lines with prompt and seed): one image per "
                        "prompt and --seeds seed per method")
    s.add_argument("--seeds", default=None, metavar="A-B", help="seeds of each prompt (default: 0-3)")
    s.add_argument("--batch-size", type=int_at_least(1, MAX_IMAGES, "images in one sampling call"), default=8, help="images per sampling call (default: 8)")
    s.add_argument("--steps", type=int_at_least(1), default=None, help="sampling steps (default: 25)")
    f = p.add_argument_group("features")
    f.add_argument("--features", default=None, metavar="NET",
                   help="feature network of FD and KID: 'judge' (the mini world's judge, offline), 'dinov2' "
                        "(facebook/dinov2-base), 'clip' (openai/clip-vit-large-patch14), or a DINOv2 / CLIP folder or "
                        "hub id (default: judge on mini and tiny, dinov2 otherwise)")
    f.add_argument("--clip", default=None, metavar="MODEL",
                   help="CLIP model of the CLIP score on the prompts file: 'clip' or a folder / hub id; 'none' to skip "
                        "(default: none on mini and tiny, where the judge reads the prompts' shapes and colours; clip "
                        "otherwise)")
    add_model_arguments(p, controlnet=False)


def config_from_args(args):
    from suite import batch as B
    from suite.checks import MAX_STEPS, UserError, check_count
    from suite.presets import get_preset

    from .evaluate import EvalConfig, parse_method

    offline = get_preset(args.preset).offline
    if args.seeds and not args.prompts_file:
        raise UserError("--seeds sets the seeds of the prompts file's prompts: add --prompts-file (the unconditional "
                        "images take --seed and --num-images)")
    if args.clip is not None and str(args.clip).lower() != "none" and not args.prompts_file:
        raise UserError("--clip scores the images of a prompts file against their prompts: add --prompts-file, or "
                        "drop --clip (the unconditional images have no prompt to score)")
    if args.steps is not None:
        check_count(args.steps, "--steps", MAX_STEPS)
    if args.num_images is not None and args.num_images > B.MAX_ITEMS:
        raise UserError(f"--num-images {args.num_images} is more than {B.MAX_ITEMS:,}: split the evaluation")
    from suite.checks import MAX_SEED

    num_images = args.num_images or (200 if offline else 2000)
    if args.seed + num_images - 1 > MAX_SEED:
        raise UserError(f"--seed {args.seed} with {num_images} images runs past the largest seed ({MAX_SEED}): give "
                        f"a smaller --seed")
    clip = args.clip if args.clip is not None else (None if offline else "clip")
    return EvalConfig(
        output=args.output, methods=[parse_method(m) for m in (args.method or DEFAULT_METHODS)], real=args.real,
        num_real=args.num_real, features=args.features or ("judge" if offline else "dinov2"),
        clip=None if str(clip).lower() == "none" else clip,
        num_images=num_images, seed=args.seed, prompts_file=args.prompts_file,
        seeds=B.parse_seeds(args.seeds or "0-3"), batch_size=args.batch_size, steps=args.steps, resume=args.resume,
        preset=args.preset, domain=args.domain, sd_model=args.sd_model, domain_model=args.domain_model,
        device=args.device, dtype=args.dtype)


def main(args) -> int:
    from .evaluate import evaluate

    evaluate(config_from_args(args))
    return 0
