"""iPNDM's Adams-Bashforth weights: the published coefficients on uniform steps, exact ones on any steps."""

import numpy as np
import pytest

import scoresde as sd
from scoresde import schedules
from scoresde.samplers.ipndm import IPNDM, UNIFORM_STEP_COEFFICIENTS


def uniform_in_rho(sde, num_steps, eps):
    """A grid whose noise levels rho = sigma / alpha are equally spaced, mapped to t by the SDE's inverse."""
    ends = sde.edm_sigma(np.array([sde.T, eps]))
    return sde.t_from_edm_sigma(np.linspace(ends[0], ends[1], num_steps + 1))


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=["vp", "ve"])
def test_variable_steps_give_the_published_coefficients_on_steps_uniform_in_rho(sde):
    """On the host in float64, from a numpy grid."""
    ts = uniform_in_rho(sde, 7, sde.default_eps)
    variable = IPNDM(num_steps=7, variable_step=True).weights(sde, ts)
    fixed = IPNDM(num_steps=7).weights(sde, ts)
    assert variable.dtype == fixed.dtype == np.float64
    h = sde.edm_sigma(ts[1]) - sde.edm_sigma(ts[0])
    np.testing.assert_allclose(variable, fixed, rtol=1e-9, atol=1e-9 * abs(h))
    for i in range(7):  # start-up: step i uses the (i + 1)-step method; from step 3 on, the 4-step one
        np.testing.assert_allclose(fixed[i] / h, UNIFORM_STEP_COEFFICIENTS[min(i, 3)], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_variable_step_weights_integrate_polynomials_in_rho_exactly(order):
    """sum_j W_ij p(rho_{i-j}) = int_{rho_i}^{rho_{i+1}} p(rho) drho for every p of degree < k_i."""
    sde = sd.VPSDE()
    ts = schedules.build_schedule("karras", sde, 6, 1e-3)
    rho = sde.edm_sigma(ts)
    weights = IPNDM(num_steps=6, order=order, variable_step=True).weights(sde, ts)
    rng = np.random.default_rng(0)
    for i in range(6):
        k = min(order, i + 1)
        p = np.polynomial.Polynomial(rng.normal(size=k))
        want = p.integ()(rho[i + 1]) - p.integ()(rho[i])
        got = weights[i, :k] @ p(rho[i - np.arange(k)])
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert np.all(weights[i, k:] == 0.0)
