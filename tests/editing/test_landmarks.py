"""Landmarks given with a photo (``--landmarks``): the mini world's face photos go through the same detect -> align
-> edit -> paste path as real photos, with the renderer's exact landmarks in place of a detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("cv2")

from editing.align import extract, face_region  # noqa: E402
from editing.faces import GivenLandmarks, faces_from_landmarks, read_landmarks  # noqa: E402
from suite.miniworld import faces as F  # noqa: E402


def test_the_edit_crop_of_a_face_photo_is_the_face_domains_framing():
    """FFHQ's alignment from the photo's exact landmarks crops the face exactly as the face domain's training
    photos frame it (:func:`suite.miniworld.faces.aligned_cameras`): the crop matches a direct render of the aligned
    view on the face's pixels."""
    rng = np.random.default_rng(2)
    face = F.Face(skin="fair", hair_colour="black", smiling=True, params={"width": 1.0, "height": 1.0,
                                                                          "hat_colour": "red"})
    rgb, points, view = F.face_photo(face, rng, size=192, face_width=80)
    (found,) = GivenLandmarks(faces_from_landmarks([points])).detect(rgb)
    crop = extract(rgb, face_region(found, 64)).astype(np.float64) / 255
    cams = F.aligned_cameras(face, view["elevation"], view["azimuth"], 3.8, view["fovy"])
    ref = F.render_face(face, cams, size=64, look="photo")
    on_face = ref.mask[0].numpy()
    on_face[:4], on_face[-4:], on_face[:, :4], on_face[:, -4:] = False, False, False, False
    err = np.abs(crop - ref.rgb[0].permute(1, 2, 0).numpy())[on_face].mean()
    assert on_face.mean() > 0.4 and err < 0.035, err
    shifted = np.abs(np.roll(crop, 3, axis=1) - ref.rgb[0].permute(1, 2, 0).numpy())[on_face].mean()
    assert shifted > 2 * err  # the bound would catch a framing 3 px off


def test_landmark_files_give_one_sentence_for_each_mistake(tmp_path):
    good = {"eye_left": [40, 50], "eye_right": [60, 50], "mouth_left": [43, 72], "mouth_right": [57, 72]}
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"faces": [good, {**good, "eye_left": [140, 150], "eye_right": [200, 150],
                                                 "mouth_left": [150, 210], "mouth_right": [190, 210]}]}))
    faces = read_landmarks(path).detect(np.zeros((300, 300, 3), np.uint8))
    assert len(faces) == 2 and faces[0].box[2] - faces[0].box[0] > faces[1].box[2] - faces[1].box[0]  # largest first
    assert np.allclose(faces[1].mouth_point(), [50, 72])
    with pytest.raises(ValueError, match="outside the 100x100 photo"):
        read_landmarks(path).detect(np.zeros((100, 100, 3), np.uint8))
    cases = {
        "does not exist": None,
        "is not JSON": "{faces",
        "has no faces": json.dumps({"faces": []}),
        "lacks mouth_left, mouth_right": json.dumps({"faces": [{"eye_left": [1, 2], "eye_right": [5, 2]}]}),
        "must be a point": json.dumps({"faces": [{**good, "eye_left": "here"}]}),
        "has 5 points": json.dumps({"faces": [[[1, 2]] * 5]}),
        "both eyes at the same point": json.dumps({"faces": [{**good, "eye_right": [40, 50]}]}),
        "swap them": json.dumps({"faces": [{**good, "eye_left": [60, 50], "eye_right": [40, 50]}]}),
        "must be a point.*'12'": json.dumps({"faces": [{**good, "mouth_left": "12"}]}),
    }
    for message, text in cases.items():
        p = tmp_path / "case.json"
        p.unlink(missing_ok=True)
        if text is not None:
            p.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_landmarks(p)


def test_68_points_give_ffhqs_eyes_and_mouth():
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48] = [30, 40], [50, 40]
    lm[48], lm[54] = [34, 60], [46, 60]
    (face,) = faces_from_landmarks([lm.tolist()])
    left, right = face.eye_points()
    assert np.allclose(left, [30, 40]) and np.allclose(right, [50, 40]) and np.allclose(face.mouth_point(), [40, 60])
    x0, y0, x1, y1 = face.box  # a square of twice the eye distance around FFHQ's crop centre
    assert np.isclose(x1 - x0, 40) and np.isclose(y1 - y0, 40) and np.isclose((x0 + x1) / 2, 40)


def test_landmarks_frame_faces_only(pipe):
    """Landmarks belong to the face framing: with the whole photo (or an animal's) they are refused in one
    sentence rather than silently ignored."""
    from PIL import Image

    from editing.edit import edit_photo

    good = {"eye_left": [20, 25], "eye_right": [36, 25], "mouth_left": [23, 42], "mouth_right": [33, 42]}
    detector = GivenLandmarks(faces_from_landmarks([good]))
    photo = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    for framing in ("whole", "animal"):
        with pytest.raises(ValueError, match=f"framing is '{framing}'"):
            edit_photo(pipe, photo, framing=framing, detector=detector, steps=2)
    out = edit_photo(pipe, photo, framing="face", detector=detector, steps=1, strength=1.0)
    assert out.face_boxes == [detector.faces[0].box]


def test_a_landmarks_path_with_a_tilde_and_a_byte_order_mark_is_read(tmp_path, monkeypatch):
    """``--landmarks ~/...`` was taken literally (``--image``, ``--mask`` and ``--output`` expand it), and a file saved
    with a UTF-8 byte-order mark (as Windows editors do) was refused as "not JSON"."""
    import json

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lm").mkdir()
    record = {"faces": [{"eye_left": [100, 80], "eye_right": [140, 80], "mouth_left": [107, 120],
                         "mouth_right": [133, 120]}]}
    (tmp_path / "lm" / "face.landmarks.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode())
    faces = read_landmarks("~/lm/face.landmarks.json").detect(np.zeros((300, 300, 3), np.uint8))
    assert len(faces) == 1 and faces[0].eyes == ((100.0, 80.0), (140.0, 80.0))
