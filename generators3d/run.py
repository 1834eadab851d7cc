"""The text-to-3D flow (paper Sec. 4.3, Fig. 10) in one function: :func:`run_text_to_3d`.

Output folder::

    config.json              the resolved config (repeat a run: python launch.py 3d --config config.json)
    image.png  mask.png      stage 1: the in-domain image and its foreground mask
    reference.png            the centred reference view on white (what Zero-1-to-3 sees)
    checkpoints/stage2-zero123.safetensors, checkpoints/stage3-refine.safetensors
    mesh/model.glb  mesh/model.obj + model.mtl + model.png  mesh/model.ply
    preview.gif              turntable of the exported mesh (--preview nerf: of the final NeRF)
    summary.json             where everything is, thresholds, NaN recoveries
"""

from __future__ import annotations

import io
import json
import logging
import shlex
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from suite.batch import launched_processes
from suite.checks import MAX_SEED, check_int, check_prompt, check_weight
from suite.depth import load_depth_estimator, nearness_image, read_nearness
from suite.devices import kept_random_state
from suite.extras import require
from suite.files import (
    check_writable_dir,
    claim_run_folder,
    output_lock,
    remove_leftovers,
    write_bytes_atomic,
    write_text_atomic,
)
from suite.images import has_transparency, load_image, read_mask, save_image_atomic
from suite.models import ModelLoadError
from suite.pipeline import quiet, report_steps
from suite.presets import build_pipeline, depth_ref, resolve_device, resolve_domain, warn_prompt, zero123_ref
from suite.progress import LogProgress
from suite.rules import check_rule_terms, parse_rule
from suite.threads import building_models, continue_threads, kept_threads
from suite.zero123 import Zero123Guidance, load_zero123

from . import mesh as meshlib
from .cameras import orbit_cameras, turntable_cameras
from .config import (
    DEPTH_MODES,
    MODEL_FLAGS,
    PRESET_SIZES,
    STAGES,
    ThreeDConfig,
    ThreeDResult,
    absolute_path,
    check_sizes,
    is_recommended,
    model_ref,
)
from .guidance3d import DomainSDS, Zero123SDS
from .mask import foreground_mask, load_mask, reference_depth, reference_view
from .nerf import Background, make_field
from .render import render
from .sds import TimestepRange
from .stage import Reference, SDSTerm, check_checkpoint, load_checkpoint, save_checkpoint, train_stage
from .texture import reference_colour_view, side_turns, side_views_keep, zero123_colour_views

log = logging.getLogger("generators3d")

MAX_PROMPT_CHARS = 1000
# Fields that determine earlier stages: a resumed run must match them.
_RESUME_KEYS = ("prompt", "domain", "preset", "image", "mask", "seed", "mask_method", "background_prompt",
                "elevation")


THREE_D_MODULES = ("scipy", "trimesh", "mcubes|skimage")
"""What the 3D flow cannot run without (the ``3d`` extra; xatlas is optional: without it, vertex colours)."""


def run_text_to_3d(config: ThreeDConfig, progress=None) -> ThreeDResult:
    """Prompt -> in-domain image -> Zero-1-to-3 NeRF -> domain SDS refinement -> meshes and a preview.

    ``progress(stage, done, total, info)`` is called as work advances (stages: image, zero123, refine,
    export, preview). Finished stages found in ``config.output`` are loaded instead of run when
    ``config.resume`` is set. The output folder is locked for the run (a second run into it is refused), and
    temporary files that a killed run left there are removed first.
    """
    require("text-to-3D", *THREE_D_MODULES)  # the mesh export needed them after all the training
    cfg = config.resolved()
    prompt, _ = _check_request(cfg)
    # "~/run" from Python too, not a folder named "~"; absolute, so that the result's and summary.json's paths mean
    # the same files from any folder
    out = check_writable_dir(Path(cfg.output).expanduser().absolute())
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {str(out)!r} is a file: choose a folder with --output")
    # a resume runs at its recorded thread count; the caller's is restored, and its random stream (a run drew from it)
    with output_lock(out), kept_threads(), kept_random_state(resolve_device(cfg.device, cfg.dtype)[0]):
        # A folder of the user's is refused before anything is written into it; in one of our runs only our own
        # temporaries (of a killed run) are removed, in the folders the run writes.
        busy = claim_run_folder(out, "3d", recognise=_is_3d_run)
        remove_leftovers(folders=[out, out / "checkpoints", out / "mesh"])
        if cfg.threads:  # given from Python or a --config file: the run computes at it (it was only recorded); a
            torch.set_num_threads(cfg.threads)  # resume then continues at its run's recorded count
        return _run(cfg, out, prompt, progress, busy)


def _is_3d_run(folder: Path) -> bool:
    """A 3D run written before run folders were marked: its config.json reads as a 3D config."""
    try:
        ThreeDConfig.load(folder / "config.json")
    except (ValueError, TypeError):
        return False
    return (folder / "checkpoints").is_dir()


