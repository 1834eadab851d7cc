"""The automatic thread count on a busy machine: a command's wall time idle and beside other torch jobs.

Runs ``launch.py`` commands in a subprocess under each load (idle; one other 2-thread torch job; two other 1-thread
jobs, each the matrix-multiply loop of :func:`bench.bench_sampling.busy_machine`) and with each thread setting
(``auto``: the suite's default, :mod:`suite.threads`; ``N``: ``--threads N``, e.g. torch's own default of one per
core). Prints each wall time, the thread count the command chose, and the ratio to the same setting idle. Time it on
a quiet machine: nothing else may run beside it.

    python -m bench.bench_threads                       # the 3D flagship on the mini world (about 25 minutes)
    python -m bench.bench_threads --quick               # generate --num-images 8 on the mini world (a few minutes)
    python -m bench.bench_threads --settings auto 2 --loads idle 1x2
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_sampling import busy_machine

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ["3d", "--preset", "mini", "--domain", "porcelain", "--prompt", "a porcelain vase"]
QUICK = ["generate", "--preset", "mini", "--prompt", "a cup", "--num-images", "8", "--steps", "20"]
LOADS = {"idle": (0, 1), "1x2": (1, 2), "2x1": (2, 1)}


def run(command: list[str], setting: str, load: str) -> tuple[float, str]:
    """Wall seconds of one run, and the ``torch threads: ...`` line it logged."""
    k, threads = LOADS[load]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(INDOMAIN_PROGRESS_INTERVAL="600", INDOMAIN_LOG_LEVEL="debug")  # debug: the "torch threads" line
    with tempfile.TemporaryDirectory() as tmp, busy_machine(k, threads):
        if k:
            time.sleep(3.0)  # the other jobs are running when the command looks at the machine
        out = Path(tmp) / ("run" if command[0] == "3d" else "x.png")
        extra = [] if setting == "auto" else ["--threads", setting]
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, str(ROOT / "launch.py"), *command, *extra, "--output", str(out)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({res.returncode}): {res.stderr[-2000:]}")
    chose = re.search(r"torch threads: .*", res.stderr)
    return wall, chose.group(0) if chose else "?"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a mini-world generate batch instead of the 3D flagship")
    p.add_argument("--settings", nargs="+", default=["auto", "2"], help="thread settings (default: auto 2)")
    p.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS), help="loads (default: all)")
    args = p.parse_args(argv)
    command = QUICK if args.quick else FLAGSHIP
    print(f"command: launch.py {' '.join(command)}; uptime: {os.getloadavg()[0]:.2f} at start", flush=True)
    times: dict[tuple[str, str], float] = {}
    for load in args.loads:  # interleaved: every setting under one load before the next load
        for setting in args.settings:
            wall, chose = run(command, setting, load)
            times[(setting, load)] = wall
            idle = times.get((setting, "idle"))
            ratio = f"{wall / idle:.2f}x its idle time" if idle else ""
            print(f"{load:>5}  threads {setting:>4}  {wall:7.1f} s  {ratio:22s} ({chose})", flush=True)


if __name__ == "__main__":
    main()
