"""Statistical checks shared by the sampler tests: sampler output against exact draws of a GaussianMixture."""

from __future__ import annotations

import functools

import jax
import numpy as np

from scoresde import metrics, toy
from scoresde.bench import accuracy
from scoresde.toy import GaussianMixture

# Every comparison allows Z standard errors. The sampler and the exact draws are independent sample sets of
# the same size n, so each standard error below carries both sets' sampling noise:
#   mode weight w:        sqrt(2 w (1 - w) / n)
#   mean, coordinate i:   sqrt(S_ii (1/n_a + 1/n_b))                   (n_a, n_b: samples in the mode)
#   covariance, (i, j):   sqrt((S_ii S_jj + S_ij^2) (1/n_a + 1/n_b))    (variance of a Gaussian sample cov.)
# with S the mode's true covariance. Both sets go through the same mode assignment, so its truncation bias
# cancels. Z = 5 keeps the chance of a false alarm below 1e-6 per comparison.
Z = 5.0


def mode_stats(mix: GaussianMixture, x) -> metrics.ModeStatistics:
    return metrics.mode_statistics(x, mix.weights, mix.means, mix.covs)


def assert_matches_mixture(mix: GaussianMixture, x, exact) -> None:
    """Asserts that samples x: [n, ...] and exact mixture draws: [n, ...] agree in per-mode statistics."""
    x, exact = np.asarray(x, np.float64), np.asarray(exact, np.float64)
    assert x.shape == exact.shape and np.all(np.isfinite(x)), "samples are not finite or have the wrong shape"
    n = x.shape[0]
    a, b = mode_stats(mix, x), mode_stats(mix, exact)
    w, cov = np.asarray(mix.weights), np.asarray(mix.covs, np.float64)
    na, nb = np.asarray(a.counts), np.asarray(b.counts)
    _within("mode weights", a.weights, b.weights, np.sqrt(2 * w * (1 - w) / n))
    inv_n = 1.0 / na + 1.0 / nb
    var = np.diagonal(cov, axis1=1, axis2=2)
    _within("mode means", a.means, b.means, np.sqrt(var * inv_n[:, None]))
    cov_se = np.sqrt((var[:, :, None] * var[:, None, :] + cov**2) * inv_n[:, None, None])
    _within("mode covariances", a.covs, b.covs, cov_se)


def assert_matches_gaussian(x, mean, cov) -> None:
    """Asserts that the mean and covariance of samples x: [n, D] are those of N(mean, cov) within Z standard
    errors (one sample set against the exact moments)."""
    x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
    assert np.all(np.isfinite(x)), "samples are not finite"
    n, var = x.shape[0], np.diagonal(cov)
    _within("mean", x.mean(0), mean, np.sqrt(var / n))
    _within("covariance", np.cov(x.T), cov, np.sqrt((var[:, None] * var[None, :] + cov**2) / n))


def _within(what: str, got, want, standard_error) -> None:
    got, want = np.asarray(got), np.asarray(want)
    excess = np.abs(got - want) / (Z * standard_error)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 1.0, (
        f"{what}: |{got[worst]:.5f} - {want[worst]:.5f}| exceeds {Z} standard errors "
        f"({Z * standard_error[worst]:.5f}) at index {worst}"
    )


def exact_draws(mix: GaussianMixture, n: int, seed: int = 12345) -> jax.Array:
    return mix.sample(jax.random.PRNGKey(seed), n)


@functools.cache
def mixture_2d_endpoint(sde, sampler):
    """jit((key, x_T) -> (x_eps, nfe)) with the exact mixture_2d score and no final denoising step, compiled
    once per SDE and sampler."""
    return accuracy.endpoint_fn(sde, toy.mixture_2d().score_fn(sde), sampler)


def count_calls(score_fn):
    """Wraps score_fn so every evaluation, also inside jit and scan, increments a host-side counter."""
    calls = [0]

    def counted(x, t):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return score_fn(x, t)

    return counted, calls
