"""The multi-guidance module: Eq. 3, batching, automatic weights, rectification, bad weights."""

import copy
import math

import pytest
import torch

from suite.denoisers import ControlNetInput, FunctionDenoiser, UNetDenoiser, evaluate_batched, v_to_eps
from suite.guidance import AutoWeights, MultiGuidance, Term, auto_weights, combine


def const(value, calls=None):
    def fn(z, t):
        if calls is not None:
            calls.append(1)
        return torch.full_like(z, float(value)) + 0.01 * z

    return FunctionDenoiser(fn)


def test_combine_is_eq3():
    g = torch.Generator().manual_seed(0)
    e0, e1, e2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    out = combine(e0, [e1, e2], [2.5, -0.5])
    assert torch.allclose(out, e0 + 2.5 * (e1 - e0) - 0.5 * (e2 - e0), atol=1e-6)
    # zero weights give the base; weight 1 on one term gives that term
    assert torch.equal(combine(e0, [e1, e2], [0.0, 0.0]), e0)
    assert torch.allclose(combine(e0, [e1], [1.0]), e1, atol=1e-6)
    # per-sample weights
    w = torch.tensor([1.0, 3.0])
    out = combine(e0, [e1], [w])
    assert torch.allclose(out[1], e0[1] + 3 * (e1[1] - e0[1]), atol=1e-6)
    assert torch.allclose(out[0], e1[0], atol=1e-6)


def test_zero_weight_terms_cost_nothing_and_give_base():
    calls = []
    z = torch.randn(2, 4, 8, 8)
    base = const(0.0)
    mg = MultiGuidance(base, [Term(const(5.0, calls), 0.0, "zero")])
    assert torch.equal(mg(z, 10), base(z, 10))
    assert calls == []


def test_negative_weight_pushes_away():
    z = torch.zeros(1, 4, 4, 4)
    mg = MultiGuidance(const(0.0), [Term(const(1.0), -2.0, "neg")])
    assert torch.allclose(mg(z, 5), torch.full_like(z, -2.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", None])
def test_bad_weights_are_refused(bad):
    if bad is None:
        return  # None means automatic: allowed
    with pytest.raises(ValueError, match="weight"):
        MultiGuidance(const(0.0), [Term(const(1.0), bad, "x")])


def test_auto_weights_satisfy_the_paper_identity():
    g = torch.Generator().manual_seed(1)
    e0, e_ref, e1, e2 = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(4))
    e1 = e0 + 0.3 * (e1 - e0)  # terms with different guidance magnitudes
    n = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
    # direction norms: w0 |g_ref| = sum w_i |g_i|
    rule = AutoWeights(w0=7.0, norm="direction", reference=const(0))
    w = auto_weights(e0, [e1, e2], rule, e_ref)
    lhs = 7.0 * n(e_ref - e0)
    rhs = w[0] * n(e1 - e0) + w[1] * n(e2 - e0)
    assert torch.allclose(lhs, rhs, rtol=1e-5)
    assert torch.allclose(w[0] * n(e1 - e0), w[1] * n(e2 - e0), rtol=1e-5)  # equal shares
    # prediction norms: w0 |eps_0| = sum w_i |eps_i|
    rule = AutoWeights(w0=7.0, norm="prediction")
    w = auto_weights(e0, [e1, e2], rule, None)
    assert torch.allclose(7.0 * n(e0), w[0] * n(e1) + w[1] * n(e2), rtol=1e-5)
    # a term that equals the reference direction gets exactly w0 / K
    rule = AutoWeights(w0=7.0, norm="direction", reference=const(0))
    w = auto_weights(e0, [e_ref, e2], rule, e_ref)
    assert torch.allclose(w[0], torch.full((3,), 3.5), rtol=1e-5)


def test_auto_weights_are_frozen_after_first_step_unless_asked():
    calls = []
    ref = const(1.0, calls)
    mg = MultiGuidance(const(0.0), [Term(const(2.0), None, "d")], AutoWeights(w0=7.0, reference=ref))
    z = torch.randn(1, 4, 4, 4)
    mg(z, 10)
    first = mg.last_weights[0].clone()
    mg(z * 3, 5)
    assert len(calls) == 1  # the reference is evaluated only at the first step
    assert torch.equal(mg.last_weights[0], first)
    mg.reset()
    mg(z * 3, 5)
    assert len(calls) == 2


def test_shared_network_runs_one_forward_and_batched_equals_separate(tiny_parts, tiny_dir):
    from suite.models import load_controlnet

    unet = tiny_parts["unet"]
    controlnet = load_controlnet(str(tiny_dir / "controlnet"))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 32, 32, generator=g)
    e_unc, e_txt = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g)
    d_unc = UNetDenoiser(unet, e_unc)
    d_txt = UNetDenoiser(unet, e_txt)
    d_cn = UNetDenoiser(unet, e_txt, control=ControlNetInput(controlnet, image, 0.8))
    forwards = []
    hook = unet.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    with torch.no_grad():
        batched = evaluate_batched([d_unc, d_txt, d_cn], z, 500)
        assert forwards == [6]  # one forward of batch 3 x 2 for three terms of one network
        sep = [d(z, 500) for d in (d_unc, d_txt)]
        # ControlNet term computed by hand: residuals only into its own call
        down, mid = controlnet(z, torch.tensor([500, 500]), encoder_hidden_states=e_txt.expand(2, -1, -1),
                               controlnet_cond=image.expand(2, -1, -1, -1), conditioning_scale=0.8,
                               return_dict=False)
        by_hand = unet(z, torch.tensor([500, 500]), encoder_hidden_states=e_txt.expand(2, -1, -1),
                       down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    hook.remove()
    assert torch.allclose(batched[0], sep[0], atol=1e-5)
    assert torch.allclose(batched[1], sep[1], atol=1e-5)
    assert torch.allclose(batched[2], by_hand, atol=1e-5)
    assert not torch.allclose(batched[2], batched[1], atol=1e-3)  # the ControlNet did something


def test_rectification_takes_uncond_from_the_base_model(tiny_parts):
    from suite.testing import build_tiny_unet

    sd, community = tiny_parts["unet"], build_tiny_unet(seed=11)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 32, 32, generator=g)
    empty, text = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        mg = MultiGuidance(UNetDenoiser(sd, empty), [Term(UNetDenoiser(community, text), 3.0, "community")])
        out = mg(z, 300)
        eps_sd_uncond = sd(z, 300, encoder_hidden_states=empty).sample
        eps_com_uncond = community(z, 300, encoder_hidden_states=empty).sample
        eps_com_text = community(z, 300, encoder_hidden_states=text).sample
    assert torch.allclose(out, eps_sd_uncond + 3.0 * (eps_com_text - eps_sd_uncond), atol=1e-5)
    assert not torch.allclose(out, eps_com_uncond + 3.0 * (eps_com_text - eps_com_uncond), atol=1e-3)


