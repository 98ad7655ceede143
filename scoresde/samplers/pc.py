"""Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Sec. 4.2, Algorithms 2-5).

At each grid step t -> s (s < t) the corrector first runs `n_corrector_steps` rounds of score-based MCMC at
time t, then the predictor takes one step of a reverse-SDE solver from t to s. Predictors and correctors are
written once against the SDE's alpha(t), sigma(t) and its exact transition x_t | x_s, so each works with every
SDE: for VP the reverse-diffusion and ancestral steps reduce to DDPM's, for VE to SMLD's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from scoresde.samplers.base import FixedStepSampler, as_int, per_example, require, scan_grid
from scoresde.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array


# ----- predictors: (key, sde, score_fn, x, t, s) -> x at time s; t, s: [B] -----


def euler_maruyama(key, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, s: Array) -> Array:
    """x_s = x_t + [f - g^2 score] dt + g sqrt(|dt|) z with dt = s - t < 0."""
    drift, g = sde.reverse_sde(score_fn, x, t)
    dt = batch_broadcast(s - t, x)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + drift * dt + batch_broadcast(g, x) * jnp.sqrt(-dt) * noise


def reverse_diffusion(key, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, s: Array) -> Array:
    """Reverse of the discretised forward step x_t = alpha_{t|s} x_s + sigma_{t|s} z (Song et al. 2021,
    Eq. 46).
    """
    alpha_ts, sigma_ts = (batch_broadcast(v, x) for v in sde.transition(t, s))
    noise = jax.random.normal(key, x.shape, x.dtype)
    return (2.0 - alpha_ts) * x + sigma_ts**2 * score_fn(x, t) + sigma_ts * noise


def ancestral(key, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, s: Array) -> Array:
    """Ancestral sampling: draws x_s from q(x_s | x_t, x_0) with x_0 = E[x_0 | x_t] (Ho et al. 2020,
    Eqs. 6-7).

    The posterior of the exact kernels is Gaussian with mean
    (alpha_{t|s} sigma_s^2 x_t + alpha_s sigma_{t|s}^2 x_0) / sigma_t^2 and variance
    sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
    """
    alpha_ts, sigma_ts = (batch_broadcast(v, x) for v in sde.transition(t, s))
    sigma_t2, sigma_s2 = (batch_broadcast(sde.sigma(u) ** 2, x) for u in (t, s))
    alpha_s = batch_broadcast(sde.alpha(s), x)
    x0 = sde.denoise(score_fn(x, t), x, t)
    mean = (alpha_ts * sigma_s2 * x + alpha_s * sigma_ts**2 * x0) / sigma_t2
    noise = jax.random.normal(key, x.shape, x.dtype)
    return mean + jnp.sqrt(sigma_ts**2 * sigma_s2 / sigma_t2) * noise


def no_predictor(key, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, s: Array) -> Array:
    return x


PREDICTORS = {
    "euler_maruyama": (euler_maruyama, 1),
    "reverse_diffusion": (reverse_diffusion, 1),
    "ancestral": (ancestral, 1),
    "none": (no_predictor, 0),
}


# ----- correctors: (key, sde, score_fn, x, t, s, snr, axis_name) -> x at time t -----


def _batch_mean(v: Array, axis_name: Any) -> Array:
    """Mean over the batch, and over the devices of `axis_name` inside a caller's pmap."""
    m = jnp.mean(v)
    return m if axis_name is None else lax.pmean(m, axis_name)


def _langevin_update(key, x: Array, grad: Array, step: Array) -> Array:
    noise = jax.random.normal(key, x.shape, x.dtype)
    step = batch_broadcast(step, x)
    return x + step * grad + jnp.sqrt(2.0 * step) * noise


