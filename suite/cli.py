"""Command-line pieces shared by every subcommand of ``launch.py``: argparse flags, and running a subcommand.

Each subcommand lives in its package as a module with ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; ``launch.py`` only wires them. This module holds only what turns flags into calls: the
flag definitions every subcommand shares (so they cannot drift), :func:`load_pipeline` (flags ->
:func:`suite.presets.build_pipeline`) and :func:`run_main`, which prints errors that users can fix
(:class:`suite.checks.UserError`, ``ValueError``, :class:`suite.models.ModelLoadError`, missing files) as one
sentence with exit code 2. It imports no torch: ``launch.py --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from .checks import (
    AUTO,
    AUTO_NORMS,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    MAX_WEIGHT,
    check_count,
    check_prompt,
    check_weight,
    finite_float,
    int_at_least,
    seed_arg,
)
from .domains import PRESETS
from .presets import DEFAULT_PRESET, PRESET_NAMES
from .rules import check_rule_terms, rule_arg

log = logging.getLogger("suite")


PRESET_HELP = ("'full': real SD1.5 weights; 'mini': the mini world, small models trained on a synthetic 3D world and "
               "shipped with the suite (real results on a CPU in seconds, no download; domain: porcelain); 'tiny': "
               "tiny random models (checks the plumbing, images are noise) (default: %(default)s)")


def weight_arg(text: str):
    """A weight flag: a finite number, or ``auto`` (the paper's automatic rule). Not given (``None``): the domain's
    recommended weight, which the pipeline applies."""
    if text.strip().lower() == AUTO:
        return AUTO
    return finite_float(text)


def add_threads_argument(parser) -> None:
    """``--threads N``, on every subcommand (``launch.py`` adds it); :func:`run_main` applies it."""
    from .threads import usable_cores

    cores = usable_cores()[1]  # the machine's (a quota or affinity may allow fewer; more than it has is never faster)
    parser.add_argument("--threads", type=int_at_least(1, cores, f"this machine has {cores} cores"), default=None,
                        metavar="N",
                        help=f"torch CPU threads, at most {cores} here (default: automatic: every core this process "
                             "may use when the "
                             "machine is idle, fewer when other jobs keep cores busy; $OMP_NUM_THREADS, if set, is "
                             "left to torch)")


def add_preset_argument(group, help: str = PRESET_HELP, default: str | None = DEFAULT_PRESET) -> None:
    """``default``: None where the command chooses it later (the 3D export: its run's preset)."""
    group.add_argument("--preset", choices=PRESET_NAMES, default=default, help=help)


def add_domain_argument(group, default: str | None = None, help: str | None = None) -> None:
    group.add_argument("--domain", default=default,
                       help=help or f"domain preset ({', '.join(PRESETS)}) or the name of your own domain "
                                    f"(default: a --domain-model folder's own; else face, porcelain with --preset mini)")


def add_sd_model_argument(group, extra: str = "") -> None:
    group.add_argument("--sd-model", default=None,
                       help="Stable Diffusion 1.5: a diffusers folder or hub id (default: $INDOMAIN_SD_MODEL or "
                            f"stable-diffusion-v1-5/stable-diffusion-v1-5{extra})")


def add_model_arguments(parser: argparse.ArgumentParser, controlnet: bool = True, domain: str | None = None,
                        preset_later: str | None = None) -> None:
    """The model flags; ``domain``: the command's default domain whatever the preset (the 3D flow's porcelain), which
    the command applies itself (``--domain`` stays None when not given: a ``--domain-model``'s own domain comes
    first); ``preset_later``: where the command chooses the preset when none is given (``--preset`` defaults to
    None)."""
    g = parser.add_argument_group("models")
    if preset_later:
        add_preset_argument(g, PRESET_HELP.replace("(default: %(default)s)",
                                                   f"(default: {DEFAULT_PRESET}; {preset_later})"), default=None)
    else:
        add_preset_argument(g)
    add_domain_argument(g, None, None if domain is None else f"domain preset ({', '.join(PRESETS)}) or the name "
                        f"of your own domain (default: a --domain-model folder's own, else {domain})")
    add_sd_model_argument(g)
    g.add_argument("--domain-model", default=None,
                   help="null-text domain model folder or hub id (default: the preset's folder, "
                        "$INDOMAIN_HOME/domains/<domain>); 'none' samples without domain guidance")
    if controlnet:
        g.add_argument("--controlnet", default=None,
                       help="SD1.5 ControlNet folder or hub id, used with --control-image "
                            "(default with --control-image: lllyasviel/control_v11p_sd15_canny)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="model dtype (default: float16 on cuda, float32 on cpu)")


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("guidance (paper Eq. 3: eps_sd + w_d (eps_d - eps_sd) + w_c (eps_c - eps_sd))")
    g.add_argument("--domain-weight", type=weight_arg, default=None,
                   help=f"w_d, a number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}] or 'auto' (the paper's norm rule) (default: the domain's recommended weight "
                        "if it has one, e.g. 1 for the mini world's porcelain, else auto)")
    g.add_argument("--control-weight", type=weight_arg, default=None,
                   help="w_c, a number or 'auto' (default: the domain's recommended weight if it has one, e.g. 7 "
                        "for the mini world's porcelain, else auto)")
    g.add_argument("--guidance-rule", type=rule_arg, default=None, metavar="RULE",
                   help="how the terms are applied beyond fixed weights (suite.rules): items such as "
                        "'domain=0-0.7' (a term only at noise levels 0..0.7; 0 clean, 1 pure noise), "
                        "'domain-ramp=1.5:0.5', 'project=domain:control' (the domain direction made orthogonal to the "
                        "prompt's), 'parallel=0.2', 'clamp=0.5' (largest RMS of the summed guidance), "
                        "'domain-share=0.25' and 'domain-max=1.5' (automatic weights); 'paper' for none "
                        "(default: the domain's recommended rule, applied where it fits the request; none with 'auto' weights)")
    g.add_argument("--w0", type=finite_float, default=7.0,
                   help="total guidance strength for automatic weights (default: %(default)s)")
    g.add_argument("--auto-norm", choices=AUTO_NORMS, default="direction",
                   help="norms of the automatic weights: guidance directions or raw predictions (default: %(default)s)")
    g.add_argument("--negative-prompt", default="", help="negative prompt (replaces the empty prompt of eps_sd)")
    g.add_argument("--steps", type=int_at_least(1), default=None,
                   help=f"DPM-Solver++ steps, at most {MAX_STEPS} (default: 25; the paper uses 100)")
    g.add_argument("--seed", type=seed_arg, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--num-images", type=int_at_least(1), default=1,
                   help=f"images per run, at most {MAX_IMAGES} (default: %(default)s)")
    g.add_argument("--allow-large", action="store_true",
                   help=f"lift the limits on --num-images ({MAX_IMAGES}), --steps ({MAX_STEPS}) and --width/--height "
                        f"({MAX_SIDE}) for machines and runs that need more, up to the Python API's (1024 images, "
                        f"16384 pixels, fewer steps than the model's schedule has timesteps)")


def check_request(args) -> None:
    """The checks every sampling subcommand (generate, edit) makes at the edge, before any model loads: prompts are
    valid text (stripped), counts and sizes within the limits (unless ``--allow-large``), weights finite and within
    +-MAX_WEIGHT. One sentence per problem."""
    large = getattr(args, "allow_large", False)
    for name in ("prompt", "negative_prompt"):
        if getattr(args, name, None) is not None:
            setattr(args, name, check_prompt(getattr(args, name), f"--{name.replace('_', '-')}"))
    if args.steps is not None:
        check_count(args.steps, "--steps", MAX_STEPS, allow_large=large)
    check_count(args.num_images, "--num-images", MAX_IMAGES, allow_large=large)
    for name in ("width", "height"):
        if getattr(args, name, None) is not None:
            check_count(getattr(args, name), f"--{name}", MAX_SIDE, minimum=8, allow_large=large)
    for name in ("domain_weight", "control_weight", "community_weight", "w0"):
        value = getattr(args, name, None)
        check_weight(value, f"--{name.replace('_', '-')}")
    rule = getattr(args, "guidance_rule", None)
    # an edit runs at the noise levels of its strength's share of the steps; a prompts file's items are checked one
    # by one, with their own prompts and weights (generate's batch)
    if rule is not None and not getattr(args, "prompts_file", None):
        span = edit_noise_range(args) if getattr(args, "strength", None) is not None else None
        check_rule_terms(rule, request_terms(args), " (check --guidance-rule)", noise_range=span)


def edit_noise_range(args) -> tuple[float, float] | None:
    """``(lo, hi)`` of ``t / T`` over an edit's timesteps, as the pipeline will run them (the last ``--strength``
    share of ``--steps``), from the base model's scheduler config alone; ``(0, strength)`` where that cannot be read
    (the load then says why)."""
    from diffusers import DPMSolverMultistepScheduler

    from .models import _hub_kwargs, resolve
    from .pipeline import DEFAULT_STEPS, InDomainPipeline, noise_range
    from .presets import model_refs

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    try:
        ref, local = resolve(model_refs(args.preset, args.domain, args.sd_model, args.domain_model)["sd"],
                             "Stable Diffusion 1.5 model", "--sd-model")
        sampler = DPMSolverMultistepScheduler.from_pretrained(ref, subfolder="scheduler", **_hub_kwargs(local))
    except Exception:  # noqa: BLE001 - any failure to read it is the model load's to report, with its sentence
        return 0.0, float(args.strength)
    sampler.set_timesteps(steps)
    # no step: None, nothing for a rule to miss
    return noise_range(InDomainPipeline.get_timesteps(sampler, steps, args.strength),
                       sampler.config.num_train_timesteps)


def request_terms(args, **item) -> list[str]:
    """The guidance terms a sampling command will have, known from its flags before any model loads: ``domain``
    unless ``--domain-model none`` or ``--domain-weight 0``; ``control`` with a prompt or a control image and a
    control weight other than 0; ``community<i>`` for each ``--community-model``. ``item``: ``prompt``,
    ``domain_weight`` or ``control_weight`` of one item of a batch, in place of the flags."""
    def get(name):
        return item[name] if name in item else getattr(args, name, None)

    names = []
    if str(getattr(args, "domain_model", "") or "").lower() != "none" and get("domain_weight") != 0:
        names.append("domain")
    if (get("prompt") or getattr(args, "control_image", None)) and get("control_weight") != 0:
        names.append("control")
    names += [f"community{i}" for i, _ in enumerate(getattr(args, "community_model", None) or [])]
    return names


def load_pipeline(args, need_controlnet: bool = False):
    """:func:`suite.presets.build_pipeline` from the flags of :func:`add_model_arguments`."""
    from .presets import build_pipeline

    return build_pipeline(args.preset, args.domain, args.sd_model, args.domain_model,
                          getattr(args, "controlnet", None), need_controlnet, args.device, args.dtype)


def quiet_libraries() -> None:
    """Keep diffusers/transformers' loading chatter out of the CLI's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    # diffusers 0.42 passes huggingface_hub an argument it deprecated: two lines of warning before every hub load,
    # the first thing a user read above the sentence that the model is missing
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated",
                            category=UserWarning)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - chatter control must never stop a run
        pass


def _says_it_for_its_machine(err: Exception | None = None) -> bool:
    """Whether this process prints its error: not when it is one of several processes of a launch (torchrun,
    accelerate) that stopped before they joined, other than each machine's first (``LOCAL_RANK`` 0). Those errors
    come from the flags and the files, the same in every process of a machine, and eight GPUs printed the sentence
    eight times; an error after the processes joined may be one process's own, and every process says it, except
    a :class:`LaunchError` (processes that did not join: each may have a process group of its own, and two said it)."""
    import torch

    from .batch import launched_processes
    from .checks import LaunchError

    if launched_processes() <= 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        return True
    if isinstance(err, LaunchError):
        return False
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler, a launcher stopping its processes), raised as Ctrl-C is: the
    run stops at once through the same paths (temporary files removed, the lock released, what was written named),
    exit code 143."""


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread for the length of the block (it killed the process on
    the spot: temporary files and the lock left behind, no word said); the handler before it is put back."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run_main(main, args) -> int:
    """Run a subcommand's ``main(args)``. Expected failures (:func:`suite.failures.explain`: bad input, models
    that cannot be read, disk full, permission denied, a port in use) become one sentence and exit code 2; anything
    else keeps its traceback, because it is a bug to report. Ctrl-C (exit 130) and SIGTERM (143) stop it with
    "interrupted", from the first import on (Ctrl-C during the imports was a 40-line traceback)."""
    try:
        with _terminate_as_interrupt():
            return _run_main(main, args)
    except KeyboardInterrupt as stop:
        print("interrupted" + (" (SIGTERM)" if isinstance(stop, Terminated) else ""), file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


def _run_main(main, args) -> int:
    from .failures import explain

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    level = os.environ.get("INDOMAIN_LOG_LEVEL", "").strip().upper()  # debug: also e.g. the torch thread choice
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        logging.getLogger("suite").setLevel(level)  # the suite's own messages only, not every library's
    quiet_libraries()
    import torch

    from .threads import apply_threads

    for key in ("output", "output_dir"):  # a quoted "~/out": 3d wrote a folder named "~", edit said it did not exist
        value = getattr(args, key, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))
    before = torch.get_num_threads()
    try:
        apply_threads(getattr(args, "threads", None))  # before the subcommand's work: the machine's load without it
        if isinstance(getattr(args, "device", None), str):  # a device this machine lacks: before any model is read
            from .presets import check_device

            check_device(args.device)
        return int(main(args) or 0)
    except Exception as err:
        msg = explain(err)
        if msg is None:
            raise
        if not _says_it_for_its_machine(err):
            return 2
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(before)  # a call from Python (launch.main) leaves its caller's setting as it was
