"""The mini depth estimator's training pieces: the batch-norm statistics of the EMA copy it ships, and adding its
step to a built world."""

import pytest
import torch


def test_recalibration_gives_the_emas_batch_norms_the_statistics_of_their_inputs():
    """An EMA copy moves only parameters, so its batch norms keep their initial statistics (mean 0, variance 1) and
    the shipped model read depth at 0.78 correlation instead of 0.96 (docs/mini-world.md). After recalibration the
    first batch norm's running mean is the mean of what reaches it over all the images, and every other layer is in
    eval mode meanwhile (stochastic depth off: two recalibrations under different random seeds agree exactly)."""
    from transformers import GLPNConfig, GLPNForDepthEstimation

    from training.mini_depth import GLPN_CONFIG, recalibrate_batch_norm

    torch.manual_seed(0)
    model = GLPNForDepthEstimation(GLPNConfig(**{**GLPN_CONFIG, "drop_path_rate": 0.5})).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(float(m.running_mean.abs().max()) == 0.0 for m in norms)
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    order, seen = [], {}

    def hook(m, args):
        order.append(m)
        seen.setdefault(id(m), []).append(args[0].detach())

    hooks = [m.register_forward_pre_hook(hook) for m in norms]
    with torch.no_grad():
        model(pixel_values=images)  # inference's inputs (the first batch norm's do not depend on the others)
    for h in hooks:
        h.remove()
    first = order[0]
    recalibrate_batch_norm(model, images, batch=4)
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.allclose(first.running_mean, torch.cat(seen[id(first)]).mean((0, 2, 3)), atol=1e-6)
    assert all(float(m.running_mean.abs().max()) > 0.0 for m in norms)
    stats = [m.running_var.clone() for m in norms]
    torch.manual_seed(123)
    recalibrate_batch_norm(model, images, batch=4)
    assert all(torch.equal(a, m.running_var) for a, m in zip(stats, norms))


def test_adding_the_depth_step_locks_the_cache_and_takes_the_worlds_seed(tmp_path, monkeypatch):
    """``python -m training.mini_depth`` writes into the build's cache: it holds the build's lock (a build running
    beside it undid its step) and trains with the world's own seed from its manifest (it always used 0)."""
    import json

    from suite.checks import UserError
    from suite.files import output_lock
    from suite.miniworld import assets
    from training import mini_depth

    world = tmp_path / "world"
    world.mkdir()
    (world / assets.MANIFEST).write_text(json.dumps({"seed": 3, "seconds": {}, "quality": {}}))
    seen = []

    class Stop(Exception):
        pass

    def build_depth(stage, work, objects, steps, seed):
        seen.append(seed)
        with pytest.raises(UserError, match="another run"), output_lock(work, "--work"):
            pass
        raise Stop

    monkeypatch.setattr(mini_depth, "build_depth", build_depth)
    with pytest.raises(Stop):
        mini_depth.add_to_models(world, tmp_path / "work", "quick")
    assert seen == [3]


@pytest.mark.parametrize("tool", ["training.miniworld", "training.mini_depth"])
def test_the_build_tools_do_not_tell_users_to_install_torchvision(tool):
    """Run as tools they printed transformers' import-time notice "Install torchvision to use the default backend",
    which breaks diffusers beside this torch (README); launch.py keeps it out of every subcommand."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    out = subprocess.run([sys.executable, "-m", tool, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "usage:" in out.stdout
    assert "torchvision" not in out.stdout + out.stderr


def test_a_cached_depth_model_of_another_size_is_trained_again_and_a_failed_measure_leaves_the_world(tmp_path,
                                                                                                        monkeypatch):
    """A full `mini_depth` run after a quick build installed the quick, 10-step model as the full one (the cache was
    reused whatever it was trained with); a kill while the new model was measured left it beside the old manifest,
    and every mini command then refused the models as corrupt."""
    import json

    import numpy as np

    from suite.miniworld import assets
    from training import mini_depth

    trained = []
    monkeypatch.setattr(mini_depth, "render_depth_set", lambda n, seed: {"images": np.zeros((n, 2, 2, 3), np.uint8)})

    def save(model, folder):
        (folder / "config.json").write_text(json.dumps({"steps": model}))

    monkeypatch.setattr(mini_depth, "train_depth", lambda data, steps, seed=0: trained.append(steps) or steps)
    monkeypatch.setattr(mini_depth, "save_depth_model", save)
    stage, work = tmp_path / "work" / "stage", tmp_path / "work"
    assert mini_depth.build_depth(stage, work, 4, 10) is False and trained == [10]
    assert mini_depth.build_depth(stage, work, 4, 10) is True and trained == [10]  # the build resumes
    assert mini_depth.build_depth(stage, work, 4, 200) is False and trained == [10, 200]
    assert json.loads((stage / "depth" / "config.json").read_text()) == {"steps": 200}

    world = tmp_path / "world"
    (world / "depth").mkdir(parents=True)
    (world / "depth" / "config.json").write_text(json.dumps({"steps": "shipped"}))
    (world / assets.MANIFEST).write_text(json.dumps({"seed": 0, "seconds": {"depth": 1379}, "quality": {}}))

    def killed(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "measure_depth", killed)
    monkeypatch.setitem(mini_depth.SIZES, "quick", {**mini_depth.SIZES["quick"], "objects": 4, "steps": 10})
    with pytest.raises(KeyboardInterrupt):
        mini_depth.add_to_models(world, work, "quick")
    assert json.loads((world / "depth" / "config.json").read_text()) == {"steps": "shipped"}  # as its manifest says
