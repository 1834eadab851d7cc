"""The one denoiser interface and the adapters that put every model behind it.

A *denoiser* maps a noisy latent ``z`` (``[B, C, H, W]``) and a timestep ``t`` (a scalar or ``[B]``) to a
noise prediction ``eps`` of the same shape as ``z``. Its conditioning (text features, a ControlNet image,
nothing at all for a null-text domain UNet) is bound when it is built, so callers never pass it.
Everything that consumes predictions (the multi-guidance module, the sampler, SDEdit, SDS) sees only this
calling form (k-diffusion's ``external.py`` idea).

Parameterisation: every adapter returns **epsilon** (noise) predictions. Models trained with
v-prediction are converted with ``eps = sqrt(a_t) * v + sqrt(1 - a_t) * z`` where ``a_t = alphas_cumprod[t]``
(:func:`alpha_bar_at`: a fractional ``t`` as Euler's noise level), so eps- and v-models can be mixed in one guidance.

Batching (how several denoisers that share a network run in ONE forward): a denoiser *may* define

* ``batch_key() -> hashable``: denoisers whose keys are equal can be evaluated together, and
* ``evaluate_group(members, z, t) -> list[eps]`` (a static or class method of its class): evaluates the
  ``members`` (all with that key) on the same ``(z, t)`` and returns their predictions in order.

:func:`evaluate_batched` groups the denoisers it is given by key and calls ``evaluate_group`` once per group;
a denoiser without ``batch_key`` is simply called. :class:`UNetDenoiser` implements both
(:func:`evaluate_unet_group`): calls of one UNet with different text, ControlNet residuals or concatenated
image channels (Zero-1-to-3's conditional and unconditional branches) share a forward. The multi-guidance
module, SDS and the samplers all go through :func:`evaluate_batched`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "Denoiser",
    "FunctionDenoiser",
    "UNetDenoiser",
    "ControlNetInput",
    "evaluate_unet_group",
    "evaluate_batched",
    "v_to_eps",
    "alpha_bar_at",
    "epsilon_scheduler",
    "finite_terminal_snr",
    "finite_alphas",
    "expand_timestep",
]


@runtime_checkable
class Denoiser(Protocol):
    """``eps = denoiser(z, t)``: noisy latent and timestep to an epsilon prediction (bound conditioning)."""

    def __call__(self, z: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor: ...


def expand_timestep(t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """A timestep as a ``[batch]`` tensor (diffusers UNets accept scalar or 1-D timesteps)."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape[0] != batch:
        raise ValueError(f"timestep has {t.shape[0]} entries but the latent batch has {batch}")
    return t


