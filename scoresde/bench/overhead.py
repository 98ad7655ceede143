"""`scoresde bench overhead`: how close each sampler's loop comes to the cost of its network calls.

overhead = (median wall time of one jitted solve) / (NFE x median wall time of one jitted score evaluation).
1.0 is the limit of a sampler whose only cost is the network; what lies above it is the loop's own work
(updates, grids, history buffers, host round trips). One score call alone also pays the dispatch of a jitted
function, which a solve pays once, so for cheap networks the ratio can fall slightly below 1.

The networks are untrained (initialised from the seed): their cost does not depend on their weights.

On a loaded machine the two medians move with the load, by more than the loop costs. So each sampler also
runs with a free score, score(x, t) = -x (the prior's score: the same loop, no network): its time per
evaluation over one score call is the loop's own share, loop share = (free solve) / (NFE x score call), so
that overhead ~ 1 + loop share when both are measured on an idle machine.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from scoresde import samplers
from scoresde import sde as sde_lib
from scoresde.bench.grid import Case, check_nfes, run_grid
from scoresde.bench.timing import time_call
from scoresde.models import build_model
from scoresde.models.parametrization import Epsilon, network_fn
from scoresde.samplers.base import require

# label -> (model name, options, input shape [B, ...]): the time-conditioned MLP on 2-D points and a small
# NCSN++ on 16x16 one-channel images, both cheap enough for a CPU.
MODELS = {
    "mlp": ("mlp", {}, (512, 2)),
    "ncsnpp": ("ncsnpp", dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0),
               (8, 16, 16, 1)),
}


@dataclasses.dataclass(frozen=True)
class OverheadBench:
    """Settings of `scoresde bench overhead`.

    Attributes:
      models: labels of `MODELS`.
      samplers: specs for `samplers.build_sampler`.
      nfes: target score evaluations per solve.
      repeats: timed calls after the compiling one (medians are reported).
      seed: initialises the networks and draws x_T.
    """

    models: tuple[str, ...] = tuple(MODELS)
    samplers: tuple[str, ...] = ("euler", "heun", "ddim", "dpm_solver_pp", "unipc", "ipndm", "deis", "pc",
                                 "dpm_solver_pp_sde", "restart")
    nfes: tuple[int, ...] = (50,)
    repeats: int = 5
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.models) - set(MODELS))
        require(not unknown, f"unknown model(s) {unknown}; valid names: {sorted(MODELS)}.")
        check_nfes(self.nfes)


QUICK = OverheadBench(samplers=("euler", "dpm_solver_pp"), nfes=(20,), repeats=3)


def network_case(label: str, key: jax.Array, repeats: int) -> Case:
    """The untrained network `label` under the VP SDE as a grid case; its summary times one score call."""
    name, options, shape = MODELS[label]
    model = build_model(name, **options)
    x = jax.random.normal(key, shape)
    variables = jax.jit(model.init)(key, x, jnp.ones(shape[:1]))
    sde = sde_lib.VPSDE()
    score_fn = Epsilon().score_fn(sde, network_fn(model, variables))
    score = jax.jit(score_fn)
    _, score_s = time_call(lambda: score(x, jnp.full(shape[:1], 0.5)), repeats)
    summary = {"input": list(shape), "score_s": score_s}
    return Case(sde=sde, score_fn=score_fn, x_init=x, evaluate=lambda x, deterministic: {}, summary=summary)


FREE = " (free score)"  # the label suffix of a model's case with the score -x


def free_case(case: Case) -> Case:
    """The case with its network replaced by the free score -x: what the loop costs without the network."""
    return dataclasses.replace(case, score_fn=lambda x, t: -x)


def bench_overhead(settings: OverheadBench, *, progress: bool = True) -> list[dict[str, Any]]:
    """One row per model x sampler x NFE: times, the NFE used, the overhead ratio and the loop share, from
    `run_grid`."""
    by_spec = {spec: samplers.build_sampler(spec) for spec in settings.samplers}
    key = jax.random.PRNGKey(settings.seed)
    cases = {}
    for label in settings.models:
        case = functools.lru_cache(functools.partial(network_case, label, key, settings.repeats))
        cases.update({label: case, label + FREE: lambda case=case: free_case(case())})
    results = run_grid(cases, by_spec, settings.nfes, key=key, repeats=settings.repeats, progress=progress)
    free = {(r.case.removesuffix(FREE), r.sampler, r.nfe_target): r for r in results.records
            if r.case.endswith(FREE)}
    rows = []
    for r in (r for r in results.records if not r.case.endswith(FREE)):
        if (r.case, r.sampler, r.nfe_target) not in free:  # a signal stopped the grid before its free run
            continue
        score_s, loop_s = results.cases[r.case]["score_s"], free[r.case, r.sampler, r.nfe_target].run_s
        rows.append(dict(model=r.case, shape=results.cases[r.case]["input"], sampler=r.sampler,
                         nfe_target=r.nfe_target, nfe=r.nfe, score_ms=1e3 * score_s, run_ms=1e3 * r.run_s,
                         loop_ms=1e3 * loop_s, compile_s=r.compile_s, overhead=r.run_s / (r.nfe * score_s),
                         loop_share=loop_s / (r.nfe * score_s)))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | input | sampler | NFE | score call (ms) | solve (ms) | overhead "
             "| free-score solve (ms) | loop share |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['shape']} | {r['sampler']} | {r['nfe']} | {r['score_ms']:.3f} | "
                     f"{r['run_ms']:.2f} | {r['overhead']:.2f} | {r['loop_ms']:.3f} "
                     f"| {r['loop_share']:.4f} |")
    return "\n".join(lines)
