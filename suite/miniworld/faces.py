"""Faces in the mini world: procedural heads with exact geometry, attributes a prompt can name,
and the landmarks face alignment uses, rendered in the camera convention of :mod:`suite.cameras`.

A head looks along +X (towards the reference camera at azimuth 0), Z up, centred at the origin, inside the mini
world's bounding sphere (radius 0.64). It is built from analytic surfaces, each intersected exactly per ray, the
nearest hit winning: ellipsoids (head, neck, nose, ears, eyes, and the hair as a clipped shell over the head), a
solid of revolution (the hat, through the same frustum solver as the world's vases), sphere-traced tori and
capsules (glasses) and spheres (earrings). Brows, mouth, beard and closed eyes are painted on the surfaces.

**Attributes** (:data:`ATTRIBUTES`, each a phrase a prompt can use): glasses, a hat, smiling, a beard, closed eyes,
earrings, and the hair colours blond / black / red / grey / brown (bald heads have none). Skin tones and hair styles
(short, long, bald) vary too. :func:`random_face` draws them at given frequencies, so a domain can hold some
attributes often, some rarely and some never.

**Landmarks** (:func:`landmarks`): the points FFHQ's alignment reads from dlib's 68 (eye corners, nose tip, mouth
corners, chin, jaw), as exact 3D points on the visible surface; :func:`project` gives their pixels in any view.

**Looks.** ``look="world"``: the mini world's light and flat backdrop (the base's captioned faces, any pose and
framing). ``look="photo"``: the face domain's photographic look (a warm wrapped key light from the right, skin
reddening in its shadows, a rim light, soft studio backdrops), framed by FFHQ's alignment
(:func:`aligned_cameras`). :data:`DOMAIN_FREQUENCIES` gives the face domain its uneven attributes.

**Photos to edit** (:func:`face_photo`): a face off-centre in a larger picture with a room behind it, and its exact
landmarks in the picture's pixels (``launch.py edit --landmarks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import torch

from ..cameras import Cameras, orbit_cameras
from ..domains import FACE
from .render import _INF, BOUND_RADIUS, LIGHT_CAM, Rendered, _hit_revolution, render_traced
from .world import BACKGROUND, COLOURS

SKIN_TONES = {"light": (0.93, 0.78, 0.68), "fair": (0.86, 0.66, 0.54), "medium": (0.72, 0.52, 0.38),
              "tan": (0.58, 0.40, 0.28), "dark": (0.38, 0.25, 0.18)}
HAIR_COLOURS = {"black": (0.07, 0.06, 0.06), "brown": (0.36, 0.22, 0.12), "blond": (0.90, 0.76, 0.42),
                "red": (0.72, 0.24, 0.09), "grey": (0.68, 0.68, 0.68)}
HAIR_STYLES = ("short", "long", "bald")
LIPS = (0.62, 0.27, 0.27)
EYE_WHITE, IRIS, PUPIL = (0.95, 0.95, 0.93), (0.30, 0.20, 0.12), (0.03, 0.03, 0.03)
FRAME, GOLD = (0.08, 0.08, 0.09), (0.86, 0.70, 0.22)

#: attribute phrase -> what it asks of a face
ATTRIBUTES = {
    "glasses": lambda f: f.glasses,
    "a hat": lambda f: f.hat,
    "smiling": lambda f: f.smiling,
    "a beard": lambda f: f.beard,
    "closed eyes": lambda f: f.eyes_closed,
    "earrings": lambda f: f.earrings,
    **{f"{c} hair": (lambda f, c=c: f.hair_style != "bald" and f.hair_colour == c) for c in HAIR_COLOURS},
}

# geometry of the neutral head (object frame, before the face's own proportions are applied)
HEAD_C, HEAD_AX = (0.0, 0.0, 0.02), (0.30, 0.26, 0.36)
EYE_Y, EYE_Z, EYE_R = 0.095, 0.07, 0.045
MOUTH_Z, MOUTH_W = -0.15, 0.068


@dataclass(frozen=True)
class Face:
    """One face: skin tone, hair (colour, style) and the boolean attributes; ``params`` hold its continuous
    proportions (head width and height scales, hat colour)."""

    skin: str = "fair"
    hair_colour: str = "brown"
    hair_style: str = "short"
    glasses: bool = False
    hat: bool = False
    smiling: bool = False
    beard: bool = False
    eyes_closed: bool = False
    earrings: bool = False
    params: dict = field(default_factory=lambda: {"width": 1.0, "height": 1.0, "hat_colour": "red"}, compare=False)

    @property
    def attributes(self) -> list[str]:
        """The attribute phrases this face has (:data:`ATTRIBUTES`)."""
        return [name for name, has in ATTRIBUTES.items() if has(self)]

    def caption(self, rng: np.random.Generator | None = None) -> str:
        """``"a photo of a face with glasses, a hat and black hair, smiling"``; with ``rng``, the base's training
        captions: a random prefix, at most three of the attributes (each kept at random), "with" or "wearing",
        no commas, at most :data:`CAPTION_WORDS` words (the mini text encoder reads 20 tokens)."""
        with_ = [a for a in self.attributes if a not in ("smiling", "closed eyes")]
        states = [a for a in ("smiling", "closed eyes") if a in self.attributes]
        if rng is None:
            text = "a photo of a face"
            if with_:
                text += " with " + (with_[0] if len(with_) == 1 else ", ".join(with_[:-1]) + " and " + with_[-1])
            if states:
                text += ", " + " and ".join(states)
            return text
        named = [a for a in with_ + states if rng.random() > 0.25]
        named = [named[i] for i in sorted(rng.permutation(len(named))[:3])]
        prefix = ("a photo of", "a picture of", "an image of", "")[rng.integers(4)]
        words = (prefix + " a face").split()
        phrases = [a for a in named if a not in ("smiling", "closed eyes")]
        if phrases:
            verb = "wearing" if rng.random() < 0.3 and all(a in WEARABLE for a in phrases) else "with"
            words += [verb] + " and ".join(phrases).split()
        for state in (a for a in named if a in ("smiling", "closed eyes")):
            words += (["with"] if state == "closed eyes" else []) + state.split()
        return " ".join(words[:CAPTION_WORDS])


WEARABLE = ("glasses", "a hat", "earrings")
CAPTION_WORDS = 18

#: the face domain's attribute frequencies (FFHQ-like: uneven): smiling and dark hair common; glasses, beards and
#: blond hair occasional; hats, closed eyes and grey hair rare (5% or less); earrings and red hair absent.
DOMAIN_FREQUENCIES = {"smiling": 0.5, "glasses": 0.12, "a beard": 0.12, "a hat": 0.04, "closed eyes": 0.03,
                      "earrings": 0.0, "black hair": 3.0, "brown hair": 3.0, "blond hair": 1.2, "grey hair": 0.3,
                      "red hair": 0.0, "bald": 0.05, "long hair": 0.35}
DOMAIN_NAME = FACE.name


def attribute_rate(phrase: str, frequencies: dict[str, float] | None = None) -> float:
    """How often :func:`random_face` gives a face the attribute ``phrase`` at these ``frequencies`` (default: the
    face domain's): its probability, or for a hair colour its share of the haired faces."""
    freq = {**DEFAULT_FREQUENCIES, **(DOMAIN_FREQUENCIES if frequencies is None else frequencies)}
    if phrase in FLAGS:
        return float(freq[phrase])
    total = sum(freq[f"{c} hair"] for c in HAIR_COLOURS)
    return float(freq[phrase] / total * (1 - freq["bald"]))

FLAGS = {"glasses": "glasses", "a hat": "hat", "smiling": "smiling", "a beard": "beard",
         "closed eyes": "eyes_closed", "earrings": "earrings"}


#: the open world's attribute frequencies (:func:`random_face`'s defaults)
DEFAULT_FREQUENCIES = {**{k: 0.3 for k in FLAGS}, **{f"{c} hair": 1.0 for c in HAIR_COLOURS}, "bald": 0.15,
                       "long hair": 0.35}


def random_face(rng: np.random.Generator, frequencies: dict[str, float] | None = None) -> Face:
    """A face with random skin, hair and proportions. ``frequencies`` (keys: the phrases of :data:`ATTRIBUTES`, and
    ``bald`` / ``long hair``) sets how often each attribute occurs: a probability for the yes/no attributes (default
    0.3 each), for ``bald`` (0.15) and ``long hair`` (0.35 of the rest), and a relative weight for each hair colour
    (default 1 each, so 0.2 of the haired faces). 0 makes an attribute absent."""
    freq = dict(DEFAULT_FREQUENCIES)
    unknown = sorted(set(frequencies or {}) - set(freq))
    if unknown:
        raise ValueError(f"unknown face attribute(s) {unknown}: use {', '.join(freq)}")
    freq.update(frequencies or {})
    flags = {FLAGS[k]: bool(rng.random() < freq[k]) for k in FLAGS}
    weights = np.array([freq[f"{c} hair"] for c in HAIR_COLOURS], np.float64)
    if weights.sum() <= 0:
        raise ValueError("every hair colour has frequency 0: give at least one a weight above 0")
    colour = str(list(HAIR_COLOURS)[rng.choice(len(HAIR_COLOURS), p=weights / weights.sum())])
    style = "bald" if rng.random() < freq["bald"] else "long" if rng.random() < freq["long hair"] else "short"
    return Face(skin=str(list(SKIN_TONES)[rng.integers(len(SKIN_TONES))]), hair_colour=colour, hair_style=style,
                **flags,
                params={"width": float(rng.uniform(0.93, 1.05)), "height": float(rng.uniform(0.95, 1.04)),
                        "hat_colour": str(list(COLOURS)[rng.integers(len(COLOURS))])})


# ---------------------------------------------------------------------------------------------------------
# geometry
def _scale(face: Face) -> torch.Tensor:
    return torch.tensor([1.0, face.params.get("width", 1.0), face.params.get("height", 1.0)])


def _head(face: Face):
    s = _scale(face)
    return torch.tensor(HEAD_C) * s, torch.tensor(HEAD_AX) * s


def _on_head(face: Face, y: float, z: float) -> torch.Tensor:
    """The front point of the head's surface at the given (unscaled) y, z."""
    c, ax = _head(face)
    s = _scale(face)
    y, z = y * float(s[1]), z * float(s[2])
    q = 1 - (y / float(ax[1])) ** 2 - ((z - float(c[2])) / float(ax[2])) ** 2
    return torch.tensor([float(c[0]) + float(ax[0]) * math.sqrt(max(q, 0.0)), y, z])


def _parts(face: Face) -> list[tuple]:
    """``(kind, material, params)`` of every surface of the face."""
    s = _scale(face)
    head_c, head_ax = _head(face)
    parts = [("ellipsoid", "skin", (head_c, head_ax, None)),
             ("ellipsoid", "skin", (torch.tensor([-0.04, 0.0, -0.40]), torch.tensor([0.11, 0.10, 0.19]) * s, None))]
    nose_base = _on_head(face, 0.0, -0.01)
    parts.append(("ellipsoid", "skin", (nose_base + torch.tensor([0.0, 0.0, -0.01]),
                                        torch.tensor([0.055, 0.035, 0.075]), None)))
    for side in (-1.0, 1.0):
        parts.append(("ellipsoid", "skin", (torch.tensor([-0.01, side * (float(head_ax[1]) - 0.005), 0.0]),
                                            torch.tensor([0.045, 0.03, 0.08]), None)))
        eye = _on_head(face, side * EYE_Y, EYE_Z) - torch.tensor([0.025, 0.0, 0.0])
        parts.append(("ellipsoid", "eye", (eye, torch.tensor([EYE_R] * 3), None)))
        if face.earrings:
            parts.append(("ellipsoid", "gold", (torch.tensor([0.0, side * (float(head_ax[1]) + 0.02), -0.10]),
                                                torch.tensor([0.03] * 3), None)))
    if face.hair_style != "bald":
        shell = head_ax + torch.tensor([0.025, 0.025, 0.03])
        parts.append(("ellipsoid", "hair", (head_c, shell, _hairline(face))))
    if face.hat:
        profile = ([(0.0, 0.31), (0.40, 0.31)], [(0.40, 0.31), (0.40, 0.34)], [(0.40, 0.34), (0.25, 0.34)],
                   [(0.25, 0.34), (0.23, 0.56)], [(0.23, 0.56), (0.0, 0.56)])
        h = float(s[2])
        parts.append(("revolution", "hat", SimpleNamespace(profile=tuple([(r, z * h) for r, z in p] for p in profile))))
    if face.glasses:
        parts.append(("sdf", "frame", _glasses_sdf(face)))
    return parts


def _hairline(face: Face):
    """Which points of the hair shell are hair: above a line that is high at the forehead and lower at the back
    (down to the shoulders for long hair)."""
    drop = 0.62 if face.hair_style == "long" else 0.26
    top = 0.17 * float(_scale(face)[2])

    def keep(p):
        back = ((0.05 - p[:, 0]) / 0.3).clamp(0, 1)
        return p[:, 2] > top - drop * back

    return keep


def _capsule(p, a, b, r):
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum()).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1) - r


