"""Probability-flow likelihood against the mixture's closed form; encode/decode; bits/dim; bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import count_calls
from scoresde import likelihood, toy

import marks

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
MIX_2D = toy.mixture_2d()
# The default tolerances (1e-5) leave up to ~4e-3 nats/dim on the sharpest examples and ~3e-4 relative error
# in a decode(encode(x)) round trip (float32); 1e-6 brings both well inside the bounds tested here (README).
TOL = 1e-6


@functools.cache
def data(sde_name, n=64):
    """n draws from p_eps itself, so the exact log density at eps is the target."""
    sde = SDES[sde_name]
    return MIX_2D.marginal(sde, sde.default_eps).sample(jax.random.PRNGKey(0), n)


@functools.cache
def likelihood_fn(sde_name, divergence, num_probes=1):
    sde = SDES[sde_name]
    return jax.jit(lambda key, x: sd.log_likelihood(key, sde, MIX_2D.score_fn(sde), x, divergence=divergence,
                                                    num_probes=num_probes, rtol=TOL, atol=TOL))


@functools.cache
def encoded(sde_name):
    sde = SDES[sde_name]
    encode = jax.jit(lambda x: likelihood.encode(sde, MIX_2D.score_fn(sde), x, rtol=TOL, atol=TOL))
    return encode(data(sde_name))


def closed_form(sde_name, x, t):
    return MIX_2D.log_prob_fn(SDES[sde_name])(x, jnp.full(x.shape[:1], t))


def prior_mismatch(sde_name):
    """log p_T(z_T) - prior_logp(z_T) at the encoded z_T: what the ODE model's prior gets wrong at T."""
    sde, z = SDES[sde_name], encoded(sde_name)
    return closed_form(sde_name, z, sde.T) - sde.prior_logp(z)


@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_exact_divergence_matches_closed_form(sde_name):
    sde, x = SDES[sde_name], data(sde_name)
    logp, nfe = likelihood_fn(sde_name, "exact")(jax.random.PRNGKey(1), x)
    want = closed_form(sde_name, x, sde.default_eps)
    per_dim = np.abs(np.asarray(logp + prior_mismatch(sde_name) - want)) / MIX_2D.dim
    assert per_dim.max() <= 1e-3, f"max error {per_dim.max():.2e} nats/dim"
    assert int(nfe) > 0


@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_decode_inverts_encode(sde_name):
    sde, x = SDES[sde_name], data(sde_name)
    back = likelihood.decode(sde, MIX_2D.score_fn(sde), encoded(sde_name), rtol=TOL, atol=TOL)
    assert float(jnp.linalg.norm(back - x) / jnp.linalg.norm(x)) <= 1e-4


@functools.cache
def hutchinson_fn(divergence, num_probes):
    sde = SDES["vp"]
    return jax.jit(lambda key, x: sd.log_likelihood(key, sde, MIX_2D.score_fn(sde), x, divergence=divergence,
                                                    num_probes=num_probes))


def hutchinson_deviations(divergence, num_probes, repeats=64):
    """Estimate minus exact-divergence value: [repeats, 8], fresh probes for every row of one tiled batch."""
    x = data("vp", 8)
    exact, _ = likelihood_fn("vp", "exact")(jax.random.PRNGKey(0), x)
    est, _ = hutchinson_fn(divergence, num_probes)(jax.random.PRNGKey(num_probes), jnp.tile(x, (repeats, 1)))
    return np.asarray(est).reshape(repeats, -1) - np.asarray(exact)


@pytest.mark.parametrize(
    "divergence, num_probes",
    marks.fast_first([("rademacher", 1), ("rademacher", 4), ("gaussian", 1)]),
)
def test_hutchinson_estimate_is_unbiased(divergence, num_probes):
    """Per example, the mean of 64 independent estimates is the exact-divergence value within 5 std. errors.

    The 2-D modes are rotated, so the Jacobian has off-diagonal terms and the estimator real variance (0.1 to
    5 nats here); the solve's own error at the default tolerance (~2e-3 nats) is well below one standard
    error.
    """
    deviations = hutchinson_deviations(divergence, num_probes)
    standard_error = deviations.std(axis=0, ddof=1) / math.sqrt(deviations.shape[0])
    assert standard_error.min() > 0, "estimates do not vary: probes are not fresh per example"
    z = np.abs(deviations.mean(axis=0)) / standard_error
    assert z.max() <= 5.0, f"bias of {z.max():.1f} standard errors"


