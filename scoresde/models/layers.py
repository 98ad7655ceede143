"""Building blocks shared by the score networks: initialisers, noise embeddings, residual and attention
blocks.

References:
  [DDPM]   Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", appendix B.
  [SDE]    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, "Score-Based Generative Modeling through
           Stochastic Differential Equations", appendix H.1 (NCSN++ / DDPM++).
  [Fourier] Tancik et al. 2020, "Fourier Features Let Networks Learn High Frequency Functions".
  [BigGAN] Brock, Donahue, Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural Image
           Synthesis".
  [LDM]    Rombach, Blattmann, Lorenz, Esser, Ommer 2022, "High-Resolution Image Synthesis with Latent
           Diffusion Models", Sec. 3.3 (cross-attention conditioning).

Every image tensor is NHWC, x: [B, H, W, C]; the noise embedding `temb` is [B, E].
The activation is SiLU (swish) throughout, as in every [SDE] configuration.

Precision: every layer with parameters takes Flax's `dtype` (the dtype it computes in) and `param_dtype` (the
dtype its parameters are stored in), both float32 by default; `precision(module)` hands a module's pair on to
its layers. With dtype=bfloat16 and float32 parameters (mixed precision, Micikevicius et al. 2018, "Mixed
Precision Training") each layer casts its float32 weights and its input to bfloat16; GroupNorm's statistics
and the attention softmax are still reduced in float32 (Flax and `jax.nn.dot_product_attention` do so), and
the noise-level embedding's input, frequencies and sin/cos stay float32: a bfloat16 angle 2 pi sigma W of a
few hundred radians would be off by a whole period.
"""

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde.models import condition
from scoresde.models.resample import Direction, fir_conv_2d, resample_2d

Initializer = Callable[..., jax.Array]
Dtype = Any
act = nn.silu


def precision(module: nn.Module) -> dict[str, Dtype]:
    """The compute and parameter dtypes of `module`, as keyword arguments for the layers it builds."""
    return {"dtype": module.dtype, "param_dtype": module.param_dtype}


def output(h: jax.Array) -> jax.Array:
    """A network's output in float32 whatever it computed in: losses, scores and samplers stay float32."""
    return h.astype(jnp.promote_types(h.dtype, jnp.float32))


# --------------------------------------------------------------------------------------- option checks

def check_choice(owner: str, field: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raises ValueError naming `owner.field`, the value and the allowed values unless `value in allowed`."""
    if value not in allowed:
        raise ValueError(f"{owner}.{field}={value!r} is not allowed; valid values: {tuple(allowed)}")


def check_range(owner: str, field: str, value: Any, low: float, high: float = math.inf) -> None:
    """Raises ValueError unless `value` is a number in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{owner}.{field}={value!r} is not allowed; it must be a number in [{low}, {high})")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_int(owner: str, field: str, value: Any) -> None:
    """Raises ValueError unless `value` is an int > 0."""
    if not _is_positive_int(value):
        raise ValueError(f"{owner}.{field}={value!r} is not allowed; it must be a positive int")


def check_positive_ints(owner: str, field: str, values: Sequence[Any], allow_empty: bool = False) -> None:
    """Raises ValueError unless `values` is a sequence of positive ints (non-empty unless `allow_empty`)."""
    ok = isinstance(values, (tuple, list)) and (allow_empty or len(values) > 0)
    if not ok or not all(_is_positive_int(v) for v in values):
        need = "a" if allow_empty else "a non-empty"
        raise ValueError(f"{owner}.{field}={values!r} is not allowed; "
                         f"it must be {need} tuple of positive ints")


def check_num_classes(owner: str, num_classes: Any) -> None:
    """Raises ValueError unless `num_classes` is an int >= 0 (0: an unconditional network)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{owner}.num_classes={num_classes!r} is not allowed; it must be an int >= 0 "
                         "(0: unconditional)")


def check_images(owner: str, x: jax.Array, noise_label: jax.Array, num_downsamplings: int) -> None:
    """Checks x: [B, H, W, C] with H and W divisible by 2**num_downsamplings, and noise_label: [B]."""
    factor = 2**num_downsamplings
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"{owner}: input shape {x.shape} is not allowed; it must be [B, H, W, C] with H "
                         f"and W divisible by 2**(len(ch_mult)-1) = {factor}")
    if noise_label.shape != x.shape[:1]:
        raise ValueError(f"{owner}: noise_label shape {noise_label.shape} must be [B] = {x.shape[:1]}")


# ------------------------------------------------------------------------------ initialisers and convs

def default_init(scale: float = 1.0) -> Initializer:
    """DDPM's initialiser: variance scaling, fan_avg, uniform ([DDPM] code, TF `variance_scaling`).

    A scale of 0 becomes 1e-10 so that "zero-initialised" layers still break symmetry in their fan.
    """
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def conv3x3(features: int, *, stride: int = 1, init_scale: float = 1.0, **dtypes: Dtype) -> nn.Conv:
    """3x3 `SAME` convolution with `default_init(init_scale)` and a zero bias; `dtypes`: `precision`'s."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME",
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros, **dtypes)


