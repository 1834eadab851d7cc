"""The paper's comparison on the mini world (``python -m bench.miniworld``); see :mod:`bench.miniworld.compare`."""

from .compare import FULL, QUICK, Config, run

__all__ = ["Config", "FULL", "QUICK", "run", "claim"]


def claim(result: dict) -> tuple[dict, dict]:
    """The paper's claim as this benchmark tests it: ``(ours, fine-tuning)`` rows, where fine-tuning is the
    shortest run whose domain score reaches ours (equal domain score), or the longest run if none does."""
    rows = {r["name"]: r for r in result["rows"]}
    ours = rows["ours (auto)"]
    ft = sorted((int(n.split("@")[1]), r) for n, r in rows.items() if n.startswith("fine-tuning@") and "rect" not in n)
    reached = [r for _, r in ft if r["text_domain"] >= ours["text_domain"]]
    return ours, (reached[0] if reached else ft[-1][1])
