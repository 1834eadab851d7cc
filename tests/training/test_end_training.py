"""training.train.end_training: a torch.distributed shutdown that never returns (pytorch/pytorch#75097) does not keep
the process from exiting; one that fails still fails; a single process shuts down as accelerate does."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest


class FakeAccelerator:
    def __init__(self, num_processes, behaviour):
        self.num_processes, self.behaviour, self.calls = num_processes, behaviour, []

    def end_training(self):
        self.calls.append(threading.current_thread().name)
        self.behaviour()


def test_a_shutdown_that_hangs_is_left_behind_with_a_warning(caplog):
    from training.train import end_training

    release = threading.Event()
    acc = FakeAccelerator(2, lambda: release.wait(30))
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        end_training(acc, timeout=0.3)
    assert 0.3 <= time.perf_counter() - t0 < 5 and acc.calls == ["torch.distributed's shutdown"]
    assert "did not return within" in caplog.text and "results are written" in caplog.text
    release.set()


def test_a_shutdown_that_fails_still_fails_and_one_process_shuts_down_in_place(caplog):
    from training.train import end_training

    def fail():
        raise RuntimeError("gloo broke")

    with pytest.raises(RuntimeError, match="gloo broke"):
        end_training(FakeAccelerator(2, fail), timeout=5)
    one = FakeAccelerator(1, lambda: None)
    with caplog.at_level(logging.WARNING):
        end_training(one, timeout=0.01)
    assert one.calls == [threading.current_thread().name] and "did not return" not in caplog.text


def test_a_command_split_between_processes_destroys_its_process_group_at_its_end(monkeypatch):
    """generate, 3d and eval batches left torch.distributed's process group alive at exit: a process aborted now and
    then after its work was written ("terminate called without an active exception", exit -6, once in CI)."""
    import torch.distributed as dist

    from suite.batch import end_processes

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(threading.current_thread().name))
    end_processes(SimpleNamespace(num_processes=1))
    assert calls == []
    end_processes(SimpleNamespace(num_processes=2))
    assert calls == ["torch.distributed's shutdown"]
