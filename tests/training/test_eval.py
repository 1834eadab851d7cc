"""``launch.py eval`` (issue 25): methods side by side, the numbers gathered exactly across processes, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import launch
from suite.checks import UserError
from tests.common import accelerate_two_processes
from training.evaluate import EvalConfig, Method, evaluate, parse_method

PROMPTS = "a photo of a red cup\na photo of a blue box\n"
#: the CI-sized mini evaluation: 2 methods x (12 unconditional + 2 prompts x 2 seeds) images, 48 held-out renders;
#: one thread in each process (a convolution's float rounding depends on the thread count)
ARGS = ["--preset", "mini", "--num-images", "12", "--num-real", "48", "--seeds", "0-1", "--steps", "12", "--threads", "1"]


def test_methods_are_parsed_with_their_settings():
    assert parse_method("ours") == Method("ours", "ours")
    assert parse_method("base;control_weight=5") == Method("base", "base", control_weight=5.0)
    m = parse_method("split=ours;domain_weight=1.5;guidance_rule=domain=0-0.7, control=0.7-1")
    assert (m.label, m.domain_weight, m.guidance_rule) == ("split", 1.5, "domain=0-0.7, control=0.7-1")
    m = parse_method("ft=model:runs/ft/unet;caption=a photo of porcelain;control_weight=auto")
    assert (m.label, m.kind, m.model, m.caption, m.control_weight) == \
        ("ft", "model", "runs/ft/unet", "a photo of porcelain", "auto")
    assert parse_method("model:runs/ft-300/").label == "ft-300"  # the folder names the row
    assert parse_method("ft=model:runs/a=b").model == "runs/a=b"  # an '=' in the folder stays in the folder


@pytest.mark.parametrize("text,phrase", [
    ("sdxl", "is not a method"),
    ("model", "give the fine-tuned model's folder"),
    ("base:folder", "only model:FOLDER takes a folder"),
    ("ours;guidance=1", "is not a setting"),
    ("base;domain_weight=1", "does not take domain_weight"),
    ("ours;domain_weight=1;domain_weight=2", "twice"),
    ("ours;domain_weight=nan", "must be a number or auto"),
    ("a b=ours", "must be letters"),
    ("ours;guidance_rule=domain=2-3", "noise interval must lie within"),
])
def test_bad_methods_are_one_sentence(text, phrase):
    with pytest.raises(UserError, match=phrase):
        parse_method(text)


@pytest.fixture(scope="module")
def mini_eval(tmp_path_factory):
    """One process, in-process, as ``launch.py eval --preset mini ...`` runs it."""
    tmp = tmp_path_factory.mktemp("eval")
    prompts = tmp / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp / "one"
    assert launch.main(["eval", *ARGS, "--prompts-file", str(prompts), "--output", str(out)]) == 0
    return tmp, out, json.loads((out / "results.json").read_text())


def test_eval_mini_ours_is_closer_to_the_domain_than_the_base(mini_eval):
    """bench.miniworld's unconditional result, reproduced by the command: ours' images are nearer the held-out
    porcelain renders than the base's (KID with its standard error, FD, the judge's porcelain rate), while the base
    follows the prompts' shape and colour."""
    _, out, r = mini_eval
    base, ours = r["methods"]["base"], r["methods"]["ours"]
    gap = base["uncond"]["kid"] - ours["uncond"]["kid"]  # three standard errors of the difference
    assert gap > 3 * (ours["uncond"]["kid_se"] ** 2 + base["uncond"]["kid_se"] ** 2) ** 0.5, (ours, base)
    assert ours["uncond"]["fd"] < 0.5 * base["uncond"]["fd"]
    assert ours["uncond"]["porcelain"] >= 0.75 > 0.25 >= base["uncond"]["porcelain"]
    assert base["text"]["shape_alignment"] >= 0.75 and base["text"]["colour_alignment"] >= 0.75
    assert r["real"]["n"] == 48 and r["features"].startswith("judge")
    table = (out / "table.md").read_text()
    assert "| base |" in table and "| ours |" in table and "KID" in table
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,images,FD,KID")
    manifest = (out / "images" / "ours" / "uncond" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in manifest] == list(range(12))


