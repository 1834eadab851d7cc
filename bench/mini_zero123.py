"""``python -m bench.mini_zero123 [--model DIR ...] [--per-shape N] [--turn DEG] [--shapes ...] [--samples K]``:
the mini Zero-1-to-3 against copying its input, shape by shape (issue 24, part 3).

Held-out cases (:func:`suite.miniworld.views.heldout_cases`: coloured objects of every shape, a 90-degree turn
(``--turn``) and 15-30 degrees of elevation change, alternately left/right and up/down), ``N`` per shape
(``--shapes``: only some); for each model given (default: the shipped one) the novel view is sampled (DDIM,
``--steps``, guidance ``--scale``; ``--samples`` times with other seeds, IoU averaged) and compared with the
renderer's truth: silhouette IoU per shape (mean +- standard error), and the same for the copy baseline (the input
view returned unchanged). Writes ``zero123.json`` and ``zero123.md`` to ``--output`` when given.

``--ideal M`` adds what an ideal observer would get on the same cases (:func:`ideal_observer`): it knows the world's
prior over each shape's parameters, the object's colour, the input and target elevations and the turn, and sees the
input's shape and shading (without its pattern). Of ``M`` objects of the case's shape (random, then searched around
the best), the ``--ideal-keep`` whose framed input views match the case's best stand for its posterior. Their target
views give two rows: "ideal sampler" (their mean IoU: what a model that samples that posterior gets, as a diffusion
model samples) and "ideal vote" (their majority silhouette: a best single guess). The ideal sampler's gain over
copying is about what a perfect sampler of that posterior can gain from the input's shape.
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
    from suite.miniworld.views import heldout_cases, measure_novel_views
    from suite.miniworld.world import SHAPES

    cases = heldout_cases(per_shape * len(SHAPES), seed=seed, turn=turn)  # the shapes come in turn
    keep = [i for i in range(len(cases)) if shapes is None or SHAPES[i % len(SHAPES)] in shapes]
    runs = [measure_novel_views(model, [cases[i] for i in keep], guidance_scale=scale, steps=steps,
                                seeds=[k * SAMPLE_STRIDE + i for i in keep]) for k in range(samples)]
    iou = np.mean([r["iou"] for r in runs], 0)
    copy = np.asarray(runs[0]["copy_iou"])
    return _by_shape(iou, copy, [SHAPES[i % len(SHAPES)] for i in keep])


def _by_shape(iou, copy, shapes) -> dict:
    """Per-case IoUs (and the copy baseline's) summarised per shape and over all cases, as :func:`per_shape`
    returns them."""
    from suite.metrics import standard_error
    from suite.miniworld.world import SHAPES

    iou, copy, names = np.asarray(iou, np.float64), np.asarray(copy, np.float64), np.asarray(shapes)

    def stats(sel):
        a, b = iou[sel], copy[sel]
        return dict(n=int(sel.sum()), iou=float(a.mean()), iou_se=standard_error(a), copy_iou=float(b.mean()),
                    copy_iou_se=standard_error(b), gain=float((a - b).mean()), gain_se=standard_error(a - b))

    out = {s: stats(names == s) for s in SHAPES if (names == s).any()}
    out["mean"] = stats(np.ones(len(names), bool))
    out["cases"] = dict(shape=names.tolist(), iou=iou.round(4).tolist(), copy_iou=copy.round(4).tolist())
    return out


class _UnitDraws:
    """A generator for :func:`suite.miniworld.world.make_object` whose uniform draws are given: the ``k``-th draw is
    ``lo + (hi - lo) * z[k]``, so that a point ``z`` of the unit cube is one object of the shape's prior."""

    def __init__(self, z):
        self.z, self.k = z, 0

    def uniform(self, lo, hi):
        v = lo + (hi - lo) * float(self.z[self.k])
        self.k += 1
        return v


def _draws(shape: str) -> int:
    """How many uniform draws :func:`suite.miniworld.world.make_object` takes for ``shape``."""
    from suite.miniworld.world import make_object

    counter = _UnitDraws(np.full(64, 0.5))
    make_object(shape, "red", "plain", False, counter)
    return counter.k


def ideal_observer(cases, candidates: int = 600, keep: int = 12, seed: int = 0, size: int = 64, rounds: int = 4,
                   progress=None, encode=None) -> dict:
    """What an ideal observer of each case's input view predicts for its target view (:func:`heldout_cases`'s cases).

    The observer knows the world's prior over the shape's parameters (:func:`suite.miniworld.world.make_object`), the
    object's colour, the input and target elevations and the turn, and sees the input's shape and shading: candidate
    objects of the case's shape in its colour, seen from the input elevation at some azimuth and framed as the input
    is, are compared with the case's input view by the mean absolute difference of their lit renders, both drawn
    without a pattern (so more than the silhouette counts, e.g. the edges between a box's faces; the pattern does
    not). A search finds the candidates that match best: ``candidates`` from the prior, then ``rounds`` rounds in
    which each of the ``keep`` best so far has ``candidates // (rounds * keep)`` children, its parameters (a point of
    the unit cube of the prior's draws, and the azimuth) moved by a Gaussian step that halves each round. The ``keep``
    best of all stand for the posterior: they agree on what the input shows and spread along what it hides (a
    hidden parameter does not change the distance). Each is seen from its own target view (the case's target
    elevation, its azimuth turned as the case's) and compared with the case's true target silhouette.

    ``encode``: compare the input views through this map of images ``[B, 3, H, W]`` in [0, 1] (e.g. a VAE's latent, to
    see only what a model conditioned on that latent sees) instead of by their pixels.

    Returns per-case lists: ``sample_iou`` (the kept candidates' mean IoU with the truth), ``vote_iou`` (their
    majority silhouette's), ``input_iou`` (their input silhouettes' mean IoU with the case's: how closely they explain
    the input) and ``copy_iou``."""
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("sample_iou", "vote_iou", "input_iou", "copy_iou")}
    for n, case in enumerate(cases):
        for k, v in _ideal_case(case, rng, candidates, keep, size, rounds, encode=encode).items():
            out[k].append(v)
        if progress is not None:
            progress(n + 1, len(cases))
    return out


