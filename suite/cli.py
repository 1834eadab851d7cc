"""Command-line pieces shared by every subcommand of ``launch.py``: model flags, the tiny preset, errors.

Each subcommand lives in its package as a module with ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``; ``launch.py`` only wires them. Errors that users can fix (``ValueError``,
:class:`suite.models.ModelLoadError`, missing files) are printed as one sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from .domains import PRESETS, Domain, get_domain, user_domain

log = logging.getLogger("suite")


PRESET_NAMES = ["full", "mini", "tiny"]
RECOMMENDED = "recommended"  # a weight flag not given: the domain's recommended weight, else automatic
PRESET_HELP = ("'full': real SD1.5 weights; 'mini': the mini world, small models trained on a synthetic 3D world and "
               "shipped with the suite (real results on a CPU in seconds, no download; domain: porcelain); 'tiny': "
               "tiny random models (checks the plumbing, images are noise) (default: %(default)s)")


def default_domain(preset: str, domain: str | None) -> str:
    """The domain when none is given: porcelain for the mini preset (its only domain), else face."""
    return domain or ("porcelain" if preset == "mini" else "face")


class UserError(Exception):
    """An error caused by the user's input; printed as one sentence, exit code 2."""


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return v

    return parse


def weight_arg(text: str):
    """A weight: a finite number, or ``auto`` (``None``). The default ``recommended`` passes through."""
    if text == RECOMMENDED:  # argparse converts a string default with the type too
        return RECOMMENDED
    if text.strip().lower() == "auto":
        return None
    return finite_float(text)


def add_model_arguments(parser: argparse.ArgumentParser, controlnet: bool = True) -> None:
    g = parser.add_argument_group("models")
    g.add_argument("--preset", choices=PRESET_NAMES, default="full", help=PRESET_HELP)
    g.add_argument("--domain", default=None,
                   help=f"domain preset ({', '.join(PRESETS)}) or the name of your own domain (default: face; "
                        f"porcelain with --preset mini)")
    g.add_argument("--sd-model", default=None,
                   help="Stable Diffusion 1.5: a diffusers folder or hub id (default: $INDOMAIN_SD_MODEL or "
                        "stable-diffusion-v1-5/stable-diffusion-v1-5)")
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
    g.add_argument("--domain-weight", type=weight_arg, default=RECOMMENDED,
                   help="w_d, a number or 'auto' (the paper's norm rule) (default: the domain's recommended weight "
                        "if it has one, e.g. 1 for the mini world's porcelain, else auto)")
    g.add_argument("--control-weight", type=weight_arg, default=RECOMMENDED,
                   help="w_c, a number or 'auto' (default: the domain's recommended weight if it has one, e.g. 7 "
                        "for the mini world's porcelain, else auto)")
    g.add_argument("--w0", type=finite_float, default=7.0,
                   help="total guidance strength for automatic weights (default: %(default)s)")
    g.add_argument("--auto-norm", choices=["direction", "prediction"], default="direction",
                   help="norms of the automatic weights: guidance directions or raw predictions (default: %(default)s)")
    g.add_argument("--negative-prompt", default="", help="negative prompt (replaces the empty prompt of eps_sd)")
    g.add_argument("--steps", type=int, default=None, help="DPM-Solver++ steps (default: 25; the paper uses 100)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--num-images", type=int, default=1, help="images per run (default: %(default)s)")


def guidance_weights(args, domain: Domain | None) -> tuple:
    """``(w_d, w_c)`` from the flags of :func:`add_guidance_arguments`: a flag not given takes the domain's
    recommended weight (``None`` = automatic), ``auto`` is automatic, a number is used as given."""
    def pick(value, recommended):
        return recommended if value == RECOMMENDED else value

    return (pick(args.domain_weight, domain.domain_weight if domain else None),
            pick(args.control_weight, domain.control_weight if domain else None))


def warn_prompt(preset: str, prompt: str | None) -> list[str]:
    """Log (and return) the warnings about a prompt the preset's models cannot follow (the mini world's small
    vocabulary); nothing for real models."""
    if preset != "mini":
        return []
    from .miniworld.world import prompt_warnings

    found = prompt_warnings(prompt)
    for text in found:
        log.warning(text)
    return found


