"""The benchmark grid: every case (an SDE with its score) x sampler x NFE, timed and scored.

A `Case` fixes what all samplers share: the score function, the noise x_T they all start from, and how an
output is scored (`scoresde.bench.exact` builds one from a Gaussian-mixture oracle). `run_grid` sets each
sampler to each target NFE through its own `with_nfe` (the sampler knows its cost per step), then records the
NFE actually used, the compile time, the median run time and the figures.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from tqdm import tqdm

from scoresde import samplers as samplers_lib
from scoresde.bench.accuracy import endpoint_fn
from scoresde.bench.timing import time_call
from scoresde.samplers import Sampler
from scoresde.samplers.base import require
from scoresde.sde import SDE, ScoreFn

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
    """

    sde: SDE
    score_fn: ScoreFn
    x_init: Array
    evaluate: Callable[[Array, bool], Mapping[str, Any]]
    summary: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Record:
    """One cell of the grid. NaN figures (e.g. a mode no sample reached) are stored as None."""

    case: str
    sampler: str
    nfe_target: int
    nfe: int
    settings: str
    compile_s: float
    run_s: float
    figures: Figures


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


def sampler_from_spec(spec: str) -> Sampler:
    """A sampler from "name" or "name:setting=value:...", e.g. "dpm_solver_pp:order=3" or "heun:s_churn=10".

    Values are Python literals (numbers, True/False) or else strings. Unknown names and settings raise a
    ValueError listing the valid ones.
    """
    name, *options = spec.split(":")
    settings = {}
    for option in options:
        key, sep, value = option.partition("=")
        require(bool(sep and key), f"sampler {spec!r}: setting {option!r} is not key=value.")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    sampler = samplers_lib.build_sampler(name)
    valid = [f.name for f in dataclasses.fields(sampler)]
    unknown = sorted(set(settings) - set(valid))
    require(not unknown,
            f"sampler {spec!r}: unknown setting(s) {unknown}; valid settings of {name}: {valid}.")
    return dataclasses.replace(sampler, **settings)


def run_cell(case: Case, sampler: Sampler, key: Array, repeats: int) -> tuple[int, float, float, Figures]:
    """(NFE used, compile seconds, median run seconds, figures) of one sampler on one case."""
    run = endpoint_fn(case.sde, case.score_fn, sampler)
    first, run_s = time_call(lambda: run(key, case.x_init), repeats)
    x, nfe = run(key, case.x_init)
    deterministic = bool(jnp.array_equal(x, run(jax.random.fold_in(key, 1), case.x_init)[0]))
    figures = {name: as_figure(v) for name, v in case.evaluate(x, deterministic).items()}
    return int(nfe), max(first - run_s, 0.0), run_s, figures


@dataclasses.dataclass(frozen=True)
class GridResults:
    """What `run_grid` measured: the summary of each case and one record per cell."""

    cases: dict[str, Mapping[str, Any]]
    records: list[Record]

    def to_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "records": [dataclasses.asdict(r) for r in self.records]}


def run_grid(
    cases: Mapping[str, Callable[[], Case]],
    samplers: Mapping[str, Sampler],
    nfes: Sequence[int],
    *,
    key: Array,
    repeats: int = 3,
    progress: bool = True,
) -> GridResults:
    """Runs every case x sampler x target NFE.

    Args:
      cases: label -> a function building the `Case` (called once, when the grid reaches it).
      samplers: label -> a sampler whose `with_nfe` sets its steps (its own step count is ignored).
      nfes: target numbers of score evaluations; a sampler makes at most this many.
      key: PRNG key of the samplers (the same for every cell).
      repeats: timed calls per cell after the compiling one.
      progress: show a progress bar on stderr.

    Raises:
      ValueError: before any work, if a target NFE is below a sampler's minimum (or it cannot be set).
    """
    configured = {(name, n): sampler.with_nfe(n) for name, sampler in samplers.items() for n in nfes}
    summaries, records = {}, []
    with tqdm(total=len(cases) * len(configured), desc="bench", unit="run", disable=not progress) as bar:
        for case_name, build_case in cases.items():
            bar.set_postfix_str(f"{case_name} reference")
            case = build_case()
            summaries[case_name] = dict(case.summary)
            for (sampler_name, n), sampler in configured.items():
                bar.set_postfix_str(f"{case_name} {sampler_name} NFE {n}")
                nfe, compile_s, run_s, figures = run_cell(case, sampler, key, repeats)
                records.append(
                    Record(case_name, sampler_name, n, nfe, repr(sampler), compile_s, run_s, figures))
                bar.update()
    return GridResults(summaries, records)
