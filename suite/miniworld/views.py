"""Views of mini-world objects framed the way the 3D flow frames its input, and Zero-1-to-3 measured on them.

The 3D flow centres its input image's object and scales it to fill 80% of the frame
(``generators3d.mask.reference_view``); the NeRF then sees that reference view from a fixed camera (distance
3.8, field of view 20 degrees). :func:`reference_framing` does the same to a ground-truth object in 3D: every
camera of an object looks at the point that puts the input view's object in the centre (``offset``) and
narrows its field of view so that the object fills ``fill`` of the input frame (magnification ``scale``).
Views rendered with :func:`framed_cameras` are what Zero-1-to-3 is trained on and measured with, and
:meth:`Framing.to_nerf` maps the true surface into the frame the NeRF reconstructs it in (the input camera
becomes the NeRF's reference camera: a turn about the vertical axis, the offset, the magnification).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Cameras, orbit_cameras
from ..zero123 import Zero123Guidance, novel_views
from .render import render
from .world import CAMERA_DISTANCE, CAMERA_FOVY, SHAPES, MiniObject, make_object

WHITE = (1.0, 1.0, 1.0)
FILL = 0.8  # as generators3d.mask.reference_view


@dataclass
class Framing:
    """Look-at point ``offset`` ``[3]`` (world), field of view ``fovy`` (degrees) and the magnification
    ``scale`` of the framed views over the plain ones; ``elevation`` / ``azimuth``: the input view."""

    offset: torch.Tensor
    fovy: float
    scale: float
    elevation: float
    azimuth: float
    distance: float = CAMERA_DISTANCE

    def to_nerf(self, points, ref_azimuth: float = 0.0) -> np.ndarray:
        """World points of the object -> the frame a NeRF reconstructs it in when its reference camera (at the
        input view's elevation, azimuth ``ref_azimuth``, distance 3.8, field of view 20 degrees) sees the framed
        input view: ``scale * R_z(ref_azimuth - azimuth) (x - offset)``."""
        shifted = np.asarray(points, np.float64) - self.offset.numpy().astype(np.float64)
        return shifted @ self.rotation(ref_azimuth).T * self.scale

    def rotation(self, ref_azimuth: float = 0.0) -> np.ndarray:
        """The turn about the vertical axis that brings the input view's azimuth to ``ref_azimuth``."""
        a = math.radians(ref_azimuth - self.azimuth)
        return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def reference_framing(obj: MiniObject, elevation: float, azimuth: float, fill: float = FILL,
                      distance: float = CAMERA_DISTANCE, fovy: float = CAMERA_FOVY, size: int = 256) -> Framing:
    """The framing that centres ``obj`` in the view ``(elevation, azimuth)`` and makes its larger side ``fill`` of
    the frame (measured on the exact silhouette at ``size`` pixels)."""
    cam = orbit_cameras(elevation, azimuth, distance, fovy)
    mask = render(obj, cam, size=size, supersample=1).mask[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        raise ValueError("the object is not in view")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    unit = 2 * distance * math.tan(math.radians(fovy) / 2) / size  # world units per pixel at the origin
    right, up = cam.c2w[0, :3, 0], cam.c2w[0, :3, 1]
    offset = right * ((x0 + x1) / 2 - size / 2) * unit + up * (size / 2 - (y0 + y1) / 2) * unit
    scale = fill * size / max(y1 - y0, x1 - x0)
    framed_fovy = math.degrees(2 * math.atan(math.tan(math.radians(fovy) / 2) / scale))
    return Framing(offset, framed_fovy, scale, float(elevation), float(azimuth), distance)


def framed_cameras(framing: Framing, elevation, azimuth) -> Cameras:
    """Cameras at the given angles (degrees) looking at ``framing.offset`` with the framed field of view."""
    cams = orbit_cameras(elevation, azimuth, framing.distance, framing.fovy)
    cams.c2w[:, :3, 3] += framing.offset
    return cams


def render_framed(obj: MiniObject, framing: Framing, elevation, azimuth, size: int = 64):
    """``(rgb [B, 3, H, W] on white, coverage [B, H, W])`` of the framed views."""
    r = render(obj, framed_cameras(framing, elevation, azimuth), size=size, supersample=2, background=WHITE)
    return r.rgb, r.alpha


def silhouette(rgb: torch.Tensor, level: float = 0.1) -> torch.Tensor:
    """Object mask ``[B, H, W]`` of images of one object on a plain backdrop: pixels whose colour differs from the
    median of the image's border by more than ``level`` in some channel. (The mini world's VAE decodes a white
    backdrop as its world's grey, so a generated view's backdrop is measured, not assumed.)"""
    border = torch.cat([rgb[:, :, 0], rgb[:, :, -1], rgb[:, :, :, 0], rgb[:, :, :, -1]], -1)  # [B, 3, 4W]
    bg = border.median(-1).values[:, :, None, None]
    return (rgb - bg).abs().amax(1) > level


def cut_out(rgb: torch.Tensor) -> torch.Tensor:
    """The object of each image on pure white (its :func:`silhouette`), whatever its backdrop."""
    return torch.where(silhouette(rgb)[:, None], rgb, torch.ones_like(rgb))


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union per image of boolean masks ``[B, H, W]``."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def heldout_cases(n: int, seed: int = 12345, turn: float = 90.0):
    """``n`` held-out (object, input view, target view) cases: coloured objects of every shape in turn (their
    silhouettes can be read from an image on white), input elevation in [0, 25], the target ``turn`` degrees of
    azimuth away (alternately left and right) and 15 to 30 degrees higher or lower (so that returning the input
    is not already right for the shapes of revolution)."""
    rng = np.random.default_rng(seed)
    colours, patterns = ("red", "green", "blue", "yellow", "purple"), ("plain", "stripes", "dots")
    cases = []
    for i in range(n):
        obj = make_object(SHAPES[i % len(SHAPES)], colours[rng.integers(5)], patterns[rng.integers(3)], False, rng)
        el0, az0 = float(rng.uniform(0, 25)), float(rng.uniform(-180, 180))
        el1 = el0 + (1 if (i // 2) % 2 == 0 else -1) * float(rng.uniform(15, 30))
        az1 = az0 + (turn if i % 2 == 0 else -turn)
        cases.append((obj, el0, az0, el1, az1))
    return cases


@torch.no_grad()
def measure_novel_views(model, cases, guidance_scale: float = 3.0, steps: int = 30, seed: int = 0,
                        size: int = 64, seeds=None, start: str = "noise") -> dict:
    """Zero-1-to-3 (a :class:`suite.zero123.Zero123Model`) on held-out ``cases`` (see :func:`heldout_cases`):
    silhouette IoU and PSNR of its novel view against the renderer's ground truth, and of the trivial baseline
    that returns the input view unchanged. The novel view is cut out onto white first (:func:`cut_out`). Returns means and per-case lists (``iou``, ``psnr``, ``copy_iou``,
    ``copy_psnr``), the PSNR of all cases together (``mean_psnr``: from the mean squared error, which a perfect
    case cannot dominate) and the images (``inputs``, ``predicted``, ``truth``). Case ``i`` is sampled with the
    generator seed ``seed + i``, or ``seeds[i]`` when ``seeds`` is given; ``start`` is :func:`suite.zero123.novel_views`'
    (the input view noised, or pure noise)."""
    if seeds is not None and len(seeds) != len(cases):
        raise ValueError(f"{len(seeds)} seeds for {len(cases)} cases: give one seed per case")
    inputs, preds, truths = [], [], []
    for i, (obj, el0, az0, el1, az1) in enumerate(cases):
        framing = reference_framing(obj, el0, az0)
        rgb, _ = render_framed(obj, framing, [el0, el1], [az0, az1], size)
        guide = Zero123Guidance(model, rgb[:1], el0, az0, framing.distance)
        gen = torch.Generator().manual_seed(seed + i if seeds is None else int(seeds[i]))
        pred = novel_views(guide, el1, az1, framing.distance, guidance_scale, steps, generator=gen, start=start)
        pred = torch.nn.functional.interpolate(pred, (size, size), mode="bilinear", align_corners=False)
        inputs.append(rgb[:1])
        truths.append(rgb[1:])
        preds.append(pred.cpu())
    inputs, preds, truths = torch.cat(inputs), torch.cat(preds), torch.cat(truths)
    gt_mask = silhouette(truths)
    preds = cut_out(preds)  # on white, as the truth and the input
    out = {"iou": iou(silhouette(preds), gt_mask), "psnr": psnr(preds, truths),
           "copy_iou": iou(silhouette(inputs), gt_mask), "copy_psnr": psnr(inputs, truths)}
    summary = {f"mean_{k}": float(v.mean()) for k, v in out.items() if "iou" in k}
    for k, images in (("psnr", preds), ("copy_psnr", inputs)):
        summary[f"mean_{k}"] = float(psnr(images.flatten()[None], truths.flatten()[None])[0])
    summary.update({k: [round(float(x), 4) for x in v] for k, v in out.items()})
    summary.update(inputs=inputs, predicted=preds, truth=truths)
    return summary
