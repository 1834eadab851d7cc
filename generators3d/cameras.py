"""Cameras around the object (threestudio's conventions): world Z up; a camera at elevation ``e``, azimuth
``a`` and distance ``d`` sits at ``d (cos e cos a, cos e sin a, sin e)`` and looks at the origin; camera
axes are OpenGL's (x right, y up, looking along -z). Azimuth 0 looks from +X (the reference view)."""

from __future__ import annotations

import torch

from suite.cameras import Cameras, camera_rays, orbit_cameras  # noqa: F401 (the convention lives in suite)

from .config import CameraConfig


def random_cameras(cfg: CameraConfig, batch: int, generator: torch.Generator | None = None, device="cpu") -> Cameras:
    """``batch`` views with elevation, azimuth, distance and field of view uniform in ``cfg``'s ranges."""
    def uniform(lo_hi):
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    return orbit_cameras(uniform(cfg.elevation_range), uniform(cfg.azimuth_range), uniform(cfg.distance_range),
                         uniform(cfg.fovy_range), device=device)


def reference_camera(cfg: CameraConfig, device="cpu") -> Cameras:
    return orbit_cameras(cfg.ref_elevation, cfg.ref_azimuth, cfg.ref_distance, cfg.ref_fovy, device=device)


def turntable_cameras(cfg: CameraConfig, frames: int, elevation: float | None = None, device="cpu") -> Cameras:
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames) + cfg.ref_azimuth
    el = cfg.ref_elevation if elevation is None else elevation
    return orbit_cameras(el, az, cfg.ref_distance, cfg.ref_fovy, device=device)
