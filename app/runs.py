"""The app's jobs, free of gradio: one per tab (generate, edit, 3D, train), each calling the same library function
as the CLI (``suite.presets.build_pipeline`` and the pipeline's ``__call__``, ``editing.edit_photo``,
``generators3d.run_text_to_3d``, ``training.train.train_domain``), and the runner that keeps a training run in a
thread while the page shows its progress. Each job writes its results under the app's output folder and returns
what the tab shows."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from editing import edit_photo
from generators3d import ThreeDConfig, ThreeDResult, run_text_to_3d
from generators3d.cli import MAX_FRAMES, MAX_MESH_RESOLUTION, MAX_SDS_STEPS, check_trains_a_nerf
from suite.checks import MAX_STEPS, Progress, UserError, check_int, format_weights
from suite.control import canny
from suite.files import remove_run_folder
from suite.images import oriented_size, save_image_atomic, to_rgb
from suite.pipeline import quiet, report_steps
from suite.presets import get_preset, warn_prompt
from suite.rules import parse_rule
from training.config import TrainConfig
from training.data import walk_files
from training.train import train_domain

from .core import (
    AppConfig,
    JobCancelled,
    PipelineCache,
    checked_progress,
    domain_model_for,
    domain_name_problem,
    new_run_dir,
    trained_domains,
    turn,
    write_json_atomic,
)

log = logging.getLogger("app")


WAITING_FOR_MODEL = "waiting for another job on this model"


# generate
@dataclass
class GenerateRequest:
    domain: str = "face"
    prompt: str = ""
    negative_prompt: str = ""
    domain_weight: float | str | None = None  # None: the domain's recommended weight; "auto": automatic (Sec. 3.4)
    control_weight: float | str | None = None
    guidance_rule: str | None = None  # None: the domain's recommended rule where it fits; suite.rules
    control_image: object = None  # PIL image or None
    canny: bool = True
    seed: int = 0
    steps: int = 25
    num_images: int = 1


@dataclass
class GenerateResult:
    paths: list[Path]
    captions: list[str]
    weights: dict
    control_preview: object = None
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the CLI logs about the request (the mini vocabulary)


@contextlib.contextmanager
def logged_warnings(into: list, names=("suite", "editing")):
    """Append to ``into`` the warnings this thread logs meanwhile on the ``names`` loggers (what the CLI prints
    about the job: a truncated prompt, faces left out, part of a mask not edited), so the page shows them too.
    Only this thread's: jobs of other users run beside it."""
    ident = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record):
            if record.thread == ident:
                into.append(record.getMessage())

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield into
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def center_crop_square(image):
    """The largest centred square of an image (outputs are square; ControlNet needs the same aspect ratio)."""
    w, h = image.size
    if w == h:
        return image
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def run_generate(cache: PipelineCache, req: GenerateRequest, progress: Progress | None = None) -> GenerateResult:
    """One Generate-tab job: the CLI's ``generate`` (same pipeline call), saved under OUTPUT/generate."""
    cfg = cache.config
    # 1. Check the request (one sentence per problem).
    steps = check_int(req.steps, "the number of steps", 1, cfg.max_steps)
    num = check_int(req.num_images, "the number of images", 1, cfg.max_images)
    seed = check_int(req.seed, "the seed", 0, 2**32 - 1)
    parse_rule(req.guidance_rule)  # a bad rule is refused before any model loads
    warnings = warn_prompt(cfg.preset, req.prompt)  # as the CLI's generate warns (the page shows them too)
    control = req.control_image
    if control is not None and get_preset(cfg.preset).controlnet() is None:
        raise UserError(f"the {cfg.preset} preset has no ControlNet: remove the control image (this server cannot "
                        f"load one for it)")
    if control is not None:
        control = center_crop_square(control)  # the output is square: keep the control's aspect ratio
    if control is not None and req.canny:
        control = canny(control)
    report = progress or (lambda *a: None)

    # 2. Load (or reuse) the models; one job per model at a time.
    report("loading models", 0, 1, {})

    pipe, lock = cache.get(req.domain, need_controlnet=control is not None)
    # it showed "loading models 0/1" while another user's job ran on the same model
    with turn(lock, report, WAITING_FOR_MODEL), quiet(pipe), logged_warnings(warnings):  # progress: the app's bar
        # 3. Sample with the same call as `launch.py generate`.
        out = pipe(req.prompt or None, negative_prompt=req.negative_prompt or None,
                   domain_weight=req.domain_weight, control_weight=req.control_weight, control_image=control,
                   guidance_rule=req.guidance_rule,
                   num_images_per_prompt=num, num_inference_steps=steps, seed=seed,
                   callback_on_step_end=report_steps(lambda i, n: report("sampling", i, n, {})))

    # 4. Save images and the settings that made them.
    folder = new_run_dir(cfg, "generate")

    weights = {k: v for k, v in out.weights.items()}
    wtxt = format_weights(weights) or "no guidance terms"
    if out.guidance_rule not in (None, "paper"):
        wtxt += f" · rule {out.guidance_rule}"
    chosen = pipe.guidance_weights(req.domain_weight, req.control_weight)  # None: automatic
    auto = [n for n, v in zip(("w_d", "w_c"), chosen) if v is None]
    settings = dict(domain=req.domain, prompt=req.prompt, negative_prompt=req.negative_prompt,
                    domain_weight=req.domain_weight, control_weight=req.control_weight,
                    guidance_rule=out.guidance_rule,
                    control_image=control is not None, canny=req.canny, steps=steps, num_images=num, seed=seed,
                    preset=cfg.preset, weights_used=weights, automatic=auto)
    paths, captions = [], []
    for i, image in enumerate(out.images):
        path = save_image_atomic(image, folder / f"image-{i}.png")
        paths.append(path)
        captions.append(f"{req.domain} · {req.prompt or '(unconditional)'} · seed {seed} #{i} · {steps} steps · {wtxt}"
                        + (" · ControlNet" if control is not None else ""))
    if control is not None:
        save_image_atomic(control, folder / "control.png")
    write_json_atomic(settings, folder / "settings.json")
    return GenerateResult(paths, captions, weights, control if req.canny else None, settings, warnings)


