"""Distances between sets of image features (numpy only): Fréchet distance, kernel inception distance (KID) with
its standard error, diversity. The feature network is the caller's (the mini world's judge; DINOv2 or CLIP for
real images).

* Fréchet distance: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` (FID's formula, Heusel et al. 2017).
  Biased for small sets; needs more samples than feature dimensions to mean much.
* Sliced Wasserstein-1 distance between two point sets (e.g. the colours of two objects' pixels): the mean over
  random unit directions of the exact 1-D Wasserstein-1 distance of the projections (scipy's formula, in numpy). A
  shift of one set by ``v`` in 3-D gives ``|v| / 2`` in expectation over the directions.
* KID (Bińkowski et al. 2018): the unbiased estimate of the squared maximum mean discrepancy with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``. Unbiased at any set size (its expectation is 0 when both
  sets come from one distribution, so small negative values occur), which is why it is the measure for 90
  images. It is computed on the whole sets at any size (in blocks), with the jackknife's standard error over the
  generated set, the reference set held fixed. (clean-fid and torch-fidelity average it over 100 subsets of 1,000
  above 1,000 images: the same expectation; their spread over those overlapping subsets, reported here before,
  understated the uncertainty by up to 23 times.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "frechet_from_stats", "moments", "add_moments", "kid", "kid_with_se",
           "diversity", "sliced_wasserstein"]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets ``a [n, d]`` and ``b [m, d]``;
    ``tr((S_a S_b)^{1/2})`` is the sum of the square roots of the (real, non-negative) eigenvalues of ``S_a S_b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return _frechet(mu_a, sa, mu_b, sb)


def _frechet(mu_a, sa, mu_b, sb) -> float:
    # tr((S_a S_b)^{1/2}) = tr((R S_b R)^{1/2}) with R = S_a^{1/2}: a symmetric matrix, whose eigenvalues eigh finds
    # exactly real; only the negative ones (rounding) are clipped. The eigenvalues of S_a S_b from the general solver
    # were cut below 1e-12 of the largest, which on the judge's features dropped 124 of 256 genuine small variances:
    # a set against itself measured 0.024 instead of 0, and every distance 0.025 too large.
    if not all(np.isfinite(t).all() for t in (mu_a, sa, mu_b, sb)):
        raise ValueError("Fréchet distance: the features hold NaN or infinite values (a feature network that "
                         "overflowed?)")
    w, v = np.linalg.eigh((sa + sa.T) / 2)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root_a @ sb @ root_a
    ev = np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(ev).sum())


def moments(features: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The exact sufficient statistics of a feature set for the Fréchet distance: ``(n, sum x, sum x x^T)`` in
    float64. Sets split between processes are gathered by adding these (:func:`add_moments`), never by averaging
    per-process means."""
    f = np.asarray(features, np.float64)
    return len(f), f.sum(0), f.T @ f


def add_moments(parts) -> tuple[int, np.ndarray, np.ndarray]:
    """The moments of the union of sets given by their moments, added in the order given."""
    parts = list(parts)
    n, s1, s2 = parts[0]
    s1, s2 = s1.copy(), s2.copy()
    for m, t1, t2 in parts[1:]:
        n, s1, s2 = n + m, s1 + t1, s2 + t2
    return n, s1, s2


def frechet_from_stats(a: tuple, b: tuple) -> float:
    """:func:`frechet_distance` from two sets' :func:`moments` (mean ``s1/n``, unbiased covariance
    ``(s2 - n mu mu^T) / (n - 1)``, as ``np.cov``)."""
    def gauss(n, s1, s2):
        if n < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {n}")
        mu = s1 / n
        return mu, (s2 - n * np.outer(mu, mu)) / (n - 1)

    return _frechet(*gauss(*a), *gauss(*b))


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def standard_error(values) -> float | None:
    """The standard error of the mean of ``values`` (sample standard deviation / sqrt(n)); None for fewer than two
    values, where it is not defined (None, not NaN, so that it can be written to JSON)."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None


def _kernel_rows(a: np.ndarray, b: np.ndarray, same: bool, block: int = 1024) -> np.ndarray:
    """The row sums of the kernel matrix between ``a`` and ``b`` (its diagonal left out when ``same``), in blocks
    of ``block`` rows: memory ``block x len(b)`` whatever the set sizes."""
    rows = np.empty(len(a))
    for i in range(0, len(a), block):
        k = _kernel(a[i:i + block], b)
        if same:
            k[np.arange(len(k)), np.arange(i, i + len(k))] = 0.0
        rows[i:i + block] = k.sum(1)
    return rows


def kid_with_se(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(KID, standard error)`` between generated features ``x [n, d]`` (n >= 3) and reference features
    ``y [m, d]`` (m >= 2): the unbiased MMD^2 estimate over the whole sets and the jackknife's standard error over
    ``x``, at any size (the kernel matrices are summed in blocks)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if n < 3 or m < 2:
        raise ValueError(f"KID needs at least 3 generated and 2 reference samples, got {n} and {m}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("KID: the features hold NaN or infinite values (a feature network that overflowed?)")
    row_xx, row_xy = _kernel_rows(x, x, True), _kernel_rows(x, y, False)
    term_y = _kernel_rows(y, y, True).sum() / (m * (m - 1))
    sxx, sxy = row_xx.sum(), row_xy.sum()
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


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: int = 64, seed: int = 0) -> float:
    """The sliced Wasserstein-1 distance between point sets ``a [n, d]`` and ``b [m, d]`` (any sizes): the mean over
    ``directions`` random unit directions (seeded) of the 1-D Wasserstein-1 distance between the projections."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if directions < 1:
        raise ValueError(f"sliced_wasserstein needs at least one direction, got {directions}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"sliced_wasserstein needs two non-empty [n, d] sets of the same d, got {a.shape} and "
                         f"{b.shape}")
    dirs = np.random.default_rng(seed).normal(size=(directions, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return float(np.mean([_wasserstein_1d(a @ u, b @ u) for u in dirs]))


def _wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """``integral |F_u(x) - F_v(x)| dx`` of the two empirical distribution functions (scipy's formula)."""
    u, v = np.sort(u), np.sort(v)
    points = np.sort(np.concatenate([u, v]))
    widths = np.diff(points)
    cdf_u = np.searchsorted(u, points[:-1], "right") / len(u)
    cdf_v = np.searchsorted(v, points[:-1], "right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * widths))
