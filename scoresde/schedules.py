"""Time grids for fixed-step samplers, from T down to eps.

A grid is a decreasing array t_0 = T > t_1 > ... > t_N = eps of N + 1 times; step i goes from t_i to t_{i+1}.
Grids that are uniform in some other variable (the noise level sigma/alpha, the log-SNR) are mapped back to t
through the SDE's closed-form inverse `t_from_log_snr`, so every grid works for every SDE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde.sde import SDE

Array = jax.Array


def uniform(sde: SDE, num_steps: int, eps: float) -> Array:
    """Uniform in t (Song et al. 2021)."""
    return jnp.linspace(sde.T, eps, num_steps + 1)


def quadratic(sde: SDE, num_steps: int, eps: float) -> Array:
    """Uniform in sqrt(t - eps): denser near the data (the "quad" grid of DDIM, Song et al. 2021a,
    App. D.2).
    """
    u = jnp.linspace(1.0, 0.0, num_steps + 1)
    return eps + (sde.T - eps) * u**2


def karras(sde: SDE, num_steps: int, eps: float, rho: float = 7.0) -> Array:
    """Uniform in (sigma/alpha)^(1/rho) (Karras et al. 2022, Eq. 5), the noise level of the EDM ODE."""
    end_points = jnp.array([sde.T, eps])
    inv_rho = jnp.exp(-0.5 * sde.log_snr(end_points) / rho)
    u = jnp.linspace(0.0, 1.0, num_steps + 1)
    noise_level = (inv_rho[0] + u * (inv_rho[1] - inv_rho[0])) ** rho
    return _from_log_snr(sde, -2.0 * jnp.log(noise_level), eps)


def logsnr(sde: SDE, num_steps: int, eps: float) -> Array:
    """Uniform in the log-SNR lambda(t) (Lu et al. 2022, DPM-Solver, Sec. 3.3)."""
    lam = sde.log_snr(jnp.array([sde.T, eps]))
    return _from_log_snr(sde, jnp.linspace(lam[0], lam[1], num_steps + 1), eps)


def _from_log_snr(sde: SDE, lam: Array, eps: float) -> Array:
    # Pin the end points so round-off in t(lambda(t)) never moves them.
    t = sde.t_from_log_snr(lam)
    return t.at[0].set(sde.T).at[-1].set(eps)


_SCHEDULES = {"uniform": uniform, "quadratic": quadratic, "karras": karras, "logsnr": logsnr}
SCHEDULE_NAMES = tuple(_SCHEDULES)


def check_schedule(name: str) -> None:
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {list(SCHEDULE_NAMES)}.")


def build_schedule(name: str, sde: SDE, num_steps: int, eps: float) -> Array:
    """The named time grid: [num_steps + 1], from T to eps."""
    check_schedule(name)
    return _SCHEDULES[name](sde, num_steps, eps)
