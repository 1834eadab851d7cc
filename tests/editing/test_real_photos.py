"""Editing real photographs (issue 14): FFHQ's own alignment recipe, dlib's detector and landmarks (when installed),
the Haar fallback (always), cat faces for the animal domain, and the bad photos a user brings.

The photos ship inside scikit-image (``skimage.data``). Positions marked by hand, looking at the photos:
* astronaut (Eileen Collins, 512x512, frontal): eye centres at about (202, 100) and (247, 102), the mouth's centre
  at about (224, 143);
* camera (the cameraman, 512x512, his face turned partly away, towards the camera): the face's centre at about
  (222, 160), the visible eye at about (237, 147);
* chelsea (a cat, 451x300, a close-up): the eyes at about (172, 115) and (318, 137), the nose at (265, 240); the
  face's centre at about (245, 160).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) ships the real photos")

from editing.align import animal_region, face_region, ffhq_quad  # noqa: E402
from editing.faces import CatFaceDetector, Face, HaarFaceDetector, detector_for, dlib_available  # noqa: E402

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib is not installed (pip install "
                                                             "'in-domain-suite[faces]')")

ASTRONAUT_EYES = ((202, 100), (247, 102))
ASTRONAUT_MOUTH = (224, 143)
CAMERA_FACE, CAMERA_EYE = (222, 160), (237, 147)
CAT_FACE = (245, 160)


def _rgb(name: str) -> np.ndarray:
    img = getattr(data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])


def _dist(a, b) -> float:
    return float(np.hypot(*(np.asarray(a, float) - np.asarray(b, float))))


# ------------------------------------------------------------------------------------------------ alignment
def test_the_quad_is_ffhqs_recipe_on_given_landmarks():
    """FFHQ's ``recreate_aligned_images`` written out here from the published script, on landmarks chosen by the
    test (a tilted face), against :func:`ffhq_quad` and the crop's corners."""
    rng = np.random.default_rng(3)
    lm = np.zeros((68, 2))
    lm[36:42] = np.array([300.0, 400.0]) + rng.normal(0, 3, (6, 2))   # image-left eye
    lm[42:48] = np.array([420.0, 380.0]) + rng.normal(0, 3, (6, 2))   # image-right eye (tilted)
    lm[48], lm[54] = (330.0, 520.0), (420.0, 505.0)                   # mouth corners
    # the script, line by line
    eye_left, eye_right = np.mean(lm[36:42], axis=0), np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2

    c2, x2, y2 = ffhq_quad(eye_left, eye_right, mouth_avg)
    assert np.allclose([c2, x2, y2], [c, x, y])
    face = Face((250, 330, 470, 560), landmarks=tuple(map(tuple, lm)))
    region = face_region(face, 512)
    corners = region.corners()  # crop (0,0), (w,0), (w,h), (0,h)
    assert np.allclose(corners[[0, 3, 2, 1]], quad, atol=1e-9)
    assert region.scale == pytest.approx(qsize / 512)


def test_animal_framing_is_an_upright_square_around_the_box():
    region = animal_region(Face((100, 50, 300, 210)), 256)
    c = region.corners()
    assert region.angle == 0 and np.allclose(c.mean(0), (200, 130))
    assert c[1, 0] - c[0, 0] == pytest.approx(1.15 * 200)


# ------------------------------------------------------------------------------------------------ detection
@needs_dlib
def test_dlib_finds_the_frontal_portrait_and_its_landmarks_where_a_person_marks_them():
    from editing.faces import DlibFaceDetector

    faces = DlibFaceDetector().detect(_rgb("astronaut"))
    assert len(faces) == 1  # no false positive
    el, er = faces[0].eye_points()
    assert _dist(el, ASTRONAUT_EYES[0]) < 6 and _dist(er, ASTRONAUT_EYES[1]) < 6
    assert _dist(faces[0].mouth_point(), ASTRONAUT_MOUTH) < 8



@needs_dlib
@pytest.mark.parametrize("shape", [(8, 8, 3), (10, 4000, 3), (1, 1, 3)])
def test_dlib_finds_no_face_in_a_tiny_or_thin_image_instead_of_failing(shape):
    """dlib's CNN raised "Filter windows must be small enough to fit into the padded image" on an image whose side,
    as the detector sees it, is under about 10 px; the edit then ended in a traceback, not "no face was found"."""
    from editing.faces import DlibFaceDetector

    assert DlibFaceDetector().detect(np.full(shape, 128, np.uint8)) == []


@needs_dlib
def test_dlib_finds_a_face_turned_partly_away_that_haar_misses():
    from editing.faces import DlibFaceDetector

    rgb = _rgb("camera")
    assert HaarFaceDetector().detect(rgb) == []  # today's detector
    det = DlibFaceDetector()
    faces = det.detect(rgb)
    assert len(faces) == 1 and det.last_detector == "cnn"
    x0, y0, x1, y1 = faces[0].box
    assert _dist(((x0 + x1) / 2, (y0 + y1) / 2), CAMERA_FACE) < 20
    assert _dist(faces[0].eye_points()[1], CAMERA_EYE) < 10