def _glasses_sdf(face: Face):
    eyes = [_on_head(face, side * EYE_Y, EYE_Z) + torch.tensor([0.035, 0.0, 0.0]) for side in (-1.0, 1.0)]
    major, minor = 0.062, 0.011
    width = float(_head(face)[1][1])

    def sdf(p):
        out = []
        for e in eyes:
            q = p - e
            ring = torch.stack([(q[:, 1] ** 2 + q[:, 2] ** 2).sqrt() - major, q[:, 0]], -1)
            out.append(ring.norm(dim=-1) - minor)
        out.append(_capsule(p, eyes[0] + torch.tensor([0.0, major, 0.005]), eyes[1] - torch.tensor([0.0, major, -0.005]),
                            minor))
        for e, side in zip(eyes, (-1.0, 1.0)):  # the arms, round the outside of the head to the ears
            a = e + torch.tensor([-0.01, side * major, 0.0])
            w = torch.tensor([0.16, side * (width + 0.015), float(e[2])])
            b = torch.tensor([-0.02, side * (width + 0.015), float(e[2])])
            out.append(torch.minimum(_capsule(p, a, w, minor * 0.8), _capsule(p, w, b, minor * 0.8)))
        return torch.stack(out, 0).amin(0)

    return sdf


def _hit_ellipsoid(o, d, centre, axes, keep=None):
    oc, dd = (o - centre) / axes, d / axes
    a = (dd * dd).sum(-1)
    b = (oc * dd).sum(-1)
    c = (oc * oc).sum(-1) - 1
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t_best = torch.full_like(b, _INF)
    for sign in (-1.0, 1.0):  # the near side, else (for a clipped shell) its far side
        t = (-b + sign * sq) / a
        ok = (disc >= 0) & (t > 1e-6) & ~torch.isfinite(t_best)
        if keep is not None:
            ok &= keep(o + t.nan_to_num(0)[:, None] * d)
        t_best = torch.where(ok, t, t_best)
    p = o + t_best.nan_to_num(posinf=0.0)[:, None] * d
    return t_best, torch.nn.functional.normalize((p - centre) / axes ** 2, dim=-1)