def test_two_processes_give_the_same_images_and_numbers(mini_eval):
    tmp, one, r1 = mini_eval
    two = tmp / "two"
    p = accelerate_two_processes("eval", *ARGS, "--prompts-file", str(tmp / "prompts.txt"), "--device", "cpu",
                                 "--output", str(two))
    assert p.returncode == 0, p.stderr[-3000:]
    r2 = json.loads((two / "results.json").read_text())
    r1, r2 = dict(r1), dict(r2)
    r1["real"], r2["real"] = {**r1["real"], "folder": ""}, {**r2["real"], "folder": ""}
    f1, f2 = _flat(r1), _flat(r2)
    assert f1.keys() == f2.keys()
    for k in f1:  # features and moments are gathered exactly (the KIDs are equal to the bit); the Fréchet distance's
        # eigenvalues go through numpy's BLAS, whose thread count differs between the runs: equal to 1e-9
        assert f1[k] == (pytest.approx(f2[k], rel=1e-9, abs=0) if k.endswith("/fd") else f2[k]), k
    pngs = sorted(q.relative_to(one) for q in (one / "images").rglob("*.png"))
    assert len(pngs) == 2 * (12 + 4)
    for q in pngs:
        assert (one / q).read_bytes() == (two / q).read_bytes(), q


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_a_resumed_evaluation_remakes_nothing(mini_eval):
    tmp, out, r1 = mini_eval
    stamps = {q: q.stat().st_mtime_ns for q in (out / "images").rglob("*.png")}
    assert launch.main(["eval", *ARGS, "--prompts-file", str(tmp / "prompts.txt"), "--output", str(out)]) == 2
    assert launch.main(["eval", *ARGS, "--prompts-file", str(tmp / "prompts.txt"), "--output", str(out),
                        "--resume"]) == 0
    assert {q: q.stat().st_mtime_ns for q in (out / "images").rglob("*.png")} == stamps
    assert json.loads((out / "results.json").read_text()) == r1
    # the same label with other settings, or other sampling steps, would mix two methods in one folder
    with pytest.raises(UserError, match="other settings"):
        evaluate(EvalConfig(output=str(out), methods=[parse_method("ours;domain_weight=2")], preset="mini",
                            num_images=12, num_real=48, resume=True, steps=12))
    with pytest.raises(UserError, match="other models or settings"):
        evaluate(EvalConfig(output=str(out), methods=[parse_method("ours")], preset="mini", num_images=12,
                            num_real=48, resume=True, steps=10))
    with pytest.raises(UserError, match="'dtype': 'float32'"):  # bfloat16 images were mixed into float32 ones
        evaluate(EvalConfig(output=str(out), methods=[parse_method("ours")], preset="mini", num_images=12,
                            num_real=48, resume=True, steps=12, dtype="bfloat16"))


