"""bench.mini3d_stage3's look distance and its repainting stage (issue 24, part 4): the measure tells the world's
porcelain from its blue objects, repainting holds the silhouette, and the repainted field keeps the geometry."""

from __future__ import annotations

import pytest
import torch


def test_the_look_distance_tells_porcelain_from_blue_objects():
    from bench.mini3d_stage3 import world_colours
    from suite.metrics import sliced_wasserstein

    reference = world_colours("cup", True, seed=1)
    porcelain = sliced_wasserstein(world_colours("cup", True, seed=2), reference)
    soft = sliced_wasserstein(world_colours("cup", True, seed=2, blur=2), reference)
    blue = sliced_wasserstein(world_colours("cup", False, seed=3), reference)
    assert porcelain < 0.05 and porcelain < soft < blue and blue > 0.1, (porcelain, soft, blue)


def test_the_world_input_is_a_porcelain_object_of_the_class_seen_as_a_user_would_pass_it(tmp_path):
    """--from-world's input: a 256 px view with its exact mask, whose object pixels have the domain's look (near the
    look distance's porcelain references, far from the class's blue objects), and another object for each seed."""
    import numpy as np
    from PIL import Image

    from bench.mini3d_stage3 import world_colours, world_input
    from suite.metrics import sliced_wasserstein

    image, mask = world_input("box", 0, tmp_path / "a")
    rgb = np.asarray(Image.open(image), np.float32) / 255
    m = np.asarray(Image.open(mask)) > 127
    assert rgb.shape == (256, 256, 3) and 0.1 < m.mean() < 0.6, m.mean()
    colours = rgb[m][:: max(1, int(m.sum()) // 4000)]
    to_porcelain = sliced_wasserstein(colours, world_colours("box", True, seed=1))
    to_blue = sliced_wasserstein(colours, world_colours("box", False, seed=1))
    assert to_porcelain < 0.06 and to_blue > 2 * to_porcelain, (to_porcelain, to_blue)
    other, _ = world_input("box", 1, tmp_path / "b")
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(Image.open(image)))


@pytest.fixture(scope="module")
def mini_term():
    from generators3d.guidance3d import DomainSDS
    from suite.presets import build_pipeline

    pipe = build_pipeline("mini", "porcelain", None, None, None, False, "cpu", None)
    return DomainSDS(pipe, "a cup", domain_weight=3.0, control_weight=0.0, rule="paper", view_dependent=False)


def test_repainting_changes_the_object_and_holds_what_is_outside_it(mini_term):
    """A red ball beside a blue cup, only the cup's opacity given: the cup is repainted, the ball stays (through the
    VAE). Over five seeds the ball changed by 0.011-0.015 (mean absolute difference on its pixels) and by 0.36-0.42
    with nothing held; the cup by 0.24-0.30."""
    from bench.mini3d_stage3 import repaint_views
    from suite.miniworld.render import render_view
    from suite.miniworld.world import BACKGROUND, make_object

    ball = render_view(make_object("ball", "red", "plain"), 10.0, 0.0, size=32, distance=3.0)
    cup = render_view(make_object("cup", "blue", "plain"), 10.0, 30.0, size=32, distance=3.0)
    rgb = torch.tensor(BACKGROUND).view(1, 3, 1, 1).repeat(1, 1, 64, 64)
    rgb[:, :, 16:48, :32], rgb[:, :, 16:48, 32:] = ball.rgb, cup.rgb
    opacity = torch.zeros(1, 64, 64)
    opacity[:, 16:48, 32:] = cup.alpha
    ball_pixels = torch.zeros(64, 64, dtype=torch.bool)
    ball_pixels[16:48, :32] = ball.mask[0]
    pipe = mini_term.pipe
    with torch.no_grad():  # the image through the VAE alone: what every held latent cell decodes to
        lat = mini_term.encode(rgb, torch.Generator().manual_seed(0)).float()
        round_trip = ((pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample.float() + 1) / 2).clamp(0, 1)
    # nothing to repaint: every latent cell is held, so the result is the round trip exactly
    assert (repaint_views(mini_term, rgb, torch.zeros_like(opacity), 0.7, 0) - round_trip).abs().max() < 1e-5
    change = (repaint_views(mini_term, rgb, opacity, 0.7, 0) - round_trip).abs().mean(1)[0]
    assert change[opacity[0] > 0.5].mean() > 0.15, change[opacity[0] > 0.5].mean()  # the cup is repainted
    assert change[ball_pixels].mean() < 0.05, change[ball_pixels].mean()  # the ball beside it is held
    free = (repaint_views(mini_term, rgb, torch.ones_like(opacity), 0.7, 0) - round_trip).abs().mean(1)[0]
    assert free[ball_pixels].mean() > 0.2, free[ball_pixels].mean()  # which it is not when nothing is held


def test_the_repainted_field_trains_its_colour_on_coarse_levels_and_keeps_the_geometry():
    from bench.mini3d_stage3 import RepaintedField
    from generators3d.config import NeRFConfig
    from generators3d.nerf import NeRFField

    torch.manual_seed(0)
    base = NeRFField(NeRFConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, hidden=16, n_hidden_layers=1))
    with torch.no_grad():
        base.encoding.embeddings.uniform_(-1, 1)  # features that matter (a fresh grid is near 0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    x = torch.rand(256, 3) * 2 - 1
    assert torch.allclose(RepaintedField(base, levels=4).color(x), base.color(x))  # all levels: starts as the base
    field = RepaintedField(base, levels=2)
    rgb0 = field.color(x)
    with torch.no_grad():  # the colour reads only the two coarsest levels
        field.encoding.embeddings[2:].uniform_(-1, 1)
    assert torch.equal(field.color(x), rgb0)
    opt = torch.optim.Adam([p for p in field.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):
        loss = (field.color(x) - 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert field.color(x).mean() > rgb0.mean() + 0.05  # the colour learned
    assert torch.equal(field(x)[0], base.density(x))  # the density is the base's
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # which did not move
