"""``launch.py 3d``: prompt -> in-domain image -> Zero-1-to-3 NeRF -> domain SDS refinement -> GLB/OBJ/PLY.

Imports nothing heavy at module level (``launch.py --help`` stays fast).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import MAX_FRAMES, MAX_MESH_RESOLUTION, MAX_SDS_STEPS, MAX_SMOOTH

DEFAULT_DOMAIN = "porcelain"  # the 3D flow's domain whatever the preset, unless --domain or a --domain-model says
HELP = "text-to-3D: in-domain image -> Zero-1-to-3 NeRF -> SDS refinement with the domain model -> mesh"
log = logging.getLogger("generators3d")


def image_weight_arg(text: str):
    """``--image-domain-weight``: a finite number, or ``recommended`` (the domain's recommended weights)."""
    from suite.checks import finite_float

    from .config import RECOMMENDED, is_recommended

    return RECOMMENDED if is_recommended(text) else finite_float(text)


def add_arguments(p) -> None:
    from suite.checks import MAX_STEPS, finite_float, int_at_least, seed_arg
    from suite.cli import weight_arg
    from suite.rules import rule_arg

    from .config import GEOMETRIES, MAX_TEXTURE, MIN_TEXTURE, PRESET_SIZES, PREVIEWS, REF_DEPTH_WEIGHT, SIZE_LIMITS

    p.add_argument("--prompt", default="", help="what to make, e.g. 'a vase with dragons' (stage 1 adds "
                                                "', plain white background')")
    p.add_argument("--output", default="outputs/3d", help="output folder (default: %(default)s)")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="a batch: one prompt a line (or JSON lines with prompt, seed, domain_weight, control_weight, "
                        "guidance_rule); each gets its own folder DIR/<index>-s<seed> in --output and "
                        "DIR/manifest.jsonl lists them; under accelerate launch or torchrun the processes share the "
                        "prompts; --resume completes the unfinished ones")
    p.add_argument("--image", default=None, help="your own image of one object (skips stage 1)")
    p.add_argument("--mask", default=None, help="mask for --image (white or opaque = object; default: a cut-out's "
                                                "transparency, else found automatically on a plain background)")
    p.add_argument("--elevation", type=finite_float, default=None, metavar="DEGREES",
                   help="how far above the object the --image was taken (degrees; default: the preset's reference "
                        "view, 5; mini: 10)")
    p.add_argument("--mask-method", choices=["auto", "center"], default=None,
                   help="foreground mask of the stage-1 image: 'auto' (plain background, Otsu) or 'center' "
                        "(centred disc) (default: auto; center with --preset tiny)")
    p.add_argument("--zero123-model", default=None,
                   help="Zero-1-to-3 diffusers folder or hub id (default: $INDOMAIN_ZERO123_MODEL or "
                        "ashawkey/zero123-xl-diffusers; the tiny preset builds a random one)")
    g = p.add_argument_group("stages")
    g.add_argument("--image-steps", type=int_at_least(1), default=25, help="stage 1 sampling steps (default: %(default)s)")
    mini_wd = dict(PRESET_SIZES["mini"].image_domain_weights)["porcelain"]

    def by_preset(get) -> str:  # "600; mini: 100; tiny: 40": the presets' own values, not copies of them
        from suite.presets import DEFAULT_PRESET

        values = {name: get(sizes) for name, sizes in PRESET_SIZES.items()}
        default = values.pop(DEFAULT_PRESET)
        return "; ".join([str(default), *(f"{name}: {v}" for name, v in values.items())])

    g.add_argument("--image-domain-weight", type=image_weight_arg, default=None, metavar="W_D",
                   help=f"w_d of stage 1's in-domain image, or 'recommended' (the domain's recommended weights) "
                        f"(default: recommended; mini porcelain: {mini_wd:g}). The image decides the object's look: on "
                        f"the mini world {mini_wd:g} gives it the domain's colours at little cost to the prompt's "
                        f"shape, 1.5 more at more cost (boxes first), 'recommended' (there 1) the image drawn before "
                        f"2026-12-05 (docs/3d-measurements.md)")
    g.add_argument("--zero123-steps", type=int_at_least(0), default=None,
                   help=f"stage 2 SDS steps with Zero-1-to-3 (default: {by_preset(lambda p: p.zero123().steps)})")
    g.add_argument("--refine-steps", type=int_at_least(0), default=None,
                   help=f"stage 3 SDS steps with the domain multi-guidance (default: {by_preset(lambda p: p.refine().steps)}; "
                        "0 skips it)")
    g.add_argument("--refine-zero123-weight", type=finite_float, default=None,
                   help="weight of an extra Zero-1-to-3 SDS loss in stage 3, as Magic123 (default: 0)")
    g.add_argument("--depth-smooth", type=finite_float, default=None, metavar="WEIGHT",
                   help="depth-smoothness weight in stage 2: penalises the curvature of the rendered depth on its random "
                        "views (bumps, not planes or edges), for smoother surfaces and truer normals; 0 = off "
                        "(default: 0; mini: 10000)")
    g.add_argument("--shading", action="store_true",
                   help="stage 2 renders its views and the whole reference view lit as the mini world lights its "
                        "objects (a key light fixed to the camera; normals from the rendered depth), so that the shape "
                        "has to explain the shading; experimental, off by default (mini world, density field: boxes' "
                        "Chamfer 12-15%% lower, the bowl still filled; docs/3d-measurements.md)")
    g.add_argument("--geometry", choices=GEOMETRIES, default=None,
                   help="what the NeRF learns: density (a density field, as threestudio's implicit-volume) or sdf (a "
                        "signed distance turned into density by VolSDF's rule, with an eikonal term: a surface of its "
                        "own; mini world: docs/3d-measurements.md, 'SDF geometry') (default: the preset's)")
    g.add_argument("--depth", default=None, metavar="auto|off|FILE",
                   help="the reference view's depth for stage 2 (Magic123's relative depth loss: 1 - Pearson "
                        "correlation with the rendered depth on the object): 'auto' estimates it with --depth-model, "
                        "FILE is a depth image of your --image (bright = near, as Depth Anything and MiDaS save it: invert a "
                        "metric depth map first; same size), "
                        "'off' uses none (default: off; mini: auto). The run writes what it used to reference-depth.png")
    g.add_argument("--depth-model", default=None,
                   help="transformers depth estimator (folder or hub id) for --depth auto and --view-depth-weight "
                        "(default: $INDOMAIN_DEPTH_MODEL or depth-anything/Depth-Anything-V2-Small-hf; mini: the mini world's)")
    g.add_argument("--depth-weight", type=finite_float, default=None, metavar="WEIGHT",
                   help=f"weight of the reference-depth loss in stage 2 (default: {REF_DEPTH_WEIGHT:g}; 0 = off)")
    g.add_argument("--view-depth-weight", type=finite_float, default=None, metavar="WEIGHT",
                   help="weight of a depth loss on stage 2's random views: each view's rendered depth against "
                        "--depth-model's reading of that render, so that the shape follows what its colours show "
                        "(a bowl's painted inside reads as a hollow); needs --depth auto or FILE (--depth-weight 0 "
                        "for the views' loss without the reference's); experimental, off by "
                        "default (mini world at 10: the bowl's cavity a little more open, the other shapes "
                        "unchanged within what three seeds resolve; docs/3d-measurements.md)")
    g.add_argument("--zero123-guidance", type=finite_float, default=None,
                   help="Zero-1-to-3 classifier-free guidance weight, in stage 2, stage 3's Zero-1-to-3 term and "
                        "the export's side views (default: 3, threestudio's)")
    g.add_argument("--domain-weight", type=weight_arg, default=None,
                   help="w_d in stage 3, a number or 'auto' (default: the domain preset's, else auto)")
    g.add_argument("--control-weight", type=weight_arg, default=None,
                   help="w_c in stage 3, a number or 'auto' (default: the domain preset's, else auto)")
    g.add_argument("--guidance-rule", type=rule_arg, default=None, metavar="RULE",
                   help="the guidance rule in stage 3 (suite.rules), e.g. 'domain=0-0.7, control=0.5-1', or 'paper' "
                        "(default: the domain preset's, where it fits stage 3's timestep range; none with 'auto' weights)")
    g.add_argument("--seed", type=seed_arg, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--allow-large", action="store_true",
                   help=f"lift the limits on the step counts ({MAX_STEPS} image steps, {MAX_SDS_STEPS} SDS steps per "
                        f"stage), --mesh-resolution ({MAX_MESH_RESOLUTION}), --preview-frames ({MAX_FRAMES}), "
                        f"--mesh-smooth ({MAX_SMOOTH}), --texture-size ({SIZE_LIMITS['export.texture_size'][0]}, up to "
                        f"{MAX_TEXTURE}) and a --config file's sizes")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output: finished stages are loaded, not run again")
    g.add_argument("--config", default=None,
                   help="repeat a run from its config.json: every setting comes from the file; only --output, "
                        "--resume, --device and --dtype apply on top (another flag is refused)")
    e = p.add_argument_group("export")
    e.add_argument("--export-only", default=None, metavar="CHECKPOINT",
                   help="turn a stage checkpoint (.safetensors) into meshes, no training")
    e.add_argument("--formats", default="glb,obj,ply",
                   help="mesh formats, comma-separated among glb, obj, ply (default: %(default)s)")
    e.add_argument("--mesh-resolution", type=int_at_least(16), default=None,
                   help=f"marching-cubes grid size, 16 to {MAX_MESH_RESOLUTION} (default: "
                        f"{by_preset(lambda p: p.export().resolution)})")
    e.add_argument("--threshold", type=finite_float, default=None,
                   help="density level of the surface (default: automatic, from the rendered opacity)")
    e.add_argument("--no-texture", action="store_true",
                   help="no UV texture: the GLB and OBJ carry vertex colours only")
    e.add_argument("--texture-size", type=int, default=None, metavar="PIXELS",
                   help=f"side of the baked texture of model.glb and model.obj, {MIN_TEXTURE} to "
                        f"{SIZE_LIMITS['export.texture_size'][0]} ({MAX_TEXTURE} with --allow-large) (default: "
                        "1024; mini: 256; tiny: 128)")
    e.add_argument("--no-project-reference", action="store_true",
                   help="colour the mesh from the NeRF alone; by default the reference image (stage 1's, or yours) is "
                        "projected onto the faces it sees, which keeps its detail (stripes, dots, print) on that side")
    e.add_argument("--side-views", type=int, default=None, metavar="N",
                   help="Zero-1-to-3 views of the sides the reference does not see, drawn over the mesh's own renders "
                        "(SDEdit) and projected onto its colours there, 0 to 8, 0 = the NeRF's colours there "
                        "(default: 3, at 90, 180 and 270 degrees; tiny: 0); where the reference is projected, drawn in "
                        "turns, each keeping what the reference and the views before it show (one Zero-1-to-3 call "
                        "per turn: 2 for 3 views, 4 for 5, 7 for 8); written to side-views.png")
    e.add_argument("--mesh-smooth", type=int_at_least(0), default=None, metavar="ITERATIONS",
                   help="steps of Taubin smoothing of the mesh (each a shrink and an inflate: keeps its volume, removes "
                        f"the marching-cubes roughness), 0 to {MAX_SMOOTH}, 0 = off (default: 0; mini: 15)")
    e.add_argument("--decimate", type=int_at_least(4), default=None, metavar="FACES",
                   help="reduce the mesh to about this many faces before UV unwrapping (default: keep)")
    e.add_argument("--preview-frames", type=int_at_least(1), default=None,
                   help="frames of the turntable preview GIF (default: 36; mini: 24; tiny: 8)")
    e.add_argument("--preview", choices=PREVIEWS, default="mesh",
                   help="what preview.gif turns round: mesh (default) = the exported mesh with its colours as a viewer "
                        "shows them unlit (the texture, or the vertex colours with --no-texture), drawn on the CPU; "
                        "nerf = renders of the final NeRF, whose colours on the sides the reference does not see are "
                        "not the mesh's")
    e.add_argument("--height-m", type=finite_float, default=None,
                   help="scale the mesh to this height in metres, 0.0001 to 10000 (default: 1 scene unit = 1 m)")
    from suite.cli import add_model_arguments

    # --export-only exports as its run was made unless --preset says otherwise (config_from_args)
    add_model_arguments(p, controlnet=False, domain=DEFAULT_DOMAIN,
                        preset_later="with --export-only, the preset of the checkpoint's run")




