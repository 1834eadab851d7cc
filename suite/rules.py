"""Guidance rules: how the terms of Eq. 3 are applied beyond one fixed weight each (torch-free: the CLI checks a
rule before any model loads; :mod:`suite.guidance` applies it).

A rule has four optional parts, composable:

* **Schedules over the noise level** (guidance intervals, Kynkäänniemi et al. 2024; EDM2's ``--guidance_interval``):
  a term's weight is multiplied by a factor of the step's noise level ``s = t / T`` (``0`` clean, ``1`` pure
  noise; ``T`` = the scheduler's training steps, 1000 for SD1.5): ``1`` inside the interval ``[lo, hi)`` (``hi = 1``
  included) and ``0`` outside it, optionally ramped linearly from ``a`` at ``lo`` to ``b`` at ``hi``; so
  ``domain=0-0.7, control=0.7-1`` splits the range with no step in both. A term whose factor is 0 for the
  whole batch is not evaluated; if every term is off, the step's prediction is exactly the unconditional one.
* **Projection** of one term's guidance direction against another's (Perp-Neg; APG's parallel component):
  ``g_a <- g_a - (1 - parallel) (<g_a, g_b> / |g_b|^2) g_b`` per sample, so with ``parallel = 0`` the projected
  direction is orthogonal to ``g_b`` (``g_i = eps_i - eps_0``). Applied at steps where both terms are evaluated.
* **A norm clamp** on the summed guidance ``sum_i w_i g_i``: its root-mean-square per sample is scaled down to at
  most ``clamp`` (an RMS, so it means the same at every resolution; raw predictions have an RMS near 1).
* **Automatic weights by shares** (``domain-share``): the paper's rule gives every automatic term an equal share
  of ``w0`` (Sec. 3.4: ``w_i = w0 / K |g_ref| / |g_i|``). A share gives the domain term ``share * w0`` and the
  other automatic terms the rest, so the domain direction cannot outweigh the prompt (``domain-max`` caps its
  weight as well). With the domain the only automatic term it gets ``share * w0``; with a fixed domain weight the
  share does nothing. See :class:`suite.guidance.AutoWeights`.

One string writes a rule (the CLI's ``--guidance-rule``, the app's field, the presets); items are separated by
commas, semicolons or spaces::

    domain=0-0.7              the domain term only at noise levels 0..0.7
    control=0.3-1             the text/control term only at noise levels 0.3..1 (any term's name works)
    domain-ramp=1.5:0.5       the domain weight times 1.5 at the interval's low-noise end, 0.5 at its high end
    project=domain:control    remove from the domain direction its component along the control direction
    parallel=0.2              ...but keep 20% of that component (APG's eta; default 0)
    clamp=0.5                 RMS of the summed guidance at most 0.5 per sample
    domain-share=0.25         automatic weights: the domain term gets 25% of w0, the others the rest
    domain-max=1.5            automatic weights: the domain term's weight at most 1.5
    paper                     nothing: the paper's Eq. 3 with fixed (or automatic) weights (alone)
    recommended               the domain's recommended rule (as an empty string; alone)

:data:`PAPER` is the empty rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checks import UserError

__all__ = ["Schedule", "GuidanceRule", "PAPER", "parse_rule", "rule_arg", "rule_given", "rule_fits", "format_rule", "check_rule_terms"]


@dataclass(frozen=True)
class Schedule:
    """A term's weight factor over the noise level ``s`` in [0, 1]: ``0`` outside ``[lo, hi)`` (``hi = 1`` included);
    inside, linear from ``ramp[0]`` at ``lo`` to ``ramp[1]`` at ``hi`` (``(1, 1)``: a plain interval)."""

    lo: float = 0.0
    hi: float = 1.0
    ramp: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        lo, hi = float(self.lo), float(self.hi)
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise UserError(f"a noise interval must lie within 0 (clean) and 1 (pure noise), got {lo:g}-{hi:g}")
        if not lo < hi:
            raise UserError(f"the noise interval {lo:g}-{hi:g} is empty: write it low-high, e.g. 0-0.7")
        a, b = (float(x) for x in self.ramp)
        if not all(abs(x) < float("inf") for x in (a, b)):
            raise UserError(f"a ramp's factors must be finite numbers, got {a}:{b}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "ramp", (a, b))

    def factor(self, s: float) -> float:
        """The factor at noise level ``s`` (a float; :mod:`suite.guidance` applies it per sample)."""
        if s < self.lo or s > self.hi or (s == self.hi and self.hi < 1.0):
            return 0.0
        a, b = self.ramp
        return a + (b - a) * (s - self.lo) / (self.hi - self.lo)

    @property
    def always_zero(self) -> bool:
        return self.ramp == (0.0, 0.0)

    @property
    def is_identity(self) -> bool:
        return self.lo == 0.0 and self.hi == 1.0 and self.ramp == (1.0, 1.0)


@dataclass(frozen=True)
class GuidanceRule:
    """How the terms of Eq. 3 are applied (see the module's docstring). ``schedules``: ``(term name, Schedule)``
    pairs; ``project``: ``(a, b)``, remove from ``a``'s direction its component along ``b``'s, keeping
    ``parallel`` of it; ``clamp``: the largest RMS of the summed guidance; ``domain_share`` / ``domain_max``: the
    automatic weights' domain share of ``w0`` and the cap on its weight (``None``: the paper's equal shares and the
    general cap)."""

    schedules: tuple[tuple[str, Schedule], ...] = ()
    project: tuple[str, str] | None = None
    parallel: float = 0.0
    clamp: float | None = None
    domain_share: float | None = None
    domain_max: float | None = None

    def schedule(self, name: str) -> Schedule | None:
        return dict(self.schedules).get(name)

    @property
    def is_paper(self) -> bool:
        """True when the rule changes nothing: the paper's Eq. 3 as it is."""
        return (not self.project and self.clamp is None and self.domain_share is None and self.domain_max is None
                and all(s.is_identity for _, s in self.schedules))

    def names(self) -> set[str]:
        """The term names this rule refers to."""
        out = {n for n, _ in self.schedules}
        if self.project:
            out |= set(self.project)
        return out

    def __str__(self) -> str:
        return format_rule(self)


