"""Orbit cameras around an object, in one convention shared by the 3D package and the mini world's renderer
(threestudio's): world Z up; a camera at elevation ``e``, azimuth ``a`` and distance ``d`` sits at
``d (cos e cos a, cos e sin a, sin e)`` and looks at the origin; camera axes are OpenGL's (x right, y up, looking
along -z). Azimuth 0 looks from +X (the reference view); +Y then appears on the right of the image."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Cameras:
    """A batch of cameras: ``c2w`` ``[B, 4, 4]``, angles in degrees ``[B]``, distances ``[B]``."""

    c2w: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    distance: torch.Tensor
    fovy: torch.Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device) -> Cameras:
        return Cameras(*(getattr(self, k).to(device) for k in ("c2w", "elevation", "azimuth", "distance", "fovy")))


def orbit_cameras(elevation, azimuth, distance, fovy, device="cpu") -> Cameras:
    """Cameras looking at the origin from the given angles (degrees) and distances (``[B]`` or scalars)."""
    el, az, dist, fov = (torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
                         for v in (elevation, azimuth, distance, fovy))
    b = max(len(el), len(az), len(dist), len(fov))
    el, az, dist, fov = (v.expand(b) if len(v) == 1 else v for v in (el, az, dist, fov))
    e, a = torch.deg2rad(el), torch.deg2rad(az)
    pos = torch.stack([dist * e.cos() * a.cos(), dist * e.cos() * a.sin(), dist * e.sin()], -1)
    forward = torch.nn.functional.normalize(-pos, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], device=device).expand_as(forward)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(b, 4, 4, device=device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, -forward, pos
    c2w[:, 3, 3] = 1.0
    return Cameras(c2w, el.clone(), az.clone(), dist.clone(), fov.clone())


def camera_rays(cams: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions ``[B, H, W, 3]`` through pixel centres."""
    device = cams.c2w.device
    focal = 0.5 * height / torch.tan(torch.deg2rad(cams.fovy) / 2)  # [B]
    j, i = torch.meshgrid(torch.arange(width, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(height, device=device, dtype=torch.float32) + 0.5, indexing="xy")
    x = (j - width / 2)[None] / focal[:, None, None]
    y = -(i - height / 2)[None] / focal[:, None, None]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # [B, H, W, 3]
    d = torch.einsum("bij,bhwj->bhwi", cams.c2w[:, :3, :3], d_cam)
    d = torch.nn.functional.normalize(d, dim=-1)
    o = cams.c2w[:, None, None, :3, 3].expand_as(d)
    return o, d
