"""Face-photo editing on the mini preset, measured: ``python -m bench.miniworld.face_edit --output DIR``.

Writes ``--num`` face photos (:mod:`bench.miniworld.face_photos`: 256 px, the face off-centre, a room behind it,
exact landmarks beside each) and edits each through the same path as a real photo (:func:`editing.edit.edit_photo`:
detect -> align (FFHQ) -> SDEdit with the face domain model -> paste back), with the renderer's landmarks in place
of a detector (``--landmarks``), for each prompt and strength. Per edit:

* **added**: the judge reads the asked-for attribute on the aligned crop of the edited photo (it did not before:
  faces that already have it are skipped for that prompt);
* **kept**: the judge's other readings of the crop (the other attributes, the hair colour) are unchanged, and the
  skin's colour (the mean of the cheeks) moved by less than ``SKIN_TOLERANCE``;
* **outside**: the pixels outside the pasted crop are bit-identical to the photo's.

Also, where dlib is installed, how often its detectors find these faces and its landmarks' error against the
renderer's (as a fraction of the distance between the outer eye corners). Outputs ``table.md``, ``results.json`` and
``grid.png`` (photos, crops before and after).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: the edit prompts in the mini world's caption form (its captions always name the face: "a face wearing glasses");
#: SHORT_PROMPTS, the form a real SD1.5 reads, which the mini base reads poorly (docs/mini-world.md, "Face editing")
PROMPTS = {"a photo of a face wearing glasses": "glasses", "a photo of a face wearing a hat": "a hat",
           "a photo of a face wearing earrings": "earrings"}
SHORT_PROMPTS = {"wearing glasses": "glasses", "wearing a hat": "a hat", "wearing earrings": "earrings"}
STRENGTHS = (0.5, 0.7, 0.9)
SKIN_TOLERANCE = 0.08  # mean absolute RGB change (0-1) of the cheeks that still counts as the same skin


def _cheeks(points: dict) -> list[tuple[float, float]]:
    """Two points on the cheeks: below each eye, level with the nose tip."""
    y = points["nose_tip"][1]
    return [(points["eye_left"][0], y), (points["eye_right"][0], y)]


def _skin(rgb: np.ndarray, points: dict) -> np.ndarray:
    vals = []
    for x, y in _cheeks(points):
        x, y = int(x), int(y)
        vals.append(rgb[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].reshape(-1, 3).mean(0))
    return np.mean(vals, 0) / 255


#: where each attribute goes, in the face's frame: u along the eye line, v towards the chin, both in units of the
#: distance between the eyes' centres, from their midpoint (a mask a person would paint for that edit)
MASK_REGIONS = {"a hat": dict(v=(-9.0, -0.45)), "glasses": dict(u=(-1.05, 1.05), v=(-0.45, 0.4)),
                "earrings": dict(u=(0.75, 1.7), v=(0.15, 1.4), mirrored=True)}


def attribute_mask(points: dict, attribute: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``[H, W]`` mask (1 = may change, edges softened over a tenth of the eye distance) for an edit that adds
    ``attribute`` to the face with landmarks ``points`` (:data:`MASK_REGIONS`)."""
    from PIL import Image, ImageFilter

    left, right = np.array(points["eye_left"]), np.array(points["eye_right"])
    d = float(np.linalg.norm(right - left))
    ex = (right - left) / d
    ey = np.array([-ex[1], ex[0]])
    mid = (left + right) / 2
    if np.dot(np.array(points["chin"]) - mid, ey) < 0:
        ey = -ey
    yy, xx = np.mgrid[:shape[0], :shape[1]] + 0.5
    u = ((xx - mid[0]) * ex[0] + (yy - mid[1]) * ex[1]) / d
    v = ((xx - mid[0]) * ey[0] + (yy - mid[1]) * ey[1]) / d
    spec = MASK_REGIONS[attribute]
    u_lo, u_hi = spec.get("u", (-99.0, 99.0))
    v_lo, v_hi = spec["v"]
    uu = np.abs(u) if spec.get("mirrored") else u
    m = ((uu > u_lo) & (uu < u_hi) & (v > v_lo) & (v < v_hi)).astype(np.float32)
    soft = Image.fromarray((m * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(max(0.1 * d, 0.5)))
    return np.asarray(soft, dtype=np.float32) / 255


def run(output, num: int = 20, strengths=STRENGTHS, prompts=None, steps: int = 25, seed: int = 0,
        guidance: dict | None = None, mask: str = "none") -> dict:
    """``guidance``: ``domain_weight``, ``control_weight``, ``guidance_rule`` for :func:`editing.edit.edit_photo`
    (not given: the face preset's own, as ``launch.py edit`` uses). ``mask``: ``"none"``, ``"blend"`` (the
    attribute's :func:`attribute_mask` as the edit's mask: the kept part holds the denoising and is pasted back) or
    ``"paste"`` (the same mask, pasted only: the whole crop redrawn)."""
    from PIL import Image

    from editing.align import extract, face_region
    from editing.edit import edit_photo
    from editing.faces import GivenLandmarks, faces_from_landmarks
    from suite.files import write_text_atomic
    from suite.images import save_image_atomic, tile_grid
    from suite.miniworld import assets
    from suite.miniworld.judge import face_attributes
    from suite.presets import build_pipeline

    from .face_photos import write_photos

    out = Path(output)
    prompts = prompts or PROMPTS
    records = write_photos(out / "photos", num, seed)
    pipe = build_pipeline("mini", domain="face")
    pipe.set_progress_bar_config(disable=True)
    judge = assets.load_judge()

    def read(rgb, face):
        crop = extract(rgb, face_region(face, 64))
        pred = judge.predict(assets.images_to_tensor([Image.fromarray(crop)]))
        return face_attributes(pred, 0), pred["photo"][0], crop

    results, grid = [], []
    t0 = time.time()
    for r in records:
        rgb = np.asarray(Image.open(r["image"]).convert("RGB"))
        (face,) = faces_from_landmarks([r["points"]])
        before, _, crop0 = read(rgb, face)
        skin0 = _skin(rgb, r["points"])
        row = [Image.fromarray(rgb).resize((64, 64), Image.BILINEAR), Image.fromarray(crop0)]
        for prompt, attribute in prompts.items():
            if attribute in r["truth"]["attributes"]:
                row.append(Image.new("RGB", (64, 64), "white"))  # keeps the grid's columns
                continue
            for s in strengths:
                masked = {} if mask == "none" else dict(  # within the crop (the rest is never edited)
                    mask=Image.fromarray((attribute_mask(r["points"], attribute, rgb.shape[:2]) * _inside(
                        face_region(face, 64), rgb.shape[:2], margin=-1) * 255).round().astype(np.uint8)),
                    mask_blend=mask == "blend")
                res = edit_photo(pipe, Image.fromarray(rgb), prompt=prompt, strength=s, steps=steps, seed=seed,
                                 detector=GivenLandmarks([face]), **masked, **(guidance or {}))
                edited = np.asarray(res.images[0].convert("RGB"))
                after, photo, crop1 = read(edited, face)
                changed = np.any(edited != rgb, -1)
                inside = _inside(res.regions[0], rgb.shape[:2]) > 0
                skin_change = float(np.abs(_skin(edited, r["points"]) - skin0).mean())
                others_before = {a for a in before if a != attribute}
                others_after = {a for a in after if a != attribute}
                results.append(dict(
                    photo=Path(r["image"]).name, prompt=prompt, attribute=attribute, strength=s,
                    judge_before=sorted(before), judge_after=sorted(after), photo_look=bool(photo),
                    seen_before=attribute in before, added=attribute in after and attribute not in before,
                    kept_attributes=others_before == others_after,
                    skin_change=skin_change, skin_ok=skin_change < SKIN_TOLERANCE,
                    outside_identical=bool(not changed[~inside].any()), changed_inside=float(changed[inside].mean())))
                if s == strengths[-1] or len(strengths) == 1:
                    row.append(Image.fromarray(crop1))
        grid.append(row)
    seconds = time.time() - t0
    summary = _summary(results, prompts, strengths)
    dlib = _dlib(records)
    result = dict(num=num, steps=steps, seed=seed, strengths=list(strengths), prompts=prompts, guidance=guidance or {},
                  mask=mask,
                  weights=res.weights[0] if results else None,
                  guidance_rule=res.guidance_rule if results else None, summary=summary, dlib=dlib,
                  edits=results, seconds=round(seconds, 1))
    write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "table.md", markdown(result))
    width = max(len(r) for r in grid)
    blank = Image.new("RGB", (64, 64), "white")
    save_image_atomic(tile_grid([r + [blank] * (width - len(r)) for r in grid[:10]],
                                [Path(r["image"]).stem for r in records[:10]],
                                col_labels=["photo", "crop"] + [f"{a} @{strengths[-1]}" for a in prompts.values()],
                                label_w=60), out / "grid.png")
    return result


