"""bench.mini3d's measure of a generated object against the canonical shape of the class its prompt names (used for
the prompts of bench.mini3d and for stage 3 in bench.mini3d_stage3): the best of twelve turns about the vertical."""

from __future__ import annotations

import numpy as np


def _canonical_hull(shape: str, elevation: float):
    """The convex hull of the canonical object's exact surface, in the NeRF frame of a reference view from
    ``elevation``."""
    import trimesh

    from bench.miniworld.geometry import surface_points
    from suite.miniworld.views import reference_framing
    from suite.miniworld.world import make_object

    obj = make_object(shape)
    pts = reference_framing(obj, elevation, 0.0, size=256).to_nerf(surface_points(obj, views=12, size=24)[0], 0.0)
    hull = trimesh.convex.convex_hull(pts)
    return np.asarray(hull.vertices, np.float32), np.asarray(hull.faces)


def test_the_best_turn_finds_an_unknown_orientation_against_the_named_class():
    from bench.mini3d import HELD_OUT, against_class, turned
    from bench.miniworld.geometry import exact_truth, measure_mesh
    from suite.miniworld.views import reference_framing
    from suite.miniworld.world import make_object

    # the cup (asymmetric: its handle) turned 60 degrees: the search must turn it back by 300, exactly
    v, f = _canonical_hull("cup", 10.0)
    cup = make_object("cup")
    framing = reference_framing(cup, 10.0, 0.0, size=256)
    truth = exact_truth(cup, framing, views=HELD_OUT)
    as_is = measure_mesh(v, f, cup, framing, truth=truth)["chamfer"]  # measured 0.028: the hull closes the cup's mouth
    unsearched = measure_mesh(turned(v, 60.0), f, cup, framing, truth=truth)["chamfer"]  # measured 0.094
    found = against_class(turned(v, 60.0), f, "cup", 10.0)["chamfer"]
    # (measured against another class, the figure found would differ)
    assert abs(found - as_is) < 2e-3 and unsearched > 2 * found, (found, as_is, unsearched)
