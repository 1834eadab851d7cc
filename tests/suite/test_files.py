"""Writing outputs safely (issue 15): leftovers of killed writers are removed on the next start, one run per output
folder (an OS lock that SIGKILL releases), and a full disk is one sentence with nothing half-written."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import launch
from suite.files import LOCK_NAME, atomic_path, output_lock, remove_leftovers
from tests.common import ROOT


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "out.png").write_bytes(b"result")
    left = [tmp_path / ".out.png-ab12cd_9.png", tmp_path / ".out-0.png-zz99zz99.png"]
    keep = [tmp_path / ".other.png-ab12cd34.png", tmp_path / ".hidden", tmp_path / ".out.png-notrandom.png.txt"]
    for p in left + keep:
        p.write_bytes(b"x")
    removed = remove_leftovers([tmp_path / "out.png", tmp_path / "out-0.png"])
    assert sorted(removed) == sorted(left)
    assert all(p.exists() for p in keep) and (tmp_path / "out.png").read_bytes() == b"result"

    run = tmp_path / "run"
    (run / "mesh").mkdir(parents=True)
    (run / "checkpoints" / ".step-000004-k3j2h1g0").mkdir(parents=True)
    for name in ("mesh/.model.glb-a1b2c3d4.tmp", ".reference.png-a1b2c3d4.png", "mesh/model.glb"):
        (run / name).write_bytes(b"x")
    remove_leftovers(run, recursive=True)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == ["mesh/model.glb"]
    assert not (run / "checkpoints" / ".step-000004-k3j2h1g0").exists()


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path, capsys, tiny_dir):
    """SIGKILL inside an atomic write (the temporary exists, the rename never happens), then generate again."""
    out = tmp_path / "out.png"
    code = ("import os, signal, sys; from suite.files import atomic_path\n"
            f"with atomic_path({str(out)!r}, suffix='.png') as tmp:\n"
            "    open(tmp, 'wb').write(b'half'); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -signal.SIGKILL
    assert [p.name.startswith(".out.png-") for p in tmp_path.iterdir()] == [True]
    assert launch.main(["generate", "--preset", "tiny", "--steps", "1", "--output", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_one_run_per_output_folder_and_sigkill_releases_the_lock(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from suite.files import output_lock\n"
                               f"with output_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=rf"another run \(process {holder.pid}\) is writing to"), output_lock(folder):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with output_lock(folder):  # the system released it
        assert (folder / LOCK_NAME).read_text() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists()


def _fill(folder: Path) -> None:
    """Fill the file system that holds ``folder`` to the last byte."""
    with pytest.raises(OSError) as err, open(folder / "filler", "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 4096)
    assert err.value.errno == errno.ENOSPC


@pytest.fixture
def full_disk(tmp_path):
    """A small tmpfs filled to the last byte where this machine lets the test mount one (root in a container
    with the capability), else None."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        (mnt / "out").mkdir()
        _fill(mnt)
        yield mnt / "out"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_during_generate_is_one_sentence_and_leaves_nothing(full_disk, tmp_path, capsys, monkeypatch,
                                                                      tiny_dir):
    if full_disk is None:  # no tmpfs here: the image writer fails as a full disk makes it fail
        full_disk = tmp_path / "out"
        full_disk.mkdir()
        real_save = Image.Image.save

        def save(self, fp, *a, **kw):
            if str(full_disk) in str(fp):
                raise OSError(errno.ENOSPC, "No space left on device", str(fp))
            return real_save(self, fp, *a, **kw)

        monkeypatch.setattr(Image.Image, "save", save)
    code = launch.main(["generate", "--preset", "tiny", "--steps", "1", "--output", str(full_disk / "a.png")])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert list(full_disk.iterdir()) == []


def test_full_disk_while_writing_a_3d_checkpoint_is_one_sentence(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import generators3d.stage as stage

    def save_file(*a, **kw):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr("safetensors.torch.save_file", save_file)
    out = tmp_path / "run"
    code = launch.main(["3d", "--preset", "tiny", "--prompt", "a vase", "--image-steps", "1", "--zero123-steps", "1",
                        "--refine-steps", "0", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert not list((out / "checkpoints").iterdir())  # no half-written checkpoint
    assert stage  # the module whose writer failed
    assert launch.main(["3d", "--preset", "tiny", "--prompt", "a vase", "--image-steps", "1", "--zero123-steps", "1",
                        "--refine-steps", "0", "--output", str(out), "--resume", "--formats", "glb",
                        "--mesh-resolution", "16", "--preview-frames", "1"]) == 2  # still full: still one sentence


def test_full_disk_while_writing_a_training_checkpoint_is_one_sentence(tmp_path, capsys, monkeypatch):
    import torch

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(data / f"{i}.png")
    real = torch.save

    def save(obj, f, *a, **kw):
        if "optimizer.pt" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4054")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "model"
    code = launch.main(["train", "--preset", "tiny", "--data", str(data), "--output", str(out), "--max-steps", "2",
                        "--batch-size", "2", "--text-init-steps", "1", "--checkpoint-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full" in err and "Traceback" not in err, err
    ckpts = out / "training" / "checkpoints"
    assert not ckpts.exists() or not list(ckpts.iterdir())  # the temporary checkpoint folder was removed


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    with pytest.raises(OSError), atomic_path(tmp_path / "a.bin") as tmp:
        Path(tmp).write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_waiting_is_not_needed_after_the_holder_ends(tmp_path):
    folder = tmp_path / "f"
    with output_lock(folder):
        pass
    start = time.monotonic()
    with output_lock(folder):
        pass
    assert time.monotonic() - start < 1
