"""The 2-D toys' support, modes, density and entropy against closed forms and against their own samples.

Closed forms: the checkerboard's cells and log 16; eight well-separated Gaussians (the mixture written out
with scipy, entropy log 8 + log(2 pi e sigma^2)); the rings' density through the Bessel function,
int N(x; r e(u), sigma^2 I) du / 2 pi = exp(-(|x| - r)^2 / 2 sigma^2) i0e(|x| r / sigma^2) / (2 pi sigma^2);
the Rayleigh law of a 2-D Gaussian's distance to its centre, which bounds every noisy toy's in-support share
from below. The other entropies are checked against the Monte Carlo mean of -log p over exact draws.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from scoresde import toy2d

N = 4000
CURVES = ["rings", "two_moons", "swiss_roll"]
RAYLEIGH = 1.0 - math.exp(-toy2d.SUPPORT_SIGMAS**2 / 2)  # P(|z| <= k) for z ~ N(0, I_2)


@pytest.fixture(scope="module")
def draws():
    return {name: np.asarray(toy.sample(jax.random.PRNGKey(1), N)) for name, toy in toy2d.TOYS.items()}


def _binomial_se(p: float, n: int = N) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_samples_are_deterministic_float32_points(name, draws):
    x = toy2d.sample_toy(name, jax.random.PRNGKey(1), N)
    assert x.shape == (N, 2) and x.dtype == jnp.float32 and bool(jnp.isfinite(x).all())
    np.testing.assert_array_equal(x, draws[name])
    assert not np.array_equal(x, toy2d.sample_toy(name, jax.random.PRNGKey(2), N))


def test_unknown_toy_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown toy dataset 'spiral'; valid names: \['checkerboard'"):
        toy2d.sample_toy("spiral", jax.random.PRNGKey(0), 10)


def test_checkerboard_draws_fill_its_sixteen_cells_evenly(draws):
    board = toy2d.TOYS["checkerboard"]
    modes = board.mode_of(draws["checkerboard"])
    assert np.all(modes >= 0)
    counts = np.bincount(modes, minlength=16)
    assert len(counts) == 16
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    assert board.entropy() == (math.log(16), 0.0)
    np.testing.assert_array_equal(board.log_prob(draws["checkerboard"]), -math.log(16))


def test_uniform_noise_over_the_checkerboard_rectangle_is_half_in_its_cells():
    u = np.random.default_rng(0).uniform([-2.0, -4.0], [2.0, 4.0], size=(N, 2))
    board = toy2d.TOYS["checkerboard"]
    inside = board.mode_of(u) >= 0
    assert abs(inside.mean() - 0.5) < 4 * _binomial_se(0.5)
    assert np.all(board.log_prob(u)[~inside] == -np.inf)
    # A cell's corner belongs to it, its opposite edges to the neighbours: [i, i + 1) x [j, j + 1).
    corners = np.array([[-2.0, -4.0], [-1.0, -4.0], [-2.0, -3.0], [-1.0, -3.0]])
    assert list(board.mode_of(corners)) == [0, -1, -1, 4]


def test_eight_gaussians_are_the_mixture_written_out(draws):
    toy = toy2d.TOYS["eight_gaussians"]
    angles = 2 * np.pi * np.arange(8) / 8
    centres = 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = draws["eight_gaussians"]
    density = np.mean([scipy.stats.multivariate_normal(c, 0.01 * np.eye(2)).pdf(x) for c in centres], axis=0)
    np.testing.assert_allclose(toy.log_prob(x), np.log(density), rtol=1e-10, atol=1e-12)
    # Modes 15 sigma apart: the entropy is one Gaussian's plus log 8.
    assert toy.entropy()[0] == pytest.approx(math.log(8) + 1 + math.log(2 * math.pi * 0.01), abs=1e-9)
    modes = toy.mode_of(x)
    nearest = np.argmin(np.linalg.norm(x[:, None] - centres, axis=-1), axis=1)
    np.testing.assert_array_equal(modes[modes >= 0], nearest[modes >= 0])
    assert abs(np.mean(modes >= 0) - RAYLEIGH) < 4 * _binomial_se(RAYLEIGH)


def test_rings_density_is_the_bessel_closed_form(draws):
    toy = toy2d.TOYS["rings"]
    x = np.concatenate([draws["rings"][:500], np.random.default_rng(0).uniform(-4, 4, (500, 2))])
    rho, sigma = np.linalg.norm(x, axis=1), toy.sigma
    rings = [np.exp(-(rho - r) ** 2 / (2 * sigma**2)) * scipy.special.i0e(rho * r / sigma**2)
             for r in 0.75 * np.arange(1, 5)]
    expected = np.log(np.mean(rings, axis=0) / (2 * np.pi * sigma**2))
    finite = np.isfinite(expected)
    assert finite[:500].all()
    np.testing.assert_allclose(toy.log_prob(x)[finite], expected[finite], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CURVES)
def test_curve_draws_lie_near_their_curve_at_least_as_often_as_a_gaussian_near_its_centre(name, draws):
    toy = toy2d.TOYS[name]
    modes = toy.mode_of(draws[name])
    assert RAYLEIGH - 4 * _binomial_se(RAYLEIGH) < np.mean(modes >= 0) <= 1.0
    counts = np.bincount(modes[modes >= 0], minlength=toy.num_modes)
    assert len(counts) == toy.num_modes
    assert toy.num_modes == 1 or scipy.stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("name", CURVES)
def test_entropy_is_the_mean_negative_log_density_of_exact_draws(name, draws):
    toy = toy2d.TOYS[name]
    entropy, error = toy.entropy()
    assert error < 1e-3
    nll = -toy.log_prob(draws[name])
    assert abs(nll.mean() - entropy) < 4 * nll.std() / math.sqrt(N)


def test_a_thin_ring_has_the_entropy_of_its_length_times_a_gaussian_profile():
    """For sigma << r, a noisy circle is uniform along 2 pi r and N(0, sigma^2) across: H = log 2 pi r +
    log(2 pi e sigma^2) / 2, to O(sigma^2 / r^2)."""
    toy = toy2d.NoisyCurves((toy2d.TOYS["rings"].curves[-1],), sigma=0.04)
    expected = math.log(2 * math.pi * 3.0) + 0.5 * math.log(2 * math.pi * math.e * 0.04**2)
    assert toy.entropy()[0] == pytest.approx(expected, abs=1e-4)
