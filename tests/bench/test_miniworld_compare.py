"""The CI-sized paper comparison of bench.miniworld (ours vs fine-tuning on the mini world)."""

from __future__ import annotations

import pytest

# A CI-sized run of a method benchmark (a minute or more on 2 cores): not in the default run.
# Run it with `bash scripts/test.sh -m slow` (or `pytest -m slow` and this file's path).
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_comparison(tmp_path_factory):
    from bench.miniworld import QUICK, run

    out = tmp_path_factory.mktemp("comparison")
    return run(QUICK, out, threads=2), out


def test_quick_comparison_writes_the_table_plot_and_grid(quick_comparison):
    result, out = quick_comparison
    for name in ("table.md", "results.json", "grid.png", "forgetting.png"):
        assert (out / name).stat().st_size > 100, name
    rows = {r["name"]: r for r in result["rows"]}
    assert "| ours (auto) |" in (out / "table.md").read_text()
    assert rows["base"]["text_domain"] <= 0.1 and rows["base"]["shape_align"] >= 0.8  # no porcelain, full control
    # Fine-tuning learns the domain (its unconditional samples are porcelain).
    from bench.miniworld import QUICK

    assert rows[f"fine-tuning@{QUICK.ft_steps[-1]}"]["uncond_domain"] >= 0.5


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="measured: with the paper's automatic weights the domain term dominates on the mini world "
                          "and the prompt's shape is lost (docs/mini-world.md); strict, so a change shows")
def test_quick_comparison_ours_keeps_control_that_fine_tuning_loses(quick_comparison):
    from bench.miniworld import claim

    ours, ft = claim(quick_comparison[0])
    # The paper's claim: ours keeps more out-of-domain control than fine-tuning at equal domain score.
    assert ours["text_domain"] >= 0.5, ours
    assert ours["shape_align"] > ft["shape_align"], (ours, ft)
