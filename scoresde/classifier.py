"""Training a noise-conditional classifier p(y | x_t, t), and using it for classifier guidance.

Classifier guidance (Song et al. 2021, Sec. 5, Eq. 14 and App. I.4; Dhariwal & Nichol 2021, Sec. 4.1) samples
p_t(x | y) through grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x), so it needs the
posterior of the label under every marginal p_t, not only under the data. The classifier is therefore trained
on the same perturbation as the score model, x_t = alpha(t) x_0 + sigma(t) z with t ~ U[eps, T] and
z ~ N(0, I), by cross-entropy on the label of x_0: the minimiser of E_t E_{x_0, y, z} [-log q(y | x_t, t)] is
the true p_t(y | x_t) at every t.

The network (`scoresde.models.classifier`) sees the input scaled to unit variance for unit-variance data,
x_t / sqrt(alpha^2 + sigma^2), and the noise level sigma / alpha of the scaled variable x_t / alpha (the
preconditioning of Karras et al. 2022, Table 1, with sigma_data = 1), so one network serves VP, sub-VP and VE.

`ClassifierObjective` has the call signature of `scoresde.objective.Objective`, (params, key, batch, train)
-> mean loss, so `scoresde.train.run` trains it unchanged; `log_prob_fn` turns trained parameters into the
`log_prob_fn(x, t) -> [B]` that `scoresde.guidance.classifier_guidance` takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scoresde.data import Batch
from scoresde.losses import uniform_time
from scoresde.sde import SDE, batch_broadcast

Array = jax.Array
LogProbFn = Callable[[Array, Array], Array]  # (x: [B, ...], t: [B]) -> log p(y | x_t, t): [B]


@dataclasses.dataclass(frozen=True)
class ClassifierObjective:
    """A noise-conditional classifier, the SDE whose marginals it classifies, and its cross-entropy loss.

    Attributes:
      model: a network of `scoresde.models.classifier`, (x, noise_label) -> logits [B, num_classes].
      sde: forward SDE.
      eps: smallest t drawn.
      center_input: feed the network 2 x - 1 (uncentred image data), as the score objective does.
    """

    model: nn.Module
    sde: SDE
    eps: float = 1e-5
    center_input: bool = False

    # A classifier is not a generative model: training takes no sample snapshots of it.
    generative = False

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def logits(
        self, params: Any, x: Array, t: Array, *, train: bool = False, rng: Array | None = None
    ) -> Array:
        """Logits of the label of x: [B, ...] at time t: [B] (x in the model's range) -> [B, num_classes]."""
        x = 2.0 * x - 1.0 if self.center_input else x
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        x_in = x / batch_broadcast(jnp.sqrt(alpha**2 + sigma**2), x)
        rngs = None if rng is None else {"dropout": rng}
        return self.model.apply({"params": params}, x_in, sigma / alpha, train=train, rngs=rngs)

    def __call__(self, params: Any, key: Array, batch: Batch, train: bool = True) -> Array:
        """Mean cross-entropy of the labels of a batch (x: [B, ...], cond: [B] int) perturbed to random t."""
        x0, labels = batch.x, batch.cond
        k_t, k_z, k_dropout = jax.random.split(key, 3)
        t = uniform_time(k_t, self.sde, x0.shape[0], self.eps, 0)
        mean, std = self.sde.marginal_prob(x0, t)
        x_t = mean + batch_broadcast(std, x0) * jax.random.normal(k_z, x0.shape, x0.dtype)
        logits = self.logits(params, x_t, t, train=train, rng=k_dropout if train else None)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    def log_posterior_fn(self, params: Any) -> Callable[[Array, Array], Array]:
        """log q(y | x_t, t) of every class: (x: [B, ...], t: [B]) -> [B, num_classes]."""
        return lambda x, t: jax.nn.log_softmax(self.logits(params, x, t), axis=-1)

    def log_prob_fn(self, params: Any, label: int | Array) -> LogProbFn:
        """log q(label | x_t, t) as a function (x: [B, ...], t: [B]) -> [B]; label: an int or [B] ints.

        Raises:
          ValueError: if an integer label lies outside [0, num_classes).
        """
        if isinstance(label, int) and not 0 <= label < self.num_classes:
            raise ValueError(f"class label must lie in [0, {self.num_classes}); got {label}.")
        log_posterior = self.log_posterior_fn(params)

        def log_prob(x: Array, t: Array) -> Array:
            labels = jnp.broadcast_to(jnp.asarray(label, jnp.int32), x.shape[:1])
            return jnp.take_along_axis(log_posterior(x, t), labels[:, None], axis=-1)[:, 0]

        return log_prob
