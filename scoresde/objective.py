"""What a score network is trained for: its SDE, its parametrization and its loss, in one callable."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.losses import Loss
from scoresde.models.parametrization import Parametrization, network_fn
from scoresde.sde import SDE, ScoreFn

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """A network, the SDE it reverses, how its output becomes a score, and the loss it is trained with.

    Attributes:
      model: the Flax network.
      sde: forward SDE.
      parametrization: turns network output into a score.
      loss: a `scoresde.losses.Loss`.
      center_input: feed the network 2 x - 1 (uncentred image data, as in the reference).
    """

    model: nn.Module
    sde: SDE
    parametrization: Parametrization
    loss: Loss
    center_input: bool = False

    def score_fn(self, params: Any, *, train: bool = False, rng: Array | None = None) -> ScoreFn:
        """score_fn(x, t) of the network with `params` (dropout on when `train`, seeded by `rng`)."""
        network = network_fn(self.model, {"params": params}, train=train, rng=rng,
                             center_input=self.center_input)
        return self.parametrization.score_fn(self.sde, network)

    def __call__(self, params: Any, key: Array, batch: Array, train: bool = True) -> Array:
        """The mean loss over batch: [B, ...]."""
        k_loss, k_dropout = jax.random.split(key)
        score_fn = self.score_fn(params, train=train, rng=k_dropout if train else None)
        return jnp.mean(self.loss(k_loss, self.sde, score_fn, batch))
