"""Text-to-3D measured on the mini world: the trained mini Zero-1-to-3 beats copying its input, a known object
is reconstructed from a ground-truth view within Chamfer and silhouette bounds that a mirrored or turned export
fails, the export frame can be undone, and bad 3D input gives warnings, not tracebacks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from suite.miniworld import assets
from suite.miniworld import world as W


@pytest.fixture(scope="module")
def mini_zero123():
    from suite.zero123 import load_zero123

    assets.check()
    return load_zero123(str(assets.default_dir() / "zero123"))


def _cases():
    # a 90-degree turn: the cup at the same elevation (its handle swings from the side to the back) and a bowl
    # seen from higher up (its inside appears); returning the input is wrong for both
    return [(W.make_object("cup", "red", "stripes"), 10.0, 0.0, 10.0, 90.0),
            (W.make_object("bowl", "yellow", "stripes"), 5.0, 0.0, 30.0, 90.0)]


def test_mini_zero123_beats_copying_the_input_at_a_90_degree_turn(mini_zero123):
    from suite.miniworld.views import measure_novel_views

    m = measure_novel_views(mini_zero123, _cases(), steps=20)
    for i in range(2):
        assert m["iou"][i] > m["copy_iou"][i] + 0.05, m
    assert m["mean_psnr"] > m["mean_copy_psnr"] + 1.0, m


@pytest.mark.xfail(strict=True, reason="measured: the mini Zero-1-to-3 is level with copying on boxes, not above it "
                   "(+0.006 +- 0.011 IoU over 24 held-out boxes after its third, box-weighted phase, -0.017 +- 0.008 "
                   "averaged over eight seeds; bench.mini_zero123, docs/mini-world.md): its boxes are no more precise "
                   "than a copy, which a 90-degree turn leaves nearly right, though the input view fixes the turned "
                   "outline to IoU about 0.95 (bench.mini_zero123 --ideal: an inverse-rendering observer)")
def test_mini_zero123_beats_copying_a_box_at_a_90_degree_turn(mini_zero123):
    from suite.miniworld.views import heldout_cases, measure_novel_views
    from suite.miniworld.world import SHAPES

    boxes = [c for i, c in enumerate(heldout_cases(6 * len(SHAPES), seed=2024)) if SHAPES[i % len(SHAPES)] == "box"]
    m = measure_novel_views(mini_zero123, boxes, steps=20)
    gain = np.mean(np.asarray(m["iou"]) - np.asarray(m["copy_iou"]))
    assert gain >= 0.03, (gain, m["iou"], m["copy_iou"])


def test_sdedit_side_views_keep_the_renders_outline_and_draw_on_it(mini_zero123):
    """The export's side views (generators3d.texture): Zero-1-to-3 from 0.6 of the schedule over a flat-coloured
    render keeps its outline, where sampling from pure noise (strength 1) moves the cup's, and draws shading and
    pattern into it (measured, 20 DDIM steps, seeds 0 / 1: IoU 0.976 / 0.949 against 0.747 / 0.834 from noise;
    luminance spread inside 0.115 / 0.133, the truth's 0.125, the flat render's 0)."""
    from suite.miniworld.views import cut_out, iou, reference_framing, render_framed, silhouette
    from suite.zero123 import Zero123Guidance, novel_views

    obj, el0, az0, el1, az1 = _cases()[0]
    framing = reference_framing(obj, el0, az0)
    rgb, _ = render_framed(obj, framing, [el0, el1], [az0, az1], 64)
    sil = silhouette(rgb[1:])
    flat = torch.where(sil[:, None], rgb[1][:, sil[0]].mean(1)[None, :, None, None], torch.ones_like(rgb[1:]))
    guide = Zero123Guidance(mini_zero123, rgb[:1], el0, az0, framing.distance)
    def draw(strength, seed):
        return cut_out(novel_views(guide, el1, az1, framing.distance, 3.0, 20, torch.Generator().manual_seed(seed),
                                   init=flat, strength=strength))

    for seed in (0, 1):
        kept, free = draw(0.6, seed), draw(1.0, seed)
        iou_kept, iou_free = float(iou(silhouette(kept), sil)[0]), float(iou(silhouette(free), sil)[0])
        assert iou_kept > 0.92 and iou_kept > iou_free + 0.05, (seed, iou_kept, iou_free)
        assert float(kept[0].mean(0)[sil[0]].std()) > 0.06


def test_random_zero123_of_the_same_layout_does_not(mini_zero123):
    """The bound above is not met by chance: the same architecture with random weights fails it."""
    from suite.miniworld.views import measure_novel_views
    from suite.zero123 import Zero123Model
    from training.mini_zero123 import build_parts

    parts = build_parts(mini_zero123.vae, seed=5)
    model = Zero123Model(parts["unet"].eval(), mini_zero123.vae, parts["image_encoder"].eval(), parts["projection"],
                         mini_zero123.scheduler)
    m = measure_novel_views(model, _cases()[:1], steps=10)
    assert not m["iou"][0] > m["copy_iou"][0] + 0.05


def test_export_transform_is_undone_exactly():
    from bench.miniworld.geometry import from_export
    from generators3d.mesh import Mesh, export_transform, to_export_frame

    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3)).astype(np.float32)
    mesh = Mesh(v, np.zeros((0, 3), np.int64), np.zeros_like(v))
    for height, ground in ((None, True), (1.7, True), (0.3, False)):
        tf = export_transform(mesh, height, ground)
        back = from_export(to_export_frame(mesh, height, ground).vertices, tf)
        assert np.abs(back - v).max() < 1e-5


@pytest.fixture(scope="module")
def cup_run(tmp_path_factory):
    """The CI-sized reconstruction: a red cup seen from elevation 10, azimuth 0 (handle on the image's right)."""
    from dataclasses import replace

    from bench.mini3d import reference_files
    from generators3d import ThreeDConfig, run_text_to_3d

    folder = tmp_path_factory.mktemp("cup")
    obj = W.make_object("cup", "red", "stripes")
    image, mask = reference_files(obj, 10.0, 0.0, folder / "input")
    out = folder / "run"
    # the user's path (--image --mask --elevation), CI-sized: 40 steps of 2 views at 32 px, the reference at 48 px
    cfg = ThreeDConfig(preset="mini", image=str(image), mask=str(mask), elevation=10.0, refine_steps=0,
                       mesh_resolution=48, preview_frames=1, formats=("ply",), texture=False, output=str(out))
    cfg = replace(cfg, zero123=replace(cfg.resolved().zero123, steps=40, batch_sizes=(2, 2), ref_resolution=48))
    run_text_to_3d(cfg)
    return obj, out


def test_known_cup_is_reconstructed_the_right_way_round(cup_run):
    from bench.mini3d import HELD_OUT, turned
    from bench.miniworld.geometry import load_export, measure_mesh
    from suite.miniworld.views import reference_framing

    obj, out = cup_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export_transform"]["formula"].startswith("x_export")
    framing = reference_framing(obj, 10.0, 0.0, size=256)
    v, f = load_export(out)
    good = measure_mesh(v, f, obj, framing, views=HELD_OUT)
    mirrored = measure_mesh(v * np.array([1.0, -1.0, 1.0]), f[:, ::-1], obj, framing, views=HELD_OUT)
    turned90 = measure_mesh(turned(v, 90.0), f, obj, framing, views=HELD_OUT)
    assert good["chamfer"] < CHAMFER_BOUND and good["mean_silhouette_iou"] > IOU_BOUND, good
    # a flipped axis or a turned pose convention (the handle elsewhere) is measurably further from the truth
    for wrong in (mirrored, turned90):
        assert wrong["chamfer"] > good["chamfer"] * 1.15, (good, wrong)
        assert wrong["mean_silhouette_iou"] < good["mean_silhouette_iou"] - 0.05, (good, wrong)


CHAMFER_BOUND = 0.09  # measured about 0.06 when set, 0.037 on 2026-12-06; mirrored or turned: 0.11-0.14 (docs/3d.md)
IOU_BOUND = 0.75  # measured about 0.82 when set, 0.875 on 2026-12-06; mirrored: about 0.64


def test_the_cups_stripes_come_round_to_its_back_through_the_side_views(cup_run):
    """Issue 24, part 1, CI-sized: the export's colours take the reference and three Zero-1-to-3 side views
    (docs/3d.md, "Colours from the images"), so the striped cup's vertex colours show stripes from the side and
    behind, where the same checkpoint's NeRF colours alone show a smear. Counted as light/dark changes down the middle
    column of the three held-out views round the back (measured: truth 32; default 32, 36 and 28 with the side views'
    seeds 0, 1, 2, and 30, 36, 28 before they kept the reference's part; the NeRF's colours 16). Since stage 2's
    eikonal term takes 1,024 points (2026-12-06), runs of this fixture with seeds 0-3: side views 35, 38, 31, 30, the
    NeRF's colours 20, 16, 14, 23 (with 4,096 points 34, 35, 33, 34 and 16, 19, 17, 13; seed 0 in a CI run 36 and 22;
    seed 0 on one thread, as the suite's workers run it since 2026-12-06, 33 and 20):
    the NeRF's own colours vary from run to run, so the bound is on what the side views add."""
    import trimesh

    from bench.mini3d import HELD_OUT
    from bench.miniworld.geometry import from_export
    from generators3d import ThreeDConfig, run_text_to_3d
    from generators3d.cameras import orbit_cameras
    from generators3d.raster import render_mesh
    from suite.miniworld.render import render
    from suite.miniworld.views import framed_cameras, reference_framing

    obj, out = cup_run
    assert json.loads((out / "summary.json").read_text())["colours"]["side_views"] == 3
    plain = out.parent / "nerf-colours"
    run_text_to_3d(ThreeDConfig(preset="mini", export_only=str(out / "checkpoints" / "stage2-zero123.safetensors"),
                                output=str(plain), preview_frames=1, formats=("ply",), texture=False,
                                mesh_resolution=48, project_reference=False, side_views=0))
    framing = reference_framing(obj, 10.0, 0.0, size=256)
    back = HELD_OUT[:3]  # (20, 90), (20, 180), (20, -90): the sides and the back
    els, azs = [v[0] for v in back], [v[1] for v in back]
    truth = render(obj, framed_cameras(framing, els, [framing.azimuth + a for a in azs]), size=64)
    cams = orbit_cameras(els, azs, framing.distance, 20.0)

    def stripes(rgb, cover):
        total = 0
        for img, on in zip(rgb, cover):
            column = img.mean(0)[:, img.shape[-1] // 2][on[:, img.shape[-1] // 2]]
            s = np.sign(column - np.median(column))
            total += int((s[1:] != s[:-1]).sum())
        return total

    def drawn(folder):
        m = trimesh.load(folder / "mesh" / "model.ply", process=False)
        v = from_export(np.asarray(m.vertices), json.loads((folder / "summary.json").read_text())["export_transform"])
        rgb, cover = render_mesh(v, np.asarray(m.faces), cams, size=64, shading=False,
                                 colors=np.asarray(m.visual.vertex_colors)[:, :3] / 255.0)
        return stripes(rgb, cover > 0.5)

    want = stripes(truth.rgb.numpy(), truth.alpha.numpy() > 0.5)
    default, nerf = drawn(out), drawn(plain)
    assert default >= 0.75 * want and default - nerf >= 0.2 * want, (default, nerf, want)


def test_prompt_outside_the_mini_world_and_object_on_the_border_warn(tmp_path, caplog):
    import launch
    from suite.presets import warn_prompt

    assert warn_prompt("mini", "a porcelain vase") == []
    found = warn_prompt("mini", "a teapot with dragons")
    assert len(found) == 2 and "'teapot'" in found[0] and "names no shape" in found[1]
    assert warn_prompt("full", "a teapot") == []
    # a face's attribute without "face", which every mini caption names: measured to add nothing in an edit
    (found,) = warn_prompt("mini", "wearing glasses")
    assert "'a photo of a face wearing glasses'" in found
    assert warn_prompt("mini", "a photo of a face wearing glasses") == warn_prompt("mini", "a red cup") == []

    # an object cut by the frame: a warning in the log and in summary.json, and the run still finishes
    arr = np.full((64, 64, 3), 250, np.uint8)
    arr[20:64, 16:48] = (200, 40, 40)
    Image.fromarray(arr).save(tmp_path / "cut.png")
    out = tmp_path / "run"
    assert launch.main(["3d", "--preset", "tiny", "--image", str(tmp_path / "cut.png"), "--mask-method", "auto",
                        "--zero123-steps", "1", "--refine-steps", "0", "--mesh-resolution", "24",
                        "--preview-frames", "1", "--formats", "ply", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert any("touches the frame border" in w for w in summary["warnings"]), summary["warnings"]


def test_the_bowl_bound_fails_a_filled_bowl():
    """Issue 24's geometry bound (Chamfer within 0.05 of the object's height) tells a hollow bowl from a filled one:
    the true bowl sampled twice is far inside it, the same bowl closed at the rim (the NeRF's failure) outside
    (bench.mini3d measures the reconstruction itself: 0.097, a filled bowl's error and more; docs/3d.md)."""
    from dataclasses import replace

    from bench.miniworld.geometry import chamfer, surface_points

    bowl = W.make_object("bowl", "green", "stripes")
    foot, outer = bowl.profile[0], bowl.profile[1]
    rim = outer[-1]
    filled = replace(bowl, profile=(foot, outer, [rim, (0.0, rim[1])]))  # the outer wall, closed by a lid at the rim
    truth = surface_points(bowl, views=48)
    height = float(np.ptp(truth[0][:, 2]))
    again = chamfer(*surface_points(bowl, views=48, seed=1), *truth)["chamfer"] / height
    lid = chamfer(*surface_points(filled, views=48), *truth)["chamfer"] / height
    assert again < 0.02 and lid > 0.065, (again, lid)  # measured 0.009 and 0.081


def test_the_mini_depth_estimator_reads_held_out_depth_and_its_random_weights_do_not():
    """The shipped estimator of ``--depth auto``, loaded as the 3D flow loads it, on 24 held-out views (other
    objects and seeds than its training renders): its depth correlates with the renderer's exact depth over each
    object (0.960 on average over 200 views, MANIFEST.json's depth_corr), far above the image's darkness (0.08) and
    above a model of the same layout with random weights."""
    from transformers import AutoModelForDepthEstimation

    from suite.depth import load_depth_estimator, pearson
    from suite.presets import depth_ref

    est = load_depth_estimator(depth_ref("mini"))
    images, depth, mask = assets.depth_views(24)
    truth, keep = torch.from_numpy(depth), torch.from_numpy(mask)

    def corr(estimator):
        near = torch.from_numpy(np.stack([estimator(Image.fromarray(im)) for im in images]))
        return pearson(-near, truth, keep)

    trained = corr(est)
    torch.manual_seed(0)
    est.model = AutoModelForDepthEstimation.from_config(est.model.config).eval()
    random = corr(est)
    assert float(trained.mean()) > DEPTH_CORR_BOUND, trained
    assert float(random.mean()) < float(trained.mean()) - 0.3, (random.mean(), trained.mean())


DEPTH_CORR_BOUND = 0.9  # 0.960 over 200 held-out views; before its batch-norm statistics were recalibrated 0.78
