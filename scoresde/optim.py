"""The optimizer of score networks: clipping, Adam, decoupled weight decay and a linear warm-up (optax)."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def warmup_schedule(lr: float, warmup: int, decay_steps: int = 0) -> optax.Schedule:
    """lr * min((k + 1) / warmup, 1) at update k: the reference's linear warmup, less its zero first step.

    With decay_steps > 0 the rate is further multiplied by the cosine factor (1 + cos(pi min(k / decay_steps,
    1))) / 2, which falls from 1 to 0 over decay_steps updates (Loshchilov & Hutter 2017, SGDR, eq. 5 without
    restarts).
    """
    if warmup <= 0 and decay_steps <= 0:
        return optax.constant_schedule(lr)
    warm = (lambda count: jnp.minimum((count + 1.0) / warmup, 1.0)) if warmup > 0 else (lambda count: 1.0)
    if decay_steps <= 0:
        return lambda count: lr * warm(count)
    cosine = lambda count: 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count / decay_steps, 1.0)))
    return lambda count: lr * warm(count) * cosine(count)


def build_optimizer(
    name: str,
    *,
    lr: float,
    beta1: float = 0.9,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup: int = 0,
    grad_clip: float = 1.0,
    decay_steps: int = 0,
) -> optax.GradientTransformation:
    """Global-norm clipping (off if grad_clip < 0), the named optimizer, decoupled weight decay, warmup and
    an optional cosine decay over decay_steps updates (`warmup_schedule`).

    As the reference's flax.optim.Adam, weight decay is added to the Adam direction and scaled by the learning
    rate (AdamW; Loshchilov & Hutter 2019).

    Raises:
      ValueError: for an unknown name (listing the valid ones).
    """
    directions = {"Adam": lambda: optax.scale_by_adam(b1=beta1, eps=eps)}
    if name not in directions:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {sorted(directions)}.")
    return optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip >= 0 else optax.identity(),
        directions[name](),
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.scale_by_learning_rate(warmup_schedule(lr, warmup, decay_steps)),
    )
