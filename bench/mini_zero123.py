"""``python -m bench.mini_zero123 [--model DIR ...] [--per-shape N] [--turn DEG] [--shapes ...] [--samples K]``:
the mini Zero-1-to-3 against copying its input, shape by shape (issue 24, part 3); ``--start noise input``
compares the sampler started from pure noise (the default) and from the input view noised.

Held-out cases (:func:`suite.miniworld.views.heldout_cases`: coloured objects of every shape, a 90-degree turn
(``--turn``) and 15-30 degrees of elevation change, alternately left/right and up/down), ``N`` per shape
(``--shapes``: only some); for each model given (default: the shipped one) the novel view is sampled (DDIM,
``--steps``, guidance ``--scale``; ``--samples`` times with other seeds, IoU averaged) and compared with the
renderer's truth: silhouette IoU per shape (mean +- standard error), and the same for the copy baseline (the input
view returned unchanged). Writes ``zero123.json`` and ``zero123.md`` to ``--output`` when given.

``--ideal M`` adds an inverse-rendering observer of the same cases (:func:`ideal_observer`): it knows the world's
prior over each shape's parameters, the object's colour, the input and target elevations and the turn, and searches
(about ``M`` candidates) for the objects whose framed input views look most like the case's, as pixels drawn without
the pattern or (``--ideal-latent``) with it through the VAE latent Zero-1-to-3 is conditioned on. Its ``--ideal-keep``
best fits give two rows: "observer fits" (their mean IoU at the target view) and "observer vote" (their majority
silhouette's). How far the fits beat copying says how much of the target view one input view fixes.
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
              shapes=None, samples: int = 1, start: str = "noise") -> dict:
    """``{shape: {"iou", "iou_se", "copy_iou", "copy_iou_se", "gain", "gain_se", "n"}}`` plus ``"mean"`` (all cases)
    for ``model`` on ``per_shape`` held-out cases of each shape (``shapes``: only these, the same cases and seeds as
    in a run of all shapes), the target ``turn`` degrees round. ``gain`` is the paired difference IoU - copy IoU.
    ``samples`` > 1: each case's view is sampled that many times (other seeds) and its IoU is their mean. ``start``:
    what the sampler starts from (:func:`suite.zero123.novel_views`: the input view noised, or pure noise)."""
    from suite.miniworld.views import heldout_cases, measure_novel_views
    from suite.miniworld.world import SHAPES

    cases = heldout_cases(per_shape * len(SHAPES), seed=seed, turn=turn)  # the shapes come in turn
    keep = [i for i in range(len(cases)) if shapes is None or SHAPES[i % len(SHAPES)] in shapes]
    runs = [measure_novel_views(model, [cases[i] for i in keep], guidance_scale=scale, steps=steps,
                                seeds=[k * SAMPLE_STRIDE + i for i in keep], start=start) for k in range(samples)]
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
    """How many uniform draws :func:`suite.miniworld.world.make_object` takes for ``shape`` (the same for any
    values drawn)."""
    from suite.miniworld.world import make_object

    counter = _UnitDraws(np.full(64, 0.5))
    make_object(shape, "red", "plain", False, counter)
    return counter.k


def _candidate(obj, pattern: str, z):
    """The object of ``obj``'s shape, colour and finish at the point ``z`` of the prior's unit cube (its last
    coordinate, the azimuth, is not a draw), drawn with ``pattern``; and the azimuth ``z`` gives, in degrees."""
    from suite.miniworld.world import make_object

    draws = _UnitDraws(z)
    cand = make_object(obj.shape, obj.colour, pattern, obj.porcelain, draws)
    if draws.k != len(z) - 1:
        raise ValueError(f"make_object drew {draws.k} values for a {obj.shape}, the search gave {len(z) - 1}")
    return cand, -180.0 + 360.0 * float(z[-1])


class _Search:
    """One case of :func:`ideal_observer`: candidate objects, each evaluated as it is proposed (its input view's
    distance to the case's input view as the observer sees it), the target views rendered only for those kept."""

    def __init__(self, case, size: int, encode=None, pattern: bool = False):
        from dataclasses import replace

        from suite.miniworld.views import reference_framing, render_framed, silhouette

        obj, el0, az0, el1, az1 = case
        self.case, self.size, self.encode = case, size, encode or (lambda x: x)
        self.pattern = obj.pattern if pattern else "plain"
        framing = reference_framing(obj, el0, az0, size=4 * size)  # 256 px for 64 px views, as measure_novel_views
        self.rgb, _ = render_framed(obj, framing, [el0, el1], [az0, az1], size)
        self.truth = silhouette(self.rgb)  # [2, H, W]: input, target
        seen = self.rgb[:1] if pattern else render_framed(replace(obj, pattern="plain"), framing, [el0], [az0], size)[0]
        self.seen = self.encode(seen)
        self.z, self.distance, self.ancestor = [], [], []

    def add(self, zs, ancestors=None) -> None:
        from suite.miniworld.views import reference_framing, render_framed

        obj, el0 = self.case[0], self.case[1]
        for n, z in enumerate(zs):
            cand, az = _candidate(obj, self.pattern, z)
            rgb, _ = render_framed(cand, reference_framing(cand, el0, az, size=4 * self.size), [el0], [az], self.size)
            self.distance.append(float((self.encode(rgb) - self.seen).abs().mean()))
            self.ancestor.append(len(self.z) if ancestors is None else int(ancestors[n]))
            self.z.append(np.asarray(z, np.float64))

    def best(self, keep: int) -> np.ndarray:
        return np.argsort(self.distance, kind="stable")[:keep]

    def views(self, idx):
        """Silhouettes ``(inputs, targets)`` ``[len(idx), H, W]`` of candidates ``idx`` (each target turned from its
        own input view as the case's target is from the case's)."""
        import torch

        from suite.miniworld.views import reference_framing, render_framed, silhouette

        obj, el0, az0, el1, az1 = self.case
        inputs, targets = [], []
        for i in idx:
            cand, az = _candidate(obj, self.pattern, self.z[i])
            rgb, _ = render_framed(cand, reference_framing(cand, el0, az, size=4 * self.size), [el0, el1],
                                   [az, az + (az1 - az0)], self.size)
            sil = silhouette(rgb)
            inputs.append(sil[0])
            targets.append(sil[1])
        return torch.stack(inputs), torch.stack(targets)


def _ideal_case(case, rng, candidates: int, keep: int, size: int = 64, rounds: int = 4, encode=None,
                pattern: bool = False, masks: bool = False) -> dict:
    """:func:`ideal_observer` on one case."""
    from suite.miniworld.views import iou

    search = _Search(case, size, encode, pattern)
    dim = _draws(case[0].shape) + 1  # the last coordinate is the azimuth
    first = max(candidates // 2, keep)
    search.add(rng.random((first, dim)))
    children = max((candidates - first) // max(rounds * keep, 1), 1)
    for r in range(rounds):
        best = search.best(keep)
        step = 0.1 * 0.5 ** r
        moved = np.repeat(np.stack(search.z)[best], children, 0) + rng.normal(0, step, (keep * children, dim))
        moved[:, :-1] = np.clip(1 - np.abs(1 - np.abs(moved[:, :-1])), 0.0, 1.0)  # reflected into the unit cube
        moved[:, -1] %= 1.0  # the azimuth wraps round
        search.add(moved, np.repeat(np.asarray(search.ancestor)[best], children))
    best = search.best(keep)
    inputs, kept = search.views(best)
    vote = kept.float().mean(0) > 0.5
    truth = search.truth
    out = dict(fits_iou=float(iou(kept, truth[1:].expand_as(kept)).mean()),
               vote_iou=float(iou(vote[None], truth[1:])[0]),
               input_iou=float(iou(inputs, truth[:1].expand_as(inputs)).mean()),
               copy_iou=float(iou(truth[:1], truth[1:])[0]),
               ancestors=len(set(np.asarray(search.ancestor)[best].tolist())), evaluated=len(search.z))
    if masks:
        out.update(truth=truth, vote=vote, best=kept[0], rgb=search.rgb)
    return out


def ideal_observer(cases, candidates: int = 400, keep: int = 12, seed: int = 0, size: int = 64, rounds: int = 4,
                   encode=None, pattern: bool = False, indices=None, progress=None, masks: bool = False) -> dict:
    """What an inverse-rendering observer of each case's input view predicts for its target view
    (:func:`heldout_cases`'s cases).

    The observer knows the world's prior over the shape's parameters (:func:`suite.miniworld.world.make_object`), the
    object's colour, the input and target elevations and the turn. It searches for objects of the case's shape whose
    input views, seen from the input elevation at some azimuth and framed as the input is, look like the case's input
    view: by the mean absolute difference of their renders, both drawn without a pattern (``pattern`` False: the
    shape and its shading count, the pattern does not) or both with the case's pattern (``pattern`` True: its
    frequencies are searched too), compared as pixels or through ``encode`` (a map of images ``[B, 3, H, W]`` in [0,
    1], e.g. :func:`vae_latent`: what a model conditioned on that latent is given). The search: ``candidates // 2``
    from the prior, then ``rounds`` rounds in which each of the ``keep`` best so far gets ``(candidates -
    candidates // 2) // (rounds * keep)`` children, its point of the unit cube (the prior's draws and the azimuth)
    moved by a Gaussian step of 0.1 that halves each round. The ``keep`` best of all are the observer's best fits:
    near-copies of one or a few first-round candidates (``ancestors``), not independent draws from a posterior. Each is
    seen from its own target view and compared with the case's true target silhouette. Case ``i`` searches with the
    generator ``(seed, indices[i])`` (``indices``: the cases' numbers in :func:`heldout_cases`; default 0, 1, ...),
    so that a case's result does not depend on which other cases are measured.

    Returns per-case lists: ``fits_iou`` (the kept fits' mean IoU with the truth), ``vote_iou`` (their majority
    silhouette's), ``input_iou`` (their input silhouettes' mean IoU with the case's: how closely they explain the
    input), ``copy_iou``, ``ancestors`` and ``evaluated`` (candidates rendered); ``masks``: also ``pictures``, per case
    the truth's views and silhouettes, the best fit's and the majority target silhouettes."""
    indices = range(len(cases)) if indices is None else indices
    out = {k: [] for k in ("fits_iou", "vote_iou", "input_iou", "copy_iou", "ancestors", "evaluated")}
    pictures = []
    for n, (case, index) in enumerate(zip(cases, indices)):
        r = _ideal_case(case, np.random.default_rng([seed, int(index)]), candidates, keep, size, rounds, encode,
                        pattern, masks)
        for k in out:
            out[k].append(r[k])
        if masks:
            pictures.append({k: r[k] for k in ("truth", "vote", "best", "rgb", "vote_iou", "copy_iou")})
        if progress is not None:
            progress(n + 1, len(cases))
    if masks:
        out["pictures"] = pictures
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


def ideal_picture(pictures, path):
    """A picture of ``(shape, entry)`` pairs of :func:`ideal_observer`'s ``pictures``, a row each: the input, the true
    target view, the best fit's target silhouette and the fits' majority silhouette against the truth's, and the
    copy's (blue: both; green: missed; pink: drawn where the truth has none); labels: majority / copy IoU."""
    from PIL import Image

    from suite.images import save_image_atomic, tile_grid

    rows, labels = [], []
    for shape, r in pictures:
        views = [Image.fromarray((r["rgb"][k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                 for k in range(2)]
        rows.append([*views, _against(r["best"], r["truth"][1]), _against(r["vote"], r["truth"][1]),
                     _against(r["truth"][0], r["truth"][1])])
        labels.append(f"{shape} {r['vote_iou']:.2f}/{r['copy_iou']:.2f}")
    grid = tile_grid(rows, labels, ["input", "truth", "best fit", "majority", "copy"], scale=2, label_w=100)
    return save_image_atomic(grid, path)


def ideal_per_shape(per_shape: int = 12, seed: int = 12345, turn: float = 90.0, shapes=None, candidates: int = 400,
                    keep: int = 12, encode=None, pattern: bool = False, picture: int = 0) -> dict:
    """:func:`ideal_observer` on the cases :func:`per_shape` measures (same ``per_shape``, ``seed``, ``turn``,
    ``shapes``), in :func:`per_shape`'s form: ``{"observer fits": ..., "observer vote": ...}``, plus ``"input_iou"``
    and ``"ancestors"`` (per shape, means) and, with ``picture`` K, ``"pictures"``: the first K cases of each
    shape (shape, picture entry)."""
    from suite.miniworld.views import heldout_cases
    from suite.miniworld.world import SHAPES

    cases = heldout_cases(per_shape * len(SHAPES), seed=seed, turn=turn)
    chosen = [i for i in range(len(cases)) if shapes is None or SHAPES[i % len(SHAPES)] in shapes]
    names = np.asarray([SHAPES[i % len(SHAPES)] for i in chosen])

    def progress(done, total):
        if done % 6 == 0 or done == total:
            log.info("ideal observer: %d / %d cases", done, total)

    obs = ideal_observer([cases[i] for i in chosen], candidates, keep, encode=encode, pattern=pattern,
                         indices=chosen, progress=progress, masks=bool(picture))
    results = {name: _by_shape(obs[key], obs["copy_iou"], names)
               for name, key in (("observer fits", "fits_iou"), ("observer vote", "vote_iou"))}
    for key in ("input_iou", "ancestors"):
        v = np.asarray(obs[key], np.float64)
        results[key] = {s: float(v[names == s].mean()) for s in SHAPES if (names == s).any()}
    results["evaluated"] = int(np.mean(obs["evaluated"]))
    if picture:
        results["pictures"] = [(str(s), p) for s in dict.fromkeys(names)
                               for p in [p for n, p in zip(names, obs["pictures"]) if n == s][:picture]]
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


FRESH_SEED = 777
"""The fresh pairs of ``--training-pairs`` are drawn as the box phase's are, with this seed in place of its."""


def training_pairs(model, objects: int, steps: int = 30, scale: float = 3.0, shapes=("box",), build_seed: int = 0,
                   turns=None, build_size: str = "full", start: str = "noise") -> dict:
    """``model`` on the pairs its box-weighted phase trained on (the first ``objects`` objects of
    :func:`training.miniworld.box_pairs_spec`'s draw for the build of ``build_seed`` and ``build_size``, as its
    world's MANIFEST.json records them: each target view of each object
    of ``shapes`` not in the glaze, whose silhouette an image on white shows) and on fresh pairs drawn the same way
    (:data:`FRESH_SEED`): ``{"seen": ..., "fresh": ...}``, each as :func:`per_shape` gives it plus ``turn`` (the
    mean absolute azimuth change). A model that memorised its training pairs does better on the first."""
    from suite.miniworld.views import measure_novel_views
    from training import mini_zero123, miniworld

    spec = miniworld.box_pairs_spec(build_size)
    if objects > spec["objects"]:
        raise ValueError(f"the box phase of a {build_size!r} build trained on {spec['objects']} objects, so the "
                         f"'training' pairs past them would be fresh ones: give --training-pairs {spec['objects']} "
                         f"or fewer")
    out = {}
    for name, seed in (("seen", build_seed + spec["seed"]), ("fresh", FRESH_SEED)):
        cases = [(obj, els[0], azs[0], float(els[k]), float(azs[k]))
                 for obj, els, azs in mini_zero123.pair_objects(objects, 5, seed, spec["shapes"])
                 if obj.shape in shapes and not obj.porcelain for k in range(1, len(els))]
        if len({id(c[0]) for c in cases}) < 2:  # a standard error needs two objects
            raise ValueError(f"fewer than two of the first {objects} objects of the {name} pairs are a "
                             f"{' or '.join(shapes)} outside the glaze: give more, e.g. --training-pairs 100")
        m = measure_novel_views(model, cases, guidance_scale=scale, steps=steps, start=start)
        out[name] = _by_shape(m["iou"], m["copy_iou"], [c[0].shape for c in cases])
        out[name]["turn"] = float(np.mean([abs((c[4] - c[2] + 180) % 360 - 180) for c in cases]))
    return out


def training_pairs_table(results: dict) -> str:
    """``{model: training_pairs(...)}`` as a markdown table (not paired: the two sets are different cases)."""
    lines = ["| model | shape | training pairs: IoU / gain over copy | fresh pairs: IoU / gain over copy | "
             "fresh - training (IoU) | mean turn (training / fresh) |", "|---" * 6 + "|"]
    for name, r in results.items():
        for s in (*[s for s in _shapes(r["seen"]) if s in r["fresh"]], "mean"):  # the shapes both sets hold
            a, b = r["seen"][s], r["fresh"][s]
            diff, se = b["iou"] - a["iou"], float(np.hypot(a["iou_se"], b["iou_se"]))
            lines.append(f"| {name} | {s} (n={a['n']} / {b['n']}) | {a['iou']:.3f} / {a['gain']:+.3f} ± "
                         f"{a['gain_se']:.3f} | {b['iou']:.3f} / {b['gain']:+.3f} ± {b['gain_se']:.3f} | "
                         f"{diff:+.3f} ± {se:.3f} | {r['seen']['turn']:.0f} / {r['fresh']['turn']:.0f} |")
    return "\n".join(lines) + "\n"


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


def _name(folder: str, start: str, starts) -> str:
    """A model's name in the tables: its folder, and how its sampler started where more than one way was measured."""
    return folder if len(starts) == 1 else f"{folder} (start: {start})"


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
    p.add_argument("--start", nargs="+", choices=("noise", "input"), default=["noise"],
                   help="what the sampler starts from: pure noise ('noise', the default: Zero-1-to-3's own sampler) "
                        "or the input view noised to the first step's level ('input': a pull towards copying it); "
                        "give both to measure each model both ways on the same cases and seeds (the table pairs them)")
    p.add_argument("--samples", type=int, default=1,
                   help="sample each case's view this many times (other seeds) and average its IoU (default: 1)")
    p.add_argument("--ideal", type=int, default=0, metavar="M",
                   help="also measure an inverse-rendering observer with about M candidate objects per case (0: off; "
                        "at least twice --ideal-keep; e.g. 400: 15-40 s per case on one core)")
    p.add_argument("--ideal-keep", type=int, default=12,
                   help="the observer's best fits kept per case (default: %(default)s)")
    p.add_argument("--ideal-latent", action="store_true",
                   help="the observer compares the input views with their pattern, through the VAE latent that "
                        "Zero-1-to-3 is conditioned on (the first --model's, else the shipped model's), instead of as "
                        "pixels without their pattern")
    p.add_argument("--ideal-picture", type=int, default=0, metavar="K",
                   help="with --output: ideal.png, the observer's fits for the first K cases of each shape")
    p.add_argument("--no-model", action="store_true", help="measure no model (with --ideal: the observer only)")
    p.add_argument("--training-pairs", type=int, default=0, metavar="N",
                   help="instead of the held-out cases: each model on the pairs of the first N objects its "
                        "box-weighted phase trained on, and on N fresh objects drawn the same way, for --shapes (default: box); "
                        "does it do better on what it saw? (e.g. 100: about 6 minutes on one core)")
    p.add_argument("--output", default=None, help="folder for zero123.json and zero123.md")
    args = p.parse_args(argv)
    args.start = list(dict.fromkeys(args.start))  # "--start noise noise": measured once
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
               f"--ideal {args.ideal} --ideal-keep {args.ideal_keep}: keep at least 1 fit and give 0 (off) or at "
               "least twice as many candidates, e.g. --ideal 400 --ideal-keep 12"
               if args.ideal < 0 or args.ideal_keep < 1 or 0 < args.ideal < 2 * args.ideal_keep else
               f"--ideal-picture {args.ideal_picture}: give a number of cases per shape, 0 or more"
               if args.ideal_picture < 0 else
               "--ideal-picture writes ideal.png to --output: add e.g. --output out" if args.ideal_picture and not args.output
               else "--ideal-picture, --ideal-latent and --ideal-keep act on the observer: add e.g. --ideal 400"
               if (args.ideal_picture or args.ideal_latent or args.ideal_keep != 12) and not args.ideal else
               "--no-model measures nothing without --ideal: add e.g. --ideal 400" if args.no_model and not args.ideal
               else "--no-model and --model contradict each other: give one" if args.no_model and args.model
               else None)
    if not problem and args.training_pairs:
        problem = (f"--training-pairs {args.training_pairs}: give a number of objects, e.g. 100"
                   if args.training_pairs < 0 else
                   "--training-pairs measures models on their training pairs, not the observer: leave out --ideal "
                   "and --no-model" if args.ideal or args.no_model else None)
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        return 2
    if args.output:  # a folder of the user's: one sentence, before any work
        from bench import claim_output

        claim_output(args.output, "bench.mini_zero123", ("zero123.json",))
    from suite.files import write_text_atomic
    from suite.miniworld import assets
    from suite.zero123 import load_zero123

    shipped = str(assets.default_dir() / "zero123")
    folders = [] if args.no_model else args.model or [shipped]
    vae_folder = (args.model or [shipped])[0] if args.ideal and args.ideal_latent else None
    if shipped in (*folders, vae_folder):  # the shipped weights as MANIFEST.json says (a damaged file was measured)
        from bench import run_or_say

        run_or_say(assets.check)
    for folder in dict.fromkeys([*folders, *([vae_folder] if vae_folder else [])]):  # before any work is done
        if not (Path(folder) / "model_index.json").exists():
            print(f"error: {folder} is not a Zero-1-to-3 folder (no model_index.json); pass a folder written by "
                  "training.miniworld or save_zero123, or rebuild the mini world (python -m training.miniworld).",
                  file=sys.stderr)
            return 2
    if args.training_pairs:
        results = {}
        for folder in folders:
            t0 = time.time()
            world = Path(folder).resolve().parent / assets.MANIFEST  # the build's seed and size decide its training pairs
            if not world.is_file():
                print(f"error: --training-pairs needs to know how {folder} was built: it reads the seed and size from "
                      f"the mini world's {assets.MANIFEST} beside the folder ({world} is missing); pass a model "
                      f"inside a folder written by python -m training.miniworld.", file=sys.stderr)
                return 2
            built = json.loads(world.read_text())
            try:
                model = load_zero123(folder)
                for start in args.start:
                    results[_name(folder, start, args.start)] = training_pairs(
                        model, args.training_pairs, args.steps, args.scale,
                        tuple(args.shapes or ("box",)), build_seed=int(built["seed"]), build_size=built["size"],
                        start=start)
            except ValueError as e:
                print(f"error: {e}.", file=sys.stderr)
                return 2
            log.info("%s: training and fresh pairs, %.0f s", folder, time.time() - t0)
        md = training_pairs_table(results)
        print(md)
        if args.output:
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "zero123.json", json.dumps(dict(args=vars(args), results=results), indent=1))
            write_text_atomic(out / "zero123.md", md)
        return 0
    results, observer, pictures = {}, None, None
    for folder in folders:
        t0 = time.time()
        model = load_zero123(folder)
        for start in args.start:
            name = _name(folder, start, args.start)
            results[name] = per_shape(model, args.per_shape, args.steps, args.scale, turn=args.turn,
                                      shapes=args.shapes, samples=args.samples, start=start)
            log.info("%s: mean IoU %.3f (copy %.3f), %.0f s", name, results[name]["mean"]["iou"],
                     results[name]["mean"]["copy_iou"], time.time() - t0)
            t0 = time.time()
    if args.ideal:
        t0 = time.time()
        encode = vae_latent(load_zero123(vae_folder).vae) if vae_folder else None
        ideal = ideal_per_shape(args.per_shape, turn=args.turn, shapes=args.shapes, candidates=args.ideal,
                                keep=args.ideal_keep, encode=encode, pattern=args.ideal_latent,
                                picture=args.ideal_picture)
        observer = {k: ideal.pop(k) for k in ("input_iou", "ancestors", "evaluated")}
        pictures = ideal.pop("pictures", None)
        results.update(ideal)
        log.info("ideal observer: %.0f s", time.time() - t0)
    md = table(results)
    if observer is not None:
        md += ("\nThe observer's best fits: input silhouette IoU with the case's "
               + ", ".join(f"{s} {v:.3f}" for s, v in observer["input_iou"].items())
               + "; first-round ancestors among the kept (mean) "
               + ", ".join(f"{s} {v:.1f}" for s, v in observer["ancestors"].items())
               + f"; {observer['evaluated']} candidates per case"
               + (", compared through the VAE latent, with their pattern" if args.ideal_latent else
                  ", compared as pixels without their pattern") + ".\n")
    print(md)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "zero123.json", json.dumps(dict(args=vars(args), results=results, observer=observer),
                                                           indent=1))
        write_text_atomic(out / "zero123.md", md)
        if pictures:
            ideal_picture(pictures, out / "ideal.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
