"""Face detection, offline: dlib's detectors and 68 facial landmarks when dlib is installed (the landmarks FFHQ
was aligned with), OpenCV 4.x Haar cascades otherwise, and OpenCV's cat-face cascades for animal faces.

* :class:`DlibFaceDetector` (``pip install 'in-domain-suite[faces]'``: ``dlib-bin`` and ``face-recognition-models``,
  which ships ``shape_predictor_68_face_landmarks.dat`` and the CNN detector's weights): dlib's HOG detector
  first (fast), and where it finds nothing its CNN detector (which finds faces turned partly away). Each face
  gets the 68 landmarks; a detection whose landmarks are not a plausible face (eyes side by side, the mouth below
  them at a face's proportions) is dropped. The 68-landmark model was trained on the iBUG 300-W data, whose
  terms exclude commercial use.
* :class:`HaarFaceDetector`: the fallback without dlib (no mouth landmark: the alignment estimates it).
* :class:`CatFaceDetector`: OpenCV's ``haarcascade_frontalcatface*.xml`` for the animal domain.

:func:`detector_for` picks one for a domain's framing. The detector is pluggable: anything with ``detect(rgb) -> list[Face]`` (the :class:`FaceDetector`
protocol) can replace :class:`HaarFaceDetector`, e.g. a landmark detector you have weights for, or a test
double at a known box and angle.

:class:`HaarFaceDetector` finds frontal faces on a downscaled gray copy of the photo (so a 12 MP photo costs
no more than a 1 MP one), then looks for the two eyes (``haarcascade_eye``) inside each face box at full
resolution. Eyes give the roll angle and scale for the alignment (:mod:`editing.align`); without them the
framing is derived from the box alone.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from suite.extras import install_command

Point = tuple[float, float]

#: Where the eyes sit in an OpenCV frontal-face box, as fractions of its width/height (box-only framing;
#: measured on scikit-image's astronaut portrait: eyes at 0.25 / 0.74 of the width, 0.36-0.39 of the height).
BOX_EYE_X = (0.27, 0.73)
BOX_EYE_Y = 0.38


@dataclass(frozen=True)
class Face:
    """A detected face in image pixel coordinates (x right, y down; pixel ``(i, j)`` covers ``[i, i+1)``).

    ``box``: ``(x0, y0, x1, y1)``. ``eyes``: ``(left, right)`` eye centres as seen in the image (left = smaller
    x), or None when they were not found (the alignment then uses :meth:`eye_points`' estimate from the box).
    """

    box: tuple[float, float, float, float]
    eyes: tuple[Point, Point] | None = None
    score: float = 1.0
    landmarks: tuple[Point, ...] | None = None  # dlib's 68 points (iBUG 300-W order), image coordinates
    mouth: Point | None = None  # the mouth's centre when known without the 68 points (given landmarks)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def eye_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The eyes: the mean of each eye's six landmarks (as FFHQ), else detected, else estimated from the box
        (:data:`BOX_EYE_X`, :data:`BOX_EYE_Y`)."""
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, np.float64)
            return lm[36:42].mean(0), lm[42:48].mean(0)
        if self.eyes is not None:
            return np.asarray(self.eyes[0], np.float64), np.asarray(self.eyes[1], np.float64)
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        y = y0 + BOX_EYE_Y * h
        return np.array([x0 + BOX_EYE_X[0] * w, y]), np.array([x0 + BOX_EYE_X[1] * w, y])

    @property
    def angle(self) -> float:
        """Roll in degrees: the angle of the line from the left to the right eye (positive = clockwise on screen,
        since y points down). 0 without detected eyes."""
        left, right = self.eye_points()
        return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))

    def mouth_point(self) -> np.ndarray | None:
        """The mouth's centre as FFHQ takes it (the mean of the two mouth corners, landmarks 48 and 54), or None
        without landmarks."""
        if self.landmarks is None:
            return None if self.mouth is None else np.asarray(self.mouth, np.float64)
        lm = np.asarray(self.landmarks, np.float64)
        return (lm[48] + lm[54]) * 0.5


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an ``[H, W, 3]`` uint8 RGB array; returns them in that array's pixel coordinates."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class HaarFaceDetector:
    """OpenCV Haar cascades (frontal face + eyes), offline, from the opencv-python(-headless) 4.x wheel.

    ``max_side``: faces are searched on a copy whose longer side is at most this many pixels.
    ``min_face``: smallest face searched, as a fraction of the copy's shorter side.
    ``scale_factor`` / ``min_neighbors``: OpenCV's ``detectMultiScale`` parameters (higher neighbours = fewer
    false detections).
    """

    def __init__(self, max_side: int = 1024, min_face: float = 0.04, scale_factor: float = 1.1,
                 min_neighbors: int = 5, find_eyes: bool = True):
        cv2 = _cv2()
        self.face_cascade = _cascade(cv2, "haarcascade_frontalface_default.xml")
        self.eye_cascade = _cascade(cv2, "haarcascade_eye.xml") if find_eyes else None
        self.max_side, self.min_face = int(max_side), float(min_face)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        # 1. A small gray copy: detection cost does not grow with the photo's megapixels.
        h, w = rgb.shape[:2]
        small, _ = _downscaled(rgb, self.max_side)
        gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
        # 2. Faces on the copy (as is, then with equalised contrast for dim photos), mapped back to full size.
        min_side = max(20, int(self.min_face * min(gray.shape)))
        boxes = _detect_plain_then_equalised(self.face_cascade, gray, scaleFactor=self.scale_factor,
                                             minNeighbors=self.min_neighbors, minSize=(min_side, min_side))
        sx, sy = w / small.shape[1], h / small.shape[0]
        faces = []
        for x, y, bw, bh in (boxes if len(boxes) else []):
            box = (float(x * sx), float(y * sy), float((x + bw) * sx), float((y + bh) * sy))
            # 3. Eyes at full resolution inside the box (they set the roll angle and the scale).
            eyes = self.find_eyes(rgb, box) if self.eye_cascade is not None else None
            faces.append(Face(box, eyes))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def find_eyes(self, rgb: np.ndarray, box) -> tuple[Point, Point] | None:
        """The most plausible pair of eyes in the upper part of ``box``, or None."""
        cv2 = _cv2()
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, rgb.shape[1]), min(y1, rgb.shape[0])
        bw, bh = x1 - x0, y1 - y0
        if bw < 16 or bh < 16:
            return None
        roi = rgb[y0:y0 + int(0.62 * bh), x0:x1]
        k = 200.0 / bw  # eyes are searched on the face box scaled to 200 px wide
        roi = cv2.resize(np.ascontiguousarray(roi), (200, max(1, round(roi.shape[0] * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        gray = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY)
        found = _detect_plain_then_equalised(self.eye_cascade, gray, scaleFactor=1.1, minNeighbors=3,
                                             minSize=(20, 20), maxSize=(90, 90))
        centres = [((ex + ew / 2) / 200.0, (ey + eh / 2) / 200.0) for ex, ey, ew, eh in (found if len(found) else [])]
        best, best_cost = None, math.inf
        for lx, ly in centres:  # fractions of the box width
            for rx, ry in centres:
                if not (lx < 0.5 < rx):
                    continue
                dist = math.hypot(rx - lx, ry - ly)
                tilt = abs(math.degrees(math.atan2(ry - ly, rx - lx)))
                if not (0.2 <= dist <= 0.7) or tilt > 35:
                    continue
                cost = abs(dist - (BOX_EYE_X[1] - BOX_EYE_X[0])) + abs((lx + rx) / 2 - 0.5) + abs((ly + ry) / 2 - BOX_EYE_Y)
                if cost < best_cost:
                    best, best_cost = ((lx, ly), (rx, ry)), cost
        if best is None:
            return None
        return tuple((x0 + fx * bw, y0 + fy * bw) for fx, fy in best)


def _detect_plain_then_equalised(cascade, gray: np.ndarray, **kwargs):
    """``detectMultiScale`` on the gray image; if nothing is found, once more after histogram equalisation
    (helps dim or low-contrast photos; hurts flat synthetic ones, hence not first)."""
    found = cascade.detectMultiScale(gray, **kwargs)
    if len(found) == 0:
        found = cascade.detectMultiScale(_cv2().equalizeHist(gray), **kwargs)
    return found


def _cv2():
    from suite.extras import load

    return load("cv2", "face detection")


MIN_DETECT_SIDE = 20
"""Pixels: an image (as the detector sees it, after :func:`_downscaled`) narrower than this holds no face dlib can
find (its smallest is about 40 px), and dlib's CNN fails on one under about 10 px ("Filter windows must be small
enough to fit into the padded image")."""


def _downscaled(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``(copy, s)``: ``rgb`` area-averaged so that its longer side is at most ``max_side`` (``s`` <= 1; the image
    itself when it is small enough), so detection cost does not grow with the photo's megapixels."""
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1:
        return rgb, 1.0
    cv2 = _cv2()
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


def _cascade(cv2, name: str):
    """One of the Haar cascades shipped in OpenCV 4's wheel, or one sentence naming the fix."""
    import os

    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not root:
        raise ValueError("this OpenCV build carries no Haar cascade files (OpenCV 5 dropped them): "
                         f"pip install 'opencv-python-headless<5' ({install_command('edit')})")
    path = os.path.join(root, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ValueError(f"the OpenCV cascade {path!r} could not be loaded: reinstall opencv-python-headless<5")
    return cascade


# ----------------------------------------------------------------------------------------------------------
# dlib: HOG, then CNN where HOG finds nothing; 68 landmarks; plausibility
def dlib_available() -> bool:
    """dlib and the landmark / CNN models (``pip install 'in-domain-suite[faces]'``) are importable."""
    try:
        import dlib  # noqa: F401

        return _dlib_model_dir() is not None
    except ImportError:
        return False


def _dlib_model_dir():
    """The folder of ``face-recognition-models`` (found without importing it: it needs ``pkg_resources``)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    return folder if os.path.isfile(os.path.join(folder, "shape_predictor_68_face_landmarks.dat")) else None


def plausible_landmarks(lm: np.ndarray) -> bool:
    """A face's 68 landmarks, not a false detection: the eyes side by side (tilt under 45 degrees), the mouth
    below them at a face's distance (0.6 to 1.8 eye distances), the eyes inside the box's width."""
    el, er = lm[36:42].mean(0), lm[42:48].mean(0)
    mouth = (lm[48] + lm[54]) * 0.5
    e2e = er - el
    d = float(np.hypot(*e2e))
    if d < 1e-6 or abs(math.degrees(math.atan2(e2e[1], e2e[0]))) > 45:
        return False
    down = np.array([-e2e[1], e2e[0]]) / d  # the eye line turned 90 degrees towards the chin
    e2m = mouth - (el + er) * 0.5
    along = float(e2m @ down)
    return 0.6 * d <= along <= 1.8 * d and abs(float(e2m @ (e2e / d))) < 0.6 * d


class DlibFaceDetector:
    """dlib: HOG on a copy whose longer side is at most ``max_side``; where it finds nothing, the CNN (mmod)
    detector on a copy of at most ``cnn_max_side`` (it costs seconds on a CPU); the 68 landmarks at full
    resolution. False positives are controlled twice: a detection must score at least ``min_score`` (HOG's
    margin / the CNN's confidence; on scikit-image's astronaut the face scores 1.2 and HOG's false positive on her
    suit 0.12), and its landmarks must be a plausible face (:func:`plausible_landmarks`). Where neither finds a face,
    ``fallback`` (the Haar detector, by :func:`detector_for`) has the last word. Faces largest first."""

    def __init__(self, max_side: int = 1024, cnn_max_side: int = 640, use_cnn: bool = True,
                 fallback: FaceDetector | None = None, min_score: float = 0.5):
        import os

        import dlib

        folder = _dlib_model_dir()
        if folder is None:
            raise ValueError("dlib's landmark model is missing: pip install face-recognition-models (or "
                             "'in-domain-suite[faces]')")
        self.hog = dlib.get_frontal_face_detector()
        self.cnn = dlib.cnn_face_detection_model_v1(os.path.join(folder, "mmod_human_face_detector.dat")) \
            if use_cnn else None
        self.predictor = dlib.shape_predictor(os.path.join(folder, "shape_predictor_68_face_landmarks.dat"))
        self.max_side, self.cnn_max_side = int(max_side), int(cnn_max_side)
        self.fallback = fallback
        self.min_score = float(min_score)
        self.last_detector = None  # "hog", "cnn" or "fallback": which one found the faces of the last call
        self.last_timings = {"detect": 0.0, "landmarks": 0.0}  # seconds of the last call

    def _boxes(self, rgb: np.ndarray, max_side: int, detect) -> list[tuple[float, float, float, float, float]]:
        small, s = _downscaled(rgb, max_side)
        if min(small.shape[:2]) < MIN_DETECT_SIDE:  # no face to find, and dlib's CNN raises on it
            return []
        return [(r[0] / s, r[1] / s, r[2] / s, r[3] / s, r[4]) for r in detect(np.ascontiguousarray(small))]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import dlib

        def hog(img):
            rects, scores, _ = self.hog.run(img, 1, 0.0)
            return [(r.left(), r.top(), r.right(), r.bottom(), float(sc)) for r, sc in zip(rects, scores)
                    if sc >= self.min_score]

        def cnn(img):
            return [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), float(d.confidence))
                    for d in self.cnn(img, 0) if d.confidence >= self.min_score]

        import time

        rgb = np.ascontiguousarray(rgb)
        self.last_timings = {"detect": 0.0, "landmarks": 0.0}
        t = time.perf_counter()
        boxes = self._boxes(rgb, self.max_side, hog)
        self.last_timings["detect"] += time.perf_counter() - t
        faces = self._faces(rgb, boxes, dlib)
        self.last_detector = "hog"
        if not faces and self.cnn is not None:
            t = time.perf_counter()
            boxes = self._boxes(rgb, self.cnn_max_side, cnn)
            self.last_timings["detect"] += time.perf_counter() - t
            faces = self._faces(rgb, boxes, dlib)
            self.last_detector = "cnn"
        if not faces and self.fallback is not None:  # e.g. a drawing: Haar's eyes, no landmarks
            faces = self.fallback.detect(rgb)
            self.last_detector = "fallback"
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def _faces(self, rgb, boxes, dlib) -> list[Face]:
        import time

        t = time.perf_counter()
        faces = []
        for x0, y0, x1, y1, score in boxes:
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
            shape = self.predictor(rgb, rect)
            lm = np.array([(p.x + 0.5, p.y + 0.5) for p in shape.parts()], np.float64)  # pixel centres
            if plausible_landmarks(lm):
                faces.append(Face((float(x0), float(y0), float(x1), float(y1)), None, score,
                                  tuple(map(tuple, lm.tolist()))))
        self.last_timings["landmarks"] += time.perf_counter() - t
        return faces


# ----------------------------------------------------------------------------------------------------------
# cat faces (the animal domain)
class CatFaceDetector:
    """OpenCV's cat-face cascades (``haarcascade_frontalcatface_extended.xml``, then ``..._frontalcatface.xml``).

    They are trained on cat faces seen in context, so a close-up (a face that fills the photo, the usual AFHQ-like
    framing) is searched on a copy with a replicated border of ``pad`` times its size around it, at many scales
    (the cascades are sensitive to the exact scale); boxes are clipped to the photo and overlapping ones merged.
    A cascade also fires on parts of a face (the nose and mouth look like a small face), so when at least two
    scales agree on some box, only such boxes are kept (largest first); boxes seen at one scale are returned only
    when no box is agreed on (no eyes: the animal framing uses the box)."""

    def __init__(self, pad: float = 0.5, sides=tuple(range(200, 481, 20)), min_neighbors: int = 3):
        cv2 = _cv2()
        self.cascades = [_cascade(cv2, n) for n in ("haarcascade_frontalcatface_extended.xml",
                                                    "haarcascade_frontalcatface.xml")]
        self.pad, self.sides, self.min_neighbors = float(pad), tuple(sides), int(min_neighbors)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        h, w = rgb.shape[:2]
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        p = int(self.pad * max(h, w))
        big = cv2.copyMakeBorder(gray, p, p, p, p, cv2.BORDER_REPLICATE)
        found = []
        for cascade in self.cascades:
            for side in self.sides:
                s = min(1.0, side / max(big.shape))
                small = cv2.resize(big, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else big
                for x, y, bw, bh in cascade.detectMultiScale(small, scaleFactor=1.05, minNeighbors=self.min_neighbors,
                                                             minSize=(24, 24)):
                    box = (max(x / s - p, 0.0), max(y / s - p, 0.0), min((x + bw) / s - p, w), min((y + bh) / s - p, h))
                    if box[2] - box[0] > 8 and box[3] - box[1] > 8:
                        found.append(Face(tuple(float(v) for v in box)))
            if found:
                break
        return _merge(found)


def _merge(faces: list[Face], iou: float = 0.4) -> list[Face]:
    """Overlapping boxes (the same face found at several scales) become their mean, ``score`` = how many. When some
    box was found at least twice, the boxes found once are dropped (a one-scale box beside an agreed one is a false
    positive, and callers take the largest face); largest first."""
    groups: list[list[Face]] = []
    for f in sorted(faces, key=lambda f: f.area, reverse=True):
        for g in groups:
            if _iou(g[0].box, f.box) > iou:
                g.append(f)
                break
        else:
            groups.append([f])
    merged = [Face(tuple(float(np.mean([f.box[i] for f in g])) for i in range(4)), score=float(len(g)))
              for g in groups]
    if any(f.score >= 2 for f in merged):
        merged = [f for f in merged if f.score >= 2]
    merged = sorted(merged, key=lambda f: f.area, reverse=True)
    kept: list[Face] = []
    for f in merged:  # a part of a face already kept (the nose and mouth of a close-up) is not another face
        if all(_inside(f.box, k.box) < 0.8 for k in kept):
            kept.append(f)
    return kept


def _inside(a, b) -> float:
    """The fraction of box ``a`` that lies inside box ``b``."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return ix * iy / area if area > 0 else 1.0


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------
# landmarks given with the photo (another detector's, or a renderer's exact ones)
LANDMARK_KEYS = ("eye_left", "eye_right", "mouth_left", "mouth_right")


class GivenLandmarks:
    """A :class:`FaceDetector` that returns faces whose landmarks were found elsewhere: read from a JSON file by
    :func:`read_landmarks` (``--landmarks``). The alignment is FFHQ's, from those eyes and mouth corners."""

    def __init__(self, faces: list[Face]):
        self.faces = list(faces)

    def check_size(self, w: int, h: int) -> None:
        """One sentence when a face's points lie outside a ``w`` x ``h`` photo (a file for another photo)."""
        for i, f in enumerate(self.faces):
            pts = np.array([*f.eye_points(), f.mouth_point()])
            if (pts < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] > h).any():
                raise ValueError(f"face {i + 1} of the landmarks file lies outside the {w}x{h} photo: the file "
                                 f"belongs to another photo (or to this one at another size or orientation)")

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.check_size(rgb.shape[1], rgb.shape[0])
        return sorted(self.faces, key=lambda f: f.area, reverse=True)


def _point(value, where: str) -> Point:
    ok = isinstance(value, list | tuple) and len(value) == 2 and \
        all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ValueError(f"{where} must be a point [x, y] in pixels, got {value!r}")
    x, y = float(value[0]), float(value[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return x, y


def faces_from_landmarks(items) -> list[Face]:
    """Faces from landmark records: each a dict with ``eye_left``, ``eye_right``, ``mouth_left``, ``mouth_right``
    (``[x, y]`` in photo pixels, x right, y down; "left" = smaller x), or a list of dlib's 68 points (iBUG 300-W
    order). Each face's box is the square of side ``2 |eye_right - eye_left|`` around FFHQ's crop centre."""
    from suite.alignment import ffhq_quad

    if not isinstance(items, list) or not items:
        raise ValueError("the landmarks file has no faces: give {\"faces\": [{\"eye_left\": [x, y], \"eye_right\": "
                         "[x, y], \"mouth_left\": [x, y], \"mouth_right\": [x, y]}, ...]}")
    faces = []
    for i, item in enumerate(items):
        where = f"face {i + 1} of the landmarks file"
        if isinstance(item, list):
            if len(item) != 68:
                raise ValueError(f"{where} has {len(item)} points: give dlib's 68 (iBUG 300-W order) or a dict with "
                                 f"{', '.join(LANDMARK_KEYS)}")
            lm = tuple(_point(p, f"{where}, point {j}") for j, p in enumerate(item))
            face = Face((0.0, 0.0, 0.0, 0.0), landmarks=lm)
        elif isinstance(item, dict):
            missing = [k for k in LANDMARK_KEYS if k not in item]
            if missing:
                raise ValueError(f"{where} lacks {', '.join(missing)}: give each face {', '.join(LANDMARK_KEYS)} "
                                 f"as [x, y] pixels")
            el, er, ml, mr = (np.array(_point(item[k], f"{where}: {k}")) for k in LANDMARK_KEYS)
            face = Face((0.0, 0.0, 0.0, 0.0), eyes=(tuple(el), tuple(er)), mouth=tuple((ml + mr) / 2))
        else:
            raise ValueError(f"{where} must be a dict of points or a list of 68 points, got {type(item).__name__}")
        el, er = face.eye_points()
        half = float(np.hypot(*(er - el)))
        if half < 1e-6:
            raise ValueError(f"{where} has both eyes at the same point")
        if er[0] <= el[0]:
            raise ValueError(f"{where} has eye_left to the right of eye_right: \"left\" is the image's left (the "
                             f"smaller x), the person's right eye; swap them")
        c, _, _ = ffhq_quad(el, er, face.mouth_point())
        faces.append(Face((c[0] - half, c[1] - half, c[0] + half, c[1] + half), face.eyes, 1.0, face.landmarks,
                          face.mouth))
    return faces


def read_landmarks(path) -> GivenLandmarks:
    """:class:`GivenLandmarks` from a JSON file ``{"faces": [...]}`` (see :func:`faces_from_landmarks`); one sentence
    for a missing or malformed file."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()  # as --image, --mask and --output are
    if not p.is_file():
        raise ValueError(f"the landmarks file {p} does not exist or is not a file: give the JSON file written beside "
                         f"the photo")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is not an error
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"the landmarks file {p} is not JSON ({e}): give {{\"faces\": [...]}}") from None
    return GivenLandmarks(faces_from_landmarks(data.get("faces") if isinstance(data, dict) else data))


# ----------------------------------------------------------------------------------------------------------
@functools.cache
def detector_for(framing: str) -> FaceDetector:
    """The detector for a domain's framing, built once per process (dlib's models take about a second to load):
    ``"animal"``: :class:`CatFaceDetector`; ``"face"``: :class:`DlibFaceDetector` (HOG, then CNN, then Haar) when
    dlib is installed, else :class:`HaarFaceDetector` with a one-line notice."""
    if framing == "animal":
        return CatFaceDetector()
    if framing != "face":
        raise ValueError(f"no face detector for the framing {framing!r}: use face or animal ('whole' needs none)")
    if dlib_available():
        return DlibFaceDetector(fallback=HaarFaceDetector())
    logging.getLogger("editing").info(
        "note: dlib is not installed, so faces are found with OpenCV's Haar cascades and aligned without a "
        "mouth landmark; pip install 'in-domain-suite[faces]' for FFHQ's own 68-landmark alignment")
    return HaarFaceDetector()
