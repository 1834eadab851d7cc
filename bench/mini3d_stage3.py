"""``python -m bench.mini3d_stage3 --output DIR [--prompts ...] [--seeds ...]``: why stage 3 (SDS with the domain
multi-guidance) does or does not make a mini-world object more porcelain (issue 24, part 4).

For each prompt and seed the mini flow runs to stage 2 (cached in ``DIR``), then:

1. **renders**: the judge's porcelain probability on eight turntable renders of the stage-2 NeRF (64 px on the
   world's backdrop, elevation 10), and on the same renders through the VAE alone (encoded and decoded);
2. **the SDS target**: the same renders encoded, noised at ``t`` (fractions of the 1,000 training steps) and
   denoised by stage 3's own guidance (the domain's recommended weights and rule, the prompt as stage 3 reads it):
   in one step (the ``x0`` estimate whose difference from the render is, up to weighting, the SDS gradient) and
   SDEdit-style by DDIM down to ``t = 0`` (where repeated SDS steps lead). Porcelain probability, and how many of
   the eight keep the prompt's shape;
3. **stage 3 itself** from the same stage-2 checkpoint at the default and at longer / stronger settings:
   porcelain probability, shape kept, and the silhouette IoU of the renders against stage 2's (shape kept); the
   meshes (extracted as the export does) against the canonical object of the prompt's class (Chamfer distance in
   the canonical object's heights at the best turn, and its change from stage 2's, paired by case, also as a share
   of stage 2's mean: issue 24 asks for at most +10%) and against stage 2's mesh (how far stage 3 moved the
   surface, in heights of stage 2's mesh).

Beside the judge's porcelain probability every render set gets a **look distance**: the sliced Wasserstein distance
(:func:`suite.metrics.sliced_wasserstein`) between the colours of its object pixels and those of the world's own
porcelain objects of the prompt's class, rendered from the same turntable cameras (the domain's white body with
cobalt paint; what the judge's score is meant to reward). Unlike the judge, it does not reward a dark-blue object
turned grey. The summary gives it for three references as well: other porcelain objects of the class (near 0), the
same blurred over 2 x 2 pixel blocks (a NeRF's renders are about as soft: what a perfect but soft object would
score), and the world's blue objects (plain, striped, dotted) of the class, which are not porcelain.

``--from-world`` starts stage 2 from the renderer's view of a porcelain object of the prompt's class instead of
stage 1's image (:func:`world_input`): what stages 2 and 3 do to an input already in the domain's look.

Writes ``stage3.json``, ``stage3.md`` and ``stage3-targets.png`` (a row per prompt at the first seed: the stage-2
render at azimuth 45, through the VAE, its SDS targets, stage 3's results, and last the renderer's view of the
class's own porcelain object); every figure is a mean over the
prompt-seed cases (the judge's: of 8 views each), +- its standard error over the cases.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from generators3d.cli import image_weight_arg
from suite.miniworld.world import DOMAIN_ELEVATION

log = logging.getLogger("bench.mini3d_stage3")

T_FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8)
AZIMUTHS = tuple(float(a) for a in range(0, 360, 45))
_HIGH_T = dict(steps=150, lambda_sds=0.05, min_step_percent=0.5, max_step_percent=0.9, control_weight=0.0,
               guidance_rule="paper", lambda_zero123=1.0)
VARIANTS = {  # name -> refine StageConfig overrides (from the mini preset's)
    "default": {},  # 30 steps, lambda_sds 0.01, t in [0.2, 0.6]
    "long": dict(steps=150),
    "long-strong": dict(steps=150, lambda_sds=0.05),
    "long-strong-high-t": dict(steps=150, lambda_sds=0.05, min_step_percent=0.4, max_step_percent=0.8),
    # The domain model alone (no text, no noise-level rule: the preset's rule gives high noise to the text, and a body
    # colour is decided there) at high noise, t in [0.5, 0.9]; the shape held by Zero-1-to-3 SDS beside it
    # (Magic123's pairing, same weight and range); then with a reference colour loss a tenth as strong, and with the
    # domain guidance amplified, eps_sd + w_d (eps_d - eps_sd), w_d = 3 / 7 (SDS with no guidance amplification
    # averages colours towards grey, as DreamFusion found for classifier-free guidance).
    "domain-high-t-zero123": {**_HIGH_T, "domain_weight": 1.0},
    "domain-high-t-zero123-rgb50": {**_HIGH_T, "domain_weight": 1.0, "lambda_rgb": 50.0},
    "domain3-high-t-zero123": {**_HIGH_T, "domain_weight": 3.0},
    "domain7-high-t-zero123": {**_HIGH_T, "domain_weight": 7.0},
    # ... and with Zero-1-to-3 weighing three times as much, to hold the shape against the amplified domain term.
    "domain3-high-t-zero123x3": {**_HIGH_T, "domain_weight": 3.0, "lambda_zero123": 3.0},
    "domain7-high-t-zero123x3": {**_HIGH_T, "domain_weight": 7.0, "lambda_zero123": 3.0},
    # The geometry frozen, only the colour head trained (the appearance stage of Magic3D / Fantasia3D / DreamGaussian,
    # on a NeRF): the domain model alone at high noise, amplified (w_d = 7), with the reference colour loss as usual
    # and without it.
    "colour-only-domain7-high-t": {**_HIGH_T, "domain_weight": 7.0, "lambda_zero123": 0.0, "colour_only": True},
    "colour-only-domain7-high-t-rgb0": {**_HIGH_T, "domain_weight": 7.0, "lambda_zero123": 0.0, "lambda_rgb": 0.0,
                                        "colour_only": True},
    # Stage 3 as a dataset update (Instruct-NeRF2NeRF's iterative dataset update, with DreamGaussian's multi-step
    # targets): twelve views of the stage-2 NeRF repainted by the domain guidance (w_d = 3, the domain model alone)
    # by SDEdit with the silhouette held (blended latent diffusion: outside the object the latent is the noised
    # render), the colour refitted at the frozen surface, four rounds from t = 0.7 down to 0.3 (see repaint_stage).
    "repaint-domain3": {"repaint": dict(domain_weight=3.0, t=(0.7, 0.5, 0.4, 0.3))},
    # The domain model's view distribution: its porcelain renders were taken 0-25 degrees up, stage 3's random views
    # range over -10..60 (the mini Zero-1-to-3's); here they stay within the domain's (DOMAIN_ELEVATION).
    "default-domain-views": {"camera": {"elevation_range": DOMAIN_ELEVATION}},
    # The SDF's eikonal term at 4,096 random points per step, the mini preset's stage 3 before 2026-12-06 (1,024 now).
    "default-eikonal-4096": {"eikonal_points": 4096},
    "domain3-high-t-zero123x3-domain-views": {**_HIGH_T, "domain_weight": 3.0, "lambda_zero123": 3.0,
                                              "camera": {"elevation_range": DOMAIN_ELEVATION}},
}


def turntable_cameras(azimuths=AZIMUTHS):
    """The turntable's cameras: 10 degrees up at ``azimuths``, distance 3.8, field of view 20 degrees."""
    from generators3d.cameras import orbit_cameras

    return orbit_cameras(10.0, list(azimuths), 3.8, 20.0)


