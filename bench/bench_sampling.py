"""Our single-term sampling against diffusers' StableDiffusionPipeline on the same components.

With one text term of weight w our pipeline computes exactly diffusers' CFG (tests check equality to 1e-5);
this measures the time. Two component sizes: the tiny preset, and a mid-size UNet (where the network, not the
Python glue, dominates as it does at real size). Prints medians and the ratio (target <= 1.05).

``--threads N`` sets torch's intra-op threads; ``--busy K`` keeps K other processes busy (each a torch
matrix-multiply loop on ``--busy-threads`` threads, as another job would) while measuring, to see how each loop
suffers from a busy machine.

    python -m bench.bench_sampling [--steps 20] [--reps 5] [--threads 1] [--busy 2]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys

import torch

from bench.timing import interleaved
from suite.pipeline import InDomainPipeline
from suite.testing import build_tiny_sd, tiny_unet_config

MID_UNET = dict(block_out_channels=(64, 128, 256), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)


def compare(parts, steps, reps, label):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler.from_config(parts["scheduler"].config)
    parts = {**parts, "scheduler": sched}
    ours = InDomainPipeline(**parts)
    ours.set_progress_bar_config(disable=True)
    ref = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    prompt = "a photo of a face wearing glasses"

    def run_ours():
        return ours(prompt, control_weight=7.5, num_images_per_prompt=2, num_inference_steps=steps, seed=0,
                    output_type="np")

    def run_ref():
        return ref(prompt, guidance_scale=7.5, num_images_per_prompt=2, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(0), output_type="np")

    res = interleaved({"ours": run_ours, "diffusers": run_ref}, reps=reps)
    print(f"[{label}] ours {res['ours'] * 1000:.1f} ms, diffusers {res['diffusers'] * 1000:.1f} ms, "
          f"ratio {res['ours'] / res['diffusers']:.3f} (target <= 1.05)")
    return res


BUSY = "import torch; torch.set_num_threads({}); a = torch.randn(256, 256)\nwhile True: a = (a @ a).tanh()"


@contextlib.contextmanager
def busy_machine(k: int, threads: int = 1):
    """``k`` other processes, each running torch matrix multiplies on ``threads`` threads, for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(threads)]) for _ in range(k)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--busy", type=int, default=0, help="other busy processes while measuring (default 0)")
    p.add_argument("--busy-threads", type=int, default=1, help="torch threads of each busy process (default 1)")
    p.add_argument("--sizes", default="tiny,mid", help="which UNets: tiny, mid or both (default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    label = f"threads {torch.get_num_threads()}, busy {args.busy}x{args.busy_threads} threads"
    parts = build_tiny_sd()
    with busy_machine(args.busy, args.busy_threads):
        if "tiny" in args.sizes:
            compare(parts, args.steps, args.reps, f"tiny UNet, {label}")
        if "mid" in args.sizes:
            from diffusers import UNet2DConditionModel

            torch.manual_seed(0)
            parts["unet"] = UNet2DConditionModel(**tiny_unet_config(**MID_UNET)).eval()
            compare(parts, args.steps, args.reps, f"mid-size UNet (64/128/256), {label}")


if __name__ == "__main__":
    main()
