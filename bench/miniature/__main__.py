"""``python -m bench.miniature --output DIR [--quick] [--check]``: run the miniature experiment."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.miniature",
        description="Miniature of the paper's experiment on a CPU: base model trained on a synthetic open world, "
                    "adapted to an unlabeled 'porcelain' domain by fine-tuning, LoRA and ours (null-text domain "
                    "model + multi-guidance); writes table.md, results.json and grid.png.")
    p.add_argument("--output", required=True, help="output folder (created; trained models are cached in "
                                                   "OUTPUT/models and reused by a rerun with the same settings)")
    p.add_argument("--quick", action="store_true", help="the reduced CI-sized run (default: the full run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole run (default: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; 2 is faster on an idle 2-core machine, much slower on a busy one)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 unless ours keeps a higher text-control accuracy than vanilla "
                        "fine-tuning after the same number of adaptation steps (default: off)")
    p.add_argument("--export-base", action="store_true",
                   help="after the run, copy its base model (float16) into bench/miniature/assets so that --quick "
                        "starts from it (default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")

    from . import FULL, QUICK, control_gap, run
    from .report import markdown_table

    config = replace(QUICK if args.quick else FULL, seed=args.seed)
    report = run(config, args.output, progress=not args.no_progress, threads=args.threads)
    if args.export_base:
        from .experiment import export_base

        print("base model exported to", ", ".join(map(str, export_base(args.output, config))))
    print(markdown_table(report))
    print("timings (s):", report.timings)
    ours, ft = control_gap(report)
    kept = ours.align["align"] > ft.align["align"]
    print(f"text alignment: {ours.name} {ours.align['align']:.2f} vs {ft.name} {ft.align['align']:.2f} -> "
          f"{'ours keeps more control' if kept else 'ours does NOT keep more control'}")
    return 1 if args.check and not kept else 0


if __name__ == "__main__":
    sys.exit(main())