def test_a_fine_tune_that_is_the_base_gives_the_base_images(tmp_path, tiny_dir):
    """``model:FOLDER`` samples the fine-tune alone: with the base's own UNet and no caption it is the base's
    unconditional sampler, image for image; real images with broken files are counted, not fatal."""
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(real / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(real / "5-other-size.png")
    (real / "broken.png").write_bytes(b"not a png")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cup\na vase\na cup\n")  # a prompt that comes back after another
    r = evaluate(EvalConfig(output=str(tmp_path / "out"), preset="tiny", real=str(real), num_images=4, steps=2,
                            prompts_file=str(prompts), seeds=[0, 1],
                            methods=[parse_method("base"), parse_method(f"same=model:{tiny_dir / 'sd'}")]))
    assert r["real"] == {"folder": str(real), "n": 6, "skipped": 1}
    for part, n in (("uncond", 4), ("text", 6)):
        a = sorted((tmp_path / "out" / "images" / "base" / part).glob("*.png"))
        b = sorted((tmp_path / "out" / "images" / "same" / part).glob("*.png"))
        assert len(a) == len(b) == n
        for x, y in zip(a, b):
            assert np.abs(np.asarray(Image.open(x), np.int16) - np.asarray(Image.open(y), np.int16)).max() <= 2, y
    assert abs(r["methods"]["base"]["uncond"]["fd"] - r["methods"]["same"]["uncond"]["fd"]) < \
        1e-2 * r["methods"]["base"]["uncond"]["fd"]


def test_a_run_that_failed_before_its_first_image_is_run_again_without_resume(tmp_path):
    """A run whose model failed to load had already claimed its folder and written methods.json: the corrected
    command was refused ("holds an evaluation already: pass --resume") though nothing had been made."""
    from suite.files import claim_run_folder

    real = tmp_path / "real"
    real.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(real / f"{i}.png")
    out = tmp_path / "out"
    claim_run_folder(out, "eval")
    (out / "methods.json").write_text('{"_run": {"preset": "tiny", "steps": 9}}')  # what the failed run wrote
    r = evaluate(EvalConfig(output=str(out), preset="tiny", real=str(real), num_images=3, steps=1,
                            methods=["base"]))  # as the CLI writes it (it was an AttributeError on .label)
    assert r["methods"]["base"]["uncond"]["n"] == 3 and len(list((out / "images").rglob("*.png"))) == 3
    with pytest.raises(UserError, match="must be at least 3"):  # KID's least: it failed after making every image
        evaluate(EvalConfig(output=str(tmp_path / "two"), preset="tiny", real=str(real), num_images=2,
                            methods=[parse_method("base")]))
    assert not (tmp_path / "two").exists()


def test_eval_bad_input_leaves_no_folder(tmp_path, tiny_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = tmp_path / "w.txt"
    weights.write_text('{"prompt": "a cup", "domain_weight": 2}\n')
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cup\n")
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 0, 0)).save(two / f"{i}.png")
    base = ["eval", "--preset", "tiny", "--num-images", "3", "--output", str(tmp_path / "out")]
    for extra, phrase in (
        (["--real", str(empty)], "has no .jpg, .png or .webp images"),
        (["--features", str(tiny_dir / "sd" / "unet")], "not a feature model"),
        (["--features", str(tiny_dir / "sd")], "no config.json"),
        (["--method", "ours", "--method", "ours"], "share a label"),
        (["--prompts-file", str(weights)], "the methods set guidance"),
        (["--seeds", "0-3"], "add --prompts-file"),
        (["--real", str(two)], "has 2 usable image(s)"),
        (["--method", f"ft=model:{tmp_path / 'typo'}"], "does not exist"),
        (["--prompts-file", str(prompts), "--clip", "judge"], "has no text encoder"),
        (["--seed", "4294967295"], "runs past the largest seed"),
        # the run's own images would be read as real ones on --resume (real n 4 -> 11, FD 3063 -> 1652)
        (["--real", str(two), "--output", str(two / "ev")], "is inside --real"),
        (["--output", str(weights)], "is a file"),
        (["--domain-model", "none"], "its row would be base's"),  # 'ours' without a domain model is base
        # a domain model given as a fine-tune: a bare "Cannot copy out of meta tensor" after the other rows' images
        (["--method", "base", "--method", f"ft=model:{tiny_dir / 'domain-face'}"], "is a null-text domain model"),
        (["--clip", "clip"], "add --prompts-file"),  # ignored without a word: the unconditional set has no prompts
    ):
        assert launch.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err, (extra, err)
        assert not (tmp_path / "out").exists(), extra
    # launched as two processes that did not join (no --device cpu on a machine without GPUs): eval said "another run
    # (process N) is writing" and left a half-made folder with a lock, where generate, 3d and train name the flag
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        assert launch.main(base) == 2
    err = capsys.readouterr().err
    assert "2 processes were launched but only 1 joined" in err and "pass --device cpu" in err, err
    assert not (tmp_path / "out").exists()


