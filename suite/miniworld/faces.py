"""Faces in the mini world (issue 23, part 1): procedural heads with exact geometry, attributes a prompt can name,
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

The judge does not know faces yet and the shipped models were not trained on them: they join the world at the
next rebuild (the rest of issue 23).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import torch

from ..cameras import Cameras, orbit_cameras
from .render import _INF, BOUND_RADIUS, Rendered, _hit_revolution, render_traced
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
        """``"a photo of a face with glasses, a hat and black hair, smiling"``; with ``rng``, a random prefix and
        randomly omitted attributes (a base learns partial prompts)."""
        with_ = [a for a in self.attributes if a not in ("smiling", "closed eyes")]
        states = [a for a in ("smiling", "closed eyes") if a in self.attributes]
        if rng is not None:
            with_ = [a for a in with_ if rng.random() > 0.25]
            states = [a for a in states if rng.random() > 0.25]
        text = "a photo of a face"
        if with_:
            text += " with " + (with_[0] if len(with_) == 1 else ", ".join(with_[:-1]) + " and " + with_[-1])
        if states:
            text += ", " + " and ".join(states)
        return text


FLAGS = {"glasses": "glasses", "a hat": "hat", "smiling": "smiling", "a beard": "beard",
         "closed eyes": "eyes_closed", "earrings": "earrings"}


def random_face(rng: np.random.Generator, frequencies: dict[str, float] | None = None) -> Face:
    """A face with random skin, hair and proportions. ``frequencies`` (keys: the phrases of :data:`ATTRIBUTES`, and
    ``bald`` / ``long hair``) sets how often each attribute occurs: a probability for the yes/no attributes (default
    0.3 each), for ``bald`` (0.15) and ``long hair`` (0.35 of the rest), and a relative weight for each hair colour
    (default 1 each, so 0.2 of the haired faces). 0 makes an attribute absent."""
    freq = {**{k: 0.3 for k in FLAGS}, **{f"{c} hair": 1.0 for c in HAIR_COLOURS}, "bald": 0.15, "long hair": 0.35}
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


def shade_face(face: Face, p, n, m, view_dir, light) -> torch.Tensor:
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
    diffuse = (n * light).sum(-1, keepdim=True).clamp_min(0)
    half = torch.nn.functional.normalize(light + view_dir, dim=-1)
    spec = (n * half).sum(-1, keepdim=True).clamp_min(0) ** gloss * ks
    return (albedo * (0.32 + 0.68 * diffuse) + spec).clamp(0, 1)


def render_face(face: Face, cams: Cameras, size: int = 64, supersample: int = 2, background=BACKGROUND) -> Rendered:
    """Render ``face`` from every camera of ``cams`` (the core of :func:`suite.miniworld.render.render`)."""
    def trace(o, d, light):
        t, n, m = intersect_face(face, o, d)
        p = o + t.nan_to_num(posinf=0.0)[:, None] * d
        return t, lambda hit: shade_face(face, p[hit], n[hit], m[hit], -d[hit], light[hit])

    return render_traced(trace, cams, size, supersample, background)


def render_face_view(face: Face, elevation: float = 0.0, azimuth: float = 0.0, distance: float = 3.8,
                     fovy: float = 20.0, size: int = 64, supersample: int = 2) -> Rendered:
    return render_face(face, orbit_cameras(elevation, azimuth, distance, fovy), size=size, supersample=supersample)


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
