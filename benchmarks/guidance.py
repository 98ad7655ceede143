"""Guidance and inpainting: accuracy against exact conditionals, and cost per score evaluation.

    python benchmarks/guidance.py [--n=2000] [--repeats=5] [--out=docs/bench/guidance.md]

Accuracy (exact mixture `toy.mixture_inpainting`, x_0 known, x_1 filled in): the 1-D Wasserstein distance W1
of the sampled x_1 to the exact conditional p(x_1 | x_0 = a) (`GaussianMixture.condition`), beside its Monte
Carlo floor (W1 between two exact draw sets of the same size), per method x sampler x SDE x known value.

Cost: wall time per NFE of one jitted solve, the median of `repeats` runs after one compiling run (reported
separately), for classifier-free guidance (two score calls, or one on the doubled batch), classifier
guidance (a gradient of the classifier), and each inpainting method. A `Case` holds the score functions: the
exact mixture's here; a trained conditional model plugs in as another `Case`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import scoresde as sd
from scoresde import guidance, metrics, toy
from scoresde.samplers.constraints import PiGDM, RePaint, Replacement, SMCDiff

SDES = {"VP": sd.VPSDE(), "sub-VP": sd.SubVPSDE(), "VE": sd.VESDE()}
SAMPLERS = {"PC 100": sd.samplers.PC(num_steps=100), "DDIM 50": sd.samplers.DDIM(num_steps=50)}
METHODS = {
    "replacement": Replacement(), "RePaint r=10": RePaint(resamplings=10), "PiGDM": PiGDM(),
    "SMCDiff P=32": SMCDiff(num_particles=32),
}
KNOWN_VALUES = (0.5, 0.0)  # x_0 between two modes (a two-mode conditional), and at a mode (one mode)


@dataclasses.dataclass(frozen=True)
class Case:
    """What the cost benchmark needs: a shape, and score functions built for an SDE."""

    name: str
    shape: tuple[int, ...]
    score_fn: Callable  # sde -> score_fn(x, t)
    score_fn_with_cond: Callable  # sde -> (x, t, cond: [B] int) -> score
    log_prob_fn: Callable  # sde -> (x, t) -> [B, K] log p(class | x_t)
    null_class: int


def exact_case(n: int) -> Case:
    mix = toy.mixture_inpainting()
    return Case(
        "exact mixture", (n, 2), mix.score_fn, mix.conditional_score_fn, mix.log_posterior_fn,
        null_class=int(mix.weights.shape[0]),
    )


def inpainting_w1(n: int, seed: int = 0) -> list[dict]:
    """W1 of inpainted x_1 to the exact conditional, and its floor, for every method, sampler and SDE."""
    mix, rows = toy.mixture_inpainting(), []
    mask = jnp.array([1.0, 0.0])
    for a in KNOWN_VALUES:
        cond = mix.condition(np.array([True, False]), np.array([a, 0.0]))
        exact, exact2 = (cond.sample(jax.random.PRNGKey(seed + k), n)[None, :, 0] for k in (100, 101))
        floor = float(metrics.wasserstein_1d(exact, exact2, p=1)[0])
        x_known = jnp.zeros((n, 2)).at[:, 0].set(a)
        for sde_name, sde in SDES.items():
            for sampler_name, sampler in SAMPLERS.items():
                for method_name, method in METHODS.items():
                    fn = jax.jit(
                        lambda key: guidance.inpaint(
                            key, sde, mix.score_fn(sde), x_known, mask, sampler, method=method
                        )
                    )
                    x, nfe = fn(jax.random.PRNGKey(seed))
                    w1 = float(metrics.wasserstein_1d(x[None, :, 1], exact, p=1)[0])
                    rows.append(dict(a=a, sde=sde_name, sampler=sampler_name, method=method_name,
                                     nfe=int(nfe), w1=w1, floor=floor))
                    print(rows[-1], flush=True)
    return rows


def time_solve(fn: Callable, repeats: int) -> tuple[float, float, int]:
    """(compile + first run seconds, median seconds of `repeats` further runs, nfe) of fn(key)."""
    start = time.perf_counter()
    x, nfe = fn(jax.random.PRNGKey(0))
    jax.block_until_ready(x)
    first = time.perf_counter() - start
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(jax.random.PRNGKey(r + 1))[0])
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), int(nfe)


def guided_score_fns(case: Case, sde) -> dict[str, Callable]:
    """The guided score functions to time, each steering toward class 0."""
    b = case.shape[0]
    label, null = jnp.zeros((b,), jnp.int32), jnp.full((b,), case.null_class, jnp.int32)
    cond_fn = case.score_fn_with_cond(sde)
    return {
        "unguided": case.score_fn(sde),
        "CFG, two calls": guidance.classifier_free_guidance(
            lambda x, t: cond_fn(x, t, label), lambda x, t: cond_fn(x, t, null), scale=1.0
        ),
        "CFG, doubled batch": guidance.fused_classifier_free_guidance(cond_fn, label, null, scale=1.0),
        "classifier guidance": guidance.classifier_guidance(
            case.score_fn(sde), lambda x, t: case.log_prob_fn(sde)(x, t)[:, 0], scale=1.0
        ),
    }


def costs(case: Case, repeats: int) -> list[dict]:
    """Seconds per NFE of DDIM 50 (VP) with each guided score function and each inpainting method."""
    sde, sampler, rows = sd.VPSDE(), sd.samplers.DDIM(num_steps=50), []
    for name, score_fn in guided_score_fns(case, sde).items():
        fn = jax.jit(lambda key: sd.sample(key, sde, score_fn, case.shape, sampler))
        rows.append((name, *time_solve(fn, repeats)))
    x_known, mask = jnp.zeros(case.shape), jnp.zeros(case.shape[1:]).at[0].set(1.0)
    for name, method in METHODS.items():
        fn = jax.jit(lambda key: guidance.inpaint(key, sde, case.score_fn(sde), x_known, mask, sampler,
                                                  method=method))
        rows.append((f"inpaint, {name}", *time_solve(fn, repeats)))
    out = [
        dict(what=r[0], compile_s=r[1], median_s=r[2], nfe=r[3], ms_per_nfe=1e3 * r[2] / r[3],
             batch=case.shape[0])
        for r in rows
    ]
    for row in out:
        print(row, flush=True)
    return out


def report(w1_rows: list[dict], cost_rows: list[dict], load: str) -> str:
    lines = ["## Inpainting: W1 of x_1 to the exact conditional (mixture_inpainting, x_0 = a known)", ""]
    samplers = list(SAMPLERS)
    for a in KNOWN_VALUES:
        sub = [r for r in w1_rows if r["a"] == a]
        lines += [f"a = {a} (Monte Carlo floor {sub[0]['floor']:.3f})", "",
                  "| method | " + " | ".join(f"{s} {p}" for s in SDES for p in samplers) + " |",
                  "|---|" + "---:|" * (len(SDES) * len(samplers))]
        for m in METHODS:
            cells = [next(r for r in sub if r["method"] == m and r["sde"] == s and r["sampler"] == p)["w1"]
                     for s in SDES for p in samplers]
            lines.append(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    lines += [f"## Cost per NFE (DDIM 50, VP, exact mixture, B = {cost_rows[0]['batch']}; load {load})", "",
              "| score function | NFE | compile + first run (s) | median solve (s) | ms per NFE |",
              "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['what']} | {r['nfe']} | {r['compile_s']:.2f} | {r['median_s']:.4f} | {r['ms_per_nfe']:.3f} |"
        for r in cost_rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/bench/guidance.md")
    args = parser.parse_args()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    cost_rows = costs(exact_case(args.n), args.repeats)
    text = report(inpainting_w1(args.n), cost_rows, load)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
