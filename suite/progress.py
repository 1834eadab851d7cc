"""Progress that reaches a log file: stage and step lines with the rate and the time left.

Progress bars (tqdm) show on a terminal only; a run whose stderr goes to a file would otherwise write nothing for
many minutes. :class:`LogProgress` is a :data:`suite.checks.Progress` callback, ``lines(stage, done, total, info)``,
shared by every long job (``3d``'s stages, ``train``, ``generate``, the mini world's build). When stderr is not a
terminal (or always, with ``enabled=True``) it writes, through the ``suite.progress`` logger, one line per stage at
most every ``INDOMAIN_PROGRESS_INTERVAL`` seconds (default 20; 0: every step), plus the first and the last step::

    3d refine: step 120/400 (30%), 1.9 steps/s, 2m27s left, loss 0.0412

On a terminal it writes nothing: the bars show there. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable

__all__ = ["LogProgress", "INTERVAL_ENV", "DEFAULT_INTERVAL", "progress_interval", "stderr_is_terminal",
           "format_duration"]

log = logging.getLogger("suite.progress")

INTERVAL_ENV = "INDOMAIN_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 20.0  # seconds between two lines of one stage


def progress_interval() -> float:
    """Seconds between two lines of a stage: ``$INDOMAIN_PROGRESS_INTERVAL`` (a number >= 0), else 20."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        log.warning("%s=%r is not a number of seconds >= 0: using %g", INTERVAL_ENV, text, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return value


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (where progress bars show); False for a file, a pipe or a closed stream."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def format_duration(seconds: float) -> str:
    """``45s``, ``2m27s``, ``1h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _format_rate(per_second: float, unit: str) -> str:
    if per_second >= 1:
        return f"{per_second:.1f} {unit}s/s"
    return f"{1 / per_second:.1f} s/{unit}"


def _format_info(info: dict | None) -> str:
    parts = []
    for key, value in (info or {}).items():
        if key == "loss" and isinstance(value, int | float):
            parts.append(f"loss {value:.4g}")
    return "".join(f", {p}" for p in parts)


class _Stage:
    __slots__ = ("total", "t0", "done0", "last_line", "last_done")

    def __init__(self, total: int, done: int, now: float):
        self.total, self.t0, self.done0, self.last_line, self.last_done = total, now, done, None, done


class LogProgress:
    """``lines(stage, done, total, info=None)``: progress lines for a log (see the module's docstring).

    ``prefix`` names the job (``"3d"``, ``"train"``), ``units`` the counted thing per stage (default ``unit``).
    ``start(stage, total)`` marks when a stage began, so that its first line has a rate; without it, a stage starts
    at its first report (a report with ``done == 0`` only starts it). A stage ends at ``done >= total`` (its last
    line says how long it took) or with ``end(stage)``; the same name may start again afterwards.
    ``enabled=None``: on when stderr is not a terminal (checked at each report). ``interval``: seconds between lines
    (default: :func:`progress_interval`). ``logger``: where lines go (default: the ``suite.progress`` logger, INFO).
    """

    def __init__(self, prefix: str = "", *, unit: str = "step", units: dict[str, str] | None = None,
                 enabled: bool | None = None, interval: float | None = None, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.prefix, self.unit, self.units, self.enabled = prefix, unit, dict(units or {}), enabled
        self.interval = progress_interval() if interval is None else float(interval)
        self.logger, self.clock = logger or log, clock
        self.stages: dict[str, _Stage] = {}

    def active(self) -> bool:
        return (not stderr_is_terminal()) if self.enabled is None else bool(self.enabled)

    def start(self, stage: str, total: int, done: int = 0, since: float | None = None) -> None:
        """Stage ``stage`` begins now (or at ``since``, a time of ``clock``), with ``done`` of ``total`` already done
        (a resumed run)."""
        if self.active():
            self.stages[stage] = _Stage(int(total), int(done), self.clock() if since is None else since)

    def end(self, stage: str) -> None:
        self.stages.pop(stage, None)

    def steps(self, stage: str) -> Callable[[int, int], None]:
        """``report(done, total)`` for stage ``stage`` (e.g. for :func:`suite.pipeline.report_steps`)."""
        return lambda done, total: self(stage, done, total)

    def __call__(self, stage: str, done: int, total: int, info: dict | None = None) -> None:
        if not self.active():
            return
        now, done, total = self.clock(), int(done), int(total)
        st = self.stages.get(stage)
        if st is None or st.total != total or done < st.last_done:  # new, or the same name run again
            st = self.stages[stage] = _Stage(total, done, now)
            if done == 0:
                return
        st.last_done = done
        last = total > 0 and done >= total
        if not (last or st.last_line is None or now - st.last_line >= self.interval):
            return
        st.last_line = now
        self.logger.info("%s", self.line(stage, done, total, st, now, info))
        if last:
            self.end(stage)

    def line(self, stage: str, done: int, total: int, st: _Stage, now: float, info: dict | None) -> str:
        name = self.prefix if stage == self.prefix or not stage else f"{self.prefix} {stage}".strip()
        unit = self.units.get(stage, self.unit)
        text = f"{name}: {unit} {done}/{total}" + (f" ({100 * done // total}%)" if total > 0 else "")
        elapsed, counted = now - st.t0, done - st.done0
        if total > 0 and done >= total:
            text += f", done in {format_duration(elapsed)}"
            if counted > 1 and elapsed > 0:
                text += f" ({_format_rate(counted / elapsed, unit)})"
        elif counted > 0 and elapsed > 0:
            rate = counted / elapsed
            text += f", {_format_rate(rate, unit)}"
            if total > 0:
                text += f", {format_duration((total - done) / rate)} left"
        return text + _format_info(info)
