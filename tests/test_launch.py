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
