"""Typed configuration of a text-to-3D run: plain dataclasses with documented defaults (no torch import).

:class:`ThreeDConfig` is what the CLI, the app and tests fill in; :meth:`ThreeDConfig.resolved` fills the
per-stage settings from the preset (``"full"``: real models, threestudio's Zero-1-to-3 defaults; ``"tiny"``:
tiny random models, CPU-sized everything) and applies the top-level step overrides.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from suite.checks import MAX_SEED, MAX_STEPS, check_finite, check_int, check_prompt, check_range
from suite.threads import usable_cores

FORMATS = ("glb", "obj", "ply")
PREVIEWS = ("mesh", "nerf")  # what preview.gif turns round: the exported mesh (default) or the final NeRF
GEOMETRIES = ("density", "sdf")  # NeRFConfig.geometry
REF_DEPTH_WEIGHT = 10.0  # lambda_ref_depth of --depth (measured on the mini world: docs/3d-measurements.md, "Reference depth")
DEPTH_MODES = ("auto", "off")  # --depth: estimate the reference's depth, or none; anything else is a depth image


MODEL_FLAGS = ("sd_model", "domain_model", "zero123_model", "depth_model")


def model_ref(ref: str | None) -> str | None:
    """A model reference as the run records it: a local folder as its absolute path (the same folder from any
    current folder), anything else (a hub id, ``none``) as given."""
    if ref in (None, ""):
        return ref
    return absolute_path(ref) if Path(os.path.expanduser(str(ref))).is_dir() else ref


def absolute_path(path: str | None) -> str | None:
    """An input file's path as the run records it: absolute (``~`` expanded), so that ``config.json``, ``--resume``
    and ``--config`` mean the same file from any folder (a relative one was read against the current folder)."""
    return None if path in (None, "") else os.path.abspath(os.path.expanduser(str(path)))
SDF_EIKONAL = 1.0  # the eikonal weight of --geometry sdf (measured on the mini world: docs/3d-measurements.md, "SDF geometry")
STAGES = ("image", "zero123", "refine", "export", "preview")
RECOMMENDED = "recommended"  # --image-domain-weight recommended: the domain's recommended weights for stage 1


def is_recommended(value) -> bool:
    """Whether a weight setting is the word ``recommended`` (any case, spaces around it)."""
    return isinstance(value, str) and value.strip().lower() == RECOMMENDED


@dataclass
class NeRFConfig:
    """Hash-grid NeRF (threestudio's ``implicit-volume`` defaults, scene radius 1 instead of 2).

    World frame: Z up (threestudio's), object at the origin inside the sphere of ``radius``. Density is
    ``softplus(raw + blob_density * (1 - |x| / blob_radius))`` (Magic3D's blob initialisation, so a fresh
    field already renders a ball), or with ``geometry="sdf"`` VolSDF's density of a signed distance (below); colour
    is ``sigmoid`` of the colour head (view-independent albedo).
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378
    hidden: int = 64
    n_hidden_layers: int = 2
    radius: float = 1.0
    blob_density: float = 10.0
    blob_radius: float = 0.5
    samples_per_ray: int = 128
    backend: str = "auto"  # "auto" (tiny-cuda-nn on CUDA when importable), "torch", "tcnn"
    # Empty-space skipping (Instant-NGP's occupancy grid, in PyTorch): a ``occupancy_grid^3`` grid of cells whose
    # density exceeds ``occupancy_threshold`` (refreshed every ``occupancy_every`` training steps, dilated by one
    # cell); samples in empty cells are not evaluated. 0 = off (every sample evaluated).
    occupancy_grid: int = 0
    occupancy_threshold: float = 0.1
    occupancy_every: int = 8
    # Geometry: "density" (the above) or "sdf": a signed distance ``d = raw + |x| - blob_radius`` (a sphere at
    # first) turned into density by VolSDF's rule ``sigma = Laplace_cdf(-d; beta) / beta`` (Yariv et al. 2021),
    # with ``beta`` learned from ``sdf_beta``. The surface is the level d = 0 (density 1 / (2 beta)); stages add
    # the eikonal term ``lambda_eikonal`` (|grad d| = 1, by central differences of a fixed step 0.005, where
    # Neuralangelo ties the step to the finest grid cell and anneals it). Density is a function of the distance to
    # one surface: no half-transparent film or soft shell. beta is kept above 1e-3 (no gradient below).
    geometry: str = "density"
    sdf_beta: float = 0.03


@dataclass
class CameraConfig:
    """Random views around the object (threestudio's zero123.yaml: fixed distance and field of view,
    as Zero-1-to-3 was trained) and the reference view of the input image."""

    elevation_range: tuple[float, float] = (-10.0, 80.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (3.8, 3.8)
    fovy_range: tuple[float, float] = (20.0, 20.0)
    ref_elevation: float = 5.0
    ref_azimuth: float = 0.0
    ref_distance: float = 3.8
    ref_fovy: float = 20.0


@dataclass
class StageConfig:
    """One SDS stage. ``milestones``/``resolutions``/``batch_sizes``: progressive render resolution (render
    ``resolutions[i]`` with ``batch_sizes[i]`` random views from step ``milestones[i]``); renders are resized
    to the diffusion model's input size before encoding. Timestep range: ``min_step_percent`` /
    ``max_step_percent`` are numbers or threestudio-style ``[start_step, start_value, end_value, end_step]``
    linear annealing schedules."""

    steps: int = 600
    lr: float = 0.01
    milestones: tuple[int, ...] = (0, 200, 300)
    resolutions: tuple[int, ...] = (64, 128, 256)
    batch_sizes: tuple[int, ...] = (12, 4, 2)
    ref_resolution: int = 256
    # The share of the reference view's pixels rendered for its losses each step (a new random subset every step,
    # an unbiased estimate of the whole view's losses); 1 = the whole view, as threestudio.
    ref_ray_fraction: float = 1.0
    min_step_percent: float | list = field(default_factory=lambda: [0, 0.4, 0.2, 200])
    max_step_percent: float | list = field(default_factory=lambda: [0, 0.85, 0.5, 200])
    weighting: str = "sds"
    grad_clip: float | None = None
    lambda_sds: float = 0.1
    lambda_rgb: float = 500.0
    lambda_mask: float = 50.0
    lambda_opaque: float = 0.0
    # Depth smoothness on the random views (RegNeRF's depth-smoothness prior, second order so that planes and slow
    # curves cost nothing): the squared second differences of the rendered surface depth between neighbouring
    # object pixels, depth jumps (silhouettes inside the object) left out (or a robust penalty of them:
    # depth_smooth_robust). 0 = off.
    lambda_depth_smooth: float = 0.0
    # > 0: the depth smoothness as Charbonnier's penalty of this scale (scene units) instead of the square (the mini
    # preset's stage 2: 0.003). 0 = the square.
    depth_smooth_robust: float = 0.0
    # The reference view's relative depth (``--depth``; Magic123's and threestudio's ``lambda_depth_rel``): weight of
    # 1 - Pearson correlation between the rendered surface depth and the given depth on the object's pixels. 0 = off.
    lambda_ref_depth: float = 0.0
    # Depth of the random views (``--view-depth-weight``): weight of the mean over the SDS views of 1 - Pearson
    # correlation between each view's rendered surface depth and a monocular depth estimate of that view's own render
    # (the estimator reads the shape its colours show: a lid painted with a bowl's inside reads as a hollow), on the
    # rendered object. Needs a depth estimator (the run's --depth-model). 0 = off (every preset: on the mini world it
    # opened the bowl's cavity a little and changed the other shapes by nothing measurable; docs/3d-measurements.md, "Depth of the
    # random views").
    lambda_view_depth: float = 0.0
    lambda_eikonal: float = 0.0  # sdf geometry only: weight of mean (|grad d| - 1)^2 at random points
    eikonal_points: int = 4096  # how many random points of the scene's cube the eikonal term takes per step
    # 3D normal smoothness (threestudio's ``lambda_3d_normal_smooth``, 0.5 in its zero123 system): the mean absolute
    # difference between the field's unit normal at points of the random views' rendered surface and at the same
    # points moved by a random 0.01 (threestudio's perturbation). 0 = off.
    lambda_normal_smooth_3d: float = 0.0
    normal_smooth_points: int = 1024  # how many of the views' surface points the term takes per step (at most)
    # Experimental (``--shading``): the SDS views and the reference view (then always whole: ``ref_ray_fraction`` is
    # ignored) are rendered lit as the mini world lights its objects (generators3d.stage.shade_camera_light: a key
    # light fixed to the camera, normals from the rendered depth), so that the shape, not only the colour, has to
    # explain the shading. Needs a plain-colour background.
    shading: bool = False
    # Zero-1-to-3: its CFG weight (one MultiGuidance term; threestudio's guidance_scale 3).
    zero123_guidance_scale: float = 3.0
    # refinement only: the domain multi-guidance and an optional Zero-1-to-3 SDS term (Magic123).
    domain_weight: float | str | None = None  # None: the domain's recommended weight (the pipeline decides); "auto"
    control_weight: float | str | None = None
    guidance_rule: str | None = None  # None: the domain's recommended rule where it fits; suite.rules
    w0: float = 7.0
    lambda_zero123: float = 0.0
    view_dependent_prompting: bool = True
    # The colour the SDS terms see behind the object (None: the NeRF's white background). A denoiser trained on
    # another backdrop (the mini world's grey) sees its own; the reference-view losses stay on white.
    sds_background: tuple[float, float, float] | None = None


MAX_SDS_STEPS = 10000       # per stage (threestudio's recipes use 600 to 2000)
MAX_MESH_RESOLUTION = 1024  # a 1024^3 density grid is 4 GB of float32
MAX_FRAMES = 360
MAX_SMOOTH = 500            # smoothing steps; more only flattens detail further

#: the sizes a run's config may set (a --config file or ThreeDConfig from Python skipped the CLI's limits, and the
#: NeRF's and stages' sizes had none: a hash table of 2^40 entries tried to allocate 70 TB): field -> (limit, why).
#: ``allow_large`` (--allow-large) lifts them.
SIZE_LIMITS = {
    "image_steps": (MAX_STEPS, "sampling steps"),
    "preview_frames": (MAX_FRAMES, "turntable frames"),
    "nerf.log2_hashmap_size": (24, "2^24 entries a level: Instant-NGP's largest"),
    "nerf.n_levels": (32, "hash-grid levels"),
    "nerf.n_features_per_level": (8, "features a level"),
    "nerf.base_resolution": (4096, "the coarsest level's grid"),
    "nerf.hidden": (1024, "the MLP's width"),
    "nerf.n_hidden_layers": (16, "the MLP's depth"),
    "nerf.samples_per_ray": (1024, "samples a ray"),
    "nerf.occupancy_grid": (512, "the occupancy grid's side"),
    "zero123.steps": (MAX_SDS_STEPS, "SDS steps a stage"),
    "refine.steps": (MAX_SDS_STEPS, "SDS steps a stage"),
    "zero123.resolutions": (1024, "pixels a side of the rendered views"),
    "refine.resolutions": (1024, "pixels a side of the rendered views"),
    "zero123.batch_sizes": (64, "views a step"),
    "refine.batch_sizes": (64, "views a step"),
    "zero123.ref_resolution": (1024, "pixels a side of the reference view"),
    "refine.ref_resolution": (1024, "pixels a side of the reference view"),
    "export.resolution": (MAX_MESH_RESOLUTION, "the marching-cubes grid's side: 4 GB of float32 at 1024"),
    "export.threshold_resolution": (512, "pixels a side of the threshold's views"),
    "export.smooth": (MAX_SMOOTH, "smoothing steps"),
    "export.texture_size": (4096, "pixels a side: the bake's peak memory is 3.3 GB at 4096, about 11 GB at 8192"),
}


def check_sizes(cfg) -> None:
    """Every size in :data:`SIZE_LIMITS` of a resolved ``cfg`` within its limit, unless ``cfg.allow_large``: one
    sentence naming the field otherwise."""
    if cfg.allow_large:
        return
    for name, (limit, why) in SIZE_LIMITS.items():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        for v in value if isinstance(value, list | tuple) else (value,):
            if v is not None and not isinstance(v, bool) and isinstance(v, int | float) and v > limit:
                raise ValueError(f"{name} is {v}, over the limit of {limit} ({why}): lower it, or lift the limits "
                                 f"with --allow-large (allow_large=True)")


MIN_HEIGHT_M, MAX_HEIGHT_M = 1e-4, 1e4  # --height-m


def _check_views(nerf, camera, *stages) -> None:
    """What only a --config file or Python can set wrong, in one sentence each before anything runs: a stage's
    views (resolutions and batch sizes of 0 failed in torch's words after stage 1, milestones not starting at 0 as
    "max() arg is an empty sequence") and the reference camera (a field of view or distance of 0 trained to the end,
    then found no surface; an elevation of 120 degrees ran)."""
    for stage, name in zip(stages, ("zero123", "refine")):
        ms, rs, bs = (tuple(getattr(stage, k)) for k in ("milestones", "resolutions", "batch_sizes"))
        if not (len(ms) == len(rs) == len(bs) >= 1):
            raise ValueError(f"{name}.milestones, resolutions and batch_sizes have {len(ms)}, {len(rs)} and {len(bs)} "
                             f"entries: give one of each per phase of the stage")
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in ms + rs + bs)
        if not whole or ms[0] != 0 or any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"{name}.milestones is {list(ms)}: give the steps each phase starts at, whole numbers "
                             f"rising from 0")
        for key, values, low in (("resolutions", rs, 8), ("batch_sizes", bs, 1)):
            if min(values) < low:
                raise ValueError(f"{name}.{key} is {list(values)}: give whole numbers of at least {low}")
    fovy, dist, el = camera.ref_fovy, camera.ref_distance, camera.ref_elevation
    for value, what, ok in ((fovy, "camera.ref_fovy (the field of view, degrees)", lambda v: 0 < v < 180),
                            (dist, f"camera.ref_distance (from the object's centre; its sphere's radius is "
                                   f"{nerf.radius:g})", lambda v: nerf.radius < v < math.inf),
                            (el, "camera.ref_elevation (degrees)", lambda v: -80 <= v <= 80)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"{what} is {value!r}: give a number within its range (fovy above 0 and below 180, "
                             f"distance beyond the sphere, elevation from -80 to 80)")


# texture side in pixels (8192^2 RGB is 200 MB before PNG compression); above 4096 only with --allow-large
# (SIZE_LIMITS): the bake holds several float arrays a texel, peak 0.76 GB at 1024, 3.3 GB at 4096, about 11 GB at 8192
MIN_TEXTURE, MAX_TEXTURE = 16, 8192
MAX_SIDE_VIEWS = 8  # Zero-1-to-3 views of the hidden sides for the export's colours


@dataclass
class ExportConfig:
    """Mesh export (CPU). ``threshold=None``: automatic (the density level whose surface has the silhouettes the
    renders show, see :func:`generators3d.mesh.auto_threshold`). Pieces with fewer faces than
    ``min_piece_fraction`` of the largest are removed. ``threshold_resolution``: the side in pixels of the renders
    the automatic threshold reads (tiny: 32, a quarter of the rays). ``smooth``: steps of Taubin smoothing (each a
    shrink and an inflate: a low-pass filter that keeps the volume; marching cubes of a NeRF is rough at the voxel
    scale; 0 = off).
    ``decimate``: target face count before UV unwrapping (vertex clustering; None = keep). ``texture``: bake a ``texture_size``-pixel UV texture (xatlas) for the GLB and the
    OBJ (the vertex-coloured GLB is then written beside it as ``model-vertex-colors.glb``). ``height_m``: scale so
    the object is this tall in metres (None: 1 scene unit = 1 m). ``on_ground``: put the base at y = 0.
    ``project_reference`` / ``side_views``: see below and docs/3d.md, "Colours from the images"."""

    resolution: int = 256
    threshold: float | None = None
    threshold_resolution: int = 64
    min_piece_fraction: float = 0.05
    smooth: int = 0
    decimate: int | None = None
    texture: bool = True
    texture_size: int = 1024
    height_m: float | None = None
    on_ground: bool = True
    # Colours from images (generators3d.texture): the reference view projected onto the faces it sees, and
    # ``side_views`` Zero-1-to-3 views of the sides it does not see (SDEdit of the mesh's renders from ``side_strength``
    # of the schedule, ``side_steps`` DDIM steps) projected there; 0 = the NeRF's colours there.
    project_reference: bool = True
    side_views: int = 3
    side_strength: float = 0.6
    side_steps: int = 30
    # the side views keep what the projected reference shows there (blended latent diffusion: the model draws the
    # rest to join it, so the patterns of the reference and of the side views meet with less of a seam)
    side_keep_reference: bool = True
    # where they keep the projected reference (project_reference and side_keep_reference; else all at once): the
    # side views drawn in turns, the back first (generators3d.texture.side_batches), each turn keeping what the
    # reference and the turns before it show, so that side views meet with less of a seam; one Zero-1-to-3 call per
    # turn (3 views: 2 turns; 5: 4; 8: 7)
    side_in_turn: bool = True


# At SD1.5 size the pure-PyTorch NeRF, not the diffusion models, sets the pace: on an H200, the occupancy grid
# (threestudio's renderers prune empty space with one by default: grid_prune) and a quarter of the reference view's
# rays per step (an unbiased estimate of its losses; measured on the mini world, which uses both) made the first
# steps of stage 2 2.45x and of stage 3 2.54x faster (docs/3d.md, "Speed").
def _nerf_full() -> NeRFConfig:
    return NeRFConfig(occupancy_grid=32)


def _zero123_full() -> StageConfig:
    return StageConfig(ref_ray_fraction=0.25)


def _refine_full() -> StageConfig:
    # Magic123's timestep range t in [0.2, 0.6]; SD works at 512 (renders 128 -> 256 resized to 512).
    return StageConfig(steps=400, lr=0.005, milestones=(0, 200), resolutions=(128, 256), batch_sizes=(2, 1),
                       min_step_percent=0.2, max_step_percent=0.6, lambda_sds=0.01, lambda_rgb=500.0,
                       lambda_mask=50.0, ref_ray_fraction=0.25)


def _zero123_tiny() -> StageConfig:
    return StageConfig(steps=40, milestones=(0, 20), resolutions=(24, 32), batch_sizes=(2, 1), ref_resolution=32,
                       min_step_percent=[0, 0.4, 0.2, 20], max_step_percent=[0, 0.85, 0.5, 20])


def _refine_tiny() -> StageConfig:
    return StageConfig(steps=20, lr=0.005, milestones=(0,), resolutions=(32,), batch_sizes=(1,), ref_resolution=32,
                       min_step_percent=0.2, max_step_percent=0.6, lambda_sds=0.01)


def _zero123_mini() -> StageConfig:
    # The mini Zero-1-to-3 works at 64 x 64: renders 32 -> 48 (resized to 64), the reference view at 64, a quarter of
    # its pixels per step. 100 steps: the flagship in about a minute on 2 cores with the geometry of the former 150
    # steps at 32 -> 64 and whole reference views (docs/3d.md, "Speed").
    # Depth smoothness 10,000: measured from ground-truth views of a cup and a box, 0 / 1,000 / 10,000 / 30,000 gave
    # normal consistency 0.74 / 0.78 / 0.88 / 0.88 (cup) and 0.70 / 0.71 / 0.82 / 0.83 (box), Chamfer flat to 10,000
    # and worse above (docs/3d-measurements.md). The eikonal term of the preset's SDF geometry (_nerf_mini), at 1,024 random points
    # per step instead of 4,096: on six known objects x three seeds the same geometry (Chamfer -0.001 +- 0.001, normal
    # consistency +0.001 +- 0.003, paired) and stage 2 9 +- 2 s faster (docs/3d-measurements.md, "Eikonal points").
    # The depth smoothness as Charbonnier's penalty of scale 0.003 (about the median second difference of a finished
    # stage's renders) rather than the square: on the six known objects x three seeds Chamfer -0.0022 +- 0.0005
    # (lower in 17 of 18), held-out IoU +0.009 +- 0.002, normal consistency +0.002 +- 0.001 (docs/3d-measurements.md, "Robust
    # depth smoothness").
    return StageConfig(steps=100, milestones=(0, 50), resolutions=(32, 48), batch_sizes=(4, 2), ref_resolution=64,
                       ref_ray_fraction=0.25, min_step_percent=[0, 0.4, 0.2, 70], max_step_percent=[0, 0.85, 0.5, 70],
                       lambda_depth_smooth=10000.0, depth_smooth_robust=0.003, lambda_eikonal=SDF_EIKONAL,
                       eikonal_points=1024)


def _refine_mini() -> StageConfig:
    # The mini base reads no view words ("front view"...) and was trained on the world's grey backdrop.
    from suite.miniworld.world import BACKGROUND

    # The eikonal term at 1,024 points, as stage 2's: on nine prompted runs (a cup, a box, a ball; seeds 0-2) the
    # same look and shape as at 4,096 (Chamfer to the class +0.0005 +- 0.0006, judge's porcelain +0.01 +- 0.01),
    # stage 3 2 +- 1.5 s faster (docs/3d-measurements.md, "Eikonal points").
    return StageConfig(steps=30, lr=0.005, milestones=(0,), resolutions=(48,), batch_sizes=(2,), ref_resolution=64,
                       ref_ray_fraction=0.25, min_step_percent=0.2, max_step_percent=0.6, lambda_sds=0.01,
                       view_dependent_prompting=False, sds_background=tuple(BACKGROUND), lambda_eikonal=SDF_EIKONAL,
                       eikonal_points=1024)


def _nerf_mini() -> NeRFConfig:
    # SDF geometry: from ground-truth views of the six known objects, three seeds, against the density field:
    # Chamfer lower on every class on average (the box 0.063 -> 0.049, two seeds of three within issue 24's 0.05;
    # the bowl still filled), normal consistency and held-out IoU up, the same time (docs/3d-measurements.md, "SDF geometry").
    return NeRFConfig(n_levels=12, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.3, hidden=32,
                      n_hidden_layers=1, samples_per_ray=48, occupancy_grid=32, geometry="sdf")


def _camera_mini() -> CameraConfig:
    # The elevations the mini Zero-1-to-3 was trained on (targets -10..60); stage 1's porcelain views are taken
    # from 0 to 25 degrees up, hence a reference elevation of 10.
    return CameraConfig(elevation_range=(-10.0, 60.0), ref_elevation=10.0)


def _nerf_tiny() -> NeRFConfig:
    return NeRFConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.5, hidden=32,
                      n_hidden_layers=1, samples_per_ray=32)


