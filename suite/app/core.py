"""The app's work, free of gradio: checked uploads, a cache of loaded pipelines, jobs with progress and cancel.

Everything here calls the same library functions as the CLI (``suite.presets.build_pipeline``, the pipeline's
``__call__``, ``editing.edit_photo``, ``generators3d.run_text_to_3d``, ``training.train.train_domain``);
nothing runs ``launch.py`` in a subprocess. The back ends of the edit, 3D and training tabs live in packages
above ``suite``, which it never imports: ``launch.py`` (the composition root) hands them in as :class:`Backends`,
and a tab whose back end is missing says "not available in this install".
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import re
import shlex
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import UserError, check_int
from ..domains import PRESETS, Domain
from ..files import write_text_atomic

log = logging.getLogger("suite.app")

# What every long job reports: progress(stage, done, total, info).
ProgressFn = Callable[[str, int, int, dict], None]

ALLOWED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}


@dataclass
class Backends:
    """The jobs of the packages above ``suite`` that the app runs (``launch.app_backends`` fills them): the
    edit tab's ``edit_photo``, the 3D tab's ``three_d_config`` / ``run_text_to_3d`` and the Domains tab's
    ``train_config`` / ``train_domain``. None: that package is not installed here."""

    edit_photo: Callable | None = None
    three_d_config: type | None = None
    run_text_to_3d: Callable | None = None
    train_config: type | None = None
    train_domain: Callable | None = None

    def missing(self, *names: str) -> str | None:
        """None if every named back end is there, else the sentence the tab shows."""
        absent = [n for n in names if getattr(self, n) is None]
        return f"not available in this install ({', '.join(absent)} not installed)" if absent else None


@dataclass
class AppConfig:
    """What ``launch.py app`` was started with (every field has the CLI flag of the same name)."""

    preset: str = "full"
    output_dir: Path = Path("outputs/app")
    device: str | None = None
    dtype: str | None = None
    max_upload_mb: float = 20.0
    max_megapixels: float = 25.0
    max_loaded_models: int = 2
    max_steps: int = 100
    default_steps: int = 25  # the pipeline's DEFAULT_STEPS; the form starts here
    max_images: int = 8
    max_jobs: int = 1
    # Settings forced on every 3D / training run (tests use them for short runs; not exposed in the UI).
    threed_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    backends: Backends = field(default_factory=Backends)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir).resolve()


class JobCancelled(Exception):
    """Raised inside a job's progress callback once the user pressed Cancel."""