def test_v_prediction_conversion_closed_form():
    alphas = torch.linspace(0.99, 0.01, 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([100, 700])
    a = alphas[t].view(-1, 1, 1, 1)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(v_to_eps(v, z, t, alphas), eps, atol=1e-5)


def test_v_prediction_conversion_at_eulers_fractional_timesteps():
    """Euler's timesteps are fractional (946.42) and its latents carry the noise level sigma interpolated between
    timesteps; the conversion read alpha_bar at floor(t) (the mini base sampled with Euler was 2.7e-3 off diffusers'
    own pipeline, now 2.3e-4, float rounding). Closed form at each of Euler's steps, on the mini base's schedule (zero
    terminal SNR: its last alpha_bar is 0)."""
    from diffusers import EulerDiscreteScheduler

    from suite.presets import sd_ref

    sched = EulerDiscreteScheduler.from_pretrained(sd_ref("mini"), subfolder="scheduler")
    sched.set_timesteps(20)
    t, sigma = sched.timesteps.float(), sched.sigmas[:-1].float()
    assert (t != t.round()).any()
    a = (1 / (1 + sigma**2)).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(len(t), 4, 4, 4, generator=g), torch.randn(len(t), 4, 4, 4, generator=g)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps  # what Euler's scale_model_input gives the model
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    got = v_to_eps(v, z, t, sched.alphas_cumprod)
    assert torch.isfinite(got).all() and (got - eps).abs().max() < 1e-4
    # at and past the table's end (t = 1000 of a 1000-step table: DPM-Solver's "leading" spacing at 999 steps), the
    # last entry, not NaN from inf - inf
    end = v_to_eps(v[:3], z[:3], torch.tensor([999.5, 1000.0, 1200.0]), sched.alphas_cumprod)
    assert torch.equal(end, v_to_eps(v[:3], z[:3], torch.tensor([999, 999, 999]), sched.alphas_cumprod))


def gaussian_eps(mu, s2, alphas):
    """Optimal eps for data x0 ~ N(mu, s2 I): E[eps | z_t] = sqrt(1-a)(z - sqrt(a) mu) / (a s2 + 1 - a)."""

    def fn(z, t):
        a = alphas[t.long()].view(-1, 1, 1, 1).to(z.dtype)
        return (1 - a).sqrt() * (z - a.sqrt() * mu) / (a * s2 + 1 - a)

    return FunctionDenoiser(fn)


def test_analytic_gaussian_combination_and_sampling(tiny_pipe):
    """Guidance between N(0, I) (base) and N(mu, I) (term) with weight w is exactly the optimal denoiser of
    N(w mu, I). For unit-variance Gaussian data the probability-flow ODE maps z_T to z_T + (1 - sqrt(a_T)) m, so
    sampling from z_T ~ N(0, I) at the first timestep T must land at mean w mu (1 - sqrt(a_T)), std 1."""
    alphas = tiny_pipe.scheduler.alphas_cumprod
    mu, w = 0.5, 2.0
    base, cond, target = (gaussian_eps(m, 1.0, alphas) for m in (0.0, mu, w * mu))
    mg = MultiGuidance(base, [Term(cond, w, "cond")])
    z = torch.randn(3, 4, 8, 8)
    t = torch.tensor([50, 400, 900])
    assert torch.allclose(mg(z, t), target(z, t), atol=1e-6)
    out = tiny_pipe(guidance=mg, num_images_per_prompt=64, num_inference_steps=25, seed=0, output_type="latent")
    a_T = alphas[tiny_pipe.scheduler.timesteps[0]].item()
    x = out.latents
    assert abs(x.mean().item() - w * mu * (1 - math.sqrt(a_T))) < 0.01
    assert abs(x.std().item() - 1.0) < 0.03
    # and with the base alone: N(0, 1)
    x0 = tiny_pipe(guidance=base, num_images_per_prompt=64, num_inference_steps=25, seed=0, output_type="latent").latents
    assert abs(x0.mean().item()) < 0.01 and math.isclose(x0.std().item(), 1.0, abs_tol=0.03)


def test_v_models_guidance_direction_survives_half_precision(tiny_parts):
    """Two v-prediction UNets in bfloat16 at SD's last timestep: eps is nearly z there (sqrt(a_t) = 0.07), so an
    epsilon cast back to bfloat16 rounds their difference (the guidance direction, and the automatic weights
    measured from it) away; it must match float32's, and MultiGuidance still returns z's dtype."""
    from suite.testing import build_tiny_unet

    alphas = tiny_parts["scheduler"].alphas_cumprod
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 32, 32, generator=g)
    empty, text = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    directions = {}
    for dtype in (torch.float32, torch.bfloat16):
        sd, community = (copy.deepcopy(u).to(dtype) for u in (tiny_parts["unet"], build_tiny_unet(seed=11)))
        base = UNetDenoiser(sd, empty, prediction_type="v_prediction", alphas_cumprod=alphas)
        term = UNetDenoiser(community, text, prediction_type="v_prediction", alphas_cumprod=alphas)
        with torch.no_grad():
            e0, e1 = evaluate_batched([base, term], z.to(dtype), torch.tensor(999))
            out = MultiGuidance(base, [Term(term, 1.0, "community")])(z.to(dtype), 999)
        assert out.dtype == dtype
        directions[dtype] = e1.float() - e0.float()
    ref = directions[torch.float32]
    err = float((directions[torch.bfloat16] - ref).norm() / ref.norm())
    assert err < 0.03, err  # measured: 0.012; with the epsilons cast back to bfloat16, 0.075