def resolve_device(device: str | None = None, dtype: str | None = None) -> tuple:
    """``(torch.device, torch.dtype)``: cuda if available, else cpu; float16 on cuda, float32 on cpu."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = dtype or ("float16" if str(device).startswith("cuda") else "float32")
    return torch.device(device), getattr(torch, name)


def resolve_domain(domain: str, domain_model: str | None = None) -> Domain:
    """A preset (optionally with another model folder) or a user domain given by its model folder."""
    own_model = domain_model if domain_model and domain_model.lower() != "none" else None
    if domain in PRESETS:
        return user_domain(domain, own_model) if own_model else get_domain(domain)
    if not own_model:
        raise UserError(
            f"unknown domain {domain!r}: use one of {', '.join(PRESETS)}, or pass --domain-model FOLDER for your own"
        )
    return user_domain(domain, own_model)


def model_refs(preset: str = "full", domain: str | None = None, sd_model: str | None = None,
               domain_model: str | None = None, controlnet: str | None = None) -> dict:
    """Where each model comes from: the tiny folder for ``preset='tiny'``, the shipped mini world for
    ``preset='mini'``, else flags / env / defaults.

    Returns ``sd``, ``domain`` (None = no domain guidance: ``domain_model='none'``), ``controlnet`` and
    ``domain_obj`` (the :class:`Domain`).
    """
    from .domains import CANNY_CONTROLNET_HUB_ID, SD15_HUB_ID

    domain = default_domain(preset, domain)
    dom = resolve_domain(domain, domain_model)
    no_domain = domain_model is not None and str(domain_model).lower() == "none"
    own = None if no_domain else domain_model
    if preset == "tiny":
        from .testing import tiny_model_dir

        root = tiny_model_dir()
        name = dom.name if dom.name in PRESETS else "face"
        return dict(sd=sd_model or str(root / "sd"), domain=None if no_domain else (own or str(root / f"domain-{name}")),
                    controlnet=controlnet or str(root / "controlnet"), domain_obj=dom)
    if preset == "mini":
        from .miniworld import assets

        if sd_model is None or own is None:
            mini = assets.model_refs(dom.name if own is None and not no_domain else "porcelain")
        if controlnet is None:
            controlnet = "none"  # the mini world has no ControlNet; a --controlnet folder still works
        if own is None and dom.name == "porcelain":
            dom = assets.MINI_PORCELAIN  # with its recommended weights for the shipped domain model
        return dict(sd=sd_model or mini["sd"], domain=None if no_domain else (own or mini["domain"]),
                    controlnet=None if controlnet == "none" else controlnet, domain_obj=dom)
    return dict(sd=sd_model or os.environ.get("INDOMAIN_SD_MODEL") or SD15_HUB_ID,
                domain=None if no_domain else (own or dom.model_ref()),
                controlnet=controlnet or CANNY_CONTROLNET_HUB_ID, domain_obj=dom)


def build_pipeline(preset: str = "full", domain: str | None = None, sd_model: str | None = None,
                   domain_model: str | None = None, controlnet: str | None = None, need_controlnet: bool = False,
                   device: str | None = None, dtype: str | None = None):
    """The :class:`suite.pipeline.InDomainPipeline` for a preset/domain and optional model overrides
    (what the CLI flags and the app's fields describe)."""
    from .pipeline import InDomainPipeline

    refs = model_refs(preset, domain, sd_model, domain_model, controlnet)
    if need_controlnet and refs["controlnet"] is None:
        raise UserError("the mini preset has no ControlNet: pass --controlnet FOLDER with a ControlNet trained for "
                        "the mini base, or drop --control-image")
    dev, dt = resolve_device(device, dtype)
    return InDomainPipeline.load(refs["sd"], domain_model=refs["domain"],
                                 controlnet=refs["controlnet"] if need_controlnet else None,
                                 domain=refs["domain_obj"], device=dev, dtype=dt)


def load_pipeline(args, need_controlnet: bool = False):
    """:func:`build_pipeline` from the flags of :func:`add_model_arguments`."""
    return build_pipeline(args.preset, args.domain, args.sd_model, args.domain_model,
                          getattr(args, "controlnet", None), need_controlnet, args.device, args.dtype)


def quiet_libraries() -> None:
    """Keep diffusers/transformers' loading chatter out of the CLI's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - chatter control must never stop a run
        pass


def run_main(main, args) -> int:
    """Run a subcommand's ``main(args)``; user-fixable errors become one sentence and exit code 2."""
    from .models import ModelLoadError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    try:
        return int(main(args) or 0)
    except (UserError, ValueError, ModelLoadError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        msg = str(err).strip() or type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