def _check_request(cfg: ThreeDConfig) -> tuple:
    """Everything that can be checked before the output folder is touched or a model loads; returns the clean
    prompt and the :class:`suite.domains.Domain`."""
    prompt = check_prompt(cfg.prompt)
    if not prompt and not cfg.image and not cfg.export_only:
        raise ValueError("the prompt is empty: give --prompt 'a vase with dragons' (or --image FILE of an object)")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt)} characters long: keep it under 75 CLIP tokens (one sentence)")
    if cfg.mask and not cfg.image:
        raise ValueError("--mask needs --image (the mask belongs to your image)")
    if cfg.image_domain_weight is not None:
        if cfg.image:
            raise ValueError("--image-domain-weight sets the guidance of stage 1's image, which --image replaces: drop "
                             "one of them")
        w = cfg.image_domain_weight
        if is_recommended(w):
            pass
        elif isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ValueError(f"--image-domain-weight is {w!r}: give a number, e.g. 1.5, or 'recommended'")
        else:
            check_weight(w, "the domain weight of stage 1 (--image-domain-weight)")
    domain = resolve_domain(cfg.domain, cfg.domain_model)  # an unknown domain: one sentence, before any writing
    check_weight(cfg.refine.domain_weight, "the domain weight of stage 3")
    check_weight(cfg.refine.control_weight, "the control weight of stage 3")
    rule = parse_rule(cfg.refine.guidance_rule)
    if rule is not None and cfg.refine.steps > 0:  # a rule for terms stage 3 lacks, or outside its range: now
        r = cfg.refine
        # the terms stage 3 will have: the text control only with a prompt (an image's run has none), the domain only
        # with a domain model (a rule for 'control' on an image's run was refused only after stage 2 had trained)
        no_domain = str(cfg.domain_model or "").strip().lower() == "none"
        terms = [n for n, w, there in (("domain", r.domain_weight, not no_domain), ("control", r.control_weight, prompt))
                 if w != 0 and there]
        span = TimestepRange(r.min_step_percent, r.max_step_percent).noise_range()
        check_rule_terms(rule, terms, " (check --guidance-rule)", noise_range=span)
    check_int(cfg.seed, "the seed (--seed)", 0, MAX_SEED)
    check_sizes(cfg)  # a config file's or Python's sizes, as the CLI's flags are checked
    if cfg.image:  # read now: a text file, a FIFO or an unusable image is refused before the folder is touched
        image = load_image(cfg.image, "input image (--image)")
        mask = _object_mask(cfg, image)
        if cfg.depth not in DEPTH_MODES:
            near = read_nearness(cfg.depth, image.size)[np.asarray(mask.convert("L").resize(image.size)) > 127]
            if near.size and float(np.ptp(near)) == 0.0:
                raise ValueError(f"--depth {cfg.depth!r} is flat over the object: pass the image's depth image (bright "
                                 f"= near), not a mask or a blank image")
    if cfg.export_only:
        check_checkpoint(cfg.export_only)  # a missing or foreign file: one sentence before any writing (header only)
    return prompt, domain


def _run(cfg: ThreeDConfig, out: Path, prompt: str, progress, busy: bool) -> ThreeDResult:
    device, dtype = resolve_device(cfg.device, cfg.dtype)
    # with several processes (a batch under torchrun or accelerate) each line says whose run it is
    report = _Reporter(progress, f"3d {out.name}" if launched_processes() > 1 else "3d")

    # 2. The output folder: a new one, or a run to resume (never overwrite another run's results).
    _check_output(out, cfg, busy)
    ckpt_dir = out / "checkpoints"
    stage2_ckpt, stage3_ckpt = ckpt_dir / "stage2-zero123.safetensors", ckpt_dir / "stage3-refine.safetensors"

    # 2b. --export-only: a checkpoint straight to meshes.
    if cfg.export_only:
        field, _ = load_checkpoint(cfg.export_only, device)
        colours, camera = _export_only_colours(cfg, device, dtype)  # a bad Zero-1-to-3 folder fails before writing
        result = _create_output(out, cfg)
        if (out / "config.json").is_file():  # into a run's own folder (--resume): summary.json keeps its record
            _keep_run_record(out, result, stage2_ckpt, stage3_ckpt)
        return _finish(field, replace(cfg, camera=camera), out, result, report, colours)

    # 3. Models, loaded once and only when a stage needs them; the prompt's length checked by its tokenizer.
    pipe = None
    need_pipe = (not cfg.image and not _stage1_done(out)) or (cfg.refine.steps > 0 and not stage3_ckpt.exists())
    if need_pipe:
        pipe = build_pipeline(cfg.preset, cfg.domain, cfg.sd_model, cfg.domain_model, None, False,
                              cfg.device, cfg.dtype)
        _check_prompt_tokens(pipe, prompt)
    depth_model = None
    need_depth = _needs_depth(cfg, stage2_ckpt, stage3_ckpt)
    need_view_depth = _needs_depth(cfg, stage2_ckpt, stage3_ckpt, "lambda_view_depth")
    if (need_depth and cfg.depth == "auto") or need_view_depth:
        depth_model = load_depth_estimator(cfg.depth_model or depth_ref(cfg.preset), device=device)
    z123_model = None
    if (cfg.zero123.steps > 0 and not stage2_ckpt.exists()) or (
            cfg.refine.steps > 0 and cfg.refine.lambda_zero123 > 0 and not stage3_ckpt.exists()):
        ref = cfg.zero123_model or zero123_ref(cfg.preset)
        z123_model = load_zero123(ref, device=device, dtype=dtype)  # before anything is written: a bad folder fails here
    side_model, side_warning = z123_model, None
    if side_model is None and cfg.export.side_views:  # the export's side views need it even where no stage does
        side_model, side_warning = _side_model(cfg.zero123_model, cfg.preset, device, dtype)
    previous = _previous_record(out) if cfg.resume else ([], 0)  # the stages a finished run's summary recorded
    result = _create_output(out, cfg)
    if prompt and (not cfg.image or cfg.refine.steps > 0):  # stage 1's image and stage 3 read it (now or before)
        result.warnings += warn_prompt(cfg.preset, prompt)

    # 4. Stage 1: the in-domain image (or the user's) and its foreground mask -> the reference view.
    image_path, mask_path, ref_path = out / "image.png", out / "mask.png", out / "reference.png"
    if _stage1_done(out):
        log.info("stage 1: reusing %s", image_path)
        with Image.open(mask_path) as saved_mask:  # a resume's summary.json said nothing of it
            _warn_border(result, cfg, saved_mask)
    else:
        if cfg.image:
            image = load_image(cfg.image, "input image")
        else:
            report.start("image", cfg.image_steps)
            image = stage1_image(pipe, cfg, prompt, on_step=lambda i, n: report.update("image", i, n, {}))
            report.end("image")
        mask = _object_mask(cfg, image)
        _warn_border(result, cfg, mask)
        ref_rgb, ref_mask = reference_view(image, mask, max(cfg.zero123.ref_resolution, 256))
        for im, path in ((image, image_path), (mask, mask_path), (ref_mask, out / "reference-mask.png"),
                         (ref_rgb, ref_path)):
            save_image_atomic(im, path)
        result.stages_run.append("image")
    reference = _load_reference(ref_path, out / "reference-mask.png", device)
    if need_depth:  # 4b. the reference's depth (stage 2's relative depth loss)
        reference = _with_depth(reference, cfg, depth_model, out)
    if not need_view_depth:
        depth_model = None  # not kept through the stages unless they read it (a large estimator beside the models)

    # 5. Stage 2: Zero-1-to-3 initialisation (SDS from random views + reference colour and mask).
    zero123 = None
    if z123_model is not None:
        zero123 = Zero123Guidance(z123_model, reference.rgb, cfg.camera.ref_elevation, cfg.camera.ref_azimuth,
                                  cfg.camera.ref_distance)
    background = Background().to(device)  # a buffer only: accelerate's swap does not touch it
    if stage2_ckpt.exists():
        field, _ = load_checkpoint(stage2_ckpt, device)
        log.info("stage 2: reusing %s", stage2_ckpt)
    else:
        with building_models():
            field = make_field(cfg.nerf, device, seed=cfg.seed)
        if cfg.zero123.steps > 0:
            term = Zero123SDS(zero123, cfg.zero123.zero123_guidance_scale, cfg.zero123.weighting,
                              cfg.zero123.grad_clip, cfg.zero123.min_step_percent, cfg.zero123.max_step_percent)
            report.start("zero123", cfg.zero123.steps)
            stats = train_stage(field, background, cfg.zero123, cfg.camera, reference, [SDSTerm("zero123", 1.0, term)],
                                generator=stage_generator(cfg.seed, "zero123"),
                                progress=lambda i, n, info: report.update("zero123", i, n, info),
                                view_depth=_view_depth(depth_model, cfg.zero123))
            report.end("zero123")
            result.nan_recoveries += stats["nan_recoveries"]
            result.stages_run.append("zero123")
        save_checkpoint(field, stage2_ckpt, "zero123", {"steps": cfg.zero123.steps})
    result.checkpoints["zero123"] = stage2_ckpt

    # 6. Stage 3: refinement by SDS with the domain multi-guidance (+ optional Zero-1-to-3 term, Magic123).
    if not cfg.refine.lambda_view_depth:
        depth_model = None  # stage 2's reader of its views, not needed beside the diffusion models
    if stage3_ckpt.exists():
        field, _ = load_checkpoint(stage3_ckpt, device)
        log.info("stage 3: reusing %s", stage3_ckpt)
    elif cfg.refine.steps > 0:
        r = cfg.refine
        terms = refine_terms(pipe, prompt, r, zero123)
        report.start("refine", r.steps)
        stats = train_stage(field, background, r, cfg.camera, reference, terms,
                            generator=stage_generator(cfg.seed, "refine"),
                            progress=lambda i, n, info: report.update("refine", i, n, info),
                            view_depth=_view_depth(depth_model, r))
        report.end("refine")
        result.nan_recoveries += stats["nan_recoveries"]
        result.stages_run.append("refine")
        save_checkpoint(field, stage3_ckpt, "refine", {"steps": r.steps})
    if stage3_ckpt.exists():
        result.checkpoints["refine"] = stage3_ckpt

    result.image_path, result.mask_path = image_path, mask_path
    stages, recoveries = previous  # a resume of a finished run (a new export) keeps the record of its stages
    result.stages_run = [st for st in stages if st not in result.stages_run] + result.stages_run
    result.nan_recoveries += recoveries
    colours = _export_colours(cfg, out, cfg.camera, side_model, side_warning)
    return _finish(field, cfg, out, result, report, colours)


