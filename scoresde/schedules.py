"""Time grids for fixed-step samplers, from T down to eps.

A grid is a decreasing array t_0 = T > t_1 > ... > t_N = eps of N + 1 times; step i goes from t_i to t_{i+1}.
Grids that are uniform in some other variable (the EDM noise level sigma/alpha, the half log-SNR lambda) are
mapped back to t through the SDE's closed-form inverses, so every grid works for every SDE. A grid is either
named (`SCHEDULE_NAMES`) or given as a value: a tuple of times (`check_grid`), e.g. from a published sigma
table (`from_edm_sigmas`) or fitted to a score function (`fit`).

Grids are computed on the host in float64 numpy, whatever dtype the model runs in (in bfloat16, with its 3
significant digits, neighbouring times of a long grid would coincide); samplers cast them once, to the dtype
they compute in, float32 or wider (`samplers.base.work_dtype`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde.sde import SDE
from scoresde.validation import require

Grid = tuple[float, ...]


def uniform(sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """Uniform in t (Song et al. 2021)."""
    return np.linspace(sde.T, eps, num_steps + 1)


def quadratic(sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """Uniform in sqrt(t - eps): denser near the data (the "quad" grid of DDIM, Song et al. 2021a,
    App. D.2).
    """
    u = np.linspace(1.0, 0.0, num_steps + 1)
    return eps + (sde.T - eps) * u**2


def karras(sde: SDE, num_steps: int, eps: float, rho: float = 7.0) -> np.ndarray:
    """Uniform in (sigma/alpha)^(1/rho) (Karras et al. 2022, Eq. 5), the noise level of the EDM ODE."""
    inv_rho = sde.edm_sigma(np.array([sde.T, eps])) ** (1.0 / rho)
    u = np.linspace(0.0, 1.0, num_steps + 1)
    return _pinned(sde, sde.t_from_edm_sigma((inv_rho[0] + u * (inv_rho[1] - inv_rho[0])) ** rho), eps)


def logsnr(sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """Uniform in the log-SNR (Lu et al. 2022, DPM-Solver, Sec. 3.3)."""
    lam = sde.half_log_snr(np.array([sde.T, eps]))
    return _pinned(sde, sde.t_from_half_log_snr(np.linspace(lam[0], lam[1], num_steps + 1)), eps)


def _pinned(sde: SDE, t: np.ndarray, eps: float) -> np.ndarray:
    # Pin the end points so round-off in t(lambda(t)) never moves them.
    t = np.array(t, np.float64)
    t[0], t[-1] = sde.T, eps
    return t


_SCHEDULES = {"uniform": uniform, "quadratic": quadratic, "karras": karras, "logsnr": logsnr}
SCHEDULE_NAMES = tuple(_SCHEDULES)


def check_schedule(schedule: str | Grid, num_steps: int, where: str) -> None:
    """Raises ValueError unless `schedule` is a known name or a valid explicit grid of num_steps steps."""
    if isinstance(schedule, str):
        if schedule not in _SCHEDULES:
            raise ValueError(f"{where}: unknown schedule {schedule!r}; valid names: {list(SCHEDULE_NAMES)}, "
                             f"or a tuple of times T .. eps.")
    else:
        check_grid(schedule, num_steps, where)


def check_grid(grid: Sequence[float], num_steps: int, where: str) -> None:
    """Raises ValueError unless grid is num_steps + 1 finite, strictly decreasing times in (0, 1].

    That it starts at the SDE's T and ends at the eps of the solve is checked where both are known
    (`check_ends`).
    """
    t = np.asarray(grid, np.float64)
    ok_shape = t.ndim == 1 and t.shape[0] == num_steps + 1
    require(ok_shape, f"{where}: an explicit schedule needs num_steps + 1 = {num_steps + 1} times T .. eps; "
                      f"got {t.shape[0] if t.ndim == 1 else t.shape} ({_show(t)}).")
    bad = np.flatnonzero(~np.isfinite(t))
    require(bad.size == 0, f"{where}: schedule times must be finite; got {t[bad[0]] if bad.size else ''} at "
                           f"index {bad[0] if bad.size else ''}.")
    rising = np.flatnonzero(np.diff(t) >= 0)
    require(rising.size == 0, f"{where}: schedule times must be strictly decreasing from T to eps; got "
                              f"{t[rising[0]] if rising.size else ''} followed by "
                              f"{t[rising[0] + 1] if rising.size else ''} at index "
                              f"{rising[0] + 1 if rising.size else ''}.")
    require(0.0 < t[-1] and t[0] <= 1.0, f"{where}: schedule times must lie in (0, T]; got {_show(t)}.")


def check_ends(grid: np.ndarray, sde: SDE, eps: float | None) -> float:
    """The eps of a solve over an explicit grid: grid[-1]; raises ValueError unless grid[0] is the SDE's T and
    eps, where given, is grid[-1]."""
    start, end = float(grid[0]), float(grid[-1])
    require(start == sde.T, f"schedule must start at T = {sde.T} of the SDE; it starts at {start!r}.")
    require(eps is None or float(eps) == end,
            f"eps={eps!r} but the sampler's schedule ends at {end!r}; pass eps=None or eps={end!r}.")
    sde.check_eps(end)
    return end


def build_schedule(schedule: str | Grid, sde: SDE, num_steps: int, eps: float) -> np.ndarray:
    """The grid, named or explicit, as float64: [num_steps + 1], from T to eps."""
    if not isinstance(schedule, str):
        return np.asarray(schedule, np.float64)
    check_schedule(schedule, num_steps, "build_schedule")
    return _SCHEDULES[schedule](sde, num_steps, float(eps))


def from_edm_sigmas(sde: SDE, sigmas: Sequence[float], num_steps: int | None = None) -> Grid:
    """Times of a published noise-level table (Karras/AYS style), resampled to num_steps steps.

    The table lists EDM noise levels sigma~ = sigma/alpha (Karras et al. 2022), decreasing, its last entry the
    one to stop at (tables that end in 0 drop it: the final denoising step stands for it). Resampling
    interpolates log sigma~ linearly in the table's position, as Align Your Steps does (Sabour et al. 2024,
    App. B), keeping both ends; each level maps to t through the SDE's closed-form inverse.

    Args:
      sde: the SDE whose noise levels the table lists.
      sigmas: [M >= 2] decreasing positive levels within the SDE's range (sigma~(eps_min), sigma~(T)].
      num_steps: steps of the grid (default M - 1: the table itself).

    Returns:
      num_steps + 1 times from T down to t(sigmas[-1]), usable as any fixed-step sampler's `schedule`.

    Raises:
      ValueError: if the table is not decreasing and positive, or lies outside the SDE's range.
    """
    s = np.asarray(sigmas, np.float64)
    s = s[:-1] if s.size and s[-1] == 0 else s
    require(s.ndim == 1 and s.size >= 2 and bool(np.all(np.isfinite(s))),
            f"from_edm_sigmas: sigmas must be 2 or more finite noise levels; got {_show(s)}.")
    require(bool(np.all(np.diff(s) < 0)) and s[-1] > 0,
            f"from_edm_sigmas: sigmas must be positive and strictly decreasing; got {_show(s)}.")
    top, bottom = (float(v) for v in sde.edm_sigma(np.array([sde.T, sde.T * 1e-12])))
    require(s[0] <= top * (1 + 1e-9) and s[-1] > bottom,
            f"from_edm_sigmas: sigmas must lie in the noise levels of {type(sde).__name__}, "
            f"({bottom:.4g}, {top:.6g}]; got {s[0]:.6g} .. {s[-1]:.4g}.")
    num_steps = s.size - 1 if num_steps is None else num_steps
    require(isinstance(num_steps, int) and num_steps >= 1,
            f"from_edm_sigmas: num_steps must be an integer >= 1; got {num_steps!r}.")
    u = np.linspace(0.0, s.size - 1, num_steps + 1)
    t = sde.t_from_edm_sigma(np.exp(np.interp(u, np.arange(s.size), np.log(s))))
    t[0] = sde.T  # the table's first level is the prior's: start exactly at T
    return tuple(float(v) for v in t)


def fit(
    key: jax.Array,
    sde: SDE,
    score_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_T: jax.Array,
    sampler,
    *,
    eps: float | None = None,
    nfe: int | None = None,
    target: jax.Array | None = None,
    teacher_steps: int = 256,
    num_iters: int = 300,
    learning_rate: float = 0.05,
) -> Grid:
    """A grid fitted to this score function: where `sampler`'s steps should fall so that, from the paths x_T,
    it lands closest to a tight solve.

    The step locations are learnt by gradient descent through the jitted solver, as in LD3 (Tong et al. 2024,
    Sec. 3), here on the mean squared distance to the target: the grid is parametrised by its steps in the
    half log-SNR lambda (their shares of lambda(eps) - lambda(T), a softmax, so every candidate is a valid
    decreasing grid), started from the sampler's own grid and optimised with Adam; the grid of the smallest
    loss seen is returned. Judge it on other paths than x_T: it is fitted to these.

    Args:
      key: PRNG key of the solves (for stochastic samplers; fitting is meant for deterministic ones).
      sde: the forward process.
      score_fn: score_fn(x: [B, ...], t: [B]) -> [B, ...].
      x_T: [P, ...] starting points, P >= 2, e.g. prior draws.
      sampler: a `FixedStepSampler` implementing `solve_grid`; its num_steps (or `nfe`) sets the grid's size.
      eps: where the grid ends; defaults to the sampler's (`Sampler.end_time`).
      nfe: fit the grid of `sampler.with_nfe(nfe)` instead.
      target: [P, ...] the end points of a tight solve from x_T (e.g. RK45 at 1e-8); by default the sampler
        itself on a `teacher_steps`-step grid uniform in lambda (the fine teacher grid of GITS, Chen et al.
        2024), accurate to the sampler's own error there.
      teacher_steps, num_iters, learning_rate: teacher grid size, Adam iterations and step size.

    Returns:
      num_steps + 1 times from T to eps, for `dataclasses.replace(sampler, schedule=grid)`, and for any other
      fixed-step sampler of as many steps.

    Raises:
      ValueError: with fewer than 2 paths, a target of another shape, or an NFE below the sampler's minimum.
    """
    if nfe is not None:
        sampler = sampler.with_nfe(nfe)
    require(x_T.ndim >= 2 and x_T.shape[0] >= 2,
            f"fit: x_T must hold 2 or more starting points [P, ...]; got shape {tuple(x_T.shape)}.")
    require(target is None or tuple(target.shape) == tuple(x_T.shape),
            f"fit: target must be shaped like x_T {tuple(x_T.shape)}; got {getattr(target, 'shape', None)}.")
    require(isinstance(num_iters, int) and num_iters >= 1,
            f"fit: num_iters must be an integer >= 1; got {num_iters!r}.")
    eps = sampler.end_time(sde, eps)
    if target is None:
        teacher = logsnr(sde, teacher_steps, eps)
        target = jax.jit(lambda x: sampler.solve_grid(key, sde, score_fn, x, teacher))(x_T)
    ends = sde.half_log_snr(np.array([sde.T, eps]))
    grid_of = functools.partial(_grid_from_shares, sde, ends, eps)

    def loss(theta):
        diff = sampler.solve_grid(key, sde, score_fn, x_T, grid_of(theta)) - target
        return jnp.mean(jnp.sum(jnp.reshape(diff, (diff.shape[0], -1)) ** 2, axis=1))

    start = jnp.log(np.diff(sde.half_log_snr(sampler.grid(sde, eps))))
    grid = np.array(grid_of(_minimise(loss, start, num_iters, learning_rate)), np.float64)
    grid[0], grid[-1] = sde.T, eps
    return tuple(float(t) for t in grid)


def _minimise(loss: Callable[[jax.Array], jax.Array], theta: jax.Array, num_iters: int,
              learning_rate: float) -> jax.Array:
    """The parameters of least loss seen in num_iters jitted Adam steps (Kingma & Ba 2015) from theta."""
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def update(theta, state):
        value, grad = jax.value_and_grad(loss)(theta)
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(theta, updates), state, value

    state, best = optimizer.init(theta), (np.inf, theta)
    for _ in range(num_iters):
        new_theta, state, value = update(theta, state)
        best = min(best, (float(value), theta), key=lambda pair: pair[0])
        theta = new_theta
    return best[1]


# Each step keeps at least this share of its uniform share of lambda: candidate grids never have two
# coinciding times, in the float32 they are computed in.
_MIN_SHARE = 1e-3


def _grid_from_shares(sde: SDE, ends: np.ndarray, eps: float, theta: jax.Array) -> jax.Array:
    """[N + 1] times from T to eps whose steps in lambda are the shares softmax(theta): [N] of the range."""
    n = theta.shape[0]
    shares = (1.0 - _MIN_SHARE) * jax.nn.softmax(theta) + _MIN_SHARE / n
    lam = ends[0] + (ends[1] - ends[0]) * jnp.cumsum(shares)[:-1]
    inner = sde.t_from_half_log_snr(lam)
    return jnp.concatenate([jnp.full((1,), sde.T, inner.dtype), inner, jnp.full((1,), eps, inner.dtype)])


def _show(t: np.ndarray, most: int = 6) -> str:
    values = ", ".join(f"{v:.6g}" for v in np.ravel(t)[:most])
    return f"[{values}{', ...' if np.size(t) > most else ''}]"


__all__ = ["SCHEDULE_NAMES", "build_schedule", "check_grid", "fit", "from_edm_sigmas", "karras", "logsnr",
           "quadratic", "uniform"]
