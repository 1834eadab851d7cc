#!/usr/bin/env python
"""Benchmark of the 3D stages, measured side by side in one run:

1. One SDS refinement step on the tiny preset, broken into render / encode / denoise / backward (fractions of
   the step: the networks should dominate, not our glue).
2. The hash-grid encoding: pure PyTorch against tiny-cuda-nn (only where CUDA and tiny-cuda-nn exist).
3. The tiny end-to-end `3d` run's wall time (stage 1 image, stage 2 Zero-1-to-3, stage 3 refine, export).
4. With --mini: both SDS stages of the mini preset (its trained Zero-1-to-3 and domain model), broken down alike.
5. With CUDA and --full-size: steps/s of the refinement stage at real SD1.5 size (random weights; speed does not
   depend on their values) against threestudio's published DreamFusion-style speed (10k iterations in ~30 min
   on an RTX 3090, i.e. ~5.6 it/s; FACTS.md).
6. With --full-size-e2e: the whole `3d` flow at real size (the full preset's stages: 25 image steps, 600
   Zero-1-to-3 steps, 400 refinement steps, export, preview) on random-weight models of SD1.5's, Zero-1-to-3's and
   a null-text domain model's architectures, written to disk in diffusers layout and loaded by the real loading
   code: wall time per stage (random weights draw no object, so stage 1's mask is the centre crop).

Usage: python bench/bench_3d.py [--reps 5] [--e2e] [--mini] [--full-size] [--full-size-e2e DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

THREESTUDIO_DREAMFUSION_IT_S = 10_000 / (30 * 60)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """Wrap a denoiser and add its forward time to ``self.total``."""

    def __init__(self, inner, device):
        self.inner, self.device, self.total = inner, device, 0.0

    def __call__(self, z, t):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.inner(z, t)
        sync(self.device)
        self.total += time.perf_counter() - t0
        return out


def sds_breakdown(alphas_cumprod, field, background, term, res: int, reps: int, device, batch: int = 1,
                  camera=None) -> dict:
    """Median per-part times of one SDS step (render, encode, denoise, backward) of ``term`` (a DomainSDS or a
    Zero123SDS: anything with ``encode``, ``range`` and ``denoiser(elevation, azimuth)`` or ``zero123``)."""
    from generators3d.cameras import random_cameras
    from generators3d.config import CameraConfig
    from generators3d.render import render
    from generators3d.sds import sds

    gen = torch.Generator().manual_seed(0)
    parts = {"render": [], "encode": [], "denoise": [], "sds glue": [], "backward": [], "step": []}
    for i in range(reps + 1):
        cams = random_cameras(camera or CameraConfig(), batch, gen, device)
        sync(device)
        t0 = time.perf_counter()
        rgb = render(field, background, cams, res, perturb=True, generator=gen)["rgb"].permute(0, 3, 1, 2)
        sync(device)
        t1 = time.perf_counter()
        latents = term.zero123.encode(rgb) if hasattr(term, "zero123") else term.encode(rgb)
        sync(device)
        t2 = time.perf_counter()
        if hasattr(term, "zero123"):
            inner = term.zero123.guidance(cams.elevation.cpu(), cams.azimuth.cpu(), cams.distance.cpu(),
                                          term.guidance_scale)
        else:
            inner = term.denoiser(cams.elevation.cpu(), cams.azimuth.cpu())
        den = Timed(inner, device)
        out = sds(latents, den, alphas_cumprod, timesteps=term.range, generator=gen)
        sync(device)
        t3 = time.perf_counter()
        out["loss_sds"].backward()
        sync(device)
        t4 = time.perf_counter()
        field.zero_grad(set_to_none=True)
        if i == 0:
            continue  # warm-up
        parts["render"].append(t1 - t0)
        parts["encode"].append(t2 - t1)
        parts["denoise"].append(den.total)
        parts["sds glue"].append(t3 - t2 - den.total)
        parts["backward"].append(t4 - t3)
        parts["step"].append(t4 - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in parts.items()}


def mini_breakdown(device, reps: int, checkpoint: str | None = None) -> None:
    """Both SDS stages of ``3d --preset mini`` at their settings: the mini Zero-1-to-3 (stage 2, 64 px renders,
    batch 2) and the domain multi-guidance (stage 3, 64 px, batch 2), on a fresh field (Magic3D's blob) or a
    trained ``checkpoint``, with the occupancy grid and without it (interleaved)."""
    from generators3d.config import ThreeDConfig
    from generators3d.guidance3d import DomainSDS, Zero123SDS
    from generators3d.nerf import Background, make_field
    from suite.miniworld.assets import default_dir
    from suite.presets import build_pipeline
    from suite.zero123 import Zero123Guidance, load_zero123

    cfg = ThreeDConfig(preset="mini", prompt="a porcelain vase").resolved()
    if checkpoint:
        from generators3d.stage import load_checkpoint

        field, _ = load_checkpoint(checkpoint, device)
    else:
        field = make_field(cfg.nerf, device)
    ref = torch.ones(1, 3, 64, 64, device=device)
    z = Zero123SDS(Zero123Guidance(load_zero123(str(default_dir() / "zero123"), device=device), ref, 10.0, 0.0, 3.8),
                   min_step_percent=0.2, max_step_percent=0.85)
    pipe = build_pipeline("mini", "porcelain", device=device)
    d = DomainSDS(pipe, "a porcelain vase", pipe.domain.domain_weight, pipe.domain.control_weight,
                  view_dependent=False, min_step_percent=0.2, max_step_percent=0.6)
    what = "trained field" if checkpoint else "fresh field"
    stages = {"stage 2 (mini Zero-1-to-3, CFG in one batched forward": (z, z.zero123.alphas_cumprod, cfg.zero123),
              "stage 3 (domain + mini SD text + uncond": (d, pipe.scheduler.alphas_cumprod, cfg.refine)}
    results = {}
    for _rep in range(2):  # interleaved: with the occupancy grid, without, with, without
        for grid in (True, False):
            field.update_occupancy()
            if not grid:
                field.occupancy = None
            for name, (term, alphas, stage) in stages.items():
                res, batch = stage.resolutions[-1], stage.batch_sizes[-1]
                t = sds_breakdown(alphas, field, Background().to(device), term, res, max(reps // 2, 1), device,
                                  batch, cfg.camera)
                key = (name, res, batch, grid)
                results[key] = t if key not in results else {k: min(v, results[key][k]) for k, v in t.items()}
    for (name, res, batch, grid), t in results.items():
        print_breakdown(f"mini preset, {what}, {name}; {res} px, batch {batch}), occupancy grid "
                        f"{'on' if grid else 'off'}", t)
    for name in stages:
        on = next(t for k, t in results.items() if k[0] == name and k[3])
        off = next(t for k, t in results.items() if k[0] == name and not k[3])
        print(f"  {name.split(' (')[0]}: the occupancy grid makes a step {off['step'] / on['step']:.2f}x faster")


def print_breakdown(title, times):
    step = times["step"]
    print(f"\n{title}: one SDS step {step * 1000:.1f} ms ({1 / step:.2f} steps/s)")
    for k in ("render", "encode", "denoise", "sds glue", "backward"):
        print(f"  {k:9s} {times[k] * 1000:9.1f} ms  {times[k] / step:6.1%}")


def hash_grid_bench(device, reps: int, n_points: int):
    from generators3d.config import NeRFConfig
    from generators3d.nerf import HashGrid, TcnnHashGrid, tcnn_available

    cfg = NeRFConfig()
    x = torch.rand(n_points, 3, device=device)

    def run(enc):
        times = []
        for i in range(reps + 1):
            sync(device)
            t0 = time.perf_counter()
            enc(x).float().sum().backward()
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    torch_t = run(HashGrid(cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size, cfg.base_resolution,
                           cfg.per_level_scale).to(device))
    print(f"\nhash grid (16 levels, 2^19 table), {n_points} points forward+backward on {device}:")
    print(f"  pure PyTorch   {torch_t * 1000:9.1f} ms")
    if torch.device(device).type == "cuda" and tcnn_available():
        tcnn_t = run(TcnnHashGrid(cfg).to(device))
        print(f"  tiny-cuda-nn   {tcnn_t * 1000:9.1f} ms   (PyTorch / tcnn = {torch_t / tcnn_t:.2f}x)")
    else:
        print("  tiny-cuda-nn   not measured (needs CUDA and tiny-cuda-nn installed)")


SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def full_size_refine(device, reps: int, render_res: int = 128, unet_config=SD15_UNET, vae_config=SD15_VAE,
                     nerf=None, image_size: int = 512):
    """SD1.5-size random UNet(s) + VAE: refinement-stage steps/s (render 128 -> 512, batch 1). The configs are
    parameters only so that the code path can be smoke-tested at toy size on a CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from generators3d.cameras import random_cameras
    from generators3d.config import CameraConfig, NeRFConfig
    from generators3d.nerf import Background, make_field
    from generators3d.render import render
    from generators3d.sds import TimestepRange, sds
    from suite.denoisers import UNetDenoiser
    from suite.guidance import MultiGuidance, Term

    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    unet = UNet2DConditionModel(**unet_config).to(device, dtype).requires_grad_(False)
    domain_unet = UNet2DConditionModel(**unet_config).to(device, dtype).requires_grad_(False)
    vae = AutoencoderKL(**vae_config).to(device, dtype).requires_grad_(False)
    text_dim = unet.config.cross_attention_dim
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    uncond, cond = (torch.randn(1, 77, text_dim, device=device, dtype=dtype) for _ in range(2))
    # The paper's three-model guidance: SD uncond + domain (null-text: no text) + SD text control.
    mg = MultiGuidance(UNetDenoiser(unet, uncond), [Term(UNetDenoiser(domain_unet, None), 2.5, "domain"),
                                                   Term(UNetDenoiser(unet, cond), 2.5, "control")])
    # A null-text UNet needs no text: give the stand-in zeros of the right shape through a wrapper.
    zeros = torch.zeros(1, 1, text_dim, device=device, dtype=dtype)
    mg.terms[0].denoiser = UNetDenoiser(domain_unet, zeros, name="domain")
    field = make_field(nerf or NeRFConfig(), device)
    bg = Background().to(device)
    opt = torch.optim.Adam(field.parameters(), lr=1e-3)
    rng = TimestepRange(0.2, 0.6)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        cams = random_cameras(CameraConfig(), 1, gen, device)
        rgb = render(field, bg, cams, render_res, perturb=True, generator=gen)["rgb"].permute(0, 3, 1, 2)
        x = torch.nn.functional.interpolate(rgb, (image_size, image_size), mode="bilinear", align_corners=False)
        lat = vae.encode((x * 2 - 1).to(dtype)).latent_dist.sample() * 0.18215
        out = sds(lat, mg, sched.alphas_cumprod, timesteps=rng, generator=gen)
        opt.zero_grad()
        out["loss_sds"].backward()
        opt.step()
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    print(f"\nrefinement at {'SD1.5' if unet_config is SD15_UNET else 'toy'} size, renders {render_res} -> "
          f"{image_size}, on {device} ({dtype}): {1 / step:.2f} steps/s "
          f"(threestudio DreamFusion-style published: {THREESTUDIO_DREAMFUSION_IT_S:.2f} it/s on an RTX 3090 with ONE "
          f"SD UNet; ratio {1 / step / THREESTUDIO_DREAMFUSION_IT_S:.2f}x)")


SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 vocab_size=49408, max_position_embeddings=77, projection_dim=768)
# Zero-1-to-3's image encoder: CLIP ViT-L/14's vision tower with its projection to 768.
ZERO123_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                      image_size=224, patch_size=14, projection_dim=768)
# Zero-1-to-3 (XL): SD1.5's UNet with 8 input channels (noisy latent + the input view's latent) at 256 px.
FULL_SIZE = dict(unet=SD15_UNET, zero123_unet={**SD15_UNET, "in_channels": 8, "sample_size": 32}, vae=SD15_VAE,
                 text=SD15_TEXT, vision=ZERO123_VISION)

