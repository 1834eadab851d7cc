"""NeRF field, renderer and mesh extraction: closed forms for the hash grid and the volume rendering
weights, and a fit to test-rendered views of a known coloured sphere whose exported mesh must match it."""

import json

import numpy as np
import pytest
import torch

from generators3d.cameras import camera_rays, orbit_cameras
from generators3d.config import ExportConfig, NeRFConfig
from generators3d.nerf import HashGrid, NeRFField, choose_backend
from generators3d.render import render_rays, sphere_intersect, weights_from_density


def test_hash_grid_dense_levels_interpolate_linear_functions_exactly():
    grid = HashGrid(n_levels=2, n_features_per_level=1, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)
    assert grid.dense == [True, True]  # 4^3 and 8^3 corners fit in 2^12
    with torch.no_grad():
        for level in range(2):
            res, scale = grid.resolutions[level], grid.scales[level]
            i, j, k = np.meshgrid(np.arange(res), np.arange(res), np.arange(res), indexing="ij")
            # table value at corner (i, j, k) = a linear function of the corner's position x = (idx - 0.5) / scale
            vals = 0.3 * (i - 0.5) / scale - 0.7 * (j - 0.5) / scale + 0.2 * (k - 0.5) / scale + 0.1
            idx = i + j * res + k * res * res
            grid.embeddings[level, idx.reshape(-1), 0] = torch.tensor(vals.reshape(-1), dtype=torch.float32)
    x = torch.rand(500, 3) * 0.65 + 0.1  # corners inside the grid (x * scale + 1.5 < resolution)
    expected = 0.3 * x[:, 0] - 0.7 * x[:, 1] + 0.2 * x[:, 2] + 0.1
    out = grid(x)
    assert torch.allclose(out[:, 0], expected, atol=1e-5) and torch.allclose(out[:, 1], expected, atol=1e-5)


def test_hash_grid_hashed_level_uses_instant_ngp_hash():
    grid = HashGrid(n_levels=1, n_features_per_level=1, log2_hashmap_size=4, base_resolution=8, per_level_scale=1.0)
    assert grid.dense == [False]
    with torch.no_grad():
        grid.embeddings.copy_(torch.arange(16, dtype=torch.float32).view(1, 16, 1))
    x = torch.tensor([[0.3, 0.55, 0.8]])
    pos = x[0] * grid.scales[0] + 0.5
    base, frac = pos.floor().long(), pos - pos.floor()
    want = 0.0
    for c in range(8):
        o = [(c >> d) & 1 for d in range(3)]
        ijk = [int(base[d]) + o[d] for d in range(3)]
        h = ((ijk[0] * 1) ^ (ijk[1] * 2654435761) ^ (ijk[2] * 805459861)) % 16
        w = np.prod([float(frac[d]) if o[d] else 1 - float(frac[d]) for d in range(3)])
        want += w * h
    assert grid(x)[0, 0].item() == pytest.approx(want, rel=1e-5)


def test_backend_is_pure_torch_on_cpu_and_tcnn_refused_without_cuda():
    assert choose_backend(NeRFConfig(), "cpu") == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        choose_backend(NeRFConfig(backend="tcnn"), "cpu")


