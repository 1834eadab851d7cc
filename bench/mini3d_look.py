"""``python -m bench.mini3d_look --output DIR [--seeds N] [--weights ...]``: how much of the domain's look survives
the latent space the 3D flow's guidance works in (issue 24, part 4: why the sides of an object away from its
reference view stay dark blue, and why stage 3 does not make an object more porcelain).

Inputs, each cut out and framed on white about as the flow frames its reference view
(:func:`generators3d.mask.reference_view`, straight to 64 px):

* the renderer's view of a porcelain object of each class (:func:`bench.mini3d_stage3.world_input`: already in the
  domain's look), ``N`` seeds per class;
* stage 1's image of "a cup", "a box" and "a ball" (the flow's own :func:`generators3d.run.stage1_image`, its own
  mask), ``N`` seeds each, at each ``--weights`` value of ``w_d`` (``recommended``: the domain's weights).

For each input the look distance (:func:`bench.mini3d_stage3.look_distance`: sliced Wasserstein distance of the
object's colours to the world's porcelain of its class; about 0.05 for a soft but perfect porcelain object, 0.16 for
a blue one) of:

* the input itself, and the input through a 32 px colour grid (the softness control of the smooth pull below);
* the input encoded and decoded by the mini Zero-1-to-3's VAE (the mini world's VAE, whose encoder every SDS step of
  the flow goes through), on the input's own mask;
* the decoder's best: the latent optimised until its decoding is nearest the input in pixels (what the latent space
  can hold, whatever the encoder gives);
* for the world's objects, their blue twin (the same object in the world's plain blue) and that twin pulled by the
  encoder: its object pixels optimised until their encoding is the porcelain view's (an upper bound on what matching
  latents alone can give), every pixel free and as a smooth colour field (a 32 px grid), with the latent gap left;
* the mini Zero-1-to-3's views of it from 10 degrees up at azimuths 0 (its own view), 90, 180 and 270 (their
  silhouettes as masks).

Writes ``look.json``, ``look.md`` and ``look.png`` (per kind of input, seed 0: the input, its VAE round trip, the
decoder's best, the blue twin and its two pulls (blank for stage 1's images), the four views).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

AZIMUTHS = (0, 90, 180, 270)
FIT_STEPS = 300  # Adam steps of the decoder's best and the encoder's pulls (the latent gap falls 600-3,000x)
PULL_GRID = 32  # the smooth pull's colour grid (bilinear to 64 px); its control: the input through the same grid
KEYS = ("input", "input32", "vae", "decoder", "twin", "pull", "pull32", *(f"az{a}" for a in AZIMUTHS))
NAMES = ("the input", f"the input through a {PULL_GRID} px grid", "through the VAE", "the decoder's best",
         "the blue twin", "the twin pulled by the encoder", f"the same, {PULL_GRID} px colour grid",
         *(f"Zero-1-to-3, azimuth {a}" for a in AZIMUTHS))
GAPS = ("pull_gap", "pull32_gap")  # the latent gap each pull leaves, as a share of the twin's own
ELEVATION, DISTANCE = 10.0, 3.8  # the mini preset's reference view
WORLD_SHAPES = ("cup", "box", "ball", "vase", "bottle", "bowl")
STAGE1_PROMPTS = ("a cup", "a box", "a ball")


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]


def decoder_best(vae, x: torch.Tensor, z: torch.Tensor, steps: int = FIT_STEPS) -> torch.Tensor:
    """The decoding ``[1, 3, H, W]`` in [0, 1] of the latent, started at ``z`` (unscaled), that Adam brings nearest
    to ``x`` in pixels: how much of ``x`` the decoder can give back from some latent. On the VAE's device; returned
    on the CPU."""
    z = z.detach().float().clone().requires_grad_(True)
    x = x.to(z.device)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        loss = (vae.decode(z.to(vae.dtype)).sample.float() / 2 + 0.5 - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (vae.decode(z.to(vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1).cpu()


def smooth(image: torch.Tensor, grid: int) -> torch.Tensor:
    """``image`` ``[1, 3, H, W]`` through a ``grid x grid`` colour grid (area down, bilinear up): as soft as the
    smooth pull's colour field."""
    small = torch.nn.functional.interpolate(image, (grid, grid), mode="area")
    return torch.nn.functional.interpolate(small, image.shape[-2:], mode="bilinear", align_corners=False)


