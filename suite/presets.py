"""Which models a preset and a domain mean, and the pipeline built from them: what the CLI flags, the app's
fields, the 3D flow and the threestudio extension all describe.

``full`` is real SD1.5 weights (a folder or hub id; flags, environment variables, then the defaults), ``mini`` the
mini world's trained models shipped with the suite, ``tiny`` tiny random models built offline. The loaders
themselves are :mod:`suite.models`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# the device and dtype helpers live in suite.devices (the pipeline reads them too); their names stay here
from .devices import DTYPES, check_device, process_device, recorded_dtype, resolve_device  # noqa: F401
from .domains import CANNY_CONTROLNET_HUB_ID, PRESETS, SD15_HUB_ID, Domain, domain_home, get_domain, user_domain

log = logging.getLogger("suite")

ZERO123_HUB_ID = "ashawkey/zero123-xl-diffusers"
DEPTH_HUB_ID = "depth-anything/Depth-Anything-V2-Small-hf"  # the 3D flow's --depth auto on real images


# ----------------------------------------------------------------------------------------------------------
# The one table of presets: which models a preset means and what it can do. No preset name is compared anywhere
# else (tests/test_architecture.py checks); a package keeps at most one table of its own sizes keyed by the name.
# The model locations import inside their functions: `launch.py --help` reads this table and loads no torch.
def _tiny_root():
    from .testing import tiny_model_dir

    return tiny_model_dir()


def _mini_root(domain: str = "porcelain") -> dict:
    from .miniworld import assets

    return assets.model_refs(domain)  # checked against the manifest: a missing file is one sentence


def _mini_zero123() -> str:
    from .miniworld.assets import check, default_dir

    check()
    return str(default_dir() / "zero123")


def _tiny_zero123() -> str:
    from .testing import tiny_zero123_dir

    return str(tiny_zero123_dir())


def _mini_depth() -> str:
    from .miniworld.assets import check, default_dir
    from .models import ModelLoadError

    check()
    folder = default_dir() / "depth"
    if not (folder / "config.json").is_file():  # a mini world built before the depth estimator
        raise ModelLoadError(f"this mini world ({default_dir()}) has no depth estimator: add it with `python -m "
                             f"training.mini_depth --output {default_dir()}`, or pass --depth off")
    return str(folder)


def _tiny_depth() -> str:
    from .testing import tiny_depth_dir

    return str(tiny_depth_dir())


def _mini_domain(dom: Domain) -> Domain:
    from .miniworld import assets

    return assets.MINI_DOMAINS.get(dom.name, dom)


def _mini_own_domain(dom: Domain) -> Domain:
    """A domain given by its own model on the mini world: a mini domain's name (``face``, ``porcelain``: a model
    retrained for it) keeps that domain's recommended guidance and framing; any other name, where it has no weights or
    rule of its own, gets the porcelain preset's (``w_d = 1, w_c = 7`` and its noise-level split), not the paper's
    automatic weights, which over-weight the domain on the mini world (:data:`suite.miniworld.assets.OWN_DOMAIN_WEIGHTS`
    has the measurements)."""
    from .miniworld import assets

    shipped = assets.MINI_DOMAINS.get(dom.name)
    if shipped is not None:
        return replace(shipped, model=dom.model)
    wd, wc = assets.OWN_DOMAIN_WEIGHTS
    return replace(dom, domain_weight=wd if dom.domain_weight is None else dom.domain_weight,
                   control_weight=wc if dom.control_weight is None else dom.control_weight,
                   rule=dom.rule or assets.MINI_RULE, resolution=64)


@dataclass(frozen=True)
class Preset:
    """One preset (``--preset NAME``): where its models come from and what runs on it.

    ``sd``, ``domain_model(name)``, ``controlnet``, ``zero123``, ``depth`` (the 3D flow's depth estimator): model references (a folder or hub id) when no flag
    names one. ``domain_defaults(domain)``: the domain as this preset ships it, with its recommended guidance
    weights (the mini world's porcelain: ``w_d = 1, w_c = 7``), which :class:`suite.pipeline.InDomainPipeline`
    applies when a caller gives no weights. ``own_domain_defaults(domain)``: the same for a domain given by its own
    model (``--domain-model``, a domain of your own): the mini world's fixed weights, else unchanged (automatic). ``domains``: the domains it has models for (``None``: every domain
    preset). ``small_vocabulary``: its text model reads a few words (prompts are checked, view suffixes dropped).
    ``trains_on_cpu``: its training runs on a CPU. ``random_weights``: its images show the plumbing, not quality.
    ``offline``: its own models replace the hub defaults (nothing is downloaded).
    """

    name: str
    help: str
    sd: Callable[[], str]
    domain_model: Callable[[str], str]
    controlnet: Callable[[], str | None]
    zero123: Callable[[], str]
    depth: Callable[[], str] = lambda: os.environ.get("INDOMAIN_DEPTH_MODEL") or DEPTH_HUB_ID
    default_domain: str = "face"
    domains: tuple[str, ...] | None = None
    domain_defaults: Callable[[Domain], Domain] = lambda dom: dom
    own_domain_defaults: Callable[[Domain], Domain] = lambda dom: dom
    small_vocabulary: bool = False
    trains_on_cpu: bool = False
    random_weights: bool = False
    offline: bool = False


PRESET_TABLE: dict[str, Preset] = {p.name: p for p in (
    Preset("full", "real SD1.5 weights and your domain models (flags, environment variables, then the defaults)",
           sd=lambda: os.environ.get("INDOMAIN_SD_MODEL") or SD15_HUB_ID,
           domain_model=lambda name: get_domain(name).model_ref(),  # $INDOMAIN_HOME/domains/<name>
           controlnet=lambda: CANNY_CONTROLNET_HUB_ID,
           zero123=lambda: os.environ.get("INDOMAIN_ZERO123_MODEL") or ZERO123_HUB_ID),
    Preset("mini", "the mini world: small models trained on a synthetic 3D world and shipped with the suite",
           sd=lambda: _mini_root()["sd"], domain_model=lambda name: _mini_root(name)["domain"],
           controlnet=lambda: None, zero123=_mini_zero123, depth=_mini_depth, default_domain="porcelain", domains=("porcelain", "face"),
           domain_defaults=_mini_domain, own_domain_defaults=_mini_own_domain, small_vocabulary=True, trains_on_cpu=True, offline=True),
    Preset("tiny", "tiny random models built offline (the plumbing, not quality)",
           sd=lambda: str(_tiny_root() / "sd"),
           domain_model=lambda name: str(_tiny_root() / f"domain-{name if name in PRESETS else 'face'}"),
           controlnet=lambda: str(_tiny_root() / "controlnet"), zero123=_tiny_zero123, depth=_tiny_depth,
           trains_on_cpu=True,
           random_weights=True, offline=True),
)}
PRESET_NAMES = tuple(PRESET_TABLE)
DEFAULT_PRESET = "full"


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or one sentence naming the known ones."""
    try:
        return PRESET_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESET_NAMES)}") from None