def test_nerfacc_weights_equal_pytorch_formula(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    import nerfacc

    t0 = torch.sort(torch.rand(6, 10), -1).values
    t1 = t0 + 0.05
    sig = torch.rand(6, 10) * 5
    w_ref, tr_ref, a_ref = weights_from_density(t0, t1, sig)
    w, tr, a = nerfacc.render_weight_from_density(t0, t1, sig)
    assert torch.allclose(w, w_ref, atol=1e-6) and torch.allclose(tr, tr_ref, atol=1e-6)


def test_rays_and_sphere_intersection_geometry():
    cams = orbit_cameras(30.0, 60.0, 3.0, 40.0)
    o, d = camera_rays(cams, 9, 9)
    centre = d[0, 4, 4]
    assert torch.allclose(centre, -o[0, 4, 4] / 3.0, atol=1e-5)  # the centre ray looks at the origin
    assert torch.allclose(o[0, 0, 0], torch.tensor([3.0 * np.cos(np.pi / 6) * np.cos(np.pi / 3),
                                                    3.0 * np.cos(np.pi / 6) * np.sin(np.pi / 3), 1.5], dtype=torch.float32), atol=1e-5)
    assert d[0, 0, 4] @ torch.tensor([0.0, 0.0, 1.0]) > centre @ torch.tensor([0.0, 0.0, 1.0])  # top row looks up
    near, far, hit = sphere_intersect(o[0, 4, 4][None], centre[None], 1.0)
    assert hit.item() and near.item() == pytest.approx(2.0, abs=1e-5) and far.item() == pytest.approx(4.0, abs=1e-5)


SPHERE_C, SPHERE_R = torch.tensor([0.08, -0.05, 0.04]), 0.38


def sphere_color(n):
    return 0.5 + 0.4 * n  # colour varies over the surface: red +x, green +y, blue +z


def sphere_views(o, d):
    """Analytic renders of the coloured sphere on white, and its silhouette."""
    oc = o - SPHERE_C
    near, _, hit = sphere_intersect(oc, d, SPHERE_R)
    n = torch.nn.functional.normalize(oc + d * near[:, None], dim=-1)
    return torch.where(hit[:, None], sphere_color(n), torch.ones_like(o)), hit.float()[:, None]


@pytest.mark.parametrize("geometry", ["density", "sdf"])
def test_fit_to_views_of_a_coloured_sphere_exports_matching_mesh(one_thread, geometry):
    """Multi-view photometric fit (blob initialised elsewhere: radius 0.5 at the origin), then export; the sdf
    geometry (its initial sphere as far off) with its eikonal term. Bounds: symmetric Chamfer distance < 0.04 (about
    one voxel of the 40^3 grid = 0.05; sphere radius 0.38) and mean colour error < 0.05."""
    from scipy.spatial import cKDTree

    from generators3d.mesh import extract_mesh
    from generators3d.nerf import Background

    torch.manual_seed(0)
    cfg = NeRFConfig(n_levels=6, log2_hashmap_size=13, base_resolution=8, per_level_scale=1.6, hidden=32,
                     n_hidden_layers=1, samples_per_ray=32, geometry=geometry)
    field, bg = NeRFField(cfg), Background()
    el = torch.tensor([-30.0, 0.0, 30.0, 60.0] * 5)
    az = torch.arange(20) * 18.0
    o, d = camera_rays(orbit_cameras(el, az, 3.8, 20.0), 24, 24)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    colour, silhouette = sphere_views(o, d)
    opt = torch.optim.Adam(field.parameters(), lr=0.02, betas=(0.9, 0.99), eps=1e-15)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(o), (512,), generator=g)
        out = render_rays(field, bg, o[idx], d[idx], cfg.samples_per_ray, perturb=True, generator=g)
        loss = ((out["rgb"] - colour[idx]) ** 2).mean() + 0.1 * ((out["opacity"] - silhouette[idx]) ** 2).mean()
        if geometry == "sdf":
            loss = loss + 0.01 * field.eikonal((torch.rand(512, 3, generator=g) * 2 - 1) * 0.9)
        opt.zero_grad()
        loss.backward()
        opt.step()

    views = orbit_cameras([0.0] * 4 + [60.0, -40.0], [0.0, 90.0, 180.0, 270.0, 0.0, 0.0], 3.8, 20.0)
    mesh, level = extract_mesh(field, views, ExportConfig(resolution=40, texture=False))
    import trimesh

    v = mesh.vertices - SPHERE_C.numpy()
    r = np.linalg.norm(v, axis=1)
    on_mesh = trimesh.sample.sample_surface(trimesh.Trimesh(v, mesh.faces), 20000, seed=0)[0]
    on_sphere = np.random.default_rng(0).normal(size=(20000, 3))
    on_sphere = on_sphere / np.linalg.norm(on_sphere, axis=1, keepdims=True) * SPHERE_R
    chamfer = (np.abs(np.linalg.norm(on_mesh, axis=1) - SPHERE_R).mean()
               + cKDTree(on_mesh).query(on_sphere)[0].mean())
    assert chamfer < 0.04, chamfer
    colour_error = np.abs(mesh.colors - sphere_color(torch.from_numpy(v / r[:, None])).numpy()).mean()
    assert colour_error < 0.05, colour_error
    assert level > 0


