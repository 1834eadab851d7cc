"""Atomic file writing, used by every writer in the suite: a temporary sibling file, fsync, then rename.

A crash, a full disk or Ctrl-C mid-write leaves the previous file untouched and no partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block succeeds, move it over ``path``.

    ``suffix`` keeps an extension for writers that choose the format from it. The file gets ordinary
    permissions (``0666 & ~umask``; ``mkstemp`` alone would leave it readable by its owner only).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; when the block succeeds its files are fsynced and it replaces
    ``folder`` (the old one is moved aside first and removed last, so some complete version is always on disk).
    On an exception the temporary folder is removed; a killed process leaves it, hidden (``.NAME-*``), for the
    writer's next run to remove."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
            old.rmdir()
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


class AtomicFiles:
    """Write several files as one unit: each goes to a temporary sibling; only when ALL are written are they
    renamed into place. A failure (e.g. a full disk) removes the temporaries and leaves old files untouched."""

    def __init__(self):
        self.pending: list[tuple[str, Path]] = []

    def write(self, path: Path, data: bytes) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        self.pending.append((tmp, path))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self) -> None:
        mode = 0o666 & ~umask()
        for tmp, path in self.pending:
            os.chmod(tmp, mode)  # mkstemp makes 0600 files; results are ordinary files
            os.replace(tmp, path)
        self.pending = []

    def abort(self) -> None:
        for tmp, _ in self.pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.pending = []