PAPER = GuidanceRule()

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_INTERVAL = re.compile(rf"^({_NUM})-({_NUM})$")
_RAMP = re.compile(rf"^({_NUM}):({_NUM})$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RECOMMENDED = "recommended"  # as suite.checks.RECOMMENDED (weights): leave the choice to the domain
HELP = ("a guidance rule: items like domain=0-0.7 (a term only at those noise levels, 0 clean .. 1 pure noise), "
        "domain-ramp=1.5:0.5, project=domain:control, parallel=0.2, clamp=0.5, domain-share=0.25, domain-max=1.5, "
        "or 'paper'")


def _number(text: str, what: str, lo: float | None = None, hi: float | None = None) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{what} must be a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise UserError(f"{what} must be a finite number, got {text!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"from {lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}"
        raise UserError(f"{what} must be {rng}, got {v:g}")
    return v


def parse_rule(spec: str | GuidanceRule | None) -> GuidanceRule | None:
    """A :class:`GuidanceRule` from its string (see the module's docstring); ``None``, ``""`` and ``"recommended"``
    give ``None`` (the caller's default), ``"paper"`` is :data:`PAPER`. One sentence naming the fix on any mistake."""
    if spec is None or isinstance(spec, GuidanceRule):
        return spec
    if not isinstance(spec, str):
        raise UserError(f"a guidance rule must be a string such as 'domain=0-0.7, clamp=0.5', got {spec!r}")
    text = spec.strip()
    if not text or text.lower() == RECOMMENDED:
        return None
    items = [i for i in re.split(r"[,;\s]+", text) if i]
    words = [i.lower() for i in items if i.lower() in ("paper", RECOMMENDED)]
    if words and len(items) > 1:
        raise UserError(f"'{words[0]}' stands alone in a guidance rule, got {text!r}: drop it or the other items")
    keys = [i.split("=", 1)[0].strip().lower() for i in items if "=" in i]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UserError(f"the guidance rule sets {twice[0]}= twice, in {text!r}: give each item once")
    intervals: dict[str, tuple[float, float]] = {}
    ramps: dict[str, tuple[float, float]] = {}
    kw: dict = {}
    for item in items:
        if item.lower() == "paper":
            continue
        if "=" not in item:
            raise UserError(f"unknown guidance-rule item {item!r}: write key=value ({HELP})")
        key, value = (x.strip() for x in item.split("=", 1))
        lkey = key.lower()
        if lkey == "project":
            parts = value.split(":")
            if len(parts) != 2 or not all(_NAME.match(p) for p in parts) or parts[0] == parts[1]:
                raise UserError(f"project= takes two different term names, e.g. project=domain:control, got {value!r}")
            kw["project"] = (parts[0], parts[1])
        elif lkey == "parallel":
            kw["parallel"] = _number(value, "parallel= (the share of the parallel component kept)", 0.0, 1.0)
        elif lkey == "clamp":
            v = _number(value, "clamp= (the largest RMS of the summed guidance)", 0.0)
            if v == 0:
                raise UserError("clamp=0 would remove all guidance: give a positive RMS, e.g. clamp=0.5")
            kw["clamp"] = v
        elif lkey == "domain-share":
            v = _number(value, "domain-share= (the domain term's share of w0)", 0.0, 1.0)
            kw["domain_share"] = v
        elif lkey == "domain-max":
            v = _number(value, "domain-max= (the largest automatic domain weight)", 0.0)
            if v == 0:
                raise UserError("domain-max=0 would switch the domain term off: give a positive cap, or "
                                "--domain-weight 0")
            kw["domain_max"] = v
        elif lkey.endswith("-ramp"):
            name = key[: -len("-ramp")]
            m = _RAMP.match(value)
            if not _NAME.match(name) or not m:
                raise UserError(f"{key}= takes two factors a:b (a at the interval's low-noise end, b at its "
                                f"high-noise end), e.g. domain-ramp=1.5:0.5, got {value!r}")
            ramps[name] = (_number(m.group(1), f"{key}'s first factor"), _number(m.group(2), f"{key}'s second factor"))
        elif _NAME.match(key):
            m = _INTERVAL.match(value)
            if not m:
                raise UserError(f"{key}= takes a noise interval low-high within 0 (clean) and 1 (pure noise), "
                                f"e.g. {key}=0-0.7, got {value!r}")
            intervals[key] = (float(m.group(1)), float(m.group(2)))
        else:
            raise UserError(f"unknown guidance-rule item {item!r} ({HELP})")
    if "parallel" in kw and "project" not in kw:
        raise UserError("parallel= applies to a projection: add project=domain:control (or drop parallel=)")
    schedules = []
    for name in dict.fromkeys([*intervals, *ramps]):
        lo, hi = intervals.get(name, (0.0, 1.0))
        schedules.append((name, Schedule(lo, hi, ramps.get(name, (1.0, 1.0)))))
    return GuidanceRule(schedules=tuple(schedules), **kw)


def format_rule(rule: GuidanceRule | None) -> str:
    """The string :func:`parse_rule` reads back to ``rule`` (``"paper"`` for a rule that changes nothing)."""
    if rule is None:
        return ""
    items = []
    for name, s in rule.schedules:
        if (s.lo, s.hi) != (0.0, 1.0):
            items.append(f"{name}={s.lo:g}-{s.hi:g}")
        if s.ramp != (1.0, 1.0):
            items.append(f"{name}-ramp={s.ramp[0]:g}:{s.ramp[1]:g}")
    if rule.project:
        items.append(f"project={rule.project[0]}:{rule.project[1]}")
        if rule.parallel:
            items.append(f"parallel={rule.parallel:g}")
    for key, value in (("clamp", rule.clamp), ("domain-share", rule.domain_share), ("domain-max", rule.domain_max)):
        if value is not None:
            items.append(f"{key}={value:g}")
    return ", ".join(items) or "paper"


def rule_fits(rule: GuidanceRule | None, present, noise_range: tuple[float, float] | None = None) -> bool:
    """Whether a recommended rule fits a request: the request has every term the rule names, and each scheduled
    term acts somewhere in the request's noise range ``(lo, hi)`` (an SDEdit from strength 0.6 spans 0..0.6, so a
    rule that gives the prompt only 0.7..1 would silence it; an SDS range of 0.2..0.6 likewise)."""
    if rule is None:
        return True
    if not rule.names() <= set(present):
        return False
    return noise_range is None or not _outside(rule, noise_range)


def _outside(rule: GuidanceRule, noise_range: tuple[float, float]) -> list[tuple[str, Schedule]]:
    """The scheduled terms that would never act within ``noise_range``."""
    lo, hi = noise_range
    return [(n, s) for n, s in rule.schedules if s.always_zero or s.lo > hi or (s.hi <= lo and s.hi < 1.0)]


def rule_given(rule) -> bool:
    """Whether a guidance rule was chosen by the caller (``None`` and ``"recommended"`` leave it to the domain's
    recommendation)."""
    return rule is not None and not (isinstance(rule, str) and rule.strip().lower() in ("", RECOMMENDED))


def rule_arg(text: str) -> GuidanceRule | None:
    """An argparse type for ``--guidance-rule``: the rule, or argparse's one-line error."""
    import argparse

    try:
        return parse_rule(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_rule_terms(rule: GuidanceRule | None, present: list[str] | tuple[str, ...], where: str = "",
                     noise_range: tuple[float, float] | None = None) -> None:
    """One sentence if ``rule`` names a term the request does not have (a projection without a control term, a
    schedule for a term that is off), if its schedules switch off every term at every noise level, or if a
    scheduled term would never act within the request's ``noise_range`` (an edit's strength, an SDS range)."""
    if rule is None:
        return
    present = list(present)
    known = ", ".join(present) if present else "none"
    if rule.project:
        for name in rule.project:
            if name not in present:
                what = "a control term (give a prompt, a control image or a control)" if name == "control" else \
                    "a domain term (a domain model and a domain weight other than 0)" if name == "domain" else \
                    f"a term named {name!r}"
                raise UserError(f"the guidance rule projects {rule.project[0]} against {rule.project[1]}, but this "
                                f"request has no {name} term: it needs {what}; terms here: {known}{where}")
    for name, _ in rule.schedules:
        if name not in present:
            raise UserError(f"the guidance rule schedules a term named {name!r}, which this request does not have "
                            f"(terms here: {known}): use one of those names, or drop the item{where}")
    if present and all(rule.schedule(n) is not None and rule.schedule(n).always_zero for n in present):
        raise UserError(f"the guidance rule's schedules switch off every term ({known}) at every noise level: "
                        f"give at least one term a non-zero factor{where}")
    if noise_range is not None:
        for name, s in _outside(rule, noise_range):
            raise UserError(f"the guidance rule gives {name} the noise levels {s.lo:g}-{s.hi:g} only, but this request "
                            f"runs at {noise_range[0]:.2f}-{noise_range[1]:.2f} (an edit starts at its strength, SDS "
                            f"samples its timestep range), so {name} would never act: move the interval or raise the "
                            f"strength{where}")
