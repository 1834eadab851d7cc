"""An exact, anti-aliased renderer for the mini world, in the camera convention of :mod:`suite.cameras`.

Rays are intersected with the analytic surfaces (no ray marching for the surfaces of revolution, the sphere and
the box: each profile segment is a cone frustum, solved as a quadratic; the cup's torus handle is sphere-traced),
so depth, normals and silhouettes are exact up to float precision. Each pixel averages ``supersample**2``
sub-pixel rays (anti-aliased RGB and coverage); ``mask`` is the exact silhouette at the pixel centres.

Shading: Lambert plus a Blinn-Phong highlight, light from the upper left of the viewer, so the 3D form reads in a
single view; porcelain is glossier than the open world's matte paint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cameras import Cameras, camera_rays, orbit_cameras
from .world import BACKGROUND, MiniObject

_INF = float("inf")
BOUND_RADIUS = 0.64  # every object fits in this sphere about the origin (checked by the tests)
LIGHT_CAM = (-0.45, 0.65, 0.62)  # camera space: left, up, toward the viewer (also generators3d.raster's light)


@dataclass
class Rendered:
    """``rgb [B, 3, H, W]`` in [0, 1] (anti-aliased, on the background), ``alpha [B, H, W]`` (sub-pixel coverage),
    ``mask [B, H, W]`` (bool, exact silhouette at pixel centres), ``depth [B, H, W]`` (distance along the centre
    ray; inf on the background)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# ray / surface intersections: each returns t [R] (inf = miss) and the outward normal [R, 3]
def _segments(obj: MiniObject):
    """Profile segments ``(r0, z0, r1, z1)`` and per-end 2D normals (smooth inside a part)."""
    segs, normals = [], []
    for part in obj.profile:
        pts = torch.tensor(part, dtype=torch.float32)
        d = pts[1:] - pts[:-1]
        seg_n = torch.stack([d[:, 1], -d[:, 0]], -1)  # (dz, -dr): outward for a counter-clockwise-in-(r,z) walk
        seg_n = torch.nn.functional.normalize(seg_n, dim=-1)
        vert_n = torch.zeros_like(pts)
        vert_n[:-1] += seg_n
        vert_n[1:] += seg_n
        vert_n = torch.nn.functional.normalize(vert_n, dim=-1)
        keep = (d.abs().sum(-1) > 1e-9) & ~((pts[:-1, 0] < 1e-9) & (pts[1:, 0] < 1e-9))
        segs.append(torch.cat([pts[:-1], pts[1:]], -1)[keep])
        normals.append(torch.cat([vert_n[:-1], vert_n[1:]], -1)[keep])
    return torch.cat(segs), torch.cat(normals)


def _hit_revolution(o, d, obj: MiniObject):
    segs, vn = _segments(obj)
    r0, z0, r1, z1 = segs.unbind(-1)  # [M]
    ox, oy, oz = (o[:, i:i + 1] for i in range(3))  # [R, 1]
    dx, dy, dz = (d[:, i:i + 1] for i in range(3))
    t_best = torch.full((o.shape[0],), _INF)
    n2_best = torch.zeros(o.shape[0], 2)
    flat = (z1 - z0).abs() < 1e-9
    # Cone frustums: x^2 + y^2 = (a + k z)^2 with rho = a + k z >= 0 on [z0, z1].
    k = torch.where(flat, torch.zeros_like(z0), (r1 - r0) / torch.where(flat, torch.ones_like(z0), z1 - z0))
    a = r0 - k * z0
    A = dx * dx + dy * dy - (k * dz) ** 2
    B = 2 * (ox * dx + oy * dy - k * dz * (a + k * oz))
    C = ox * ox + oy * oy - (a + k * oz) ** 2
    disc = B * B - 4 * A * C
    sq = disc.clamp_min(0).sqrt()
    A_safe = torch.where(A.abs() < 1e-12, torch.full_like(A, 1e-12), A)
    zlo, zhi = torch.minimum(z0, z1), torch.maximum(z0, z1)
    cands = []
    for sign in (-1.0, 1.0):
        t = (-B + sign * sq) / (2 * A_safe)
        z = oz + t * dz
        ok = (disc >= 0) & (t > 1e-6) & (z >= zlo) & (z <= zhi) & (a + k * z >= 0) & ~flat
        cands.append(torch.where(ok, t, torch.full_like(t, _INF)))
    # Flat rings (horizontal segments): the plane z = z0 between the two radii.
    dz_safe = torch.where(dz.abs() < 1e-12, torch.full_like(dz, 1e-12), dz)
    t = (z0 - oz) / dz_safe
    rho = ((ox + t * dx) ** 2 + (oy + t * dy) ** 2).sqrt()
    ok = flat & (t > 1e-6) & (rho >= torch.minimum(r0, r1)) & (rho <= torch.maximum(r0, r1))
    cands.append(torch.where(ok, t, torch.full_like(t, _INF)))
    t_all = torch.stack(cands, 0).amin(0)  # [R, M]
    t_best, idx = t_all.min(-1)
    hit = torch.isfinite(t_best)
    # Smooth normal: the segment's end normals interpolated along it.
    p = o + t_best.nan_to_num(posinf=0.0)[:, None] * d
    rho = (p[:, 0] ** 2 + p[:, 1] ** 2).sqrt()
    s0, n0 = segs[idx], vn[idx]
    length = ((s0[:, 2] - s0[:, 0]) ** 2 + (s0[:, 3] - s0[:, 1]) ** 2).sqrt().clamp_min(1e-9)
    frac = (((rho - s0[:, 0]) ** 2 + (p[:, 2] - s0[:, 1]) ** 2).sqrt() / length).clamp(0, 1)
    n2 = torch.nn.functional.normalize(n0[:, :2] * (1 - frac[:, None]) + n0[:, 2:] * frac[:, None], dim=-1)
    radial = torch.stack([p[:, 0], p[:, 1]], -1) / rho.clamp_min(1e-9)[:, None]
    n = torch.cat([radial * n2[:, :1], n2[:, 1:]], -1)
    del n2_best
    return torch.where(hit, t_best, torch.full_like(t_best, _INF)), n


