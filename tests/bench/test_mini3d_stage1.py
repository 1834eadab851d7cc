"""bench.mini3d_stage1 measures the image the 3D flow itself draws in stage 1 at a given --image-domain-weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


class Stop(Exception):
    pass


def test_the_bench_draws_the_flows_stage_1_image_and_the_weight_changes_it(tmp_path):
    from bench.mini3d_stage1 import measure, pipeline
    from generators3d import ThreeDConfig, run_text_to_3d
    from suite.miniworld import assets
    from suite.miniworld.assets import MINI_RULE

    def stop_after_stage_1(stage, done, total, info):
        if stage == "zero123":
            raise Stop

    cfg = ThreeDConfig(preset="mini", prompt="a cup", output=str(tmp_path / "run"), image_domain_weight=1.5,
                       device="cpu")
    with pytest.raises(Stop):
        run_text_to_3d(cfg, progress=stop_after_stage_1)
    flow = np.asarray(Image.open(tmp_path / "run" / "image.png"), np.float32) / 255
    pipe = pipeline(cfg.resolved())
    judge = assets.load_judge()
    row, x = measure(pipe, judge, "a cup", 0, "1.5", cfg.resolved())
    assert np.abs(x.permute(1, 2, 0).numpy() - flow).max() <= 1 / 255 + 1e-6  # the same image (8-bit rounding)
    _, default = measure(pipe, judge, "a cup", 0, "recommended", cfg.resolved())
    assert np.abs(default.permute(1, 2, 0).numpy() - flow).mean() > 0.01  # the weight reached stage 1
    assert set(row) == {"look", "shape_kept", "porcelain"} and 0 <= row["look"] < 0.3
    # --rules: the mini world's own rule written out draws the default image, a clean-end ramp another one
    _, same = measure(pipe, judge, "a cup", 0, "recommended", cfg.resolved(), MINI_RULE)
    assert torch.equal(same, default)
    _, ramped = measure(pipe, judge, "a cup", 0, "recommended", cfg.resolved(),
                        "domain=0-0.7, domain-ramp=3:0.5, control=0.7-1")
    assert (ramped - default).abs().mean() > 0.01


def test_a_bad_rule_is_one_sentence_before_any_model_loads(capsys):
    from bench.mini3d_stage1 import main

    assert main(["--output", "unused", "--rules", "domain=0.7-0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rules 'domain=0.7-0.2':") and err.count("\n") == 1 and "Traceback" not in err