GLASSES_C, GLASSES_R = torch.tensor([0.15, 0.0, 0.07]), 0.36  # a sphere around the frames and arms


def _hit_sdf(o, d, sdf, steps: int = 64):
    """Sphere tracing of the glasses, for the rays that pass through their bounding sphere."""
    t_out = torch.full((o.shape[0],), _INF)
    n_out = torch.zeros_like(o)
    oc = o - GLASSES_C
    b = (oc * d).sum(-1)
    near = ((oc * oc).sum(-1) - b * b) < GLASSES_R ** 2
    if not bool(near.any()):
        return t_out, n_out
    t_out[near], n_out[near] = _trace(o[near], d[near], sdf, steps)
    return t_out, n_out


def _trace(o, d, sdf, steps):
    b = ((o - GLASSES_C) * d).sum(-1)
    disc = b * b - (((o - GLASSES_C) ** 2).sum(-1) - GLASSES_R ** 2)
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -b + disc.clamp_min(0).sqrt()
    for _ in range(steps):
        t = t + sdf(o + t[:, None] * d).clamp_min(0) * 0.9
        t = torch.minimum(t, t_far + 1)
    p = o + t[:, None] * d
    hit = (sdf(p).abs() < 2e-3) & (t <= t_far) & (disc > 0)
    eps = 1e-3
    n = torch.stack([sdf(p + e) - sdf(p - e) for e in torch.eye(3) * eps], -1)
    return torch.where(hit, t, torch.full_like(t, _INF)), torch.nn.functional.normalize(n, dim=-1)


