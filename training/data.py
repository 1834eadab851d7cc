"""Unlabeled image folders for domain training (paper Sec. 3.3: "a folder of images is all you need").

* :func:`scan_images` lists a folder recursively, through linked folders, leaving out hidden files and folders
  (``.jpg/.jpeg/.png/.webp``, any case), opens every image
  fully once and sorts the files into usable, corrupt (skipped, counted in one warning), not-an-image
  (other extensions: ignored, counted) and smaller than the resolution (upscaled with a warning by default,
  or skipped with ``small_images="skip"``). An empty folder, a missing folder or a folder with no readable
  image is one clear error.
* :class:`ImageFolderDataset` returns ``[3, R, R]`` tensors in ``[-1, 1]``: RGB (any mode converted, alpha on
  white), EXIF orientation applied, resized to ``R x R`` *without crop* as in the paper (aspect ratio is not
  kept), or resized on the short side and center-cropped with ``center_crop=True``; horizontal flip with
  probability ``hflip``. :meth:`ImageFolderDataset.load` takes the flip explicitly, so training can make
  the data order and the flips a pure function of the seed (exact resume).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from suite.images import load_image, open_image, oriented_size

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ImageScan:
    """The result of :func:`scan_images`: usable files (sorted) and what was left out, and why."""

    root: Path
    images: list[Path]
    sizes: list[tuple[int, int]]
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    small: list[Path] = field(default_factory=list)
    small_skipped: bool = False

    def summary(self) -> str:
        parts = [f"{len(self.images)} usable image(s) in {str(self.root)!r}"]
        if self.corrupt:
            parts.append(f"{len(self.corrupt)} corrupt file(s) skipped")
        if self.not_images:
            parts.append(f"{len(self.not_images)} non-image file(s) ignored")
        if self.small:
            parts.append(f"{len(self.small)} small image(s) {'skipped' if self.small_skipped else 'upscaled'}")
        return ", ".join(parts)


def walk_files(root: Path):
    """Every file under ``root``, through linked folders too (each real folder once: a link cycle ends), leaving out
    hidden files and folders (``.thumbnails/``, ``.ipynb_checkpoints/``: not the domain's images)."""
    seen = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            p = Path(folder) / name
            if not name.startswith(".") and (p.is_file() or p.is_symlink()):  # a broken link is counted
                yield p


def scan_images(root: str | os.PathLike, resolution: int | None = None, small_images: str = "upscale",
                progress: bool = False) -> ImageScan:
    """List and validate the images under ``root`` (recursive). See the module docstring for the rules.

    ``small_images``: ``"upscale"`` (default: keep, upscale, one warning with the count) or ``"skip"``.
    Raises ``ValueError`` with one sentence naming the fix when nothing usable is found.
    """
    if small_images not in ("upscale", "skip"):
        raise ValueError(f"small_images must be 'upscale' or 'skip', got {small_images!r}")
    root = Path(os.path.expanduser(str(root)))
    if not root.exists():
        raise ValueError(f"the image folder {str(root)!r} does not exist: pass --data with a folder of images")
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file, not a folder: pass --data with a folder of images")
    files = sorted(walk_files(root))
    candidates = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    scan = ImageScan(root=root, images=[], sizes=[], not_images=[p for p in files if p.suffix.lower() not in
                                                                 IMAGE_EXTENSIONS])
    if not candidates:
        extra = f" ({len(scan.not_images)} other file(s) found, e.g. {scan.not_images[0].name!r})" \
            if scan.not_images else ""
        raise ValueError(f"the image folder {str(root)!r} has no .jpg, .png or .webp images{extra}: "
                         f"put the domain's images there (subfolders are searched too)")
    from tqdm.auto import tqdm

    for path in tqdm(candidates, desc="checking images", disable=None if progress else True, leave=False):
        try:  # a full decode: truncated files fail here, not in the middle of training
            size = oriented_size(open_image(path, "image", max_pixels=None))
        except ValueError as err:
            scan.corrupt.append((path, str(err).splitlines()[0]))
            continue
        if resolution is not None and min(size) < resolution:
            scan.small.append(path)
            if small_images == "skip":
                continue
        scan.images.append(path)
        scan.sizes.append(size)
    scan.small_skipped = small_images == "skip"

    if scan.corrupt:
        first, why = scan.corrupt[0]
        log.warning("skipped %d corrupt or unreadable image file(s) of %d (first: %s: %s)",
                    len(scan.corrupt), len(candidates), first, why)
    if scan.not_images:
        log.warning("ignored %d file(s) that are not .jpg/.png/.webp images (first: %s)",
                    len(scan.not_images), scan.not_images[0])
    if scan.small:
        small = set(scan.small)  # once: a set per image made the scan quadratic (114 s for 20,000 images)
        smallest = min((s for p, s in zip(scan.images, scan.sizes) if p in small), key=min, default=None)
        if small_images == "skip":
            log.warning("skipped %d image(s) smaller than %dx%d (--small-images skip)", len(scan.small),
                        resolution, resolution)
        else:
            log.warning("%d image(s) are smaller than %dx%d and will be upscaled (smallest %s); pass "
                        "--small-images skip to leave them out", len(scan.small), resolution, resolution,
                        "x".join(map(str, smallest)) if smallest else "?")
    if not scan.images:
        why = []
        if scan.corrupt:
            why.append(f"{len(scan.corrupt)} corrupt")
        if scan.small and small_images == "skip":
            why.append(f"{len(scan.small)} smaller than {resolution}")
        raise ValueError(f"no usable image in {str(root)!r} ({', '.join(why)} of {len(candidates)}): add readable "
                         f".jpg/.png/.webp images" + (" or use --small-images upscale" if small_images == "skip"
                                                     and scan.small else ""))
    return scan


def preprocess(im: Image.Image, resolution: int, center_crop: bool = False, flip: bool = False) -> torch.Tensor:
    """RGB PIL image -> ``[3, R, R]`` float tensor in ``[-1, 1]`` (resize without crop, or short side + center crop)."""
    if center_crop:
        # the short side resized to R, then the centre R x R cut out: only that square of the source is resampled
        # (resizing the whole image first made a 4000 x 10 photo a 204,800 x 512 one, 300 MB, for a 512 crop)
        w, h = im.size
        s = resolution / min(w, h)
        W, H = max(resolution, round(w * s)), max(resolution, round(h * s))
        left, top = (W - resolution) // 2, (H - resolution) // 2
        sx, sy = W / w, H / h
        im = im.resize((resolution, resolution), Image.BICUBIC,
                       box=(left / sx, top / sy, (left + resolution) / sx, (top + resolution) / sy))
    elif im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.BICUBIC)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolderDataset(torch.utils.data.Dataset):
    """A folder of unlabeled images as training tensors (see the module docstring).

    ``dataset[i]`` flips at random with probability ``hflip`` (torch's global RNG, as torchvision does);
    ``dataset.load(i, flip)`` is deterministic.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 512, center_crop: bool = False,
                 hflip: float = 0.5, small_images: str = "upscale", progress: bool = False,
                 scan: ImageScan | None = None):
        if not 0.0 <= float(hflip) <= 1.0:
            raise ValueError(f"hflip is a probability between 0 and 1, got {hflip}")
        if int(resolution) < 8 or int(resolution) % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
        self.resolution = int(resolution)
        self.center_crop = bool(center_crop)
        self.hflip = float(hflip)
        self.scan = scan or scan_images(root, resolution=self.resolution, small_images=small_images, progress=progress)
        self.paths = list(self.scan.images)

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Changes when an image is added, removed, renamed or modified (:func:`suite.files.files_fingerprint`, paths
        under the folder: a moved folder keeps it)."""
        from suite.files import files_fingerprint

        return files_fingerprint(self.paths, self.scan.root)

    def load(self, index: int, flip: bool = False) -> torch.Tensor:
        return preprocess(load_image(self.paths[index], "training image", max_pixels=None), self.resolution, self.center_crop, flip)

    def __getitem__(self, index):
        if isinstance(index, tuple):  # (index, flip) from a deterministic sampler
            return self.load(int(index[0]), bool(index[1]))
        flip = bool(torch.rand(()) < self.hflip)
        return self.load(int(index), flip)


