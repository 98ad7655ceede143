"""From raw network output to a score: the one place that gives a network's output its meaning.

A network F(x, noise_label) becomes a score function score_fn(x, t) through a `Parametrization`, written once
against the SDE's alpha(t) and sigma(t) (x_t = alpha x_0 + sigma z), so every parametrization works with every
SDE:

* "epsilon": F predicts the noise z (Ho et al. 2020, Eq. 12), score = -F(x, 999 t) / sigma(t). The reference's
  VP and sub-VP models (Song et al. 2021, `models/utils.py::get_score_fn`, continuous case).
* "score": F is the score itself, conditioned on sigma(t) (NCSN, Song & Ermon 2019). The reference's VE
  models; their `scale_by_sigma` option divides F's output by its noise label, here sigma(t) as there.
* "edm": the preconditioning of Karras et al. 2022 (Table 1, Eq. 7) on the scaled variable x / alpha with
  noise level sigma / alpha: D = c_skip x + c_out F(c_in x, sigma / alpha), score = (alpha D - x) / sigma^2 by
  Tweedie's formula. F's label is sigma / alpha; a "fourier" embedding takes its log, EDM's c_noise up to a
  factor.

`network_fn` adapts a Flax model to F and applies the reference models' input map 2 x - 1 for uncentered
image data (`data.centered=False`), which our networks leave to the caller.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models import condition
from scoresde.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array
NetworkFn = Callable[[Array, Array], Array]  # (x: [B, ...], noise_label: [B]) -> [B, ...]


class Parametrization(abc.ABC):
    """Turns a network F(x, noise_label) into the score of the SDE's marginal p_t."""

    @abc.abstractmethod
    def score(self, sde: SDE, network: NetworkFn, x: Array, t: Array) -> Array:
        """grad_x log p_t(x) as the network models it: x: [B, ...], t: [B] -> [B, ...]."""

    def score_fn(self, sde: SDE, network: NetworkFn) -> ScoreFn:
        """score_fn(x, t) for the samplers, losses and likelihoods."""
        return lambda x, t: self.score(sde, network, x, t)


@dataclasses.dataclass(frozen=True)
class Epsilon(Parametrization):
    """F predicts z in x_t = alpha x_0 + sigma z: score = -F(x, label_scale t) / sigma(t) (Ho et al. 2020)."""

    label_scale: float = 999.0

    def score(self, sde, network, x, t):
        return -network(x, self.label_scale * t) / batch_broadcast(sde.sigma(t), x)


@dataclasses.dataclass(frozen=True)
class Score(Parametrization):
    """F is the score, conditioned on the noise level sigma(t) (Song & Ermon 2019; Song et al. 2021, VE)."""

    def score(self, sde, network, x, t):
        return network(x, sde.sigma(t))


@dataclasses.dataclass(frozen=True)
class EDM(Parametrization):
    """Karras et al. 2022 preconditioning (Table 1): c_skip, c_out, c_in of the noise level sigma / alpha."""

    sigma_data: float = 0.5

    def score(self, sde, network, x, t):
        alpha, sigma = batch_broadcast(sde.alpha(t), x), batch_broadcast(sde.sigma(t), x)
        noise = sde.edm_sigma(t)  # s = sigma / alpha, [B]
        s2 = batch_broadcast(noise, x) ** 2
        total = s2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = jnp.sqrt(s2) * self.sigma_data / jnp.sqrt(total)
        c_in = 1.0 / jnp.sqrt(total)
        x_scaled = x / alpha
        denoised = c_skip * x_scaled + c_out * network(c_in * x_scaled, noise)
        return (alpha * denoised - x) / sigma**2


def build_parametrization(name: str) -> Parametrization:
    """A parametrization by name: "epsilon", "score" or "edm"; the error lists the valid names."""
    parametrizations = {"epsilon": Epsilon, "score": Score, "edm": EDM}
    if name not in parametrizations:
        raise ValueError(f"unknown parametrization {name!r}; valid names: {sorted(parametrizations)}.")
    return parametrizations[name]()


def network_fn(
    model: nn.Module,
    variables: Any,
    *,
    train: bool = False,
    rng: Array | None = None,
    center_input: bool = False,
    cond: Array | None = None,
) -> NetworkFn:
    """F(x, noise_label) = model.apply(variables, x', noise_label, train=train), x' = 2 x - 1 if center_input.

    Args:
      model: a network from `scoresde.models.build_model`.
      variables: its variables, e.g. {"params": params}.
      train: training mode (dropout on); then `rng` seeds the dropout.
      rng: PRNG key for dropout.
      center_input: map data in [0, 1] to [-1, 1] before the network, as the reference's image models do when
        `data.centered` is False.
      cond: the condition the network is closed over (`scoresde.models.condition`): class labels [B] or one
        label, prompt token ids [B, L] or one prompt [L], for every example; None: none (the null class or
        the empty prompt of a conditional network).
    """
    rngs = None if rng is None else {"dropout": rng}

    def apply(x: Array, noise_label: Array) -> Array:
        x_in = 2.0 * x - 1.0 if center_input else x
        given = None if cond is None else condition.batch(
            condition.condition_of(model), type(model).__name__, jnp.asarray(cond), x.shape[0])
        return model.apply(variables, x_in, noise_label, train=train, cond=given, rngs=rngs)

    return apply
