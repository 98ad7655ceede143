"""What every sampler shares: the `Sampler` protocol, fixed-step grids and the one scan loop over them."""

from __future__ import annotations

import abc
import dataclasses
import operator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scoresde import schedules
from scoresde.sde import SDE, ScoreFn
from scoresde.validation import require

Array = jax.Array


StepFn = Callable[[Any, Array, Array, Array], Any]


class Constraint(NamedTuple):
    """A per-step constraint of the state (inpainting, colorization: `scoresde.samplers.constraints`).

    hook(i, advance, x_t, t, s, aux) -> (the carry at s, aux), where advance(x_t) runs the sampler's own
    step i from t to s and returns its carry. The hook may change the state before or after the step, or run
    it again; aux is what it keeps from step to step (a particle filter's weights), any pytree, `aux` before
    the first step.
    """

    hook: Callable[[Array, Callable[[Array], Any], Array, Array, Array, Any], tuple[Any, Any]]
    aux: Any = ()


class Sampler(abc.ABC):
    """A frozen, hashable set of settings that integrates a sample from t = T down to t = eps."""

    @abc.abstractmethod
    def solve(
        self,
        key: Array,
        sde: SDE,
        score_fn: ScoreFn,
        x: Array,
        eps: float,
        axis_name: Any = None,
        constraint: Constraint | None = None,
    ) -> tuple[Array, Array]:
        """Maps x ~ p_T: [B, ...] to x ~ p_eps; returns (x, number of score evaluations made).

        A `constraint` (see `scan_grid`) runs every step of a fixed-step sampler; adaptive samplers refuse it.
        """

    def with_nfe(self, nfe: int) -> "Sampler":
        """This sampler set to make at most `nfe` score evaluations per solve (benchmarks at equal cost)."""
        raise ValueError(
            f"{type(self).__name__} chooses its own steps; it cannot be set to {nfe} evaluations."
        )

    def end_time(self, sde: SDE, eps: float | None) -> float:
        """The time the solve stops at: eps, or by default `sde.default_eps`; raises ValueError if invalid."""
        eps = sde.default_eps if eps is None else eps
        if isinstance(eps, (int, float)):
            sde.check_eps(eps)
        return eps


def as_int(value: Any) -> Any:
    """value as a Python int if it is integer-like (np.int64(10), a 0-d integer array), else as given.

    Bools stay bools, so that a setting's own check can refuse them.
    """
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedStepSampler(Sampler):
    """A sampler over a fixed grid of `num_steps` steps from T to eps.

    `schedule` is a name of `schedules.SCHEDULE_NAMES` or the grid itself: num_steps + 1 strictly decreasing
    times from T to eps (a tuple; any sequence is stored as a tuple of floats, so the sampler stays hashable).
    With an explicit grid, the solve stops at its last time: `sample` refuses another eps.

    Subclasses implement `solve_grid`, the solve over a given grid, which `solve` runs on `grid(sde, eps)` and
    `schedules.fit` runs on candidate grids; a subclass that costs more than one evaluation per step overrides
    `nfe`.
    """

    num_steps: int
    schedule: str | schedules.Grid = "uniform"

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "num_steps", as_int(self.num_steps))  # a frozen dataclass's own field
        require(
            isinstance(self.num_steps, int) and self.num_steps >= self.min_steps,
            f"{name}: num_steps must be an integer >= {self.min_steps}; got {self.num_steps!r}.",
        )
        if not isinstance(self.schedule, str):
            require(np.ndim(self.schedule) == 1,
                    f"{name}: schedule must be a name or a 1-D sequence of times; got {self.schedule!r}.")
            object.__setattr__(self, "schedule", tuple(float(t) for t in self.schedule))
        schedules.check_schedule(self.schedule, self.num_steps, name)

    @property
    def min_steps(self) -> int:
        return 1

    def nfe(self) -> int:
        """Score evaluations one solve makes: one per step, unless a sampler overrides this."""
        return self.num_steps

    @property
    def stochastic(self) -> bool:
        """Whether every step draws fresh noise (`guidance.default_method` depends on it); Restart, which
        draws it at its restarts only, does not."""
        return False

    def constrained_cost(self) -> tuple[int, int]:
        """(steps of a solve that run through a constraint, score evaluations made inside them).

        What a constraint that weights every step (`constraints.SMCDiff`) or takes it again
        (`constraints.RePaint`) pays for once more. All steps and all evaluations, unless a sampler runs some
        of them outside `scan_grid` (Heun's last step, the multistep solvers' first evaluation).
        """
        return self.num_steps, self.nfe()

    def with_nfe(self, nfe: int) -> "FixedStepSampler":
        """The same sampler with the most steps whose solve makes at most `nfe` score evaluations; a sampler
        on an explicit grid keeps it.

        Raises:
          ValueError: if even `min_steps` steps (or the explicit grid) cost more than `nfe` evaluations.
        """
        if not isinstance(self.schedule, str):
            require(self.nfe() <= nfe, f"{type(self).__name__} on its explicit {self.num_steps}-step "
                                       f"schedule makes {self.nfe()} score evaluations; asked for {nfe}.")
            return self
        fitting = [
            n for n in range(self.min_steps, max(nfe, self.min_steps) + 1) if self.with_steps(n).nfe() <= nfe
        ]
        fewest = self.with_steps(self.min_steps).nfe()
        require(bool(fitting),
                f"{type(self).__name__} makes at least {fewest} score evaluations; asked for {nfe}.")
        return self.with_steps(fitting[-1])

    def with_steps(self, num_steps: int) -> "FixedStepSampler":
        """The same sampler on a grid of `num_steps` steps (what `with_nfe` varies)."""
        return dataclasses.replace(self, num_steps=num_steps)

    def end_time(self, sde: SDE, eps: float | None) -> float:
        if isinstance(self.schedule, str):
            return super().end_time(sde, eps)
        return schedules.check_ends(np.asarray(self.schedule), sde, eps)

    def grid(self, sde: SDE, eps: float) -> np.ndarray:
        """The times of the solve, float64 on the host: [num_steps + 1], from T to eps."""
        return schedules.build_schedule(self.schedule, sde, self.num_steps, eps)

    def solve(self, key, sde, score_fn, x, eps, axis_name=None, constraint=None):
        ts = self.grid(sde, eps)
        # A solve_grid written without a constraint argument still runs unconstrained.
        extra = () if constraint is None else (constraint,)
        x = self.solve_grid(key, sde, score_fn, x, ts, axis_name, *extra)
        return x, jnp.asarray(self._nfe_of(ts), jnp.int32)

    def _nfe_of(self, ts: np.ndarray) -> int:
        # A subclass's own grid() may differ in length from num_steps: count the steps it does take.
        if len(ts) == self.num_steps + 1:
            return self.nfe()
        return dataclasses.replace(self, num_steps=len(ts) - 1, schedule=SCHEDULE_FOR_COUNTING).nfe()

    def solve_grid(
        self,
        key: Array,
        sde: SDE,
        score_fn: ScoreFn,
        x: Array,
        ts: Array,
        axis_name: Any = None,
        constraint: Constraint | None = None,
    ) -> Array:
        """x at ts[-1] from x: [B, ...] at ts[0], over the grid ts: [N + 1] (float64 numpy, or traced);
        `constraint` goes to `scan_grid`."""
        raise ValueError(f"{type(self).__name__} does not implement solve_grid, so it runs only on its own "
                         f"grid and its grid cannot be fitted.")


