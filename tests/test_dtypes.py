"""Every sampler and the likelihood keep the dtype of x; 16-bit states are integrated in float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from scoresde import samplers, toy
from scoresde.samplers import _SAMPLERS

SDE = sd.VPSDE()
SCORE_FN = toy.mixture_2d().score_fn(SDE)
X = SDE.prior_sampling(jax.random.PRNGKey(0), (64, 2))
# Few steps keep compilation short; stochastic samplers draw the same noise in both dtypes (it is drawn in the
# float32 they compute in), so their outputs are comparable too.
NFE = 12


def build(name):
    sampler = samplers.build_sampler(name)
    return sampler.with_nfe(NFE) if isinstance(sampler, samplers.FixedStepSampler) else sampler


@functools.partial(jax.jit, static_argnums=0)
def draw(sampler, x):
    return sd.sample(jax.random.PRNGKey(1), SDE, SCORE_FN, x.shape, sampler, x_init=x)


@pytest.mark.parametrize("name", sorted(_SAMPLERS))
def test_every_sampler_keeps_the_dtype_of_x(name):
    sampler = build(name)
    for dtype in (jnp.bfloat16, jnp.float32):
        assert jax.eval_shape(draw, sampler, X.astype(dtype))[0].dtype == dtype
    with jax.enable_x64(True):
        assert jax.eval_shape(draw, sampler, X.astype(jnp.float64))[0].dtype == jnp.float64
    if not isinstance(sampler, samplers.FixedStepSampler):
        return  # the adaptive solve is diffrax's, in the float32 the wrapper hands it; its dtype is checked
    low, _ = draw(sampler, X.astype(jnp.bfloat16))
    full, _ = draw(sampler, X)
    # bfloat16 keeps 8 bits: x rounded to 2^-9 relative before each score call moves a sample about as much.
    rms = float(np.sqrt(np.mean((np.asarray(low, np.float32) - np.asarray(full)) ** 2)))
    assert rms < 0.02, rms


def test_log_likelihood_keeps_the_dtype_of_x():
    x = toy.mixture_2d().sample(jax.random.PRNGKey(2), 8).astype(jnp.bfloat16)
    likelihood = jax.jit(lambda x: sd.log_likelihood(jax.random.PRNGKey(3), SDE, SCORE_FN, x,
                                                     divergence="exact", rtol=1e-3, atol=1e-3)[0])
    low, full = likelihood(x), likelihood(x.astype(jnp.float32))  # the same points
    assert low.dtype == jnp.bfloat16 and full.dtype == jnp.float32
    # bfloat16 holds log p to 2^-8 relative; the score sees the ODE state rounded to bfloat16 at every step.
    np.testing.assert_allclose(np.asarray(low, np.float32), full, rtol=0.02, atol=0.05)
