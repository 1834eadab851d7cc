"""``launch.py generate`` with the tiny preset, and bad input as one sentence."""

import numpy as np
import pytest
from PIL import Image

import launch
from tests.common import run_launch


def test_generate_tiny_writes_readable_images(tmp_path, tiny_dir):
    out = tmp_path / "out.png"
    r = run_launch("generate", "--preset", "tiny", "--prompt", "wearing glasses", "--steps", "3", "--num-images", "2",
                   "--output", str(out))
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["out-0.png", "out-1.png"]
    for f in files:
        with Image.open(f) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            assert np.asarray(im).std() > 0
    assert "weights: domain=" in r.stderr and "control=" in r.stderr


def test_generate_with_control_image_and_fixed_weights(tmp_path, tiny_dir):
    edges = tmp_path / "edges.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) > 0.8).astype(np.uint8) * 255).save(edges)
    code = launch.main(["generate", "--preset", "tiny", "--prompt", "x", "--control-image", str(edges), "--steps", "2",
                        "--domain-weight", "2", "--control-weight", "3", "--output", str(tmp_path / "c.png")])
    assert code == 0
    assert (tmp_path / "c.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--output", "/no/such/folder/x.png"], "output folder"),
    (["--steps", "0"], "--steps: '0' must be at least 1"),
    (["--control-image", "/no/such.png"], "does not exist"),
    (["--sd-model", "/no/such/sd"], "does not exist: pass --sd-model"),
    (["--domain", "dogs"], "unknown domain"),
    (["--output", "{tmp}/x.bmpx"], "unknown image format"),
])
def test_bad_input_one_sentence_nonzero_exit(tmp_path, capsys, tiny_dir, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "o.png")]
    code = launch.main(["generate", "--preset", "tiny", "--steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unreadable_control_image_and_bad_weight(tmp_path, capsys, tiny_dir):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    assert launch.main(["generate", "--preset", "tiny", "--control-image", str(fake),
                        "--output", str(tmp_path / "o.png")]) == 2
    assert "could not be read as an image" in capsys.readouterr().err
    assert launch.main(["generate", "--preset", "tiny", "--control-weight", "abc"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_an_interrupted_set_is_reported_and_resume_completes_it(tmp_path, caplog, monkeypatch, tiny_dir):
    """A --num-images set interrupted while its files are written: the finished images stay, the message names them
    and --resume; --resume makes only the missing ones, each from the noise it would have started from (issue 26)."""
    import logging

    import suite.images

    caplog.set_level(logging.INFO, logger="suite")
    argv = ["generate", "--preset", "mini", "--prompt", "a cup", "--steps", "4", "--num-images", "3", "--seed", "5",
            "--guidance-rule", "paper", "--output", str(tmp_path / "a.png")]
    assert launch.main(argv) == 0
    whole = {i: np.asarray(Image.open(tmp_path / f"a-{i}.png"), dtype=int) for i in range(3)}
    for p in tmp_path.iterdir():
        p.unlink()
    real = suite.images.save_image_atomic
    calls = []

    def dies_at_the_second(image, path, settings=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(image, path, settings)

    monkeypatch.setattr(suite.images, "save_image_atomic", dies_at_the_second)
    caplog.clear()
    assert launch.main(argv) == 130
    assert "1 of 3 image(s) written (a-0.png); run the same command with --resume" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-0.png"]
    monkeypatch.setattr(suite.images, "save_image_atomic", real)
    first = (tmp_path / "a-0.png").stat().st_mtime_ns
    caplog.clear()
    assert launch.main([*argv, "--resume"]) == 0
    assert "1 of 3 image(s) already there; making the other 2" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-0.png", "a-1.png", "a-2.png"]
    assert (tmp_path / "a-0.png").stat().st_mtime_ns == first  # kept, not made again
    for i in (1, 2):  # a batch of 2 instead of 3: the same images up to float rounding
        got = np.asarray(Image.open(tmp_path / f"a-{i}.png"), dtype=int)
        assert np.abs(got - whole[i]).max() <= 2, i
        assert np.abs(got - whole[0]).mean() > 5  # and not a copy of another image of the set
    assert launch.main([*argv, "--resume"]) == 0  # all there: nothing to do


def test_a_set_resumes_only_with_its_own_settings_and_never_replaces_a_users_file(tmp_path, capsys, tiny_dir):
    """``--num-images`` sets record their settings in each file: a --resume with another prompt or --steps was
    accepted and mixed two runs; without --resume a user's ``photo-1.png`` was silently replaced."""
    from suite.images import read_image_settings

    argv = ["generate", "--preset", "tiny", "--prompt", "a cup", "--steps", "1", "--num-images", "3",
            "--output", str(tmp_path / "c.png")]
    assert launch.main(argv) == 0
    assert read_image_settings(tmp_path / "c-0.png")["--prompt"] == "a cup"
    (tmp_path / "c-2.png").unlink()
    capsys.readouterr()
    for changed in (["--prompt", "a red ball"], ["--steps", "2"], ["--dtype", "bfloat16"]):  # the last: was mixed in
        assert launch.main([*argv, *changed, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "was made with other settings (" + changed[0] in err and "Traceback" not in err
    assert not (tmp_path / "c-2.png").exists()
    # the same settings said otherwise (the default steps, the native size, the default domain) are the same
    assert launch.main([*argv, "--resume", "--width", "64", "--height", "64", "--domain", "face", "--dtype",
                        "float32"]) == 0
    assert (tmp_path / "c-2.png").is_file()
    assert launch.main(argv) == 0  # a set of its own is made again
    # a set recorded before the dtype was (its files have no --dtype) resumes: it is not compared on it
    from suite.images import save_image_atomic

    for i in range(3):
        old = {k: v for k, v in read_image_settings(tmp_path / f"c-{i}.png").items() if k != "--dtype"}
        save_image_atomic(Image.open(tmp_path / f"c-{i}.png").copy(), tmp_path / f"c-{i}.png", settings=old)
    (tmp_path / "c-2.png").unlink()
    assert launch.main([*argv, "--resume"]) == 0 and (tmp_path / "c-2.png").is_file()
    # a set made before the record (plain PNGs) still resumes: its files are kept, unchecked, with a warning
    for i in range(3):
        Image.open(tmp_path / f"c-{i}.png").copy().save(tmp_path / f"c-{i}.png")
    (tmp_path / "c-2.png").unlink()
    assert read_image_settings(tmp_path / "c-0.png") is None
    assert launch.main([*argv, "--resume"]) == 0 and read_image_settings(tmp_path / "c-2.png") is not None
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "photo-1.png")
    assert launch.main([*argv[:-1], str(tmp_path / "photo.png")]) == 2
    assert "holds no record of this suite" in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "photo-1.png")).tolist()[0][0] == [1, 2, 3]
    assert not (tmp_path / "photo-0.png").exists()


def test_a_set_with_a_control_image_records_the_size_its_shape_gives(tmp_path, capsys, tiny_dir):
    """Without --width/--height the output takes the control image's shape, so a 208x200 control image makes 64x62
    images where the record said "the native size": a resume of a set begun at 64x64 was accepted and mixed the two
    sizes. The size the shape gives is recorded; a size given by hand that differs from it is refused on resume."""
    from suite.images import read_image_settings

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 208, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    argv = ["generate", "--preset", "tiny", "--domain", "face", "--control-image", str(tmp_path / "c.png"), "--canny",
            "--steps", "1", "--num-images", "2", "--output", str(tmp_path / "o.png")]
    assert launch.main(argv) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "o-0.png").size == (64, 62)
    assert read_image_settings(tmp_path / "o-0.png")["--height"] == 62
    (tmp_path / "o-1.png").unlink()
    assert launch.main([*argv, "--resume", "--width", "64", "--height", "64"]) == 2
    assert "other settings (--height" in capsys.readouterr().err
    assert launch.main([*argv, "--resume", "--width", "64", "--height", "62"]) == 0  # the same size, said by hand
    assert Image.open(tmp_path / "o-1.png").size == (64, 62)


def test_a_domain_of_your_own_is_found_in_indomain_home(tmp_path, capsys, monkeypatch, tiny_dir):
    """The README: "put it at $INDOMAIN_HOME/domains/<name>" (then --domain <name>); it was refused as an unknown
    domain unless --domain-model named the folder."""
    import shutil

    from suite.presets import model_refs

    monkeypatch.setenv("INDOMAIN_HOME", str(tmp_path / "home"))
    assert launch.main(["generate", "--preset", "tiny", "--domain", "mydom", "--steps", "1", "--output",
                        str(tmp_path / "a.png")]) == 2
    assert "put its model at" in capsys.readouterr().err
    mine = tmp_path / "home" / "domains" / "mydom"
    shutil.copytree(tiny_dir / "domain-face", mine)
    refs = model_refs("tiny", "mydom")
    assert refs["domain"] == str(mine) and refs["domain_obj"].name == "mydom"
    # a path object, as train_domain returns it (an AttributeError 'lower' from build_pipeline(domain_model=Path))
    assert model_refs("tiny", "mydom", domain_model=mine)["domain"] == str(mine)
    # a name, never a path: the app's free-text domain box must not reach a folder outside $INDOMAIN_HOME/domains
    shutil.copytree(tiny_dir / "domain-face", tmp_path / "elsewhere")
    for name in ("../../elsewhere", str(tmp_path / "elsewhere"), "mydom/../../../elsewhere"):
        with pytest.raises(ValueError, match="unknown domain"):
            model_refs("tiny", name)
    assert launch.main(["generate", "--preset", "tiny", "--domain", "mydom", "--steps", "1", "--output",
                        str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size == (64, 64)  # the tiny base's native size


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, caplog, monkeypatch, capsys):
    """SIGTERM (kill, timeout, a job scheduler) killed the process on the spot: the image being written left its
    temporary file, the run said nothing, and the lock stayed. It now stops the run as Ctrl-C does (exit 143)."""
    import logging
    import os
    import signal

    import suite.images

    class NotHandled(Exception):
        pass

    def fallback(signum, frame):  # the test's own handler: without the fix, SIGTERM raises this, not Terminated
        raise NotHandled

    caplog.set_level(logging.INFO, logger="suite")
    real = suite.images.save_image_atomic
    calls = []

    def terminated_at_the_second(image, path, settings=None):
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(image, path, settings)

    monkeypatch.setattr(suite.images, "save_image_atomic", terminated_at_the_second)
    before = signal.signal(signal.SIGTERM, fallback)
    try:
        code = launch.main(["generate", "--preset", "tiny", "--prompt", "a cup", "--steps", "2", "--num-images", "3",
                            "--output", str(tmp_path / "a.png")])
        assert signal.getsignal(signal.SIGTERM) is fallback  # the caller's handler is put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 143 and "interrupted (SIGTERM)" in capsys.readouterr().err
    assert "1 of 3 image(s) written (a-0.png); run the same command with --resume" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-0.png"]  # no temporary file of the second


def test_a_quoted_tilde_in_the_output_is_the_home_folder(tmp_path, monkeypatch):
    """``--output "~/a.png"`` (quoted, so the shell leaves it): generate and edit said the folder '~' did not
    exist, and a 3d run wrote a folder named '~' in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    assert launch.main(["generate", "--preset", "tiny", "--prompt", "x", "--steps", "1", "--output", "~/a.png"]) == 0
    assert (tmp_path / "home" / "a.png").is_file() and not (tmp_path / "~").exists()


def test_flags_a_batch_would_ignore_or_misread_are_one_sentence(tmp_path, capsys, tiny_dir):
    """Found by a review (each ran without a word before): --seed beside --seeds (the seeds came from --seeds
    alone), --batch-size without a batch, a folder given as the prompts file ("does not exist"), and JSON's true as a
    guidance weight (taken as 1)."""
    import launch

    (tmp_path / "pdir").mkdir()
    (tmp_path / "bool.txt").write_text('{"prompt": "a cat", "domain_weight": true}\n')
    base = ["generate", "--preset", "tiny", "--steps", "2"]
    for extra, words in ((["--prompt", "a cat", "--seeds", "0-1", "--seed", "5", "--output", str(tmp_path / "b")],
                          "--seed 5 and --seeds 0-1 both say the seeds"),
                         (["--batch-size", "2", "--output", str(tmp_path / "z.png")], "--batch-size applies to batches"),
                         (["--prompts-file", str(tmp_path / "pdir"), "--output", str(tmp_path / "o")], "is a folder"),
                         (["--prompts-file", str(tmp_path / "bool.txt"), "--output", str(tmp_path / "o4")],
                          "must be a number, \"auto\" or \"recommended\", got true")):
        assert launch.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "z.png").exists() and not (tmp_path / "o4").exists()


def test_a_lines_empty_negative_prompt_clears_the_flags(tmp_path, tiny_dir):
    """A prompts-file line's ``"negative_prompt": ""`` took --negative-prompt's instead (the empty string read as
    "not set"); a line without the key still takes the flag's."""
    import json

    import launch

    lines = tmp_path / "p.txt"
    lines.write_text('{"prompt": "a cat", "negative_prompt": ""}\n{"prompt": "a dog"}\n')
    out = tmp_path / "o"
    assert launch.main(["generate", "--preset", "tiny", "--steps", "2", "--prompts-file", str(lines),
                        "--negative-prompt", "blurry", "--output", str(out)]) == 0
    rows = [json.loads(r) for r in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["prompt"]: r["negative_prompt"] for r in rows} == {"a cat": "", "a dog": "blurry"}
