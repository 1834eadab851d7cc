"""bench.mini3d's measure of a generated object against the canonical shape of the class its prompt names (used for
the prompts of bench.mini3d and for stage 3 in bench.mini3d_stage3): the best of twelve turns about the vertical."""

from __future__ import annotations

import numpy as np


def _canonical_hull(shape: str, elevation: float):
    """The convex hull of the canonical object's exact surface, in the NeRF frame of a reference view from
    ``elevation`` (a box's hull is the box)."""
    import trimesh

    from bench.miniworld.geometry import surface_points
    from suite.miniworld.views import reference_framing
    from suite.miniworld.world import make_object

    obj = make_object(shape)
    pts = reference_framing(obj, elevation, 0.0, size=256).to_nerf(surface_points(obj, views=24)[0], 0.0)
    hull = trimesh.convex.convex_hull(pts)
    return np.asarray(hull.vertices, np.float32), np.asarray(hull.faces)


def test_the_best_turn_undoes_an_unknown_orientation_and_another_class_stays_far():
    from bench.mini3d import against_class, turned

    v, f = _canonical_hull("box", 10.0)
    right = against_class(turned(v, 60.0), f, "box", 10.0)  # a turn the search tries back (a multiple of 30)
    wrong = against_class(v, f, "ball", 10.0)
    # measured: 0.006 (the hull's facets against the sampled surface) and 0.056; a search that missed the turn back
    # leaves a box turned 15 degrees off at 0.035
    assert right["chamfer"] < 0.015, right["chamfer"]
    assert wrong["chamfer"] > 4 * right["chamfer"], (wrong["chamfer"], right["chamfer"])
