"""Atomic file writing, used by every writer in the suite: a temporary sibling file, fsync, then rename.

A crash, a full disk or Ctrl-C mid-write leaves the previous file untouched and no partial file behind.

Temporaries are named ``.in-domain-tmp-<pid>-<random>-<NAME>.tmp[.ext]`` (:func:`temp_name`): a prefix no user file
has, the writer's process id and a random part. Only such names are ever removed as leftovers
(:func:`remove_leftovers`), never a user's file that merely looks like a temporary; and a run writes into a folder
only when it is empty or one of the suite's own runs (:func:`claim_run_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .checks import UserError

TMP_PREFIX = ".in-domain-tmp-"
# .in-domain-tmp-<pid>-<8 random characters of mkstemp/mkdtemp>-<NAME>.tmp[.ext]
_TEMP = re.compile(r"^\.in-domain-tmp-(?P<pid>\d+)-[a-z0-9_]{8}-(?P<name>.+)\.tmp(\.[A-Za-z0-9]+)?$")


NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)
_LABEL_MAX = 180  # a temporary's name adds up to about 60 bytes to its file's


def _label(name: str) -> str:
    """``name`` as it appears in its temporaries' names: itself, or where it is so long that the temporary's name
    would pass :data:`NAME_MAX`, its start and a hash of the whole (a legal output name failed at the save, after
    the work, with "File name too long")."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _LABEL_MAX:
        return name
    import hashlib

    head = raw[:_LABEL_MAX - 12].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha1(raw).hexdigest()[:10]}"


def _shortened(label: str) -> bool:
    """Whether ``label`` is a long name shortened by :func:`_label` (its start, ``~`` and ten hex digits)."""
    return len(label.encode("utf-8", "surrogateescape")) >= _LABEL_MAX - 15 and bool(re.search(r"~[0-9a-f]{10}$", label))


def temp_name(name: str, suffix: str = "") -> dict:
    """``prefix``/``suffix`` for ``tempfile.mkstemp``/``mkdtemp``: a temporary for ``name`` that no user file can be
    mistaken for (this process's id and a random part behind a prefix of our own). ``suffix`` keeps an extension
    at the end for writers that choose the format from it."""
    return {"prefix": f"{TMP_PREFIX}{os.getpid()}-", "suffix": f"-{_label(name)}.tmp{suffix}"}


def _process_alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":  # pid 0: a run's own shares (see folders=); on Windows os.kill would terminate
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def discard(path: str | os.PathLike) -> None:
    """Remove a file or folder so that no half-removed version is ever seen under its name: it is first renamed to
    a temporary (one atomic step), then deleted. A kill in between leaves a temporary, which the next run removes."""
    import shutil

    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        gone = Path(tempfile.mkdtemp(**temp_name(path.name + ".deleted"), dir=path.parent))
        gone.rmdir()
        path.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    fd, tmp = tempfile.mkstemp(**temp_name(path.name, suffix), dir=path.parent)
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
    writer's next run to remove (:func:`remove_leftovers`, which puts a moved-aside old folder back under its name
    where the new one never took it)."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(**temp_name(folder.name), dir=folder.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700: the folder it becomes is an ordinary one
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if folder.exists():  # a kill before the next rename leaves it aside: remove_leftovers puts it back
            old = Path(tempfile.mkdtemp(**temp_name(folder.name, ".old"), dir=folder.parent))
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


def _hard_link(path: Path, backup: str) -> bool:
    """``backup`` made a second name of ``path``'s file (so ``path`` is never missing); False where the file system
    has no hard links (the file is then moved aside instead)."""
    try:
        os.unlink(backup)
        os.link(path, backup, follow_symlinks=False)  # a symlink kept as the symlink, not turned into its file
        return True
    except OSError:
        open(backup, "wb").close()  # the name kept for the move
        return False


