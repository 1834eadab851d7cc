"""Metrics that do not know which method made an image.

* Control accuracy by geometry (:func:`measure`): the shape's pixels are the largest connected blob of
  pixels far from the background colour (the median of the border pixels); colour = nearest palette hue to the
  circular-mean hue of its saturated pixels; shape = fill ratio of the blob's bounding box (square ~1, circle ~0.79, triangle ~0.5);
  position = nearest anchor to the blob's centroid. Checked on real images in the tests.
* Domain fidelity: :class:`DomainClassifier`, a small CNN trained here on held-out real porcelain images against
  real open-world images (mean P(domain) of generated images), and a Fréchet distance (:func:`frechet_distance`)
  in the 64-d features of :class:`FeatureNet`, a small CNN trained here on real images of both kinds to predict
  colour, shape, position and domain (an "Inception" for this world).
* Diversity (:func:`diversity`): mean pairwise distance of the feature vectors, divided by the same for real
  domain images (1 = as diverse as the data).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .world import COLOURS, POSITIONS, SHAPES, domain_images, open_images, to_tensor

MIN_AREA = 12  # pixels; a smaller blob counts as "no shape"


def _hue(rgb) -> float:
    r, g, b = (np.asarray(rgb, dtype=np.float64) / 255.0).tolist()
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


PALETTE_HUES = {name: _hue(rgb) for name, rgb in COLOURS.items()}


@dataclass
class Measured:
    colour: str | None
    shape: str | None
    position: str | None
    area: int
    fill: float


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    lab = label(mask, connectivity=2)
    if lab.max() == 0:
        return mask
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == counts.argmax()


def measure(image: np.ndarray) -> Measured:
    """Colour, shape and position of the one shape in a ``uint8 [H, W, 3]`` image, by geometry."""
    rgb = image.astype(np.float32)
    # background colour = median of the border pixels; the shape = largest blob far from it
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    dist = np.linalg.norm(rgb - np.median(border, axis=0), axis=-1)
    blob = _largest_component(dist > max(40.0, 0.5 * np.percentile(dist, 99)))
    area = int(blob.sum())
    if area < MIN_AREA:
        return Measured(None, None, None, area, 0.0)
    # colour: circular mean hue of the blob's saturated pixels -> nearest palette hue
    px = rgb[blob] / 255.0
    mxp, mnp = px.max(axis=1), px.min(axis=1)
    c = mxp - mnp
    keep = c > 0.3 * np.maximum(mxp, 1e-6)
    if keep.sum() < 3:
        return Measured(None, None, None, area, 0.0)
    px, mxp, c = px[keep], mxp[keep], c[keep]
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    h = np.where(mxp == r, ((g - b) / c) % 6, np.where(mxp == g, (b - r) / c + 2, (r - g) / c + 4)) * 60.0
    ang = np.deg2rad(h)
    mean_h = np.rad2deg(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360
    colour = min(PALETTE_HUES, key=lambda k: min(abs(mean_h - PALETTE_HUES[k]), 360 - abs(mean_h - PALETTE_HUES[k])))
    # shape: fill ratio of the bounding box
    ys, xs = np.nonzero(blob)
    fill = area / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    shape = "triangle" if fill < 0.675 else ("circle" if fill < 0.94 else "square")
    # position: nearest anchor to the centroid (pixel centres at +0.5)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    position = min(POSITIONS, key=lambda k: (POSITIONS[k][0] - cx) ** 2 + (POSITIONS[k][1] - cy) ** 2)
    return Measured(colour, shape, position, area, fill)


def control_accuracy(images: np.ndarray, targets: list[tuple[str, str, str]]) -> dict[str, float]:
    """Fractions of images whose measured colour / shape / position match ``targets``; ``align`` = their mean
    (the paper's text alignment: attribute predictors' agreement with the prompt, averaged over attributes);
    ``all`` = the fraction with all three right."""
    hits = np.zeros((len(images), 3), dtype=bool)
    for i, (im, (colour, shape, position)) in enumerate(zip(images, targets)):
        m = measure(im)
        hits[i] = (m.colour == colour, m.shape == shape, m.position == position)
    return {"colour": float(hits[:, 0].mean()), "shape": float(hits[:, 1].mean()),
            "position": float(hits[:, 2].mean()), "align": float(hits.mean()), "all": float(hits.all(axis=1).mean())}


# ---------------------------------------------------------------------------------------------------------
# learned metric networks (trained once per run, on real images only)


class SmallCNN(nn.Module):
    """32x32 image -> 64-d feature (3 strided convolutions to a 4x4 map, flattened: position is kept) -> heads."""

    def __init__(self, heads: dict[str, int]):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(64, n) for k, n in heads.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {k: head(f) for k, head in self.heads.items()}


def _labels(attrs, domain: bool) -> dict[str, np.ndarray]:
    return {
        "colour": np.array([list(COLOURS).index(a.colour) for a in attrs]),
        "shape": np.array([SHAPES.index(a.shape) for a in attrs]),
        "position": np.array([list(POSITIONS).index(a.position) for a in attrs]),
        "domain": np.full(len(attrs), int(domain)),
    }


def _train_classifier(model: SmallCNN, x: torch.Tensor, y: dict[str, torch.Tensor], steps: int, seed: int) -> SmallCNN:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        out = model(x[idx])
        loss = sum(nn.functional.cross_entropy(out[k], y[k][idx]) for k in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def _real_set(n: int, seed: int):
    """``n`` real porcelain and ``n`` real open-world images (seeds disjoint from every training seed)."""
    dom, dom_attrs = domain_images(n, seed)
    opn, opn_attrs = open_images(n, seed + 1)
    x = to_tensor(np.concatenate([dom, opn]))
    ld, lo = _labels(dom_attrs, True), _labels(opn_attrs, False)
    y = {k: torch.from_numpy(np.concatenate([ld[k], lo[k]])).long() for k in ld}
    return x, y


@dataclass
class MetricNets:
    """The two networks every metric uses, trained once per run on held-out real images only."""

    domain_classifier: SmallCNN
    feature_net: SmallCNN
    reference: np.ndarray  # real porcelain images (held out) for the Fréchet distance and diversity
    holdout_accuracy: dict

    @classmethod
    def train(cls, n_train: int, n_reference: int, steps: int, seed: int) -> MetricNets:
        torch.manual_seed(seed)
        x, y = _real_set(n_train, seed)
        domain_classifier = _train_classifier(SmallCNN({"domain": 2}), x, {"domain": y["domain"]}, steps, seed)
        torch.manual_seed(seed + 1)
        feature_net = _train_classifier(SmallCNN({"colour": 4, "shape": 3, "position": 4, "domain": 2}), x, y,
                                        steps, seed + 1)
        # accuracy on fresh real images (reported: a metric network that cannot tell real data apart is useless)
        xt, yt = _real_set(256, seed + 7)
        with torch.no_grad():
            acc = {"domain_classifier": float((domain_classifier(xt)["domain"].argmax(1) == yt["domain"]).float().mean())}
            out = feature_net(xt)
            acc.update({f"feature_net_{k}": float((out[k].argmax(1) == yt[k]).float().mean()) for k in out})
        reference, _ = domain_images(n_reference, seed + 13)
        return cls(domain_classifier, feature_net, reference, acc)

    @torch.no_grad()
    def domain_score(self, images: np.ndarray) -> float:
        """Mean P(porcelain) of the images under the domain classifier."""
        logits = self.domain_classifier(to_tensor(images))["domain"]
        return float(logits.softmax(1)[:, 1].mean())

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self.feature_net.features(to_tensor(images)).double().numpy()

    def fd(self, images: np.ndarray) -> float:
        """Fréchet distance between the images and the held-out real porcelain images, in FeatureNet space."""
        return frechet_distance(self.features(images), self.features(self.reference))

    def diversity(self, images: np.ndarray) -> float:
        """Mean pairwise feature distance of the images / the same for real porcelain images."""
        return diversity(self.features(images)) / diversity(self.features(self.reference))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` (FID's formula) between two feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(sa @ sb))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def diversity(features: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between feature vectors."""
    d = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    n = len(features)
    return float(d.sum() / max(n * (n - 1), 1))
