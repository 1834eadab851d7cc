"""Mesh extraction and export on an analytic density field (no training): automatic threshold across density
scales, clean-up, decimation, GLB/OBJ/PLY round trips through trimesh, Y-up frame, outward normals, atomic
writes on a full disk."""

import errno
import io
import json
import struct

import numpy as np
import pytest
import torch
import trimesh

from generators3d import mesh as meshlib
from generators3d import raster
from generators3d.cameras import orbit_cameras
from generators3d.config import ExportConfig, NeRFConfig

AXES = np.array([0.3, 0.3, 0.6])  # an ellipsoid twice as tall (NeRF z) as wide


class AnalyticField(torch.nn.Module):
    """Density ``scale * sigmoid(-sd / 0.02)`` of an ellipsoid (or several); colour red = up (+z), green =
    front (+x, towards the reference camera)."""

    def __init__(self, scale=50.0, centres=((0.0, 0.0, 0.0),), axes=(AXES,)):
        super().__init__()
        self.cfg = NeRFConfig(samples_per_ray=96)
        self.scale = scale
        self.centres = [torch.tensor(c, dtype=torch.float32) for c in centres]
        self.axes = [torch.tensor(a, dtype=torch.float32) for a in axes]
        self._p = torch.nn.Parameter(torch.zeros(1))

    radius = 1.0

    def sd(self, x):
        d = [((x - c) / a).norm(dim=-1) - 1 for c, a in zip(self.centres, self.axes)]
        return torch.stack([di * a.min() for di, a in zip(d, self.axes)]).min(0).values

    def forward(self, x, with_color=True):
        sigma = self.scale * torch.sigmoid(-self.sd(x) / 0.02)
        if not with_color:
            return sigma
        n = torch.nn.functional.normalize(x, dim=-1)
        rgb = torch.stack([0.5 + 0.4 * n[..., 2], 0.5 + 0.4 * n[..., 0], torch.full_like(n[..., 0], 0.3)], -1)
        return sigma, rgb

    def density(self, x):
        return self.forward(x, with_color=False)

    def color(self, x):
        return self.forward(x)[1]


VIEWS = orbit_cameras([0.0] * 4 + [60.0, -40.0], [0.0, 90.0, 180.0, 270.0, 0.0, 0.0], 3.8, 20.0)


@pytest.mark.parametrize("scale", [20.0, 2000.0])
def test_automatic_threshold_meshes_the_silhouettes_the_renders_show(scale):
    """A ball of density ``scale * sigmoid(-(|x| - 0.4) / 0.02)``. A ray at distance ``p`` from the centre is
    rendered opaque (opacity > 1/2) when its optical depth ``int sigma ds`` exceeds ln 2: the rendered
    silhouette's radius ``p*`` depends on the density scale (0.44 for 20, 0.54 for 2000, integrated
    numerically here). The automatic threshold must give a mesh of that radius at both scales."""
    field = AnalyticField(scale, axes=((0.4, 0.4, 0.4),))
    mesh, level = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=48, texture=False))
    s = np.linspace(-1.5, 1.5, 30001)

    def depth(p):
        r = np.sqrt(p * p + s * s)
        return (scale / (1 + np.exp((r - 0.4) / 0.02))).sum() * (s[1] - s[0])

    lo, hi = 0.0, 1.0  # bisection for depth(p*) = ln 2 (depth falls with p)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if depth(mid) > np.log(2) else (lo, mid)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - lo) < 0.01 and r.std() < 0.01, (r.mean(), lo)  # a fifth of a voxel (0.042)
    assert 0 < level < scale
    # threestudio's fixed default (25) finds no surface at all when the density never reaches it:
    if scale < 25:
        with pytest.raises(ValueError, match="never crosses"):
            meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=40, texture=False, threshold=25.0))


@pytest.mark.parametrize("threshold", [None, 1.0])
def test_an_empty_nerf_is_one_sentence(threshold):
    """A NeRF with no density (training that collapsed) has no surface to export: one sentence, no mesh."""
    with pytest.raises(ValueError, match="the NeRF is empty"):
        meshlib.extract_mesh(AnalyticField(scale=0.0), VIEWS, ExportConfig(resolution=24, threshold=threshold))


