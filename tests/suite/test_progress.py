"""Progress lines for logs (:class:`suite.progress.LogProgress`): at most one line per interval and stage, plus the
first and the last step, with the rate and the time left; none on a terminal."""

import logging

from suite import progress
from suite.progress import LogProgress, format_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "suite.progress"]


def test_lines_are_spaced_by_the_interval_with_rate_and_time_left(caplog):
    clock = Clock()
    lines = LogProgress("3d", interval=10, enabled=True, clock=clock)
    with caplog.at_level(logging.INFO, logger="suite.progress"):
        lines.start("refine", 400)
        for step in range(1, 401):
            clock.t += 0.5  # 2 steps/s
            lines("refine", step, 400, {"loss": 0.25})
    out = _lines(caplog)
    assert out[0] == "3d refine: step 1/400 (0%), 2.0 steps/s, 3m20s left, loss 0.25"
    assert out[1] == "3d refine: step 21/400 (5%), 2.0 steps/s, 3m10s left, loss 0.25"  # 10 s later
    assert out[-1] == "3d refine: step 400/400 (100%), done in 3m20s (2.0 steps/s), loss 0.25"
    assert len(out) == 21  # one every 10 s over 200 s, and the last


def test_slow_steps_a_new_run_of_a_stage_and_the_default_interval(caplog, monkeypatch):
    clock = Clock()
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    lines = LogProgress("train", units={"cache": "image"}, enabled=True, clock=clock)
    with caplog.at_level(logging.INFO, logger="suite.progress"):
        lines("train", 0, 3)  # done 0: the stage starts, no line
        for step in (1, 2):
            clock.t += 30
            lines("train", step, 3)
        lines("cache", 5, 10)  # no start: the first line has no rate yet
        lines("train", 1, 3)  # the same stage run again starts over
    assert _lines(caplog) == ["train: step 1/3 (33%), 30.0 s/step, 1m00s left",
                              "train: step 2/3 (66%), 30.0 s/step, 30s left",
                              "train cache: image 5/10 (50%)",
                              "train: step 1/3 (33%)"]


def test_nothing_on_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    lines = LogProgress("generate", interval=0)
    with caplog.at_level(logging.INFO, logger="suite.progress"):
        lines.start("1 image(s)", 2)
        lines("1 image(s)", 1, 2)
        lines("1 image(s)", 2, 2)
    assert not lines.active() and _lines(caplog) == []
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert lines.active()


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    assert progress.progress_interval() == progress.DEFAULT_INTERVAL
    monkeypatch.setenv(progress.INTERVAL_ENV, "2.5")
    assert progress.progress_interval() == 2.5
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress.progress_interval() == progress.DEFAULT_INTERVAL
    assert [format_duration(s) for s in (0.4, 59, 147, 3725)] == ["0s", "59s", "2m27s", "1h02m"]
