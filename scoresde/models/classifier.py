"""Noise-conditional classifiers p(y | x_t, t): logits of a label given a perturbed input and its noise level.

Classifier guidance (Song et al. 2021, Sec. 5 and App. I.4; Dhariwal & Nichol 2021, Sec. 4) adds
grad_x log p(y | x_t, t) to an unconditional score, so the classifier must see every noise level the sampler
visits. These networks take (x, noise_label) like the score networks, with the noise label the level
sigma(t) / alpha(t) of the scaled variable x / alpha (as EDM's preconditioning, Karras et al. 2022), embedded
by Gaussian Fourier features of its log; `scoresde.classifier.ClassifierObjective` chooses the label and the
input scaling and trains them.

* `ClassifierMLP`: points [B, D], the residual blocks of `ScoreMLP` and a linear read-out.
* `ClassifierConvNet`: images [B, H, W, C], the downsampling half of a DDPM++ U-Net (BigGAN-type residual
  blocks, Song et al. 2021 App. H.1), global average pooling and a linear read-out — the shape of Dhariwal &
  Nichol's classifier (their App. A) without its attention pooling.

Call: x, noise_label: [B] (> 0) -> logits [B, num_classes] in float32; `train` switches dropout on. Both take
Flax's `dtype` (what the layers compute in) and `param_dtype` (what their parameters are stored in); see
`layers.precision`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models.layers import (Dtype, NoiseEmbedding, ResnetBlock, act, check_images, check_positive_int,
                                    check_positive_ints, check_range, conv3x3, dense, group_norm, output,
                                    precision)
from scoresde.models.mlp import MLPBlock


class ClassifierMLP(nn.Module):
    """Residual MLP classifier of points at a noise level.

    Attributes:
      num_classes: number of labels (no default: a config names it, `model.num_classes`).
      width: hidden and embedding width.
      depth: number of residual blocks.
      fourier_scale: standard deviation of the frequencies applied to log(noise_label).
    """

    num_classes: int
    width: int = 128
    depth: int = 2
    fourier_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        for field in ("num_classes", "width", "depth"):
            check_positive_int("ClassifierMLP", field, getattr(self, field))
        check_range("ClassifierMLP", "fourier_scale", self.fourier_scale, 0.0)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, noise_label: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 2 or noise_label.shape != x.shape[:1]:
            raise ValueError(f"ClassifierMLP: needs x: [B, D] and noise_label: [B], "
                             f"got {x.shape} and {noise_label.shape}")
        dtypes = precision(self)
        temb = NoiseEmbedding("fourier", self.width, self.width, self.fourier_scale, **dtypes)(noise_label)
        h = dense(self.width, **dtypes)(x)
        for _ in range(self.depth):
            h = MLPBlock(self.width, **dtypes)(h, temb)
        return output(dense(self.num_classes, **dtypes)(act(h)))


class ClassifierConvNet(nn.Module):
    """Convolutional classifier of images at a noise level: a DDPM++ encoder, pooled.

    Attributes:
      num_classes: number of labels.
      nf: base channel count; level i has nf * ch_mult[i] channels.
      ch_mult: channel multiplier per level; the image is halved len(ch_mult) - 1 times.
      num_res_blocks: residual blocks per level before it is halved.
      dropout: dropout rate inside residual blocks.
      fourier_scale: standard deviation of the frequencies applied to log(noise_label).
    """

    num_classes: int
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    dropout: float = 0.0
    fourier_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        for field in ("num_classes", "nf", "num_res_blocks"):
            check_positive_int("ClassifierConvNet", field, getattr(self, field))
        check_positive_ints("ClassifierConvNet", "ch_mult", self.ch_mult)
        check_range("ClassifierConvNet", "dropout", self.dropout, 0.0, 1.0)
        check_range("ClassifierConvNet", "fourier_scale", self.fourier_scale, 0.0)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, noise_label: jax.Array, train: bool = False) -> jax.Array:
        check_images("ClassifierConvNet", x, noise_label, len(self.ch_mult) - 1)
        dtypes = precision(self)
        temb = NoiseEmbedding("fourier", self.nf, 4 * self.nf, self.fourier_scale, **dtypes)(noise_label)
        h = conv3x3(self.nf, **dtypes)(x)
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = self._block(self.nf * mult)(h, temb, train)
            if level != len(self.ch_mult) - 1:
                h = self._block(self.nf * mult, resample="down")(h, temb, train)
        h = jnp.mean(output(act(group_norm(h, **dtypes))), axis=(1, 2))  # pooled in float32
        return output(dense(self.num_classes, **dtypes)(h))

    def _block(self, out_ch: int, resample: str | None = None) -> ResnetBlock:
        # init_scale 1: a classifier's residual branches need not start at zero as a score network's output.
        return ResnetBlock(out_ch=out_ch, dropout=self.dropout, skip_rescale=True, init_scale=1.0,
                           resample=resample, shortcut_init_scale=1.0, **precision(self))