def test_more_probes_reduce_the_variance():
    """Averaging K independent probes divides the estimator's variance by K (here K = 4)."""
    variance = lambda k: hutchinson_deviations("rademacher", k).var(axis=0).sum()
    ratio = variance(1) / variance(4)
    assert 2.0 <= ratio <= 8.0, ratio


def test_nfe_counts_vector_field_evaluations():
    sde = SDES["subvp"]
    score_fn, calls = count_calls(MIX_2D.score_fn(sde))
    fn = jax.jit(lambda k, x: sd.log_likelihood(k, sde, score_fn, x))
    _, nfe = fn(jax.random.PRNGKey(0), data("subvp", 8))
    jax.effects_barrier()
    assert int(nfe) == calls[0]


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_bits_per_dim_of_the_uniform_density_is_eight(data_range):
    """The uniform density on the data range gives each 8-bit value probability 1/256: 8 bits per dim."""
    lo, hi = data_range
    event_shape = (4, 4, 3)
    logp = jnp.full((2,), -math.prod(event_shape) * math.log(hi - lo))
    np.testing.assert_allclose(sd.bits_per_dim(logp, event_shape, data_range=data_range), 8.0, rtol=1e-6)
    four_bits = sd.bits_per_dim(logp, event_shape, data_range=data_range, num_bins=16)
    np.testing.assert_allclose(four_bits, 4.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(divergence="hutchinson"), r"divergence must be one of \['rademacher', 'gaussian', 'exact'\]"),
        (dict(num_probes=0), "num_probes must be an integer >= 1; got num_probes=0"),
        (dict(rtol=0.0), "rtol must be > 0; got rtol=0.0"),
        (dict(atol=-1e-5), "atol must be > 0; got atol=-1e-05"),
        (dict(eps=0.0), "eps must lie in"),
        (dict(max_steps=0), "log_likelihood: max_steps must be an integer >= 1; got max_steps=0"),
    ],
)
def test_bad_likelihood_arguments_raise(kwargs, match):
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=match):
        sd.log_likelihood(jax.random.PRNGKey(0), sde, MIX_2D.score_fn(sde), data("vp", 4), **kwargs)


def test_nan_data_raise():
    sde = SDES["vp"]
    x = data("vp", 4).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="x must be finite; got 1 NaN or infinite entries"):
        sd.log_likelihood(jax.random.PRNGKey(0), sde, MIX_2D.score_fn(sde), x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data_range=(1.0, -1.0)), r"data_range must be \(lo, hi\), lo < hi"),
        (dict(num_bins=1), "num_bins must be an integer >= 2; got num_bins=1"),
    ],
)
def test_bad_bits_per_dim_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.bits_per_dim(jnp.zeros(2), (2,), **kwargs)


@pytest.mark.parametrize("solve", [
    lambda sde, score_fn, x: sd.log_likelihood(jax.random.PRNGKey(0), sde, score_fn, x),
    lambda sde, score_fn, x: likelihood.encode(sde, score_fn, x),
    lambda sde, score_fn, x: likelihood.decode(sde, score_fn, x),
], ids=["log_likelihood", "encode", "decode"])
def test_a_score_not_shaped_like_x_is_refused(solve):
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=r"score_fn must return an array shaped like x \(4, 2\); "
                                         r"got \(4, 1\)"):
        solve(sde, lambda x, t: MIX_2D.score_fn(sde)(x, t)[:, :1], data("vp", 4))


def test_likelihood_past_max_steps_names_its_own_setting():
    sde = SDES["vp"]
    with pytest.raises(RuntimeError, match="log_likelihood: the adaptive solve took max_steps=2 "
                       "steps without reaching its end time; pass a larger max_steps to log_likelihood"):
        jax.block_until_ready(sd.log_likelihood(jax.random.PRNGKey(0), sde, MIX_2D.score_fn(sde),
                                                data("vp", 4), divergence="exact", max_steps=2))


def test_bad_encode_tolerance_raises():
    sde = SDES["ve"]
    with pytest.raises(ValueError, match="encode: rtol must be > 0"):
        likelihood.encode(sde, MIX_2D.score_fn(sde), data("ve", 4), rtol=0.0)
