"""bench/bench_3d.py's end-to-end timing of the whole 3D flow on random models written in the real layouts (at
toy size here; ``--full-size-e2e`` runs it at SD1.5 size on a GPU)."""

from __future__ import annotations

import json

import pytest


def test_full_size_e2e_times_every_stage_of_a_run_on_models_loaded_from_disk(tmp_path):
    from bench.bench_3d import full_size_e2e, toy_size
    from suite.zero123 import load_zero123

    toy = toy_size()
    timeline = tmp_path / "timeline.jsonl"
    report = full_size_e2e(tmp_path / "models", "cpu", toy, preset="tiny", timeline_path=timeline,
                           image_steps=2, zero123_steps=3, refine_steps=2, preview_frames=2)
    assert report["error"] is None and report["meshes"] == ["glb", "obj", "ply"]
    assert list(report["stages"]) == ["image", "zero123", "refine", "export", "preview"]
    assert [report["stages"][s]["steps"] for s in ("image", "zero123", "refine", "preview")] == [2, 3, 2, 2]
    assert report["stages"]["zero123"]["steps_per_s"] > 0 and report["stages"]["refine"]["steps_per_s"] > 0
    # The stages tile the run: their times add up to the run's wall time, less only the summary written at the end.
    spent = sum(s["seconds"] for s in report["stages"].values())
    assert 0.8 * report["total_s"] <= spent <= report["total_s"]
    lines = [json.loads(line) for line in timeline.read_text().splitlines()]
    assert lines[-1]["stage"] == "preview" and lines[-1]["done"] == 2
    assert all(b["t"] >= a["t"] for a, b in zip(lines, lines[1:]))
    # The models were written where the real loader reads them: Zero-1-to-3 at its own (smaller) resolution.
    factor = 2 ** (len(toy["vae"]["block_out_channels"]) - 1)
    assert load_zero123(str(tmp_path / "models" / "zero123")).image_size == 16 * factor

    # A run that fails reports its error instead of losing the figures (the models are reused, not written again).
    bad = full_size_e2e(tmp_path / "models", "cpu", toy, preset="tiny", zero123_steps=-1)
    assert "--zero123-steps must be at least 0" in bad["error"] and bad["stages"] == {} and bad["models_written_s"] < 1.0
    # Runs leave nothing behind, and a folder of the user's is refused, not written into.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        ".bench-3d-random-models", "COMPLETE", "domain", "sd", "tokenizer", "zero123"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty and was not written by this benchmark"):
        full_size_e2e(mine, "cpu", toy, preset="tiny")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