def stage1_image(pipe, cfg: ThreeDConfig, prompt: str, on_step=None, guidance_rule=None) -> Image.Image:
    """Stage 1's in-domain image of ``prompt`` for ``cfg`` (its background words, steps, seed and
    :meth:`ThreeDConfig.stage1_domain_weight`; the domain's recommended weights otherwise). ``on_step(i, n)``:
    progress. ``guidance_rule``: a rule for the image (:mod:`suite.rules`; the benches' variants); not given, the
    domain's."""
    w_d = cfg.stage1_domain_weight()
    weights = {} if w_d is None else dict(domain_weight=w_d)
    callback = {} if on_step is None else dict(callback_on_step_end=report_steps(on_step))
    rule = {} if guidance_rule is None else dict(guidance_rule=guidance_rule)
    with quiet(pipe):
        return pipe(prompt + cfg.background_prompt, num_inference_steps=cfg.image_steps, seed=cfg.seed, **weights,
                    **rule, **callback).images[0]


def refine_terms(pipe, prompt: str, stage, zero123: Zero123Guidance | None) -> list[SDSTerm]:
    """Stage 3's SDS terms for the refine ``stage`` (a :class:`StageConfig`): the domain multi-guidance (weights not
    given: the domain's recommended ones, as the pipeline decides, InDomainPipeline.guidance_weights), and a
    Zero-1-to-3 term weighing ``stage.lambda_zero123`` when it is above 0 (Magic123)."""
    terms = [SDSTerm("domain", 1.0, DomainSDS.from_stage(pipe, prompt, stage))]
    if stage.lambda_zero123 > 0:
        terms.append(SDSTerm("zero123", stage.lambda_zero123, Zero123SDS(
            zero123, stage.zero123_guidance_scale, stage.weighting, stage.grad_clip, stage.min_step_percent,
            stage.max_step_percent)))
    return terms


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """Each stage draws from its own generator, seeded by ``(seed, stage)``: a stage gives the same result whether
    the run went straight through or resumed after a kill (when the previous stage came from its checkpoint)."""
    return torch.Generator().manual_seed(int(seed) * 1009 + STAGES.index(stage))