class AtomicFiles:
    """Write several files as one unit: each goes to a temporary sibling; only when ALL are written are they
    renamed into place. A failure (e.g. a full disk) removes the temporaries and leaves old files untouched."""

    def __init__(self):
        self.pending: list[tuple[str, Path]] = []

    def write(self, path: Path, data: bytes) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(**temp_name(path.name), dir=path.parent)
        self.pending.append((tmp, path))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self) -> None:
        """Rename every file into place; a failure or an interrupt among the renames puts the earlier files back
        (it left new files beside old ones: new meshes beside an old summary)."""
        mode = 0o666 & ~umask()
        done: list[tuple[Path, str | None]] = []  # (path, its earlier file kept aside, or None: it is new)
        try:
            for tmp, path in self.pending:
                os.chmod(tmp, mode)  # mkstemp makes 0600 files; results are ordinary files
                backup = None
                if path.exists():
                    fd, backup = tempfile.mkstemp(**temp_name(path.name), dir=path.parent)
                    os.close(fd)
                    try:
                        if not _hard_link(path, backup):
                            os.replace(path, backup)
                    except BaseException:
                        os.unlink(backup)
                        raise
                done.append((path, backup))
                os.replace(tmp, path)
        except BaseException:
            for path, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, path)
                    if os.path.exists(backup):  # two names of one file (not replaced yet): rename leaves both
                        os.unlink(backup)
                else:
                    path.unlink(missing_ok=True)
            self.abort()
            raise
        for _, backup in done:
            if backup is not None:
                os.unlink(backup)
        self.pending = []

    def abort(self) -> None:
        for tmp, _ in self.pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.pending = []


# ----------------------------------------------------------------------------------------------------------
# checks before any work, leftovers of killed runs, one run per output folder
LOCK_NAME = ".in-domain.lock"
RUN_MARKER = ".in-domain-run.json"  # in every output folder of a 3d or train run: whose folder it is


