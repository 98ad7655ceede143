"""Predictor-corrector sampling with the exact mixture score: distribution, determinism, NFE, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import assert_matches_mixture, count_calls, exact_draws
from scoresde import toy
from scoresde.samplers.pc import CORRECTORS, PREDICTORS

import marks

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
MIX_2D = toy.mixture_2d()
N = 4000
PREDICTOR_NAMES = [p for p in PREDICTORS if p != "none"]


def draw(mix, sde, sampler, n, seed=0):
    fn = jax.jit(lambda key: sd.sample(key, sde, mix.score_fn(sde), (n,) + mix.event_shape, sampler))
    return fn(jax.random.PRNGKey(seed))


@pytest.mark.parametrize(
    "sde_name, predictor, corrector", marks.fast_first(itertools.product(SDES, PREDICTOR_NAMES, CORRECTORS))
)
def test_every_predictor_corrector_sde_samples_the_mixture(sde_name, predictor, corrector):
    sampler = sd.samplers.PC(predictor=predictor, corrector=corrector, num_steps=500)
    x, nfe = draw(MIX_2D, SDES[sde_name], sampler, N)
    assert int(nfe) == 500 * (1 + (corrector != "none")) + 1
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, N))


@pytest.mark.slow
@pytest.mark.parametrize("sde_name, corrector", list(itertools.product(SDES, ["langevin", "ald"])))
def test_corrector_only_samples_the_mixture(sde_name, corrector):
    """Annealed MCMC alone (predictor "none").

    Without a predictor the chain must follow the moving marginal by Langevin steps alone, which are small
    (2 (snr sigma)^2 for ALD, tiny where sigma(t) is below the data scale, as for sub-VP near t=0): at the
    default 1000 steps and snr 0.16 it lags and freezes early. It needs snr 0.3, 2000 levels and 4 rounds.
    """
    sampler = sd.samplers.PC(
        predictor="none", corrector=corrector, num_steps=2000, n_corrector_steps=4, snr=0.3
    )
    x, nfe = draw(MIX_2D, SDES[sde_name], sampler, N)
    assert int(nfe) == 8001
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, N))


@pytest.mark.parametrize(
    "sde_name, predictor",
    marks.fast_first([("vp", "reverse_diffusion"), ("subvp", "ancestral"), ("ve", "euler_maruyama")]),
)
def test_image_shaped_mixture(sde_name, predictor):
    mix = toy.mixture_image()
    sampler = sd.samplers.PC(predictor=predictor, corrector="langevin", num_steps=300)
    x, _ = draw(mix, SDES[sde_name], sampler, N)
    assert x.shape == (N, 4, 4, 2)
    assert_matches_mixture(mix, x, exact_draws(mix, N))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sde_name, predictor, corrector", list(itertools.product(SDES, PREDICTOR_NAMES, ["ald", "none"]))
)
def test_image_shaped_mixture_all_combinations(sde_name, predictor, corrector):
    """600 steps: at 300 uniform steps the VP ancestral step still under-disperses the narrowest
    directions.
    """
    mix = toy.mixture_image()
    sampler = sd.samplers.PC(predictor=predictor, corrector=corrector, num_steps=600)
    x, _ = draw(mix, SDES[sde_name], sampler, N // 2)
    assert_matches_mixture(mix, x, exact_draws(mix, N // 2))


SMALL = sd.samplers.PC(num_steps=20)


def small_fn(**kwargs):
    sde = sd.VESDE()
    return jax.jit(lambda key, x_init=None: sd.sample(key, sde, MIX_2D.score_fn(sde), (64, 2), SMALL,
                                                      x_init=x_init, **kwargs))


def test_same_key_is_bitwise_reproducible():
    fn = small_fn()
    a, _ = fn(jax.random.PRNGKey(7))
    b, _ = fn(jax.random.PRNGKey(7))
    c, _ = fn(jax.random.PRNGKey(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_x_init_is_honoured():
    sde = sd.VPSDE()
    x_init = jax.random.normal(jax.random.PRNGKey(3), (64, 2))
    noop = sd.samplers.PC(predictor="none", corrector="none", num_steps=3)
    x, nfe = sd.sample(
        jax.random.PRNGKey(0), sde, MIX_2D.score_fn(sde), (64, 2), noop, x_init=x_init, denoise=False
    )
    np.testing.assert_array_equal(x, x_init)
    assert int(nfe) == 0
    fn = small_fn()
    a, _ = fn(jax.random.PRNGKey(0), x_init)
    b, _ = fn(jax.random.PRNGKey(0), x_init + 1.0)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("predictor, corrector, n_corr", [("ancestral", "langevin", 2), ("none", "ald", 1),
                                                          ("euler_maruyama", "none", 1)])
def test_nfe_counts_score_evaluations(predictor, corrector, n_corr):
    sde = sd.SubVPSDE()
    score_fn, calls = count_calls(MIX_2D.score_fn(sde))
    sampler = sd.samplers.PC(predictor=predictor, corrector=corrector, n_corrector_steps=n_corr, num_steps=7)
    _, nfe = jax.jit(lambda k: sd.sample(k, sde, score_fn, (8, 2), sampler))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert int(nfe) == calls[0]


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(predictor="heun"), "unknown predictor 'heun'"),
        (dict(corrector="hmc"), "unknown corrector 'hmc'"),
        (dict(num_steps=0), "num_steps must be an integer >= 1; got 0"),
        (dict(snr=0.0), "snr must be > 0; got snr=0.0"),
        (dict(n_corrector_steps=0), "n_corrector_steps"),
        (dict(schedule="cosine"), "unknown schedule 'cosine'"),
    ],
)
def test_bad_settings_raise_at_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        sd.samplers.PC(**settings)


def test_bad_sample_arguments_raise():
    sde = sd.VPSDE()
    score_fn = MIX_2D.score_fn(sde)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"eps=1.5"):
        sd.sample(key, sde, score_fn, (4, 2), SMALL, eps=1.5)
    with pytest.raises(ValueError, match=r"score_fn must return an array shaped like x \(4, 2\); got \(4,\)"):
        sd.sample(key, sde, lambda x, t: x[:, 0], (4, 2), SMALL)
    with pytest.raises(ValueError, match="x_init must have shape"):
        sd.sample(key, sde, score_fn, (4, 2), SMALL, x_init=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="Sampler"):
        sd.sample(key, sde, score_fn, (4, 2), "pc")
