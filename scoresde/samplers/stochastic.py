"""Stochastic few-step samplers: SDE-DPM-Solver++ (the exact reverse-SDE step) and Restart sampling.

SDE-DPM-Solver++(kM). With lambda = log(alpha / sigma), h = lambda_s - lambda_t and x0 = E[x_0 | x_t], the
reverse-time SDE (Song et al. 2021, Eq. 6) of every SDE here is solved from t to s < t by variation of
constants, its linear part and its noise exactly (Lu et al. 2022b, DPM-Solver++, App. B; Gonzalez et al.
2023; SA-Solver's predictor with tau = 1, Xue et al. 2023, Eq. 14):

    x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s int_0^1 2h e^{-2h (1 - u)} x0(lambda_t + u h) du
          + sigma_s sqrt(1 - e^{-2h}) z.

As in `exponential.py`, x0 is replaced by its interpolating polynomial through the last k evaluations and that
polynomial is integrated exactly, now against e^{-2h(1-u)}: the weights are `integration_weights(2h, nodes)`.
k = 1 is ancestral sampling (DDIM with eta = 1); for k = 2 these exact weights are the "heun" variant of
k-diffusion's DPM-Solver++(2M) SDE, its "midpoint" default approximates them by (1 - e^{-2h}) / 2. The weights
of every step depend only on the grid and are computed before the loop.

Restart (Xu et al. 2023, Algorithm 1). Heun's method on the probability-flow ODE (`ode.heun_step`) to the grid
point whose noise level rho = sigma / alpha is nearest `restart_min`; there, `restarts` times: add fresh noise
to raise rho to `restart_max` by the exact forward kernel, x~ + sqrt(rho_max^2 - rho_min^2) z in
x~ = x / alpha, and integrate the ODE back down with `restart_steps` Heun steps (on a Karras grid in rho);
then go on to eps. The forward noise contracts the error accumulated above the restart interval; the ODE
keeps the steps cheap.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scoresde.samplers.base import FixedStepSampler, per_example, require, scan_grid
from scoresde.samplers.exponential import exp_moments, step_orders, step_weights
from scoresde.samplers.ode import heun_step
from scoresde.sde import SDE, array_namespace

Array = jax.Array


def reverse_sde_moments(h: Array, k: int) -> Array:
    """mu_m = int_0^1 2h e^{-2h(1-u)} u^m du, m < k: the moments of the reverse SDE's weight on x0."""
    return exp_moments(2.0 * h, k)


