"""Flax score networks and `build_model`, the one place model names resolve."""

import dataclasses
from typing import Any

import flax.linen as nn

from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import ScoreMLP
from scoresde.models.ncsnpp import NCSNpp

__all__ = ["DDPM", "NCSNpp", "ScoreMLP", "build_model"]

# DDPM++ is NCSN++ with other options (Song et al. 2021, appendix H.1), hence one class for both names.
_MODELS = {"mlp": ScoreMLP, "ncsnpp": NCSNpp, "ddpmpp": NCSNpp, "ddpm": DDPM}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a score network by name; options are the model's dataclass fields.

    Every model is called as `model.apply(variables, x, noise_label, train=False, cond=None, rngs=...)` with
    x: [B, ...], noise_label: [B], and returns an array shaped like x. Every model takes `num_classes`
    (default 0, unconditional); a class-conditional one takes cond: [B] int labels in [0, num_classes), or
    None (or the label num_classes) for its unconditional "null" class.

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