def test_depth_curvature_is_zero_on_planes_and_edges_and_large_on_bumps():
    from generators3d.stage import depth_curvature

    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    plane = (3.5 + 0.01 * x + 0.02 * y)[None]  # a tilted plane: depth linear in the pixel position
    full = torch.ones_like(plane)
    assert depth_curvature(plane, full) < 1e-10
    # the same depth carried as weight-accumulated depth (depth * opacity) at partial opacity reads the same surface
    assert depth_curvature(plane * 0.8, full * 0.8) < 1e-10
    bumpy = plane + 0.01 * torch.randn(plane.shape, generator=g)
    assert depth_curvature(bumpy, full) > 1e-4
    # a step between two parts of the object (an edge in front of another surface) is not penalised
    step = plane + 0.3 * (x >= 16)[None]
    assert depth_curvature(step, full) < 1e-10
    # background pixels (opacity 0) do not count, whatever their depth
    half = (x < 16).float()[None]
    assert depth_curvature(bumpy * half, half) > 1e-4
    assert depth_curvature(plane * half + torch.rand(plane.shape, generator=g) * (1 - half), half) < 1e-10
    # and it is differentiable: its gradient flattens the bumps
    d = bumpy.clone().requires_grad_(True)
    depth_curvature(d, full).backward()
    flatter = (bumpy - 20.0 * d.grad).detach()
    assert depth_curvature(flatter, full) < depth_curvature(bumpy, full)
    # Charbonnier's penalty (robust): the square for second differences well below its scale, far less for a crease
    # (a plane folding into a steeper one along a column, as a lid sinking into a bowl at its rim)
    fine = plane + 1e-4 * torch.randn(plane.shape, generator=g)
    assert abs(float(depth_curvature(fine, full, robust=0.01) / depth_curvature(fine, full)) - 1) < 0.01
    crease = plane + 0.04 * (x - 16).clamp_min(0)[None]  # a 0.04 bend in one column
    assert float(depth_curvature(crease, full, robust=0.01)) < 0.5 * float(depth_curvature(crease, full))


def test_shading_lights_a_ball_from_the_camera_fixed_key_light_by_its_geometry():
    """``shade_camera_light`` on a fresh field (Magic3D's blob: a ball of one colour) seen from two sides: every view
    lit alike (the light turns with the camera), brightest towards the light's side (up and left), the ball's centre
    at ambient + (1 - ambient) l_z as Lambert's law gives for a normal facing the camera."""
    from generators3d.nerf import Background
    from generators3d.render import render
    from generators3d.stage import shade_camera_light
    from suite.miniworld.render import LIGHT_CAM

    torch.manual_seed(0)
    field = NeRFField(NeRFConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, hidden=16, n_hidden_layers=1,
                                 samples_per_ray=96))
    background = Background((1.0, 1.0, 1.0))
    cams = orbit_cameras([0.0, 0.0], [0.0, 120.0], 3.0, 30.0)
    with torch.no_grad():
        out = render(field, background, cams, 48)
        lit = shade_camera_light(out, cams, out["rgb"], background)
    op = out["opacity"][..., 0]
    albedo = out["rgb"][0, 24, 24]  # the fresh field's one colour, at the ball's centre
    l_z = LIGHT_CAM[2] / float(np.linalg.norm(LIGHT_CAM))
    assert torch.allclose(lit[:, 24, 24], albedo * (0.32 + 0.68 * l_z), atol=0.02)
    assert torch.allclose(lit[0], lit[1], atol=0.02)  # a ball looks the same from every side
    brightness = lit.mean(-1)  # two points of the ball, up-left and down-right of its centre
    assert bool((op[:, 20, 20] > 0.95).all() and (op[:, 28, 28] > 0.95).all())
    assert bool((brightness[:, 20, 20] - brightness[:, 28, 28] > 0.1 * albedo.mean()).all())
    assert torch.allclose(lit[op < 1e-4], out["rgb"][op < 1e-4], atol=1e-3)  # the background is not lit
    with pytest.raises(ValueError, match="plain-colour"):
        shade_camera_light(out, cams, out["rgb"], Background(learned=True))


