"""3D results measured against the mini world's exact geometry: surface samples of an object, the Chamfer
distance and normal consistency of a mesh to them, and silhouettes of a mesh seen from given cameras.

Frames: a reconstruction from a framed reference view (:mod:`suite.miniworld.views`) lives in the NeRF frame, where the true
surface is :meth:`suite.miniworld.views.Framing.to_nerf` of the world's; an exported mesh is in the export frame, which
``summary.json`` of a 3D run documents as ``x_export = scale * R x_nerf + offset`` (:func:`from_export`)."""

from __future__ import annotations

import numpy as np
import torch

from suite.cameras import Cameras, camera_rays, orbit_cameras
from suite.miniworld.render import intersect
from suite.miniworld.world import MiniObject


def surface_points(obj: MiniObject, views: int = 96, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[N, 3]`` and unit normals (facing the camera that saw them) of the surface a camera can see, from
    ``views`` directions spread over the whole sphere (exact ray hits, world frame)."""
    rng = np.random.default_rng(seed)
    el = np.degrees(np.arcsin(rng.uniform(-0.98, 0.98, views)))
    az = rng.uniform(-180, 180, views)
    o, d = camera_rays(orbit_cameras(el, az, 3.8, 22.0), size, size)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    t, n = intersect(obj, o, d)
    hit = torch.isfinite(t)
    p = o[hit] + t[hit, None] * d[hit]
    return p.numpy().astype(np.float64), n[hit].numpy().astype(np.float64)


def from_export(vertices: np.ndarray, transform: dict) -> np.ndarray:
    """Export-frame vertices -> NeRF frame (``transform``: ``summary.json``'s ``export_transform``)."""
    r = np.asarray(transform["rotation"], np.float64)
    return ((np.asarray(vertices, np.float64) - np.asarray(transform["offset"])) / float(transform["scale"])) @ r


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int = 20000, seed: int = 0):
    """``n`` points uniformly on a triangle mesh and their face normals."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    pts, idx = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts), np.asarray(mesh.face_normals[idx])


def chamfer(points_a, normals_a, points_b, normals_b, tree_b=None) -> dict:
    """Symmetric Chamfer distance (mean of the two mean nearest-neighbour distances), its two halves
    (``accuracy``: a -> b, ``completeness``: b -> a) and normal consistency (mean ``|n_a . n_b|`` of nearest
    neighbours, both ways; 1 = identical orientation, 0.5 = random). ``tree_b``: ``scipy.spatial.cKDTree`` of
    ``points_b``, when several point sets are measured against the same ``b``."""
    from scipy.spatial import cKDTree

    d_ab, i_ab = (tree_b or cKDTree(points_b)).query(points_a)
    d_ba, i_ba = cKDTree(points_a).query(points_b)
    nc = 0.5 * (np.abs((normals_a * normals_b[i_ab]).sum(-1)).mean() + np.abs((normals_b * normals_a[i_ba]).sum(-1)).mean())
    return {"chamfer": float(0.5 * (d_ab.mean() + d_ba.mean())), "accuracy": float(d_ab.mean()),
            "completeness": float(d_ba.mean()), "normal_consistency": float(nc)}


def mesh_silhouettes(vertices: np.ndarray, faces: np.ndarray, cams: Cameras, size: int,
                     supersample: int = 1) -> np.ndarray:
    """Boolean masks ``[B, size, size]`` of a mesh (in the cameras' frame) seen from ``cams``: a pixel is in when its
    centre lies in a projected triangle (an exact test), as the renderer's truth masks test one ray through each
    pixel's centre. ``supersample`` > 1: the pixel is in when most of a finer grid's sub-pixel centres are (an odd
    factor keeps the pixel's centre among them; an even one drops the pixels an edge halves, shrinking every
    silhouette by about an eighth of a pixel). (PIL's polygon fill at 4 times the size, used before 2026-12-07,
    truncates the corners and fills edge pixels inclusively: it moved every silhouette about an eighth of a pixel
    left and up, grew exact meshes' by 0.4-1.5% of their area, and cost them 0.010-0.025 IoU.)"""
    from generators3d.raster import camera_pixels, covered

    masks = []
    hs = size * supersample
    for i in range(len(cams)):
        px, _ = camera_pixels(vertices, cams.c2w[i].double().numpy(), float(cams.fovy[i]), hs)
        cover = np.zeros((hs, hs), bool)
        ys, xs, _ = covered(px, faces, hs)  # the pixel centres in a triangle
        cover[ys, xs] = True
        masks.append(cover.reshape(size, supersample, size, supersample).mean((1, 3)) > 0.5)
    return np.stack(masks)


def load_export(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """The exported mesh of a 3D run (``mesh/model.ply``, else ``.glb``/``.obj``) back in the NeRF frame."""
    import json
    from pathlib import Path

    import trimesh

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    path = next(Path(summary["meshes"][f]) for f in ("ply", "glb", "obj") if f in summary["meshes"])
    mesh = trimesh.load(path, force="mesh", process=False)
    return from_export(np.asarray(mesh.vertices), summary["export_transform"]), np.asarray(mesh.faces)


DEFAULT_VIEWS = ((20.0, 90.0), (20.0, 180.0), (20.0, -90.0), (50.0, 45.0), (-5.0, 135.0))


def exact_truth(obj: MiniObject, framing, ref_azimuth: float = 0.0, views: tuple = DEFAULT_VIEWS, size: int = 64,
                seed: int = 0) -> dict:
    """What :func:`measure_mesh` compares a mesh with, computed once: the exact surface's points and normals in the
    NeRF frame (and their search tree), its height, the held-out ``views``' cameras (NeRF frame) and the true
    silhouettes from them."""
    from scipy.spatial import cKDTree

    points, normals = surface_points(obj, seed=seed)
    points = framing.to_nerf(points, ref_azimuth)
    el = [v[0] for v in views]
    az = [v[1] for v in views]
    cams = orbit_cameras(el, [ref_azimuth + x for x in az], framing.distance, 20.0)
    return dict(points=points, normals=normals @ framing.rotation(ref_azimuth).T, height=float(np.ptp(points[:, 2])),
                tree=cKDTree(points), cams=cams, masks=render_masks(obj, world_cameras(cams, framing, ref_azimuth), size),
                size=size, seed=seed)


def world_cameras(cams: Cameras, framing, ref_azimuth: float = 0.0) -> Cameras:
    """The world cameras that see the object as ``cams`` (NeRF frame) see it moved into the NeRF frame
    (:meth:`suite.miniworld.views.Framing.to_nerf`, a similarity): the inverse similarity applied to each camera
    (same field of view, distance divided by the framing's scale). The silhouette truth of :func:`exact_truth` is
    drawn from them, so that the object its Chamfer distance is measured against reaches IoU 1. (Before 2026-12-07
    it was drawn by :func:`suite.miniworld.views.framed_cameras`, a zoom from the world's distance, whose
    perspective differs where the framing's scale is not 1: the exact object reached only IoU 0.976-0.984 on the
    boxes and cups.)"""
    r = torch.from_numpy(framing.rotation(ref_azimuth)).to(cams.c2w)
    c2w = cams.c2w.clone()
    c2w[:, :3, :3] = r.T @ cams.c2w[:, :3, :3]
    c2w[:, :3, 3] = (cams.c2w[:, :3, 3] @ r) / framing.scale + framing.offset.to(cams.c2w)
    return Cameras(c2w, cams.elevation, cams.azimuth - ref_azimuth + framing.azimuth, cams.distance / framing.scale,
                   cams.fovy)


def measure_mesh(vertices: np.ndarray, faces: np.ndarray, obj: MiniObject, framing, ref_azimuth: float = 0.0,
                 views: tuple = DEFAULT_VIEWS, size: int = 64, seed: int = 0, truth: dict | None = None) -> dict:
    """A mesh in the NeRF frame against the true object (``framing``: :func:`.views.reference_framing` of the
    reference view): Chamfer distance, accuracy, completeness (units: the object's height, so 0.01 = 1% of it)
    and normal consistency against the exact surface, and the silhouette IoU from held-out ``views``
    ((elevation, azimuth) relative to the reference view, NeRF frame). ``truth``: :func:`exact_truth` of the same
    arguments, to measure several meshes against one object without computing it again."""
    from suite.miniworld.views import iou

    truth = truth or exact_truth(obj, framing, ref_azimuth, views, size, seed)
    pts, nrm = sample_mesh(vertices, faces, seed=truth["seed"])
    out = chamfer(pts, nrm, truth["points"], truth["normals"], truth["tree"])
    for k in ("chamfer", "accuracy", "completeness"):
        out[k] = out[k] / truth["height"]
    masks = mesh_silhouettes(vertices, faces, truth["cams"], truth["size"])
    out["silhouette_iou"] = [round(float(x), 4) for x in iou(torch.from_numpy(masks), truth["masks"])]
    out["mean_silhouette_iou"] = float(np.mean(out["silhouette_iou"]))
    return out


def render_masks(obj: MiniObject, cams: Cameras, size: int) -> torch.Tensor:
    from suite.miniworld.render import render

    return render(obj, cams, size=size, supersample=1).mask
