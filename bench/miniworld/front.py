"""Guidance rules against fine-tuning's whole curve, measured against the ideal answer (``python -m
bench.miniworld.front --output DIR``).

The mini world can render the ideal answer to "a porcelain cup" though no such image is in the domain data: the
prompted shape in the domain's glaze, from the domain's views (``training.miniworld.render_set("domain",
shapes=("cup",))``). Every method is measured by the judge (trained on renders only) on:

* **out-of-domain prompts** "a photo of a <ball/box/cone/cup/bottle>" (what the domain never shows): shape
  alignment (the judge's shape accuracy), domain score (the fraction it calls porcelain), and the look against
  the ideal renders: KID (unbiased, per shape then averaged; lower is better; the judge's raw features, so its
  scale is this feature space's own) and the Fréchet distance of the pooled set, both in the judge's 256-d
  feature space;
* **in-domain prompts** "a photo of a <vase/bowl>", where every method gets the shape and fidelity separates them.

Methods, all from the shipped base and the same 2,000 unlabeled porcelain renders:

* ``fine-tuning@N cfg c``: vanilla fine-tuning (bench.miniworld's recipe) stopped at N steps, prompted "a photo of a
  porcelain <shape>" with classifier-free guidance c: the curve at 30, 100, 300, 1,000 steps and two scales;
* ``ours <label>``: the shipped domain model + the untouched base through :class:`suite.guidance.MultiGuidance`
  with a guidance rule (:mod:`suite.rules`) and weights.

Images come in seed blocks (9 images per prompt and block, a new seed per block), pooled to ``ood_per_shape x 5``
and ``ind_per_shape x 2`` images per method (90 each by default); standard errors are binomial for the rates and
the jackknife's for KID. Results are cached per method in ``DIR/methods`` (and the fine-tuned UNets, the ideal
renders in ``DIR/cache``), so a rerun with more rules computes only the new ones. Writes ``table.md``,
``results.json``, ``front.png`` (the front: shape alignment against KID) and ``grid.png``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from suite.metrics import frechet_distance, kid_with_se

log = logging.getLogger(__name__)

OOD = ("ball", "box", "cone", "cup", "bottle")
IND = ("vase", "bowl")

#: ours' rows: (label, w_d, w_c, rule). The paper's two settings, the authors' fixed example, the preset's old
#: weights, then rules beyond the paper; ``("default", None, None, None)`` is the pipeline's own default (no weight
#: and no rule given: what ``pipe(prompt)``, the CLI and the app use).
RULES: tuple = (
    ("paper auto", "auto", "auto", "paper"),
    ("authors 2.5/2.5", 2.5, 2.5, "paper"),
    ("fixed 1/7 (the old default)", 1.0, 7.0, "paper"),
    ("fixed 1.5/7", 1.5, 7.0, "paper"),
    ("auto, domain share 0.15", "auto", "auto", "domain-share=0.15, domain-max=1.5"),
    ("default", None, None, None),
    ("split 0.8 (1/7)", 1.0, 7.0, "domain=0-0.8, control=0.8-1"),
    ("split 0.7 (1.5/7)", 1.5, 7.0, "domain=0-0.7, control=0.7-1"),
    ("text above 0.5 (1/10)", 1.0, 10.0, "control=0.5-1"),
    ("domain perp text (1.5/7)", 1.5, 7.0, "project=domain:control"),
    ("clamp 1 (1.5/7)", 1.5, 7.0, "clamp=1"),
)


@dataclass(frozen=True)
class Config:
    ft_steps: tuple = (30, 100, 300, 1000)
    ft_cfgs: tuple = (5.0, 7.5)
    ft_batch: int = 32
    ft_lr: float = 2e-4
    n_domain: int = 2000
    ood_per_shape: int = 18          # x 5 shapes = 90 images per method
    ind_per_shape: int = 45          # x 2 shapes = 90
    block: int = 9                   # images per prompt and seed block
    n_ideal: int = 200               # ideal renders per shape
    sample_steps: int = 20
    seed: int = 0                    # seeds of the sampled images (a search uses another range than the report)
    ft_seed: int = 0
    rules: tuple = RULES
    fine_tuning: bool = True
    small_batch_ft: tuple = ((300, 8),)  # (steps, batch) runs at cfg 5 beside the curve: the CI-sized recipe


FULL = Config()
#: The CI-sized comparison (tests/bench/test_miniworld_front.py): the pipeline's default against fine-tuning@300
#: (classifier-free guidance 5, bench.miniworld's length) on 45 out-of-domain images each. Fine-tuning runs at batch
#: 8 instead of 32 to fit a test's minutes (the same steps and learning rate; FULL measures both batches).
QUICK = Config(ft_steps=(300,), ft_cfgs=(5.0,), ft_batch=8, n_domain=500, ood_per_shape=9, ind_per_shape=9,
               n_ideal=40, rules=(("default", None, None, None),), small_batch_ft=())


def _slug(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _ideal(cache: Path, config: Config) -> dict[str, np.ndarray]:
    """Renders of each shape in the domain's look (cached)."""
    from training.miniworld import render_set

    path = cache / f"ideal-{config.n_ideal}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    out = {s: render_set("domain", config.n_ideal, 7000 + i, workers=1, shapes=(s,))["images"]
           for i, s in enumerate(OOD + IND)}
    from suite.files import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **out)
    return out


