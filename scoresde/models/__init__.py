"""Flax score networks, noise-conditional classifiers, the latent autoencoder and `build_model`, the one place
model names resolve."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from scoresde.models.autoencoder import KLAutoencoder
from scoresde.models.classifier import ClassifierConvNet, ClassifierMLP
from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import ScoreMLP
from scoresde.models.ncsnpp import NCSNpp

__all__ = ["AUTOENCODERS", "CLASSIFIERS", "COMPUTE_DTYPES", "ClassifierConvNet", "ClassifierMLP", "DDPM",
           "KLAutoencoder", "NCSNpp", "PARAM_DTYPES", "ScoreMLP", "build_model"]

# DDPM++ is NCSN++ with other options (Song et al. 2021, appendix H.1), hence one class for both names.
_MODELS = {"mlp": ScoreMLP, "ncsnpp": NCSNpp, "ddpmpp": NCSNpp, "ddpm": DDPM,
           "classifier_mlp": ClassifierMLP, "classifier_conv": ClassifierConvNet, "autoencoder": KLAutoencoder}
# The networks that output class logits [B, num_classes] instead of an array shaped like x.
CLASSIFIERS = ("classifier_mlp", "classifier_conv")
# The networks that encode images to a latent and decode it back (`scoresde.models.autoencoder`).
AUTOENCODERS = ("autoencoder",)
# The dtypes a network built from a config computes in (`training.compute_dtype`, every network's `dtype`) and
# stores its parameters in (`training.param_dtype`, `param_dtype`): float32 master weights, always.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PARAM_DTYPES = {"float32": jnp.float32}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a score network by name; options are the model's dataclass fields.

    Every score network is called as `model.apply(variables, x, noise_label, train=False, cond=None,
    rngs=...)` with x: [B, ...], noise_label: [B], and returns an array shaped like x. Every score network
    takes `num_classes` (default 0, unconditional); a class-conditional one takes cond: [B] int labels in
    [0, num_classes), or None (or the label num_classes) for its unconditional "null" class. The
    `CLASSIFIERS` are called as `model.apply(variables, x, noise_label, train=False, rngs=...)` and return
    logits [B, num_classes] (`scoresde.models.classifier`). The `AUTOENCODERS` take no classes and are called
    as `model.apply(variables, x, noise)` (`scoresde.models.autoencoder`).

    Raises:
      ValueError: for an unknown name or option (listing the valid ones), or an invalid option value.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {sorted(_MODELS)}")
    cls = _MODELS[name]
    fields = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name"))
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid options: {fields}")
    return cls(**kwargs)
