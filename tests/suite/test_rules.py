"""Guidance rules (suite.rules, applied by suite.guidance): each part against its closed form."""

import pytest
import torch

from suite.checks import UserError
from suite.denoisers import FunctionDenoiser
from suite.guidance import AutoWeights, MultiGuidance, Term, auto_weights, clamp_rms, combine, project_out
from suite.rules import PAPER, Schedule, check_rule_terms, format_rule, parse_rule


def fixed(tensor, calls=None):
    """A denoiser that returns ``tensor`` (per sample) whatever z and t are."""
    def fn(z, t):
        if calls is not None:
            calls.append(t)
        return tensor.clone()

    return FunctionDenoiser(fn)


def gaussians(n=4, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 4, 8, 8, generator=g) for _ in range(n)]


def test_an_interval_that_excludes_the_step_gives_exactly_the_unguided_prediction():
    e0, ed, ec = gaussians(3)
    calls = []
    mg = MultiGuidance(fixed(e0), [Term(fixed(ed, calls), 1.5, "domain"), Term(fixed(ec), 7.0, "control")],
                       rule=parse_rule("domain=0-0.7, control=0.7-1"))
    z = torch.zeros(3, 4, 8, 8)
    # t = 800 (s = 0.8): the domain term is outside its interval and not evaluated; only the control term acts
    assert torch.equal(mg(z, 800), combine(e0, [ec], [7.0]))
    assert calls == []
    # t = 300 (s = 0.3): the domain term alone
    assert torch.equal(mg(z, 300), combine(e0, [ed], [1.5]))
    # on the boundary (s = 0.7 exactly): the control term's interval, as for every t a sampler may give
    for t in (700, torch.tensor(700), torch.tensor([700, 700, 700]), torch.tensor(700.0)):
        assert torch.equal(mg(z, t), combine(e0, [ec], [7.0])), t
    assert torch.equal(mg(z, 699), combine(e0, [ed], [1.5]))
    # a schedule that excludes every term at this step: exactly eps_0
    mg = MultiGuidance(fixed(e0), [Term(fixed(ed), 1.5, "domain"), Term(fixed(ec), 7.0, "control")],
                       rule=parse_rule("domain=0-0.2, control=0.9-1"))
    assert torch.equal(mg(z, 500), e0)


def test_a_ramp_scales_the_weight_linearly_and_per_sample():
    e0, ed = gaussians(2)
    mg = MultiGuidance(fixed(e0), [Term(fixed(ed), 2.0, "domain")], rule=parse_rule("domain=0.2-1, domain-ramp=1.5:0.5"))
    z = torch.zeros(3, 4, 8, 8)
    t = torch.tensor([100, 600, 1000])  # s = 0.1 (outside), 0.6 (halfway: factor 1.0), 1.0 (factor 0.5)
    out = mg(z, t)
    assert torch.equal(out[0], e0[0])
    assert torch.allclose(out[1], e0[1] + 2.0 * 1.0 * (ed[1] - e0[1]), atol=1e-6)
    assert torch.allclose(out[2], e0[2] + 2.0 * 0.5 * (ed[2] - e0[2]), atol=1e-6)
    assert Schedule(0.2, 1.0, (1.5, 0.5)).factor(0.6) == pytest.approx(1.0)
    # intervals are [lo, hi) (hi = 1 included): a split at 0.7 gives no step to both terms
    assert (Schedule(0.0, 0.7).factor(0.7), Schedule(0.7, 1.0).factor(0.7), Schedule(0.7, 1.0).factor(1.0)) == (0, 1, 1)
    assert mg.weights_used() == {"domain": 2.0}  # the weight before its schedule


def test_projection_removes_exactly_the_parallel_component():
    e0, ed, ec = gaussians(3)
    gd, gc = ed - e0, ec - e0
    out = combine(e0, [ed, ec], [1.5, 7.0], ["domain", "control"], parse_rule("project=domain:control"))
    projected = (out - e0 - 7.0 * gc) / 1.5
    dots = (projected * gc).flatten(1).sum(1)
    assert torch.allclose(dots, torch.zeros(3), atol=1e-3)
    # what was removed is parallel to g_c: g_d - projected = c * g_c with c = <g_d, g_c> / |g_c|^2
    c = (gd * gc).flatten(1).sum(1) / (gc * gc).flatten(1).sum(1)
    assert torch.allclose(gd - projected, c.view(-1, 1, 1, 1) * gc, atol=1e-4)
    # parallel=0.25 keeps a quarter of it
    kept = project_out(gd, gc, 0.25)
    assert torch.allclose(gd - kept, 0.75 * c.view(-1, 1, 1, 1) * gc, atol=1e-4)
    # the reverse projects the control direction instead; the domain term is untouched
    rev = combine(e0, [ed, ec], [1.5, 7.0], ["domain", "control"], parse_rule("project=control:domain"))
    ctl = (rev - e0 - 1.5 * gd) / 7.0
    assert torch.allclose((ctl * gd).flatten(1).sum(1), torch.zeros(3), atol=1e-3)
    # a zero direction to project against leaves the other unchanged
    assert torch.equal(project_out(gd, torch.zeros_like(gc)), gd)


