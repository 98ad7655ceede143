"""Solvers of the probability-flow ODE in t or in the EDM noise level: Euler, Heun (EDM) and adaptive RK45.

The probability-flow ODE dx/dt = f(t) x - g(t)^2 score(x, t) / 2 (Song et al. 2021, Eq. 13) has the same
marginals as the forward SDE, so integrating it from a prior draw at T down to eps samples p_eps
deterministically. `Euler` steps it in t. `Heun` is the sampler of Karras et al. (2022, Algorithm 2) in their
variables x~ = x / alpha(t) and sigma~ = sigma(t) / alpha(t) = exp(-lambda(t) / 2), in which the ODE of every
SDE here reads dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ with D Tweedie's denoiser (their Eq. 4 with s = 1).
`RK45` is Dormand-Prince 5(4) with a PID step-size controller through diffrax, all inside jit; its solve
`adaptive_solve` also serves the likelihood ODE and encode/decode in `scoresde.likelihood`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde.samplers.base import FixedStepSampler, Sampler, as_int, per_example, require, scan_grid
from scoresde.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Euler(FixedStepSampler):
    """Euler's method on the probability-flow ODE in t: x_s = x_t + (s - t) [f(t) x_t - g(t)^2 score / 2].

    First order; one score evaluation per step. Default grid "uniform", chosen by measurement (README).
    """

    num_steps: int = 100
    schedule: str = "uniform"

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        def step(x, i, t, s):
            return x + (s - t) * sde.probability_flow(score_fn, x, per_example(t, x))

        return scan_grid(step, x, ts, constraint)


def edm_denoiser(sde: SDE, score_fn: ScoreFn, x_scaled: Array, t: Array) -> Array:
    """D(x~; sigma~(t)) = E[x_0 | x_t = alpha(t) x~]; x_scaled: [B, ...], t: scalar."""
    t = per_example(t, x_scaled)
    return sde.data_prediction(score_fn, batch_broadcast(sde.alpha(t), x_scaled) * x_scaled, t)


def edm_derivative(sde: SDE, score_fn: ScoreFn, x_scaled: Array, t: Array) -> Array:
    """dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ at time t (Karras et al. 2022, Eq. 4 with s = 1); one score
    evaluation. x_scaled: [B, ...], t: scalar."""
    return (x_scaled - edm_denoiser(sde, score_fn, x_scaled, t)) / sde.edm_sigma(t)


def heun_step(sde: SDE, score_fn: ScoreFn, x_scaled: Array, t: Array, s: Array, correct: bool = True
              ) -> Array:
    """x~ at time s from x~ at time t: an Euler step in sigma~, corrected by the trapezoidal rule unless
    `correct` is False (Karras et al. 2022, Algorithm 2, lines 7-10); 2 score evaluations, 1 uncorrected."""
    step = sde.edm_sigma(s) - sde.edm_sigma(t)
    d = edm_derivative(sde, score_fn, x_scaled, t)
    x_next = x_scaled + step * d
    if correct:
        x_next = x_scaled + step * 0.5 * (d + edm_derivative(sde, score_fn, x_next, s))
    return x_next


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heun(FixedStepSampler):
    """Heun's 2nd-order method with optional churn, Karras et al. (2022, Algorithm 2), for every SDE.

    Each step first raises the noise level sigma~ -> sigma^ = (1 + gamma) sigma~ by adding fresh noise (the
    churn; gamma = min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma~ <= s_tmax, else 0), then takes an
    Euler step to the next level and corrects it with the trapezoidal rule. The last step is Euler only, as in
    the paper, so N steps cost 2N - 1 score evaluations. With s_churn = 0 (default) the sampler is
    deterministic.

    Args:
      num_steps: grid steps N from T to eps, >= 1.
      schedule: time grid; default "karras" (Karras et al. Eq. 5, rho = 7), chosen by measurement (README).
      s_churn: total churn, >= 0; s_tmin, s_tmax: the noise-level window (in sigma~ = sigma / alpha) where it
        applies; s_noise: scale of the added noise, > 0 (EDM's S_noise, slightly above 1 in their tuning).
    """

    num_steps: int = 18
    schedule: str = "karras"
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require(self.s_churn >= 0, f"Heun: s_churn must be >= 0; got s_churn={self.s_churn!r}.")
        require(self.s_noise > 0, f"Heun: s_noise must be > 0; got s_noise={self.s_noise!r}.")
        require(
            0 <= self.s_tmin <= self.s_tmax,
            f"Heun: need 0 <= s_tmin <= s_tmax; got s_tmin={self.s_tmin!r}, s_tmax={self.s_tmax!r}.",
        )

    @property
    def stochastic(self) -> bool:
        return self.s_churn > 0

    def nfe(self) -> int:
        return 2 * self.num_steps - 1

    def constrained_cost(self) -> tuple[int, int]:
        # The last (Euler) step runs after the scan, outside the constraint.
        return self.num_steps - 1, 2 * (self.num_steps - 1)

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        num_steps = ts.shape[0] - 1
        gamma_max = min(self.s_churn / num_steps, math.sqrt(2.0) - 1.0)

        def churn(x, i, t):
            """Raises the noise level to sigma^ = (1 + gamma) sigma~ by fresh noise; returns x^, t(sigma^)."""
            sigma = sde.edm_sigma(t)
            gamma = jnp.where((self.s_tmin <= sigma) & (sigma <= self.s_tmax), gamma_max, 0.0)
            noise = self.s_noise * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            # sqrt(sigma^2 - sigma~^2), written so that gamma = 0 gives exactly 0 (no negative round-off).
            x_hat = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * noise
            return x_hat, sde.t_from_edm_sigma((1.0 + gamma) * sigma).astype(t.dtype)

        def step(x, i, t, s, correct=True):
            """x at t -> x at s; the step itself runs in the scaled variable x~ = x / alpha."""
            x = x / sde.alpha(t)
            # Without churn, no noise is drawn: the RNG would cost as much as a cheap score evaluation.
            x_hat, t_hat = churn(x, i, t) if gamma_max > 0 else (x, t)
            return sde.alpha(s) * heun_step(sde, score_fn, x_hat, t_hat, s, correct)

        ts = jnp.asarray(ts, x.dtype)
        x = scan_grid(step, x, ts[:-1], constraint)
        return step(x, num_steps - 1, ts[-2], ts[-1], correct=False)


def check_tolerances(rtol: float, atol: float, where: str) -> None:
    require(rtol > 0, f"{where}: rtol must be > 0; got rtol={rtol!r}.")
    require(atol > 0, f"{where}: atol must be > 0; got atol={atol!r}.")


def check_max_steps(max_steps: int, where: str) -> int:
    """max_steps as an int; ValueError unless it is an integer >= 1."""
    max_steps = as_int(max_steps)
    require(isinstance(max_steps, int) and max_steps >= 1,
            f"{where}: max_steps must be an integer >= 1; got max_steps={max_steps!r}.")
    return max_steps


# Dopri5 makes 6 new evaluations per attempted step (its 7th stage is the next step's 1st, "first same as
# last"), plus one at the start; counted against the evaluations themselves in tests/test_ode.py.
_DOPRI5_EVALS_PER_STEP, _DOPRI5_INITIAL_EVALS = 6, 1
MAX_STEPS = 4096  # attempted steps of one adaptive solve, as diffrax's default


def adaptive_solve(
    vector_field: Callable[[Array, Any], Any],
    y0: Any,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int = MAX_STEPS,
    where: str = "RK45",
) -> tuple[Any, Array]:
    """Integrates dy/dt = vector_field(t, y) from t0 to t1 with Dormand-Prince 5(4) and a PID controller.

    y0 may be any pytree; the whole batch is one system with one step size, and the error norm is the RMS over
    all of y of err / (atol + rtol |y|), as in SciPy's RK45 (Dormand & Prince 1980; Hairer et al. 1993, II.4).
    A solve that needs more than `max_steps` steps fails at run time with an error naming `where`, the caller
    whose `max_steps` setting to raise. Returns (y(t1), the number of vector-field evaluations made, int32).
    """
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: vector_field(t, y)),
        diffrax.Dopri5(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    ys = eqx.error_if(solution.ys, solution.result == diffrax.RESULTS.max_steps_reached,
                      f"{where}: the adaptive solve took max_steps={max_steps} steps without reaching its "
                      f"end time; pass a larger max_steps to {where}, or looser rtol/atol.")
    ys = solution.result.error_if(ys, jnp.logical_not(diffrax.is_okay(solution.result)))  # diffrax's others
    nfe = _DOPRI5_EVALS_PER_STEP * solution.stats["num_steps"] + _DOPRI5_INITIAL_EVALS
    return jax.tree.map(lambda y: y[-1], ys), jnp.asarray(nfe, jnp.int32)


def solve_flow(
    sde: SDE, score_fn: ScoreFn, x: Array, t0: float, t1: float, *, rtol: float, atol: float,
    max_steps: int = MAX_STEPS, where: str = "RK45",
) -> tuple[Array, Array]:
    """Carries x: [B, ...] from time t0 to t1 (either direction) along the probability-flow ODE."""
    drift = lambda t, y: sde.probability_flow(score_fn, y, per_example(t, y))
    return adaptive_solve(drift, x, t0, t1, rtol=rtol, atol=atol, max_steps=max_steps, where=where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RK45(Sampler):
    """Adaptive Dormand-Prince RK45 on the probability-flow ODE, compiled with the rest of the sampler.

    The reference implementation (Song et al. 2021) calls scipy.integrate.solve_ivp(method="RK45") from the
    host, one device round trip per evaluation; this is the same method and error control inside jit
    (benchmarks/ode.py). The NFE it returns is counted by the solve, so it varies with x and the tolerances.

    Args:
      rtol, atol: relative and absolute tolerances of the local error, > 0.
      max_steps: attempted steps before the solve gives up with an error, >= 1.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = MAX_STEPS

    def __post_init__(self):
        check_tolerances(self.rtol, self.atol, "RK45")
        object.__setattr__(self, "max_steps", check_max_steps(self.max_steps, "RK45"))

    def solve(self, key, sde, score_fn, x, eps, axis_name=None, constraint=None):
        require(
            constraint is None,
            "RK45 chooses its own steps and takes no constraint (inpainting, colorization); "
            "use a fixed-step sampler such as Euler or PC.",
        )
        return solve_flow(sde, score_fn, x, sde.T, eps, rtol=self.rtol, atol=self.atol,
                          max_steps=self.max_steps)
