"""The CI run of the miniature experiment (``python -m bench.miniature --quick``, ~80 s on one core).

The paper's claim, as the miniature tests it: from the same base model, after the same number of adaptation
steps on the unlabeled domain, ours (null-text domain model + multi-guidance) keeps a higher text alignment
than vanilla fine-tuning AND reaches the domain. On this miniature the claim does NOT hold (measured numbers in
docs/miniature.md); the check is kept as a strict xfail, so that it turns into a failure (XPASS) the day the
miniature shows the effect and this marker must be revisited. Crashes are not covered by the xfail.
"""

from __future__ import annotations

import json

import pytest

from bench.miniature import QUICK, control_gap, run
from bench.miniature.experiment import _BASE_FIELDS, ASSETS, _state_path


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    fp = QUICK.fingerprint(*_BASE_FIELDS)
    asset = _state_path(ASSETS, "base-unet", fp)
    if not asset.exists():
        raise RuntimeError(f"the miniature's base model {asset} is missing: run `python -m bench.miniature "
                           f"--output DIR --export-base` once (full run) and commit bench/miniature/assets")
    out = tmp_path_factory.mktemp("miniature")
    return run(QUICK, out, progress=False, threads=1), out


def test_quick_run_writes_the_table_grid_and_results(quick_report):
    report, out = quick_report
    names = [r.name for r in report.results]
    table = (out / "table.md").read_text()
    assert all(f"| {n} |" in table for n in names)
    assert json.loads((out / "results.json").read_text())["results"][0]["name"] == names[0]
    assert (out / "grid.png").stat().st_size > 1000
    # Fine-tuning does learn the domain (the domain classifier sees its images as porcelain, not the base's).
    _, ft = control_gap(report)
    assert ft.text_domain > 0.5 > report.results[0].text_domain


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="measured: the miniature does not reproduce the paper's effect (docs/miniature.md)")
def test_quick_miniature_ours_keeps_control_that_fine_tuning_loses(quick_report):
    report, _ = quick_report
    ours, ft = control_gap(report)
    base = report.results[0]
    assert ours.align["align"] > ft.align["align"], (ours.align, ft.align)
    assert ours.text_domain > base.text_domain, (ours.text_domain, base.text_domain)
