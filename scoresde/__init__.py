"""scoresde: score-based generative modelling with stochastic differential equations, in JAX.

Public modules, each an attribute of the package: `guidance`, `likelihood`, `losses`, `models`, `samplers`,
`schedules`, `sde`, `toy`, and, imported on first use because they load further libraries, `experiment`
(building and restoring training runs: checkpoint and optimizer libraries) and `toy2d` (the 2-D toy
distributions with their support, modes, density and entropy: scipy).
"""

import importlib

from scoresde import guidance, likelihood, losses, models, samplers, schedules, sde, toy
from scoresde.likelihood import bits_per_dim, log_likelihood
from scoresde.samplers import sample
from scoresde.sde import SDE, SubVPSDE, VESDE, VPSDE

_ON_FIRST_USE = ("experiment", "toy2d")


def __getattr__(name: str):
    """Imports the public modules of `_ON_FIRST_USE` when first asked for (PEP 562)."""
    if name in _ON_FIRST_USE:
        return importlib.import_module(f"scoresde.{name}")
    raise AttributeError(f"module 'scoresde' has no attribute {name!r}")


__all__ = [
    "SDE",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "bits_per_dim",
    "experiment",
    "guidance",
    "likelihood",
    "log_likelihood",
    "losses",
    "models",
    "sample",
    "samplers",
    "schedules",
    "sde",
    "toy",
    "toy2d",
]
