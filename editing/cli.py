"""``launch.py edit``: SDEdit a photo with in-domain multi-guidance (face photos: detect, align, edit, paste back).
Imports inside :func:`main` are lazy on purpose: ``launch.py --help`` imports this module and loads no torch.

Example::

    python launch.py edit --domain face --image photo.jpg --prompt "wearing glasses" --strength 0.6 \\
        --output edited.png
"""

from __future__ import annotations

import logging

from suite import cli
from suite.checks import UserError, check_range, finite_float, format_weights
from suite.domains import FRAMINGS
from suite.extras import require

HELP = "edit a photo with SDEdit and in-domain guidance (face photos: detect, align, edit the face, paste back)"
log = logging.getLogger("editing")


def add_arguments(p) -> None:
    p.add_argument("--image", required=True, help="the photo to edit (JPEG/PNG/WebP, any mode; EXIF orientation applied)")
    p.add_argument("--prompt", default="", help="control text, e.g. 'wearing glasses' (default: '' = domain guidance only)")
    p.add_argument("--strength", type=finite_float, default=0.6,
                   help="SDEdit strength in [0, 1]: 0 keeps the photo, 1 ignores it (default: %(default)s)")
    p.add_argument("--output", default="edited.png",
                   help="output image (.png/.jpg/.webp), same size and orientation as the input; with --num-images "
                        "N > 1, files are NAME-0.png ... (default: %(default)s)")
    p.add_argument("--mask", default=None,
                   help="mask image, the photo's size or a scaled copy of it (same aspect ratio): white = may change, "
                        "black = kept exactly, gray blends; a mask with any transparency is read by its alpha alone "
                        "(opaque = may change, transparent = kept), so paint it on a transparent layer or flatten it "
                        "(default: the feathered face crop)")
    p.add_argument("--mask-blend", action="store_true",
                   help="with --mask, hold the kept part to the photo during the denoising too (blended latent "
                        "diffusion: no seam at the mask's edge, but on the mini faces the judge read the asked-for hat "
                        "less often; default: the whole crop is redrawn and only the mask's part pasted)")
    p.add_argument("--all-faces", action="store_true", help="edit every face found (default: only the largest)")
    p.add_argument("--landmarks", default=None, metavar="JSON",
                   help="the faces' landmarks, instead of detecting them: {\"faces\": [{\"eye_left\": [x, y], "
                        "\"eye_right\": [x, y], \"mouth_left\": [x, y], \"mouth_right\": [x, y]}]} in photo pixels, "
                        "or dlib's 68 points per face; e.g. another detector's, or the exact ones the mini world "
                        "writes beside its face photos (python -m bench.miniworld.face_photos, run in the suite's folder)")
    p.add_argument("--whole-image", action="store_true",
                   help="edit the whole photo scaled to the model's resolution instead of the face crop "
                        "(for photos without a detectable face; the same as --framing whole)")
    p.add_argument("--framing", choices=FRAMINGS, default=None,
                   help="how the domain's photos are framed, which the edit reproduces: 'face' (FFHQ's alignment, "
                        "from dlib's 68 landmarks when dlib is installed), 'animal' (a cat's face), 'whole' "
                        "(default: the domain's: face for face, animal for animal, whole for the others)")
    p.add_argument("--max-megapixels", type=finite_float, default=120.0,
                   help="refuse larger inputs before decoding them (decompression-bomb guard) (default: %(default)s)")
    p.add_argument("--feather", type=finite_float, default=0.08,
                   help="width of the soft edge of the pasted face crop, as a fraction of the crop (default: %(default)s)")
    cli.add_model_arguments(p, controlnet=False)
    cli.add_guidance_arguments(p)


