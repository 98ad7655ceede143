"""What a score network is trained for: its SDE, its parametrization and its loss, in one callable.

A conditional network (class labels, `num_classes` > 0, or prompts; `scoresde.models.condition`) is trained
on the batch's condition, each example's replaced by the null condition (the null class, the empty prompt)
with probability `cond_dropout`, so that one network learns both the conditional and the unconditional score
that classifier-free guidance combines (Ho & Salimans 2022, Algorithm 1). This is the one place conditions
are dropped; the losses see only a score function closed over the condition.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.data import Batch
from scoresde.losses import Loss
from scoresde.models import condition as condition_lib
from scoresde.models.parametrization import Parametrization, network_fn
from scoresde.sde import SDE, ScoreFn

Array = jax.Array
_COND_DROPOUT_STREAM = 2  # fold_in(key, 2): the losses' own split of the key stays what it was


@dataclasses.dataclass(frozen=True)
class Objective:
    """A network, the SDE it reverses, how its output becomes a score, and the loss it is trained with.

    Attributes:
      model: the Flax network; `condition_lib.condition_of(model)` says what it is conditioned on.
      sde: forward SDE.
      parametrization: turns network output into a score.
      loss: a `scoresde.losses.Loss`.
      center_input: feed the network 2 x - 1 (uncentred image data, as in the reference).
      cond_dropout: probability in [0, 1] that a training condition becomes the null one (classifier-free
        guidance); 0 trains the conditional score only. Needs a conditional model when > 0.
    """

    model: nn.Module
    sde: SDE
    parametrization: Parametrization
    loss: Loss
    center_input: bool = False
    cond_dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must lie in [0, 1]; got {self.cond_dropout}.")
        if self.cond_dropout and isinstance(self.condition_spec, condition_lib.Unconditional):
            raise ValueError(f"cond_dropout={self.cond_dropout} needs a class-conditional model "
                             "(num_classes > 0) or prompts; this one is unconditional.")

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional network; 0 for an unconditional one."""
        return self.model.num_classes

    @property
    def condition_spec(self) -> condition_lib.Condition:
        """What the network is conditioned on: nothing, class labels or prompts."""
        return condition_lib.condition_of(self.model)

    # Training draws sample snapshots of a generative model (`Experiment.snapshots_sample`).
    generative = True

    def score_fn(self, params: Any, *, cond: Array | None = None, train: bool = False,
                 rng: Array | None = None) -> ScoreFn:
        """score_fn(x, t) of the network with `params`, closed over its condition.

        Args:
          params: network parameters.
          cond: class labels, [B] or one for every example, or prompt token ids, [B, L] or [L]; None: the
            unconditional score (the null class or the empty prompt of a conditional network).
          train: dropout on, seeded by `rng`.
        """
        network = network_fn(self.model, {"params": params}, train=train, rng=rng,
                             center_input=self.center_input, cond=cond)
        return self.parametrization.score_fn(self.sde, network)

    def condition(self, key: Array, cond: Array | None, *, drop: bool = True) -> Array | None:
        """The condition a step trains on: cond: [B, ...], each example's the null condition with probability
        `cond_dropout` when `drop`; None for an unconditional model, which ignores the batch's condition."""
        if isinstance(self.condition_spec, condition_lib.Unconditional):
            return None
        if cond is None:
            raise ValueError(f"a conditional model ({self.condition_spec.what}) trains on batches that carry "
                             "them; this batch has none.")
        if not (drop and self.cond_dropout):
            return cond
        return condition_lib.drop(self.condition_spec, key, cond, self.cond_dropout)

    def __call__(self, params: Any, key: Array, batch: Batch | Array, train: bool = True) -> Array:
        """The mean loss over a batch (x: [B, ...] with its labels, or x alone); labels drop only when
        `train`."""
        batch = batch if isinstance(batch, Batch) else Batch(batch)
        k_loss, k_dropout = jax.random.split(key)
        cond = self.condition(jax.random.fold_in(key, _COND_DROPOUT_STREAM), batch.cond, drop=train)
        score_fn = self.score_fn(params, cond=cond, train=train, rng=k_dropout if train else None)
        return jnp.mean(self.loss(k_loss, self.sde, score_fn, batch.x))
