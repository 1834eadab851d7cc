"""Atomic file writing, used by every writer in the suite: a temporary sibling file, fsync, then rename.

A crash, a full disk or Ctrl-C mid-write leaves the previous file untouched and no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
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


# ----------------------------------------------------------------------------------------------------------
# checks before any work, leftovers of killed runs, one run per output folder
# The temporary names the writers above use: ".NAME-XXXXXXXX[.suffix]" (mkstemp / mkdtemp: 8 random characters),
# and ".NAME-old-XXXXXXXX" (atomic_dir's previous version).
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)-(old-)?[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
LOCK_NAME = ".in-domain.lock"


def check_writable_dir(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """The folder an output goes into exists (or can be created) and can be written to; one sentence if not."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{str(probe)!r} is a file, not a folder: choose another {flag}")
    try:  # a real write (os.access says yes to root on a read-only file system)
        fd, tmp = tempfile.mkstemp(prefix=".write-check-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"the folder {str(probe)!r} cannot be written to ({err.strerror.lower()}): choose "
                         f"another {flag}") from None
    return folder


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """An output file's path: its folder exists and is writable, and the path is not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the output {str(path)!r} is an existing folder: give a file name such as "
                         f"{str(path / 'out.png')!r} with {flag}")
    if not path.parent.is_dir():
        raise ValueError(f"the output folder {str(path.parent)!r} does not exist: create it or choose another {flag}")
    check_writable_dir(path.parent, flag)
    return path


def remove_leftovers(paths, recursive: bool = False) -> list[Path]:
    """Remove the hidden temporary files and folders that a killed writer left next to ``paths``.

    ``paths``: output files (their own temporaries are removed) or, with ``recursive``, one output folder (every
    temporary inside it). Only names of the writers' pattern are touched (``.NAME-XXXXXXXX[.ext]``)."""
    import shutil

    removed = []
    if recursive:
        folder = Path(paths)
        candidates = folder.rglob(".*") if folder.is_dir() else []
        wanted = None
    else:
        paths = [Path(p) for p in paths]
        folder_names: dict[Path, set[str]] = {}
        for p in paths:
            folder_names.setdefault(p.parent, set()).add(p.name)
        candidates = [c for parent in folder_names if parent.is_dir() for c in parent.glob(".*")]
        wanted = folder_names
    for c in list(candidates):
        m = _LEFTOVER.match(c.name)
        if not m or c.name == LOCK_NAME or (wanted is not None and m.group("name") not in wanted.get(c.parent, ())):
            continue
        if c.is_dir():
            shutil.rmtree(c, ignore_errors=True)
        else:
            c.unlink(missing_ok=True)
        removed.append(c)
    return removed


@contextmanager
def output_lock(folder: str | os.PathLike, flag: str = "--output") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the length of a run (an OS-level ``flock``, which the
    system releases when the process dies, even by SIGKILL). A second run into the same folder is refused with
    one sentence naming the process that holds it. The lock file ``.in-domain.lock`` is removed when the run ends
    (a killed run leaves it, unlocked, for the next run to take). A folder the run created and left empty is
    removed again.
    Where ``fcntl`` does not exist (Windows) there is no lock."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(f"another run (process {holder}) is writing to {str(folder)!r}: wait for it to finish, "
                             f"or choose another {flag}") from None
        try:  # the holder before us may have removed the file as we opened it: lock the file that is there now
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield folder
    finally:
        path.unlink(missing_ok=True)  # removed while still held, so a waiting run retries on a fresh file
        os.close(fd)  # closing releases the lock
        if created and not any(folder.iterdir()):  # a run that wrote nothing leaves nothing
            with contextlib.suppress(OSError):
                folder.rmdir()
