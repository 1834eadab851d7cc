"""Multi-guidance: one denoiser built from several (paper Eq. 3). The formula lives here and only here.

.. math::

    \\hat\\epsilon(z_t, C) = \\epsilon_0(z_t) + \\sum_{i=1}^{K} w_i\\,(\\epsilon_i(z_t, c_i) - \\epsilon_0(z_t))      (Eq. 3)

``eps_0`` is the *base* (unconditional) prediction, SD1.5 with the empty prompt (or a negative prompt);
each term ``i`` is another denoiser with its own bound condition ``c_i``: the null-text domain UNet
(domain guidance, weight ``w_d``), SD1.5 with a text prompt, SD1.5 + ControlNet or a community fine-tune
(control guidance, ``w_c``). With the paper's two terms this is Sec. 3.4's
``(1 - w_d - w_c) eps_sd + w_d eps_d + w_c eps_c``.

Conventions (how to translate a weight):

* diffusers: with one term, ``w`` is diffusers' ``guidance_scale`` (``uncond + s * (cond - uncond)``, s = w).
  ``w = 1`` returns the term's own prediction, ``w = 0`` the base prediction.
* threestudio: its SD guidance computes ``eps_text + s * (eps_text - eps_uncond)``, i.e. ``w = s + 1``.
* A negative weight pushes away from that term's condition.

Unconditional guidance rectification (paper Sec. 4.5) is a choice of ``base``: when a customised model
(a community fine-tune, DreamBooth) is a term, ``base`` stays the original SD1.5 instead of the customised
model's own empty-prompt prediction.

Cost: terms (and the base) that wrap the same network are evaluated in ONE batched forward
(:func:`suite.denoisers.evaluate_batched`); a term whose weight is exactly 0 (given, or automatic and measured as
0, unless the rule projects onto it) is not evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .checks import AUTO_NORMS, check_finite
from .denoisers import Denoiser, evaluate_batched
from .rules import GuidanceRule

__all__ = ["AutoWeights", "MultiGuidance", "Term", "combine", "auto_weights", "project_out", "clamp_rms", "noise_level"]


def combine(eps_0: torch.Tensor, eps_terms: Sequence[torch.Tensor], weights: Sequence,
            names: Sequence[str] | None = None, rule: GuidanceRule | None = None) -> torch.Tensor:
    """Eq. 3: ``eps_0 + sum_i w_i (eps_i - eps_0)``, with a :class:`~suite.rules.GuidanceRule`'s projection and
    norm clamp when ``rule`` has them (its schedules act on the weights, before this).

    ``weights[i]`` is a float or a per-sample tensor ``[B]`` (automatic and scheduled weights are per sample).
    ``names[i]`` names term ``i`` for the rule. Accumulates in float32 and returns ``eps_0``'s dtype.
    """
    if len(eps_terms) != len(weights) or (names is not None and len(names) != len(eps_terms)):
        raise ValueError(f"combine got {len(eps_terms)} predictions, {len(weights)} weights"
                         + ("" if names is None else f" and {len(names)} names") + ": give one of each per term")
    out = eps_0.float()
    base = out
    weights = [_per_sample(w, out) for w in weights]
    project = rule is not None and rule.project is not None and names is not None and \
        all(n in names for n in rule.project)
    if not project and (rule is None or rule.clamp is None):
        for eps_i, w in zip(eps_terms, weights):
            out = out + w * (eps_i.float() - base)
        return out.to(eps_0.dtype)
    directions = [eps_i.float() - base for eps_i in eps_terms]
    if project:
        a, b = (list(names).index(n) for n in rule.project)
        directions[a] = project_out(directions[a], directions[b], rule.parallel)
    guidance = sum(w * g for w, g in zip(weights, directions)) if directions else torch.zeros_like(base)
    if rule.clamp is not None:
        guidance = clamp_rms(guidance, rule.clamp)
    return (base + guidance).to(eps_0.dtype)


def _per_sample(w, like: torch.Tensor):
    if isinstance(w, torch.Tensor):
        return w.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))
    return w


def project_out(g: torch.Tensor, onto: torch.Tensor, parallel: float = 0.0) -> torch.Tensor:
    """``g`` less ``(1 - parallel)`` of its component along ``onto``, per sample (over ``C, H, W``); where ``onto``
    is zero, ``g`` unchanged. ``parallel = 0``: the result is orthogonal to ``onto`` (Perp-Neg, APG)."""
    gf, of = g.flatten(1), onto.flatten(1)
    denom = (of * of).sum(1)
    coef = torch.where(denom > 0, (gf * of).sum(1) / denom.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.zeros_like(denom))
    return (gf - (1.0 - parallel) * coef[:, None] * of).view_as(g)


def clamp_rms(g: torch.Tensor, limit: float) -> torch.Tensor:
    """``g`` scaled down per sample so that its root-mean-square (over ``C, H, W``) is at most ``limit``."""
    rms = g.flatten(1).pow(2).mean(1).sqrt()
    scale = (limit / rms.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
    return g * scale.view(-1, *([1] * (g.ndim - 1)))


@dataclass
class AutoWeights:
    """The paper's automatic weights (Sec. 3.4), generalised to K terms.

    The paper sets ``w_d = w0/2 * |eps_sd| / |eps_d|`` and ``w_c = w0/2 * |eps_sd| / |eps_c|`` so that
    ``w0 |eps_sd| = w_d |eps_d| + w_c |eps_c|``. With K terms each gets an equal share ``w0 / K``.
    Which norms (``norm``):

    * ``"direction"`` (default): each term's guidance direction ``g_i = eps_i - eps_0`` is balanced against
      SD's own guidance at the reference prompt, ``g_ref = eps_sd(z, c_ref) - eps_0`` (``reference``):
      ``w_i = (w0 / K) |g_ref| / |g_i|``, so ``w0 |g_ref| = sum_i w_i |g_i|``. The combined guidance has
      the magnitude SD's classifier-free guidance has at scale ``w0`` (7 by default), which is how the
      paper motivates ``w0``. A text control term that IS the reference gets exactly ``w0 / K``.
    * ``"prediction"``: the literal reading, norms of the raw predictions: ``w_i = (w0/K) |eps_0| / |eps_i|``,
      so ``w0 |eps_0| = sum_i w_i |eps_i|``. Raw predictions all have nearly unit RMS, so this gives
      weights close to ``w0 / K``.

    Norms are L2 over each sample (``C, H, W``): weights are per sample, shape ``[B]``. They are computed
    at the first call (the paper's "initial value") and then kept, unless ``every_step=True``.
    ``max_weight`` caps a weight when a term barely differs from the base (``|g_i|`` near 0), where the
    ratio would explode (never below the term's own share ``w0 / K``). Call :meth:`reset` (the pipeline does) before a new sampling run. Under a guidance rule
    whose schedule switches a term off at the first step, that term's weight is computed at its first active step.
    """

    w0: float = 7.0
    norm: str = "direction"
    reference: Denoiser | None = None
    every_step: bool = False
    max_weight: float = 20.0
    _frozen: dict | None = field(default=None, repr=False)  # term index -> its weights

    def __post_init__(self):
        if self.norm not in AUTO_NORMS:
            raise ValueError(f"AutoWeights.norm must be {' or '.join(map(repr, AUTO_NORMS))}, got {self.norm!r}")
        self.w0 = check_finite(self.w0, "w0")
        mw = self.max_weight
        if isinstance(mw, bool) or not isinstance(mw, int | float) or not 0 < mw < float("inf"):  # NaN: black images
            raise ValueError(f"AutoWeights.max_weight is {mw!r}: give a positive number (default 20)")
        if self.norm == "direction" and self.reference is None:
            raise ValueError("AutoWeights(norm='direction') needs a reference denoiser (SD1.5 with a prompt)")

    def reset(self) -> None:
        self._frozen = None


def auto_weights(
    eps_0: torch.Tensor, eps_terms: Sequence[torch.Tensor], rule: AutoWeights, eps_ref: torch.Tensor | None,
    shares: Sequence[float] | None = None, caps: Sequence[float | None] | None = None,
) -> list[torch.Tensor]:
    """Per-sample weights by ``rule`` (see :class:`AutoWeights`); satisfies ``w0 * R = sum_i w_i N_i``.

    ``shares[i]``: term ``i``'s share of ``w0`` (default: equal, ``1 / K``, the paper's), so that
    ``w_i N_i = shares[i] w0 R``; ``caps[i]``: a tighter cap on its weight than ``rule.max_weight``."""
    k = len(eps_terms)
    caps = list(caps) if caps is not None else [None] * k

    def norm(x):
        return x.float().flatten(1).norm(dim=1)

    if rule.norm == "prediction":
        ref = norm(eps_0)
        sizes = [norm(e) for e in eps_terms]
    else:
        ref = norm(eps_ref - eps_0)
        sizes = [norm(e - eps_0) for e in eps_terms]
    tiny = torch.finfo(torch.float32).tiny
    shares_w0 = [rule.w0 * share for share in shares] if shares is not None else [rule.w0 / k] * k  # the paper's
    # the cap never goes below a term's own share of w0 (a text term that IS the reference gets exactly that: with
    # w0 = 30 it was clipped to 20); a tighter cap (caps[i]) still holds
    return [(sw0 * ref / s.clamp_min(tiny)).clamp(max=max(rule.max_weight, sw0) if cap is None else
                                                   min(max(rule.max_weight, sw0), cap))
            for s, sw0, cap in zip(sizes, shares_w0, caps)]


def noise_level(t, num_train_timesteps: int, batch: int) -> torch.Tensor:
    """The noise level ``s = t / T`` of each sample, ``[batch]`` (0 clean, 1 pure noise), from a timestep
    given as a number, a 0-d tensor or one per sample. In float64: in float32, t = 700 of 1000 came out 0.69999999
    and fell on the wrong side of a rule's boundary at 0.7."""
    s = torch.as_tensor(t).flatten().cpu().to(torch.float64) / float(num_train_timesteps)  # on the CPU: MPS has no float64
    return s.expand(batch) if s.numel() == 1 else s


@dataclass
class Term:
    """One guidance term: a denoiser with its bound condition and its weight (a number, or ``None`` = auto)."""

    denoiser: Denoiser
    weight: float | None = None
    name: str = ""


class MultiGuidance:
    """The multi-guidance score module (paper Eq. 3). It is itself a denoiser: ``eps = mg(z, t)``.

    ``base`` gives ``eps_0``; ``terms`` give ``eps_i`` with weights ``w_i``. Weights are numbers, or ``None``
    for terms whose weight is set automatically by ``auto`` (:class:`AutoWeights`). ``rule``
    (:class:`suite.rules.GuidanceRule`) schedules terms over the noise level ``t / num_train_timesteps``, projects
    one term's direction against another's, clamps the summed guidance and sets the automatic weights' shares.
    After each call the weights actually used are in :attr:`last_weights` (floats, or per-sample tensors for
    automatic or scheduled ones), and each term's weight before its schedule in :meth:`weights_used`.
    """

    def __init__(self, base: Denoiser, terms: Sequence[Term], auto: AutoWeights | None = None,
                 rule: GuidanceRule | None = None, num_train_timesteps: int = 1000):
        self.base = base
        self.terms = list(terms)
        for term in self.terms:
            if isinstance(term.weight, bool):  # True was weight 1
                raise ValueError(f"the weight of guidance term {term.name or '?'} is {term.weight}: give a number")
            if term.weight is not None:
                term.weight = check_finite(term.weight, f"weight of guidance term {term.name or '?'}")
        names = [t.name for t in self.terms if t.name]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # the weights used, and a rule's schedules, are by name: one term's weight was reported for both
            raise ValueError(f"two guidance terms are named {twice[0]!r}: give each control its own name "
                             f"(Control(name=...); 'domain' and 'control' are the pipeline's own terms)")
        if isinstance(rule, str):  # a rule's text, as the pipeline takes it ('str' has no attribute 'is_paper')
            from .rules import parse_rule

            rule = parse_rule(rule)
        if any(term.weight is None for term in self.terms) and auto is None:
            auto = AutoWeights(norm="prediction")
        self.auto = auto
        # Parts of the rule that name a term missing here do nothing; the pipeline refuses a rule the user gave for
        # terms a request lacks (suite.rules.check_rule_terms) and drops a recommended rule that does not fit it.
        self.rule = rule if rule is not None and not rule.is_paper else None
        self.num_train_timesteps = int(num_train_timesteps)
        self.last_weights: list = []
        self._resolved: dict = {}

    def reset(self) -> None:
        """Forget frozen automatic weights (start of a new sampling run)."""
        if self.auto is not None:
            self.auto.reset()
        self._resolved = {}

    def _factors(self, t, batch: int) -> list:
        """Each term's schedule factor at ``t``: ``None`` (no schedule), a float, or a per-sample tensor."""
        if self.rule is None or not self.rule.schedules:
            return [None] * len(self.terms)
        s = noise_level(t, self.num_train_timesteps, batch)
        out = []
        for term in self.terms:
            sched = self.rule.schedule(term.name)
            if sched is None or sched.is_identity:
                out.append(None)
                continue
            f = torch.tensor([sched.factor(float(v)) for v in s], dtype=torch.float32)
            out.append(float(f[0]) if bool((f == f[0]).all()) else f)
        return out

    def _shares(self, auto_terms: list[Term]) -> tuple[list[float] | None, list[float | None] | None]:
        rule = self.rule
        if rule is None or (rule.domain_share is None and rule.domain_max is None):
            return None, None
        names = [t.name for t in auto_terms]
        k = len(names)
        shares = [1.0 / k] * k
        if rule.domain_share is not None and "domain" in names:
            others = k - 1
            shares = [rule.domain_share if n == "domain" else (1.0 - rule.domain_share) / others for n in names]
        caps = [rule.domain_max if n == "domain" else None for n in names]
        return shares, caps

    def __call__(self, z: torch.Tensor, t) -> torch.Tensor:
        factors = self._factors(t, z.shape[0])

        auto_idx = [i for i, term in enumerate(self.terms) if term.weight is None]
        frozen = self.auto._frozen if self.auto is not None else None
        if frozen is not None and any(v.shape[0] != z.shape[0] for v in frozen.values()):
            frozen = None

        def zero(w) -> bool:
            return bool((w == 0).all()) if isinstance(w, torch.Tensor) else w == 0.0

        def on(i, term):
            f = factors[i]
            if f is not None and zero(f):
                return False
            if term.weight is None:  # an automatic weight frozen at 0 (w0 = 0, a share of 0) needs no more calls,
                # unless the rule projects onto its direction (the projection needs it at every step)
                return (frozen is None or i not in frozen or self.auto.every_step or not zero(frozen[i])
                        or (self.rule is not None and term.name in (self.rule.project or ())))
            return term.weight != 0.0

        active = [i for i, term in enumerate(self.terms) if on(i, term)]
        missing = [i for i in active if self.terms[i].weight is None and (
            self.auto.every_step or frozen is None or i not in frozen)]
        need_ref = bool(missing) and self.auto.norm == "direction"
        denoisers: list[Denoiser] = [self.base] + [self.terms[i].denoiser for i in active]
        if need_ref:
            denoisers.append(self.auto.reference)
        preds = evaluate_batched(denoisers, z, t)
        eps_0, eps_terms = preds[0], preds[1 : 1 + len(active)]
        eps_ref = preds[-1] if need_ref else None

        if missing:
            shares, caps = self._shares([self.terms[i] for i in auto_idx])
            pos = [auto_idx.index(i) for i in missing]
            if shares is None and len(missing) != len(auto_idx):  # equal shares of all the automatic terms
                shares = [1.0 / len(auto_idx)] * len(auto_idx)
            found = auto_weights(eps_0, [eps_terms[active.index(i)] for i in missing], self.auto, eps_ref,
                                 shares=[shares[p] for p in pos] if shares else None,
                                 caps=[caps[p] for p in pos] if caps else None)
            frozen = dict(frozen or {})
            frozen.update(zip(missing, found))
            self.auto._frozen = frozen
        weights: list = []
        for i in active:
            w = self.terms[i].weight if self.terms[i].weight is not None else frozen[i]
            self._resolved[i] = w
            f = factors[i]
            if isinstance(f, torch.Tensor):  # per-sample factors (computed on the CPU) where the weights live
                f = f.to(w.device if isinstance(w, torch.Tensor) else z.device)
            weights.append(w if f is None else w * f)
        self.last_weights = weights
        # in z's dtype: a v-model's epsilons come in float32 (suite.denoisers.v_to_eps), combined in float32 first
        return combine(eps_0, eps_terms, weights, [self.terms[i].name for i in active], self.rule).to(z.dtype)

    def weights_used(self) -> dict:
        """``{term name: weight}`` of each term evaluated since the last :meth:`reset` (its weight before any
        schedule; automatic weights as floats, or lists per sample)."""
        out = {}
        for i, w in sorted(self._resolved.items()):
            if isinstance(w, torch.Tensor):
                vals = w.flatten().tolist()
                w = vals[0] if len(vals) == 1 else vals
            out[self.terms[i].name] = w
        return out
