"""NCSN++ and DDPM++: the U-Net score networks of Song et al. 2021 ("Score-Based Generative Modeling through
Stochastic Differential Equations", section 4.4 and appendix H.1).

One class serves both, as in the paper's code: NCSN++ (VE SDE) uses FIR resampling, an input pyramid
(`progressive_input="residual"`), Gaussian Fourier features of log sigma and `scale_by_sigma=True`; DDPM++
(VP / sub-VP SDEs) uses none of these. Both use BigGAN-type residual blocks with `skip_rescale` and
zero-initialised output layers (`init_scale=0`).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models import condition
from scoresde.models.layers import (EMBEDDING_TYPES, AttnBlock, Combine, CrossAttnBlock, Dtype, NoiseEmbedding,
                                    Resample, ResnetBlock, act, check_choice, check_images,
                                    check_num_classes, check_positive_int, check_positive_ints, check_range,
                                    conv3x3, default_init, divide_by_sigma, embed_condition, group_norm,
                                    output, precision,
                                    residual_sum)
from scoresde.models.resample import Direction
from scoresde.models.text_encoder import TextEncoder, pooled

# Residual-block families; the value is the init scale of the block's shortcut projection (see ResnetBlock).
RESBLOCK_SHORTCUT_INIT = {"ddpm": 0.1, "biggan": 1.0}
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
PROMPT_CONDITIONING = ("none", "cross_attention", "pooled")
Context = Optional[tuple[jax.Array, jax.Array]]  # a text encoder's (features [B, L, D], mask [B, L])


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net (Song et al. 2021, appendix H.1), noise-conditional through `temb`.

    Defaults are DDPM++ (cifar10_ddpmpp_continuous); NCSN++ on CIFAR-10 sets `fir=True`,
    `progressive_input="residual"`, `embedding_type="fourier"`, `scale_by_sigma=True`.

    Attributes:
      nf: base channel count; level i has nf * ch_mult[i] channels.
      ch_mult: channel multiplier per resolution level; the image is halved len(ch_mult) - 1 times.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attn_resolutions: feature-map heights at which self-attention follows each residual block.
      dropout: dropout rate inside residual blocks, active only with `train=True`.
      resamp_with_conv: whether DDPM-type resampling layers include a 3x3 convolution.
      conditional: whether the network sees the noise label at all.
      fir: FIR-filtered resampling (StyleGAN2) instead of nearest / mean-pool / strided conv.
      fir_kernel: 1-D FIR taps.
      skip_rescale: divide every residual sum by sqrt(2).
      resblock_type: "biggan" (resampling inside residual blocks) or "ddpm" (separate resampling layers).
      progressive: output pyramid: "none", "output_skip" (sum of upsampled per-level outputs) or "residual".
      progressive_input: input pyramid: "none", "input_skip" (combine downsampled input) or "residual".
      progressive_combine: how "input_skip" merges the pyramid: "sum" or "cat".
      embedding_type: "fourier" (of log sigma; label must be sigma > 0) or "positional" (of the label).
      fourier_scale: standard deviation of the Fourier frequencies.
      init_scale: init scale of the layers that produce each block's and the network's output.
      scale_by_sigma: divide the output by the noise label (VE, where the label is sigma(t)).
      num_classes: 0 (unconditional), or the number of classes of a class-conditional network, whose class
        embedding (`layers.ClassEmbedding`, with a null class for the unconditional score) is added to the
        noise embedding; needs `conditional`.
      prompt_conditioning: "none", or how a prompt's tokens (`scoresde.tokenizer`) enter the network after a
        `TextEncoder` trained with it: "cross_attention" (a `CrossAttnBlock` after every residual block and
        in the middle, at the feature heights in `cross_attn_resolutions`; Rombach et al. 2022, Sec. 3.3) or
        "pooled" (the mean of the token features, projected and added to the noise embedding, as a class
        embedding is). The empty prompt is the unconditional score. Needs `conditional` and num_classes=0.
      cross_attn_resolutions: feature-map heights with cross-attention; at least one must occur.
      text_width, text_depth, text_heads: the `TextEncoder`'s width, blocks and heads (text_heads is also the
        cross-attention's number of heads).
      dtype, param_dtype: what the layers compute in and store their parameters in (`layers.precision`); the
        text encoder and cross-attention compute in float32.

    Call: x: [B, H, W, C] as given (no input rescaling), noise_label: [B], cond: [B] int labels, [B, L]
    prompt token ids, or None (the null class or the empty prompt) -> [B, H, W, C] in float32.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = False
    num_classes: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    prompt_conditioning: str = "none"
    cross_attn_resolutions: Sequence[int] = (16, 8, 4)
    text_width: int = 64
    text_depth: int = 2
    text_heads: int = 4

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "nf", self.nf)
        check_positive_ints(owner, "ch_mult", self.ch_mult)
        check_positive_int(owner, "num_res_blocks", self.num_res_blocks)
        check_positive_ints(owner, "attn_resolutions", self.attn_resolutions, allow_empty=True)
        check_positive_ints(owner, "fir_kernel", self.fir_kernel)
        check_range(owner, "dropout", self.dropout, 0.0, 1.0)
        check_range(owner, "fourier_scale", self.fourier_scale, 0.0)
        check_range(owner, "init_scale", self.init_scale, 0.0)
        check_choice(owner, "resblock_type", self.resblock_type, tuple(RESBLOCK_SHORTCUT_INIT))
        check_choice(owner, "progressive", self.progressive, PROGRESSIVE)
        check_choice(owner, "progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        check_choice(owner, "progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
        check_choice(owner, "embedding_type", self.embedding_type, EMBEDDING_TYPES)
        check_num_classes(owner, self.num_classes)
        if self.num_classes and not self.conditional:
            raise ValueError(f"{owner}.num_classes={self.num_classes} needs conditional=True: the class "
                             "embedding is added to the noise embedding")
        check_choice(owner, "prompt_conditioning", self.prompt_conditioning, PROMPT_CONDITIONING)
        check_positive_ints(owner, "cross_attn_resolutions", self.cross_attn_resolutions, allow_empty=True)
        for field in ("text_width", "text_depth", "text_heads"):
            check_positive_int(owner, field, getattr(self, field))
        if self.prompt_conditioning != "none" and (self.num_classes or not self.conditional):
            raise ValueError(f"{owner}.prompt_conditioning={self.prompt_conditioning!r} needs "
                             "conditional=True and num_classes=0")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, noise_label: jax.Array, train: bool = False,
                 cond: Optional[jax.Array] = None) -> jax.Array:
        owner = type(self).__name__
        check_images(owner, x, noise_label, len(self.ch_mult) - 1)
        temb = context = None
        if self.conditional:
            temb = NoiseEmbedding(self.embedding_type, self.nf, 4 * self.nf, self.fourier_scale,
                                  **precision(self))(noise_label)
            temb, context = self._condition(temb, cond)
        elif cond is not None:
            raise ValueError(f"{owner}: got class labels, but conditional=False leaves no embedding to add "
                             "them to")
        self._check_cross_attn(x.shape[1])
        skips = self._encode(x, temb, context, train)
        h = self._resblock()(skips[-1], temb, train)
        h = self._maybe_cross_attn(self._attn()(h), context)
        h = self._resblock()(h, temb, train)
        h = output(self._decode(h, skips, x.shape[-1], temb, context, train))
        return divide_by_sigma(h, noise_label) if self.scale_by_sigma else h

    def _condition(self, temb: jax.Array, cond: Optional[jax.Array]) -> tuple[jax.Array, Context]:
        """(temb with the class or pooled-prompt embedding added, the cross-attention context or None)."""
        owner = type(self).__name__
        if self.prompt_conditioning == "none":
            return embed_condition(owner, self.num_classes, temb, cond, **precision(self)), None
        ids = condition.batch(condition.Prompts(), owner, cond, temb.shape[0])
        features, mask = TextEncoder(self.text_width, self.text_depth, self.text_heads)(ids)
        if self.prompt_conditioning == "pooled":
            return temb + nn.Dense(temb.shape[-1], kernel_init=default_init())(pooled(features, mask)), None
        return temb, (features, mask)

    def _check_cross_attn(self, height: int) -> None:
        heights = {height // 2**level for level in range(len(self.ch_mult))}
        if self.prompt_conditioning == "cross_attention" and not heights & set(self.cross_attn_resolutions):
            raise ValueError(f"{type(self).__name__}.cross_attn_resolutions={tuple(self.cross_attn_resolutions)}"
                             f" holds none of the feature heights {sorted(heights)}: no cross-attention")

    def _encode(self, x: jax.Array, temb: Optional[jax.Array], context: Context,
                train: bool) -> list[jax.Array]:
        """Downsampling path; returns every feature map the upsampling path consumes, finest first."""
        pyramid = x
        skips = [conv3x3(self.nf, **precision(self))(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = self._resblock(self.nf * mult)(skips[-1], temb, train)
                skips.append(self._maybe_cross_attn(self._maybe_attn(h), context))
            if level != len(self.ch_mult) - 1:
                h = self._resample("down", skips[-1], temb, train)
                h, pyramid = self._merge_input_pyramid(pyramid, h)
                skips.append(h)
        return skips

    def _decode(self, h: jax.Array, skips: list[jax.Array], out_channels: int, temb: Optional[jax.Array],
                context: Context, train: bool) -> jax.Array:
        """Upsampling path (pops `skips`, coarsest first) with the optional output pyramid: [B, H, W, out]."""
        pyramid = None
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._resblock(self.nf * self.ch_mult[level])(h, temb, train)
            h = self._maybe_cross_attn(self._maybe_attn(h), context)
            if self.progressive != "none":
                h, pyramid = self._grow_output_pyramid(h, pyramid, out_channels)
            if level != 0:
                h = self._resample("up", h, temb, train)
        if self.progressive == "output_skip":
            return pyramid
        return self._output_conv(h, out_channels)

    def _merge_input_pyramid(self, pyramid: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Downsamples the input pyramid to h's resolution and merges it in; returns (h, pyramid)."""
        if self.progressive_input == "input_skip":
            pyramid = Resample("down", fir_kernel=self._fir_kernel, **precision(self))(pyramid)
            return Combine(self.progressive_combine, **precision(self))(pyramid, h), pyramid
        if self.progressive_input == "residual":
            pyramid = Resample("down", h.shape[-1], with_conv=True, fir_kernel=self._fir_kernel,
                               **precision(self))(pyramid)
            pyramid = residual_sum(pyramid, h, self.skip_rescale)
            return pyramid, pyramid
        return h, pyramid

    def _grow_output_pyramid(self, h: jax.Array, pyramid: Optional[jax.Array],
                             out_channels: int) -> tuple[jax.Array, jax.Array]:
        """Adds this level's output to the output pyramid (None below the coarsest level).

        Returns (h, pyramid); with progressive="residual" the pyramid also replaces h.
        """
        if self.progressive == "output_skip":
            out = self._output_conv(h, out_channels)
            if pyramid is None:
                return h, out
            return h, Resample("up", fir_kernel=self._fir_kernel, **precision(self))(pyramid) + out
        if pyramid is None:
            return h, conv3x3(h.shape[-1], **precision(self))(act(group_norm(h, **precision(self))))
        pyramid = Resample("up", h.shape[-1], with_conv=True, fir_kernel=self._fir_kernel,
                           **precision(self))(pyramid)
        pyramid = residual_sum(pyramid, h, self.skip_rescale)
        return pyramid, pyramid

    def _resample(self, direction: Direction, h: jax.Array, temb: Optional[jax.Array],
                  train: bool) -> jax.Array:
        """Halves or doubles the resolution: in a residual block ("biggan") or with a `Resample` ("ddpm")."""
        if self.resblock_type == "biggan":
            return self._resblock(resample=direction)(h, temb, train)
        return Resample(direction, with_conv=self.resamp_with_conv, fir_kernel=self._fir_kernel,
                        **precision(self))(h)

    def _resblock(self, out_ch: Optional[int] = None, resample: Optional[Direction] = None) -> ResnetBlock:
        return ResnetBlock(out_ch=out_ch, dropout=self.dropout, skip_rescale=self.skip_rescale,
                           init_scale=self.init_scale, resample=resample, fir_kernel=self._fir_kernel,
                           shortcut_init_scale=RESBLOCK_SHORTCUT_INIT[self.resblock_type], **precision(self))

    def _attn(self) -> AttnBlock:
        return AttnBlock(skip_rescale=self.skip_rescale, init_scale=self.init_scale, **precision(self))

    def _output_conv(self, h: jax.Array, out_channels: int) -> jax.Array:
        """GroupNorm-SiLU-conv to `out_channels`: the network's last layer, or an output pyramid level's."""
        dtypes = precision(self)
        return conv3x3(out_channels, init_scale=self.init_scale, **dtypes)(act(group_norm(h, **dtypes)))

    def _maybe_attn(self, h: jax.Array) -> jax.Array:
        return self._attn()(h) if h.shape[1] in self.attn_resolutions else h

    def _maybe_cross_attn(self, h: jax.Array, context: Context) -> jax.Array:
        if context is None or h.shape[1] not in self.cross_attn_resolutions:
            return h
        return CrossAttnBlock(self.text_heads, self.skip_rescale, self.init_scale)(h, *context)

    @property
    def _fir_kernel(self) -> Optional[tuple[int, ...]]:
        return tuple(self.fir_kernel) if self.fir else None