def check_limits(args) -> None:
    """Step counts, the mesh grid, the preview and the weights within their stated limits (``--allow-large`` lifts
    the sizes), before anything loads. One sentence per problem."""
    from suite.checks import MAX_STEPS, check_count, check_weight

    from .config import RECOMMENDED

    large = args.allow_large
    for flag, value, limit in (("--image-steps", args.image_steps, MAX_STEPS),
                               ("--zero123-steps", args.zero123_steps, MAX_SDS_STEPS),
                               ("--refine-steps", args.refine_steps, MAX_SDS_STEPS),
                               ("--mesh-resolution", args.mesh_resolution, MAX_MESH_RESOLUTION),
                               ("--preview-frames", args.preview_frames, MAX_FRAMES),
                               ("--mesh-smooth", args.mesh_smooth, MAX_SMOOTH)):
        if value is not None:
            check_count(value, flag, limit, minimum=0, allow_large=large)
    if not args.config and not args.export_only and not (args.resume and _has_nerf(args.output)):
        # (a resume of a folder without a NeRF exported the blob too; from Python, a test's quick run may ask for it)
        check_trains_a_nerf(args.zero123_steps, args.refine_steps)
    if args.depth_smooth is not None and args.depth_smooth < 0:
        from suite.checks import UserError

        raise UserError(f"--depth-smooth is {args.depth_smooth:g}: give a weight of 0 or more (0 = off; mini: 10000)")
    for flag in ("domain_weight", "control_weight", "refine_zero123_weight", "zero123_guidance", "image_domain_weight"):
        value = getattr(args, flag)
        if value is not None and value != RECOMMENDED:
            check_weight(value, f"--{flag.replace('_', '-')}")
    from suite.checks import UserError

    # flags that set what another flag switches off were recorded as if they applied
    if args.no_texture and args.texture_size is not None:
        raise UserError("--texture-size sets the texture that --no-texture turns off: drop one of them")
    if args.refine_steps == 0:
        stage3 = [f"--{f.replace('_', '-')}" for f in ("domain_weight", "control_weight", "guidance_rule",
                                                       "refine_zero123_weight") if getattr(args, f) is not None]
        if stage3:
            raise UserError(f"{', '.join(stage3)} set{'s' if len(stage3) == 1 else ''} stage 3, which --refine-steps 0 "
                            f"skips: drop {'it' if len(stage3) == 1 else 'them'}, or give stage 3 some steps")