def field_mesh(field, camera, export, reference=None, side=None, seed: int = 0,
               guidance_scale: float = 3.0) -> tuple[meshlib.Mesh, float, list]:
    """The field's mesh in the NeRF frame as the export makes it (``export``: an :class:`ExportConfig`), its
    density threshold from renders at the reference distance (four round the object, one above, one below), and the
    Zero-1-to-3 side views its colours took. Colours: the NeRF's, with ``reference`` (a
    :class:`generators3d.mesh.ColourView`) projected where it sees the surface when ``export.project_reference``,
    and ``export.side_views`` views drawn by ``side`` (a :class:`suite.zero123.Zero123Guidance`) where it does not,
    brought to the reference's colours (:mod:`generators3d.texture`); with ``export.side_keep_reference`` the side
    views keep what the projected reference shows and draw the rest to join it, and with ``export.side_in_turn`` they
    are drawn in turns (:func:`generators3d.texture.side_batches`: the back first), each also keeping what the turns
    before it drew, at Zero-1-to-3's classifier-free ``guidance_scale`` (the run's ``--zero123-guidance``). Puts the
    field in eval mode with a fresh occupancy grid (a loaded checkpoint carries none)."""
    field.eval()
    field.update_occupancy()
    cams = orbit_cameras([0.0] * 4 + [60.0, -30.0], [0.0, 90.0, 180.0, 270.0, 0.0, 180.0], camera.ref_distance,
                         camera.ref_fovy)
    from .raster import depth_map

    mesh, level = meshlib.surface_mesh(field, cams, export)
    if reference is not None:  # its depth map of this mesh, drawn once for both colourings below
        reference = replace(reference, depth=depth_map(mesh.vertices, mesh.faces, reference.c2w, reference.fovy,
                                                       reference.rgb.shape[0]))
    views = [reference] if reference is not None and export.project_reference else []
    sides = []
    if reference is not None and side is not None and export.side_views:
        keep = side_views_keep(export)
        for i, azimuths in enumerate(side_turns(export)):  # each turn keeps what the reference and turns before show
            first = meshlib.colour_mesh(mesh, field, export, views + sides, texture=False, reference=reference)
            drawn = zero123_colour_views(first, side, camera, strength=export.side_strength, steps=export.side_steps,
                                         guidance_scale=guidance_scale,
                                         seed=seed + 7919 * i,  # turn 0 draws with the run's seed, as before turns
                                         keep=views + sides if keep else None, azimuths=azimuths)
            # each view's depth map of this mesh, drawn once for the turns after it and the colours below
            sides += [replace(v, depth=depth_map(mesh.vertices, mesh.faces, v.c2w, v.fovy, v.rgb.shape[0]))
                      for v in drawn]
    # the reference sets the colours' scale and palette wherever an image is projected, even when it is not itself
    match = reference if views or sides else None
    return meshlib.colour_mesh(mesh, field, export, views + sides, reference=match), level, sides


def _side_model(named, preset: str, device, dtype):
    """Zero-1-to-3 for the export's side views, loaded before anything is written: ``(model, None)``; where the
    preset's own model cannot be loaded (offline, never downloaded) ``(None, warning)`` and the export goes on
    without side views; a folder the user ``named`` that cannot be loaded stops the run (one sentence)."""
    try:
        return load_zero123(named or zero123_ref(preset), device=device, dtype=dtype), None
    except ModelLoadError as e:
        if named:
            raise
        warning = f"{e}; the sides the reference does not see keep the NeRF's colours (--side-views 0 skips them)"
        log.warning(warning)
        return None, warning


def _export_only_colours(cfg: ThreeDConfig, device, dtype):
    """``--export-only``: the colours' sources from the checkpoint's run (``<run>/checkpoints/<stage>.safetensors``:
    its ``reference.png`` and, from its ``config.json``, its cameras, preset and Zero-1-to-3), and the cameras to use:
    ``(``:func:`_export_colours` ``, camera)``. Where the run cannot be read, the NeRF's colours alone, and a
    warning: an image projected through a guessed camera would land in the wrong place."""
    ex = cfg.export
    if not (ex.project_reference or ex.side_views):
        return (None, None, None), cfg.camera
    ckpt = Path(cfg.export_only).resolve()
    run_dir = ckpt.parent.parent
    warning = None
    saved = None
    if ckpt.parent.name != "checkpoints" or not (run_dir / "reference.png").is_file():
        warning = (f"{ckpt} is not in a run's checkpoints/ folder beside its reference.png: the mesh takes the "
                   f"NeRF's colours alone")
    else:
        try:
            saved = ThreeDConfig.load(run_dir / "config.json").resolved()
        except (OSError, ValueError, KeyError, TypeError) as e:
            warning = (f"could not read the run's cameras from {run_dir / 'config.json'} ({e}): the mesh takes the "
                       f"NeRF's colours alone")
    if saved is None:
        log.warning(warning)
        return (None, None, warning), cfg.camera
    model, side_warning = None, None
    if ex.side_views:
        model, side_warning = _side_model(cfg.zero123_model or saved.zero123_model, saved.preset, device, dtype)
    return _export_colours(cfg, run_dir, saved.camera, model, side_warning), saved.camera


def _export_colours(cfg: ThreeDConfig, folder: Path, camera, model=None, warning=None):
    """What the export projects onto the mesh's colours: ``(the reference view, a Zero-1-to-3 guide for the side
    views, a warning)``: None where off, where ``folder`` holds no ``reference.png`` (then the NeRF's colours alone)
    or where ``model`` (:func:`_side_model`) is None."""
    ex = cfg.export
    if not (ex.project_reference or ex.side_views):
        return None, None, warning
    reference = reference_colour_view(folder, camera)
    if reference is None:
        log.info("no reference.png in %s: the mesh takes the NeRF's colours alone", folder)
        return None, None, warning
    guide = None
    if ex.side_views and model is not None:
        rgb = torch.from_numpy(reference.rgb).permute(2, 0, 1)[None]
        guide = Zero123Guidance(model, rgb, camera.ref_elevation, camera.ref_azimuth, camera.ref_distance)
    return reference, guide, warning


