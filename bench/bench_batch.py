"""Batch generation on 1 and 2 processes, and the manifest's overhead (``python -m bench.bench_batch``).

Runs ``launch.py generate --preset mini --prompts-file ... --seeds ...`` as one process and under
``accelerate launch --multi_gpu --num_processes 2 ... --device cpu`` (gloo), alternating, and reports images per
second (model loading included, as a user sees it) and the ratio; checks that both runs wrote the same files. The
manifest's cost is timed separately: one line appended and fsync'd per image, against the time per image.
Run it on a quiet machine; it prints ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, env) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", default="0-31")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    tmp = Path(tempfile.mkdtemp())
    prompts = tmp / "p.txt"
    prompts.write_text("a cup\na vase\n")
    lo, hi = (int(x) for x in args.seeds.split("-"))
    n = 2 * (hi - lo + 1)
    common = ["generate", "--preset", "mini", "--prompts-file", str(prompts), "--seeds", args.seeds, "--steps",
              str(args.steps), "--device", "cpu"]
    times = {"1 process (2 threads)": [], "2 processes (1 thread each)": []}
    for r in range(args.rounds):
        one, two = tmp / f"one{r}", tmp / f"two{r}"
        env1 = {**os.environ, "PYTHONPATH": str(ROOT)}
        times["1 process (2 threads)"].append(_run([sys.executable, str(ROOT / "launch.py"), *common, "--threads", "2",
                                                    "--output", str(one)], env1))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        env2 = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        times["2 processes (1 thread each)"].append(_run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
             str(ROOT / "launch.py"), *common, "--output", str(two)], env2))
    for name, ts in times.items():
        best = min(ts)
        print(f"{name}: {n} images, best of {len(ts)} {best:.1f} s = {n / best:.2f} images/s (all: "
              f"{', '.join(f'{t:.1f}' for t in ts)})")
    a, b = (min(v) for v in times.values())
    print(f"ratio 2 processes / 1 process (wall time): {b / a:.2f}")
    # the manifest: one fsync'd line per image
    part = tmp / "m.jsonl"
    t = time.perf_counter()
    for i in range(200):
        with open(part, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"index": i, "file": "x.png", "prompt": "a cup", "seed": 0}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    per_line = (time.perf_counter() - t) / 200
    print(f"manifest: {per_line * 1e3:.2f} ms per image, {100 * per_line / (a / n):.2f}% of the time per image")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
