"""Pictures of the mini world for the docs: ``python -m bench.miniworld.pictures --output docs/mini-world``.

* ``world.png``: renders of every shape (rows) in every colour and pattern, then in the porcelain glaze;
* ``domain.png``: what the unlabeled porcelain training set looks like;
* ``generate.png``: the base model on "a photo of a <colour> <shape>" (no domain term);
* ``in-domain.png``: the same shapes with the porcelain domain model through multi-guidance at the preset's
  recommended weights, and unconditional in-domain samples; ``in-domain-auto.png``: the same with automatic weights;
* ``edit.png``: SDEdit of open-world renders towards porcelain, the recommended ``w_d`` (input, then strength 0.5 /
  0.7 / 0.9);
* ``zero123.png``: the mini Zero-1-to-3 on held-out objects (input, its view 90 degrees round, the truth);
* ``face-domain.png``: faces: the base's captioned faces and the face domain's photos (training data), the base's
  "a photo of a face", the face domain model's own samples, then each attribute prompt by the base and by ours at
  the face preset's recommended guidance;
* ``own-domain.png``: a domain of your own (the shipped porcelain model named "my porcelain") on "a photo of a
  cup": the paper's automatic weights (its default before 2026-12-07) against its default now;
* ``timing.json``: wall time of ``launch.py generate --preset mini`` (one image, a fresh process).

``--only zero123`` / ``--only faces`` / ``--only own-domain`` writes that picture alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from suite.images import tile_grid

ROOT = Path(__file__).resolve().parents[2]


def _pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray((t.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def zero123_picture(out: Path) -> Path:
    from suite.images import save_image_atomic
    from suite.miniworld import assets
    from suite.miniworld.views import heldout_cases, measure_novel_views
    from suite.zero123 import load_zero123

    assets.check()
    m = measure_novel_views(load_zero123(str(assets.default_dir() / "zero123")), heldout_cases(14), steps=30)
    rows = [[_pil(m[k][i]) for i in range(7)] for k in ("inputs", "predicted", "truth")]
    rows += [[_pil(m[k][i]) for i in range(7, 14)] for k in ("inputs", "predicted", "truth")]
    path = out / "zero123.png"
    save_image_atomic(tile_grid(rows, ["input", "Zero-1-to-3", "truth"] * 2), path)
    return path


def faces_picture(out: Path) -> Path:
    from suite.images import save_image_atomic
    from suite.miniworld.assets import FACE_PROMPT_ATTRIBUTES, face_prompt
    from suite.presets import build_pipeline
    from training.miniworld import render_set

    def pil(a):
        return Image.fromarray(a)

    rows = {"open-world faces": [pil(a) for a in render_set("open-face", 10, 11, workers=1)["images"]],
            "face-domain photos": [pil(a) for a in render_set("face-domain", 10, 12, workers=1)["images"]]}
    pipe = build_pipeline("mini", domain="face")
    kw = dict(num_inference_steps=20)
    rows['base "a photo of a face"'] = pipe("a photo of a face", use_domain=False, control_weight=5.0, seed=0,
                                            num_images_per_prompt=10, **kw).images
    rows["face model (w_d = 1)"] = pipe(None, domain_weight=1.0, seed=0, num_images_per_prompt=10, **kw).images
    rows["base, attribute prompts"] = [pipe(face_prompt(a), use_domain=False, control_weight=5.0, seed=i, **kw)
                                       .images[0] for i, a in enumerate(FACE_PROMPT_ATTRIBUTES)]
    rows["ours (preset), same"] = [pipe(face_prompt(a), seed=i, **kw).images[0]
                                   for i, a in enumerate(FACE_PROMPT_ATTRIBUTES)]
    path = out / "face-domain.png"
    save_image_atomic(tile_grid(list(rows.values()), list(rows), list(FACE_PROMPT_ATTRIBUTES), label_w=150), path)
    return path


def own_domain_picture(out: Path) -> Path:
    from suite.images import save_image_atomic
    from suite.miniworld import assets
    from suite.presets import build_pipeline

    pipe = build_pipeline("mini", "my porcelain", domain_model=assets.model_refs("porcelain")["domain"])
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_images_per_prompt=8, seed=0, num_inference_steps=20)
    rows = {"automatic weights": pipe("a photo of a cup", domain_weight="auto", control_weight="auto",
                                      guidance_rule="paper", **kw).images,
            "default now": pipe("a photo of a cup", **kw).images}
    path = out / "own-domain.png"
    save_image_atomic(tile_grid(list(rows.values()), list(rows), label_w=130), path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.miniworld.pictures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "docs" / "mini-world"))
    p.add_argument("--only", choices=["zero123", "faces", "own-domain"], default=None, help="write one picture only")
    args = p.parse_args(argv)
    from suite.cli import quiet_libraries
    from suite.images import save_image_atomic
    from suite.miniworld import world as W
    from suite.miniworld.render import render_view
    from suite.presets import build_pipeline

    quiet_libraries()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "zero123"):
        zero123_picture(out)
    if args.only in (None, "faces"):
        faces_picture(out)
    if args.only in (None, "own-domain"):
        own_domain_picture(out)
    if args.only is not None:
        return 0
    rng = np.random.default_rng(0)

    # The world.
    rows = []
    looks = [(c, pat, False) for c, pat in zip(W.COLOURS, W.PATTERNS * 2)] + [("blue", "dots", True),
                                                                             ("blue", "stripes", True)]
    for s in W.SHAPES:
        row = []
        for c, pat, por in looks:
            v = W.random_view(rng)
            row.append(_pil(render_view(W.make_object(s, c, pat, por, rng), v["elevation"], v["azimuth"]).rgb[0]))
        rows.append(row)
    save_image_atomic(tile_grid(rows, list(W.SHAPES), [f"{c}/{p}" if not por else "porcelain" for c, p, por in looks]),
                      out / "world.png")
    dom = []
    for _ in range(16):
        obj = W.random_object(rng, porcelain=True, shapes=W.DOMAIN_SHAPES)
        v = W.random_view(rng, porcelain=True)
        dom.append(_pil(render_view(obj, v["elevation"], v["azimuth"]).rgb[0]))
    save_image_atomic(tile_grid([dom[:8], dom[8:]], ["domain", "images"]), out / "domain.png")

    # Generation.
    pipe = build_pipeline("mini")
    colours = list(W.COLOURS)
    rows = [[pipe(f"a photo of a {c} {s}", use_domain=False, control_weight=5.0, seed=i,
                  num_inference_steps=20).images[0] for i, c in enumerate(colours)] for s in W.SHAPES]
    save_image_atomic(tile_grid(rows, list(W.SHAPES), colours), out / "generate.png")
    rec = dict(domain_weight=pipe.domain.domain_weight, control_weight=pipe.domain.control_weight)
    for name, weights in (("in-domain.png", rec), ("in-domain-auto.png", dict(domain_weight="auto",
                                                                               control_weight="auto"))):
        rows = [pipe(f"a photo of a {s}", num_images_per_prompt=6, seed=0, num_inference_steps=20, **weights)
                .images for s in W.SHAPES]
        rows.append(pipe(None, num_images_per_prompt=6, seed=0, num_inference_steps=20,
                         domain_weight=weights.get("domain_weight")).images)
        save_image_atomic(tile_grid(rows, [f'"a {s}"' for s in W.SHAPES] + ["(no prompt)"]), out / name)

    # Editing.
    rows = []
    for i, (s, c) in enumerate((("vase", "red"), ("bowl", "green"), ("cup", "yellow"), ("bottle", "purple"))):
        src = _pil(render_view(W.make_object(s, c, "stripes", rng=rng), 15.0, 30.0).rgb[0])
        rows.append([src] + [pipe(None, image=src, strength=st, seed=i, num_inference_steps=20,
                                  domain_weight=rec["domain_weight"]).images[0] for st in (0.5, 0.7, 0.9)])
    save_image_atomic(tile_grid(rows, ["vase", "bowl", "cup", "bottle"], ["input", "0.5", "0.7", "0.9"]),
                      out / "edit.png")

    # Wall time of the CLI, one image, fresh process (model loading included).
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "launch.py"), "generate", "--preset", "mini", "--prompt", "a cup",
                        "--output", str(Path(tmp) / "cup.png")], check=True, capture_output=True, env={**os.environ})
        wall = time.time() - t0
    load = os.getloadavg()[0]
    (out / "timing.json").write_text(json.dumps({"generate_preset_mini_one_image_s": round(wall, 2),
                                                 "load_average_1min": round(load, 2)}, indent=2) + "\n")
    print(f"generate --preset mini (one image, fresh process): {wall:.1f} s (load {load:.2f}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
