"""Tests for scoresde/metrics.py against closed forms.

Gaussian shifts (sliced Wasserstein), Gaussian kernel integrals (MMD), polynomial-kernel moments (KID), the
2x2 Fréchet formula, mixture parameters (mode statistics), and the digits classifier's held-out accuracy.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresde import toy
from scoresde.data import DataConfig, build_dataset
from scoresde.metrics import (
    assign_modes,
    class_histogram_entropy,
    classifier_accuracy,
    digits_sample_quality,
    frechet_distance,
    frechet_distance_from_moments,
    kernel_inception_distance,
    mean_max_probability,
    median_bandwidth,
    mmd,
    mode_statistics,
    sliced_wasserstein,
    sliced_wasserstein_floor,
    train_digits_classifier,
    wasserstein_1d,
)

KEY = jax.random.PRNGKey(0)


def _normal(seed, shape, mean=0.0, scale=1.0):
    """Test data from numpy: cheaper than compiling jax.random for every new shape."""
    return jnp.asarray(np.asarray(mean) + scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _mean_abs_cos(dim):
    """E|theta_1| for theta uniform on the unit sphere in `dim` dimensions."""
    return math.gamma(dim / 2) / (math.sqrt(math.pi) * math.gamma((dim + 1) / 2))


# ----- sliced Wasserstein -----


def test_wasserstein_1d_matches_the_hand_computed_quantile_coupling():
    # F^-1 = 0 on [0, 1/2), 1 on [1/2, 1); G^-1 = 0, 1/2, 1 on thirds: they differ by 1/2 on [1/3, 2/3).
    u, v = jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.5, 0.0]])
    np.testing.assert_allclose(wasserstein_1d(u, v, p=1), [1 / 6], rtol=1e-6)
    np.testing.assert_allclose(wasserstein_1d(u, v, p=2), [1 / 12], rtol=1e-6)


@pytest.mark.parametrize("n, m", [(50, 50), (37, 101), (200, 3)])
def test_wasserstein_1d_agrees_with_scipy_for_unequal_sizes(n, m):
    rng = np.random.default_rng(n + m)
    u, v = rng.normal(size=n), rng.exponential(size=m)
    expected = scipy.stats.wasserstein_distance(u, v)
    value = wasserstein_1d(jnp.asarray(u)[None], jnp.asarray(v)[None], p=1)[0]
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_sliced_wasserstein_of_the_same_empirical_distribution_is_zero():
    x = _normal(1, (300, 3))
    assert float(sliced_wasserstein(KEY, x, x[::-1])) == 0.0
    assert float(sliced_wasserstein(KEY, x, jnp.concatenate([x, x, x]))) < 1e-6


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_sliced_wasserstein_of_a_translation_matches_the_closed_form(dim, p):
    # Every projection of y = x + d is the projection of x shifted by theta.d, so W_p(theta) = |theta.d|:
    # SW_2^2 = E (theta.d)^2 = |d|^2 / D and SW_1 = |d| E|theta_1|.
    d = jnp.linspace(0.5, 1.5, dim)
    x = _normal(2, (200, dim))
    expected = float(jnp.linalg.norm(d)) * (1 / math.sqrt(dim) if p == 2 else _mean_abs_cos(dim))
    value = sliced_wasserstein(KEY, x, x + d, num_projections=4096, p=p)
    np.testing.assert_allclose(value, expected, rtol=0.03)


def test_sliced_wasserstein_between_independent_shifted_gaussians_approaches_the_closed_form():
    d = jnp.array([6.0, -3.0])
    x, y = _normal(3, (2000, 2)), _normal(4, (1500, 2), mean=d)
    value = sliced_wasserstein(KEY, x, y, num_projections=1024)
    np.testing.assert_allclose(value, float(jnp.linalg.norm(d)) / math.sqrt(2), rtol=0.04)


def test_sliced_wasserstein_scales_with_the_data_and_ignores_common_shifts():
    x, y = _normal(5, (400, 3)), _normal(6, (300, 3), scale=2.0)
    base = sliced_wasserstein(KEY, x, y)
    np.testing.assert_allclose(sliced_wasserstein(KEY, -3.0 * x, -3.0 * y), 3.0 * base, rtol=1e-4)
    np.testing.assert_allclose(sliced_wasserstein(KEY, x + 7.0, y + 7.0), base, rtol=1e-3)


def test_sliced_wasserstein_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension: 2 and 3"):
        sliced_wasserstein(KEY, jnp.zeros((4, 2)), jnp.zeros((4, 3)))


def test_floor_shrinks_like_one_over_root_n():
    def gaussian(key, n):
        return jax.random.normal(key, (n, 2))

    floor = functools.partial(sliced_wasserstein_floor, KEY, gaussian, num_projections=128, num_repeats=4)
    small, large = float(floor(150)), float(floor(2400))
    assert 3.0 < small / large < 5.0  # sqrt(2400 / 150) = 4, up to a log factor


def test_floor_of_a_mixture_lies_below_the_distance_to_a_shifted_copy():
    mix = toy.mixture_2d()
    floor = float(sliced_wasserstein_floor(KEY, mix.sample, 2400, num_projections=128, num_repeats=2))
    exact = mix.sample(jax.random.PRNGKey(1), 2400)
    shifted = sliced_wasserstein(KEY, exact + 0.2, mix.sample(KEY, 2400), num_projections=128)
    assert 0.0 < floor < float(shifted) / 2


# ----- MMD -----


def _gaussian_rbf_mmd2(h, s1, s2, shift, dim):
    """MMD^2 of N(0, s1^2 I) and N(shift, s2^2 I) under exp(-|a - b|^2 / (2 h^2)): Gaussian integrals give
    E k(a, b) = (h^2 / (h^2 + v))^(D/2) exp(-|shift|^2 / (2 (h^2 + v))) with v the summed variances."""

    def expected_kernel(var, sq_shift):
        return (h**2 / (h**2 + var)) ** (dim / 2) * math.exp(-sq_shift / (2 * (h**2 + var)))

    sq = float(jnp.sum(shift**2))
    within = expected_kernel(2 * s1**2, 0.0) + expected_kernel(2 * s2**2, 0.0)
    return within - 2 * expected_kernel(s1**2 + s2**2, sq)


@jax.jit
def _mmd_repeats(shift, scale):
    """30 unbiased MMD^2 estimates, bandwidth 1, between 300 draws each of N(0, I) and N(shift, scale^2 I)."""

    def one(key):
        k_x, k_y = jax.random.split(key)
        x = jax.random.normal(k_x, (300, 2))
        return mmd(x, shift + scale * jax.random.normal(k_y, (300, 2)), [1.0])

    return jax.lax.map(one, jax.random.split(KEY, 30))


def test_mmd_is_unbiased_for_the_same_distribution():
    values = np.asarray(_mmd_repeats(jnp.zeros(2), 1.0))
    standard_error = values.std() / math.sqrt(len(values))
    # The biased (V-statistic) estimator would sit 2 (1 - E k) / n = 0.0044 above zero: many standard errors.
    assert abs(values.mean()) < 3 * standard_error
    assert standard_error < 0.0005


def test_mmd_matches_the_gaussian_closed_form():
    shift = jnp.array([0.5, 0.5])
    values = np.asarray(_mmd_repeats(shift, 1.5))
    expected = _gaussian_rbf_mmd2(1.0, 1.0, 1.5, shift, 2)
    assert abs(values.mean() - expected) < 4 * values.std() / math.sqrt(len(values))
    assert values.min() > 0.3 * expected


def test_mmd_with_several_bandwidths_sums_the_kernels():
    x, y = _normal(7, (100, 3)), _normal(8, (80, 3), mean=0.3)
    np.testing.assert_allclose(mmd(x, y, [0.5, 2.0]), mmd(x, y, [0.5]) + mmd(x, y, [2.0]), rtol=1e-5)


def test_median_bandwidth_matches_the_half_normal_median():
    # In 1-D, a - b ~ N(0, 2 s^2): its absolute value has median sqrt(2) s 0.6745 (mean and squared distance
    # would give other values at s = 3).
    h = median_bandwidth(_normal(9, (500, 1), scale=3.0), _normal(10, (500, 1), scale=3.0))
    np.testing.assert_allclose(h, 3.0 * math.sqrt(2) * scipy.stats.norm.ppf(0.75), rtol=0.05)
    x, y = _normal(11, (300, 2)), _normal(12, (300, 2), mean=2.0)
    np.testing.assert_allclose(mmd(x, y), mmd(x, y, [float(median_bandwidth(x, y))]), rtol=1e-6)


def test_mmd_needs_two_samples_per_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd(jnp.zeros((1, 2)), jnp.ones((5, 2)), [1.0])


# ----- Fréchet distance -----


def _random_spd(seed, dim):
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_of_diagonal_gaussians_is_exact():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    value = frechet_distance_from_moments(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(value, expected)


@pytest.mark.parametrize("seed", range(3))
def test_frechet_of_non_commuting_2x2_covariances_matches_the_trace_formula(seed):
    # For a 2x2 matrix M with positive eigenvalues, tr M^(1/2) = sqrt(tr M + 2 sqrt(det M)).
    s1, s2 = _random_spd(seed, 2), _random_spd(seed + 10, 2)
    m = s1 @ s2
    trace_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 2.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * trace_sqrt
    np.testing.assert_allclose(frechet_distance_from_moments(mu1, s1, mu2, s2), expected, rtol=1e-9)
    np.testing.assert_allclose(frechet_distance_from_moments(mu2, s2, mu1, s1), expected, rtol=1e-9)


def test_frechet_of_large_samples_approaches_the_moment_formula():
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(1, 3), _random_spd(2, 3)
    mu2 = np.array([1.0, 0.0, -1.0])
    a = rng.multivariate_normal(np.zeros(3), s1, size=100_000)
    b = rng.multivariate_normal(mu2, s2, size=100_000)
    expected = frechet_distance_from_moments(np.zeros(3), s1, mu2, s2)
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=0.02)


def test_frechet_is_stable_for_rank_deficient_covariances():
    feats = np.random.default_rng(0).normal(size=(5, 20))  # 5 samples in 20 dimensions: covariance rank 4
    # Null eigenvalues at rounding level e contribute sqrt(e) each; the total stays far below tr(cov) ~ 20.
    assert abs(frechet_distance(feats, feats)) < 1e-5
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(20.0, rel=1e-6)


# ----- KID -----


@jax.jit
def _kid_repeats(shift):
    """100 KID estimates between 500 draws of N(0, 1) and of N(shift, 1), each over one full-size subset."""

    def one(key):
        k_a, k_b, k_sub = jax.random.split(key, 3)
        a, b = jax.random.normal(k_a, (500, 1)), shift + jax.random.normal(k_b, (500, 1))
        return kernel_inception_distance(k_sub, a, b, num_subsets=1, subset_size=500)

    return jax.lax.map(one, jax.random.split(KEY, 100))


def test_kid_matches_the_cubic_kernel_moment_formula():
    # In 1-D, (ab + 1)^3 = 1 + 3ab + 3a^2b^2 + a^3b^3, so MMD^2 = 3 (dm1)^2 + 3 (dm2)^2 + (dm3)^2 in the raw
    # moments; N(0, 1) against N(mu, 1): dm1 = mu, dm2 = mu^2, dm3 = mu^3 + 3 mu.
    mu = 0.3
    expected = 3 * mu**2 + 3 * mu**4 + (mu**3 + 3 * mu) ** 2
    values = np.asarray(_kid_repeats(mu))
    assert abs(values.mean() - expected) < 4 * values.std() / math.sqrt(len(values))


def test_kid_is_unbiased_for_the_same_distribution():
    values = np.asarray(_kid_repeats(0.0))
    # The biased estimator would sit 2 (E(1 + a^2)^3 - E(1 + ab)^3) / n = 2 (28 - 4) / 500 = 0.096 above zero.
    standard_error = values.std() / math.sqrt(len(values))
    assert abs(values.mean()) < 3 * standard_error and standard_error < 0.02


def test_kid_subsets_of_the_full_size_do_not_depend_on_the_key():
    a, b = _normal(13, (60, 4)), _normal(14, (40, 4), mean=0.5)
    first = kernel_inception_distance(KEY, a[:40], b, num_subsets=3, subset_size=40)
    second = kernel_inception_distance(jax.random.PRNGKey(99), a[:40], b, num_subsets=3, subset_size=40)
    np.testing.assert_allclose(first, second, rtol=1e-5)


# ----- mode statistics -----


def test_mode_statistics_recover_the_mixture_parameters():
    mix = toy.mixture_2d()
    x = mix.sample(KEY, 40_000)
    stats = mode_statistics(x, mix.weights, mix.means, mix.covs)
    assert int(stats.counts.sum()) == 40_000
    np.testing.assert_allclose(stats.weights, mix.weights, atol=0.01)
    np.testing.assert_allclose(stats.means, mix.means, atol=0.02)
    np.testing.assert_allclose(stats.covs, mix.covs, atol=0.01)


def test_assign_modes_takes_the_most_responsible_component():
    mix = toy.mixture_2d()
    x = jnp.concatenate([mix.means, mix.sample(jax.random.PRNGKey(1), 2000)])
    modes = assign_modes(x, 10 * mix.weights, mix.means, mix.covs)
    np.testing.assert_array_equal(modes[:3], [0, 1, 2])
    np.testing.assert_array_equal(modes, jnp.argmax(jax.jit(mix.responsibilities)(x), axis=1))


def test_an_empty_mode_has_zero_weight_and_nan_moments():
    weights, means, covs = jnp.ones(2), jnp.array([[0.0, 0.0], [100.0, 0.0]]), jnp.stack([jnp.eye(2)] * 2)
    stats = mode_statistics(_normal(15, (50, 2)), weights, means, covs)
    np.testing.assert_array_equal(stats.counts, [50, 0])
    np.testing.assert_array_equal(stats.weights, [1.0, 0.0])
    assert np.isnan(stats.means[1]).all() and np.isfinite(stats.means[0]).all()
    assert np.isnan(stats.covs[1]).all() and np.isfinite(stats.covs[0]).all()


# ----- digits classifier -----


@pytest.fixture(
    scope="module",
    params=[pytest.param((8, False), marks=pytest.mark.slow), (16, True)],
    ids=["8x8-unit", "16x16-centered"],
)
def digits_and_classifier(request):
    size, centered = request.param
    dataset = build_dataset(DataConfig(dataset="digits", image_size=size, centered=centered))
    return dataset, train_digits_classifier(dataset)


def test_digits_classifier_is_accurate_on_held_out_digits(digits_and_classifier):
    dataset, classifier = digits_and_classifier
    assert classifier_accuracy(classifier, dataset.scale(dataset.test), dataset.test_labels) >= 0.95


def test_digits_classifier_training_is_reproducible():
    dataset = build_dataset(DataConfig(dataset="digits"))
    a, b = (train_digits_classifier(dataset, num_steps=20) for _ in range(2))
    for leaf_a, leaf_b in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    c = train_digits_classifier(dataset, num_steps=20, seed=1)
    assert not np.array_equal(jax.tree.leaves(a.params)[0], jax.tree.leaves(c.params)[0])


def test_sample_quality_separates_real_digits_from_a_collapsed_or_scrambled_set(digits_and_classifier):
    dataset, classifier = digits_and_classifier
    test, train = dataset.scale(dataset.test), dataset.scale(dataset.train)
    real = digits_sample_quality(classifier, test, train)
    collapsed = digits_sample_quality(classifier, test[dataset.test_labels == 3], train)
    permutation = np.random.default_rng(0).permutation(np.prod(dataset.shape[:2]))
    scrambled_images = test.reshape(len(test), -1, 1)[:, permutation].reshape(test.shape)
    scrambled = digits_sample_quality(classifier, scrambled_images, train)
    assert real.confidence > 0.9 and real.class_entropy > math.log(10) - 0.05
    assert collapsed.class_entropy < 0.3 and collapsed.frechet > 5 * real.frechet
    assert scrambled.frechet > 5 * real.frechet and scrambled.confidence < real.confidence


def test_probability_summaries_on_given_probabilities():
    probs = jnp.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.5, 0.0, 0.5 - 1e-6]])
    assert mean_max_probability(probs) == pytest.approx((0.9 + 0.8 + 0.6 + 0.5) / 4)
    assert class_histogram_entropy(probs) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert class_histogram_entropy(jnp.eye(3)) == pytest.approx(math.log(3))


def test_classifier_rejects_other_shapes_and_unlabelled_data(digits_and_classifier):
    dataset, classifier = digits_and_classifier
    with pytest.raises(ValueError, match="images shaped"):
        classifier(jnp.zeros((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="labelled images"):
        train_digits_classifier(dataclasses.replace(dataset, train_labels=None))