def _hit_sphere(o, d, radius: float):
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius ** 2
    disc = b * b - c
    t = -b - disc.clamp_min(0).sqrt()
    t = torch.where((disc >= 0) & (t > 1e-6), t, torch.full_like(t, _INF))
    p = o + t.nan_to_num(posinf=0.0)[:, None] * d
    return t, torch.nn.functional.normalize(p, dim=-1)


def _hit_box(o, d, half):
    h = torch.tensor(half, dtype=torch.float32)
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-h - o) * inv, (h - o) * inv
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    tn, axis = tmin.max(-1)
    tf = tmax.min(-1).values
    ok = (tn <= tf) & (tn > 1e-6)
    n = torch.zeros_like(o)
    n.scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
    return torch.where(ok, tn, torch.full_like(tn, _INF)), n


def _torus_sdf(p, handle):
    cy, cz, major, minor, cut = handle
    q = p - torch.tensor([0.0, cy, cz])
    ring = torch.stack([(q[:, 1] ** 2 + q[:, 2] ** 2).sqrt() - major, q[:, 0]], -1)
    return torch.maximum(ring.norm(dim=-1) - minor, cut - p[:, 1])


def _hit_handle(o, d, handle, steps: int = 48):
    """Sphere tracing of the (cut) torus handle from the bounding sphere of the handle."""
    cy, cz, major, minor, _ = handle
    centre = torch.tensor([0.0, cy, cz])
    bound = major + minor + 1e-3
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - bound ** 2)
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -b + disc.clamp_min(0).sqrt()
    active = disc > 0
    t_out = torch.full_like(t, _INF)
    n_out = torch.zeros_like(o)
    if not bool(active.any()):
        return t_out, n_out
    o, d, t, t_far = o[active], d[active], t[active], t_far[active]
    for _ in range(steps):
        t = t + _torus_sdf(o + t[:, None] * d, handle) * 0.9
    p = o + t[:, None] * d
    hit = (_torus_sdf(p, handle).abs() < 2e-3) & (t <= t_far)
    eps = 1e-3
    n = torch.stack([_torus_sdf(p + e, handle) - _torus_sdf(p - e, handle)
                     for e in torch.eye(3) * eps], -1)
    t_out[active] = torch.where(hit, t, torch.full_like(t, _INF))
    n_out[active] = torch.nn.functional.normalize(n, dim=-1)
    return t_out, n_out


