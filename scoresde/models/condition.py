"""What a network is conditioned on, and what its "null" condition is: the one place that decides both.

A network takes `cond=None` or a condition per example: nothing (`Unconditional`), an integer class label
(`ClassLabels`: [B] in [0, num_classes), null = the extra class num_classes) or the token ids of a prompt
(`Prompts`: [B, L], null = the empty prompt, `tokenizer.NULL_PROMPT`). The null condition is the
unconditional score that classifier-free guidance contrasts with (Ho & Salimans 2022, Sec. 3.2: one network
for both, trained with the condition dropped to null with some probability); `drop` is that dropout and
`batch` turns `cond=None` into the null condition, so networks, the objective and sampling never spell out
what null is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import tokenizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClassLabels:
    """Integer class labels [B] in [0, num_classes]; num_classes is the null class."""

    num_classes: int
    example_shape = ()
    what = "class labels"

    def null(self, batch: int) -> Array:
        return jnp.full((batch,), self.num_classes, jnp.int32)

    def check_served(self, dataset: str, cond: Optional[np.ndarray]) -> None:
        """ValueError unless a dataset serves labels [N] in [0, num_classes)."""
        if cond is None or cond.ndim != 1:
            raise ValueError(f"model.num_classes={self.num_classes} needs a dataset with labels; {dataset!r} "
                             "has none (digits, an .npz with data.label_key, or an image folder with one "
                             "sub-folder per class do).")
        if cond.min() < 0 or cond.max() >= self.num_classes:
            raise ValueError(f"model.num_classes={self.num_classes}, but the data's labels lie in "
                             f"[{cond.min()}, {cond.max()}]; they must lie in [0, {self.num_classes}).")

    def check_request(self, cond: np.ndarray) -> None:
        """ValueError unless every requested label lies in [0, num_classes)."""
        for label in np.unique(cond):
            if not 0 <= label < self.num_classes:
                raise ValueError(f"class_label {label} is outside the trained classes 0 .. "
                                 f"{self.num_classes - 1}.")


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Prompt token ids [B, tokenizer.MAX_LENGTH] (`scoresde.tokenizer`); the empty prompt is null."""

    example_shape = (tokenizer.MAX_LENGTH,)
    what = "prompt token ids"

    def null(self, batch: int) -> Array:
        return jnp.broadcast_to(jnp.asarray(tokenizer.NULL_PROMPT), (batch, tokenizer.MAX_LENGTH))

    def check_served(self, dataset: str, cond: Optional[np.ndarray]) -> None:
        """ValueError unless a dataset serves prompt token ids [N, MAX_LENGTH]."""
        if cond is None or cond.shape[1:] != self.example_shape:
            raise ValueError(f"model.prompt_conditioning needs a dataset with prompts (digit_pairs); "
                             f"{dataset!r} has none.")

    def check_request(self, cond: np.ndarray) -> None:
        """ValueError unless cond holds token ids [..., MAX_LENGTH] of the vocabulary."""
        cond = np.asarray(cond)
        if cond.shape[-1:] != self.example_shape or cond.min() < 0 or cond.max() >= tokenizer.VOCAB_SIZE:
            raise ValueError(f"prompt token ids must be [..., {tokenizer.MAX_LENGTH}] in [0, "
                             f"{tokenizer.VOCAB_SIZE}); got shape {cond.shape}.")


@dataclasses.dataclass(frozen=True)
class Unconditional:
    """No condition: `cond` must be None."""

    what = "no condition"

    def check_served(self, dataset: str, cond: Optional[np.ndarray]) -> None:
        """An unconditional model trains on any dataset, ignoring its condition."""

    def check_request(self, cond: np.ndarray) -> None:
        raise ValueError("class_label needs a class-conditional model; this run is unconditional "
                         "(model.num_classes=0).")


Condition = ClassLabels | Prompts | Unconditional


def condition_of(model: Any) -> Condition:
    """The condition a network from `scoresde.models.build_model` takes: its `num_classes` (> 0: labels)
    or its `prompt_conditioning` (other than "none": prompts)."""
    if getattr(model, "prompt_conditioning", "none") != "none":
        return Prompts()
    return ClassLabels(model.num_classes) if getattr(model, "num_classes", 0) else Unconditional()


def batch(condition: Condition, owner: str, cond: Optional[Array], size: int) -> Optional[Array]:
    """cond for `size` examples: one per example, [size, *example_shape] (one shared condition is
    broadcast), or the null condition for None; None for an unconditional network.

    Raises:
      ValueError: naming `owner` for a condition given to an unconditional network, or of the wrong shape.
    """
    if isinstance(condition, Unconditional):
        if cond is not None:
            what = "class labels" if cond.ndim <= 1 else "prompt token ids"
            raise ValueError(f"{owner}: got {what}, but the network is unconditional (num_classes=0, "
                             "prompt_conditioning='none')")
        return None
    if cond is None:
        return condition.null(size)
    shape = (size,) + condition.example_shape
    if cond.shape not in (shape, shape[1:]):
        raise ValueError(f"{owner}: cond shape {cond.shape} is not allowed; {condition.what} are {shape} "
                         f"or {shape[1:]} for every example")
    return jnp.broadcast_to(cond, shape)


def drop(condition: Condition, key: Array, cond: Array, rate: float) -> Array:
    """cond: [B, ...] with each example's condition replaced by the null one with probability `rate`."""
    dropped = jax.random.bernoulli(key, rate, cond.shape[:1])
    return jnp.where(dropped.reshape(dropped.shape + (1,) * (cond.ndim - 1)), condition.null(len(cond)), cond)
