"""Helpers shared by tests in every folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root


def run_cli(*argv, timeout=600) -> subprocess.CompletedProcess:
    """``python launch.py ARGV`` in a subprocess, as a user runs it (text output captured)."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ}, timeout=timeout)
