"""One SDS stage on a NeRF: random views -> render -> SDS terms + reference-view losses -> Adam step, with
progressive resolution, annealed timestep ranges, NaN recovery, and safetensors checkpoints."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from suite.depth import pearson
from suite.files import atomic_path
from suite.miniworld.render import LIGHT_CAM
from suite.threads import building_models

from .cameras import camera_rays, random_cameras, reference_camera
from .config import CameraConfig, NeRFConfig, StageConfig
from .nerf import Background, NeRFField
from .render import render, render_rays

log = logging.getLogger(__name__)


@dataclass
class SDSTerm:
    """A weighted SDS loss: ``fn(rgb [B,3,H,W], cams, generator) -> dict`` with ``loss_sds`` (see :func:`sds`)."""

    name: str
    weight: float
    fn: Callable


@dataclass
class Reference:
    """The reference view: ``rgb [1, 3, H, W]`` on white and ``mask [1, 1, H, W]`` in [0, 1]; optionally a relative
    ``depth [1, 1, H, W]`` of the object (larger = farther, any scale and offset; read only where the mask > 0.5)."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None = None


def pearson_depth_loss(depth: torch.Tensor, want: torch.Tensor, keep: torch.Tensor, views: int = 1) -> torch.Tensor:
    """``1 - Pearson correlation`` of the rendered ``depth`` and the wanted ``want`` over the pixels where ``keep``,
    averaged over ``views`` views (the first dimension; ``views=1``: one view, any shape): Magic123's and
    threestudio's relative depth loss (``lambda_depth_rel``), blind to the wanted depth's scale and offset, so that
    any monocular estimate serves. 0 when they agree up to an affine map, 1 when unrelated, 2 when reversed; a view
    with fewer than 8 kept pixels adds 0 (nothing to compare)."""
    flat = [x.reshape(views, -1) for x in (depth, want, keep)]
    corr = pearson(*flat)
    return torch.where(flat[2].sum(1) >= 8, 1.0 - corr, corr * 0.0).mean()


def stage_resolution(stage: StageConfig, step: int) -> tuple[int, int]:
    """(render resolution, batch size) at ``step`` from the progressive schedule."""
    i = max(k for k, m in enumerate(stage.milestones) if step >= m) if stage.milestones else 0
    return int(stage.resolutions[i]), int(stage.batch_sizes[i])


