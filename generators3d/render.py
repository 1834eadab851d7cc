"""Volume rendering of a :class:`generators3d.nerf.NeRFField`.

Samples are stratified between the ray's entry and exit of the scene sphere. Weights come from nerfacc's
batched ``[rays, samples]`` functions (``render_weight_from_density``, ``accumulate_along_rays``: they run on
CPU and GPU); without nerfacc the same formulas run in PyTorch (:func:`weights_from_density`). nerfacc's
occupancy-grid sampling needs its CUDA extension and is not used here (see docs/3d.md); instead, with
``NeRFConfig.occupancy_grid`` the field keeps its own occupancy grid and only samples in occupied cells (and inside
the scene sphere) are evaluated.
"""

from __future__ import annotations

import torch

from .cameras import Cameras, camera_rays

_NERFACC = None


def _nerfacc():
    global _NERFACC
    if _NERFACC is None:
        try:
            import nerfacc

            _NERFACC = nerfacc
        except Exception:  # noqa: BLE001 - any failure: use the PyTorch formulas
            _NERFACC = False
    return _NERFACC or None


def weights_from_density(t_starts, t_ends, sigmas):
    """``w_i = T_i (1 - exp(-sigma_i delta_i))``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` (PyTorch)."""
    sd = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sd)
    trans = torch.exp(-torch.cat([torch.zeros_like(sd[..., :1]), torch.cumsum(sd[..., :-1], -1)], -1))
    return trans * alphas, trans, alphas


def sphere_intersect(o: torch.Tensor, d: torch.Tensor, radius: float):
    """Entry/exit distances of unit rays with the sphere ``|x| = radius``; ``hit`` is False for misses."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    s = disc.clamp_min(0).sqrt()
    near = (-b - s).clamp_min(0.0)
    far = (-b + s).clamp_min(0.0)
    return near, far, hit & (far > near)


def render_rays(field, background, o: torch.Tensor, d: torch.Tensor, n_samples: int, perturb: bool = False,
                generator: torch.Generator | None = None, use_nerfacc: bool = True) -> dict:
    """Render ``[N]`` rays: ``rgb [N, 3]`` (over the background), ``opacity [N, 1]``, ``depth [N, 1]``."""
    near, far, hit = sphere_intersect(o, d, field.radius)
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=o.device)
    edges = near[:, None] + (far - near)[:, None] * u[None]  # [N, S+1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    jitter = torch.rand(t_starts.shape, generator=generator).to(o.device) if perturb else 0.5
    t_mid = t_starts + (t_ends - t_starts) * jitter
    points = o[:, None, :] + d[:, None, :] * t_mid[..., None]
    keep = hit[:, None].expand(t_mid.shape)
    occupied = field.occupied(points) if hasattr(field, "occupied") else None
    if occupied is not None:
        keep = keep & occupied
    if bool(keep.all()):
        sigma, rgb = field(points)
        sigma = sigma * hit[:, None]
    else:  # evaluate only samples in the scene sphere and in occupied cells; the rest is empty space
        sigma_k, rgb_k = field(points[keep])
        sigma = torch.zeros(t_mid.shape, dtype=sigma_k.dtype, device=o.device).masked_scatter(keep, sigma_k)
        rgb = torch.zeros((*t_mid.shape, 3), dtype=rgb_k.dtype, device=o.device).masked_scatter(
            keep[..., None].expand(*t_mid.shape, 3), rgb_k)
    nerfacc = _nerfacc() if use_nerfacc else None
    if nerfacc is not None:
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma)
        color = nerfacc.accumulate_along_rays(weights, values=rgb)
        opacity = nerfacc.accumulate_along_rays(weights, values=None)
        depth = nerfacc.accumulate_along_rays(weights, values=t_mid[..., None])
    else:
        weights, _, _ = weights_from_density(t_starts, t_ends, sigma)
        color = (weights[..., None] * rgb).sum(-2)
        opacity = weights.sum(-1, keepdim=True)
        depth = (weights * t_mid).sum(-1, keepdim=True)
    color = color + (1.0 - opacity) * background(d)
    return {"rgb": color, "opacity": opacity, "depth": depth, "weights": weights, "t_mid": t_mid,
            "t_starts": t_starts, "t_ends": t_ends, "sigmas": sigma}


def render(field, background, cams: Cameras, height: int, width: int | None = None, n_samples: int | None = None,
           perturb: bool = False, generator: torch.Generator | None = None, chunk: int | None = None) -> dict:
    """Render images: ``rgb [B, H, W, 3]``, ``opacity [B, H, W, 1]``, ``depth [B, H, W, 1]``.

    ``chunk`` (rays per call) bounds memory for renders without gradient (previews, mesh threshold).
    """
    width = width or height
    n_samples = n_samples or field.cfg.samples_per_ray
    o, d = camera_rays(cams.to(next(field.parameters()).device), height, width)
    b = o.shape[0]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    keys = ("rgb", "opacity", "depth")
    if chunk is None or chunk >= o.shape[0]:
        out = render_rays(field, background, o, d, n_samples, perturb, generator)
        parts = {k: out[k] for k in keys}
    else:
        pieces = [render_rays(field, background, o[i:i + chunk], d[i:i + chunk], n_samples, perturb, generator)
                  for i in range(0, o.shape[0], chunk)]
        parts = {k: torch.cat([p[k] for p in pieces]) for k in keys}
    return {k: v.reshape(b, height, width, -1) for k, v in parts.items()}