def intersect(obj: MiniObject, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First hit of rays ``o, d [R, 3]`` (world frame) with ``obj``: ``t [R]`` (inf = miss), unit normal ``[R, 3]``
    facing the ray."""
    # Only rays that pass within the object's bounding sphere (radius 0.62 about the origin) can hit it.
    b = (o * d).sum(-1)
    near = ((o * o).sum(-1) - b * b) < BOUND_RADIUS ** 2
    t_all = torch.full((o.shape[0],), _INF)
    n_all = torch.zeros_like(o)
    if not bool(near.any()):
        return t_all, n_all
    o, d = o[near], d[near]
    if obj.shape == "ball":
        t, n = _hit_sphere(o, d, obj.params["radius"])
    elif obj.shape == "box":
        t, n = _hit_box(o, d, obj.params["half"])
    else:
        t, n = _hit_revolution(o, d, obj)
    if "handle" in obj.params:
        th, nh = _hit_handle(o, d, obj.params["handle"])
        closer = th < t
        t, n = torch.where(closer, th, t), torch.where(closer[:, None], nh, n)
    flip = (n * d).sum(-1, keepdim=True) > 0  # seen from inside (the inner wall of a cup or bowl)
    t_all[near] = t
    n_all[near] = torch.where(flip, -n, n)
    return t_all, n_all


# ---------------------------------------------------------------------------------------------------------
# appearance
def _pattern(obj: MiniObject, p: torch.Tensor) -> torch.Tensor:
    """Paint coverage in [0, 1] at object-frame points ``p [R, 3]`` (the pattern wraps around Z)."""
    z = p[:, 2]
    theta = torch.atan2(p[:, 1], p[:, 0])
    prm = obj.params
    if obj.porcelain:
        # Cobalt bands near the top and bottom and a field of dots (or a single band) between them.
        zn = (z - z.new_tensor(-0.6)) / 1.2
        bands = (torch.sin(zn * math.pi * 2 * prm["stripe_freq"]) > 0.55).float()
        field_ = _dots(theta, z, prm) if obj.pattern == "dots" else (torch.sin(theta * 6) * torch.sin(z * 18) > 0.35).float()
        return torch.maximum(bands, field_)
    if obj.pattern == "stripes":
        return (torch.sin(z * math.pi * 2 * prm["stripe_freq"]) > 0.0).float()
    if obj.pattern == "dots":
        return _dots(theta, z, prm)
    return torch.zeros_like(z)


def _dots(theta, z, prm):
    cols, rows = prm["dot_cols"], prm["dot_rows"]
    u = theta / (2 * math.pi) * cols
    v = z * rows
    v_shift = v + 0.5 * (torch.floor(u) % 2)
    du = (u - torch.floor(u) - 0.5) * 1.0
    dv = (v_shift - torch.floor(v_shift) - 0.5) * 1.0
    return ((du ** 2 + dv ** 2) < 0.09).float()


def shade(obj: MiniObject, p, n, view_dir, light) -> torch.Tensor:
    """RGB ``[R, 3]`` at surface points ``p`` with normals ``n``; ``view_dir`` points from the surface to the eye."""
    body = torch.tensor(obj.body_rgb)
    paint = torch.tensor(obj.paint_rgb)
    cover = _pattern(obj, p)[:, None]
    albedo = body * (1 - cover) + paint * cover
    diffuse = (n * light).sum(-1, keepdim=True).clamp_min(0)
    half = torch.nn.functional.normalize(light + view_dir, dim=-1)
    gloss, ks = (60.0, 0.55) if obj.porcelain else (18.0, 0.12)
    spec = (n * half).sum(-1, keepdim=True).clamp_min(0) ** gloss * ks
    return (albedo * (0.32 + 0.68 * diffuse) + spec).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
def render(obj: MiniObject, cams: Cameras, size: int = 64, supersample: int = 2,
           background=BACKGROUND) -> Rendered:
    """Render ``obj`` from every camera of ``cams`` at ``size x size`` pixels."""
    def trace(o, d, light):
        t, n = intersect(obj, o, d)
        p = o + t.nan_to_num(posinf=0.0)[:, None] * d
        return t, lambda hit: shade(obj, p[hit], n[hit], -d[hit], light[hit])

    return render_traced(trace, cams, size, supersample, background)


def render_traced(trace, cams: Cameras, size: int = 64, supersample: int = 2, background=BACKGROUND,
                  light=LIGHT_CAM) -> Rendered:
    """The renderer's core, for any scene: ``trace(o, d, light) -> (t, colour)`` gives each ray's hit distance
    (inf = miss) and ``colour(hit)``, the shaded RGB of the rays that hit; supersampled, with exact centre masks.
    ``background``: an RGB triple, or an image ``[3, size, size]`` (a backdrop, composited by coverage);
    ``light``: the key light's direction in camera space."""
    b = len(cams)
    hs = size * supersample
    o, d = camera_rays(cams, hs, hs)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    light_cam = torch.nn.functional.normalize(torch.as_tensor(light, dtype=torch.float32), dim=0)
    light = torch.einsum("bij,j->bi", cams.c2w[:, :3, :3], light_cam)
    light = light[:, None].expand(b, hs * hs, 3).reshape(-1, 3)
    t, colour = trace(o, d, light)
    hit = torch.isfinite(t)
    backdrop = torch.as_tensor(background, dtype=torch.float32)
    image_bg = backdrop.ndim == 3
    rgb = (torch.zeros(3) if image_bg else backdrop).expand(len(o), 3).clone()
    if bool(hit.any()):
        rgb[hit] = colour(hit)
    rgb = rgb.reshape(b, hs, hs, 3).permute(0, 3, 1, 2)
    cov = hit.float().reshape(b, 1, hs, hs)
    if supersample > 1:
        rgb = torch.nn.functional.avg_pool2d(rgb, supersample)
        cov = torch.nn.functional.avg_pool2d(cov, supersample)
    if image_bg:
        rgb = rgb + (1 - cov) * backdrop[None]
    oc, dc = camera_rays(cams, size, size)
    tc, _ = trace(oc.reshape(-1, 3), dc.reshape(-1, 3), light[:1].expand(size * size * b, 3))
    tc = tc.reshape(b, size, size)
    return Rendered(rgb.clamp(0, 1), cov[:, 0], torch.isfinite(tc), tc)


def render_view(obj: MiniObject, elevation: float, azimuth: float, distance: float = 3.8, fovy: float = 20.0,
                size: int = 64, supersample: int = 2) -> Rendered:
    """One view of ``obj`` (angles in degrees, the convention of :func:`suite.cameras.orbit_cameras`)."""
    return render(obj, orbit_cameras(elevation, azimuth, distance, fovy), size=size, supersample=supersample)
