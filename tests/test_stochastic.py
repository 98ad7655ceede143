"""Stochastic samplers against the exact mixture's marginals; SDE-DPM-Solver++ of order 1 is ancestral."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import assert_matches_mixture, exact_draws
from scoresde import schedules, toy
from scoresde.samplers.exponential import integration_weights, step_orders
from scoresde.samplers.stochastic import DPMSolverPPSDE, Restart, sde_multistep_coefficients

MIX_2D = toy.mixture_2d()
SDES = {"vp": sd.VPSDE(), "ve": sd.VESDE()}


def test_first_order_is_ddim_with_full_noise():
    """k = 1: x_s = (sigma_s / sigma_t) e^-h x_t + alpha_s (1 - e^-2h) x0 + sigma_s sqrt(1 - e^-2h) z, the
    posterior q(x_s | x_t, x0) that DDIM with eta = 1 draws from; same key, same noise."""
    with jax.enable_x64(True):
        sde = sd.SubVPSDE()
        x = sde.prior_sampling(jax.random.PRNGKey(0), (16, 2)).astype(jnp.float64)
        run = lambda sampler: sd.sample(jax.random.PRNGKey(3), sde, MIX_2D.score_fn(sde), x.shape, sampler,
                                        x_init=x, denoise=False)[0]
        a = run(DPMSolverPPSDE(num_steps=12, order=1, schedule="quadratic"))
        b = run(sd.samplers.DDIM(num_steps=12, eta=1.0, schedule="quadratic"))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_weights_are_exact_for_each_steps_nodes():
    """Row i: alpha_{i+1} times the weights exact for polynomials of degree < k_i against 2h e^{-2h(1-u)},
    k_i nodes as DPM-Solver++ uses them (fewer at start-up and over the last steps of short grids)."""
    sde = sd.VPSDE()
    ts = schedules.build_schedule("logsnr", sde, 6, 1e-3)
    table = sde_multistep_coefficients(sde, ts, 3)["predict"] / sde.alpha(ts[1:])[:, None]
    lam = sde.half_log_snr(ts)
    for i, k in enumerate(step_orders(6, 3)):
        h = lam[i + 1] - lam[i]
        want = integration_weights(2.0 * h, (lam[i - np.arange(k)] - lam[i]) / h)
        np.testing.assert_allclose(table[i, :k], want, rtol=1e-12)
        assert np.all(table[i, k:] == 0.0)


def test_restart_scales_its_backward_passes_with_the_main_grid():
    """with_nfe keeps restart_steps / num_steps (at least one step): the restarts' ODE error shrinks too."""
    configured = Restart(num_steps=10, restart_steps=2, restarts=1).with_nfe(100)
    assert (configured.num_steps, configured.restart_steps, configured.nfe()) == (42, 8, 99)
    assert Restart(num_steps=10, restart_steps=2).with_nfe(5).restart_steps == 1


# Each at the NFE recommended for it (README): 4000 samples, mode weights, means and covariances within 5
# standard errors of as many exact draws.
RECOMMENDED = {
    "dpm_solver_pp_sde": DPMSolverPPSDE(num_steps=30),
    "restart": Restart(num_steps=15, restart_steps=3, restarts=2),
}


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name", RECOMMENDED)
def test_samples_match_the_mixture(name, sde_name):
    sde, sampler = SDES[sde_name], RECOMMENDED[name]
    x, nfe = jax.jit(lambda k: sd.sample(k, sde, MIX_2D.score_fn(sde), (4000, 2), sampler, denoise=False))(
        jax.random.PRNGKey(0))
    assert int(nfe) == sampler.nfe()
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, 4000))
