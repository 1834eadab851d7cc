"""``launch.py edit``: a face photo end to end, bad inputs as one sentence, --whole-image, --help."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
from editing.synthetic import place_face

from .common import photo_array, png_header_only


def _run(argv, tiny_dir, monkeypatch, capsys):
    import launch

    monkeypatch.setenv("INDOMAIN_TINY_DIR", str(tiny_dir))
    code = launch.main(argv)
    return code, capsys.readouterr().err


def test_cli_edits_a_face_photo(tmp_path, tiny_dir, monkeypatch, capsys):
    photo = np.clip(np.random.default_rng(14).normal(200, 6, (300, 400, 3)), 0, 255).astype(np.uint8)
    place_face(photo, (200.0, 150.0), 160, 8.0)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "edited.png"
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "photo.png"),
                      "--prompt", "wearing glasses", "--strength", "0.6", "--steps", "2", "--output", str(out)],
                     tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    edited = np.asarray(Image.open(out))
    assert edited.shape == photo.shape
    changed = (edited != photo).any(-1)
    ys, xs = np.nonzero(changed)
    assert changed.any() and 60 < xs.mean() < 340 and 40 < ys.mean() < 260  # around the face at (200, 150)
    assert not changed[:, :40].any() and not changed[:, 360:].any()
    # --num-images names files the user did not: one of theirs by that name is refused, never replaced
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "edited-1.png")
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "photo.png"),
                      "--strength", "0.6", "--steps", "2", "--num-images", "2", "--output", str(out)],
                     tiny_dir, monkeypatch, capsys)
    assert code == 2 and "holds no record of this suite" in err
    assert np.asarray(Image.open(tmp_path / "edited-1.png"))[0, 0].tolist() == [9, 9, 9]


@pytest.mark.parametrize("args, expected", [
    (["--image", "{missing}"], "does not exist"),
    (["--image", "{text}"], "could not be read"),
    (["--image", "{bomb}"], "megapixels"),
    (["--image", "{flat}"], "--whole-image"),
    (["--image", "{flat}", "--strength", "1.5"], "strength"),
    (["--image", "{flat}", "--mask", "{square}"], "mask"),
    (["--image", "{flat}", "--output", "{tmp}/out.xyz"], "format"),
    (["--image", "{flat}", "--output", "{tmp}/no/such/dir/out.png"], "folder"),
    (["--image", "{flat}", "--whole-image", "--framing", "face"], "drop one of the two"),  # was a whole-image edit
])
def test_cli_bad_inputs_give_one_sentence(tmp_path, tiny_dir, monkeypatch, capsys, args, expected):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "bomb.png").write_bytes(png_header_only(40_000, 40_000))
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    Image.new("L", (50, 50), 255).save(tmp_path / "square.png")
    names = dict(missing=tmp_path / "missing.jpg", text=tmp_path / "text.jpg", bomb=tmp_path / "bomb.png",
                 flat=tmp_path / "flat.png", square=tmp_path / "square.png", tmp=tmp_path)
    argv = ["edit", "--preset", "tiny", "--steps", "2", "--output", str(tmp_path / "o.png")]
    argv += [a.format(**names) for a in args]
    code, err = _run(argv, tiny_dir, monkeypatch, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_cli_whole_image_without_a_face(tmp_path, tiny_dir, monkeypatch, capsys):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo_array(48, 64, seed=15)).save(tmp_path / "flat.png", icc_profile=icc)
    out = tmp_path / "out.jpg"
    code, err = _run(["edit", "--preset", "tiny", "--image", str(tmp_path / "flat.png"), "--whole-image",
                      "--steps", "2", "--num-images", "2", "--output", str(out)], tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    for i in range(2):
        with Image.open(tmp_path / f"out-{i}.jpg") as im:
            assert im.size == (64, 48) and im.info.get("icc_profile") == icc  # colours shown as in the input
    assert not list(tmp_path.glob(".out*"))  # no temporary files left behind


def test_help_lists_the_flags(capsys):
    import launch

    assert launch.main(["edit", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--image", "--prompt", "--strength", "--output", "--mask", "--all-faces", "--whole-image",
                 "--num-images", "--seed", "--preset", "--domain"):
        assert flag in text


def test_cli_edits_where_the_landmarks_file_says_and_refuses_one_for_another_photo(tmp_path, tiny_dir, monkeypatch,
                                                                                    capsys):
    """``--landmarks``: no detector runs (the photo is plain noise, where none would find a face); the crop goes where
    the file's eyes and mouth put it; a file whose points lie outside the photo is one sentence, before any model
    loads."""
    import json

    photo = np.clip(np.random.default_rng(3).normal(128, 20, (200, 300, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "noise.png")
    marks = tmp_path / "noise.landmarks.json"
    marks.write_text(json.dumps({"faces": [{"eye_left": [200, 80], "eye_right": [240, 80], "mouth_left": [207, 120],
                                            "mouth_right": [233, 120]}]}))
    out = tmp_path / "edited.png"
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "noise.png"),
                      "--landmarks", str(marks), "--strength", "0.6", "--steps", "2", "--output", str(out)],
                     tiny_dir, monkeypatch, capsys)
    assert code == 0, err
    changed = (np.asarray(Image.open(out)) != photo).any(-1)
    ys, xs = np.nonzero(changed)
    assert 190 < xs.mean() < 250 and 70 < ys.mean() < 130 and not changed[:, :120].any()
    marks.write_text(json.dumps({"faces": [{"eye_left": [400, 80], "eye_right": [440, 80], "mouth_left": [407, 120],
                                            "mouth_right": [433, 120]}]}))
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "noise.png"),
                      "--landmarks", str(marks), "--output", str(out)], tiny_dir, monkeypatch, capsys)
    assert code == 2 and "outside the 300x200 photo" in err and "Traceback" not in err
    code, err = _run(["edit", "--preset", "tiny", "--domain", "face", "--image", str(tmp_path / "noise.png"),
                      "--landmarks", str(marks), "--whole-image", "--output", str(out)], tiny_dir, monkeypatch, capsys)
    assert code == 2 and "--landmarks frame a face" in err and "Traceback" not in err


def test_a_rule_outside_the_edits_noise_levels_is_refused_before_any_model_loads(tmp_path, tiny_dir, monkeypatch,
                                                                                 capsys):
    """Strength 0.6 of 25 DPM-Solver steps runs at noise levels 0.04-0.57 on the tiny base, so a control term
    at 0.6-1 never acts: refused from the scheduler's config alone (the early check read 0-0.6 and let it pass,
    and the run failed after loading the models)."""
    import suite.cli

    def no_load(*a, **k):
        raise AssertionError("the models were loaded before the rule was checked")

    monkeypatch.setattr(suite.cli, "load_pipeline", no_load)
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    argv = ["edit", "--preset", "tiny", "--image", str(tmp_path / "flat.png"), "--whole-image", "--prompt", "x",
            "--strength", "0.6", "--steps", "25", "--output", str(tmp_path / "o.png")]
    code, err = _run([*argv, "--guidance-rule", "control=0.6-1"], tiny_dir, monkeypatch, capsys)
    assert code == 2 and "runs at 0.04-0.57" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


def test_the_edits_noise_range_is_the_pipelines_and_none_without_a_step(tiny_dir, monkeypatch):
    """``edit_noise_range`` as the pipeline runs it; strength 0.2 of 3 steps runs no step, so no rule can miss
    it (it said "runs at 0.00-0.00" and refused)."""
    from argparse import Namespace

    from suite.cli import edit_noise_range

    monkeypatch.setenv("INDOMAIN_TINY_DIR", str(tiny_dir))
    args = dict(preset="tiny", domain=None, sd_model=None, domain_model=None)
    lo, hi = edit_noise_range(Namespace(**args, steps=25, strength=0.6))
    assert (round(lo, 2), round(hi, 2)) == (0.04, 0.57)
    assert edit_noise_range(Namespace(**args, steps=3, strength=0.2)) is None