def _finish(field, cfg, out, result, report, colours=(None, None, None)) -> ThreeDResult:
    """Steps 7-9: meshes (``colours``: :func:`_export_colours`), the turntable preview, the summary."""
    # 7. Mesh export (CPU work: marching cubes, clean-up, colours, UV bake, atomic files).
    report.start("export", 1)
    reference, side, warning = colours
    if warning:
        result.warnings.append(warning)
    textured = bool({"glb", "obj"} & set(cfg.formats))  # only those carry a texture: no bake for a PLY alone
    export = cfg.export if textured else replace(cfg.export, texture=False)
    mesh, level, sides = field_mesh(field, cfg.camera, export, reference, side, cfg.seed,
                                    cfg.zero123.zero123_guidance_scale)
    if cfg.export.decimate and len(mesh.faces) > cfg.export.decimate:  # decimate could not reach it
        result.warnings.append(f"--decimate {cfg.export.decimate}: the coarsest vertex clustering keeps "
                               f"{len(mesh.faces)} faces; exported those")
    if cfg.export.decimate:  # vertex clustering can fold the surface: said, not exported as if it were closed
        import trimesh

        if not trimesh.Trimesh(mesh.vertices, mesh.faces, process=True).is_watertight:
            result.warnings.append(f"--decimate {cfg.export.decimate}: the reduced mesh is not closed (vertex "
                                   f"clustering folded or opened it in places; some faces may face inwards): reduce "
                                   f"less, or export without --decimate and reduce in Blender (Decimate modifier)")
            log.warning(result.warnings[-1])
    transform = meshlib.export_transform(mesh, cfg.export.height_m, cfg.export.on_ground)
    shown = mesh  # in the NeRF frame, for the preview's cameras
    mesh = mesh.transformed(np.asarray(transform["rotation"]), transform["scale"], transform["offset"])
    # The meshes, side-views.png, preview.gif and summary.json are written below as one unit, after every frame
    # is drawn: a full disk or an interrupt leaves the earlier export's files together, never new meshes beside
    # an old summary.
    extra = {}
    side_path = out / "side-views.png"
    if sides:  # what the hidden sides' colours came from, for the user to look at
        strip = np.concatenate([(v.rgb.clip(0, 1) * 255 + 0.5).astype(np.uint8) for v in sides], 1)
        extra[side_path] = _png_bytes(Image.fromarray(strip))
    result.threshold = level
    report.update("export", 1, 1, {"faces": len(mesh.faces), "threshold": level})
    report.end("export")

    # 8. Turntable preview GIF.
    frames = cfg.preview_frames
    report.start("preview", frames)
    cams, size = turntable_cameras(cfg.camera, frames), PRESET_SIZES[cfg.preset].preview_size
    tick = lambda i: report.update("preview", i, frames, {})  # noqa: E731
    if cfg.preview == "nerf":
        images = turntable_frames(field, Background().to(next(field.parameters()).device), cams, size=size,
                                  callback=tick)
    else:
        images = mesh_turntable_frames(shown, cams, size=size, callback=tick, texture=textured)
    result.preview_path = out / "preview.gif"
    extra[result.preview_path] = _gif_bytes(images)
    report.end("preview")

    # 9. Summary beside the results.
    result.mesh_paths = meshlib.mesh_paths(out / "mesh", cfg.formats)
    coloured = out / "mesh" / "model-vertex-colors.glb"
    summary = {"output_dir": str(out), "meshes": {k: str(v) for k, v in result.mesh_paths.items()},
               "vertex_colors_glb": str(coloured) if "glb" in cfg.formats and mesh.texture is not None else None,
               "image": str(result.image_path) if result.image_path else None,
               "mask": str(result.mask_path) if result.mask_path else None,
               "preview": str(result.preview_path), "preview_of": cfg.preview, "threshold": level,
               "faces": int(len(mesh.faces)),
               "colours": {"reference_projected": reference is not None and cfg.export.project_reference,
                           "side_views": len(sides),
                           "side_views_keep_reference": bool(sides) and reference is not None
                           and side_views_keep(cfg.export),
                           # azimuths from the reference, in the turns they were drawn in (side-views.png's order)
                           "side_view_turns": side_turns(cfg.export) if sides else [],
                           "side_views_image": str(side_path) if sides else None,
                           "camera": {k: getattr(cfg.camera, f"ref_{k}") for k in
                                      ("elevation", "azimuth", "distance", "fovy")}},
               "vertices": int(len(mesh.vertices)), "stages_run": result.stages_run,
               "nan_recoveries": result.nan_recoveries, "warnings": result.warnings,
               "checkpoints": {k: str(v) for k, v in result.checkpoints.items()},
               # what an --export-only exported (its folder had no record of it)
               "export_only": str(Path(cfg.export_only).expanduser().resolve()) if cfg.export_only else None,
               "frame": "glTF: Y up, +Z front (the reference view), metres",
               "export_transform": dict(transform, formula="x_export = scale * rotation @ x_nerf + offset")}
    extra[out / "summary.json"] = json.dumps(summary, indent=2).encode()
    meshlib.write_meshes(mesh, out / "mesh", cfg.formats, extra=extra)
    if not sides and side_path.exists():  # an earlier export's, which these meshes did not use
        side_path.unlink()
    return result


def _frame(cams, i: int):
    return type(cams)(*(getattr(cams, k)[i:i + 1] for k in ("c2w", "elevation", "azimuth", "distance", "fovy")))


