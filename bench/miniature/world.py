"""The synthetic open world, the unlabeled "porcelain" domain, the word-level tokenizer and the fixed autoencoder.

Open world: 32x32 images of one flat-coloured shape on a plain background, with a caption built from its
attributes ("a photo of a large red circle on the left on a grey background"; attributes are randomly omitted
so the model learns partial prompts). Attributes:

* colour: red, green, blue, yellow   (control, measured by the hue of the shape's pixels)
* shape: circle, square, triangle    (control, measured by the fill ratio of the shape's bounding box)
* position: left, right, top, bottom (control, measured by the centroid of the shape's pixels)
* size: small, large; background: black, grey, white (free attributes)

Domain "porcelain" (a style the open world lacks): the same shapes, attributes drawn uniformly, but painted
with diagonal glaze stripes (the colour alternating with a dark shade of it) on a cream background. It is
given to training as images only; its attributes are kept only so that tests can check the measurement code.

Autoencoder: a fixed, lossless "patch autoencoder" (pixel-unshuffle by 4: a 32x32x3 image is an 8x8x48
latent and back), wrapped to look like diffusers' ``AutoencoderKL`` to the pipeline. Nothing is learned in it,
so every difference between methods comes from the diffusion models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from suite.testing import bytes_to_unicode

IMAGE_SIZE = 32

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (225, 195, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (9.0, 16.0), "right": (23.0, 16.0), "top": (16.0, 9.0), "bottom": (16.0, 23.0)}
SIZES = {"small": 5.0, "large": 7.0}
BACKGROUNDS = {"black": (20, 20, 20), "grey": (128, 128, 128), "white": (235, 235, 235)}

DOMAIN_NAME = "porcelain"
DOMAIN_BACKGROUND = (238, 226, 196)  # cream: no open-world image has it
DOMAIN_SHADE = 0.45  # the dark glaze stripes are the colour times this
DOMAIN_TEMPLATE = "a photo of porcelain"  # the fine-tuning caption and the start of F_T (paper Sec. 3.3, 4.4)
PREFIXES = ("", "a photo of", "a picture of", "an image of")

_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    position: str
    size: str = "large"
    background: str = "grey"
    domain: bool = False
    jitter: tuple[float, float] = (0.0, 0.0)


def vocabulary() -> list[str]:
    """Every word a caption or an evaluation prompt can contain."""
    words = {"a", "an", "of", "on", "the", "photo", "picture", "image", "background", DOMAIN_NAME, ","}
    words |= set(COLOURS) | set(SHAPES) | set(POSITIONS) | set(SIZES) | set(BACKGROUNDS)
    return sorted(words)


def random_attributes(rng: np.random.Generator, domain: bool) -> Attributes:
    return Attributes(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        position=str(rng.choice(list(POSITIONS))),
        size=str(rng.choice(list(SIZES))),
        background="cream" if domain else str(rng.choice(list(BACKGROUNDS))),
        domain=domain,
        jitter=tuple(float(v) for v in rng.uniform(-1.5, 1.5, size=2)),
    )


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE, ss: int = _SUPERSAMPLE) -> np.ndarray:
    """Coverage in [0, 1] (``[size, size]``) of a shape centred at (cx, cy) with "radius" r, anti-aliased."""
    coords = (np.arange(size * ss) + 0.5) / ss
    x, y = np.meshgrid(coords, coords)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif shape == "square":
        h = 0.85 * r  # about the circle's area
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":
        top = cy - r
        inside = (y >= top) & (y <= cy + r) & (np.abs(x - cx) <= (y - top) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(attrs: Attributes, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image as ``uint8 [size, size, 3]``."""
    cx, cy = POSITIONS[attrs.position]
    cx, cy = cx + attrs.jitter[0], cy + attrs.jitter[1]
    cover = shape_mask(attrs.shape, cx, cy, SIZES[attrs.size], size)[..., None]
    colour = np.asarray(COLOURS[attrs.colour], dtype=np.float32)
    if attrs.domain:
        bg = np.asarray(DOMAIN_BACKGROUND, dtype=np.float32)
        yy, xx = np.mgrid[0:size, 0:size]
        stripe = (((xx + yy) // 3) % 2 == 1)[..., None]
        paint = np.where(stripe, colour * DOMAIN_SHADE, colour)
    else:
        bg = np.asarray(BACKGROUNDS[attrs.background], dtype=np.float32)
        paint = np.broadcast_to(colour, (size, size, 3))
    img = cover * paint + (1 - cover) * bg
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """A caption from the attributes; size and background are each omitted half the time, prefix random."""
    words = [str(rng.choice(PREFIXES)), "a"]
    if rng.random() < 0.5:
        words.append(attrs.size)
    words += [attrs.colour, attrs.shape, "on", "the", attrs.position]
    if rng.random() < 0.5:
        words += ["on", "a", attrs.background, "background"]
    return " ".join(w for w in words if w)


def control_prompt(colour: str, shape: str, position: str) -> str:
    """The evaluation prompt for text-guided in-domain generation (the same string for every method)."""
    return f"{DOMAIN_TEMPLATE}, a {colour} {shape} on the {position}"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``[N, 3, H, W]`` in [-1, 1] -> ``uint8 [N, H, W, 3]``."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class OpenWorld:
    """An endless stream of captioned open-world images (fresh draws from a seeded generator)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, list[str], list[Attributes]]:
        attrs = [random_attributes(self.rng, domain=False) for _ in range(n)]
        return np.stack([render(a) for a in attrs]), [caption(a, self.rng) for a in attrs], attrs


def domain_images(n: int, seed: int) -> tuple[np.ndarray, list[Attributes]]:
    """``n`` porcelain images (the attributes are returned for tests only; training never sees them)."""
    rng = np.random.default_rng(seed)
    attrs = [random_attributes(rng, domain=True) for _ in range(n)]
    return np.stack([render(a) for a in attrs]), attrs


def open_images(n: int, seed: int) -> tuple[np.ndarray, list[Attributes]]:
    images, _, attrs = OpenWorld(seed).batch(n)
    return images, attrs


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair of lowest rank (all its occurrences)."""
    while len(pieces) > 1:
        pairs = [(ranks[p], p) for p in zip(pieces, pieces[1:]) if p in ranks]
        if not pairs:
            break
        first, second = min(pairs)[1]
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                out.append(first + second)
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


def write_tokenizer(folder: Path, words: list[str], max_length: int) -> None:
    """A CLIP BPE vocabulary in which each of ``words`` is ONE token (merges build it from its letters), every
    other text falls back to bytes. ``model_max_length`` is short: captions have at most ~16 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # What BPE makes of the word with the merges so far, then merges joining what is left (lower priority,
        # so they never change how earlier words are split).
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1]] + pieces[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


# ---------------------------------------------------------------------------------------------------------
# autoencoder


class _LatentDist:
    def __init__(self, z: torch.Tensor):
        self.z = z

    def sample(self, generator=None) -> torch.Tensor:
        return self.z

    def mode(self) -> torch.Tensor:
        return self.z


class PatchAutoencoder(nn.Module):
    """A fixed, lossless autoencoder: ``encode`` = pixel-unshuffle by ``factor`` (a ``[B, 3, 32, 32]`` image in
    [-1, 1] becomes a ``[B, 48, 8, 8]`` latent), ``decode`` = pixel-shuffle. It has diffusers' VAE surface
    (``encode(x).latent_dist.sample()``, ``decode(z).sample`` / ``decode(z, return_dict=False)[0]``,
    ``config.scaling_factor``, ``config.block_out_channels`` whose length sets the scale factor) so
    :class:`suite.pipeline.InDomainPipeline` uses it like SD's VAE."""

    def __init__(self, factor: int = 4):
        super().__init__()
        levels = int(round(np.log2(factor)))
        if 2**levels != factor:
            raise ValueError(f"the patch factor must be a power of two, got {factor}")
        self.factor = factor
        self.config = SimpleNamespace(scaling_factor=1.0, block_out_channels=[1] * (levels + 1),
                                      latent_channels=3 * factor * factor)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = nn.functional.pixel_unshuffle(x, self.factor)
        out = SimpleNamespace(latent_dist=_LatentDist(z))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = nn.functional.pixel_shuffle(z, self.factor)
        return SimpleNamespace(sample=x) if return_dict else (x,)