def encoder_pull(vae, start: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, steps: int = FIT_STEPS,
                 grid: int | None = None) -> tuple[torch.Tensor, float]:
    """``start`` ``[1, 3, H, W]`` with its pixels under ``mask`` ``[1, H, W]`` optimised (Adam, through a sigmoid)
    until the encoder's mean for it is ``target`` (unscaled): an upper bound on what matching latents alone can give
    (not SDS, whose target is a prediction from noise, on a 3D field). The pixels off the mask stay ``start``'s. ``grid``: the colours are
    a ``grid x grid`` image resized bilinearly (a smooth colour field, as :func:`smooth`); None: every pixel free. Returns
    the image (on the CPU) and the latent gap it leaves, as a share of ``start``'s own (mean squared differences).
    Runs on the VAE's device."""
    device = target.device
    start, mask = start.to(device), mask.to(device)
    m = (mask > 0.5).float()[:, None]
    size = start.shape[-2:]
    free = start if grid is None else torch.nn.functional.interpolate(start, (grid, grid), mode="area")  # as smooth()
    logit = torch.logit(free.clamp(0.01, 0.99)).requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=0.05)

    def image():
        colour = torch.sigmoid(logit)
        if grid is not None:
            colour = torch.nn.functional.interpolate(colour, size, mode="bilinear", align_corners=False)
        return colour * m + start * (1 - m)

    def gap(x):
        return (vae.encode((x * 2 - 1).to(vae.dtype)).latent_dist.mean.float() - target.float()).square().mean()

    for _ in range(steps):
        loss = gap(image())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = image()
        return out.cpu(), float(gap(out) / gap(start))


def measure(model, image, mask, shape: str, seed: int, twin=None,
            fit_steps: int = FIT_STEPS) -> tuple[dict, torch.Tensor]:
    """One input (PIL image and mask): ``({"input", "input32", "vae", "decoder", "twin", "pull", "pull32", "az0",
    ..., "pull_gap", "pull32_gap"}, picture row [3, 64, 64 * 10])``; ``twin``: the input's blue twin (PIL image and
    mask) for the twin's and the pulls' entries (NaN and blank pictures without it); ``fit_steps``: those of
    :func:`decoder_best` and :func:`encoder_pull`; ``(None, None)`` when the mask holds no object."""
    from bench.mini3d_stage3 import look_distance, world_colours
    from generators3d.mask import reference_view
    from suite.miniworld.views import silhouette
    from suite.zero123 import Zero123Guidance, novel_views

    try:
        ref, ref_mask = reference_view(image, mask, 64)
    except ValueError:  # an empty mask: stage 1 drew nothing the mask finds
        return None, None
    x = to_tensor(ref)
    m = torch.from_numpy(np.asarray(ref_mask, np.float32) / 255)[None]
    look = world_colours(shape, True, seed=1)
    guide = Zero123Guidance(model, x, ref_elevation=ELEVATION, ref_distance=DISTANCE)
    with torch.no_grad():  # the round trip: decode the input's own encoding, which Zero-1-to-3 is conditioned on
        round_trip = (model.vae.decode(guide.c_concat).sample.float() / 2 + 0.5).clamp(0, 1)
    vae = model.vae  # frozen by load_zero123: gradients reach only the latent or the pixels below
    best = decoder_best(vae, x, guide.c_concat, fit_steps)
    nan, blank = float("nan"), torch.ones_like(x)
    twin_x, pulled, pulled32 = blank, blank, blank
    twin_row = dict(twin=nan, pull=nan, pull32=nan, pull_gap=nan, pull32_gap=nan)
    if twin is not None:
        twin_ref, twin_mask = reference_view(*twin, 64)
        twin_x = to_tensor(twin_ref)
        tm = torch.from_numpy(np.asarray(twin_mask, np.float32) / 255)[None]
        pulled, gap = encoder_pull(vae, twin_x, tm, guide.c_concat, fit_steps)  # c_concat: the input's encoder mean
        pulled32, gap32 = encoder_pull(vae, twin_x, tm, guide.c_concat, fit_steps, PULL_GRID)
        twin_row = dict(twin=look_distance(twin_x, tm, look), pull=look_distance(pulled, tm, look),
                        pull32=look_distance(pulled32, tm, look), pull_gap=gap, pull32_gap=gap32)
    n = len(AZIMUTHS)
    views = novel_views(guide, [ELEVATION] * n, list(AZIMUTHS), [DISTANCE] * n, steps=30,
                        generator=torch.Generator().manual_seed(seed))
    masks = silhouette(views).float()
    # the input through the smooth pull's grid (on the object only, as the pull keeps the backdrop): its control
    on = (m > 0.5).float()[:, None]
    x32 = smooth(x, PULL_GRID) * on + x * (1 - on)
    row = dict(input=look_distance(x, m, look), input32=look_distance(x32, m, look),
               vae=look_distance(round_trip, m, look), decoder=look_distance(best, m, look), **twin_row)
    for i, az in enumerate(AZIMUTHS):
        row[f"az{az}"] = look_distance(views[i:i + 1], masks[i:i + 1], look)
    return row, torch.cat([x[0], round_trip[0], best[0], twin_x[0], pulled[0], pulled32[0], *views], -1)


def summarise(rows: list[dict]) -> dict:
    from suite.metrics import standard_error

    def stats(v):
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]  # NaN: no object pixel found
        return [float(v.mean()) if len(v) else None, standard_error(v) if len(v) > 1 else None, len(v)]

    out = {}
    for key in KEYS:
        out[key] = stats([r.get(key, float("nan")) for r in rows])
        if key not in ("input", "twin"):  # the twin is another object: its change from the input means nothing
            out[f"{key}_change"] = stats([r.get(key, float("nan")) - r["input"] for r in rows])
    for key in GAPS:
        out[key] = stats([r.get(key, float("nan")) for r in rows])
    out["pull32_vs_input32"] = stats([r.get("pull32", float("nan")) - r["input32"] for r in rows])
    return out


