"""Batch 3D (`3d --prompts-file`): a folder per prompt, a manifest, resume per prompt, and the prompts shared
between processes."""

from __future__ import annotations

import json
from pathlib import Path

import launch
from tests.common import accelerate_two_processes

STEPS = ["--preset", "tiny", "--image-steps", "1", "--zero123-steps", "2", "--refine-steps", "1", "--formats", "glb",
         "--preview-frames", "1"]


def _prompts(tmp_path: Path) -> Path:
    f = tmp_path / "p.txt"
    f.write_text('a vase\n{"prompt": "a bowl", "seed": 3}\n')
    return f


def test_a_batch_makes_a_run_per_prompt_and_resumes_only_the_unfinished(tmp_path):
    out = tmp_path / "out"
    argv = ["3d", *STEPS, "--prompts-file", str(_prompts(tmp_path)), "--output", str(out)]
    assert launch.main(argv) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["folder"], r["prompt"], r["done"]) for r in rows] == [("000-s0", "a vase", True),
                                                                     ("001-s3", "a bowl", True)]
    assert all(Path(r["meshes"]["glb"]).is_file() for r in rows)
    assert json.loads((out / "001-s3" / "config.json").read_text())["seed"] == 3
    assert launch.main(argv) == 2  # a batch is there: --resume, or another folder
    first = (out / "000-s0" / "mesh" / "model.glb").stat().st_mtime_ns
    (out / "001-s3" / "summary.json").unlink()  # as a killed run leaves it: unfinished
    assert launch.main([*argv, "--resume"]) == 0
    assert (out / "000-s0" / "mesh" / "model.glb").stat().st_mtime_ns == first  # finished: not touched
    assert (out / "001-s3" / "summary.json").is_file()
    # a resume with other settings is refused for the finished runs too (they were skipped by their prompt alone)
    changed = [a if a != "2" else "5" for a in argv]  # --zero123-steps 5
    assert launch.main([*changed, "--resume"]) == 2
    assert (out / "000-s0" / "mesh" / "model.glb").stat().st_mtime_ns == first


def test_a_bad_item_is_refused_before_the_first_run(tmp_path, capsys):
    """A prompt too long for CLIP on line 2 stopped the batch only after line 1's whole run."""
    f = tmp_path / "p.txt"
    f.write_text("a vase\n" + "a very long prompt " * 80 + "\n")
    out = tmp_path / "out"
    assert launch.main(["3d", *STEPS, "--prompts-file", str(f), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "characters long" in err and "(item 1: " in err and "Traceback" not in err, err
    assert not out.exists()


def test_two_processes_share_the_prompts_and_make_the_same_meshes(tmp_path, monkeypatch, one_thread):
    prompts = _prompts(tmp_path)
    res = accelerate_two_processes("3d", *STEPS, "--device", "cpu", "--prompts-file", str(prompts), "--output",
                                   str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    logs = res.stdout + res.stderr
    assert "000-s0 ('a vase') on process 1 of 2" in logs and "001-s3 ('a bowl') on process 2 of 2" in logs
    # each process's progress lines say whose run they are (two processes' "3d zero123: step 1/2" were alike)
    assert "3d 000-s0 zero123: step" in logs and "3d 001-s3 zero123: step" in logs, logs[-3000:]
    # one process, here (one thread, as each of the two): the same meshes to the byte
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert launch.main(["3d", *STEPS, "--device", "cpu", "--prompts-file", str(prompts), "--output",
                        str(tmp_path / "one")]) == 0
    for run in ("000-s0", "001-s3"):
        a, b = (tmp_path / d / run / "mesh" / "model.glb" for d in ("one", "two"))
        assert a.read_bytes() == b.read_bytes(), run