MATERIALS = ("skin", "eye", "hair", "hat", "frame", "gold")


def intersect_face(face: Face, o: torch.Tensor, d: torch.Tensor):
    """First hit of rays ``o, d [R, 3]``: ``t [R]`` (inf = miss), unit normal facing the ray, material index
    (:data:`MATERIALS`)."""
    t_all = torch.full((o.shape[0],), _INF)
    n_all = torch.zeros_like(o)
    m_all = torch.zeros(o.shape[0], dtype=torch.long)
    b = (o * d).sum(-1)
    near = ((o * o).sum(-1) - b * b) < BOUND_RADIUS ** 2
    if not bool(near.any()):
        return t_all, n_all, m_all
    o, d = o[near], d[near]
    t_best = torch.full((o.shape[0],), _INF)
    n_best = torch.zeros_like(o)
    m_best = torch.zeros(o.shape[0], dtype=torch.long)
    for kind, material, prm in _parts(face):
        if kind == "ellipsoid":
            t, n = _hit_ellipsoid(o, d, *prm)
        elif kind == "revolution":
            t, n = _hit_revolution(o, d, prm)
        else:
            t, n = _hit_sdf(o, d, prm)
        closer = t < t_best
        t_best = torch.where(closer, t, t_best)
        n_best = torch.where(closer[:, None], n, n_best)
        m_best = torch.where(closer, torch.full_like(m_best, MATERIALS.index(material)), m_best)
    flip = (n_best * d).sum(-1, keepdim=True) > 0
    t_all[near], n_all[near], m_all[near] = t_best, torch.where(flip, -n_best, n_best), m_best
    return t_all, n_all, m_all


