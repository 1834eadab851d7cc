"""``python -m bench.mini3d_stage1 --output DIR [--weights ...] [--rules ...] [--seeds N]``: the look of stage 1's
image, which the 3D object inherits (issue 24, part 4), against the domain weight ``w_d`` it is drawn with (and,
with ``--rules``, the guidance rule: e.g. more domain guidance at the clean end only, ``domain-ramp=3:0.5``).

For each prompt (a cup, a box, a ball by default), seed and weight the mini flow's stage-1 image is drawn by the
flow's own :func:`generators3d.run.stage1_image`, as ``launch.py 3d --preset mini --image-domain-weight W`` draws it
(the domain's recommended weights, ``w_d`` 1, when ``W`` is ``recommended``; the mini preset's own default is 1.25)
and measured on its object pixels (the flow's own foreground mask): the look distance to the world's porcelain
objects of the prompt's class (:func:`bench.mini3d_stage3.look_distance`: about 0.05 for a soft but perfect porcelain
object, 0.16 for a blue one), whether the judge reads the prompt's shape, and the judge's porcelain probability.
Writes ``stage1.json``, ``stage1.md`` and ``stage1.png`` (a row per weight and rule: two seeds per prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from generators3d.config import RECOMMENDED  # the domain's recommended weights (a torch-free module)


def pipeline(cfg):
    """The pipeline the 3D flow draws stage 1 with for ``cfg`` (a resolved :class:`ThreeDConfig`)."""
    from suite.presets import build_pipeline

    return build_pipeline(cfg.preset, cfg.domain, cfg.sd_model, cfg.domain_model, None, False, cfg.device, cfg.dtype)


def measure(pipe, judge, prompt: str, seed: int, weight, cfg, rule: str | None = None) -> tuple[dict, torch.Tensor]:
    """One stage-1 image: ``({"look", "shape_kept", "porcelain"}, image [3, H, W])``. ``rule``: a guidance rule for
    the image (None or ``recommended``: the domain's)."""
    from dataclasses import replace

    from bench.mini3d import _shape_named
    from bench.mini3d_stage3 import look_distance, world_colours
    from generators3d.mask import foreground_mask
    from generators3d.run import stage1_image

    shape = _shape_named(prompt)
    w = RECOMMENDED if weight == RECOMMENDED else float(weight)  # "recommended": the domain's weights, not the preset's
    image = stage1_image(pipe, replace(cfg, seed=seed, image_domain_weight=w), prompt,
                         guidance_rule=None if rule in (None, RECOMMENDED) else rule)
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    mask = torch.from_numpy(np.asarray(foreground_mask(image, cfg.mask_method)) > 127)[None].float()
    look = look_distance(x, mask, world_colours(shape, True, seed=1))  # NaN when the mask is empty
    return dict(look=look if np.isfinite(look) else None, shape_kept=float(judge.predict(x)["shape"][0] == shape),
                porcelain=float(judge.porcelain_probability(x)[0])), x[0]


def summarise(rows: list[dict]) -> dict:
    from suite.metrics import standard_error

    out = {}
    for key in ("look", "shape_kept", "porcelain"):
        v = np.asarray([r[key] for r in rows if r[key] is not None], float)  # look: None where nothing was found
        out[key] = float(v.mean()) if len(v) else None
        out[f"{key}_se"] = standard_error(v) if len(v) > 1 else None
        out[f"{key}_n"] = len(v)
    return out


def _cell(mean, se=None, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def table(results: dict, prompts: list[str]) -> str:
    lines = ["| w_d (rule) | look distance | prompt's shape kept | judge porcelain | "
             + " | ".join(f"{p}: look / shape" for p in prompts) + " |", "|---" * (4 + len(prompts)) + "|"]
    for weight, res in results.items():
        s = res["all"]
        cells = [f"{_cell(res[p]['look'])} / {_cell(res[p]['shape_kept'], digits=2)}" for p in prompts]
        lines.append(f"| {weight} | {_cell(s['look'], s['look_se'])} | {_cell(s['shape_kept'], s['shape_kept_se'], 2)}"
                     f" | {_cell(s['porcelain'], digits=2)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini3d_stage1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder for stage1.json, stage1.md and stage1.png")
    p.add_argument("--prompts", nargs="+", default=["a cup", "a box", "a ball"])
    p.add_argument("--weights", nargs="+", default=[RECOMMENDED, "1.25", "1.5", "1.75", "2"],
                   help="stage 1's w_d values ('recommended': the domain's own weights; default: %(default)s)")
    p.add_argument("--rules", nargs="+", default=[RECOMMENDED], metavar="RULE",
                   help="guidance rules for stage 1's image, each measured at every --weights value (suite.rules; "
                        "'recommended': the domain's own, on the mini world suite.miniworld.assets.MINI_RULE, "
                        "'domain=0-0.7, domain-ramp=1:1.5, control=0.7-1'; e.g. 'domain=0-0.7, domain-ramp=3:0.5, "
                        "control=0.7-1' puts more domain guidance at the clean end only; default: %(default)s)")
    p.add_argument("--seeds", type=int, default=32,
                   help="how many seeds per prompt, 0 to N-1 (a count, unlike bench.mini3d_stage3's list; default: "
                        "%(default)s, 96 images per weight for three prompts: the judge's shape reading of 16 boxes "
                        "swings by 0.1-0.2 between seed sets)")
    args = p.parse_args(argv)
    from bench.mini3d import _shape_named
    from suite.checks import UserError
    from suite.rules import check_rule_terms, parse_rule

    problem = weights_problem(args.weights)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for rule in args.rules:
        try:
            check_rule_terms(parse_rule(rule), ["domain", "control"])
        except UserError as e:
            print(f"error: --rules {rule!r}: {e}", file=sys.stderr)
            return 2
    if len(set(args.rules)) < len(args.rules):
        print("error: --rules names a value twice: give each once", file=sys.stderr)
        return 2
    bad = [q for q in args.prompts if _shape_named(q) is None]
    if bad:
        print(f"error: the prompt(s) {bad} name no shape of the mini world: use e.g. 'a cup'", file=sys.stderr)
        return 2
    if args.seeds < 2:
        print(f"error: --seeds {args.seeds}: give at least 2 (a standard error needs two images)", file=sys.stderr)
        return 2
    from bench import claim_output

    out = claim_output(args.output, "bench.mini3d_stage1", ("stage1.json",))  # a user's folder: one sentence

    from generators3d import ThreeDConfig
    from suite.cli import quiet_libraries
    from suite.miniworld import assets

    quiet_libraries()
    cfg = ThreeDConfig(preset="mini", prompt=args.prompts[0], device="cpu").resolved()
    pipe = pipeline(cfg)
    judge = assets.load_judge()
    results, rows_img = {}, []
    for rule, weight in ((r, w) for r in args.rules for w in args.weights):
        label = weight if args.rules == [RECOMMENDED] else f"{weight} ({rule})"
        res, every, images = {}, [], []
        for prompt in args.prompts:
            rows = []
            for seed in range(args.seeds):
                row, x = measure(pipe, judge, prompt, seed, weight, cfg, rule)
                rows.append(row)
                if seed < 2:
                    images.append(x)
            res[prompt] = summarise(rows)
            every += rows
        res["all"] = summarise(every)
        results[label] = res
        rows_img.append(torch.cat(images, -1))
        print(f"w_d {label}: look {res['all']['look']:.3f}, shape kept {res['all']['shape_kept']:.2f}", flush=True)
    md = table(results, args.prompts)
    write_results(out, "stage1", args, results, md, rows_img, 2)
    print(md)
    return 0


def weights_problem(weights: list[str]) -> str | None:
    """One sentence if a ``--weights`` value is not a weight between -100 and 100 or ``recommended``, or names a
    weight twice (``1.25`` and ``1.250`` alike); None when they are all fine."""
    from suite.checks import check_weight, finite_float

    for w in weights:
        try:
            if w != RECOMMENDED:
                check_weight(finite_float(w), "--weights")
        except (ValueError, argparse.ArgumentTypeError):
            return f"--weights {w}: give weights between -100 and 100 such as 1.25, or 'recommended'"
    if len({w if w == RECOMMENDED else float(w) for w in weights}) < len(weights):
        return "--weights names a value twice: give each once"
    return None


def write_results(out: Path, stem: str, args, results: dict, md: str, rows: list, scale: int) -> None:
    """``STEM.json`` (the arguments and results), ``STEM.md`` (the table) and ``STEM.png`` (the picture rows
    ``[3, h, w]``, stacked and enlarged ``scale`` times) in ``out``, each written atomically."""
    from PIL import Image

    from suite.files import write_text_atomic
    from suite.images import save_image_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{stem}.json", json.dumps(dict(args=vars(args), results=results), indent=1))
    write_text_atomic(out / f"{stem}.md", md)
    grid = (torch.cat(rows, -2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    save_image_atomic(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST),
                      out / f"{stem}.png")


if __name__ == "__main__":
    raise SystemExit(main())
