"""Distances between sets of image features (numpy only): Fréchet distance, kernel inception distance (KID) with
its standard error, diversity. The feature network is the caller's (the mini world's judge; DINOv2 or CLIP for
real images).

* Fréchet distance: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` (FID's formula, Heusel et al. 2017).
  Biased for small sets; needs more samples than feature dimensions to mean much.
* KID (Bińkowski et al. 2018): the unbiased estimate of the squared maximum mean discrepancy with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``. Unbiased at any set size (its expectation is 0 when both
  sets come from one distribution, so small negative values occur), which is why it is the measure for 90
  images. Its standard error here is the jackknife's over the generated set, the reference set held fixed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "kid", "kid_with_se", "diversity"]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets ``a [n, d]`` and ``b [m, d]``;
    ``tr((S_a S_b)^{1/2})`` is the sum of the square roots of the (real, non-negative) eigenvalues of ``S_a S_b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.linalg.eigvals(sa @ sb).real.clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(ev).sum())


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_with_se(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(KID, standard error)`` between generated features ``x [n, d]`` (n >= 3) and reference features
    ``y [m, d]`` (m >= 2): the unbiased MMD^2 estimate and the jackknife's standard error over ``x``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if n < 3 or m < 2:
        raise ValueError(f"KID needs at least 3 generated and 2 reference samples, got {n} and {m}")
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    np.fill_diagonal(kxx, 0.0)
    term_y = kyy.sum() - np.trace(kyy)
    term_y /= m * (m - 1)
    sxx, row_xx = kxx.sum(), kxx.sum(1)
    sxy, row_xy = kxy.sum(), kxy.sum(1)
    value = sxx / (n * (n - 1)) + term_y - 2 * sxy / (n * m)
    # leave-one-out values: drop x_i from both sums
    loo = (sxx - 2 * row_xx) / ((n - 1) * (n - 2)) + term_y - 2 * (sxy - row_xy) / ((n - 1) * m)
    se = np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    return float(value), float(se)


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased KID between feature sets ``x`` and ``y`` (see :func:`kid_with_se`)."""
    return kid_with_se(x, y)[0]


def diversity(features: np.ndarray) -> float:
    """The mean pairwise Euclidean distance between the rows of ``features``."""
    f = np.asarray(features, np.float64)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    n = len(f)
    return float(d.sum() / max(n * (n - 1), 1))