# back ends of the other tabs (imported lazily; the contracts are in the docstrings)
def settings_fields(cls, skip: set[str]) -> list[tuple[str, type, object]]:
    """The numeric / boolean fields of a settings dataclass with their defaults (the UI shows these).

    ``cls`` may be an instance (e.g. a preset's config): its values are then the defaults shown."""
    import typing

    out = []
    hints = typing.get_type_hints(type(cls) if not isinstance(cls, type) else cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_") or f.default is dataclasses.MISSING:
            continue
        t = hints.get(f.name)
        default = f.default if isinstance(cls, type) else getattr(cls, f.name)
        if t in (int, float, bool) and type(default) is t:
            out.append((f.name, t, default))
    return out


# ThreeDConfig's fields whose None means "the preset's": the value each stands for in a resolved config (the 3D tab
# shows it, so that the form's starting values are what a run without them does)
PRESET_VALUES_3D = {
    "zero123_steps": lambda r: r.zero123.steps,
    "refine_steps": lambda r: r.refine.steps,
    "elevation": lambda r: r.camera.ref_elevation,
    "mesh_resolution": lambda r: r.export.resolution,
    "texture": lambda r: r.export.texture,
    "texture_size": lambda r: r.export.texture_size,
    "project_reference": lambda r: r.export.project_reference,
    "side_views": lambda r: r.export.side_views,
    "preview_frames": lambda r: r.preview_frames,
}


def threed_fields(preset: str, skip: set[str]) -> list[tuple[str, type, object]]:
    """The 3D tab's settings: :func:`settings_fields` of ``ThreeDConfig`` (first, in their order: an API call that
    passes them by position still gets them), then the fields of :data:`PRESET_VALUES_3D` with the value the
    ``preset`` gives them (the export's texture size and side views among them)."""
    import typing

    out = settings_fields(ThreeDConfig, skip)
    resolved = ThreeDConfig(preset=preset).resolved()
    hints = typing.get_type_hints(ThreeDConfig)
    for name, value in PRESET_VALUES_3D.items():
        if name not in skip:
            typ = next(t for t in typing.get_args(hints[name]) if t is not type(None))
            out.append((name, typ, typ(value(resolved))))
    return out


# the 3D form's counts, as the CLI limits them (generators3d.cli.check_limits): (smallest, largest, what)
LIMITS_3D = {"image_steps": (1, MAX_STEPS, "image_steps (stage 1's sampling steps)"),
             "zero123_steps": (0, MAX_SDS_STEPS, "zero123_steps (stage 2's steps; 0 skips it)"),
             "refine_steps": (0, MAX_SDS_STEPS, "refine_steps (stage 3's steps; 0 skips it)"),
             "mesh_resolution": (16, MAX_MESH_RESOLUTION, "mesh_resolution (the marching-cubes grid's side)"),
             "preview_frames": (1, MAX_FRAMES, "preview_frames (the turntable's frames)")}


def _checked_3d_settings(config: AppConfig, settings: dict) -> dict:
    """The 3D form's values within :data:`LIMITS_3D` (one sentence each), and those that are the preset's own
    (:data:`PRESET_VALUES_3D`, as the form starts) left out: the run's ``config.json`` then records them as not
    given, as a CLI run without the flag does (a ``--resume`` from the CLI need not repeat them)."""
    values = _within(settings, LIMITS_3D)
    resolved = ThreeDConfig(preset=config.preset).resolved()
    # the CLI's check_limits refuses the same: the NeRF's untrained starting blob was exported as the mesh
    check_trains_a_nerf(*(values[n] if values.get(n) is not None else PRESET_VALUES_3D[n](resolved)
                          for n in ("zero123_steps", "refine_steps")), "zero123_steps", "refine_steps", "the Generate tab")
    for name, value in PRESET_VALUES_3D.items():
        if name in values and values[name] == value(resolved):
            del values[name]
    return values


def _within(settings: dict, limits: dict) -> dict:
    """``settings`` with each count of ``limits`` (``{name: (smallest, largest, what)}``) checked, one sentence each."""
    values = dict(settings or {})
    for name, (low, high, what) in limits.items():
        if values.get(name) is not None:
            values[name] = check_int(values[name], what, low, high)
    return values


def make_config(cls, values: dict, fields_of=None):
    """``cls(**values)`` keeping only the fields ``cls`` (or the dataclass ``fields_of``) has (the rest are
    reported in the log)."""
    names = {f.name for f in dataclasses.fields(fields_of or cls)}
    if fields_of is not None:
        names.discard("preset")  # chosen by the factory ``cls``
    dropped = sorted(k for k, v in values.items() if k not in names and v is not None)
    if dropped:
        log.info("%s has no field(s) %s; ignored", (fields_of or cls).__name__, ", ".join(dropped))
    return cls(**{k: v for k, v in values.items() if k in names})


def run_edit(cache: PipelineCache, *, domain: str, photo, prompt: str, strength: float, domain_weight, control_weight,
             mask, all_faces: bool, whole_image: bool, num_images: int, seed: int, steps: int,
             progress: Progress | None = None, guidance_rule: str | None = None, landmarks=None) -> dict:
    """One Edit-tab job through ``editing.edit_photo`` (the CLI's ``edit``). Returns paths and face boxes.
    ``landmarks``: a landmarks JSON file (``--landmarks``) to use instead of detecting the faces."""
    from PIL import ImageDraw

    cfg = cache.config
    # 1. Check the request.
    steps = check_int(steps, "the number of steps", 1, cfg.max_steps)
    num = check_int(num_images, "the number of images", 1, cfg.max_images)
    seed = check_int(seed, "the seed", 0, 2**32 - 1)
    if photo is None:
        raise UserError("no photo: upload a photo to edit first")
    parse_rule(guidance_rule)  # a bad rule is refused before any model loads
    warnings = warn_prompt(cfg.preset, prompt)  # as the CLI's edit warns
    detector = None
    if landmarks is not None:
        from editing.faces import read_landmarks

        try:
            detector = read_landmarks(getattr(landmarks, "name", landmarks))
            detector.check_size(*oriented_size(photo))  # a file for another photo, before any model loads
        except ValueError as e:
            raise UserError(str(e)) from None
    report = progress or (lambda *a: None)
    # 2. Models, then the edit (one job per model at a time).
    report("loading models", 0, 1, {})
    pipe, lock = cache.get(domain)
    with turn(lock, report, WAITING_FOR_MODEL), logged_warnings(warnings):
        out = edit_photo(pipe, photo, prompt=prompt, strength=float(strength), domain_weight=domain_weight,
                                 control_weight=control_weight, mask=mask, all_faces=bool(all_faces),
                                 whole_image=bool(whole_image), num_images=num, seed=seed, steps=steps,
                                 progress=report, guidance_rule=guidance_rule, detector=detector)
    # 3. Save: the photo with its detected face boxes, and every edited photo.
    folder = new_run_dir(cfg, "edit")
    boxes = [tuple(int(round(v)) for v in b) for b in out.face_boxes]
    marked = to_rgb(photo)  # a transparent photo on white, as the network saw it
    draw = ImageDraw.Draw(marked)
    width = max(2, round(max(marked.size) / 200))
    for b in boxes:
        draw.rectangle(b, outline=(255, 40, 40), width=width)
    marked_path = save_image_atomic(marked, folder / "faces.png")
    paths = [save_image_atomic(im, folder / f"edited-{i}.png") for i, im in enumerate(out.images)]
    write_json_atomic(dict(domain=domain, prompt=prompt, strength=strength, domain_weight=domain_weight,
                           control_weight=control_weight, guidance_rule=out.guidance_rule, mask=mask is not None, all_faces=all_faces,
                           whole_image=whole_image, num_images=num, seed=seed, steps=steps, face_boxes=boxes,
                           timings=out.timings), folder / "settings.json")
    return dict(faces=marked_path, paths=paths, boxes=boxes, size=photo.size, warnings=warnings)


def run_3d(config: AppConfig, *, prompt: str, domain: str, image=None, settings: dict | None = None,
           progress: Progress | None = None, cache: PipelineCache | None = None) -> ThreeDResult:
    """One 3D-tab job through ``generators3d.run_text_to_3d`` (the CLI's ``3d``), written under OUTPUT/3d.

    ``image`` (a checked PIL image) replaces stage 1; ``settings`` are ``ThreeDConfig`` fields from the form."""
    # 1. Check the request.
    prompt = (prompt or "").strip()
    if not prompt and image is None:
        raise UserError("no prompt: type what to make (e.g. 'a vase with dragons') or upload an image")
    values = _checked_3d_settings(config, settings or {})
    model = domain_model_for(config, domain)  # a domain trained in the app, as the other tabs take it
    # 2. The run folder (an uploaded image is kept in it) and the config, as the CLI builds it.
    folder = new_run_dir(config, "3d")
    values.update(prompt=prompt, domain=domain, preset=config.preset, output=folder,
                  device=config.device, dtype=config.dtype, domain_model=str(model) if model else None)
    upload = None
    if image is not None:
        # beside the run folder, not in it: the 3D run writes only into a folder that is empty or its own
        upload = values["image"] = save_image_atomic(image, folder.with_name(f"{folder.name}-input.png"))
    values.update(config.threed_overrides)
    try:
        cfg3 = make_config(ThreeDConfig, values)
        # 3. Run every stage, its models counted among the loaded ones.
        with cache.reserved(1) if cache is not None else contextlib.nullcontext():
            return run_text_to_3d(cfg3, progress=progress)
    except BaseException as err:
        # a request refused (or a run failed) before it wrote anything leaves no empty run folder, nor its upload;
        # a cancelled run nothing at all ("cancelled: nothing was saved"; the app does not resume runs)
        cancelled = isinstance(err, JobCancelled)
        if folder.is_dir() and (cancelled or not any(folder.iterdir())) and remove_run_folder(folder):
            if upload is not None:
                Path(upload).unlink(missing_ok=True)
        raise




def _allowed_data_dir(config: AppConfig, data: str) -> Path:
    """The training folder a request names, only when it lies under one of the operator's ``--data-root`` folders
    (links resolved first, and every link inside it checked too). Nothing about a folder outside them is said: not whether it exists, not its files."""
    if not config.data_roots:
        raise UserError("training on folders of this server is off: whoever runs the app allows it for the folders "
                        "under one root with `launch.py app --data-root FOLDER`")
    text = (data or "").strip()
    if not text:
        raise UserError(f"no image folder given: type a folder of images under {', '.join(map(str, config.data_roots))}")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(config.data_roots[0]) / text
    path = path.resolve()
    roots = [Path(r).resolve() for r in config.data_roots]
    if not any(path == r or r in path.parents for r in roots):
        raise UserError(f"that folder is not under the folders this app may read ({', '.join(map(str, roots))}): "
                        f"give a folder under one of them")
    if not path.is_dir():
        raise UserError(f"the image folder {text!r} does not exist under {', '.join(map(str, roots))}: give a folder "
                        f"of images")
    # the trainer follows links inside the folder: one leading out of the roots would read a folder outside them
    for file in walk_files(path):
        real = file.resolve()
        if not any(r in real.parents for r in roots):
            raise UserError(f"that folder holds a link to files outside the folders this app may read "
                            f"({', '.join(map(str, roots))}): remove the link, or copy the images in")
    return path


# the Domains form's sizes a web user may ask of this server (the CLI's train has none: it is the user's own
# machine): what holds memory (resolution 100000 or a batch of 10^6 would take the server down) and what runs for ever
LIMITS_TRAIN = {"resolution": (8, 2048, "resolution (the training images' side in pixels)"),
                "batch_size": (1, 512, "batch_size (images an optimizer step)"),
                "cache_batch_size": (1, 256, "cache_batch_size (images a VAE call)"),
                "text_init_batch_size": (1, 512, "text_init_batch_size (F_T's images a step)"),
                "validation_images": (1, 64, "validation_images"),
                "num_workers": (0, 64, "num_workers (image-decoding threads)"),
                "max_steps": (1, 1_000_000, "max_steps"),
                "text_init_steps": (0, 1_000_000, "text_init_steps (0: E from the prompt's text features)"),
                "text_init_images": (1, 1_000_000, "text_init_images"),
                "capture_images": (1, 100_000, "capture_images"),
                "validation_inference_steps": (1, MAX_STEPS, "validation_inference_steps")}


def run_train(config: AppConfig, *, domain: str, data: str, settings: dict | None = None,
              progress: Progress | None = None) -> Path:
    """One Domains-tab training run through ``training.train.train_domain`` (the CLI's ``train``).

    The model is written to OUTPUT/domains/<name>, where the Generate tab finds it."""
    # 1. Check the request.
    domain = (domain or "").strip()
    problem = domain_name_problem(domain)
    if problem:
        raise UserError(problem)
    output = config.output_dir / "domains" / domain
    settings = _within(settings, LIMITS_TRAIN)
    # the page has no --resume or --output: a name in use is one sentence about the page and the server's folder
    with _TRAINING_LOCK:
        if domain.lower() in _TRAINING:  # it said "another run (process N) is writing ...: choose another --output"
            raise UserError(f"a training of {domain!r} is already running on this server: wait for it to end, or "
                            f"choose another name")
        _TRAINING.add(domain.lower())
    try:
        return _train(config, domain, data, output, settings, progress)
    finally:
        with _TRAINING_LOCK:
            _TRAINING.discard(domain.lower())


_TRAINING: set[str] = set()  # the domain names being trained by this server's jobs, in lower case
_TRAINING_LOCK = threading.Lock()


def _train(config: AppConfig, domain: str, data: str, output: Path, settings: dict | None, progress) -> Path:
    taken = {name.lower(): (name, folder) for name, folder in trained_domains(config).items()}
    if domain.lower() in taken:  # "Foo" beside "foo" too (one folder on a case-insensitive file system)
        name, folder = taken[domain.lower()]
        if folder.parent != config.output_dir / "domains":  # not this app's: one of $INDOMAIN_HOME/domains
            raise UserError(f"{name!r} is the name of a domain of your own on this server ({str(folder)!r}): choose "
                            f"another name")
        raise UserError(f"a domain named {name!r} is already trained here: choose another name (to train the name "
                        f"again, delete its folder {str(folder)!r} on the server first)")
    if output.exists():
        raise UserError(f"the folder of {domain!r} ({str(output)!r}) holds a training that did not finish (it failed, or "
                        f"the server stopped during it): choose another name (on the server that folder can be "
                        f"deleted, or continued with `python launch.py train --resume`)")
    data_dir = _allowed_data_dir(config, data)
    # 2. The config, as the CLI builds it; then train.
    values = dict(settings or {})
    # the app's --device reaches training as the CLI's --cpu (it was dropped: `app --device cpu` trained on the GPU);
    # its --dtype is the sampling precision, and training keeps the CLI's default precision
    values.update(domain=domain, data=str(data_dir), output=str(output),
                  cpu=bool(values.get("cpu")) or str(config.device or "").split(":")[0] == "cpu")
    values.update(config.train_overrides)
    cfg = make_config(functools.partial(TrainConfig.for_preset, config.preset), values, fields_of=TrainConfig)
    try:
        return Path(train_domain(cfg, progress=progress) or output)
    except JobCancelled:
        # "cancelled: nothing was saved": the run's checkpoints (121 MB on the mini preset) went, and the name is
        # free again; the folder is this job's own (it did not exist before). Under the folder's lock: a run another
        # process started there after this one let it go (`train --resume` from a shell) keeps it
        remove_run_folder(output)
        raise


_THREADS: weakref.WeakSet = weakref.WeakSet()  # the job threads (ThreadJob), for stop_jobs


def stop_jobs(jobs, timeout: float = 60.0) -> int:
    """Cancel every job of ``jobs`` (:class:`app.core.Jobs`) and wait up to ``timeout`` seconds for their threads to
    stop at their next progress report; returns how many still run. A server stopped (Ctrl-C, SIGTERM) during a 3D job
    aborted ("terminate called without an active exception", exit code -6: torch was still running in the job's
    thread as the interpreter ended) and left the job's half-made run folder."""
    import time

    jobs.cancel_all()
    end = time.monotonic() + timeout
    for thread in list(_THREADS):
        thread.join(max(0.0, end - time.monotonic()))
    left = sum(t.is_alive() for t in list(_THREADS))
    if left:
        log.warning("%d job(s) did not stop within %.0f s; stopping anyway", left, timeout)
    return left


class ThreadJob:
    """A job ``work(progress)`` in its own thread, so that the page's event handler stays live and can stop it:
    iterate :meth:`events` for its progress reports (the latest of each burst, as they come). Then ``result`` is what
    ``work`` returned, or ``error`` what stopped it (a cancel, bad input, a failure). With ``cancel_flag``, the job
    stops at its next report once the flag is set (:func:`checked_progress`); ``on_progress`` sees every report, in
    the job's thread. With ``gate`` (a semaphore, :attr:`app.core.Jobs.gate`), the job runs only while it holds it:
    a job started while a cancelled one is still stopping reports ``waiting`` until it has."""

    def __init__(self, work, *, name: str, cancel_flag=None, on_progress=None, gate=None):
        import queue
        import threading

        self.result = None
        self.error: BaseException | None = None
        self._events: queue.Queue = queue.Queue()

        def report(stage, done, total, info):
            if on_progress is not None:
                on_progress(stage, done, total, info)
            self._events.put((stage, done, total, dict(info)))

        def run():
            try:
                progress = checked_progress(report, cancel_flag) if cancel_flag is not None else report
                if gate is None:
                    self.result = work(progress)
                    return
                with turn(gate, progress, "waiting for the previous job to stop"):  # a cancel while it waits: no load
                    self.result = work(progress)
            except BaseException as err:  # noqa: BLE001 - handed to the caller through self.error
                self.error = err

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        _THREADS.add(self._thread)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        """Until the job has ended (after a cancel: at its next progress report)."""
        self._thread.join()

    def events(self, heartbeat: bool = False):
        """``(stage, done, total, info)`` as the job reports them, until it ends; with ``heartbeat``, ``None`` every
        half second without a report, so that a consumer is never held longer than that (gradio can close a
        generator only between two of its items)."""
        import queue

        while self._thread.is_alive() or not self._events.empty():
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                if heartbeat:
                    yield None
                continue
            if self._events.empty():  # a burst of steps: the page shows the latest
                yield event
        self._thread.join()


class TrainRun(ThreadJob):
    """A Domains-tab training run (:func:`run_train`) in its own thread (:class:`ThreadJob`); ``losses`` holds every
    ``(step, loss)`` of the training curve so far, and ``folder`` is the model once it has ended without error."""

    def __init__(self, config: AppConfig, *, domain: str, data: str, settings: dict | None = None, cancel_flag=None,
                 gate=None):
        self.losses: list[tuple[int, float]] = []

        def on_progress(stage, done, total, info):
            if stage == "train" and "loss" in info:  # the training curve only: not the text features' steps (numbered
                # from 1 too) nor the checkpoints' repeat of the last point
                self.losses.append((int(info.get("step", done)), float(info["loss"])))

        super().__init__(lambda progress: run_train(config, domain=domain, data=data, settings=settings,
                                                    progress=progress),
                         name="train", cancel_flag=cancel_flag, on_progress=on_progress, gate=gate)

    @property
    def folder(self) -> Path | None:
        return self.result

    @staticmethod
    def status(stage: str, done: int, total: int, info: dict) -> str:
        text = f"{stage}: {done}/{total}"
        if "loss" in info:
            text += f" · loss {float(info['loss']):.4g}"
        return text
