"""torch's thread count: the automatic rule on its inputs, the user's OMP_NUM_THREADS left alone, and ``--threads``
on every subcommand."""

import logging

import pytest
import torch

import launch
from suite import threads
from suite.threads import apply_threads, choose_threads, default_threads


@pytest.mark.parametrize("cores, load, host, expected", [
    (2, 0.0, None, 2),     # idle: every core
    (2, 0.3, None, 2),     # background daemons
    (2, 2.0, None, 1),     # another 2-thread job
    (2, 1.0, None, 1),     # another 1-thread job: a second thread would wait for the busy core
    (2, 0.5, None, 1),     # halves go down
    (2, 7.0, None, 1),     # never fewer than one
    (16, 4.0, None, 12),   # what is left
    (16, 0.0, None, 16),
    (2, 1.0, 64, 2),       # confined to 2 of 64 cores: the host's load spread over all of them
    (2, 40.0, 64, 1),
    (4, float("nan"), None, 4),
])
def test_default_threads_rule(cores, load, host, expected):
    assert default_threads(cores, load, host) == expected


def test_machine_inputs_are_sane():
    cores, load, host = threads.machine()
    assert 1 <= cores <= host and load >= 0


def test_omp_num_threads_set_by_the_user_leaves_torch_alone(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    with caplog.at_level(logging.DEBUG, logger="suite"):
        assert apply_threads(None) is None
    assert torch.get_num_threads() == before
    assert "OMP_NUM_THREADS=1" in caplog.text
    assert choose_threads(3) == (3, "--threads")  # the flag still wins


def test_automatic_choice_is_applied_and_logged(monkeypatch, caplog):
    for var in threads.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "machine", lambda: (2, 1.9, 2))
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.DEBUG, logger="suite"):
            assert apply_threads(None) == 1
        assert torch.get_num_threads() == 1
        assert "torch threads: 1 (2 cores, load 1.9)" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_threads_flag_is_applied_and_the_callers_setting_restored(tmp_path, tiny_dir, monkeypatch):
    import suite.generate_cli as generate_cli
    import suite.threads

    real, seen = generate_cli.main, []
    monkeypatch.setattr(generate_cli, "main", lambda args: (seen.append(torch.get_num_threads()), real(args))[1])
    monkeypatch.setattr(suite.threads, "usable_cores", lambda: (4, 4))  # --threads is at most the machine's cores
    before = torch.get_num_threads()
    assert launch.main(["generate", "--preset", "tiny", "--steps", "1", "--threads", "3",
                        "--output", str(tmp_path / "x.png")]) == 0
    assert seen == [3]  # while the subcommand ran
    assert torch.get_num_threads() == before  # launch.main from Python leaves torch as it found it


def test_every_subcommand_takes_threads():
    import argparse

    parser = launch.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"generate", "3d", "train"} <= set(sub.choices)
    for name, p in sub.choices.items():
        flag = next((a for a in p._actions if "--threads" in a.option_strings), None)
        assert flag is not None, name
        assert flag.default is None and flag.type("2") == 2  # default: automatic


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_threads_zero_is_refused_with_one_sentence(value, capsys):
    assert launch.main(["generate", "--preset", "tiny", "--threads", value]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_models_load_in_several_threads_at_once(tiny_dir):
    """Two app jobs loading at the same moment (--max-jobs 2: two trainings, or a training and a Generate) both failed
    with "Cannot copy out of meta tensor", and left accelerate's swap of ``register_parameter`` in place, so that
    every later load in the server failed too. Loads now take turns (suite.threads.building_models)."""
    import threading

    import torch

    from suite.models import load_sd

    original = torch.nn.Module.register_parameter
    errors = []

    def load():
        try:
            load_sd(str(tiny_dir / "sd"))
        except Exception as err:  # noqa: BLE001 - the test reports it
            errors.append(f"{type(err).__name__}: {err}"[:200])

    for _ in range(3):  # without the turns, the first round failed in every thread
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert torch.nn.Module.register_parameter is original
    load_sd(str(tiny_dir / "sd"))  # and alone afterwards


def test_more_threads_than_the_machine_has_cores_is_one_sentence(capsys, monkeypatch):
    """--threads 100000 was taken: torch tried to start the threads and failed with a 94-line traceback."""
    import suite.threads

    monkeypatch.setattr(suite.threads, "usable_cores", lambda: (2, 2))
    assert launch.main(["generate", "--preset", "tiny", "--threads", "100000", "--output", "x.png"]) == 2
    assert "must be at most 2 (this machine has 2 cores)" in capsys.readouterr().err


def test_a_resume_keeps_its_thread_count_unless_the_machine_has_fewer_cores(monkeypatch, caplog):
    """A run begun on a 16-core machine resumed with 16 threads on 2 cores (several times slower, and recorded
    again); it keeps its own count otherwise, for bit-identical results (tests/generators3d/test_kill.py)."""
    from suite.threads import continue_threads, kept_threads

    monkeypatch.setattr(threads, "usable_cores", lambda: (2, 2))
    with kept_threads(), caplog.at_level(logging.INFO, logger="suite"):
        torch.set_num_threads(1)
        continue_threads(2, "the training run")  # the run's own count: bit-identical continuation
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        continue_threads(16, "the training run")  # more than this machine has: its 2 cores
        assert torch.get_num_threads() == 2 and "more than the 2 core(s)" in caplog.text