def table(results: dict) -> str:
    keys = KEYS
    lines = ["| kind of input | n | " + " | ".join(NAMES) + " |", "|---" * (2 + len(keys)) + "|"]
    for kind, s in results.items():
        cells = []
        for k in keys:
            mean, se, n = s[k]
            if mean is None:
                cells.append("-")
                continue
            cell = f"{mean:.3f}" + ("" if se is None else f" ± {se:.3f}")
            if f"{k}_change" in s and s[f"{k}_change"][0] is not None:
                cell += f" ({s[k + '_change'][0]:+.3f})"
            cells.append(cell + ("" if n == s["input"][2] else f" (n {n})"))
        lines.append(f"| {kind} | {s['input'][2]} | " + " | ".join(cells) + " |")
    for kind, s in results.items():  # below the table: how far the pulls went, and the smooth pull's control
        if s.get("pull_gap", [None])[0] is None:
            continue
        (free, free_se, _), (grid, grid_se, _) = s["pull_gap"], s["pull32_gap"]
        d, d_se, n = s["pull32_vs_input32"]
        lines.append(f"\n{kind}: the pulls leave {free:.5f} ± {free_se or 0:.5f} (every pixel free) and {grid:.5f} ± "
                     f"{grid_se or 0:.5f} ({PULL_GRID} px grid) of the blue twin's latent gap; the smooth pull minus "
                     f"the input through the same grid, paired: {d:+.3f} ± {d_se or 0:.3f} (n {n}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini3d_look", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder for look.json, look.md and look.png")
    p.add_argument("--seeds", type=int, default=2,
                   help="seeds per class (world objects) and per prompt (stage-1 images), 0 to N-1 (default: "
                        "%(default)s)")
    p.add_argument("--weights", nargs="+", default=["recommended", "1.25"],
                   help="stage 1's w_d values for its images ('recommended': the domain's weights; 'none' alone: "
                        "no stage-1 images; default: %(default)s)")
    args = p.parse_args(argv)
    from bench.mini3d_stage1 import weights_problem

    if args.seeds < 1:
        print(f"error: --seeds {args.seeds}: give 1 or more", file=sys.stderr)
        return 2
    weights = [] if args.weights == ["none"] else args.weights
    if "none" in weights:
        print("error: --weights none stands alone (no stage-1 images); leave it out to measure weights",
              file=sys.stderr)
        return 2
    problem = weights_problem(weights)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from bench import claim_output

    out = claim_output(args.output, "bench.mini3d_look", ("look.json", "inputs/*-[0-9]*/mask.png"))
    from dataclasses import replace

    from PIL import Image

    from bench.mini3d import _shape_named
    from bench.mini3d_stage1 import pipeline, write_results
    from bench.mini3d_stage3 import world_input
    from generators3d import ThreeDConfig
    from generators3d.mask import foreground_mask
    from generators3d.run import stage1_image
    from suite.cli import quiet_libraries
    from suite.miniworld.assets import default_dir
    from suite.zero123 import load_zero123

    quiet_libraries()
    model = load_zero123(str(default_dir() / "zero123"))
    results, pictures = {}, []
    rows, first = [], None
    for shape in WORLD_SHAPES:
        for seed in range(args.seeds):
            image, mask = world_input(shape, seed, out / "inputs" / f"{shape}-{seed}")
            blue, blue_mask = world_input(shape, seed, out / "inputs" / f"{shape}-{seed}-blue", porcelain=False)
            row, pic = measure(model, Image.open(image), Image.open(mask), shape, seed,
                               twin=(Image.open(blue), Image.open(blue_mask)))
            rows.append(row)
            first = pic if first is None else first
    results["the world's porcelain objects"] = summarise(rows)
    pictures.append(first)  # world objects always have an exact, non-empty mask
    print(table(results), flush=True)
    if weights:
        cfg = ThreeDConfig(preset="mini", prompt=STAGE1_PROMPTS[0], device="cpu").resolved()
        pipe = pipeline(cfg)
        for w in weights:
            rows, first = [], None
            for prompt in STAGE1_PROMPTS:
                for seed in range(args.seeds):
                    given = replace(cfg, seed=seed, image_domain_weight=w if w == "recommended" else float(w))
                    image = stage1_image(pipe, given, prompt)
                    row, pic = measure(model, image, foreground_mask(image, cfg.mask_method), _shape_named(prompt),
                                       seed)
                    if row is None:
                        print(f"{prompt!r}, seed {seed}, w_d {w}: no object found in stage 1's image; left out",
                              flush=True)
                        continue
                    rows.append(row)
                    first = pic if first is None else first
            results[f"stage 1's images, w_d {w}"] = summarise(rows)
            if first is not None:
                pictures.append(first)
            print(table(results), flush=True)
    md = table(results)
    write_results(out, "look", args, results, md, pictures, 3)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