def check_trains_a_nerf(zero123_steps, refine_steps, zero123: str = "--zero123-steps",
                        refine: str = "--refine-steps", image_alone: str = "generate") -> None:
    """One sentence where neither SDS stage has steps: the NeRF's untrained starting blob was exported as the mesh,
    exit 0 (the CLI's flags, or the app's fields, named as given)."""
    if zero123_steps == 0 and refine_steps == 0:
        from suite.checks import UserError

        raise UserError(f"{zero123} 0 and {refine} 0 train no NeRF, so the mesh would be its untrained starting blob: "
                        f"give stage 2 some steps (for stage 1's image alone, use {image_alone})")


def _has_nerf(output) -> bool:
    """Whether the run in ``output`` has trained a NeRF (a stage checkpoint)."""
    folder = Path(output).expanduser() / "checkpoints"
    return any((folder / f"{stage}.safetensors").is_file() for stage in ("stage2-zero123", "stage3-refine"))


#: the flags an --export-only uses: the export's, where to write, how to compute, and the side views' Zero-1-to-3
EXPORT_ONLY_FLAGS = ("export_only", "output", "resume", "device", "dtype", "preset", "allow_large", "zero123_model",
                     "zero123_guidance", "seed", "formats", "mesh_resolution", "threshold", "no_texture",
                     "texture_size", "no_project_reference", "side_views", "mesh_smooth", "decimate",
                     "preview_frames", "preview", "height_m")


