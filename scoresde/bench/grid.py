"""The benchmark grid: every case (an SDE with its score) x sampler x NFE, timed and scored.

A `Case` fixes what all samplers share: the score function, the noise x_T they all start from, and how an
output is scored (`scoresde.bench.exact` builds one from a Gaussian-mixture oracle). `run_grid` sets each
sampler to each target NFE through its own `with_nfe` (the sampler knows its cost per step), then records the
NFE actually used, the compile time, the median run time and the figures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
from tqdm import tqdm

from scoresde import samplers as samplers_lib
from scoresde import schedules
from scoresde.bench.accuracy import endpoint_fn, pathwise_error
from scoresde.bench.timing import time_call
from scoresde.samplers import Sampler
from scoresde.samplers.base import require
from scoresde.sde import SDE, ScoreFn
from scoresde.stopping import StopSignals

Array = jax.Array
Figures = dict[str, float | None]


@dataclasses.dataclass(frozen=True)
class Case:
    """One SDE of a benchmark.

    Attributes:
      sde: the forward process.
      score_fn: the score of its marginals, exact or learnt.
      x_init: [B, ...] the x_T every sampler starts from.
      evaluate: (x_eps: [B, ...], deterministic) -> figures; `deterministic` says whether the sampler's output
        is independent of its PRNG key (only then is a pathwise error meaningful).
      summary: what was measured once for the case (floors, the reference solve), for the report.
      fit_init, fit_target: [P, ...] other starting points and their reference end points, that grids are
        fitted on (None: the case fits no grids).
    """

    sde: SDE
    score_fn: ScoreFn
    x_init: Array
    evaluate: Callable[[Array, bool], Mapping[str, Any]]
    summary: Mapping[str, Any]
    fit_init: Array | None = None
    fit_target: Array | None = None


@dataclasses.dataclass(frozen=True)
class Record:
    """One cell of the grid. NaN figures (e.g. a mode no sample reached) are stored as None; fit_s is the
    time a fitted grid took to fit (None on a named grid)."""

    case: str
    sampler: str
    nfe_target: int
    nfe: int
    settings: str
    compile_s: float
    run_s: float
    figures: Figures
    fit_s: float | None = None


def as_figure(value: Any) -> float | None:
    """A float for the report, None where the value is missing or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_nfes(nfes: Sequence[int]) -> None:
    """Raises ValueError unless nfes is a non-empty sequence of integers >= 1."""
    require(bool(nfes) and all(isinstance(n, int) and n >= 1 for n in nfes),
            f"NFEs must be one or more integers >= 1; got {tuple(nfes)}.")


FITTED = " (fitted)"  # the label suffix of a sampler on a fitted grid


def fit_cell(case: Case, sampler: samplers_lib.FixedStepSampler, key: Array) -> tuple[Sampler, float, float]:
    """The sampler on a grid fitted to the case's fitting paths, the seconds the fit took, and its pathwise
    error on the paths it was fitted on (the figures it reports are on the case's own, other paths)."""
    start = time.perf_counter()
    grid = schedules.fit(key, case.sde, case.score_fn, case.fit_init, sampler, target=case.fit_target)
    fit_s = time.perf_counter() - start
    fitted = dataclasses.replace(sampler, schedule=grid)
    x = endpoint_fn(case.sde, case.score_fn, fitted)(key, case.fit_init)[0]
    return fitted, fit_s, pathwise_error(x, case.fit_target)


def run_cell(case: Case, sampler: Sampler, key: Array, repeats: int) -> tuple[int, float, float, Figures]:
    """(NFE used, compile seconds, median run seconds, figures) of one sampler on one case."""
    run = endpoint_fn(case.sde, case.score_fn, sampler)
    first, run_s = time_call(lambda: run(key, case.x_init), repeats)
    x, nfe = run(key, case.x_init)
    deterministic = bool(jnp.array_equal(x, run(jax.random.fold_in(key, 1), case.x_init)[0]))
    figures = {name: as_figure(v) for name, v in case.evaluate(x, deterministic).items()}
    return int(nfe), max(first - run_s, 0.0), run_s, figures