@dataclass(frozen=True)
class PresetSizes:
    """The 3D flow's sizes for one preset (its stages, grid and preview), and its defaults for the stage-1 prompt,
    guidance and mask. The one table of them is :data:`PRESET_SIZES`, keyed by the preset's name
    (:mod:`suite.presets`). ``image_domain_weights``: stage 1's ``w_d`` for the preset's own domain models, as
    ``(domain, w_d)`` pairs (a domain not named: its recommended weights; :meth:`ThreeDConfig.stage1_domain_weight`)."""

    nerf: object
    camera: object
    zero123: object
    refine: object
    export: object
    preview_frames: int
    preview_size: int
    mask_method: str = "auto"
    background_prompt: str = ", plain white background"
    image_domain_weights: tuple[tuple[str, float], ...] = ()
    depth: str = "off"  # --depth when none is given: "auto" (the preset's depth model) or "off"


PRESET_SIZES: dict[str, PresetSizes] = {
    "full": PresetSizes(_nerf_full, CameraConfig, _zero123_full, _refine_full, ExportConfig, 36, 256),
    "mini": PresetSizes(_nerf_mini, _camera_mini, _zero123_mini, _refine_mini,
                        lambda: ExportConfig(resolution=80, texture_size=256, smooth=15), 24, 128,
                        # the mini world's renders have no background words; stage 1 at w_d 1.25 gives the object
                        # the domain's look at little cost to the prompt's shape (bench.mini3d_stage1, docs/3d-measurements.md)
                        background_prompt="", image_domain_weights=(("porcelain", 1.25),), depth="auto"),
    "tiny": PresetSizes(_nerf_tiny, CameraConfig, _zero123_tiny, _refine_tiny,
                        lambda: ExportConfig(resolution=48, texture_size=128, threshold_resolution=32, side_views=0),
                        8, 64,
                        mask_method="center"),  # random images: no object to find
}


