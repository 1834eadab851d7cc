"""The shipped mini-world models: loaded through the real loading code, measured by the judge (a bound that random weights fail), and every subcommand (and the app) on ``--preset mini``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite.miniworld import assets
from suite.miniworld import world as W
from tests.common import run_cli

PROMPTS = [(c, s) for s in W.SHAPES for c in ("red", "blue")]


@pytest.fixture(scope="module")
def mini_pipe():
    from suite.presets import build_pipeline

    return build_pipeline("mini")  # the porcelain domain, the shipped folders, through suite.models


@pytest.fixture(scope="module")
def judge():
    return assets.load_judge()


def _alignment(pipe, judge, **kw):
    imgs = []
    for i, (c, s) in enumerate(PROMPTS):
        imgs += pipe(f"a photo of a {c} {s}", use_domain=False, control_weight=5.0, seed=i, num_inference_steps=15, **kw).images
    pred = judge.predict(assets.images_to_tensor(imgs))
    shape = np.mean([p == s for p, (_, s) in zip(pred["shape"], PROMPTS)])
    colour = np.mean([p == c for p, (c, _) in zip(pred["colour"], PROMPTS)])
    return shape, colour


def test_base_follows_the_text_and_random_weights_do_not(mini_pipe, judge):
    shape, colour = _alignment(mini_pipe, judge)
    assert shape >= 0.8 and colour >= 0.8, (shape, colour)  # documented: >= 0.95 on 70 images (MANIFEST.json)
    # The same measurement on the same architecture with random weights stays far below the bound.
    trained = {k: v.clone() for k, v in mini_pipe.unet.state_dict().items()}
    try:
        torch.manual_seed(0)
        for p in mini_pipe.unet.parameters():
            p.data.normal_(0, 0.02)
        shape_r, colour_r = _alignment(mini_pipe, judge)
    finally:
        mini_pipe.unet.load_state_dict(trained)
    assert shape_r < 0.5 and colour_r < 0.5, (shape_r, colour_r)


def test_domain_model_makes_porcelain_and_keeps_the_shape(mini_pipe, judge):
    dom_w, ctl_w = mini_pipe.domain.domain_weight, mini_pipe.domain.control_weight  # the preset's recommended
    kw = dict(num_images_per_prompt=4, seed=0, num_inference_steps=15)
    base = mini_pipe(None, use_domain=False, **kw).images
    dom = mini_pipe(None, domain_weight=dom_w, **kw).images
    assert sum(judge.predict(assets.images_to_tensor(base))["porcelain"]) == 0
    assert sum(judge.predict(assets.images_to_tensor(dom))["porcelain"]) >= 3
    cups = mini_pipe("a photo of a cup", domain_weight=dom_w, control_weight=ctl_w, **kw).images
    pred = judge.predict(assets.images_to_tensor(cups))
    assert pred["shape"].count("cup") >= 2 and sum(pred["porcelain"]) >= 3, pred


def test_unknown_words_are_fine(mini_pipe):
    out = mini_pipe("a teapot with dragons", num_images_per_prompt=1, seed=0, num_inference_steps=4)
    assert np.asarray(out.images[0]).std() > 5  # an image, no crash


# ---------------------------------------------------------------------------------------------------------
# every subcommand on --preset mini
def test_generate_mini(tmp_path):
    out = tmp_path / "cup.png"
    r = run_cli("generate", "--preset", "mini", "--prompt", "a cup", "--steps", "10", "--output", str(out))
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.size == (64, 64)
    pred = assets.load_judge().predict(assets.images_to_tensor([im]))
    assert pred["porcelain"] == [True], pred


def test_edit_mini_turns_a_render_into_porcelain(tmp_path):
    from suite.miniworld.render import render_view

    obj = W.make_object("vase", "red", "stripes")
    img = render_view(obj, 10.0, 0.0).rgb[0]
    src = tmp_path / "render.png"
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    out = tmp_path / "edited.png"
    r = run_cli("edit", "--preset", "mini", "--domain", "porcelain", "--image", str(src), "--strength", "0.9",
                "--steps", "12", "--output", str(out))
    assert r.returncode == 0, r.stderr
    judge = assets.load_judge()
    before = judge.predict(assets.images_to_tensor([Image.open(src)]))
    after = judge.predict(assets.images_to_tensor([Image.open(out)]))
    assert before["porcelain"] == [False] and after["porcelain"] == [True], (before, after)


def test_train_mini_fine_tunes_from_the_mini_base(tmp_path):
    from training.miniworld import render_set, write_image_folder

    write_image_folder(render_set("domain", 16, seed=5, workers=1)["images"], tmp_path / "data")
    out = tmp_path / "model"
    r = run_cli("train", "--preset", "mini", "--domain", "porcelain", "--data", str(tmp_path / "data"), "--output",
                str(out), "--max-steps", "3", "--batch-size", "4", "--text-init-steps", "2", "--text-init-images", "8",
                "--checkpoint-steps", "3")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "nulltext.json").read_text())
    assert meta["domain"] == "porcelain" and meta["base_model"].endswith(os.path.join("models", "sd"))
    assert "--preset mini" in r.stdout


def test_3d_mini_runs_end_to_end(tmp_path):
    """The whole flow on the mini preset (its own Zero-1-to-3 in stage 2): a porcelain stage-1 image, every
    file, a prompt outside the world's words warned about in the log and in summary.json."""
    out = tmp_path / "vase"
    r = run_cli("3d", "--preset", "mini", "--prompt", "a vase with dragons", "--zero123-steps", "4", "--refine-steps",
                "2", "--mesh-resolution", "24", "--preview-frames", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    image = Image.open(out / "image.png")
    assert image.size == (64, 64)
    assert assets.load_judge().predict(assets.images_to_tensor([image]))["porcelain"] == [True]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages_run"] == ["image", "zero123", "refine"] and summary["faces"] > 0
    assert any("'dragons'" in w for w in summary["warnings"]) and "'dragons'" in r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["zero123"]["resolutions"] == [32, 64] and config["refine"]["view_dependent_prompting"] is False


def test_unknown_domain_on_mini_is_one_sentence(tmp_path):
    r = run_cli("generate", "--preset", "mini", "--domain", "face", "--output", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: the mini preset has one domain, porcelain")
    assert "Traceback" not in r.stderr


def test_app_on_mini_generates_porcelain(tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    from app import core
    from app.ui import build_app, launch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        cfg = core.AppConfig(preset="mini", output_dir=tmp_path / "out", default_steps=12)
        cfg.output_dir.mkdir()
        assert core.list_domain_names(cfg) == ["porcelain"]
        demo = build_app(cfg)
        _, url, _ = launch(demo, cfg, host="127.0.0.1", block=False)
        try:
            client = Client(url, verbose=False, download_files=str(tmp_path / "client"))
            gallery, text = client.predict(domain="porcelain", prompt="a photo of a cup", seed=0, num=2,
                                           api_name="/generate")
            paths = [Path(item["image"]) if isinstance(item, dict) else Path(item[0]) for item in gallery]
            images = [Image.open(p) for p in paths]
            assert all(im.size == (64, 64) for im in images)
            pred = assets.load_judge().predict(assets.images_to_tensor(images))
            assert sum(pred["porcelain"]) >= 1, pred
            assert "(auto)" not in text  # the form starts from the preset's recommended weights, as the CLI
            rows = client.predict(api_name="/domains")
            data = rows["data"] if isinstance(rows, dict) else rows
            assert [r[0] for r in data] == ["porcelain"] and data[0][4] == "found"
        finally:
            demo.close()


def test_python_callers_get_the_presets_default_weights_and_the_cli_image(mini_pipe, tmp_path):
    """One default for the guidance, decided by the pipeline (issues 21, 22): ``pipe(prompt)`` from Python with no
    weights and no rule uses the preset's recommended ones (the mini porcelain: 1 and 7 under the split rule), as the
    CLI does, and gives the CLI's image; ``"auto"`` is the explicit choice of the paper's rule, ``"paper"`` drops the
    rule, and a request without a prompt gets the weights without the rule (the rule hands the noise range between
    the domain and a prompt)."""
    from suite.rules import format_rule, parse_rule

    kw = dict(num_inference_steps=10, seed=3)
    default = mini_pipe("a photo of a cup", **kw)
    assert default.weights == {"domain": 1.0, "control": 7.0}
    assert default.guidance_rule == format_rule(parse_rule(assets.MINI_RULE)) != "paper"
    paper = mini_pipe("a photo of a cup", guidance_rule="paper", **kw)
    assert paper.guidance_rule == "paper"
    assert np.abs(np.asarray(paper.images[0], dtype=int) - np.asarray(default.images[0], dtype=int)).mean() > 3
    assert mini_pipe(None, num_inference_steps=2).guidance_rule == "paper"
    # SDEdit: the rule hands the noise levels above 0.7 to the prompt; an edit that starts below them keeps it
    grey = Image.new("RGB", (64, 64), "grey")
    edit = dict(image=grey, num_inference_steps=10)
    assert mini_pipe("a photo of a cup", strength=0.6, **edit).guidance_rule == "paper"
    assert mini_pipe("a photo of a cup", strength=0.95, **edit).guidance_rule == default.guidance_rule
    assert mini_pipe.guidance_weights() == (1.0, 7.0) and mini_pipe.guidance_weights("auto", 2) == (None, 2.0)
    auto = mini_pipe("a photo of a cup", domain_weight="auto", control_weight="auto", **kw)
    assert auto.weights["domain"] != 1.0 and auto.weights["control"] != 7.0  # the norm rule's own numbers
    out = tmp_path / "cup.png"
    r = run_cli("generate", "--preset", "mini", "--prompt", "a photo of a cup", "--steps", "10", "--seed", "3",
                "--output", str(out))
    assert r.returncode == 0, r.stderr
    cli = np.asarray(Image.open(out), dtype=int)
    assert np.abs(cli - np.asarray(default.images[0], dtype=int)).max() <= 1  # the same image (threads may differ)
    assert np.abs(cli - np.asarray(auto.images[0], dtype=int)).mean() > 3
