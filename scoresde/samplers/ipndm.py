"""Adams-Bashforth on the EDM form of the probability-flow ODE: iPNDM (Zhang & Chen 2023; Zhou et al. 2024).

In x~ = x / alpha(t) and the noise level rho = sigma(t) / alpha(t) (Karras et al. 2022, Sec. 2 and Eq. 4) the
probability-flow ODE of every SDE here reads

    dx~ / drho = d(x~, rho) = (x~ - D(x~; rho)) / rho,

with D Tweedie's denoiser; d is the noise the data prediction implies, eps^ = (x_t - alpha x0) / sigma. A
linear multistep method of Adams-Bashforth type takes one evaluation of d per step and

    x~_{i+1} = x~_i + sum_j W_ij d_{i-j},   j < k_i = min(order, i + 1),

using the last k_i evaluations: fewer at start-up, where there is no history yet. The weights W depend only on
the grid, so `adams_bashforth` takes them as a [N, order] table computed before its loop (on the host in
float64 from a numpy grid), and the solvers here and in `deis.py` differ only in that table:

* iPNDM (Zhang & Chen 2023, App. of DEIS; Zhou et al. 2024, AMED, "iPNDM"): W_ij = (rho_{i+1} - rho_i) c^k_j
  with the Adams-Bashforth coefficients of uniform steps, c^1 = (1), c^2 = (3/2, -1/2),
  c^3 = (23/12, -16/12, 5/12), c^4 = (55/24, -59/24, 37/24, -9/24) (Hairer et al. 1993, III.1). On a grid that
  is not uniform in rho these are exact only for constant d, so the method is of order 2 on smooth grids
  (the coefficient error is O(step ratio - 1) = O(h)), whatever `order` says (tests/test_ode.py measures it).
* iPNDM with variable steps: W_ij = int_{rho_i}^{rho_{i+1}} l_ij(rho) drho, l_ij the Lagrange basis polynomial
  on the nodes rho_i, ..., rho_{i-k_i+1} that is 1 at rho_{i-j}: the Adams-Bashforth method of the actual
  steps (Hairer et al. 1993, III.5), of order `order` on any grid. This is also DEIS's rhoAB (Zhang & Chen
  2023, Sec. 4).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.samplers.base import Constraint, FixedStepSampler, require, scan_grid
from scoresde.samplers.ode import edm_derivative
from scoresde.sde import SDE, ScoreFn, array_namespace

Array = jax.Array

# Row k - 1: the coefficients of the k-step Adams-Bashforth method for uniform steps, newest evaluation first.
UNIFORM_STEP_COEFFICIENTS = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [3.0 / 2.0, -1.0 / 2.0, 0.0, 0.0],
    [23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0],
    [55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
])


def history_orders(num_steps: int, order: int) -> np.ndarray:
    """k_i = min(order, i + 1): the number of evaluations step i uses; [N]."""
    return np.minimum(np.arange(num_steps) + 1, order)


def lagrange_weights(nodes: Array, points: Array, quadrature: Array, order: int) -> Array:
    """Integrals of the Lagrange basis polynomials of each step's nodes, by a given quadrature rule.

    Computed in numpy (float64) when every argument is a numpy array, else in JAX.

    Args:
      nodes: [N + 1] the grid in the variable the interpolant is a polynomial of (rho, or t for DEIS).
      points: [N, Q] that variable at the quadrature points of step i.
      quadrature: [N, Q] the quadrature weights of step i, in drho.
      order: the most nodes a step uses.

    Returns:
      W: [N, order], W_ij = sum_q quadrature_iq l_ij(points_iq), with l_ij the Lagrange basis polynomial on
      nodes_i, ..., nodes_{i-k_i+1} that is 1 at nodes_{i-j}; W_ij = 0 for j >= k_i = min(order, i + 1).
    """
    xp = array_namespace(nodes, points, quadrature)
    n = points.shape[0]
    back = np.arange(n)[:, None] - np.arange(order)[None, :]  # [N, K]: index i - j of node j of step i
    used = np.arange(order)[None, :] < history_orders(n, order)[:, None]
    history = nodes[np.maximum(back, 0)]  # [N, K]
    # factor[i, j, m, q] = (v_q - node_m) / (node_j - node_m) for used nodes m != j (j used), else 1.
    others = used[:, :, None] & used[:, None, :] & ~np.eye(order, dtype=bool)[None]  # [N, K(j), K(m)]
    gaps = xp.where(others, history[:, :, None] - history[:, None, :], 1.0)
    numerators = points[:, None, None, :] - history[:, None, :, None]  # [N, 1, K(m), Q]
    factors = xp.where(others[..., None], numerators / gaps[..., None], 1.0)
    basis = xp.prod(factors, axis=2)  # [N, K(j), Q]
    return xp.where(used, xp.sum(basis * quadrature[:, None, :], axis=-1), 0.0)


def gauss_legendre(lo: Array, hi: Array, num_points: int) -> tuple[Array, Array]:
    """Gauss-Legendre points and weights on each interval [lo_i, hi_i]: both [N, num_points]."""
    xi, w = np.polynomial.legendre.leggauss(num_points)
    mid, half = 0.5 * (hi + lo)[:, None], 0.5 * (hi - lo)[:, None]
    return mid + half * xi, half * w


def adams_bashforth(sde: SDE, score_fn: ScoreFn, x: Array, ts: Array, weights: Array,
                    constraint: Constraint | None = None) -> Array:
    """x~_{i+1} = x~_i + sum_j W_ij d_{i-j} over the grid ts: [N + 1]; weights: [N, K]; x: [B, ...] at ts[0].

    One evaluation of d = (x~ - D(x~; rho)) / rho per step, at the start of the step, the last K of them kept
    in the scan's carry; the carry holds x itself, so that a `constraint` (`scan_grid`) acts on x at t_i and
    the step's evaluation sees what it wrote. The loop computes in x's dtype. Returns x at ts[-1].
    """
    weights, ts = jnp.asarray(weights, x.dtype), jnp.asarray(ts, x.dtype)

    def step(carry, i, t, s):
        x, history = carry
        x_scaled = x / sde.alpha(t)
        history = jnp.concatenate([edm_derivative(sde, score_fn, x_scaled, t)[None], history[:-1]])
        return sde.alpha(s) * (x_scaled + jnp.tensordot(weights[i], history, axes=1)), history

    carry = (x, jnp.zeros((weights.shape[1],) + x.shape, x.dtype))
    return scan_grid(step, carry, ts, constraint)[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamsBashforth(FixedStepSampler):
    """What the Adams-Bashforth samplers share: an order from ORDERS, one score evaluation per step."""

    ORDERS: ClassVar[tuple[int, ...]] = (1, 2, 3, 4)
    order: int = 4

    def __post_init__(self):
        super().__post_init__()
        require(
            self.order in self.ORDERS,
            f"{type(self).__name__}: order must be one of {list(self.ORDERS)}; got order={self.order!r}.",
        )

    @abc.abstractmethod
    def weights(self, sde: SDE, ts: Array) -> Array:
        """W: [N, order] of the grid ts: [N + 1] (module docstring)."""

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        return adams_bashforth(sde, score_fn, x, ts, self.weights(sde, ts), constraint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IPNDM(AdamsBashforth):
    """Improved PNDM: Adams-Bashforth in the EDM noise level rho (Zhang & Chen 2023; Zhou et al. 2024).

    Step i uses the last min(order, i + 1) evaluations of d = (x~ - D) / rho. With the published fixed
    coefficients (`variable_step=False`) the method is exact for constant d only and converges at order 2
    on non-uniform grids; `variable_step=True` integrates the interpolant of the actual nodes (order `order`).

    Args:
      num_steps: grid steps from T to eps, >= 1; one score evaluation each.
      order: 1 to 4, the most evaluations a step uses.
      variable_step: coefficients from the actual step ratios instead of those of uniform steps.
      schedule: time grid; default "logsnr", chosen by measurement (README).
    """

    num_steps: int = 10
    schedule: str = "logsnr"
    variable_step: bool = False

    def weights(self, sde, ts):
        rho = sde.edm_sigma(ts)
        if self.variable_step:
            # Gauss-Legendre in rho with `order` points is exact for the polynomials l_ij of degree < order.
            points, quadrature = gauss_legendre(rho[:-1], rho[1:], self.order)
            return lagrange_weights(rho, points, quadrature, self.order)
        coefficients = UNIFORM_STEP_COEFFICIENTS[: self.order, : self.order]
        return (rho[1:] - rho[:-1])[:, None] * coefficients[history_orders(ts.shape[0] - 1, self.order) - 1]
