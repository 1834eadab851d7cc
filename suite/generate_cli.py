"""``launch.py generate``: in-domain images (unconditional, text, ControlNet, several controls).

Imports inside :func:`main` are lazy on purpose: ``launch.py --help`` imports this module and loads no torch."""

from __future__ import annotations

import logging
from pathlib import Path

from . import cli
from .checks import MAX_IMAGES, UserError, format_weights, int_at_least

DEFAULT_BATCH = 8  # images per sampling call in a batch

HELP = "generate in-domain images (unconditional, text-guided, ControlNet-guided)"
log = logging.getLogger("suite")


def add_arguments(p) -> None:
    p.add_argument("--prompt", default="", help="control text, e.g. 'wearing glasses' ('' = unconditional in-domain)")
    p.add_argument("--output", default="out.png",
                   help="output image (.png/.jpg/.webp); with --num-images N > 1, files are NAME-0.png ... "
                        "(default: %(default)s)")
    p.add_argument("--control-image", default=None,
                   help="ControlNet conditioning image (e.g. a canny edge map; see --canny)")
    p.add_argument("--canny", action="store_true",
                   help="compute canny edges of --control-image first (needs opencv-python-headless)")
    p.add_argument("--community-model", action="append", default=[], metavar="REF",
                   help="an SD1.5 community fine-tune (folder or hub id) added as a control term with the prompt; "
                        "repeatable. Its unconditional prediction still comes from SD1.5 (rectification)")
    p.add_argument("--community-weight", type=cli.weight_arg, default=None,
                   help="weight of each --community-model term (default: auto)")
    p.add_argument("--no-rectify", action="store_true",
                   help="take the unconditional prediction from the community model (to compare; paper Sec. 4.5)")
    p.add_argument("--width", type=int_at_least(8), default=None,
                   help="image width (default: the model's native size; with --control-image, its shape with the "
                        "longer side native)")
    p.add_argument("--height", type=int_at_least(8), default=None,
                   help="image height (default: the model's native size, or the control image's shape)")
    p.add_argument("--resume", action="store_true",
                   help="complete an interrupted --num-images set or batch: images already written are kept, only the "
                        "missing ones are made, each from the noise it would have started from")
    b = p.add_argument_group("batches (one image per prompt and seed into the --output folder, with manifest.jsonl; "
                             "split between processes under accelerate launch or torchrun)")
    b.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="one prompt a line, or JSON lines {\"prompt\": ..., \"seed\": ..., \"domain_weight\": ..., "
                        "\"control_weight\": ..., \"guidance_rule\": ..., \"negative_prompt\": ...}; --output is then "
                        "a folder")
    b.add_argument("--seeds", default=None, metavar="A-B",
                   help="seeds for every prompt, e.g. 0-99 or 1,5,9-12 (with --prompts-file or --prompt; --output is "
                        "then a folder)")
    b.add_argument("--batch-size", type=int_at_least(1, MAX_IMAGES, "images in one sampling call"), default=None,
                   help="images per sampling call in a batch (--prompts-file or --seeds); fixed batches, so any number "
                        f"of processes makes the same files (default: {DEFAULT_BATCH})")
    cli.add_model_arguments(p)
    cli.add_guidance_arguments(p)


def check_flags(args) -> None:
    """Flags that would be silently ignored: one sentence each instead."""

    for name in ("prompts_file", "seeds"):
        if getattr(args, name) is not None and not str(getattr(args, name)).strip():
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} is empty: give {'a file' if name == 'prompts_file' else 'seeds such as 0-99'}, or "
                            f"drop {flag} for a single image")
    if not args.control_image and (args.canny or args.controlnet):
        raise UserError(f"{'--canny' if args.canny else '--controlnet'} acts on a control image: add --control-image "
                        f"FILE, or drop it")
    if args.seeds is not None and args.seed != 0:  # --seed 5 --seeds 0-1 made seeds 0 and 1 without a word
        raise UserError(f"--seed {args.seed} and --seeds {args.seeds} both say the seeds: give them with --seeds, or "
                        f"drop --seeds")
    if args.batch_size is not None and args.prompts_file is None and args.seeds is None:
        raise UserError("--batch-size applies to batches (--prompts-file or --seeds): drop it, or use --num-images "
                        "for several images of one prompt")
    if not args.community_model and (args.community_weight is not None or args.no_rectify):
        raise UserError(f"{'--no-rectify' if args.no_rectify else '--community-weight'} applies to community models: "
                        f"add --community-model REF, or drop it")
    from .models import check_community_model

    for ref in args.community_model or ():  # a domain model's folder failed deep inside diffusers
        check_community_model(ref)


