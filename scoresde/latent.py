"""An autoencoder wrapped around a score model: encode for training, decode after sampling.

Latent diffusion (Rombach et al. 2022, Sec. 3-4): a frozen, trained KL autoencoder (`scoresde.autoencoder`)
maps each image x to the posterior mean mu(x) of its latent, and the score model is trained on the scaled
latents s mu(x), s = 1 / std of the training latents (`autoencoder.scale_factor`), with the images' labels
kept. Its samples z are decoded, D(z / s), into images. The latent score is a score function like any other,
so every sampler, guidance transform and likelihood applies to it unchanged; a likelihood so computed is the
density of the scaled latent s mu(x), not of the image.

The posterior mean, not a draw from q(z | x): with a small KL weight the posterior's spread is far below the
latents' own (README, "Latent diffusion", has the measured ratio), and a fixed latent per image keeps every
batch a pure function of (seed, step), as for every other dataset, so a resumed run repeats an uninterrupted
one bit for bit; the latents are computed once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from scoresde import checkpoint, data as data_lib
from scoresde.autoencoder import AutoencoderObjective, in_chunks, scale_factor

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSpace:
    """A trained autoencoder's latent space for a set of images.

    Attributes:
      workdir: the autoencoder's run.
      step: the step of its checkpoint read (its final one).
      objective: its objective (network and input map); params: its EMA parameters.
      centered: the autoencoder saw images in [-1, 1] (its data.centered), else in [0, 1].
      images: the images encoded, in the stored range [0, 1], with their labels.
      scale: s = 1 / std of the training images' latents.
      dataset: the scaled latents s mu(x) of `images`' train and test splits, with the same labels and
        conditions (class labels or prompts), served as given (not as images: no rescaling, no
        dequantization).
    """

    workdir: str
    step: int
    objective: AutoencoderObjective
    params: Any
    centered: bool
    images: data_lib.Dataset
    scale: float
    dataset: data_lib.Dataset

    def encode(self, x: Array) -> Array:
        """The scaled latents s mu(x) of images x: [B, H, W, C] in [0, 1]."""
        return self.scale * _posterior_mean(self.objective, self.centered)(self.params, x)

    def record(self) -> dict:
        """What identifies the autoencoder: its checkpoint's step and the CRC-32 of its EMA parameters'
        record (`checkpoint.leaf_record`), kept beside a latent run so that it is never decoded by
        another autoencoder (`scoresde.workdir.check_autoencoder`)."""
        return {"step": self.step, "ema_params_crc32": checkpoint.leaf_record(self.params)["crc"]}

    def decode(self, z: Array) -> Array:
        """Images in [0, 1] (not clipped) decoded from scaled latents z: [B, h, w, c], D(z / s)."""
        x = self.objective.decode(self.params, z / self.scale)
        return data_lib.inverse_scaler(self.centered)(x)


def build_latent_space(workdir: str, step: int, objective: AutoencoderObjective, params: Any, centered: bool,
                       images: data_lib.Dataset) -> LatentSpace:
    """Encodes `images` (train and test) with the autoencoder and measures the scale on the training latents.

    Args:
      workdir: the autoencoder's run, for messages; step: its checkpoint's step.
      objective, params: the trained autoencoder (EMA parameters).
      centered: whether it was trained on images in [-1, 1].
      images: the data of the latent score run.
    """
    def latents(x):
        return in_chunks(_posterior_mean(objective, centered), params, x)

    train = latents(images.train)
    scale = scale_factor(train)
    dataset = data_lib.Dataset(
        name=f"{images.name} latents", train=(scale * train).astype(np.float32),
        test=(scale * latents(images.test)).astype(np.float32), train_labels=images.train_labels,
        test_labels=images.test_labels, train_cond=images.train_cond, test_cond=images.test_cond,
        is_image=False, seed=images.seed)
    return LatentSpace(workdir, step, objective, params, centered, images, scale, dataset)


def _posterior_mean(objective: AutoencoderObjective, centered: bool) -> Callable[[Any, Array], Array]:
    """(params, images x: [B, H, W, C] in [0, 1]) -> mu(x), the autoencoder's posterior mean."""
    return lambda params, x: objective.posterior(params, data_lib.scaler(centered)(x))[0]
