"""Monocular depth of an image, for the 3D flow's reference-depth loss (Magic123; threestudio's ``lambda_depth_rel``).

A transformers depth estimator loads (``AutoModelForDepthEstimation`` from a folder or a hub id, safetensors
weights) if :data:`DEPTH_SENSE` knows its type: Depth Anything and DPT/MiDaS, which predict relative inverse depth
(larger = nearer; a metric Depth Anything predicts depth), and GLPN and ZoeDepth, which predict depth (larger =
farther). The result is always *nearness*, larger = nearer: the convention of the depth images Depth Anything and
MiDaS save (bright = near), which is also what ``--depth FILE`` reads (invert a metric depth map first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .models import ModelLoadError, load_errors, offline, prefetch, resolve, transformers_files
from .threads import building_models

DEPTH_SENSE = {"depth_anything": "nearness", "dpt": "nearness", "glpn": "depth", "zoedepth": "depth"}
"""What each model type's post-processed prediction is: relative inverse depth (``nearness``: larger = nearer) or
``depth``. A Depth Anything whose ``depth_estimation_type`` is ``metric`` predicts depth. Only the GLPN layout (the
mini world's) has been run here; the others follow their transformers post-processing."""


def pearson(pred: torch.Tensor, want: torch.Tensor, keep: torch.Tensor, min_pixels: int = 8) -> torch.Tensor:
    """Pearson correlation of ``pred`` and ``want`` over the pixels where ``keep``, per item of the first dimension
    (``[B, ...]`` each): 1 = equal up to a positive affine map, -1 = reversed. An item with fewer than ``min_pixels``
    kept pixels gets 0. Differentiable in ``pred``."""
    on = keep.flatten(1).bool()
    m = on.float()
    count = m.sum(1, keepdim=True)
    p, w = (torch.where(on, x.flatten(1), torch.zeros_like(m)) for x in (pred, want))  # anything (inf too) off them
    p = (p - p.sum(1, keepdim=True) / count.clamp_min(1)) * m
    w = (w - w.sum(1, keepdim=True) / count.clamp_min(1)) * m
    corr = (p * w).sum(1) / (p.square().sum(1) * w.square().sum(1)).clamp_min(1e-16).sqrt()  # finite gradient if flat
    return torch.where(count[:, 0] >= min_pixels, corr, torch.zeros_like(corr))


@dataclass
class DepthEstimator:
    model: torch.nn.Module
    processor: object
    sense: str  # "nearness" or "depth" (DEPTH_SENSE)
    ref: str

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> np.ndarray:
        """The image's relative depth as nearness ``[H, W]`` float32 (larger = nearer; any scale and offset), at the
        image's own size."""
        from .images import to_rgb

        # any mode as the CLI reads it (a 16-bit image through convert("RGB") came out nearly all 255)
        rgb = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return self.nearness(rgb)[0].cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def nearness(self, rgb: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Relative nearness ``[B, H, W]`` (larger = nearer) of images ``rgb [B, 3, H, W]`` in [0, 1], at their own
        size; ``size``: the side of the square they are resized to (bilinear) before the model's processor sees them
        (e.g. the resolution the model was trained at; the prediction is resized back), None: as they are."""
        h, w = rgb.shape[-2:]
        x = rgb.detach().float().clamp(0, 1)
        least = int(getattr(self.processor, "size_divisor", None) or 32)
        if size is None and min(h, w) < least:  # GLPN's processor rounds a side below 32 down to 0 (a traceback)
            size = least
        if size is not None and (h, w) != (size, size):
            x = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        arrays = list((x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        inputs = self.processor(images=arrays, return_tensors="pt", input_data_format="channels_last")
        outputs = self.model(pixel_values=inputs["pixel_values"].to(dev, dtype))
        # the model's own post-processing (e.g. ZoeDepth's padding removed) at the size the processor was given, then
        # to the images' own size
        seen = tuple(x.shape[-2:])
        preds = self.processor.post_process_depth_estimation(outputs, [seen] * len(arrays))
        pred = torch.stack([p["predicted_depth"].float().reshape(seen) for p in preds])
        if seen != (h, w):
            pred = torch.nn.functional.interpolate(pred[:, None], (h, w), mode="bilinear", antialias=True,
                                                   align_corners=False)[:, 0]
        if not bool(torch.isfinite(pred).all()):
            raise ValueError(f"the depth model {self.ref!r} returned non-finite depth: use another --depth-model (or "
                             f"give the reference's depth with --depth FILE and turn the views' off with "
                             f"--view-depth-weight 0)")
        return (pred if self.sense == "nearness" else -pred).to(rgb.device)


def load_depth_estimator(ref: str | os.PathLike, device="cpu", dtype=torch.float32,
                         flag: str = "--depth-model") -> DepthEstimator:
    """A transformers depth estimator from a folder or a hub id (one clear sentence on failure)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

    ref, local = resolve(ref, "depth model", flag, required=("config.json",))
    kw = {"local_files_only": local or offline()}
    prefetch(ref, local, transformers_files())  # the download outside the loading lock below
    try:
        config = AutoConfig.from_pretrained(ref, **kw)
        sense = DEPTH_SENSE.get(config.model_type)
        if sense is not None and getattr(config, "depth_estimation_type", None) == "metric":
            sense = "depth"  # a metric Depth Anything
        if sense is None:
            raise ModelLoadError(f"depth model {ref!r} is a {config.model_type!r} model, not one of the depth estimators "
                                 f"the suite knows ({', '.join(sorted(DEPTH_SENSE))}): pass {flag} with one of those")
        with building_models():  # one load at a time in the process (suite.threads)
            model = AutoModelForDepthEstimation.from_pretrained(ref, use_safetensors=True, **kw)
        processor = AutoImageProcessor.from_pretrained(ref, **kw)
    except ModelLoadError:
        raise
    except load_errors() as err:
        how = (f"the folder is incomplete, corrupt or has no safetensors weights; pass {flag} with a transformers "
               f"depth-estimation folder" if local else
               f"it could not be loaded (offline, or no such model); pass {flag} with a local folder")
        raise ModelLoadError(f"depth model {ref!r}: {how} ({type(err).__name__}: {str(err)[:200]})") from err
    return DepthEstimator(model.to(device, dtype).eval(), processor, sense, str(ref))


def nearness_image(near: np.ndarray, mask: np.ndarray) -> Image.Image:
    """A 16-bit image of ``near`` (larger = nearer) normalised to [0, 1] over ``mask`` (bright = near), 0 off it."""
    m = mask > 0.5
    out = np.zeros(near.shape, dtype=np.float64)
    if m.any():
        lo, hi = float(near[m].min()), float(near[m].max())
        out[m] = (near[m] - lo) / max(hi - lo, 1e-12)
    return Image.fromarray((out * 65535).round().astype(np.uint16))


def read_nearness(path: str | os.PathLike, size: tuple[int, int] | None = None, what: str = "--depth") -> np.ndarray:
    """A depth image (bright = near; 8 or 16 bit, grey or RGB; its EXIF orientation applied) as float32 ``[H, W]`` in
    [0, 1], optionally checked against the image ``size`` ``(width, height)`` it belongs to."""
    from PIL import ImageOps

    from .images import HIGH_DEPTH_GRAY, SIXTEEN_BIT, open_image

    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise ValueError(f"{what} {str(path)!r} is not a file: pass the input image's depth image (bright = near)")
    im = ImageOps.exif_transpose(open_image(p, f"depth image ({what})"))
    if size is not None and tuple(im.size) != tuple(size):
        raise ValueError(f"{what} {str(path)!r} is {im.size[0]}x{im.size[1]} but the input image is {size[0]}x{size[1]}: "
                         f"pass the depth image made from this image, at its size")
    if im.mode in HIGH_DEPTH_GRAY:
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"{what} {str(path)!r} has non-finite values: pass a depth image of finite values")
        # 16-bit over 0-65535; 32-bit integers and floats by their range, as suite.images.to_8bit reads them (a
        # 32-bit image of 0-150 came out 0-0.0023, one with negative values below 0)
        a = a / 65535.0 if im.mode in SIXTEEN_BIT else (a - a.min()) / max(float(np.ptp(a)), 1e-12)
    else:
        a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    return a.astype(np.float32)