def run_record(case: Case, case_name: str, label: str, nfe_target: int, sampler: Sampler, key: Array,
               repeats: int) -> Record:
    nfe, compile_s, run_s, figures = run_cell(case, sampler, key, repeats)
    return Record(case_name, label, nfe_target, nfe, repr(sampler), compile_s, run_s, figures)


@dataclasses.dataclass(frozen=True)
class GridResults:
    """What `run_grid` measured: the summary of each case and one record per cell; `stopped` names the signal
    (SIGTERM, SIGINT) that ended the grid before its last cell, None when every cell ran."""

    cases: dict[str, Mapping[str, Any]]
    records: list[Record]
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        stopped = {} if self.stopped is None else {"stopped": self.stopped}
        return {"cases": self.cases, "records": [dataclasses.asdict(r) for r in self.records], **stopped}


def run_grid(
    cases: Mapping[str, Callable[[], Case]],
    samplers: Mapping[str, Sampler],
    nfes: Sequence[int],
    *,
    key: Array,
    repeats: int = 3,
    progress: bool = True,
    fit_nfes: Sequence[int] = (),
    fit_samplers: Collection[str] | None = None,
) -> GridResults:
    """Runs every case x sampler x target NFE.

    Args:
      cases: label -> a function building the `Case` (called once, when the grid reaches it).
      samplers: label -> a sampler whose `with_nfe` sets its steps (its own step count is ignored).
      nfes: target numbers of score evaluations; a sampler makes at most this many.
      key: PRNG key of the samplers (the same for every cell).
      repeats: timed calls per cell after the compiling one.
      progress: show a progress bar on stderr.
      fit_nfes: at these of the target NFEs, also run every deterministic fixed-step sampler on a grid
        fitted to each case (cases must carry fitting paths), labelled "<sampler> (fitted)", with the fit's
        time and its error on the fitting paths ("pathwise_fit").
      fit_samplers: the labels of `samplers` that are fitted (default all of them).

    SIGTERM or SIGINT ends the grid after the run in flight: the results hold the cells done, `stopped` the
    signal (a second signal ends the process at once).

    Raises:
      ValueError: before any work, if a target NFE is below a sampler's minimum (or it cannot be set).
    """
    configured = {(name, n): sampler.with_nfe(n) for name, sampler in samplers.items() for n in nfes}
    fitting = {cell for cell, sampler in configured.items()
               if cell[1] in fit_nfes and isinstance(sampler, samplers_lib.FixedStepSampler)
               and (fit_samplers is None or cell[0] in fit_samplers)}
    summaries, records = {}, []
    with (tqdm(total=len(cases) * (len(configured) + len(fitting)), desc="bench", unit="run",
               disable=not progress) as bar,
          StopSignals("writing the report of the runs done after the one in flight") as stop):
        for case_name, build_case in cases.items():
            if stop.received:
                break
            bar.set_postfix_str(f"{case_name} reference")
            case = build_case()
            require(not fitting or case.fit_init is not None,
                    f"case {case_name!r} has no paths to fit grids on.")
            summaries[case_name] = dict(case.summary)
            for (sampler_name, n), sampler in configured.items():
                if stop.received:
                    break
                bar.set_postfix_str(f"{case_name} {sampler_name} NFE {n}")
                record = run_record(case, case_name, sampler_name, n, sampler, key, repeats)
                records.append(record)
                bar.update()
                # A grid is fitted to paths, which a stochastic sampler (no pathwise error) does not follow.
                if ((sampler_name, n) in fitting and record.figures.get("pathwise") is not None
                        and not stop.received):
                    bar.set_postfix_str(f"{case_name} {sampler_name} NFE {n} fitting")
                    fitted, fit_s, on_fit_paths = fit_cell(case, sampler, key)
                    record = run_record(case, case_name, sampler_name + FITTED, n, fitted, key, repeats)
                    records.append(dataclasses.replace(
                        record, figures={**record.figures, "pathwise_fit": on_fit_paths}, fit_s=fit_s))
                if (sampler_name, n) in fitting:
                    bar.update()
    return GridResults(summaries, records, stop.received)