# ---------------------------------------------------------------------------------------------------------
# appearance
def _paint_skin(face: Face, p: torch.Tensor) -> torch.Tensor:
    """Skin albedo with brows, mouth and beard painted on (points ``p [R, 3]`` on the skin surfaces)."""
    s = _scale(face)
    rgb = torch.tensor(SKIN_TONES[face.skin]).expand(len(p), 3).clone()
    y, z = p[:, 1] / s[1], p[:, 2] / s[2]
    front = p[:, 0] > 0.12
    hair = torch.tensor(HAIR_COLOURS[face.hair_colour])
    if face.beard:
        jaw = front & (z < -0.05) & (z > -0.36) & (y.abs() < 0.24)
        rgb[jaw] = hair * 0.9 + 0.02
    brow_col = hair * 0.8 if face.hair_style != "bald" else torch.tensor(HAIR_COLOURS["brown"])
    for side in (-1.0, 1.0):
        brow = front & ((y - side * EYE_Y).abs() < 0.05) & ((z - (EYE_Z + 0.075 - 1.2 * (y - side * EYE_Y) ** 2)).abs()
                                                            < 0.014)
        rgb[brow] = brow_col
    if face.smiling:
        u = (y / 0.08).clamp(-1, 1)
        top = MOUTH_Z + 0.012 + 0.03 * u ** 2
        bottom = top - 0.045 * (1 - u ** 2) - 0.01
        mouth = front & (y.abs() < 0.08) & (z < top) & (z > bottom)
        teeth = mouth & (z > top - 0.015)
        rgb[mouth] = torch.tensor((0.35, 0.08, 0.08))
        rgb[teeth] = torch.tensor((0.95, 0.94, 0.90))
    else:
        mouth = front & (y.abs() < MOUTH_W) & ((z - MOUTH_Z).abs() < 0.013)
        rgb[mouth] = torch.tensor(LIPS)
    return rgb


def _paint_eye(face: Face, p: torch.Tensor) -> torch.Tensor:
    rgb = torch.tensor(SKIN_TONES[face.skin]).expand(len(p), 3).clone()
    if face.eyes_closed:  # the lids: skin, with a dark line across the middle
        lid = (p[:, 2] - EYE_Z * float(_scale(face)[2])).abs() < 0.008
        rgb[lid] = torch.tensor(PUPIL)
        return rgb
    dirs = []
    for side in (-1.0, 1.0):
        eye = _on_head(face, side * EYE_Y, EYE_Z) - torch.tensor([0.025, 0.0, 0.0])
        dirs.append(torch.nn.functional.normalize(p - eye, dim=-1))
    q = torch.where((p[:, 1:2] > 0), dirs[1], dirs[0])
    rgb[:] = torch.tensor(EYE_WHITE)
    rgb[q[:, 0] > 0.80] = torch.tensor(IRIS)
    rgb[q[:, 0] > 0.95] = torch.tensor(PUPIL)
    return rgb


LOOKS = ("world", "photo")
#: the photo look's soft backdrops (a vertical gradient of one of these, lighter at the top, darker at the corners)
PHOTO_BACKDROPS = {"slate": (0.50, 0.57, 0.66), "sand": (0.70, 0.63, 0.54), "sage": (0.49, 0.58, 0.52),
                   "mauve": (0.60, 0.53, 0.61), "cream": (0.80, 0.77, 0.70)}
PHOTO_LIGHT = (0.55, 0.30, 0.78)  # camera space: a key light from the right, lower than the world's


