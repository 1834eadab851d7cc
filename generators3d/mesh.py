"""NeRF -> mesh on the CPU: marching cubes with an automatic threshold, clean-up, vertex colours, an optional
baked UV texture (xatlas), and atomic GLB / OBJ+MTL+PNG / PLY export that opens upright in Blender.

Frames: the NeRF world is Z-up (threestudio's) with the reference camera on +X. Exported files are glTF's
frame: **Y up, +Z towards the viewer of the reference image, metres** (``(x, y, z)_nerf -> (y, z, x)``, a
proper rotation, so winding is preserved). Faces wind counter-clockwise seen from outside, and normals
point outwards (checked by the signed volume, which must be positive).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from suite.extras import install_command
from suite.files import AtomicFiles

from .cameras import camera_rays
from .config import ExportConfig
from .raster import vertex_normals
from .render import render_rays

log = logging.getLogger(__name__)

# NeRF (Z-up, reference view on +X) -> glTF (Y-up, +Z towards the viewer): x' = y, y' = z, z' = x.
NERF_TO_EXPORT = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


@dataclass
class Mesh:
    """Triangle mesh with per-vertex colours in [0, 1]; optionally a UV-unwrapped copy with a texture
    (``uv_vertices``/``uv_faces``/``uv``/``texture``: xatlas splits vertices along seams)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    uv_vertices: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: object | None = None  # PIL.Image

    def transformed(self, rotation: np.ndarray, scale: float = 1.0, offset=(0.0, 0.0, 0.0)) -> Mesh:
        def tf(v):
            return None if v is None else (v @ rotation.T * scale + np.asarray(offset)).astype(np.float32)

        return replace(self, vertices=tf(self.vertices), uv_vertices=tf(self.uv_vertices))


@dataclass
class ColourView:
    """An image whose colours are projected onto the faces it sees (:func:`projected_colours`): ``rgb [H, H, 3]`` in
    [0, 1], ``mask [H, H]`` (1 = the object), seen by the camera ``c2w [4, 4]`` (NeRF frame) with ``fovy`` degrees:
    the reference view, whose detail the NeRF's smoother colour field loses, or a generated view of another side.
    ``depth``: the mesh's depth map from this camera (:func:`.raster.depth_map`), filled by :func:`colour_mesh` so
    the vertex colours and the texture share one rasterisation (given, it must be of the mesh being coloured)."""

    rgb: np.ndarray
    mask: np.ndarray
    c2w: np.ndarray
    fovy: float
    depth: np.ndarray | None = None


