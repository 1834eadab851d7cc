"""Batch generation (suite.batch, `generate --prompts-file/--seeds`): items, fixed batches, the manifest, resume,
and the same files from 1 and 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from suite import batch as B
from suite.checks import UserError
from tests.common import accelerate_two_processes

PROMPTS = "a vase\n# a comment\n\n{\"prompt\": \"a bowl\", \"seed\": 42, \"domain_weight\": 1.5}\na cup\n"


def test_items_seeds_and_fixed_batches(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text(PROMPTS)
    items = B.read_items(f, B.parse_seeds("0-1,5"))
    assert [(i.prompt, i.seed) for i in items] == [("a vase", 0), ("a vase", 1), ("a vase", 5), ("a bowl", 42),
                                                   ("a cup", 0), ("a cup", 1), ("a cup", 5)]
    assert [i.index for i in items] == list(range(7)) and items[3].domain_weight == 1.5
    groups = B.batches(items, 2)  # consecutive, same settings, at most 2
    assert [[i.index for i in g] for g in groups] == [[0, 1], [2], [3], [4, 5], [6]]
    assert B.item_path(tmp_path, items[3]).name == "00003-s42.png"
    # a line's own settings win; the command's flags fill the rest
    filled = [i.with_defaults(2.0, 5.0, "paper", "blurry") for i in items]
    assert (filled[3].domain_weight, filled[3].control_weight, filled[0].domain_weight) == (1.5, 5.0, 2.0)
    assert filled[0].guidance_rule == "paper" and filled[0].negative_prompt == "blurry"


@pytest.mark.parametrize("text,seeds,phrase", [
    ("{\"prompt\": \"x\", \"sede\": 1}", "0", "unknown keys ['sede']"),
    ("{\"prompt\": \"x\",", "0", "line 1 of p.txt is not valid JSON"),
    ("{\"seed\": 1}", "0", "has no prompt"),
    ("{\"prompt\": \"x\", \"guidance_rule\": \"domain=0-2\"}", "0", "(on line 1 of p.txt)"),
    ("{\"prompt\": \"x\", \"seed\": -1}", "0", "the seed on line 1"),
    ("# only a comment", "0", "holds no prompt"),
    ("a vase", "5-1", "is empty: write it low-high"),
    ("a vase", "1,1", "names a seed twice"),
    ("a vase", "x", "--seeds takes numbers and ranges"),
    ("{\"prompt\": \"x\", \"seed\": true}", "0", "the seed on line 1"),  # JSON true is not seed 1
    # with the limit lowered to 1,000 (the real one, a million, takes as long as a million prompts to read):
    pytest.param("a vase\n\n" * 501, "0-1", "makes more than 1,000 items (at line 1001 ",
                 id="over the limit, blank lines between"),  # blank lines are skipped, not counted
])
def test_bad_batches_are_one_sentence(tmp_path, monkeypatch, text, seeds, phrase):
    monkeypatch.setattr(B, "MAX_ITEMS", 1000)
    f = tmp_path / "p.txt"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        B.read_items(f, B.parse_seeds(seeds))
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_a_prompts_file_larger_than_a_batch_reads_is_one_sentence_before_it_is_read(tmp_path, monkeypatch):
    """A prompts file is read whole: a 3 GB one was a bare MemoryError. Its size is checked first: a sparse file of
    1 GB is refused without being read."""
    f = tmp_path / "p.txt"
    with open(f, "wb") as fh:
        fh.truncate(10**9)  # sparse: no disk used
    read = []
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self) or "")
    with pytest.raises(UserError, match="is 1,000 MB, over the 256 MB a batch reads: split it"):
        B.read_items(f, [0])
    assert read == []


def test_a_prompts_file_as_editors_save_it(tmp_path):
    """A BOM (Notepad's UTF-8) before the first line, Windows line ends, and characters that str.splitlines breaks
    at (U+2028 in a JSON prompt, U+0085 in a text one): the first line was read as the text prompt
    '\\ufeff{"prompt": ...}', losing its seed, and the others were split or refused as "not valid JSON"."""
    f = tmp_path / "p.txt"
    f.write_bytes("\ufeff{\"prompt\": \"a cat\", \"seed\": 7}\r\n{\"prompt\": \"a\u2028dog\"}\r\ncafé \x85 bar\r\n"
                  .encode("utf-8"))
    items = B.read_items(f, [0])
    assert [(i.prompt, i.seed) for i in items] == [("a cat", 7), ("a\u2028dog", 0), ("café \x85 bar", 0)]
    # a line's weights: numbers as numbers ("0" switches the term off); "recommended" stays the line's own
    f.write_text('{"prompt": "x", "domain_weight": "0"}\n{"prompt": "y", "domain_weight": "recommended"}\n')
    a, b = (i.with_defaults(3.0) for i in B.read_items(f, [0]))
    assert a.domain_weight == 0.0 and b.domain_weight == "recommended"
    # ... and so does its "recommended" guidance rule (--guidance-rule replaced it)
    f.write_text('{"prompt": "x", "guidance_rule": "Recommended"}\n{"prompt": "y"}\n')
    a, b = (i.with_defaults(guidance_rule="clamp=0.5") for i in B.read_items(f, [0]))
    assert a.guidance_rule == "recommended" and b.guidance_rule == "clamp=0.5"


def test_a_batchs_rules_are_checked_per_item_with_its_own_terms(tmp_path, capsys):
    """A flag rule naming control applies to a prompts file's items (it was refused for every prompts-file batch:
    the check read --prompt, empty there); an item whose term is off (its weight 0 or "0", or --domain-model none)
    is refused before any model loads (it stopped the batch after the first images)."""
    ok = tmp_path / "ok.txt"
    ok.write_text("a cat\n")
    argv = ["generate", "--preset", "tiny", "--steps", "1", "--device", "cpu"]
    assert launch.main([*argv, "--prompts-file", str(ok), "--guidance-rule", "control=0.3-1",
                        "--output", str(tmp_path / "a")]) == 0
    for line, extra in (('{"prompt": "a dog", "control_weight": 0, "guidance_rule": "control=0.5-1"}', []),
                        ('{"prompt": "a dog", "control_weight": "0", "guidance_rule": "control=0.5-1"}', []),
                        ('{"prompt": "a dog", "guidance_rule": "domain=0-0.5"}', ["--domain-model", "none"])):
        bad = tmp_path / "bad.txt"
        bad.write_text("a cat\n" + line + "\n")
        out = tmp_path / "b"
        capsys.readouterr()
        assert launch.main([*argv, "--prompts-file", str(bad), *extra, "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert "(item 1: 'a dog')" in err and "Traceback" not in err, err
        assert not out.exists()  # refused before the first image


def test_a_typo_in_the_seeds_is_refused_before_anything_is_built():
    # the real limit, a million; a range is counted, not listed, so this takes no time
    with pytest.raises(UserError, match=r"--seeds 0-9999999 names more than 1,000,000 seeds: split the batch"):
        B.parse_seeds("0-9999999")


def _argv(prompts: Path, out: Path) -> list[str]:
    return ["generate", "--preset", "tiny", "--prompts-file", str(prompts), "--seeds", "0-1", "--batch-size", "2",
            "--steps", "2", "--device", "cpu", "--output", str(out)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_two_processes_make_the_same_files_as_one(tmp_path, monkeypatch, one_thread):
    """`accelerate launch --multi_gpu --num_processes 2 ... --device cpu` (gloo): process r takes global batches
    r, r + 2, ...; every image starts from its own seed's noise, so the union is byte-identical to one process's
    files (made here, on one thread as each of the two), and the merged manifest too."""
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    res = accelerate_two_processes(*_argv(prompts, tmp_path / "two"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "process 2 of 2 makes" in res.stdout + res.stderr
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert launch.main(_argv(prompts, tmp_path / "one")) == 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == sorted(two) == sorted([f"{i:05d}-s{s}.png" for i, s in
                                                 enumerate([0, 1, 42, 0, 1])] + ["manifest.jsonl"])
    assert one == two
    rows = [json.loads(line) for line in one["manifest.jsonl"].decode().splitlines()]
    assert [r["index"] for r in rows] == list(range(5)) and rows[2]["prompt"] == "a bowl"
    assert rows[2]["weights_used"]["domain"] == 1.5 and rows[0]["models"]["sd"]


def test_a_killed_batch_resumes_without_remaking_finished_items(tmp_path, monkeypatch, capsys):
    import suite.images

    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "out"
    argv = _argv(prompts, out)
    real = suite.images.save_image_atomic
    saved = []

    def dies_at_the_fourth(image, path):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path)
        return real(image, path)

    monkeypatch.setattr(suite.images, "save_image_atomic", dies_at_the_fourth)
    assert launch.main(argv) == 130
    monkeypatch.setattr(suite.images, "save_image_atomic", real)
    first = {p.name: p.stat().st_mtime_ns for p in saved}
    assert len(first) == 3
    with open(out / "manifest.rank0.jsonl", "a") as fh:  # a line cut by the kill, no newline
        fh.write('{"index": 3, "fi')
    assert launch.main(argv) == 2  # the folder holds a batch: --resume, or another folder
    other = tmp_path / "q.txt"
    other.write_text("a ball\n")
    assert launch.main([*_argv(other, out), "--resume"]) == 2  # not this batch's prompts
    for flag, value in (("--steps", "3"), ("--width", "32"), ("--dtype", "bfloat16")):  # other settings: refused, not mixed into the folder
        capsys.readouterr()
        assert launch.main([*argv, flag, value, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"made with other settings ({flag}:" in err and "Traceback" not in err, err
    from suite.models import native_size
    from suite.presets import model_refs

    native = native_size(model_refs("tiny")["sd"])
    assert native == 64  # the tiny base: 32 x 32 latents, a two-block VAE (x 2)
    # the model's own size given by hand makes the same images as none given: the same batch, not other settings
    assert launch.main([*argv, "--width", str(native), "--height", str(native), "--resume"]) == 0
    assert {p: (out / p).stat().st_mtime_ns for p in first} == first  # kept, not made again
    # ... and a folder that recorded the native size by number (before it was recorded as not given) resumes too
    manifest = out / "manifest.jsonl"
    text = manifest.read_text()
    assert '"--width": null' in text
    manifest.write_text(text.replace('"--width": null', f'"--width": {native}'))
    assert launch.main([*argv, "--resume"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert not list(out.glob("manifest.rank*"))


def test_each_manifest_line_records_its_own_images_weights(tmp_path):
    """The automatic weights differ per image; each line held the whole batch's list (three values for one image,
    changing with --batch-size). Now a line holds its image's weights, the same whatever the batch size."""
    rows = {}
    for size in ("1", "3"):
        out = tmp_path / f"b{size}"
        assert launch.main(["generate", "--preset", "tiny", "--prompt", "a cat", "--seeds", "2-4", "--steps", "2",
                            "--batch-size", size, "--device", "cpu", "--output", str(out)]) == 0
        rows[size] = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for one, three in zip(rows["1"], rows["3"]):
        assert set(one["weights_used"]) == {"domain", "control"}
        for term, w in one["weights_used"].items():
            assert isinstance(w, float) and w == pytest.approx(three["weights_used"][term], rel=1e-4)
    assert len({r["weights_used"]["domain"] for r in rows["3"]}) == 3  # automatic: one per image


