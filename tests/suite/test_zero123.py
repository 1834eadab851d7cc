"""Zero-1-to-3 as a denoiser: loading with either projection folder name, the relative camera pose, and its
classifier-free guidance as a one-term MultiGuidance that equals uncond + s (cond - uncond) computed by hand
from the UNet, in ONE batched forward."""

import pytest
import torch

from suite.testing import build_tiny_zero123
from suite.zero123 import Zero123Guidance, load_zero123, relative_pose, save_zero123


@pytest.fixture(scope="module")
def tiny_parts():
    return build_tiny_zero123(seed=3)


def test_both_projection_folder_names_load_the_same_model(tmp_path, tiny_parts):
    a = load_zero123(str(save_zero123(tiny_parts, tmp_path / "kxic", "cc_projection")))
    b = load_zero123(str(save_zero123(tiny_parts, tmp_path / "ashawkey", "clip_camera_projection")))
    x = torch.randn(2, tiny_parts["projection"].in_features)
    assert torch.equal(a.projection(x), b.projection(x))
    assert torch.equal(a.projection(x), tiny_parts["projection"](x))
    assert a.image_size == 64 and a.unet.config.in_channels == 8


def test_missing_or_wrong_model_folders_say_how_to_fix(tmp_path, tiny_parts):
    from suite.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="--zero123-model"):
        load_zero123(str(tmp_path / "nothing-here"))
    folder = save_zero123(tiny_parts, tmp_path / "z")
    (folder / "cc_projection" / "diffusion_pytorch_model.safetensors").rename(folder / "cc_projection" / "x.txt")
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        load_zero123(str(folder))
    import shutil

    shutil.rmtree(folder / "cc_projection")
    with pytest.raises(ModelLoadError, match="cc_projection"):
        load_zero123(str(folder))


def test_relative_pose_matches_threestudio_convention():
    pose = relative_pose([30.0, 5.0], [90.0, -180.0], [3.8, 4.3], ref_elevation=5.0, ref_azimuth=0.0, ref_distance=3.8)
    # d_polar = (90 - el) - (90 - el_ref) in radians; sin/cos of the azimuth difference; distance difference
    expected = torch.tensor([[-25.0 * torch.pi / 180, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.5]])
    assert torch.allclose(pose, expected, atol=1e-6)


def test_cfg_is_one_term_multiguidance_equal_to_the_formula_in_one_forward(tmp_path, tiny_parts):
    from suite.guidance import MultiGuidance

    model = load_zero123(str(save_zero123(tiny_parts, tmp_path / "z")))
    image = torch.rand(1, 3, 64, 64)
    zg = Zero123Guidance(model, image, ref_elevation=5.0, ref_azimuth=0.0, ref_distance=3.8)
    mg = zg.guidance([20.0, -10.0], [45.0, 200.0], [3.8, 3.8], guidance_scale=3.0)
    assert isinstance(mg, MultiGuidance) and len(mg.terms) == 1 and mg.terms[0].weight == 3.0

    calls = []
    handle = model.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    z, t = torch.randn(2, 4, 32, 32), torch.tensor([300, 700])
    eps = mg(z, t)
    handle.remove()
    assert calls == [4]  # uncond and cond of both views in one forward

    # by hand: the input view's latent (unscaled mode) concatenated on channels; the pose token; zeros = uncond
    with torch.no_grad():
        c_concat = model.vae.encode(image * 2 - 1).latent_dist.mode()
        pose = relative_pose([20.0, -10.0], [45.0, 200.0], [3.8, 3.8], 5.0, 0.0, 3.8)
        token = model.projection(torch.cat([zg.c_clip.expand(2, -1, -1), pose[:, None]], -1))
        cond = model.unet(torch.cat([z, c_concat.expand(2, -1, -1, -1)], 1), t, encoder_hidden_states=token).sample
        uncond = model.unet(torch.cat([z, torch.zeros(2, 4, 32, 32)], 1), t,
                            encoder_hidden_states=torch.zeros_like(token)).sample
    assert torch.allclose(eps, uncond + 3.0 * (cond - uncond), atol=1e-4)