def test_the_judge_scores_no_look_for_a_domain_of_your_own(tmp_path):
    """`eval` on a domain of your own (a mini model of cup renders) showed "domain (judge) 0 ± 0": the judge's
    porcelain rate, which says nothing about that domain. It shows the looks the judge knows only."""
    from types import SimpleNamespace

    from PIL import Image

    from training import evaluate

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (64, 64), "yellow").save(paths[-1])
    judge = SimpleNamespace(predict=lambda x: {"porcelain": [False] * len(x), "photo": [True] * len(x),
                                                "shape": ["cup"] * len(x), "colour": ["yellow"] * len(x),
                                                "pattern": ["dots"] * len(x)})
    net = SimpleNamespace(judge=judge)
    prompts = ["a photo of a cup"] * 2
    own = evaluate._judge_scores(None, net, paths, prompts, "yellow cup")
    assert "domain" not in own and "porcelain" not in own and own["shape_alignment"] == 1.0
    assert evaluate._judge_scores(None, net, paths, prompts, "porcelain")["domain"] == 0.0
    assert evaluate._judge_scores(None, net, paths, prompts, "face")["domain"] == 1.0
    header, _ = evaluate.table_rows({"methods": {"ours": {"uncond": {"n": 2}, "text": own}}})
    assert "domain (judge)" not in header and "text domain (judge)" not in header and "shape" in header


