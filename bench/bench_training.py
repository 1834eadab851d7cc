#!/usr/bin/env python
"""Domain-training throughput with and without latent caching (tiny preset, CPU), measured side by side in one
run, and, where a GPU is present, a SD1.5-size null-text UNet training step at 512 (random weights, fp16 autocast,
gradient checkpointing): images/s and peak memory per batch size, and the largest batch that fits.

    python bench/bench_training.py               # tiny preset on CPU (~1 min)
    python bench/bench_training.py --gpu-sweep   # also the SD1.5-size sweep (needs CUDA)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_folder(root: Path, n: int, size: int) -> Path:
    """``n`` PNG files of ``size`` px (real datasets store larger files than the training resolution:
    decoding and resizing them is part of what the cache saves)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = np.mgrid[0:size, 0:size]
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        img = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 * size * size))[..., None] * np.array([220, 120, 60]) + 20
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:04d}.png")
    return root


def tiny_throughput(args) -> None:
    from training.config import TrainConfig
    from training.train import train_domain

    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_folder(Path(tmp) / "data", args.images, args.source_size)
        results = {}
        for cache in (True, False, True, False):  # interleaved, twice: load changes hit both alike
            ips, t_total = [], time.perf_counter()
            out = Path(tmp) / f"out-{cache}-{len(results.get(cache, []))}"
            cfg = TrainConfig.tiny(data=str(data), output=str(out), resolution=args.resolution,
                                   batch_size=args.batch, max_steps=args.steps, text_init_steps=0,
                                   cache_latents=cache, checkpoint_steps=10**6, num_workers=2)
            train_domain(cfg, progress=lambda s, d, t, i, ips=ips: ips.append(i["images_per_s"]) if s == "train" else None)
            results.setdefault(cache, []).append((ips[-1], time.perf_counter() - t_total))
        c = np.mean([r[0] for r in results[True]])
        n = np.mean([r[0] for r in results[False]])
        print("per run (cache, images/s, seconds):", {k: [(round(a, 1), round(b, 1)) for a, b in v] for k, v in results.items()})
        print(f"tiny preset, CPU, {args.images} images of {args.source_size}px trained at {args.resolution}px, batch {args.batch}, {args.steps} steps "
              f"(2 runs each, interleaved): training loop {c:.1f} images/s with latent cache vs {n:.1f} without "
              f"(ratio {c / n:.2f}x); whole run incl. loading and cache build {np.mean([r[1] for r in results[True]]):.1f} s "
              f"vs {np.mean([r[1] for r in results[False]]):.1f} s")


def gpu_sweep(batches) -> None:
    from diffusers import UNet2DConditionModel

    from suite.nulltext import SD15_UNET_CONFIG, convert_to_nulltext, nulltext_layers
    from training.loss import denoising_loss

    if not torch.cuda.is_available():
        print("GPU sweep skipped: no CUDA device")
        return
    from diffusers import DDPMScheduler

    dev = torch.device("cuda")
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    convert_to_nulltext(unet)
    for layer in nulltext_layers(unet).values():
        layer.E.normal_(0, 0.1)
    unet.to(dev).train().enable_gradient_checkpointing()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    fits = 0
    for b in batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            z = torch.randn(b, 4, 64, 64, device=dev)
            times = []
            for i in range(4):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = denoising_loss(unet, z, None, sched)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30
            fits = b
            print(f"SD1.5-size null-text UNet, 512px, fp16 autocast + gradient checkpointing, AdamW: batch {b}: "
                  f"{b / np.median(times):.1f} images/s, peak {peak:.1f} GiB")
        except torch.cuda.OutOfMemoryError:
            print(f"batch {b}: out of memory")
            break
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"largest batch that fitted on this {total:.0f} GiB GPU: {fits}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--source-size", type=int, default=512, help="size of the synthetic image files")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gpu-sweep", action="store_true")
    ap.add_argument("--gpu-batches", default="8,16,32,48,64,96,128")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tiny_throughput(args)
    if args.gpu_sweep:
        gpu_sweep([int(b) for b in args.gpu_batches.split(",")])


if __name__ == "__main__":
    main()
