"""tAB-DEIS weights against adaptive quadrature of the Lagrange basis against d rho / dt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import scoresde as sd
from scoresde import schedules
from scoresde.samplers.deis import tab_weights


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("schedule", ["karras", "logsnr"])
def test_weights_match_adaptive_quadrature_on_five_step_grids(sde, schedule):
    """W_ij = int_{t_i}^{t_{i+1}} l_ij(tau) rho'(tau) dtau, l_ij the Lagrange basis on t_i, ..., t_{i-k+1}.

    Five-step grids have the longest steps, where the quadrature in log rho is least accurate.
    """
    order = 4
    with jax.enable_x64(True):
        ts = schedules.build_schedule(schedule, sde, 5, sde.default_eps)
        weights = tab_weights(sde, ts, order)
        d_rho = jax.jit(jax.grad(sde.edm_sigma))
        rate = lambda tau: float(d_rho(jnp.asarray(tau, jnp.float64)))
        for i in range(5):
            nodes = ts[i - np.arange(min(order, i + 1))]
            for j in range(len(nodes)):
                others = np.delete(nodes, j)
                basis = lambda tau: np.prod((tau - others) / (nodes[j] - others))
                want = integrate.quad(lambda tau: basis(tau) * rate(tau), ts[i], ts[i + 1], epsabs=1e-14,
                                      epsrel=1e-12, limit=200)[0]
                np.testing.assert_allclose(weights[i, j], want, rtol=1e-10, atol=1e-12)
            assert np.all(weights[i, len(nodes):] == 0.0)


def test_first_order_deis_is_ddim():
    """One node: W_i0 = rho_{i+1} - rho_i, Euler in the EDM variables, which is DDIM with eta = 0."""
    with jax.enable_x64(True):
        sde = sd.SubVPSDE()
        x = sde.prior_sampling(jax.random.PRNGKey(0), (16, 2)).astype(jnp.float64)
        score_fn = sd.toy.mixture_2d().score_fn(sde)
        run = lambda sampler: sd.sample(jax.random.PRNGKey(1), sde, score_fn, x.shape, sampler, x_init=x,
                                        denoise=False)[0]
        a = run(sd.samplers.DEIS(num_steps=12, order=1, schedule="quadratic"))
        b = run(sd.samplers.DDIM(num_steps=12, schedule="quadratic"))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