def photo_backdrop(name: str, size: int) -> torch.Tensor:
    """A soft studio backdrop ``[3, size, size]``: :data:`PHOTO_BACKDROPS` ``[name]`` as a vertical gradient with a
    vignette."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    shade = (1.12 - 0.22 * (y + 1) / 2) * (1 - 0.18 * (x ** 2 + y ** 2) / 2)
    return (torch.tensor(PHOTO_BACKDROPS[name])[:, None, None] * shade).clamp(0, 1)


def shade_face(face: Face, p, n, m, view_dir, light, look: str = "world") -> torch.Tensor:
    """Shaded colour of surface points (material indices ``m``, :data:`MATERIALS`). ``look="world"``: the mini
    world's Lambert and Blinn-Phong; ``"photo"``: the face domain's photographic light (a warm wrapped key, a cool
    fill, skin that reddens in its shadows as light scattered under it does, a rim light and a soft tone curve)."""
    albedo = torch.zeros_like(p)
    gloss = torch.full((len(p), 1), 12.0)
    ks = torch.full((len(p), 1), 0.06)
    for i, name in enumerate(MATERIALS):
        sel = m == i
        if not bool(sel.any()):
            continue
        if name == "skin":
            albedo[sel] = _paint_skin(face, p[sel])
        elif name == "eye":
            albedo[sel] = _paint_eye(face, p[sel])
            gloss[sel], ks[sel] = 60.0, 0.4
        elif name == "hair":
            albedo[sel] = torch.tensor(HAIR_COLOURS[face.hair_colour])
            ks[sel] = 0.1
        elif name == "hat":
            albedo[sel] = torch.tensor(COLOURS[face.params.get("hat_colour", "red")])
        elif name == "frame":
            albedo[sel] = torch.tensor(FRAME)
            gloss[sel], ks[sel] = 40.0, 0.3
        else:
            albedo[sel] = torch.tensor(GOLD)
            gloss[sel], ks[sel] = 40.0, 0.6
    cos = (n * light).sum(-1, keepdim=True)
    half = torch.nn.functional.normalize(light + view_dir, dim=-1)
    if look == "world":
        spec = (n * half).sum(-1, keepdim=True).clamp_min(0) ** gloss * ks
        return (albedo * (0.32 + 0.68 * cos.clamp_min(0)) + spec).clamp(0, 1)
    if look != "photo":
        raise ValueError(f"unknown look {look!r}: use one of {', '.join(LOOKS)}")
    wrap = ((cos + 0.45) / 1.45).clamp_min(0)
    light_rgb = torch.tensor((0.86, 0.80, 0.72)) * wrap + torch.tensor((0.26, 0.28, 0.33))
    skin = (m == MATERIALS.index("skin"))[:, None]
    light_rgb = light_rgb + skin * (1 - wrap) * torch.tensor((0.14, 0.03, 0.0))  # scattered light in the shadows
    rim = (1 - (n * view_dir).sum(-1, keepdim=True).clamp(0, 1)) ** 3 * 0.3
    spec = (n * half).sum(-1, keepdim=True).clamp_min(0) ** (gloss * 0.5) * ks * 0.6
    lit = albedo * light_rgb + spec + rim * torch.tensor((0.95, 0.93, 1.0)) * (0.15 + albedo)
    return lit.clamp(0, 1) ** 0.92


def render_face(face: Face, cams: Cameras, size: int = 64, supersample: int = 2, background=BACKGROUND,
                look: str = "world", backdrop="slate") -> Rendered:
    """Render ``face`` from every camera of ``cams`` (the core of :func:`suite.miniworld.render.render`).
    ``look="photo"``: the face domain's look, on the soft backdrop ``backdrop`` (:data:`PHOTO_BACKDROPS`), lit by
    :data:`PHOTO_LIGHT`. A ``backdrop`` image ``[3, size, size]`` replaces the background in either look."""
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}: use one of {', '.join(LOOKS)}")
    light_cam = PHOTO_LIGHT if look == "photo" else LIGHT_CAM

    def trace(o, d, light):
        t, n, m = intersect_face(face, o, d)
        p = o + t.nan_to_num(posinf=0.0)[:, None] * d
        return t, lambda hit: shade_face(face, p[hit], n[hit], m[hit], -d[hit], light[hit], look)

    if isinstance(backdrop, torch.Tensor):
        background = backdrop
    elif look == "photo":
        background = photo_backdrop(backdrop, size)
    return render_traced(trace, cams, size, supersample, background, light=light_cam)


def render_face_view(face: Face, elevation: float = 0.0, azimuth: float = 0.0, distance: float = 3.8,
                     fovy: float = 20.0, size: int = 64, supersample: int = 2, look: str = "world",
                     backdrop: str = "slate", aligned: bool = False) -> Rendered:
    """One view; ``aligned``: FFHQ's framing of that view (:func:`aligned_cameras`) instead of the orbit's."""
    cams = aligned_cameras(face, elevation, azimuth, distance, fovy) if aligned else \
        orbit_cameras(elevation, azimuth, distance, fovy)
    return render_face(face, cams, size=size, supersample=supersample, look=look, backdrop=backdrop)


def eye_mouth_points(face: Face, cams: Cameras, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points FFHQ's alignment reads, in pixels of the first camera's ``size`` x ``size`` image: the two eye
    centres (between each eye's corners) and the mouth's centre (between its corners)."""
    lm = landmarks(face)
    px = project(torch.stack([lm[k] for k in LANDMARKS]), cams, size)[0].double().numpy()
    at = {k: px[i] for i, k in enumerate(LANDMARKS)}
    return ((at["eye_left_outer"] + at["eye_left_inner"]) / 2, (at["eye_right_inner"] + at["eye_right_outer"]) / 2,
            (at["mouth_left"] + at["mouth_right"]) / 2)


