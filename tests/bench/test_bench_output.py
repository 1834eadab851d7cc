"""The benchmarks' --output: a folder of the user's is refused in one sentence before any work (its files left as
they are), the benchmark's own earlier output is taken, and bench.mini3d_texture removes only the suite's 3D runs."""

from __future__ import annotations

import importlib
import json

import pytest

# Imported here, not under capsys: transformers binds its log handler to the sys.stderr of its first import (the
# missing-torchvision warning it logs would then go to a capture that is closed by the next test). And the 3D flow,
# which binds suite.zero123.load_zero123 at its import: imported first under a test's patch below, it kept the
# stand-in for good, and a later test's 3D run stopped in it.
import generators3d.run  # noqa: F401
import suite.miniworld.assets  # noqa: F401

MARKER = ".in-domain-run.json"


class Stop(Exception):
    """Raised in place of a benchmark's long work: reached only once the output folder was taken."""


def stop(*args, **kwargs):
    raise Stop


# (module, extra arguments, (module, attribute) of the benchmark's first long work)
BENCHES = [
    ("bench.bench_eval", [], ("bench.bench_eval", "fine_tuned_folder")),
    ("bench.mini3d", ["--quick"], ("bench.mini3d", "run")),
    ("bench.mini3d_look", [], ("suite.zero123", "load_zero123")),
    ("bench.mini3d_stage1", [], ("bench.mini3d_stage1", "pipeline")),
    ("bench.mini3d_stage3", [], ("suite.miniworld.assets", "load_judge")),
    ("bench.mini3d_texture", [], ("suite.miniworld.assets", "load_judge")),
    ("bench.mini_zero123", [], ("suite.zero123", "load_zero123")),
    ("bench.miniworld.__main__", ["--quick"], ("bench.miniworld", "run")),
    ("bench.miniworld.face_compare", ["--quick"], ("bench.miniworld.face_compare", "run")),
    ("bench.miniworld.face_edit", [], ("bench.miniworld.face_edit", "run")),
    ("bench.miniworld.face_photos", [], ("bench.miniworld.face_photos", "write_photos")),
    ("bench.miniworld.front", ["--quick"], ("bench.miniworld.front", "run")),
]


def _kind(module: str) -> str:
    return {"bench.mini3d_texture": "bench.mini3d", "bench.miniworld.__main__": "bench.miniworld"}.get(module, module)


@pytest.mark.parametrize("module, extra, work", BENCHES, ids=[b[0] for b in BENCHES])
def test_a_folder_of_the_users_is_refused_in_one_sentence_before_any_work(module, extra, work, tmp_path,
                                                                         monkeypatch, capsys):
    # imported first: a module imported under the patch binds the stand-in for good (a later test's run then stopped)
    main = importlib.import_module(module).main
    monkeypatch.setattr(importlib.import_module(work[0]), work[1], stop)
    folder = tmp_path / "Pictures"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--output", str(folder), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'thesis.txt'" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]  # nothing written, not even the marker
    assert (folder / "thesis.txt").read_text() == "four years of work"


@pytest.mark.parametrize("module, extra, work", BENCHES, ids=[b[0] for b in BENCHES])
def test_the_benchmarks_own_folder_is_taken_and_marked(module, extra, work, tmp_path, monkeypatch):
    main = importlib.import_module(module).main  # first, as above
    monkeypatch.setattr(importlib.import_module(work[0]), work[1], stop)
    new = tmp_path / "new"
    with pytest.raises(Stop):  # a new folder: made, marked, and the work starts
        main(["--output", str(new), *extra])
    assert json.loads((new / MARKER).read_text())["kind"] == _kind(module)
    (new / "table.md").write_text("an earlier result\n")
    with pytest.raises(Stop):  # run again: its own folder, whatever it holds
        main(["--output", str(new), *extra])


