"""Face detection, alignment, crop and paste geometry (no diffusion network involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from editing.align import MOUTH_RATIO, extract, face_region, feather_mask, paste, whole_image_region  # noqa: E402
from editing.faces import BOX_EYE_X, BOX_EYE_Y, Face, HaarFaceDetector  # noqa: E402
from editing.synthetic import place_face  # noqa: E402

# FFHQ framing: eyes 1/4 of the crop apart, centred, at 0.5 - 0.1 * MOUTH_RATIO / 4 of the height.
EYE_U = (0.375, 0.625)
EYE_V = 0.5 - 0.1 * MOUTH_RATIO * 0.25


def blob_centroid(img: np.ndarray, near: tuple[float, float], radius: float) -> tuple[float, float]:
    """Intensity-weighted centroid (continuous coords) of img within `radius` of `near`."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    sel = (xx + 0.5 - near[0]) ** 2 + (yy + 0.5 - near[1]) ** 2 <= radius ** 2
    w = img.astype(np.float64) * sel
    return float((w * (xx + 0.5)).sum() / w.sum()), float((w * (yy + 0.5)).sum() / w.sum())


def dots(size, points, sigma=3.0) -> np.ndarray:
    """A black image with a Gaussian dot at each continuous point."""
    yy, xx = np.mgrid[: size[1], : size[0]]
    img = np.zeros((size[1], size[0]), np.float64)
    for x, y in points:
        img += np.exp(-((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2) / (2 * sigma ** 2))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("angle, eye_dist, native", [(0.0, 40.0, 64), (25.0, 60.0, 64), (-40.0, 120.0, 128)])
def test_crop_puts_eyes_where_ffhq_puts_them(angle, eye_dist, native):
    # A detector double's face at a known position, angle and size; dots drawn at its eyes.
    a = math.radians(angle)
    mid = np.array([230.3, 170.8])
    half = 0.5 * eye_dist * np.array([math.cos(a), math.sin(a)])
    left, right = mid - half, mid + half
    img = dots((480, 360), [left, right], sigma=eye_dist / 14)
    region = face_region(Face(box=(0, 0, 1, 1), eyes=(tuple(left), tuple(right))), native)
    assert region.angle == pytest.approx(angle, abs=1e-9)
    assert region.scale == pytest.approx(4 * eye_dist / native, rel=1e-9)  # crop side = 4 eye distances
    crop = extract(img[..., None], region)[..., 0]
    assert crop.shape == (native, native)
    for u in EYE_U:  # the dots land at the canonical eye positions of the crop
        got = blob_centroid(crop, (u * native, EYE_V * native), native * 0.1)
        assert got == pytest.approx((u * native, EYE_V * native), abs=0.35)


def test_extract_reduces_large_photos_without_aliasing():
    # A face spanning ~1000 px shrunk to a 64 px crop: a fine stripe pattern must average to gray, not alias.
    h, w = 1600, 1600
    img = np.zeros((h, w, 3), np.uint8)
    img[:, ::2] = 255  # 1-px stripes
    region = face_region(Face(box=(0, 0, 1, 1), eyes=((550.0, 700.0), (1050.0, 700.0))), 64)
    assert region.scale > 20
    crop = extract(img, region)
    assert abs(crop.astype(float).mean() - 127.5) < 2 and crop.astype(float).std() < 3


def test_box_only_framing_matches_eye_framing_for_a_typical_box():
    box = (100.0, 50.0, 300.0, 250.0)
    by_box = face_region(Face(box), 64)
    x0, y0, x1, y1 = box
    eyes = ((x0 + BOX_EYE_X[0] * 200, y0 + BOX_EYE_Y * 200), (x0 + BOX_EYE_X[1] * 200, y0 + BOX_EYE_Y * 200))
    by_eyes = face_region(Face(box, eyes=eyes), 64)
    np.testing.assert_allclose(by_box.matrix, by_eyes.matrix)
    # the crop is centred on the box horizontally, 4 eye distances wide, and contains the whole box
    c = by_box.to_image([32, 32])
    assert c[0] == pytest.approx(200.0)
    assert by_box.scale * 64 == pytest.approx(4 * (BOX_EYE_X[1] - BOX_EYE_X[0]) * 200)
    corners = by_box.corners()
    assert corners[:, 0].min() < x0 and corners[:, 0].max() > x1 and corners[:, 1].min() < y0 and corners[:, 1].max() > y1


def test_whole_image_region_keeps_aspect_and_multiples():
    r = whole_image_region((4000, 3000), native=512, multiple=64)
    assert r.size == (512, 384)
    np.testing.assert_allclose(r.to_image([[512, 384]]), [[4000, 3000]])


def test_feather_mask_is_zero_on_the_border_and_one_inside():
    m = feather_mask((64, 64), 0.1)
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    assert m[12:52, 12:52].min() == 1.0
    assert np.all(np.diff(m[32, :32]) >= 0)  # monotone ramp


@pytest.mark.parametrize("angle", [0.0, 30.0])
def test_paste_touches_only_the_crop_and_lands_where_it_was_taken(angle):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    a = math.radians(angle)
    mid = np.array([200.0, 150.0])
    half = 12.0 * np.array([math.cos(a), math.sin(a)])
    region = face_region(Face((0, 0, 1, 1), eyes=(tuple(mid - half), tuple(mid + half))), 64)
    # 1. An "edit" with a dot at a known crop position.
    crop = np.zeros((64, 64, 3), np.uint8)
    crop[..., 1] = dots((64, 64), [(40.0, 24.0)], sigma=2.0)
    canvas = photo.copy()
    changed = np.zeros(photo.shape[:2], bool)
    paste(canvas, crop, feather_mask((64, 64), 0.08), region, changed=changed)
    # 2. Pixels outside the crop quad are bit-identical; everything changed lies inside the quad.
    quad = region.corners().astype(np.float32)
    inside = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillConvexPoly(inside, np.round(quad * 16 - 8).astype(np.int32), 1, shift=4)
    assert not changed[inside == 0].any()
    assert np.array_equal(canvas[~changed], photo[~changed])
    assert changed.sum() > 0.6 * inside.sum()
    # 3. The dot, pasted with full weight into a black image, lands at region.to_image(40, 24).
    black = np.zeros_like(photo)
    paste(black, crop, np.ones((64, 64), np.float32), region)
    target = region.to_image([40.0, 24.0])
    got = blob_centroid(black[..., 1], tuple(target), 6 * region.scale)
    assert got == pytest.approx(tuple(target), abs=0.3)



@pytest.mark.parametrize("size", [(4000, 3000), (1000, 333), (700, 700)])
def test_a_whole_image_paste_replaces_every_pixel_up_to_the_border(size):
    """A whole-image edit (weight 1 everywhere) replaces the photo to its last pixel: the weight was blended with
    a zero border outside the crop, so a 12 MP photo kept a frame of its original about 4 px wide (edge pixels at
    143-239 of 255, the corner at 81)."""
    region = whole_image_region(size, native=512, multiple=64)
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    changed = np.zeros(canvas.shape[:2], bool)
    paste(canvas, np.full((*region.size[::-1], 3), 255, np.uint8), np.ones(region.size[::-1], np.float32), region,
          changed=changed)
    assert canvas.min() == 255 and changed.all()


def test_a_rotated_crop_without_feathering_pastes_inside_its_quad_only():
    """Replicating the weight's border inside the crop's footprint must not spread it over the footprint's
    bounding box: a turned crop with weight 1 everywhere (``--feather 0``) changes only pixels on its quad."""
    half = 12.0 * np.array([math.cos(math.radians(30)), math.sin(math.radians(30))])
    region = face_region(Face((0, 0, 1, 1), eyes=(tuple((200, 150) - half), tuple((200, 150) + half))), 64)
    canvas = np.zeros((300, 400, 3), np.uint8)
    paste(canvas, np.full((64, 64, 3), 255, np.uint8), np.ones((64, 64), np.float32), region)
    quad = region.corners().astype(np.float32)
    grown = np.zeros(canvas.shape[:2], np.uint8)  # the quad and the pixels its edge crosses
    cv2.fillConvexPoly(grown, np.round(quad * 16 - 8).astype(np.int32), 1, shift=4)
    grown = cv2.dilate(grown, np.ones((3, 3), np.uint8))
    assert canvas[grown == 0].max() == 0
    inner = cv2.erode(grown, np.ones((5, 5), np.uint8))
    assert canvas[inner == 1].min() == 255 and inner.sum() > 0.8 * (64 * region.scale) ** 2

def test_paste_with_user_mask_changes_only_the_mask():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    region = face_region(Face((0, 0, 1, 1), eyes=((70.0, 60.0), (90.0, 60.0))), 32)
    user = np.zeros(photo.shape[:2], np.float32)
    user[50:70, 60:100] = 1.0
    canvas = photo.copy()
    paste(canvas, np.full((32, 32, 3), 7, np.uint8), np.ones((32, 32), np.float32), region, user)
    assert np.array_equal(canvas[user == 0], photo[user == 0])
    assert (canvas[52:68, 62:98] == 7).all()


# ------------------------------------------------------------------------------------------------------
# The real OpenCV Haar detector on synthetic faces it fires on


@pytest.fixture(scope="module")
def haar():
    return HaarFaceDetector()


@pytest.mark.parametrize("angle, size, centre", [(0.0, 200, (420.0, 260.0)), (12.0, 260, (300.0, 330.0)),
                                                 (-15.0, 160, (520.0, 200.0))])
def test_haar_finds_face_and_eyes_at_known_position_and_angle(haar, angle, size, centre):
    rng = np.random.default_rng(2)
    photo = np.clip(rng.normal(200, 6, (520, 760, 3)), 0, 255).astype(np.uint8)
    true_left, true_right = place_face(photo, centre, size, angle)
    faces = haar.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1
    assert 0.6 * size < x1 - x0 < 1.3 * size
    assert face.eyes is not None
    eye_dist = math.dist(true_left, true_right)
    assert math.dist(face.eyes[0], true_left) < 0.15 * eye_dist
    assert math.dist(face.eyes[1], true_right) < 0.15 * eye_dist
    assert face.angle == pytest.approx(angle, abs=5.0)
    # The aligned crop lands where expected: its eye positions map back near the true eyes.
    region = face_region(face, 64)
    for u, true in zip(EYE_U, (true_left, true_right)):
        assert math.dist(region.to_image([u * 64, EYE_V * 64]), true) < 0.15 * eye_dist


def test_haar_on_a_large_photo_reports_full_resolution_coordinates(haar):
    photo = np.full((2400, 3200, 3), 200, np.uint8)
    true_left, true_right = place_face(photo, (2000.0, 1100.0), 800, 0.0)
    faces = haar.detect(photo)
    assert len(faces) == 1 and faces[0].eyes is not None
    assert math.dist(faces[0].eyes[0], true_left) < 0.15 * math.dist(true_left, true_right)


def test_haar_returns_nothing_on_noise_and_flat_images(haar):
    rng = np.random.default_rng(3)
    assert haar.detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    assert haar.detect(np.full((240, 320, 3), 90, np.uint8)) == []


def test_haar_boxes_are_well_formed_on_a_photo(haar):
    skdata = pytest.importorskip("skimage.data")
    photo = skdata.astronaut()  # a real portrait shipped inside scikit-image (no download)
    faces = haar.detect(photo)
    assert len(faces) >= 1
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= photo.shape[1] and 0 <= y0 < y1 <= photo.shape[0]
    # The astronaut's face is around (225, 115); her eyes are found and roughly level.
    x0, y0, x1, y1 = faces[0].box
    assert x0 < 225 < x1 and y0 < 115 < y1
    assert faces[0].eyes is not None and abs(faces[0].angle) < 15