def test_a_domain_of_your_own_is_measured_against_your_images_only(tmp_path, tiny_dir, capsys):
    """Without --real, a domain of your own on the mini preset was measured against the mini world's porcelain
    renders (FD / KID that say nothing about it); it is one sentence asking for its held-out images, before any work."""
    import shutil

    own = tmp_path / "cups"
    shutil.copytree(tiny_dir / "domain-face", own)
    meta = json.loads((own / "nulltext.json").read_text())
    (own / "nulltext.json").write_text(json.dumps({**meta, "domain": "yellow cup"}))
    out = tmp_path / "eval"
    assert launch.main(["eval", "--preset", "mini", "--domain-model", str(own), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "give --real FOLDER with held-out images of 'yellow cup'" in err and not out.exists()


def test_an_eval_resumed_after_the_default_guidance_changed_is_refused_or_warned(tmp_path, caplog):
    """An eval folder whose "ours" images were made with a domain's default guidance, resumed after the defaults
    changed (a domain of your own on the mini world: automatic -> w_d 1, w_c 7, a rule), mixed two guidance settings
    in one row. The defaults are part of the run's record now; a record from before them warns."""
    import logging
    from types import SimpleNamespace

    from training import evaluate

    out = tmp_path / "eval"
    done = out / "images" / "ours" / "uncond"
    done.mkdir(parents=True)
    (done / "000.png").write_bytes(b"png")
    (done / "manifest.jsonl").write_text(json.dumps({"index": 0, "file": "000.png"}) + "\n")
    state = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    run = {"preset": "mini", "steps": 12, "dtype": "float32", "models": {},
           "defaults": {"domain": "cup", "domain_weight": 1.0, "control_weight": 7.0, "rule": "r"}}
    methods = [Method("ours", "ours")]
    before = {k: v for k, v in run.items() if k != "defaults"}
    (out / "methods.json").write_text(json.dumps({"_run": before}))
    with caplog.at_level(logging.WARNING, logger="suite"):
        evaluate._check_methods_file(out, methods, run, state)  # a record from before: resumed, with a warning
    assert "written before the suite recorded the guidance a domain gets" in caplog.text
    auto = {**run, "defaults": {**run["defaults"], "domain_weight": None, "control_weight": None, "rule": None}}
    (out / "methods.json").write_text(json.dumps({"_run": auto}))
    with pytest.raises(UserError, match="made with other models or settings"):
        evaluate._check_methods_file(out, methods, run, state)


def test_the_table_prints_large_distances_without_an_exponent_and_no_error_for_one_image():
    """An FD of 10,000 or more was printed 1.235e+04, and the CLIP score of one image as "± 0"."""
    from training import evaluate

    class Clip:
        def texts(self, prompts):
            return np.eye(len(prompts), 4)

    one = evaluate._clip_scores(Clip(), {"features": np.ones((1, 4))}, ["a cup"])
    assert one["clip_score_se"] is None
    results = {"methods": {"base": {"uncond": {"n": 8, "fd": 12345.6, "kid": 0.5, "kid_se": 0.25},
                                    "text": {"n": 1, **one}}}}
    header, (row,) = evaluate.table_rows(results)
    cells = dict(zip(header, row))
    assert cells["FD"] == "12346" and cells["KID"] == "0.5 ± 0.25" and "±" not in cells["CLIP score"]


def test_python_values_are_taken_as_the_cli_reads_them(monkeypatch, tmp_path):
    """From Python, seeds="12" sampled seeds "1" and "2" (a string read a character at a time), seeds="0-3" (the
    CLI's form) failed on "-", and num_images="3" passed its check, then was a bare TypeError."""
    import training.evaluate as E

    seen = {}

    def stop(config):
        seen.update(seeds=config.seeds, num_images=config.num_images, batch_size=config.batch_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_text_items", stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalConfig(output=str(tmp_path / "e"), methods=["base"], preset="tiny", seeds="0-3", num_images="3",
                            batch_size="2"))
    assert seen == dict(seeds=[0, 1, 2, 3], num_images=3, batch_size=2)
    for bad, phrase in ((dict(batch_size=0), "batch size"), (dict(steps=2.5), "the steps"), (dict(seeds=[-1]), "seed"),
                        (dict(seeds=[1, 1]), "a seed twice"), (dict(seed="x"), "the seed")):
        with pytest.raises(UserError, match=phrase):
            evaluate(EvalConfig(output=str(tmp_path / "e"), methods=["base"], preset="tiny", **bad))


def test_a_resume_never_reuses_images_or_features_made_otherwise(tmp_path, monkeypatch, caplog):
    """A resume with other --steps was refused, but one that added a method only passed, recorded its steps as the
    folder's, and a later resume of the first method reused its images as made with them; the real images' cached
    features were reused after the feature network changed (a rebuilt mini world), so the table compared features
    of two networks; another --seed was refused naming generate's --seeds."""
    real = tmp_path / "real"
    real.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(real / f"{i}.png")
    out = str(tmp_path / "out")

    def run(method="base", steps=1, **kw):
        return evaluate(EvalConfig(output=out, preset="tiny", real=str(real), num_images=3, steps=steps, resume=True,
                                   methods=[parse_method(method)], **kw))

    first = run()
    with pytest.raises(UserError, match="other models or settings"):
        run("other=ours", steps=2)  # no images of its own yet, but base's are made with 1 step
    with pytest.raises(UserError, match="use the same --num-images and --seed to resume"):
        evaluate(EvalConfig(output=out, preset="tiny", real=str(real), num_images=3, seed=5, steps=1, resume=True,
                            methods=[parse_method("base")]))
    assert run() == first
    # the same feature network's name, other weights
    from suite import features

    load = features.load_features

    def doubled(*a, **kw):
        net = load(*a, **kw)
        embed = net._images
        net._images = lambda ims: 2 * embed(ims)
        return net

    monkeypatch.setattr(features, "load_features", doubled)
    again = run()  # both sets through the new network: the distance in a feature space twice the size
    assert again["methods"]["base"]["uncond"]["fd"] == pytest.approx(4 * first["methods"]["base"]["uncond"]["fd"],
                                                                     rel=1e-4)
    # a real image over the 120-megapixel guard stopped the run after every image was made, naming a flag eval does
    # not have; the folder's scan (and training) take images of any size, and so do the features now (here with
    # the guard at 100 pixels)
    from suite import images

    guarded = images.load_image
    monkeypatch.setattr(images, "load_image", lambda path, what="image", max_pixels=images.DEFAULT_MAX_PIXELS:
                        guarded(path, what, max_pixels=100 if max_pixels and Path(path).parent == real else None))
    out = str(tmp_path / "big")
    assert run()["real"]["n"] == 4
    # the default steps given by number are the same run (a resume with --steps 25 was refused)
    out = str(tmp_path / "default")
    assert run(steps=None)["run"]["steps"] == 25 and run(steps=25)["run"]["steps"] == 25
    # more real images asked for than the folder has: said, not silent
    import logging

    with caplog.at_level(logging.WARNING, logger="suite"):
        assert run(steps=25, num_real=10)["real"]["n"] == 4
    assert "--num-real 10, but" in caplog.text and "has 4 usable images" in caplog.text