def test_shading_a_hard_edged_sphere_follows_lamberts_law_up_to_its_silhouette_and_gives_depth_a_gradient():
    """An exact sphere (opaque, hard silhouette): every object pixel, the rim included, lit as Lambert's law gives
    with the sphere's true normals (differences are never taken across the silhouette, where they would turn the
    rim's normals inwards and light the side away from the light); the depth receives gradient through the normals,
    and no pixel off the object does."""
    from generators3d.nerf import Background
    from generators3d.render import sphere_intersect
    from generators3d.stage import shade_camera_light
    from suite.miniworld.render import LIGHT_CAM

    size = 64
    cams = orbit_cameras([10.0], [30.0], 3.8, 20.0)
    o, d = camera_rays(cams, size, size)
    near, _, hit = sphere_intersect(o.reshape(-1, 3), d.reshape(-1, 3), 0.5)
    on = hit.reshape(1, size, size)
    op = on.float()[..., None]
    depth = (torch.where(hit, near, torch.zeros_like(near)).reshape(1, size, size, 1) * op).requires_grad_(True)
    albedo, background = torch.tensor([0.8, 0.5, 0.3]), Background((1.0, 1.0, 1.0))
    rgb = op * albedo + (1 - op) * background.color
    lit = shade_camera_light({"opacity": op, "depth": depth}, cams, rgb, background)
    normals = torch.nn.functional.normalize(o + d * depth.detach(), dim=-1)
    light = cams.c2w[0, :3, :3] @ torch.nn.functional.normalize(torch.tensor(LIGHT_CAM), dim=0)
    want = albedo * (0.32 + 0.68 * (normals @ light).clamp_min(0))[..., None]
    err = (lit - want).abs().mean(-1)[on]
    padded = torch.nn.functional.pad(on.float()[:, None], (1, 1, 1, 1))[:, 0]
    rim = on & ((padded[:, :-2, 1:-1] < 0.5) | (padded[:, 2:, 1:-1] < 0.5) | (padded[:, 1:-1, :-2] < 0.5)
                | (padded[:, 1:-1, 2:] < 0.5))
    assert err.mean() < 0.005 and (lit - want).abs().mean(-1)[rim].mean() < 0.03  # 0.2 with inward rim normals
    lit.sum().backward()
    assert depth.grad[on].abs().mean() > 0.1 and depth.grad[~on].abs().max() == 0


def test_the_shading_flag_reaches_stage_2_only():
    import argparse

    from generators3d.cli import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    on = config_from_args(p.parse_args(["--preset", "mini", "--prompt", "a vase", "--shading"]))
    off = config_from_args(p.parse_args(["--preset", "mini", "--prompt", "a vase"]))
    assert on.zero123.shading and not on.refine.shading and not off.zero123.shading


def test_sdf_geometry_starts_as_the_exact_sphere_with_volsdf_density_and_zero_eikonal_loss():
    """``geometry='sdf'``: a fresh field is the signed distance of the sphere |x| = blob_radius (its head starts at
    zero), its density VolSDF's Laplace CDF of -d over beta (1 / (2 beta) on the surface, 1 / beta deep inside, ->
    0 outside), and the eikonal term of an exact distance is ~0; a bent field's is not."""
    torch.manual_seed(0)
    cfg = NeRFConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, hidden=16, n_hidden_layers=1,
                     geometry="sdf", sdf_beta=0.05, blob_radius=0.4)
    field = NeRFField(cfg)
    x = torch.randn(500, 3) * 0.5
    assert torch.allclose(field.sdf(x), x.norm(dim=-1) - 0.4, atol=1e-6)
    on = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1) * 0.4
    assert torch.allclose(field.density(on), torch.full((50,), 10.0), rtol=1e-4)  # 1 / (2 * 0.05)
    assert torch.allclose(field.density(torch.zeros(1, 3)), torch.tensor([20.0 - 10.0 * float(np.exp(-8.0))]), rtol=1e-4)
    assert float(field.density(torch.tensor([[0.9, 0.0, 0.0]]))) < 1e-3
    pts = (torch.rand(2000, 3) * 2 - 1) * 0.9
    pts = pts[pts.norm(dim=-1) > 0.02]  # |x| has a kink at the origin, which central differences see
    assert float(field.eikonal(pts)) < 1e-4
    with torch.no_grad():
        field.density_head.weight.normal_(0, 1.0)
        for p in field.encoding.parameters():
            p.normal_(0, 0.5)
    assert float(field.eikonal(pts)) > 0.01
    with pytest.raises(ValueError, match="geometry"):
        NeRFField(NeRFConfig(geometry="mesh"))