def projected_colours(colours: np.ndarray, points: np.ndarray, normals: np.ndarray, mesh: Mesh,
                      views=(), reference: ColourView | None = None) -> np.ndarray:
    """``colours [N, 3]`` at surface ``points`` replaced by each of ``views``' image where it sees them face-on,
    blended towards the given colours where it sees them at a slant, unchanged where it does not see them (see
    :func:`.raster.project_image`); an earlier view keeps what it sees, and a later one gets its share of what is
    left (the views' shares and the given colours' weight add up to 1). ``reference`` (whether projected, i.e. in
    ``views``, or not) sets the colours' scale: the given colours are scaled, channel by channel, so that where it
    sees the surface face-on their mean is its image's (the NeRF's colours at the surface come out darker than its
    renders, and a seam would show where the image ends; the gain is kept within 1/2 and 2), and every other view's
    colours are brought to the colour distribution of its object pixels (:func:`colour_transfer`, each view's own
    object pixels to the reference's: Zero-1-to-3's views drift in hue, a blue object comes back teal)."""
    from .raster import project_image

    def project(view):
        return project_image(points, normals, mesh.vertices, mesh.faces, view.rgb, view.mask, view.c2w, view.fovy,
                             zbuf=view.depth)

    def object_pixels(view):  # inside the object's edge, where its pixels are not blended with the backdrop
        from scipy.ndimage import binary_erosion

        inner = binary_erosion(np.asarray(view.mask) > 0.5, iterations=max(1, view.rgb.shape[0] // 64))
        return view.rgb[inner].reshape(-1, 3) if inner.sum() >= 16 else None

    out = np.asarray(colours, np.float32)
    palette = seen_by_reference = None
    if reference is not None:
        palette = object_pixels(reference)
        cols, w = seen_by_reference = project(reference)
        sure = w > 0.5
        if sure.sum() >= 16:
            out = (out * np.clip(cols[sure].mean(0) / np.maximum(out[sure].mean(0), 1e-3), 0.5, 2.0)).clip(0, 1)
    images = np.zeros_like(out)
    covered = np.zeros(len(out), np.float32)
    for view, (cols, w) in zip(views, _shares(seen_by_reference if v is reference else project(v) for v in views)):
        own = object_pixels(view) if view is not reference and palette is not None else None
        if own is not None:
            cols = colour_transfer(cols, own, palette)
        images = images + cols * w[:, None]
        covered = covered + w
    return (out * (1.0 - covered[:, None]) + images).astype(np.float32)


def _shares(projected):
    """Each view's ``(colours, share)`` from its ``(colours, weight)`` (:func:`.raster.project_image`), in order
    (a generator: one view's projection held at a time, which matters for large textures): an earlier view keeps what
    it sees, so a later one gets its weight of what is left, ``share_i = w_i * (1 - sum of the shares before it)``;
    the shares add up to ``1 - prod(1 - w_i)``."""
    covered = 0.0
    for cols, w in projected:
        share = w * (1.0 - covered)
        yield cols, share
        covered = covered + share


def projection_weights(points: np.ndarray, normals: np.ndarray, mesh: Mesh, views=()) -> np.ndarray:
    """How much of ``views``' images, together, :func:`projected_colours` gives the colours at ``points``: ``[N]``
    in [0, 1], the sum of the views' shares (the rest keeps the given colours)."""
    from .raster import project_image

    shares = _shares(project_image(points, normals, mesh.vertices, mesh.faces, v.rgb, v.mask, v.c2w, v.fovy,
                                   zbuf=v.depth) for v in views)
    return sum((w for _, w in shares), np.zeros(len(points), np.float32))


def surface_normals(mesh: Mesh) -> np.ndarray:
    """The mesh's vertex normals as :func:`colour_mesh` projects images onto its vertex colours with them
    (trimesh's; the texture's texels interpolate normals of the UV-split mesh, which differ only at its seams)."""
    import trimesh

    return np.asarray(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals, np.float32)


def colour_transfer(colours: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``colours [N, 3]`` mapped by the affine map that takes the colour distribution of ``source [M, 3]`` to that of
    ``target [K, 3]`` (means and covariances; the linear Monge-Kantorovich solution, Pitie & Kokaram 2007: unlike a
    gain per channel it undoes a drift of hue, which mixes the channels). Its gains are kept within 1/2 and 2."""
    def power(c, k):  # of a symmetric positive semi-definite matrix
        e, v = np.linalg.eigh(c)
        return (v * np.clip(e, 1e-12, None) ** k) @ v.T

    src, tgt = np.asarray(source, np.float64), np.asarray(target, np.float64)
    eps = 1e-4 * np.eye(3)
    cs, ct = np.cov(src.T) + eps, np.cov(tgt.T) + eps
    half, inv_half = power(cs, 0.5), power(cs, -0.5)
    a = inv_half @ power(half @ ct @ half, 0.5) @ inv_half
    e, v = np.linalg.eigh(a)  # symmetric: its eigenvalues are its gains along its axes
    a = (v * np.clip(e, 0.5, 2.0)) @ v.T
    out = (np.asarray(colours, np.float64) - src.mean(0)) @ a.T + tgt.mean(0)
    return out.clip(0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# extraction
@torch.no_grad()
def density_grid(field, resolution: int, chunk: int = 1 << 18) -> np.ndarray:
    """Density on a ``resolution^3`` grid spanning ``[-radius, radius]^3`` (axis order x, y, z)."""
    r = field.radius
    device = next(field.parameters()).device
    n = resolution
    lin = torch.linspace(-r, r, n, device=device)
    # the points chunk by chunk (all of them at once were 12 bytes a point: 12.9 GB at 1024^3, three times the grid)
    out = torch.empty(n ** 3, dtype=torch.float32, device=device)
    for i in range(0, n ** 3, chunk):
        idx = torch.arange(i, min(i + chunk, n ** 3), device=device)
        pts = torch.stack([lin[idx // (n * n)], lin[idx // n % n], lin[idx % n]], -1)  # meshgrid "ij" order
        out[i:i + len(idx)] = field.density(pts).reshape(-1)
    return out.reshape(n, n, n).cpu().numpy()


@torch.no_grad()
def auto_threshold(field, cams, resolution: int = 64, n_samples: int | None = None) -> float:
    """The density level whose surface has the silhouettes the renders show.

    For rays from ``cams``: a ray is *opaque* in the render when its accumulated opacity exceeds 1/2, and it
    *hits* the level-``tau`` surface when the density along it reaches ``tau``. The threshold is the ``tau``
    with the fewest disagreements between the two over all rays (the middle of the best range; between two
    neighbouring ray maxima, their geometric mean). No constant to tune: it follows whatever density scale
    training produced, and for an opaque object it is the level the photometric and mask losses shaped."""
    device = next(field.parameters()).device
    o, d = camera_rays(cams.to(device), resolution, resolution)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    n = n_samples or 2 * field.cfg.samples_per_ray
    peak, opaque = [], []
    for i in range(0, len(o), 8192):
        out = render_rays(field, _NoBackground(), o[i:i + 8192], d[i:i + 8192], n)
        peak.append(out["sigmas"].max(-1).values)
        opaque.append(out["opacity"][:, 0] > 0.5)
    peak, opaque = torch.cat(peak).double().cpu(), torch.cat(opaque).cpu()
    if not opaque.any():
        raise ValueError("the NeRF is empty (no view sees an opaque surface): nothing to export; train longer "
                         "or check the input image's mask")
    order = torch.argsort(peak, descending=True)
    peak_sorted, target = peak[order], opaque[order].double()
    # errors when the k rays with the largest peaks are the hits: false hits + missed opaque rays
    k_hits = torch.arange(len(peak) + 1, dtype=torch.float64)
    tp = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(target, 0)])
    errors = (k_hits - tp) + (target.sum() - tp)
    best = torch.nonzero(errors == errors.min())[:, 0]
    k = int(best[len(best) // 2].clamp(1, len(peak) - 1))
    hi, lo = float(peak_sorted[k - 1]), float(peak_sorted[k])
    return math.sqrt(max(hi, 1e-12) * max(lo, 1e-12))


class _NoBackground(torch.nn.Module):
    def forward(self, directions):
        return torch.zeros_like(directions)


def fill_cavities(grid: np.ndarray, level: float) -> np.ndarray:
    """Raise the density of cavities enclosed by the surface above ``level``. No view sees inside an opaque
    object, so its inside density is unconstrained and would add inner surfaces; the outer surface (and
    its sub-voxel position) is unchanged."""
    from scipy import ndimage

    occupied = grid > level
    cavity = ndimage.binary_fill_holes(occupied) & ~occupied
    if cavity.any():
        grid = grid.copy()
        grid[cavity] = max(float(grid.max()), 2.0 * float(level) + 1.0)
    return grid


def marching_cubes(grid: np.ndarray, level: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (world units) and faces of the ``level`` set of ``grid`` (PyMCubes, else scikit-image). The grid
    is padded by one empty voxel, so that a surface reaching its edge (a low ``--threshold``) is closed there, not
    left open."""
    if not grid.min() < level < grid.max():
        raise ValueError(f"the density never crosses the threshold {level:.4g} (range {grid.min():.4g} .. "
                         f"{grid.max():.4g}): the NeRF is empty or solid; train longer or pass another --threshold")
    n = grid.shape[0]
    # far below the level, so the surface closes within 1e-4 of a voxel of the grid's face
    grid = np.pad(grid, 1, constant_values=level - 1e4 * max(1.0, float(grid.max() - grid.min())))
    try:
        import mcubes

        verts, faces = mcubes.marching_cubes(grid.astype(np.float64), float(level))
    except ImportError:
        from skimage import measure

        verts, faces, _, _ = measure.marching_cubes(grid, level)
    verts = (verts - 1.0) * (2.0 * radius / (n - 1)) - radius  # back to the unpadded grid's coordinates
    return verts.astype(np.float32), faces.astype(np.int64)


def clean(vertices: np.ndarray, faces: np.ndarray, min_piece_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge duplicate vertices, drop pieces with fewer faces than ``min_piece_fraction`` of the largest,
    and orient faces outwards (positive signed volume)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=True)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        largest = max(len(p.faces) for p in pieces)
        keep = [p for p in pieces if len(p.faces) >= min_piece_fraction * largest]
        mesh = trimesh.util.concatenate(keep)
    if mesh.volume < 0:
        mesh.invert()
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-clustering decimation to about ``target_faces`` faces (no extra dependency): vertices in the
    same cubic cell merge to their mean; degenerate and duplicate faces are dropped. Where even the coarsest
    clustering (cells half the mesh's extent) keeps more faces than ``target_faces``, that coarsest mesh, with a
    warning (the full mesh was kept, silently)."""
    if len(faces) <= target_faces:
        return vertices, faces
    extent = float(np.ptp(vertices, axis=0).max())
    lo, hi = extent / 1000.0, extent / 2.0
    best = None
    fewest = (vertices, faces)
    for _ in range(18):  # bisection on the cell size
        cell = (lo * hi) ** 0.5
        keys = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse)
        new_v = np.zeros((len(counts), 3))
        np.add.at(new_v, inverse, vertices)
        new_v /= counts[:, None]
        f = inverse[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
        _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
        f = f[np.sort(first)]
        if len(f) > target_faces:
            lo = cell
            if len(f) < len(fewest[1]):
                fewest = (new_v.astype(np.float32), f)
        else:
            hi = cell
            best = (new_v.astype(np.float32), f)
    if best is None:
        log.warning("--decimate %d: the coarsest clustering keeps %d faces; exported those", target_faces,
                    len(fewest[1]))
        best = fewest
    v, f = best
    used = np.unique(f)
    remap = np.full(len(v), -1)
    remap[used] = np.arange(len(used))
    return v[used], remap[f]


@torch.no_grad()
def vertex_colors(field, vertices: np.ndarray, normals: np.ndarray | None = None, inset: float = 0.0) -> np.ndarray:
    """Albedo at the vertices (optionally ``inset`` along -normal, inside the surface where density is high)."""
    device = next(field.parameters()).device
    pts = vertices if normals is None else vertices - inset * normals
    pts = torch.as_tensor(np.asarray(pts, np.float32), device=device)
    cols = torch.cat([field.color(pts[i:i + 65536]) for i in range(0, len(pts), 65536)]) if len(pts) else pts
    return cols.float().cpu().numpy().clip(0, 1)


def extract_mesh(field, cams, cfg: ExportConfig | None = None, views=(), reference=None) -> tuple[Mesh, float]:
    """The NeRF's surface as a coloured :class:`Mesh` in the NeRF frame, and the threshold used:
    :func:`surface_mesh`, then :func:`colour_mesh`."""
    cfg = cfg or ExportConfig()
    mesh, level = surface_mesh(field, cams, cfg)
    return colour_mesh(mesh, field, cfg, views, reference=reference), level


def surface_mesh(field, cams, cfg: ExportConfig | None = None) -> tuple[Mesh, float]:
    """The NeRF's surface (colours not yet set) and the threshold used.

    1. density on a grid; 2. threshold (automatic unless ``cfg.threshold``); 3. fill enclosed cavities;
    4. marching cubes; 5. clean-up (small pieces, orientation); 6. optional Taubin smoothing; 7. optional
    decimation."""
    import trimesh

    cfg = cfg or ExportConfig()
    grid = density_grid(field, cfg.resolution)
    level = cfg.threshold if cfg.threshold is not None else auto_threshold(field, cams, cfg.threshold_resolution)
    grid = fill_cavities(grid, level)
    v, f = marching_cubes(grid, level, field.radius)
    v, f = clean(v, f, cfg.min_piece_fraction)
    if cfg.smooth and len(f):
        smooth = trimesh.Trimesh(v, f, process=False)
        # trimesh counts a shrink and an inflate as one pass each: a step is both, so the volume is kept
        trimesh.smoothing.filter_taubin(smooth, lamb=0.5, nu=0.53, iterations=2 * int(cfg.smooth))
        v = np.asarray(smooth.vertices, np.float32)
    if cfg.decimate and len(f):
        v, f = decimate(v, f, int(cfg.decimate))
        v, f = clean(v, f, cfg.min_piece_fraction)
    if len(f) == 0:
        raise ValueError(f"the surface at density {level:.4g} has no faces left: the NeRF is empty at this threshold; "
                         f"train longer, or pass a lower --threshold or a larger --decimate")
    return Mesh(np.asarray(v, np.float32), f, np.ones((len(v), 3), np.float32)), level


def colour_mesh(mesh: Mesh, field, cfg: ExportConfig | None = None, views=(), texture: bool | None = None,
                reference: ColourView | None = None) -> Mesh:
    """``mesh`` (:func:`surface_mesh`) coloured by the field's albedo half a voxel inside the surface, with ``views``'
    images projected where they see it, matched to ``reference``'s colours (:class:`ColourView`,
    :func:`projected_colours`): vertex colours, and a UV texture when ``texture`` (default ``cfg.texture``)."""
    from .raster import depth_map

    cfg = cfg or ExportConfig()
    v, f = mesh.vertices, mesh.faces
    # each image's depth map of this mesh, once for the vertex colours and the texture (kept where already drawn)
    seen = {id(x): x if x.depth is not None else replace(x, depth=depth_map(v, f, x.c2w, x.fovy, x.rgb.shape[0]))
            for x in (*views, *([reference] if reference is not None else []))}
    views = [seen[id(x)] for x in views]
    reference = seen[id(reference)] if reference is not None else None
    normals = surface_normals(mesh)
    voxel = 2.0 * field.radius / (cfg.resolution - 1)
    colors = vertex_colors(field, v, normals, inset=0.5 * voxel)
    if views or reference is not None:
        colors = projected_colours(colors, v, normals, mesh, views, reference)
    mesh = Mesh(v, f, colors.astype(np.float32))
    if cfg.texture if texture is None else texture:
        mesh = bake_texture(mesh, field, cfg.texture_size, inset=0.5 * voxel, views=views, reference=reference)
    return mesh


def bake_texture(mesh: Mesh, field, size: int = 1024, inset: float = 0.0, views=(), reference=None) -> Mesh:
    """UV-unwrap with xatlas and bake the field's albedo into a ``size x size`` texture (CPU rasteriser:
    each texel takes the face its centre lies in, in UV space; texels get barycentric 3D points; seams are
    padded by a few texels so bilinear lookups do not bleed background), with ``views``' images projected where they
    see the surface, matched to ``reference`` (:func:`projected_colours`). Without xatlas: unchanged."""
    try:
        import xatlas
    except ImportError:
        log.warning("xatlas is not installed: the GLB and OBJ get vertex colours instead of a texture (it comes with "
                    "the 3d extra: %s)", install_command("3d"))
        return mesh
    import trimesh
    from PIL import Image

    from .raster import covered

    vmapping, faces, uv = xatlas.parametrize(mesh.vertices, mesh.faces.astype(np.uint32))
    verts = mesh.vertices[vmapping]
    # 1. Each texel's face: the triangle its centre lies in, in texel space (v flipped: image rows go down). PIL's
    #    polygon fill, used before, rounds corners to whole texels: at the mini preset's 256 px a quarter of the
    #    covered texels took a neighbour's face, some from another part of the surface (specks along the seams).
    px = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], -1)
    rows, cols, hit, weights = covered(px, faces, size, centre=0.5, weights=True)
    first = np.unique(rows * size + cols, return_index=True)[1]  # a texel on a shared edge: one of its faces
    ys, xs, tri = rows[first], cols[first], faces[hit[first]]
    # 2. Barycentric coordinates of texel centres -> 3D points -> colours.
    bary = weights[first]
    normals = np.asarray(trimesh.Trimesh(verts, faces, process=False).vertex_normals, np.float32)
    pts = (bary[..., None] * verts[tri]).sum(1)
    nrm = (bary[..., None] * normals[tri]).sum(1)
    cols = vertex_colors(field, pts, nrm, inset)
    if views or reference is not None:
        cols = projected_colours(cols, pts, nrm, mesh, views, reference)
    img = np.zeros((size, size, 3), np.float32)
    filled = np.zeros((size, size), bool)
    img[ys, xs], filled[ys, xs] = cols, True
    # 3. Pad seams: a few rounds of averaging filled neighbours into empty texels.
    for _ in range(4):
        acc = np.zeros_like(img)
        cnt = np.zeros((size, size), np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                acc += np.roll(np.roll(img * filled[..., None], dy, 0), dx, 1)
                cnt += np.roll(np.roll(filled.astype(np.float32), dy, 0), dx, 1)
        grow = (~filled) & (cnt > 0)
        img[grow] = acc[grow] / cnt[grow, None]
        filled |= grow
    texture = Image.fromarray((img.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    return replace(mesh, uv_vertices=verts.astype(np.float32), uv_faces=faces.astype(np.int64),
                   uv=uv.astype(np.float32), texture=texture)


def export_transform(mesh: Mesh, height_m: float | None = None, on_ground: bool = True) -> dict:
    """The NeRF -> export map ``x_export = scale * R x_nerf + offset`` (glTF frame: Y up, +Z front, metres): ``R``
    is :data:`NERF_TO_EXPORT`, ``scale`` makes the object ``height_m`` tall (1 without), ``offset`` stands it on
    y = 0, centred in x and z (``on_ground``). ``summary.json`` records it, so the export can be undone."""
    v = mesh.vertices @ NERF_TO_EXPORT.T
    lo, hi = v.min(0), v.max(0)
    scale = 1.0 if not height_m else float(height_m) / max(float(hi[1] - lo[1]), 1e-9)
    offset = np.zeros(3)
    if on_ground:
        offset = -np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2]) * scale
    return {"rotation": NERF_TO_EXPORT.tolist(), "scale": scale, "offset": [float(x) for x in offset]}


def to_export_frame(mesh: Mesh, height_m: float | None = None, on_ground: bool = True) -> Mesh:
    """NeRF frame -> glTF frame (Y up, +Z front, metres): rotate, scale to ``height_m``, stand on y = 0."""
    tf = export_transform(mesh, height_m, on_ground)
    return mesh.transformed(np.asarray(tf["rotation"]), tf["scale"], tf["offset"])


# ---------------------------------------------------------------------------------------------------------
# writing
def _split_glb(glb: bytes) -> tuple[dict, bytes]:
    """A GLB's JSON document and what follows its JSON chunk (the BIN chunk, header included)."""
    json_len = struct.unpack("<I", glb[12:16])[0]
    return json.loads(glb[20:20 + json_len]), glb[20 + json_len:]


def _vertex_coloured_glb(glb: bytes, colors: np.ndarray) -> bytes:
    """``glb`` (one mesh, one primitive, no colours) with ``colors`` (sRGB in [0, 1], one per vertex) as its
    ``COLOR_0`` and a plain PBR material (white base colour, which glTF multiplies by COLOR_0), so Blender shows the
    vertex colours. ``COLOR_0`` is linear light, as glTF defines it, in normalised 16-bit integers (in 8 bits,
    linear values lose the dark tones: sRGB codes 0 to 6 would all be 0)."""
    doc, rest = _split_glb(glb)
    if len(colors):  # no vertex (trimesh then writes no buffer): nothing to colour
        bin_len = struct.unpack("<I", rest[:4])[0]
        data = bytearray(rest[8:8 + bin_len])
        data += b"\0" * (-len(data) % 4)
        # RGBA, not RGB: glTF wants each vertex's element 4-byte aligned (three 16-bit values are 6 bytes)
        rgba = np.concatenate([(srgb_to_linear(colors) * 65535 + 0.5).astype("<u2"),
                               np.full((len(colors), 1), 65535, "<u2")], 1)
        offset = len(data)
        data += rgba.tobytes()
        data += b"\0" * (-len(data) % 4)
        doc["buffers"][0]["byteLength"] = len(data)
        doc["bufferViews"].append({"buffer": 0, "byteOffset": offset, "byteLength": rgba.nbytes, "target": 34962})
        doc["accessors"].append({"bufferView": len(doc["bufferViews"]) - 1, "componentType": 5123,
                                 "normalized": True, "count": int(len(rgba)), "type": "VEC4"})
        doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"] = len(doc["accessors"]) - 1
        rest = struct.pack("<I4s", len(data), b"BIN\0") + bytes(data)
    doc.setdefault("materials", []).append({"name": "vertex_colors", "doubleSided": False, "pbrMetallicRoughness": {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.8}})
    index = len(doc["materials"]) - 1
    for m in doc.get("meshes", []):
        for prim in m.get("primitives", []):
            prim.setdefault("material", index)
    doc.setdefault("asset", {})["copyright"] = "generated by in-domain-suite (Y up, metres)"
    return _repack_glb(doc, rest)


def _textured_glb(mesh: Mesh, stem: str) -> bytes:
    """A GLB of the UV-unwrapped mesh with its texture embedded (PNG) as the base colour of a PBR material (not
    metallic, roughness 0.8): Blender's Material Preview shows it as imported, no node to connect."""
    import trimesh
    from trimesh.exchange.gltf import export_glb
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    material = PBRMaterial(name=stem, baseColorTexture=mesh.texture.convert("RGB"), baseColorFactor=[255] * 4,
                           metallicFactor=0.0, roughnessFactor=0.8)
    tm = trimesh.Trimesh(mesh.uv_vertices, mesh.uv_faces, process=False, vertex_normals=_welded_normals(mesh),
                         visual=TextureVisuals(uv=mesh.uv, material=material))
    doc, rest = _split_glb(export_glb(trimesh.Scene(tm), include_normals=True))
    doc.setdefault("asset", {})["copyright"] = "generated by in-domain-suite (Y up, metres)"  # as the other GLB's
    return _repack_glb(doc, rest)


def _welded_normals(mesh: Mesh) -> np.ndarray:
    """Normals of the UV-unwrapped mesh's vertices as of the welded surface: the copies of a seam vertex (xatlas
    splits them) get the same normal, so the UV charts' borders do not show under lighting. The copies are found
    at the mesh's own scale (rounded to a millionth of its size: an absolute 1e-6 merged distinct vertices of a
    millimetre-sized export)."""
    v = np.asarray(mesh.uv_vertices, np.float64)
    span = float(np.ptp(v, 0).max()) if len(v) else 1.0
    points, weld = np.unique(np.round(v / (span if span > 0 else 1.0), 6), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    return vertex_normals(points, weld[mesh.uv_faces])[weld]


def _repack_glb(doc: dict, rest: bytes) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 4)
    chunk = struct.pack("<I4s", len(body), b"JSON") + body
    total = 12 + len(chunk) + len(rest)
    return struct.pack("<4sII", b"glTF", 2, total) + chunk + rest


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] to linear light (IEC 61966-2-1)."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _rgba8(colors: np.ndarray) -> np.ndarray:
    return np.concatenate([(np.clip(colors, 0, 1) * 255 + 0.5).astype(np.uint8),
                           np.full((len(colors), 1), 255, np.uint8)], 1)


def mesh_bytes(mesh: Mesh, fmt: str, stem: str = "model") -> dict[str, bytes]:
    """The files of one format as ``{file name: bytes}`` (mesh in the export frame). Vertex colours are sRGB in
    the PLY and OBJ, and linear in the GLB's ``COLOR_0``, as glTF defines it (a viewer showed sRGB values there
    too light: 0.20 as 0.48)."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    if fmt == "glb":
        plain = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False,  # outward NORMALs in the GLB
                                vertex_normals=vertex_normals(mesh.vertices, mesh.faces))
        coloured = _vertex_coloured_glb(export_glb(trimesh.Scene(plain), include_normals=True), mesh.colors)
        if mesh.texture is None:
            return {f"{stem}.glb": coloured}
        # The textured GLB carries no COLOR_0: glTF multiplies the base colour texture by COLOR_0, so the colours
        # would count twice. The vertex-coloured mesh stays beside it for tools that read only vertex colours.
        return {f"{stem}.glb": _textured_glb(mesh, stem), f"{stem}-vertex-colors.glb": coloured}
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=_rgba8(mesh.colors), process=False,  # sRGB
                         vertex_normals=vertex_normals(mesh.vertices, mesh.faces))
    if fmt == "ply":
        return {f"{stem}.ply": trimesh.exchange.ply.export_ply(tm, encoding="binary", vertex_normal=True)}
    if fmt == "obj":
        if mesh.texture is None:
            text = trimesh.exchange.obj.export_obj(tm, include_color=True, include_normals=True)
            return {f"{stem}.obj": text.encode()}
        import io

        from trimesh.visual import TextureVisuals
        from trimesh.visual.material import SimpleMaterial

        material = SimpleMaterial(image=mesh.texture, diffuse=[255, 255, 255, 255], name=stem)
        textured = trimesh.Trimesh(mesh.uv_vertices, mesh.uv_faces, process=False,
                                   vertex_normals=_welded_normals(mesh),
                                   visual=TextureVisuals(uv=mesh.uv, material=material))
        text, files = trimesh.exchange.obj.export_obj(textured, include_normals=True, include_texture=True,
                                                      return_texture=True, mtl_name=f"{stem}.mtl")
        out = {f"{stem}.obj": text.encode()}
        for name, data in files.items():
            if name.endswith(".mtl"):
                out[f"{stem}.mtl"] = data
            else:
                out[name] = data
        # Keep the texture name predictable: <stem>.png, referenced from the MTL.
        pngs = [n for n in out if n.lower().endswith((".png", ".jpg", ".jpeg"))]
        if len(pngs) == 1 and pngs[0] != f"{stem}.png":
            buf = io.BytesIO()
            mesh.texture.save(buf, format="PNG")
            out.pop(pngs[0])
            out[f"{stem}.png"] = buf.getvalue()
            out[f"{stem}.mtl"] = out[f"{stem}.mtl"].replace(pngs[0].encode(), f"{stem}.png".encode())
        return out
    raise ValueError(f"unknown mesh format {fmt!r}: choose from glb, obj, ply")


def mesh_paths(folder: Path, formats, stem: str = "model") -> dict[str, Path]:
    """``{format: main file}`` as :func:`write_meshes` writes them."""
    return {fmt: Path(folder) / f"{stem}.{fmt}" for fmt in formats}


def write_meshes(mesh: Mesh, folder: Path, formats, stem: str = "model",
                 extra: dict[Path, bytes] | None = None) -> dict[str, Path]:
    """Write every format atomically as one unit, with the ``extra`` files (``{path: bytes}``: a run's summary and
    preview); returns ``{format: main file}``. A full disk gives one clear error and leaves earlier files as they
    were."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = AtomicFiles()
    written = set()
    try:
        for fmt in formats:
            for name, data in mesh_bytes(mesh, fmt, stem).items():
                files.write(folder / name, data)
                written.add(name)
        for path, data in (extra or {}).items():
            files.write(path, data)
        files.commit()
        # An earlier export's files of formats (or a texture) this one did not write are of another mesh: a re-export
        # with --formats ply left model.glb, model.obj and its texture beside the new model.ply.
        ours = [f"{stem}.{ext}" for ext in ("glb", "obj", "mtl", "png", "ply")] + [f"{stem}-vertex-colors.glb"]
        for name in ours:  # only names an export writes: a user's model.blend beside them stays
            if name not in written and (folder / name).is_file():
                (folder / name).unlink()
    except OSError as err:
        files.abort()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ValueError(f"the disk is full while writing meshes to {str(folder)!r}: free some space and run "
                             f"again with --resume (earlier files were left untouched)") from None
        raise
    except BaseException:
        files.abort()
        raise
    return mesh_paths(folder, formats, stem)