def test_sdedit_keeps_the_init_where_asked_and_draws_the_rest(tmp_path, tiny_parts):
    """``novel_views(keep=)`` (the export's side views keep what the reference shows): where ``keep`` is 1 every step
    starts from the init's latent noised to that step's level and the view ends as the init through the VAE, where
    it is 0 the sampler draws as without it, and with no cell kept it is the plain SDEdit to the bit."""
    import copy

    from suite.zero123 import novel_views

    model = load_zero123(str(save_zero123(tiny_parts, tmp_path / "z")))
    zg = Zero123Guidance(model, torch.rand(1, 3, 64, 64), ref_elevation=5.0, ref_azimuth=0.0, ref_distance=3.8)
    init = torch.rand(2, 3, 64, 64)
    seen = []  # what the denoiser is given at each step: (latent, timestep)
    guidance = zg.guidance

    def recording(*args, **kwargs):
        den = guidance(*args, **kwargs)
        return lambda z, t: (seen.append((z.clone(), int(t))), den(z, t))[1]

    zg.guidance = recording

    def draw(keep, strength=0.6):
        seen.clear()
        return novel_views(zg, [5.0, 5.0], [90.0, 180.0], [3.8, 3.8], 3.0, 10, torch.Generator().manual_seed(0),
                           init=init, strength=strength, keep=keep)

    with torch.no_grad():  # the init's latent as novel_views draws it: after the starting noise, from the same generator
        side = model.image_size // 2 ** (len(model.vae.config.block_out_channels) - 1)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn((2, model.vae.config.latent_channels, side, side), generator=gen)
        z0 = zg.encode(init, gen).float()
        through_vae = (model.vae.decode(z0 / model.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    scheduler = copy.deepcopy(model.scheduler)
    plain = draw(None)
    assert torch.equal(draw(torch.zeros(2, 1, 64, 64)), plain)
    for strength in (0.6, 1.0):  # from the render (SDEdit) or from noise, as blended latent diffusion
        kept = draw(torch.ones(2, 1, 64, 64), strength)
        assert torch.allclose(kept, through_vae, atol=1e-5)
        assert len(seen) == (6 if strength < 1 else 10)
        for z, t in seen[1:]:  # each step starts where the last left the kept cells: the init at this step's noise
            assert torch.allclose(z, scheduler.add_noise(z0, noise, torch.tensor([t])), atol=1e-5), t
    left = torch.zeros(2, 1, 64, 64)
    left[..., :32] = 1.0  # the left half kept: the latent cells there are the init's at the end
    half = draw(left)
    assert (half[..., :24] - through_vae[..., :24]).abs().max() < (plain[..., :24] - through_vae[..., :24]).abs().max()
    assert not torch.allclose(half[..., 40:], through_vae[..., 40:], atol=1e-2)
    with pytest.raises(ValueError, match="keep needs an init"):
        novel_views(zg, [5.0], [90.0], [3.8], 3.0, 10, init=None, keep=torch.ones(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"keep must be \[B, 1, H, W\]"):
        draw(torch.ones(2, 64, 64))


class _AsV(torch.nn.Module):
    """An epsilon UNet turned into the v-prediction UNet of the same model: ``v = (eps - sqrt(1 - a) z) / sqrt(a)``
    on the noisy half of its input."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.inner, self.config, self.a = unet, unet.config, alphas_cumprod

    def forward(self, x, t, encoder_hidden_states=None, return_dict=True, **kw):
        eps = self.inner(x, t, encoder_hidden_states=encoder_hidden_states, **kw).sample
        a = self.a[t.long()].view(-1, 1, 1, 1)
        v = (eps - (1 - a).sqrt() * x[:, :eps.shape[1]]) / a.sqrt()
        return (v,) if not return_dict else type("Out", (), {"sample": v})()


def test_a_v_prediction_zero123_guides_and_samples_as_its_epsilon_twin(tmp_path, tiny_parts):
    """A Zero-1-to-3 whose scheduler says ``v_prediction`` (as Zero123++ v1.2's does) gives the guidance epsilon,
    and its views are the epsilon twin's: its v is converted, and the sampler steps in epsilon. Before, the guidance
    returned v as epsilon and the DDIM sampler read that epsilon as v."""
    from dataclasses import replace

    from suite.zero123 import novel_views

    eps_model = load_zero123(str(save_zero123(tiny_parts, tmp_path / "z")))
    sched = type(eps_model.scheduler).from_config(eps_model.scheduler.config, prediction_type="v_prediction")
    v_model = replace(eps_model, unet=_AsV(eps_model.unet, sched.alphas_cumprod), scheduler=sched)
    assert v_model.prediction_type == "v_prediction" and eps_model.prediction_type == "epsilon"
    image = torch.rand(1, 3, 64, 64)
    cams = ([20.0, -10.0], [45.0, 200.0], [3.8, 3.8])
    guides = [Zero123Guidance(m, image, ref_elevation=5.0) for m in (eps_model, v_model)]
    z, t = torch.randn(2, 4, 32, 32), torch.tensor([300, 900])
    eps, from_v = (g.guidance(*cams)(z, t) for g in guides)
    assert torch.allclose(from_v, eps, atol=1e-4)
    views = [novel_views(g, *cams, steps=4, generator=torch.Generator().manual_seed(0)) for g in guides]
    assert torch.allclose(views[1], views[0], atol=1e-4)


class _Oracle(torch.nn.Module):
    """A v-prediction UNet that knows the clean latent ``x0``: ``v = (sqrt(a) z - x0) / sqrt(1 - a)`` at the training
    schedule's ``a`` (``-x0`` where ``a`` is 0), whatever its conditioning."""

    def __init__(self, unet, x0, alphas_cumprod):
        super().__init__()
        self.inner, self.config, self.x0, self.a = unet, unet.config, x0, alphas_cumprod

    def forward(self, x, t, encoder_hidden_states=None, return_dict=True, **kw):
        a = self.a[t.long()].view(-1, 1, 1, 1).to(x)
        z = x[:, :self.x0.shape[1]]
        v = (a.sqrt() * z - self.x0.to(x)) / (1 - a).sqrt()
        return (v,) if not return_dict else type("Out", (), {"sample": v})()


def test_a_zero_terminal_snr_zero123_samples_from_its_last_timestep(tmp_path, tiny_parts):
    """A v-prediction Zero-1-to-3 trained on a schedule rescaled to zero terminal SNR (``alpha_bar = 0`` at t = 999,
    where trailing DDIM starts) samples as diffusers' own DDIM does on its v: with an oracle for x0, the view from
    the guidance's epsilon is the one from the v path. Before ``finite_terminal_snr`` that epsilon divided by zero
    at the first step (the view was NaN)."""
    import copy
    from dataclasses import replace

    from suite.zero123 import novel_views

    parts = dict(tiny_parts, scheduler=type(tiny_parts["scheduler"]).from_config(
        tiny_parts["scheduler"].config, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        timestep_spacing="trailing"))
    model = load_zero123(str(save_zero123(parts, tmp_path / "z")))
    trained = parts["scheduler"].alphas_cumprod  # what it was trained on: exactly 0 at the end
    side = model.image_size // 2 ** (len(model.vae.config.block_out_channels) - 1)
    x0 = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(1))
    oracle = _Oracle(model.unet, x0, trained)
    guide = Zero123Guidance(replace(model, unet=oracle), torch.rand(1, 3, 64, 64), ref_elevation=5.0)
    view = novel_views(guide, 20.0, 45.0, 3.8, steps=4, generator=torch.Generator().manual_seed(0))
    native = copy.deepcopy(parts["scheduler"])  # diffusers' DDIM stepping in v, on the unclamped schedule
    native.set_timesteps(4)
    assert int(native.timesteps[0]) == 999
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for t in native.timesteps:
        z = native.step(oracle(torch.cat([z, z], 1), t[None]).sample, t, z).prev_sample
    with torch.no_grad():
        want = (model.vae.decode(z / model.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.isfinite(view).all()
    assert (view - want).abs().max() < 1e-3
    assert float(trained[-1]) == 0.0 and 0.0 < float(model.alphas_cumprod[-1]) < 1e-6


def test_a_zero123_of_another_prediction_type_is_refused_with_a_sentence(tmp_path, tiny_parts):
    import json

    from suite.models import ModelLoadError

    folder = save_zero123(tiny_parts, tmp_path / "z")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ModelLoadError, match="prediction_type 'sample'.*--zero123-model"):
        load_zero123(str(folder))


def test_novel_views_start_from_the_input_view_noised_to_the_first_step(tmp_path, tiny_parts):
    """``start="input"``: the first step denoises the input view's latent noised to that step's level (the schedule
    keeps some of the clean latent there); ``"noise"`` (the default): pure noise, as Zero-1-to-3's own sampler; with
    an SDEdit init the start is the init's, so asking for both is one sentence."""
    from suite.zero123 import novel_views

    model = load_zero123(str(save_zero123(tiny_parts, tmp_path / "z")))
    guide = Zero123Guidance(model, torch.rand(1, 3, 64, 64), ref_elevation=5.0)
    firsts = []

    class Recorder:
        def __call__(self, z, t):
            firsts.append((z.clone(), int(t)))
            return torch.zeros_like(z)

    guide.guidance = lambda *a, **k: Recorder()
    side = model.image_size // 2 ** (len(model.vae.config.block_out_channels) - 1)
    noise = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(0))
    cams = ([20.0, -10.0], [45.0, 200.0], [3.8, 3.8])
    for start in ("input", "noise"):
        firsts.clear()
        novel_views(guide, *cams, steps=3, generator=torch.Generator().manual_seed(0), start=start)
        z, t = firsts[0]
        a = model.scheduler.alphas_cumprod[t]
        want = noise if start == "noise" else a.sqrt() * guide.c_concat * model.vae.config.scaling_factor + (1 - a).sqrt() * noise
        assert torch.allclose(z, want, atol=1e-5), start
    with pytest.raises(ValueError, match="start must be 'input' or 'noise'"):
        novel_views(guide, *cams, steps=3, start="truth")
    with pytest.raises(ValueError, match="with init .* drop one of the two"):
        novel_views(guide, *cams, steps=3, start="input", init=torch.rand(2, 3, 64, 64), strength=0.5)


def test_bad_cameras_steps_and_strength_are_one_sentence_and_a_biasless_projection_saves(tmp_path, tiny_parts):
    """A NaN elevation gave NaN views without a word (the threestudio extension passes its cameras through), steps=0
    a ZeroDivisionError, a strength of 5 (or one without init) was ignored; a projection without a bias loaded and
    then failed to save."""
    from suite.zero123 import novel_views

    model = load_zero123(str(save_zero123(tiny_parts, tmp_path / "z")))
    image = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="reference elevation is not a finite number"):
        Zero123Guidance(model, image, ref_elevation=float("nan")).guidance(10.0, 0.0, 3.8, 3.0)
    guide = Zero123Guidance(model, image)
    for kw, phrase in ((dict(elevation=float("nan")), "elevation is not a finite number"),
                       (dict(steps=0), "steps must be a whole number from 1 to"),
                       (dict(strength=5.0, init=image), "strength must be in \\(0, 1\\]"),
                       (dict(strength=0.3), "strength applies to an init image")):
        with pytest.raises(ValueError, match=phrase):
            novel_views(guide, **{"elevation": 10.0, "azimuth": 30.0, "distance": 3.8, "steps": 2, **kw})
    parts = dict(tiny_parts, projection=torch.nn.Linear(tiny_parts["projection"].in_features,
                                                        tiny_parts["projection"].out_features, bias=False))
    again = load_zero123(str(save_zero123(parts, tmp_path / "nobias")))
    assert again.projection.bias is None and torch.equal(again.projection.weight, parts["projection"].weight)


def test_the_depth_estimator_reads_small_and_16_bit_images():
    """GLPN's processor rounded a side below 32 px down to 0 (a transformers traceback); a 16-bit image went through
    convert("RGB"), which clips it to nearly all white."""
    import numpy as np
    from PIL import Image

    from suite.depth import load_depth_estimator
    from suite.testing import tiny_depth_dir

    est = load_depth_estimator(tiny_depth_dir())
    assert est(Image.new("RGB", (40, 30), (90, 30, 30))).shape == (30, 40)
    assert est(Image.new("RGB", (1, 1))).shape == (1, 1)
    gray = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (48, 1))
    wide = Image.fromarray((gray.astype(np.uint16) * 257).astype(np.uint16))  # 16-bit: 0-65535
    assert np.allclose(est(wide), est(Image.fromarray(gray)), atol=1e-4)