def test_eikonal_weight_needs_the_sdf_geometry_and_the_sdf_field_round_trips_through_a_checkpoint(tmp_path):
    from dataclasses import replace

    from generators3d.config import CameraConfig, StageConfig
    from generators3d.nerf import Background
    from generators3d.stage import load_checkpoint, save_checkpoint, train_stage

    small = dict(n_levels=4, log2_hashmap_size=12, base_resolution=8, hidden=16, n_hidden_layers=1, samples_per_ray=8)
    stage = StageConfig(steps=1, milestones=(0,), resolutions=(8,), batch_sizes=(1,), lambda_eikonal=0.1)
    with pytest.raises(ValueError, match="geometry 'sdf'"):
        train_stage(NeRFField(NeRFConfig(**small)), Background(), stage, CameraConfig(), None, [],
                    generator=torch.Generator().manual_seed(0))
    field = NeRFField(NeRFConfig(**small, geometry="sdf", sdf_beta=0.02))
    with torch.no_grad():
        field.log_beta.fill_(np.log(0.07))
        field.density_head.bias.fill_(0.1)
    loaded, _ = load_checkpoint(save_checkpoint(field, tmp_path / "sdf.safetensors", "zero123"))
    assert loaded.cfg.geometry == "sdf" and abs(float(loaded.beta) - 0.07) < 1e-6
    x = torch.randn(100, 3) * 0.5
    assert torch.allclose(loaded.density(x), field.density(x))
    # the term takes the stage's eikonal_points random points of the scene's cube per step
    taken, term = [], field.eikonal
    field.eikonal = lambda pts: (taken.append(pts), term(pts))[1]
    train_stage(field, Background(), replace(stage, steps=2, eikonal_points=123), CameraConfig(), None, [],
                generator=torch.Generator().manual_seed(0))
    assert [p.shape for p in taken] == [(123, 3)] * 2 and all(float(p.abs().max()) <= field.radius for p in taken)
    assert not torch.equal(taken[0], taken[1])  # drawn again each step


