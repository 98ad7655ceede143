"""2-D resampling for image score networks: nearest / mean-pool and FIR (upfirdn2d), in pure JAX.

FIR resampling filters the image with a small separable low-pass kernel while changing its resolution, which
avoids the aliasing of nearest-neighbour upsampling and of strided convolutions. NCSN++ (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations", appendix H.1) takes it from
StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", appendix B), which
uses the kernel (1, 3, 3, 1).

All images are NHWC: x: [B, H, W, C]. Resampling is by a factor of 2 throughout, as in both papers.
"""

from typing import Literal, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Direction = Literal["up", "down"]
FACTOR = 2


def fir_filter(kernel: Sequence[float], gain: float = 1.0) -> np.ndarray:
    """Normalised 2-D FIR filter from a 1-D separable kernel.

    Args:
      kernel: 1-D taps, e.g. (1, 3, 3, 1).
      gain: the filter sums to `gain`, so a constant image is scaled by `gain`.

    Returns:
      [K, K] outer product of `kernel` with itself, summing to `gain`.
    """
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f"fir kernel must be a non-empty 1-D sequence, got {kernel!r}")
    k2 = np.outer(k, k)
    return k2 * (gain / k2.sum())


def upfirdn2d(x: jax.Array, filt: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """Upsample by zero insertion, pad, convolve with a FIR filter, then keep every `down`-th pixel.

    The same four steps as `scipy.signal.upfirdn`, on both spatial axes and every channel separately.
    Zeros are inserted after each pixel (so `up * H` samples before padding); a negative pad crops.

    Args:
      x: [B, H, W, C].
      filt: [K, K] FIR filter (true convolution, so it is flipped before the correlation XLA computes).
      up: zero-insertion factor.
      down: subsampling factor.
      pad: pixels added (before, after) on both spatial axes, after zero insertion.

    Returns:
      [B, H', W', C] with H' = (up * H + pad[0] + pad[1] - K) // down + 1.
    """
    lo, hi = pad
    spatial = (lo, hi + up - 1, up - 1)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), spatial, spatial, (0, 0, 0)))
    channels = x.shape[-1]
    w = jnp.asarray(filt[::-1, ::-1], x.dtype)[:, :, None, None]
    return jax.lax.conv_general_dilated(
        x, jnp.tile(w, (1, 1, 1, channels)), window_strides=(down, down), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def resample_2d(x: jax.Array, direction: Direction, kernel: Optional[Sequence[float]] = None) -> jax.Array:
    """Up- or downsample by 2 with a FIR kernel, or by nearest neighbour / 2x2 mean when `kernel` is None.

    Args:
      x: [B, H, W, C].
      direction: "up" or "down".
      kernel: 1-D FIR taps, or None.

    Returns:
      [B, 2H, 2W, C] for "up", [B, H/2, W/2, C] for "down".
    """
    b, h, w, c = x.shape
    if kernel is None and direction == "up":
        return jnp.repeat(jnp.repeat(x, FACTOR, axis=1), FACTOR, axis=2)
    if kernel is None:
        return x.reshape(b, h // FACTOR, FACTOR, w // FACTOR, FACTOR, c).mean(axis=(2, 4))
    if direction == "up":
        filt = fir_filter(kernel, gain=FACTOR**2)
        p = filt.shape[0] - FACTOR
        return upfirdn2d(x, filt, up=FACTOR, pad=((p + 1) // 2 + FACTOR - 1, p // 2))
    filt = fir_filter(kernel)
    p = filt.shape[0] - FACTOR
    return upfirdn2d(x, filt, down=FACTOR, pad=((p + 1) // 2, p // 2))


def fir_conv_2d(x: jax.Array, weight: jax.Array, direction: Direction, kernel: Sequence[float]) -> jax.Array:
    """FIR resampling fused with a convolution, padding only once (StyleGAN2's fused up/down convolutions).

    "up": insert zeros, FIR-filter, then convolve with `weight`; "down": FIR-filter, then convolve with
    `weight` at stride 2. Both filters are applied to a single padded image, so the result differs from
    resample-then-`SAME`-convolution only at the border.

    Args:
      x: [B, H, W, C_in].
      weight: [k, k, C_in, C_out] convolution kernel (odd k).
      direction: "up" or "down".
      kernel: 1-D FIR taps.

    Returns:
      [B, 2H, 2W, C_out] for "up", [B, H/2, W/2, C_out] for "down".
    """
    up = direction == "up"
    filt = fir_filter(kernel, gain=FACTOR**2 if up else 1.0)
    p = filt.shape[0] - FACTOR + weight.shape[0] - 1
    if up:
        x = upfirdn2d(x, filt, up=FACTOR, pad=((p + 1) // 2 + FACTOR - 1, p // 2))
    else:
        x = upfirdn2d(x, filt, pad=((p + 1) // 2, p // 2))
    stride = 1 if up else FACTOR
    return jax.lax.conv_general_dilated(x, weight, window_strides=(stride, stride), padding="VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
