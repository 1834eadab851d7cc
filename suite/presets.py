"""Which models a preset and a domain mean, and the pipeline built from them: what the CLI flags, the app's
fields, the 3D flow and the threestudio extension all describe.

``full`` is real SD1.5 weights (a folder or hub id; flags, environment variables, then the defaults), ``mini`` the
mini world's trained models shipped with the suite, ``tiny`` tiny random models built offline. The loaders
themselves are :mod:`suite.models`.
"""

from __future__ import annotations

import logging
import os

import torch

from .domains import PRESETS, Domain, get_domain, user_domain

log = logging.getLogger("suite")


# which models a preset and a domain mean, and the pipeline built from them (what the CLI flags, the app's
# fields, the 3D flow and the threestudio extension all describe)

def default_domain(preset: str, domain: str | None) -> str:
    """The domain when none is given: porcelain for the mini preset (its only domain), else face."""
    return domain or ("porcelain" if preset == "mini" else "face")



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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = dtype or ("float16" if str(device).startswith("cuda") else "float32")
    return torch.device(device), getattr(torch, name)


def resolve_domain(domain: str, domain_model: str | None = None) -> Domain:
    """A preset (optionally with another model folder) or a user domain given by its model folder."""
    own_model = domain_model if domain_model and domain_model.lower() != "none" else None
    if domain in PRESETS:
        return user_domain(domain, own_model) if own_model else get_domain(domain)
    if not own_model:
        raise ValueError(
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
        raise ValueError("the mini preset has no ControlNet: pass --controlnet FOLDER with a ControlNet trained for "
                        "the mini base, or drop --control-image")
    dev, dt = resolve_device(device, dtype)
    return InDomainPipeline.load(refs["sd"], domain_model=refs["domain"],
                                 controlnet=refs["controlnet"] if need_controlnet else None,
                                 domain=refs["domain_obj"], device=dev, dtype=dt)
