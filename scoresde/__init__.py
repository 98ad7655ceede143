"""scoresde: score-based generative modelling with stochastic differential equations, in JAX."""

from scoresde import likelihood, samplers, schedules, toy
from scoresde.likelihood import bits_per_dim, log_likelihood
from scoresde.samplers import sample
from scoresde.sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = [
    "SDE",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "bits_per_dim",
    "likelihood",
    "log_likelihood",
    "sample",
    "samplers",
    "schedules",
    "toy",
]
