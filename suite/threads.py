"""How many threads torch uses: all the cores this process may use when the machine is idle, fewer when other
jobs run (``--threads N`` on every subcommand overrides it).

torch's default is one thread per core. On a busy machine that is slow: every parallel region waits until each of
its threads has run, and a thread that another job's process holds makes the whole region wait (the 3D flow took
853 s beside one other 2-thread torch job against 193 s idle; beside such a job one thread beats two, 3.44 s against
4.25 s). :func:`default_threads` is the rule, a pure function; :func:`machine` measures its inputs and
:func:`apply_threads` sets torch. Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager

__all__ = ["default_threads", "usable_cores", "other_load", "machine", "choose_threads", "apply_threads",
           "continue_threads", "kept_threads", "building_models", "THREAD_ENV_VARS"]

log = logging.getLogger("suite")

_BUILDING = threading.RLock()


@contextmanager
def building_models():
    """Held while a model is built or loaded: one thread at a time. diffusers builds a model it loads under
    accelerate's ``init_empty_weights``, which swaps ``torch.nn.Module.register_parameter`` for the whole process, so
    a model built in another thread meanwhile got its parameters on the meta device ("Cannot copy out of meta
    tensor"), and two loads at once left the swap in place: every later load in the process failed (the app with
    ``--max-jobs 2``: two trainings, or a training and a Generate). So every module built in a job's thread is built
    under it: the suite's loaders, the tiny models' first build, the 3D flow's NeRF. Re-entrant (a loader inside a
    loader). Modules built in threads of your own beside a load need it too."""
    with _BUILDING:
        yield


#: Variables through which a user already chose torch's thread count: when one is set, torch is left alone.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads(cores: int, load: float, host_cores: int | None = None) -> int:
    """Threads for torch on ``cores`` usable cores, when ``load`` other jobs are running on the machine.

    ``load`` counts runnable threads of *other* processes (:func:`other_load`, measured before our own work starts),
    over the whole machine of ``host_cores`` cores (default: ``cores``; more when this process is confined to some
    of them, by CPU affinity or a cgroup quota, while the load is the whole host's). The share of our cores that
    others keep busy is ``load * cores / host_cores``; the rest is free, and a core counts when it is free more
    than half the time (``free`` rounded, halves down):

        free = cores - load * cores / host_cores
        threads = max(1, min(cores, ceil(free - 0.5)))

    So: every core when idle (2 cores, load 0 -> 2, and load 0.4 of background daemons -> 2); one thread when
    another job occupies the cores (2 cores, load 2 -> 1, and load 1 or 0.5 -> 1: a parallel region split over two
    threads waits for the thread that does not get its core); what is left on a large machine (16 cores, load 4 ->
    12); never more than ``cores``, never fewer than one. Halves go down because the costs are lopsided: one thread
    too many beside another job cost eight to ten times the time here (tiny sampling, 2 cores), one too few on an
    idle machine about a quarter.
    """
    cores = max(1, int(cores))
    host = max(cores, int(host_cores or cores))
    load = float(load)
    load = max(0.0, load) if math.isfinite(load) else 0.0
    free = cores - load * cores / host
    return max(1, min(cores, math.ceil(free - 0.5)))


def usable_cores() -> tuple[int, int]:
    """``(cores this process may use, cores of the machine)``: the CPU affinity (``os.sched_getaffinity``, else
    ``os.cpu_count()``), capped by a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``, rounded down, at least 1)."""
    host = os.cpu_count() or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = host
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max" and float(period) > 0:
            cores = min(cores, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores), max(host, cores)


def other_load(samples: int = 7, spacing: float = 0.01) -> float:
    """How many threads of other processes keep cores busy now: the threads runnable at this moment less our own
    (``/proc/loadavg``'s fourth field), the median of ``samples`` looks ``spacing`` seconds apart (60 ms: every
    command pays it at start).
    Where that is not available, the 1-minute load average. 0 where neither is.

    The moment, not the 1-minute average: the average lags by a minute both ways. It still counted work that had
    ended (an idle machine right after a test run read 0.8 and got one thread), and it hardly sees a job started
    seconds ago; a job that keeps cores busy is runnable at every look."""
    import time

    try:
        now = []
        for i in range(samples):
            if i:
                time.sleep(spacing)
            with open("/proc/loadavg") as f:
                now.append(int(f.read().split()[3].split("/")[0]) - 1)  # less ourselves: the thread reading
        return max(0.0, float(sorted(now)[len(now) // 2]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def machine() -> tuple[int, float, int]:
    """``(usable cores, load of other jobs, cores of the machine)``: the inputs of :func:`default_threads`."""
    cores, host = usable_cores()
    return cores, other_load(), host


def choose_threads(n: int | None = None) -> tuple[int | None, str]:
    """``(threads, why)``: ``n`` if given; ``None`` (torch left alone) when the user set ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS``; else :func:`default_threads` on this machine."""
    if n is not None:
        return int(n), "--threads"
    for var in THREAD_ENV_VARS:
        if os.environ.get(var, "").strip():
            return None, f"{var}={os.environ[var].strip()}"
    cores, load, host = machine()
    where = f"{cores} cores" + (f" of {host}" if host != cores else "")
    return default_threads(cores, load, host), f"{where}, load {load:.1f}"


def apply_threads(n: int | None = None) -> int | None:
    """Set torch's thread count: ``n`` (``--threads``), else the automatic choice of :func:`choose_threads`; logs one
    line saying how many and why. Returns the number set, or ``None`` when torch was left alone."""
    threads, why = choose_threads(n)
    import torch

    if threads is None:
        log.debug("torch threads: %d (%s)", torch.get_num_threads(), why)
        return None
    torch.set_num_threads(threads)
    log.debug("torch threads: %d (%s)", threads, why)
    return threads


@contextmanager
def kept_threads():
    """The caller's torch thread count, as it was when the block ends: a run that continues with its recorded count
    (:func:`continue_threads`) changed the thread count of the python process that called it for good (a resumed
    ``run_text_to_3d`` or ``train_domain`` left a notebook or test process at the run's count)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def continue_threads(recorded: int | None, what: str = "the run") -> None:
    """A resume continues with the thread count its run recorded: CPU results differ between thread counts in their
    last bits, and a resumed run is promised to equal an uninterrupted one bit for bit (so a ``--threads`` given now
    does not change it). Except a count above this machine's usable cores (a run begun on a larger machine: a 2-core
    machine ran 16 threads, several times slower, and recorded them again), which is lowered to them with a
    warning."""
    if not recorded:
        return
    import torch

    recorded = int(recorded)
    cores, _ = usable_cores()
    if recorded > cores:
        log.warning("--resume: %s started with %d torch threads, more than the %d core(s) this process may use: it "
                    "continues with %d (CPU results may differ from an uninterrupted run's in their last bits)",
                    what, recorded, cores, cores)
        torch.set_num_threads(cores)
        return
    if recorded != torch.get_num_threads():
        log.info("--resume: %d torch threads, as %s started with (results stay bit-identical)", recorded, what)
        torch.set_num_threads(int(recorded))