def _inside(region, shape, margin: float = 1.0) -> np.ndarray:
    """1 on the photo's pixels that the crop ``region`` covers (with ``margin`` pixels of the crop around it), else
    0."""
    yy, xx = np.mgrid[:shape[0], :shape[1]] + 0.5
    inv = np.linalg.inv(np.vstack([region.matrix, [0, 0, 1]]))
    u = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    v = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    return ((u > -margin) & (u < region.size[0] + margin) & (v > -margin) & (v < region.size[1] + margin)).astype(
        np.float32)


def _summary(results, prompts, strengths) -> dict:
    out = {}
    for prompt in prompts:
        for s in strengths:
            # an edit whose photo the judge already read the attribute on is left out (its misreading, not the edit's)
            sel = [r for r in results if r["prompt"] == prompt and r["strength"] == s and not r["seen_before"]]
            if not sel:
                continue
            n = len(sel)

            def rate(key, sel=sel, n=n):
                p = sum(bool(r[key]) for r in sel) / n
                return round(p, 3), round(float(np.sqrt(p * (1 - p) / n)), 3), n

            # the control: how often the same attribute appears after the *other* prompts' edits at this strength
            # (an edit that changes the face reads as glasses or a hat now and then, whatever was asked)
            attribute = prompts[prompt]
            others = [attribute in r["judge_after"] for r in results if r["prompt"] != prompt and r["strength"] == s
                      and attribute not in r["judge_before"]]
            p0 = sum(others) / len(others) if others else None
            out[f"{prompt} @{s}"] = dict(
                n=n, added=rate("added"), kept_attributes=rate("kept_attributes"),
                skin_kept=rate("skin_ok"), outside_identical=rate("outside_identical"),
                photo_look=rate("photo_look"),
                added_by_others=None if p0 is None else (round(p0, 3),
                                                         round(float(np.sqrt(p0 * (1 - p0) / len(others))), 3),
                                                         len(others)))
    return out


