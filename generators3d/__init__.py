"""Text-to-3D in one domain (paper Sec. 4.3, Fig. 10): prompt -> in-domain image -> Zero-1-to-3 NeRF -> SDS
refinement with the domain model's multi-guidance -> mesh (GLB / OBJ / PLY).

The package imports light: the config types load without torch; :func:`run_text_to_3d` and
:class:`ThreeDResult` load the heavy modules on first use (``launch.py --help`` stays fast).
"""

from __future__ import annotations

from .config import ThreeDConfig, ThreeDResult

__all__ = ["ThreeDConfig", "ThreeDResult", "run_text_to_3d"]


def __getattr__(name):
    if name == "run_text_to_3d":
        from .run import run_text_to_3d

        return run_text_to_3d
    raise AttributeError(f"module 'generators3d' has no attribute {name!r}")
