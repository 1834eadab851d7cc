"""The judge: a small CNN that reads a 64x64 image of the mini world and says its shape, colour, pattern and
whether it is porcelain. It is trained on *renders only* (never on generated images), with strong augmentation
(noise, blur, shifts, contrast) so that the grain of an imperfect sample does not fool it; it measures every
model of the mini world the same way, blind to how an image was made.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..files import atomic_path
from . import world as W

HEADS = {"shape": len(W.SHAPES), "colour": len(W.COLOURS), "pattern": len(W.PATTERNS), "porcelain": 2}


class Judge(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        c = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for a, b in zip(c[:-1], c[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1),
                       nn.GroupNorm(8, b), nn.SiLU(), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*layers)  # 64 -> 4
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c[-1] * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, 64, 64]`` in [0, 1] -> logits per head."""
        h = self.fc(self.features(x * 2 - 1))
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> dict[str, list[str]]:
        """Names per head for images ``[B, 3, H, W]`` in [0, 1] (resized to 64x64 if needed)."""
        if images.shape[-1] != 64 or images.shape[-2] != 64:
            images = nn.functional.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
        self.eval()
        logits = {k: [] for k in HEADS}
        for i in range(0, len(images), batch):
            out = self(images[i:i + batch].float())
            for k in HEADS:
                logits[k].append(out[k])
        names = {"shape": W.SHAPES, "colour": list(W.COLOURS), "pattern": W.PATTERNS, "porcelain": (False, True)}
        return {k: [names[k][i] for i in torch.cat(v).argmax(-1).tolist()] for k, v in logits.items()}

    @torch.no_grad()
    def porcelain_probability(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.cat([self(images[i:i + 256].float())["porcelain"].softmax(-1)[:, 1]
                          for i in range(0, len(images), 256)])

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The 256-d penultimate features (for Frechet distances between image sets)."""
        self.eval()
        return torch.cat([self.fc(self.features(images[i:i + 256].float() * 2 - 1)) for i in range(0, len(images), 256)])


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Renders made to look like imperfect samples: shifts, blur, noise, contrast and brightness changes."""
    b = x.shape[0]
    shift = torch.randint(-4, 5, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    if torch.rand(1, generator=gen).item() < 0.5:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None]) / 16
        x = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                 k.expand(3, 1, 3, 3), groups=3)
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    sigma = 0.12 * torch.rand(b, 1, 1, 1, generator=gen)
    x = x * gain + bias + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_judge(images: np.ndarray, labels: np.ndarray, steps: int, batch: int = 64, lr: float = 2e-3,
                seed: int = 0, log=print) -> Judge:
    """Train on renders ``images [N, 64, 64, 3] uint8`` with ``labels [N, 4]`` (shape, colour, pattern, porcelain).
    The colour and pattern heads learn only from open-world objects (porcelain has its own glaze)."""
    torch.manual_seed(seed)
    net = Judge()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(labels)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x, y = augment(x_all[idx], gen), y_all[idx]
        out = net(x)
        open_ = y[:, 3] == 0
        loss = nn.functional.cross_entropy(out["shape"], y[:, 0]) + nn.functional.cross_entropy(out["porcelain"], y[:, 3])
        if open_.any():
            loss = loss + nn.functional.cross_entropy(out["colour"][open_], y[open_, 1]) \
                + nn.functional.cross_entropy(out["pattern"][open_], y[open_, 2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"judge step {step}/{steps}  loss {loss.item():.4f}  {step / (time.time() - t0):.2f} steps/s")
    return net.eval().requires_grad_(False)


def save_judge(net: Judge, path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_judge(path) -> Judge:
    from safetensors.torch import load_file

    net = Judge()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)