def surface_depth(depth: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """The rendered surface's depth from the renderer's weight-accumulated ``depth`` (``depth / opacity``)."""
    return depth / opacity.clamp_min(1e-3)


def depth_curvature(depth: torch.Tensor, opacity: torch.Tensor, jump: float = 0.05, robust: float = 0.0) -> torch.Tensor:
    """Mean squared second difference of the surface depth (``depth / opacity``, ``[B, H, W]``) along rows and
    columns, over runs of three pixels that are all on the object (opacity > 0.5) and not across a depth jump of
    more than ``jump`` scene units (an edge in front of another part of the object). A plane seen in perspective
    and a slowly curved surface cost almost nothing; bumps at the pixel scale cost most. The depth is the rendered
    expected depth: with few, jittered samples per ray its sampling noise is penalised too, which favours a softer
    density (docs/3d-measurements.md, "Depth smoothness"). ``robust`` > 0: Charbonnier's penalty of scale
    ``robust`` (scene units) instead of the square, ``2 r^2 (sqrt(1 + (x / r)^2) - 1)``: the square for second
    differences well below ``robust``, growing only linearly above it, so that a crease costs less."""
    on = (opacity > 0.5).detach()
    surface = surface_depth(depth, opacity)
    total, count = surface.new_zeros(()), 0
    for dim in (1, 2):
        n = surface.shape[dim]
        a, b, c = (surface.narrow(dim, k, n - 2) for k in range(3))
        second = a - 2 * b + c
        keep = on.narrow(dim, 0, n - 2) & on.narrow(dim, 1, n - 2) & on.narrow(dim, 2, n - 2)
        keep = keep & ((b - a).abs() < jump).detach() & ((c - b).abs() < jump).detach()
        cost = second.square() if not robust else 2 * robust ** 2 * ((1 + (second / robust).square()).sqrt() - 1)
        total = total + (cost * keep).sum()
        count += int(keep.sum())
    return total / max(count, 1)


def train_stage(field: NeRFField, background: Background, stage: StageConfig, camera: CameraConfig,
                reference: Reference | None, terms: Sequence[SDSTerm], *, generator: torch.Generator,
                progress: Callable[[int, int, dict], None] | None = None, snapshot_every: int = 10,
                view_depth: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Optimise ``field`` for ``stage.steps`` steps. Returns ``{"nan_recoveries": n, "last": info}``.
    ``view_depth``: a monocular depth estimator, ``rgb [B, 3, H, W] -> nearness [B, H, W]`` (larger = nearer), for
    ``stage.lambda_view_depth``.

    A step whose loss or gradients are not finite is undone: the field and optimiser go back to the last
    good state (kept every ``snapshot_every`` steps) and the step is counted in ``nan_recoveries``.
    """
    device = next(field.parameters()).device
    if stage.lambda_eikonal and field.cfg.geometry != "sdf":
        raise ValueError("lambda_eikonal needs nerf.geometry 'sdf' (a density field has no distance to regularise): "
                         "set nerf.geometry to 'sdf' or lambda_eikonal to 0")
    params = [p for p in list(field.parameters()) + list(background.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=stage.lr, betas=(0.9, 0.99), eps=1e-15)
    ref_cam = reference_camera(camera, device)
    if reference is not None:
        size = (stage.ref_resolution, stage.ref_resolution)
        depth = None
        if reference.depth is not None and stage.lambda_ref_depth:  # the object's depth only: no backdrop blended in
            def resized(x):
                return torch.nn.functional.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False)

            on = (torch.nn.functional.interpolate(reference.mask, reference.depth.shape[-2:], mode="area") > 0.5).float()
            depth = resized(reference.depth * on) / resized(on).clamp_min(1e-6)
        reference = Reference(torch.nn.functional.interpolate(reference.rgb, size, mode="area"),
                              torch.nn.functional.interpolate(reference.mask, size, mode="area"), depth)
    if stage.lambda_ref_depth and (reference is None or reference.depth is None):
        raise ValueError("lambda_ref_depth needs a reference depth: give the input image's depth (--depth FILE) or "
                         "set lambda_ref_depth to 0")
    if stage.lambda_view_depth and view_depth is None:
        raise ValueError("lambda_view_depth needs a depth estimator (view_depth): pass one or set lambda_view_depth to 0")
    ref_rays, n_ref = None, 0
    if reference is not None and not 0.0 < stage.ref_ray_fraction <= 1.0:
        raise ValueError(f"ref_ray_fraction must be in (0, 1], got {stage.ref_ray_fraction}: use 1 for the whole view")
    if reference is not None and stage.ref_ray_fraction < 1.0 and not stage.shading:  # shading: whole views
        o, d = camera_rays(ref_cam, *reference.rgb.shape[-2:])
        ref_rays = (o.reshape(-1, 3), d.reshape(-1, 3), reference.rgb[0].permute(1, 2, 0).reshape(-1, 3),
                    reference.mask[0].permute(1, 2, 0).reshape(-1, 1),
                    None if reference.depth is None else reference.depth[0].permute(1, 2, 0).reshape(-1, 1))
        n_ref = max(1, round(stage.ref_ray_fraction * o.shape[1] * o.shape[2]))
    good = _snapshot(field, background, opt)
    recoveries, info = 0, {}
    every = max(int(field.cfg.occupancy_every), 1)
    for step in range(stage.steps):
        # 1. Schedules: timestep ranges (annealed), render resolution and batch; the occupancy grid.
        if step % every == 0:
            field.update_occupancy(generator)
        for term in terms:
            if hasattr(term.fn, "range"):
                term.fn.range.update_step(step)
        res, batch = stage_resolution(stage, step)
        loss = torch.zeros((), device=device)
        info = {"step": step + 1, "resolution": res}

        # 2. SDS terms on random views.
        if terms:
            cams = random_cameras(camera, batch, generator, device)
            out = render(field, background, cams, res, perturb=True, generator=generator)
            rgb = out["rgb"]
            if stage.lambda_view_depth:
                # 2a. Each view's rendered surface depth against the estimator's reading of the view's own colours.
                near = view_depth(rgb.detach().permute(0, 3, 1, 2))
                surface = surface_depth(out["depth"][..., 0], out["opacity"][..., 0])
                l_view = pearson_depth_loss(surface, -near, (out["opacity"][..., 0] > 0.5).detach(), len(surface))
                loss = loss + stage.lambda_view_depth * l_view
                info["loss_view_depth"] = float(l_view.detach())
            if stage.shading:
                rgb = shade_camera_light(out, cams, rgb, background)
            if stage.sds_background is not None:  # the same object over another (plain) backdrop
                if background.mlp is not None:
                    raise ValueError("sds_background needs a plain-colour NeRF background, not a learned one")
                swap = torch.tensor(stage.sds_background, device=device) - background.color.to(device)
                rgb = rgb + (1.0 - out["opacity"]) * swap
            rgb = rgb.permute(0, 3, 1, 2)
            for term in terms:
                result = term.fn(rgb, cams, generator)
                loss = loss + term.weight * stage.lambda_sds * result["loss_sds"]
                info[f"loss_{term.name}"] = float(result["loss_sds"].detach())
                info["min_step"], info["max_step"] = result["min_step"], result["max_step"]
            if stage.lambda_opaque:
                op = out["opacity"].clamp(1e-4, 1 - 1e-4)
                loss = loss + stage.lambda_opaque * (-(op * op.log() + (1 - op) * (1 - op).log())).mean()
            if stage.lambda_depth_smooth:
                l_smooth = depth_curvature(out["depth"][..., 0], out["opacity"][..., 0],
                                           robust=stage.depth_smooth_robust)
                loss = loss + stage.lambda_depth_smooth * l_smooth
                info["loss_depth_smooth"] = float(l_smooth.detach())
            if stage.lambda_normal_smooth_3d:
                # 3D normal smoothness (threestudio's) at the views' rendered surface points (fixed, no gradient).
                l_ns = normal_smoothness(field, cams, out, stage.normal_smooth_points, generator)
                if l_ns is not None:
                    loss = loss + stage.lambda_normal_smooth_3d * l_ns
                    info["loss_normal_smooth_3d"] = float(l_ns.detach())

        # 2b. SDF geometry: the eikonal term at random points of the scene's cube.
        if stage.lambda_eikonal:
            pts = (torch.rand((stage.eikonal_points, 3), generator=generator) * 2.0 - 1.0).to(device) * field.radius
            l_eik = field.eikonal(pts)
            loss = loss + stage.lambda_eikonal * l_eik
            info["loss_eikonal"] = float(l_eik.detach())
            info["beta"] = float(field.beta.detach())

        # 3. Reference view: colour and mask losses (threestudio's zero123 system), on all its pixels or on a
        #    random share of them (``ref_ray_fraction``).
        if reference is not None and (stage.lambda_rgb or stage.lambda_mask):
            if ref_rays is None:
                size = reference.rgb.shape[-1]
                ref_out = render(field, background, ref_cam, size, perturb=True, generator=generator)
                if stage.shading:
                    ref_out["rgb"] = shade_camera_light(ref_out, ref_cam, ref_out["rgb"], background)
                l_rgb = torch.nn.functional.mse_loss(ref_out["rgb"].permute(0, 3, 1, 2), reference.rgb)
                l_mask = torch.nn.functional.mse_loss(ref_out["opacity"].permute(0, 3, 1, 2), reference.mask)
                want_mask, want_depth = reference.mask.permute(0, 2, 3, 1), reference.depth
                want_depth = None if want_depth is None else want_depth.permute(0, 2, 3, 1)
            else:
                o, d, want_rgb, want_mask, want_depth = ref_rays
                pick = torch.randperm(o.shape[0], generator=generator)[:n_ref].to(device)
                ref_out = render_rays(field, background, o[pick], d[pick], field.cfg.samples_per_ray, True, generator)
                l_rgb = torch.nn.functional.mse_loss(ref_out["rgb"], want_rgb[pick])
                want_mask = want_mask[pick]
                l_mask = torch.nn.functional.mse_loss(ref_out["opacity"], want_mask)
                want_depth = None if want_depth is None else want_depth[pick]
            loss = loss + stage.lambda_rgb * l_rgb + stage.lambda_mask * l_mask
            info["loss_rgb"], info["loss_mask"] = float(l_rgb.detach()), float(l_mask.detach())
            if stage.lambda_ref_depth:
                # 3b. The reference's relative depth (Magic123): the rendered surface depth where the object is.
                surface = surface_depth(ref_out["depth"], ref_out["opacity"])
                l_depth = pearson_depth_loss(surface, want_depth, want_mask > 0.5)
                loss = loss + stage.lambda_ref_depth * l_depth
                info["loss_ref_depth"] = float(l_depth.detach())

        # 4. Step, or undo a non-finite one.
        opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not finite:
            recoveries += 1
            _restore(good, field, background, opt)
            log.warning("step %d: non-finite loss or gradient; restored the last good state (%d so far)",
                        step + 1, recoveries)
        else:
            opt.step()
            if (step + 1) % snapshot_every == 0:
                good = _snapshot(field, background, opt)
        info["loss"] = float(loss.detach()) if finite else math.nan
        info["nan_recoveries"] = recoveries
        if progress is not None:
            progress(step + 1, stage.steps, info)
    if stage.steps and recoveries == stage.steps:  # the untrained field was exported, exit 0 (a weight of 1e300)
        raise FloatingPointError(f"every one of the stage's {stage.steps} steps gave a non-finite loss or gradient, "
                                 f"so it learnt nothing: lower the weights or the learning rate you raised (e.g. "
                                 f"--depth-weight, --depth-smooth)")
    return {"nan_recoveries": recoveries, "last": info}


def normal_smoothness(field: NeRFField, cams, out: dict, points: int, generator: torch.Generator,
                      perturb: float = 0.01) -> torch.Tensor | None:
    """threestudio's 3D normal smoothness: the mean absolute difference between the field's unit normals
    (:meth:`NeRFField.normals`) at surface points and at the same points moved by Gaussian noise of ``perturb``
    (threestudio's 0.01, in the scene's units). The points: the rendered surface (``depth / opacity`` along each ray)
    of the views' object pixels (opacity > 0.5), at most ``points`` of them drawn at random; detached, so that the
    term shapes the field around the surface, not where the surface is rendered. None when no pixel is on the
    object."""
    op = out["opacity"][..., 0].detach()
    h, w = op.shape[1:3]
    o, d = camera_rays(cams.to(op.device), h, w)
    on = op > 0.5
    if not bool(on.any()):
        return None
    p = (o + d * surface_depth(out["depth"][..., 0].detach(), op)[..., None])[on]
    if len(p) > points:
        p = p[torch.randperm(len(p), generator=generator)[:points].to(p.device)]
    jitter = torch.randn(p.shape, generator=generator).to(p.device) * perturb
    return (field.normals(p) - field.normals(p + jitter)).abs().mean()


def shade_camera_light(out: dict, cams, rgb: torch.Tensor, background, ambient: float = 0.32) -> torch.Tensor:
    """Shades ``rgb [B, H, W, 3]`` (the field's albedo over a plain ``background``, with ``out``'s opacity and depth)
    lit as the mini world lights its objects (:mod:`suite.miniworld.render`, without the highlight): albedo x
    (ambient + (1 - ambient) max(0, n.l)), the key light fixed in camera space, the normals from the rendered depth
    (screen-space differences of the surface points between neighbouring object pixels, none across the
    silhouette), so that shading depends on the geometry."""
    if background.mlp is not None:
        raise ValueError("shading needs a plain-colour NeRF background, not a learned one")
    bg = background.color.to(rgb.device)
    h, w = rgb.shape[1:3]
    op = out["opacity"][..., 0]
    o, d = camera_rays(cams.to(rgb.device), h, w)
    on = op > 0.5  # object pixels; differences are taken only between them (none across the silhouette)
    p = o + d * (out["depth"][..., 0] / op.clamp_min(0.5))[..., None] * on[..., None]
    dx, dy = _surface_tangent(p, on, 2), _surface_tangent(p, on, 1)
    cross = torch.cross(dx, dy, dim=-1)
    n = torch.nn.functional.normalize(cross, dim=-1)
    n = torch.where(((n * d).sum(-1, keepdim=True) > 0), -n, n)  # towards the camera
    n = torch.where(cross.norm(dim=-1, keepdim=True) > 1e-12, n, -d)  # no neighbour on the object: facing the camera
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_CAM, device=rgb.device), dim=0)
    light = torch.einsum("bij,j->bi", cams.c2w[:, :3, :3].to(rgb.device), light)[:, None, None]
    diffuse = (n * light).sum(-1, keepdim=True).clamp_min(0)
    albedo = rgb - (1 - op[..., None]) * bg
    return albedo * (ambient + (1 - ambient) * diffuse) + (1 - op[..., None]) * bg


def _surface_tangent(p: torch.Tensor, on: torch.Tensor, dim: int) -> torch.Tensor:
    """Differences of the surface points ``p [B, H, W, 3]`` along image axis ``dim`` between neighbours that are both
    object pixels (``on``): central where both sides are, one-sided where one is, zero where none is."""
    n = p.shape[dim]
    idx = torch.arange(n, device=p.device)
    nxt, prv = idx.clamp(max=n - 2) + 1, (idx - 1).clamp(min=0)
    has_next = (on & on.index_select(dim, nxt) & (idx < n - 1).view([-1 if i == dim else 1 for i in range(3)]))
    has_prev = (on & on.index_select(dim, prv) & (idx > 0).view([-1 if i == dim else 1 for i in range(3)]))
    fwd = (p.index_select(dim, nxt) - p) * has_next[..., None]
    bwd = (p - p.index_select(dim, prv)) * has_prev[..., None]
    count = (has_next.float() + has_prev.float()).clamp_min(1.0)[..., None]
    return (fwd + bwd) / count


def _snapshot(field, background, opt) -> dict:
    clone = lambda sd: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in sd.items()}  # noqa: E731
    opt_state = opt.state_dict()
    return {"field": clone(field.state_dict()), "background": clone(background.state_dict()),
            "opt": {"state": {k: clone(v) for k, v in opt_state["state"].items()},
                    "param_groups": opt_state["param_groups"]}}


def _restore(snap, field, background, opt) -> None:
    field.load_state_dict(snap["field"])
    background.load_state_dict(snap["background"])
    opt.load_state_dict(snap["opt"])
    opt.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------------
# checkpoints (safetensors; loading never runs code)
def save_checkpoint(field: NeRFField, path: Path, stage: str, extra: dict | None = None) -> Path:
    """Write the field's weights and its config atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in field.state_dict().items()}
    meta = {"stage": stage, "nerf": json.dumps(asdict(field.cfg)), "backend": field.backend,
            "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:  # a full disk: the temporary file goes, suite.failures says "disk full"
        save_file(state, tmp, metadata=meta)
    return path


def check_checkpoint(path: str | Path) -> dict:
    """The metadata of :func:`save_checkpoint`'s file, read from its header only (no tensors, no device): one clear
    error if the file is missing or not a 3D checkpoint of this suite."""
    return _read_checkpoint(Path(path), tensors=False)[0]


def _read_checkpoint(path: Path, tensors: bool) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ValueError(f"the checkpoint {str(path)!r} does not exist: give a .safetensors file from a run's "
                         f"checkpoints/ folder")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
        meta["nerf_config"] = NeRFConfig(**json.loads(meta["nerf"]))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a 3D checkpoint of this suite ({type(err).__name__}): give a "
                         f".safetensors file from a run's checkpoints/ folder") from None
    return meta, state


def load_checkpoint(path: str | Path, device="cpu") -> tuple[NeRFField, dict]:
    """A field from :func:`save_checkpoint`'s file; one clear error if it is not one."""
    path = Path(path)
    meta, state = _read_checkpoint(path, tensors=True)
    cfg = meta.pop("nerf_config")
    backend = meta.get("backend", "torch")
    if backend == "tcnn" and not (torch.device(device).type == "cuda"):
        raise ValueError(f"the checkpoint {str(path)!r} was written with tiny-cuda-nn: export it on a CUDA machine "
                         f"with tiny-cuda-nn installed")
    with building_models():  # not while another thread (an app job) loads a model: suite.threads
        field = NeRFField(cfg, backend=backend)
    field.load_state_dict(state)
    meta["extra"] = json.loads(meta.get("extra", "{}"))
    return field.to(device), meta
