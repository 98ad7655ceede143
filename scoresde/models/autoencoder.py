"""A small convolutional KL-regularised autoencoder: images to a diagonal Gaussian over a smaller latent image.

The first stage of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G): an encoder E maps an image x:
[H, W, C] to the mean and log-variance of q(z | x) = N(mu, diag(exp(logvar))) over z: [H / f, W / f, c],
f = 2^(len(ch_mult) - 1), and a decoder D maps z back to an image. Both are fully convolutional (residual
blocks without noise embedding, downsampling / upsampling between levels; no attention, so they apply to any
H and W divisible by f), so one network encodes single digits and two-digit canvases alike.
`scoresde.autoencoder` trains it (reconstruction plus a small KL weight) and measures its latent scale.

Call: `model.apply(variables, x, noise)` with x: [B, H, W, C] in the model's range and noise: standard-normal
draws shaped like the latent, [B, H / f, W / f, c] (or anything that broadcasts to it; zeros take the
posterior mean), returns (D(mu + exp(logvar / 2) * noise), mu, logvar). `encode` and `decode` are the two
halves (`model.apply(variables, x, method="encode")`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.layers import (ResnetBlock, act, check_positive_int, check_positive_ints, conv3x3,
                                    group_norm)
from scoresde.models.resample import resample_2d

# Bounds on the posterior's log-variance, as the reference autoencoder clamps it (Rombach et al. 2022, code).
_LOGVAR_RANGE = (-30.0, 20.0)


def _block(out_ch: int) -> ResnetBlock:
    # init_scale 1: the residual branch of an autoencoder need not start at zero as a score network's does.
    return ResnetBlock(out_ch=out_ch, dropout=0.0, skip_rescale=True, init_scale=1.0, shortcut_init_scale=1.0)


class Encoder(nn.Module):
    """x: [B, H, W, C] -> (mu, logvar): [B, H / f, W / f, latent_channels] each."""

    nf: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    latent_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = conv3x3(self.nf)(x)
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = _block(self.nf * mult)(h, None, False)
            if level != len(self.ch_mult) - 1:
                h = resample_2d(h, "down")
        moments = conv3x3(2 * self.latent_channels)(act(group_norm(h)))
        mu, logvar = jnp.split(moments, 2, axis=-1)
        return mu, jnp.clip(logvar, *_LOGVAR_RANGE)


class Decoder(nn.Module):
    """z: [B, h, w, latent_channels] -> images [B, h f, w f, out_channels]."""

    nf: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    out_channels: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = conv3x3(self.nf * self.ch_mult[-1])(z)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks):
                h = _block(self.nf * mult)(h, None, False)
            if level:
                h = resample_2d(h, "up")
        return conv3x3(self.out_channels)(act(group_norm(h)))


class KLAutoencoder(nn.Module):
    """Encoder and decoder of a KL-regularised autoencoder (Rombach et al. 2022, App. G).

    Attributes:
      out_channels: channels of the images (1 for digits).
      nf: base channel count; level i has nf * ch_mult[i] channels.
      ch_mult: channel multiplier per level; the image is halved len(ch_mult) - 1 times.
      num_res_blocks: residual blocks per level.
      latent_channels: c, the channels of the latent image.
    """

    out_channels: int = 1
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4

    def __post_init__(self) -> None:
        for field in ("out_channels", "nf", "num_res_blocks", "latent_channels"):
            check_positive_int("KLAutoencoder", field, getattr(self, field))
        check_positive_ints("KLAutoencoder", "ch_mult", self.ch_mult)
        super().__post_init__()

    def setup(self) -> None:
        self.encoder = Encoder(self.nf, tuple(self.ch_mult), self.num_res_blocks, self.latent_channels)
        self.decoder = Decoder(self.nf, tuple(self.ch_mult), self.num_res_blocks, self.out_channels)

    @property
    def factor(self) -> int:
        """f: how many times smaller the latent is than the image along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(H / f, W / f, latent_channels) of images shaped (H, W, C); ValueError unless they fit."""
        height, width, channels = image_shape
        if height % self.factor or width % self.factor or channels != self.out_channels:
            raise ValueError(f"KLAutoencoder: images shaped {tuple(image_shape)} do not fit it: it takes "
                             f"{self.out_channels} channels and sides divisible by f = {self.factor}.")
        return height // self.factor, width // self.factor, self.latent_channels

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [B, H, W, C] -> mean and log-variance of q(z | x), [B, H / f, W / f, latent_channels] each."""
        if x.ndim != 4:
            raise ValueError(f"KLAutoencoder: needs images [B, H, W, C]; got shape {x.shape}.")
        self.latent_shape(x.shape[1:])
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """z: [B, h, w, latent_channels] -> images [B, h f, w f, out_channels]."""
        return self.decoder(z)

    def __call__(self, x: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(reconstruction of x from z = mu + exp(logvar / 2) * noise, mu, logvar); see the module docstring."""
        mu, logvar = self.encode(x)
        return self.decode(mu + jnp.exp(0.5 * logvar) * noise), mu, logvar
