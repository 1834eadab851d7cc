"""A small CPU rasteriser for exported meshes: what a mesh viewer shows, to check an export without Blender, and
what an image's camera sees of a mesh, to project the image onto it (:func:`project_image`, the export's colours).

Each view: vertices projected with the suite's cameras (:mod:`suite.cameras`: x right, y up, looking along -z); a
pixel sees the nearest of the triangles whose projection holds its centre (:func:`covered`, an exact test, and a
z-buffer of the perspective-correct depth at that centre: :func:`visible`), then the barycentric coordinates of its
centre give the colour: the texture sampled bilinearly at the interpolated UV (``texture`` + ``uv``), or the
interpolated vertex colours. ``shading``: the mini world renderer's diffuse term
(ambient 0.32 + 0.68 Lambert, the same light fixed to the camera), without its highlight; off, the colours are shown
as they are (an unlit material), which is how to compare an export of our NeRF with renders: its colour field is
radiance with the lighting of its training views baked in. Rendered at ``supersample`` times the size and averaged
down.
"""

from __future__ import annotations

import numpy as np

from suite.miniworld.render import LIGHT_CAM
from suite.miniworld.world import BACKGROUND


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals, of a mesh of any size: computed with the vertices centred and scaled to a
    largest side of 1 (a uniform scale keeps normals; at a millimetre the faces' cross products fell under the
    floor that keeps a vertex of no area finite, and the normals came out of length 0, which glTF forbids)."""
    v = np.asarray(vertices, np.float64)
    if len(v):
        span = float(np.ptp(v, 0).max())
        v = (v - v.mean(0)) / (span if span > 0 else 1.0)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``texture [H, W, 3]`` at ``uv [N, 2]`` in OBJ's convention (v = 1 is row 0, the top;
    glTF's v runs the other way: pass ``1 - v``)."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def camera_pixels(points: np.ndarray, c2w: np.ndarray, fovy: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a square ``size``-pixel camera (``c2w [4, 4]``, ``fovy`` in degrees) sees ``points [N, 3]``: pixel
    coordinates ``[N, 2]`` (x right, y down; pixel centres at integers) and depth along the view ``[N]``."""
    p = np.asarray(points, np.float64)
    pc = np.concatenate([p, np.ones((len(p), 1))], 1) @ np.linalg.inv(np.asarray(c2w, np.float64)).T
    focal = 0.5 * size / np.tan(np.radians(float(fovy)) / 2)
    depth = -pc[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    px = np.stack([size / 2 + focal * pc[:, 0] / safe - 0.5, size / 2 - focal * pc[:, 1] / safe - 0.5], -1)
    return px, depth


def covered(px: np.ndarray, faces: np.ndarray, size: int, centre: float = 0.0, weights: bool = False):
    """Every (pixel, triangle) pair of a ``size`` x ``size`` image where the pixel's centre lies in the 2D triangle
    ``px[faces]`` (either winding; its edges included; triangles of no area cover nothing): ``(rows, columns,
    triangle indices into faces)``, each ``[K]``, and with ``weights`` the centres' barycentric coordinates ``[K, 3]``
    as well. Pixel ``k``'s centre is at ``k + centre`` (0 here, as :func:`camera_pixels` places them; 0.5 where
    pixel ``k`` spans ``k..k+1``). One test per pixel centre, as a renderer casting one ray through each pixel's
    centre decides. (PIL's polygon fill, used here before 2026-12-07, rounds the corners down to whole pixels and
    fills edge pixels inclusively: it moved every triangle about half a pixel left and up and grew silhouettes.)"""
    tri = np.asarray(px, np.float64)[np.asarray(faces, np.int64)]  # [F, 3, 2]
    finite = np.isfinite(tri).all((1, 2))
    tri = np.where(finite[:, None, None], tri, 0.0)  # a vertex at infinity covers nothing (and casts no warning)
    area = ((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
            - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1]))
    lo = np.clip(np.ceil(tri.min(1) - centre), 0, size).astype(np.int64)  # first pixel whose centre is >= the min
    hi = np.clip(np.floor(tri.max(1) - centre), -1, size - 1).astype(np.int64)  # last whose centre is <= the max
    extent = hi - lo + 1
    keep = np.nonzero((extent > 0).all(1) & finite & (np.abs(area) > 1e-12))[0]
    tri, lo, extent = tri[keep], lo[keep], extent[keep]
    area = area[keep]
    rows, cols, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    bary = [np.zeros((0, 3))]
    # triangles grouped by their box's size, each group tested at once (most triangles of a fine mesh cover a few
    # pixels)
    boxes = extent[:, 0] * (size + 1) + extent[:, 1]
    for key in np.unique(boxes):
        sel = np.nonzero(boxes == key)[0]
        w, h = int(key // (size + 1)), int(key % (size + 1))
        step = max(1, 2000000 // (w * h))
        for start in range(0, len(sel), step):
            part = sel[start:start + step]
            gx = lo[part, 0, None, None] + np.arange(w)[None, None, :]  # [P, 1, w]
            gy = lo[part, 1, None, None] + np.arange(h)[None, :, None]  # [P, h, 1]
            cx, cy = gx + centre, gy + centre
            t = tri[part]
            e = []
            for a, b in ((0, 1), (1, 2), (2, 0)):
                ax, ay = t[:, a, 0, None, None], t[:, a, 1, None, None]
                bx, by = t[:, b, 0, None, None], t[:, b, 1, None, None]
                e.append((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))
            inside = ((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0))
            rows.append(np.broadcast_to(gy, inside.shape)[inside])
            cols.append(np.broadcast_to(gx, inside.shape)[inside])
            ids.append(np.broadcast_to(keep[part][:, None, None], inside.shape)[inside])
            if weights:  # each edge's function over twice the signed area: the weight of the vertex facing it
                a2 = area[part][:, None, None]
                bary.append(np.stack([(e[1] / a2)[inside], (e[2] / a2)[inside], (e[0] / a2)[inside]], -1))
    out = np.concatenate(rows), np.concatenate(cols), np.concatenate(ids)
    return (*out, np.concatenate(bary)) if weights else out


def visible(vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, fovy: float, size: int):
    """What a camera sees of a mesh, pixel by pixel: of the triangles whose projection holds a pixel's centre
    (:func:`covered`), the nearest at that centre (a z-buffer of the perspective-correct depth; triangles reaching
    behind the camera are left out). ``(rows, columns, faces, barycentric [K, 3], depth [K])`` of the ``K`` pixels
    where a face is seen, one entry each, with the vertices' pixel coordinates and depths (:func:`camera_pixels`)."""
    faces = np.asarray(faces, np.int64)
    px, depth = camera_pixels(vertices, c2w, fovy, size)
    front = np.nonzero((depth[faces] > 1e-6).all(1))[0]
    ys, xs, k, bary = covered(px, faces[front], size, weights=True)
    fid = front[k]
    z = 1.0 / (bary / depth[faces[fid]]).sum(1)  # 1 / depth is linear in the image plane
    pix = ys * size + xs
    zbuf = np.full(size * size, np.inf)
    np.minimum.at(zbuf, pix, z)
    near = np.nonzero(z <= zbuf[pix])[0]  # the nearest at each pixel; of equals, the first
    near = near[np.unique(pix[near], return_index=True)[1]]
    return ys[near], xs[near], fid[near], bary[near], z[near], px, depth


def face_ids(vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, fovy: float, size: int):
    """The visible face of each pixel (``[size, size]``, -1 = none; :func:`visible`), with the vertices' pixel
    coordinates and depths (:func:`camera_pixels`)."""
    ys, xs, fid, _, _, px, depth = visible(vertices, faces, c2w, fovy, size)
    ids = np.full((size, size), -1, np.int64)
    ids[ys, xs] = fid
    return ids, px, depth


def depth_map(vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, fovy: float, size: int) -> np.ndarray:
    """The mesh's depth along the view per pixel (``[size, size]``, ``inf`` where no face is seen; perspective-correct:
    :func:`visible`)."""
    ys, xs, _, _, z, _, _ = visible(vertices, faces, c2w, fovy, size)
    out = np.full((size, size), np.inf)
    out[ys, xs] = z
    return out


def project_image(points: np.ndarray, normals: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                  rgb: np.ndarray, mask: np.ndarray, c2w: np.ndarray, fovy: float, grazing=(0.2, 0.6),
                  erode: int = 2, zbuf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An image's colours at surface ``points [N, 3]`` (outward ``normals [N, 3]``) of the mesh ``vertices, faces``
    seen by its camera (``rgb [H, H, 3]`` in [0, 1], ``mask [H, H]``: 1 = the object; ``c2w``, ``fovy``), and how
    far to trust each (``[N]`` in [0, 1]): 0 where the point is hidden by the mesh itself, outside the image, off
    the mask (``erode`` pixels inside it, where the object's edge blends with the backdrop), or seen at a grazing
    angle; rising smoothly from cosine ``grazing[0]`` to 1 at ``grazing[1]`` (a face seen edge-on stretches a pixel
    over much of it). ``zbuf``: the mesh's :func:`depth_map` from this camera, when already drawn."""
    size = rgb.shape[0]
    c2w = np.asarray(c2w, np.float64)
    if zbuf is None:
        zbuf = depth_map(vertices, faces, c2w, fovy, size)
    px, depth = camera_pixels(points, c2w, fovy, size)
    ix = np.clip(np.round(px[:, 0]).astype(int), 0, size - 1)
    iy = np.clip(np.round(px[:, 1]).astype(int), 0, size - 1)
    inside = (px >= -0.5).all(1) & (px <= size - 0.5).all(1) & (depth > 0)
    pixel = np.maximum(depth, 1e-9) * 2 * np.tan(np.radians(float(fovy)) / 2) / size  # a pixel's width there
    near = zbuf[iy, ix]
    # hidden: the mesh is in front, by more than a few pixels' width (the z-buffer's own steps at slanted faces)
    seen = inside & ~(depth - near > 3 * pixel)
    if erode > 0:
        from scipy.ndimage import minimum_filter

        mask = minimum_filter(np.asarray(mask, np.float64), size=2 * erode + 1)
    uv = np.stack([(px[:, 0] + 0.5) / size, 1.0 - (px[:, 1] + 0.5) / size], -1)
    cols = sample_texture(np.asarray(rgb, np.float64), uv)
    on = sample_texture(np.asarray(mask, np.float64)[..., None], uv)[:, 0]
    to_eye = c2w[:3, 3] - np.asarray(points, np.float64)
    cos = (np.asarray(normals, np.float64) * to_eye).sum(1) / np.maximum(
        np.linalg.norm(normals, axis=1) * np.linalg.norm(to_eye, axis=1), 1e-12)
    t = np.clip((cos - grazing[0]) / (grazing[1] - grazing[0]), 0, 1)
    weight = seen * t * t * (3 - 2 * t) * np.clip(2 * on - 1, 0, 1)
    return cols.clip(0, 1).astype(np.float32), weight.astype(np.float32)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, cams, size: int = 64, colors: np.ndarray | None = None,
                uv: np.ndarray | None = None, texture=None, supersample: int = 2,
                background=BACKGROUND, shading: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb [B, 3, size, size] in [0, 1], coverage [B, size, size])`` of a mesh (in the cameras' frame) seen from
    ``cams``; coloured by ``texture`` (PIL image or array) at per-vertex ``uv``, else by ``colors [V, 3]``, else
    white."""
    v = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    tex = None
    if texture is not None:  # a PIL image or uint8 array in 0..255, or a float array in 0..1
        raw = np.asarray(texture.convert("RGB") if hasattr(texture, "convert") else texture)
        tex = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0)
    cols = np.ones((len(v), 3)) if colors is None else np.asarray(colors, np.float64)
    normals = vertex_normals(v, faces)
    hs = size * supersample
    bg = np.asarray(background, np.float64)
    images, covers = [], []
    for i in range(len(cams)):
        c2w = cams.c2w[i].double().numpy()
        ys, xs, seen, bary, _, _, _ = visible(v, faces, c2w, float(cams.fovy[i]), hs)
        tri = faces[seen]
        if tex is not None and uv is not None:
            albedo = sample_texture(tex, (bary[..., None] * np.asarray(uv, np.float64)[tri]).sum(1))
        else:
            albedo = (bary[..., None] * cols[tri]).sum(1)
        n = (bary[..., None] * normals[tri]).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        light = c2w[:3, :3] @ (np.asarray(LIGHT_CAM) / np.linalg.norm(LIGHT_CAM))
        to_eye = c2w[:3, 3] - (bary[..., None] * v[tri]).sum(1)
        n = np.where(((n * to_eye).sum(-1) < 0)[:, None], -n, n)  # the side the camera sees
        shaded = albedo * (0.32 + 0.68 * np.clip(n @ light, 0, None))[:, None] if shading else albedo
        img = np.broadcast_to(bg, (hs, hs, 3)).copy()
        img[ys, xs] = np.clip(shaded, 0, 1)
        cov = np.zeros((hs, hs))
        cov[ys, xs] = 1.0
        images.append(img.reshape(size, supersample, size, supersample, 3).mean((1, 3)).transpose(2, 0, 1))
        covers.append(cov.reshape(size, supersample, size, supersample).mean((1, 3)))
    return np.stack(images).astype(np.float32), np.stack(covers).astype(np.float32)