def test_small_pieces_and_cavities_are_removed_and_decimation_hits_target():
    field = AnalyticField(centres=((0.0, 0.0, 0.0), (0.0, 0.75, 0.0)), axes=(AXES, (0.04, 0.04, 0.04)))
    mesh, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=48, texture=False))
    assert len(trimesh.Trimesh(mesh.vertices, mesh.faces).split(only_watertight=False)) == 1
    assert mesh.vertices[:, 1].max() < 0.4  # the small ball (at y = 0.75) is gone
    # a hollow shell: the inner wall must not become a second surface
    shell = np.linspace(-1, 1, 40)
    x, y, z = np.meshgrid(shell, shell, shell, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    grid = ((r < 0.6) & (r > 0.4)).astype(np.float32) * 10.0
    v, f = meshlib.marching_cubes(meshlib.fill_cavities(grid, 5.0), 5.0, 1.0)
    assert len(trimesh.Trimesh(v, f).split(only_watertight=False)) == 1
    dv, df = meshlib.decimate(mesh.vertices, mesh.faces, 400)
    from scipy.spatial import cKDTree

    assert 100 < len(df) <= 400
    assert cKDTree(mesh.vertices).query(dv)[0].mean() < 0.03  # still the same shape (voxel 0.042)
    # a target below what clustering reaches: its coarsest mesh, not the full one (kept silently before)
    cv, cf = meshlib.decimate(mesh.vertices, mesh.faces, 4)
    assert 4 < len(cf) < 100 and cf.max() < len(cv)


def _glb_json(data: bytes) -> dict:
    n = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + n])


def _glb_accessor(data: bytes, index: int) -> np.ndarray:
    """Read one accessor straight from the GLB's binary chunk (what a glTF importer such as Blender reads)."""
    doc = _glb_json(data)
    n = struct.unpack("<I", data[12:16])[0]
    binary = data[20 + n + 8:]
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(acc["count"], width)


def test_glb_obj_ply_reload_with_same_geometry_and_colours_y_up(tmp_path):
    field = AnalyticField()
    mesh, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=40, texture=True, texture_size=256))
    mesh = meshlib.to_export_frame(mesh, height_m=0.3)
    paths = meshlib.write_meshes(mesh, tmp_path, ("glb", "obj", "ply"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-vertex-colors.glb", "model.glb", "model.mtl",
                                                          "model.obj", "model.ply", "model.png"]
    rgb8 = (mesh.colors * 255 + 0.5).astype(np.uint8)

    # GLB (vertex colours): same arrays; Y up (tall axis, red top), +Z front (green), on the ground, 0.3 m tall,
    # outward normals. (model.glb is the textured mesh: tests/generators3d/test_texture.py.)
    vc_path = tmp_path / "model-vertex-colors.glb"
    glb = trimesh.load(vc_path, force="mesh", process=False)
    assert np.allclose(glb.vertices, mesh.vertices, atol=1e-6) and np.array_equal(glb.faces, mesh.faces)
    data = vc_path.read_bytes()
    prim = _glb_json(data)["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(prim["attributes"]) and "material" in prim
    # COLOR_0 is linear in glTF (the texture and the PLY/OBJ colours are sRGB): sRGB 0.2 is 0.033 there; in 16
    # bits, so that every sRGB level survives the trip (8 bits kept 183 of 256)
    acc = _glb_json(data)["accessors"][prim["attributes"]["COLOR_0"]]
    assert acc["componentType"] == 5123 and acc["normalized"]
    linear16 = (meshlib.srgb_to_linear(mesh.colors) * 65535 + 0.5).astype(np.uint16)
    assert np.array_equal(_glb_accessor(data, prim["attributes"]["COLOR_0"])[:, :3], linear16)
    levels = meshlib.srgb_to_linear(np.arange(256) / 255.0)
    assert len(np.unique((levels * 65535 + 0.5).astype(np.uint16))) == 256
    assert meshlib.srgb_to_linear(np.array([0.2, 0.5, 1.0])) == pytest.approx([0.0331, 0.2140, 1.0], abs=1e-4)
    assert np.allclose(_glb_accessor(data, prim["attributes"]["POSITION"]), mesh.vertices, atol=1e-6)
    assert np.array_equal(_glb_accessor(data, prim["indices"]).reshape(-1, 3), mesh.faces)
    v = np.asarray(glb.vertices)
    extent = np.ptp(v, axis=0)
    assert extent[1] == pytest.approx(0.3, rel=1e-5) and extent[1] > 1.8 * max(extent[0], extent[2])
    assert v[:, 1].min() == pytest.approx(0.0, abs=1e-6)
    assert np.corrcoef(v[:, 1], mesh.colors[:, 0])[0, 1] > 0.9  # red = NeRF up = glTF +Y
    assert np.corrcoef(v[:, 2], mesh.colors[:, 1])[0, 1] > 0.9  # green = reference view = glTF +Z
    assert glb.volume > 0  # counter-clockwise winding seen from outside
    centre = v.mean(0)
    normals = _glb_accessor(data, prim["attributes"]["NORMAL"])
    assert ((normals * (v - centre)).sum(1) > 0).mean() > 0.97

    # PLY: exact arrays.
    ply = trimesh.load(paths["ply"], process=False)
    assert np.allclose(ply.vertices, mesh.vertices, atol=1e-6) and np.array_equal(ply.faces, mesh.faces)
    assert np.array_equal(ply.visual.vertex_colors[:, :3], rgb8)

    # OBJ + MTL + PNG: the UV-unwrapped copy (xatlas splits seams); the texture gives the vertex colours back.
    obj = trimesh.load(paths["obj"], process=False, maintain_order=True)
    assert np.allclose(obj.vertices, mesh.uv_vertices, atol=1e-5) and np.array_equal(obj.faces, mesh.uv_faces)
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(mesh.vertices).query(obj.vertices)
    assert dist.max() < 1e-5
    sampled = obj.visual.to_color().vertex_colors[:, :3].astype(np.float32)
    assert np.abs(sampled - rgb8[idx]).mean() < 6.0  # within ~2% after texture sampling
    assert "map_Kd model.png" in (tmp_path / "model.mtl").read_text()
    # ... and the copies of a seam vertex share one normal (each chart's own normals lit the seams in Blender)
    text = paths["obj"].read_text().splitlines()
    vn = np.array([[float(x) for x in line.split()[1:4]] for line in text if line.startswith("vn ")])
    corners = [c.split("/") for line in text if line.startswith("f ") for c in line.split()[1:]]
    pos = np.round(obj.vertices[[int(c[0]) - 1 for c in corners]], 5)
    nrm = vn[[int(c[2]) - 1 for c in corners]]
    _, group = np.unique(pos, axis=0, return_inverse=True)
    group = group.reshape(-1)
    first = np.zeros((group.max() + 1, 3))
    first[group] = nrm
    cos = (nrm * first[group]).sum(1) / np.linalg.norm(nrm, axis=1) / np.linalg.norm(first[group], axis=1)
    assert cos.min() > np.cos(np.radians(1.0)), np.degrees(np.arccos(cos.min()))


def test_a_re_export_leaves_no_file_of_the_earlier_mesh(tmp_path):
    """A re-export with fewer formats (or no texture) left the earlier mesh's GLB, OBJ and texture beside the new
    files, and summary.json's vertex_colors_glb named the stale GLB."""
    field = AnalyticField()
    mesh, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=24, texture=True, texture_size=64))
    mesh = meshlib.to_export_frame(mesh)
    (tmp_path / "notes.txt").write_text("mine")
    meshlib.write_meshes(mesh, tmp_path, ("glb", "obj", "ply"))
    meshlib.write_meshes(mesh, tmp_path, ("ply",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ply", "notes.txt"]
    meshlib.write_meshes(mesh, tmp_path, ("glb", "obj"))
    plain, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=24, texture=False))
    meshlib.write_meshes(meshlib.to_export_frame(plain), tmp_path, ("obj",))  # untextured: no .mtl/.png left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.obj", "notes.txt"]


