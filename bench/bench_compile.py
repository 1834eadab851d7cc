"""torch.compile on the in-domain pipeline's UNets (CPU): eager against compiled sampling time, and how often
dynamo recompiles. The batch a UNet sees changes once, between the first step (automatic weights are measured:
the reference term joins the batch) and the next, so one recompile is expected, then none.

    TORCH_LOGS=recompiles python bench/bench_compile.py [--steps 8] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from suite.checks import int_at_least

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int_at_least(1), default=2)
    args = p.parse_args()

    import torch
    from torch._dynamo.utils import counters

    from suite.presets import build_pipeline

    torch.set_num_threads(args.threads)
    pipe = build_pipeline("tiny", "face", device="cpu", dtype="float32")

    def run() -> float:
        t = time.perf_counter()
        pipe("wearing glasses", num_inference_steps=args.steps, seed=0, output_type="latent")
        return time.perf_counter() - t

    run()  # warm-up
    eager = [run() for _ in range(args.runs)]
    pipe.unet = torch.compile(pipe.unet)
    pipe.domain_unet = torch.compile(pipe.domain_unet)
    first = run()
    compiled = [run() for _ in range(args.runs)]
    med = sorted(eager)[len(eager) // 2], sorted(compiled)[len(compiled) // 2]
    print(f"tiny pipeline, {args.steps} steps, {args.threads} threads, CPU")
    print(f"  eager     {med[0]:.3f} s/run (median of {args.runs})")
    print(f"  compiled  {med[1]:.3f} s/run (median of {args.runs}); ratio {med[1] / med[0]:.2f}")
    print(f"  first compiled run (compiling included) {first:.1f} s")
    print(f"  dynamo: {dict(counters['stats'])}; recompiles are listed by TORCH_LOGS=recompiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
