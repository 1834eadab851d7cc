"""Edit time of a 12-megapixel photo on the tiny preset, split into detect/align, encode, denoise, decode, paste.

The photo is synthetic (a face the Haar cascade detects, on a textured background, stored as a JPEG) so the
benchmark needs no download. The network parts (VAE encode, denoising, VAE decode) run on the 64 x 64 face
crop only; the non-network parts (loading is reported apart; detection on a <= 1024 px copy, crop extraction,
paste-back on the crop's bounding box) must stay a small fraction of the whole. Each configuration is run
``--reps`` times and the median of each stage is printed, with the fractions side by side.

    python bench/bench_edit.py [--megapixels 12] [--steps 25] [--strength 0.6] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megapixels", type=float, default=12.0, help="photo size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps (default: %(default)s)")
    p.add_argument("--strength", type=float, default=0.6, help="SDEdit strength (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, median reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and OpenCV threads (default: their own defaults; 1 is steadier on a busy machine)")
    args = p.parse_args()
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    import numpy as np
    from PIL import Image

    from editing import edit_photo, load_photo
    from editing.synthetic import place_face
    from suite.presets import build_pipeline

    # 1. A 4:3 photo of the requested size with a face at a known place, saved as a JPEG.
    w = int(round((args.megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    rng = np.random.default_rng(0)
    photo = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 40, w // 40, 3), dtype=np.uint8))
                       .resize((w, h), Image.Resampling.BILINEAR)).copy()
    photo = (photo // 4 + 150).astype(np.uint8)
    place_face(photo, (w * 0.6, h * 0.45), int(min(w, h) * 0.35), angle=7.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    Image.fromarray(photo).save(tmp / "photo.jpg", quality=92)

    # 2. The tiny pipeline (face domain model + SD1.5 text control, automatic weights).
    os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-bench" / "tiny"))
    pipe = build_pipeline("tiny", "face", device="cpu", dtype="float32")

    # 3. Edit --reps times (after one warm-up) and take each stage's median.
    stages = ("load", "detect", "encode", "denoise", "decode", "paste")
    times = {s: [] for s in stages}
    for rep in range(args.reps + 1):
        t0 = time.perf_counter()
        image = Image.open(tmp / "photo.jpg")
        image.load()
        load = time.perf_counter() - t0
        res = edit_photo(pipe, image, prompt="wearing glasses", strength=args.strength, steps=args.steps, seed=rep)
        if rep == 0:
            assert res.images[0].size == (w, h) and len(res.face_boxes) == 1, "the face was not found"
            continue
        times["load"].append(load)
        for s in stages[1:]:
            times[s].append(res.timings[s])
    med = {s: statistics.median(v) for s, v in times.items()}
    edit_total = sum(med[s] for s in stages[1:])
    network = med["encode"] + med["denoise"] + med["decode"]
    crop = res.regions[0]

    # 4. Report.
    print(f"photo {w}x{h} ({w * h / 1e6:.1f} MP), face crop {crop.size[0]}x{crop.size[1]} "
          f"(scale {crop.scale:.1f} photo px per crop px), {int(args.steps * args.strength)} denoising steps, "
          f"median of {args.reps} (CPU, {os.cpu_count()} cores, {args.threads or 'default'} threads; "
          f"other jobs may load this machine)")
    for s in stages:
        share = "" if s == "load" else f"{med[s] / edit_total:7.1%} of the edit"
        print(f"  {s:8s} {med[s] * 1000:9.1f} ms  {share}")
    print(f"  edit total {edit_total * 1000:.1f} ms; network (encode+denoise+decode) {network / edit_total:.1%}, "
          f"non-network (detect/align+paste) {(edit_total - network) / edit_total:.1%}; "
          f"file decode (load) = {med['load'] / edit_total:.2f}x the edit")
    check = load_photo(tmp / "photo.jpg")
    assert check.size == (w, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
