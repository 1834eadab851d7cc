"""The app's state, free of gradio: its settings, a cache of loaded pipelines, jobs with progress and cancel, its
output files and the domains it lists. The jobs themselves are :mod:`app.runs`.

The app is a composition root beside ``launch.py``: it calls the same library functions as the CLI
(``suite.presets.build_pipeline``, the pipeline's ``__call__``, ``editing.edit_photo``,
``generators3d.run_text_to_3d``, ``training.train.train_domain``), imported directly; nothing runs ``launch.py``
in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from suite.checks import Progress, UserError
from suite.domains import PRESETS, domain_home, domain_prompt
from suite.files import write_text_atomic
from suite.presets import DEFAULT_PRESET, build_pipeline, get_preset

log = logging.getLogger("app")


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
    # Server folders the Domains tab may train on (--data-root); none: training on server folders is off.
    data_roots: tuple = ()
    # Settings forced on every 3D / training run (tests use them for short runs; not exposed in the UI).
    threed_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir).resolve()


class JobCancelled(Exception):
    """Raised inside a job's progress callback once the user pressed Cancel."""


# loaded models
def _stamp(path: Path):
    """What changes when a file is written again (replaced or rewritten)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PipelineCache:
    """Loaded pipelines keyed by (preset, domain, model folder, ControlNet), least recently used dropped first.

    Each entry has its own lock: one job at a time per model, so two users cannot run the same weights at once
    (the gradio queue's concurrency limit bounds how many models run at all).
    """

    def __init__(self, config: AppConfig):
        self.config = config
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._reserved = 0  # slots held by models loaded outside the cache (reserved())

    def get(self, domain: str, need_controlnet: bool = False):
        """``(pipeline, lock)`` for a domain name (a preset or one trained in this app)."""
        model = domain_model_for(self.config, domain)
        # the model as it is on disk now: a domain trained again under its name was served from the old weights
        from suite.nulltext import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE  # every file a save writes

        stamp = tuple(_stamp(model / name) for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)) if model else None
        key = (self.config.preset, domain, str(model) if model else None, stamp, bool(need_controlnet))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            self._keep(max(self.config.max_loaded_models - self._reserved, 1) - 1)
            log.info("loading models for %s", key)
            pipe = build_pipeline(self.config.preset, domain, None, str(model) if model else None, None,
                                  need_controlnet, self.config.device, self.config.dtype)
            entry = (pipe, threading.Lock())
            self._entries[key] = entry
            return entry

    def _keep(self, n: int) -> None:
        """Unload the least recently used pipelines until ``n`` are left (a job running one keeps it until it ends)."""
        while len(self._entries) > max(n, 0):
            old, _ = self._entries.popitem(last=False)
            log.info("unloading %s", old)

    @contextlib.contextmanager
    def reserved(self, slots: int = 1):
        """``slots`` of ``--max-loaded-models`` held for models loaded outside the cache while the block runs: a 3D
        job's own (the base, the domain model, Zero-1-to-3), which the limit did not count. Pipelines loaded
        meanwhile (another job, with ``--max-jobs`` above 1) stay within what is left, at least one."""
        with self._lock:
            self._reserved += slots
            self._keep(self.config.max_loaded_models - self._reserved)
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= slots

    def loaded(self) -> list[tuple]:
        with self._lock:
            return list(self._entries)


class Jobs:
    """Cancel flags per browser session and tab: Cancel sets the flag, the job's next progress call raises. One flag
    per session cancelled the session's latest job, whichever tab it ran in (Cancel on Generate stopped an edit)."""

    def __init__(self, max_jobs: int = 1):
        self._flags: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()
        # Held by each model job's thread while it runs (app.runs.ThreadJob): a job cancelled through the API leaves
        # gradio's queue at once, but the next one waits here until the cancelled one has stopped.
        self.gate = threading.BoundedSemaphore(max(1, int(max_jobs)))

    def start(self, session: str, tab: str = "") -> threading.Event:
        with self._lock:
            ev = self._flags[(session, tab)] = threading.Event()
            return ev

    def cancel(self, session: str, tab: str = "") -> bool:
        with self._lock:
            ev = self._flags.get((session, tab))
        if ev is None:
            return False
        ev.set()
        return True

    def cancel_all(self) -> None:
        """Every job stops at its next progress report (the server is stopping)."""
        with self._lock:
            flags = list(self._flags.values())
        for ev in flags:
            ev.set()


def checked_progress(progress: Progress | None, cancel: threading.Event | None) -> Progress:
    """Wrap a progress function so that a pressed Cancel stops the job at its next report."""

    def report(stage: str, done: int, total: int, info: dict | None = None) -> None:
        if cancel is not None and cancel.is_set():
            raise JobCancelled(f"{stage} cancelled at {done}/{total}")
        if progress is not None:
            progress(stage, done, total, info or {})

    return report


@contextlib.contextmanager
def turn(lock, report: Progress, waiting: str):
    """Hold ``lock`` (a semaphore or a lock) for a job; while another job holds it, report ``waiting`` every half
    second, so that the page says why the job is not moving and a Cancel is seen (a report raises it)."""
    waited = False
    while not lock.acquire(timeout=0.5):
        waited = True
        report(waiting, 0, 1, {})
    try:
        if waited:
            report(waiting, 1, 1, {})
        yield
    finally:
        lock.release()


# output files
SERVED_KINDS = ("generate", "edit", "3d")  # the result folders the page shows files from


COPIES_KEPT_S = 86400  # gradio's copies of uploads and results are deleted a day after they were made


class ServedCopies:
    """Gradio's copies of the files it serves, in the app's upload cache ``OUTPUT/.uploads``.

    gradio's own ``delete_cache`` removes only the copies it tracks (uploads), and the copies of the results a
    handler returns were not among them here (gradio 6.31: after a Generate, ``demo.temp_file_sets`` held nothing, and
    the copy stayed after ``demo.close()`` and after a SIGTERM): each result's copy stayed for good. Swept here: a
    day after they were made (at the start, then every hour), and every copy made since this server started when it
    stops (Ctrl-C, SIGTERM; a second server on the same output folder loses its copies of that time too, not its
    results). Only the app's own folder: a ``GRADIO_TEMP_DIR`` set elsewhere may be shared with other gradio apps and
    is left alone. Links are removed as links, never followed."""

    def __init__(self, config: AppConfig, every: float = 3600.0, age: float = COPIES_KEPT_S):
        import os

        own = Path(config.output_dir) / ".uploads"
        chosen = os.environ.get("GRADIO_TEMP_DIR", "")
        self.folder = own if chosen and Path(chosen).resolve() == own.resolve() else None
        self.every, self.age = every, age
        self.started = self._file_clock()
        self._stopped = threading.Event()

    def _file_clock(self) -> float:
        """Now, as the file system stamps a file made in the folder (a probe's ctime): a copy made just after
        ``time.time()`` can be stamped up to a clock tick earlier (the kernel stamps files from a coarse clock;
        measured here 8 files of 500, by up to 1.8 ms), and a copy made as the server started then escaped the sweep
        at its stop (a flaky test). The other way round, an earlier server's copies made within that tick before
        this start go at this server's stop (a second or two on file systems with coarse stamps, such as FAT)."""
        import os
        import tempfile

        now = time.time()
        if self.folder is None:
            return now
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder) as probe:
                return os.fstat(probe.fileno()).st_ctime
        except OSError:
            return now

    def start(self) -> ServedCopies:
        if self.folder is not None:
            self.sweep(older_than=self.age)
            threading.Thread(target=self._every, name="sweep served copies", daemon=True).start()
        return self

    def _every(self) -> None:
        while not self._stopped.wait(self.every):
            self.sweep(older_than=self.age)

    def stop(self) -> int:
        """End the hourly sweep and delete this server's copies; returns how many went."""
        self._stopped.set()
        return self.sweep(since=self.started) if self.folder is not None else 0

    def sweep(self, older_than: float | None = None, since: float | None = None) -> int:
        """Delete the copies made more than ``older_than`` seconds ago, or at ``since`` (a time) or later, and the
        folders they leave empty; returns how many files went."""
        now, gone = time.time(), 0
        if self.folder is None or not self.folder.is_dir() or self.folder.is_symlink():
            return 0

        def chosen(st) -> bool:
            return ((older_than is not None and now - st.st_ctime > older_than)
                    or (since is not None and st.st_ctime >= since))

        for path in sorted(self.folder.rglob("*"), reverse=True):  # a folder's files before the folder
            try:
                st = path.lstat()
                if path.is_dir() and not path.is_symlink():
                    if chosen(st) or since is not None:  # an empty folder; one being filled now is young: kept
                        path.rmdir()
                elif chosen(st):
                    path.unlink()
                    gone += 1
            except OSError:  # not empty, or gone already
                continue
        return gone


