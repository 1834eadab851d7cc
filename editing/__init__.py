"""SDEdit editing of photos with in-domain multi-guidance (paper Fig. 9), made for face photos.

Public API: :func:`edit_photo` -> :class:`EditResult`; :class:`FaceDetector` (protocol), :class:`Face`,
:class:`HaarFaceDetector`; :func:`load_photo`. Exports are imported lazily (PEP 562) so that
``launch.py --help`` does not pay for OpenCV or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "edit_photo": ".edit",
    "EditResult": ".edit",
    "Face": ".faces",
    "FaceDetector": ".faces",
    "HaarFaceDetector": ".faces",
    "Region": ".align",
    "face_region": ".align",
    "load_photo": ".images",
    "prepare_photo": ".images",
    "load_mask": ".images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