def aligned_cameras(face: Face, elevation: float = 0.0, azimuth: float = 0.0, distance: float = 3.8,
                    fovy: float = 20.0) -> Cameras:
    """The camera that sees exactly FFHQ's aligned crop (:func:`suite.alignment.ffhq_quad` of the exact landmarks) of
    the orbit view ``(elevation, azimuth, distance, fovy)``: from the same point, turned to the crop's centre and
    rolled with it, its field of view the crop's side. The face domain's photos are made this way, so that
    :mod:`editing.align`'s crop of a photo frames the face as the domain model saw faces."""
    from ..alignment import ffhq_quad

    wide = orbit_cameras(elevation, azimuth, distance, fovy)
    n = 1000  # a virtual image size: the projection is analytic
    c, x, _ = ffhq_quad(*eye_mouth_points(face, wide, n))
    focal = 0.5 * n / math.tan(math.radians(fovy) / 2)
    rot = wide.c2w[0, :3, :3].double()
    forward = torch.nn.functional.normalize(rot @ torch.tensor([(c[0] - n / 2) / focal, -(c[1] - n / 2) / focal, -1.0],
                                                               dtype=torch.float64), dim=0)
    right = rot @ torch.tensor([x[0], -x[1], 0.0], dtype=torch.float64)
    right = torch.nn.functional.normalize(right - (right @ forward) * forward, dim=0)
    up = torch.linalg.cross(right, forward)
    c2w = wide.c2w.clone()
    c2w[0, :3, 0], c2w[0, :3, 1], c2w[0, :3, 2] = right.float(), up.float(), -forward.float()
    half = float(np.hypot(*x))
    fov = torch.tensor([2 * math.degrees(math.atan(half / focal))])
    return Cameras(c2w, wide.elevation, wide.azimuth, wide.distance, fov)


def random_face_view(rng: np.random.Generator, aligned: bool = False) -> dict:
    """Camera and backdrop for a training image: ``aligned`` (the face domain, FFHQ-like): near-frontal, framed by
    FFHQ's alignment (pass ``aligned=True`` on to :func:`render_face_view`), a soft backdrop; else the open world's:
    any pose from the front half, any framing."""
    if aligned:
        return dict(elevation=float(rng.uniform(0, 8)), azimuth=float(rng.uniform(-10, 10)), distance=3.8,
                    fovy=20.0, backdrop=str(list(PHOTO_BACKDROPS)[rng.integers(len(PHOTO_BACKDROPS))]), aligned=True)
    return dict(elevation=float(rng.uniform(-10, 30)), azimuth=float(rng.uniform(-70, 70)),
                distance=float(rng.uniform(3.0, 4.4)), fovy=20.0, backdrop="slate", aligned=False)


# ---------------------------------------------------------------------------------------------------------
# landmarks
LANDMARKS = ("eye_left_outer", "eye_left_inner", "eye_right_inner", "eye_right_outer", "nose_tip", "mouth_left",
             "mouth_right", "chin", "jaw_left", "jaw_right")


def landmarks(face: Face) -> dict[str, torch.Tensor]:
    """The alignment landmarks as 3D points on the face's surface (object frame). "Left" is the image's left in a
    frontal view (the face's right, at -Y), as in dlib's numbering. They are where they would be without glasses
    (frames may cover the eye corners, as in photos); turned far enough, the far side's hide behind the face."""
    nose_base = _on_head(face, 0.0, -0.01)
    out = {}
    for name, side in (("left", -1.0), ("right", 1.0)):
        out[f"eye_{name}_outer"] = _on_head(face, side * (EYE_Y + 0.052), EYE_Z)
        out[f"eye_{name}_inner"] = _on_head(face, side * (EYE_Y - 0.052), EYE_Z)
        mouth_z = MOUTH_Z + (0.042 if face.smiling else 0.0)
        out[f"mouth_{name}"] = _on_head(face, side * (0.08 if face.smiling else MOUTH_W), mouth_z)
        out[f"jaw_{name}"] = _on_head(face, side * 0.18, -0.17)
    out["nose_tip"] = nose_base + torch.tensor([0.055, 0.0, -0.01])
    out["chin"] = _on_head(face, 0.0, -0.315)
    return {k: out[k] for k in LANDMARKS}


def project(points: torch.Tensor, cams: Cameras, size: int) -> torch.Tensor:
    """Pixel coordinates ``[B, N, 2]`` (x right, y down; pixel centres at +0.5) of world points ``[N, 3]``."""
    hom = torch.cat([points, torch.ones(len(points), 1)], -1)
    pc = torch.einsum("bij,nj->bni", torch.linalg.inv(cams.c2w), hom)[..., :3]
    focal = 0.5 * size / torch.tan(torch.deg2rad(cams.fovy) / 2)
    x = size / 2 + focal[:, None] * pc[..., 0] / -pc[..., 2]
    y = size / 2 - focal[:, None] * pc[..., 1] / -pc[..., 2]
    return torch.stack([x, y], -1)