def main(args) -> int:
    from suite.files import remove_leftovers
    from suite.images import (
        check_max_megapixels,
        check_not_an_input,
        check_output_size,
        check_set_files,
        open_image,
        oriented_size,
        output_paths,
        save_image_atomic,
    )

    from .edit import edit_photo
    from .images import load_mask

    # 1. Validate and read the inputs before loading any model.
    require("edit", "cv2")
    cli.check_request(args)
    check_range(args.strength, "--strength", 0.0, 1.0, "0 keeps the photo, 1 ignores it")
    from suite.pipeline import DEFAULT_STEPS

    from .edit import check_runs_a_step

    check_runs_a_step(DEFAULT_STEPS if args.steps is None else args.steps, args.strength)
    check_range(args.feather, "--feather", 0.0, 0.5)
    check_max_megapixels(args.max_megapixels)
    if args.mask_blend and not args.mask:
        raise UserError("--mask-blend holds the part a mask keeps: give the --mask too")
    paths = output_paths(args.output, args.num_images)
    check_not_an_input(paths, args.output, {"--image": args.image, "--mask": args.mask}, "edit")
    remove_leftovers(paths)
    settings = {"edit": True, "--prompt": args.prompt, "--strength": args.strength, "--seed": args.seed}  # no paths
    check_set_files(paths, settings, resume=False)  # NAME-i files of a set: never a user's own
    max_pixels = int(args.max_megapixels * 1e6)
    image = open_image(args.image, "image", max_pixels)
    size = oriented_size(image)
    check_output_size(args.output, *size)  # the same size as the photo
    mask = load_mask(args.mask, size, max_pixels) if args.mask else None
    detector = None
    if args.whole_image and args.framing not in (None, "whole"):  # before the models load
        raise UserError(f"--whole-image edits the whole photo, but --framing is {args.framing!r}: drop one of the two")
    if args.landmarks:
        from .faces import read_landmarks

        if args.whole_image or args.framing not in (None, "face"):
            raise UserError("--landmarks frame a face (FFHQ's alignment): drop --whole-image / --framing, or drop "
                            "--landmarks")
        detector = read_landmarks(args.landmarks)
        detector.check_size(*size)  # a file for another photo is refused before the models load

    # 2. Load the models. Faces are detected for the face and animal domains; other domains edit the whole photo.
    from suite.presets import warn_prompt

    # the mini world's small vocabulary, as generate and 3d warn; after the checks, so that a bad flag is said alone
    warn_prompt(args.preset, args.prompt)
    pipe = cli.load_pipeline(args)

    # 3. Edit (detect and align, SDEdit through the pipeline, paste back): a bar on a terminal, progress lines in a
    #    log (a bar's carriage returns filled a log with one line of them).
    from PIL import Image
    from tqdm.auto import tqdm

    from suite.progress import LogProgress

    lines = LogProgress("edit")
    bar = None if lines.active() else tqdm(desc="editing", leave=False)

    def progress(stage, done, total, info):
        if stage != "denoise":
            return
        crop = f"crop {info['crop'] + 1} of {info['crops']}"
        if bar is None:
            lines(crop, done, total)
            return
        bar.total = total
        bar.set_description(f"editing {crop}")
        bar.n = done
        bar.refresh()

    mask_image = Image.fromarray((mask * 255).round().astype("uint8")) if mask is not None else None
    try:
        result = edit_photo(pipe, image, prompt=args.prompt, strength=args.strength, domain_weight=args.domain_weight,
                            control_weight=args.control_weight, mask=mask_image, all_faces=args.all_faces,
                            framing=args.framing, whole_image=args.whole_image, num_images=args.num_images,
                            seed=args.seed, steps=args.steps, progress=progress, negative_prompt=args.negative_prompt, w0=args.w0,
                            auto_norm=args.auto_norm, feather=args.feather, max_pixels=max_pixels,
                            guidance_rule=args.guidance_rule, detector=detector, mask_blend=args.mask_blend)
    finally:
        if bar is not None:
            bar.close()

    # 4. Save (atomically) and report.
    for im, path in zip(result.images, paths):
        save_image_atomic(im, path, settings)  # a transparent photo is laid on white for JPEG
        log.info("wrote %s", path)
    for box in result.face_boxes:
        log.info("edited face at x=%d..%d, y=%d..%d", *(round(v) for v in (box[0], box[2], box[1], box[3])))
    log.info("time: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    for i, weights in enumerate(result.weights):  # one sampling run per crop, as `generate` reports its one
        if weights:
            log.info("weights%s: %s", f" (crop {i + 1})" if len(result.weights) > 1 else "", format_weights(weights))
    if result.guidance_rule:
        log.info("guidance rule: %s", result.guidance_rule)
    return 0

