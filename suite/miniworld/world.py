"""The mini world's objects: procedural 3D shapes with exact geometry, their appearance and their captions.

Every object is centred at the origin of the world frame of :mod:`suite.cameras` (Z up) and fits in a sphere of
radius 0.62, so the 3D package's reference camera (distance 3.8, field of view 20 degrees) frames it. Geometry is
analytic: a solid of revolution about Z given by its (radius, height) profile, a sphere, a box, and for the cup a
torus handle on the +Y side (the cup is asymmetric on purpose: a mirrored or rotated reconstruction is wrong).

Shapes (:data:`SHAPES`): ball, box, cone, cup, vase, bowl, bottle. Colours (:data:`COLOURS`): red, green, blue,
yellow, purple. Patterns (:data:`PATTERNS`): plain, stripes, dots, painted in a dark shade of the body colour.
The porcelain glaze (white body, cobalt-blue painted bands and dots, glossy) appears only in the porcelain domain.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("ball", "box", "cone", "cup", "vase", "bowl", "bottle")
COLOURS = {
    "red": (0.85, 0.16, 0.14),
    "green": (0.18, 0.66, 0.24),
    "blue": (0.17, 0.34, 0.86),
    "yellow": (0.93, 0.78, 0.12),
    "purple": (0.58, 0.22, 0.68),
}
PATTERNS = ("plain", "stripes", "dots")
PORCELAIN_BODY = (0.95, 0.95, 0.92)
PORCELAIN_PAINT = (0.09, 0.18, 0.62)
PATTERN_SHADE = 0.42  # open-world patterns: the body colour times this
BACKGROUND = (0.86, 0.86, 0.84)

# The porcelain domain: only these forms, front-ish views (the narrowness is the point, see docs/mini-world.md).
DOMAIN_NAME = "porcelain"
DOMAIN_SHAPES = ("vase", "bowl")
DOMAIN_ELEVATION = (0.0, 25.0)

# The open world's cameras (the 3D package's reference distance and field of view).
CAMERA_DISTANCE = 3.8
CAMERA_FOVY = 20.0
ELEVATION_RANGE = (-5.0, 40.0)

CAPTION_PREFIXES = ("a photo of", "a picture of", "an image of", "")
#: every word a face caption can contain (:meth:`suite.miniworld.faces.Face.caption`)
FACE_WORDS = ("face", "with", "wearing", "and", "glasses", "hat", "smiling", "beard", "closed", "eyes", "earrings",
              "hair", "blond", "black", "red", "grey", "brown")
PATTERN_WORDS = {"plain": "plain", "stripes": "with stripes", "dots": "with dots"}


@dataclass(frozen=True)
class MiniObject:
    """One object: its class, continuous shape parameters and appearance.

    ``profile``: for solids of revolution, smooth parts, each a list of ``(radius, z)`` points (a polyline; the
    surface is that polyline swept about Z). ``params``: sphere radius, box half-extents, handle torus, pattern
    frequencies.
    """

    shape: str
    colour: str
    pattern: str
    porcelain: bool = False
    params: dict = field(default_factory=dict, compare=False)
    profile: tuple = field(default=(), compare=False)

    @property
    def body_rgb(self) -> tuple[float, float, float]:
        return PORCELAIN_BODY if self.porcelain else COLOURS[self.colour]

    @property
    def paint_rgb(self) -> tuple[float, float, float]:
        return PORCELAIN_PAINT if self.porcelain else tuple(c * PATTERN_SHADE for c in COLOURS[self.colour])

    def caption(self, rng: np.random.Generator | None = None) -> str:
        """``"a photo of a red cup with stripes"``; with ``rng``, a random prefix and randomly omitted attributes
        (so the model learns partial prompts). Porcelain objects are never captioned (the domain is unlabeled)."""
        colour = "porcelain" if self.porcelain else self.colour
        if rng is None:
            pattern = "" if self.pattern == "plain" else " " + PATTERN_WORDS[self.pattern]
            return f"a photo of {_article(colour)} {colour} {self.shape}{pattern}"
        words = []
        if rng.random() > 0.15:
            words.append(colour)
        if self.pattern == "plain" and rng.random() < 0.3:
            words.insert(0, "plain")
        words.append(self.shape if rng.random() > 0.1 else "object")
        if self.pattern != "plain" and rng.random() > 0.3:
            words.append(PATTERN_WORDS[self.pattern])
        prefix = CAPTION_PREFIXES[rng.integers(len(CAPTION_PREFIXES))]
        text = f"{_article(words[0])} " + " ".join(words)
        return f"{prefix} {text}".strip()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def vocabulary() -> list[str]:
    """Every word a caption or a documented prompt can contain (each becomes one token)."""
    words = {"a", "an", "of", "photo", "picture", "image", "with", "object", "plain", "stripes", "dots", "porcelain"}
    words |= set(SHAPES) | set(COLOURS) | set(FACE_WORDS)
    return sorted(words)


def prompt_warnings(prompt: str | None) -> list[str]:
    """Sentences about a prompt the mini world's models cannot follow: words outside :func:`vocabulary` (the
    word-level tokenizer spells them letter by letter, which the models never saw) and no shape named."""
    words = re.findall(r"[a-z]+", (prompt or "").lower())
    known = set(vocabulary())
    unknown = [w for w in dict.fromkeys(words) if w not in known]
    out = []
    if unknown:
        out.append(f"the mini world does not know the word(s) {', '.join(repr(w) for w in unknown)}: its models "
                   f"read only shapes ({', '.join(SHAPES)}), colours ({', '.join(COLOURS)}), patterns (stripes, "
                   f"dots), 'porcelain', and faces with their attributes (glasses, a hat, smiling, a beard, closed "
                   f"eyes, earrings, black / brown / blond / red / grey hair); those words act as noise")
    face_words = {"face", "glasses", "hat", "smiling", "beard", "eyes", "earrings", "hair"}  # a face's form
    if words and not any(w in SHAPES or w in face_words for w in words):
        out.append(f"the prompt names no shape the mini world has ({', '.join(SHAPES)}, or a face): the form is "
                   f"left to the model (the porcelain domain draws vases and bowls, the face domain faces)")
    elif "face" not in words and any(w in face_words for w in words) and not any(w in SHAPES for w in words):
        # measured (docs/mini-world.md, "Face editing on the mini preset"): edits asking for "wearing glasses" /
        # "wearing a hat" added nothing in 110 edits at strength 0.7
        joined = " ".join(words) if words[0] in ("wearing", "with", "smiling") else "with " + " ".join(words)
        out.append(f"the mini world's captions always name the face ('a photo of a face {joined}'): its models "
                   f"read an attribute without 'face' poorly (edits asking for 'wearing glasses' or 'wearing a hat' "
                   f"added them in none of 110 tries)")
    return out


# ---------------------------------------------------------------------------------------------------------
# shapes (continuous parameters; every object fits in a sphere of radius 0.62 around the origin)
def _revolve_smooth(fn, z0: float, z1: float, n: int = 14) -> list[tuple[float, float]]:
    zs = np.linspace(z0, z1, n)
    return [(float(max(fn(z), 0.0)), float(z)) for z in zs]


def make_object(shape: str, colour: str = "red", pattern: str = "plain", porcelain: bool = False,
                rng: np.random.Generator | None = None) -> MiniObject:
    """An object of class ``shape`` with random continuous shape parameters drawn from ``rng`` (``None``: the
    class's canonical shape, the middle of every range)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: the mini world has {', '.join(SHAPES)}")

    def u(lo, hi):
        return (lo + hi) / 2 if rng is None else float(rng.uniform(lo, hi))

    params: dict = {"stripe_freq": u(4.5, 6.0), "dot_rows": u(4.5, 5.5), "dot_cols": round(u(7.5, 9.5))}
    profile: tuple = ()
    if shape == "ball":
        params["radius"] = u(0.40, 0.52)
    elif shape == "box":
        params["half"] = (u(0.24, 0.34), u(0.24, 0.34), u(0.26, 0.36))
    elif shape == "cone":
        h, r = u(0.84, 0.94), u(0.34, 0.42)
        profile = ([(0.0, -h / 2), (r, -h / 2)], [(r, -h / 2), (0.0, h / 2)])
    elif shape == "cup":
        h, r, wall = u(0.62, 0.78), u(0.26, 0.32), 0.035
        profile = ([(0.0, -h / 2 + wall), (r - wall, -h / 2 + wall)],
                   [(r - wall, -h / 2 + wall), (r - wall, h / 2)],
                   [(r - wall, h / 2), (r, h / 2)],
                   [(r, h / 2), (r, -h / 2)],
                   [(r, -h / 2), (0.0, -h / 2)])
        major, minor = u(0.13, 0.16), 0.035
        params["handle"] = (r + major * 0.55, 0.0, major, minor, r - wall)  # centre y, z, radii, cut plane y
        params["stripe_freq"] = u(5.5, 7.0)
    elif shape == "vase":
        h, rb, rw, rn = u(0.98, 1.12), u(0.20, 0.26), u(0.36, 0.44), u(0.11, 0.15)
        zb = u(-0.14, 0.02)
        knots_z, knots_r = [-h / 2, zb, 0.30 * h, 0.42 * h, h / 2], [rb, rw, rn, rn + 0.015, rn + 0.06]

        def radius(z):  # smoothstep between the knots: base, belly, neck, lip
            i = min(int(np.searchsorted(knots_z, z, side="right")) - 1, len(knots_z) - 2)
            s = min(max((z - knots_z[i]) / (knots_z[i + 1] - knots_z[i]), 0.0), 1.0)
            return knots_r[i] + (knots_r[i + 1] - knots_r[i]) * s * s * (3 - 2 * s)

        body = _revolve_smooth(radius, -h / 2, h / 2, 14)
        profile = ([(0.0, -h / 2), (body[0][0], -h / 2)], body, [(body[-1][0], h / 2), (0.0, h / 2)])
    elif shape == "bowl":
        r, depth, wall = u(0.46, 0.56), u(0.34, 0.44), 0.04
        z0, foot = -depth / 2, u(0.16, 0.22)

        def outer(z):
            t = (z - z0) / depth
            return foot + (r - foot) * math.sin(t * math.pi / 2) ** 0.8

        out = _revolve_smooth(outer, z0, z0 + depth, 10)
        inner = [(x - wall, z) for x, z in out[::-1]][:-1]  # the inner wall, down to a flat floor
        profile = ([(0.0, z0), (foot, z0)], out, [(r, z0 + depth), (r - wall, z0 + depth)], inner,
                   [inner[-1], (0.0, inner[-1][1])])
    elif shape == "bottle":
        h, rb, rn = u(0.96, 1.08), u(0.22, 0.28), u(0.075, 0.095)
        zs = u(0.0, 0.12)  # where the shoulder starts

        def radius(z):
            if z < zs:
                return rb
            t = min((z - zs) / 0.22, 1.0)
            return rn + (rb - rn) * 0.5 * (1 + math.cos(math.pi * t))

        body = _revolve_smooth(radius, -h / 2, h / 2, 14)
        profile = ([(0.0, -h / 2), (rb, -h / 2)], body, [(rn, h / 2), (0.0, h / 2)])
    return MiniObject(shape, colour, pattern, porcelain, params, profile)


def random_object(rng: np.random.Generator, porcelain: bool = False, shapes=SHAPES) -> MiniObject:
    shape = str(shapes[rng.integers(len(shapes))])
    if porcelain:
        return make_object(shape, "blue", str(("stripes", "dots")[rng.integers(2)]), True, rng)
    colour = str(list(COLOURS)[rng.integers(len(COLOURS))])
    return make_object(shape, colour, str(PATTERNS[rng.integers(len(PATTERNS))]), False, rng)


def random_view(rng: np.random.Generator, porcelain: bool = False) -> dict:
    """Camera angles (degrees) for a training image: the open world is seen from all around; the porcelain
    domain only front-ish (its objects are photographed the way catalogues show them)."""
    el = rng.uniform(*(DOMAIN_ELEVATION if porcelain else ELEVATION_RANGE))
    az = rng.uniform(-40, 40) if porcelain else rng.uniform(-180, 180)
    return dict(elevation=float(el), azimuth=float(az), distance=CAMERA_DISTANCE, fovy=CAMERA_FOVY)

