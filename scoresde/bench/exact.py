"""`scoresde bench samplers` on an exact score: a Gaussian-mixture problem, every SDE x sampler x NFE.

With the exact score every error is the sampler's own, so the leaderboard separates solver error from network
error, which FID on trained models mixes (and which costs GPU-days to measure).
"""

from __future__ import annotations

import dataclasses

import jax

from scoresde import samplers, schedules
from scoresde import sde as sde_lib
from scoresde import toy
from scoresde.bench.accuracy import (REFERENCE_TOL, distribution_errors, distribution_floors, exact_draws,
                                     fitting_paths, pathwise_error, reference_solve)
from scoresde.bench.grid import Case, GridResults, as_figure, check_nfes, run_grid
from scoresde.samplers.base import require
from scoresde.sde import SDE
from scoresde.toy import GaussianMixture

Array = jax.Array


def exact_case(
    key: Array,
    mix: GaussianMixture,
    sde: SDE,
    x_init: Array,
    *,
    reference_tol: float = REFERENCE_TOL,
    floor_repeats: int = 8,
    repeats: int = 1,
    distribution: bool = True,
    fit_paths: int = 0,
) -> Case:
    """A case with the exact score of `mix` under `sde`; the target is its marginal at t = eps.

    Args:
      key: PRNG key for the exact draws and the sliced Wasserstein directions.
      mix: the data distribution.
      sde: the forward process.
      x_init: [N, *event] the x_T every sampler starts from (e.g. `sde.prior_sampling`); N exact draws are
        compared with the N samples.
      reference_tol: rtol = atol of the reference RK45 solve.
      floor_repeats: exact-vs-exact pairs averaged for the Monte Carlo floors.
      repeats: timed calls of the reference solve (its median is reported).
      distribution: also score against exact draws (else the pathwise error only, as convergence tests need).
      fit_paths: prior draws, independent of x_init, that grids are fitted on (0: none), with their reference.

    The dtype of x_init (float64 inside `jax.enable_x64(True)`) carries through every solve.
    """
    k_exact, k_distance, k_floor = jax.random.split(key, 3)
    num_samples = x_init.shape[0]
    score_fn = mix.score_fn(sde)
    x_ref, reference = reference_solve(sde, score_fn, key, x_init, tol=reference_tol, repeats=repeats)
    summary = {"num_samples": num_samples, "reference": reference}
    target = mix.marginal(sde, sde.default_eps)
    if distribution:
        exact = exact_draws(target, k_exact, num_samples)
        floors = distribution_floors(k_floor, target, num_samples, num_repeats=floor_repeats)
        summary["floors"] = {name: as_figure(v) for name, v in floors.items()}

    def evaluate(x: Array, deterministic: bool) -> dict:
        figures = {"pathwise": pathwise_error(x, x_ref) if deterministic else None}
        return {**figures, **distribution_errors(k_distance, target, x, exact)} if distribution else figures

    # What a converged ODE sampler scores from this x_T: one draw of the scatter whose mean is the floor.
    summary["reference"]["figures"] = {name: as_figure(v) for name, v in evaluate(x_ref, True).items()}

    fit_init = fit_target = None
    if fit_paths:
        fit_init, fit_target = fitting_paths(sde, score_fn, key, x_init, fit_paths, tol=reference_tol)
        summary["fit_paths"] = fit_paths
    return Case(sde=sde, score_fn=score_fn, x_init=x_init, evaluate=evaluate, summary=summary,
                fit_init=fit_init, fit_target=fit_target)


DEFAULT_SAMPLERS = ("euler", "heun", "ddim", "dpm_solver_pp", "dpm_solver_pp:order=3", "unipc", "ipndm",
                    "ipndm:variable_step=True", "deis", "pc", "dpm_solver_pp_sde", "restart")