def _fine_tuned(pipe, cache: Path, config: Config) -> dict[int, torch.nn.Module]:
    """Fine-tuned copies of the base UNet at each of ``config.ft_steps`` (one run at ``config.ft_batch``, cached as
    safetensors)."""
    from safetensors.torch import load_file, save_file

    from suite.files import atomic_path
    from training.miniworld import render_set

    from .compare import fine_tune

    key = _slug(config.ft_batch, config.ft_lr, config.n_domain, config.ft_seed)
    paths = {n: cache / f"fine-tuned-{key}-{n}.safetensors" for n in config.ft_steps}
    if not all(p.exists() for p in paths.values()):
        # in this process for a small set (a pool's start-up costs more than it saves); the same images either way
        images = render_set("domain", config.n_domain, config.ft_seed + 1000,
                            workers=1 if config.n_domain <= 500 else 2)["images"]
        tuned = fine_tune(pipe, images, tuple(config.ft_steps), config.ft_batch, config.ft_lr, config.ft_seed)
        for n, unet in tuned.items():
            with atomic_path(paths[n]) as tmp:
                save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp))
    out = {}
    for n, p in paths.items():
        unet = copy.deepcopy(pipe.unet).float()
        unet.load_state_dict(load_file(str(p)))
        out[n] = unet.eval().requires_grad_(False)
    return out


