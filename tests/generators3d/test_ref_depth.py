"""The reference view's relative depth (``--depth``): the Pearson loss, the framing of a user's depth image, the
depth estimator loader, the config's rules, and a stage that the loss steers towards the depth it is given."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from generators3d.config import REF_DEPTH_WEIGHT, NeRFConfig, StageConfig, ThreeDConfig
from generators3d.stage import Reference, pearson_depth_loss


def test_pearson_depth_loss_is_blind_to_scale_and_offset_and_reads_only_the_object():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 16, 16, 1, generator=g)
    keep = torch.zeros(1, 16, 16, 1, dtype=torch.bool)
    keep[:, 4:12, 4:12] = True
    assert float(pearson_depth_loss(depth, 3.0 * depth + 7.0, keep)) == pytest.approx(0.0, abs=1e-5)
    assert float(pearson_depth_loss(depth, -0.5 * depth, keep)) == pytest.approx(2.0, abs=1e-5)
    unrelated = float(pearson_depth_loss(depth, torch.rand(1, 16, 16, 1, generator=g), keep))
    assert 0.6 < unrelated < 1.4
    # pixels off the object may hold anything
    want = torch.where(keep, 2.0 * depth, torch.rand(1, 16, 16, 1, generator=g) * 100)
    assert float(pearson_depth_loss(depth, want, keep)) == pytest.approx(0.0, abs=1e-5)
    # too few pixels: nothing to compare; a flat reference: no correlation; neither gives a NaN loss or gradient
    few = torch.zeros_like(keep)
    few[0, 0, :3] = True
    for target, kept in ((want, few), (torch.full_like(depth, 0.5), keep), (depth, torch.zeros_like(keep))):
        d = depth.clone().requires_grad_(True)
        loss = pearson_depth_loss(d, target, kept)
        loss.backward()
        assert bool(torch.isfinite(loss)) and bool(torch.isfinite(d.grad).all())
    assert float(pearson_depth_loss(depth, want, few)) == 0.0


def _ring_reference(size=32):
    """A grey disc seen from the reference camera whose depth says it is a dish (centre farther than the rim)."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    r = ((x - size / 2) ** 2 + (y - size / 2) ** 2).sqrt() / (size * 0.3)
    mask = (r < 1).float()[None, None]
    rgb = torch.where(mask.bool(), torch.full((1, 3, size, size), 0.5), torch.ones(1, 3, size, size))
    dish = (1.0 - r.clamp(max=1) ** 2)[None, None]  # larger = farther: the centre sinks
    return rgb, mask, dish