def test_full_disk_leaves_previous_files_untouched(tmp_path, monkeypatch):
    field = AnalyticField()
    mesh, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=24, texture=False))
    mesh = meshlib.to_export_frame(mesh)
    meshlib.write_meshes(mesh, tmp_path, ("glb", "ply"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write = meshlib.AtomicFiles.write
    calls = []

    def failing(self, path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, path, data)

    monkeypatch.setattr(meshlib.AtomicFiles, "write", failing)
    smaller = meshlib.Mesh(mesh.vertices[:3], np.array([[0, 1, 2]]), mesh.colors[:3])
    with pytest.raises(ValueError, match="disk is full"):
        meshlib.write_meshes(smaller, tmp_path, ("glb", "ply"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no partial file, no temporary left
    assert trimesh.load(io.BytesIO(before["model.glb"]), file_type="glb", force="mesh").faces.shape == mesh.faces.shape


class BumpyField(AnalyticField):
    """The ellipsoid with bumps at the grid's scale (a NeRF's marching-cubes roughness)."""

    def sd(self, x):
        return super().sd(x) + 0.012 * torch.sin(45 * x[..., 0]) * torch.sin(45 * x[..., 1]) * torch.sin(45 * x[..., 2])


def _normal_agreement(mesh) -> float:
    """Mean cosine between the mesh's face normals and the smooth ellipsoid's true normals at the face centres."""
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    c = tm.triangles_center
    true = c / AXES ** 2  # the gradient of (x / a)^2 + ...: the ellipsoid's outward normal
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    return float((tm.face_normals * true).sum(1).mean())


def test_mesh_smoothing_removes_roughness_and_keeps_the_volume():
    raw, _ = meshlib.extract_mesh(BumpyField(), VIEWS, ExportConfig(resolution=64, texture=False, threshold=25.0))
    smooth, _ = meshlib.extract_mesh(BumpyField(), VIEWS, ExportConfig(resolution=64, texture=False, threshold=25.0,
                                                                       smooth=15))
    # measured: 0.969 without, 0.993 with 15 steps (0.986 with 5)
    assert _normal_agreement(raw) < 0.975 and _normal_agreement(smooth) > 0.985, (_normal_agreement(raw),
                                                                                   _normal_agreement(smooth))
    volume = [trimesh.Trimesh(m.vertices, m.faces).volume for m in (raw, smooth)]
    assert abs(volume[1] / volume[0] - 1) < 0.03, volume
    assert len(smooth.faces) == len(raw.faces)  # the same surface, moved, not remeshed


def test_a_surface_that_reaches_the_grids_edge_is_closed_there():
    """A threshold so low that the whole grid is inside (but one corner): the mesh was left open at the grid's
    faces (1,868 boundary edges from a real run at --threshold 1e-12); padded by one empty voxel, it is closed,
    and a surface inside the grid keeps its place."""
    n = 24
    grid = np.full((n, n, n), 10.0, np.float32)
    grid[0, 0, 0] = 0.0
    v, f = meshlib.marching_cubes(grid, 5.0, 1.0)
    tm = trimesh.Trimesh(v, f)
    # closed on the box's faces (within 1e-4 of a voxel), not a voxel outside, which would make it taller
    assert tm.is_watertight and np.abs(v).max() <= 1.0 + 1e-3 * 2.0 / (n - 1)
    x = np.linspace(-1, 1, n)
    r = np.sqrt(sum(c ** 2 for c in np.meshgrid(x, x, x, indexing="ij")))
    v, f = meshlib.marching_cubes((10.0 * (r < 0.5)).astype(np.float32), 5.0, 1.0)
    assert abs(np.linalg.norm(v, axis=1).mean() - 0.5) < 0.03 and trimesh.Trimesh(v, f).is_watertight


def test_a_millimetre_sized_export_has_unit_normals_in_every_format(tmp_path):
    """trimesh takes a face whose cross product is under 1e-12 for degenerate: in an export a few millimetres tall
    (--height-m 0.001) the smallest marching-cubes faces gave vertex normals of length 0 in the GLB, the OBJ and the
    PLY (glTF forbids them; viewers shade those vertices black). Here a small closed mesh (an octahedron 2e-7 across,
    all of whose faces are that small) stands for them."""
    import trimesh

    octa = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    small = meshlib.Mesh(octa * 1e-7, faces, np.full((6, 3), 0.5, np.float32))
    meshlib.write_meshes(small, tmp_path, ("glb", "obj", "ply"))
    data = (tmp_path / "model.glb").read_bytes()
    prim = _glb_json(data)["meshes"][0]["primitives"][0]
    normals = _glb_accessor(data, prim["attributes"]["NORMAL"]).astype(np.float64)
    assert np.allclose(normals, octa / np.linalg.norm(octa, axis=1, keepdims=True), atol=1e-4)  # outward, unit
    obj_normals = np.array([[float(x) for x in line.split()[1:4]]
                            for line in (tmp_path / "model.obj").read_text().splitlines() if line.startswith("vn ")])
    assert np.allclose(np.linalg.norm(obj_normals, axis=1), 1.0, atol=1e-4)
    ply = trimesh.load(tmp_path / "model.ply", process=False)
    assert np.allclose(np.linalg.norm(ply.vertex_normals, axis=1), 1.0, atol=1e-4)
    # the same directions as at a metre (a uniform scale keeps normals)
    assert np.allclose(raster.vertex_normals(octa * 1e-7, faces), raster.vertex_normals(octa, faces), atol=1e-6)


@pytest.mark.parametrize("at", [1, 3])
def test_an_interrupt_among_the_renames_puts_the_earlier_files_back(tmp_path, monkeypatch, at):
    """A failure or Ctrl-C while the written files were renamed into place left new meshes beside an old summary
    (the docs promise one unit)."""
    import os

    field = AnalyticField()
    mesh, _ = meshlib.extract_mesh(field, VIEWS, ExportConfig(resolution=24, texture=False))
    mesh = meshlib.to_export_frame(mesh)
    meshlib.write_meshes(mesh, tmp_path, ("glb", "ply"), extra={tmp_path / "summary.json": b"{}"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, renames = os.replace, []

    def interrupted(src, dst):
        into_place = ".tmp" in os.path.basename(str(src)) and ".tmp" not in os.path.basename(str(dst))
        if into_place and len(renames) < at:  # a written file renamed into place (not the rollback's)
            renames.append(dst)
            if len(renames) == at:
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    smaller = meshlib.Mesh(mesh.vertices[:3], np.array([[0, 1, 2]]), mesh.colors[:3])
    with pytest.raises(KeyboardInterrupt):
        meshlib.write_meshes(smaller, tmp_path, ("glb", "ply"), extra={tmp_path / "summary.json": b'{"new": 1}'})
    assert len(renames) == at
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # every file as it was, no temporary