def files_fingerprint(paths, root: str | os.PathLike | None = None, salt: str = "") -> str:
    """16 hex digits that change when any of ``paths`` is added, removed, renamed, resized or modified (each file's
    path, relative to ``root`` when given, its size and modification time; not its bytes, so it costs one
    ``stat`` per file). Any file name is fine, including bytes that are not UTF-8."""
    h = hashlib.sha256(salt.encode())
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(os.fsencode(p.relative_to(root) if root is not None else p))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def check_writable_dir(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """The folder an output goes into exists (or can be created) and can be written to; one sentence if not."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{str(probe)!r} is a file, not a folder: choose another {flag}")
    try:  # a real write (os.access says yes to root on a read-only file system)
        fd, tmp = tempfile.mkstemp(**temp_name("write-check"), dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise UserError(f"the folder {str(probe)!r} cannot be written to ({err.strerror.lower()}): choose "
                         f"another {flag}") from None
    return folder


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """An output file's path: its folder exists and is writable, and the path is not an existing folder."""
    path = Path(path)
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:  # checked first: the system refuses even to look such a name up
        raise ValueError(f"the output name {path.name[:40]!r}... is {size} bytes long, over the {NAME_MAX} a file "
                         f"name may have: give a shorter {flag}")
    if path.is_dir():
        raise ValueError(f"the output {str(path)!r} is an existing folder: give a file name such as "
                         f"{str(path / 'out.png')!r} with {flag}")
    if not path.parent.is_dir():
        if path.parent.exists():
            raise ValueError(f"{str(path.parent)!r} is a file, not a folder, so {path.name!r} cannot be written in it: "
                             f"choose another {flag}")
        raise ValueError(f"the output folder {str(path.parent)!r} does not exist: create it or choose another {flag}")
    check_writable_dir(path.parent, flag)
    return path


def remove_leftovers(paths=None, folders=()) -> list[Path]:
    """Remove the temporaries that a killed writer of the suite left behind, and nothing else.

    ``paths``: output files; in their folders, the temporaries *of those names* whose writing process is gone (a
    live process's temporary is never touched: two runs may write different files into one folder).
    ``folders``: folders of a run that holds the output lock (:func:`output_lock`), looked at one level deep
    (never walked): a temporary of ours in them is a leftover unless a live process other than this one wrote it
    (a writer that takes no lock, such as ``generate``, may be writing there). Only names of :func:`temp_name`'s
    form are removed; a user's hidden files, however they are named, are not touched."""
    import shutil

    candidates = []
    for p in [Path(p) for p in (paths or ())]:
        if p.parent.is_dir():
            for c in p.parent.iterdir():
                m = _TEMP.match(c.name)
                if m and m.group("name") == _label(p.name) and not _process_alive(int(m.group("pid"))):
                    candidates.append(c)
    for folder in map(Path, folders):
        if folder.is_dir() and not folder.is_symlink():
            for c in folder.iterdir():
                m = _TEMP.match(c.name)
                pid = int(m.group("pid")) if m else -1
                if m and (pid in (0, os.getpid()) or not _process_alive(pid)):
                    candidates.append(c)
    removed = []
    for c in sorted(candidates, key=lambda c: not c.name.endswith(".tmp.old")):  # the moved-aside ones first
        m = _TEMP.match(c.name)
        if c.name.endswith(".tmp.old") and c.is_dir() and not c.is_symlink():
            # atomic_dir killed between moving the old folder aside and putting the new one in place: the old one,
            # complete, goes back under its name (where the name was shortened, it cannot be found: removed)
            target = c.parent / m.group("name")
            if not _shortened(m.group("name")) and not (target.exists() or target.is_symlink()):
                c.rename(target)
                continue
        if c.is_dir() and not c.is_symlink():
            shutil.rmtree(c, ignore_errors=True)
        else:
            c.unlink(missing_ok=True)
        removed.append(c)
    return removed


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as one of the suite's temporaries."""
    return bool(_TEMP.match(Path(path).name))


OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")
"""Files a file browser leaves in any folder it shows (macOS Finder, Windows Explorer): an output folder holding only
these is an empty one (they are left as they are)."""


def claim_run_folder(folder: str | os.PathLike, kind: str, recognise=None, flag: str = "--output",
                     write: bool = True) -> bool:
    """Make sure ``folder`` (locked by this run) is empty or one of the suite's own ``kind`` runs, before anything
    is written into it, and mark it as ours (:data:`RUN_MARKER`). Returns whether it already held a run.

    A folder holding anything else (a user's files, another kind of run) is refused with one sentence.
    ``recognise(folder) -> bool`` accepts a run written before the marker existed. ``write=False`` only checks
    (the other processes of a multi-process run, which refuse with the same sentence instead of waiting)."""
    import json

    folder = Path(folder)
    marker = folder / RUN_MARKER
    entries = [p for p in folder.iterdir() if p.name not in (LOCK_NAME, RUN_MARKER, *OS_METADATA)
               and not is_temporary(p)] if folder.is_dir() else []
    if marker.is_symlink() or (marker.exists() and not marker.is_file()):
        raise ValueError(f"{str(marker)!r} is not a file this suite wrote: choose another {flag}")
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != kind:
            raise ValueError(f"the folder {str(folder)!r} holds a {found or 'unreadable'} run, not a {kind} run: "
                             f"choose another {flag}")
        return bool(entries)
    if entries and not (recognise is not None and recognise(folder)):
        names = ", ".join(repr(p.name) for p in sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(f"the folder {str(folder)!r} already holds files that this suite did not write ({names}): "
                         f"choose a new or empty {flag}")
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, json.dumps({"kind": kind, "written_by": "in-domain-suite"}))
    return bool(entries)


@contextmanager
def output_lock(folder: str | os.PathLike, flag: str = "--output") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the length of a run (an OS-level ``flock``, which the
    system releases when the process dies, even by SIGKILL). A second run into the same folder is refused with
    one sentence naming the process that holds it. The lock file ``.in-domain.lock`` is removed when the run ends
    (a killed run leaves it, unlocked, for the next run to take). A folder the run created and left empty is
    removed again.
    Where ``fcntl`` does not exist (Windows) there is no lock."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first: removed in this order
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    path = folder / LOCK_NAME
    while True:
        # Never through a link: a symlinked (or hard-linked, or special) lock file could make us truncate a file
        # that is not ours; it is refused instead.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_NONBLOCK", 0), 0o666 & ~umask())
        except OSError as err:
            if path.is_symlink() or err.errno in (errno.ELOOP, errno.EMLINK):
                raise ValueError(f"{str(path)!r} is a link, not a lock file this suite wrote: remove it, or choose "
                                 f"another {flag}") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise UserError(f"{str(path)!r} is not a lock file this suite wrote (a link or a special file): remove "
                             f"it, or choose another {flag}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"another run (process {holder}) is writing to {str(folder)!r}: wait for it to finish, "
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
        try:  # while still held: a run that wrote nothing leaves no marker either
            if sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) == [RUN_MARKER]:
                (folder / RUN_MARKER).unlink(missing_ok=True)
        except OSError:
            pass
        path.unlink(missing_ok=True)  # removed while still held, so a waiting run retries on a fresh file
        os.close(fd)  # closing releases the lock
        for made in created:  # a run that wrote nothing leaves nothing, not even the parents it made
            with contextlib.suppress(OSError):
                if any(made.iterdir()):
                    break
                made.rmdir()


def remove_run_folder(folder: str | os.PathLike) -> bool:
    """Delete a run folder that this process made and no longer writes to (an app job cancelled after its run
    released the folder's lock), under the folder's :func:`output_lock`: a run that another process started in it
    in the meantime holds the lock, and the folder is then left as it is. Returns whether the folder is gone."""
    import shutil

    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        with output_lock(folder):
            for p in folder.iterdir():
                if p.name == LOCK_NAME:
                    continue  # output_lock removes it, still holding it
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    except (UserError, ValueError, OSError):
        return False
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if nothing came in after the lock was let go
    return not folder.exists()
