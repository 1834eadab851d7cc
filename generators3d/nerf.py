"""The NeRF field: a multi-resolution hash-grid encoding (Instant-NGP) with density and colour heads.

Two interchangeable encodings:

* :class:`HashGrid`, pure PyTorch (runs anywhere, always tested). It follows tiny-cuda-nn's ``HashGrid``
  definition: level ``l`` has scale ``base * per_level_scale**l - 1`` and resolution ``ceil(scale) + 1``,
  positions are ``x * scale + 0.5``, a level whose grid fits in the table is indexed densely, otherwise by
  the spatial hash ``(i * 1) ^ (j * 2654435761) ^ (k * 805459861) mod T``; trilinear interpolation.
* tiny-cuda-nn's ``Encoding`` (same definition, fused CUDA kernels), imported lazily and used only on CUDA
  when importable (``backend="auto"``) or when asked (``backend="tcnn"``). Its parameters are stored in
  its own layout: a checkpoint records which encoding wrote it.

World frame: Z up, object at the origin, inside the sphere of radius ``cfg.radius``.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .config import GEOMETRIES, NeRFConfig

log = logging.getLogger(__name__)

_PRIMES = (1, 2654435761, 805459861)


class HashGrid(nn.Module):
    """Pure-PyTorch multi-resolution hash encoding of points in ``[0, 1]^3`` -> ``[N, n_levels * F]``."""

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447269237440378):
        super().__init__()
        self.n_levels, self.n_features = int(n_levels), int(n_features_per_level)
        self.table_size = 2 ** int(log2_hashmap_size)
        self.scales = [base_resolution * per_level_scale ** level - 1.0 for level in range(self.n_levels)]
        self.resolutions = [int(math.ceil(s)) + 1 for s in self.scales]
        self.dense = [r ** 3 <= self.table_size for r in self.resolutions]
        self.sizes = [min(r ** 3, self.table_size) for r in self.resolutions]
        self.embeddings = nn.Parameter(torch.empty(self.n_levels, self.table_size, self.n_features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    def level_index(self, level: int, ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor) -> torch.Tensor:
        """Table index of the 8 corners ``[N, 8]`` from per-axis corner coordinates ``[N, 2]`` (dense or hashed)."""
        res = self.resolutions[level]
        if self.dense[level]:
            ix, iy, iz = ix.clamp(0, res - 1), iy.clamp(0, res - 1) * res, iz.clamp(0, res - 1) * (res * res)
            idx = ix[:, :, None, None] + iy[:, None, :, None] + iz[:, None, None, :]
        else:
            idx = (ix * _PRIMES[0])[:, :, None, None] ^ (iy * _PRIMES[1])[:, None, :, None] ^ (
                iz * _PRIMES[2])[:, None, None, :]
            idx = idx & (self.table_size - 1)
        return idx.reshape(-1, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0.0, 1.0)
        n = x.shape[0]
        outs = []
        for level in range(self.n_levels):
            pos = x * self.scales[level] + 0.5
            pos0 = pos.floor()
            frac = pos - pos0
            base = pos0.long()
            # per-axis corner coordinates and linear weights [N, 2]; corner c = (i, j, k) with bits of c
            i = torch.stack([base[:, 0], base[:, 0] + 1], 1)
            j = torch.stack([base[:, 1], base[:, 1] + 1], 1)
            k = torch.stack([base[:, 2], base[:, 2] + 1], 1)
            wx = torch.stack([1 - frac[:, 0], frac[:, 0]], 1)
            wy = torch.stack([1 - frac[:, 1], frac[:, 1]], 1)
            wz = torch.stack([1 - frac[:, 2], frac[:, 2]], 1)
            w = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(n, 1, 8)
            # index_select (backward: index_add) is about twice as fast on a CPU as advanced indexing
            idx = self.level_index(level, i, j, k).reshape(-1)
            feats = self.embeddings[level].index_select(0, idx).view(n, 8, self.n_features)  # [N, 8, F]
            outs.append(torch.bmm(w, feats)[:, 0])
        return torch.cat(outs, -1)


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's HashGrid with the same configuration (CUDA only; imported lazily)."""

    def __init__(self, cfg: NeRFConfig):
        super().__init__()
        import tinycudann as tcnn

        self.encoding = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features_per_level,
            "log2_hashmap_size": cfg.log2_hashmap_size, "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale})
        self.output_dim = cfg.n_levels * cfg.n_features_per_level

    def forward(self, x):
        return self.encoding(x.float().clamp(0.0, 1.0)).float()