def _gif_bytes(frames) -> bytes:
    """``frames`` (``[H, W, 3]`` arrays in [0, 1]) as a looping GIF."""
    images = [Image.fromarray((np.clip(f, 0, 1) * 255 + 0.5).astype("uint8")) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_gif(frames, path: Path) -> Path:
    """``frames`` as a looping GIF (:func:`_gif_bytes`), written atomically."""
    write_bytes_atomic(path, _gif_bytes(frames))
    return Path(path)


@torch.no_grad()
def turntable_frames(field, background, cams, size: int = 256, callback=None) -> list[np.ndarray]:
    """A turntable of the NeRF: one ``[H, W, 3]`` frame in [0, 1] per camera."""
    frames = []
    for i in range(len(cams)):
        rgb = render(field, background, _frame(cams, i), size, chunk=16384)["rgb"][0]
        frames.append(rgb.clamp(0, 1).cpu().numpy())
        if callback:
            callback(i + 1)
    return frames


def write_mesh_turntable(mesh: meshlib.Mesh, cams, path: Path, size: int = 256, callback=None,
                         background=(1.0, 1.0, 1.0), texture: bool = True) -> Path:
    """:func:`mesh_turntable_frames` written as a looping GIF (atomically)."""
    return _write_gif(mesh_turntable_frames(mesh, cams, size, callback, background, texture), path)


def mesh_turntable_frames(mesh: meshlib.Mesh, cams, size: int = 256, callback=None, background=(1.0, 1.0, 1.0),
                          texture: bool = True) -> list[np.ndarray]:
    """A turntable of ``mesh`` (in the cameras' frame) drawn by :func:`.raster.render_mesh` with its texture where it
    has one (and ``texture``: a textured format was written), else its vertex colours, unlit (the colours carry the
    lighting of the images they came from): the colours the export wrote, side views included, which the NeRF's
    renders lack. One ``[H, W, 3]`` frame in [0, 1] per camera."""
    from .raster import render_mesh

    textured = texture and mesh.texture is not None and mesh.uv is not None
    v, f = (mesh.uv_vertices, mesh.uv_faces) if textured else (mesh.vertices, mesh.faces)
    image = np.asarray(mesh.texture.convert("RGB")) if textured else None  # decoded once, not per frame
    frames = []
    for i in range(len(cams)):
        rgb, _ = render_mesh(v, f, _frame(cams, i), size=size, colors=None if textured else mesh.colors,
                             uv=mesh.uv if textured else None, texture=image, background=background, shading=False)
        frames.append(rgb[0].transpose(1, 2, 0))
        if callback:
            callback(i + 1)
    return frames


# ---------------------------------------------------------------------------------------------------------
class _Reporter:
    """tqdm bars per stage (on a terminal), progress lines (in a log: :class:`suite.progress.LogProgress`) and the
    caller's ``progress(stage, done, total, info)``."""

    def __init__(self, progress, prefix: str = "3d"):
        self.progress, self.bars, self.lines = progress, {}, LogProgress(prefix, units={"preview": "frame"})

    def start(self, stage: str, total: int) -> None:
        self.bars[stage] = tqdm(total=total, desc=stage, leave=False, disable=None)
        self.lines.start(stage, total)

    def update(self, stage: str, done: int, total: int, info: dict) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.n = done
            if "loss" in info:
                bar.set_postfix(loss=f"{info['loss']:.4g}", refresh=False)
            bar.refresh()
        self.lines(stage, done, total, info)
        if self.progress is not None:
            self.progress(stage, done, total, info)

    def end(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()
        self.lines.end(stage)


def _object_mask(cfg: ThreeDConfig, image) -> Image.Image:
    """The object's mask: ``--mask``; else, for an ``--image`` that is a cut-out (transparent over most of its
    border), its alpha, by the same rule as a mask file (a white object on transparency was "no clear foreground
    object" to the automatic mask, which reads only the colours); else the automatic mask (``cfg.mask_method``)."""
    if cfg.mask:
        return load_mask(cfg.mask, image.size)
    if cfg.image and has_transparency(cfg.image):
        alpha = read_mask(cfg.image, image.size, "transparency of the --image", binary=True) > 0.5
        border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        if border.mean() < 0.5:  # a cut-out: the object on transparency (not a screenshot's rounded corners)
            return Image.fromarray((alpha * 255).astype(np.uint8), "L")
    return foreground_mask(image, cfg.mask_method)


def _previous_record(out: Path) -> tuple[list, int]:
    """``(stages_run, nan_recoveries)`` of the run's ``summary.json`` (written when a run finishes: every stage it
    recorded is loaded, not run again, by a resume), or none."""
    try:
        old = json.loads((out / "summary.json").read_text())
        return [s for s in old.get("stages_run") or [] if isinstance(s, str)], int(old.get("nan_recoveries") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return [], 0


def _warn_border(result: ThreeDResult, cfg: ThreeDConfig, mask) -> None:
    touching = _border_pixels(mask)
    if touching:
        result.warnings.append(f"the object in the {'input' if cfg.image else 'stage-1'} image touches the frame "
                               f"border ({touching} border pixels): it is probably cut off, and the 3D object will "
                               f"be cut flat there; use an image with some background all around the object")
        log.warning(result.warnings[-1])


def _border_pixels(mask) -> int:
    """How many pixels of the frame's border the (binary, mode L) mask covers."""
    m = np.asarray(mask.convert("L")) > 127
    return int(m[0].sum() + m[-1].sum() + m[1:-1, 0].sum() + m[1:-1, -1].sum())


def _stage1_done(out: Path) -> bool:
    return all((out / n).is_file() for n in ("image.png", "mask.png", "reference.png", "reference-mask.png"))


def _check_output(out: Path, cfg: ThreeDConfig, busy: bool) -> None:
    """Refuse, before anything is written, a folder holding another run (unless resuming that same run with the
    settings its finished stages were made with); a resume continues with the thread count the run recorded."""
    config_path = out / "config.json"
    # an --export-only that failed before it wrote meshes left only the folder's marker: its retry is not refused
    # (a run's folder has its config.json from the start, and is refused as before)
    failed_export = cfg.export_only and not (out / "config.json").exists() and not _has_results(out)
    if busy and not cfg.resume and not failed_export:
        what = "--export-only would replace its meshes" if cfg.export_only else "it already holds results"
        raise ValueError(f"the output folder {str(out)!r} holds a run ({what}): pass --resume to continue that run, "
                         f"or choose another --output")
    if cfg.export_only and busy and not failed_export and not _exports_its_own(out, cfg.export_only):
        # --resume replaced another run's meshes with this checkpoint's, and its summary.json kept the other's record
        raise ValueError(f"--export-only {str(cfg.export_only)!r} is not a checkpoint of the run in {str(out)!r}: its "
                         f"meshes would replace that run's; export into another --output (or, to export that run "
                         f"again, give one of its own checkpoints in {str(out / 'checkpoints')!r})")
    if cfg.resume and config_path.is_file() and not cfg.export_only:  # export-only reuses no stage: nothing to match
        changed = changed_settings(out, cfg)
        if changed:
            raise ValueError(f"--resume: the run in {str(out)!r} was made with a different "
                             f"{', '.join(setting_names(changed))} (its finished stages would not match; an earlier "
                             f"version's defaults count too): continue it with its own settings by `--config "
                             f"{shlex.quote(str(config_path))} --resume`, or choose another --output")
        later = changed_settings(out, cfg, finished_only=False)
        if later:  # the stages still to run (or the export) take them: say so, the config.json is rewritten with them
            log.warning("--resume: the stages still to run use settings other than the run's config.json (%s; an "
                        "earlier version's defaults count too): `--config %s --resume` keeps the run's own",
                        ", ".join(setting_names(later)), shlex.quote(str(config_path)))
        continue_threads(ThreeDConfig.load(config_path).threads, "the 3D run")


def _exports_its_own(out: Path, checkpoint) -> bool:
    """Whether ``checkpoint`` is the run's in ``out``: one of its checkpoints, or the one its last --export-only
    exported (its summary.json says)."""
    ckpt = Path(checkpoint).expanduser().resolve()
    if ckpt.parent == (out / "checkpoints").resolve():
        return True
    if (out / "config.json").is_file():
        return False
    try:
        # a summary written before it recorded the checkpoint (no key) cannot tell: allowed, as it was
        return json.loads((out / "summary.json").read_text()).get("export_only", str(ckpt)) == str(ckpt)
    except (OSError, ValueError, AttributeError):
        return False


def _keep_run_record(out: Path, result: ThreeDResult, stage2: Path, stage3: Path) -> None:
    """An --export-only into the folder of the run it exports keeps that run's image, mask, checkpoints and stages in
    the summary it rewrites (they were written as none: the run's record was lost)."""
    for name, attr in (("image.png", "image_path"), ("mask.png", "mask_path")):
        if (out / name).is_file():
            setattr(result, attr, out / name)
    for stage, path in (("zero123", stage2), ("refine", stage3)):
        if path.is_file():
            result.checkpoints[stage] = path
    try:
        result.stages_run = list(json.loads((out / "summary.json").read_text()).get("stages_run") or [])
    except (OSError, ValueError):
        pass


def _has_results(out: Path) -> bool:
    """Whether a run folder holds anything a run made: checkpoints, meshes or a summary."""
    return (out / "summary.json").is_file() or any((out / "mesh").glob("model.*")) or \
        any((out / "checkpoints").glob("*.safetensors"))


def changed_settings(out: Path, cfg: ThreeDConfig, finished_only: bool = True) -> list[str]:
    """The settings of ``cfg`` (resolved) that differ from those the run in ``out`` made its finished stages with
    (its ``config.json``): what a resume of it, or of a batch holding it, must refuse. ``finished_only=False``: those
    of every stage, run or still to run."""
    old = ThreeDConfig.load(out / "config.json")
    # a run recorded before paths were made absolute: its relative paths as it read them, from here
    # and its prompt as given (a padded " a vase " was recorded so; the config now strips it, and the resume of such
    # a run was refused as a different --prompt)
    old = replace(old, image=absolute_path(old.image), mask=absolute_path(old.mask),
                  depth=old.depth if old.depth in DEPTH_MODES else absolute_path(old.depth),
                  prompt=check_prompt(old.prompt), **{k: model_ref(getattr(old, k)) for k in MODEL_FLAGS})
    # the elevation the run used, given or the preset's (--elevation 5 on a run that took the preset's 5 was refused)
    old, cfg = (replace(c, elevation=_ref_elevation(c)) for c in (old, cfg))
    keys = list(_RESUME_KEYS)
    if _stage1_done(out) and not cfg.image:  # the in-domain image of stage 1 is reused
        keys += ["image_steps", "image_domain_weight", "sd_model", "domain_model"]
    if (out / "checkpoints" / "stage2-zero123.safetensors").exists():
        keys += ["zero123", "zero123_model", "nerf", "camera", "depth", "depth_model"]
    if (out / "checkpoints" / "stage3-refine.safetensors").exists():
        keys += ["refine", "sd_model", "domain_model"]
    if not finished_only:
        keys += ["image_steps", "image_domain_weight", "sd_model", "domain_model", "zero123", "zero123_model", "nerf",
                 "camera", "depth", "depth_model", "refine", "export"]
    keys = list(dict.fromkeys(keys))
    changed = {name for k in keys for name in _changed(_flat(getattr(old, k), k), _flat(getattr(cfg, k), k))}
    if "depth" in changed and "off" in (old.depth, cfg.depth):  # --depth off sets the depth weights to 0 itself
        changed -= {f"{st}.{w}" for st in STAGES for w in ("lambda_ref_depth", "lambda_view_depth")}
    return sorted(changed)


def _ref_elevation(cfg: ThreeDConfig):
    """The reference view's elevation a config makes (``--elevation``, else its preset's camera)."""
    try:
        return float((cfg.camera or cfg.resolved().camera).ref_elevation)
    except (ValueError, TypeError, AttributeError):
        return cfg.elevation


# the settings of config.json that a flag of ``3d`` sets, by the flag's name (the others: a --config file's keys)
_FLAGS = {"zero123.steps": "--zero123-steps", "refine.steps": "--refine-steps",
          "zero123.lambda_ref_depth": "--depth-weight", "zero123.lambda_view_depth": "--view-depth-weight",
          "zero123.zero123_guidance_scale": "--zero123-guidance", "refine.zero123_guidance_scale": "--zero123-guidance",
          "export.resolution": "--mesh-resolution", "export.threshold": "--threshold", "nerf.geometry": "--geometry",
          "refine.lambda_zero123": "--refine-zero123-weight", "refine.domain_weight": "--domain-weight",
          "refine.control_weight": "--control-weight", "refine.guidance_rule": "--guidance-rule",
          "zero123.lambda_depth_smooth": "--depth-smooth", "zero123.shading": "--shading",
          "export.smooth": "--mesh-smooth", "export.decimate": "--decimate", "export.height_m": "--height-m",
          "export.texture": "--no-texture", "export.texture_size": "--texture-size",
          "export.project_reference": "--no-project-reference", "export.side_views": "--side-views"}


_FLAGS.update({k: "--" + k.replace("_", "-") for k in (
    "prompt", "domain", "preset", "image", "mask", "seed", "mask_method", "elevation", "image_steps",
    "image_domain_weight", "sd_model", "domain_model", "zero123_model", "depth", "depth_model")})


def setting_names(changed: list[str]) -> list[str]:
    """The names of :func:`changed_settings` as a user gave them: ``--zero123-steps`` for ``zero123.steps``,
    ``--image-steps`` for ``image_steps``; the others (no flag sets them) as their ``--config`` keys."""
    return list(dict.fromkeys(_FLAGS.get(k, k) for k in changed))  # a flag that sets two keys, once


def check_config(cfg: ThreeDConfig) -> None:
    """What :func:`run_text_to_3d` checks before it touches the output folder or loads a model (one sentence per
    problem): a batch checks every run's config this way before the first run starts."""
    _check_request(cfg)


def _flat(value, name: str) -> dict:
    """A setting as ``{dotted name: value}`` (a stage's config as its fields)."""
    if is_dataclass(value):
        return {f"{name}.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in asdict(value).items()}
    return {name: list(value) if isinstance(value, tuple) else value}


def _changed(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _create_output(out: Path, cfg: ThreeDConfig) -> ThreeDResult:
    config_path = out / "config.json"
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    if not cfg.export_only:
        saved = replace(cfg, resume=False, threads=torch.get_num_threads())  # the count it computes at
        write_text_atomic(config_path, json.dumps(saved.to_dict(), indent=2))
    return ThreeDResult(output_dir=out, image_path=None, mask_path=None, config_path=config_path)


def _check_prompt_tokens(pipe, prompt: str) -> None:
    if not prompt:
        return
    tok = pipe.tokenizer
    n = len(tok(prompt).input_ids) - 2
    limit = tok.model_max_length - 2
    if n > limit:
        raise ValueError(f"the prompt is {n} tokens long but SD1.5 reads at most {limit}: shorten it")


def _needs_depth(cfg: ThreeDConfig, stage2_ckpt: Path, stage3_ckpt: Path, weight: str = "lambda_ref_depth") -> bool:
    """Whether a stage still to run reads the reference's depth (or, with ``weight="lambda_view_depth"``, the depth
    model's reading of its random views)."""
    return cfg.depth != "off" and any(st.steps > 0 and getattr(st, weight) > 0 and not ckpt.exists()
                                      for st, ckpt in ((cfg.zero123, stage2_ckpt), (cfg.refine, stage3_ckpt)))


def _view_depth(estimator, stage):
    """The random views' depth for ``stage.lambda_view_depth``: the estimator's nearness of each render, read at the
    stage's reference resolution (the size the reference's own depth is estimated at); None where it is off."""
    if estimator is None or not stage.lambda_view_depth:
        return None
    return lambda rgb: estimator.nearness(rgb, stage.ref_resolution)


def _with_depth(reference: Reference, cfg: ThreeDConfig, estimator, out: Path) -> Reference:
    """The reference with its relative depth: the user's depth image (of ``out/mask.png``'s image) framed as the
    reference view, or the ``estimator``'s depth of the reference view at stage 2's reference resolution (None: the
    config's depth model, loaded here). Written to
    ``out/reference-depth.png`` (16 bit, bright = near, normalised over the object) for the user to look at."""
    with Image.open(out / "reference-mask.png") as im:
        ref_mask = im.convert("L")
    if cfg.depth == "auto" and estimator is None:
        estimator = load_depth_estimator(cfg.depth_model or depth_ref(cfg.preset), device=reference.rgb.device)
    if cfg.depth == "auto":
        size = min(cfg.zero123.ref_resolution, ref_mask.width)
        with Image.open(out / "reference.png") as im:
            near = estimator(im.convert("RGB").resize((size, size), Image.BOX))
        mask = np.asarray(ref_mask.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    else:
        with Image.open(out / "mask.png") as im:
            user_mask = im.convert("L")
        near = reference_depth(read_nearness(cfg.depth, user_mask.size), user_mask, ref_mask.width)
        mask = np.asarray(ref_mask, dtype=np.float32) / 255.0
    on = mask > 0.5
    if not on.any() or float(np.ptp(near[on])) <= 1e-6 * max(1.0, float(np.abs(near[on]).max())):
        raise ValueError(f"the reference depth ({'estimated' if cfg.depth == 'auto' else cfg.depth}) is flat over the "
                         f"object: pass a depth image with the object's relief, another --depth-model, or --depth off")
    image = nearness_image(near, mask)
    save_image_atomic(image, out / "reference-depth.png")
    near01 = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535.0)[None, None]
    return Reference(reference.rgb, reference.mask, (1.0 - near01).to(reference.rgb.device))


def _load_reference(rgb_path: Path, mask_path: Path, device):
    with Image.open(rgb_path) as im:
        rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with Image.open(mask_path) as im:
        mask = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return Reference(rgb.to(device), mask.to(device))
