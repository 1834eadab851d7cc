"""The judge: a small CNN that reads a 64x64 image of the mini world and says its shape (a face is one more
class), colour, pattern and whether it is porcelain; for faces, whether it is in the face domain's photo look and
which attributes it has (glasses, a hat, smiling, a beard, closed eyes, earrings, the hair colour or bald). It is trained on *renders only* (never on generated images), with strong augmentation
(noise, blur, shifts, contrast) so that the grain of an imperfect sample does not fool it; it measures every
model of the mini world the same way, blind to how an image was made.
"""

from __future__ import annotations

import torch
from torch import nn

from ..files import atomic_path
from . import world as W
from .faces import FLAGS, HAIR_COLOURS

JUDGE_SHAPES = W.SHAPES + ("face",)
FACE_FLAGS = tuple(FLAGS.values())  # the Face's yes/no fields
HAIR = ("bald", *HAIR_COLOURS)
HEADS = {"shape": len(JUDGE_SHAPES), "colour": len(W.COLOURS), "pattern": len(W.PATTERNS), "porcelain": 2,
         "photo": 2, **{k: 2 for k in FACE_FLAGS}, "hair": len(HAIR)}
NAMES = {"shape": JUDGE_SHAPES, "colour": tuple(W.COLOURS), "pattern": W.PATTERNS, "porcelain": (False, True),
         "photo": (False, True), **{k: (False, True) for k in FACE_FLAGS}, "hair": HAIR}
IGNORE = -1  # a label that does not apply (a face's colour, an object's hair): no loss


def object_labels(obj) -> list[int]:
    """One label per head (:data:`HEADS` order) for a render of a :class:`~suite.miniworld.world.MiniObject`."""
    lab = dict(shape=W.SHAPES.index(obj.shape), porcelain=int(obj.porcelain), photo=0)
    if not obj.porcelain:  # the glaze has its own colour and pattern
        lab.update(colour=list(W.COLOURS).index(obj.colour), pattern=W.PATTERNS.index(obj.pattern))
    return [lab.get(k, IGNORE) for k in HEADS]


def face_labels(face, photo: bool) -> list[int]:
    """One label per head for a render of a :class:`~suite.miniworld.faces.Face` (``photo``: in the domain's look)."""
    lab = dict(shape=JUDGE_SHAPES.index("face"), porcelain=0, photo=int(photo),
               hair=HAIR.index("bald" if face.hair_style == "bald" else face.hair_colour),
               **{k: int(getattr(face, k)) for k in FACE_FLAGS})
    return [lab.get(k, IGNORE) for k in HEADS]


def face_attributes(pred: dict[str, list], i: int) -> set[str]:
    """The attribute phrases (:data:`suite.miniworld.faces.ATTRIBUTES`) the judge read in image ``i`` of a
    :meth:`Judge.predict` result."""
    if pred["shape"][i] != "face":  # the attribute heads never learned anything about objects
        return set()
    out = {phrase for phrase, flag in FLAGS.items() if pred[flag][i]}
    if pred["hair"][i] != "bald":
        out.add(f"{pred['hair'][i]} hair")
    return out


class Judge(nn.Module):
    def __init__(self, width: int = 24):
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
        return {k: [NAMES[k][i] for i in torch.cat(v).argmax(-1).tolist()] for k, v in logits.items()}

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


def save_judge(net: Judge, path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_judge(path) -> Judge:
    from safetensors.torch import load_file

    net = Judge()
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError:  # another build's heads or width
        from ..models import ModelLoadError

        raise ModelLoadError(f"the judge {path} was made by another build of the mini world (its heads differ): "
                             f"rebuild the models with `python -m training.miniworld`") from None
    return net.eval().requires_grad_(False)