def test_a_resumed_batch_shares_out_what_is_left():
    """The split was fixed: process r took global batches r, r + P, ... and dropped their done items, so after a
    stop where process 1 had finished its share, process 1 waited idle at the barrier for all of process 0's (and
    torch's default wait, 10 minutes with NCCL, ended the run in every process, on every --resume)."""
    from suite.batch import batches, share

    items = [B.Item(i, "a cat", i, None, None, None, None) for i in range(12)]
    fresh = [share(items, {}, 2, r, 2) for r in range(2)]
    assert fresh == [batches(items, 2)[r::2] for r in range(2)]  # a fresh batch: split as before (the same files)
    done = {it.index: "" for b in fresh[1] for it in b}  # process 1's share, finished before the stop
    done[0] = ""  # and one item of process 0's first batch
    left = [share(items, done, 2, r, 2) for r in range(2)]
    assert [len(x) for x in left] == [2, 1] and left[0][0] == [items[1]]  # the rest of a batch, then whole batches
    assert sorted(it.index for x in left for b in x for it in b) == sorted(set(range(12)) - set(done))
    assert all(len(b) <= 2 and all(it.index not in done for it in b) for x in left for b in x)


def test_a_run_split_between_processes_waits_long_at_its_barriers(monkeypatch):
    """A process whose share is done waits at the barrier for the others (a whole 3D run of the last prompt):
    torch's default wait (10 minutes with NCCL) ended such runs with a timeout in every process."""
    import accelerate

    from suite.batch import PROCESS_WAIT_HOURS, process_state

    seen = {}

    class State:
        num_processes = 1

        def __init__(self, cpu=False, **kw):
            seen.update(kw, cpu=cpu)

    monkeypatch.setattr(accelerate, "PartialState", State)
    process_state(cpu=True)
    assert seen["cpu"] and seen["timeout"].total_seconds() == PROCESS_WAIT_HOURS * 3600 >= 24 * 3600