# ----------------------------------------------------------------------------------------------------------
# the deterministic sample stream
class SampleOrder:
    """Sample at stream position ``p``: image ``perm_e[p mod N]`` of epoch ``e = p div N`` (a fresh seeded
    permutation per epoch), its flip, timestep and noise, all drawn from a generator seeded by ``(seed, p)``.
    The optimizer step ``s`` with global batch ``B`` reads positions ``s*B ... s*B + B - 1`` however they are
    split over processes and accumulation steps."""

    def __init__(self, n: int, seed: int, hflip: float, num_train_timesteps: int):
        self.n, self.seed, self.hflip, self.T = n, int(seed), float(hflip), int(num_train_timesteps)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7919 + 17) % (2**63))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def draw(self, positions, latent_shape) -> dict:
        idx, flips, ts, noise, eps = [], [], [], [], []
        for p in positions:
            p = int(p)
            idx.append(int(self._perm(p // self.n)[p % self.n]))
            g = torch.Generator().manual_seed((self.seed * 2_654_435_761 + p * 40_503 + 1) % (2**63))
            flips.append(bool(torch.rand((), generator=g) < self.hflip))
            ts.append(int(torch.randint(0, self.T, (), generator=g)))
            noise.append(torch.randn(latent_shape, generator=g))
            eps.append(torch.randn(latent_shape, generator=g))
        return dict(indices=idx, flips=flips, timesteps=torch.tensor(ts, dtype=torch.long),
                    noise=torch.stack(noise), eps=torch.stack(eps))