def _fit(lambda_ref_depth, dish, fraction=1.0):
    from generators3d.cameras import reference_camera
    from generators3d.config import CameraConfig
    from generators3d.nerf import Background, NeRFField
    from generators3d.render import render
    from generators3d.stage import train_stage

    rgb, mask, depth = _ring_reference()
    torch.manual_seed(0)
    field = NeRFField(NeRFConfig(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5, hidden=16,
                                 n_hidden_layers=1, samples_per_ray=32))
    bg = Background()
    stage = StageConfig(steps=40, lr=0.02, ref_resolution=32, lambda_ref_depth=lambda_ref_depth,
                        ref_ray_fraction=fraction)
    camera = CameraConfig()
    train_stage(field, bg, stage, camera, Reference(rgb, mask, depth if dish else -depth), [],
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = render(field, bg, reference_camera(camera, "cpu"), 32)
    surface = out["depth"] / out["opacity"].clamp_min(1e-3)
    return 1.0 - float(pearson_depth_loss(surface, depth.permute(0, 2, 3, 1), mask.permute(0, 2, 3, 1) > 0.5))


def test_the_reference_depth_loss_sinks_a_disc_into_the_dish_its_depth_describes(one_thread):
    """Colour and silhouette alone fit the fresh field's ball: its rendered depth runs against a dish's (centre
    nearest). With the depth loss the same fit follows the dish (centre farthest); a depth that says "dome" keeps
    the ball. The loss is what moves it, and in the direction the depth image gives."""
    plain = _fit(0.0, dish=True)
    dished = _fit(REF_DEPTH_WEIGHT, dish=True)
    domed = _fit(REF_DEPTH_WEIGHT, dish=False)
    assert plain < 0.0, plain
    assert dished > 0.5 and dished > plain + 0.8, (plain, dished)
    assert domed < plain + 0.1, (plain, domed)


def test_train_stage_refuses_a_depth_weight_without_a_depth():
    from generators3d.config import CameraConfig
    from generators3d.nerf import Background, NeRFField

    rgb, mask, _ = _ring_reference()
    field = NeRFField(NeRFConfig(n_levels=2, log2_hashmap_size=10, hidden=8, n_hidden_layers=1, samples_per_ray=8))
    with pytest.raises(ValueError, match="--depth"):
        from generators3d.stage import train_stage

        train_stage(field, Background(), StageConfig(steps=1, lambda_ref_depth=1.0), CameraConfig(),
                    Reference(rgb, mask), [], generator=torch.Generator().manual_seed(0))


def test_config_depth_defaults_and_refusals(tmp_path):
    mini = ThreeDConfig(preset="mini", prompt="a vase").resolved()
    assert mini.depth == "auto" and mini.zero123.lambda_ref_depth == REF_DEPTH_WEIGHT
    assert mini.refine.lambda_ref_depth == 0.0
    off = ThreeDConfig(preset="mini", prompt="a vase", depth="off").resolved()
    assert off.zero123.lambda_ref_depth == 0.0
    full = ThreeDConfig(preset="full", prompt="a vase").resolved()
    assert full.depth == "off" and full.zero123.lambda_ref_depth == 0.0
    assert ThreeDConfig(preset="full", prompt="a vase", depth="AUTO", depth_weight=3).resolved().zero123.lambda_ref_depth == 3
    # a resolved config replays as it is
    assert mini.resolved().zero123.lambda_ref_depth == REF_DEPTH_WEIGHT
    with pytest.raises(ValueError, match="needs --image"):
        ThreeDConfig(preset="mini", prompt="a vase", depth=str(tmp_path / "d.png")).resolved()
    with pytest.raises(ValueError, match="--depth-weight"):
        ThreeDConfig(preset="mini", prompt="a vase", depth_weight=-1.0).resolved()
    with pytest.raises(ValueError, match="--depth is empty"):
        ThreeDConfig(preset="mini", prompt="a vase", depth=" ").resolved()
    # a depth setting that nothing would read is refused, not ignored
    with pytest.raises(ValueError, match="--depth-weight needs --depth auto"):
        ThreeDConfig(preset="full", prompt="a vase", depth_weight=5.0).resolved()
    with pytest.raises(ValueError, match="--depth-model needs --depth auto"):
        ThreeDConfig(preset="mini", prompt="a vase", depth="off", depth_model="x/y").resolved()
    with pytest.raises(ValueError, match="drop --depth-model, or add --view-depth-weight"):
        ThreeDConfig(preset="mini", image="a.png", depth="d.png", depth_model="x/y").resolved()
    # a --config file written by hand without "depth" gets the preset's (only an old run's config.json replays off)
    assert ThreeDConfig.from_dict({"preset": "mini", "prompt": "a vase", "zero123": {"steps": 5}}).resolved().depth \
        == "auto"
    # a run's config.json from before reference depth replays without it
    old = dict(mini.to_dict(), threads=2)
    del old["depth"], old["depth_model"], old["depth_weight"]
    del old["zero123"]["lambda_ref_depth"], old["refine"]["lambda_ref_depth"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    replay = ThreeDConfig.load(path).resolved()
    assert replay.depth == "off" and replay.zero123.lambda_ref_depth == 0.0


def test_read_nearness_reads_8_and_16_bit_and_refuses_another_size_or_a_non_image(tmp_path):
    from suite.depth import nearness_image, read_nearness

    near = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    mask = np.ones_like(near)
    nearness_image(near, mask).save(tmp_path / "d16.png")
    Image.fromarray((near * 255).round().astype(np.uint8)).save(tmp_path / "d8.png")
    assert np.abs(read_nearness(tmp_path / "d16.png", (32, 24)) - near).max() < 1e-4
    assert np.abs(read_nearness(tmp_path / "d8.png", (32, 24)) - near).max() < 3e-3
    with pytest.raises(ValueError, match="is 32x24 but the input image is 64x64"):
        read_nearness(tmp_path / "d16.png", (64, 64))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not be read as an image"):
        read_nearness(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="not a file"):
        read_nearness(tmp_path / "missing.png")


def test_a_users_depth_image_is_framed_as_the_reference_view_frames_the_image():
    """An object off-centre in a wide image: its depth lands on the reference view's object pixels, the backdrop's
    depth nowhere (the object's rim keeps the object's values)."""
    from generators3d.mask import reference_depth, reference_view

    h, w = 60, 100
    yy, xx = np.mgrid[0:h, 0:w]
    obj = ((xx - 70) / 20.0) ** 2 + ((yy - 25) / 12.0) ** 2 < 1
    near = np.where(obj, 0.5 + 0.5 * (xx - 50) / 40.0, 0.0).astype(np.float32)  # brighter to the right
    near[~obj] = 9.0  # the backdrop's depth: must not leak in
    image = Image.fromarray(np.where(obj[..., None], 40, 255).astype(np.uint8).repeat(3, -1))
    mask = Image.fromarray((obj * 255).astype(np.uint8))
    _, ref_mask = reference_view(image, mask, 64)
    framed = reference_depth(near, mask, 64)
    on = np.asarray(ref_mask) > 127
    assert framed[on].max() <= 1.0 + 1e-5 and framed[on].min() >= 0.5 - 1e-5
    assert (framed[~on] <= 1.0 + 1e-5).all()  # no 9.0 anywhere
    cols = np.nonzero(on.any(0))[0]
    assert framed[32, cols[-2]] > framed[32, cols[1]] + 0.2  # the gradient keeps its direction


def test_depth_estimator_loader_reads_a_folder_and_refuses_other_models(tmp_path):
    from suite.depth import load_depth_estimator
    from suite.models import ModelLoadError
    from suite.testing import tiny_depth_dir

    est = load_depth_estimator(tiny_depth_dir())
    assert est.sense == "depth"  # GLPN predicts depth: the estimator returns its negative (larger = nearer)
    img = Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8))
    near = est(img)
    raw = est.model(pixel_values=est.processor(images=img, return_tensors="pt")["pixel_values"]).predicted_depth
    assert near.shape == (48, 40)
    assert np.corrcoef(near.ravel(), -torch.nn.functional.interpolate(
        raw[:, None], (48, 40), mode="bicubic").detach().numpy().ravel())[0, 1] > 0.99
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path / "clip")
    with pytest.raises(ModelLoadError, match="not one of the depth estimators"):
        load_depth_estimator(tmp_path / "clip")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_depth_estimator(tmp_path / "nowhere")