def model_settings(args, refs: dict) -> tuple[dict, dict | None]:
    """What every image of a ``generate`` run is made with besides its prompt, seed and weights, normalised so that
    equal runs compare equal (the default steps given by number; the model's native size given by hand is recorded
    as not given; the dtype the models run in), with the models as hashes of their weights; and the ``equivalent`` values of
    :func:`suite.batch.check_same_batch` (a folder that recorded the native size by number)."""
    from . import batch as B
    from .models import native_size
    from .pipeline import DEFAULT_STEPS
    from .presets import recorded_dtype

    native = native_size(refs["sd"])
    if native and not getattr(args, "allow_large", False):
        # MAX_SIDE is SD1.5's 8x; the mini world's 64 px model took minutes a step at 4096 (64x) and invents it all
        for flag, side in (("--width", args.width), ("--height", args.height)):
            if side is not None and side > 8 * native:
                raise UserError(f"{flag} {side} is {side / native:g} times this model's {native} px: an image that "
                                f"large is mostly invented and slow to sample; give at most {8 * native}, or pass "
                                f"--allow-large")
    dtype = recorded_dtype(args.device, args.dtype)
    settings = {"--steps": DEFAULT_STEPS if args.steps is None else args.steps,
                "--width": None if args.width == native else args.width,
                "--height": None if args.height == native else args.height, "--w0": args.w0,
                "--auto-norm": args.auto_norm, "--no-rectify": bool(args.no_rectify), "--dtype": dtype,
                "models": B.model_hashes({"sd": refs["sd"], "domain": refs["domain"]})}
    dom = refs["domain_obj"]  # what the weights and rule not given become (a change of the defaults shows on resume)
    settings["defaults"] = {"domain": dom.name, "domain_weight": dom.domain_weight,
                            "control_weight": dom.control_weight, "rule": dom.rule}
    same = {"--dtype": (None, dtype),  # a record made before the dtype was recorded: not compared on it
            "defaults": (None, settings["defaults"])}  # nor before the defaults were: a warning says so
    if native:
        same.update({"--width": (None, native), "--height": (None, native)})
    return settings, same


def set_settings(args, control_size: tuple[int, int] | None = None) -> tuple[dict, dict]:
    """What each image of a ``--num-images`` set is made with (recorded in it, compared on ``--resume``):
    :func:`model_settings` and the prompt, the seed, the weights and the controls (hashes, never paths); with a
    control image (``control_size``: its ``(w, h)`` as loaded) and no size, the size its shape gives. And the values
    taken as the same (:func:`model_settings`)."""
    import hashlib

    from . import batch as B
    from .presets import model_refs

    refs = model_refs(args.preset, args.domain, args.sd_model, args.domain_model)
    settings, same = model_settings(args, refs)
    if control_size is not None and args.width is None and args.height is None:
        from .models import image_geometry
        from .pipeline import size_like

        geometry = image_geometry(refs["sd"])  # the output takes the control image's shape: 208x200 made 64x62
        if geometry:
            size = size_like(*control_size, *geometry)
            settings.update({"--width": None if size[0] == geometry[0] else size[0],
                             "--height": None if size[1] == geometry[0] else size[1]})
    settings.update({"--prompt": args.prompt, "--negative-prompt": args.negative_prompt, "--seed": args.seed,
                     "--domain": refs["domain_obj"].name, "--domain-weight": args.domain_weight,
                     "--control-weight": args.control_weight,
                     "--guidance-rule": None if args.guidance_rule is None else str(args.guidance_rule),
                     "--community-weight": args.community_weight, "--canny": bool(args.canny)})
    community = B.model_hashes({str(i): ref for i, ref in enumerate(args.community_model)})
    if community:
        settings["models"] = {**settings["models"], **{f"community{k}": v for k, v in community.items()}}
    if args.control_image:
        settings["--control-image"] = hashlib.sha256(Path(args.control_image).read_bytes()).hexdigest()[:16]
        settings["models"].update(B.model_hashes({"controlnet": refs["controlnet"]}))
    return settings, same


