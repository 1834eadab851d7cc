"""Cost of one multi-guidance step against the raw forwards it needs (issue: core, DESIGN performance targets).

Three terms, as in-domain text-guided sampling: SD1.5 unconditional + SD1.5 text + the null-text domain UNet,
on full-size SD1.5-architecture UNets with random weights (speed does not depend on weight values; no download).

  ours      MultiGuidance(...)(z, t): one batch-2 SD forward + one domain forward + the formula
  raw       exactly those two forwards, called by hand
  separate  three batch-1 calls (SD empty prompt, domain, SD text), as the authors' released sampler does

Prints the medians and the ratios ours/raw (target <= 1.05) and ours/separate.

    python -m bench.bench_guidance                       # CPU, 32x32 latent
    python -m bench.bench_guidance --device cuda --dtype float16 --latent 64   # GPU, SD1.5's real size
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.timing import interleaved
from suite.denoisers import UNetDenoiser
from suite.guidance import MultiGuidance, Term
from suite.nulltext import convert_to_nulltext

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def sd15_unets(device, dtype):
    """A SD1.5-architecture UNet and a null-text copy (random weights, E random non-zero)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd = UNet2DConditionModel(**SD15_UNET).eval()
    domain = copy.deepcopy(sd)
    E = {}
    for name, m in domain.named_modules():
        if hasattr(m, "attn2") and m.attn2 is not None and hasattr(m, "norm2"):
            E[name] = torch.randn(1, 1, m.attn2.to_out[0].out_features) * 0.1
    convert_to_nulltext(domain, E)
    return sd.to(device, dtype).requires_grad_(False), domain.to(device, dtype).requires_grad_(False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--latent", type=int, default=32, help="latent side (SD1.5 at 512 px: 64)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    sd, domain = sd15_unets(device, dtype)
    n_sd = sum(x.numel() for x in sd.parameters())
    n_dom = sum(x.numel() for x in domain.parameters())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, args.latent, args.latent, generator=g).to(device, dtype)
    empty = torch.randn(1, 77, 768, generator=g).to(device, dtype)
    text = torch.randn(1, 77, 768, generator=g).to(device, dtype)
    t = torch.tensor([500], device=device)

    mg = MultiGuidance(UNetDenoiser(sd, empty), [Term(UNetDenoiser(domain, None), 2.5, "domain"),
                                                 Term(UNetDenoiser(sd, text), 2.5, "control")])
    z2, t2, ehs2 = torch.cat([z, z]), torch.cat([t, t]), torch.cat([empty, text])

    def ours():
        return mg(z, t)

    def raw():
        sd(z2, t2, encoder_hidden_states=ehs2)
        domain(z, t, encoder_hidden_states=None)

    def separate():
        sd(z, t, encoder_hidden_states=empty)
        domain(z, t, encoder_hidden_states=None)
        sd(z, t, encoder_hidden_states=text)

    with torch.inference_mode():
        res = interleaved({"ours": ours, "raw": raw, "separate": separate}, reps=args.reps, device=device)
    print(f"device={device} dtype={args.dtype} latent={args.latent}x{args.latent} reps={args.reps}")
    print(f"SD1.5 UNet parameters: {n_sd / 1e6:.1f}M; null-text domain UNet: {n_dom / 1e6:.1f}M")
    for name, sec in res.items():
        print(f"  {name:9s} {sec * 1000:9.1f} ms")
    print(f"ours / raw forwards       = {res['ours'] / res['raw']:.3f}   (target <= 1.05)")
    print(f"ours / 3 separate calls   = {res['ours'] / res['separate']:.3f}")
    return res


if __name__ == "__main__":
    main()
