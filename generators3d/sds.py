"""Score distillation sampling (DreamFusion's SDS) over ANY denoiser: one function, used by every stage and by
the threestudio extension.

For latents ``x`` (an encoded render), a timestep ``t`` and noise ``eps``:

.. math::

    z_t = \\sqrt{\\bar\\alpha_t}\\,x + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\qquad
    g = w(t)\\,(\\hat\\epsilon(z_t, t) - \\epsilon),\\qquad
    \\mathcal{L}_{SDS} = \\tfrac{1}{2B}\\,\\| x - \\mathrm{sg}(x - g) \\|^2

so that ``dL/dx = g / B`` exactly (threestudio's surrogate loss and its ``/ B``). ``eps_hat`` comes from the
denoiser, which is typically a :class:`suite.guidance.MultiGuidance` (paper Eq. 3): the domain model + SD1.5
text control + SD1.5 unconditional, or Zero-1-to-3 with its classifier-free guidance as a one-term
MultiGuidance. ``alpha_bar`` is the SAME scheduler's ``alphas_cumprod`` the denoiser was trained with.

Weighting ``w(t)``: ``"sds"`` ``1 - alpha_bar_t`` (threestudio's default), ``"uniform"`` 1,
``"fantasia3d"`` ``sqrt(alpha_bar_t) (1 - alpha_bar_t)``, or any callable ``w(alpha_bar_t)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["sds", "TimestepRange", "schedule_value", "sds_weight"]


def schedule_value(value, global_step: int, epoch: int | None = None) -> float:
    """threestudio's scalar schedule ``C(value, epoch, global_step)``: a number, or
    ``[start_step, start_value, end_value, end_step]`` (``[start_value, end_value, end_step]`` starts at step 0),
    linear and clamped. As in threestudio, an integer ``end_step`` counts optimizer steps and a float one counts
    epochs (``epoch``; our own runs, which have no epochs, pass none and count steps). Six or more entries are a
    piecewise schedule ``[start_step, v0, v1, step1, v2, step2, ...]``: the segment is chosen by ``global_step``."""
    if isinstance(value, int | float):
        return float(value)
    value = list(value)
    if len(value) == 3:
        value = [0, *value]
    if len(value) >= 6:
        if len(value) % 2:
            raise ValueError(f"a piecewise schedule is [start_step, v0, v1, step1, v2, step2, ...], got {value!r}")
        select = 3
        for i in range(3, len(value) - 2, 2):
            if global_step >= value[i]:
                select = i + 2
        start_step, start_value = (value[select - 2], value[select - 3]) if select != 3 else value[:2]
        value = [start_step, start_value, value[select - 1], value[select]]
    if len(value) != 4:
        raise ValueError(f"a schedule is a number or [start_step, start_value, end_value, end_step], got {value!r}")
    start_step, start_value, end_value, end_step = value
    current = epoch if isinstance(end_step, float) and epoch is not None else global_step
    if end_step <= start_step:
        return float(end_value if current >= end_step else start_value)
    frac = min(max((current - start_step) / (end_step - start_step), 0.0), 1.0)
    return float(start_value + (end_value - start_value) * frac)


class TimestepRange:
    """The SDS timestep range ``[min_step, max_step]`` (integers of the scheduler's ``num_train_timesteps``)
    with threestudio's annealing: call :meth:`update_step` every step; :meth:`set_min_max_steps` sets
    percentages directly (as threestudio systems do)."""

    def __init__(self, min_step_percent=0.02, max_step_percent=0.98, num_train_timesteps: int = 1000):
        self.min_step_percent = min_step_percent
        self.max_step_percent = max_step_percent
        self.num_train_timesteps = int(num_train_timesteps)
        self.update_step(0)

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        lo, hi = float(min_step_percent), float(max_step_percent)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"the SDS timestep range must satisfy 0 <= min <= max <= 1, got [{lo}, {hi}]")
        self.min_step = int(self.num_train_timesteps * lo)
        self.max_step = min(int(self.num_train_timesteps * hi), self.num_train_timesteps - 1)

    def update_step(self, global_step: int, epoch: int | None = None) -> None:
        """The range at ``global_step`` (and ``epoch``, which threestudio's schedules with a float end count in)."""
        self.set_min_max_steps(schedule_value(self.min_step_percent, global_step, epoch),
                               schedule_value(self.max_step_percent, global_step, epoch))

    def noise_range(self) -> tuple[float, float]:
        """The current range as noise levels ``t / T`` (what :func:`suite.rules.rule_fits` reads)."""
        return self.min_step / self.num_train_timesteps, self.max_step / self.num_train_timesteps

    def sample(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(self.min_step, self.max_step + 1, (batch,), generator=generator,
                             device="cpu").to(device)


def sds_weight(weighting: str | Callable, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``w(t)`` from ``alpha_bar_t`` (see the module docstring)."""
    if callable(weighting):
        return weighting(alpha_bar)
    if weighting == "sds":
        return 1.0 - alpha_bar
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting == "fantasia3d":
        return alpha_bar.sqrt() * (1.0 - alpha_bar)
    raise ValueError(f"unknown SDS weighting {weighting!r}: use 'sds', 'uniform' or 'fantasia3d'")


def sds(latents: torch.Tensor, denoiser, alphas_cumprod: torch.Tensor, *,
        timesteps: TimestepRange | Sequence[int] | torch.Tensor | None = None,
        weighting: str | Callable = "sds", grad_clip: float | None = None,
        generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> dict:
    """One SDS evaluation (see the module docstring). Returns threestudio's keys.

    * ``latents``: ``[B, C, H, W]`` with autograd history back to the 3D parameters;
    * ``denoiser``: any ``eps = denoiser(z, t)`` (a MultiGuidance, a UNet adapter, an analytic function);
    * ``timesteps``: a :class:`TimestepRange` to sample from (default U[0.02, 0.98]) or fixed ``[B]`` timesteps;
    * ``grad_clip``: clamp each element of ``g`` to ``[-grad_clip, grad_clip]``;
    * NaN guard: non-finite entries of ``g`` become 0 and are counted in ``"nan_count"``.

    Returns ``loss_sds`` (the surrogate, ``dL/dx = g / B``), ``grad_norm``, ``min_step``, ``max_step``,
    ``timesteps``, ``nan_count``, ``grad`` (detached ``g``), and ``noisy`` / ``eps`` (the noised latents and the
    prediction, detached, for threestudio's guidance evaluation).
    """
    b = latents.shape[0]
    device = latents.device
    # 1. Timesteps: sampled from the (annealed) range, or given.
    if timesteps is None:
        timesteps = TimestepRange(num_train_timesteps=len(alphas_cumprod))
    if isinstance(timesteps, TimestepRange):
        lo, hi = timesteps.min_step, timesteps.max_step
        t = timesteps.sample(b, device, generator)
    else:
        t = torch.as_tensor(timesteps, device=device).long().reshape(-1).expand(b)
        lo, hi = int(t.min()), int(t.max())

    # 2. Noise the latents with the scheduler's alphas_cumprod (what the denoiser was trained with).
    a = alphas_cumprod.to(device=device, dtype=torch.float32)[t.cpu().long()].view(-1, *([1] * (latents.ndim - 1)))
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
    with torch.no_grad():
        x = latents.detach().float()
        z_t = a.sqrt() * x + (1.0 - a).sqrt() * noise.float()
        # 3. The prediction (no gradient through the denoiser: that is SDS).
        eps_hat = denoiser(z_t.to(latents.dtype), t).float()
        # 4. g = w(t) (eps_hat - eps), NaN guard, optional clipping.
        grad = sds_weight(weighting, a) * (eps_hat - noise.float())
        finite = torch.isfinite(grad)
        nan_count = int((~finite).sum())
        if nan_count:
            grad = torch.where(finite, grad, torch.zeros_like(grad))
        if grad_clip is not None:
            grad = grad.clamp(-float(grad_clip), float(grad_clip))
    # 5. Surrogate whose gradient w.r.t. the latents is g / B.
    target = (latents.float() - grad).detach()
    loss = 0.5 * torch.nn.functional.mse_loss(latents.float(), target, reduction="sum") / b
    return {"loss_sds": loss, "grad_norm": grad.norm(), "min_step": lo, "max_step": hi,
            "timesteps": t, "nan_count": nan_count, "grad": grad, "noisy": z_t, "eps": eps_hat}