def choose_backend(cfg: NeRFConfig, device) -> str:
    """``"tcnn"`` on CUDA when tiny-cuda-nn imports (or when asked), else ``"torch"``."""
    want = cfg.backend
    if want not in ("auto", "torch", "tcnn"):
        raise ValueError(f"unknown hash-grid backend {want!r}: use auto, torch or tcnn")
    cuda = torch.device(device).type == "cuda"
    if want == "tcnn":
        if not (cuda and tcnn_available()):
            raise ValueError("backend 'tcnn' needs a CUDA device and tiny-cuda-nn installed: use backend 'torch'")
        return "tcnn"
    if want == "auto" and cuda and tcnn_available():
        return "tcnn"
    return "torch"


class NeRFField(nn.Module):
    """Density and albedo at world points: ``sigma, rgb = field(x)``.

    ``sigma = softplus(raw + blob_density * (1 - |x| / blob_radius))`` (Magic3D blob), ``rgb = sigmoid(.)``; with
    ``cfg.geometry == "sdf"`` the head is a signed distance ``d = raw + |x| - blob_radius`` and ``sigma`` VolSDF's
    ``Laplace_cdf(-d; beta) / beta`` (:meth:`sdf`, :meth:`eikonal`).
    """

    def __init__(self, cfg: NeRFConfig | None = None, backend: str = "torch"):
        super().__init__()
        self.cfg = cfg = cfg or NeRFConfig()
        self.backend = backend
        self.encoding = TcnnHashGrid(cfg) if backend == "tcnn" else HashGrid(
            cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size, cfg.base_resolution, cfg.per_level_scale)
        layers: list[nn.Module] = []
        dim = self.encoding.output_dim
        for _ in range(cfg.n_hidden_layers):
            layers += [nn.Linear(dim, cfg.hidden), nn.ReLU(inplace=True)]
            dim = cfg.hidden
        self.trunk = nn.Sequential(*layers)
        self.density_head = nn.Linear(dim, 1)
        self.color_head = nn.Linear(dim, 3)
        if cfg.geometry not in GEOMETRIES:
            raise ValueError(f"nerf.geometry is {cfg.geometry!r}: use one of {', '.join(GEOMETRIES)}")
        if cfg.geometry == "sdf":
            if not cfg.sdf_beta > 0:
                raise ValueError(f"nerf.sdf_beta is {cfg.sdf_beta!r}: give the VolSDF sharpness as a positive distance")
            nn.init.zeros_(self.density_head.weight)  # the exact sphere |x| = blob_radius at first
            nn.init.zeros_(self.density_head.bias)
            self.log_beta = nn.Parameter(torch.tensor(math.log(cfg.sdf_beta)))

    @property
    def radius(self) -> float:
        return self.cfg.radius

    def density_bias(self, x: torch.Tensor) -> torch.Tensor:
        return self.cfg.blob_density * (1.0 - x.norm(dim=-1) / self.cfg.blob_radius)

    @property
    def beta(self) -> torch.Tensor:
        """VolSDF's sharpness (sdf geometry): a distance, kept above 1e-3."""
        return self.log_beta.exp().clamp_min(1e-3)

    def _features(self, flat: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.encoding((flat / self.cfg.radius + 1.0) * 0.5))

    def _distance(self, h: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        return self.density_head(h)[:, 0] + flat.norm(dim=-1) - self.cfg.blob_radius

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """Signed distance (sdf geometry): negative inside."""
        flat = x.reshape(-1, 3).float()
        return self._distance(self._features(flat), flat).reshape(x.shape[:-1])

    def _sigma(self, h: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        if self.cfg.geometry == "sdf":  # VolSDF: sigma = Laplace CDF(-d; beta) / beta
            d, beta = self._distance(h, flat), self.beta
            half = 0.5 * torch.exp(-d.abs() / beta)
            return torch.where(d > 0, half, 1.0 - half) / beta
        return nn.functional.softplus(self.density_head(h)[:, 0] + self.density_bias(flat))

    def eikonal(self, x: torch.Tensor, eps: float = 5e-3) -> torch.Tensor:
        """Mean ``(|grad d| - 1)^2`` at points ``[N, 3]``, the gradient by central differences of a fixed step ``eps``
        (numerical gradients as Neuralangelo's, which reach neighbouring hash-grid cells; it ties the step to the
        finest cell and anneals it, which is not done here: 0.005 is a third of the mini grid's finest cell)."""
        return (_central_gradient(self.sdf, x, eps).norm(dim=-1) - 1.0).square().mean()

    def normals(self, x: torch.Tensor, eps: float = 5e-3) -> torch.Tensor:
        """Unit outward normals at points ``[N, 3]``: the gradient of the signed distance (sdf geometry) or minus the
        gradient of the density (density geometry), by central differences of step ``eps`` as :meth:`eikonal`."""
        f = self.sdf if self.cfg.geometry == "sdf" else (lambda p: -self.density(p))
        return nn.functional.normalize(_central_gradient(f, x, eps), dim=-1)

    def forward(self, x: torch.Tensor, with_color: bool = True):
        shape = x.shape[:-1]
        flat = x.reshape(-1, 3).float()
        h = self._features(flat)
        sigma = self._sigma(h, flat)
        if not with_color:
            return sigma.reshape(shape)
        rgb = torch.sigmoid(self.color_head(h))
        return sigma.reshape(shape), rgb.reshape(*shape, 3)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x, with_color=False)

    # -- empty-space skipping ------------------------------------------------------------------------------
    @torch.no_grad()
    def update_occupancy(self, generator: torch.Generator | None = None) -> None:
        """Recompute the occupancy grid (``cfg.occupancy_grid > 0``): the density at one random point in each
        cell, and the cell centres, against ``cfg.occupancy_threshold``; dilated by one cell, so that a surface
        growing into a neighbouring cell is still seen. Stored on the field (not in checkpoints)."""
        res = self.cfg.occupancy_grid
        if not res:
            return
        device = next(self.parameters()).device
        cell = 2.0 * self.cfg.radius / res
        lin = -self.cfg.radius + cell * (torch.arange(res, device=device, dtype=torch.float32) + 0.5)
        centres = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
        jitter = (torch.rand(centres.shape, generator=generator) - 0.5).to(device) * cell
        occ = torch.zeros(len(centres), dtype=torch.bool, device=device)
        for pts in (centres, centres + jitter):
            for i in range(0, len(pts), 1 << 16):
                occ[i:i + (1 << 16)] |= self.density(pts[i:i + (1 << 16)]) > self.cfg.occupancy_threshold
        grid = occ.reshape(1, 1, res, res, res).float()
        self.occupancy = nn.functional.max_pool3d(grid, 3, stride=1, padding=1)[0, 0] > 0

    def occupied(self, x: torch.Tensor) -> torch.Tensor | None:
        """Which points ``[..., 3]`` lie in occupied cells (None: no grid, every point counts)."""
        grid = getattr(self, "occupancy", None)
        if grid is None:
            return None
        res = grid.shape[0]
        ijk = ((x / self.cfg.radius + 1.0) * 0.5 * res).long().clamp(0, res - 1)
        return grid[ijk[..., 0], ijk[..., 1], ijk[..., 2]]

    def color(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[1]


def _central_gradient(f, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The gradient ``[N, 3]`` of a scalar field ``f`` (points ``[..., 3]`` -> values ``[...]``) at points ``[N, 3]``
    by central differences of step ``eps``."""
    offsets = torch.eye(3, device=x.device) * eps
    v = f(torch.cat([x[:, None] + offsets, x[:, None] - offsets], 1))  # [N, 6]
    return (v[:, :3] - v[:, 3:]) / (2 * eps)


def make_field(cfg: NeRFConfig, device, seed: int = 0) -> NeRFField:
    """A fresh field on ``device`` with the backend :func:`choose_backend` picks (seeded)."""
    from suite.devices import RANDOM_STATE_LOCK
    from suite.threads import building_models

    backend = choose_backend(cfg, device)
    # built on the CPU's global generator, seeded, while no other job builds a model or seeds, saves or restores
    # that generator (a GPU's generators are left alone: torch.manual_seed reseeded them for every run)
    with building_models(), RANDOM_STATE_LOCK, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        field = NeRFField(cfg, backend=backend)
    if backend == "tcnn":
        log.info("NeRF hash grid: tiny-cuda-nn")
    return field.to(device)


class Background(nn.Module):
    """Background colour behind the object: a fixed colour (white by default, as the reference image is
    composited on white), or ``learned``: a small MLP of the ray direction."""

    def __init__(self, color=(1.0, 1.0, 1.0), learned: bool = False):
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3)) if learned else None

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return self.color.to(directions.device).expand(*directions.shape[:-1], 3)
        return torch.sigmoid(self.mlp(directions))
