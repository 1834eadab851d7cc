"""The picture in docs/editing.md: scikit-image's real photos with the face found, its landmarks and the crop the
edit uses (the domain's framing), for dlib (when installed) and the Haar fallback.

    python -m bench.editing_pictures [--output docs/editing/real-photos.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="docs/editing/real-photos.png")
    args = p.parse_args(argv)

    import numpy as np
    from PIL import Image, ImageDraw
    from skimage import data

    from editing.align import animal_region, face_region
    from editing.faces import CatFaceDetector, DlibFaceDetector, HaarFaceDetector, dlib_available
    from suite.images import save_image_atomic

    def rgb(name):
        img = getattr(data, name)()
        return np.stack([img] * 3, -1) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])

    rows = []
    detectors = [("Haar (fallback)", HaarFaceDetector())]
    if dlib_available():
        detectors.insert(0, ("dlib (HOG, CNN, 68 landmarks)", DlibFaceDetector()))
    cases = [(name, "astronaut", "face") for name, _ in detectors] + \
            [(name, "camera", "face") for name, _ in detectors] + [("cat cascades", "chelsea", "animal")]
    dets = dict(detectors, **{"cat cascades": CatFaceDetector()})
    for det_name, photo, framing in cases:
        img = rgb(photo)
        faces = dets[det_name].detect(img)
        im = Image.fromarray(img).convert("RGB")
        draw = ImageDraw.Draw(im)
        for f in faces[:1]:
            region = face_region(f, 512) if framing == "face" else animal_region(f, 512)
            quad = [tuple(map(float, c)) for c in region.corners()]
            draw.line(quad + [quad[0]], fill=(255, 40, 40), width=3)
            draw.rectangle(f.box, outline=(40, 200, 255), width=2)
            for x, y in (f.landmarks or []):
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 230, 0))
        label = f"{photo}: {det_name}" + ("" if faces else ": no face found")
        draw.rectangle((0, 0, 8 + 7 * len(label), 18), fill=(0, 0, 0))
        draw.text((4, 3), label, fill=(255, 255, 255))
        rows.append(im.resize((round(im.width * 300 / im.height), 300)))
    width = sum(r.width for r in rows)
    sheet = Image.new("RGB", (width, 300), "white")
    x = 0
    for r in rows:
        sheet.paste(r, (x, 0))
        x += r.width
    save_image_atomic(sheet, Path(args.output))
    print(f"wrote {args.output} ({len(rows)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