def default_domain(preset: str, domain: str | None) -> str:
    """The domain when none is given: the preset's (porcelain on the mini world, its only domain), else face."""
    return domain or get_preset(preset).default_domain


def warn_prompt(preset: str, prompt: str | None) -> list[str]:
    """Log (and return) the warnings about a prompt the preset's models cannot follow (the mini world's small
    vocabulary); nothing for real models."""
    if not get_preset(preset).small_vocabulary:
        return []
    from .miniworld.world import prompt_warnings

    found = prompt_warnings(prompt)
    for text in found:
        log.warning(text)
    return found


_HOME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a folder name in $INDOMAIN_HOME/domains


def resolve_domain(domain: str, domain_model: str | None = None) -> Domain:
    """A preset (optionally with another model folder) or a user domain given by its model folder."""
    domain_model = str(domain_model) if isinstance(domain_model, os.PathLike) else domain_model
    own_model = domain_model if domain_model and domain_model.lower() != "none" else None
    if domain in PRESETS:
        return user_domain(domain, own_model) if own_model else get_domain(domain)
    if not own_model:
        home = domain_home() / domain  # where the README says your own domain models go
        # a name, never a path: "../x" (from the app's free-text domain box) must not reach another folder
        if _HOME_NAME.match(domain) and (home / "nulltext.json").is_file():
            return user_domain(domain, str(home))
        raise ValueError(
            f"unknown domain {domain!r}: use one of {', '.join(PRESETS)}, pass --domain-model FOLDER for your own, or "
            f"put its model at {str(home)!r} ($INDOMAIN_HOME/domains/<name>)"
        )
    return user_domain(domain, own_model)