def sde_multistep_coefficients(sde: SDE, ts: Array, order: int) -> dict[str, Array]:
    """What each step of SDE-DPM-Solver++ needs from the grid ts: [N + 1], computed once (numpy grid: on the
    host in float64).

    ratio: [N] (sigma_{i+1} / sigma_i) e^{-h_i}; predict: [N, order] alpha_{i+1} w_ij, the weights of the last
    evaluations of x0 (most recent first, `exponential.step_orders` of them); noise: [N] the scale of z.
    """
    xp = array_namespace(ts)
    lam = sde.half_log_snr(ts)
    h = lam[1:] - lam[:-1]
    weights = step_weights(lam, step_orders(ts.shape[0] - 1, order), order, False, reverse_sde_moments)
    return {"ratio": sde.sigma(ts[1:]) / sde.sigma(ts[:-1]) * xp.exp(-h),
            "predict": sde.alpha(ts[1:])[:, None] * weights,
            "noise": sde.sigma(ts[1:]) * xp.sqrt(-xp.expm1(-2.0 * h))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverPPSDE(FixedStepSampler):
    """SDE-DPM-Solver++(kM): multistep data prediction on the reverse-time SDE, linear part and noise exact.

    Order k in {1, 2, 3} interpolates x0 through the last k evaluations (fewer at start-up); order 1 is
    ancestral sampling, DDIM with eta = 1. One score evaluation per step; stochastic.

    Args:
      num_steps: grid steps from T to eps, >= order.
      order: 1, 2 or 3.
      schedule: time grid; default "logsnr", chosen by measurement (README).
    """

    num_steps: int = 20
    order: int = 2
    schedule: str = "logsnr"

    def __post_init__(self):
        require(self.order in (1, 2, 3),
                f"DPMSolverPPSDE: order must be one of [1, 2, 3]; got order={self.order!r}.")
        super().__post_init__()

    @property
    def min_steps(self) -> int:
        return self.order

    @property
    def stochastic(self) -> bool:
        return True

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        coefficients = sde_multistep_coefficients(sde, ts, self.order)
        c = {name: jnp.asarray(v, x.dtype) for name, v in coefficients.items()}

        def step(carry, i, t, s):
            x, x0s = carry
            x0s = jnp.concatenate([sde.data_prediction(score_fn, x, per_example(t, x))[None], x0s[:-1]])
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            x = c["ratio"][i] * x + jnp.tensordot(c["predict"][i], x0s, axes=1) + c["noise"][i] * noise
            return x, x0s

        return scan_grid(step, (x, jnp.zeros((self.order,) + x.shape, x.dtype)), ts, constraint)[0]


def karras_noise_levels(rho_max: Array, rho_min: Array, num_steps: int, power: float = 7.0) -> Array:
    """num_steps + 1 noise levels from rho_max down to rho_min, uniform in rho^(1/power) (Karras et al. 2022,
    Eq. 5)."""
    u = np.linspace(0.0, 1.0, num_steps + 1)
    return (rho_max ** (1 / power) + u * (rho_min ** (1 / power) - rho_max ** (1 / power))) ** power


@dataclasses.dataclass(frozen=True, kw_only=True)
class Restart(FixedStepSampler):
    """Restart sampling (Xu et al. 2023, Algorithm 1): Heun's ODE steps, restarts with noise over an interval.

    The main grid of `num_steps` Heun steps costs 2 num_steps - 1 evaluations (its last step is Euler's, as
    in `Heun`); each of the `restarts` backward passes `restart_steps` Heun steps, 2 evaluations each. The
    restart interval is in the EDM noise level rho = sigma / alpha; it starts at the interior grid point
    nearest `restart_min` (in log rho), and where that point lies above `restart_max` the restarts do nothing.

    Args:
      num_steps: main grid steps from T to eps, >= 2.
      schedule: main time grid; default "logsnr", chosen by measurement (README).
      restart_min, restart_max: the restart interval in rho, 0 < restart_min < restart_max.
      restart_steps: Heun steps of each backward pass, >= 1.
      restarts: how many times the interval is restarted, >= 1.
    """

    num_steps: int = 10
    schedule: str = "logsnr"
    restart_min: float = 0.1
    restart_max: float = 1.0
    restart_steps: int = 2
    restarts: int = 1

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.restart_min < self.restart_max,
                f"Restart: need 0 < restart_min < restart_max; got restart_min={self.restart_min!r}, "
                f"restart_max={self.restart_max!r}.")
        for name in ("restart_steps", "restarts"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1,
                    f"Restart: {name} must be an integer >= 1; got {name}={value!r}.")

    @property
    def min_steps(self) -> int:
        return 2

    def nfe(self) -> int:
        return 2 * self.num_steps - 1 + 2 * self.restarts * self.restart_steps

    def with_steps(self, num_steps: int) -> "Restart":
        """`num_steps` main steps and the backward passes scaled with them (restart_steps / num_steps kept, at
        least 1), so that at higher NFE the restarts' own ODE error shrinks too."""
        restart_steps = max(1, round(self.restart_steps * num_steps / self.num_steps))
        return dataclasses.replace(self, num_steps=num_steps, restart_steps=restart_steps)

    def constrained_cost(self) -> tuple[int, int]:
        # The last (Euler) step runs after the scan, outside the constraint; the restarts run inside it.
        return self.num_steps - 1, self.nfe() - 1

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        xp = array_namespace(ts)
        rho = sde.edm_sigma(ts)
        # The restart follows main step `at`, whose end point ts[at + 1] is interior.
        at = xp.argmin(xp.abs(xp.log(rho[1:-1]) - math.log(self.restart_min)))
        rho_min = rho[at + 1]
        rho_max = xp.maximum(self.restart_max, rho_min)
        sub_grid = sde.t_from_edm_sigma(karras_noise_levels(rho_max, rho_min, self.restart_steps))
        sub_grid = jnp.asarray(xp.concatenate([sub_grid[:-1], ts[at + 1][None]]), x.dtype)
        raise_by = jnp.asarray(xp.sqrt(rho_max**2 - rho_min**2), x.dtype)
        heun = lambda x, i, t, s: heun_step(sde, score_fn, x, t, s)

        def restart(k, x):
            noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
            return scan_grid(heun, x + raise_by * noise, sub_grid)

        def step(x, i, t, s):
            """x at t -> x at s (a `constraint` acts on x); the steps run in x~ = x / alpha."""
            x = heun(x / sde.alpha(t), i, t, s)
            x = lax.cond(i == at, lambda x: lax.fori_loop(0, self.restarts, restart, x), lambda x: x, x)
            return sde.alpha(s) * x

        ts = jnp.asarray(ts, x.dtype)
        x = scan_grid(step, x, ts[:-1], constraint) / sde.alpha(ts[-2])
        x = heun_step(sde, score_fn, x, ts[-2], ts[-1], correct=False)
        return sde.alpha(ts[-1]) * x
