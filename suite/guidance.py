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
(:func:`suite.denoisers.evaluate_batched`); a term whose weight is exactly 0 is not evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .checks import check_finite
from .denoisers import Denoiser, evaluate_batched

__all__ = ["AutoWeights", "MultiGuidance", "Term", "combine", "auto_weights"]


def combine(eps_0: torch.Tensor, eps_terms: Sequence[torch.Tensor], weights: Sequence) -> torch.Tensor:
    """Eq. 3: ``eps_0 + sum_i w_i (eps_i - eps_0)``.

    ``weights[i]`` is a float or a per-sample tensor ``[B]`` (automatic weights are per sample).
    Accumulates in float32 and returns ``eps_0``'s dtype.
    """
    out = eps_0.float()
    base = out
    for eps_i, w in zip(eps_terms, weights):
        if isinstance(w, torch.Tensor):
            w = w.to(out.device, torch.float32).view(-1, *([1] * (out.ndim - 1)))
        out = out + w * (eps_i.float() - base)
    return out.to(eps_0.dtype)


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
    ratio would explode. Call :meth:`reset` (the pipeline does) before a new sampling run.
    """

    w0: float = 7.0
    norm: str = "direction"
    reference: Denoiser | None = None
    every_step: bool = False
    max_weight: float = 20.0
    _frozen: list | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.norm not in ("direction", "prediction"):
            raise ValueError(f"AutoWeights.norm must be 'direction' or 'prediction', got {self.norm!r}")
        self.w0 = check_finite(self.w0, "w0")
        if self.norm == "direction" and self.reference is None:
            raise ValueError("AutoWeights(norm='direction') needs a reference denoiser (SD1.5 with a prompt)")

    def reset(self) -> None:
        self._frozen = None


def auto_weights(
    eps_0: torch.Tensor, eps_terms: Sequence[torch.Tensor], rule: AutoWeights, eps_ref: torch.Tensor | None
) -> list[torch.Tensor]:
    """Per-sample weights by ``rule`` (see :class:`AutoWeights`); satisfies ``w0 * R = sum_i w_i N_i``."""
    k = len(eps_terms)

    def norm(x):
        return x.float().flatten(1).norm(dim=1)

    if rule.norm == "prediction":
        ref = norm(eps_0)
        sizes = [norm(e) for e in eps_terms]
    else:
        ref = norm(eps_ref - eps_0)
        sizes = [norm(e - eps_0) for e in eps_terms]
    tiny = torch.finfo(torch.float32).tiny
    return [(rule.w0 / k * ref / s.clamp_min(tiny)).clamp(max=rule.max_weight) for s in sizes]


@dataclass
class Term:
    """One guidance term: a denoiser with its bound condition and its weight (a number, or ``None`` = auto)."""

    denoiser: Denoiser
    weight: float | None = None
    name: str = ""


class MultiGuidance:
    """The multi-guidance score module (paper Eq. 3). It is itself a denoiser: ``eps = mg(z, t)``.

    ``base`` gives ``eps_0``; ``terms`` give ``eps_i`` with weights ``w_i``. Weights are numbers, or ``None``
    for terms whose weight is set automatically by ``auto`` (:class:`AutoWeights`). After each call the
    weights actually used are in :attr:`last_weights` (floats, or per-sample tensors for automatic ones).
    """

    def __init__(self, base: Denoiser, terms: Sequence[Term], auto: AutoWeights | None = None):
        self.base = base
        self.terms = list(terms)
        for term in self.terms:
            if term.weight is not None:
                term.weight = check_finite(term.weight, f"weight of guidance term {term.name or '?'}")
        if any(term.weight is None for term in self.terms) and auto is None:
            auto = AutoWeights(norm="prediction")
        self.auto = auto
        self.last_weights: list = []
        self._last_active: list[Term] = []

    def reset(self) -> None:
        """Forget frozen automatic weights (start of a new sampling run)."""
        if self.auto is not None:
            self.auto.reset()

    def __call__(self, z: torch.Tensor, t) -> torch.Tensor:
        active = [term for term in self.terms if term.weight is None or term.weight != 0.0]
        frozen = self.auto._frozen if self.auto is not None else None
        need_auto = any(term.weight is None for term in active) and (
            self.auto.every_step or frozen is None or frozen[0].shape[0] != z.shape[0]
        )
        need_ref = need_auto and self.auto.norm == "direction"
        denoisers: list[Denoiser] = [self.base] + [term.denoiser for term in active]
        if need_ref:
            denoisers.append(self.auto.reference)
        preds = evaluate_batched(denoisers, z, t)
        eps_0, eps_terms = preds[0], preds[1 : 1 + len(active)]
        eps_ref = preds[-1] if need_ref else None

        auto_idx = [i for i, term in enumerate(active) if term.weight is None]
        if need_auto:
            found = auto_weights(eps_0, [eps_terms[i] for i in auto_idx], self.auto, eps_ref)
            self.auto._frozen = found
        weights: list = [term.weight for term in active]
        for j, i in enumerate(auto_idx):
            weights[i] = self.auto._frozen[j]
        self.last_weights = weights
        self._last_active = active
        return combine(eps_0, eps_terms, weights)

    def weights_used(self) -> dict:
        """``{term name: weight}`` of the last call (automatic weights as floats, or lists per sample)."""
        out = {}
        for term, w in zip(self._last_active, self.last_weights):
            if isinstance(w, torch.Tensor):
                vals = w.flatten().tolist()
                w = vals[0] if len(vals) == 1 else vals
            out[term.name] = w
        return out