def test_without_dlib_the_haar_fallback_finds_the_portrait(monkeypatch, caplog):
    import editing.faces as faces_mod

    monkeypatch.setattr(faces_mod, "dlib_available", lambda: False)
    detector_for.cache_clear()  # detectors are built once per process; build this one without dlib
    try:
        with caplog.at_level("INFO", logger="editing"):
            det = detector_for("face")
    finally:
        detector_for.cache_clear()
    assert isinstance(det, HaarFaceDetector)
    assert "dlib is not installed" in caplog.text
    faces = det.detect(_rgb("astronaut"))
    el, er = faces[0].eye_points()
    assert _dist(el, ASTRONAUT_EYES[0]) < 8 and _dist(er, ASTRONAUT_EYES[1]) < 8


def test_a_box_seen_at_one_scale_loses_to_one_that_scales_agree_on():
    """The cat cascades fire on parts of a face and on clutter: a larger box seen at one scale only is dropped when
    another box is agreed on by two scales (editing takes the largest face, so ranking alone would not do)."""
    from editing.faces import _merge

    agreed = [Face((100.0, 100.0, 200.0, 200.0)), Face((102.0, 101.0, 201.0, 202.0))]
    lone = Face((250.0, 0.0, 550.0, 300.0))
    assert [f.score for f in _merge([lone, *agreed])] == [2.0]
    assert _merge([lone]) == [Face(lone.box, score=1.0)]  # with nothing agreed on, a lone box is all there is


def test_the_cat_face_is_found_and_a_person_is_not_a_cat():
    det = detector_for("animal")
    assert isinstance(det, CatFaceDetector)
    faces = det.detect(_rgb("chelsea"))
    x0, y0, x1, y1 = faces[0].box
    assert _dist(((x0 + x1) / 2, (y0 + y1) / 2), CAT_FACE) < 40
    assert x1 - x0 > 250  # the whole face, not the nose and mouth
    assert det.detect(_rgb("astronaut")) == []


# ------------------------------------------------------------------------------------------------ editing
def _edit(pipe, rgb, **kw):
    from PIL import Image

    from editing import edit_photo

    return edit_photo(pipe, Image.fromarray(rgb), prompt="", strength=0.6, steps=2, seed=0, **kw)


def test_the_edit_changes_only_pixels_near_the_face(tiny_pipe):
    rgb = _rgb("astronaut")
    out = _edit(tiny_pipe, rgb, framing="face")
    changed = np.any(np.asarray(out.images[0]) != rgb, axis=2)
    ys, xs = np.nonzero(changed)
    corners = out.regions[0].corners()
    assert changed.any()
    assert xs.min() >= corners[:, 0].min() - 2 and xs.max() <= corners[:, 0].max() + 2
    assert ys.min() >= corners[:, 1].min() - 2 and ys.max() <= corners[:, 1].max() + 2
    centre = corners.mean(0)
    assert _dist(centre, np.mean(ASTRONAUT_EYES, axis=0) + [0, 20]) < 25  # the crop sits on the face
    assert changed[400:, :].sum() == 0 and changed[:, :100].sum() == 0  # the suit and the flag are untouched


def test_the_animal_domain_edits_the_cat_face(tiny_pipe):
    out = _edit(tiny_pipe, _rgb("chelsea"), framing="animal")
    c = out.regions[0].corners().mean(0)
    assert _dist(c, CAT_FACE) < 40


def test_bad_photos_are_one_sentence(tiny_pipe):
    rgb = _rgb("astronaut")

    class Tiny:  # the only face is far smaller than the crop it would be upscaled into (64 px at 512)
        def detect(self, img):
            return [Face((100, 100, 105, 105))]

    native = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    with pytest.raises(ValueError, match=rf"only 5 px wide, under {min(64, native // 8)} px: .*--whole-image"):
        _edit(tiny_pipe, rgb, framing="face", detector=Tiny())
    turned = np.ascontiguousarray(np.rot90(rgb, 1))  # the photo lost its EXIF rotation
    with pytest.raises(ValueError, match="turned 90 degrees clockwise: its EXIF orientation was probably lost"):
        _edit(tiny_pipe, turned, framing="face", detector=HaarFaceDetector())
    with pytest.raises(ValueError, match="no animal face was found.*--whole-image"):
        _edit(tiny_pipe, rgb, framing="animal")


def test_a_face_cut_by_the_border_is_edited_inside_the_photo(tiny_pipe):
    """The face's left half is outside the photo: the crop is padded by reflection, and only pixels of the photo
    are written back (the output keeps the photo's size)."""
    rgb = np.ascontiguousarray(_rgb("astronaut")[:, 200:])  # cuts through the left eye
    face = Face((0, 66, 72, 161), eyes=((1.0, 100.0), (47.0, 103.0)))

    class Fixed:
        def detect(self, img):
            return [face]

    out = _edit(tiny_pipe, rgb, framing="face", detector=Fixed())
    assert out.images[0].size == (rgb.shape[1], rgb.shape[0])
    assert out.regions[0].corners()[:, 0].min() < 0  # the crop reached outside the photo