def _run_preset(checkpoint: str) -> str | None:
    """The preset of the run a checkpoint (``<run>/checkpoints/<stage>.safetensors``) belongs to, from its
    ``config.json``; None where it cannot be read."""
    import json

    path = Path(checkpoint).expanduser().resolve()
    try:
        preset = json.loads((path.parent.parent / "config.json").read_text(encoding="utf-8")).get("preset")
    except (OSError, ValueError, AttributeError):
        return None
    from suite.presets import PRESET_NAMES

    if path.parent.name == "checkpoints" and preset in PRESET_NAMES:
        log.info("--export-only: exporting with the run's preset, %s (pass --preset to choose another)", preset)
        return preset
    return None


def _flags_given(args, keep=()) -> list[str]:
    """The 3D flags of ``args`` that differ from their defaults, leaving out ``keep`` (destinations)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and a.dest not in keep and hasattr(args, a.dest)
            and getattr(args, a.dest) != a.default]


def _resumed_domain(args) -> str | None:
    """The domain a run resumed without ``--domain`` was made with (a run with a ``--domain-model`` and no
    ``--domain`` was porcelain before the model's own domain came first: its resume must not be refused)."""
    import json

    if not args.resume or not args.output:
        return None
    try:
        found = json.loads((Path(args.output).expanduser() / "config.json").read_text()).get("domain")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and found else None


def config_from_args(args):
    """A :class:`ThreeDConfig` from the flags, or from ``--config FILE`` (+ output, resume, device, dtype)."""
    from dataclasses import replace

    from suite.checks import UserError
    from suite.presets import DEFAULT_PRESET, chosen_domain
    from suite.rules import format_rule

    from .config import ExportConfig, ThreeDConfig

    check_limits(args)
    if args.config:
        given = _flags_given(args, keep=("config", "output", "resume", "device", "dtype", "allow_large"))
        if given:
            raise UserError(f"--config repeats a run with the settings of its file, so {', '.join(given)} would be "
                            f"ignored: edit the config.json, or run without --config")
        saved = ThreeDConfig.load(args.config)
        # threads: the recorded count is the run's, for its --resume (continue_threads); a new run from the file
        # computes at --threads or this machine's choice (the recorded 7 were forced on a 2-core machine)
        return replace(saved, output=args.output, resume=args.resume, device=args.device or saved.device,
                       dtype=args.dtype or saved.dtype, export_only=None, threads=None,
                       allow_large=args.allow_large or saved.allow_large).resolved()
    if args.export_only:
        given = _flags_given(args, keep=EXPORT_ONLY_FLAGS)
        if given:  # the cameras and the image are the checkpoint's run's: these were ignored without a word
            raise UserError(f"--export-only turns a checkpoint into meshes with its run's cameras and image, so "
                            f"{', '.join(given)} would be ignored: drop {'it' if len(given) == 1 else 'them'} (they set "
                            f"a run that trains)")
    if args.preset is None:  # an export of a run's checkpoint: its run's preset (a mini run's 80^3 grid, not 256^3)
        args.preset = (_run_preset(args.export_only) if args.export_only else None) or DEFAULT_PRESET
    domain = args.domain or _resumed_domain(args) or chosen_domain(None, args.domain_model) or DEFAULT_DOMAIN
    kw = dict(prompt=args.prompt, domain=domain, preset=args.preset, output=args.output, image=args.image,
              mask=args.mask, mask_method=args.mask_method, sd_model=args.sd_model, domain_model=args.domain_model,
              zero123_model=args.zero123_model, image_steps=args.image_steps,
              image_domain_weight=args.image_domain_weight,
              zero123_steps=args.zero123_steps, refine_steps=args.refine_steps, elevation=args.elevation,
              formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
              mesh_resolution=args.mesh_resolution, threshold=args.threshold,
              texture=False if args.no_texture else None, texture_size=args.texture_size,
              project_reference=False if args.no_project_reference else None, side_views=args.side_views,
              resume=args.resume, export_only=args.export_only,
              seed=args.seed, allow_large=args.allow_large, device=args.device, dtype=args.dtype,
              preview_frames=args.preview_frames,
              preview=args.preview, geometry=args.geometry, depth=args.depth, depth_model=args.depth_model,
              depth_weight=args.depth_weight, view_depth_weight=args.view_depth_weight)
    cfg = ThreeDConfig(**kw).resolved()
    refine = cfg.refine
    for flag, field in (("refine_zero123_weight", "lambda_zero123"), ("domain_weight", "domain_weight"),
                        ("control_weight", "control_weight"), ("guidance_rule", "guidance_rule")):
        value = getattr(args, flag)
        if flag == "guidance_rule" and value is not None:
            value = format_rule(value)
        if value is not None:
            refine = replace(refine, **{field: value})
    zero123 = cfg.zero123
    if args.depth_smooth is not None:
        zero123 = replace(zero123, lambda_depth_smooth=args.depth_smooth)
    if args.shading:
        zero123 = replace(zero123, shading=True)
    if args.zero123_guidance is not None:
        zero123 = replace(zero123, zero123_guidance_scale=args.zero123_guidance)
        refine = replace(refine, zero123_guidance_scale=args.zero123_guidance)
    export: ExportConfig = cfg.export
    if args.decimate is not None:
        export = replace(export, decimate=args.decimate)
    if args.mesh_smooth is not None:
        export = replace(export, smooth=args.mesh_smooth)
    if args.height_m is not None:
        export = replace(export, height_m=args.height_m)
    return replace(cfg, refine=refine, zero123=zero123, export=export)


def main(args) -> int:
    from suite.extras import require

    from . import run_text_to_3d
    from .run import THREE_D_MODULES

    require("3d", *THREE_D_MODULES)  # a batch too, before its folder is claimed
    if args.prompts_file:
        return batch_main(args)
    # 1. Flags -> config (validated), 2. run, 3. say where the results are.
    cfg = config_from_args(args)
    result = run_text_to_3d(cfg)
    log.info("done: %s", result.output_dir)
    for fmt, path in result.mesh_paths.items():
        log.info("  mesh (%s): %s", fmt, path)
        coloured = path.parent / f"{path.stem}-vertex-colors.glb"
        if fmt == "glb" and coloured.is_file():
            log.info("  mesh (glb, vertex colours): %s", coloured)
    if result.preview_path is not None:
        log.info("  preview: %s", result.preview_path)
    if result.image_path is not None:  # an --export-only run makes neither
        log.info("  image: %s  mask: %s", result.image_path, result.mask_path)
    if result.nan_recoveries:
        log.info("  %d training step(s) had NaNs and were undone (restored the last good state)",
                 result.nan_recoveries)
    blender = {"glb": "File > Import > glTF", "obj": "File > Import > Wavefront (.obj)",
               "ply": "File > Import > Stanford PLY"}
    fmt = next((f for f in blender if f in result.mesh_paths), None)
    if fmt:  # the meshes written, not "open None" when glb was not among --formats
        log.info("open %s in Blender (%s): Y up, metres", result.mesh_paths[fmt], blender[fmt])
    return 0


def batch_main(args) -> int:
    """``--prompts-file``: one 3D run per prompt, each in its own folder of ``--output``; process ``r`` of ``P``
    (accelerate launch, torchrun) takes prompts ``r, r + P, ...`` of those still to run (:func:`suite.batch.share`);
    a finished prompt (its ``summary.json``) is skipped, an unfinished one resumed (``--resume``)."""
    import json
    from argparse import Namespace
    from contextlib import ExitStack
    from dataclasses import replace
    from pathlib import Path

    from suite import batch as B
    from suite.checks import UserError
    from suite.files import write_text_atomic
    from suite.rules import parse_rule

    from . import run_text_to_3d
    from .run import changed_settings, check_config, setting_names

    if args.prompt or args.image or args.config or args.export_only:  # an export-only "made" every prompt
        raise UserError("give --prompts-file, or --prompt / --image / --config / --export-only for one run, not both")
    check_limits(args)  # before the batch's folder is claimed
    items = B.read_items(args.prompts_file, [args.seed])
    if any(it.negative_prompt for it in items):
        raise UserError("3d takes no negative prompt: drop negative_prompt from the prompts file")
    folder = Path(args.output).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"the output {str(folder)!r} is a file: --output must be a folder for the batch's runs")
    def item_args(item, out: Path) -> Namespace:
        one = Namespace(**{**vars(args), "prompt": item.prompt, "seed": item.seed, "output": str(out),
                           "resume": out.exists(), "prompts_file": None})
        for key in ("domain_weight", "control_weight", "guidance_rule"):
            if getattr(item, key) is not None:
                setattr(one, key, getattr(item, key) if key != "guidance_rule" else parse_rule(item.guidance_rule))
        return one

    runs = []
    for item in items:  # every run's settings checked now: not a bad line after hours of the runs before it
        out = folder / f"{item.index:03d}-s{item.seed}"
        try:
            cfg = config_from_args(item_args(item, out))
            check_config(cfg)
        except ValueError as err:
            raise UserError(f"{err} (item {item.index}: {item.prompt!r})") from None
        if args.resume and (out / "config.json").is_file():  # begun or done with other settings: refused now
            changed = changed_settings(out, cfg)
            if changed:
                raise UserError(f"{str(out)!r} holds a run made with a different {', '.join(setting_names(changed))}: "
                                f"use the same "
                                f"prompts file and flags to resume this batch, or choose another --output")
        runs.append((item, out, cfg))
    state = B.process_state(cpu=args.device == "cpu")
    from suite.presets import process_device

    rank, world = state.process_index, state.num_processes
    with ExitStack() as stack:
        B.claim_batch_folder(stack, state, folder, "3d-batch", args.resume, "a 3D batch")
        # the runs done (with these settings, checked above): read by process 0 for all, before any run here ends
        done = B.from_main(state, {item.index for item, out, _ in runs if (out / "summary.json").is_file()}
                           if state.is_main_process else None)
        for item, out, _ in runs:
            if item.index in done and state.is_main_process:
                log.info("batch: %s is done (%r)", out.name, item.prompt)
        state.wait_for_everyone()
        # what is left, shared out again (a process whose runs were done waited idle for another's whole share)
        by_index = {run[0].index: run for run in runs}
        for [item] in B.share([item for item, _, _ in runs], done, 1, rank, world):
            item, out, cfg = by_index[item.index]
            cfg = replace(cfg, device=process_device(cfg.device, state))  # each process on its own device
            log.info("batch: %s (%r) on process %d of %d", out.name, item.prompt, rank + 1, world)
            run_text_to_3d(cfg)
        state.wait_for_everyone()
        if state.is_main_process:
            rows = []
            for item in items:
                out = folder / f"{item.index:03d}-s{item.seed}"
                summary = out / "summary.json"
                row = dict(index=item.index, prompt=item.prompt, seed=item.seed, folder=out.name,
                           done=summary.is_file())
                if row["done"]:
                    row["meshes"] = json.loads(summary.read_text()).get("meshes")
                rows.append(json.dumps(row, sort_keys=True))
            write_text_atomic(folder / B.MANIFEST, "".join(r + "\n" for r in rows))
            log.info("batch: %d of %d 3D runs done in %s", sum('"done": true' in r for r in rows), len(items), folder)
    B.end_processes(state)
    return 0
