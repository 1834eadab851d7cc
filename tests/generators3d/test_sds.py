"""SDS (generators3d.sds): the surrogate's exact gradient, NaN guard, clipping, annealing, and that SDS with an
analytic denoiser pulls NeRF renders to the denoiser's known optimum."""

import pytest
import torch

from generators3d.sds import TimestepRange, schedule_value, sds, sds_weight
from suite.denoisers import FunctionDenoiser
from suite.guidance import MultiGuidance, Term


def _alphas():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


def test_surrogate_gradient_is_exactly_w_times_eps_hat_minus_eps():
    torch.manual_seed(0)
    ac = _alphas()
    latents = torch.randn(3, 4, 8, 8, requires_grad=True)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([50, 400, 900])
    seen = {}

    def eps_fn(z, tt):
        seen["z"], seen["t"] = z.clone(), tt.clone()
        return torch.sin(3 * z) + 0.01 * tt.float().view(-1, 1, 1, 1)

    # A one-term MultiGuidance (weight 2.5) is just another denoiser for SDS.
    base = FunctionDenoiser(lambda z, tt: 0.3 * z)
    guided = MultiGuidance(base, [Term(FunctionDenoiser(eps_fn), 2.5, "c")])
    out = sds(latents, guided, ac, timesteps=t, noise=noise)
    out["loss_sds"].backward()

    a = ac[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    assert torch.allclose(seen["z"], z_t, atol=1e-6) and torch.equal(seen["t"], t)
    eps_hat = 0.3 * z_t + 2.5 * (eps_fn(z_t, t) - 0.3 * z_t)
    expected = (1 - a) * (eps_hat - noise)  # w(t) = 1 - alpha_bar (threestudio's "sds")
    assert torch.allclose(latents.grad * 3, expected, atol=1e-5, rtol=1e-5)  # dL/dx = g / B
    assert torch.allclose(out["grad"], expected, atol=1e-5)
    assert set(out) >= {"loss_sds", "grad_norm", "min_step", "max_step"}
    assert (out["min_step"], out["max_step"]) == (50, 900)
    assert torch.isclose(out["grad_norm"], expected.norm(), rtol=1e-5)


def test_nan_guard_and_clipping():
    ac = _alphas()
    latents = torch.zeros(1, 4, 4, 4, requires_grad=True)
    noise = torch.zeros(1, 4, 4, 4)

    def bad(z, t):
        e = torch.full_like(z, 100.0)
        e[0, 0, 0, 0] = float("nan")
        return e

    out = sds(latents, FunctionDenoiser(bad), ac, timesteps=[500], noise=noise, grad_clip=0.5)
    out["loss_sds"].backward()
    assert out["nan_count"] == 1
    assert torch.isfinite(latents.grad).all()
    assert latents.grad[0, 0, 0, 0] == 0
    assert latents.grad.abs().max() == pytest.approx(0.5)  # clipped: w(t) * 100 >> 0.5


def test_timestep_range_anneals_like_threestudio():
    # threestudio zero123.yaml: min_step_percent [0, 0.4, 0.2, 200], max [0, 0.85, 0.5, 200]
    r = TimestepRange([0, 0.4, 0.2, 200], [0, 0.85, 0.5, 200], 1000)
    assert (r.min_step, r.max_step) == (400, 850)
    r.update_step(100)
    assert (r.min_step, r.max_step) == (300, 675)
    r.update_step(500)
    assert (r.min_step, r.max_step) == (200, 500)
    t = r.sample(1000, "cpu", torch.Generator().manual_seed(0))
    assert t.min() >= 200 and t.max() <= 500 and t.max() > 450
    assert schedule_value([0.98, 0.5, 10], 5) == pytest.approx(0.74)
    with pytest.raises(ValueError, match="min <= max"):
        r.set_min_max_steps(0.7, 0.2)
    a = torch.tensor([0.25])
    assert sds_weight("uniform", a).item() == 1 and sds_weight("fantasia3d", a).item() == pytest.approx(0.375)


def test_sds_with_analytic_denoiser_pulls_renders_to_its_optimum():
    """Data ~ N(target, s^2): the optimal denoiser is known in closed form, and SDS's fixed point is the
    target. Optimising a NeRF by SDS on its renders (render = 'latent') must cut the distance to the target
    images by a factor >= 5."""
    from generators3d.cameras import orbit_cameras
    from generators3d.config import NeRFConfig
    from generators3d.nerf import Background, NeRFField
    from generators3d.render import render

    torch.manual_seed(0)
    ac = _alphas()
    cfg = NeRFConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6, hidden=16,
                     n_hidden_layers=1, samples_per_ray=16)
    field, bg = NeRFField(cfg), Background()
    cams = [orbit_cameras(el, az, 3.8, 20.0) for el, az in ((0.0, 0.0), (20.0, 180.0))]
    res, s = 12, 0.05
    # Targets: a reddish object on white, centred in each view (a disc of radius 3.5 pixels).
    yy, xx = torch.meshgrid(torch.arange(res) + 0.5 - res / 2, torch.arange(res) + 0.5 - res / 2, indexing="ij")
    disc = ((yy ** 2 + xx ** 2) < 3.5 ** 2).float()
    target = torch.stack([1 - 0.2 * disc, 1 - 0.8 * disc, 1 - 0.7 * disc])[None]

    def optimal_eps(z, t):  # E[eps | z_t] for data N(target, s^2 I)
        a = ac[t.long()].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (z - a.sqrt() * target) / (a * s * s + 1 - a)

    def distance():
        with torch.no_grad():
            return sum(((render(field, bg, cams[i], res)["rgb"].permute(0, 3, 1, 2) - target) ** 2).mean()
                       for i in range(2)).item()

    before = distance()
    opt = torch.optim.Adam(field.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(0)
    rng = TimestepRange(0.02, 0.98, 1000)
    for step in range(60):
        rgb = render(field, bg, cams[step % 2], res)["rgb"].permute(0, 3, 1, 2)
        out = sds(rgb, FunctionDenoiser(optimal_eps), ac, timesteps=rng, generator=g)
        opt.zero_grad()
        out["loss_sds"].backward()
        opt.step()
    after = distance()
    assert after < before / 5, (before, after)