def test_an_output_written_before_folders_were_marked_is_taken(tmp_path, monkeypatch, capsys):
    from bench.miniworld import face_photos

    out = tmp_path / "photos"
    out.mkdir()
    (out / "face-00.png").write_bytes(b"an earlier photo")
    (out / "face-00.landmarks.json").write_text("{}")
    assert face_photos.main(["--output", str(out), "--num", "1", "--size", "64"]) == 0  # the real (small) run
    assert json.loads((out / MARKER).read_text())["kind"] == "bench.miniworld.face_photos"
    assert json.loads((out / "face-00.landmarks.json").read_text())["faces"]  # written again
    # bench.mini3d_texture shares bench.mini3d's folder; another benchmark's folder is refused
    monkeypatch.setattr("suite.miniworld.assets.load_judge", stop)
    from bench import mini3d_stage1, mini3d_texture

    shared = tmp_path / "mini3d"
    (shared / "known-cup" / "input").mkdir(parents=True)
    (shared / "known-cup" / "input" / "mask.png").write_bytes(b"an earlier input")
    with pytest.raises(Stop):
        mini3d_texture.main(["--output", str(shared)])
    assert json.loads((shared / MARKER).read_text())["kind"] == "bench.mini3d"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mini3d_stage1.main(["--output", str(shared)])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bench.mini3d run" in err, err


def test_mini3d_texture_removes_only_the_suites_3d_runs(tmp_path):
    from bench.mini3d_texture import check_replaceable
    from generators3d import ThreeDConfig
    from suite.files import claim_run_folder

    mine = tmp_path / "texture-64"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"a photo")
    with pytest.raises(ValueError, match="not one of the suite's 3D runs") as err:
        check_replaceable(mine)
    assert "\n" not in str(err.value) and (mine / "holiday.jpg").read_bytes() == b"a photo"
    trained = tmp_path / "colours-nerf"  # a run of another kind
    claim_run_folder(trained, "train")
    (trained / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError):
        check_replaceable(trained)
    link = tmp_path / "texture-128"
    link.symlink_to(mine)
    with pytest.raises(ValueError):
        check_replaceable(link)
    run = tmp_path / "texture-256"  # one of ours: marked as a 3D run
    claim_run_folder(run, "3d")
    (run / "summary.json").write_text("{}")
    check_replaceable(run)
    older = tmp_path / "texture-512"  # a 3D run from before runs were marked
    (older / "checkpoints").mkdir(parents=True)
    (older / "config.json").write_text(json.dumps(ThreeDConfig(preset="mini", prompt="a cup", output=str(older)).to_dict()))
    check_replaceable(older)


@pytest.mark.parametrize("module, extra", [("bench.miniworld.__main__", ["--quick"]),
                                           ("bench.miniworld.front", ["--quick"]),
                                           ("bench.miniworld.face_compare", ["--quick"]),
                                           ("bench.mini_zero123", ["--per-shape", "2", "--shapes", "box"])])
def test_missing_or_damaged_models_are_one_sentence(module, extra, tmp_path, monkeypatch, capsys):
    """bench.miniworld and .front gave a traceback for missing models; bench.mini_zero123 measured damaged shipped
    weights (their checksums differ from MANIFEST.json) and printed a table."""
    import shutil

    from suite.miniworld import assets

    models = tmp_path / "models"
    shutil.copytree(assets.default_dir(), models)
    weights = models / "zero123" / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4096:] = bytes(4096)
    weights.write_bytes(bytes(raw))
    monkeypatch.setenv("INDOMAIN_MINI_DIR", str(models))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "is corrupt" in err and "Traceback" not in err, err


def test_bench_3d_flags_that_would_be_ignored_are_refused(tmp_path, capsys):
    """--json and --first-steps without --full-size-e2e, --mini-checkpoint without --mini: rc 0 and no JSON written;
    --reps 0 was an IndexError, a folder of the user's for --full-size-e2e a traceback after the first timings."""
    from bench import bench_3d

    for extra, phrase in ((["--json", str(tmp_path / "x.json")], "--json applies to --full-size-e2e DIR"),
                          (["--first-steps"], "--first-steps applies to --full-size-e2e DIR"),
                          (["--mini-checkpoint", "x.safetensors"], "--mini-checkpoint applies to --mini"),
                          (["--reps", "0"], "must be at least 1")):
        with pytest.raises(SystemExit) as exit_:
            bench_3d.main(extra)
        assert exit_.value.code == 2 and phrase in capsys.readouterr().err, extra
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    assert bench_3d.main(["--full-size-e2e", str(mine), "--reps", "1"]) == 2
    assert "is not empty and was not written by this benchmark" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
