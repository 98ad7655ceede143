"""Exponential integrators of the probability-flow ODE in the log-SNR: DDIM, DPM-Solver++ and UniPC.

With lambda = log(alpha / sigma) (`SDE.half_log_snr`) and the data prediction
x0(x, t) = E[x_0 | x_t] (Tweedie), the probability-flow ODE of every SDE here is solved exactly from t to
s < t by the variation-of-constants formula (Lu et al. 2022a, Sec. 3.1, for noise prediction; Lu et al. 2022b,
DPM-Solver++, for data prediction):

    x_s = (sigma_s / sigma_t) x_t + alpha_s int_0^1 h e^{-h (1 - u)} x0(lambda_t + u h) du,
    h = lambda_s - lambda_t.

The linear part is integrated exactly; the solvers differ only in how they approximate x0 on the step. A
multistep solver of order k replaces x0 by its interpolating polynomial through the last k evaluations, at
nodes u = r_j (r_0 = 0 the current point, r_j < 0 earlier ones), and integrates that polynomial exactly
against the exponential weight (`integration_weights`):

    x_s = (sigma_s / sigma_t) x_t + alpha_s sum_j w_j x0_j,
    sum_j w_j r_j^m = mu_m = int_0^1 h e^{-h(1-u)} u^m du   for m < k.

This derivation is the whole of DPM-Solver++(kM) for k = 1, 2, 3 (k = 1 is DDIM with eta = 0). The third-order
update as written in the DPM-Solver code, diffusers and k-diffusion gives the second divided difference half
the weight mu_2 calls for, so it is not exact for quadratic x0 and, measured here on mixture_2d, converges at
order 2.0-2.3 instead of 3; the weights here are exact for polynomials of degree < k
(tests/test_exponential.py). UniPC (Zhao et al. 2023) adds a corrector that redoes the step with one more
node, the evaluation at the new point (r = 1), which the next step needs anyway: one order more for no extra
evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.samplers.base import FixedStepSampler, per_example, require, scan_grid
from scoresde.sde import SDE, ScoreFn, array_namespace

Array = jax.Array

# Grids shorter than this lower the multistep order over their last steps (order min(k, steps left)), as the
# "lower_order_final" option of the DPM-Solver and UniPC code does: there the steps in lambda are long and
# extrapolating x0 from old nodes is least accurate. On mixture_2d under VP at 10 steps it cuts the error of
# DPM-Solver++(2M) on a grid uniform in t from 0.56 to 0.13 (README).
LOWER_ORDER_FINAL_BELOW = 15


def exp_moments(h: Array, k: int) -> Array:
    """mu_m = int_0^1 h e^{-h(1-u)} u^m du, m < k: [..., k] for h: [...]; mu_0 = 1 - e^{-h},
    mu_m = 1 - m mu_{m-1} / h (by parts)."""
    xp = array_namespace(h)
    mu = [-xp.expm1(-h)]
    for m in range(1, k):
        mu.append(1.0 - m * mu[-1] / h)
    return xp.stack(mu, axis=-1)


def multistep_moments(h: Array, k: int) -> Array:
    """The moments the multistep solvers use: exact, except mu_1 ~ mu_0 / 2 when there are two nodes.

    With two nodes, DPM-Solver++(2M) as published (Lu et al. 2022b, Algorithm 2) and UniPC with the one-node
    coefficient a_1 = 1/2 and B(h) = e^{-h} - 1 (Zhao et al. 2023, the variant their code calls "bh2") both
    weight the first divided difference by (1 - e^{-h}) / 2, the exact mu_1 up to O(h^2): still second order,
    and a little more accurate in few steps than the exact moment (README). With three or more nodes the
    moments are exact, and with them the B(h) of UniPC cancels.
    """
    mu = exp_moments(h, k)
    return array_namespace(h).stack([mu[..., 0], 0.5 * mu[..., 0]], axis=-1) if k == 2 else mu


def integration_weights(h: Array, nodes: Array, moments=exp_moments) -> Array:
    """Weights w: [..., k], sum_j w_j p(r_j) = int_0^1 h e^{-h(1-u)} p(u) du for all polynomials p of degree
    < k.

    h: [...] step sizes; nodes: [..., k] distinct r_j, positions in units of the step h relative to its start
    (r = 0). Solving the Vandermonde system sum_j w_j r_j^m = mu_m, m < k, integrates the Lagrange interpolant
    of the values at the nodes exactly against the exponential weight. `moments(h, k)` gives the mu_m.
    """
    xp = array_namespace(h, nodes)
    k = nodes.shape[-1]
    vandermonde = nodes[..., None, :] ** np.arange(k)[:, None]
    return xp.linalg.solve(vandermonde, moments(h, k)[..., None])[..., 0]


def exponential_update(sde: SDE, x: Array, t: Array, s: Array, weights: Array, x0s: Array) -> Array:
    """x_s = (sigma_s / sigma_t) x_t + alpha_s sum_j w_j x0_j; x0s: [k, B, ...], weights: [k]; t, s scalar."""
    return sde.sigma(s) / sde.sigma(t) * x + sde.alpha(s) * jnp.tensordot(weights, x0s, axes=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIM(FixedStepSampler):
    """Denoising diffusion implicit models (Song, Meng & Ermon 2021, Eqs. 12 and 16), for every SDE.

    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps^ + c z, with x0 = E[x_0 | x_t], eps^ = (x_t - alpha_t x0) /
    sigma_t the noise it implies, and c = eta sigma_s sigma_{t|s} / sigma_t. eta = 0 is the first-order
    exponential integrator of the probability-flow ODE (DPM-Solver++ of order 1); eta = 1 is ancestral
    sampling.

    Args:
      num_steps: grid steps from T to eps, >= 1.
      eta: in [0, 1], the share of fresh noise (c <= sigma_s needs eta <= 1).
      schedule: time grid; default "uniform", chosen by measurement (README).
    """

    num_steps: int = 50
    eta: float = 0.0
    schedule: str = "uniform"

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.eta <= 1, f"DDIM: eta must lie in [0, 1]; got eta={self.eta!r}.")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        def step(x, i, t, s):
            x0 = sde.data_prediction(score_fn, x, per_example(t, x))
            eps_hat = (x - sde.alpha(t) * x0) / sde.sigma(t)
            c = self.eta * sde.sigma(s) * sde.transition(t, s)[1] / sde.sigma(t)
            x = sde.alpha(s) * x0 + jnp.sqrt(sde.sigma(s) ** 2 - c**2) * eps_hat
            # With eta = 0 no noise is drawn: the RNG costs as much as a cheap score evaluation.
            if self.eta > 0:
                x = x + c * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            return x

        return scan_grid(step, x, ts, constraint)


def step_orders(num_steps: int, order: int) -> list[int]:
    """k_i = min(order, i + 1) nodes at step i, and min(k_i, N - i) over the final steps of grids shorter than
    LOWER_ORDER_FINAL_BELOW."""
    orders = [min(order, i + 1) for i in range(num_steps)]
    if num_steps >= LOWER_ORDER_FINAL_BELOW:
        return orders
    return [min(k, num_steps - i) for i, k in enumerate(orders)]


def step_weights(lam: Array, orders: list[int], width: int, corrector: bool, moments=multistep_moments
                 ) -> Array:
    """Multistep weights of every step: [N, width], zero past each step's k_i nodes (k_i + 1 with
    `corrector`).

    Node j of step i is lambda_{i-j} (j < k_i), at r = (lambda_{i-j} - lambda_i) / h_i; the corrector puts the
    new point, r = 1, first. Runs of steps with the same order are solved as one batch. `moments(h, k)` gives
    the mu_m the weights match (`integration_weights`).
    """
    xp = array_namespace(lam)
    h = lam[1:] - lam[:-1]
    rows, i = [], 0
    while i < len(orders):
        k, j = orders[i], i
        while j < len(orders) and orders[j] == k:
            j += 1
        steps = np.arange(i, j)
        nodes = (lam[steps[:, None] - np.arange(k)] - lam[steps][:, None]) / h[steps][:, None]
        if corrector:
            nodes = xp.concatenate([xp.ones_like(nodes[:, :1]), nodes], axis=1)
        w = integration_weights(h[steps], nodes, moments)
        rows.append(xp.concatenate([w, xp.zeros((j - i, width - w.shape[1]), w.dtype)], axis=1))
        i = j
    return xp.concatenate(rows, axis=0)


def multistep_coefficients(sde: SDE, ts: Array, order: int, corrector: bool) -> dict[str, Array]:
    """Everything the multistep update needs that depends only on the grid ts: [N + 1], computed once.

    ratio: [N] sigma_{i+1} / sigma_i; predict: [N, order] alpha_{i+1} w_ij, the weights of the last
    evaluations (most recent first); correct: [N, order + 1] the same for the corrector, the new evaluation
    first. From a numpy grid everything is computed on the host in float64; from a traced one (when a grid is
    fitted), in JAX.
    """
    lam = sde.half_log_snr(ts)
    alpha = sde.alpha(ts[1:])[:, None]
    orders = step_orders(ts.shape[0] - 1, order)
    coefficients = {"ratio": sde.sigma(ts[1:]) / sde.sigma(ts[:-1]),
                    "predict": alpha * step_weights(lam, orders, order, False)}
    if corrector:
        coefficients["correct"] = alpha * step_weights(lam, orders, order + 1, True)
    return coefficients


def multistep(
    sde: SDE, score_fn: ScoreFn, x: Array, ts: Array, order: int, corrector: bool, constraint=None
) -> Array:
    """The multistep exponential integrator shared by DPM-Solver++ and UniPC; one x0 evaluation per step.

    Step i from t_i to t_{i+1} predicts
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} sum_j w_ij x0_{i-j} with the last k_i evaluations of
    x0 (`step_orders`). With `corrector` (UniC), x0 at the predicted point is then used as one more node to
    redo the step; the corrected point is kept, the evaluation at the predicted one is reused by the next step
    (Zhao et al. 2023, UniPC). The last step only predicts, since its correction would cost an evaluation.
    The weights depend on the grid alone, so they are computed before the loop (`multistep_coefficients`),
    which is left with the score calls and a few axpys. A `constraint` (`scan_grid`) that changes x leaves
    the history of x0 as it was evaluated, before the change.
    """
    coefficients = multistep_coefficients(sde, ts, order, corrector)
    c = {name: jnp.asarray(v, x.dtype) for name, v in coefficients.items()}
    n = ts.shape[0] - 1

    def predict(x, x0s, i):
        return c["ratio"][i] * x + jnp.tensordot(c["predict"][i], x0s, axes=1)

    def step(carry, i, t, s):
        x, x0s = carry
        x_next = predict(x, x0s, i)
        x0_next = sde.data_prediction(score_fn, x_next, per_example(s, x))
        if corrector:
            w = c["correct"][i]
            x_next = c["ratio"][i] * x + w[0] * x0_next + jnp.tensordot(w[1:], x0s, axes=1)
        return x_next, jnp.concatenate([x0_next[None], x0s[:-1]])

    x0 = sde.data_prediction(score_fn, x, per_example(jnp.asarray(ts[0], x.dtype), x))
    x, x0s = scan_grid(step, (x, jnp.stack([x0] * order)), ts[:-1], constraint)
    return predict(x, x0s, n - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Multistep(FixedStepSampler):
    """What the multistep solvers share: an order from ORDERS, at least `order` steps, one NFE per step."""

    ORDERS: ClassVar[tuple[int, ...]]
    CORRECTOR: ClassVar[bool]
    order: int = 2

    def __post_init__(self):
        require(
            self.order in self.ORDERS,
            f"{type(self).__name__}: order must be one of {list(self.ORDERS)}; got order={self.order!r}.",
        )
        super().__post_init__()

    @property
    def min_steps(self) -> int:
        return self.order

    def constrained_cost(self) -> tuple[int, int]:
        # The first evaluation and the last prediction run outside the scan, outside the constraint.
        return self.num_steps - 1, self.num_steps - 1

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        return multistep(sde, score_fn, x, ts, self.order, self.CORRECTOR, constraint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverPP(_Multistep):
    """DPM-Solver++(kM), the multistep data-prediction solver of Lu et al. (2022b, Algorithm 2 for k = 2).

    Order k in {1, 2, 3}: x0 is interpolated through the last k evaluations and the interpolant integrated
    exactly (module docstring). The first steps use the lower orders their history allows; grids shorter than
    15 steps also lower the order over their final steps. One score evaluation per step.

    Args:
      num_steps: grid steps from T to eps, >= order.
      order: 1, 2 or 3.
      schedule: time grid; default "quadratic", chosen by measurement (README). A grid uniform in t is
        unstable for orders 2-3 from 15 steps on (no lower-order final steps there): its last steps in lambda
        are long.
    """

    ORDERS: ClassVar[tuple[int, ...]] = (1, 2, 3)
    CORRECTOR: ClassVar[bool] = False
    num_steps: int = 20
    schedule: str = "quadratic"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPC(_Multistep):
    """UniPC-p, the unified predictor-corrector of Zhao et al. (2023): data prediction, B(h) = e^{-h} - 1.

    The predictor UniP-p is DPM-Solver++(pM); the corrector UniC-p redoes each step with the new evaluation as
    one more node, raising the order to p + 1 at no extra cost. One score evaluation per step.

    Args:
      num_steps: grid steps from T to eps, >= order.
      order: predictor order p, 2 or 3.
      schedule: time grid; default "logsnr", chosen by measurement (README).
    """

    ORDERS: ClassVar[tuple[int, ...]] = (2, 3)
    CORRECTOR: ClassVar[bool] = True
    num_steps: int = 10
    schedule: str = "logsnr"