def test_the_norm_clamp_bounds_the_rms_of_the_summed_guidance():
    e0, ed, ec = gaussians(3)
    rule = parse_rule("clamp=0.5")
    out = combine(e0, [ed, ec], [1.5, 7.0], ["domain", "control"], rule)
    g = 1.5 * (ed - e0) + 7.0 * (ec - e0)
    rms = lambda x: x.flatten(1).pow(2).mean(1).sqrt()  # noqa: E731
    assert torch.allclose(rms(out - e0), torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose((out - e0) / rms(out - e0).view(-1, 1, 1, 1), g / rms(g).view(-1, 1, 1, 1), atol=1e-4)
    small = combine(e0, [ed], [1e-3], ["domain"], rule)  # under the limit: unchanged
    assert torch.allclose(small, combine(e0, [ed], [1e-3]), atol=1e-6)
    assert torch.allclose(rms(clamp_rms(g, 2.0)), torch.minimum(rms(g), torch.tensor(2.0)), atol=1e-5)


def test_domain_share_sets_the_automatic_weights_and_the_paper_rule_stays_the_default():
    e0, eref, ed, ec = gaussians(4)
    ec = e0 + 0.5 * (ec - e0)
    n = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
    rule = AutoWeights(w0=7.0, reference=fixed(eref))
    wd, wc = auto_weights(e0, [ed, ec], rule, eref, shares=[0.2, 0.8])
    assert torch.allclose(wd * n(ed - e0), 0.2 * 7.0 * n(eref - e0), rtol=1e-5)
    assert torch.allclose(wc * n(ec - e0), 0.8 * 7.0 * n(eref - e0), rtol=1e-5)
    # through MultiGuidance: domain-share and domain-max
    mg = MultiGuidance(fixed(e0), [Term(fixed(ed), None, "domain"), Term(fixed(ec), None, "control")],
                       AutoWeights(w0=7.0, reference=fixed(eref)), rule=parse_rule("domain-share=0.2, domain-max=0.3"))
    mg(torch.zeros(3, 4, 8, 8), 500)
    want_d = (0.2 * 7.0 * n(eref - e0) / n(ed - e0)).clamp(max=0.3)
    assert torch.allclose(mg.last_weights[0], want_d, rtol=1e-5)
    assert torch.allclose(mg.last_weights[1], 0.8 * 7.0 * n(eref - e0) / n(ec - e0), rtol=1e-5)
    paper = MultiGuidance(fixed(e0), [Term(fixed(ed), None, "domain"), Term(fixed(ec), None, "control")],
                          AutoWeights(w0=7.0, reference=fixed(eref)), rule=PAPER)
    paper(torch.zeros(3, 4, 8, 8), 500)
    assert torch.allclose(paper.last_weights[0] * n(ed - e0), paper.last_weights[1] * n(ec - e0), rtol=1e-5)


def test_automatic_weights_of_a_term_first_seen_later_are_computed_then():
    e0, eref, ed, ec = gaussians(4)
    mg = MultiGuidance(fixed(e0), [Term(fixed(ed), None, "domain"), Term(fixed(ec), None, "control")],
                       AutoWeights(w0=7.0, reference=fixed(eref)), rule=parse_rule("domain=0-0.5"))
    z = torch.zeros(3, 4, 8, 8)
    mg(z, 900)
    assert set(mg.weights_used()) == {"control"}
    mg(z, 100)
    used = mg.weights_used()
    assert set(used) == {"domain", "control"}
    n = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
    assert torch.allclose(torch.tensor(used["domain"]) * n(ed - e0), 3.5 * n(eref - e0), rtol=1e-4)


def test_spec_strings_round_trip_and_paper_is_the_identity():
    rule = parse_rule("domain=0-0.7; control=0.5-1 domain-ramp=1.5:0.5, project=domain:control, parallel=0.2, "
                      "clamp=0.8, domain-share=0.25, domain-max=1.5")
    assert parse_rule(format_rule(rule)) == rule
    assert rule.schedule("domain") == Schedule(0.0, 0.7, (1.5, 0.5))
    assert parse_rule("paper").is_paper and parse_rule(None) is None and parse_rule("  ") is None
    e0, ed = gaussians(2)
    z = torch.zeros(3, 4, 8, 8)
    plain = MultiGuidance(fixed(e0), [Term(fixed(ed), 2.0, "domain")])
    with_paper = MultiGuidance(fixed(e0), [Term(fixed(ed), 2.0, "domain")], rule=parse_rule("paper"))
    assert torch.equal(plain(z, 500), with_paper(z, 500))


@pytest.mark.parametrize("spec,phrase", [
    ("domain=0-1.5", "must lie within 0 (clean) and 1 (pure noise)"),
    ("domain=-0.2-0.5", "must lie within 0"),
    ("domain=0.7-0.3", "is empty"),
    ("domain=0.5-0.5", "is empty"),
    ("domain=low-high", "takes a noise interval"),
    ("perp=domain", "takes a noise interval"),
    ("interval", "unknown guidance-rule item 'interval'"),
    ("project=domain", "two different term names"),
    ("project=domain:domain", "two different term names"),
    ("parallel=0.5", "applies to a projection"),
    ("project=domain:control, parallel=2", "from 0 to 1"),
    ("clamp=-1", "at least 0"),
    ("clamp=0", "would remove all guidance"),
    ("domain-share=1.5", "from 0 to 1"),
    ("domain-ramp=1", "takes two factors"),
    ("clamp=nan", "finite"),
    ("paper, clamp=1", "'paper' stands alone"),
    ("domain=0-0.5, domain=0.2-0.4", "sets domain= twice"),
    ("domain-max=0", "would switch the domain term off"),
])
def test_bad_rules_are_one_sentence(spec, phrase):
    with pytest.raises(UserError, match=None) as e:
        parse_rule(spec)
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_rules_naming_absent_terms_are_refused_at_the_edge():
    with pytest.raises(UserError, match="has no control term"):
        check_rule_terms(parse_rule("project=domain:control"), ["domain"])
    with pytest.raises(UserError, match="has no domain term"):
        check_rule_terms(parse_rule("project=control:domain"), ["control"])
    with pytest.raises(UserError, match="term named 'style'"):
        check_rule_terms(parse_rule("style=0-0.5"), ["domain", "control"])
    with pytest.raises(UserError, match="switch off every term"):
        check_rule_terms(parse_rule("domain-ramp=0:0"), ["domain"])
    check_rule_terms(parse_rule("domain-ramp=0:0"), ["domain", "control"])  # the control term still acts
    with pytest.raises(UserError, match="control would never act: move the interval or raise the strength"):
        check_rule_terms(parse_rule("control=0.7-1"), ["domain", "control"], noise_range=(0.02, 0.5))
    check_rule_terms(parse_rule("control=0.7-1"), ["domain", "control"], noise_range=(0.02, 0.8))
    assert parse_rule("recommended") is None and parse_rule("") is None


def test_the_rule_reaches_sampling_sdedit_and_sds_alike(tiny_pipe):
    """One rule, three uses: text-to-image and SDEdit through the pipeline, and SDS (the 3D stages and the threestudio
    extension build their guidance through DomainSDS), where each sample's own timestep picks its schedule."""
    from PIL import Image

    from generators3d.guidance3d import DomainSDS

    kw = dict(num_inference_steps=3, seed=1, output_type="latent", domain_weight=1.5, control_weight=3.0)
    paper = tiny_pipe("a face", guidance_rule="paper", **kw).latents
    ruled = tiny_pipe("a face", guidance_rule="domain=0-0.5", **kw).latents
    assert not torch.allclose(paper, ruled)
    photo = Image.new("RGB", (64, 64), (120, 90, 60))
    edit_paper = tiny_pipe("a face", image=photo, strength=0.95, guidance_rule="paper", **kw).latents
    edit_ruled = tiny_pipe("a face", image=photo, strength=0.95, guidance_rule="control=0.5-1", **kw).latents
    assert not torch.allclose(edit_paper, edit_ruled)
    with pytest.raises(UserError, match="would never act"):  # an edit from 0.6 never reaches the prompt's 0.9-1
        tiny_pipe("a face", image=photo, strength=0.6, guidance_rule="control=0.9-1", **kw)

    term = DomainSDS(tiny_pipe, "a face", 1.5, 3.0, view_dependent=False, rule="domain=0-0.5")
    mg = term.denoiser(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]))
    assert mg.rule == parse_rule("domain=0-0.5")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([200, 800])
    with torch.no_grad():
        out = mg(z, t)
        e0 = mg.base(z, t)
        ed, ec = (next(x for x in mg.terms if x.name == n).denoiser(z, t) for n in ("domain", "control"))
    assert torch.allclose(out[0], (e0 + 1.5 * (ed - e0) + 3.0 * (ec - e0))[0], atol=1e-5)
    assert torch.allclose(out[1], (e0 + 3.0 * (ec - e0))[1], atol=1e-5)  # t = 800: outside the domain's interval
    with pytest.raises(UserError, match="has no control term"):
        DomainSDS(tiny_pipe, "", 1.5, 3.0, view_dependent=False, rule="project=domain:control")


def test_a_recommended_rule_applies_only_where_it_fits():
    from suite.rules import rule_fits

    split = parse_rule("domain=0-0.7, domain-ramp=1:1.5, control=0.7-1")
    assert rule_fits(split, ["domain", "control"], (0.05, 0.999))  # text-to-image
    assert not rule_fits(split, ["domain"], (0.05, 0.999))  # no prompt: nothing to hand the noisy steps to
    assert not rule_fits(split, ["domain", "control"], (0.02, 0.6))  # SDEdit at strength 0.6, SDS in 0.2..0.6
    assert rule_fits(split, ["domain", "control"], (0.02, 0.9))  # SDEdit at strength 0.9
