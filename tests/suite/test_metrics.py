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
