"""Denoising score matching losses for every linear SDE, continuous and discrete.

Every loss here is one estimator of the weighted denoising score matching objective (Song et al. 2021, Eq. 7;
Vincent 2011)

    E_t lambda(t) E_{x_0, z} || s(x_t, t) + z / sigma(t) ||^2,   x_t = alpha(t) x_0 + sigma(t) z,

written as E_t w(t) || sigma(t) s(x_t, t) + z ||^2 with w = lambda / sigma^2. Losses differ only in how t is
drawn and in w:

* "dsm": t ~ U[eps, T], lambda = sigma^2, w = 1 (Song et al. 2021; the reference's default).
* "dsm_likelihood": t ~ U[eps, T], lambda = g^2, w = g^2 / sigma^2: the likelihood weighting, which makes the
  loss an upper bound on the negative log-likelihood (Song et al. 2021b, Thm. 1).
* "dsm_likelihood_importance": the same expectation, with t drawn from p(t) ~ g^2 / sigma^2 (Song et al.
  2021b, Sec. 5). For a linear SDE g^2 / sigma^2 = -d lambda_snr / dt (lambda_snr = log alpha^2 / sigma^2), so
  t is the log-SNR drawn uniformly and mapped back by `sde.t_from_log_snr`, and w is the constant
  (lambda_snr(eps) - lambda_snr(T)) / (T - eps).
* "ddpm": DDPM's epsilon-MSE over N = num_scales noise levels (Ho et al. 2020, Eq. 14): t = (i + 1) / N,
  whose VP marginal is DDPM's alpha-bar_i up to O(1/N) (Song et al. 2021, App. B); w = 1, so with the
  "epsilon" parametrization the loss is || F - z ||^2.
* "smld": the NCSN loss over N geometric noise levels sigma_min ... sigma_max (Song & Ermon 2019, Eq. 2):
  t evenly spaced on [eps, T], lambda = sigma^2.

`reduce_mean` averages the squared error over data dimensions; otherwise it is half the sum, as in the
reference. A loss returns one value per example: [B].
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from scoresde.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array
TimeSampler = Callable[[Array, SDE, int, float, int], Array]  # (key, sde, n, eps, num_scales) -> t: [n]
Weight = Callable[[SDE, Array, float], Array]  # (sde, t: [n], eps) -> w: [n]


def uniform_time(key: Array, sde: SDE, n: int, eps: float, num_scales: int) -> Array:
    """t ~ U[eps, T]."""
    return jax.random.uniform(key, (n,), minval=eps, maxval=sde.T)


def log_snr_time(key: Array, sde: SDE, n: int, eps: float, num_scales: int) -> Array:
    """t ~ p(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T]: the log-SNR uniform, mapped back to t."""
    ends = sde.log_snr(jnp.array([sde.T, eps]))
    return sde.t_from_log_snr(jax.random.uniform(key, (n,), minval=ends[0], maxval=ends[1]))


def ddpm_levels(key: Array, sde: SDE, n: int, eps: float, num_scales: int) -> Array:
    """t = (i + 1) / N with i uniform on {0, ..., N - 1}: DDPM's N noise levels."""
    return (jax.random.randint(key, (n,), 0, num_scales) + 1.0) / num_scales * sde.T


def smld_levels(key: Array, sde: SDE, n: int, eps: float, num_scales: int) -> Array:
    """t = eps + i (T - eps) / (N - 1), i uniform on {0, ..., N - 1}: for VE, SMLD's geometric sigma_min (to
    within a factor (sigma_max / sigma_min)^eps) ... sigma_max."""
    return eps + jax.random.randint(key, (n,), 0, num_scales) / max(num_scales - 1, 1) * (sde.T - eps)


def unit_weight(sde: SDE, t: Array, eps: float) -> Array:
    return jnp.ones_like(t)


def likelihood_weight(sde: SDE, t: Array, eps: float) -> Array:
    """g(t)^2 / sigma(t)^2: lambda = g^2 (Song et al. 2021b, Eq. 9) over the sigma^2 already in the error."""
    return sde.diffusion(t) ** 2 / sde.sigma(t) ** 2


def importance_weight(sde: SDE, t: Array, eps: float) -> Array:
    """The likelihood weight over the density p(t) ~ g^2 / sigma^2 it is drawn from: the normaliser of p."""
    ends = sde.log_snr(jnp.array([sde.T, eps]))
    return jnp.full_like(t, (ends[1] - ends[0]) / (sde.T - eps))


_LOSSES: dict[str, tuple[TimeSampler, Weight]] = {
    "dsm": (uniform_time, unit_weight),
    "dsm_likelihood": (uniform_time, likelihood_weight),
    "dsm_likelihood_importance": (log_snr_time, importance_weight),
    "ddpm": (ddpm_levels, unit_weight),
    "smld": (smld_levels, unit_weight),
}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A denoising score matching loss (see the module docstring); build it with `build_loss`.

    Attributes:
      name: one of "dsm", "dsm_likelihood", "dsm_likelihood_importance", "ddpm", "smld".
      reduce_mean: mean over data dimensions; False: half the sum.
      eps: smallest t of the continuous losses.
      num_scales: number of noise levels of the discrete losses.
    """

    name: str
    reduce_mean: bool = True
    eps: float = 1e-5
    num_scales: int = 1000

    def __call__(self, key: Array, sde: SDE, score_fn: ScoreFn, x0: Array) -> Array:
        """Per-example loss: x0: [B, ...] -> [B], with t and z drawn from `key`."""
        sample_time, weight = _LOSSES[self.name]
        k_t, k_z = jax.random.split(key)
        t = sample_time(k_t, sde, x0.shape[0], self.eps, self.num_scales)
        z = jax.random.normal(k_z, x0.shape, x0.dtype)
        return weight(sde, t, self.eps) * self.error(sde, score_fn, x0, t, z)

    def error(self, sde: SDE, score_fn: ScoreFn, x0: Array, t: Array, z: Array) -> Array:
        """|| sigma(t) s(x_t, t) + z ||^2, reduced over data dimensions: [B]."""
        mean, std = sde.marginal_prob(x0, t)
        sigma = batch_broadcast(std, x0)
        residual = jnp.reshape(sigma * score_fn(mean + sigma * z, t) + z, (x0.shape[0], -1)) ** 2
        return jnp.mean(residual, axis=-1) if self.reduce_mean else 0.5 * jnp.sum(residual, axis=-1)


def build_loss(name: str, *, reduce_mean: bool = True, eps: float = 1e-5, num_scales: int = 1000) -> Loss:
    """A loss by name; the error lists the valid names.

    Raises:
      ValueError: for an unknown name, eps outside (0, 1) or num_scales < 1.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(_LOSSES)}.")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"loss eps must lie in (0, T) = (0, 1); got {eps}.")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1; got {num_scales}.")
    return Loss(name, reduce_mean=reduce_mean, eps=eps, num_scales=num_scales)
