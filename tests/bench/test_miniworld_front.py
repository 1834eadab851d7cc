"""The CI-sized guidance comparison of bench.miniworld.front: the pipeline's default guidance against fine-tuning
stopped at 300 steps, on out-of-domain prompts (issue 22)."""

from __future__ import annotations

import pytest

# A CI-sized run of a method benchmark (a minute or more on 2 cores): not in the default run.
# Run it with `bash scripts/test.sh -m slow` (or `pytest -m slow` and this file's path).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_front(tmp_path_factory):
    from bench.miniworld import front

    out = tmp_path_factory.mktemp("front")
    result = front.run(front.QUICK, out)
    return {r["kind"]: r for r in result["rows"]}, out


def test_the_default_keeps_the_prompt_that_fine_tuning_at_300_steps_loses(quick_front):
    """Measured on 45 images a side (5 out-of-domain shapes x 9). The bounds come from the spread over 3 sample seeds
    x 2 fine-tuning seeds of this same run: shape gap 0.09-0.18 (mean 0.13, sd 0.03), ours' domain score 0.84-0.89;
    fine-tuning's look was closer in some seeds and farther in others (KID 77-101 against ours' 85-100), so no
    direction is asserted on KID."""
    rows, _ = quick_front
    ours, ft = rows["ours"], rows["fine-tuning"]
    assert ours["default"] and ft["steps"] == 300
    o, f = ours["ood"], ft["ood"]
    assert o["n"] == f["n"] == 45
    # the direction: more of the prompt's shape than fine-tuning@300, at a domain score that is not given away
    assert o["shape_align"] - f["shape_align"] >= 0.04, (o, f)
    assert o["domain"] >= 0.7, o


def test_quick_front_writes_the_table_plot_and_grid(quick_front):
    rows, out = quick_front
    for name in ("table.md", "results.json", "front.png", "grid.png"):
        assert (out / name).stat().st_size > 100, name
    table = (out / "table.md").read_text()
    assert "| ours default (" in table and "| fine-tuning@300 cfg 5 |" in table
