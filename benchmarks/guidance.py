"""Guidance and inpainting: accuracy against exact conditionals, and cost per score evaluation.

    python benchmarks/guidance.py [--n=2000] [--repeats=5] [--out=docs/bench/guidance.md]
        [--parts=cost,accuracy,equal,pc_steps]

Accuracy (exact mixture `toy.mixture_inpainting`, x_0 known, x_1 filled in): the 1-D Wasserstein distance W1
of the sampled x_1 to the exact conditional p(x_1 | x_0 = a) (`GaussianMixture.condition`), beside its Monte
Carlo floor (W1 between two exact draw sets of the same size), per method x sampler x SDE x known value.

Equal accuracy (VP): for each method and sampler family (PC; DPM-Solver++ for the ODE samplers), the fewest
steps on a ladder whose W1 reaches a target per known value (TARGETS), with its NFE, its score evaluations per
example (NFE x particles) and the seconds of the solve; a method that misses the target on the whole ladder
is reported at its largest rung. SMCDiff runs on n / 4 examples (32 particles each), the others on n.

PC steps: W1 at x_0 = 0 of SMCDiff resampled at every step and adaptively behind PC at 50 .. 1,000 steps,
per SDE (the table behind `guidance.default_method`'s switch at EVERY_STEP_MAX steps).

Cost: wall time per NFE of one jitted solve, the median of `repeats` runs after one compiling run (reported
separately), for classifier-free guidance (two score calls, or one on the doubled batch), classifier
guidance (a gradient of the classifier), and each inpainting method. A `Case` holds the score functions: the
exact mixture's here; a trained conditional model plugs in as another `Case`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
SAMPLERS = {"PC 100": sd.samplers.PC(num_steps=100), "DDIM 50": sd.samplers.DDIM(num_steps=50),
            "DPM-Solver++ 20": sd.samplers.DPMSolverPP(num_steps=20)}
METHODS = {
    "replacement": Replacement(), "RePaint r=10": RePaint(resamplings=10), "PiGDM": PiGDM(),
    # guidance.DEFAULT_METHOD (samplers whose every step draws noise) and ODE_DEFAULT_METHOD (the others)
    "SMCDiff P=32, every step": SMCDiff(num_particles=32, resample_below=1.0),
    "SMCDiff P=32, adaptive": SMCDiff(num_particles=32, resample_below=0.5),
}
KNOWN_VALUES = (0.5, 0.0)  # x_0 between two modes (a two-mode conditional), and at a mode (one mode)
EQUAL_ACCURACY_METHODS = ("replacement", "RePaint r=10", "PiGDM", "SMCDiff P=32, every step",
                          "SMCDiff P=32, adaptive")
TARGETS = {0.5: 0.15, 0.0: 0.3}  # W1 each method must reach at equal accuracy (floors: 0.016 / 0.030)
LADDERS = {"PC": (25, 50, 100, 200), "DPM-Solver++": (5, 10, 20, 40)}
PC_STEPS = (50, 100, 200, 500, 1000)  # the step counts of the PC table (x_0 = 0): up to the configs' default
PC_STEPS_METHODS = ("SMCDiff P=32, every step", "SMCDiff P=32, adaptive")


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


def inpaint_once(sde, sampler, method, a: float, n: int, seed: int = 0) -> dict:
    """One jitted inpainting of n points with x_0 = a known: W1 of x_1 to the exact conditional, its floor
    (two exact draw sets of n), NFE, evaluations per example and the seconds of the compiled solve."""
    mix, mask = toy.mixture_inpainting(), jnp.array([1.0, 0.0])
    n = n // 4 if isinstance(method, SMCDiff) else n
    cond = mix.condition(np.array([True, False]), np.array([a, 0.0]))
    exact, exact2 = (cond.sample(jax.random.PRNGKey(seed + k), n)[None, :, 0] for k in (100, 101))
    x_known = jnp.zeros((n, 2)).at[:, 0].set(a)
    fn = jax.jit(
        lambda key: guidance.inpaint(key, sde, mix.score_fn(sde), x_known, mask, sampler, method=method)
    )
    _, seconds, nfe = time_solve(fn, 1)
    x, _ = fn(jax.random.PRNGKey(seed))
    return dict(w1=float(metrics.wasserstein_1d(x[None, :, 1], exact, p=1)[0]), nfe=nfe, n=n,
                floor=float(metrics.wasserstein_1d(exact, exact2, p=1)[0]),
                evaluations=nfe * method.particles, seconds=seconds)


def inpainting_w1(n: int, seed: int = 0) -> list[dict]:
    """W1 of inpainted x_1 to the exact conditional, and its floor, for every method, sampler and SDE."""
    rows = []
    for a, sde_name, sampler_name, method_name in itertools.product(KNOWN_VALUES, SDES, SAMPLERS, METHODS):
        row = inpaint_once(SDES[sde_name], SAMPLERS[sampler_name], METHODS[method_name], a, n, seed)
        rows.append(dict(a=a, sde=sde_name, sampler=sampler_name, method=method_name, **row))
        print(rows[-1], flush=True)
    return rows


def equal_accuracy(n: int, seed: int = 0) -> list[dict]:
    """Per known value, sampler family and method: the first rung of LADDERS whose W1 reaches TARGETS (VP)."""
    families = {"PC": sd.samplers.PC(), "DPM-Solver++": sd.samplers.DPMSolverPP()}
    methods = {name: method for name, method in METHODS.items() if name in EQUAL_ACCURACY_METHODS}
    rows = []
    for a, (family, base), (method_name, method) in itertools.product(
        KNOWN_VALUES, families.items(), methods.items()
    ):
        for steps in LADDERS[family]:
            row = inpaint_once(sd.VPSDE(), base.with_steps(steps), method, a, n, seed)
            if row["w1"] <= TARGETS[a]:
                break
        rows.append(dict(a=a, sampler=family, steps=steps, method=method_name,
                         reached=row["w1"] <= TARGETS[a], **row))
        print(rows[-1], flush=True)
    return rows


def pc_steps_w1(n: int, seed: int = 0) -> list[dict]:
    """W1 at x_0 = 0 of each SMCDiff resampling rule behind PC at each of PC_STEPS steps, for every SDE."""
    rows = []
    for method_name, sde_name, steps in itertools.product(PC_STEPS_METHODS, SDES, PC_STEPS):
        sampler = sd.samplers.PC(num_steps=steps)
        row = inpaint_once(SDES[sde_name], sampler, METHODS[method_name], 0.0, n, seed)
        rows.append(dict(method=method_name, sde=sde_name, steps=steps, **row))
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


def accuracy_report(w1_rows: list[dict]) -> list[str]:
    lines = ["## Inpainting: W1 of x_1 to the exact conditional (mixture_inpainting, x_0 = a known)", ""]
    samplers = list(SAMPLERS)
    for a in KNOWN_VALUES:
        sub = [r for r in w1_rows if r["a"] == a]
        lines += [f"a = {a} (Monte Carlo floor {sub[0]['floor']:.3f}; SMCDiff on n / 4 examples)", "",
                  "| method | " + " | ".join(f"{s} {p}" for s in SDES for p in samplers) + " |",
                  "|---|" + "---:|" * (len(SDES) * len(samplers))]
        for m in METHODS:
            cells = [next(r for r in sub if r["method"] == m and r["sde"] == s and r["sampler"] == p)["w1"]
                     for s in SDES for p in samplers]
            lines.append(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    return lines


def pc_steps_report(rows: list[dict]) -> list[str]:
    lines = [f"## SMCDiff behind PC at x_0 = 0 by number of steps (floor {rows[0]['floor']:.3f})", "",
             "| method | SDE | " + " | ".join(map(str, PC_STEPS)) + " |",
             "|---|---|" + "---:|" * len(PC_STEPS)]
    for m, sde_name in itertools.product(PC_STEPS_METHODS, SDES):
        cells = [r["w1"] for r in rows if r["method"] == m and r["sde"] == sde_name]
        lines.append(f"| {m} | {sde_name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines + [""]


def equal_accuracy_report(rows: list[dict]) -> list[str]:
    lines = ["## Inpainting at equal accuracy (VP): the fewest steps on the ladder that reach the target", ""]
    for a in KNOWN_VALUES:
        lines += [f"a = {a}, target W1 <= {TARGETS[a]}", "",
                  "| method | sampler | steps | W1 | NFE | evaluations per example | solve (s) | examples |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["a"] == a):
            steps = r["steps"] if r["reached"] else f"not reached at {r['steps']}"
            lines.append(f"| {r['method']} | {r['sampler']} | {steps} | {r['w1']:.3f} | {r['nfe']} | "
                         f"{r['evaluations']} | {r['seconds']:.3f} | {r['n']} |")
        lines.append("")
    return lines


def cost_report(cost_rows: list[dict], load: str) -> list[str]:
    lines = [f"## Cost per NFE (DDIM 50, VP, exact mixture, B = {cost_rows[0]['batch']}; load {load})", "",
             "| score function | NFE | compile + first run (s) | median solve (s) | ms per NFE |",
             "|---|---:|---:|---:|---:|"]
    return lines + [
        f"| {r['what']} | {r['nfe']} | {r['compile_s']:.2f} | {r['median_s']:.4f} | {r['ms_per_nfe']:.3f} |"
        for r in cost_rows
    ] + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="cost,accuracy,equal", help="which tables, comma-separated")
    parser.add_argument("--out", default="docs/bench/guidance.md")
    args = parser.parse_args()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    parts = {
        "cost": lambda: cost_report(costs(exact_case(args.n), args.repeats), load),
        "accuracy": lambda: accuracy_report(inpainting_w1(args.n)),
        "equal": lambda: equal_accuracy_report(equal_accuracy(args.n)),
        "pc_steps": lambda: pc_steps_report(pc_steps_w1(args.n)),
    }
    text = "\n".join(line for part in args.parts.split(",") for line in parts[part]())
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
