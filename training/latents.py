"""Where training latents come from: a latent cache (the VAE runs once per image) or the VAE on the fly.

Both sources give the *same* latents for the same request: the VAE's posterior ``N(mean, std^2)`` of the
image (flipped or not) is sampled with a given standard-normal ``eps`` as ``(mean + std * eps) * scaling``,
so the cache changes the cost, not the training (a test checks this).

The cache stores ``mean`` and ``std`` for each image and each flip state (both orientations when ``hflip > 0``:
the VAE is not flip-equivariant, so a flipped latent is encoded, not flipped). It is a ``.npy`` file read
through a memory map (large datasets do not need to fit in RAM), written to a temporary name and renamed,
and keyed by the file list, sizes, modification times, resolution, crop, flips and VAE, so a changed
folder is re-encoded. The images are encoded in fixed batches of the global image list (``batch_size`` images,
the last one shorter), and with several processes rank ``r`` encodes batches ``r, r + P, ...``: every image is
encoded in the same batch whatever the number of processes, so the cache (and the run) does not depend on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from suite.files import TMP_PREFIX, temp_name, umask

from .data import ImageFolderDataset

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the VAE posterior for ``pixels`` (``[B, 3, H, W]`` in ``[-1, 1]``), unscaled."""
    p = next(vae.parameters())
    dist = vae.encode(pixels.to(p.device, p.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


class OnTheFlyLatents:
    """Loads and encodes images at every request (no cache): the VAE runs every step."""

    def __init__(self, dataset: ImageFolderDataset, vae, num_workers: int = 2):
        self.dataset = dataset
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.pool = ThreadPoolExecutor(max(1, num_workers)) if num_workers > 0 else None
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        r = dataset.resolution // f
        self.latent_shape = (vae.config.latent_channels, r, r)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices, flips, eps: torch.Tensor) -> torch.Tensor:
        jobs = list(zip(map(int, indices), map(bool, flips)))
        images = list(self.pool.map(lambda a: self.dataset.load(*a), jobs)) if self.pool else \
            [self.dataset.load(*a) for a in jobs]
        mean, std = encode_posterior(self.vae, torch.stack(images))
        return (mean + std * eps.to(mean.device, mean.dtype)) * self.scaling


class CachedLatents:
    """Latents from the cache file (``[N, F, 2, C, h, w]``: images, flip states, mean/std)."""

    def __init__(self, path: Path, scaling: float, device):
        self.array = np.load(path, mmap_mode="r")
        self.scaling = float(scaling)
        self.device = torch.device(device)
        self.flip_states = self.array.shape[1]
        self.latent_shape = tuple(self.array.shape[3:])

    def __len__(self) -> int:
        return self.array.shape[0]

    def get(self, indices, flips, eps: torch.Tensor) -> torch.Tensor:
        rows = [self.array[int(i), int(bool(f)) if self.flip_states > 1 else 0] for i, f in zip(indices, flips)]
        ms = torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device)
        mean, std = ms[:, 0], ms[:, 1]
        return (mean + std * eps.to(self.device, mean.dtype)) * self.scaling


def cache_key(dataset: ImageFolderDataset, vae_id: str, flip_states: int, dtype="float32") -> str:
    """The cache's name: the images (:meth:`ImageFolderDataset.fingerprint`), how they are prepared, the VAE and the
    stored precision (a float16 cache of a bf16 run is not reused by a float32 one)."""
    settings = json.dumps([dataset.resolution, dataset.center_crop, flip_states, vae_id, np.dtype(dtype).name])
    return hashlib.sha256(f"{dataset.fingerprint()}|{settings}".encode()).hexdigest()[:16]