def test_a_term_frozen_at_zero_stops_being_called_unless_a_projection_needs_it():
    """An automatic weight measured as 0 (here a share of 0) skips its model from the second step on, but a rule
    that projects onto that term's direction still needs it: the projection stopped after the first step, and the
    same (z, t) gave another result at every later step."""
    from suite.rules import parse_rule

    g = torch.Generator().manual_seed(0)
    d_dir, c_dir = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    c_dir = c_dir + 2 * d_dir  # correlated, so the projection matters
    calls = []

    def denoiser(name, direction):
        return FunctionDenoiser(lambda z, t: (calls.append(name), direction)[1])

    z = torch.zeros(1, 4, 8, 8)
    for text, control_called in (("domain-share=1", False), ("domain-share=1, project=domain:control", True)):
        calls.clear()
        mg = MultiGuidance(FunctionDenoiser(lambda z, t: z * 0),
                           [Term(denoiser("domain", d_dir), None, "domain"),
                            Term(denoiser("control", c_dir), None, "control")],
                           AutoWeights(w0=7.0, reference=FunctionDenoiser(lambda z, t: c_dir)), rule=parse_rule(text))
        first, second = mg(z, 500), mg(z, 500)
        assert mg.weights_used()["control"] == 0.0
        assert torch.allclose(first, second)
        assert calls.count("control") == (2 if control_called else 1), (text, calls)


def test_combine_refuses_predictions_and_weights_of_different_counts():
    """combine (the one place of Eq. 3) zipped its terms with their weights: a weight short, a term was dropped."""
    from suite.guidance import combine

    e0, e1 = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert combine(e0, [e1, e1], [2.0, 1.0]).max() == 3.0
    with pytest.raises(ValueError, match="2 predictions, 1 weights: give one of each per term"):
        combine(e0, [e1, e1], [2.0])
    with pytest.raises(ValueError, match="and 1 names"):
        combine(e0, [e1, e1], [2.0, 1.0], names=["domain"])
