"""scoresde: score-based generative modelling with stochastic differential equations, in JAX."""

from scoresde import samplers, schedules, toy
from scoresde.samplers import sample
from scoresde.sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "SubVPSDE", "VESDE", "VPSDE", "sample", "samplers", "schedules", "toy"]
