"""The CI-sized face experiment of bench.miniworld.face_compare (the paper's Table 1 on the mini world's faces)."""

from __future__ import annotations

import json

import pytest

# A CI-sized run of a method benchmark (a minute or more on 2 cores): not in the default run.
# Run it with `bash scripts/test.sh -m slow` (or `pytest -m slow` and this file's path).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_face_comparison(tmp_path_factory):
    from bench.miniworld.face_compare import QUICK, run

    out = tmp_path_factory.mktemp("face-comparison")
    return run(QUICK, out, threads=2), out


def test_quick_face_comparison_writes_the_table_and_grid_and_tests_the_claim(quick_face_comparison):
    result, out = quick_face_comparison
    for name in ("table.md", "results.json", "grid.png"):
        assert (out / name).stat().st_size > 100, name
    table = (out / "table.md").read_text()
    assert "| ours (preset) |" in table and "Claim (ours keeps attribute control" in table
    assert set(result["groups"]) == {"common", "occasional", "rare", "absent"}
    assert result["groups"]["absent"] == ["earrings", "red hair"]
    rows = {r["name"]: r for r in result["rows"]}
    # The base draws faces, never in the domain's photo look; fine-tuning and the face model learn the look.
    assert rows["base"]["text_face"] >= 0.8 and rows["base"]["text_domain"] <= 0.2, rows["base"]
    assert rows["fine-tuning@40"]["uncond_domain"] >= 0.5 and rows["ours (preset)"]["uncond_domain"] >= 0.5
    claim = json.loads((out / "results.json").read_text())["claim"]
    assert isinstance(claim["holds"], bool) and claim["ours"] == "ours (preset)"
