"""Benchmarks of the suite (``python -m bench.NAME``); shared helpers below."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.argv[:1] == ["-m"]:  # being located by `python -m bench.NAME` (argv[0] is "-m" only then): run as a tool,
    # transformers' import-time notes stay out of its log, as launch.py keeps them out of every subcommand's
    # ("install torchvision", which breaks diffusers beside this torch: README)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def claim_output(folder, kind: str, known=()) -> Path:
    """Make ``--output`` ``folder`` this benchmark's before anything is written into it
    (:func:`suite.files.claim_run_folder` with ``kind``, e.g. ``"bench.mini3d"``): a new or empty folder, or one
    of its own earlier outputs, is taken; a folder holding anything else (a user's files, another benchmark's
    output) is refused with one sentence on stderr and exit code 2 (``SystemExit``), before any work is done.

    ``known``: what an earlier output of this benchmark, written before the folders were marked, holds: glob
    patterns relative to ``folder`` (``"forgetting.png"``, ``"cache/ideal-*.npz"``), any one of which is enough,
    or tuples of patterns that must all be there (names that on their own could be anyone's)."""
    from suite.files import check_writable_dir, claim_run_folder

    def found(folder: Path, pattern: str) -> bool:
        return any(True for _ in folder.glob(pattern))

    def recognise(folder: Path) -> bool:
        return any(all(found(folder, p) for p in ((entry,) if isinstance(entry, str) else entry)) for entry in known)

    try:
        folder = check_writable_dir(folder)
        claim_run_folder(folder, kind, recognise=recognise)
    except ValueError as e:  # UserError too: one sentence, as the benchmarks' other errors
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return folder


def run_or_say(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a missing or stale model or a bad setting (``ModelLoadError``, ``ValueError``) is
    printed as one sentence on stderr and raises ``SystemExit(2)``, as the benchmarks' other errors (it was a
    traceback in some of them)."""
    from suite.models import ModelLoadError

    try:
        return fn(*args, **kwargs)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
