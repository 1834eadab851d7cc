"""``python -m bench.miniworld --output DIR [--quick]``: the paper's comparison on the mini world."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv=None) -> int:
    from suite.checks import int_at_least

    from . import FULL, QUICK, claim, run
    from .compare import markdown_table

    p = argparse.ArgumentParser(prog="python -m bench.miniworld", description=__doc__)
    p.add_argument("--output", required=True, help="folder for table.md, results.json, grid.png, forgetting.png")
    p.add_argument("--quick", action="store_true", help="the small run (a few minutes on 2 cores)")
    p.add_argument("--threads", type=int_at_least(1), default=2)
    args = p.parse_args(argv)
    from bench import claim_output

    claim_output(args.output, "bench.miniworld", ("forgetting.png",))  # a user's folder: one sentence, before any work
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from suite.cli import quiet_libraries

    quiet_libraries()
    t0 = time.time()
    from bench import run_or_say

    result = run_or_say(run, QUICK if args.quick else FULL, args.output, threads=args.threads)
    print(markdown_table(result))
    ours, ft = claim(result)
    print(f"claim (ours keeps more out-of-domain control than fine-tuning at equal domain score): ours "
          f"{ours['shape_align']:.2f} align / {ours['text_domain']:.2f} domain vs {ft['name']} "
          f"{ft['shape_align']:.2f} / {ft['text_domain']:.2f}")
    print(f"wall time {time.time() - t0:.1f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
