"""A noise-conditional residual MLP for low-dimensional data (2-D toys, small feature vectors)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.layers import (EMBEDDING_TYPES, Dtype, GaussianFourierProjection, NoiseEmbedding, act,
                                    check_choice, check_num_classes, check_positive_int, check_range, dense,
                                    divide_by_sigma, embed_condition, output, precision)


class MLPBlock(nn.Module):
    """h + Dense(SiLU(Dense(SiLU(h)) + Dense(SiLU(temb)))): the U-Nets' `ResnetBlock` without convs or norms.

    h: [B, width], temb: [B, E] -> [B, width].
    """

    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
        y = dense(self.width, **precision(self))(act(h))
        y = y + dense(self.width, **precision(self))(act(temb))
        return h + dense(self.width, **precision(self))(act(y))


class ScoreMLP(nn.Module):
    """Time-conditioned residual MLP score network.

    The noise label is embedded as in NCSN++ / DDPM++ (Song et al. 2021, appendix H.1): "positional"
    (sinusoidal, of 999 t for VP / sub-VP) or "fourier" (Gaussian Fourier features of log sigma, VE), then
    Dense-SiLU-Dense to `width` features, which every block adds to its hidden state. With `input_features`,
    the input x is fed beside random Fourier features of itself, sin and cos of 2 pi x W with W ~ N(0,
    input_scale^2) (Tancik et al. 2020): an MLP on raw coordinates learns high-frequency structure (a
    checkerboard's edges) slowly, one on Fourier features of them much faster.

    Attributes:
      width: hidden and embedding width.
      depth: number of residual blocks.
      embedding_type: "positional" or "fourier".
      fourier_scale: standard deviation of the Fourier frequencies.
      scale_by_sigma: divide the output by the noise label (VE, where the label is sigma(t)).
      num_classes: 0 (unconditional), or the number of classes of a class-conditional network, whose class
        embedding (`layers.ClassEmbedding`, with a null class for the unconditional score) is added to the
        noise embedding.
      input_features: number of random frequencies of x (0: x alone).
      input_scale: standard deviation of those frequencies, in cycles per unit of x.
      dtype, param_dtype: what the layers compute in and store their parameters in (`layers.precision`);
        the Fourier features of x and of the noise level are float32 either way.

    Call: x: [B, D], noise_label: [B], cond: [B] int labels or None (the null class) -> [B, D] in float32;
    `train` is accepted for the common signature.
    """

    width: int = 256
    depth: int = 3
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = False
    num_classes: int = 0
    input_features: int = 0
    input_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive_int("ScoreMLP", "width", self.width)
        check_positive_int("ScoreMLP", "depth", self.depth)
        check_choice("ScoreMLP", "embedding_type", self.embedding_type, EMBEDDING_TYPES)
        check_range("ScoreMLP", "fourier_scale", self.fourier_scale, 0.0)
        check_num_classes("ScoreMLP", self.num_classes)
        if self.input_features != 0:
            check_positive_int("ScoreMLP", "input_features", self.input_features)
        check_range("ScoreMLP", "input_scale", self.input_scale, 0.0)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, noise_label: jax.Array, train: bool = False,
                 cond: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2 or noise_label.shape != x.shape[:1]:
            raise ValueError(f"ScoreMLP: needs x: [B, D] and noise_label: [B], "
                             f"got {x.shape} and {noise_label.shape}")
        dtypes = precision(self)
        temb = NoiseEmbedding(self.embedding_type, self.width, self.width, self.fourier_scale,
                              **dtypes)(noise_label)
        temb = embed_condition("ScoreMLP", self.num_classes, temb, cond, **dtypes)
        features = x
        if self.input_features:
            fourier = GaussianFourierProjection(self.input_features, self.input_scale)(x)
            features = jnp.concatenate([x, fourier], axis=-1)
        h = dense(self.width, **dtypes)(features)
        for _ in range(self.depth):
            h = MLPBlock(self.width, **dtypes)(h, temb)
        h = output(dense(x.shape[-1], **dtypes)(act(h)))
        return divide_by_sigma(h, noise_label) if self.scale_by_sigma else h
