"""The mini world's objects and renderer: exact silhouettes against closed forms, the 3D package's camera
convention, captions, and the integrity check of the shipped models."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from suite.miniworld import world as W
from suite.miniworld.render import BOUND_RADIUS, render, render_view

D, FOV, SIZE = 3.8, 20.0, 64
FOCAL = 0.5 * SIZE / math.tan(math.radians(FOV) / 2)


def test_ball_silhouette_is_the_analytic_disc():
    r = 0.45
    obj = W.MiniObject("ball", "red", "plain", params={"radius": r})
    out = render_view(obj, 20.0, 30.0, D, FOV, size=SIZE, supersample=4)
    radius_px = FOCAL * math.tan(math.asin(r / D))  # the silhouette cone of a sphere
    area = math.pi * radius_px ** 2
    assert abs(out.mask.sum().item() - area) / area < 0.02
    assert abs(out.alpha.sum().item() - area) / area < 0.01  # anti-aliased coverage integrates the exact area
    # Centred on the principal point, and the depth at the centre is D - r.
    ys, xs = torch.nonzero(out.mask[0], as_tuple=True)
    assert abs(xs.float().mean().item() + 0.5 - SIZE / 2) < 0.05 and abs(ys.float().mean().item() + 0.5 - SIZE / 2) < 0.05
    centre = out.depth[0, SIZE // 2 - 1:SIZE // 2 + 1, SIZE // 2 - 1:SIZE // 2 + 1]
    assert torch.allclose(centre, torch.full_like(centre, D - r), atol=2e-3)


def test_box_face_projects_to_the_pinhole_rectangle():
    hx, hy, hz = 0.3, 0.35, 0.25
    obj = W.MiniObject("box", "red", "plain", params={"half": (hx, hy, hz)})
    out = render_view(obj, 0.0, 0.0, D, FOV, size=SIZE, supersample=1)  # looking at the +X face head-on
    ys, xs = torch.nonzero(out.mask[0], as_tuple=True)
    width = xs.max().item() - xs.min().item() + 1
    height = ys.max().item() - ys.min().item() + 1
    assert abs(width - 2 * FOCAL * hy / (D - hx)) <= 1.0
    assert abs(height - 2 * FOCAL * hz / (D - hx)) <= 1.0


def test_camera_convention_is_the_3d_packages():
    import generators3d.cameras as g3d
    import suite.cameras as sc

    # One implementation: the renderer and the 3D package share it.
    assert g3d.orbit_cameras is sc.orbit_cameras and g3d.camera_rays is sc.camera_rays
    # A world point projected with the 3D package's camera lands on the pixel whose ray the renderer hits it by.
    r = 0.45
    obj = W.MiniObject("ball", "red", "plain", params={"radius": r})
    el, az = 25.0, 60.0
    cams = g3d.orbit_cameras(el, az, D, FOV)
    point = torch.tensor([0.0, 0.0, r])  # the ball's top, visible from above
    w2c = torch.linalg.inv(cams.c2w[0])
    pc = w2c[:3, :3] @ point + w2c[:3, 3]
    u = FOCAL * pc[0] / -pc[2] + SIZE / 2
    v = -FOCAL * pc[1] / -pc[2] + SIZE / 2
    out = render(obj, cams, size=SIZE, supersample=1)
    depth = out.depth[0, int(v), int(u)].item()
    expected = (cams.c2w[0, :3, 3] - point).norm().item()
    assert abs(depth - expected) < 0.02  # within a pixel's footprint on the surface


@pytest.mark.parametrize("azimuth,side", [(0.0, "right"), (180.0, "left")])
def test_cup_handle_is_on_plus_y(azimuth, side):
    """+Y is on the right of the image at azimuth 0 (threestudio's convention): the asymmetric cup shows it."""
    cup = W.make_object("cup")
    body = W.MiniObject("cup", "red", "plain", profile=cup.profile, params={k: v for k, v in cup.params.items()
                                                                            if k != "handle"})
    with_handle = render_view(cup, 10.0, azimuth).mask[0]
    without = render_view(body, 10.0, azimuth).mask[0]
    handle = with_handle & ~without
    assert handle.sum() > 20
    cols = torch.nonzero(handle, as_tuple=True)[1].float().mean().item()
    assert (cols > SIZE / 2) == (side == "right")
    # Mirroring the image is not the same object (the check a mirrored reconstruction must fail).
    assert not torch.equal(with_handle, with_handle.flip(-1))


def test_every_object_fits_the_frame_and_the_mask_matches_coverage():
    rng = np.random.default_rng(3)
    for shape in W.SHAPES:
        for _ in range(3):
            obj = W.make_object(shape, rng=rng)
            pts = [math.hypot(r, z) for part in obj.profile for r, z in part]
            if shape == "ball":
                pts.append(obj.params["radius"])
            if shape == "box":
                pts.append(math.sqrt(sum(h * h for h in obj.params["half"])))
            if "handle" in obj.params:
                cy, cz, major, minor, _ = obj.params["handle"]
                pts.append(cy + major + minor)
            assert max(pts) < BOUND_RADIUS, (shape, max(pts))
            out = render_view(obj, 20.0, float(rng.uniform(-180, 180)))
            m = out.mask[0]
            a = out.alpha[0] > 0.5
            iou = (m & a).sum().item() / (m | a).sum().item()
            assert iou > 0.95, (shape, iou)
            border = torch.cat([m[0], m[-1], m[:, 0], m[:, -1]])
            assert not border.any(), f"{shape} touches the frame"


def test_porcelain_and_open_world_look_different():
    vase = W.make_object("vase", "blue", "dots")
    plain = render_view(vase, 10, 0).rgb[0]
    glazed = render_view(dataclasses.replace(vase, porcelain=True), 10, 0).rgb[0]
    mask = render_view(vase, 10, 0).mask[0]
    def whitish(img):  # bright and unsaturated
        return (img.max(0).values - img.min(0).values < 0.1) & (img.mean(0) > 0.4) & mask

    assert whitish(glazed).float().sum() / mask.sum() > 0.3  # a white body
    assert whitish(plain).float().sum() / mask.sum() < 0.02  # blue paint: white only in the highlight


def test_captions_name_the_attributes_and_use_the_vocabulary():
    obj = W.make_object("cup", "red", "stripes")
    assert obj.caption() == "a photo of a red cup with stripes"
    assert W.make_object("ball", "yellow", "plain").caption() == "a photo of a yellow ball"
    rng = np.random.default_rng(0)
    vocab = set(W.vocabulary())
    for _ in range(200):
        text = W.random_object(rng).caption(rng)
        assert set(text.split()) <= vocab, text
    with pytest.raises(ValueError, match="unknown shape 'teapot'"):
        W.make_object("teapot")


def test_domain_is_narrow():
    rng = np.random.default_rng(0)
    objs = [W.random_object(rng, porcelain=True, shapes=W.DOMAIN_SHAPES) for _ in range(50)]
    assert {o.shape for o in objs} == set(W.DOMAIN_SHAPES) and all(o.porcelain for o in objs)
    views = [W.random_view(rng, porcelain=True) for _ in range(50)]
    assert all(-40 <= v["azimuth"] <= 40 and 0 <= v["elevation"] <= 25 for v in views)


# ---------------------------------------------------------------------------------------------------------
def test_missing_or_corrupt_shipped_file_is_one_sentence(tmp_path, monkeypatch):
    from suite.miniworld import assets
    from suite.models import ModelLoadError

    folder = tmp_path / "models"
    (folder / "sd").mkdir(parents=True)
    (folder / "sd" / "weights.safetensors").write_bytes(b"0123456789")
    assets.write_manifest(folder, {"size": "test"})
    assert assets.check(folder)["files"]
    (folder / "sd" / "weights.safetensors").write_bytes(b"0123456780")  # one byte changed
    with pytest.raises(ModelLoadError, match=r"weights.safetensors is corrupt .*python -m training.miniworld"):
        assets.check(folder)
    (folder / "sd" / "weights.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"weights.safetensors is missing: rebuild .*python -m training.miniworld"):
        assets.check(folder)
    shutil.rmtree(folder)
    monkeypatch.setenv("INDOMAIN_MINI_DIR", str(folder))
    with pytest.raises(ModelLoadError, match="models are missing"):
        assets.model_refs("porcelain")


def test_manifest_lists_every_shipped_file():
    from suite.miniworld import assets

    manifest = assets.check()
    root = assets.default_dir()
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != assets.MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert manifest["total_bytes"] <= 60 * 2 ** 20  # the size budget of all mini models (issue 23: 60 MB)
    assert json.loads((root / assets.MANIFEST).read_text())["quality"]["base_shape"] >= 0.9


def test_the_mini_presets_domains_are_the_shipped_ones():
    """The preset table (read by --help without torch) names the domains the build ships, with their settings."""
    from suite.miniworld import assets
    from suite.presets import get_preset

    assert get_preset("mini").domains == assets.DOMAINS == tuple(assets.MINI_DOMAINS)
    assert assets.MINI_DOMAINS["face"].framing == "face" and assets.MINI_DOMAINS["porcelain"].framing == "whole"