def main(args) -> int:
    check_flags(args)
    if args.prompts_file is not None or args.seeds is not None:
        return batch_main(args)
    from .files import remove_leftovers
    from .images import check_not_an_input, check_set_files, load_image, output_paths, save_image_atomic
    from .pipeline import DEFAULT_STEPS, Control
    from .presets import warn_prompt

    # 1. Validate what can be checked before loading models.
    cli.check_request(args)
    paths = output_paths(args.output, args.num_images)
    check_not_an_input(paths, args.output, {"--control-image": args.control_image}, "image")
    control_image = None
    if args.control_image:
        control_image = load_image(args.control_image, "control image")
        if args.canny:
            from .control import canny

            control_image = canny(control_image)

    warn_prompt(args.preset, args.prompt)
    remove_leftovers(paths)
    settings, same = set_settings(args, control_image.size if control_image is not None else None)
    check_set_files(paths, settings, args.resume, same)
    todo = [i for i, p in enumerate(paths) if not (args.resume and p.is_file())]
    if not todo:
        log.info("--resume: all %d image(s) are already there (%s ...)", len(paths), paths[0])
        return 0
    if len(todo) < len(paths):
        log.info("--resume: %d of %d image(s) already there; making the other %d", len(paths) - len(todo), len(paths),
                 len(todo))

    # 2. Load the models and build the controls.
    pipe = cli.load_pipeline(args, need_controlnet=control_image is not None)
    from . import models

    controls = [Control(prompt=args.prompt, weight=args.community_weight, name=f"community{i}",
                        unet=models.load_unet(ref, device=pipe.device, dtype=pipe.dtype, like=pipe.unet))
                for i, ref in enumerate(args.community_model)]

    # 3. Sample: diffusers' bar on a terminal, progress lines in a log.
    from contextlib import nullcontext

    from .pipeline import quiet, report_steps
    from .progress import LogProgress

    steps, stage = DEFAULT_STEPS if args.steps is None else args.steps, f"{len(todo)} image(s)"
    lines = LogProgress("generate")
    to_log = lines.active()
    lines.start(stage, steps)
    height, width = args.height, args.width
    if control_image is not None and height is None and width is None:  # the control image's shape (a photo's 4:3)
        width, height = pipe.size_like(*control_image.size)
    # Image i starts from row i of the seed's noise, so --resume makes exactly the images that are missing.
    latents = pipe.prepare_latents(len(paths), height, width, seed=args.seed)[todo]
    with quiet(pipe) if to_log else nullcontext():
        out = pipe(args.prompt or None, negative_prompt=args.negative_prompt, domain_weight=args.domain_weight,
                   control_weight=args.control_weight, control_image=control_image, controls=controls,
                   num_images_per_prompt=len(todo), num_inference_steps=steps, latents=latents,
                   height=height, width=width, w0=args.w0, auto_norm=args.auto_norm,
                   guidance_rule=args.guidance_rule,
                   rectify=not args.no_rectify,
                   callback_on_step_end=report_steps(lines.steps(stage)) if to_log else None)

    # 4. Save (atomically) and report; an interrupted set says what is there and how to complete it.
    written = [p for i, p in enumerate(paths) if i not in todo]
    try:
        for image, i in zip(out.images, todo):
            save_image_atomic(image, paths[i], settings)
            written.append(paths[i])
            log.info("wrote %s", paths[i])
    except BaseException:
        if len(paths) > 1:
            log.error("%d of %d image(s) written (%s); run the same command with --resume to make the others",
                      len(written), len(paths), ", ".join(p.name for p in sorted(written)) or "none")
        raise
    if out.weights:
        log.info("weights: %s; guidance rule: %s", format_weights(out.weights), out.guidance_rule)
    return 0


