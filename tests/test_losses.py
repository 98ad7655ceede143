"""Tests for scoresde/losses.py against the exact score of a Gaussian mixture.

The per-example DSM loss is exactly quadratic in a perturbation delta of the score,
l(delta) = l(0) + 2 b delta + c delta^2, when the same key (same t and z) is used. The true score minimises
the expected loss, so the estimated slope b must vanish within its Monte Carlo standard error for every loss,
SDE and direction, while the loss grows for a finite perturbation.

Monte Carlo batches are evaluated in chunks of CHUNK examples under `lax.map`: jaxlib 0.10.2's CPU YNNPACK
fusion miscomputes f(a) * sum(g(b) * z) when f and g are the same transcendental op on vectors of >= 4096
entries (sub-VP's g^2 and sigma both use expm1), which XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
avoids.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import losses, toy
from scoresde.sde import SubVPSDE, VESDE, VPSDE, batch_broadcast

import marks

SDES = {"vpsde": VPSDE(), "subvpsde": SubVPSDE(), "vesde": VESDE()}
LOSSES = ["dsm", "dsm_likelihood", "dsm_likelihood_importance", "ddpm", "smld"]
MIX = toy.mixture_2d()
CHUNK = 2_000
N = 10 * CHUNK
STEP = 0.5
Z = 5.0


def _directions(sde, score, x, t):
    """Perturbation fields v(x, t), each scaled so that sigma v is O(1): [3, B, 2]."""
    sigma = batch_broadcast(sde.sigma(t), x)
    var = batch_broadcast(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, x)
    shift = jnp.broadcast_to(jnp.array([0.6, -0.8]), x.shape) / sigma
    rotation = jnp.stack([-x[:, 1], x[:, 0]], axis=1) / var
    return jnp.stack([shift, score, rotation])


def _quadratic_terms(key, sde_name, loss_name, time_shift=1.0):
    """Per-example slope b and curvature c of l(delta) along each direction, and l at delta = 0, +-STEP.

    time_shift != 1 replaces the exact score at t by the one at time_shift * t (a wrong score).
    """
    sde, loss = SDES[sde_name], losses.build_loss(loss_name, num_scales=100)
    exact = MIX.score_fn(sde)
    return _in_chunks(lambda k: _chunk_terms(k, sde, loss, exact, time_shift), key, N)


def _in_chunks(fn, key, n):
    """fn(key) of CHUNK examples, for n // CHUNK keys in sequence, concatenated along the last axis."""
    out = jax.lax.map(fn, jax.random.split(key, n // CHUNK))
    return jax.tree_util.tree_map(lambda v: jnp.moveaxis(v, 0, -2).reshape(v.shape[1:-1] + (-1,)), out)


def _chunk_terms(key, sde, loss, exact, time_shift):
    x0 = MIX.sample(jax.random.fold_in(key, 1), CHUNK)

    def loss_at(delta, direction):
        def score_fn(x, t):
            score = exact(x, time_shift * t)
            return score + delta * jnp.tensordot(direction, _directions(sde, score, x, t), axes=1)

        return loss(key, sde, score_fn, x0)

    deltas = jnp.array([-STEP, 0.0, STEP])
    per_direction = jax.vmap(lambda d: jax.vmap(lambda delta: loss_at(delta, d))(deltas))
    ls = per_direction(jnp.eye(3))  # [direction, delta, N]
    b = (ls[:, 2] - ls[:, 0]) / (4 * STEP)
    c = (ls[:, 2] + ls[:, 0] - 2 * ls[:, 1]) / (2 * STEP**2)
    return b, c, ls


@functools.lru_cache(maxsize=None)
def _quadratic_terms_of_every_loss(sde_name):
    """{loss name: (b, c, mean losses)}, all losses of one SDE compiled together (compilation dominates)."""
    compute = jax.jit(lambda key: {name: _quadratic_terms(key, sde_name, name) for name in LOSSES})
    return compute(jax.random.PRNGKey(0))


def _slope_z_scores(b):
    b = np.asarray(b, np.float64)
    return np.abs(b.mean(axis=-1)) / (b.std(axis=-1) / np.sqrt(b.shape[-1]))


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_exact_score_minimises_the_loss(sde_name, loss_name):
    b, c, per_example = _quadratic_terms_of_every_loss(sde_name)[loss_name]
    means = np.asarray(per_example).mean(axis=-1)
    assert np.all(np.isfinite(np.asarray(means)))
    z_scores = _slope_z_scores(b)
    assert np.all(z_scores < Z), f"slope of the loss at the exact score is {z_scores} standard errors from 0"
    assert np.all(np.asarray(c).mean(axis=-1) > 0)
    loss_minus, loss_exact, loss_plus = np.asarray(means).T
    assert np.all(loss_exact < loss_minus) and np.all(loss_exact < loss_plus)


def test_a_wrong_score_is_detected():
    # The control for the test above: the score of another time is not the minimiser.
    wrong = jax.jit(lambda key: _quadratic_terms(key, "vpsde", "dsm", time_shift=0.8))
    b, _, _ = wrong(jax.random.PRNGKey(0))
    assert _slope_z_scores(b).max() > 2 * Z


# For VE, g^2 / sigma^2 is constant: importance sampling is uniform sampling and cannot reduce the variance.
VARIANCE_RATIO_BOUND = {"vpsde": 0.2, "subvpsde": 0.2, "vesde": 1.1}


@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_importance_sampling_keeps_the_likelihood_weighted_expectation(sde_name):
    # eps = 1e-3 keeps the uniform-t estimator's variance (weight ~ 1/t for VP) finite enough to compare.
    sde, n = SDES[sde_name], 50 * CHUNK

    def per_example(key):
        x0 = MIX.sample(jax.random.fold_in(key, 1), CHUNK)
        return jnp.stack([losses.build_loss(name, eps=1e-3)(key, sde, MIX.score_fn(sde), x0)
                          for name in ("dsm_likelihood", "dsm_likelihood_importance")])

    uniform, importance = np.asarray(jax.jit(lambda k: _in_chunks(per_example, k, n))(jax.random.PRNGKey(2)))
    standard_error = np.sqrt((uniform.var() + importance.var()) / n)
    assert abs(uniform.mean() - importance.mean()) < Z * standard_error
    assert importance.var() < VARIANCE_RATIO_BOUND[sde_name] * uniform.var()


def test_reduce_sum_is_half_the_dimension_times_the_mean():
    sde, x0 = SDES["vpsde"], jax.random.normal(jax.random.PRNGKey(3), (64, 3, 5))

    @jax.jit
    def both(key):
        return [losses.build_loss("dsm", reduce_mean=r)(key, sde, lambda x, t: -jnp.sin(x), x0)
                for r in (True, False)]

    mean, total = both(jax.random.PRNGKey(4))
    np.testing.assert_allclose(total, 0.5 * 15 * mean, rtol=1e-5)


@pytest.mark.parametrize("name,first,last", [("ddpm", 0.01, 1.0), ("smld", 1e-5, 1.0)])
def test_discrete_losses_draw_times_on_their_grid(name, first, last):
    num_scales, sde = 100, SDES["vesde"]
    sample_time = {"ddpm": losses.ddpm_levels, "smld": losses.smld_levels}[name]
    t = np.asarray(sample_time(jax.random.PRNGKey(5), sde, 20_000, 1e-5, num_scales))
    levels = np.linspace(first, last, num_scales)
    assert np.abs(t[:, None] - levels[None]).min(axis=1).max() < 1e-6
    assert len(np.unique(np.round(t, 6))) == num_scales


def test_smld_levels_span_the_ve_noise_scales():
    sde = SDES["vesde"]
    sigmas = sde.sigma(jnp.array([1e-5, 1.0]))
    np.testing.assert_allclose(sigmas, [sde.sigma_min, sde.sigma_max], rtol=1e-3)


def test_ddpm_loss_is_the_epsilon_mse_of_an_epsilon_network():
    sde, x0 = SDES["vpsde"], jax.random.normal(jax.random.PRNGKey(6), (256, 2))
    t = jax.random.uniform(jax.random.PRNGKey(7), (256,), minval=0.01)
    z = jax.random.normal(jax.random.PRNGKey(8), x0.shape)

    def network(x, label):  # any function of (x, t) will do
        return jnp.sin(x) * label[:, None] / 999.0

    def score_fn(x, t):  # the "epsilon" parametrization: score = -F / sigma
        return -network(x, 999.0 * t) / sde.sigma(t)[:, None]

    error = jax.jit(lambda t, z: losses.build_loss("ddpm").error(sde, score_fn, x0, t, z))(t, z)
    mean, std = sde.marginal_prob(x0, t)
    expected = jnp.mean((network(mean + std[:, None] * z, 999.0 * t) - z) ** 2, axis=-1)
    np.testing.assert_allclose(error, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="dsn"), "valid names: ['ddpm', 'dsm', 'dsm_likelihood', 'dsm_likelihood_importance', 'smld']"),
    (dict(name="dsm", eps=0.0), "eps must lie in"),
    (dict(name="ddpm", num_scales=0), "num_scales must be >= 1"),
])
def test_bad_loss_settings_are_named(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        losses.build_loss(name, **kwargs)
