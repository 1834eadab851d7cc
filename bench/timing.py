"""Side-by-side timing: candidates are run interleaved (A, B, C, A, B, C, ...) so that machine load affects
them alike, and the median of each is reported. Ratios are what the benchmarks print."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Callable[[], object]], reps: int, warmup: int = 1, device="cpu") -> dict:
    """Median seconds per call of each candidate, measured interleaved."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}
