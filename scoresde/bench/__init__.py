"""Sampler benchmarks: accuracy per score evaluation and wall time, on exact scores and on trained models.

    case = lambda: exact_case(key, mix, sde, sde.prior_sampling(key, (1000, 2)))
    results = run_grid({"vpsde": case}, {"heun": Heun()}, nfes=(10, 50), key=key)

`accuracy` measures (pathwise error against a tight RK45 solve, convergence order, distribution errors with
Monte Carlo floors), `grid` runs case x sampler x NFE, `exact` (exact scores), `trained` (a training run's
learnt score) and `overhead` are the `scoresde bench` leaderboards, `report` writes results.json, Markdown
and PNG plots.
"""

from scoresde.bench.accuracy import convergence_order, distribution_errors, pathwise_error
from scoresde.bench.exact import ExactBench, bench_exact, exact_case
from scoresde.bench.grid import Case, GridResults, Record, run_grid
from scoresde.bench.report import markdown, plot_errors, write_report
from scoresde.bench.trained import TrainedBench, bench_trained, trained_case

__all__ = [
    "Case",
    "ExactBench",
    "GridResults",
    "Record",
    "TrainedBench",
    "bench_exact",
    "bench_trained",
    "convergence_order",
    "distribution_errors",
    "exact_case",
    "markdown",
    "pathwise_error",
    "plot_errors",
    "run_grid",
    "trained_case",
    "write_report",
]
