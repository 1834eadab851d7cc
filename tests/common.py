"""Helpers shared by tests in every folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root


def diffusers_sd(pipe):
    """diffusers' own StableDiffusionPipeline on the very same components (for equality checks)."""
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                  unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                  feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def accelerate_two_processes(*argv, timeout=600) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 launch.py ARGV`` on the CPU (gloo; with our ``--cpu`` or
    ``--device cpu`` flag), one thread per process, on a free port (a fixed one may still be held by an earlier
    run's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           str(ROOT / "launch.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_cli(*argv, timeout=600) -> subprocess.CompletedProcess:
    """``python launch.py ARGV`` in a subprocess, as a user runs it (text output captured)."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ}, timeout=timeout)
