"""`scoresde bench overhead`: how close each sampler's loop comes to the cost of its network calls.

overhead = (median wall time of one jitted solve) / (NFE x median wall time of one jitted score evaluation).
1.0 is the limit of a sampler whose only cost is the network; what lies above it is the loop's own work
(updates, grids, history buffers, host round trips). One score call alone also pays the dispatch of a jitted
function, which a solve pays once, so for cheap networks the ratio can fall slightly below 1.

The networks are untrained (initialised from the seed): their cost does not depend on their weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from scoresde import sde as sde_lib
from scoresde.bench.accuracy import endpoint_fn
from scoresde.bench.grid import sampler_from_spec
from scoresde.bench.timing import time_call
from scoresde.models import build_model
from scoresde.models.parametrization import Epsilon, network_fn
from scoresde.samplers.base import require
from scoresde.sde import ScoreFn

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
      samplers: specs for `sampler_from_spec`.
      nfes: target score evaluations per solve.
      repeats: timed calls after the compiling one (medians are reported).
      seed: initialises the networks and draws x_T.
    """

    models: tuple[str, ...] = tuple(MODELS)
    samplers: tuple[str, ...] = ("euler", "heun", "ddim", "dpm_solver_pp", "unipc", "pc")
    nfes: tuple[int, ...] = (50,)
    repeats: int = 5
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.models) - set(MODELS))
        require(not unknown, f"unknown model(s) {unknown}; valid names: {sorted(MODELS)}.")
        require(all(isinstance(n, int) and n >= 1 for n in self.nfes),
                f"NFEs must be integers >= 1; got {self.nfes}.")


QUICK = OverheadBench(samplers=("euler", "dpm_solver_pp"), nfes=(20,), repeats=3)


def network_score(label: str, key: jax.Array) -> tuple[ScoreFn, jax.Array]:
    """(score_fn of the untrained network `label` under the VP SDE, an input x: [B, ...] for it)."""
    name, options, shape = MODELS[label]
    model = build_model(name, **options)
    x = jax.random.normal(key, shape)
    variables = jax.jit(model.init)(key, x, jnp.ones(shape[:1]))
    return Epsilon().score_fn(sde_lib.VPSDE(), network_fn(model, variables)), x


def bench_overhead(settings: OverheadBench, *, progress: bool = True) -> list[dict[str, Any]]:
    """One row per model x sampler x NFE: times, the NFE used and the overhead ratio."""
    samplers = {spec: sampler_from_spec(spec) for spec in settings.samplers}
    configured = {(spec, n): s.with_nfe(n) for spec, s in samplers.items() for n in settings.nfes}
    key = jax.random.PRNGKey(settings.seed)
    sde, rows = sde_lib.VPSDE(), []
    total = len(settings.models) * len(configured)
    with tqdm(total=total, desc="overhead", unit="run", disable=not progress) as bar:
        for label in settings.models:
            score_fn, x = network_score(label, key)
            score = jax.jit(score_fn)
            t = jnp.full(x.shape[:1], 0.5)
            _, score_s = time_call(lambda: score(x, t), settings.repeats)
            for (spec, target), sampler in configured.items():
                bar.set_postfix_str(f"{label} {spec} NFE {target}")
                run = endpoint_fn(sde, score_fn, sampler)
                first, run_s = time_call(lambda: run(key, x), settings.repeats)
                nfe = int(run(key, x)[1])
                rows.append(dict(model=label, shape=list(x.shape), sampler=spec, nfe_target=target, nfe=nfe,
                                 score_ms=1e3 * score_s, run_ms=1e3 * run_s,
                                 compile_s=max(first - run_s, 0.0), overhead=run_s / (nfe * score_s)))
                bar.update()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | input | sampler | NFE | score call (ms) | solve (ms) | overhead |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['shape']} | {r['sampler']} | {r['nfe']} | {r['score_ms']:.3f} | "
                     f"{r['run_ms']:.2f} | {r['overhead']:.2f} |")
    return "\n".join(lines)
