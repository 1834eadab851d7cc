"""Domain presets: typed, greppable definitions. Add your own with :func:`user_domain` or ``--domain-model``.

No pretrained domain models are published on a hub for this suite, so a preset's model lives in a
local folder: ``$INDOMAIN_HOME/domains/<name>`` (default ``~/.cache/in-domain-suite/domains/<name>``),
the folder that ``python launch.py train --domain <name> --output ...`` writes. ``--domain-model``
(a folder or a hub id) overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .rules import parse_rule

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
FRAMINGS = ("face", "animal", "whole")
CANNY_CONTROLNET_HUB_ID = "lllyasviel/control_v11p_sd15_canny"


@dataclass(frozen=True)
class Domain:
    """One domain.

    ``prompt`` is the domain prompt ``"a photo of <domain>"``: it initialises ``F_T`` in training and is the
    reference prompt of the automatic weights. ``domain_weight`` / ``control_weight`` are the recommended
    weights; ``None`` means automatic (paper Sec. 3.4, :class:`suite.guidance.AutoWeights`). ``rule`` is the
    recommended guidance rule (:mod:`suite.rules`, e.g. ``"domain=0-0.7, control=0.5-1"``); ``None``: the paper's
    Eq. 3 as it is. ``framing`` is how
    the domain's training photos are framed, which editing reproduces on a user's photo: ``"face"`` (FFHQ's
    alignment from facial landmarks), ``"animal"`` (an animal's face, AFHQ-like) or ``"whole"`` (the whole
    photo, the default for a domain of your own).
    """

    name: str
    prompt: str
    description: str = ""
    model: str | None = None
    domain_weight: float | None = None
    control_weight: float | None = None
    resolution: int = 512
    framing: str = "whole"
    rule: str | None = None

    def __post_init__(self):
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        parse_rule(self.rule)  # a bad preset fails where it is written

    def model_ref(self) -> str:
        """Where this domain's null-text model is looked for (``model`` if set, else the local default)."""
        return self.model or str(domain_home() / self.name)


def domain_home() -> Path:
    return Path(os.environ.get("INDOMAIN_HOME", Path.home() / ".cache" / "in-domain-suite")) / "domains"


FACE = Domain("face", "a photo of a face", "human faces (FFHQ-like, aligned, 512x512)", framing="face")
ANIMAL = Domain("animal", "a photo of an animal", "animal faces (AFHQ-like: cats, dogs, wild animals)",
                framing="animal")
PORCELAIN = Domain("porcelain", "a photo of porcelain", "porcelain objects (vases, bowls, figurines)")

PRESETS: dict[str, Domain] = {d.name: d for d in (FACE, ANIMAL, PORCELAIN)}


def domain_from_dict(stored: dict) -> Domain:
    """A :class:`Domain` saved as a dict (a pipeline's config). Saved before ``framing`` existed, a preset's name
    gives the preset's framing, so an old face pipeline still edits faces."""
    if "framing" not in stored and stored.get("name") in PRESETS:
        stored = {**stored, "framing": PRESETS[stored["name"]].framing}
    return Domain(**stored)


def get_domain(name: str) -> Domain:
    """A preset by name, or one clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(
            f"unknown domain {name!r}: use one of {known}, or pass --domain-model FOLDER for your own"
        ) from None


def domain_prompt(name: str) -> str:
    """The domain prompt of ``name`` (``F_T``'s start in training, the automatic weights' reference): a preset's
    own, else ``"a photo of <name>"`` (paper Sec. 3.3)."""
    return PRESETS[name].prompt if name in PRESETS else f"a photo of {name}"


def user_domain(name: str, model: str, prompt: str | None = None, **kwargs) -> Domain:
    """A domain of your own, from a domain model folder or hub id."""
    if name in PRESETS:
        return replace(PRESETS[name], model=model, **({"prompt": prompt} if prompt else {}), **kwargs)
    return Domain(name=name, prompt=prompt or domain_prompt(name), model=model, **kwargs)
