"""What every sampler shares: the `Sampler` protocol, fixed-step grids and the one scan loop over them."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from scoresde import schedules
from scoresde.sde import SDE, ScoreFn

Array = jax.Array


class Sampler(abc.ABC):
    """A frozen, hashable set of settings that integrates a sample from t = T down to t = eps."""

    @abc.abstractmethod
    def solve(
        self, key: Array, sde: SDE, score_fn: ScoreFn, x: Array, eps: float, axis_name: Any = None
    ) -> tuple[Array, Array]:
        """Maps x ~ p_T: [B, ...] to x ~ p_eps; returns (x, number of score evaluations made)."""

    def with_nfe(self, nfe: int) -> "Sampler":
        """This sampler set to make at most `nfe` score evaluations per solve (benchmarks at equal cost)."""
        raise ValueError(
            f"{type(self).__name__} chooses its own steps; it cannot be set to {nfe} evaluations."
        )


def require(condition: bool, message: str) -> None:
    """Raises ValueError(message) unless condition holds: settings are checked at construction."""
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedStepSampler(Sampler):
    """A sampler over a fixed grid of `num_steps` steps from T to eps, spaced by the named `schedule`."""

    num_steps: int
    schedule: str = "uniform"

    def __post_init__(self):
        require(
            isinstance(self.num_steps, int) and self.num_steps >= self.min_steps,
            f"{type(self).__name__}: num_steps must be an integer >= {self.min_steps}; "
            f"got {self.num_steps!r}.",
        )
        schedules.check_schedule(self.schedule)

    @property
    def min_steps(self) -> int:
        return 1

    def nfe(self) -> int:
        """Score evaluations one solve makes: one per step, unless a sampler overrides this."""
        return self.num_steps

    def with_nfe(self, nfe: int) -> "FixedStepSampler":
        """The same sampler with the most steps whose solve makes at most `nfe` score evaluations.

        Raises:
          ValueError: if even `min_steps` steps cost more than `nfe` evaluations.
        """
        with_steps = lambda n: dataclasses.replace(self, num_steps=n)
        fitting = [
            n for n in range(self.min_steps, max(nfe, self.min_steps) + 1) if with_steps(n).nfe() <= nfe
        ]
        require(
            bool(fitting),
            f"{type(self).__name__} makes at least {with_steps(self.min_steps).nfe()} score evaluations; "
            f"asked for {nfe}.",
        )
        return with_steps(fitting[-1])

    def grid(self, sde: SDE, eps: float) -> Array:
        return schedules.build_schedule(self.schedule, sde, self.num_steps, eps)


StepFn = Callable[[Any, Array, Array, Array], Any]


def scan_grid(step: StepFn, carry: Any, ts: Array) -> Any:
    """Runs carry = step(carry, i, t_i, t_{i+1}) for i = 0 .. N-1 over the grid ts: [N + 1], in one
    lax.scan.
    """

    def body(carry, inputs):
        i, t, s = inputs
        return step(carry, i, t, s), None

    steps = jnp.arange(ts.shape[0] - 1)
    carry, _ = lax.scan(body, carry, (steps, ts[:-1], ts[1:]))
    return carry


def per_example(t: Array, x: Array) -> Array:
    """A scalar time broadcast to the batch: [B]."""
    return jnp.full(x.shape[:1], t, dtype=x.dtype)
