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
    """Only the suite's own temporaries (its prefix, a dead writer's process id) are removed: names that merely look
    like temporaries, and a live writer's temporary, are not (issue 26)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "out.png").write_bytes(b"result")
    left = [tmp_path / f".in-domain-tmp-{dead}-ab12cd_9-out.png.tmp.png",
            tmp_path / f".in-domain-tmp-{dead}-zz99zz99-out-0.png.tmp"]
    keep = [tmp_path / f".in-domain-tmp-{dead}-ab12cd34-other.png.tmp.png",  # another output's
            tmp_path / f".in-domain-tmp-{os.getpid()}-ab12cd34-out.png.tmp.png",  # a live writer's
            tmp_path / ".out.png-ab12cd34.png", tmp_path / ".hidden", tmp_path / ".bash_history-20240101"]
    for p in left + keep:
        p.write_bytes(b"x")
    removed = remove_leftovers([tmp_path / "out.png", tmp_path / "out-0.png"])
    assert sorted(removed) == sorted(left)
    assert all(p.exists() for p in keep) and (tmp_path / "out.png").read_bytes() == b"result"

    run = tmp_path / "run"
    (run / "mesh").mkdir(parents=True)
    (run / "checkpoints" / ".in-domain-tmp-123-k3j2h1g0-step-000004.tmp").mkdir(parents=True)
    (run / "sub").mkdir()
    live = os.getppid()  # a live writer that takes no lock (generate into the run's folder): its file stays
    for name in (f"mesh/.in-domain-tmp-{dead}-a1b2c3d4-model.glb.tmp", f".in-domain-tmp-{dead}-a1b2c3d4-ref.png.tmp.png",
                 "mesh/model.glb", f"sub/.in-domain-tmp-{dead}-a1b2c3d4-x.tmp", ".photos-20240101",
                 f".in-domain-tmp-{live}-a1b2c3d4-out.png.tmp.png", f".in-domain-tmp-{os.getpid()}-a1b2c3d4-o.tmp"):
        (run / name).write_bytes(b"x")
    remove_leftovers(folders=[run, run / "mesh", run / "checkpoints"])  # one level deep each, never walked
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == sorted([
        ".photos-20240101", "mesh/model.glb", f"sub/.in-domain-tmp-{dead}-a1b2c3d4-x.tmp",
        f".in-domain-tmp-{live}-a1b2c3d4-out.png.tmp.png"])
    assert not (run / "checkpoints" / ".in-domain-tmp-123-k3j2h1g0-step-000004.tmp").exists()


def _plant(folder: Path) -> dict[Path, bytes]:
    """Hidden files and folders whose names look like temporaries of every earlier naming scheme (issue 26)."""
    files = {".photos-20240101/wedding.jpg": b"\xff\xd8 a wedding", ".bash_history-20240101": b"ls -la\n",
             "sub/.draft-v2_final.md": b"# draft", ".out.png-ab12cd34.png": b"mine", ".step-000004-k3j2h1g0/x": b"1",
             ".latents-abc.part0-of-2.npy": b"np", ".in-domain-tmp-notmine": b"no pid, no random part"}
    planted = {}
    for name, data in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        planted[p] = data
    return planted


def _survived(planted: dict[Path, bytes]) -> bool:
    return all(p.is_file() and p.read_bytes() == data for p, data in planted.items())


def test_look_alike_files_survive_every_subcommand(tmp_path, capsys, tiny_dir):
    """Look-alike hidden files in an output folder: 3d and train refuse the folder (it is not one of their runs)
    before writing anything; generate and edit write their file beside them. Every byte survives (issue 26)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(data / f"{i}.png")
    for sub, argv in (("3d", ["3d", "--preset", "tiny", "--prompt", "a vase", "--image-steps", "1",
                              "--zero123-steps", "1", "--refine-steps", "0"]),
                      ("train", ["train", "--preset", "tiny", "--data", str(data), "--max-steps", "1",
                                 "--batch-size", "2", "--text-init-steps", "1"])):
        out = tmp_path / sub
        planted = _plant(out)
        (out / "config.json").write_text('{"mine": true}')
        before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert launch.main([*argv, "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert "already holds files that this suite did not write" in err and "Traceback" not in err, err
        assert _survived(planted) and (out / "config.json").read_text() == '{"mine": true}'
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before, sub  # nothing written, nothing gone
    out = tmp_path / "images"
    planted = _plant(out)
    assert launch.main(["generate", "--preset", "tiny", "--steps", "1", "--output", str(out / "out.png")]) == 0
    Image.new("RGB", (64, 64), (200, 90, 40)).save(tmp_path / "photo.png")
    assert launch.main(["edit", "--preset", "tiny", "--image", str(tmp_path / "photo.png"), "--whole-image",
                        "--steps", "2", "--output", str(out / "edited.png")]) == 0
    assert _survived(planted) and (out / "out.png").is_file() and (out / "edited.png").is_file()


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(ValueError, match="is a link, not a lock file"), output_lock(run):
        pass
    hard = tmp_path / "run2"
    hard.mkdir()
    os.link(target, hard / LOCK_NAME)
    with pytest.raises(ValueError, match="not a lock file this suite wrote"), output_lock(hard):
        pass
    assert target.read_text() == "do not truncate me"
    assert launch.main(["train", "--preset", "tiny", "--data", str(tmp_path / "images"), "--output", str(run)]) == 2
    assert "is a link" in capsys.readouterr().err and target.read_text() == "do not truncate me"


def test_a_run_folder_of_another_kind_is_refused(tmp_path):
    from suite.files import claim_run_folder

    run = tmp_path / "run"
    assert claim_run_folder(run, "3d") is False and (run / ".in-domain-run.json").is_file()
    (run / "image.png").write_bytes(b"x")
    assert claim_run_folder(run, "3d") is True
    with pytest.raises(ValueError, match="holds a 3d run, not a train run"):
        claim_run_folder(run, "train")


def test_a_folder_holding_only_a_file_browsers_metadata_is_an_empty_one(tmp_path):
    """Finder's .DS_Store in an output folder the user made and opened was refused as "files this suite did not
    write"; it is left as it is. A user's file beside it is still refused."""
    from suite.files import claim_run_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert claim_run_folder(run, "train") is False and (run / ".DS_Store").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / ".DS_Store").write_bytes(b"x")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write .*'notes.txt'"):
        claim_run_folder(other, "train")


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path, capsys, tiny_dir):
    """SIGKILL inside an atomic write (the temporary exists, the rename never happens), then generate again."""
    out = tmp_path / "out.png"
    code = ("import os, signal, sys; from suite.files import atomic_path\n"
            f"with atomic_path({str(out)!r}, suffix='.png') as tmp:\n"
            "    open(tmp, 'wb').write(b'half'); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -signal.SIGKILL
    assert [p.name.startswith(".in-domain-tmp-") for p in tmp_path.iterdir()] == [True]
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


def test_full_disk_while_caching_latents_is_one_sentence_and_leaves_nothing(tmp_path):
    """The latent cache is a memory map: on a full disk its first write used to kill train with SIGBUS (exit 135,
    the lock and temporaries left). Its space is now reserved first: one sentence, exit 2, nothing left (issue 26)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this machine cannot mount a small tmpfs (needs root in a container with the capability)")
    try:
        _fill(mnt)
        filler = mnt / "filler"
        os.truncate(filler, filler.stat().st_size - 4 * 4096)  # room for the lock and the marker, not the cache
        data = tmp_path / "data"
        data.mkdir()
        for i in range(6):
            Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(data / f"{i}.png")
        out = mnt / "model"
        res = subprocess.run([sys.executable, str(ROOT / "launch.py"), "train", "--preset", "tiny", "--data", str(data),
                              "--output", str(out), "--resolution", "64", "--max-steps", "1", "--batch-size", "2",
                              "--text-init-steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 2 and "the disk is full" in res.stderr, (res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]  # no folder, no lock, no temporary
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


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


def test_files_fingerprint_follows_names_sizes_and_times_and_takes_any_file_name(tmp_path):
    """One fingerprint for the training latents, F_T, resumes and the evaluator's feature cache. A file name that is
    not UTF-8 (bytes from another system) used to end a training run with "surrogates not allowed"."""
    from suite.files import files_fingerprint

    odd = os.fsdecode(b"\xff\xfe.png")
    for name in ("a.png", odd):
        (tmp_path / name).write_bytes(b"x")
    paths = sorted(tmp_path.iterdir())
    first = files_fingerprint(paths, tmp_path)
    assert files_fingerprint(paths, tmp_path) == first and len(first) == 16
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in paths:
        os.rename(p, moved / p.name)
    assert files_fingerprint([moved / p.name for p in paths], moved) == first  # a moved folder keeps it
    (moved / "a.png").write_bytes(b"xy")
    assert files_fingerprint([moved / p.name for p in paths], moved) != first



def test_a_run_that_writes_nothing_leaves_none_of_the_folders_it_made(tmp_path):
    """`train --data /nope --output new/deep` left an empty `new/`: only the deepest folder was removed."""
    from suite.files import output_lock

    with output_lock(tmp_path / "new" / "deeper" / "run"):
        pass
    assert list(tmp_path.iterdir()) == []
    with output_lock(tmp_path / "new" / "deeper" / "run") as run:
        (run / "model.safetensors").write_bytes(b"x")  # a run that wrote something keeps it all
    assert (tmp_path / "new" / "deeper" / "run" / "model.safetensors").is_file()
    with output_lock(tmp_path / "new" / "other"):  # the parent was there before: only what this run made goes
        pass
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["deeper"]


def test_a_long_legal_output_name_is_saved_and_an_illegal_one_refused_before_the_work(tmp_path, capsys, tiny_dir):
    """A 245-byte name is legal, but its temporary's name (about 40 bytes more) was not: the save failed with "File
    name too long" after the sampling. A name over 255 bytes is refused before any model loads."""
    out = tmp_path / ("a" * 241 + ".png")
    assert launch.main(["generate", "--preset", "tiny", "--steps", "1", "--output", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    capsys.readouterr()
    assert launch.main(["generate", "--preset", "tiny", "--steps", "1", "--output",
                        str(tmp_path / ("b" * 256 + ".png"))]) == 2
    err = capsys.readouterr().err
    assert "over the 255 a file name may have" in err and "Traceback" not in err


def test_a_folder_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    """atomic_dir moves the old folder aside, then renames the new one into place: a kill between the two left
    both under temporary names, and the next run's cleanup deleted both (a checkpoint saved again lost)."""
    code = ("import os, signal, sys; from pathlib import Path; import suite.files as F\n"
            "real = Path.rename\n"
            "def rename(self, target):\n"
            "    real(self, target)\n"
            "    if self.name == 'step-2': os.kill(os.getpid(), signal.SIGKILL)\n"
            "Path.rename = rename\n"
            f"with F.atomic_dir({str(tmp_path / 'step-2')!r}) as tmp:\n"
            "    (tmp / 'w.txt').write_text('new')\n")
    (tmp_path / "step-2").mkdir()
    (tmp_path / "step-2" / "w.txt").write_text("old")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == -signal.SIGKILL
    assert not (tmp_path / "step-2").exists() and len(list(tmp_path.iterdir())) == 2  # both aside
    from suite.files import remove_leftovers

    remove_leftovers(folders=[tmp_path])
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"] and (tmp_path / "step-2" / "w.txt").read_text() == "old"


def test_an_output_inside_a_file_is_called_that_not_a_missing_folder(tmp_path):
    """``--output cone.png/x.png`` said the folder "does not exist" when it is a file."""
    from suite.files import check_output_file

    (tmp_path / "cone.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="cone.png' is a file, not a folder"):
        check_output_file(tmp_path / "cone.png" / "x.png")
    with pytest.raises(ValueError, match="does not exist"):
        check_output_file(tmp_path / "nowhere" / "x.png")


def test_a_run_folder_is_removed_only_when_no_other_run_holds_it(tmp_path):
    """A cancelled app training removed its folder just after its run let the folder's lock go: a `train --resume`
    started there from a shell in that instant lost its files. The folder goes only under its own lock."""
    from suite.files import remove_run_folder

    folder = tmp_path / "domains" / "mine"
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"x")
    (folder / "config.json").write_text("{}")
    with output_lock(folder):  # another run writing there now (flock: another open file, even in this process)
        assert remove_run_folder(folder) is False
        assert (folder / "checkpoints" / "step-000002" / "model.safetensors").read_bytes() == b"x"
        assert (folder / LOCK_NAME).exists()
    assert remove_run_folder(folder) is True
    assert not folder.exists() and (tmp_path / "domains").is_dir()
    assert remove_run_folder(folder) is False  # gone already: nothing to do, no error
    target = tmp_path / "kept"
    target.mkdir()
    (target / "user.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert remove_run_folder(link) is False and (target / "user.txt").exists()  # never through a link