def _sample(call, shapes: tuple, per_shape: int, config: Config) -> np.ndarray:
    """``per_shape`` images of each shape (seed blocks of ``config.block``), uint8 ``[N, 64, 64, 3]``."""
    images = []
    for i, shape in enumerate(shapes):
        for b in range(0, per_shape, config.block):
            n = min(config.block, per_shape - b)
            seed = config.seed + 1000 * (b // config.block) + 17 * i
            out = call(shape, dict(num_images_per_prompt=n, seed=seed, num_inference_steps=config.sample_steps,
                                   output_type="np"))
            images.append((np.asarray(out.images) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def _measure(images: np.ndarray, shapes: tuple, per_shape: int, judge, ideal_feat: dict) -> dict:
    from suite.miniworld import assets

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pred = judge.predict(x)
    feat = judge.embed(x).detach().numpy()
    want = [s for s in shapes for _ in range(per_shape)]
    n = len(want)
    align = assets.accuracy(pred["shape"], want)
    dom = sum(pred["porcelain"]) / n
    kids, ses = [], []
    for i, s in enumerate(shapes):
        k, se = kid_with_se(feat[i * per_shape:(i + 1) * per_shape], ideal_feat[s])
        kids.append(k)
        ses.append(se)
    pooled_ref = np.concatenate([ideal_feat[s] for s in shapes])
    return dict(n=n, shape_align=align, shape_align_se=float(np.sqrt(align * (1 - align) / n)),
                domain=dom, domain_se=float(np.sqrt(dom * (1 - dom) / n)),
                kid=float(np.mean(kids)), kid_se=float(np.sqrt(np.sum(np.square(ses))) / len(shapes)),
                kid_per_shape={s: round(k, 2) for s, k in zip(shapes, kids)},
                fd=frechet_distance(feat, pooled_ref))


def methods(pipe, config: Config, fine_tuned: dict) -> dict:
    """``{name: (call(shape, kwargs), description)}`` for every method of the comparison."""
    from suite.pipeline import Control

    out = {}
    for n, unet in fine_tuned.items():
        for cfg in config.ft_cfgs:
            def call(shape, kw, unet=unet, cfg=cfg):
                ctl = [Control(prompt=f"a photo of a porcelain {shape}", unet=unet, weight=cfg, name="fine-tuned")]
                return pipe(None, controls=ctl, use_domain=False, rectify=False, **kw)
            out[f"fine-tuning@{n} cfg {cfg:g}"] = (call, dict(kind="fine-tuning", steps=n, cfg=cfg, batch=config.ft_batch,
                                                              lr=config.ft_lr, n_domain=config.n_domain,
                                                              ft_seed=config.ft_seed))
    for label, wd, wc, rule in config.rules:
        def call(shape, kw, wd=wd, wc=wc, rule=rule):
            return pipe(f"a photo of a {shape}", domain_weight=wd, control_weight=wc, guidance_rule=rule, **kw)
        if (wd, wc, rule) == (None, None, None):  # the default: written out, so that a new default is a new row
            from suite.rules import format_rule

            wd, wc = pipe.guidance_weights()
            rule = format_rule(pipe.guidance_rule()) or "paper"
            label = f"{label} ({wd:g}/{wc:g}, {rule})" if wd is not None and wc is not None else f"{label} ({rule})"
        out[f"ours {label}"] = (call, dict(kind="ours", domain_weight=wd, control_weight=wc, rule=rule,
                                           default=label.startswith("default")))
    return out


def run(config: Config, output: str | Path, only: list[str] | None = None) -> dict:
    from suite.miniworld import assets
    from suite.miniworld.judge import load_judge
    from suite.pipeline import InDomainPipeline

    out = Path(output)
    cache, per_method = out / "cache", out / "methods"
    cache.mkdir(parents=True, exist_ok=True)
    per_method.mkdir(parents=True, exist_ok=True)
    root = assets.default_dir()
    assets.check(root)
    judge = load_judge(root / assets.JUDGE_FILE)
    pipe = InDomainPipeline.load(str(root / "sd"), domain_model=str(root / "domain-porcelain"),
                                 domain=assets.MINI_PORCELAIN)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.time()
    models = hashlib.sha1((root / "MANIFEST.json").read_bytes()).hexdigest()[:12]  # a rebuild is new results
    ideal = _ideal(cache, config)
    ideal_feat = {s: judge.embed(torch.from_numpy(v).permute(0, 3, 1, 2).float() / 255).detach().numpy()
                  for s, v in ideal.items()}
    fine_tuned = _fine_tuned(pipe, cache, config) if config.fine_tuning else {}
    todo = methods(pipe, config, fine_tuned)
    for steps, batch in config.small_batch_ft if config.fine_tuning else ():
        small = replace(config, ft_steps=(steps,), ft_batch=batch, ft_cfgs=(5.0,), rules=())
        for name, (call, desc) in methods(pipe, small, _fine_tuned(pipe, cache, small)).items():
            todo[name.replace(" cfg", f" batch {batch} cfg")] = (call, dict(desc, kind="fine-tuning (small batch)"))
    rows = []
    for name, (call, desc) in todo.items():
        if only and not any(o in name for o in only):
            continue
        key = _slug(name, desc, config.seed, config.ood_per_shape, config.ind_per_shape, config.block,
                    config.sample_steps, config.n_ideal, models)
        path = per_method / f"{key}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        t1 = time.time()
        ood = _sample(call, OOD, config.ood_per_shape, config)
        ind = _sample(call, IND, config.ind_per_shape, config)
        row = dict(name=name, **desc, ood=_measure(ood, OOD, config.ood_per_shape, judge, ideal_feat),
                   ind=_measure(ind, IND, config.ind_per_shape, judge, ideal_feat), seconds=round(time.time() - t1, 1))
        from suite.files import atomic_path, write_text_atomic

        with atomic_path(per_method / f"{key}.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, ood=ood[:: config.ood_per_shape], ind=ind[:: config.ind_per_shape])
        row["images"] = f"{key}.npz"
        write_text_atomic(path, json.dumps(row, indent=1) + "\n")
        rows.append(row)
        o, i = row["ood"], row["ind"]
        log.info("%-40s ood: shape %.2f±%.2f dom %.2f kid %.1f±%.1f fd %.0f | ind: shape %.2f kid %.1f±%.1f (%.0f s)",
                 name, o["shape_align"], o["shape_align_se"], o["domain"], o["kid"], o["kid_se"], o["fd"],
                 i["shape_align"], i["kid"], i["kid_se"], row["seconds"])
    result = dict(config=asdict(config), rows=rows, seconds=round(time.time() - t0, 1))
    write_outputs(result, out)
    return result


# ---------------------------------------------------------------------------------------------------------
def markdown_table(result: dict) -> str:
    lines = ["| Method | out-of-domain: shape ↑ | domain ↑ | KID to ideal ↓ | FD ↓ | in-domain: shape ↑ | "
             "KID ↓ | FD ↓ |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        o, i = r["ood"], r["ind"]
        lines.append(f"| {r['name']} | {o['shape_align']:.2f} ± {o['shape_align_se']:.2f} | {o['domain']:.2f} | "
                     f"{o['kid']:.1f} ± {o['kid_se']:.1f} | {o['fd']:.0f} | {i['shape_align']:.2f} | "
                     f"{i['kid']:.1f} ± {i['kid_se']:.1f} | {i['fd']:.0f} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: Path) -> None:
    from suite.files import write_text_atomic

    write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n")
    write_text_atomic(out / "table.md", markdown_table(result))
    _plot(result, out / "front.png")
    _grid(result, out)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from suite.files import atomic_path

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    ft = [r for r in rows if r["kind"] == "fine-tuning"]
    for cfg in sorted({r["cfg"] for r in ft}):
        pts = sorted((r for r in ft if r["cfg"] == cfg), key=lambda r: r["steps"])
        ax.errorbar([r["ood"]["kid"] for r in pts], [r["ood"]["shape_align"] for r in pts],
                    xerr=[r["ood"]["kid_se"] for r in pts], yerr=[r["ood"]["shape_align_se"] for r in pts],
                    fmt="o-", capsize=2, label=f"fine-tuning, cfg {cfg:g}")
        for r in pts:
            ax.annotate(f"@{r['steps']}", (r["ood"]["kid"], r["ood"]["shape_align"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for r in (r for r in rows if r["kind"] == "fine-tuning (small batch)"):
        ax.errorbar([r["ood"]["kid"]], [r["ood"]["shape_align"]], xerr=[r["ood"]["kid_se"]],
                    yerr=[r["ood"]["shape_align_se"]], fmt="x", color="gray", capsize=2, label=r["name"])
    ours = [r for r in rows if r["kind"] == "ours"]
    for j, r in enumerate(ours):
        ax.errorbar([r["ood"]["kid"]], [r["ood"]["shape_align"]], xerr=[r["ood"]["kid_se"]],
                    yerr=[r["ood"]["shape_align_se"]], fmt="*" if r.get("default") else "s",
                    markersize=14 if r.get("default") else 6, capsize=2, color=plt.cm.tab20((j + 4) % 20),
                    label=r["name"])
    ax.set_xlabel("KID to the ideal renders (prompted shape in the glaze) ↓")
    ax.set_ylabel("shape alignment ↑")
    ax.set_title("out-of-domain prompts (ball, box, cone, cup, bottle)", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    ax = axes[1]
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, [r["ind"]["kid"] for r in rows], xerr=[r["ind"]["kid_se"] for r in rows],
            color=["C0" if r["kind"] == "fine-tuning" else "C2" for r in rows])
    ax.set_yticks(y, names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("KID to the ideal renders ↓")
    ax.set_title("in-domain prompts (vase, bowl)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _grid(result: dict, out: Path) -> None:
    """One row per method: the first image of each shape (out-of-domain, then in-domain)."""
    from PIL import Image, ImageDraw

    from suite.images import save_image_atomic

    tile, label_w = 64, 340
    shapes = OOD + IND
    rows = [r for r in result["rows"] if (out / "methods" / r.get("images", "-")).exists()]
    img = Image.new("RGB", (label_w + len(shapes) * tile, (len(rows) + 1) * tile), "white")
    draw = ImageDraw.Draw(img)
    for j, s in enumerate(shapes):
        draw.text((label_w + j * tile + 4, tile // 2), s, fill="black")
    for i, r in enumerate(rows):
        with np.load(out / "methods" / r["images"]) as f:
            tiles = list(f["ood"]) + list(f["ind"])
        draw.text((4, (i + 1) * tile + tile // 2 - 6), r["name"], fill="black")
        for j, t in enumerate(tiles):
            img.paste(Image.fromarray(t), (label_w + j * tile, (i + 1) * tile))
    save_image_atomic(img.quantize(256, method=Image.Quantize.MEDIANCUT), out / "grid.png")  # a third of the bytes


def main(argv=None) -> int:
    from suite.checks import int_at_least

    p = argparse.ArgumentParser(prog="python -m bench.miniworld.front", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder for table.md, results.json, front.png, grid.png (and caches)")
    p.add_argument("--quick", action="store_true", help="a CI-sized run")
    p.add_argument("--seed", type=int, default=0, help="first seed of the sampled images (default: %(default)s)")
    p.add_argument("--only", nargs="*", help="run only the methods whose names contain one of these")
    p.add_argument("--no-fine-tuning", action="store_true", help="ours' rows only")
    p.add_argument("--threads", type=int_at_least(1), default=None)
    args = p.parse_args(argv)
    from bench import claim_output

    # a user's folder: one sentence, before any work (an earlier output: its plot, its caches)
    claim_output(args.output, "bench.miniworld.front", ("front.png", "cache/ideal-*.npz", "methods/*.npz"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from suite.cli import quiet_libraries
    from suite.threads import apply_threads

    quiet_libraries()
    apply_threads(args.threads)
    config = QUICK if args.quick else FULL
    config = replace(config, seed=args.seed, fine_tuning=not args.no_fine_tuning)
    from bench import run_or_say

    result = run_or_say(run, config, args.output, args.only)
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