def v_to_eps(v: torch.Tensor, z: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Convert a v-prediction to an epsilon prediction: ``eps = sqrt(a_t) v + sqrt(1 - a_t) z``, in float32.

    Not cast back to a half-precision ``v``'s dtype: at high noise ``eps`` is nearly ``z`` (``sqrt(a_t)`` is 0.07 at
    SD's last step), so two models' epsilons differ by less than half precision resolves, and the guidance
    directions ``eps_i - eps_0`` (and the automatic weights measured from them) would be rounding noise."""
    a = alpha_bar_at(t, alphas_cumprod, z.device).view(-1, *([1] * (z.ndim - 1)))
    return a.sqrt() * v.float() + (1 - a).sqrt() * z.float()


def alpha_bar_at(t: torch.Tensor, alphas_cumprod: torch.Tensor, device) -> torch.Tensor:
    """``alpha_bar`` at timesteps ``t``, in float32. A fractional ``t`` (Euler's and Heun's timesteps, e.g. 946.42) is
    the noise level those schedulers give it, ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` interpolated linearly
    between the neighbouring timesteps (it was read at ``floor(t)``: a v-model's epsilon 2.7e-3 off on the mini
    base with Euler). A scheduler that rounds ``t`` but keeps another sigma (Karras sigmas in DPM-Solver) conditions
    the model on the rounded ``t``, and so is the conversion."""
    a = alphas_cumprod.to(device=device, dtype=torch.float32)
    t = torch.as_tensor(t, device=device).float().clamp(0, len(a) - 1)  # 1000 of a 1000-step table: its last
    lo = t.floor().long()
    frac = (t - lo).clamp(0, 1)
    if not bool((frac > 0).any()):
        return a[lo]
    hi = (lo + 1).clamp(max=len(a) - 1)
    sigma = ((1 - a) / a).sqrt()  # inf where alpha_bar is 0 (a zero-terminal-SNR schedule's last step)
    s = sigma[lo] + frac * (sigma[hi] - sigma[lo])
    return torch.where(frac > 0, 1 / (1 + s * s), a[lo])


TERMINAL_ALPHA_BAR = 2.0 ** -24
"""What :func:`finite_terminal_snr` puts in place of a zero ``alpha_bar`` at the last timestep (diffusers' Euler and
DPM-Solver schedulers use the same value)."""


def finite_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A schedule rescaled to zero terminal SNR (``rescale_betas_zero_snr``, Lin et al. 2024) ends at
    ``alpha_bar = 0``, where the epsilon form that every denoiser here returns loses the model's prediction
    (``eps = sqrt(a) * v + sqrt(1 - a) * z`` is ``z``) and DDIM's ``x0 = (z - sqrt(1 - a) * eps) / sqrt(a)`` divides
    by zero. Returns ``alphas_cumprod`` with that last value :data:`TERMINAL_ALPHA_BAR` (a copy; the same tensor
    where the schedule does not end at zero), as diffusers' Euler and DPM-Solver schedulers set for themselves (DDIM
    and DDPM do not): the round trip v -> eps -> x0 then keeps ``x0 = -v`` to about 3e-4 in float32."""
    if len(alphas_cumprod) and float(alphas_cumprod[-1]) == 0.0:
        alphas_cumprod = alphas_cumprod.clone()
        alphas_cumprod[-1] = TERMINAL_ALPHA_BAR
    return alphas_cumprod


def finite_terminal_snr(scheduler):
    """``scheduler`` (one this code made: it is changed) with :func:`finite_alphas`' ``alphas_cumprod``."""
    a = getattr(scheduler, "alphas_cumprod", None)
    if a is not None:
        scheduler.alphas_cumprod = finite_alphas(a)
    return scheduler


def epsilon_scheduler(scheduler):
    """``scheduler`` configured for epsilon (what every denoiser here returns): itself where it already is, else a
    new one from its config with ``prediction_type="epsilon"`` (a v-prediction model's scheduler would otherwise
    read the converted epsilon as v). A zero terminal SNR is made finite (:func:`finite_alphas`) in a new one, never
    in the caller's."""
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    a = getattr(scheduler, "alphas_cumprod", None)
    if kind == "epsilon" and (a is None or finite_alphas(a) is a):
        return scheduler
    return finite_terminal_snr(type(scheduler).from_config(scheduler.config, prediction_type="epsilon"))


@dataclass
class FunctionDenoiser:
    """Wrap any ``fn(z, t) -> eps`` (analytic denoisers in tests, foreign models) as a denoiser.

    It is never batched with anything else: its cost is one call.
    """

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    name: str = "function"

    def __call__(self, z, t):
        return self.fn(z, expand_timestep(t, z.shape[0], z.device))


@dataclass
class ControlNetInput:
    """A ControlNet and the conditioning image it reads (``[1 or B, 3, H, W]`` in [0, 1], at image size)."""

    controlnet: torch.nn.Module
    image: torch.Tensor
    conditioning_scale: float = 1.0


@dataclass
class UNetDenoiser:
    """A diffusers ``UNet2DConditionModel`` with its conditioning bound.

    One class covers every UNet the paper uses:

    * SD1.5 with text features (``encoder_hidden_states`` = CLIP output of a prompt, ``[1 or B, 77, 768]``);
      the empty prompt gives SD's unconditional prediction ``eps_sd(z)``;
    * any community SD1.5 fine-tune: the same class with that model's UNet;
    * SD1.5 + ControlNet: ``control`` set; its residuals go only into this term's rows of the batch;
    * the null-text domain UNet: ``encoder_hidden_states=None`` (its cross-attention is the fixed ``E``);
    * a UNet that also reads image channels concatenated to ``z`` (Zero-1-to-3's 8-channel UNet: the input
      view's VAE latent): ``concat`` (``[1 or B, C', H, W]``), zeros for an unconditional branch;
    * a UNet with IP-Adapters loaded: ``image_embeds``, one tensor per adapter (``[1 or B, ...]``; the
      negative image's embedding for an unconditional call), passed as diffusers' ``added_cond_kwargs``.

    ``prediction_type`` is the network's (``"epsilon"`` or ``"v_prediction"``); the output is always epsilon (in
    ``z``'s dtype; a v-model's in float32, see :func:`v_to_eps`).
    """

    unet: torch.nn.Module
    encoder_hidden_states: torch.Tensor | None = None
    control: ControlNetInput | None = None
    concat: torch.Tensor | None = None
    image_embeds: list[torch.Tensor] | None = None
    prediction_type: str = "epsilon"
    alphas_cumprod: torch.Tensor | None = None
    name: str = "unet"

    def __post_init__(self):
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported: use 'epsilon' or 'v_prediction'"
            )
        if self.prediction_type == "v_prediction" and self.alphas_cumprod is None:
            raise ValueError("a v-prediction UNet needs the scheduler's alphas_cumprod to convert to epsilon")

    def batch_key(self) -> tuple:
        """Adapters with equal keys run in one forward of the same network (text of one length: a long prompt's
        embeddings, e.g. compel's 154 tokens, run beside the 77 of the negative prompt's in their own forward)."""
        text = None if self.encoder_hidden_states is None else tuple(self.encoder_hidden_states.shape[1:])
        return ("unet", id(self.unet), text, self.concat is None, self.image_embeds is None)

    @staticmethod
    def evaluate_group(members, z, t) -> list[torch.Tensor]:
        return evaluate_unet_group(members, z, t)

    def __call__(self, z, t):
        return evaluate_unet_group([self], z, t)[0]


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a conditioning tensor with 1 or ``batch`` rows to ``batch`` rows."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(f"conditioning has {x.shape[0]} rows; expected 1 or {batch}")


def evaluate_unet_group(members: Sequence[UNetDenoiser], z: torch.Tensor, t) -> list[torch.Tensor]:
    """Evaluate several adapters of ONE UNet in a single batched forward.

    The latent is repeated once per member, conditionings are concatenated, ControlNet residuals are
    computed for the members that have a ControlNet (zeros for the others, which is exactly "no
    residual": the UNet adds them), and the output is split back per member.
    """
    if not members:
        return []
    unet = members[0].unet
    if any(m.unet is not unet for m in members):
        raise ValueError("evaluate_unet_group needs members that share one UNet")
    has_text = members[0].encoder_hidden_states is not None
    if any((m.encoder_hidden_states is not None) != has_text for m in members):
        raise ValueError("cannot batch text-conditioned and null-text calls of one UNet together")
    has_concat = members[0].concat is not None
    if any((m.concat is not None) != has_concat for m in members):
        raise ValueError("cannot batch calls with and without concatenated image channels together")
    has_ip = members[0].image_embeds is not None
    if any((m.image_embeds is not None) != has_ip for m in members):
        raise ValueError("cannot batch calls with and without IP-Adapter image embeddings together")

    b = z.shape[0]
    k = len(members)
    dtype = next(unet.parameters()).dtype
    t_b = expand_timestep(t, b, z.device)
    if has_concat:
        z_in = torch.cat([torch.cat([z.to(dtype), _rows(m.concat, b).to(device=z.device, dtype=dtype)], 1)
                          for m in members])
    else:
        z_in = z.to(dtype).repeat(k, *([1] * (z.ndim - 1)))
    t_in = t_b.repeat(k)
    ehs = None
    if has_text:
        ehs = torch.cat([_rows(m.encoder_hidden_states, b) for m in members]).to(device=z.device, dtype=dtype)

    kwargs = {}
    if has_ip:
        kwargs["added_cond_kwargs"] = {"image_embeds": [
            torch.cat([_rows(m.image_embeds[j], b) for m in members]).to(device=z.device, dtype=dtype)
            for j in range(len(members[0].image_embeds))]}
    if any(m.control is not None for m in members):
        down_parts: list[list[torch.Tensor]] = []
        mid_parts: list[torch.Tensor] = []
        ref = None
        computed = []
        for m in members:
            if m.control is None:
                computed.append(None)
                continue
            c = m.control
            down, mid = c.controlnet(
                z.to(dtype),
                t_b,
                encoder_hidden_states=_rows(m.encoder_hidden_states, b).to(device=z.device, dtype=dtype)
                if has_text
                else None,
                controlnet_cond=_rows(c.image, b).to(device=z.device, dtype=dtype),
                conditioning_scale=c.conditioning_scale,
                return_dict=False,
            )
            computed.append((down, mid))
            ref = (down, mid)
        for item in computed:
            down, mid = item if item is not None else ([torch.zeros_like(d) for d in ref[0]], torch.zeros_like(ref[1]))
            down_parts.append(down)
            mid_parts.append(mid)
        kwargs["down_block_additional_residuals"] = [
            torch.cat([parts[i] for parts in down_parts]) for i in range(len(down_parts[0]))
        ]
        kwargs["mid_block_additional_residual"] = torch.cat(mid_parts)

    out = unet(z_in, t_in, encoder_hidden_states=ehs, return_dict=False, **kwargs)[0]
    outs = list(out.chunk(k))
    results = []
    for m, o in zip(members, outs):  # a v-model's epsilon stays in float32 (v_to_eps); the caller casts the result
        results.append(v_to_eps(o, z, t_b, m.alphas_cumprod) if m.prediction_type == "v_prediction" else o.to(z.dtype))
    return results


def evaluate_batched(denoisers: Sequence[Denoiser], z: torch.Tensor, t) -> list[torch.Tensor]:
    """Evaluate denoisers on one ``(z, t)``, running each group that shares a network in one forward (see the
    module docstring: ``batch_key`` + ``evaluate_group``). The same denoiser object listed twice is evaluated
    once."""
    results: list[torch.Tensor | None] = [None] * len(denoisers)
    groups: dict[object, list[int]] = {}
    seen: dict[int, int] = {}
    for i, d in enumerate(denoisers):
        if id(d) in seen:
            continue
        seen[id(d)] = i
        key = d.batch_key() if hasattr(d, "batch_key") else ("single", id(d))
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        members = [denoisers[i] for i in idx]
        group = getattr(type(members[0]), "evaluate_group", None)
        outs = group(members, z, t) if group is not None else [m(z, t) for m in members]
        for i, o in zip(idx, outs):
            results[i] = o
    for i, d in enumerate(denoisers):
        if results[i] is None:
            results[i] = results[seen[id(d)]]
    return results