def trained_domain_name(model: str) -> str | None:
    """The domain a local domain model was trained for (its ``nulltext.json``), None where it cannot be read (a hub
    id, a folder that is not a domain model: its loader says so)."""
    import json

    try:
        name = json.loads((Path(os.path.expanduser(str(model))) / "nulltext.json").read_text()).get("domain")
    except (OSError, ValueError, AttributeError):
        return None
    return name.strip() if isinstance(name, str) and name.strip() else None


def chosen_domain(domain: str | None, domain_model: str | None = None) -> str | None:
    """``--domain``, else the domain a ``--domain-model`` folder was trained for (:func:`trained_domain_name`); None
    when neither says (the command's default applies)."""
    if domain:
        return domain
    if domain_model and str(domain_model).lower() != "none":
        return trained_domain_name(domain_model)
    return None


def model_refs(preset: str = "full", domain: str | None = None, sd_model: str | None = None,
               domain_model: str | None = None, controlnet: str | None = None) -> dict:
    """Where each model comes from: the flags when given, else the preset's (:data:`PRESET_TABLE`).

    Returns ``sd``, ``domain`` (None = no domain guidance: ``domain_model='none'``), ``controlnet`` (None: the
    preset has none) and ``domain_obj`` (the :class:`Domain`, with the preset's recommended weights for its own
    domain model).
    """
    p = get_preset(preset)
    # a path object as its text (train_domain returns a Path: build_pipeline(domain_model=train_domain(cfg)) was an
    # AttributeError 'lower')
    sd_model, domain_model, controlnet = (str(v) if isinstance(v, os.PathLike) else v
                                          for v in (sd_model, domain_model, controlnet))
    no_domain = domain_model is not None and str(domain_model).lower() == "none"
    domain = default_domain(preset, chosen_domain(domain, domain_model))  # a model's own, not the preset's default
    dom = resolve_domain(domain, domain_model)
    own = None if no_domain else domain_model or (dom.model if dom.name not in PRESETS else None)  # one of $INDOMAIN_HOME
    if own is None:
        if not no_domain and p.domains is not None and dom.name not in p.domains:
            p.domain_model(dom.name)  # one sentence naming the preset's domains
        dom = p.domain_defaults(dom)  # its recommended weights (kept with --domain-model none: the base alone)
    else:
        dom = p.own_domain_defaults(dom)
    if controlnet is not None and str(controlnet).lower() == "none":
        controlnet = None
    else:
        controlnet = controlnet or p.controlnet()
    return dict(sd=sd_model or p.sd(), domain=None if no_domain else (own or p.domain_model(dom.name)),
                controlnet=controlnet, domain_obj=dom)


def zero123_ref(preset: str = "full") -> str:
    """The preset's Zero-1-to-3: the tiny random one, the mini world's trained one (checked against its manifest),
    else ``$INDOMAIN_ZERO123_MODEL`` or the real one."""
    return get_preset(preset).zero123()


def depth_ref(preset: str = "full") -> str:
    """The preset's depth estimator (the 3D flow's ``--depth auto``): the tiny random one, the mini world's trained
    one, else ``$INDOMAIN_DEPTH_MODEL`` or Depth Anything V2 Small."""
    return get_preset(preset).depth()


def sd_ref(preset: str = "full") -> str:
    """The preset's SD1.5 (the base a domain model is trained from)."""
    return get_preset(preset).sd()


def build_pipeline(preset: str = "full", domain: str | None = None, sd_model: str | None = None,
                   domain_model: str | None = None, controlnet: str | None = None, need_controlnet: bool = False,
                   device: str | None = None, dtype: str | None = None):
    """The :class:`suite.pipeline.InDomainPipeline` for a preset/domain and optional model overrides
    (what the CLI flags and the app's fields describe)."""
    from .pipeline import InDomainPipeline

    refs = model_refs(preset, domain, sd_model, domain_model, controlnet)
    if need_controlnet and refs["controlnet"] is None:
        raise ValueError(f"the {preset} preset has no ControlNet: pass --controlnet FOLDER with a ControlNet trained "
                         f"for its base, or drop --control-image")
    dev, dt = resolve_device(device, dtype)
    return InDomainPipeline.load(refs["sd"], domain_model=refs["domain"],
                                 controlnet=refs["controlnet"] if need_controlnet else None,
                                 domain=refs["domain_obj"], device=dev, dtype=dt)
