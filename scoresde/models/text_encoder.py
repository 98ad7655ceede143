"""A small Transformer text encoder: prompt token ids to one feature vector per token, trained jointly with
the score network that reads them (as the text encoders of latent diffusion, Rombach et al. 2022, Sec. 3.3,
where a Transformer over the tokens of a prompt feeds the U-Net's cross-attention).

Tokens (`scoresde.tokenizer`) are embedded, a learned position embedding is added (word order carries
meaning: which digit is named first, what "left" follows), and `depth` pre-norm Transformer blocks (Vaswani
et al. 2017; pre-LayerNorm as in GPT-2) of self-attention over the non-padding tokens and a 4x-wide MLP
follow, then a final LayerNorm. Padding tokens are masked as keys everywhere, so the features of the other
tokens do not depend on them (exactly: their attention weights are 0).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde import tokenizer
from scoresde.models.layers import attention, check_positive_int, key_mask


class TextEncoder(nn.Module):
    """Token ids [B, L] (L <= tokenizer.MAX_LENGTH) -> (features [B, L, width], mask [B, L]).

    Attributes:
      width: feature size of every token; a multiple of num_heads.
      depth: Transformer blocks.
      num_heads: attention heads.

    Call: ids: [B, L] int32; mask: [B, L] bool, True for the tokens to attend to (default: ids != PAD).
    """

    width: int = 64
    depth: int = 2
    num_heads: int = 4

    def __post_init__(self) -> None:
        for field in ("width", "depth", "num_heads"):
            check_positive_int("TextEncoder", field, getattr(self, field))
        if self.width % self.num_heads:
            raise ValueError(f"TextEncoder.width={self.width} must be a multiple of num_heads="
                             f"{self.num_heads}")
        super().__post_init__()

    @nn.compact
    def __call__(self, ids: jax.Array, mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        if ids.ndim != 2 or ids.shape[1] > tokenizer.MAX_LENGTH:
            raise ValueError(f"TextEncoder: token ids shape {ids.shape} is not allowed; it must be [B, L] "
                             f"with L <= {tokenizer.MAX_LENGTH}")
        mask = ids != tokenizer.PAD_ID if mask is None else mask
        positions = self.param("positions", nn.initializers.normal(0.02), (tokenizer.MAX_LENGTH, self.width))
        h = nn.Embed(tokenizer.VOCAB_SIZE, self.width)(ids) + positions[:ids.shape[1]]
        for _ in range(self.depth):
            normed = nn.LayerNorm()(h)
            h = h + attention(self.num_heads, self.width)(normed, normed, mask=key_mask(mask))
            h = h + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(nn.LayerNorm()(h))))
        return nn.LayerNorm()(h), mask


def pooled(features: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean of the features of the unmasked tokens: features [B, L, D], mask [B, L] -> [B, D]."""
    weights = mask.astype(features.dtype)[..., None]
    return jnp.sum(features * weights, axis=1) / jnp.sum(weights, axis=1)
