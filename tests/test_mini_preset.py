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
from tests.common import run_launch

PROMPTS = [(c, s) for s in W.SHAPES for c in ("red", "blue")]


@pytest.fixture(scope="module")
def mini_pipe():
    from suite.presets import build_pipeline

    return build_pipeline("mini")  # the porcelain domain, the shipped folders, through suite.models


@pytest.fixture(scope="module")
def judge():
    return assets.load_judge()


def _alignment(pipe, judge):
    imgs = pipe([f"a photo of a {c} {s}" for c, s in PROMPTS], use_domain=False, control_weight=5.0, seed=0,
                num_inference_steps=15).images  # one batch: four times faster on a CPU than one call per prompt
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


def test_a_domain_of_your_own_gets_the_mini_worlds_weights_not_the_automatic_ones(judge, tmp_path):
    """A domain of your own on the mini world (`train --preset mini`, or a shipped model under another name) ran on
    the paper's automatic weights: w_d = 7.4-7.6 for a domain of 39 cup renders made every image the same smear,
    and with the porcelain model named "my porcelain", prompts for a cup, a ball and a box kept their shape in 0.10 of
    96 images. It now gets the porcelain preset's guidance (0.99 of the same 96, 0.94 porcelain:
    suite/miniworld/assets.py); and a
    model given without --domain is its own domain, not the preset's default."""
    import shutil

    from suite.presets import build_pipeline, model_refs

    own = tmp_path / "my-porcelain"
    shutil.copytree(assets.model_refs("porcelain")["domain"], own)
    pipe = build_pipeline("mini", "my porcelain", domain_model=str(own))
    dom = pipe.domain
    assert (dom.name, dom.domain_weight, dom.control_weight, dom.rule) == ("my porcelain", 1.0, 7.0, assets.MINI_RULE)
    pred = judge.predict(assets.images_to_tensor(pipe("a photo of a cup", num_images_per_prompt=16, seed=0,
                                                      num_inference_steps=20).images))
    assert pred["shape"].count("cup") >= 12 and sum(pred["porcelain"]) >= 12, pred  # automatic: 2 cups of 16
    meta = json.loads((own / "nulltext.json").read_text())
    (own / "nulltext.json").write_text(json.dumps({**meta, "domain": "glaze"}))
    assert model_refs("mini", None, domain_model=str(own))["domain_obj"].name == "glaze"  # not "porcelain"
    full = model_refs("full", "my porcelain", domain_model=str(own))["domain_obj"]  # real weights: the paper's rule
    assert (full.domain_weight, full.control_weight, full.rule) == (None, None, None)
    # a face model given by its folder (a retrained face domain) keeps face's recommendations, not porcelain's
    face = model_refs("mini", None, domain_model=assets.model_refs("face")["domain"])["domain_obj"]
    assert (face.name, face.domain_weight, face.control_weight, face.rule, face.framing) == ("face", 1.0, 5.0, None,
                                                                                            "face")


def test_unknown_words_are_fine(mini_pipe):
    out = mini_pipe("a teapot with dragons", num_images_per_prompt=1, seed=0, num_inference_steps=4)
    assert np.asarray(out.images[0]).std() > 5  # an image, no crash


