"""The export's colours from images: the reference view projected onto the faces it sees, and Zero-1-to-3's views
of the sides it does not see (SDEdit of the mesh's own renders), projected there.

The NeRF's colour field is smoother than its reference image (a pattern fitted through SDS from views that disagree
in detail is averaged away), so a mesh coloured from it alone loses the stripes, dots or print of the input even on
the side the input shows. Image-to-3D systems project their input (and their generated views) onto the mesh for that
reason; :func:`generators3d.mesh.projected_colours` does the projecting (visibility by z-buffer, a smooth fall-off at
grazing angles, earlier views first).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .cameras import orbit_cameras, reference_camera
from .config import CameraConfig
from .mesh import ColourView, Mesh, projection_weights, surface_normals

log = logging.getLogger(__name__)


def reference_colour_view(folder: Path, camera: CameraConfig) -> ColourView | None:
    """A run folder's ``reference.png`` and ``reference-mask.png`` (what stage 2 fitted) as seen by its reference
    camera; None when the folder has none."""
    from PIL import Image

    rgb_path, mask_path = Path(folder) / "reference.png", Path(folder) / "reference-mask.png"
    if not (rgb_path.is_file() and mask_path.is_file()):
        return None
    with Image.open(rgb_path) as im:
        rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
    with Image.open(mask_path) as im:
        mask = np.asarray(im.convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR), np.float32) / 255.0
    cam = reference_camera(camera)
    return ColourView(rgb, mask, cam.c2w[0].double().numpy(), float(cam.fovy[0]))


def side_azimuths(count: int) -> list[float]:
    """``count`` azimuths (degrees from the reference view) spread evenly over the side the reference does not see,
    centred on the back, at most 90 degrees apart and none nearer the reference than 90: 1 -> [180]; 2 -> [135, 225];
    3 -> [90, 180, 270]; 5 -> every 45 degrees from 90 to 270. The back first, as
    :func:`generators3d.mesh.projected_colours` lets earlier views keep what they see."""
    if count <= 0:
        return []
    step = 90.0 if count < 3 else 180.0 / (count - 1)
    angles = [180.0 + (i - (count - 1) / 2) * step for i in range(count)]
    return sorted(angles, key=lambda a: (abs(a - 180.0), a))


def side_batches(count: int, apart: float = 150.0) -> list[list[float]]:
    """:func:`side_azimuths` in turns, for drawing each turn keeping what the turns before it drew: consecutive
    views share a turn while they are at least ``apart`` degrees from every view in it (such views see nearly
    disjoint sides of the object, so drawing them together leaves no seam between them): 3 -> [[180], [90, 270]];
    2 -> [[135], [225]]; 5 -> [[180], [135], [225], [90, 270]]."""
    turns: list[list[float]] = []
    for a in side_azimuths(count):
        if turns and all(abs((a - b + 180.0) % 360.0 - 180.0) >= apart for b in turns[-1]):
            turns[-1].append(a)
        else:
            turns.append([a])
    return turns


def side_views_keep(export) -> bool:
    """Whether the export's side views (``export``: an :class:`generators3d.config.ExportConfig`) keep what the
    projected reference shows: only where the reference is projected (``--no-project-reference``: nothing to keep)."""
    return bool(export.side_views) and export.project_reference and export.side_keep_reference


def side_turns(export) -> list[list[float]]:
    """The export's side views as the turns they are drawn in: :func:`side_batches` where they keep what the
    projected reference shows (:func:`side_views_keep`) and ``export.side_in_turn``, else all of
    :func:`side_azimuths` in one (each turn is one Zero-1-to-3 call)."""
    if not export.side_views:
        return []
    if side_views_keep(export) and export.side_in_turn:
        return side_batches(export.side_views)
    return [side_azimuths(export.side_views)]


@torch.no_grad()
def zero123_colour_views(mesh: Mesh, guide, camera: CameraConfig, count: int = 3, strength: float = 0.6,
                         steps: int = 30, guidance_scale: float = 3.0, seed: int = 0,
                         keep: ColourView | list[ColourView] | None = None,
                         azimuths: list[float] | None = None) -> list[ColourView]:
    """Zero-1-to-3's views of ``mesh`` (NeRF frame, coloured) from ``azimuths`` (degrees from the reference; None:
    :func:`side_azimuths` of ``count``) at the reference's elevation, distance and field of view: the mesh drawn unlit
    on white (Zero-1-to-3's backdrop) at the model's size, then SDEdit from ``strength`` of the schedule
    (:func:`suite.zero123.novel_views`), so the views keep the mesh's outline and add the detail the model draws for
    that side. Masks: the mesh's own coverage. ``keep``: images already projected onto ``mesh`` (the reference view,
    and side views drawn before): where they see the surface well (their weights combined as
    :func:`generators3d.mesh.projected_colours` combines them) the views keep the render, which holds their colours,
    and the model draws the rest to join it (``novel_views``' ``keep``)."""
    from suite.zero123 import novel_views

    from .raster import render_mesh

    azimuths = side_azimuths(count) if azimuths is None else list(azimuths)
    if not azimuths:
        return []
    n = len(azimuths)
    els = [camera.ref_elevation] * n
    azs = [camera.ref_azimuth + a for a in azimuths]
    cams = orbit_cameras(els, azs, camera.ref_distance, camera.ref_fovy)
    size = guide.model.image_size
    rgb, cover = render_mesh(mesh.vertices, mesh.faces, cams, size=size, colors=mesh.colors, shading=False,
                             background=(1.0, 1.0, 1.0))
    held = None
    keep = [keep] if isinstance(keep, ColourView) else list(keep or [])
    if keep:  # the weight the colours give these images together
        w = projection_weights(mesh.vertices, surface_normals(mesh), mesh, keep)
        weight, _ = render_mesh(mesh.vertices, mesh.faces, cams, size=size, colors=np.repeat(w[:, None], 3, 1),
                                shading=False, background=(0.0, 0.0, 0.0))
        held = torch.from_numpy(weight[:, :1]).float()
    gen = torch.Generator().manual_seed(seed)
    drawn = novel_views(guide, els, azs, [camera.ref_distance] * n, guidance_scale, steps, generator=gen,
                        init=torch.from_numpy(rgb), strength=strength, keep=held).float().cpu().numpy()
    return [ColourView(drawn[i].transpose(1, 2, 0), cover[i], cams.c2w[i].double().numpy(), float(cams.fovy[i]))
            for i in range(n)]
