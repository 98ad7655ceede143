"""Forward SDEs with Gaussian marginals: VP, sub-VP and VE (Song et al. 2021, Sec. 3.4 and App. B).

Every process here is linear, dx = f(t) x dt + g(t) dw on t in [0, T], T = 1, so its perturbation kernel is
Gaussian, x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I). Each subclass states alpha(t) and sigma(t) in closed form
together with f and g; everything else is derived from them once, here, for every SDE alike:

* the exact transition from s to t > s, x_t | x_s ~ N(alpha_{t|s} x_s, sigma_{t|s}^2 I) with
  alpha_{t|s} = alpha(t) / alpha(s) and sigma_{t|s}^2 = sigma(t)^2 - alpha_{t|s}^2 sigma(s)^2
  (the DDPM discretisation for VP, the SMLD one for VE, and the exact one for sub-VP);
* the reverse-time SDE and the probability-flow ODE for a score function (Song et al. 2021, Eqs. 6 and 13);
* Tweedie's denoiser E[x_0 | x_t] = (x_t + sigma^2 score) / alpha;
* the log signal-to-noise ratio log(alpha^2 / sigma^2), its half lambda(t) = log(alpha / sigma) (the time
  variable of DPM-Solver and UniPC), the EDM noise level sigma~ = sigma / alpha = exp(-lambda) (Karras et al.
  2022) and their inverses t(.), in closed form.

The closed forms take numpy arrays as well as JAX ones and then compute in numpy: time grids and multistep
coefficients are computed once, on the host, in float64, whatever dtype the model runs in.

Shapes: x is [B, ...] and t is [B]; per-example scalars such as alpha(t) are [B].
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scoresde.validation import require

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_broadcast(v: Array, x: Array) -> Array:
    """Reshapes a per-example v: [B] so it broadcasts against x: [B, ...]."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def array_namespace(*arrays):
    """numpy if every argument is a numpy array or scalar (host computation in float64), else jax.numpy."""
    return np if all(isinstance(a, (np.ndarray, np.generic)) for a in arrays) else jnp


class SDE(abc.ABC):
    """A linear forward SDE dx = f(t) x dt + g(t) dw with closed-form Gaussian marginals."""

    T = 1.0
    default_eps = 1e-3

    @abc.abstractmethod
    def drift_coef(self, t: Array) -> Array:
        """f(t) in dx = f(t) x dt + g(t) dw; t: [B] -> [B]."""

    @abc.abstractmethod
    def diffusion(self, t: Array) -> Array:
        """g(t); t: [B] -> [B]."""

    @abc.abstractmethod
    def log_alpha(self, t: Array) -> Array:
        """log of the marginal mean scale alpha(t) = exp(int_0^t f); t: [B] -> [B]."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """Marginal standard deviation sigma(t); t: [B] -> [B]."""

    @abc.abstractmethod
    def t_from_log_snr(self, log_snr: Array) -> Array:
        """The inverse of `log_snr`, in closed form."""

    @abc.abstractmethod
    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        """A draw from the prior p_T that sampling starts from."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) of the prior, summed over all but the batch axis: z: [B, ...] -> [B]."""

    # ----- derived quantities, shared by every SDE -----

    def alpha(self, t: Array) -> Array:
        return array_namespace(t).exp(self.log_alpha(t))

    def log_snr(self, t: Array) -> Array:
        """log(alpha(t)^2 / sigma(t)^2), decreasing in t."""
        return 2.0 * self.half_log_snr(t)

    def half_log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha(t) / sigma(t)), the time of DPM-Solver (Lu et al. 2022a, Sec. 3.1)."""
        return self.log_alpha(t) - array_namespace(t).log(self.sigma(t))

    def t_from_half_log_snr(self, lam: Array) -> Array:
        """The inverse of `half_log_snr`."""
        return self.t_from_log_snr(2.0 * lam)

    def edm_sigma(self, t: Array) -> Array:
        """The EDM noise level sigma~ = sigma(t) / alpha(t) = exp(-lambda(t)) (Karras et al. 2022, Sec. 2)."""
        return array_namespace(t).exp(-self.half_log_snr(t))

    def t_from_edm_sigma(self, edm_sigma: Array) -> Array:
        """The inverse of `edm_sigma`."""
        return self.t_from_half_log_snr(-array_namespace(edm_sigma).log(edm_sigma))

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift f(t) x: [B, ...] and diffusion g(t): [B] of the forward SDE."""
        return batch_broadcast(self.drift_coef(t), x) * x, self.diffusion(t)

    def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """Mean alpha(t) x0: [B, ...] and std sigma(t): [B] of the perturbation kernel p_{0t}(x_t | x_0)."""
        return batch_broadcast(self.alpha(t), x0) * x0, self.sigma(t)

    def transition(self, t: Array, s: Array) -> tuple[Array, Array]:
        """alpha_{t|s} and sigma_{t|s} of the exact kernel p(x_t | x_s), s < t; both [B]."""
        alpha_ts = jnp.exp(self.log_alpha(t) - self.log_alpha(s))
        var_ts = self.sigma(t) ** 2 - alpha_ts**2 * self.sigma(s) ** 2
        return alpha_ts, jnp.sqrt(jnp.maximum(var_ts, 0.0))

    def reverse_sde(self, score_fn: ScoreFn, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift f - g^2 score and diffusion g of the reverse-time SDE (Song et al. 2021, Eq. 6)."""
        drift, g = self.sde(x, t)
        return drift - batch_broadcast(g**2, x) * score_fn(x, t), g

    def probability_flow(self, score_fn: ScoreFn, x: Array, t: Array) -> Array:
        """Drift f - g^2 score / 2 of the probability-flow ODE (Song et al. 2021, Eq. 13)."""
        drift, g = self.sde(x, t)
        return drift - 0.5 * batch_broadcast(g**2, x) * score_fn(x, t)

    def denoise(self, score: Array, x: Array, t: Array) -> Array:
        """Tweedie's formula: E[x_0 | x_t] = (x_t + sigma(t)^2 score) / alpha(t) (Efron 2011)."""
        sigma2 = batch_broadcast(self.sigma(t) ** 2, x)
        return (x + sigma2 * score) / batch_broadcast(self.alpha(t), x)

    def data_prediction(self, score_fn: ScoreFn, x: Array, t: Array) -> Array:
        """The data-prediction model x0(x_t, t) = E[x_0 | x_t] of a score function: one score evaluation."""
        return self.denoise(score_fn(x, t), x, t)

    def check_eps(self, eps: float) -> None:
        require(0.0 < eps < self.T, f"eps must lie in (0, T) = (0, {self.T}); got eps={eps!r}.")


def _gaussian_prior_logp(z: Array, std: float) -> Array:
    """log N(z; 0, std^2 I), summed over all but the batch axis."""
    d = z[0].size
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
    return -0.5 * d * jnp.log(2 * jnp.pi * std**2) - 0.5 * sq / std**2


@struct.dataclass
class _BetaLinear(SDE):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min) and its integral."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)

    def __post_init__(self):
        require(
            0.0 <= self.beta_min < self.beta_max,
            f"need 0 <= beta_min < beta_max; got beta_min={self.beta_min!r}, beta_max={self.beta_max!r}.",
        )

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def beta_integral(self, t: Array) -> Array:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_beta_integral(self, b: Array) -> Array:
        """Inverts B(t) = b, the positive root of a quadratic written without cancellation."""
        slope = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + array_namespace(b).sqrt(self.beta_min**2 + 2.0 * slope * b))

    def drift_coef(self, t: Array) -> Array:
        return -0.5 * self.beta(t)

    def log_alpha(self, t: Array) -> Array:
        return -0.5 * self.beta_integral(t)

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        return _gaussian_prior_logp(z, 1.0)