# ---------------------------------------------------------------------------------------------------------
# every subcommand on --preset mini
def test_generate_mini(tmp_path):
    out = tmp_path / "cup.png"
    r = run_launch("generate", "--preset", "mini", "--prompt", "a cup", "--steps", "10", "--output", str(out))
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
    r = run_launch("edit", "--preset", "mini", "--domain", "porcelain", "--image", str(src), "--strength", "0.9",
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
    r = run_launch("train", "--preset", "mini", "--domain", "porcelain", "--data", str(tmp_path / "data"), "--output",
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
    r = run_launch("3d", "--preset", "mini", "--prompt", "a vase with dragons", "--zero123-steps", "4", "--refine-steps",
                   "2", "--mesh-resolution", "24", "--preview-frames", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    image = Image.open(out / "image.png")
    assert image.size == (64, 64)
    # Stage 1 is the in-domain image: a vase, drawn with the domain term (the preset's split rule makes porcelain
    # 3 times in 5 at this prompt, so one image's reading is not the bound): more porcelain than the base's own.
    from suite.presets import build_pipeline

    judge = assets.load_judge()
    base = build_pipeline("mini")("a vase with dragons", use_domain=False, num_inference_steps=25, seed=0).images
    p_stage1, p_base = judge.porcelain_probability(assets.images_to_tensor([image, *base])).tolist()
    assert judge.predict(assets.images_to_tensor([image]))["shape"] == ["vase"] and p_stage1 > p_base + 0.05, \
        (p_stage1, p_base)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages_run"] == ["image", "zero123", "refine"] and summary["faces"] > 0
    assert any("'dragons'" in w for w in summary["warnings"]) and "'dragons'" in r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["zero123"]["resolutions"] == [32, 48] and config["zero123"]["ref_ray_fraction"] == 0.25
    assert config["zero123"]["lambda_depth_smooth"] == 10000.0 and config["refine"]["lambda_depth_smooth"] == 0.0
    assert config["nerf"]["geometry"] == "sdf" and config["zero123"]["lambda_eikonal"] == 1.0 == config["refine"][
        "lambda_eikonal"]
    assert config["zero123"]["eikonal_points"] == 1024 == config["refine"]["eikonal_points"]
    assert config["refine"]["view_dependent_prompting"] is False and config["export"]["smooth"] == 15
    # the reference view's depth, estimated by the mini world's depth model: nearer at the vase's front than at its
    # silhouette (a convex object's rim recedes)
    assert config["depth"] == "auto" and config["zero123"]["lambda_ref_depth"] == 10.0
    with Image.open(out / "reference-depth.png") as im, Image.open(out / "reference-mask.png") as m:
        near = np.asarray(im, dtype=np.float64) / 65535
        on = np.asarray(m.resize(im.size)) > 127
    rows, cols = np.nonzero(on)
    centre = near[rows.min():rows.max() + 1, (cols.min() + cols.max()) // 2]
    edges = np.concatenate([near[r, [cols[rows == r].min(), cols[rows == r].max()]] for r in np.unique(rows)])
    assert centre[on[rows.min():rows.max() + 1, (cols.min() + cols.max()) // 2]].mean() > edges.mean() + 0.1


def test_unknown_domain_on_mini_is_one_sentence(tmp_path):
    r = run_launch("generate", "--preset", "mini", "--domain", "animal", "--output", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: the mini preset has the domains porcelain and face")
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
        assert core.list_domain_names(cfg) == ["porcelain", "face"]
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
            assert sorted(r[0] for r in data) == ["face", "porcelain"] and all(r[4] == "found" for r in data)
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
    r = run_launch("generate", "--preset", "mini", "--prompt", "a photo of a cup", "--steps", "10", "--seed", "3",
                   "--output", str(out))
    assert r.returncode == 0, r.stderr
    cli = np.asarray(Image.open(out), dtype=int)
    assert np.abs(cli - np.asarray(default.images[0], dtype=int)).max() <= 1  # the same image (threads may differ)
    assert np.abs(cli - np.asarray(auto.images[0], dtype=int)).mean() > 3


# ---------------------------------------------------------------------------------------------------------
# the face domain
@pytest.fixture(scope="module")
def face_pipe():
    from suite.presets import build_pipeline

    return build_pipeline("mini", domain="face")


def test_face_domain_samples_are_faces_in_the_domains_look(face_pipe, judge):
    """Unconditional samples of the shipped face model are judged faces in the photo look, close to the domain's
    photos in the judge's features (KID against 32 held-out domain renders); the base's own faces are not in that
    look; the same model with random weights is far from the domain (the judge alone reads its blur as a photo
    face: the distance is the bound random weights fail)."""
    from suite.metrics import kid_with_se
    from training.miniworld import render_set

    ref = judge.embed(assets.images_to_tensor(
        [Image.fromarray(a) for a in render_set("face-domain", 32, seed=4242, workers=1)["images"]])).numpy()
    kw = dict(num_images_per_prompt=8, seed=0, num_inference_steps=15)

    def kid(images):
        return kid_with_se(judge.embed(assets.images_to_tensor(images)).numpy(), ref)[0]

    own = face_pipe(None, domain_weight=1.0, **kw).images
    pred = judge.predict(assets.images_to_tensor(own))
    assert pred["shape"].count("face") >= 6 and sum(pred["photo"]) >= 6, pred
    assert kid(own) < 70  # measured 17 +- 20 (8 samples); random weights 129, the base's faces 199
    base = face_pipe("a photo of a face", use_domain=False, control_weight=5.0, **kw).images
    pred = judge.predict(assets.images_to_tensor(base))
    assert pred["shape"].count("face") >= 6 and sum(pred["photo"]) <= 2, pred
    trained = {k: v.clone() for k, v in face_pipe.domain_unet.state_dict().items()}
    try:
        torch.manual_seed(0)
        for p in face_pipe.domain_unet.parameters():
            p.data.normal_(0, 0.02)
        assert kid(face_pipe(None, domain_weight=1.0, **kw).images) > 70
    finally:
        face_pipe.domain_unet.load_state_dict(trained)


@pytest.fixture(scope="module")
def glasses_edit(tmp_path_factory, judge):
    """A face photo of the mini world (256 px, the face off-centre, a room behind, no glasses) edited as a user
    would, with the renderer's landmarks, "wearing glasses" at strength 0.7. Returns the judge's readings of the
    aligned face before and after, and the photo and the edit."""
    from bench.miniworld.face_photos import write_photos
    from editing.align import extract, face_region
    from editing.faces import read_landmarks
    from suite.miniworld.judge import face_attributes

    tmp_path = tmp_path_factory.mktemp("glasses")
    (rec,) = write_photos(tmp_path, 1, seed=GLASSES_PHOTO_SEED, frequencies={"glasses": 0.0, "a hat": 0.0})
    out = tmp_path / "glasses.png"
    r = run_launch("edit", "--preset", "mini", "--domain", "face", "--image", rec["image"], "--landmarks",
                   rec["landmarks"], "--prompt", "wearing glasses", "--strength", "0.7", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "'a photo of a face wearing glasses'" in r.stderr  # edit warns about the prompt's form, as generate does
    (face,) = read_landmarks(rec["landmarks"]).faces
    region = face_region(face, 64)

    def read(path):
        crop = extract(np.asarray(Image.open(path).convert("RGB")), region)
        return face_attributes(judge.predict(assets.images_to_tensor([Image.fromarray(crop)])), 0)

    return read(rec["image"]), read(out), rec["image"], out, region


def test_edit_mini_face_keeps_the_rest_of_the_face_and_the_photo(glasses_edit):
    """The edit goes through detect (the given landmarks) -> align -> edit -> paste: the face's other readings are
    unchanged, the crop changed, and every pixel outside it is bit-identical."""
    before, after, src, out, region = glasses_edit
    assert before - {"glasses"} == after - {"glasses"}, (before, after)
    a, b = np.asarray(Image.open(src).convert("RGB")), np.asarray(Image.open(out).convert("RGB"))
    x0, y0, x1, y1 = region.bbox(Image.open(out).size)
    outside = np.ones(a.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (a[outside] == b[outside]).all() and (a[~outside] != b[~outside]).any()


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="measured (python -m bench.miniworld.face_edit, docs/mini-world.md): on the mini world "
                          "'wearing glasses', without the 'face' its captions always name, adds glasses to none of "
                          "51 photos at strength 0.7 ('a photo of a face wearing glasses': 11 of 51, but 5 of 50 "
                          "after a hat prompt too); strict, so a change shows")
def test_edit_mini_face_adds_glasses(glasses_edit):
    before, after, *_ = glasses_edit
    assert "glasses" not in before and "glasses" in after, (before, after)


GLASSES_PHOTO_SEED = 3