class _Candidates:
    """Candidate objects of one case for :func:`ideal_observer`, evaluated as they are proposed: their parameters,
    distance to the input view and input / target silhouettes."""

    def __init__(self, case, size: int, encode=None):
        from dataclasses import replace

        from suite.miniworld.views import reference_framing, render_framed, silhouette

        obj, el0, az0, el1, az1 = case
        self.case, self.size = case, size
        framing = reference_framing(obj, el0, az0)
        self.rgb, _ = render_framed(obj, framing, [el0, el1], [az0, az1], size)
        self.truth = silhouette(self.rgb)  # [2, H, W]: input, target
        self.encode = encode or (lambda x: x)
        plain, _ = render_framed(replace(obj, pattern="plain"), framing, [el0], [az0], size)
        self.plain = self.encode(plain)
        self.z, self.distance, self.seen, self.target = [], [], [], []

    def add(self, zs) -> None:
        from suite.miniworld.views import reference_framing, render_framed, silhouette
        from suite.miniworld.world import make_object

        obj, el0, az0, el1, az1 = self.case
        for z in zs:
            cand = make_object(obj.shape, obj.colour, "plain", obj.porcelain, _UnitDraws(z))
            az = -180.0 + 360.0 * float(z[-1])
            rgb, _ = render_framed(cand, reference_framing(cand, el0, az), [el0, el1], [az, az + (az1 - az0)],
                                   self.size)
            sil = silhouette(rgb)
            self.z.append(z)
            self.distance.append(float((self.encode(rgb[:1]) - self.plain).abs().mean()))
            self.seen.append(sil[0])
            self.target.append(sil[1])

    def best(self, keep: int) -> np.ndarray:
        return np.argsort(self.distance, kind="stable")[:keep]


