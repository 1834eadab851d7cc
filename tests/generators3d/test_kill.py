"""3D runs are deterministic on the CPU, and a run killed by SIGKILL (in stage 2, then again in stage 3) and resumed
gives bit-identical stage checkpoints to an uninterrupted run, with no temporary file left (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from tests.common import ROOT, run_launch

# --threads 1 for the uninterrupted run and the first killed one: CPU results depend on the thread count in their
# last bits, and the automatic choice follows the machine's load; a resume takes the count the run recorded
# (config.json's "threads"), whatever --threads says. One thread, not two: the suite runs in two workers on two cores,
# and with two threads per process beside the other worker this test took 54-66 s, with one 46-53 s (the two-process
# batch test beside it 43 -> 37 s; three interleaved pairs, 2026-12-06).
ARGS = ["3d", "--preset", "tiny", "--prompt", "a vase", "--image-steps", "1", "--zero123-steps", "5",
        "--refine-steps", "5", "--mesh-resolution", "16", "--preview-frames", "1", "--formats", "glb"]


def _start(out: Path, *extra) -> subprocess.Popen:
    # a resume asked for 2 threads still continues with the 1 the run recorded (else its last bits would differ)
    threads = ["--threads", "2"] if "--resume" in extra else ["--threads", "1"]
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *ARGS, *threads, "--output", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; True if it was killed (not finished before)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def _ckpt(out: Path, name: str) -> dict:
    return load_file(str(out / "checkpoints" / f"{name}.safetensors"))


def test_sigkill_in_each_stage_then_resume_equals_an_uninterrupted_run(tmp_path):
    # the uninterrupted run in this process (the same code from the flags on, without a new process's imports)
    straight = tmp_path / "straight"
    r = run_launch(*ARGS, "--threads", "1", "--output", straight)
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / "killed"
    ckpts = out / "checkpoints"
    # 1. killed during stage 2 (the reference view is written, the stage-2 checkpoint is not)
    p = _start(out)
    assert _kill_when(p, lambda: (out / "reference.png").exists()), "finished before the kill"
    assert not (ckpts / "stage2-zero123.safetensors").exists()
    # 2. resumed, and killed again during stage 3
    p = _start(out, "--resume")
    assert _kill_when(p, lambda: (ckpts / "stage2-zero123.safetensors").exists()), "finished before the kill"
    assert not (ckpts / "stage3-refine.safetensors").exists()
    # 3. resumed to the end, in this process (not killed: no process of its own needed)
    r = run_launch(*ARGS, "--threads", "2", "--output", out, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]

    for name in ("stage2-zero123", "stage3-refine"):
        a, b = _ckpt(straight, name), _ckpt(out, name)
        assert a.keys() == b.keys()
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert diff == 0.0, (name, diff)
    assert not [p.name for p in out.rglob(".*") if p.name != ".in-domain-run.json"], "temporary or lock files left behind"


def test_stage_generators_differ_by_stage_and_repeat_by_seed():
    from generators3d.run import stage_generator

    a, b = stage_generator(3, "refine"), stage_generator(3, "refine")
    assert a.initial_seed() == b.initial_seed() != stage_generator(3, "zero123").initial_seed()