def toy_size() -> dict:
    """:data:`FULL_SIZE`'s layouts at the tiny models' size (:mod:`suite.testing`; tests/bench/test_bench_3d.py runs
    the whole flow with them on a CPU), Zero-1-to-3 at half the SD UNet's resolution as in the real pair."""
    from suite.testing import _VAE, tiny_unet_config

    return dict(unet=tiny_unet_config(), zero123_unet=tiny_unet_config(in_channels=8, sample_size=16), vae=_VAE,
                text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=32),
                vision=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                            image_size=32, patch_size=8, projection_dim=32))


MARKER = ".bench-3d-random-models"


def write_random_models(root, device="cpu", dtype=torch.float16, sizes=FULL_SIZE) -> dict:
    """Random-weight models of SD1.5's, Zero-1-to-3's and a null-text domain model's architectures (``sizes``: the
    UNet, VAE, CLIP text and CLIP vision configs), written once under ``root`` in the layouts the real loaders read:
    ``sd/`` (a diffusers SD pipeline), ``domain/`` (a null-text domain model) and ``zero123/``. Returns the paths."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from suite.nulltext import make_domain_model
    from suite.testing import _SCHEDULER, make_tokenizer_files
    from suite.zero123 import save_zero123

    root = Path(root)
    paths = {k: root / k for k in ("sd", "domain", "zero123")}
    if (root / "COMPLETE").exists():
        return paths
    check_models_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("random models of bench/bench_3d.py\n")
    torch.manual_seed(0)
    make_tokenizer_files(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **sizes["text"])).to(device)
    unet = UNet2DConditionModel(**sizes["unet"]).to(device)
    vae = AutoencoderKL(**sizes["vae"]).to(device)
    scheduler = DDIMScheduler(**_SCHEDULER)  # SD1.5's
    StableDiffusionPipeline(unet=unet.to(dtype), vae=vae.to(dtype), text_encoder=text_encoder.to(dtype),
                            tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(paths["sd"])
    del unet
    domain_unet = UNet2DConditionModel(**sizes["unet"]).to(device)
    domain = make_domain_model(domain_unet, text_encoder.float(), tokenizer, "a porcelain vase", domain="porcelain",
                               base_model="random SD1.5 architecture")
    domain.unet.to(dtype)
    domain.save_pretrained(paths["domain"])
    del domain_unet, text_encoder
    dim = sizes["unet"]["cross_attention_dim"]
    save_zero123(dict(unet=UNet2DConditionModel(**sizes["zero123_unet"]).to(device, dtype), vae=vae,
                      image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes["vision"])).to(device, dtype),
                      projection=torch.nn.Linear(dim + 4, dim).to(device, dtype), scheduler=scheduler),
                 paths["zero123"])
    (root / "COMPLETE").write_text("random models\n")
    return paths


class _Stop(Exception):
    pass


def full_size_e2e(root, device, sizes=FULL_SIZE, preset: str = "full", timeline_path=None, stop_after=None,
                  **overrides) -> dict:
    """The whole ``3d`` flow (``preset``'s stages) on random models of ``sizes`` written under ``root``: wall seconds
    per stage (each stage's time includes loading its models), steps/s of the two SDS stages, and the total. Prints a
    table and returns it. ``timeline_path``: every progress call is appended there as it happens (a JSON line), so
    a run stopped part-way still says how far it got and how fast. ``stop_after={stage: steps}`` ends the run
    there (to time a stage's first steps). A run that fails reports its error and the stages it finished."""
    import json

    from generators3d import ThreeDConfig, run_text_to_3d

    dev = torch.device(device)
    t0 = time.perf_counter()
    paths = write_random_models(root, dev, torch.float16 if dev.type == "cuda" else torch.float32, sizes)
    written = time.perf_counter() - t0
    timeline = []

    def progress(stage, done, total, info=None):
        sync(device)
        timeline.append((time.perf_counter(), stage, done, total))
        if timeline_path:
            with open(timeline_path, "a") as f:
                f.write(json.dumps(dict(t=timeline[-1][0] - start, stage=stage, done=done, total=total)) + "\n")
        if stop_after and done >= stop_after.get(stage, math.inf):
            raise _Stop(f"stopped after {done} {stage} steps")

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=root))  # ours alone: removed when the run ends
    cfg = ThreeDConfig(prompt="a porcelain vase", domain="porcelain", preset=preset, output=str(run_dir / "out"),
                       sd_model=str(paths["sd"]), domain_model=str(paths["domain"]),
                       zero123_model=str(paths["zero123"]), mask_method="center", device=device, **overrides)
    sync(device)
    start = time.perf_counter()
    error = None
    try:
        meshes = sorted(run_text_to_3d(cfg, progress=progress).mesh_paths)
    except _Stop as exc:
        error, meshes = str(exc), []
    except Exception as exc:  # noqa: BLE001 - report how far it got
        error, meshes = f"{type(exc).__name__}: {exc}", []
    total = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    stages, last = {}, start
    for stage in dict.fromkeys(s for _, s, _, _ in timeline):
        calls = [(t, done, n) for t, s, done, n in timeline if s == stage]
        first_step = calls[0][0]
        stages[stage] = dict(seconds=calls[-1][0] - last, steps=calls[-1][1], of=calls[-1][2],
                             steps_per_s=(len(calls) - 1) / (calls[-1][0] - first_step) if len(calls) > 1
                             and calls[-1][0] > first_step else None)
        last = calls[-1][0]
    report = dict(device=str(dev), torch=torch.__version__,
                  gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, models_written_s=written,
                  total_s=total, stages=stages, meshes=meshes, error=error)
    print(f"\nthe whole `3d` flow, {preset} preset, random models ({'SD1.5 size' if sizes is FULL_SIZE else 'toy size'}"
          f"), on {report['gpu'] or device}: {total:.1f} s end to end (models written beforehand in {written:.0f} s)")
    for name, st in stages.items():
        rate = f"{st['steps_per_s']:.2f} steps/s" if st["steps_per_s"] else ""
        print(f"  {name:8s} {st['seconds']:8.1f} s  {st['steps']:5d} steps  {rate}")
    if error:
        print(f"  stopped by {error}")
    return report


def first_steps(root, device, sizes=FULL_SIZE, preset: str = "full", zero123_steps: int = 30, refine_steps: int = 20,
                **overrides) -> dict:
    """Steps/s of the flow's first ``zero123_steps`` Zero-1-to-3 and ``refine_steps`` refinement steps with the
    preset's settings and without its two speed settings (no occupancy grid, the whole reference view every step:
    the full preset before 2026-12-04), one after the other in one process. Prints both and their ratios."""
    from dataclasses import replace

    from generators3d import ThreeDConfig

    base = ThreeDConfig(preset=preset).resolved()
    variants = {"preset": {}, "no occupancy grid, whole reference view": dict(
        nerf=replace(base.nerf, occupancy_grid=0), zero123=replace(base.zero123, ref_ray_fraction=1.0),
        refine=replace(base.refine, ref_ray_fraction=1.0))}
    out = {name: full_size_e2e(root, device, sizes, preset, zero123_steps=zero123_steps,
                               stop_after={"refine": refine_steps}, **overrides, **v)
           for name, v in variants.items()}
    for stage in ("zero123", "refine"):
        a, b = (out[n]["stages"][stage]["steps_per_s"] for n in variants)
        print(f"  {stage}: {a:.2f} steps/s with the preset's settings, {b:.2f} without: {a / b:.2f}x")
    return out


def check_models_dir(root: Path) -> None:
    """``--full-size-e2e DIR``: a new or empty folder, or this benchmark's own (one sentence otherwise)."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file: give --full-size-e2e a new or empty folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists() and not (root / "COMPLETE").exists():
        raise ValueError(f"{str(root)!r} is not empty and was not written by this benchmark: give a new or empty folder")


def main(argv=None) -> int:
    from suite.checks import int_at_least

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int_at_least(1), default=5,
                   help="timed repetitions per measurement (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--e2e", action="store_true", help="also time the tiny end-to-end run (default tiny step counts)")
    p.add_argument("--mini", action="store_true", help="also break down both SDS stages of the mini preset")
    p.add_argument("--mini-checkpoint", default=None,
                   help="a trained NeRF checkpoint (e.g. out/vase/checkpoints/stage2-zero123.safetensors) for --mini")
    p.add_argument("--full-size", action="store_true",
                   help="SD1.5-size refinement steps/s (meant for a GPU: on a CPU it needs over 16 GB and minutes per step)")
    p.add_argument("--full-size-e2e", metavar="DIR", default=None,
                   help="time the whole 3d flow at SD1.5 size on random models written to DIR (reused if there); "
                        "meant for a GPU")
    p.add_argument("--first-steps", action="store_true",
                   help="with --full-size-e2e: time only the first 30 + 20 SDS steps, with the full preset's settings "
                        "and without its occupancy grid and reference-ray sampling")
    p.add_argument("--json", default=None, help="also write --full-size-e2e's figures to this JSON file")
    p.add_argument("--points", type=int_at_least(1), default=1 << 16,
                   help="points for the hash-grid timing (default: 65536)")
    args = p.parse_args(argv)
    # flags that act only beside another were ignored without a word (no JSON was written)
    for flag, needs, given in (("--first-steps", "--full-size-e2e DIR", args.first_steps and not args.full_size_e2e),
                               ("--json", "--full-size-e2e DIR", args.json and not args.full_size_e2e),
                               ("--mini-checkpoint", "--mini", args.mini_checkpoint and not args.mini)):
        if given:
            p.error(f"{flag} applies to {needs}: add it, or drop {flag}")
    from suite.checks import UserError
    from suite.models import ModelLoadError

    try:  # a folder of the user's, a device this machine has not: one sentence, before (or instead of) the timings
        if args.full_size_e2e:
            check_models_dir(Path(args.full_size_e2e).expanduser())
        return _main(args)
    except (UserError, ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="torch-ext-"))
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    # 1. SDS step breakdown on the tiny preset (tiny SD + tiny domain UNet, tiny NeRF, 32x32 renders).
    from generators3d.config import ThreeDConfig
    from generators3d.guidance3d import DomainSDS
    from generators3d.nerf import Background, make_field
    from suite.presets import build_pipeline

    cfg = ThreeDConfig(preset="tiny").resolved()
    pipe = build_pipeline("tiny", "porcelain", device=args.device)
    term = DomainSDS(pipe, "a vase with dragons", min_step_percent=0.2, max_step_percent=0.6)
    field = make_field(cfg.nerf, args.device)
    print_breakdown("tiny preset, refinement (domain + SD text + SD uncond, auto weights)",
                    sds_breakdown(pipe.scheduler.alphas_cumprod, field, Background().to(args.device), term, 32,
                                  args.reps, args.device))
    if args.mini:
        mini_breakdown(args.device, args.reps, args.mini_checkpoint)

    # 2. Hash grid: pure PyTorch vs tiny-cuda-nn.
    hash_grid_bench(args.device, args.reps, args.points)

    # 3. Tiny end-to-end wall time.
    if args.e2e:
        from generators3d import run_text_to_3d

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_text_to_3d(ThreeDConfig(prompt="a vase with dragons", preset="tiny", output=f"{tmp}/run",
                                              device=args.device))
            wall = time.perf_counter() - t0
        print(f"\ntiny end-to-end `3d` run ({cfg.zero123.steps} + {cfg.refine.steps} SDS steps, export, preview): "
              f"{wall:.1f} s wall; meshes: {', '.join(res.mesh_paths)}")

    # 4. Full-size refinement steps/s.
    if args.full_size:
        full_size_refine(args.device, max(1, min(args.reps, 3)) if args.device == "cpu" else args.reps)
    elif torch.device(args.device).type != "cuda":
        print("\nSD1.5-size refinement: not measured (no GPU here; run with --full-size on a CUDA machine)")
    if args.full_size_e2e:
        if args.first_steps:
            report = first_steps(args.full_size_e2e, args.device)
        else:
            report = full_size_e2e(args.full_size_e2e, args.device,
                                   timeline_path=args.json and str(Path(args.json).with_suffix(".timeline.jsonl")))
        if args.json:
            import json

            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
