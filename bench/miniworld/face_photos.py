"""Face photos of the mini world to edit (``python -m bench.miniworld.face_photos --output DIR [--num 20]``).

Each ``face-NN.png`` is a 256x256 picture with one face, near-frontal, off-centre, in front of a room
(:func:`suite.miniworld.faces.face_photo`), in the face domain's photo look. Beside it, ``face-NN.landmarks.json``
holds the face's exact landmarks in the photo's pixels (the eyes' and the mouth's corners and centres, the nose tip,
the chin and the jaw), which ``launch.py edit --landmarks`` reads in place of a detector, and the truth about the
face (its attributes, skin and hair) under ``"truth"``. For example::

    python -m bench.miniworld.face_photos --output photos --num 1
    python launch.py edit --preset mini --domain face --image photos/face-00.png \\
        --landmarks photos/face-00.landmarks.json --prompt "wearing glasses" --output glasses.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def write_photos(output, num: int = 20, seed: int = 0, size: int = 256, frequencies: dict | None = None) -> list[dict]:
    """Write ``num`` photos and their landmark files to ``output``; returns their records (paths and truth).
    ``frequencies``: the attributes' (:func:`suite.miniworld.faces.random_face`), changing the face domain's."""
    from PIL import Image

    from suite.files import write_text_atomic
    from suite.images import save_image_atomic
    from suite.miniworld import faces as F

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num):
        face = F.random_face(rng, {**F.DOMAIN_FREQUENCIES, **(frequencies or {})})
        rgb, points, view = F.face_photo(face, rng, size=size)
        image, marks = out / f"face-{i:02d}.png", out / f"face-{i:02d}.landmarks.json"
        truth = dict(attributes=face.attributes, skin=face.skin, hair_colour=face.hair_colour,
                     hair_style=face.hair_style, **{k: v for k, v in view.items() if k not in ("offset", "mask")})
        save_image_atomic(Image.fromarray(rgb), image)
        points = {k: [round(v, 2) for v in p] for k, p in points.items()}
        write_text_atomic(marks, json.dumps({"faces": [points], "truth": truth}) + "\n")
        records.append(dict(image=str(image), landmarks=str(marks), face=face, truth=truth, points=points))
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.miniworld.face_photos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder for face-NN.png and face-NN.landmarks.json")
    p.add_argument("--num", type=int, default=20, help="how many photos (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="the photos' side in pixels (default: %(default)s)")
    p.add_argument("--masks", action="store_true",
                   help="also write face-NN.hat-mask.png and face-NN.glasses-mask.png, masks over where a hat and "
                        "glasses go (bench.miniworld.face_edit.MASK_REGIONS), for edit --mask")
    args = p.parse_args(argv)
    if args.num < 1 or args.size < 64:
        p.error("--num must be at least 1 and --size at least 64")
    from bench import claim_output

    claim_output(args.output, "bench.miniworld.face_photos", ("face-*.landmarks.json",))  # a user's folder: refused
    for r in write_photos(args.output, args.num, args.seed, args.size):
        print(r["image"], ", ".join(r["truth"]["attributes"]) or "(no attributes)")
        if args.masks:
            from PIL import Image

            from suite.images import save_image_atomic

            from .face_edit import attribute_mask

            for attribute, name in (("a hat", "hat"), ("glasses", "glasses")):
                m = attribute_mask(r["points"], attribute, (args.size, args.size))
                save_image_atomic(Image.fromarray((m * 255).round().astype(np.uint8)),
                                  Path(r["image"]).with_suffix(f".{name}-mask.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