def test_a_process_whose_peer_stopped_says_so_in_one_sentence(monkeypatch):
    """Process 0 refused the folder alone (another run held its lock) while process 1 waited for it at the barrier:
    process 1 printed gloo's traceback ("Connection closed by peer") under process 0's sentence."""
    from suite.failures import explain

    gone = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:10956")
    import torch.distributed as dist

    assert explain(gone) is None  # one process: nothing to blame on another, a bug to report
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # joined in a group of two
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    msg = explain(gone)
    assert msg.startswith("another process of this run stopped") and "--resume" in msg
    assert explain(RuntimeError("shape mismatch")) is None  # other errors keep their traceback
    assert explain(ConnectionResetError("Connection reset by peer")) is None  # e.g. a download: not a peer
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    assert explain(gone) is None


def test_processes_launched_but_not_joined_are_one_sentence_naming_the_flag(monkeypatch):
    """``accelerate launch --multi_gpu`` without GPUs started each process as a run of its own: they refused each
    other's folder ("another run is writing") and the survivor was killed mid-run, leaving a half-made folder."""
    from suite.batch import check_processes_joined
    from suite.checks import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="2 processes were launched but only 1 joined.*pass --cpu"):
        check_processes_joined(1, "--cpu")
    check_processes_joined(2)  # joined: nothing to say
    monkeypatch.delenv("WORLD_SIZE")
    check_processes_joined(1)  # a plain run