def test_normals_are_radial_on_a_sphere_and_the_3d_normal_smoothness_term_sees_bumps():
    """``NeRFField.normals``: on the exact sphere of a fresh sdf field (and of a density blob) the unit normals are
    ``x / |x|``. The 3D normal-smoothness term (threestudio's) on a sphere's surface seen from a camera is only what
    a 0.01 move turns a radius by; bumps in the field raise it, its gradient reaches the field, and a stage takes its
    ``normal_smooth_points`` surface points only when the weight is on."""
    from dataclasses import replace

    from generators3d.cameras import orbit_cameras
    from generators3d.config import CameraConfig, StageConfig
    from generators3d.nerf import Background
    from generators3d.render import render
    from generators3d.stage import SDSTerm, normal_smoothness, train_stage

    torch.manual_seed(0)
    small = dict(n_levels=4, log2_hashmap_size=12, base_resolution=8, hidden=16, n_hidden_layers=1, samples_per_ray=32)
    x = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1) * 0.4
    for geometry in ("sdf", "density"):
        field = NeRFField(NeRFConfig(**small, geometry=geometry, blob_radius=0.4))
        if geometry == "density":
            with torch.no_grad():
                field.density_head.weight.zero_()
                field.density_head.bias.zero_()
        assert torch.allclose(field.normals(x), x / 0.4, atol=1e-3), geometry
    field = NeRFField(NeRFConfig(**small, geometry="sdf", sdf_beta=0.01, blob_radius=0.4))
    cams = orbit_cameras([10.0, 40.0], [0.0, 120.0], 3.8, 20.0)
    g = torch.Generator().manual_seed(0)
    smooth = float(normal_smoothness(field, cams, render(field, Background(), cams, 24), 512, g).detach())
    # a 0.01 move turns a radius of 0.4 by 0.0125 / 0.4 on average (the move's tangential part), which the mean over
    # three components reads as about half: 0.016
    assert smooth < 0.02, smooth
    with torch.no_grad():
        for p in field.encoding.parameters():
            p.normal_(0, 0.2)
        field.density_head.weight.normal_(0, 0.3)
    bumpy = normal_smoothness(field, cams, render(field, Background(), cams, 24), 512, g)
    assert float(bumpy.detach()) > 3 * smooth, (float(bumpy.detach()), smooth)  # measured 0.112 against 0.016
    bumpy.backward()
    assert float(next(field.encoding.parameters()).grad.abs().sum()) > 0
    # a stage takes at most normal_smooth_points of the views' surface points, only with the weight on
    taken, term = [], field.normals
    field.normals = lambda pts: (taken.append(pts), term(pts))[1]
    stage = StageConfig(steps=1, milestones=(0,), resolutions=(12,), batch_sizes=(1,), lambda_sds=0.0)
    sds = [SDSTerm("x", 1.0, lambda rgb, c, gen: {"loss_sds": rgb.mean(), "min_step": 0, "max_step": 0})]
    train_stage(field, Background(), stage, CameraConfig(), None, sds, generator=torch.Generator().manual_seed(0))
    assert taken == []
    train_stage(field, Background(), replace(stage, lambda_normal_smooth_3d=1.0, normal_smooth_points=5),
                CameraConfig(), None, sds, generator=torch.Generator().manual_seed(0))
    assert [p.shape for p in taken] == [(5, 3)] * 2  # the points and the same points moved


