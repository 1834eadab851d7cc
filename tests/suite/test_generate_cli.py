"""``launch.py generate`` with the tiny preset, and bad input as one sentence."""

import numpy as np
import pytest
from PIL import Image

import launch
from tests.common import run_cli


def test_generate_tiny_writes_readable_images(tmp_path, tiny_dir):
    out = tmp_path / "out.png"
    r = run_cli("generate", "--preset", "tiny", "--prompt", "wearing glasses", "--steps", "3", "--num-images", "2",
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
