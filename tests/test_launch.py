"""``launch.py`` as a user runs it: --help lists every subcommand and its flags."""

from tests.common import run_cli


def test_help_lists_subcommands_and_defaults():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "generate" in r.stdout
    r = run_cli("generate", "--help")
    assert r.returncode == 0
    for flag in ("--preset", "--prompt", "--seed", "--steps", "--num-images", "--domain-weight", "--control-image",
                 "--sd-model", "--domain-model"):
        assert flag in r.stdout
    assert "default" in r.stdout


def test_the_3d_help_gives_the_defaults_each_preset_runs():
    """``3d --help`` said the default domain was face (it is porcelain with every preset) and left out the mini
    world's step counts and grid, which differ from the full preset's."""
    import argparse
    import re

    from generators3d.cli import add_arguments
    from generators3d.config import PRESET_SIZES

    p = argparse.ArgumentParser()
    add_arguments(p)
    helps = {a.dest: " ".join(a.help.split()) for a in p._actions if a.help}
    # porcelain, unless a --domain-model names its own domain (the 3D flow applies it: tests/generators3d/test_run.py)
    assert "else porcelain)" in helps["domain"] and p.get_default("domain") is None
    for dest, get in (("zero123_steps", lambda s: s.zero123().steps), ("refine_steps", lambda s: s.refine().steps),
                      ("mesh_resolution", lambda s: s.export().resolution)):
        said = dict(re.findall(r"(mini|tiny): (\d+)", helps[dest]))
        assert said == {k: str(get(PRESET_SIZES[k])) for k in ("mini", "tiny")}, (dest, helps[dest])
        assert f"default: {get(PRESET_SIZES['full'])};" in helps[dest]


def test_a_missing_sd15_offline_is_one_line_of_stderr(tmp_path, monkeypatch):
    """The full preset offline without SD1.5: the sentence naming --sd-model came after two lines of
    huggingface_hub's warning about an argument diffusers passes it (local_dir_use_symlinks)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached SD1.5 to find
    r = run_cli("generate", "--domain", "face", "--output", str(tmp_path / "face.png"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: could not load Stable Diffusion 1.5"), r.stderr
    assert "--sd-model" in r.stderr