def batch_main(args) -> int:
    """``--prompts-file`` / ``--seeds``: one image per (prompt, seed) into the ``--output`` folder, split between
    processes (:mod:`suite.batch`)."""
    from pathlib import Path

    import torch

    from . import batch as B
    from .pipeline import DEFAULT_STEPS, quiet
    from .rules import check_rule_terms, format_rule, parse_rule, rule_given

    # 1. The items, checked before any model loads.
    cli.check_request(args)
    if args.num_images != 1 or args.control_image or args.community_model:
        raise UserError("a batch (--prompts-file / --seeds) takes one image per prompt and seed: drop --num-images, "
                        "--control-image and --community-model")
    if args.prompts_file and args.prompt:
        raise UserError("give --prompts-file or --prompt, not both")
    seeds = B.parse_seeds(args.seeds) if args.seeds else [args.seed]
    flag_rule = format_rule(args.guidance_rule) if args.guidance_rule else None
    if args.prompts_file:  # a line's settings, else the command's flags
        items = [it.with_defaults(args.domain_weight, args.control_weight, flag_rule)  # the negative prompt: below
                 for it in B.read_items(args.prompts_file, seeds, args.negative_prompt)]  # a line's "" clears the flag's
        for it in items:  # a rule for a term an item lacks: refused now, not after the models load
            if rule_given(it.guidance_rule):
                terms = cli.request_terms(args, prompt=it.prompt, domain_weight=it.domain_weight,
                                          control_weight=it.control_weight)
                check_rule_terms(parse_rule(it.guidance_rule), terms, f" (item {it.index}: {it.prompt!r})")
    else:
        items = [B.Item(i, args.prompt, s, args.domain_weight, args.control_weight, flag_rule, args.negative_prompt)
                 for i, s in enumerate(seeds)]
    folder = Path(args.output).expanduser().resolve()
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") or folder.is_file():
        raise UserError(f"with --prompts-file or --seeds, --output is a folder for the images, got {args.output!r}: "
                        f"give a folder name")
    state = B.process_state(cpu=args.device == "cpu")
    from .presets import process_device

    args.device = process_device(args.device, state)  # each process on its own device

    def load():
        """The models, and the sampler of one fixed batch (``group``: items sharing their guidance settings)."""
        from .presets import model_refs

        pipe = cli.load_pipeline(args)
        refs = model_refs(args.preset, args.domain, args.sd_model, args.domain_model)
        steps = DEFAULT_STEPS if args.steps is None else args.steps

        def sample(group):
            first = group[0]
            latents = torch.cat([pipe.prepare_latents(1, args.height, args.width, seed=it.seed) for it in group])
            with quiet(pipe):
                out = pipe([it.prompt for it in group] if first.prompt else None, negative_prompt=first.negative_prompt,
                           domain_weight=first.domain_weight, control_weight=first.control_weight,
                           guidance_rule=first.guidance_rule, num_images_per_prompt=1 if first.prompt else len(group),
                           num_inference_steps=steps, latents=latents, height=args.height, width=args.width,
                           w0=args.w0, auto_norm=args.auto_norm, rectify=not args.no_rectify)
            return out.images, out.weights, out.guidance_rule

        return sample, B.model_hashes({"sd": refs["sd"], "domain": refs["domain"]})

    from .presets import model_refs

    refs = model_refs(args.preset, args.domain, args.sd_model, args.domain_model)
    # what every image is made with besides its item: a resume with other values is refused, not mixed in
    settings, same = model_settings(args, refs)
    missing = B.run_batch(state, folder, items, args.batch_size or DEFAULT_BATCH, load, args.resume, settings=settings,
                          equivalent=same)
    B.end_processes(state)
    return 1 if missing else 0
