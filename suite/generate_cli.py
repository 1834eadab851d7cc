"""``launch.py generate``: in-domain images (unconditional, text, ControlNet, several controls)."""

from __future__ import annotations

import logging

from . import cli
from .checks import int_at_least

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
    p.add_argument("--width", type=int_at_least(8), default=None, help="image width (default: the model's native size)")
    p.add_argument("--height", type=int_at_least(8), default=None,
                   help="image height (default: the model's native size)")
    cli.add_model_arguments(p)
    cli.add_guidance_arguments(p)


def main(args) -> int:
    from .files import remove_leftovers
    from .images import load_image, output_paths, save_image_atomic
    from .pipeline import DEFAULT_STEPS, Control
    from .presets import warn_prompt

    # 1. Validate what can be checked before loading models.
    cli.check_request(args)
    paths = output_paths(args.output, args.num_images)
    control_image = None
    if args.control_image:
        control_image = load_image(args.control_image, "control image")
        if args.canny:
            from .control import canny

            control_image = canny(control_image)

    warn_prompt(args.preset, args.prompt)
    remove_leftovers(paths)

    # 2. Load the models and build the controls.
    pipe = cli.load_pipeline(args, need_controlnet=control_image is not None)
    from . import models

    controls = [Control(prompt=args.prompt, weight=args.community_weight, name=f"community{i}",
                        unet=models.load_unet(ref, device=pipe.device, dtype=pipe.dtype))
                for i, ref in enumerate(args.community_model)]

    # 3. Sample.
    domain_weight, control_weight = cli.guidance_weights(args, pipe.domain)
    out = pipe(args.prompt or None, negative_prompt=args.negative_prompt, domain_weight=domain_weight,
               control_weight=control_weight, control_image=control_image, controls=controls,
               num_images_per_prompt=args.num_images, num_inference_steps=DEFAULT_STEPS if args.steps is None else args.steps, seed=args.seed,
               height=args.height, width=args.width, w0=args.w0, auto_norm=args.auto_norm,
               rectify=not args.no_rectify)

    # 4. Save (atomically) and report.
    for image, path in zip(out.images, paths):
        save_image_atomic(image, path)
        log.info("wrote %s", path)
    if out.weights:
        log.info("weights: %s", ", ".join(f"{k}={_fmt(v)}" for k, v in out.weights.items()))
    return 0


def _fmt(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return f"{v:.3g}"
