"""Faces in the mini world (issue 23, part 1): inside the world's bound, landmarks on the visible surface, and
each attribute changing the pixels where it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from suite.cameras import orbit_cameras
from suite.miniworld import faces as F
from suite.miniworld.render import BOUND_RADIUS

BASE = F.Face(skin="fair", hair_colour="brown")


def _surface_points(face: F.Face) -> torch.Tensor:
    """Points on every part's surface (ellipsoids sampled, the hat's profile; the glasses have their own test)."""
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    pts = []
    for kind, _, prm in F._parts(face):
        if kind == "ellipsoid":
            pts.append(prm[0] + u * prm[1])
        elif kind == "revolution":
            rz = torch.tensor([q for part in prm.profile for q in part])
            pts.append(torch.stack([rz[:, 0], torch.zeros(len(rz)), rz[:, 1]], -1))
    return torch.cat(pts)


def test_every_face_fits_the_worlds_bound():
    rng = np.random.default_rng(0)
    faces = [F.random_face(rng, {k: 1.0 for k in ("glasses", "a hat", "earrings")}) for _ in range(20)]
    far = max(float(_surface_points(f).norm(dim=-1).max()) for f in faces)
    assert far < BOUND_RADIUS - 0.01, far  # rays are culled at the bound: a part outside it would be cut off


def test_the_glasses_sit_in_front_of_and_beside_the_head_inside_their_bound():
    """The glasses' solid (sdf < 0, on a 0.012 grid) lies in the sphere their rays are traced in, and hardly enters
    the head (the arms go round it to the ears)."""
    face = F.Face(glasses=True, params={"width": 1.05, "height": 1.0, "hat_colour": "red"})
    sdf = next(prm for kind, _, prm in F._parts(face) if kind == "sdf")
    lin = torch.arange(-0.62, 0.62, 0.012)
    grid = torch.stack(torch.meshgrid(lin, lin, torch.arange(-0.05, 0.2, 0.006), indexing="ij"), -1).reshape(-1, 3)
    solid = grid[sdf(grid) < 0]
    assert len(solid) > 200
    assert float((solid - F.GLASSES_C).norm(dim=-1).max()) < F.GLASSES_R
    c, ax = F._head(face)
    inside_head = (((solid - c) / ax) ** 2).sum(-1) < 1
    assert float(inside_head.float().mean()) < 0.02, float(inside_head.float().mean())


@pytest.mark.parametrize("elevation,azimuth", [(0.0, 0.0), (10.0, -8.0), (10.0, 8.0), (-5.0, 5.0)])
def test_landmarks_lie_on_the_surface_the_camera_sees(elevation, azimuth):
    """In near-frontal views (FFHQ's), a ray from the camera to each landmark hits the face first at that landmark
    (the point is on the surface and nothing hides it), and the landmarks' pixels keep their order (eyes above the
    nose above the mouth). (Glasses may cover the eye corners, so they are left out here.)"""
    for face in (BASE, F.with_attribute(BASE, "smiling"), F.with_attribute(BASE, "a beard"),
                 F.Face(skin="dark", hair_style="bald", params={"width": 0.94, "height": 1.04, "hat_colour": "blue"})):
        cams = orbit_cameras(elevation, azimuth, 3.8, 20.0)
        lm = F.landmarks(face)
        pts = torch.stack(list(lm.values()))
        eye = cams.c2w[0, :3, 3]
        d = torch.nn.functional.normalize(pts - eye, dim=-1)
        t, _, _ = F.intersect_face(face, eye.expand_as(d), d)
        hit = eye + t[:, None] * d
        err = (hit - pts).norm(dim=-1)
        assert err.max() < 0.01, dict(zip(lm, err.tolist()))
        px = dict(zip(lm, F.project(pts, cams, 256)[0]))
        assert px["eye_left_outer"][0] < px["eye_left_inner"][0] < px["eye_right_inner"][0] < px["eye_right_outer"][0]
        assert px["eye_left_inner"][1] < px["nose_tip"][1] < px["mouth_left"][1] < px["chin"][1]


def _changed(face, size=128):
    cams = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    a = F.render_face(BASE, cams, size=size).rgb[0]
    b = F.render_face(face, cams, size=size).rgb[0]
    diff = (a - b).abs().sum(0) > 0.08
    px = {k: v for k, v in zip(F.LANDMARKS, F.project(torch.stack(list(F.landmarks(BASE).values())), cams, size)[0])}
    return diff, px


@pytest.mark.parametrize("attribute", list(F.ATTRIBUTES))
def test_each_attribute_changes_the_pixels_where_it_should(attribute):
    face = F.with_attribute(BASE, attribute)
    if face == BASE:  # brown hair is the base's own
        pytest.skip("the base face has brown hair")
    diff, px = _changed(face)
    eye_y = float(px["eye_left_outer"][1])
    nose_y, mouth_y, chin_y = (float(px[k][1]) for k in ("nose_tip", "mouth_left", "chin"))
    left, right = float(px["jaw_left"][0]), float(px["jaw_right"][0])
    mid_x = 0.5 * (left + right)
    half = right - left
    regions = {  # (x0, x1, y0, y1) in pixels, generous but local
        "glasses": (left - 0.35 * half, right + 0.35 * half, eye_y - 0.25 * half, nose_y),
        "a hat": (0, 128, 0, eye_y),
        "smiling": (float(px["mouth_left"][0]) - 4, float(px["mouth_right"][0]) + 4, nose_y + 2, chin_y),
        "a beard": (left - 4, right + 4, nose_y, chin_y + 4),
        "closed eyes": (float(px["eye_left_outer"][0]) - 3, float(px["eye_right_outer"][0]) + 3, eye_y - 5, eye_y + 5),
        "earrings": (0, 128, eye_y, chin_y),
    }
    x0, x1, y0, y1 = regions.get(attribute, (0, 128, 0, eye_y))  # hair colours: above the eyes
    ys, xs = np.nonzero(diff.numpy())
    assert len(ys) >= 6, (attribute, len(ys))
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert inside.mean() > 0.95, (attribute, inside.mean())
    if attribute == "earrings":  # beside the head, not on the face
        assert (np.abs(xs - mid_x) > 0.45 * half).mean() > 0.9


def test_attributes_captions_and_frequencies():
    rng = np.random.default_rng(1)
    faces = [F.random_face(rng, {"a hat": 0.05, "glasses": 0.0, "red hair": 0.0, "bald": 0.0}) for _ in range(400)]
    assert not any(f.glasses for f in faces) and not any("red hair" in f.attributes for f in faces)
    assert 5 <= sum(f.hat for f in faces) <= 40  # rare, as hats are in FFHQ
    assert all(f.hair_style != "bald" for f in faces) and 60 <= sum(f.hair_colour == "blond" for f in faces) <= 140
    with pytest.raises(ValueError, match="unknown face attribute"):
        F.random_face(rng, {"hat": 0.1})
    f = F.Face(glasses=True, hat=True, smiling=True, hair_colour="black")
    assert f.caption() == "a photo of a face with glasses, a hat and black hair, smiling"
    assert set(F.Face(hair_style="bald").attributes) == set()
    with pytest.raises(ValueError, match="unknown face attribute"):
        F.with_attribute(f, "a moustache")


def test_training_captions_name_true_attributes_in_known_words_within_the_token_budget():
    """The base's captions: only attributes the face has, only words of the mini vocabulary (each one token), and
    short enough for the text encoder (20 tokens with its start and end)."""
    from suite.miniworld.world import vocabulary

    rng = np.random.default_rng(3)
    known = set(vocabulary())
    for _ in range(300):
        face = F.random_face(rng, {k: 0.6 for k in F.FLAGS})
        text = face.caption(rng)
        words = text.split()
        assert set(words) <= known, text
        assert len(words) <= F.CAPTION_WORDS <= 18
        for phrase in F.ATTRIBUTES:
            if f" {phrase}" in f" {text}":
                assert phrase in face.attributes, (text, face.attributes)


def test_the_photo_look_differs_from_the_worlds_in_light_and_backdrop():
    face = F.Face(skin="fair", hair_colour="black")
    world = F.render_face_view(face, size=64).rgb[0]
    photo = F.render_face_view(face, size=64, look="photo", backdrop="sage").rgb[0]
    # the backdrop (a corner) is the studio's, not the world's flat grey
    assert (world[:, :4, :4] - torch.tensor(F.BACKGROUND)[:, None, None]).abs().max() < 1e-6
    assert (photo[:, :4, :4].mean((1, 2)) - torch.tensor(F.PHOTO_BACKDROPS["sage"])).abs().max() < 0.15
    # the key light comes from the other side: the face's right half (image right) is the brighter one in the photo
    mask = F.render_face_view(face, size=64).mask[0]
    half = lambda im, s: im.mean(0)[:, s][mask[:, s]].mean()  # noqa: E731
    assert half(world, slice(0, 32)) > half(world, slice(32, 64))
    assert half(photo, slice(32, 64)) > half(photo, slice(0, 32))
    with pytest.raises(ValueError, match="unknown look"):
        F.render_face_view(face, look="painting")


@pytest.mark.parametrize("elevation,azimuth", [(0.0, 0.0), (6.0, -9.0)])
def test_aligned_views_are_ffhqs_crop_of_the_orbit_view(elevation, azimuth):
    """An aligned view is the crop FFHQ's alignment takes of the wide view: its own landmarks give back the whole
    frame (centre at the middle, half-side the image's half, no roll). (tests/editing checks that the edit path's
    crop of a face photo matches it pixel for pixel.)"""
    from suite.alignment import ffhq_quad

    face = F.Face(skin="medium", hair_colour="blond", smiling=True)
    cams = F.aligned_cameras(face, elevation, azimuth)
    c, x, y = ffhq_quad(*F.eye_mouth_points(face, cams, 64))
    assert np.allclose(c, [32, 32], atol=0.3) and abs(np.hypot(*x) - 32) < 0.3 and abs(x[1]) < 0.3 and x[0] > 0
    wide = orbit_cameras(elevation, azimuth, 3.8, 20.0)
    c, x, y = ffhq_quad(*F.eye_mouth_points(face, wide, 512))
    crop_side = 2 * np.hypot(*x)
    assert 0.5 * 512 < crop_side < 0.7 * 512  # FFHQ's crop: the face and some hair, not the whole head


def test_face_photos_put_the_exact_landmarks_on_the_face_off_centre():
    rng = np.random.default_rng(4)
    for _ in range(2):
        face = F.random_face(rng)
        rgb, points, view = F.face_photo(face, rng, size=160, supersample=1)
        assert rgb.shape == (160, 160, 3) and rgb.dtype == np.uint8
        xy = np.array([points[k] for k in F.LANDMARKS])
        assert (xy > 0).all() and (xy < 160).all()
        # every landmark's pixel is on the face's exact silhouette, and the face is not the whole picture
        mask = view["mask"]
        assert all(mask[int(y), int(x)] for x, y in xy) and 0.05 < mask.mean() < 0.5
        ex = (np.array(points["eye_left"]) + np.array(points["eye_right"])) / 2
        assert 0.25 * 160 < ex[0] < 0.75 * 160
