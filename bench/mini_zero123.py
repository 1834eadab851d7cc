"""``python -m bench.mini_zero123 [--model DIR ...] [--per-shape N] [--turn DEG] [--shapes ...] [--samples K]``:
the mini Zero-1-to-3 against copying its input, shape by shape (issue 24, part 3).

Held-out cases (:func:`suite.miniworld.views.heldout_cases`: coloured objects of every shape, a 90-degree turn
(``--turn``) and 15-30 degrees of elevation change, alternately left/right and up/down), ``N`` per shape
(``--shapes``: only some); for each model given (default: the shipped one) the novel view is sampled (DDIM,
``--steps``, guidance ``--scale``; ``--samples`` times with other seeds, IoU averaged) and compared with the
renderer's truth: silhouette IoU per shape (mean +- standard error), and the same for the copy baseline (the input
view returned unchanged). Writes ``zero123.json`` and ``zero123.md`` to ``--output`` when given.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.mini_zero123")


SAMPLE_STRIDE = 100_000
"""Sample ``k`` of case ``i`` is drawn with generator seed ``k * SAMPLE_STRIDE + i`` (sample 0: the seeds of
:func:`suite.miniworld.views.measure_novel_views`'s default)."""


def per_shape(model, per_shape: int = 12, steps: int = 30, scale: float = 3.0, seed: int = 12345, turn: float = 90.0,
              shapes=None, samples: int = 1) -> dict:
    """``{shape: {"iou", "iou_se", "copy_iou", "copy_iou_se", "gain", "gain_se", "n"}}`` plus ``"mean"`` (all cases)
    for ``model`` on ``per_shape`` held-out cases of each shape (``shapes``: only these, the same cases and seeds as
    in a run of all shapes), the target ``turn`` degrees round. ``gain`` is the paired difference IoU - copy IoU.
    ``samples`` > 1: each case's view is sampled that many times (other seeds) and its IoU is their mean."""
    from suite.metrics import standard_error
    from suite.miniworld.views import heldout_cases, measure_novel_views
    from suite.miniworld.world import SHAPES

    cases = heldout_cases(per_shape * len(SHAPES), seed=seed, turn=turn)  # the shapes come in turn
    keep = [i for i in range(len(cases)) if shapes is None or SHAPES[i % len(SHAPES)] in shapes]
    runs = [measure_novel_views(model, [cases[i] for i in keep], guidance_scale=scale, steps=steps,
                                seeds=[k * SAMPLE_STRIDE + i for i in keep]) for k in range(samples)]
    iou = np.mean([r["iou"] for r in runs], 0)
    copy = np.asarray(runs[0]["copy_iou"])
    names = np.asarray([SHAPES[i % len(SHAPES)] for i in keep])

    def stats(sel):
        a, b = iou[sel], copy[sel]
        return dict(n=int(sel.sum()), iou=float(a.mean()), iou_se=standard_error(a), copy_iou=float(b.mean()),
                    copy_iou_se=standard_error(b), gain=float((a - b).mean()), gain_se=standard_error(a - b))

    out = {s: stats(names == s) for s in SHAPES if (names == s).any()}
    out["mean"] = stats(np.ones(len(keep), bool))
    out["cases"] = dict(shape=names.tolist(), iou=iou.round(4).tolist(), copy_iou=copy.round(4).tolist())
    return out


def _shapes(result: dict) -> list:
    from suite.miniworld.world import SHAPES

    return [s for s in SHAPES if s in result]


def paired(results: dict, base: str, other: str) -> dict:
    """``{shape: (mean, standard error)}`` of ``other``'s IoU minus ``base``'s over the same cases (and ``"mean"``:
    all of them)."""
    from suite.metrics import standard_error

    a, b = results[base]["cases"], results[other]["cases"]
    if a["shape"] != b["shape"]:
        raise ValueError(f"{base} and {other} were measured on different cases: measure both in one run (the same "
                         "--per-shape, --shapes and --turn) to compare them")
    shapes = np.asarray(a["shape"])
    d = np.asarray(b["iou"]) - np.asarray(a["iou"])
    out = {}
    for s in (*_shapes(results[base]), "mean"):
        x = d if s == "mean" else d[shapes == s]
        out[s] = (float(x.mean()), standard_error(x))
    return out


def table(results: dict) -> str:
    names = list(results)
    diffs = {n: paired(results, names[0], n) for n in names[1:]}  # each further model against the first
    head = ("| shape | " + " | ".join(f"{n}: IoU / gain over copy" for n in names)
            + "".join(f" | {n} - {names[0]} (paired)" for n in names[1:]) + " | copy IoU |")
    lines = [head, "|---" * (2 * len(names) + 1) + "|"]
    for s in (*_shapes(results[names[0]]), "mean"):
        cells = [f"{results[n][s]['iou']:.3f} / {results[n][s]['gain']:+.3f} ± {results[n][s]['gain_se']:.3f}"
                 for n in names]
        cells += [f"{diffs[n][s][0]:+.3f} ± {diffs[n][s][1]:.3f}" for n in names[1:]]
        first = results[names[0]][s]
        lines.append(f"| {s} (n={first['n']}) | " + " | ".join(cells) + f" | {first['copy_iou']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini_zero123", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="*", default=None,
                   help="Zero-1-to-3 folders to measure (default: the shipped mini model)")
    p.add_argument("--per-shape", type=int, default=12, help="held-out cases per shape (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps per novel view (default: %(default)s)")
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--turn", type=float, default=90.0,
                   help="degrees of azimuth between the input and the target view (default: %(default)s)")
    p.add_argument("--shapes", nargs="*", default=None,
                   help="measure only these shapes (the same cases and seeds as a run of all of them)")
    p.add_argument("--samples", type=int, default=1,
                   help="sample each case's view this many times (other seeds) and average its IoU (default: 1)")
    p.add_argument("--output", default=None, help="folder for zero123.json and zero123.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.steps < 1 or not np.isfinite(args.scale) or args.scale < 0:
        print(f"error: --steps {args.steps} / --scale {args.scale}: give at least 1 DDIM step and a finite guidance scale "
              "of 0 or more, e.g. --steps 30 --scale 3.", file=sys.stderr)
        return 2
    if args.per_shape < 2:
        print("error: --per-shape must be at least 2 (a standard error needs two cases); pass e.g. --per-shape 12.",
              file=sys.stderr)
        return 2
    from suite.miniworld.world import SHAPES

    unknown = sorted(set(args.shapes or ()) - set(SHAPES))
    problem = (f"--shapes {' '.join(args.shapes or [])}: give shapes of the mini world ({', '.join(SHAPES)}), "
               "e.g. --shapes box cup" if unknown or args.shapes == [] else
               f"--samples {args.samples}: give at least 1" if args.samples < 1 else
               f"--turn {args.turn}: give a finite number of degrees, e.g. 90" if not np.isfinite(args.turn) else None)
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        return 2
    from suite.files import write_text_atomic
    from suite.miniworld import assets
    from suite.zero123 import load_zero123

    folders = args.model or [str(assets.default_dir() / "zero123")]
    results = {}
    for folder in folders:
        if not (Path(folder) / "model_index.json").exists():
            print(f"error: {folder} is not a Zero-1-to-3 folder (no model_index.json); pass a folder written by "
                  "training.miniworld or save_zero123.", file=sys.stderr)
            return 2
        t0 = time.time()
        results[folder] = per_shape(load_zero123(folder), args.per_shape, args.steps, args.scale, turn=args.turn,
                                    shapes=args.shapes, samples=args.samples)
        log.info("%s: mean IoU %.3f (copy %.3f), %.0f s", folder, results[folder]["mean"]["iou"],
                 results[folder]["mean"]["copy_iou"], time.time() - t0)
    md = table(results)
    print(md)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "zero123.json", json.dumps(dict(args=vars(args), results=results), indent=1))
        write_text_atomic(out / "zero123.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