# ----------------------------------------------------------------------------------------------------------
# uploads
def check_image_upload(source, what: str, max_megapixels: float, max_bytes: int | None = None):
    """Open an uploaded image (a path or bytes) and return it as RGB with EXIF orientation applied.

    Refused with one sentence each: an empty file, a file over ``max_bytes``, anything PIL cannot read (a text
    file renamed ``.png``), a format other than PNG/JPEG/WebP, more than ``max_megapixels`` (checked from the
    header, before any pixel is decoded, so a decompression bomb never reaches memory).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..images import to_rgb

    if isinstance(source, bytes | bytearray):
        data, name = bytes(source), what
        size = len(data)
        opener = io.BytesIO(data)
    else:
        path = Path(source)
        name = path.name
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"the {what} upload could not be found on the server: upload it again") from None
        opener = path
    if size == 0:
        raise UserError(f"the {what} {name!r} is an empty file (0 bytes): upload a PNG, JPEG or WebP image")
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"the {what} {name!r} is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB "
                        "this app accepts: upload a smaller file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(opener)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            raise UserError(f"the {what} {name!r} is not an image this app can read (a renamed or damaged file?): "
                            "upload a PNG, JPEG or WebP image") from None
        with im:
            if im.format not in ALLOWED_FORMATS:
                raise UserError(f"the {what} {name!r} is a {im.format} file: upload a PNG, JPEG or WebP image")
            w, h = im.size
            if w * h > max_megapixels * 1e6:
                raise UserError(f"the {what} {name!r} is {w}x{h} ({w * h / 1e6:.0f} megapixels), more than the "
                                f"{max_megapixels:g} megapixels this app accepts: downscale it first "
                                "(or start the app with a larger --max-megapixels)")
            try:
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
            except (OSError, ValueError, SyntaxError):
                raise UserError(f"the {what} {name!r} is damaged (its pixels could not be decoded): "
                                "upload another PNG, JPEG or WebP image") from None


# ----------------------------------------------------------------------------------------------------------
# loaded models
class PipelineCache:
    """Loaded pipelines keyed by (preset, domain, model folder, ControlNet), least recently used dropped first.

    Each entry has its own lock: one job at a time per model, so two users cannot run the same weights at once
    (the gradio queue's concurrency limit bounds how many models run at all).
    """

    def __init__(self, config: AppConfig):
        self.config = config
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, domain: str, need_controlnet: bool = False):
        """``(pipeline, lock)`` for a domain name (a preset or one trained in this app)."""
        from ..presets import build_pipeline

        model = trained_domains(self.config).get(domain)
        if domain not in PRESETS and model is None:
            raise UserError(f"unknown domain {domain!r}: choose one of {', '.join(list_domain_names(self.config))}")
        key = (self.config.preset, domain, str(model) if model else None, bool(need_controlnet))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= max(self.config.max_loaded_models, 1):
                old, _ = self._entries.popitem(last=False)
                log.info("unloading %s", old)
            log.info("loading models for %s", key)
            pipe = build_pipeline(self.config.preset, domain, None, str(model) if model else None, None,
                                  need_controlnet, self.config.device, self.config.dtype)
            entry = (pipe, threading.Lock())
            self._entries[key] = entry
            return entry

    def loaded(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)


class Jobs:
    """Cancel flags per browser session: Cancel sets the flag, the job's next progress call raises."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            ev = self._flags[session] = threading.Event()
            return ev

    def cancel(self, session: str) -> bool:
        with self._lock:
            ev = self._flags.get(session)
        if ev is None:
            return False
        ev.set()
        return True


def checked_progress(progress: ProgressFn | None, cancel: threading.Event | None) -> ProgressFn:
    """Wrap a progress function so that a pressed Cancel stops the job at its next report."""

    def report(stage: str, done: int, total: int, info: dict | None = None) -> None:
        if cancel is not None and cancel.is_set():
            raise JobCancelled(f"{stage} cancelled at {done}/{total}")
        if progress is not None:
            progress(stage, done, total, info or {})

    return report


# ----------------------------------------------------------------------------------------------------------
# output files
def new_run_dir(config: AppConfig, kind: str) -> Path:
    """A fresh folder ``OUTPUT/<kind>/<time>-<id>`` (every file the app serves lives under OUTPUT)."""
    folder = config.output_dir / kind / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def write_json_atomic(data: dict, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


def fmt_weight(v) -> str:
    if isinstance(v, list | tuple):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return f"{v:.3g}" if isinstance(v, float | int) else str(v)


# ----------------------------------------------------------------------------------------------------------
# generate
@dataclass
class GenerateRequest:
    domain: str = "face"
    prompt: str = ""
    negative_prompt: str = ""
    domain_weight: float | None = None  # None: automatic (paper Sec. 3.4)
    control_weight: float | None = None
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


def center_crop_square(image):
    """The largest centred square of an image (outputs are square; ControlNet needs the same aspect ratio)."""
    w, h = image.size
    if w == h:
        return image
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def run_generate(cache: PipelineCache, req: GenerateRequest, progress: ProgressFn | None = None) -> GenerateResult:
    """One Generate-tab job: the CLI's ``generate`` (same pipeline call), saved under OUTPUT/generate."""
    cfg = cache.config
    # 1. Check the request (one sentence per problem).
    steps = check_int(req.steps, "the number of steps", 1, cfg.max_steps)
    num = check_int(req.num_images, "the number of images", 1, cfg.max_images)
    seed = check_int(req.seed, "the seed", 0, 2**32 - 1)
    control = req.control_image
    if control is not None:
        control = center_crop_square(control)  # the output is square: keep the control's aspect ratio
    if control is not None and req.canny:
        from ..control import canny

        control = canny(control)
    report = progress or (lambda *a: None)

    # 2. Load (or reuse) the models; one job per model at a time.
    report("loading models", 0, 1, {})
    pipe, lock = cache.get(req.domain, need_controlnet=control is not None)
    with lock:
        # 3. Sample with the same call as `launch.py generate`.
        out = pipe(req.prompt or None, negative_prompt=req.negative_prompt or None,
                   domain_weight=req.domain_weight, control_weight=req.control_weight, control_image=control,
                   num_images=num, num_inference_steps=steps, seed=seed, progress=False,
                   callback=lambda i, n: report("sampling", i, n, {}))

    # 4. Save images and the settings that made them.
    folder = new_run_dir(cfg, "generate")
    from ..images import save_image_atomic

    weights = {k: v for k, v in out.weights.items()}
    wtxt = ", ".join(f"{k}={fmt_weight(v)}" for k, v in weights.items()) or "no guidance terms"
    auto = [n for n, v in (("w_d", req.domain_weight), ("w_c", req.control_weight)) if v is None]
    settings = dict(domain=req.domain, prompt=req.prompt, negative_prompt=req.negative_prompt,
                    domain_weight=req.domain_weight, control_weight=req.control_weight,
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
    return GenerateResult(paths, captions, weights, control if req.canny else None, settings)


# ----------------------------------------------------------------------------------------------------------
# domains
def trained_domains(config: AppConfig) -> dict[str, Path]:
    """Domain models trained from this app: OUTPUT/domains/<name> folders holding a saved model."""
    root = config.output_dir / "domains"
    found = {}
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "config.json").is_file() and d.name not in PRESETS:
                found[d.name] = d
    return found


def list_domain_names(config: AppConfig) -> list[str]:
    presets = ["porcelain"] if config.preset == "mini" else list(PRESETS)
    return presets + list(trained_domains(config))


def domain_rows(config: AppConfig) -> list[list[str]]:
    """One row per known domain: name, domain prompt, what it is, where its model comes from, found?"""
    rows = []
    for d in PRESETS.values():
        if config.preset == "tiny":
            where, status = "tiny random model built offline (--preset tiny)", "built on first use"
        elif config.preset == "mini":
            if d.name != "porcelain":
                continue  # the mini world has one domain
            where, status = "shipped mini-world model (--preset mini)", "found"
        else:
            where = d.model_ref()
            status = "found" if Path(where).is_dir() else "missing: train it (command below)"
        rows.append([d.name, d.prompt, d.description, where, status])
    for name, path in trained_domains(config).items():
        rows.append([name, Domain(name, f"a photo of {name}").prompt, "trained in this app", str(path), "found"])
    return rows


def train_command(config: AppConfig, domain: str, data: str, output: str | None = None) -> str:
    """The exact CLI command that trains ``domain`` on the images in ``data``."""
    domain = (domain or "").strip() or "NAME"
    data = (data or "").strip() or "DIR"
    if output is None:
        output = str(PRESETS[domain].model_ref()) if domain in PRESETS else f"domains/{domain}"
    parts = ["python", "launch.py", "train", "--domain", domain, "--data", data, "--output", output]
    if config.preset in ("tiny", "mini"):
        parts += ["--preset", config.preset]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------------------------------------
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


def make_config(cls, values: dict, fields_of=None):
    """``cls(**values)`` keeping only the fields ``cls`` (or the dataclass ``fields_of``) has (the rest are
    reported in the log)."""
    names = {f.name for f in dataclasses.fields(fields_of or cls)}
    if fields_of is not None:
        names.discard("preset")  # chosen by the factory ``cls``
    dropped = sorted(k for k, v in values.items() if k not in names and v is not None)
    if dropped:
        log.info("%s has no field(s) %s; ignored", cls.__name__, ", ".join(dropped))
    return cls(**{k: v for k, v in values.items() if k in names})


def run_edit(cache: PipelineCache, *, domain: str, photo, prompt: str, strength: float, domain_weight, control_weight,
             mask, all_faces: bool, whole_image: bool, num_images: int, seed: int, steps: int,
             progress: ProgressFn | None = None) -> dict:
    """One Edit-tab job through ``editing.edit_photo`` (the CLI's ``edit``). Returns paths and face boxes."""
    from PIL import ImageDraw

    from ..images import save_image_atomic

    cfg = cache.config
    edit_photo = cfg.backends.edit_photo
    if edit_photo is None:
        raise UserError(cfg.backends.missing("edit_photo"))
    # 1. Check the request.
    steps = check_int(steps, "the number of steps", 1, cfg.max_steps)
    num = check_int(num_images, "the number of images", 1, cfg.max_images)
    seed = check_int(seed, "the seed", 0, 2**32 - 1)
    if photo is None:
        raise UserError("no photo: upload a photo to edit first")
    report = progress or (lambda *a: None)
    # 2. Models, then the edit (one job per model at a time).
    report("loading models", 0, 1, {})
    pipe, lock = cache.get(domain)
    with lock:
        out = edit_photo(pipe, photo, prompt=prompt, strength=float(strength), domain_weight=domain_weight,
                                 control_weight=control_weight, mask=mask, all_faces=bool(all_faces),
                                 whole_image=bool(whole_image), num_images=num, seed=seed, steps=steps,
                                 progress=report)
    # 3. Save: the photo with its detected face boxes, and every edited photo.
    folder = new_run_dir(cfg, "edit")
    boxes = [tuple(int(round(v)) for v in b) for b in (getattr(out, "face_boxes", None) or [])]
    marked = photo.copy()
    draw = ImageDraw.Draw(marked)
    width = max(2, round(max(marked.size) / 200))
    for b in boxes:
        draw.rectangle(b, outline=(255, 40, 40), width=width)
    marked_path = save_image_atomic(marked, folder / "faces.png")
    paths = [save_image_atomic(im, folder / f"edited-{i}.png") for i, im in enumerate(out.images)]
    write_json_atomic(dict(domain=domain, prompt=prompt, strength=strength, domain_weight=domain_weight,
                           control_weight=control_weight, mask=mask is not None, all_faces=all_faces,
                           whole_image=whole_image, num_images=num, seed=seed, steps=steps, face_boxes=boxes,
                           timings=getattr(out, "timings", None)), folder / "settings.json")
    return dict(faces=marked_path, paths=paths, boxes=boxes, size=photo.size)


def run_3d(config: AppConfig, *, prompt: str, domain: str, image=None, settings: dict | None = None,
           progress: ProgressFn | None = None):
    """One 3D-tab job through ``generators3d.run_text_to_3d`` (the CLI's ``3d``), written under OUTPUT/3d.

    ``image`` (a checked PIL image) replaces stage 1; ``settings`` are ``ThreeDConfig`` fields from the form."""
    from ..images import save_image_atomic

    # 1. Check the request.
    backends = config.backends
    if backends.missing("three_d_config", "run_text_to_3d"):
        raise UserError(backends.missing("three_d_config", "run_text_to_3d"))
    prompt = (prompt or "").strip()
    if not prompt and image is None:
        raise UserError("no prompt: type what to make (e.g. 'a vase with dragons') or upload an image")
    # 2. The run folder (an uploaded image is kept in it) and the config, as the CLI builds it.
    folder = new_run_dir(config, "3d")
    values = dict(settings or {})
    values.update(prompt=prompt, domain=domain, preset=config.preset, output=folder,
                  device=config.device, dtype=config.dtype)
    if image is not None:
        values["image"] = save_image_atomic(image, folder / "input.png")
    values.update(config.threed_overrides)
    cfg3 = make_config(backends.three_d_config, values)
    # 3. Run every stage.
    return backends.run_text_to_3d(cfg3, progress=progress)


DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


def run_train(config: AppConfig, *, domain: str, data: str, settings: dict | None = None,
              progress: ProgressFn | None = None) -> Path:
    """One Domains-tab training run through ``training.train.train_domain`` (the CLI's ``train``).

    The model is written to OUTPUT/domains/<name>, where the Generate tab finds it."""
    # 1. Check the request.
    backends = config.backends
    if backends.missing("train_config", "train_domain"):
        raise UserError(backends.missing("train_config", "train_domain"))
    domain = (domain or "").strip()
    if not DOMAIN_NAME.match(domain):
        raise UserError(f"the domain name {domain!r} must be 1-40 letters, digits, '-' or '_'")
    if domain in PRESETS:
        raise UserError(f"{domain!r} is a preset name: choose another name for your own domain")
    data_dir = Path((data or "").strip()).expanduser()
    if not str(data).strip() or not data_dir.is_dir():
        raise UserError(f"the image folder {str(data).strip()!r} does not exist on this machine: give a folder of images")
    output = config.output_dir / "domains" / domain
    # 2. The config, as the CLI builds it; then train.
    values = dict(settings or {})
    values.update(domain=domain, data=str(data_dir), output=str(output), device=config.device, dtype=config.dtype)
    values.update(config.train_overrides)
    cfg = make_config(functools.partial(backends.train_config.for_preset, config.preset), values,
                      fields_of=backends.train_config)
    return Path(backends.train_domain(cfg, progress=progress) or output)
