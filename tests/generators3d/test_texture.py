"""The textured GLB (issue 24): a UV layer, an embedded texture and a PBR material that uses it; read back as a glTF
importer reads it and rendered on the mesh, it reproduces a striped object's stripes, which the vertex colours of
the same mesh and a blank texture lose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generators3d import mesh as meshlib
from generators3d.cameras import orbit_cameras
from generators3d.config import ExportConfig
from generators3d.raster import render_mesh

from .test_mesh_export import AnalyticField, _glb_accessor, _glb_json

PERIOD = 0.06  # stripe period along the NeRF's z (the ellipsoid is 1.2 tall): 1.2 voxels of the 40^3 grid per period
CAMS = orbit_cameras([10.0, 10.0, 40.0], [0.0, 120.0, 240.0], 3.8, 20.0)


class StripedField(AnalyticField):
    """The test ellipsoid painted with horizontal cobalt and white stripes (the mini world's porcelain colours)."""

    def forward(self, x, with_color=True):
        sigma = super().forward(x, with_color=False)
        if not with_color:
            return sigma
        paint = (torch.sin(x[..., 2] * 2 * np.pi / PERIOD) > 0).float()[..., None]
        white, blue = torch.tensor([0.95, 0.95, 0.92]), torch.tensor([0.09, 0.18, 0.62])
        return sigma, white * (1 - paint) + blue * paint


def _read_textured_glb(data: bytes):
    """Vertices, faces, UV (glTF's v, 0 at the texture's top row, turned into the rasteriser's OBJ convention) and
    the embedded base-colour image, straight from the file."""
    import io

    from PIL import Image

    doc = _glb_json(data)
    prim = doc["meshes"][0]["primitives"][0]
    material = doc["materials"][prim["material"]]
    texture = doc["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    image = doc["images"][texture["source"]]
    n = int.from_bytes(data[12:16], "little")
    view = doc["bufferViews"][image["bufferView"]]
    start = 20 + n + 8 + view.get("byteOffset", 0)
    png = Image.open(io.BytesIO(data[start:start + view["byteLength"]]))
    uv = _glb_accessor_vec2(data, prim["attributes"]["TEXCOORD_0"])
    return (_glb_accessor(data, prim["attributes"]["POSITION"]), _glb_accessor(data, prim["indices"]).reshape(-1, 3),
            np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1), png, prim, material, image)


def _glb_accessor_vec2(data: bytes, index: int) -> np.ndarray:
    doc = _glb_json(data)
    n = int.from_bytes(data[12:16], "little")
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(data[20 + n + 8:], np.float32, acc["count"] * 2, start).reshape(-1, 2)


@pytest.fixture(scope="module")
def striped():
    field = StripedField()
    coarse, _ = meshlib.extract_mesh(field, CAMS, ExportConfig(resolution=40, threshold=25.0, texture_size=256))
    fine, _ = meshlib.extract_mesh(field, CAMS, ExportConfig(resolution=200, threshold=25.0, texture=False))
    return coarse, fine


def _error(rgb, truth, mask) -> float:
    return float(np.abs(rgb - truth).mean(1)[mask].mean())


def test_textured_glb_carries_uv_texture_and_material_and_shows_the_stripes(striped):
    coarse, fine = striped
    files = meshlib.mesh_bytes(coarse, "glb")
    assert sorted(files) == ["model-vertex-colors.glb", "model.glb"]
    v, f, uv, png, prim, material, image = _read_textured_glb(files["model.glb"])
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(prim["attributes"]) and "COLOR_0" not in prim["attributes"]
    assert image["mimeType"] == "image/png" and png.size == (256, 256)
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr.get("baseColorFactor", [1, 1, 1, 1]) == [1.0, 1.0, 1.0, 1.0]
    assert np.allclose(v, coarse.uv_vertices, atol=1e-6) and len(f) == len(coarse.faces)

    # The truth: the 200^3 mesh's vertex colours (six vertices a period); the 40^3 mesh three ways.
    truth, cover = render_mesh(fine.vertices, fine.faces, CAMS, colors=fine.colors)
    mask = cover > 0.99
    textured, _ = render_mesh(v, f, CAMS, uv=uv, texture=png)
    coloured, _ = render_mesh(coarse.vertices, coarse.faces, CAMS, colors=coarse.colors)
    blank, _ = render_mesh(v, f, CAMS, uv=uv, texture=np.full((8, 8, 3), float(coarse.colors.mean())))
    e_tex, e_vc, e_blank = (_error(x, truth, mask) for x in (textured, coloured, blank))
    assert e_tex < 0.11 < min(e_vc, e_blank), (e_tex, e_vc, e_blank)  # measured: 0.082, 0.162, 0.138
    # stripes, not a tint or a moire: the column through the middle changes from light to dark as often as the
    # truth's (measured: truth 34/34/24 changes in the three views, texture 34/35/28, vertex colours 15/10/10). The
    # third view sees the lowest stripes foreshortened to about two pixels, where the count moves by up to 4 with
    # the rasteriser and its supersampling (truth / texture at 2, 3, 4 times the size: 24/28, 23/25, 23/25; with
    # the painter's fill used before 2026-12-07: 23/23, 21/25, 21/25), hence 20%; the vertex colours miss by 56-71%.
    for i in range(len(CAMS)):
        want = _changes(truth[i], mask[i])
        assert abs(_changes(textured[i], mask[i]) - want) <= 0.2 * want
        assert _changes(coloured[i], mask[i]) < 0.6 * want and _changes(blank[i], mask[i]) < 0.3 * want


def _changes(rgb, mask) -> int:
    column = rgb.mean(0)[:, rgb.shape[-1] // 2][mask[:, rgb.shape[-1] // 2]]
    s = np.sign(column - np.median(column))
    return int((s[1:] != s[:-1]).sum())


def test_a_vertex_coloured_export_removes_an_earlier_textured_exports_second_glb(striped, tmp_path):
    coarse, _ = striped
    meshlib.write_meshes(coarse, tmp_path, ("glb",))
    assert (tmp_path / "model-vertex-colors.glb").is_file()
    from dataclasses import replace

    meshlib.write_meshes(replace(coarse, texture=None), tmp_path, ("glb",))  # e.g. --export-only ... --no-texture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.glb"]


def test_the_reference_image_is_projected_onto_the_faces_it_sees_and_no_others(striped):
    """A striped object's image, projected onto a smoothly coloured mesh of the same shape: seen from the image's
    camera the mesh shows the stripes (the NeRF's colours alone do not); seen from behind it does not (the image is
    not projected through the object: the z-buffer hides the back from the image's camera)."""
    from .test_mesh_export import AnalyticField

    _, fine = striped
    front = orbit_cameras([10.0], [0.0], 3.8, 20.0)
    image, cover = render_mesh(fine.vertices, fine.faces, front, size=128, colors=fine.colors, shading=False)
    view = meshlib.ColourView(image[0].transpose(1, 2, 0), cover[0], front.c2w[0].double().numpy(), 20.0)
    cfg = ExportConfig(resolution=40, threshold=25.0, texture_size=256)
    plain, _ = meshlib.extract_mesh(AnalyticField(), CAMS, cfg)
    projected, _ = meshlib.extract_mesh(AnalyticField(), CAMS, cfg, views=(view,))
    back = orbit_cameras([10.0], [180.0], 3.8, 20.0)

    def draw(m, cams):
        return render_mesh(m.uv_vertices, m.uv_faces, cams, size=128, uv=m.uv, texture=m.texture, shading=False)[0]

    from scipy.ndimage import binary_erosion

    inner = binary_erosion(cover[0] > 0.99, iterations=12)  # away from the limb, where the image fades out
    e_proj, e_plain = (_error(draw(m, front), image, inner[None]) for m in (projected, plain))
    assert e_proj < 0.08 < e_plain, (e_proj, e_plain)  # measured: 0.045 (texture resampling), 0.390
    want = _changes(image[0], cover[0] > 0.99)
    assert abs(_changes(draw(projected, front)[0], cover[0] > 0.99) - want) <= 0.15 * want  # measured: 38 vs 39
    seen_back = draw(projected, back)[0]
    _, back_cover = render_mesh(plain.vertices, plain.faces, back, size=128)
    assert _changes(seen_back, back_cover[0] > 0.99) < 0.3 * want  # measured: 2
    # the vertex colours take the image too, as far as one colour per vertex of the 40^3 grid holds it
    assert np.abs(projected.colors - plain.colors).max() > 0.3


def test_colour_transfer_brings_a_hue_drifted_view_to_the_references_palette():
    """A blue-and-white pattern drawn teal (channels mixed, as the mini Zero-1-to-3 draws blue) comes back to the
    reference's colours: the mapped pixels match the reference's pixel for pixel, which no gain per channel does."""
    rng = np.random.default_rng(0)
    paint = rng.random(4000) < 0.4
    white, blue = np.array([0.93, 0.93, 0.9]), np.array([0.1, 0.2, 0.65])
    reference = np.where(paint[:, None], blue, white) + rng.normal(0, 0.02, (4000, 3))
    drift = np.array([[0.9, 0.1, 0.0], [0.0, 0.5, 0.5], [0.1, 0.3, 0.6]])  # blue -> teal, white stays light
    drawn = (reference @ drift.T).clip(0, 1)
    mapped = meshlib.colour_transfer(drawn, drawn, reference)
    gain = (drawn * (reference.mean(0) / drawn.mean(0))).clip(0, 1)
    err, err_gain = (float(np.abs(x - reference).mean()) for x in (mapped, gain))
    assert err < 0.03 < err_gain, (err, err_gain)  # measured: 0.020, 0.088 (the drawn colours as they are: 0.064)
    assert np.allclose(mapped.mean(0), reference.mean(0), atol=0.01)


def test_side_views_cover_the_hidden_side_back_first():
    from generators3d.texture import side_azimuths

    assert side_azimuths(0) == [] and side_azimuths(1) == [180.0] and side_azimuths(3) == [180.0, 90.0, 270.0]
    for n in range(1, 9):
        a = side_azimuths(n)
        assert len(a) == n and all(90.0 <= x <= 270.0 for x in a)  # never on the reference's side
        assert [abs(x - 180.0) for x in a] == sorted(abs(x - 180.0) for x in a)  # the back first
        gaps = np.diff(sorted(a))
        assert n == 1 or (np.allclose(gaps, gaps[0]) and gaps.max() <= 90.0)  # evenly spread, no wide gap


def test_a_drifted_side_view_is_matched_to_the_reference_even_where_the_reference_is_not_projected(striped):
    """A generated view of the back drawn teal (channels mixed) lands on the mesh in the reference's blue and white:
    its own object pixels are mapped to the reference's palette, whether the reference itself is projected or not
    (``--no-project-reference --side-views N``)."""
    from .test_mesh_export import AnalyticField

    _, fine = striped
    front, back = orbit_cameras([10.0], [0.0], 3.8, 20.0), orbit_cameras([10.0], [180.0], 3.8, 20.0)

    def view(cams, drift=np.eye(3)):
        rgb, cover = render_mesh(fine.vertices, fine.faces, cams, size=128, colors=fine.colors, shading=False)
        img = (rgb[0].transpose(1, 2, 0) @ drift.T).clip(0, 1)
        return meshlib.ColourView(img, cover[0], cams.c2w[0].double().numpy(), 20.0)

    reference, truth = view(front), view(back)
    drifted = view(back, np.array([[0.9, 0.1, 0.0], [0.0, 0.5, 0.5], [0.1, 0.3, 0.6]]))
    cfg = ExportConfig(resolution=40, threshold=25.0, texture_size=256)
    inner = truth.mask > 0.99

    def seen(m):
        rgb = render_mesh(m.uv_vertices, m.uv_faces, back, size=128, uv=m.uv, texture=m.texture, shading=False)[0]
        return float(np.abs(rgb[0].transpose(1, 2, 0) - truth.rgb)[inner].mean())

    matched = seen(meshlib.extract_mesh(AnalyticField(), CAMS, cfg, views=(drifted,), reference=reference)[0])
    raw = seen(meshlib.extract_mesh(AnalyticField(), CAMS, cfg, views=(drifted,))[0])
    assert matched < 0.1 < raw, (matched, raw)  # measured: 0.085, 0.142


def test_side_views_are_drawn_in_turns_of_views_that_do_not_overlap():
    from generators3d.texture import side_azimuths, side_batches

    assert side_batches(0) == [] and side_batches(1) == [[180.0]] and side_batches(3) == [[180.0], [90.0, 270.0]]
    assert side_batches(2) == [[135.0], [225.0]]  # 90 degrees apart: they see much of the same back
    for n in range(1, 9):
        turns = side_batches(n)
        assert [a for t in turns for a in t] == side_azimuths(n)  # every view once, the back first
        assert all(abs(a - b) >= 150.0 for t in turns for a in t for b in t if a != b)


def _view(m, azimuth: float, size: int = 64):
    cams = orbit_cameras([10.0], [azimuth], 3.8, 20.0)
    image, cover = render_mesh(m.vertices, m.faces, cams, size=size, colors=m.colors, shading=False)
    return meshlib.ColourView(image[0].transpose(1, 2, 0), cover[0], cams.c2w[0].double().numpy(), 20.0)


class _Drawn:
    """Stands in for ``suite.zero123.novel_views``: records the keep masks and batch sizes, returns the renders."""

    def __init__(self):
        self.masks, self.batches, self.scales = [], [], []

    def __call__(self, guide, els, azs, dists, scale, steps, generator=None, init=None, strength=1.0, keep=None):
        self.masks.append(None if keep is None else keep[:, 0].numpy())
        self.batches.append(len(els))
        self.scales.append(scale)
        return init


GUIDE = type("Guide", (), {"model": type("Model", (), {"image_size": 64})()})()


def test_a_side_view_keeps_what_every_view_before_it_shows(striped, monkeypatch):
    """The keep mask Zero-1-to-3 is given for a view 90 degrees round: the reference (front) view's part on the
    side nearer it, a back view's on the other side, and, given both (a side view drawn after the back one), the
    weight the colours give the two together (projected_colours: an earlier view keeps what it sees)."""
    import suite.zero123
    from generators3d.config import CameraConfig
    from generators3d.texture import zero123_colour_views

    coarse, _ = striped  # the 40^3 grid's mesh: the masks' halves need no finer
    drawn = _Drawn()
    monkeypatch.setattr(suite.zero123, "novel_views", drawn)
    camera = CameraConfig(ref_elevation=10.0, ref_azimuth=0.0, ref_distance=3.8, ref_fovy=20.0)
    front, back = _view(coarse, 0.0), _view(coarse, 180.0)
    for keep in (None, [front], [back], [front, back], front, [front, front]):
        out = zero123_colour_views(coarse, GUIDE, camera, keep=keep, azimuths=[90.0])
        assert len(out) == 1 and out[0].rgb.shape == (64, 64, 3)
    none, f, b, both, bare, twice = drawn.masks
    assert none is None and np.array_equal(bare, f)  # one view, given bare or in a list
    half = f.shape[-1] // 2
    # the front's part lies on one half of the side view, the back's on the other
    (f_l, f_r), (b_l, b_r) = ((m[..., :half].mean(), m[..., half:].mean()) for m in (f, b))
    assert min(f_l, f_r) < 0.3 * max(f_l, f_r) and min(b_l, b_r) < 0.3 * max(b_l, b_r), (f_l, f_r, b_l, b_r)
    assert (f_l > f_r) != (b_l > b_r)  # measured: 0.090 / 0.000 and 0.000 / 0.094
    assert (both >= np.maximum(f, b) - 1e-5).all()
    # the masks are the weights the colours give those images together, seen from the side view: white images
    # projected onto a black mesh paint exactly those weights (an image given twice: w + w (1 - w))
    mesh = meshlib.Mesh(coarse.vertices, coarse.faces, np.zeros_like(coarse.colors))
    normals = meshlib.surface_normals(mesh)
    side = orbit_cameras([10.0], [90.0], 3.8, 20.0)
    for mask, views in ((both, (front, back)), (twice, (front, front))):
        white = [meshlib.ColourView(np.ones_like(v.rgb), v.mask, v.c2w, v.fovy) for v in views]
        painted = meshlib.projected_colours(mesh.colors, mesh.vertices, normals, mesh, white)
        weights = meshlib.projection_weights(mesh.vertices, normals, mesh, white)
        assert np.allclose(painted, weights[:, None], atol=1e-5)
        seen, _ = render_mesh(mesh.vertices, mesh.faces, side, size=64, colors=painted, shading=False,
                              background=(0.0, 0.0, 0.0))
        assert np.abs(seen[0, 0] - mask[0]).max() < 1e-4
    partly = (f > 0.05) & (f < 0.95)
    assert (twice[partly] > f[partly] + 1e-3).mean() > 0.5  # counted as the colours count it, not once


@pytest.mark.parametrize("flags, turns", [
    (dict(), [[180.0], [90.0, 270.0]]),
    (dict(side_in_turn=False), [[180.0, 90.0, 270.0]]),
    (dict(side_keep_reference=False), [[180.0, 90.0, 270.0]]),  # nothing kept: nothing to wait for
    (dict(project_reference=False), [[180.0, 90.0, 270.0]]),  # no projected reference to keep
    (dict(side_views=0), []),
    (dict(side_views=1), [[180.0]]),
    (dict(side_views=5), [[180.0], [135.0], [225.0], [90.0, 270.0]]),
])
def test_the_exports_side_views_are_drawn_in_turns_only_where_they_keep_the_reference(flags, turns):
    from dataclasses import replace

    from generators3d.texture import side_turns

    assert side_turns(replace(ExportConfig(), **flags)) == turns


def test_the_export_draws_its_side_views_in_turns_or_all_at_once(monkeypatch):
    """``field_mesh`` as the export calls it: in turns, one Zero-1-to-3 call per turn (the back, then 90 and 270
    keeping the back's part too, so much more than the reference's part alone); with ``side_in_turn`` off one call
    for all three, each keeping the reference's part only (the export before turns)."""
    import suite.zero123
    from generators3d.config import CameraConfig
    from generators3d.run import field_mesh

    from .test_mesh_export import AnalyticField

    camera = CameraConfig(ref_elevation=10.0, ref_azimuth=0.0, ref_distance=3.8, ref_fovy=20.0)
    plain, _ = meshlib.extract_mesh(AnalyticField(), CAMS, ExportConfig(resolution=40, threshold=25.0, texture=False))
    field = AnalyticField()
    field.update_occupancy = lambda: None  # a NeRF's occupancy grid: the analytic field has none
    drawn = {}
    for in_turn in (True, False):
        drawn[in_turn] = _Drawn()
        monkeypatch.setattr(suite.zero123, "novel_views", drawn[in_turn])
        export = ExportConfig(resolution=40, threshold=25.0, texture=False, side_views=3, side_in_turn=in_turn)
        _, _, sides = field_mesh(field, camera, export, reference=_view(plain, 0.0), side=GUIDE,
                                 guidance_scale=4.5 if in_turn else 3.0)
        assert len(sides) == 3 and all(v.depth is not None for v in sides)  # each drawn once, for every later use
    assert drawn[True].batches == [1, 2] and drawn[False].batches == [3]
    # the run's --zero123-guidance draws the side views too (they were drawn at 3 whatever the flag said)
    assert drawn[True].scales == [4.5, 4.5] and drawn[False].scales == [3.0]
    at_once = drawn[False].masks[0]
    assert at_once[0].mean() < 0.01 < at_once[1:].mean()  # the back view keeps nothing of the front
    in_turns = drawn[True].masks[1]
    # about double: the back shows the 90 and 270 views as much as the front does (measured: 0.093 and 0.046)
    assert in_turns.mean() > 1.5 * at_once[1:].mean(), (in_turns.mean(), at_once[1:].mean())


def test_an_earlier_image_keeps_its_share_and_a_later_one_gets_its_weight_of_what_is_left(monkeypatch):
    """Two images (red, then green) over grey colours, with fixed weights per point: red gets its weight, green its
    weight of what red left, grey the rest; a later image does not scale down an earlier one's share (blending each
    image over the result so far did: 0.5 red under 1.0 green gave red 0.25 and grey 0.25 back)."""
    import generators3d.raster as raster

    w_red, w_green = np.array([0.5, 1.0, 0.0, 0.25, 0.5], np.float32), np.array([1.0, 0.5, 0.5, 0.25, 0.0], np.float32)

    def project(points, normals, vertices, faces, rgb, mask, c2w, fovy, zbuf=None):
        colour = rgb[0, 0]
        return np.tile(colour, (len(points), 1)), (w_red if colour[0] > 0.5 else w_green)

    monkeypatch.setattr(raster, "project_image", project)
    red, green = (meshlib.ColourView(np.full((4, 4, 3), c, np.float32), np.ones((4, 4)), np.eye(4), 20.0)
                  for c in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    mesh = meshlib.Mesh(np.zeros((5, 3), np.float32), np.array([[0, 1, 2]]), np.full((5, 3), 0.5, np.float32))
    normals = np.ones((5, 3), np.float32)
    out = meshlib.projected_colours(mesh.colors, mesh.vertices, normals, mesh, [red, green])
    s_red, s_green = w_red, w_green * (1 - w_red)
    grey = 1 - s_red - s_green
    assert np.allclose(out, np.stack([s_red + 0.5 * grey, s_green + 0.5 * grey, 0.5 * grey], 1), atol=1e-6)
    assert np.allclose(out[0], [0.5, 0.5, 0.0])  # red 0.5 under green 1.0: half each, no grey
    assert np.allclose(meshlib.projection_weights(mesh.vertices, normals, mesh, [red, green]), s_red + s_green)
    # the order matters: green first keeps its own share
    swapped = meshlib.projected_colours(mesh.colors, mesh.vertices, normals, mesh, [green, red])
    assert np.allclose(swapped[1], [0.5, 0.5, 0.0]) and np.allclose(swapped[0], [0.0, 1.0, 0.0])
