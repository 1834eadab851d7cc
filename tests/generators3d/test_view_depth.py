"""The random views' depth (``--view-depth-weight``, stage 2's ``lambda_view_depth``): the estimator's batched
reading of renders, a stage that the loss steers towards what the estimator reads, and the config's rules."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from generators3d.config import REF_DEPTH_WEIGHT, NeRFConfig, StageConfig, ThreeDConfig

from .test_ref_depth import disc_object


def test_the_estimator_reads_a_batch_of_renders_as_it_reads_each_image():
    from suite.depth import load_depth_estimator
    from suite.testing import tiny_depth_dir

    est = load_depth_estimator(tiny_depth_dir())
    rgb = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    batch = est.nearness(rgb)
    assert batch.shape == (3, 40, 40)
    for i in range(3):  # item by item as the PIL path reads it (no mixing of the batch's images)
        one = est(Image.fromarray((rgb[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        assert np.abs(batch[i].numpy() - one).max() < 1e-4 * max(1.0, float(np.abs(one).max()))
    assert float((batch[0] - batch[1]).abs().max()) > 1e-6
    # read at another size (the model's own), returned at the renders' size
    resized = est.nearness(rgb[:, :, :20, :20], size=64)
    assert resized.shape == (3, 20, 20)
    up = torch.nn.functional.interpolate(rgb[:, :, :20, :20], (64, 64), mode="bilinear", antialias=True,
                                         align_corners=False)
    want = torch.nn.functional.interpolate(est.nearness(up)[:, None], (20, 20), mode="bilinear", antialias=True,
                                           align_corners=False)[:, 0]
    assert float((resized - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))


STEPS = 30


class _TiltReader:
    """A stand-in estimator that reads every render as a surface whose lower rows are nearer (whatever it shows),
    and records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, rgb):
        self.seen.append((tuple(rgb.shape), float(rgb.min()), float(rgb.max()), rgb.requires_grad))
        rows = torch.arange(rgb.shape[-2], dtype=torch.float32)[None, :, None]
        return rows.expand(rgb.shape[0], rgb.shape[-2], rgb.shape[-1]).clone()


def _tilt_after(lambda_view_depth):
    """Fit a fresh field to a grey disc (colour and silhouette, one SDS-free random-view term) with the view-depth
    loss read by :class:`_TiltReader`; returns the mean correlation, over four fixed views, of the rendered surface
    nearness with the row index (the tilt the reader says), and the reader."""
    from generators3d.cameras import orbit_cameras
    from generators3d.config import CameraConfig
    from generators3d.nerf import Background, NeRFField
    from generators3d.render import render
    from generators3d.stage import Reference, SDSTerm, surface_depth, train_stage
    from suite.depth import pearson

    size = 32
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = ((((x - size / 2) ** 2 + (y - size / 2) ** 2).sqrt() / (size * 0.3)) < 1).float()[None, None]
    rgb = torch.where(mask.bool(), torch.full((1, 3, size, size), 0.5), torch.ones(1, 3, size, size))
    torch.manual_seed(0)
    field = NeRFField(NeRFConfig(n_levels=6, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5, hidden=16,
                                 n_hidden_layers=1, samples_per_ray=32))
    bg = Background()
    no_sds = SDSTerm("none", 1.0, lambda im, cams, g: {"loss_sds": im.sum() * 0.0, "min_step": 0, "max_step": 0})
    stage = StageConfig(steps=STEPS, lr=0.02, milestones=(0,), resolutions=(16,), batch_sizes=(2,), ref_resolution=32,
                        lambda_view_depth=lambda_view_depth)
    camera = CameraConfig(elevation_range=(0.0, 30.0))
    reader = _TiltReader()
    infos = []
    train_stage(field, bg, stage, camera, Reference(rgb, mask), [no_sds], generator=torch.Generator().manual_seed(0),
                view_depth=reader if lambda_view_depth else None, progress=lambda i, n, info: infos.append(info))
    cams = orbit_cameras(torch.full((4,), 15.0), torch.tensor([30.0, 120.0, 210.0, 300.0]), torch.full((4,), 3.8),
                         torch.full((4,), 20.0))
    with torch.no_grad():
        out = render(field, bg, cams, 24)
    near = -surface_depth(out["depth"], out["opacity"])[..., 0]
    rows = torch.arange(24, dtype=torch.float32)[None, :, None].expand(4, 24, 24)
    return float(pearson(near, rows, out["opacity"][..., 0] > 0.5).mean()), reader, infos


def test_the_view_depth_loss_steers_the_random_views_towards_what_the_estimator_reads(one_thread):
    """Without the loss the disc's fit says nothing about its tilt; with it, held-out views' rendered depth follows
    the estimator's reading (lower rows nearer). The estimator sees each step's renders, detached, in [0, 1]."""
    plain, _, _ = _tilt_after(0.0)
    tilted, reader, infos = _tilt_after(10.0)
    assert tilted > plain + 0.3, (plain, tilted)
    assert len(reader.seen) == STEPS and all(s == (2, 3, 16, 16) and 0 <= lo <= hi <= 1 and not grad
                                          for s, lo, hi, grad in reader.seen)
    losses = [i["loss_view_depth"] for i in infos]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses


