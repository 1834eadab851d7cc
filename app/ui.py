"""The gradio page: Generate, Edit, 3D and Domains tabs over the functions of :mod:`app.core` and
the jobs of :mod:`app.runs`.

Jobs that run models share one queue (``concurrency_id="models"``, ``--max-jobs`` at a time, 1 by default) and
each loaded model has its own lock, so two users never run models side by side and exhaust memory. Every job
reports real progress (steps done / total; gradio adds the ETA) and has a Cancel button. Uploaded images go
through :func:`checked_image`, which refuses empty, non-image, oversized and over-large files with one sentence
shown in the page.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from suite import images
from suite.checks import AUTO, Progress, UserError, format_weight
from suite.control import canny
from suite.domains import PRESETS, Domain, get_domain
from suite.failures import explain
from suite.presets import get_preset
from suite.rules import format_rule, parse_rule
from training.config import TrainConfig

from . import core, runs
from .core import AppConfig, JobCancelled, PipelineCache

log = logging.getLogger("app")

MODELS = "models"  # the queue every model-running job waits in
LIGHT = dict(concurrency_id="light", concurrency_limit=4)  # previews and checks: no models, short


# ----------------------------------------------------------------------------------------------------------
# checked uploads
def _check_filedata(payload, what: str, cfg: AppConfig, keep_alpha: bool = False):
    import base64

    try:
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            source = base64.b64decode(url.split(",", 1)[1])
        elif getattr(payload, "path", None):
            source = _uploaded_path(payload.path, what)
        else:
            raise UserError(f"the {what} upload is empty: upload a PNG, JPEG or WebP image")
        return images.open_upload(source, what, cfg.max_megapixels, int(cfg.max_upload_mb * 2**20), keep_alpha)
    except UserError as err:
        raise gr.Error(str(err), title="Upload refused", print_exception=False) from None


def _uploaded_path(path: str, what: str) -> str:
    """A file path sent by the client must be a file uploaded to this app (gradio's upload folder): the API could
    otherwise name any file on the server (``/etc/passwd``, someone's photos) and have the app read it."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    if not is_in_or_equal(Path(path).resolve(), Path(get_upload_folder()).resolve()):
        raise UserError(f"the {what} must be a file uploaded to this app, not a path on the server: upload it again")
    return path


def checked_image(cfg: AppConfig, what: str, keep_alpha: bool = False, **kwargs) -> gr.Image:
    """A ``gr.Image`` whose uploads are checked by :func:`images.open_upload` before any handler sees them.

    Handlers receive an RGB PIL image (EXIF orientation applied; RGBA with ``keep_alpha`` when the file has
    transparency, as a mask needs) or None. A refused upload (empty, not an image,
    not PNG/JPEG/WebP, too large in bytes or pixels) raises ``gr.Error`` with one sentence, which the page shows;
    the app keeps serving. (The check replaces this instance's ``preprocess``: subclassing a gradio component
    would make gradio write a ``.pyi`` stub next to this file at import time.)
    """
    comp = gr.Image(type="pil", image_mode=None, sources=["upload", "clipboard"], **kwargs)

    def preprocess(payload):
        return None if payload is None else _check_filedata(payload, what, cfg, keep_alpha)

    comp.preprocess = preprocess
    return comp


def mask_editor(cfg: AppConfig, **kwargs) -> gr.ImageEditor:
    """A ``gr.ImageEditor`` to paint a mask on, with the same checks on every image it receives."""
    comp = gr.ImageEditor(type="pil", sources=(), layers=False, transforms=(),
                          brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"), **kwargs)
    original = comp.preprocess

    def preprocess(payload):
        if payload is not None and payload.id is None:
            for part in [payload.background, payload.composite, *payload.layers]:
                if part is not None:
                    _check_filedata(part, "mask drawing", cfg)
        return original(payload)

    comp.preprocess = preprocess
    return comp


# ----------------------------------------------------------------------------------------------------------
# errors and progress
def with_warnings(status: str, warnings) -> str:
    """A job's status line with the warnings the CLI would have logged for it (a prompt the mini world's models
    cannot read, an object cut by the frame), one line each: the page showed none of them."""
    return status + "".join(f"\n\n**warning:** {w}" for w in dict.fromkeys(warnings or ()))


def friendly(fn):
    """Expected failures (:func:`suite.failures.explain`) become one sentence in the page (``gr.Error``); anything
    else is logged with its traceback and reported as unexpected. The app keeps serving either way. A generator
    function (a job relayed from its thread, :func:`_relay`) stays one, so that gradio streams it."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def run_generator(*args, **kwargs):
            try:
                return (yield from fn(*args, **kwargs))
            except Exception as err:  # noqa: BLE001 - see _as_page_error
                _as_page_error(err)

        return run_generator

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - see _as_page_error
            _as_page_error(err)

    return run


def _as_page_error(err: Exception):
    """Raise ``err`` as the page shows it: a ``gr.Error`` as it is, a cancel or an expected failure as one sentence,
    anything else logged with its traceback (a bug must not take the app down) and reported as unexpected."""
    if isinstance(err, gr.Error):
        raise err
    if isinstance(err, JobCancelled):
        raise gr.Error("cancelled: nothing was saved", title="Cancelled", print_exception=False) from None
    msg = explain(err)
    if msg is not None:  # an expected failure: its sentence, and no traceback in the server's log either
        raise gr.Error(msg, print_exception=False) from None
    log.error("job failed", exc_info=err)  # the traceback, once
    raise gr.Error(f"the job failed unexpectedly ({type(err).__name__}: {err}); the app's log has details",
                   print_exception=False) from None


def _relay(job: runs.ThreadJob, cancel_flag, report: Progress, outputs: int, show=None):
    """Generator for an event handler whose job runs in its own thread (:class:`runs.ThreadJob`): each of the job's
    progress reports goes to ``report`` and yields ``show(event)`` (default: no change to the ``outputs``
    components), and the job's result is returned (its error raised) once it has ended.

    A plain handler's job ran on in gradio's worker thread to its last step and saved its results when the request
    was cancelled through the API or its client went away. Here gradio closes the generator (between two items:
    one comes at least every half second), and closing it sets the job's cancel flag: the job stops at its next
    report. It is not waited for here: gradio closes the generator in its event loop, which would freeze every page
    until then (a long step, a model loading); the next model job waits for it instead (the job's ``gate``)."""
    try:
        for event in job.events(heartbeat=True):  # a cancel closes the generator within half a second, mid-step too
            if event is None:
                yield (gr.skip(),) * outputs
                continue
            report(*event)
            yield show(event) if show is not None else (gr.skip(),) * outputs
    finally:
        if job.running():
            cancel_flag.set()
    if job.error is not None:
        raise job.error
    return job.result


def gradio_progress(progress: gr.Progress) -> Progress:
    """``progress(stage, done, total, info)`` shown as gradio's progress bar (steps done / total, ETA)."""

    def report(stage: str, done: int, total: int, info: dict) -> None:
        desc = stage if "loss" not in info else f"{stage} (loss {float(info['loss']):.4g})"
        progress((int(done), max(int(total), 1)), desc=desc, unit="steps")

    return report


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _weight(auto: bool, value) -> float | str:
    """A form's weight: ``"auto"`` (the paper's rule) when its box is ticked, else the slider's number."""
    return AUTO if auto or value is None else float(value)


def _dropdown_update(cfg: AppConfig):
    return gr.update(choices=core.list_domain_names(cfg))


# ----------------------------------------------------------------------------------------------------------
def build_app(cfg: AppConfig) -> gr.Blocks:
    """The whole page. Launch it with :func:`launch`."""
    cache = PipelineCache(cfg)
    jobs = core.Jobs(cfg.max_jobs)
    domains = core.list_domain_names(cfg)
    # delete_cache: the copies of uploads gradio serves (OUTPUT/.uploads) go after a day, and all of this server's at
    # a clean end; gradio tracks only those, so the copies of results are swept by app.core.ServedCopies (docs/app.md)
    with gr.Blocks(title="In-domain generation", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("## In-domain generation\nMulti-guidance diffusion (SD1.5 + a null-text domain model): "
                    "`eps = eps_sd + w_d (eps_d - eps_sd) + w_c (eps_c - eps_sd)` (paper Eq. 3). "
                    + ("**Tiny preset:** random offline models, so images are noise; the flow is real."
                       if get_preset(cfg.preset).random_weights else ""))
        dropdowns = []
        with gr.Tab("Generate", id="generate"):
            dropdowns.append(_generate_tab(cfg, cache, jobs, domains))
        with gr.Tab("Edit", id="edit"):
            dropdowns.append(_edit_tab(cfg, cache, jobs, domains))
        with gr.Tab("3D", id="3d"):
            dropdowns.append(_threed_tab(cfg, cache, jobs, domains))
        with gr.Tab("Domains", id="domains"):
            _domains_tab(cfg, jobs, [d for d in dropdowns if d is not None])
        live = [d for d in dropdowns if d is not None]

        def refresh():
            ups = [_dropdown_update(cfg) for _ in live]
            return ups[0] if len(ups) == 1 else ups

        demo.load(refresh, outputs=live, queue=False, api_visibility="private")
    demo._suite_cache = cache  # tests look at what is loaded
    demo._suite_jobs = jobs  # app.main stops them when the server stops
    return demo


def _weights_row(label: str, name: str, prefix: str, recommended: float | None = None):
    """An "automatic" checkbox and a weight slider; with a ``recommended`` weight (the mini preset's porcelain),
    the slider starts there and the checkbox unticked, as the CLI uses it when no weight is given."""
    with gr.Row():
        auto = gr.Checkbox(value=recommended is None, label=f"automatic {name}", elem_id=f"{prefix}-auto",
                           info="the paper's rule (Sec. 3.4): w0/2 * |eps_sd| / |eps_i|, w0 = 7")
        value = gr.Slider(0.0, 15.0, value=2.5 if recommended is None else recommended, step=0.1, label=label,
                          interactive=recommended is not None, elem_id=prefix)
    auto.change(lambda a: gr.update(interactive=not a), auto, value, queue=False, api_visibility="private")
    return auto, value


def _rule_box(recommended, prefix: str):
    """The guidance rule (suite.rules), starting at the domain's recommended one; left as it is (or emptied), the
    pipeline applies the recommendation as for the CLI (only to requests it fits: with a prompt, on the mini
    porcelain); 'paper' for the paper's Eq. 3 alone."""
    return gr.Textbox(format_rule(parse_rule(recommended.rule)) if recommended.rule else "paper",
                      label="guidance rule", elem_id=f"{prefix}-rule",
                      info="e.g. 'domain=0-0.7, control=0.5-1' (a term only at those noise levels, 0 clean .. 1 "
                           "noise), 'project=domain:control', 'clamp=0.5'; 'paper' for none")


def _rule(text, cfg: AppConfig, domain: str | None = None):
    """The form's rule for the pipeline: ``None`` (the domain's recommendation, as the CLI) when the box is empty or
    still shows the recommended rule; else the text, checked by the pipeline."""
    text = (text or "").strip()
    rec = _recommended(cfg, domain).rule
    if not text or (rec and text == format_rule(parse_rule(rec))):
        return None
    return text


def _recommended(cfg: AppConfig, domain: str | None = None):
    """A domain (the preset's default when not given) as the preset ships it: the forms show its recommended weights
    (the mini world's porcelain and face have them; a domain without them is on "automatic"), rule and framing, as
    the CLI uses them when none are given. A domain of your own has the preset's for one (the mini world's: the
    porcelain preset's weights and rule; with real weights: automatic, no rule) and the whole photo."""
    preset = get_preset(cfg.preset)
    name = domain or preset.default_domain
    if name in PRESETS:
        return preset.domain_defaults(get_domain(name))
    return preset.own_domain_defaults(Domain(name=str(name), prompt=""))


def _follow_domain(cfg: AppConfig, domain, auto_wd, wd, auto_wc, wc, rule, whole=None):
    """The form's weights, rule (and, on the Edit tab, whole-image framing) follow the chosen domain's
    recommendations: they kept the first domain's (porcelain's w_c = 7 on face, whose recommended w_c is 5; face
    photos edited whole, porcelain's way)."""
    boxes = [auto_wd, wd, auto_wc, wc, rule] + ([whole] if whole is not None else [])

    def follow(name):
        rec = _recommended(cfg, name)
        ups = []
        for weight in (rec.domain_weight, rec.control_weight):
            ups += [gr.update(value=weight is None), gr.update(value=2.5 if weight is None else weight,
                                                                 interactive=weight is not None)]
        ups.append(gr.update(value=format_rule(parse_rule(rec.rule)) if rec.rule else "paper"))
        if whole is not None:
            ups.append(gr.update(value=rec.framing == "whole"))
        return ups

    domain.change(follow, domain, boxes, queue=False, api_visibility="private")


def _cancel_button(jobs: core.Jobs, elem_id: str, tab: str):
    btn = gr.Button("Cancel", variant="stop", elem_id=elem_id)

    def cancel(request: gr.Request):
        jobs.cancel(session_of(request), tab)  # this tab's job only

    return btn, cancel


def _example_prompt(cfg: AppConfig) -> str:
    """The prompts' placeholder: the mini world's captions always name the face (its models read "wearing glasses"
    alone poorly: docs/mini-world.md, "Face editing on the mini preset")."""
    return "a photo of a face wearing a hat" if get_preset(cfg.preset).small_vocabulary else "wearing glasses"


# ----------------------------------------------------------------------------------------------------------
def _generate_tab(cfg: AppConfig, cache: PipelineCache, jobs: core.Jobs, domains: list[str]):
    with gr.Row():
        with gr.Column(scale=2):
            domain = gr.Dropdown(domains, value=domains[0], label="domain", allow_custom_value=True,
                                 elem_id="gen-domain")
            prompt = gr.Textbox("", label="prompt (control text; empty = unconditional in-domain)",
                                placeholder=f"e.g. {_example_prompt(cfg)}", elem_id="gen-prompt")
            negative = gr.Textbox("", label="negative prompt", elem_id="gen-negative")
            rec = _recommended(cfg, domain.value)
            auto_wd, wd = _weights_row("domain weight w_d", "w_d", "gen-wd", rec.domain_weight)
            auto_wc, wc = _weights_row("control weight w_c", "w_c", "gen-wc", rec.control_weight)
            rule = _rule_box(rec, "gen")
            _follow_domain(cfg, domain, auto_wd, wd, auto_wc, wc, rule)
            # hidden where the preset has no ControlNet (mini): its upload could only fail at Generate
            with gr.Accordion("ControlNet (optional)", open=False, elem_id="gen-controlnet",
                              visible=get_preset(cfg.preset).controlnet() is not None):
                with gr.Row():
                    control = checked_image(cfg, "control image", label="control image", elem_id="gen-control")
                    preview = gr.Image(label="canny edges (what ControlNet sees)", interactive=False,
                                       elem_id="gen-canny")
                use_canny = gr.Checkbox(value=True, label="compute canny edges of the control image")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="gen-seed")
                steps = gr.Slider(1, cfg.max_steps, value=cfg.default_steps, step=1, label="steps (DPM-Solver++)",
                                  elem_id="gen-steps")
                num = gr.Slider(1, cfg.max_images, value=1, step=1, label="number of images", elem_id="gen-num")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                cancel_btn, cancel = _cancel_button(jobs, "gen-cancel", "generate")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="results (newest first; caption = the settings that made it)",
                                 columns=2, elem_id="gen-gallery", format="png")
            used = gr.Markdown("weights: automatic until the first run", elem_id="gen-weights")
    history = gr.State([])

    @friendly
    def canny_preview(image, on):
        if image is None or not on:
            return None

        return canny(runs.center_crop_square(image))

    @friendly
    def generate(domain, prompt, negative, auto_wd, wd, auto_wc, wc, rule=None, control=None, use_canny=True,
                 seed=0, steps=25, num=1, history=None, request: gr.Request = None, progress=gr.Progress()):
        cancel_flag = jobs.start(session_of(request), "generate")
        req = runs.GenerateRequest(domain=domain, prompt=prompt or "", negative_prompt=negative or "",
                                   domain_weight=_weight(auto_wd, wd), control_weight=_weight(auto_wc, wc),
                                   guidance_rule=_rule(rule, cfg, domain), control_image=control, canny=bool(use_canny),
                                   seed=seed, steps=steps, num_images=num)
        job = runs.ThreadJob(lambda report: runs.run_generate(cache, req, report), name="generate",
                             cancel_flag=cancel_flag, gate=jobs.gate)
        res = yield from _relay(job, cancel_flag, gradio_progress(progress), 3)
        items = [(str(p), c) for p, c in zip(res.paths, res.captions)] + list(history or [])
        items = items[:24]
        names = {"domain": "w_d", "control": "w_c"}
        text = ", ".join(f"{names.get(k, k)} = {format_weight(v)}"
                         + (" (auto)" if names.get(k) in res.settings["automatic"] else "")
                         for k, v in res.weights.items())
        yield items, with_warnings(f"weights used: {text or 'none (no guidance terms)'} · saved in "
                                   f"`{res.paths[0].parent}`", res.warnings), items

    # Queued (not queue=False) so that a refused upload's gr.Error shows its sentence in the page.
    control.change(canny_preview, [control, use_canny], preview, api_visibility="private", **LIGHT)
    use_canny.change(canny_preview, [control, use_canny], preview, api_visibility="private", **LIGHT)
    ev = run.click(generate, [domain, prompt, negative, auto_wd, wd, auto_wc, wc, rule, control, use_canny, seed,
                              steps, num, history], [gallery, used, history], api_name="generate",
                   concurrency_id=MODELS, concurrency_limit=cfg.max_jobs)
    cancel_btn.click(cancel, None, None, cancels=[ev], queue=False, api_visibility="private")
    return domain


# ----------------------------------------------------------------------------------------------------------
def _edit_tab(cfg: AppConfig, cache: PipelineCache, jobs: core.Jobs, domains: list[str]):
    with gr.Row():
        with gr.Column(scale=2):
            photo = checked_image(cfg, "photo", keep_alpha=True,  # edited as the CLI does: transparency kept
                                  label="photo", elem_id="edit-photo")
            domain = gr.Dropdown(domains, value="face" if "face" in domains else domains[0], label="domain",
                                 allow_custom_value=True, elem_id="edit-domain")
            prompt = gr.Textbox("", label="prompt (the edit)", placeholder=f"e.g. {_example_prompt(cfg)}",
                                elem_id="edit-prompt")
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="strength (0 = unchanged, 1 = redraw)",
                                 elem_id="edit-strength")
            with gr.Accordion("mask (optional: only the masked region changes)", open=False):
                drawn = mask_editor(cfg, label="draw the region to change", elem_id="edit-draw")
                mask_file = checked_image(cfg, "mask", keep_alpha=True, elem_id="edit-mask",
                                          label="or upload a mask (white or opaque = change)")
            landmarks = gr.File(label="landmarks (optional JSON, instead of detecting the faces: "
                                      "{\"faces\": [{\"eye_left\": [x, y], \"eye_right\": ..., \"mouth_left\": ..., "
                                      "\"mouth_right\": ...}]}; the mini world writes one beside each face photo)",
                                file_types=[".json"], elem_id="edit-landmarks")
            with gr.Row():
                all_faces = gr.Checkbox(False, label="edit every face (else the largest)")
                whole = gr.Checkbox(_recommended(cfg, domain.value).framing == "whole",
                                    label="edit the whole image (no face detection)")
            rec = _recommended(cfg, domain.value)
            auto_wd, wd = _weights_row("domain weight w_d", "w_d", "edit-wd", rec.domain_weight)
            auto_wc, wc = _weights_row("control weight w_c", "w_c", "edit-wc", rec.control_weight)
            rule = _rule_box(rec, "edit")
            _follow_domain(cfg, domain, auto_wd, wd, auto_wc, wc, rule, whole)
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                steps = gr.Slider(1, cfg.max_steps, value=cfg.default_steps, step=1, label="steps")
                num = gr.Slider(1, cfg.max_images, value=1, step=1, label="variations")
            with gr.Row():
                run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                cancel_btn, cancel = _cancel_button(jobs, "edit-cancel", "edit")
        with gr.Column(scale=3):
            with gr.Row():
                faces = gr.Image(label="detected face box", interactive=False, elem_id="edit-faces")
                edited = gr.Gallery(label="edited photo", columns=1, elem_id="edit-result", format="png")
            files = gr.File(label="download", file_count="multiple", interactive=False, elem_id="edit-files")
            status = gr.Markdown("", elem_id="edit-status")

    def to_editor(image):
        if image is None:
            return None
        small = image.copy()
        small.thumbnail((768, 768))
        return {"background": small, "layers": [], "composite": small}

    @friendly
    def edit(photo, domain, prompt, strength, drawn=None, mask_file=None, all_faces=False, whole=False, auto_wd=True,
             wd=2.5, auto_wc=True, wc=2.5, rule=None, seed=0, steps=25, num=1, landmarks=None,
             request: gr.Request = None, progress=gr.Progress()):
        cancel_flag = jobs.start(session_of(request), "edit")
        mask = _mask_from(drawn, mask_file, photo)
        guidance_rule = _rule(rule, cfg, domain)
        job = runs.ThreadJob(lambda report: runs.run_edit(
            cache, domain=domain, photo=photo, prompt=prompt or "", strength=strength,
            domain_weight=_weight(auto_wd, wd), control_weight=_weight(auto_wc, wc), guidance_rule=guidance_rule,
            mask=mask, all_faces=all_faces, whole_image=whole, num_images=num, seed=seed, steps=steps,
            progress=report, landmarks=landmarks), name="edit", cancel_flag=cancel_flag, gate=jobs.gate)
        res = yield from _relay(job, cancel_flag, gradio_progress(progress), 4)
        boxes = ", ".join(str(b) for b in res["boxes"]) or "none (whole image or mask)"
        yield (str(res["faces"]), [str(p) for p in res["paths"]], [str(p) for p in res["paths"]],
               with_warnings(f"face boxes: {boxes} · output {res['size'][0]}x{res['size'][1]}", res["warnings"]))

    photo.change(friendly(to_editor), photo, drawn, api_visibility="private", **LIGHT)
    ev = run.click(edit, [photo, domain, prompt, strength, drawn, mask_file, all_faces, whole, auto_wd, wd, auto_wc,
                          wc, rule, seed, steps, num, landmarks], [faces, edited, files, status], api_name="edit",
                   concurrency_id=MODELS, concurrency_limit=cfg.max_jobs)
    cancel_btn.click(cancel, None, None, cancels=[ev], queue=False, api_visibility="private")
    return domain


def _mask_from(drawn, mask_file, photo):
    """The user's mask as an 'L' image at the photo's size (255 = change): an upload wins over a drawing."""
    import numpy as np
    from PIL import Image

    if photo is None:
        return None
    if mask_file is not None:  # the CLI's rule (suite.images.read_mask): white or opaque = change, gray blends;
        m = images.read_mask(mask_file, photo.size, "mask")  # resized, never stretched; a small region is kept
    else:
        layers = (drawn or {}).get("layers") or []
        alphas = [np.asarray(la.convert("RGBA"))[..., 3] > 0 for la in layers if la is not None]
        if not alphas or not any(a.any() for a in alphas):
            return None
        m = np.logical_or.reduce(alphas).astype(np.float32)
    m = np.rint(m * 255).astype(np.uint8)
    if not m.any():
        raise UserError("the mask is empty (all black): paint or upload the region to change in white")
    return Image.fromarray(m, "L").resize(photo.size, Image.NEAREST)


# ----------------------------------------------------------------------------------------------------------
def _threed_tab(cfg: AppConfig, cache: PipelineCache, jobs: core.Jobs, domains: list[str]):
    skip = {"prompt", "domain", "preset", "output", "image", "mask", "device", "dtype", "sd_model",
            "domain_model", "zero123_model", "resume", "export_only",
            "allow_large"}  # the server's limits are the operator's (AppConfig), not a web user's to lift
    fields = runs.threed_fields(cfg.preset, skip)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox("", label="prompt", placeholder="e.g. a vase with dragons", elem_id="3d-prompt")
            domain = gr.Dropdown(domains, value="porcelain" if "porcelain" in domains else domains[0],
                                 label="domain", allow_custom_value=True, elem_id="3d-domain")
            image = checked_image(cfg, "object image", keep_alpha=True,  # a cut-out: its alpha masks the object
                                  label="or start from your image (skips stage 1)", elem_id="3d-image")
            with gr.Accordion("stage settings", open=False):
                widgets = _settings_widgets(fields)
            with gr.Row():
                run = gr.Button("Make 3D", variant="primary", elem_id="3d-run")
                cancel_btn, cancel = _cancel_button(jobs, "3d-cancel", "3d")
        with gr.Column(scale=3):
            with gr.Row():
                stage1 = gr.Image(label="stage 1: in-domain image", interactive=False, elem_id="3d-stage1")
                preview = gr.Image(label="preview: the exported mesh turning round", interactive=False, elem_id="3d-preview")
            video = gr.Video(label="preview: the exported mesh turning round", visible=False, interactive=False)
            model = gr.Model3D(label="mesh", elem_id="3d-model")
            files = gr.File(label="download GLB / OBJ / PLY", file_count="multiple", interactive=False,
                            elem_id="3d-files")
            status = gr.Markdown("", elem_id="3d-status")

    @friendly
    def make(prompt="", domain="porcelain", image=None, request: gr.Request = None, progress=gr.Progress(),
             **values):
        cancel_flag = jobs.start(session_of(request), "3d")
        settings = _settings_values(fields, values)
        job = runs.ThreadJob(lambda report: runs.run_3d(cfg, prompt=prompt, domain=domain, image=image,
                                                        settings=settings, progress=report, cache=cache),
                             name="3d", cancel_flag=cancel_flag, gate=jobs.gate)
        res = yield from _relay(job, cancel_flag, gradio_progress(progress), 6)
        meshes = {k: Path(v) for k, v in res.mesh_paths.items()}
        downloads = []
        for p in meshes.values():
            downloads.append(str(p))
            if p.suffix.lower() == ".obj":  # the OBJ's material and texture travel with it
                downloads += [str(q) for q in sorted(p.parent.glob(f"{p.stem}*"))
                              if q.suffix.lower() in (".mtl", ".png") and str(q) not in downloads]
            coloured = p.parent / f"{p.stem}-vertex-colors.glb"
            if p.suffix.lower() == ".glb" and coloured.is_file():  # for tools that read only vertex colours
                downloads.append(str(coloured))
        prev = res.preview_path
        is_video = prev is not None and Path(prev).suffix.lower() in (".mp4", ".webm")
        glb = meshes.get("glb")
        yield (str(res.image_path) if res.image_path else None,
               None if is_video or prev is None else str(prev),
               gr.update(value=str(prev) if is_video else None, visible=is_video),
               str(glb) if glb else None, downloads,
               with_warnings("mesh: " + (", ".join(f"`{p}`" for p in meshes.values()) or "none written"),
                             res.warnings))

    ev = run.click(make, [prompt, domain, image], [stage1, preview, video, model, files, status],
                   inputs_kwargs=widgets, api_name="make_3d", concurrency_id=MODELS, concurrency_limit=cfg.max_jobs)
    cancel_btn.click(cancel, None, None, cancels=[ev], queue=False, api_visibility="private")
    return domain


# ----------------------------------------------------------------------------------------------------------
def _domains_tab(cfg: AppConfig, jobs: core.Jobs, dropdowns: list):
    headers = ["domain", "domain prompt", "what it is", "model comes from", "status"]
    table = gr.Dataframe(core.domain_rows(cfg), headers=headers, interactive=False, elem_id="domains-table",
                         label="known domains")
    refresh = gr.Button("Refresh", size="sm")
    gr.Markdown("### Train your own domain\nA folder of unlabeled images (jpg/png/webp, any size) is all it takes "
                "(paper Sec. 3.3). Training a full SD1.5 domain takes a GPU and hours: run the command below on "
                "such a machine; the result loads with `--domain-model FOLDER`.")
    with gr.Row():
        name = gr.Textbox("mydomain", label="domain name", elem_id="train-name")
        data = gr.Textbox("", label="image folder on this machine", placeholder="/path/to/images", elem_id="train-data")
    command = gr.Code(core.train_command(cfg, "mydomain", ""), language="shell", label="command",
                      elem_id="train-command", interactive=False)

    def show_command(name, data):
        return core.train_command(cfg, name, data)

    name.change(show_command, [name, data], command, queue=False, api_name="train_command")
    data.change(show_command, [name, data], command, queue=False, api_visibility="private")
    refresh.click(lambda: core.domain_rows(cfg), None, table, queue=False, api_name="domains")

    can_run = _can_train_here(cfg)
    if can_run is not None:
        gr.Markdown(f"Training from this page: {can_run}. Use the command above.", elem_id="train-missing")
        return
    skip = {"domain", "data", "output", "preset", "device", "dtype", "sd_model", "resume", "seed"}
    fields = runs.settings_fields(TrainConfig.for_preset(cfg.preset), skip)
    with gr.Accordion("training settings", open=False):
        widgets = _settings_widgets(fields)
    roots = ", ".join(f"`{r}`" for r in cfg.data_roots) or "none (start the app with `--data-root FOLDER`)"
    gr.Markdown(f"Runs here write to `{cfg.output_dir / 'domains'}/NAME`, and the domain appears in the other tabs. "
                f"Image folders this app may read: {roots}.")
    with gr.Row():
        run = gr.Button("Start training here", variant="primary", elem_id="train-run")
        cancel_btn, cancel = _cancel_button(jobs, "train-cancel", "train")
    status = gr.Markdown("", elem_id="train-status")
    plot = gr.LinePlot(x="step", y="loss", title="training loss", elem_id="train-loss", height=260)

    @friendly
    def start(name="mydomain", data="", request: gr.Request = None, progress=gr.Progress(), **values):
        """Generator: the run goes on in its own thread; the loss curve and status follow its reports."""
        import pandas as pd

        cancel_flag = jobs.start(session_of(request), "train")
        settings = _settings_values(fields, values)
        run = runs.TrainRun(cfg, domain=name, data=data, settings=settings, cancel_flag=cancel_flag,
                            gate=jobs.gate)
        yield from _relay(run, cancel_flag, gradio_progress(progress), 2,
                          show=lambda event: (run.status(*event),
                                              pd.DataFrame(list(run.losses), columns=["step", "loss"])))
        yield (f"done: the `{name}` domain model is in `{run.folder}`; it is now in the domain lists",
               pd.DataFrame(list(run.losses), columns=["step", "loss"]))

    ev = run.click(start, [name, data], [status, plot], inputs_kwargs=widgets, api_name="train",
                   concurrency_id=MODELS, concurrency_limit=cfg.max_jobs)
    ev.then(lambda: [core.domain_rows(cfg)] + [_dropdown_update(cfg) for _ in dropdowns], None,
            [table, *dropdowns], queue=False, api_visibility="private")
    cancel_btn.click(cancel, None, None, cancels=[ev], queue=False, api_visibility="private")


def _settings_widgets(fields) -> dict:
    """One input per settings field (label = the config field's name, as on the CLI)."""
    return {name: gr.Checkbox(default, label=name) if typ is bool
            else gr.Number(default, label=name, precision=0 if typ is int else None)
            for name, typ, default in fields}


def _settings_values(fields, values: dict) -> dict:
    out = {}
    for name, typ, default in fields:
        v = values.get(name)
        if v is None:
            out[name] = default
            continue
        try:
            out[name] = typ(v) if typ is not int else int(float(v))
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a {typ.__name__}, got {v!r}") from None
    return out


def _can_train_here(cfg: AppConfig) -> str | None:
    """None when this machine can train the preset's models (tiny and mini: anywhere; full: a CUDA GPU)."""
    if get_preset(cfg.preset).trains_on_cpu:
        return None
    import torch

    return None if torch.cuda.is_available() else "full-size training needs a CUDA GPU, which this machine lacks"


# ----------------------------------------------------------------------------------------------------------
class NoSniff:
    """ASGI middleware: every response says ``X-Content-Type-Options: nosniff``, so a browser never guesses a
    served file's type from its bytes (an uploaded file served as a download stays a download)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        return await self.app(scope, receive, send_with_header)


SESSIONS_KEPT = 500
"""Browser or API sessions whose page state the server keeps (the least recently used dropped first)."""


def launch(demo: gr.Blocks, cfg: AppConfig, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True):
    """Serve the page with the safe defaults: local address, no share link, size-limited uploads, and files
    served only from the app's result folders (plus gradio's own upload cache).

    The result folders are "allowed" paths, which gradio serves inline with their own type; the upload cache is
    not: gradio serves what it holds inline only when it is an image (or audio/video) and as a download
    (``Content-Disposition: attachment``, ``application/octet-stream``) otherwise, so an uploaded ``evil.html``
    or ``evil.svg`` never runs in the browser."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: nothing leaves the host
    demo.queue(default_concurrency_limit=cfg.max_jobs)
    started = time.monotonic()
    # show_error: every handler is wrapped by friendly() (its errors are sentences already); what remains are gradio's
    # own refusals before a handler runs (a server path the client named, a number out of a slider's range), whose
    # message is the sentence the user needs, instead of "error: null".
    out = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                      allowed_paths=[str(p) for p in core.served_dirs(cfg)], max_file_size=f"{cfg.max_upload_mb:g}mb",
                      show_error=True, ssr_mode=False, inbrowser=False, quiet=not block, theme=theme,
                      footer_links=["api", "settings"], enable_monitoring=False,
                      # each browser or API session's state, about 0.3 MB: gradio kept 10,000 (about 3 GB)
                      state_session_capacity=SESSIONS_KEPT,
                      app_kwargs={"middleware": [Middleware(NoSniff)]})
    if not block:
        log.info("app started in %.1f s", time.monotonic() - started)
        return out
    # Served until Ctrl-C or SIGTERM, which reach the caller (launch.py says "interrupted", exit 130 / 143, as every
    # subcommand does): gradio's own wait took them, closed the server and returned, so the app exited 0 without a
    # word. The caller closes the server, after its jobs have stopped (app.main). With GRADIO_DEBUG=1 gradio still
    # waits inside launch and closes the server at the signal: then this returns.
    while demo.is_running:
        time.sleep(0.2)
    return out


__all__ = ["build_app", "launch", "checked_image", "mask_editor", "friendly", "gradio_progress", "with_warnings"]
