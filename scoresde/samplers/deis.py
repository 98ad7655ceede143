"""DEIS, the diffusion exponential integrator sampler with polynomial extrapolation in t (Zhang & Chen 2023).

DEIS writes the probability-flow ODE dx/dt = f(t) x + g(t)^2 eps(x, t) / (2 sigma(t)) (eps = -sigma score) by
variation of constants (their Eq. 9), with Psi(s, tau) = alpha(s) / alpha(tau):

    x_s = Psi(s, t) x_t + int_t^s Psi(s, tau) g(tau)^2 / (2 sigma(tau)) eps(x_tau, tau) dtau.

For every SDE here g^2 = d(sigma^2)/dt - 2 f sigma^2, so g^2 / (2 sigma alpha) = d(sigma / alpha)/dt: in the
EDM variables x~ = x / alpha and rho = sigma / alpha the step is x~_s = x~_t + int eps drho, the form
`ipndm.py` integrates. tAB-DEIS (their Sec. 4, Eq. 14) replaces eps by its interpolating polynomial *in t*
through the last k evaluations, t_i, ..., t_{i-k+1} (fewer at start-up), and integrates it exactly:

    W_ij = int_{t_i}^{t_{i+1}} l_ij(tau) (d rho / d tau) dtau = int_{rho_i}^{rho_{i+1}} l_ij(t(rho)) drho.

These weights depend on the grid only and are computed once per solve, before the loop (on the host in
float64 from a numpy grid), by composite
Gauss-Legendre quadrature in log rho (where t(rho) is smooth for VP, sub-VP and VE alike). Order k converges
at order k (tests/test_ode.py); k = 1 is DDIM.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from scoresde.samplers.ipndm import AdamsBashforth, gauss_legendre, lagrange_weights
from scoresde.sde import SDE, array_namespace

Array = jax.Array

# Panels x points of the quadrature in log rho over each step: the integrand l(t(rho)) rho is smooth there,
# and with 8 x 8 points the weights agree with adaptive quadrature to ~1e-12 on the longest steps of 5-step
# grids (tests/test_deis.py).
PANELS, POINTS = 8, 8


def tab_weights(sde: SDE, ts: Array, order: int) -> Array:
    """W: [N, order] of tAB-DEIS on the grid ts: [N + 1] (module docstring)."""
    xp = array_namespace(ts)
    log_rho = -sde.half_log_snr(ts)
    n = ts.shape[0] - 1
    edges = log_rho[:-1, None] + (log_rho[1:] - log_rho[:-1])[:, None] * np.linspace(0.0, 1.0, PANELS + 1)
    u, w = gauss_legendre(edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1), POINTS)
    u, w = u.reshape(n, -1), w.reshape(n, -1)
    return lagrange_weights(ts, sde.t_from_half_log_snr(-u), w * xp.exp(u), order)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEIS(AdamsBashforth):
    """tAB-DEIS of order k (Zhang & Chen 2023, Sec. 4): eps extrapolated by a polynomial in t, integrated.

    Step i uses the last min(order, i + 1) evaluations; order k is the paper's tAB with r = k - 1, and order 1
    is DDIM. One score evaluation per step.

    Args:
      num_steps: grid steps from T to eps, >= 1.
      order: 1 to 4.
      schedule: time grid; default "logsnr", chosen by measurement (README).
    """

    num_steps: int = 10
    order: int = 3
    schedule: str = "logsnr"

    def weights(self, sde, ts):
        return tab_weights(sde, ts, self.order)