@torch.no_grad()
def turntable(field, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight renders ``[8, 3, 64, 64]`` in [0, 1] on the world's backdrop and their opacities ``[8, 64, 64]``."""
    from generators3d.nerf import Background
    from generators3d.render import render
    from suite.miniworld.world import BACKGROUND

    out = render(field, Background(BACKGROUND), turntable_cameras(), size, chunk=8192)
    return out["rgb"].permute(0, 3, 1, 2).clamp(0, 1), out["opacity"][..., 0]


def object_colours(rgb: torch.Tensor, opacity: torch.Tensor, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Up to ``n`` colours ``[n, 3]`` of the object's pixels (opacity above 0.5) of renders ``[B, 3, H, W]``."""
    px = rgb.permute(0, 2, 3, 1)[opacity > 0.5].numpy()
    return px[np.random.default_rng(seed).choice(len(px), min(n, len(px)), replace=False)]


@functools.lru_cache(maxsize=64)
def world_colours(shape: str, porcelain: bool, seed: int, objects: int = 4, blur: int = 1) -> np.ndarray:
    """The object colours of the world's own ``objects`` of ``shape`` (porcelain: striped and dotted in the domain's
    glaze; else blue, plain, striped and dotted) from the turntable's cameras: the references of the look distance.
    ``blur``: averaged over ``blur x blur`` pixel blocks first (a NeRF's renders are about that soft). Cached."""
    from suite.miniworld.render import render as render_world
    from suite.miniworld.world import make_object

    rng = np.random.default_rng(seed)
    patterns = ("stripes", "dots") if porcelain else ("plain", "stripes", "dots")
    rgb, alpha = [], []
    for i in range(objects):
        r = render_world(make_object(shape, "blue", patterns[i % len(patterns)], porcelain, rng),
                         turntable_cameras())
        rgb.append(r.rgb)
        alpha.append(r.alpha)
    rgb = torch.cat(rgb)
    if blur > 1:
        rgb = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(rgb, blur), scale_factor=blur,
                                              mode="bilinear")
    return object_colours(rgb, torch.cat(alpha))


def look_distance(rgb: torch.Tensor, opacity: torch.Tensor, reference: np.ndarray) -> float:
    """Sliced Wasserstein distance between the object colours of ``rgb`` and ``reference`` (:func:`world_colours`);
    NaN for renders with no object pixel (a collapsed field), so that one case does not stop the run."""
    from suite.metrics import sliced_wasserstein

    colours = object_colours(rgb, opacity)
    return sliced_wasserstein(colours, reference) if len(colours) else float("nan")


class RepaintedField(torch.nn.Module):
    """A stage-2 field's density, frozen, with its colour read from a trainable copy of its encoding, trunk and colour
    head; the copy reads only the ``levels`` coarsest hash levels (a colour that varies smoothly over the surface:
    the repainted views disagree in detail, and all levels overfit each view's detail as speckle). The base's
    parameters stop requiring gradients (it is held as a submodule, so ``state_dict()`` carries it too)."""

    def __init__(self, base, levels: int = 6):
        from copy import deepcopy

        super().__init__()
        self.base, self.cfg = base, base.cfg
        for p in base.parameters():
            p.requires_grad_(False)
        self.encoding, self.trunk, self.head = deepcopy(base.encoding), deepcopy(base.trunk), deepcopy(base.color_head)
        for module in (self.encoding, self.trunk, self.head):
            module.requires_grad_(True)
        per = base.cfg.n_features_per_level
        self.register_buffer("levels", (torch.arange(base.encoding.output_dim) // per < levels).float())

    @property
    def radius(self) -> float:
        return self.base.radius

    def update_occupancy(self, generator=None) -> None:
        self.base.update_occupancy(generator)

    def occupied(self, x):
        return self.base.occupied(x)

    def density(self, x):
        return self.base.density(x)

    def color(self, x):
        flat = x.reshape(-1, 3).float()
        h = self.trunk(self.encoding((flat / self.cfg.radius + 1.0) * 0.5) * self.levels)
        return torch.sigmoid(self.head(h)).reshape(*x.shape[:-1], 3)

    def forward(self, x, with_color: bool = True):
        sigma = self.base.density(x)
        return (sigma, self.color(x)) if with_color else sigma


def repaint_views(term, rgb: torch.Tensor, opacity: torch.Tensor, t_frac: float, seed: int,
                  ddim_steps: int = 30) -> torch.Tensor:
    """SDEdit of ``rgb`` from ``t_frac`` by ``term``'s guidance with the silhouette held (:func:`ddim_from`): the
    latent cells the object (``opacity [B, H, W]``) does not touch are held. Images in [0, 1]."""
    latent = term.size // term.pipe.vae_scale_factor
    held = (torch.nn.functional.adaptive_avg_pool2d(opacity[:, None], latent) <= 0.02).float()
    out = ddim_from(term, rgb, t_frac, seed, ddim_steps, held)[1]
    return torch.nn.functional.interpolate(out, rgb.shape[-2:], mode="bilinear", align_corners=False) \
        if out.shape[-2:] != rgb.shape[-2:] else out


def repaint_stage(field2, pipe, prompt: str, seed: int, domain_weight: float = 3.0, t=(0.7, 0.5, 0.4, 0.3),
                  views: int = 12, levels: int = 6, fit_steps: int = 300) -> RepaintedField:
    """Stage 3 as a dataset update: ``views`` renders of ``field2`` (30 degrees apart, 5-25 degrees up, between the
    turntable's azimuths) repainted by :func:`repaint_views` with the domain model alone (``w_d``, no text), then the
    colour of a :class:`RepaintedField` fitted to them at the frozen surface (the renders' expected-depth points,
    opacity above 0.5); each further round repaints the current colours from a lower ``t``."""
    from generators3d.cameras import camera_rays, orbit_cameras
    from generators3d.guidance3d import DomainSDS
    from generators3d.nerf import Background
    from generators3d.render import render
    from suite.miniworld.world import BACKGROUND

    term = DomainSDS(pipe, prompt, domain_weight=domain_weight, control_weight=0.0, rule="paper",
                     view_dependent=False)
    cams = orbit_cameras([5.0 + 10.0 * (k % 3) for k in range(views)],
                         [22.5 + 360.0 / views * k for k in range(views)], 3.8, 20.0)
    gen = torch.Generator().manual_seed(seed)
    field2.eval()
    field2.update_occupancy(gen)
    with torch.no_grad():
        out = render(field2, Background(BACKGROUND), cams, 64, chunk=8192)
        o, d = camera_rays(cams, 64, 64)
        keep = out["opacity"].reshape(-1) > 0.5  # the surface: each ray's expected hit distance (depth / opacity)
        points = (o + d * (out["depth"] / out["opacity"].clamp_min(1e-3))).reshape(-1, 3)[keep]
    if not len(points):
        raise ValueError("the stage-2 field renders no object pixel from the repainting views: nothing to repaint")
    opacity = out["opacity"][..., 0]
    current = out["rgb"].permute(0, 3, 1, 2).clamp(0, 1)
    field = RepaintedField(field2, levels)
    opt = torch.optim.Adam([{"params": field.encoding.parameters(), "lr": 1e-2},
                            {"params": [*field.trunk.parameters(), *field.head.parameters()], "lr": 1e-3}])
    for r, t_frac in enumerate(t):
        target = repaint_views(term, current, opacity, t_frac, seed + r).permute(0, 2, 3, 1).reshape(-1, 3)[keep]
        for _ in range(fit_steps):
            idx = torch.randint(len(points), (4096,), generator=gen)
            loss = torch.nn.functional.mse_loss(field.color(points[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            current = render(field, Background(BACKGROUND), cams, 64, chunk=8192)["rgb"]
            current = current.permute(0, 3, 1, 2).clamp(0, 1)
    return field


def geometry(field, r, shape: str) -> tuple[float, tuple]:
    """The field's mesh, extracted as the export does (``r``: the resolved run config; no texture): its Chamfer
    distance (object heights) to the canonical object of the prompt's class at its best turn
    (:func:`bench.mini3d.against_class`), and points sampled on it with their normals."""
    from bench.mini3d import against_class
    from bench.miniworld.geometry import sample_mesh
    from generators3d.run import field_mesh

    mesh, _, _ = field_mesh(field, r.camera, replace(r.export, texture=False))
    chamfer = float(against_class(mesh.vertices, mesh.faces, shape, r.camera.ref_elevation)["chamfer"])
    return chamfer, sample_mesh(mesh.vertices, mesh.faces)


def mesh_change(after: tuple, before: tuple) -> float:
    """Chamfer distance between two sampled meshes (:func:`geometry`), in heights of ``before``: how far stage 3
    moved the surface."""
    from bench.miniworld.geometry import chamfer

    return float(chamfer(*after, *before)["chamfer"] / np.ptp(before[0][:, 2]))


def scores(judge, rgb: torch.Tensor, shape: str, opacity: torch.Tensor | None = None,
           look: np.ndarray | None = None) -> dict:
    """The judge's porcelain probability and the share of views it reads as ``shape``; with ``opacity`` and ``look``
    (:func:`world_colours`), the look distance too."""
    pred = judge.predict(rgb)
    out = dict(porcelain=float(judge.porcelain_probability(rgb).mean()),
               shape_kept=float(np.mean([s == shape for s in pred["shape"]])))
    if look is not None:
        out["look"] = look_distance(rgb, opacity, look)
    return out


@torch.no_grad()
def ddim_from(term, rgb: torch.Tensor, t_frac: float, seed: int, ddim_steps: int = 30,
              held: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rgb`` encoded, noised to ``t_frac`` and denoised by ``term``'s guidance by deterministic DDIM down to 0:
    ``(the one-step x0 estimate at t, the DDIM result)``, as images in [0, 1]. ``held`` (``[B, 1, h, w]`` in the
    latent's size, 1 = held): after every step those latent cells are set back to the input's latent noised to that
    step, so only the rest changes (blended latent diffusion, Avrahami et al. 2023)."""
    pipe = term.pipe
    gen = torch.Generator().manual_seed(seed)
    lat = term.encode(rgb, gen).float()
    acp = pipe.scheduler.alphas_cumprod.float()
    t = int(round(t_frac * (len(acp) - 1)))
    noise = torch.randn(lat.shape, generator=gen)
    z = acp[t].sqrt() * lat + (1 - acp[t]).sqrt() * noise
    den = term.denoiser(torch.full((len(rgb),), 10.0), torch.zeros(len(rgb)))
    steps = torch.linspace(t, 0, max(2, round(ddim_steps * t_frac) + 1)).round().long().tolist()
    x0 = None
    for s, s_prev in zip(steps[:-1], steps[1:]):  # x = (z - sqrt(1 - a) eps) / sqrt(a), then re-noised to s_prev
        a_s, a_p = acp[s], acp[s_prev]
        e = den(z.to(pipe.dtype), torch.full((len(rgb),), s, dtype=torch.long)).float()
        x = (z - (1 - a_s).sqrt() * e) / a_s.sqrt()
        x0 = x if x0 is None else x0
        z = a_p.sqrt() * x + (1 - a_p).sqrt() * e if s_prev > 0 else x
        if held is not None:
            z = held * (a_p.sqrt() * lat + (1 - a_p).sqrt() * noise if s_prev > 0 else lat) + (1 - held) * z

    def decode(x):
        return ((pipe.vae.decode((x / pipe.vae.config.scaling_factor).to(pipe.dtype)).sample.float() + 1) / 2).clamp(0, 1)

    return decode(x0), decode(z)


def run_case(prompt: str, seed: int, out: Path, pipe, judge, variants: dict, zero123_model=None,
             targets: bool = True, from_world: bool = False, image_domain_weight: float | None = None) -> dict:
    """``zero123_model``: the mini Zero-1-to-3, for variants with a Zero-1-to-3 term (``lambda_zero123 > 0``);
    ``targets=False`` skips the SDS-target analysis (step 2); ``from_world``: stage 2 starts from the renderer's view
    of a porcelain object of the prompt's class (:func:`world_input`) instead of stage 1's image;
    ``image_domain_weight``: stage 1's ``w_d`` (``ThreeDConfig.image_domain_weight``; None: the mini preset's)."""
    from bench.mini3d import _shape_named as prompt_shape
    from generators3d import ThreeDConfig, run_text_to_3d
    from generators3d.guidance3d import DomainSDS
    from generators3d.nerf import Background
    from generators3d.run import _load_reference, refine_terms, stage_generator
    from generators3d.stage import load_checkpoint, train_stage
    from suite.zero123 import Zero123Guidance

    shape = prompt_shape(prompt)
    # the folder names the weight stage 1 is drawn with (the preset's when not given), so no run is reused at another
    w_d = ThreeDConfig(preset="mini", prompt=prompt, image_domain_weight=image_domain_weight).stage1_domain_weight()
    wd = "" if from_world else f"-wd{'rec' if w_d is None else repr(w_d)}"
    run = out / f"{prompt.replace(' ', '-')}-{seed}{'-world' if from_world else ''}{wd}"
    given = {} if image_domain_weight is None else dict(image_domain_weight=image_domain_weight)
    if from_world:
        image, mask = world_input(shape, seed, run.with_name(run.name + "-input"))
        given = dict(given, image=str(image), mask=str(mask), elevation=WORLD_INPUT_VIEW[0])
    cfg = ThreeDConfig(preset="mini", prompt=prompt, output=str(run), seed=seed, refine_steps=0,
                       formats=["glb"], preview_frames=2, resume=(run / "config.json").exists(), **given)
    if not (run / "checkpoints" / "stage2-zero123.safetensors").exists():
        run_text_to_3d(cfg)
    r = replace(cfg, refine_steps=None).resolved()  # the preset's stage 3 (the run itself stopped after stage 2)
    field2, _ = load_checkpoint(run / "checkpoints" / "stage2-zero123.safetensors")
    rgb2, op2 = turntable(field2)
    look = world_colours(shape, True, seed=1)
    res = dict(prompt=prompt, seed=seed, shape=shape, stage2=scores(judge, rgb2, shape, op2, look), targets={},
               variants={})
    res["stage2"]["chamfer"], surface2 = geometry(field2, r, shape)
    ref = r.refine
    term = DomainSDS.from_stage(pipe, prompt, ref)
    pics = {"stage 2": rgb2}
    with torch.no_grad():  # the renders through the VAE alone (encode, decode; no noise): what SDS starts from
        lat = pipe.vae.encode((rgb2 * 2 - 1).to(pipe.dtype)).latent_dist.mode()
        pics["vae"] = ((pipe.vae.decode(lat).sample.float() + 1) / 2).clamp(0, 1)
    res["stage2_through_vae"] = scores(judge, pics["vae"], shape, op2, look)
    for tf in T_FRACTIONS if targets else ():
        x0, sdedit = ddim_from(term, rgb2, tf, seed)  # the SDS targets
        res["targets"][str(tf)] = dict(one_step=scores(judge, x0, shape, op2, look),
                                       ddim=scores(judge, sdedit, shape, op2, look))
        pics[f"x0 t={tf}"], pics[f"ddim t={tf}"] = x0, sdedit
    reference = _load_reference(run / "reference.png", run / "reference-mask.png", "cpu")
    guide = None if zero123_model is None else Zero123Guidance(  # for variants with a Zero-1-to-3 term
        zero123_model, reference.rgb, r.camera.ref_elevation, r.camera.ref_azimuth, r.camera.ref_distance)
    for name, over in variants.items():
        over = dict(over)
        camera = replace(r.camera, **over.pop("camera", {}))  # the random views' ranges (the reference stays)
        colour_only = over.pop("colour_only", False)
        repaint = over.pop("repaint", None)
        stage = replace(ref, **over)
        field, _ = load_checkpoint(run / "checkpoints" / "stage2-zero123.safetensors")
        if colour_only:  # the geometry frozen (density and the features it reads); only the colour head learns
            for name_p, param in field.named_parameters():
                param.requires_grad_(name_p.startswith("color_head."))
        t0 = time.time()
        if repaint is not None:
            field = repaint_stage(field, pipe, prompt, seed, **repaint)
        else:
            train_stage(field, Background(), stage, camera, reference, refine_terms(pipe, prompt, stage, guide),
                        generator=stage_generator(seed, "refine"))
        rgb3, op3 = turntable(field)
        inter = ((op3 > 0.5) & (op2 > 0.5)).sum().item()
        union = ((op3 > 0.5) | (op2 > 0.5)).sum().item()
        seconds = round(time.time() - t0, 1)
        chamfer, surface = geometry(field, r, shape)
        res["variants"][name] = dict(scores(judge, rgb3, shape, op3, look), iou_to_stage2=inter / max(union, 1),
                                     seconds=seconds, chamfer=chamfer,
                                     chamfer_change=chamfer - res["stage2"]["chamfer"],
                                     moved=mesh_change(surface, surface2))
        pics[name] = rgb3
    res["pictures"] = pics
    return res


WORLD_INPUT_VIEW = (10.0, 30.0)  # elevation, azimuth of --from-world's input view


def world_input(shape: str, seed: int, folder: Path, porcelain: bool = True) -> tuple[Path, Path]:
    """The renderer's view (:data:`WORLD_INPUT_VIEW`, 256 px on the world's backdrop) of a porcelain object of
    class ``shape`` (striped for even seeds, dotted for odd; its shape parameters drawn from ``seed``, not those of
    the look distance's references) and its exact mask: an input already in the domain's look. ``porcelain=False``:
    its blue twin (the same shape and pattern, the world's plain blue instead of the glaze)."""
    from bench.mini3d import reference_files
    from suite.miniworld.world import make_object

    if (folder / "image.png").is_file() and (folder / "mask.png").is_file():  # written by an earlier run: kept
        return folder / "image.png", folder / "mask.png"
    obj = make_object(shape, "blue", ("stripes", "dots")[seed % 2], porcelain, np.random.default_rng(1000 + seed))
    return reference_files(obj, *WORLD_INPUT_VIEW, folder)


PICTURE_COLUMNS = ("stage 2", "vae", "x0 t=0.2", "x0 t=0.4", "x0 t=0.6", "ddim t=0.4", "ddim t=0.6", "ddim t=0.8")


def world_porcelain_view(shape: str, view: int = 1) -> torch.Tensor:
    """The renderer's view ``[3, 64, 64]`` of the class's canonical object in the domain's glaze, from the turntable's
    camera ``view``: the look the porcelain score is meant to reward."""
    from suite.miniworld.render import render as render_world
    from suite.miniworld.world import make_object

    return render_world(make_object(shape, "blue", "stripes", True), turntable_cameras([AZIMUTHS[view]])).rgb[0]


def picture(cases: list[dict], path: Path, view: int = 1) -> None:
    """One row per case: the stage-2 render (azimuth 45), the SDS targets of that render, stage 3's results, and last
    the world's own porcelain object of the class (:func:`world_porcelain_view`)."""
    from PIL import Image

    rows = []
    for c in cases:
        cols = [*(k for k in PICTURE_COLUMNS if k in c["pictures"]), *c["variants"]]
        rows.append(torch.cat([*(c["pictures"][k][view] for k in cols), world_porcelain_view(c["shape"], view)], -1))
    grid = (torch.cat(rows, -2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(tmp)
    tmp.replace(path)


VARIANT_MEASURES = ("porcelain", "look", "shape_kept", "iou_to_stage2", "chamfer", "chamfer_change", "moved")
COLUMNS = (  # summary key, table header, format
    ("porcelain", "porcelain", "{:.2f}"),
    ("look", "look distance", "{:.3f}"),
    ("look_change", "look change from stage 2 (paired)", "{:+.3f}"),
    ("shape_kept", "prompt's shape kept", "{:.2f}"),
    ("iou_to_stage2", "silhouette IoU to stage 2", "{:.2f}"),
    ("chamfer", "Chamfer to the class", "{:.3f}"),
    ("chamfer_change", "Chamfer change from stage 2", "{:+.3f}"),
    ("chamfer_change_share", "change / stage 2's mean", "{:+.0%}"),
    ("moved", "Chamfer to stage 2's mesh", "{:.3f}"),
)


def summarise(cases: list[dict]) -> dict:
    from suite.metrics import sliced_wasserstein, standard_error

    def ms(values):
        return [float(np.mean(values)), standard_error(values)]  # None: one case

    shapes = sorted({c["shape"] for c in cases})  # the look distance's scale: the world's own objects of each class
    out = {"the world's porcelain (other objects of the class)": {"look": ms(
               [sliced_wasserstein(world_colours(s, True, seed=2), world_colours(s, True, seed=1)) for s in shapes])},
           "the same, blurred (2 x 2 pixel blocks)": {"look": ms(
               [sliced_wasserstein(world_colours(s, True, seed=2, blur=2), world_colours(s, True, seed=1))
                for s in shapes])},
           "the world's blue objects (not porcelain)": {"look": ms(
               [sliced_wasserstein(world_colours(s, False, seed=3), world_colours(s, True, seed=1))
                for s in shapes])},
           "stage 2": {k: ms([c["stage2"][k] for c in cases]) for k in ("porcelain", "look", "shape_kept", "chamfer")},
           "the same through the VAE": {k: ms([c["stage2_through_vae"][k] for c in cases])
                                        for k in ("porcelain", "look", "shape_kept")}}
    for tf in T_FRACTIONS if cases[0]["targets"] else ():
        for kind in ("one_step", "ddim"):
            out[f"target {kind} t={tf}"] = {k: ms([c["targets"][str(tf)][kind][k] for c in cases])
                                            for k in ("porcelain", "look", "shape_kept")}
    stage2_chamfer = float(np.mean([c["stage2"]["chamfer"] for c in cases]))
    for name in cases[0]["variants"]:
        row = {k: ms([c["variants"][name][k] for c in cases]) for k in VARIANT_MEASURES}
        row["look_change"] = ms([c["variants"][name]["look"] - c["stage2"]["look"] for c in cases])  # paired
        change, se = row["chamfer_change"]  # as a share of stage 2's mean Chamfer (the issue's "+10%")
        row["chamfer_change_share"] = [change / stage2_chamfer, None if se is None else se / stage2_chamfer]
        out[f"stage 3: {name}"] = row
    return out


def table(summary: dict) -> str:
    lines = ["| what is measured | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in summary.items():
        cells = [(fmt.format(row[k][0]) + (" ± " + fmt.format(row[k][1]).lstrip("+") if row[k][1] is not None else ""))
                 if k in row else "" for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini3d_stage3", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder for the runs (reused when run again) and the results")
    p.add_argument("--prompts", nargs="+", default=["a cup", "a box", "a ball", "a bottle"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["default", "long-strong", "long-strong-high-t"],
                   choices=list(VARIANTS),
                   help="stage-3 settings to run from each stage-2 checkpoint: default (the mini preset: 30 steps, "
                        "lambda_sds 0.01, t in [0.2, 0.6]), long (150 steps), long-strong (150 steps, lambda_sds "
                        "0.05), long-strong-high-t (the same with t in [0.4, 0.8]), domain-high-t-zero123 (the domain "
                        "model alone at t in [0.5, 0.9] with Zero-1-to-3 SDS beside it), domain-high-t-zero123-rgb50 "
                        "(the same, the reference colour loss 50 instead of 500), domain3-/domain7-high-t-zero123 (the domain "
                        "guidance amplified, w_d = 3 / 7), the same with x3 (Zero-1-to-3 weighing 3), "
                        "default-domain-views and domain3-high-t-zero123x3-domain-views (random views only 0-25 "
                        "degrees up, where the domain model's renders were taken), default-eikonal-4096 (the "
                        "SDF's eikonal term at 4,096 points per step, as before, instead of 1,024), colour-only-domain7-high-t[-rgb0] "
                        "(the geometry frozen, only the colour head trained; -rgb0: without the reference colour "
                        "loss), repaint-domain3 (twelve views repainted by the domain model with the silhouette held, "
                        "the colour refitted at the frozen surface, four rounds); default: %(default)s")
    p.add_argument("--no-targets", action="store_true", help="skip the SDS-target analysis (only run the variants)")
    p.add_argument("--from-world", action="store_true",
                   help="start stage 2 from the renderer's view of a porcelain object of the prompt's class instead "
                        "of stage 1's image: what stages 2 and 3 do to an input already in the domain's look")
    p.add_argument("--image-domain-weight", type=image_weight_arg, default=None, metavar="W_D",
                   help="stage 1's w_d (default: the mini preset's, as launch.py 3d --preset mini; 'recommended' "
                        "or 1: the domain's recommended weight)")
    args = p.parse_args(argv)
    if args.from_world and args.image_domain_weight is not None:
        print("error: --image-domain-weight sets stage 1's image, which --from-world replaces: drop one of them",
              file=sys.stderr)
        return 2
    from bench.mini3d import _shape_named as prompt_shape
    from suite.cli import quiet_libraries

    quiet_libraries()
    bad = [q for q in args.prompts if prompt_shape(q) is None]
    if bad:
        print(f"error: the prompt(s) {bad} name no shape of the mini world: use e.g. 'a cup'", file=sys.stderr)
        return 2
    from bench import claim_output

    # a user's folder: one sentence, before any work (earlier outputs: the results, the cases' inputs and runs)
    out = claim_output(args.output, "bench.mini3d_stage3", ("stage3.json", "*-world-input/mask.png",
                                                            "*-[0-9]*/checkpoints/stage2-zero123.safetensors"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    from suite.files import write_text_atomic
    from suite.miniworld import assets
    from suite.presets import build_pipeline

    judge = assets.load_judge()
    pipe = build_pipeline("mini", "porcelain", None, None, None, False, "cpu", None)  # loaded once for every case
    variants = {k: VARIANTS[k] for k in args.variants}
    zero123_model = None
    if any(v.get("lambda_zero123", 0) > 0 for v in variants.values()):
        from suite.presets import zero123_ref
        from suite.zero123 import load_zero123

        zero123_model = load_zero123(zero123_ref("mini"))
    cases = []
    for prompt in args.prompts:
        for seed in args.seeds:
            try:  # e.g. a run of an earlier default in --output, which --resume refuses: one sentence
                cases.append(run_case(prompt, seed, out, pipe, judge, variants, zero123_model, not args.no_targets,
                                      args.from_world, args.image_domain_weight))
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            log.info("%s seed %d: %s", prompt, seed,
                     json.dumps({k: v for k, v in cases[-1].items() if k != "pictures"}))
    summary = summarise(cases)
    picture([c for c in cases if c["seed"] == args.seeds[0]], out / "stage3-targets.png")
    cases = [{k: v for k, v in c.items() if k != "pictures"} for c in cases]
    write_text_atomic(out / "stage3.json", json.dumps(dict(args=vars(args), cases=cases, summary=summary), indent=2))
    write_text_atomic(out / "stage3.md", table(summary))
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
