"""A miniature of the paper's experiment that runs on a CPU: does decoupled guidance keep text control where
fine-tuning loses it? (paper Fig. 2, Table 1, Sec. 4.4-4.5).

``python -m bench.miniature --output DIR`` (full run) or ``--quick`` (the CI-sized run). See docs/miniature.md.
"""

from .experiment import FULL, QUICK, Config, Report, Result, run

__all__ = ["FULL", "QUICK", "Config", "Report", "Result", "run", "control_gap"]


def control_gap(report: Report) -> tuple[Result, Result]:
    """The rows the headline check compares: ours and vanilla fine-tuning, both after the longest adaptation."""
    n = max(report.config["adapt_steps"])
    by_name = {r.name: r for r in report.results}
    return by_name[f"Ours @{n}"], by_name[f"Fine-tuning @{n}"]