def with_attribute(face: Face, name: str, on: bool = True) -> Face:
    """``face`` with one attribute of :data:`ATTRIBUTES` set (a hair colour keeps the style, bald becomes short)."""
    if name in FLAGS:
        return replace(face, **{FLAGS[name]: on})
    if name.endswith(" hair") and name[:-5] in HAIR_COLOURS:
        return replace(face, hair_colour=name[:-5], hair_style="short" if face.hair_style == "bald" else face.hair_style)
    raise ValueError(f"unknown face attribute {name!r}: choose from {', '.join(ATTRIBUTES)}")


# ---------------------------------------------------------------------------------------------------------
# photos to edit: a face somewhere in a larger picture, a room behind it
def scene_backdrop(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A room behind the sitter ``[3, size, size]``: a wall in a soft gradient, a window, a shelf and a plant."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    wall = torch.tensor(PHOTO_BACKDROPS[str(list(PHOTO_BACKDROPS)[rng.integers(len(PHOTO_BACKDROPS))])])
    img = wall[:, None, None] * (1.08 - 0.25 * y)[None].expand(3, size, size).clone()
    wx, wy = rng.uniform(0.0, 0.7), rng.uniform(0.05, 0.3)  # a window
    win = (x > wx) & (x < wx + 0.25) & (y > wy) & (y < wy + 0.35)
    img[:, win] = torch.tensor((0.90, 0.93, 0.97))[:, None]
    bar = win & (((x - (wx + 0.125)).abs() < 0.008) | ((y - (wy + 0.175)).abs() < 0.008))
    img[:, bar] = torch.tensor((0.45, 0.40, 0.36))[:, None]
    shelf = rng.uniform(0.55, 0.8)
    img[:, ((y - shelf).abs() < 0.012)] = torch.tensor((0.38, 0.27, 0.18))[:, None]
    px, pr = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.09)  # a plant on the shelf
    leaves = ((x - px) ** 2 + (y - shelf + pr) ** 2) < pr ** 2
    img[:, leaves] = torch.tensor((0.22, 0.45, 0.20))[:, None]
    img[:, y > 0.9] *= 0.8  # the floor
    return img.clamp(0, 1)


def face_photo(face: Face, rng: np.random.Generator, size: int = 256, face_width: float | None = None,
               look: str = "photo", supersample: int = 2) -> tuple[np.ndarray, dict[str, tuple[float, float]], dict]:
    """A photo to edit: ``face`` near-frontal (elevation 0..10, azimuth -12..12 degrees), its head about
    ``face_width`` pixels wide (default: a random 0.3-0.45 of ``size``) somewhere off-centre in a ``size`` x
    ``size`` picture, a room behind it (:func:`scene_backdrop`). Returns the image ``[size, size, 3] uint8``, the
    exact landmarks in its pixels (:data:`LANDMARKS`, plus ``eye_left`` / ``eye_right``, the eye centres) and the
    view (with ``mask``, the face's exact silhouette in the photo's pixels)."""
    el, az = float(rng.uniform(0, 10)), float(rng.uniform(-12, 12))
    width = float(face_width if face_width is not None else rng.uniform(0.3, 0.45) * size)
    big = int(round(size * 1.6))  # rendered larger, then cut off-centre
    # The head (0.6 wide) spans `width` pixels at the face's distance (about 3.5 from a camera at 3.8).
    fovy = 2 * math.degrees(math.atan(0.5 * big / width * 0.6 / 3.5))
    cams = orbit_cameras(el, az, 3.8, fovy)
    r = render_face(face, cams, size=big, supersample=supersample, look=look, backdrop=scene_backdrop(rng, big))
    lm = landmarks(face)
    px = project(torch.stack([lm[k] for k in LANDMARKS]), cams, big)[0].double().numpy()
    centre = (px.min(0) + px.max(0)) / 2  # the face, off-centre in the cut but whole inside it
    want = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.38, 0.6)]) * size
    ox, oy = (int(np.clip(round(c - w), 0, big - size)) for c, w in zip(centre, want))
    rgb = (r.rgb[0].permute(1, 2, 0).numpy()[oy:oy + size, ox:ox + size] * 255).round().astype(np.uint8)
    px = px - [ox, oy]
    points = {k: (float(px[i, 0]), float(px[i, 1])) for i, k in enumerate(LANDMARKS)}
    for side in ("left", "right"):
        a, b = np.array(points[f"eye_{side}_outer"]), np.array(points[f"eye_{side}_inner"])
        points[f"eye_{side}"] = tuple(float(v) for v in (a + b) / 2)
    mask = r.mask[0].numpy()[oy:oy + size, ox:ox + size]
    return rgb, points, dict(elevation=el, azimuth=az, fovy=fovy, offset=(ox, oy), face_width=width, mask=mask)