def dense(features: int, **dtypes: Dtype) -> nn.Dense:
    """A dense layer with `default_init()`; `dtypes`: `precision`'s."""
    return nn.Dense(features, kernel_init=default_init(), **dtypes)


def nin(features: int, *, init_scale: float = 0.1, **dtypes: Dtype) -> nn.Dense:
    """Network-in-network layer: a 1x1 convolution written as a dense map over the channel axis.

    [DDPM] uses it with `init_scale=0.1` for attention projections and shortcuts; a 1x1 convolution with
    the default scale 1 (BigGAN shortcut, `Combine`) is the same layer with `init_scale=1.0`.
    """
    return nn.Dense(features, kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros, **dtypes)


def group_norm(x: jax.Array, **dtypes: Dtype) -> jax.Array:
    """GroupNorm with min(C // 4, 32) groups ([SDE]; the same 32 groups as [DDPM] once C >= 128); its
    statistics are reduced in float32 whatever `dtypes` (`precision`'s) say."""
    channels = x.shape[-1]
    groups = min(channels // 4, 32)
    if groups == 0 or channels % groups:
        raise ValueError(f"GroupNorm over {channels} channels needs min(C // 4, 32) = {groups} groups "
                         "to divide C; choose nf and ch_mult so that every channel count allows that")
    return nn.GroupNorm(num_groups=groups, **dtypes)(x)


def residual_sum(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
    """x + h, divided by sqrt(2) when `skip_rescale` to keep unit variance ([SDE] appendix H.1)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


def divide_by_sigma(h: jax.Array, sigma: jax.Array) -> jax.Array:
    """h / sigma per example: the score of N(x; mean, sigma^2 I) scales as 1/sigma (NCSN, Song & Ermon 2020).

    h: [B, ...]; sigma: [B].
    """
    return h / sigma.reshape(sigma.shape + (1,) * (h.ndim - 1))


# ------------------------------------------------------------------------------------ noise embeddings

def sinusoidal_embedding(t: jax.Array, dim: int, max_positions: float = 10_000.0) -> jax.Array:
    """Transformer sinusoidal embedding of a scalar label ([DDPM] appendix B; Vaswani et al. 2017, sec. 3.5).

    t: [B] -> [B, dim] = [sin(t w_k), cos(t w_k)] with w_k = max_positions^(-k / (dim/2 - 1)); odd dims get a
    zero column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [Fourier]: [sin(2 pi x W), cos(2 pi x W)], W ~ N(0, scale^2) of shape [D, E].

    The frequencies `W` live in `params` (as in the reference, so parameter counts agree) but never receive
    gradients. x: [B] (a scalar per example, W: [E]) or [B, D] -> [B, 2 * embedding_size], computed in
    float32 (or x's dtype, if wider) whatever the network around it computes in.
    """

    embedding_size: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        shape = x.shape[1:] + (self.embedding_size,)
        w = self.param("W", nn.initializers.normal(stddev=self.scale), shape)
        proj = 2 * jnp.pi * jnp.tensordot(x, jax.lax.stop_gradient(w), axes=x.ndim - 1)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


EMBEDDING_TYPES = ("fourier", "positional")


class NoiseEmbedding(nn.Module):
    """Noise-label embedding then Dense-SiLU-Dense ([DDPM] appendix B, [SDE] appendix H.1).

    "positional" embeds the label itself (999 t for VP / sub-VP); "fourier" embeds log(label), so the label
    must be the noise scale sigma(t) > 0 (VE). noise_label: [B] -> [B, features]; the label and its
    sinusoidal or Fourier features are float32, the two dense layers compute in `dtype`.
    """

    embedding_type: str
    embedding_dim: int
    features: int
    fourier_scale: float = 16.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_label: jax.Array) -> jax.Array:
        if self.embedding_type == "fourier":
            label = noise_label.astype(jnp.promote_types(noise_label.dtype, jnp.float32))
            emb = GaussianFourierProjection(self.embedding_dim, self.fourier_scale)(jnp.log(label))
        else:
            emb = sinusoidal_embedding(noise_label, self.embedding_dim)
        emb = dense(self.features, **precision(self))(emb)
        return dense(self.features, **precision(self))(act(emb))


class ClassEmbedding(nn.Module):
    """A learned vector per class, plus one for the "null" class (index `num_classes`): the unconditional
    score that classifier-free guidance needs (Ho & Salimans 2022, Sec. 3.2, one network for both).

    cond: [B] int labels in [0, num_classes] -> [B, features], added to the noise embedding as in the
    class-conditional U-Nets of Dhariwal & Nichol 2021 (App. A).
    """

    num_classes: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cond: jax.Array) -> jax.Array:
        return nn.Embed(self.num_classes + 1, self.features, **precision(self))(cond)


def embed_condition(owner: str, num_classes: int, temb: jax.Array, cond: Optional[jax.Array],
                    **dtypes: Dtype) -> jax.Array:
    """temb + the class embedding of `cond` ([B] labels, or None for the null class) for a class-conditional
    network (`num_classes` > 0); an unconditional one (num_classes = 0) returns temb as it is and refuses
    labels. temb: [B, E]; `dtypes`: `precision`'s."""
    labels = condition.batch(condition.ClassLabels(num_classes) if num_classes else condition.Unconditional(),
                             owner, cond, temb.shape[0])
    if labels is None:
        return temb
    return temb + ClassEmbedding(num_classes, temb.shape[-1], **dtypes)(labels)


# ----------------------------------------------------------------------------------- resampling layers

class FIRConv(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling by 2 (StyleGAN2, used by [SDE] with `fir=True`).

    x: [B, H, W, C] -> [B, 2H, 2W, features] ("up") or [B, H/2, W/2, features] ("down").
    """

    features: int
    direction: Direction
    fir_kernel: Sequence[int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", default_init(), (3, 3, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, weight, bias = nn.dtypes.promote_dtype(x, weight, bias, dtype=self.dtype)
        return fir_conv_2d(x, weight, self.direction, self.fir_kernel) + bias


class Resample(nn.Module):
    """Up- or downsampling by 2, optionally with a 3x3 convolution ([DDPM] Upsample / Downsample, [SDE] FIR).

    Without FIR (`fir_kernel=None`): nearest-neighbour upsampling then conv, or a stride-2 conv (2x2 mean
    pool without conv). With FIR: the fused `FIRConv`, or plain FIR resampling without conv.
    x: [B, H, W, C] -> [B, 2H, 2W, out_ch] or [B, H/2, W/2, out_ch]; out_ch defaults to C and must equal C
    without conv.
    """

    direction: Direction
    out_ch: Optional[int] = None
    with_conv: bool = False
    fir_kernel: Optional[Sequence[int]] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.with_conv:
            if out_ch != x.shape[-1]:
                raise ValueError(f"Resample without conv keeps {x.shape[-1]} channels; out_ch={out_ch} needs "
                                 "with_conv=True")
            return resample_2d(x, self.direction, self.fir_kernel)
        if self.fir_kernel is not None:
            return FIRConv(out_ch, self.direction, self.fir_kernel, **precision(self))(x)
        if self.direction == "up":
            return conv3x3(out_ch, **precision(self))(resample_2d(x, "up"))
        return conv3x3(out_ch, stride=2, **precision(self))(x)


class Combine(nn.Module):
    """Merges an input-pyramid image into features ([SDE] `progressive_input="input_skip"`).

    A 1x1 conv maps x to y's channels, then the two are summed ("sum") or concatenated ("cat").
    x: [B, H, W, Cx], y: [B, H, W, Cy] -> [B, H, W, Cy] or [B, H, W, 2 Cy].
    """

    method: str = "sum"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = nin(y.shape[-1], init_scale=1.0, **precision(self))(x)
        return h + y if self.method == "sum" else jnp.concatenate([h, y], axis=-1)


# ------------------------------------------------------------------------------ residual and attention

class ResnetBlock(nn.Module):
    """Pre-activation residual block with a per-channel bias from the noise embedding.

    GroupNorm-SiLU-conv, + Dense(SiLU(temb)), GroupNorm-SiLU-dropout-conv, plus a (projected) shortcut.
    [DDPM]'s block (`resample=None`, NIN shortcut `shortcut_init_scale=0.1`, used only when the channel
    count changes) or [SDE]'s BigGAN-type block [BigGAN], which resamples both paths after the first
    activation and projects the shortcut with a 1x1 conv (`shortcut_init_scale=1.0`) whenever the shape
    changes. x: [B, H, W, C], temb: [B, E] or None -> [B, H', W', out_ch].
    """

    out_ch: Optional[int] = None
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    resample: Optional[Direction] = None
    fir_kernel: Optional[Sequence[int]] = None
    shortcut_init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array], train: bool) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        dtypes = precision(self)
        h = act(group_norm(x, **dtypes))
        if self.resample is not None:
            h = resample_2d(h, self.resample, self.fir_kernel)
            x = resample_2d(x, self.resample, self.fir_kernel)
        h = conv3x3(out_ch, **dtypes)(h)
        if temb is not None:
            h = h + dense(out_ch, **dtypes)(act(temb))[:, None, None, :]
        h = act(group_norm(h, **dtypes))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(out_ch, init_scale=self.init_scale, **dtypes)(h)
        if x.shape[-1] != out_ch or self.resample is not None:
            x = nin(out_ch, init_scale=self.shortcut_init_scale, **dtypes)(x)
        return residual_sum(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection ([DDPM] appendix B).

    x: [B, H, W, C] -> [B, H, W, C]; the output projection starts at `init_scale` (0 in [DDPM]).
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        dtypes = precision(self)
        h = group_norm(x, **dtypes)
        q, k, v = (nin(c, **dtypes)(h).reshape(b, height * width, 1, c) for _ in range(3))
        h = jax.nn.dot_product_attention(q, k, v).reshape(x.shape)  # its softmax runs in float32
        h = nin(c, init_scale=self.init_scale, **dtypes)(h)
        return residual_sum(x, h, self.skip_rescale)


def attention(num_heads: int, features: int, *, init_scale: float = 1.0) -> nn.MultiHeadDotProductAttention:
    """Multi-head dot-product attention (Vaswani et al. 2017) with `features` channels in and out; the output
    projection starts at `default_init(init_scale)`."""
    return nn.MultiHeadDotProductAttention(num_heads=num_heads, qkv_features=features, out_features=features,
                                           kernel_init=default_init(), out_kernel_init=default_init(init_scale))


def key_mask(mask: jax.Array) -> jax.Array:
    """[B, L] True for keys to attend to -> the [B, 1, 1, L] mask of `attention` (every query, every head).

    Masked keys get weight exactly 0 (their logits are replaced before the softmax), so their values never
    reach the output."""
    return mask[:, None, None, :]


class CrossAttnBlock(nn.Module):
    """Cross-attention from image features to a token sequence, with a residual connection ([LDM] Sec. 3.3).

    Queries come from the GroupNorm-ed pixels, keys and values from the context tokens (a text encoder's
    features); masked tokens (padding) are never attended to and their features are zeroed first, so
    whatever they hold never reaches the output. x: [B, H, W, C], context: [B, L, D], mask:
    [B, L] bool (True: attend) -> [B, H, W, C]; the output projection starts at `init_scale` (0: the block
    starts as the identity).
    """

    num_heads: int = 1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"CrossAttnBlock: {c} channels do not split into num_heads={self.num_heads}")
        q = group_norm(x).reshape(b, height * width, c)
        context = jnp.where(mask[..., None], context, 0.0)  # masked tokens' values, even NaN, reach nothing
        h = attention(self.num_heads, c, init_scale=self.init_scale)(q, context, mask=key_mask(mask))
        return residual_sum(x, h.reshape(x.shape), self.skip_rescale)