def build_latent_cache(dataset: ImageFolderDataset, vae, folder: Path, vae_id: str, accelerator=None,
                       batch_size: int = 8, dtype=np.float32, num_workers: int = 2,
                       progress=None) -> Path:
    """Encode every image once (both flips when ``dataset.hflip > 0``) into ``folder/latents-<key>.npy``.

    Reuses an existing cache with the same key. The images are split into global batches of ``batch_size``;
    with ``accelerator`` over several processes, rank ``r`` encodes batches ``r, r + P, ...`` into a part file
    and the main process merges the parts, so each image's latent is computed in the same batch for any ``P``.
    """
    flips = (False, True) if dataset.hflip > 0 else (False,)
    key = cache_key(dataset, vae_id, len(flips), dtype)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"latents-{key}.npy"
    if final.exists():
        return final
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    mine = _batches(len(dataset), batch_size, rank, world)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    c, h = vae.config.latent_channels, dataset.resolution // f
    shape = (sum(len(b) for b in mine), len(flips), 2, c, h, h)
    part = _part_path(folder, key, rank, world)
    try:
        _encode_part(dataset, vae, part, mine, flips, shape, dtype, num_workers, main, world, progress)
    except BaseException:
        part.unlink(missing_ok=True)  # a full disk or an interrupt leaves nothing behind
        raise
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        fd, tmp = tempfile.mkstemp(**temp_name(final.name, ".npy"), dir=folder)  # a unique name
        os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())  # as every other output (mkstemp makes it readable by its owner only)
        try:
            out = _open_memmap(tmp, dtype, (len(dataset),) + shape[1:])
            for r in range(world):
                rows = [i for b in _batches(len(dataset), batch_size, r, world) for i in b]
                if rows:  # a part holds its batches' images in order
                    out[rows] = np.load(_part_path(folder, key, r, world), mmap_mode="r")
            out.flush()
            del out
            os.replace(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
            for r in range(world):
                _part_path(folder, key, r, world).unlink(missing_ok=True)
        for old in folder.glob("latents-*.npy"):
            if old != final:
                old.unlink(missing_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return final


def _encode_part(dataset, vae, part: Path, mine, flips, shape, dtype, num_workers, main, world, progress) -> None:
    """Encode this process's batches into ``part`` (a memory-mapped ``.npy``, disk space reserved first)."""
    from tqdm.auto import tqdm

    arr = _open_memmap(part, dtype, shape)
    pool = ThreadPoolExecutor(max(1, num_workers))
    bar = tqdm(total=shape[0], desc="caching latents (VAE once per image)", disable=None if main else True,
               leave=False)  # None: on a terminal only
    try:
        row = 0
        for chunk in mine:
            for fi, flip in enumerate(flips):
                pixels = torch.stack(list(pool.map(lambda i, flip=flip: dataset.load(i, flip), chunk)))
                mean, std = encode_posterior(vae, pixels)
                arr[row:row + len(chunk), fi, 0] = mean.cpu().numpy().astype(dtype)
                arr[row:row + len(chunk), fi, 1] = std.cpu().numpy().astype(dtype)
            row += len(chunk)
            bar.update(len(chunk))
            if progress is not None and main:
                progress("cache", min(row * world, len(dataset)), len(dataset), {})
        arr.flush()
    finally:
        bar.close()
        pool.shutdown()
        del arr


def _batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[range]:
    """The global batches ``[0, b), [b, 2b), ...`` of ``n`` images that process ``rank`` of ``world`` encodes."""
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)][rank::world]


def _part_path(folder: Path, key: str, rank: int, world: int) -> Path:
    """Process ``rank``'s share of the cache: a temporary of ours (:func:`suite.files.temp_name`'s form, with the
    rank in place of the random part, so that the main process finds it)."""
    return folder / f"{TMP_PREFIX}0-part{rank:04d}-latents-{key}-of-{world}.tmp.npy"


def _open_memmap(path, dtype, shape) -> np.memmap:
    """A ``.npy`` memory map whose disk space is reserved first: on a full disk this raises ``OSError`` (ENOSPC, one
    sentence from :mod:`suite.failures`) instead of the process dying by SIGBUS when a page is first written."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, size)
    except BaseException:
        del arr
        Path(path).unlink(missing_ok=True)
        raise
    return arr