def test_geometry_setting_reaches_the_field_and_both_stages_and_bad_values_get_one_sentence():
    from dataclasses import replace

    from generators3d import ThreeDConfig
    from generators3d.config import SDF_EIKONAL

    mini = ThreeDConfig(preset="mini", image="x.png").resolved()  # the mini preset's own: sdf
    assert mini.nerf.geometry == "sdf" and mini.zero123.lambda_eikonal == mini.refine.lambda_eikonal == SDF_EIKONAL
    cfg = ThreeDConfig(preset="tiny", image="x.png", geometry="sdf").resolved()
    assert cfg.nerf.geometry == "sdf" and cfg.zero123.lambda_eikonal == cfg.refine.lambda_eikonal == SDF_EIKONAL
    assert cfg.resolved() == cfg  # resolving again (a --config replay) changes nothing
    mine = replace(cfg, zero123=replace(cfg.zero123, lambda_eikonal=0.25)).resolved()
    assert mine.zero123.lambda_eikonal == 0.25  # a stage's own weight is kept
    plain = ThreeDConfig(preset="mini", image="x.png", geometry="density").resolved()
    assert plain.nerf.geometry == "density" and plain.zero123.lambda_eikonal == plain.refine.lambda_eikonal == 0
    full = ThreeDConfig(preset="full", prompt="x").resolved()
    assert full.nerf.geometry == "density" and full.zero123.lambda_eikonal == 0
    with pytest.raises(ValueError, match="the geometry is 'mesh': use one of density, sdf"):
        ThreeDConfig(preset="mini", image="x.png", geometry="mesh").resolved()
    with pytest.raises(ValueError, match="needs the sdf geometry"):
        replace(full, zero123=replace(full.zero123, lambda_eikonal=1.0)).resolved()
    for bad in (0, -5, 2.5, True, 1 << 21):
        with pytest.raises(ValueError, match=r"refine.eikonal_points is .*: give the eikonal term's random points"):
            replace(mini, refine=replace(mini.refine, eikonal_points=bad)).resolved()
        with pytest.raises(ValueError, match=r"zero123.normal_smooth_points is .*: give the 3D normal-smoothness"):
            replace(mini, zero123=replace(mini.zero123, normal_smooth_points=bad)).resolved()
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"zero123.lambda_normal_smooth_3d is .*: give the 3D normal-smoothness"):
            replace(mini, zero123=replace(mini.zero123, lambda_normal_smooth_3d=bad)).resolved()
        with pytest.raises(ValueError, match=r"zero123.depth_smooth_robust is .*: give the depth smoothness's"):
            replace(mini, zero123=replace(mini.zero123, depth_smooth_robust=bad)).resolved()
    assert mini.zero123.depth_smooth_robust == 0.003 and mini.refine.depth_smooth_robust == 0 == full.zero123.depth_smooth_robust
    with pytest.raises(ValueError, match="nerf.geometry is 'density': give one of them"):
        ThreeDConfig(preset="mini", image="x.png", geometry="sdf", nerf=full.nerf).resolved()
    with pytest.raises(ValueError, match="nothing would be rendered"):
        replace(mini, nerf=replace(mini.nerf, sdf_beta=20.0)).resolved()
    # a config.json of an earlier version (no geometry, no eikonal weight) replays as the density field it was
    old = json.loads(json.dumps(plain.to_dict()))
    old.pop("geometry")
    old["nerf"].pop("geometry"), old["nerf"].pop("sdf_beta")
    old["zero123"].pop("lambda_eikonal"), old["refine"].pop("lambda_eikonal")
    replay = ThreeDConfig.from_dict(old).resolved()
    assert replay.nerf.geometry == "density" and replay.zero123.lambda_eikonal == 0 == replay.refine.lambda_eikonal
    # ... and one written before the eikonal term's points could be set replays with the 4,096 it took then
    sdf_run = json.loads(json.dumps(mini.to_dict()))
    sdf_run["zero123"].pop("eikonal_points"), sdf_run["refine"].pop("eikonal_points")
    sdf_run["zero123"].pop("depth_smooth_robust"), sdf_run["refine"].pop("depth_smooth_robust")
    assert mini.zero123.eikonal_points == 1024 == mini.refine.eikonal_points
    replay = ThreeDConfig.from_dict(sdf_run).resolved()
    assert replay.zero123.eikonal_points == 4096 == replay.refine.eikonal_points
    assert replay.zero123.depth_smooth_robust == 0  # ... and the square of the depth smoothness it took then
    with pytest.raises(ValueError, match="lambda_eikonal is -1"):
        replace(cfg, refine=replace(cfg.refine, lambda_eikonal=-1.0)).resolved()
    with pytest.raises(ValueError, match="sdf_beta is 0"):
        replace(cfg, nerf=replace(cfg.nerf, sdf_beta=0)).resolved()


def test_nerf_fields_seeded_in_threads_side_by_side_are_the_same_seeds_fields():
    """Jobs side by side in one process (the app's ``--max-jobs`` above 1) share torch's global random stream: a
    NeRF seeded in one thread while another seeded it came out unlike the same seed's alone (measured: 39 of 40 fields
    made by eight threads at once, five times over). ``suite.devices.RANDOM_STATE_LOCK`` keeps each seeded section
    whole, and a run's kept random state is saved and restored under it too."""
    import threading

    import torch

    from generators3d.config import PRESET_SIZES
    from generators3d.nerf import make_field
    from suite.devices import kept_random_state

    cfg = PRESET_SIZES["mini"].nerf()

    def weights(seed):
        with kept_random_state("cpu"):  # as a 3D run does around all its work
            return torch.cat([p.detach().flatten() for p in make_field(cfg, "cpu", seed).parameters()])

    alone = {s: weights(s) for s in range(6)}
    for _ in range(3):
        out = {}
        threads = [threading.Thread(target=lambda s=s, out=out: out.__setitem__(s, weights(s))) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(out[s], alone[s]) for s in range(6))
