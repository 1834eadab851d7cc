"""The one place that turns expected failures into one sentence naming the fix, for the CLI and the app alike.

Expected failures are mistakes in the input (:class:`suite.checks.UserError`, ``ValueError``), models that cannot
be found or read (:class:`suite.models.ModelLoadError`, a damaged ``.safetensors``, a pickle where weights should
be), an optional extra that is not installed (:mod:`suite.extras`), the machine saying no (disk full, permission
denied, read-only file system, a port in use), and, in a run split between processes, the loss of another process
(which has said why itself). Anything else is a bug:
:func:`explain` returns ``None`` and the caller shows the traceback, to be reported.
"""

from __future__ import annotations

import errno
import pickle

__all__ = ["explain"]

_DISK_FULL_TEXT = ("No space left", "failed writing file", "unexpected pos", "file write failed")
# what torch.distributed raises in a process whose peer has gone (gloo; NCCL's launchers stop the others instead)
_PEER_GONE_TEXT = ("Connection closed by peer", "Connection reset by peer")


def _joined() -> bool:
    """Whether this process is one of several joined in a torch.distributed group (a run split between
    processes), where a lost connection is a peer that stopped."""
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)  # not imported here: no torch, no group
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _where(err: BaseException) -> str:
    name = getattr(err, "filename", None)
    return f" ({name})" if name else ""


def explain(err: BaseException) -> str | None:
    """One sentence for an expected failure, or ``None`` for a bug (show the traceback)."""
    if isinstance(err, ValueError | FileNotFoundError | NotADirectoryError) and str(err).strip():  # UserError too
        return str(err).strip()
    if isinstance(err, ModuleNotFoundError):  # an extra not installed (pyproject's optional dependencies)
        from .extras import sentence_for

        return sentence_for(err)
    if isinstance(err, FloatingPointError) and str(err).strip():  # a training run that diverged: the sentence says how
        return str(err).strip()
    try:  # lazy: the CLI's --help path imports this module, and suite.models loads torch
        from .models import ModelLoadError

        if isinstance(err, ModelLoadError):
            return str(err).strip()
    except ImportError:  # pragma: no cover - torch missing: nothing of the models can have failed
        pass
    if isinstance(err, OSError):
        code = err.errno
        if code == errno.ENOSPC or code == errno.EDQUOT:
            return (f"the disk is full{_where(err)}: free some space or choose an --output on another disk, then run "
                    f"again (a run with --resume continues where it stopped)")
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (f"permission denied{_where(err)}: the folder is read-only or belongs to someone else; choose "
                    f"another --output")
        if code == errno.EISDIR:
            return f"{_where(err).strip(' ()') or 'the output'} is a folder: give a file name with --output"
        if code == errno.EADDRINUSE:
            return "the port is already in use by another program: choose another --port, or stop that program"
    if isinstance(err, pickle.UnpicklingError):
        return (f"refused to load a file that holds pickled code instead of plain weights ({str(err).splitlines()[0]}): "
                f"use safetensors files from a source you trust")
    kind = type(err).__name__
    text = str(err)
    if kind == "SafetensorError" or "safetensors" in type(err).__module__:
        if any(t in text for t in _DISK_FULL_TEXT):
            return "the disk is full while writing weights: free some space, then run again (--resume continues)"
        return (f"a weights file is damaged or truncated ({text.splitlines()[0] if text else kind}): download or copy "
                f"the model folder again")
    if isinstance(err, RuntimeError) and any(t in text for t in _DISK_FULL_TEXT):
        return "the disk is full while writing a checkpoint: free some space, then run again with --resume"
    if isinstance(err, RuntimeError) and any(t in text for t in _PEER_GONE_TEXT) and _joined():
        # e.g. process 0 refused the output folder alone (another run holds it) while this one waited for it
        return ("another process of this run stopped, so this one cannot go on (that process said why, above or in "
                "its log): fix that, then run the command again (with --resume where the run had begun)")
    if "Cannot find empty port" in text or "address already in use" in text.lower():
        return "the port is already in use by another program: choose another --port, or stop that program"
    return None