def test_train_stage_refuses_a_view_depth_weight_without_an_estimator():
    from generators3d.config import CameraConfig
    from generators3d.nerf import Background, NeRFField
    from generators3d.stage import train_stage

    field = NeRFField(NeRFConfig(n_levels=2, log2_hashmap_size=10, hidden=8, n_hidden_layers=1, samples_per_ray=8))
    with pytest.raises(ValueError, match="depth estimator"):
        train_stage(field, Background(), StageConfig(steps=1, lambda_view_depth=1.0), CameraConfig(), None, [],
                    generator=torch.Generator().manual_seed(0))


def test_config_view_depth_defaults_and_refusals(tmp_path):
    mini = ThreeDConfig(preset="mini", prompt="a vase").resolved()
    assert mini.zero123.lambda_view_depth == 0.0 and mini.refine.lambda_view_depth == 0.0  # experimental: off
    on = ThreeDConfig(preset="mini", prompt="a vase", view_depth_weight=10).resolved()
    assert on.zero123.lambda_view_depth == 10.0 and on.refine.lambda_view_depth == 0.0
    assert on.resolved().zero123.lambda_view_depth == 10.0  # a resolved config replays as it is
    assert ThreeDConfig(preset="full", prompt="a vase", depth="auto",
                        view_depth_weight=3).resolved().zero123.lambda_view_depth == 3.0
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="--view-depth-weight a finite number"):
            ThreeDConfig(preset="mini", prompt="a vase", view_depth_weight=bad).resolved()
    for preset, depth in (("mini", "off"), ("full", None)):  # nothing to read the views with
        with pytest.raises(ValueError, match="--view-depth-weight needs --depth auto"):
            ThreeDConfig(preset=preset, prompt="a vase", depth=depth, view_depth_weight=5.0).resolved()
    # with the user's depth image the depth model still reads the random views; with those off it reads nothing
    given = ThreeDConfig(preset="mini", image="a.png", depth="d.png", depth_model="x/y", view_depth_weight=1).resolved()
    assert given.zero123.lambda_view_depth == 1.0 and given.depth_model == "x/y"
    with pytest.raises(ValueError, match="drop --depth-model, or add --view-depth-weight"):
        ThreeDConfig(preset="mini", image="a.png", depth="d.png", depth_model="x/y").resolved()
    # a weight set on a stage (the Python API, --config) is checked as the flag is
    from dataclasses import replace

    for bad in (-1.0, float("inf"), "10"):
        for stage in ("zero123", "refine"):
            cfg = ThreeDConfig(preset="mini", prompt="a vase")
            cfg = replace(cfg, **{stage: replace(getattr(cfg.resolved(), stage), lambda_view_depth=bad)})
            with pytest.raises(ValueError, match=f"{stage}.lambda_view_depth is"):
                cfg.resolved()
    # a run's config.json from before the view depth replays without it
    old = dict(mini.to_dict(), threads=2)
    del old["view_depth_weight"], old["zero123"]["lambda_view_depth"], old["refine"]["lambda_view_depth"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    replay = ThreeDConfig.load(path).resolved()
    assert replay.depth == "auto" and replay.zero123.lambda_ref_depth == REF_DEPTH_WEIGHT
    assert replay.zero123.lambda_view_depth == 0.0


def test_a_tiny_run_reads_its_views_depth_with_the_depth_model(tmp_path, capsys, one_thread, monkeypatch):
    """Through the CLI: --view-depth-weight on the tiny preset loads its depth model once, which reads stage 2's
    renders at every step (batches of the stage's views at its render sizes) and the reference view; the run
    records the weight; --resume with another weight is refused."""
    import launch
    from suite import depth as depth_mod

    calls = []
    original = depth_mod.DepthEstimator.nearness

    def spy(self, rgb, size=None):
        calls.append((tuple(rgb.shape), size))
        return original(self, rgb, size)

    monkeypatch.setattr(depth_mod.DepthEstimator, "nearness", spy)
    disc_object(tmp_path)
    fast = ["--preset", "tiny", "--image", str(tmp_path / "obj.png"), "--zero123-steps", "3", "--refine-steps", "0",
            "--mesh-resolution", "24", "--preview-frames", "1", "--formats", "glb", "--depth", "auto"]
    out = tmp_path / "run"
    assert launch.main(["3d", "--output", str(out), "--view-depth-weight", "5", *fast]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["zero123"]["lambda_view_depth"] == 5.0
    tiny = ThreeDConfig(preset="tiny", image="x.png").resolved().zero123
    res, batch = tiny.resolutions[0], tiny.batch_sizes[0]
    assert calls[0][0][0] == 1 and calls[0][1] is None  # the reference view, once
    assert calls[1:] == [((batch, 3, res, res), tiny.ref_resolution)] * 3  # then the stage's views at every step
    assert launch.main(["3d", "--output", str(out), "--resume", "--view-depth-weight", "1", *fast]) == 2
    err = capsys.readouterr().err
    assert "was made with a different --view-depth-weight" in err and "Traceback" not in err
    # with the user's depth image the model reads only the views (the reference's depth is the file's)
    disc, xx = disc_object(tmp_path)
    Image.fromarray((np.where(disc, (xx - 10) / 32.0, 0.0) * 65535).round().astype(np.uint16)).save(tmp_path / "d.png")
    calls.clear()
    given = [*fast[:-1], str(tmp_path / "d.png"), "--view-depth-weight", "5"]
    assert launch.main(["3d", "--output", str(tmp_path / "given"), *given]) == 0, capsys.readouterr().err
    assert calls == [((batch, 3, res, res), tiny.ref_resolution)] * 3
