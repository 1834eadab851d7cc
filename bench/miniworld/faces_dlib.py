"""Does dlib find the mini world's faces? (``python -m bench.miniworld.faces_dlib [--n 30]``; issue 23, part 4's
first question.)

Renders ``--n`` random faces (hats at 10%) at 256 px from near-frontal views (elevation 0-15, azimuth -15..15,
distance 2.0), runs the editing path's detector (:class:`editing.faces.DlibFaceDetector`: HOG, then the CNN) and
compares dlib's landmarks with the renderer's exact ones (:func:`suite.miniworld.faces.landmarks`), as a fraction
of the distance between the outer eye corners. Prints how many were found, by which detector, and the errors.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

#: dlib's 68-point indices (iBUG 300-W) of the renderer's landmarks
DLIB = {"eye_left_outer": 36, "eye_left_inner": 39, "eye_right_inner": 42, "eye_right_outer": 45, "nose_tip": 30,
        "mouth_left": 48, "mouth_right": 54, "chin": 8}


def measure(photos) -> dict:
    """dlib's detectors (:class:`editing.faces.DlibFaceDetector`: HOG, then the CNN) on ``(rgb, points)`` pairs,
    ``points`` the renderer's landmarks in the photo's pixels: how many faces are found, by which detector (the
    last one tried), and the landmarks' mean error as a fraction of the distance between the outer eye corners."""
    from editing.faces import DlibFaceDetector

    det = DlibFaceDetector()
    n, found, errors, which = 0, 0, [], {}
    for rgb, points in photos:
        n += 1
        faces = det.detect(rgb)
        which[det.last_detector] = which.get(det.last_detector, 0) + 1
        if not faces or faces[0].landmarks is None:
            continue
        found += 1
        truth = {k: np.asarray(v, np.float64) for k, v in points.items()}
        iod = np.linalg.norm(truth["eye_left_outer"] - truth["eye_right_outer"])
        errors.append([np.linalg.norm(np.array(faces[0].landmarks[j]) - truth[k]) / iod for k, j in DLIB.items()])
    e = np.array(errors)
    return dict(found=found, of=n, last_detector=which, error=round(float(e.mean()), 3) if errors else None,
                error_by_point={k: round(float(v), 3) for k, v in zip(DLIB, e.mean(0))} if errors else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    from suite.cameras import orbit_cameras
    from suite.miniworld import faces as F

    rng = np.random.default_rng(args.seed)

    def photos():
        for _ in range(args.n):
            face = F.random_face(rng, {"a hat": 0.1})
            cams = orbit_cameras(float(rng.uniform(0, 15)), float(rng.uniform(-15, 15)), 2.0, 20.0)
            rgb = (F.render_face(face, cams, size=256).rgb[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            px = F.project(torch.stack(list(F.landmarks(face).values())), cams, 256)[0].numpy()
            yield rgb, dict(zip(F.LANDMARKS, px))

    m = measure(photos())
    print(f"found {m['found']} of {m['of']} (last detector tried per image: {m['last_detector']})")
    if m["error"] is not None:
        print("mean error / outer-eye distance:", m["error_by_point"], f"overall {m['error']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