@dataclass
class ThreeDConfig:
    """One text-to-3D run (``python launch.py 3d``). ``None`` fields take the preset's value.

    * ``prompt`` / ``domain``: stage 1 makes an in-domain image (domain preset or your own ``domain_model``).
    * ``image`` / ``mask``: your own image (and optional mask) instead of stage 1.
    * ``zero123_steps`` / ``refine_steps``: per-stage step counts (0 skips a stage).
    * ``elevation``: the camera elevation (degrees) of the input image (None: the preset's reference view).
    * ``formats``: mesh formats among ``glb``, ``obj``, ``ply``.
    * ``resume``: continue a run in ``output``; finished stages are loaded, not run again.
    * ``export_only``: a stage checkpoint to turn into meshes (no training).
    """

    prompt: str = ""
    domain: str = "porcelain"
    preset: str = "full"
    output: str = "outputs/3d"
    image: str | None = None
    mask: str | None = None
    mask_method: str | None = None  # "auto" (plain background) or "center"; None: auto ("center" for tiny)
    sd_model: str | None = None
    domain_model: str | None = None
    zero123_model: str | None = None
    image_steps: int = 25
    # w_d of stage 1's in-domain image: a number; "recommended" (the domain's recommended weights, as the pipeline
    # decides); None: the preset's for its own domain model (mini porcelain: 1.25), else the recommended ones
    # (stage1_domain_weight). The image decides the object's look; on the mini world 1.25-1.5 gives it the domain's
    # look at some cost to the prompt's shape. Unused with --image.
    image_domain_weight: float | str | None = None
    zero123_steps: int | None = None
    refine_steps: int | None = None
    elevation: float | None = None
    formats: tuple[str, ...] = FORMATS
    mesh_resolution: int | None = None
    threshold: float | None = None
    texture: bool | None = None
    texture_size: int | None = None
    project_reference: bool | None = None  # None: the preset's export (export.project_reference, side_views)
    side_views: int | None = None
    resume: bool = False
    export_only: str | None = None
    seed: int = 0
    allow_large: bool = False  # lift SIZE_LIMITS (--allow-large)
    threads: int | None = None  # torch CPU threads the run used (recorded; a --resume uses the same: bit-identical)
    device: str | None = None
    dtype: str | None = None
    preview_frames: int | None = None
    preview: str = "mesh"  # preview.gif: the exported mesh as a viewer shows it, or "nerf" (the final NeRF's renders)
    background_prompt: str | None = None  # appended to the prompt (None: ", plain white background"; mini: "")
    # The NeRF's geometry (None: the preset's): "density" or "sdf" (VolSDF: a signed distance with the eikonal term
    # in both SDS stages, weight SDF_EIKONAL unless a stage sets its own); see NeRFConfig.geometry.
    geometry: str | None = None
    # The reference view's depth for stage 2's relative depth loss: "auto" (estimated by ``depth_model``), "off", or
    # a depth image of ``image`` (bright = near, as Depth Anything and MiDaS save it; same size). None: the preset's (mini:
    # auto). ``depth_weight``: stage 2's lambda_ref_depth (None: the stage's own, else REF_DEPTH_WEIGHT).
    depth: str | None = None
    depth_model: str | None = None
    depth_weight: float | None = None
    # The random views' depth (stage 2's lambda_view_depth: its renders' depth against the depth model's reading of
    # them; experimental). None: the stage's own (0); refused with --depth off.
    view_depth_weight: float | None = None
    nerf: NeRFConfig | None = None
    camera: CameraConfig | None = None
    zero123: StageConfig | None = None
    refine: StageConfig | None = None
    export: ExportConfig | None = None

    def resolved(self) -> ThreeDConfig:
        """A copy with every ``None`` filled from the preset and the top-level overrides applied."""
        if self.preset not in PRESET_SIZES:
            raise ValueError(f"unknown preset {self.preset!r}: use one of {', '.join(PRESET_SIZES)}")
        sizes = PRESET_SIZES[self.preset]  # CPU-sized stages for the offline presets
        nerf = self.nerf or sizes.nerf()
        camera = self.camera or sizes.camera()
        zero123 = self.zero123 or sizes.zero123()
        refine = self.refine or sizes.refine()
        export = self.export or sizes.export()
        if self.elevation is not None:
            if not -80.0 <= float(self.elevation) <= 80.0:
                raise ValueError(f"the elevation is {self.elevation} degrees: give the input camera's height angle "
                                 f"between -80 and 80 (0 = level with the object)")
            camera = replace(camera, ref_elevation=float(self.elevation))
        if self.geometry is not None:  # --geometry: the field's, and its eikonal term in both stages
            if self.geometry not in GEOMETRIES:
                raise ValueError(f"the geometry is {self.geometry!r}: use one of {', '.join(GEOMETRIES)}")
            if self.nerf is not None and self.nerf.geometry != self.geometry:
                raise ValueError(f"the geometry is {self.geometry!r} but nerf.geometry is {self.nerf.geometry!r}: "
                                 f"give one of them")
            nerf = replace(nerf, geometry=self.geometry)
            # sdf: SDF_EIKONAL where a stage has no weight of its own (for an SDF without the term, set nerf.geometry
            # instead); density: the term off (the mini preset's stages have it), since a density field has no distance
            if self.geometry == "sdf":
                zero123, refine = (replace(st, lambda_eikonal=st.lambda_eikonal or SDF_EIKONAL) for st in (zero123, refine))
            else:
                zero123, refine = (replace(st, lambda_eikonal=0.0) for st in (zero123, refine))
        if nerf.geometry not in GEOMETRIES:
            raise ValueError(f"nerf.geometry is {nerf.geometry!r}: use one of {', '.join(GEOMETRIES)}")
        beta = nerf.sdf_beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < math.inf:
            raise ValueError(f"nerf.sdf_beta is {beta!r}: give the SDF's initial sharpness as a positive distance "
                             f"(default 0.03)")
        if nerf.geometry == "sdf" and nerf.occupancy_grid and 1.0 / beta <= nerf.occupancy_threshold:
            raise ValueError(f"nerf.sdf_beta is {beta!r}: the SDF's densest point (1 / beta) would be below the occupancy "
                             f"grid's threshold {nerf.occupancy_threshold} and nothing would be rendered; give a smaller "
                             f"sdf_beta (default 0.03)")
        depth = sizes.depth if self.depth is None else str(self.depth).strip()
        if not depth:
            raise ValueError("--depth is empty: give 'auto' (estimate the reference's depth), 'off', or a depth image "
                             "of your --image")
        if depth.lower() in DEPTH_MODES:
            depth = depth.lower()
        elif not self.image and not self.export_only:
            raise ValueError(f"--depth {depth!r} is a depth image, which needs --image (the depth belongs to your "
                             f"image): pass --image too, or use --depth auto to estimate the stage-1 image's depth")
        w, vw = self.depth_weight, self.view_depth_weight
        for flag, value, default in (("depth-weight", w, REF_DEPTH_WEIGHT),
                                     ("view-depth-weight", vw, zero123.lambda_view_depth)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < math.inf):
                raise ValueError(f"the {flag.replace('-', ' ')} is {value!r}: give --{flag} a finite number, 0 or more "
                                 f"(0 = off; {self.preset} default {default:g})")
        if depth == "off" and (w is not None or vw is not None or self.depth_model):
            given = [f for f, v in (("depth-weight", w), ("view-depth-weight", vw)) if v is not None] or ["depth-model"]
            raise ValueError(f"--{given[0]} needs --depth auto or a depth image (the {self.preset} preset's default is "
                             f"{sizes.depth!r}): add --depth auto, or drop it")
        if vw is not None:
            zero123 = replace(zero123, lambda_view_depth=float(vw))
        if depth not in DEPTH_MODES and self.depth_model and not (zero123.lambda_view_depth or refine.lambda_view_depth):
            raise ValueError("--depth-model would read nothing: --depth gives the reference's depth and the random "
                             "views' depth is off; drop --depth-model, or add --view-depth-weight")
        if depth == "off":  # neither stage reads a depth that is not there, or estimates one
            zero123, refine = (replace(st, lambda_ref_depth=0.0, lambda_view_depth=0.0) for st in (zero123, refine))
        else:
            zero123 = replace(zero123, lambda_ref_depth=float(w) if w is not None
                              else zero123.lambda_ref_depth or REF_DEPTH_WEIGHT)
        # whole numbers and finite levels, checked here too (from Python or a --config file, 2.5 steps became 2,
        # and a mesh grid of 0, preview_frames=-1 or a NaN threshold failed in torch's words after every stage)
        if self.zero123_steps is not None:
            zero123 = replace(zero123, steps=check_int(self.zero123_steps, "--zero123-steps", 0))
        if self.refine_steps is not None:
            refine = replace(refine, steps=check_int(self.refine_steps, "--refine-steps", 0))
        if self.mesh_resolution is not None:
            export = replace(export, resolution=self.mesh_resolution)
        export = replace(export, resolution=check_int(export.resolution, "--mesh-resolution (the marching-cubes grid)",
                                                      16))
        if self.threshold is not None:
            export = replace(export, threshold=self.threshold)
        if export.threshold is not None:
            export = replace(export, threshold=check_finite(export.threshold, "--threshold (the surface's density)"))
        if self.texture is not None:
            export = replace(export, texture=bool(self.texture))
        if self.texture_size is not None:
            export = replace(export, texture_size=self.texture_size)
        if self.project_reference is not None:
            export = replace(export, project_reference=bool(self.project_reference))
        if self.side_views is not None:
            export = replace(export, side_views=self.side_views)
        export = replace(  # the side views' settings, checked whatever set them (the flag, a config file, Python)
            export, side_views=check_int(export.side_views, "--side-views (0 = off; default 3)", 0, MAX_SIDE_VIEWS),
            side_strength=check_range(export.side_strength, "export.side_strength (the side views' SDEdit strength)",
                                      0.05, 1.0, "1 draws them from noise"),
            side_steps=check_int(export.side_steps, "export.side_steps (the side views' DDIM steps)", 1, MAX_STEPS))
        smooth = export.smooth  # checked whatever set it, as the texture size below
        if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
            raise ValueError(f"the mesh smoothing is {smooth!r}: give --mesh-smooth a whole number of steps, 0 or more "
                             f"(0 = off; mini: 15)")
        side = export.threshold_resolution
        if isinstance(side, bool) or not isinstance(side, int) or not 8 <= side <= 1024:
            raise ValueError(f"export.threshold_resolution is {side!r}: give the side of the threshold's renders as a "
                             f"whole number of pixels from 8 to 1024 (default 64; tiny: 32)")
        for name, stage in (("zero123", zero123), ("refine", refine)):
            if not 0.0 < stage.ref_ray_fraction <= 1.0:
                raise ValueError(f"{name}.ref_ray_fraction is {stage.ref_ray_fraction}: give the share of the "
                                 f"reference view's pixels rendered per step, above 0 and at most 1 (1 = all)")
            eik = stage.lambda_eikonal
            if isinstance(eik, bool) or not isinstance(eik, (int, float)) or not 0 <= eik < math.inf:
                raise ValueError(f"{name}.lambda_eikonal is {eik!r}: give the eikonal weight as a finite number, 0 or "
                                 f"more")
            for key, what in (("eikonal_points", "the eikonal term's random points"),
                              ("normal_smooth_points", "the 3D normal-smoothness term's surface points")):
                pts = getattr(stage, key)
                if isinstance(pts, bool) or not isinstance(pts, int) or not 1 <= pts <= 1 << 20:
                    raise ValueError(f"{name}.{key} is {pts!r}: give {what} per step as a whole number from 1 to "
                                     f"{1 << 20}")
            if eik and nerf.geometry != "sdf":
                raise ValueError(f"{name}.lambda_eikonal is {eik!r} but the geometry is {nerf.geometry!r}: the eikonal "
                                 f"term needs the sdf geometry; give geometry 'sdf', or 'density' (which turns the term "
                                 f"off), or set {name}.lambda_eikonal to 0")
            for key, what in (("lambda_ref_depth", "the reference-depth weight"),
                              ("lambda_view_depth", "the view-depth weight"),
                              ("lambda_normal_smooth_3d", "the 3D normal-smoothness weight"),
                              ("depth_smooth_robust", "the depth smoothness's Charbonnier scale")):
                value = getattr(stage, key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                    raise ValueError(f"{name}.{key} is {value!r}: give {what} as a finite number, 0 or more (0 = off)")
            smooth_w = stage.lambda_depth_smooth
            if isinstance(smooth_w, bool) or not isinstance(smooth_w, (int, float)) or not 0 <= smooth_w < math.inf:
                raise ValueError(f"{name}.lambda_depth_smooth is {smooth_w!r}: give the depth-smoothness weight as a "
                                 f"finite number, 0 or more (0 = off)")
        size = export.texture_size  # checked whatever set it: the flag, a --config file or the Python API
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_TEXTURE <= size <= MAX_TEXTURE:
            raise ValueError(f"the texture size is {size!r}: give --texture-size a whole number of pixels from "
                             f"{MIN_TEXTURE} to {MAX_TEXTURE} (default 1024; mini: 256, tiny: 128)")
        height = export.height_m
        if height is not None and (isinstance(height, bool) or not isinstance(height, (int, float))
                                   or not MIN_HEIGHT_M <= height <= MAX_HEIGHT_M):
            # a negative one turned the mesh upside down and inside out, 0 meant no scaling, 1e300 wrote infinite
            # vertices and 1e-300 a point
            raise ValueError(f"the mesh height is {height!r} m: give --height-m in metres, from {MIN_HEIGHT_M:g} "
                             f"(0.1 mm) to {MAX_HEIGHT_M:g} (10 km)")
        _check_views(nerf, camera, zero123, refine)
        for key in ("image", "mask"):  # a PIL image was "'/cwd/<PIL.Image.Image ...>' does not exist"
            value = getattr(self, key)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ValueError(f"{key} must be a file's path, got {type(value).__module__}.{type(value).__name__}: "
                                 f"save it to a file first "
                                 f"(e.g. {key}.save('{key}.png')) and pass that path")
        given = self.formats.split(",") if isinstance(self.formats, str) else self.formats  # "glb" was g, l, b
        formats = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in given))
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ValueError(f"unknown mesh format(s) {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
        if self.preview not in PREVIEWS:
            raise ValueError(f"the preview is {self.preview!r}: give --preview mesh (the exported mesh) or nerf (the "
                             f"final NeRF)")
        for name, value in (("zero123 steps", zero123.steps), ("refine steps", refine.steps)):
            if value < 0:
                raise ValueError(f"the {name} must be 0 or more, got {value}")
        # the top-level values as checked, in their types: config.json recorded seed "3", image_steps "2" or a list
        # of one prompt as given, and its own --resume and --config then refused the file
        whole = {k: None if getattr(self, k) is None else check_int(getattr(self, k), what, lo, hi)
                 for k, what, lo, hi in (("image_steps", "--image-steps", 0, None), ("seed", "the seed (--seed)", 0,
                                                                                      MAX_SEED),
                                         ("threads", "threads (--threads)", 1, usable_cores()[1]))}
        return replace(self, nerf=nerf, camera=camera, zero123=zero123, refine=refine, export=export,
                       formats=formats, depth=depth if depth in DEPTH_MODES else absolute_path(depth),
                       image=absolute_path(self.image), mask=absolute_path(self.mask),
                       export_only=absolute_path(self.export_only), prompt=check_prompt(self.prompt), **whole,
                       zero123_steps=None if self.zero123_steps is None else zero123.steps,
                       refine_steps=None if self.refine_steps is None else refine.steps,
                       mesh_resolution=None if self.mesh_resolution is None else export.resolution,
                       texture_size=None if self.texture_size is None else export.texture_size,
                       side_views=None if self.side_views is None else export.side_views,
                       elevation=None if self.elevation is None else float(self.elevation),
                       **{k: model_ref(getattr(self, k)) for k in MODEL_FLAGS},
                       mask_method=self.mask_method or sizes.mask_method,
                       background_prompt=sizes.background_prompt if self.background_prompt is None
                       else self.background_prompt,
                       preview_frames=sizes.preview_frames if self.preview_frames is None  # 0 became the preset's
                       else check_int(self.preview_frames, "--preview-frames", 1))

    def stage1_domain_weight(self) -> float | None:
        """The ``w_d`` stage 1 draws its image with (None: the domain's recommended weights): the given
        ``image_domain_weight``; not given, the preset's for its own model of the domain (mini porcelain: 1.25; the
        recommended weights with ``--domain-model`` or another domain). Decided here, not stored in ``config.json``,
        so that a run made under an earlier default still resumes (its image is reused)."""
        w = self.image_domain_weight
        if is_recommended(w):
            return None
        if w is not None:
            return w
        sizes = PRESET_SIZES.get(self.preset)
        if sizes is None or self.domain_model or self.image:
            return None
        return dict(sizes.image_domain_weights).get(str(self.domain).strip().lower())

    # -- the config file written beside the results -------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-ready values (paths as strings)."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return str(v) if isinstance(v, os.PathLike) else v

        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> ThreeDConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} in the 3D config file: remove them")
        kw = dict(data)
        if ("depth" not in kw and kw.get("threads") is not None and isinstance(kw.get("zero123"), dict)
                and "lambda_ref_depth" not in kw["zero123"]):
            kw["depth"] = "off"  # a run's config.json (it records the threads) from before reference depth: as it ran
        if kw.get("threads") is not None and isinstance(kw.get("export"), dict):  # a run's file: replayed as it ran
            for key, before in (("project_reference", dict(project_reference=False, side_views=0)),  # no projection
                                ("side_keep_reference", dict(side_keep_reference=False)),  # side views on their own
                                ("side_in_turn", dict(side_in_turn=False))):  # side views drawn together
                if key not in kw["export"]:
                    kw["export"] = {**kw["export"], **before}
        _check_types(cls, kw, "")
        for name, typ in (("nerf", NeRFConfig), ("camera", CameraConfig), ("zero123", StageConfig),
                          ("refine", StageConfig), ("export", ExportConfig)):
            if isinstance(kw.get(name), dict):
                unknown = sorted(set(kw[name]) - {f.name for f in fields(typ)})
                if unknown:
                    raise ValueError(f"unknown setting(s) {', '.join(f'{name}.{k}' for k in unknown)} in the 3D config "
                                     f"file: remove them")
                _check_types(typ, kw[name], f"{name}.")
                sub = {k: tuple(v) if isinstance(v, list) and k not in ("min_step_percent", "max_step_percent")
                       else v for k, v in kw[name].items()}
                kw[name] = typ(**sub)
        if "formats" in kw:
            kw["formats"] = tuple(kw["formats"])
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> ThreeDConfig:
        path = Path(path).expanduser()  # --config ~/run/config.json
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"could not read the 3D config file {str(path)!r} ({err}): give a config.json "
                             f"written by a previous run") from None
        return cls.from_dict(data)


