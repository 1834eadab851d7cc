"""The CPU rasteriser (:mod:`generators3d.raster`) against exact answers: a pixel sees the nearest triangle whose
projection holds its centre, at the perspective-correct depth. It draws every mesh render of the export's checks
and benches and decides what an image's camera sees when colours are projected onto a mesh."""

from __future__ import annotations

import numpy as np
import trimesh

from generators3d.cameras import orbit_cameras
from generators3d.raster import covered, depth_map, face_ids

# A long triangle from near the camera to far behind (depths 0.5, 0.5, 7: mean 2.7, 4.3 on the centre ray) and a
# small one across the centre at depth 3 (mean 3): drawing far to near by the triangles' mean depths puts the long
# one in front at the centre, where it is behind.
LONG = np.array([[-1.0, -1.0, -0.5], [1.0, -1.0, -0.5], [0.0, 0.7, -7.0]])
SMALL = np.array([[-0.5, -0.5, -3.0], [0.5, -0.5, -3.0], [0.0, 0.5, -3.0]])


def test_the_nearest_triangle_at_the_pixel_is_seen_not_the_nearest_on_average():
    v, f = np.concatenate([LONG, SMALL]), np.array([[0, 1, 2], [3, 4, 5]])
    ids, _, depth = face_ids(v, f, np.eye(4), 60.0, 33)  # camera at the origin looking along -z
    assert depth[f[0]].mean() < depth[f[1]].mean()  # the long one is nearer on average
    assert ids[16, 16] == 1  # the painter's order by mean depth gave 0
    assert abs(depth_map(v, f, np.eye(4), 60.0, 33)[16, 16] - 3.0) < 1e-9
    # alone, the long triangle's depth on the centre ray is its plane's there (4.32), not a blend of its corners'
    # depths across the image (6.69)
    n = np.cross(LONG[1] - LONG[0], LONG[2] - LONG[0])
    exact = (n @ LONG[0]) / (n @ np.array([0.0, 0.0, -1.0]))
    assert abs(depth_map(LONG, np.array([[0, 1, 2]]), np.eye(4), 60.0, 33)[16, 16] - exact) < 1e-9


def test_a_sphere_is_covered_and_its_depth_drawn_as_its_rays_meet_it():
    """An icosphere (radius 0.5, 2,562 vertices) against the sphere traced through every pixel's centre: the
    covered pixels and the depths agree (measured: 0 pixels of 1,020 differ, mean depth error 0.0007; PIL's
    polygon fill far to near, used before 2026-12-07: 64 pixels, 0.0098)."""
    mesh = trimesh.creation.icosphere(4, 0.5)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    size, fovy = 64, 40.0
    c2w = orbit_cameras([40.0], [30.0], 2.5, fovy).c2w[0].double().numpy()
    z = depth_map(v, f, c2w, fovy, size)
    focal = 0.5 * size / np.tan(np.radians(fovy / 2))
    ys, xs = np.mgrid[0:size, 0:size]
    d = np.stack([(xs - size / 2 + 0.5) / focal, -(ys - size / 2 + 0.5) / focal, -np.ones((size, size))], -1)
    d = d @ c2w[:3, :3].T  # the ray through each pixel's centre; one unit along the view per unit of d
    o = c2w[:3, 3]
    a, b, c = (d * d).sum(-1), (d * o).sum(-1), o @ o - 0.25
    hit = b * b - a * c > 0
    truth = np.where(hit, (-b - np.sqrt(np.maximum(b * b - a * c, 0))) / a, np.inf)
    assert abs(int(hit.sum()) - 1020) < 10  # the scene as measured
    assert (np.isfinite(z) != hit).sum() <= 3
    both = hit & np.isfinite(z)
    assert np.abs(z - truth)[both].mean() < 0.002


def test_covered_takes_pixel_centres_at_either_convention_and_weighs_the_corners():
    """A square (two triangles, one of each winding) from (2, 2) to (5, 5): with centres at integers, pixels 2-5
    (edges included); with centres at k + 0.5, pixels 2-4; a triangle of no area covers nothing. The weights are the
    centres' barycentric coordinates: they sum to 1 and put the centre back together from the corners."""
    px = np.array([[2.0, 2.0], [5.0, 2.0], [5.0, 5.0], [2.0, 5.0], [1.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 3, 2], [4, 4, 0]])
    for centre, first, last in ((0.0, 2, 5), (0.5, 2, 4)):
        ys, xs, ids, bary = covered(px, faces, 8, centre=centre, weights=True)
        out = np.zeros((8, 8), bool)
        out[ys, xs] = True
        want = np.zeros((8, 8), bool)
        want[first:last + 1, first:last + 1] = True
        assert (out == want).all() and set(ids.tolist()) == {0, 1}
        assert np.allclose(bary.sum(1), 1) and (bary > -1e-12).all()
        corners = px[faces[ids]]  # [K, 3, 2]
        assert np.allclose((bary[..., None] * corners).sum(1), np.stack([xs, ys], -1) + centre)