def test_an_error_before_the_processes_join_is_said_once_per_machine(monkeypatch, capsys):
    """A bad line in the prompts file under torchrun on 8 GPUs printed the same sentence 8 times: before the
    processes join, an error comes from the flags and files, the same in each; each machine's first process says it."""
    from argparse import Namespace

    from suite.cli import run_main

    def main(args):
        raise UserError("the seed on line 2 of p.txt must be a whole number")

    for local_rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert run_main(main, Namespace()) == 2
        assert ("error: the seed on line 2" in capsys.readouterr().err) == said, local_rank
    monkeypatch.delenv("WORLD_SIZE")
    assert run_main(main, Namespace()) == 2 and "error: the seed" in capsys.readouterr().err  # one process: said


def test_processes_that_did_not_join_say_it_once_per_machine_even_with_a_process_group_each(monkeypatch, capsys):
    """accelerate launch --multi_gpu on a machine without GPUs: each process ran alone with a process group of its
    own, so both counted as joined and both printed "2 processes were launched but only 1 joined"."""
    from argparse import Namespace

    import torch

    from suite.batch import check_processes_joined
    from suite.cli import run_main

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # a group of its own, as accelerate made
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert run_main(lambda args: check_processes_joined(1), Namespace()) == 2
        assert ("error: 2 processes were launched" in capsys.readouterr().err) == said, local_rank

    def own(args):  # after joining, a process's own error is still said by every process
        raise UserError("out of room on this process's disk")

    assert run_main(own, Namespace()) == 2 and "error: out of room" in capsys.readouterr().err


def test_a_resume_sees_changed_default_guidance_and_warns_where_the_record_cannot_tell(caplog, tmp_path):
    """A batch made with a --domain-model and no weights, resumed after the defaults for a domain of your own
    changed (automatic -> w_d 1, w_c 7 and a rule), made its other images with the new ones without a word: two
    guidance settings in one batch. The defaults are recorded now (a change is refused, saying what it was then and
    is now); a record from before them resumes with a warning."""
    import json
    import logging

    from PIL import Image

    from suite.batch import Item, check_same_batch, manifest_line
    from suite.images import check_set_files, save_image_atomic

    items = [Item(index=0, prompt="a cup", seed=0)]
    auto = {"domain": "cup", "domain_weight": None, "control_weight": None, "rule": None}
    now = {"--steps": 10, "defaults": {"domain": "cup", "domain_weight": 1.0, "control_weight": 7.0, "rule": "r"}}
    equivalent = {"defaults": (None, now["defaults"])}
    made = {0: manifest_line(items[0], tmp_path / "000.png", {}, None, {}, {"--steps": 10, "defaults": auto})}
    with pytest.raises(UserError, match=r"defaults: \{.*'domain_weight': None.*\} then, \{.*'domain_weight': 1\.0"):
        check_same_batch(made, items, now, equivalent)
    before = {0: manifest_line(items[0], tmp_path / "000.png", {}, None, {}, {"--steps": 10})}
    with caplog.at_level(logging.WARNING, logger="suite"):
        check_same_batch(before, items, now, equivalent)
    assert "written before the suite recorded the guidance a domain gets where no weight or rule is given" in caplog.text
    # the same for the files of a --num-images set
    caplog.clear()
    for i in range(2):
        save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / f"x-{i}.png", {"--steps": 10})
    with caplog.at_level(logging.WARNING, logger="suite"):
        check_set_files([tmp_path / "x-0.png", tmp_path / "x-1.png"], now, True, equivalent)
    assert caplog.text.count("written before the suite recorded") == 1  # once for the set
    save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / "x-0.png", {"--steps": 10, "defaults": auto})
    with pytest.raises(UserError, match=r"x-0.png was made with other settings \(defaults: .* then, .* now\)"):
        check_set_files([tmp_path / "x-0.png"], now, True, equivalent)
    assert json.loads(made[0])["settings"]["defaults"] == auto
