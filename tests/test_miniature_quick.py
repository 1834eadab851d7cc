"""The CI check of the miniature experiment (``python -m bench.miniature --quick``): from the same base model,
after the same number of adaptation steps on the unlabeled domain, ours (null-text domain model + multi-guidance)
keeps a higher text-control accuracy than vanilla fine-tuning, and reaches the domain (the domain classifier
scores its text-guided images above the base model's)."""

from __future__ import annotations

from bench.miniature import QUICK, control_gap, run
from bench.miniature.experiment import _BASE_FIELDS, ASSETS, _state_path


def test_quick_miniature_ours_keeps_control_that_fine_tuning_loses(tmp_path):
    fp = QUICK.fingerprint(*_BASE_FIELDS)
    asset = _state_path(ASSETS, "base-unet", fp)
    assert asset.exists(), (f"the miniature's base model {asset} is missing: run `python -m bench.miniature "
                            f"--output DIR --export-base` once (full run) and commit bench/miniature/assets")
    report = run(QUICK, tmp_path, progress=False, threads=1)
    for name in ("table.md", "results.json", "grid.png"):
        assert (tmp_path / name).is_file()
    ours, ft = control_gap(report)
    base = report.results[0]
    assert ours.align["align"] > ft.align["align"], (ours.align, ft.align)
    assert ours.text_domain > base.text_domain, (ours.text_domain, base.text_domain)