@struct.dataclass
class VPSDE(_BetaLinear):
    """Variance-preserving SDE, the continuous limit of DDPM (Song et al. 2021, Eq. 11).

    dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw, alpha(t) = exp(-B(t) / 2), sigma(t)^2 = 1 - alpha(t)^2.
    """

    def diffusion(self, t: Array) -> Array:
        return jnp.sqrt(self.beta(t))

    def sigma(self, t: Array) -> Array:
        xp = array_namespace(t)
        return xp.sqrt(-xp.expm1(-self.beta_integral(t)))

    def t_from_log_snr(self, log_snr: Array) -> Array:
        # alpha^2 = sigmoid(lambda), so B(t) = -log sigmoid(lambda) = softplus(-lambda) = log(1 + e^-lambda).
        return self.t_from_beta_integral(array_namespace(log_snr).logaddexp(0.0, -log_snr))


@struct.dataclass
class SubVPSDE(_BetaLinear):
    """Sub-VP SDE (Song et al. 2021, Eq. 12): variance bounded by the VP one at every t.

    dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw, sigma(t) = 1 - alpha(t)^2.
    """

    def diffusion(self, t: Array) -> Array:
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.beta_integral(t)))

    def sigma(self, t: Array) -> Array:
        return -array_namespace(t).expm1(-self.beta_integral(t))

    def t_from_log_snr(self, log_snr: Array) -> Array:
        # With e = alpha^2 and r = exp(lambda): e / (1 - e)^2 = r, whose root in (0, 1) is
        # e = 2r / (2r + 1 + sqrt(4r + 1)); B(t) = -log e.
        xp = array_namespace(log_snr)
        r = xp.exp(log_snr)
        e = 2.0 * r / (2.0 * r + 1.0 + xp.sqrt(4.0 * r + 1.0))
        return self.t_from_beta_integral(-xp.log(e))


@struct.dataclass
class VESDE(SDE):
    """Variance-exploding SDE, the continuous limit of SMLD/NCSN (Song et al. 2021, Eq. 9).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw.
    As in Song et al., the marginal std is sigma(t) itself, so p_0 is the data smoothed by N(0, sigma_min^2):
    this keeps d sigma^2 / dt = g^2 exact on all of [0, T].
    """

    sigma_min: float = struct.field(pytree_node=False, default=0.01)
    sigma_max: float = struct.field(pytree_node=False, default=50.0)
    default_eps = 1e-5

    def __post_init__(self):
        require(
            0.0 < self.sigma_min < self.sigma_max,
            "need 0 < sigma_min < sigma_max; "
            f"got sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}.",
        )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def drift_coef(self, t: Array) -> Array:
        return jnp.zeros_like(t)

    def diffusion(self, t: Array) -> Array:
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def log_alpha(self, t: Array) -> Array:
        return array_namespace(t).zeros_like(t)

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * array_namespace(t).exp(t * self._log_ratio)

    def t_from_log_snr(self, log_snr: Array) -> Array:
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return self.sigma_max * jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        return _gaussian_prior_logp(z, self.sigma_max)


def build_sde(name: str, **kwargs) -> SDE:
    """Constructs an SDE by name: "vpsde", "subvpsde" or "vesde" (the reference's `training.sde` values)."""
    sdes = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE}
    require(name.lower() in sdes, f"unknown SDE {name!r}; valid names: {sorted(sdes)}.")
    return sdes[name.lower()](**kwargs)
