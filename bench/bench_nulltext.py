#!/usr/bin/env python
"""Null-text UNet vs full UNet: parameter counts (SD1.5 configuration, built on the meta device, no download)
and forward time side by side at the same input (random weights; paper Table 1 reports 859M -> 810M).

    python bench/bench_nulltext.py                 # SD1.5 configuration, latent 32x32, batch 1 (CPU: ~1 min)
    python bench/bench_nulltext.py --config tiny   # tiny configuration, quick
    python bench/bench_nulltext.py --latent 64 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from diffusers import UNet2DConditionModel

    from suite.nulltext import SD15_UNET_CONFIG, capture_E, convert_to_nulltext, parameter_counts
    from suite.testing import tiny_unet_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["sd15", "tiny"], default="sd15")
    ap.add_argument("--latent", type=int, default=32, help="latent size (64 = 512x512 images)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = ap.parse_args()
    config = SD15_UNET_CONFIG if args.config == "sd15" else tiny_unet_config()
    dtype = getattr(torch, args.dtype)

    # 1. Parameter counts (meta device).
    sd = parameter_counts(SD15_UNET_CONFIG)
    print(f"SD1.5 UNet parameters: full {sd['full']:,} ({sd['full'] / 1e6:.1f}M), null-text {sd['nulltext']:,} "
          f"({sd['nulltext'] / 1e6:.1f}M), removed {sd['removed']:,} in {sd['layers']} cross-attention layers "
          f"(to_q/to_k/to_v/to_out + norm2); E adds {sd['E_values']:,} fixed values (buffers). Paper Table 1: 859M -> 810M")
    if args.config == "tiny":
        t = parameter_counts(config)
        print(f"tiny UNet parameters: full {t['full']:,}, null-text {t['nulltext']:,}")

    # 2. FLOPs of one forward (meta device, torch's FlopCounterMode): independent of machine load.
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        mfull = UNet2DConditionModel(**config).eval()
        mnull = convert_to_nulltext(UNet2DConditionModel(**config).eval())
        for lat in sorted({args.latent, 64 if args.config == "sd15" else args.latent}):
            z = torch.randn(args.batch, 4, lat, lat)
            t = torch.full((args.batch,), 500)
            flops = []
            for m, ehs in ((mfull, torch.randn(args.batch, 77, config["cross_attention_dim"])), (mnull, None)):
                counter = FlopCounterMode(display=False)
                with counter, torch.no_grad():
                    m(z, t, encoder_hidden_states=ehs)
                flops.append(counter.get_total_flops())
            print(f"FLOPs per forward ({args.config}, latent {lat}x{lat}, batch {args.batch}): full {flops[0] / 1e9:.1f} G, "
                  f"null-text {flops[1] / 1e9:.1f} G, ratio null/full {flops[1] / flops[0]:.3f}")

    # 3. Both UNets with the same (random) weights, E captured from random text features.
    torch.manual_seed(0)
    full = UNet2DConditionModel(**config).eval().to(args.device, dtype)
    text = torch.randn(1, 77, config["cross_attention_dim"], device=args.device, dtype=dtype)
    null = copy.deepcopy(full)
    convert_to_nulltext(null, capture_E(null, text, latents=torch.randn(1, 4, args.latent, args.latent)))
    z = torch.randn(args.batch, 4, args.latent, args.latent, device=args.device, dtype=dtype)
    t = torch.full((args.batch,), 500, device=args.device)
    ehs = text.expand(args.batch, -1, -1)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # 4. Alternate the two forwards (warm-up first) so that load changes hit both alike.
    timed(lambda: full(z, t, encoder_hidden_states=ehs))
    timed(lambda: null(z, t, encoder_hidden_states=None))
    tf, tn = [], []
    for _ in range(args.reps):
        tf.append(timed(lambda: full(z, t, encoder_hidden_states=ehs)))
        tn.append(timed(lambda: null(z, t, encoder_hidden_states=None)))
    mf, mn = statistics.median(tf), statistics.median(tn)
    print(f"forward ({args.config}, latent {args.latent}x{args.latent}, batch {args.batch}, {args.device}, {args.dtype}, "
          f"median of {args.reps}): full {mf * 1000:.1f} ms, null-text {mn * 1000:.1f} ms, "
          f"ratio null/full {mn / mf:.3f} (speed-up {mf / mn:.2f}x)")


if __name__ == "__main__":
    main()