def _dlib(records) -> dict | None:
    """dlib on the photos (:func:`bench.miniworld.faces_dlib.measure`), or None without dlib."""
    from PIL import Image

    from editing.faces import dlib_available

    from .faces_dlib import measure

    if not dlib_available():
        return None
    return measure((np.asarray(Image.open(r["image"]).convert("RGB")), r["points"]) for r in records)


def _rate_text(rate) -> str:
    """``p ± standard error``; a rate of 0 or 1 (standard error 0) with its one-sided 95% exact bound instead
    (Clopper-Pearson: 0 of n is at most ``1 - 0.05^(1/n)``), which the binomial standard error cannot give."""
    p, se, *n = rate
    if n and p in (0.0, 1.0):
        bound = 1 - 0.05 ** (1 / max(int(n[0]), 1))
        return f"{p:.2f} (95%: {'≤ ' + format(bound, '.2f') if p == 0 else '≥ ' + format(1 - bound, '.2f')})"
    return f"{p:.2f} ± {se:.2f}"


def markdown(result: dict) -> str:
    lines = ["| prompt @ strength | edits | attribute added | the same after the other prompts | other attributes kept "
             "| skin kept | outside bit-identical | in the photo look |", "|---|---|---|---|---|---|---|---|"]
    for k, v in result["summary"].items():
        lines.append(f"| {k} | {v['n']} | " + " | ".join(
            "-" if v.get(m) is None else _rate_text(v[m]) for m in
            ("added", "added_by_others", "kept_attributes", "skin_kept", "outside_identical", "photo_look")) + " |")
    d = result["dlib"]
    lines.append("")
    if result.get("weights"):
        lines.append(f"guidance: {result['weights']}, rule {result.get('guidance_rule') or 'paper'}"
                     f"{' (given: ' + str(result['guidance']) + ')' if result.get('guidance') else ' (the preset’s)'}"
                     f"; mask: {result.get('mask', 'none')}")
    lines.append("dlib: not installed" if d is None else
                 f"dlib found {d['found']} of {d['of']} faces (last detector tried: {d['last_detector']}); landmark "
                 f"error {d['error']} of the outer-eye distance")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m bench.miniworld.face_edit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS), help="SDEdit strengths (default: "
                   "%(default)s)")
    p.add_argument("--prompts", nargs="+", choices=sorted(PROMPTS) + sorted(SHORT_PROMPTS), default=None,
                   help="edit prompts (default: the three in the mini world's caption form)")
    from suite.cli import weight_arg

    p.add_argument("--domain-weight", type=weight_arg, default=None, help="w_d (a number or auto; default: the face preset's)")
    p.add_argument("--control-weight", type=weight_arg, default=None, help="w_c (a number or auto; default: the face preset's)")
    p.add_argument("--guidance-rule", default=None, help="a guidance rule (suite.rules; default: the face preset's)")
    p.add_argument("--mask", choices=("none", "blend", "paste"), default="none",
                   help="edit with a mask over where the attribute goes, drawn from the landmarks (MASK_REGIONS): "
                        "blend = as launch.py edit --mask (the kept part holds the denoising), paste = the whole crop "
                        "redrawn and only the mask pasted (default: %(default)s)")
    args = p.parse_args(argv)
    if args.num < 1 or args.steps < 1:
        p.error("--num and --steps must be at least 1")
    if any(not 0 < s <= 1 for s in args.strengths):
        p.error("--strengths must be in (0, 1]")
    guidance = {k: getattr(args, k) for k in ("domain_weight", "control_weight", "guidance_rule")
                if getattr(args, k) is not None}
    from bench import claim_output

    # a user's folder: one sentence, before any work (an earlier output: its photos, written first)
    claim_output(args.output, "bench.miniworld.face_edit", ("photos/face-*.landmarks.json",))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from suite.cli import quiet_libraries

    quiet_libraries()
    from bench import run_or_say

    result = run_or_say(run, args.output, args.num, strengths=tuple(args.strengths),
                        prompts={k: {**PROMPTS, **SHORT_PROMPTS}[k] for k in args.prompts} if args.prompts else None,
                        steps=args.steps, seed=args.seed, guidance=guidance, mask=args.mask)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
