"""Distances between feature sets (suite.metrics): the Fréchet distance, KID and the sliced Wasserstein distance
against their closed forms."""

import numpy as np
import pytest

from suite.metrics import diversity, frechet_distance, kid, kid_with_se, sliced_wasserstein


def test_frechet_distance_is_zero_on_itself_and_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert abs(frechet_distance(a, a)) < 1e-8
    # two Gaussians with diagonal covariances: |mu_a - mu_b|^2 + sum (s_a - s_b)^2 (standard deviations)
    mu_a, mu_b = np.zeros(6), np.arange(6) / 3
    sd_a, sd_b = np.full(6, 1.0), np.linspace(0.5, 2.0, 6)
    x = mu_a + sd_a * rng.normal(size=(200_000, 6))
    y = mu_b + sd_b * rng.normal(size=(200_000, 6))
    closed = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert abs(frechet_distance(x, y) - closed) < 0.02 * closed


def test_kid_is_unbiased_and_its_jackknife_matches_leave_one_out():
    rng = np.random.default_rng(1)
    same = [kid(rng.normal(size=(20, 8)), rng.normal(size=(20, 8))) for _ in range(300)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))  # expectation 0 for one distribution
    assert min(same) < 0  # unbiased: small negative values occur
    x, y = rng.normal(size=(40, 5)) + 1.0, rng.normal(size=(60, 5))
    value, se = kid_with_se(x, y)
    loo = np.array([kid(np.delete(x, i, 0), y) for i in range(len(x))])
    assert abs(se - np.sqrt((len(x) - 1) / len(x) * ((loo - loo.mean()) ** 2).sum())) < 1e-10
    assert value > 3 * se  # a shifted set is told apart


def test_frechet_distance_keeps_small_variances_and_refuses_bad_features():
    """Eigenvalues of S_a S_b below 1e-12 of the largest were set to 0: on features whose variances span six orders
    of magnitude (the judge's do) a set against itself measured 2.0, not 0, and every distance was too large."""
    rng = np.random.default_rng(2)
    scales = np.logspace(0, -3, 32)  # variances from 1 to 1e-6
    a = rng.normal(size=(2000, 32)) * scales
    assert abs(frechet_distance(a, a)) < 1e-9
    b = rng.normal(size=(2000, 32)) * scales * 1.1  # every standard deviation 10% larger
    from scipy.linalg import sqrtm  # an independent reference: the matrix square root itself

    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    exact = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert abs(frechet_distance(a, b) - exact) < 1e-6 * exact
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(np.where(np.eye(4, 3) > 0, np.nan, 1.0), a[:4, :3])
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(a[:1], a)


def test_kid_on_large_sets_is_the_whole_sets_estimate_with_its_jackknife():
    """Above 1,000 images KID was the mean over 100 subsets of 1,000 and its "±" their standard deviation: those
    subsets overlap, so at 1,001 images the "±" fell from 0.0027 to 0.0001 (23 times too small). KID is now the
    whole sets' estimate at any size (summed in blocks), with the jackknife's standard error."""
    from suite.metrics import _kernel

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(1300, 6)) + 0.05, rng.normal(size=(1100, 6))
    value, se = kid_with_se(x, y)
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)  # the dense estimate, for reference
    n, m = len(x), len(y)
    dense = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
             - 2 * kxy.sum() / (n * m))
    assert abs(value - dense) < 1e-9 * abs(kxy.mean())
    _, se_small = kid_with_se(x[:1000], y[:1000])
    assert 0.7 < se / se_small < 1.1  # no cliff at 1,000: the error shrinks slowly with the set's size
    with pytest.raises(ValueError, match="NaN or infinite"):
        kid_with_se(np.full((5, 3), np.inf), y[:5, :3])


def test_diversity_is_the_mean_pairwise_distance():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert abs(diversity(f) - (5 + 4 + 3) * 2 / 6) < 1e-12


def test_standard_error_of_the_mean_and_none_for_one_value():
    from suite.metrics import standard_error

    assert abs(standard_error([1.0, 2.0, 3.0]) - 1 / np.sqrt(3)) < 1e-12  # sample sd 1, three values
    assert standard_error([0.5]) is None and standard_error([]) is None


def test_sliced_wasserstein_is_half_a_shift_in_3d_and_exact_in_1d():
    rng = np.random.default_rng(2)
    a = rng.random((3000, 3))
    assert sliced_wasserstein(a, a) == 0.0
    shift = np.array([0.3, 0.0, 0.0])  # every projection moves by |v.u|, whose mean over the sphere is |v| / 2
    assert abs(sliced_wasserstein(a, a + shift, directions=2000) - 0.15) < 0.01
    # 1-D, sets of different sizes: the distance between the empirical distributions, |mean shift| for one normal
    u, v = rng.normal(size=(4000, 1)), rng.normal(size=(3000, 1)) + 0.5
    assert abs(sliced_wasserstein(u, v, directions=3) - 0.5) < 0.05
    # a set of colours is further from a different palette than from another sample of its own
    white_blue = np.where(rng.random((2000, 1)) < 0.5, [0.95, 0.95, 0.92], [0.09, 0.18, 0.62])
    grey = np.full((2000, 3), 0.5)
    assert sliced_wasserstein(white_blue[:1000], white_blue[1000:]) < 0.05 < sliced_wasserstein(grey, white_blue)
    with pytest.raises(ValueError, match="same d"):
        sliced_wasserstein(a, a[:, :2])
