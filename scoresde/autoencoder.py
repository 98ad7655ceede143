"""Training a KL-regularised autoencoder, and the latent space it defines.

The first stage of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G): the encoder gives a diagonal
Gaussian posterior q(z | x) = N(mu(x), diag(sigma(x)^2)), a latent z ~ q(z | x) is drawn by
reparametrisation, z = mu + sigma * n with n ~ N(0, I), and the loss of an image is

    L(x) = ||x - D(z)||_1 + kl_weight * KL(q(z | x) || N(0, I)),
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2),

both summed over the image's pixels and latent entries and averaged over the batch (their pixel-space L1
term, without the perceptual and adversarial terms that matter at 256x256). A small KL weight keeps z close
to deterministic and leaves its scale free; the score model then works on the latent scaled to unit variance,
s z with s = 1 / std(z) over the training set (Rombach et al. 2022, Sec. 4.3.2; Stable
Diffusion's 0.18215 was measured so), which `scale_factor` measures.

`AutoencoderObjective` has the call signature of `scoresde.objective.Objective`, (params, key, batch, train)
-> mean loss, so `scoresde.train.run` trains it unchanged (`training.objective="autoencoder"`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.data import Batch

Array = jax.Array
_CHUNK = 512  # examples per encoder or decoder call (`in_chunks`)


def kl_to_standard_normal(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example: [B, ...] -> [B] (Kingma & Welling 2014, App. B)."""
    terms = 0.5 * (mu**2 + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(terms.reshape(terms.shape[0], -1), axis=1)


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
    """A KL autoencoder and its loss (see the module docstring).

    Attributes:
      model: a `scoresde.models.KLAutoencoder`.
      kl_weight: weight of the KL term (`training.kl_weight`).
      center_input: the batches hold images in [0, 1] and the network sees 2 x - 1, as the score objective
        does; its reconstructions are then in [-1, 1].
    """

    model: nn.Module
    kl_weight: float
    center_input: bool = False

    # An autoencoder has nothing to sample: training takes no sample snapshots of it.
    generative = False
    num_classes = 0

    def __post_init__(self):
        if not self.kl_weight >= 0.0:
            raise ValueError(f"training.kl_weight must be >= 0; got {self.kl_weight}.")

    def network_input(self, x: Array) -> Array:
        """Images in the data's model range -> what the network sees ([-1, 1])."""
        return 2.0 * x - 1.0 if self.center_input else x

    def data_output(self, y: Array) -> Array:
        """The network's images -> the data's model range (the inverse of `network_input`)."""
        return (y + 1.0) / 2.0 if self.center_input else y

    def __call__(self, params: Any, key: Array, batch: Batch | Array, train: bool = True) -> Array:
        """The mean over a batch of x: [B, H, W, C] of L1 reconstruction error plus kl_weight times the KL."""
        x = self.network_input(batch.x if isinstance(batch, Batch) else batch)
        noise = jax.random.normal(key, x.shape[:1] + self.model.latent_shape(x.shape[1:]), x.dtype)
        reconstruction, mu, logvar = self.model.apply({"params": params}, x, noise)
        error = jnp.sum(jnp.abs(x - reconstruction).reshape(x.shape[0], -1), axis=1)
        return jnp.mean(error + self.kl_weight * kl_to_standard_normal(mu, logvar))

    def posterior(self, params: Any, x: Array) -> tuple[Array, Array]:
        """Mean and log-variance of q(z | x) for images x: [B, H, W, C] in the data's model range."""
        return self.model.apply({"params": params}, self.network_input(x), method="encode")

    def decode(self, params: Any, z: Array) -> Array:
        """Images in the data's model range decoded from latents z: [B, h, w, c]."""
        return self.data_output(self.model.apply({"params": params}, z, method="decode"))


def in_chunks(fn: Callable[[Any, Array], Any], params: Any, x: np.ndarray) -> Any:
    """fn(params, x) for x: [N, ...], jitted and computed on _CHUNK examples at a time (the last padded with
    zeros), so that one example's result does not depend on how many are computed with it; numpy arrays."""
    jitted = jax.jit(fn)
    parts = [jax.tree_util.tree_map(lambda y, n=len(x[i:i + _CHUNK]): np.asarray(y)[:n],
                                    jitted(params, _padded(x[i:i + _CHUNK])))
             for i in range(0, max(len(x), 1), _CHUNK)]
    return jax.tree_util.tree_map(lambda *ys: np.concatenate(ys), *parts)


def _padded(x: np.ndarray) -> np.ndarray:
    """x padded with zeros to _CHUNK examples: one compiled shape for every chunk."""
    return np.concatenate([x, np.zeros((_CHUNK - len(x),) + x.shape[1:], x.dtype)])


def scale_factor(latents: np.ndarray) -> float:
    """s = 1 / std of every entry of the training latents [N, ...] (Rombach et al. 2022, Sec. 4.3.2), in
    float64; the score model trains on s z, of unit variance."""
    std = float(np.std(np.asarray(latents, np.float64)))
    if not np.isfinite(std) or std <= 0.0:
        raise ValueError(f"the autoencoder's training latents have standard deviation {std}; they cannot be "
                         "scaled to unit variance (retrain it, or with a smaller training.kl_weight).")
    return 1.0 / std