def disc_object(folder, size=64):
    """A blue disc on a near-white background, saved as ``folder/obj.png``: its mask and the column index."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - 30) ** 2 + (xx - 26) ** 2 < 16 ** 2
    arr = np.full((size, size, 3), 250, np.uint8)
    arr[disc] = (40, 90, 200)
    Image.fromarray(arr).save(folder / "obj.png")
    return disc, xx


def test_tiny_runs_with_an_estimated_or_a_given_depth_write_what_they_used(tmp_path, capsys, one_thread):
    """--depth auto (the tiny preset's random estimator) and --depth FILE through the CLI: each writes the depth
    stage 2 read as reference-depth.png (16 bit, normalised over the object) and records it; the user's depth
    image arrives framed (its left-to-right ramp stays one); a depth image of another size, or a --resume with
    another --depth, is one sentence and changes nothing."""
    import launch

    disc, xx = disc_object(tmp_path)
    Image.fromarray((disc * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    ramp = np.where(disc, (xx - 10) / 32.0, 0.0)  # brighter (nearer) to the right
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "depth.png")
    fast = ["--preset", "tiny", "--image", str(tmp_path / "obj.png"), "--mask", str(tmp_path / "mask.png"),
            "--zero123-steps", "2", "--refine-steps", "0",
            "--mesh-resolution", "24", "--preview-frames", "1", "--formats", "glb"]

    out = tmp_path / "auto"
    assert launch.main(["3d", "--output", str(out), "--depth", "auto", *fast]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["depth"] == "auto" and config["zero123"]["lambda_ref_depth"] == REF_DEPTH_WEIGHT
    with Image.open(out / "reference-depth.png") as im:
        assert im.mode.startswith("I")
        depth_auto = np.asarray(im, dtype=np.float64) / 65535
    assert depth_auto.max() == pytest.approx(1.0) and depth_auto.min() == 0.0

    out = tmp_path / "given"
    assert launch.main(["3d", "--output", str(out), "--depth", str(tmp_path / "depth.png"), "--depth-weight", "2",
                        *fast]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["depth"] == str(tmp_path / "depth.png") and config["zero123"]["lambda_ref_depth"] == 2.0
    with Image.open(out / "reference-depth.png") as im, Image.open(out / "reference-mask.png") as m:
        given = np.asarray(im, dtype=np.float64) / 65535
        on = np.asarray(m) > 127
    cols = np.nonzero(on.any(0))[0]
    row = on.shape[0] // 2
    assert given[row, cols[-3]] > given[row, cols[2]] + 0.5  # the ramp, framed
    before = (out / "reference-depth.png").read_bytes()
    assert launch.main(["3d", "--output", str(out), "--resume", "--depth", "off", *fast]) == 2
    err = capsys.readouterr().err
    # --depth off sets the depth weight to 0 itself: the refusal named --depth-weight too, which the user had not given
    assert "was made with a different --depth (its" in err and "--depth-weight" not in err, err
    assert (out / "reference-depth.png").read_bytes() == before

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "small.png")
    assert launch.main(["3d", "--output", str(tmp_path / "bad"), "--depth", str(tmp_path / "small.png"), *fast]) == 2
    err = capsys.readouterr().err
    assert "is 32x32 but the input image is 64x64" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(tmp_path / "flat.png")  # e.g. a mask passed by mistake
    assert launch.main(["3d", "--output", str(tmp_path / "bad"), "--depth", str(tmp_path / "flat.png"), *fast]) == 2
    err = capsys.readouterr().err
    assert "is flat over the object" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_the_loss_steers_the_fit_from_a_random_quarter_of_the_reference_rays_too(one_thread):
    """The mini preset renders a random quarter of the reference view's rays per step (``ref_ray_fraction``): the
    depth loss on that path sinks the disc into the dish as on the whole view."""
    plain = _fit(0.0, dish=True, fraction=0.25)
    dished = _fit(REF_DEPTH_WEIGHT, dish=True, fraction=0.25)
    assert plain < 0.0 and dished > plain + 0.8, (plain, dished)


def test_read_nearness_takes_32_bit_depth_images_by_their_range(tmp_path):
    """A 32-bit integer depth image of 0-150 came out 0-0.0023, one with negative values below 0 (the docstring
    promises [0, 1]); they are read by their range, as suite.images.to_8bit reads them."""
    from suite.depth import read_nearness

    ramp = np.tile(np.arange(32, dtype=np.int32), (24, 1))
    for values in (ramp * 5, ramp * 5 - 80):
        Image.fromarray(values, "I").save(tmp_path / "d32.tif")
        got = read_nearness(tmp_path / "d32.tif", (32, 24))
        assert got.min() == 0.0 and got.max() == 1.0
        assert np.allclose(got, (values - values.min()) / np.ptp(values), atol=1e-6)