def served_dirs(config: AppConfig) -> list[Path]:
    """The folders whose files the page may show: the results of each tab (created here). Uploads are not among
    them (see :func:`app.ui.launch`)."""
    dirs = [config.output_dir / kind for kind in SERVED_KINDS]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def new_run_dir(config: AppConfig, kind: str) -> Path:
    """A fresh folder ``OUTPUT/<kind>/<time>-<id>`` (every file the app serves lives under OUTPUT)."""
    folder = config.output_dir / kind / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def write_json_atomic(data: dict, path: Path) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


# domains
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")  # a domain name the app trains and lists


def domain_name_problem(name: str, preset_names: bool = False) -> str | None:
    """The sentence for a name the app cannot give a domain of your own (None when it can): a folder name on any
    system, not a preset's in any letters (``preset_names``: a preset's own name, exactly, is fine)."""
    if not DOMAIN_NAME.match(name or ""):
        return f"the domain name {name!r} must be 1-40 letters, digits, '-' or '_'"
    if name.lower() in {p.lower() for p in PRESETS} and not (preset_names and name in PRESETS):
        return f"{name!r} is a preset name: choose another name for your own domain"
    return None


def _fits_base(config: AppConfig, folder: Path) -> bool:
    """Whether a domain model folder was made for the preset's base model (its UNet's shape), read from the configs
    alone; True where the base's cannot be read (a hub id)."""
    try:
        base = json.loads((Path(get_preset(config.preset).sd()) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return True
    try:
        mine = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return all(mine.get(k) == base.get(k) for k in ("block_out_channels", "cross_attention_dim", "in_channels"))


def trained_domains(config: AppConfig) -> dict[str, Path]:
    """Domain models of your own: those trained from this app (``OUTPUT/domains/<name>``, holding a saved model),
    then those where the CLI finds them (``$INDOMAIN_HOME/domains/<name>``, what `--domain NAME` loads) that were
    made for this preset's base model. A preset's name, or a name taken already in other letters, is left out."""
    found = {}
    taken = {n.lower() for n in PRESETS}
    root = config.output_dir / "domains"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "config.json").is_file() and d.name.lower() not in taken:
                found[d.name] = d
                taken.add(d.name.lower())
    home = domain_home()
    with contextlib.suppress(OSError):
        if home.is_dir() and home.resolve() != root.resolve():
            for d in sorted(home.iterdir()):
                if (DOMAIN_NAME.match(d.name) and d.name.lower() not in taken and (d / "nulltext.json").is_file()
                        and _fits_base(config, d)):
                    found[d.name] = d
                    taken.add(d.name.lower())
    return found


def domain_model_for(config: AppConfig, domain: str) -> Path | None:
    """The model folder of a domain trained in this app, None for a preset's; any other name (a typo, a path such as
    ``../x``) is one sentence naming the domains there are. Every tab takes its domain through this."""
    names = list_domain_names(config)
    if domain not in names:  # a domain preset this preset has no model for too (its sentence named CLI flags)
        raise UserError(f"unknown domain {domain!r}: choose one of {', '.join(names)}")
    return trained_domains(config).get(domain)


def list_domain_names(config: AppConfig) -> list[str]:
    presets = list(get_preset(config.preset).domains or PRESETS)
    return presets + list(trained_domains(config))


def domain_rows(config: AppConfig) -> list[list[str]]:
    """One row per known domain: name, domain prompt, what it is, where its model comes from, found?"""
    rows = []
    preset = get_preset(config.preset)
    for d in PRESETS.values():
        if preset.domains is not None and d.name not in preset.domains:
            continue  # e.g. the mini world has one domain
        if preset.random_weights:
            where, status = f"tiny random model built offline (--preset {preset.name})", "built on first use"
        elif preset.offline:
            where, status = f"shipped model (--preset {preset.name}: {preset.help})", "found"
        else:
            where = d.model_ref()
            status = "found" if Path(where).is_dir() else "missing: train it (command below)"
        rows.append([d.name, d.prompt, d.description, where, status])
    root = config.output_dir / "domains"
    for name, path in trained_domains(config).items():
        where = "trained in this app" if path.parent == root else "your own ($INDOMAIN_HOME/domains)"
        rows.append([name, domain_prompt(name), where, str(path), "found"])
    return rows


def train_command(config: AppConfig, domain: str, data: str, output: str | None = None) -> str:
    """The exact CLI command that trains ``domain`` on the images in ``data``: into the folder this app lists it from
    (``OUTPUT/domains/<name>``; with real weights, a preset's domain where the CLI looks for its model). A name the
    app cannot use (a preset's on a preset that ships its models, or in other letters) gives its sentence as a shell
    comment instead."""
    domain = (domain or "").strip() or "NAME"
    data = (data or "").strip() or "DIR"
    problem = domain_name_problem(domain, preset_names=not get_preset(config.preset).offline)
    if problem:
        return f"# {problem}"
    if output is None:
        output = str(PRESETS[domain].model_ref()) if domain in PRESETS else str(config.output_dir / "domains" / domain)
    parts = ["python", "launch.py", "train", "--domain", domain, "--data", data, "--output", output]
    if config.preset != DEFAULT_PRESET:
        parts += ["--preset", config.preset]
    return " ".join(shlex.quote(p) for p in parts)
