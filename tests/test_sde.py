"""Forward SDEs: closed-form marginals against simulation and against the SDE's own coefficients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import scoresde as sd
from scoresde.sde import build_sde

import marks

SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()]
IDS = ["vp", "subvp", "ve"]


def simulate_forward(sde, key, x0, num_steps):
    """Euler-Maruyama of the forward SDE from t=0, started in the kernel at t=0:
    x(0) ~ N(alpha(0) x0, sigma(0)^2).
    """
    k0, key = jax.random.split(key)
    t0 = jnp.zeros(x0.shape[:1])
    mean0, std0 = sde.marginal_prob(x0, t0)
    x = mean0 + std0[:, None] * jax.random.normal(k0, x0.shape)
    dt = sde.T / num_steps

    def step(x, i):
        t = jnp.full(x0.shape[:1], i * dt)
        drift, g = sde.sde(x, t)
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape)
        x = x + drift * dt + g[:, None] * jnp.sqrt(dt) * noise
        return x, x

    _, path = lax.scan(step, x, jnp.arange(num_steps))
    return path  # path[i] is x at t = (i + 1) dt


@pytest.mark.parametrize("sde", marks.fast_first(SDES), ids=IDS)
def test_marginal_matches_monte_carlo(sde):
    n, num_steps = 20000, 2000
    x0 = jnp.tile(jnp.array([[1.5, -0.5]]), (n, 1))
    path = jax.jit(simulate_forward, static_argnums=(0, 3))(sde, jax.random.PRNGKey(0), x0, num_steps)
    for t in (0.1, 0.5, 1.0):
        x_t = np.asarray(path[round(t * num_steps) - 1], np.float64)
        mean, std = sde.marginal_prob(x0[:1], jnp.array([t]))
        mean, std = np.asarray(mean[0]), float(std[0])
        # Tolerance: 5 standard errors of the Monte Carlo mean (std/sqrt(n)) and variance (var sqrt(2/n)),
        # plus Euler-Maruyama's O(dt) bias, bounded by max_t |2 f(t)| dt relative (<= 1% here).
        bias = 20.0 * sde.T / num_steps
        np.testing.assert_allclose(x_t.mean(0), mean, atol=5 * std / np.sqrt(n) + bias * np.abs(mean).max())
        np.testing.assert_allclose(x_t.var(0), std**2, rtol=5 * np.sqrt(2 / n) + bias)


@pytest.mark.parametrize("sde", marks.fast_first(SDES), ids=IDS)
def test_variance_ode(sde):
    """For dx = f x dt + g dw: d sigma^2/dt = 2 f sigma^2 + g^2 and d log alpha/dt = f."""
    with jax.enable_x64(True):
        t = jnp.linspace(0.01, 1.0, 50, dtype=jnp.float64)
        dvar = jax.vmap(jax.grad(lambda s: sde.sigma(s) ** 2))(t)
        dlog_alpha = jax.vmap(jax.grad(sde.log_alpha))(t)
        f, g = sde.drift_coef(t), sde.diffusion(t)
        np.testing.assert_allclose(dvar, 2 * f * sde.sigma(t) ** 2 + g**2, rtol=1e-10)
        np.testing.assert_allclose(dlog_alpha, f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", marks.fast_first(SDES), ids=IDS)
def test_log_snr_inverse(sde):
    with jax.enable_x64(True):
        t = jnp.linspace(1e-5, 1.0, 101, dtype=jnp.float64)
        lam = sde.log_snr(t)
        assert np.all(np.diff(np.asarray(lam)) < 0), "log-SNR must decrease in t"
        np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=1e-9)


@pytest.mark.parametrize("sde", marks.fast_first(SDES), ids=IDS)
def test_transition_composes_to_marginal(sde):
    """Kernel 0->s then s->t equals kernel 0->t: alpha_t = alpha_{t|s} alpha_s,
    sigma_t^2 = alpha_{t|s}^2 sigma_s^2 + sigma_{t|s}^2.
    """
    s, t = jnp.array([0.2, 0.5]), jnp.array([0.3, 0.9])
    a_ts, s_ts = sde.transition(t, s)
    np.testing.assert_allclose(a_ts * sde.alpha(s), sde.alpha(t), rtol=1e-5)
    np.testing.assert_allclose(a_ts**2 * sde.sigma(s) ** 2 + s_ts**2, sde.sigma(t) ** 2, rtol=1e-5)


@pytest.mark.parametrize("sde, prior_std", marks.fast_first(zip(SDES, [1.0, 1.0, 50.0])), ids=IDS)
def test_prior_sampling_and_logp(sde, prior_std):
    """The prior is N(0, prior_std^2 I), and the marginal at T is within 1e-4 of it."""
    z = sde.prior_sampling(jax.random.PRNGKey(0), (4000, 3))
    np.testing.assert_allclose(np.std(z), prior_std, rtol=5 * np.sqrt(1 / (2 * z.size)))
    expected = jax.scipy.stats.norm.logpdf(z, scale=prior_std).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
    np.testing.assert_allclose(sde.sigma(jnp.ones(1)), prior_std, rtol=1e-4)


def test_defaults_match_song_et_al():
    assert (sd.VPSDE().beta_min, sd.VPSDE().beta_max) == (0.1, 20.0)
    assert (sd.VESDE().sigma_min, sd.VESDE().sigma_max) == (0.01, 50.0)
    assert sd.VPSDE().T == 1.0 and sd.VPSDE().default_eps == 1e-3 and sd.VESDE().default_eps == 1e-5


def test_sdes_are_pytrees_and_hashable():
    for sde in SDES:
        assert jax.tree_util.tree_leaves(sde) == []
        assert hash(sde) == hash(type(sde)())
        assert jax.jit(lambda s, t: s.sigma(t))(sde, jnp.ones(2)).shape == (2,)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sd.VPSDE(beta_min=20.0, beta_max=0.1), "beta_min=20.0"),
        (lambda: sd.SubVPSDE(beta_min=1.0, beta_max=1.0), "beta_min < beta_max"),
        (lambda: sd.VESDE(sigma_min=50.0, sigma_max=0.01), "sigma_min=50.0"),
        (lambda: sd.VESDE(sigma_min=0.0), "0 < sigma_min"),
        (lambda: build_sde("vp"), "valid names"),
        (lambda: sd.VPSDE().check_eps(0.0), "eps=0.0"),
        (lambda: sd.VPSDE().check_eps(1.0), r"\(0, T\)"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
