"""The paper's comparison (Table 1, Fig. 2) rerun on the mini world, from the shipped models.

Every method starts from the same shipped base (``suite/miniworld/models/sd``) and the same unlabeled porcelain
images (vases and bowls, front-ish views, rendered fresh with the build's recipe):

* ``base``: the base alone, prompted with the shape (classifier-free guidance ``cfg``);
* ``fine-tuning@N``: vanilla full fine-tuning of the base UNet on the domain images with the caption
  "a photo of porcelain" for N steps (the forgetting curve), prompted "a photo of a porcelain <shape>" with its
  own classifier-free guidance;
* ``fine-tuning@N + rect.``: the same UNet as a control term with the BASE model's unconditional prediction
  (unconditional guidance rectification, paper Sec. 4.5);
* ``ours``: the shipped null-text porcelain model (trained by ``launch.py train``) + the untouched base through
  :class:`suite.guidance.MultiGuidance`, automatic weights (``ours (auto)``) and fixed weights (``ours w_d=...``);
* ``ours w/o rect.``: the unconditional prediction ``eps_0`` taken from the domain model instead of the base.

Metrics see only images, through the judge (trained on renders only): text alignment = the judge's shape (and,
on colour prompts, colour) accuracy on prompts OUTSIDE the domain's forms (ball, box, cone, cup, bottle) and
colours; domain score = fraction of images the judge calls porcelain; Frechet distance of unconditional samples
to held-out domain renders in the judge's feature space; diversity = mean pairwise feature distance of the
unconditional samples, relative to that of the held-out renders.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from suite.metrics import diversity, frechet_distance

log = logging.getLogger(__name__)

DOMAIN_CAPTION = "a photo of porcelain"


@dataclass(frozen=True)
class Config:
    ft_steps: tuple = (100, 300, 1000)      # fine-tuning lengths (the forgetting curve); checkpoints of ONE run
    ft_batch: int = 32
    ft_lr: float = 2e-4                     # the same rate that trained the shipped domain model (TrainConfig.mini)
    n_domain: int = 2000                    # unlabeled porcelain training images (the build's count)
    n_heldout: int = 256                    # held-out domain renders for the Frechet distance
    images_per_prompt: int = 4
    colour_prompts: bool = True             # also "a photo of a <colour> <shape>" (colour conflicts with the domain)
    uncond_images: int = 32
    sample_steps: int = 20
    cfg: float = 5.0                        # classifier-free guidance of base and fine-tuned models
    fixed_weights: tuple = ((2.5, 2.5), (1.0, 5.0), (1.0, 7.0))  # (w_d, w_c) rows: the authors' example, then two more
    seed: int = 0


FULL = Config()
QUICK = Config(ft_steps=(50,), ft_batch=16, n_domain=300, n_heldout=64, images_per_prompt=2, colour_prompts=False,
               uncond_images=8, sample_steps=12, fixed_weights=())


@dataclass
class Row:
    name: str
    params: int
    shape_align: float = float("nan")     # judge's shape accuracy on out-of-domain shape prompts ("a photo of a cup")
    text_domain: float = float("nan")     # porcelain fraction of those images
    colour_align: float = float("nan")    # colour prompts ("a photo of a red cup"; nan when not run): colour accuracy,
    colour_shape_align: float = float("nan")  # shape accuracy,
    colour_domain: float = float("nan")   # and porcelain fraction (the colour conflicts with the glaze)
    uncond_domain: float = float("nan")
    uncond_fd: float = float("nan")
    diversity: float = float("nan")
    weights: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
def render_domain(n: int, seed: int) -> np.ndarray:
    from training.miniworld import render_set

    return render_set("domain", n, seed)["images"]


def fine_tune(pipe, images: np.ndarray, steps: tuple, batch: int, lr: float, seed: int,
              caption: str = DOMAIN_CAPTION) -> dict[int, torch.nn.Module]:
    """Vanilla fine-tuning of a copy of the base UNet on ``images`` with one ``caption`` ("a photo of porcelain")
    (the denoising loss of :func:`training.loss.denoising_loss`); a copy at each of ``steps``."""
    from training.loss import denoising_loss, training_scheduler
    from training.mini_models import encode_latents

    unet = copy.deepcopy(pipe.unet).float().train().requires_grad_(True)
    sched = training_scheduler(pipe.scheduler)
    lat = encode_latents(pipe.vae.float(), images) * pipe.vae.config.scaling_factor
    ehs = pipe.encode_prompt(caption).float()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    t0 = time.time()
    for step in range(1, max(steps) + 1):
        idx = torch.randint(0, len(lat), (batch,), generator=gen)
        x = lat[idx]
        flip = torch.rand(batch, generator=gen) < 0.5  # the same h-flip as the domain trainer
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = denoising_loss(unet, x, ehs, sched, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step in steps:
            out[step] = copy.deepcopy(unet).eval().requires_grad_(False)
            log.info("fine-tuning: %d steps, loss %.4f, %.1f s", step, loss.item(), time.time() - t0)
    return out


# ---------------------------------------------------------------------------------------------------------
def run(config: Config, output: str | Path, threads: int | None = None) -> dict:
    """Run every method, measure, and write ``table.md``, ``results.json``, ``forgetting.png`` and ``grid.png``
    into ``output``. Returns the results (also in ``results.json``)."""
    from suite.miniworld import assets
    from suite.miniworld.judge import load_judge
    from suite.pipeline import Control, InDomainPipeline

    if threads:
        torch.set_num_threads(threads)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    root = assets.default_dir()
    assets.check(root)
    judge = load_judge(root / assets.JUDGE_FILE)
    pipe = InDomainPipeline.load(str(root / "sd"), domain_model=str(root / "domain-porcelain"))
    nparams = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731

    # 1. Data: the unlabeled domain images (training) and held-out ones (Frechet distance reference).
    domain_train = render_domain(config.n_domain, config.seed + 1000)
    heldout = render_domain(config.n_heldout, config.seed + 2000)
    ref_feat = judge.embed(torch.from_numpy(heldout).permute(0, 3, 1, 2).float() / 255).numpy()
    ref_div = diversity(ref_feat)

    # 2. Fine-tuning baselines (one run, copies at each length).
    ft = fine_tune(pipe, domain_train, config.ft_steps, config.ft_batch, config.ft_lr, config.seed)
    t_ft = time.time() - t_start

    # 3. Prompts outside the domain's forms (and colours).
    shapes = assets.OUT_OF_DOMAIN_SHAPES
    shape_prompts = [(s, None) for s in shapes]
    colour_prompts = [(s, c) for s in shapes for c in assets.OUT_OF_DOMAIN_COLOURS] if config.colour_prompts else []
    k = config.images_per_prompt
    base_kw = dict(num_inference_steps=config.sample_steps)

    def text(s, c, porcelain_word):
        return f"a photo of a {'porcelain ' if porcelain_word else ''}{c + ' ' if c else ''}{s}"

    def sample(prompts, make_call):
        imgs, weights = [], []
        for i, (s, c) in enumerate(prompts):
            res = make_call(s, c, dict(base_kw, num_images_per_prompt=k, seed=config.seed + 17 * i))
            imgs += res.images
            weights.append(res.weights)
        return assets.images_to_tensor(imgs), weights

    methods = {}  # name -> (text call, unconditional call, params)
    methods["base"] = (lambda s, c, kw: pipe(text(s, c, False), use_domain=False, control_weight=config.cfg, **kw),
                       lambda kw: pipe(None, use_domain=False, **kw), nparams(pipe.unet))
    for n, unet in ft.items():
        ctl = lambda s, c, u=unet: [Control(prompt=text(s, c, True), unet=u, weight=config.cfg, name="fine-tuned")]  # noqa: E731
        methods[f"fine-tuning@{n}"] = (
            lambda s, c, kw, ctl=ctl: pipe(None, controls=ctl(s, c), use_domain=False, rectify=False, **kw),
            lambda kw, u=unet: pipe(None, controls=[Control(prompt=DOMAIN_CAPTION, unet=u, weight=config.cfg)],
                                    use_domain=False, rectify=False, **kw),
            nparams(unet))
        methods[f"fine-tuning@{n} + rect."] = (
            lambda s, c, kw, ctl=ctl: pipe(None, controls=ctl(s, c), use_domain=False, rectify=True, **kw),
            None, nparams(unet))
    dom_params = nparams(pipe.domain_unet) + nparams(pipe.unet)
    methods["ours (auto)"] = (lambda s, c, kw: pipe(text(s, c, False), domain_weight="auto", control_weight="auto", **kw),
                              lambda kw: pipe(None, domain_weight="auto", **kw), dom_params)
    for wd, wc in config.fixed_weights:
        methods[f"ours w_d={wd:g} w_c={wc:g}"] = (
            lambda s, c, kw, wd=wd, wc=wc: pipe(text(s, c, False), domain_weight=wd, control_weight=wc, **kw),
            lambda kw, wd=wd: pipe(None, domain_weight=wd, **kw), dom_params)
    if config.fixed_weights:
        wd, wc = config.fixed_weights[-1]
        methods["ours w/o rect."] = (
            lambda s, c, kw, wd=wd, wc=wc: pipe(guidance=_no_rect_guidance(pipe, text(s, c, False), wc), **kw),
            None, dom_params)

    # 4. Sample and measure.
    rows, grid = [], {}
    for name, (call, uncall, params) in methods.items():
        t0 = time.time()
        row = Row(name, params)
        imgs, weights = sample(shape_prompts, call)
        pred = judge.predict(imgs)
        row.shape_align = assets.accuracy(pred["shape"], [s for s, _ in shape_prompts for _ in range(k)])
        row.text_domain = sum(pred["porcelain"]) / len(pred["porcelain"])
        grid[name] = imgs
        if colour_prompts:
            cimgs, _ = sample(colour_prompts, call)
            cpred = judge.predict(cimgs)
            row.colour_align = assets.accuracy(cpred["colour"], [c for _, c in colour_prompts for _ in range(k)])
            row.colour_shape_align = assets.accuracy(cpred["shape"], [s for s, _ in colour_prompts for _ in range(k)])
            row.colour_domain = sum(cpred["porcelain"]) / len(cpred["porcelain"])
        row.weights = _mean_weights(weights)
        if uncall is not None:
            uimgs = []
            for i in range(0, config.uncond_images, 8):
                n = min(8, config.uncond_images - i)
                uimgs += uncall(dict(base_kw, num_images_per_prompt=n, seed=config.seed + 1000 + i)).images
            u = assets.images_to_tensor(uimgs)
            row.uncond_domain = sum(judge.predict(u)["porcelain"]) / len(u)
            feat = judge.embed(u).numpy()
            row.uncond_fd = frechet_distance(feat, ref_feat) if len(u) > 2 else float("nan")
            row.diversity = diversity(feat) / ref_div
            grid[name + " (uncond.)"] = u[:8]
        rows.append(row)
        log.info("%s: shape %.3f domain %.3f | colour prompts: colour %.3f shape %.3f domain %.3f (%.1f s)", name,
                 row.shape_align, row.text_domain, row.colour_align, row.colour_shape_align, row.colour_domain,
                 time.time() - t0)

    result = dict(config=asdict(config), rows=[asdict(r) for r in rows],
                  seconds=dict(fine_tuning=round(t_ft, 1), total=round(time.time() - t_start, 1)))
    write_outputs(result, grid, out, shapes, k)
    return result


def _no_rect_guidance(pipe, prompt: str, wc: float):
    """``eps_d + w_c (eps_sd(c) - eps_d)``: the domain model supplies the unconditional prediction."""
    from suite.guidance import MultiGuidance, Term

    base = pipe._sd(None, unet=pipe.domain_unet, name="domain-as-uncond")
    control = pipe._sd(pipe.encode_prompt(prompt), name="control")
    return MultiGuidance(base, [Term(control, wc, name="control")])


def _mean_weights(weights: list) -> dict:
    out: dict[str, list] = {}
    for w in weights:
        for k_, v in (w or {}).items():
            v = v.float().mean().item() if isinstance(v, torch.Tensor) else (float(np.mean(v)) if isinstance(v, list | tuple) else v)
            if isinstance(v, int | float):
                out.setdefault(k_, []).append(float(v))
    return {k_: round(float(np.mean(v)), 3) for k_, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
def markdown_table(result: dict) -> str:
    lines = ["| Method | #param. | Text align. (shape)↑ | Text domain↑ | Uncond. domain↑ | Uncond. FD↓ | Uncond. div. "
             "| colour prompts: colour / shape / domain |", "|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:.2f}"):
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {f(r['shape_align'])} | {f(r['text_domain'])} | "
                     f"{f(r['uncond_domain'])} | {f(r['uncond_fd'], '{:.1f}')} | {f(r['diversity'])} | "
                     f"{f(r['colour_align'])} / {f(r['colour_shape_align'])} / {f(r['colour_domain'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, grid: dict, out: Path, shapes, k: int) -> None:
    from PIL import Image, ImageDraw

    from suite.files import write_text_atomic
    from suite.images import save_image_atomic

    write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "table.md", markdown_table(result))
    # The grid: one row per method, the first image of each shape prompt (then unconditional samples).
    names = [n for n in grid if not n.endswith("(uncond.)")]
    tile, label_w = 64, 190
    cols = len(shapes)
    ucols = 4
    img = Image.new("RGB", (label_w + (cols + ucols + 1) * tile, (len(names) + 1) * tile), "white")
    draw = ImageDraw.Draw(img)
    for j, s in enumerate(shapes):
        draw.text((label_w + j * tile + 4, tile // 2), s, fill="black")
    draw.text((label_w + (cols + 1) * tile + 4, tile // 2), "unconditional", fill="black")
    for i, name in enumerate(names):
        y = (i + 1) * tile
        draw.text((4, y + tile // 2 - 6), name, fill="black")
        for j in range(cols):
            t = grid[name][j * k]
            img.paste(Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)),
                      (label_w + j * tile, y))
        for j, t in enumerate(grid.get(name + " (uncond.)", [])[:ucols]):
            img.paste(Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)),
                      (label_w + (cols + 1 + j) * tile, y))
    save_image_atomic(img, out / "grid.png")
    _plot(result, out / "forgetting.png")


def _plot(result: dict, path: Path) -> None:
    """The forgetting curve: text alignment and domain score of fine-tuning against its length, with ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from suite.files import atomic_path

    rows = {r["name"]: r for r in result["rows"]}
    steps = sorted(int(n.split("@")[1]) for n in rows if n.startswith("fine-tuning@") and "rect" not in n)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "shape_align", "text alignment (shape, out-of-domain prompts)"),
                           (axes[1], "text_domain", "domain score (porcelain fraction)")):
        ax.plot(steps, [rows[f"fine-tuning@{s}"][key] for s in steps], "o-", label="fine-tuning")
        ax.plot(steps, [rows[f"fine-tuning@{s} + rect."][key] for s in steps], "s--", label="fine-tuning + rect.")
        ours_rows = [n for n in rows if n.startswith("ours") and "rect" not in n]
        for i, name in enumerate(["base"] + ours_rows):
            ax.axhline(rows[name][key], linestyle=":" if name == "base" else "-",
                       color="k" if name == "base" else f"C{i + 2}", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
    axes[1].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