SCHEDULE_FOR_COUNTING = "uniform"  # nfe() depends on num_steps alone; any named schedule will do


def state(carry: Any) -> Array:
    """The sample x inside a scan carry: the carry itself, or the first element of a tuple carry."""
    return carry[0] if isinstance(carry, tuple) else carry


def with_state(carry: Any, x: Array) -> Any:
    """The carry with its sample replaced by x."""
    return (x,) + tuple(carry[1:]) if isinstance(carry, tuple) else x


def select(carry: Any, index: Array) -> Any:
    """The carry of the examples `index`: [B'] (a particle filter's resampling): every leaf shaped like the
    state x: [B, ...] is indexed on its batch axis 0, a stacked history [K, B, ...] on axis 1."""
    ndim = state(carry).ndim
    return jax.tree.map(lambda a: a[index] if a.ndim == ndim else a[:, index], carry)


def scan_grid(step: StepFn, carry: Any, ts: Array, constraint: Constraint | None = None) -> Any:
    """Runs carry = step(carry, i, t_i, t_{i+1}) for i = 0 .. N-1 over the grid ts: [N + 1], in one
    lax.scan.

    The times are cast once to the dtype of the carry's first leaf (the state x), so a float64 host grid never
    changes the carry's dtype. A carry is the sample x: [B, ...] itself, or a tuple whose first element is x
    (`state`) and whose other leaves are shaped like x or are histories [K, B, ...] of earlier evaluations
    (`select`). With a `constraint`, each step runs through its hook instead:
    carry, aux = constraint.hook(i, advance, x, t_i, t_{i+1}, aux), where advance(x') is step i from the carry
    with its sample replaced by x' (the history it extrapolates from is the carry's, made at the states the
    constraint left after the earlier steps).
    """
    ts = jnp.asarray(ts, jax.tree.leaves(carry)[0].dtype)
    steps = jnp.arange(ts.shape[0] - 1)
    if constraint is None:
        body = lambda carry, inputs: (step(carry, *inputs), None)
        return lax.scan(body, carry, (steps, ts[:-1], ts[1:]))[0]

    def constrained(both, inputs):
        (carry, aux), (i, t, s) = both, inputs
        advance = lambda x: step(with_state(carry, x), i, t, s)
        return constraint.hook(i, advance, state(carry), t, s, aux), None

    return lax.scan(constrained, (carry, constraint.aux), (steps, ts[:-1], ts[1:]))[0][0]


def per_example(t: Array, x: Array) -> Array:
    """A scalar time broadcast to the batch: [B]."""
    return jnp.full(x.shape[:1], t, dtype=x.dtype)


def work_dtype(dtype) -> jnp.dtype:
    """The dtype samplers and the likelihood compute in: float32 for 16-bit states, else the state's own."""
    return jnp.promote_types(dtype, jnp.float32)


def in_work_dtype(score_fn: ScoreFn, x: Array) -> tuple[ScoreFn, Array]:
    """x in `work_dtype`, and score_fn wrapped to take x in its own dtype and answer in the work dtype.

    Times reach the score function in the work dtype: in bfloat16, neighbouring times of a grid coincide.
    """
    dtype, work = x.dtype, work_dtype(x.dtype)
    if dtype == work:
        return score_fn, x
    return (lambda y, t: score_fn(y.astype(dtype), t).astype(work)), x.astype(work)
