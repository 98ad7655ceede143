"""Tests for scoresde/models/parametrization.py: noise labels, output scaling, EDM, scale_by_sigma."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import toy
from scoresde.models import ScoreMLP
from scoresde.models.parametrization import EDM, Epsilon, Score, build_parametrization, network_fn
from scoresde.sde import SubVPSDE, VESDE, VPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE()]
X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float32)
T = jnp.linspace(0.05, 1.0, 6)


def _label_network(x, label):
    """Returns its noise label in every coordinate, so the score reveals the label it was given."""
    return jnp.broadcast_to(label[:, None], x.shape)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_epsilon_labels_999t_and_divides_by_minus_sigma(sde):
    score = Epsilon().score_fn(sde, _label_network)(X, T)
    np.testing.assert_allclose(score, -(999.0 * T / sde.sigma(T))[:, None] * jnp.ones_like(X), rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_score_is_the_output_conditioned_on_sigma(sde):
    score = Score().score_fn(sde, _label_network)(X, T)
    np.testing.assert_allclose(score, sde.sigma(T)[:, None] * jnp.ones_like(X), rtol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_edm_with_a_zero_network_is_the_exact_score_of_data_with_std_sigma_data(sde):
    # c_skip alone is the optimal denoiser for x_0 ~ N(0, sigma_data^2 I) (Karras et al. 2022, App. B.6).
    sigma_data = 0.7
    data = toy.GaussianMixture.create([1.0], [[0.0, 0.0]], [sigma_data**2 * np.eye(2)])
    score = EDM(sigma_data).score_fn(sde, lambda x, label: jnp.zeros_like(x))(X, T)
    np.testing.assert_allclose(score, data.score_fn(sde)(X, T), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_edm_labels_the_noise_level_sigma_over_alpha(sde):
    labels = []
    EDM().score_fn(sde, lambda x, label: labels.append(label) or jnp.zeros_like(x))(X, T)
    np.testing.assert_allclose(labels[0], sde.sigma(T) / sde.alpha(T), rtol=1e-5)


def _mlp_variables(model):
    shapes = jax.eval_shape(model.init, jax.random.key(0), X, T)
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


def test_scale_by_sigma_divides_the_score_by_sigma_t():
    # The reference's VE models divide by the sigma they are conditioned on; under "score" that is sigma(t).
    sde, options = VESDE(), dict(width=16, depth=1, embedding_type="fourier")
    plain, scaled = ScoreMLP(**options), ScoreMLP(**options, scale_by_sigma=True)
    variables = _mlp_variables(plain)
    score_plain = Score().score_fn(sde, network_fn(plain, variables))(X, T)
    score_scaled = Score().score_fn(sde, network_fn(scaled, variables))(X, T)
    np.testing.assert_allclose(score_scaled, score_plain / sde.sigma(T)[:, None], rtol=1e-5)


def test_network_fn_centres_uncentred_input_as_the_reference_does():
    model = ScoreMLP(width=16, depth=1)
    variables = _mlp_variables(model)
    centred = network_fn(model, variables, center_input=True)(X, T)
    np.testing.assert_allclose(centred, model.apply(variables, 2.0 * X - 1.0, T), rtol=1e-6)


def test_build_parametrization_lists_valid_names():
    assert isinstance(build_parametrization("epsilon"), Epsilon)
    with pytest.raises(ValueError, match=r"valid names: \['edm', 'epsilon', 'score'\]"):
        build_parametrization("eps")