@dataclasses.dataclass(frozen=True)
class ExactBench:
    """Settings of `scoresde bench samplers` on an exact-score problem.

    Attributes:
      problem: "mixture_2d", "mixture_image", or a path to an .npz holding weights [K], means [K, ...] and
        covs [K, D, D].
      sdes: forward processes, by `build_sde` name.
      samplers: specs for `samplers.build_sampler`, e.g. "unipc:order=3".
      nfes: target score evaluations per solve.
      num_samples: paths per sampler and exact draws per comparison.
      floor_repeats: exact-vs-exact pairs averaged for each Monte Carlo floor.
      repeats: timed calls per cell after the compiling one.
      seed: seeds every draw; the same seed reproduces every accuracy figure exactly.
      fit: also run every fixed-step sampler on a grid fitted (`schedules.fit`) to each SDE's score from
        `fit_paths` other prior draws, at each of `nfes` up to `fit_max_nfe`, scored on the benchmark's paths.
      grids: named grids (`schedules.SCHEDULE_NAMES`) every fixed-step sampler also runs on, labelled
        "<spec>:schedule=<name>" (its own grid is the row of its spec); fitted grids are fitted once per spec.
    """

    problem: str = "mixture_2d"
    sdes: tuple[str, ...] = ("vpsde", "subvpsde", "vesde")
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    nfes: tuple[int, ...] = (5, 10, 20, 50, 100, 1000)
    num_samples: int = 4000
    floor_repeats: int = 8
    repeats: int = 3
    seed: int = 0
    fit: bool = False
    fit_paths: int = 1000
    fit_max_nfe: int = 20
    grids: tuple[str, ...] = ()

    def __post_init__(self):
        require(bool(self.sdes and self.samplers), "need at least one SDE and one sampler.")
        unknown = sorted(set(self.grids) - set(schedules.SCHEDULE_NAMES))
        require(not unknown, f"unknown grid(s) {unknown}; valid names: {list(schedules.SCHEDULE_NAMES)}.")
        require(self.fit_paths >= 2, f"fit_paths must be >= 2; got {self.fit_paths}.")
        check_nfes(self.nfes)
        require(self.num_samples >= 2, f"num_samples must be >= 2; got {self.num_samples}.")
        require(self.floor_repeats >= 1, f"floor_repeats must be >= 1; got {self.floor_repeats}.")


# Under a minute on two CPU cores, compile time included (measured: README, "Sampler benchmarks").
QUICK = ExactBench(sdes=("vpsde",), samplers=("euler", "heun", "dpm_solver_pp", "pc"), nfes=(10, 50),
                   num_samples=1000, floor_repeats=4, repeats=1)


def on_grids(by_spec: dict[str, samplers.Sampler], grids: tuple[str, ...]) -> dict[str, samplers.Sampler]:
    """Each spec's sampler, then for a fixed-step one the same on each named grid other than its own."""
    out = {}
    for spec, sampler in by_spec.items():
        out[spec] = sampler
        if isinstance(sampler, samplers.FixedStepSampler):
            out.update({f"{spec}:schedule={grid}": dataclasses.replace(sampler, schedule=grid)
                        for grid in grids if grid != sampler.schedule})
    return out


def bench_exact(settings: ExactBench, *, progress: bool = True) -> GridResults:
    """Runs the grid of `settings`; bad names or files and too small NFEs fail before any work."""
    mix = toy.build_problem(settings.problem)
    sdes = {name: sde_lib.build_sde(name) for name in settings.sdes}
    by_spec = {spec: samplers.build_sampler(spec) for spec in settings.samplers}
    k_init, k_cases, k_samplers = jax.random.split(jax.random.PRNGKey(settings.seed), 3)
    shape = (settings.num_samples,) + mix.event_shape
    cases = {
        name: lambda sde=sde: exact_case(k_cases, mix, sde, sde.prior_sampling(k_init, shape),
                                         floor_repeats=settings.floor_repeats, repeats=settings.repeats,
                                         fit_paths=settings.fit_paths if settings.fit else 0)
        for name, sde in sdes.items()
    }
    fit_nfes = [n for n in settings.nfes if settings.fit and n <= settings.fit_max_nfe]
    return run_grid(cases, on_grids(by_spec, settings.grids), settings.nfes, key=k_samplers,
                    repeats=settings.repeats, progress=progress, fit_nfes=fit_nfes,
                    fit_samplers=tuple(by_spec))