def _ideal_case(case, rng, candidates: int, keep: int, size: int, rounds: int, masks: bool = False,
                encode=None) -> dict:
    import torch

    from suite.miniworld.views import iou

    pool = _Candidates(case, size, encode)
    dim = _draws(case[0].shape) + 1  # the last coordinate is the azimuth
    first = max(candidates // 2, keep) if rounds else candidates
    pool.add(rng.random((first, dim)))
    children = max((candidates - first) // max(rounds * keep, 1), 1)
    for r in range(rounds):
        step = 0.1 * 0.5 ** r
        moved = np.repeat(np.asarray(pool.z)[pool.best(keep)], children, 0) + rng.normal(0, step, (keep * children, dim))
        moved[:, :-1] = 1 - np.abs(1 - np.abs(moved[:, :-1]))  # reflected into the unit cube
        moved[:, -1] %= 1.0  # the azimuth wraps round
        pool.add(np.clip(moved, 0.0, 1.0))
    best = torch.as_tensor(pool.best(keep))
    kept = torch.stack(pool.target)[best]
    vote = kept.float().mean(0, keepdim=True) > 0.5
    truth = pool.truth
    out = dict(sample_iou=float(iou(kept, truth[1:].expand_as(kept)).mean()), vote_iou=float(iou(vote, truth[1:])[0]),
               input_iou=float(iou(torch.stack(pool.seen)[best], truth[:1].expand(keep, -1, -1)).mean()),
               copy_iou=float(iou(truth[:1], truth[1:])[0]))
    if masks:
        out.update(truth=truth, vote=vote[0], best=kept[0], rgb=pool.rgb)
    return out


def vae_latent(vae):
    """The map ``images [B, 3, H, W] in [0, 1] -> the mode of vae's latent``, as Zero-1-to-3 encodes its input
    (:class:`suite.zero123.Zero123Guidance`'s ``c_concat``)."""
    import torch

    @torch.no_grad()
    def encode(images):
        return vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist.mode().float()

    return encode


def _against(mask, truth):
    """A silhouette against the truth's as an image: blue where both are, green where only the truth is (missed),
    pink where only ``mask`` is, white elsewhere."""
    from PIL import Image

    img = np.full((*truth.shape, 3), 255, np.uint8)
    m, t = mask.numpy(), truth.numpy()
    img[m & t] = (70, 110, 220)
    img[t & ~m] = (60, 190, 90)
    img[m & ~t] = (240, 120, 200)
    return Image.fromarray(img)


def ideal_picture(cases, path, candidates: int = 400, keep: int = 12, seed: int = 0, encode=None):
    """A picture of :func:`ideal_observer` on ``cases``, a row each: the input, the true target view, the ideal
    observer's best match seen from the target (its silhouette against the truth's) and its majority silhouette, and
    the copy's silhouette against the truth's (blue: both; green: missed; pink: drawn where the truth has none)."""
    from PIL import Image

    from suite.images import save_image_atomic, tile_grid

    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for obj, el0, az0, el1, az1 in cases:
        r = _ideal_case((obj, el0, az0, el1, az1), rng, candidates, keep, 64, 4, masks=True, encode=encode)
        views = [Image.fromarray((r["rgb"][k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                 for k in range(2)]
        rows.append([*views, _against(r["best"], r["truth"][1]), _against(r["vote"], r["truth"][1]),
                     _against(r["truth"][0], r["truth"][1])])
        labels.append(f"{obj.shape} {r['vote_iou']:.2f}/{r['copy_iou']:.2f}")
    grid = tile_grid(rows, labels, ["input", "truth", "best match", "majority", "copy"], scale=2, label_w=100)
    return save_image_atomic(grid, path)


def ideal_per_shape(per_shape: int = 12, seed: int = 12345, turn: float = 90.0, shapes=None, candidates: int = 600,
                    keep: int = 12, encode=None) -> dict:
    """:func:`ideal_observer` on the cases :func:`per_shape` measures (same ``per_shape``, ``seed``, ``turn``,
    ``shapes``), in :func:`per_shape`'s form: ``{"ideal sampler": ..., "ideal vote": ...}`` plus ``"input_iou"``
    (per shape: how closely the kept candidates explain the input, mean)."""
    from suite.miniworld.views import heldout_cases
    from suite.miniworld.world import SHAPES

    cases = heldout_cases(per_shape * len(SHAPES), seed=seed, turn=turn)
    keep_i = [i for i in range(len(cases)) if shapes is None or SHAPES[i % len(SHAPES)] in shapes]
    names = np.asarray([SHAPES[i % len(SHAPES)] for i in keep_i])

    def progress(done, total):
        if done % 6 == 0 or done == total:
            log.info("ideal observer: %d / %d cases", done, total)

    obs = ideal_observer([cases[i] for i in keep_i], candidates, keep, progress=progress, encode=encode)
    results = {name: _by_shape(obs[key], obs["copy_iou"], names)
               for name, key in (("ideal sampler", "sample_iou"), ("ideal vote", "vote_iou"))}
    inp = np.asarray(obs["input_iou"])
    results["input_iou"] = {s: float(inp[names == s].mean()) for s in SHAPES if (names == s).any()}
    return results


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
    p.add_argument("--ideal", type=int, default=0, metavar="M",
                   help="also measure an ideal observer with M candidate objects per case (0: off; e.g. 400: about "
                        "25 s per case on one core)")
    p.add_argument("--ideal-keep", type=int, default=12,
                   help="candidates kept as the ideal observer's posterior (default: %(default)s)")
    p.add_argument("--ideal-latent", action="store_true",
                   help="the ideal observer compares input views by the shipped Zero-1-to-3's VAE latent (what its "
                        "concatenated input holds) instead of their pixels")
    p.add_argument("--ideal-picture", type=int, default=0, metavar="K",
                   help="with --output: ideal.png, the ideal observer on the first K cases of each shape (default: 0)")
    p.add_argument("--no-model", action="store_true", help="measure no model (with --ideal: the ideal observer only)")
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
               f"--turn {args.turn}: give a finite number of degrees, e.g. 90" if not np.isfinite(args.turn) else
               f"--ideal {args.ideal} --ideal-keep {args.ideal_keep}: give 0 (off) or more candidates than are kept, "
               "and keep at least 1, e.g. --ideal 600 --ideal-keep 12"
               if args.ideal < 0 or args.ideal_keep < 1 or 0 < args.ideal <= args.ideal_keep else
               "--no-model measures nothing without --ideal: add e.g. --ideal 600" if args.no_model and not args.ideal
               else "--ideal-picture and --ideal-latent need --ideal (and the picture --output): add e.g. --ideal 400"
               if (args.ideal_picture or args.ideal_latent) and not args.ideal
               or args.ideal_picture and not args.output or args.ideal_picture < 0 else None)
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        return 2
    from suite.files import write_text_atomic
    from suite.miniworld import assets
    from suite.zero123 import load_zero123

    folders = [] if args.no_model else args.model or [str(assets.default_dir() / "zero123")]
    results, input_iou, encode = {}, None, None
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
    if args.ideal:
        t0 = time.time()
        encode = vae_latent(load_zero123(str(assets.default_dir() / "zero123")).vae) if args.ideal_latent else None
        ideal = ideal_per_shape(args.per_shape, turn=args.turn, shapes=args.shapes, candidates=args.ideal,
                                keep=args.ideal_keep, encode=encode)
        input_iou = ideal.pop("input_iou")
        results.update(ideal)
        log.info("ideal observer: %.0f s", time.time() - t0)
    md = table(results)
    if input_iou is not None:
        md += ("\nThe ideal observer's kept candidates match the input silhouette with IoU "
               + ", ".join(f"{s} {v:.3f}" for s, v in input_iou.items()) + ".\n")
    print(md)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "zero123.json", json.dumps(dict(args=vars(args), results=results,
                                                                 ideal_input_iou=input_iou), indent=1))
        write_text_atomic(out / "zero123.md", md)
        if args.ideal_picture:
            from suite.miniworld.views import heldout_cases

            cases = heldout_cases(args.per_shape * len(SHAPES), turn=args.turn)
            chosen = [c for s in (args.shapes or SHAPES)
                      for c in [c for i, c in enumerate(cases) if SHAPES[i % len(SHAPES)] == s][:args.ideal_picture]]
            ideal_picture(chosen, out / "ideal.png", max(args.ideal, 2 * args.ideal_keep), args.ideal_keep, encode=encode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
