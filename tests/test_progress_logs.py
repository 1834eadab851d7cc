"""Long commands whose stderr goes to a file write progress lines there (stage, step n/N, rate, time left) instead of
progress bars: ``3d``, ``train`` and ``generate``, run as a user runs them (``INDOMAIN_PROGRESS_INTERVAL=0``: a line
per step, so that a few steps show every kind of line). ``3d`` runs in a process of its own, with its stderr a real
file; ``train`` and ``generate`` run in this one (:func:`tests.common.run_launch`, stderr a text buffer), which
saves a new process's imports."""

import os
import re
import subprocess
import sys

from tests.common import ROOT, run_launch
from tests.training.common import blob

STEP = re.compile(r"^(?P<name>[\w ()]+): (?P<unit>step|image|frame) (?P<done>\d+)/(?P<total>\d+) \(\d+%\)", re.M)


ENV = {"INDOMAIN_PROGRESS_INTERVAL": "0", "INDOMAIN_LOG_LEVEL": "debug"}


def _run_logged(tmp_path, *argv, process: bool = False) -> str:
    if process:
        log = tmp_path / "stderr.log"
        with open(log, "w") as err:
            r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv], cwd=ROOT, env={**os.environ, **ENV},
                               stdout=subprocess.PIPE, stderr=err, text=True, timeout=300)
        text = log.read_text()
    else:
        r = run_launch(*argv, env=ENV)
        text = r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text  # no progress bar redrawn into the file
    return text


def _stages(text: str) -> dict:
    found = {}
    for m in STEP.finditer(text):
        found.setdefault(m["name"], []).append((int(m["done"]), int(m["total"])))
    return found


def test_3d_writes_stage_lines_to_a_log(tmp_path, tiny_dir):
    text = _run_logged(tmp_path, "3d", "--preset", "tiny", "--prompt", "a vase", "--image-steps", "2",
                       "--zero123-steps", "3", "--refine-steps", "3", "--mesh-resolution", "16", "--preview-frames", "2",
                       "--formats", "glb", "--output", str(tmp_path / "run"), process=True)
    stages = _stages(text)
    assert {"3d image", "3d zero123", "3d refine", "3d export", "3d preview"} <= set(stages), text
    assert stages["3d refine"] == [(1, 3), (2, 3), (3, 3)]
    assert re.search(r"^3d refine: step 1/3 \(33%\), [\d.]+ (steps/s|s/step), \d+[ms\d]* left, loss ", text, re.M), text
    assert re.search(r"^3d refine: step 3/3 \(100%\), done in ", text, re.M), text
    assert re.search(r"^torch threads: \d+ \(", text, re.M), text


def test_train_writes_cache_text_init_and_step_lines_to_a_log(tmp_path, tiny_dir):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(4):
        blob(i).save(data / f"{i}.png")
    text = _run_logged(tmp_path, "train", "--preset", "tiny", "--data", str(data), "--output", str(tmp_path / "model"),
                       "--max-steps", "3", "--text-init-steps", "2")
    stages = _stages(text)
    assert stages["train cache"][-1] == (4, 4) and stages["train text_init"] == [(1, 2), (2, 2)], text
    assert stages["train"] == [(1, 3), (2, 3), (3, 3)], text
    assert re.search(r"^train: step 1/3 \(33%\), [\d.]+ (steps/s|s/step), \d+[ms\d]* left, loss ", text, re.M), text


def test_generate_writes_step_lines_to_a_log(tmp_path, tiny_dir):
    text = _run_logged(tmp_path, "generate", "--preset", "tiny", "--steps", "2", "--num-images", "2",
                       "--output", str(tmp_path / "g.png"))
    assert _stages(text)["generate 2 image(s)"] == [(1, 2), (2, 2)], text
    assert "left" in text and "wrote " in text


def test_edit_writes_step_lines_and_its_weights_to_a_log(tmp_path, tiny_dir):
    """`edit` redrew its progress bar into a log (one line of carriage returns) and, unlike `generate`, did not say
    which weights it used."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(photo)
    text = _run_logged(tmp_path, "edit", "--preset", "tiny", "--domain", "porcelain", "--image", str(photo),
                       "--strength", "0.5", "--steps", "4", "--output", str(tmp_path / "e.png"))
    assert _stages(text)["edit crop 1 of 1"] == [(1, 2), (2, 2)], text
    assert re.search(r"^weights: domain=", text, re.M), text