@dataclass
class ThreeDResult:
    """What a run wrote. ``mesh_paths`` maps a format (``"glb"``, ``"obj"``, ``"ply"``) to its file."""

    output_dir: Path
    image_path: Path | None
    mask_path: Path | None
    mesh_paths: dict = field(default_factory=dict)
    preview_path: Path | None = None
    config_path: Path | None = None
    checkpoints: dict = field(default_factory=dict)
    stages_run: list = field(default_factory=list)
    nan_recoveries: int = 0
    threshold: float | None = None
    warnings: list = field(default_factory=list)


def _check_types(cls, values: dict, prefix: str) -> None:
    """Each value of a config file has its field's type (``int``, ``float``, ``str``, ``bool``, a list, a section);
    ``None`` where the field allows it. One sentence naming the setting otherwise, before anything runs."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if hint is None or (value is None and union and type(None) in typing.get_args(hint)):
            continue
        options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        ok = False
        for t in options:
            origin = typing.get_origin(t) or t
            if origin is typing.Any:
                ok = True
            elif origin is bool:
                ok = ok or isinstance(value, bool)
            elif origin is int:
                ok = ok or (isinstance(value, int) and not isinstance(value, bool))
            elif origin is float:
                ok = ok or (isinstance(value, int | float) and not isinstance(value, bool))
            elif origin in (tuple, list):
                ok = ok or isinstance(value, list | tuple)
            elif isinstance(origin, type) and hasattr(origin, "__dataclass_fields__"):
                ok = ok or isinstance(value, dict)
            elif isinstance(origin, type):
                ok = ok or isinstance(value, origin)
            else:
                ok = True
        if not ok:
            words = {bool: "true or false", int: "a whole number", float: "a number", str: "a text", tuple: "a list",
                     list: "a list"}
            want = " or ".join(words.get(typing.get_origin(t) or t, "a section") for t in options)
            raise ValueError(f"the setting {prefix}{name} in the 3D config file must be {want}, got {value!r}: fix it "
                             f"or write the file again with a run (its output folder's config.json)")
