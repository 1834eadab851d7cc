"""``launch.py train`` on a messy folder, and generate with the model it wrote."""

from __future__ import annotations

import json

from PIL import Image


def test_cli_trains_on_a_messy_folder_and_generate_uses_the_model(bad_dir, tmp_path, capsys):
    import launch

    out = tmp_path / "porcelain-model"
    code = launch.main(["train", "--preset", "tiny", "--domain", "porcelain", "--data", str(bad_dir), "--output",
                        str(out), "--max-steps", "2", "--batch-size", "2", "--text-init-steps", "1",
                        "--no-latent-cache", "--ema", "--validation-steps", "2", "--report-to", "tensorboard"])
    assert code == 0
    sample = Image.open(out / "training" / "samples" / "step-000002.png")
    assert sample.size == (2 * 32, 32)  # two validation images (MultiGuidance: SD1.5 uncond + domain)
    assert list((out / "training" / "logs").rglob("events.out.tfevents*"))
    meta = json.loads((out / "nulltext.json").read_text())
    assert meta["domain"] == "porcelain" and meta["prompt"] == "a photo of porcelain" and meta["training_steps"] == 2
    assert meta["extra"]["num_images"] == 4  # 2 corrupt and 1 text file left out, the small one upscaled
    png = tmp_path / "sample.png"
    assert launch.main(["generate", "--preset", "tiny", "--domain", "porcelain", "--domain-model", str(out),
                        "--output", str(png), "--steps", "2", "--width", "32", "--height", "32",
                        "--domain-weight", "2"]) == 0
    assert Image.open(png).size == (32, 32)
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert launch.main(["train", "--preset", "tiny", "--data", str(empty), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has no .jpg, .png or .webp" in err and len(err.splitlines()) == 1
    assert launch.main(["train", "--preset", "tiny", "--data", str(bad_dir), "--output", str(out),
                        "--batch-size", "3", "--gradient-accumulation-steps", "2"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_a_diverging_run_is_one_sentence_not_a_traceback(data_dir, tmp_path, capsys):
    """`train --lr 1e30`: the loss becomes NaN; the sentence that says so was printed inside a FloatingPointError
    traceback (issue 26)."""
    import launch

    code = launch.main(["train", "--preset", "tiny", "--data", str(data_dir), "--output", str(tmp_path / "m"),
                        "--lr", "1e30", "--max-steps", "3", "--batch-size", "2", "--text-init-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "lower --lr" in err and "Traceback" not in err, err


def test_a_last_update_that_diverged_is_not_saved_and_the_advice_fits_the_run(data_dir, tmp_path, capsys):
    """`--lr 100 --max-steps 1`: the step's loss, measured before its update, was finite, so the diverged weights were
    written as the model ("domain model written"; generate then made black images), and with checkpoints a checkpoint
    every --resume failed from. The weights about to be saved are tried once now; the advice names the checkpoint
    to resume from only where there is one."""
    import launch

    out = tmp_path / "m"
    code = launch.main(["train", "--preset", "tiny", "--data", str(data_dir), "--output", str(out), "--lr", "100",
                        "--max-steps", "1", "--batch-size", "2", "--text-init-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "was not saved" in err and "no checkpoint was written yet" in err, err
    assert not (out / "nulltext.json").exists() and not list(out.glob("training/checkpoints/step-*"))


def test_a_resume_records_the_text_features_the_run_made_not_the_flags_given(data_dir, tmp_path):
    """nulltext.json and train_config.json recorded the resume's --text-init-steps (10) for an F_T made in 3."""
    import launch

    out = tmp_path / "m"
    common = ["train", "--preset", "tiny", "--data", str(data_dir), "--output", str(out), "--batch-size", "2",
              "--checkpoint-steps", "1"]
    assert launch.main([*common, "--max-steps", "1", "--text-init-steps", "3"]) == 0
    assert launch.main([*common, "--max-steps", "2", "--resume"]) == 0
    assert json.loads((out / "nulltext.json").read_text())["extra"]["text_init_steps"] == 3
    assert json.loads((out / "training" / "train_config.json").read_text())["text_init_steps"] == 3
    # the prompt the run used, typed out on the resume, is the same prompt (it was refused as a changed one)
    assert launch.main([*common, "--max-steps", "3", "--resume", "--prompt", "a photo of a face"]) == 0
    assert launch.main([*common, "--max-steps", "4", "--resume", "--prompt", "a photo of a cup"]) == 2


def test_missing_optional_packages_are_refused_before_any_image_is_cached(data_dir, tmp_path, capsys, monkeypatch):
    """``--use-8bit-adam`` without bitsandbytes (or ``--report-to tensorboard`` without tensorboard) was found only
    after the latent cache and the text features were made: on real data a VAE pass and 100 SD1.5 steps."""
    import accelerate.utils

    import launch

    monkeypatch.setattr(accelerate.utils, "is_bnb_available", lambda *a, **k: False)
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    for extra, phrase in ((["--use-8bit-adam"], "needs bitsandbytes"),
                          (["--report-to", "tensorboard"], "needs tensorboard")):
        code = launch.main(["train", "--preset", "tiny", "--data", str(data_dir), "--output", str(tmp_path / "m"),
                            "--max-steps", "2", *extra])
        err = capsys.readouterr().err
        assert code == 2 and phrase in err and "cache" not in err and "Traceback" not in err, err
        assert not (tmp_path / "m").exists()


def test_the_printed_use_it_command_can_be_pasted_into_a_shell(data_dir, tmp_path, capsys):
    """An output folder or domain name with spaces was printed unquoted: pasted, it failed to parse."""
    import shlex

    import launch

    out = tmp_path / "my model é"
    assert launch.main(["train", "--preset", "tiny", "--data", str(data_dir), "--output", str(out), "--domain",
                        "my cats", "--max-steps", "1", "--batch-size", "2", "--text-init-steps", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("use it: "))
    argv = shlex.split(line.removeprefix("use it: "))
    assert argv[:3] == ["python", "launch.py", "generate"]
    args = launch.build_parser().parse_args(argv[2:])
    assert args.domain_model == str(out) and args.domain == "my cats"


def test_a_stopped_training_says_how_to_continue_it(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or SIGTERM) during `train` printed only "interrupted": nothing said that the run can go on."""
    import launch
    import training.train

    out = tmp_path / "my model"

    def stopped(config, progress=None):
        if config.max_steps == 4:  # stopped after a checkpoint
            (out / "training" / "checkpoints" / "step-000002").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.train, "train_domain", stopped)
    args = ["train", "--preset", "tiny", "--data", str(tmp_path), "--output", str(out), "--max-steps"]
    assert launch.main(args + ["2"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err  # no checkpoint yet: nothing to continue
    assert launch.main(args + ["4"]) == 130
    err = capsys.readouterr().err
    assert f"train --resume --output '{out}'" in err and "interrupted" in err


def test_the_python_api_checks_every_field_before_anything_is_built(data_dir, tmp_path):
    """From Python: output=None was a bare TypeError, mixed_precision="fp32" accelerate's message (offering fp8),
    center_crop="false" turned cropping on and max_steps=True trained one step."""
    import pytest

    from training.config import TrainConfig
    from training.train import train_domain

    base = dict(data=str(data_dir), output=str(tmp_path / "m"))
    for bad, phrase in ((dict(output=None), "no output folder"), (dict(mixed_precision="fp32"), "--mixed-precision"),
                        (dict(center_crop="false"), "center_crop must be True or False"),
                        (dict(max_steps=True), "must be a whole number")):
        with pytest.raises(ValueError, match=phrase):
            train_domain(TrainConfig.tiny(**{**base, **bad}))
    assert not (tmp_path / "m").exists()
