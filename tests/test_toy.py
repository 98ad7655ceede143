"""The exact-score oracle against independent closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import scoresde as sd
from scoresde import toy

import marks

SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()]
IDS = ["vp", "subvp", "ve"]
PROBLEMS = ["mixture_2d", "mixture_image"]


def scipy_marginal_logpdf(mix, sde, x, t):
    """log p_t(x) written out with scipy: sum_k w_k N(x; alpha mu_k, alpha^2 S_k + sigma^2 I)."""
    alpha, sigma = float(sde.alpha(jnp.array([t]))[0]), float(sde.sigma(jnp.array([t]))[0])
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    covs, means = np.asarray(mix.covs, np.float64), np.asarray(mix.means, np.float64)
    w = np.asarray(mix.weights)
    dens = [
        wk * stats.multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * np.eye(len(m))).pdf(flat)
        for wk, m, c in zip(w, means, covs)
    ]
    return np.log(np.sum(dens, axis=0))


@pytest.mark.parametrize("problem", marks.fast_first(PROBLEMS))
@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_prob_matches_scipy(problem, sde):
    mix = toy.build_problem(problem)
    x = mix.sample(jax.random.PRNGKey(0), 64)
    for t in (0.0, 0.05, 0.6):
        got = mix.log_prob_fn(sde)(x * 1.1, jnp.full((64,), t))
        np.testing.assert_allclose(got, scipy_marginal_logpdf(mix, sde, x * 1.1, t), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("problem", marks.fast_first(PROBLEMS))
@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_score_is_gradient_of_log_prob(problem, sde):
    mix = toy.build_problem(problem)
    x = 1.2 * mix.sample(jax.random.PRNGKey(1), 32)
    t = jnp.linspace(0.01, 0.9, 32)
    autodiff = jax.grad(lambda x: mix.log_prob_fn(sde)(x, t).sum())(x)
    score = mix.score_fn(sde)(x, t)
    assert score.shape == x.shape
    np.testing.assert_allclose(score, autodiff, rtol=1e-3, atol=1e-3 * float(jnp.abs(autodiff).max()))


def test_log_prob_is_marginal_at_zero_for_vp():
    mix = toy.mixture_2d()
    x = mix.sample(jax.random.PRNGKey(2), 16)
    np.testing.assert_allclose(mix.log_prob(x), mix.log_prob_fn(sd.VPSDE())(x, jnp.zeros(16)), rtol=1e-6)


def test_sample_moments():
    mix = toy.mixture_2d()
    n = 200_000
    x = np.asarray(mix.sample(jax.random.PRNGKey(3), n), np.float64)
    w, m, c = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.covs))
    mean = w @ m
    cov = np.einsum("k,kij->ij", w, c + np.einsum("ki,kj->kij", m, m)) - np.outer(mean, mean)
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * np.sqrt(np.diag(cov).max() / n))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=5 * np.sqrt(2 / n) * np.diag(cov).max())


def test_marginal_mixture():
    mix, sde = toy.mixture_2d(), sd.VPSDE()
    x = mix.sample(jax.random.PRNGKey(4), 8)
    marg = mix.marginal(sde, 0.3)
    np.testing.assert_allclose(marg.log_prob(x), mix.log_prob_fn(sde)(x, jnp.full((8,), 0.3)), rtol=1e-5)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.5, -0.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), "positive"),
        (([1.0], [[0.0, 1.0]], [[[1.0]]]), "covs must be shaped"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.2, 1.0]]]), "symmetric"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
        (([1.0], [[0.0, np.nan]], [[[1.0, 0.0], [0.0, 1.0]]]), "finite"),
    ],
)
def test_bad_mixture_raises(args, match):
    with pytest.raises(ValueError, match=match):
        toy.GaussianMixture.create(*args)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="valid names"):
        toy.build_problem("mixture_3d")


def test_mixture_npz_round_trip(tmp_path):
    mix = toy.mixture_image()
    path = tmp_path / "mixture.npz"
    covs = np.asarray(mix.covs, np.float64)
    np.savez(
        path,
        weights=np.asarray(mix.weights),
        means=np.asarray(mix.means).reshape((2,) + mix.event_shape),
        covs=(covs + np.swapaxes(covs, 1, 2)) / 2,  # symmetric again after float32 round-off
    )
    loaded = toy.build_problem(str(path))
    assert loaded.event_shape == mix.event_shape
    x = mix.sample(jax.random.PRNGKey(0), 16)
    np.testing.assert_allclose(loaded.log_prob(x), mix.log_prob(x), rtol=1e-5)


def write_text(path, text):
    path.write_text(text)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: np.savez(p, weights=[1.0], means=[[0.0, 0.0]]), r"missing array\(s\) \['covs'\]"),
        (
            lambda p: np.savez(p, weights=[1.0], means=[[0.0, 0.0]], covs=np.eye(3)[None]),
            "covs must be shaped",
        ),
        (
            lambda p: np.savez(p, weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]]),
            "positive definite",
        ),
        (
            lambda p: np.savez(p, weights=np.array([{}], dtype=object), means=[[0.0]], covs=[[[1.0]]]),
            "Object arrays",
        ),
        (lambda p: write_text(p, "weights,means,covs"), "is not an .npz archive"),
        (lambda p: None, "does not exist"),
    ],
    ids=["missing-array", "wrong-shape", "not-positive-definite", "pickled", "not-npz", "absent"],
)
def test_malformed_mixture_npz_raises(tmp_path, write, match):
    path = tmp_path / "mixture.npz"
    write(path)
    with pytest.raises(ValueError, match=f"mixture file .*mixture.npz.*{match}"):
        toy.build_problem(str(path))