def langevin(key, sde: SDE, score_fn: ScoreFn, x, t, s, snr: float, axis_name: Any) -> Array:
    """Langevin corrector with the signal-to-noise step rule (Song et al. 2021, Algorithms 4 and 5).

    step = 2 alpha (snr ||z|| / ||score||)^2, both norms averaged over the batch (and devices), z the very
    noise of this update; alpha is the one-step mean decay alpha_{t|s}^2 (1 - beta_i for VP, 1 for VE).
    """
    grad = score_fn(x, t)
    noise_norm = jnp.linalg.norm(jax.random.normal(key, x.shape, x.dtype).reshape(x.shape[0], -1), axis=-1)
    grad_norm = jnp.linalg.norm(grad.reshape(x.shape[0], -1), axis=-1)
    ratio = _batch_mean(noise_norm, axis_name) / _batch_mean(grad_norm, axis_name)
    alpha = sde.transition(t, s)[0] ** 2
    return _langevin_update(key, x, grad, 2.0 * alpha * (snr * ratio) ** 2)


def annealed_langevin(key, sde: SDE, score_fn: ScoreFn, x, t, s, snr: float, axis_name: Any) -> Array:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): step = 2 alpha (snr sigma(t))^2."""
    alpha = sde.transition(t, s)[0] ** 2
    return _langevin_update(key, x, score_fn(x, t), 2.0 * alpha * (snr * sde.sigma(t)) ** 2)


def no_corrector(key, sde: SDE, score_fn: ScoreFn, x, t, s, snr: float, axis_name: Any) -> Array:
    return x


CORRECTORS = {
    "langevin": (langevin, 1),
    "ald": (annealed_langevin, 1),
    "none": (no_corrector, 0),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PC(FixedStepSampler):
    """Predictor-corrector sampler (Song et al. 2021, Algorithm 1).

    Args:
      predictor: one of "euler_maruyama", "reverse_diffusion", "ancestral", "none".
      corrector: one of "langevin", "ald", "none".
      snr: target signal-to-noise ratio of the corrector's Langevin steps, > 0.
      n_corrector_steps: corrector rounds per grid step, >= 1.
      num_steps: grid steps from T to eps.
      schedule: time grid, see `scoresde.schedules`.
    """

    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    n_corrector_steps: int = 1
    num_steps: int = 1000

    def __post_init__(self):
        super().__post_init__()
        require(
            self.predictor in PREDICTORS,
            f"PC: unknown predictor {self.predictor!r}; valid names: {list(PREDICTORS)}.",
        )
        require(
            self.corrector in CORRECTORS,
            f"PC: unknown corrector {self.corrector!r}; valid names: {list(CORRECTORS)}.",
        )
        require(self.snr > 0, f"PC: snr must be > 0; got snr={self.snr!r}.")
        object.__setattr__(self, "n_corrector_steps", as_int(self.n_corrector_steps))
        require(
            isinstance(self.n_corrector_steps, int) and self.n_corrector_steps >= 1,
            f"PC: n_corrector_steps must be an integer >= 1; got {self.n_corrector_steps!r}.",
        )

    def step_fn(self, key: Array, sde: SDE, score_fn: ScoreFn, axis_name: Any = None):
        """One grid step t -> s, (x, i, t, s) -> x: the corrector rounds at t, then the predictor."""
        predict, _ = PREDICTORS[self.predictor]
        correct, corrector_nfe = CORRECTORS[self.corrector]

        def step(x, i, t, s):
            k_pred, k_corr = jax.random.split(jax.random.fold_in(key, i))
            t, s = per_example(t, x), per_example(s, x)
            for j in range(self.n_corrector_steps if corrector_nfe else 0):
                x = correct(jax.random.fold_in(k_corr, j), sde, score_fn, x, t, s, self.snr, axis_name)
            return predict(k_pred, sde, score_fn, x, t, s)

        return step

    @property
    def stochastic(self) -> bool:
        return self.predictor != "none" or self.corrector != "none"

    def nfe(self) -> int:
        """One evaluation per predictor step and one per corrector round, unless they are "none"."""
        per_step = PREDICTORS[self.predictor][1] + self.n_corrector_steps * CORRECTORS[self.corrector][1]
        return self.num_steps * per_step

    def solve_grid(self, key, sde, score_fn, x, ts, axis_name=None, constraint=None):
        return scan_grid(self.step_fn(key, sde, score_fn, axis_name), x, ts, constraint)
