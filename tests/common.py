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


def run_cli(*argv, timeout=600) -> subprocess.CompletedProcess:
    """``python launch.py ARGV`` in a subprocess, as a user runs it (text output captured)."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ}, timeout=timeout)
