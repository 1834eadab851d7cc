"""``launch.py eval`` on the mini world as a user runs it (``python -m bench.bench_eval --output DIR``).

Makes a fine-tuned comparison model first (bench.miniworld's vanilla fine-tuning of the base on 500 porcelain
renders, 300 steps at batch 8, the CI-sized recipe, saved as a diffusers UNet folder), then runs one evaluation with
four rows: the base, ours at the recommended weights and rule, ours at the paper's automatic weights, and the
fine-tune (its unconditional images prompted "a photo of porcelain", guidance 5). ``--num-images`` unconditional
images per method against 500 held-out porcelain renders (FD, KID in the judge's features), and 5 out-of-domain
prompts x ``--seeds`` for the judge's shape alignment and porcelain rate. Prints the table, the time and ``uptime``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [f"a photo of a {s}" for s in ("ball", "box", "cone", "cup", "bottle")]


def fine_tuned_folder(out: Path) -> Path:
    """The 300-step fine-tune as a diffusers UNet folder (made once)."""
    folder = out / "ft300-unet"
    if (folder / "config.json").is_file():
        return folder
    from bench.miniworld.front import QUICK, _fine_tuned
    from suite.miniworld import assets
    from suite.pipeline import InDomainPipeline

    pipe = InDomainPipeline.load(assets.model_refs("porcelain")["sd"])
    (out / "cache").mkdir(parents=True, exist_ok=True)
    unet = _fine_tuned(pipe, out / "cache", QUICK)[300]
    unet.save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", required=True)
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--seeds", default="0-17")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    from bench import claim_output

    # a folder of the user's: one sentence, before any work (an earlier output held the fine-tune first)
    out = claim_output(args.output, "bench.bench_eval", ("ft300-unet", "cache/fine-tuned-*.safetensors"))
    import launch

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    t = time.perf_counter()
    ft = fine_tuned_folder(out)
    print(f"fine-tune: {time.perf_counter() - t:.0f} s", flush=True)
    (out / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    t = time.perf_counter()
    code = launch.main(["eval", "--preset", "mini", "--num-images", str(args.num_images), "--seeds", args.seeds,
                        "--steps", str(args.steps), "--prompts-file", str(out / "prompts.txt"),
                        "--method", "base", "--method", "ours",
                        "--method", "paper-auto=ours;domain_weight=auto;control_weight=auto;guidance_rule=paper",
                        "--method", f"ft300=model:{ft};caption=a photo of porcelain;control_weight=5",
                        "--output", str(out / "eval"), "--resume"])
    print(f"eval: {time.perf_counter() - t:.0f} s, exit {code}", flush=True)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
