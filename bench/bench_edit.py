"""Edit time of a 12-megapixel photo on the tiny preset, split into detect, landmarks, align, encode, denoise,
decode, paste, for each face detector (interleaved in one run: dlib's HOG/CNN + 68 landmarks against OpenCV's
Haar cascades).

The photo is scikit-image's astronaut portrait (a real face) scaled up to the requested size with reflected
borders, stored as a JPEG, so the benchmark needs no download (``--synthetic``: a drawn face instead). The network parts (VAE encode, denoising, VAE decode) run on the 64 x 64 face
crop only; the non-network parts (loading is reported apart; detection on a <= 1024 px copy, crop extraction,
paste-back on the crop's bounding box) must stay a small fraction of the whole. Each configuration is run
``--reps`` times and the median of each stage is printed, with the fractions side by side.

    python bench/bench_edit.py [--megapixels 12] [--steps 25] [--strength 0.6] [--reps 3] [--threads 1]
                               [--detectors haar,dlib] [--synthetic]
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
    p.add_argument("--detectors", default="haar,dlib",
                   help="face detectors to compare, interleaved (default: %(default)s; dlib needs the faces extra)")
    p.add_argument("--synthetic", action="store_true", help="a drawn face instead of the astronaut's photo")
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
    if args.synthetic:
        rng = np.random.default_rng(0)
        photo = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 40, w // 40, 3), dtype=np.uint8))
                           .resize((w, h), Image.Resampling.BILINEAR)).copy()
        photo = (photo // 4 + 150).astype(np.uint8)
        place_face(photo, (w * 0.6, h * 0.45), int(min(w, h) * 0.35), angle=7.0)
    else:
        import cv2
        from skimage import data

        side = h  # the 512 px portrait scaled to the photo's height, reflected out to its width
        face = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
        pad = (w - side) // 2
        photo = cv2.copyMakeBorder(face, 0, 0, pad, w - side - pad, cv2.BORDER_REFLECT_101)
    tmp = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    Image.fromarray(photo).save(tmp / "photo.jpg", quality=92)

    # 2. The tiny pipeline (face domain model + SD1.5 text control, automatic weights).
    os.environ.setdefault("INDOMAIN_TINY_DIR", str(Path(tempfile.gettempdir()) / "in-domain-bench" / "tiny"))
    pipe = build_pipeline("tiny", "face", device="cpu", dtype="float32")

    # 3. Edit --reps times per detector (after one warm-up each), interleaved, and take each stage's median.
    from editing.faces import DlibFaceDetector, HaarFaceDetector, dlib_available

    detectors = {}
    for name in args.detectors.split(","):
        if name == "dlib" and not dlib_available():
            print("dlib is not installed (pip install 'in-domain-suite[faces]'): comparing without it")
            continue
        detectors[name] = DlibFaceDetector() if name == "dlib" else HaarFaceDetector()
    stages = ("load", "detect", "landmarks", "align", "encode", "denoise", "decode", "paste")
    times = {d: {s: [] for s in stages} for d in detectors}
    for rep in range(args.reps + 1):
        for name, det in detectors.items():
            t0 = time.perf_counter()
            image = Image.open(tmp / "photo.jpg")
            image.load()
            load = time.perf_counter() - t0
            res = edit_photo(pipe, image, prompt="wearing glasses", strength=args.strength, steps=args.steps,
                             seed=rep, detector=det, framing="face")
            if rep == 0:
                assert res.images[0].size == (w, h) and len(res.face_boxes) == 1, f"{name}: the face was not found"
                continue
            marks = getattr(det, "last_timings", {"detect": res.timings["detect"], "landmarks": 0.0})
            times[name]["load"].append(load)
            times[name]["detect"].append(res.timings["detect"] - marks["landmarks"])
            times[name]["landmarks"].append(marks["landmarks"])
            for s in stages[3:]:
                times[name][s].append(res.timings[s])

    # 4. Report.
    print(f"photo {w}x{h} ({w * h / 1e6:.1f} MP, {'drawn face' if args.synthetic else 'astronaut portrait'}), "
          f"{int(args.steps * args.strength)} denoising steps, median of {args.reps} (CPU, {os.cpu_count()} cores, "
          f"{args.threads or 'default'} threads; other jobs may load this machine)")
    print(f"  {'stage':10s}" + "".join(f"{name:>14s}" for name in detectors))
    med = {d: {s: statistics.median(v) for s, v in t.items()} for d, t in times.items()}
    for s in stages:
        print(f"  {s:10s}" + "".join(f"{med[d][s] * 1000:11.1f} ms" for d in detectors))
    total = {d: sum(med[d][s] for s in stages[1:]) for d in detectors}
    print(f"  {'edit':10s}" + "".join(f"{total[d] * 1000:11.1f} ms" for d in detectors))
    check = load_photo(tmp / "photo.jpg")
    assert check.size == (w, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
