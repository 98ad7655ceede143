"""Probability-flow ODE solvers on exact scores: error per grid, jitted RK45 against a host loop, time/NFE.

    python -m benchmarks.ode [--sections=grids,few_step,rk45,per_nfe] [--repeats=5]
                             [--out=out/benchmarks/ode.json]

grids     Pathwise error (RMS over paths of |x - x_ref|, float64, every solver started from the same x_T,
          x_ref from RK45 at rtol = atol = 1e-10) of each fixed-step solver at its default settings, for every
          schedule, SDE (VP, sub-VP, VE) and exact-score problem (mixture_2d, mixture_image). A sampler's
          default grid is the schedule with the smallest geometric-mean error over the six SDE x problem cases
          and over the orders it offers (DPMSolverPP 2 and 3, UniPC 2 and 3).
few_step  The same error on mixture_2d under VP (beta 0.1-20) at 10 NFE for every solver and schedule.
rk45      Our jitted RK45 (diffrax) against the reference implementation's way of solving, a host-side
          scipy.integrate.solve_ivp(method="RK45") calling a jitted drift once per evaluation, at equal
          tolerance (rtol = atol = 1e-5): sampling, and the likelihood with one Rademacher probe; float32,
          VP and VE, mixture_2d with 4096 and 256 paths and mixture_image (D = 32) with 256.
per_nfe   Wall time per score evaluation of each sampler at its defaults, 4096 2-D paths under VP, float32.

Run times are medians of --repeats calls after a first call that compiles; compile time is reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

import scoresde as sd
from scoresde.bench.accuracy import endpoint_fn, pathwise_error
from scoresde.bench.report import write_json
from scoresde.bench.timing import time_call
from scoresde.samplers.base import per_example

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
PROBLEMS = ("mixture_2d", "mixture_image")
SCHEDULES = ("uniform", "quadratic", "karras", "logsnr")
SOLVERS = {
    "euler": sd.samplers.Euler(),
    "heun": sd.samplers.Heun(),
    "ddim": sd.samplers.DDIM(),
    "dpm_solver_pp_2m": sd.samplers.DPMSolverPP(order=2),
    "dpm_solver_pp_3m": sd.samplers.DPMSolverPP(order=3),
    "unipc_2": sd.samplers.UniPC(order=2),
    "unipc_3": sd.samplers.UniPC(order=3),
}


def end_point(sde, mix, sampler, x):
    """x_eps from x_T by the exact score, without the final denoising step: each evaluation the solver's."""
    return endpoint_fn(sde, mix.score_fn(sde), sampler)(jax.random.PRNGKey(0), x)[0]


def error_table(cases, samplers_at) -> list[dict]:
    """Pathwise error of samplers_at(name) for every (problem, sde, x_T, x_ref) case and schedule."""
    rows = []
    for name, base in SOLVERS.items():
        sampler = samplers_at(base)
        for schedule in SCHEDULES:
            errors = {}
            on_grid = dataclasses.replace(sampler, schedule=schedule)
            for problem, sde_name, x, ref in cases:
                out = end_point(SDES[sde_name], sd.toy.build_problem(problem), on_grid, x)
                errors[f"{problem}/{sde_name}"] = pathwise_error(out, ref)
            geo = math.exp(np.mean(np.log(list(errors.values()))))
            rows.append(dict(solver=name, schedule=schedule, nfe=sampler.nfe(), errors=errors, geomean=geo))
            print(f"  {name:17s} {schedule:9s} nfe {sampler.nfe():3d} geomean {geo:.4f}", flush=True)
    return rows


def reference_cases(problems, sde_names, num_paths: int):
    cases = []
    for problem in problems:
        mix = sd.toy.build_problem(problem)
        for sde_name in sde_names:
            sde = SDES[sde_name]
            x = sde.prior_sampling(jax.random.PRNGKey(1), (num_paths,) + mix.event_shape).astype(jnp.float64)
            ref = end_point(sde, mix, sd.samplers.RK45(rtol=1e-10, atol=1e-10), x)
            cases.append((problem, sde_name, x, ref))
    return cases


def grids_section(args) -> dict:
    with jax.enable_x64(True):
        cases = reference_cases(PROBLEMS, SDES, args.num_paths)
        rows = error_table(cases, lambda sampler: sampler)
    return dict(rows=rows, defaults=choose_defaults(rows))


def choose_defaults(rows) -> dict:
    """Per sampler class, the schedule of smallest geometric-mean error over its cases and orders."""
    by_class = {}
    for row in rows:
        cls = type(SOLVERS[row["solver"]]).__name__
        by_class.setdefault(cls, {}).setdefault(row["schedule"], []).append(math.log(row["geomean"]))
    return {cls: min(scores, key=lambda s: np.mean(scores[s])) for cls, scores in by_class.items()}


def few_step_section(args) -> dict:
    with jax.enable_x64(True):
        cases = reference_cases(["mixture_2d"], ["vp"], args.num_paths)
        rows = error_table(cases, lambda sampler: sampler.with_nfe(10))
    return dict(rows=rows)


# ----- RK45: jitted against SciPy on the host, as the reference implementation solves -----


def scipy_solve(vector_field, y0: np.ndarray, t0: float, t1: float, tol: float):
    """solve_ivp(method="RK45") with one host round trip per evaluation of the jitted vector field."""
    sol = integrate.solve_ivp(vector_field, (t0, t1), y0, rtol=tol, atol=tol, method="RK45")
    return sol.y[:, -1], sol.nfev


def scipy_sampler(sde, score_fn, x, tol):
    drift = jax.jit(lambda x, t: sde.probability_flow(score_fn, x, per_example(t, x)))

    def vector_field(t, y):
        return np.asarray(drift(jnp.asarray(y.reshape(x.shape), jnp.float32), t), np.float64).ravel()

    return lambda: scipy_solve(vector_field, np.asarray(x, np.float64).ravel(), sde.T, sde.default_eps, tol)


def scipy_likelihood(sde, score_fn, x, tol):
    """The augmented ODE of score_sde's likelihood.py: drift and a Hutchinson divergence by VJP, one probe."""
    probe = jax.random.rademacher(jax.random.PRNGKey(2), x.shape, jnp.float32)

    @jax.jit
    def augmented(x, t):
        t = per_example(t, x)
        drift, vjp = jax.vjp(lambda z: sde.probability_flow(score_fn, z, t), x)
        return drift, jnp.sum(vjp(probe)[0] * probe, axis=tuple(range(1, x.ndim)))

    def vector_field(t, y):
        drift, div = augmented(jnp.asarray(y[: x.size].reshape(x.shape), jnp.float32), t)
        return np.concatenate([np.asarray(drift, np.float64).ravel(), np.asarray(div, np.float64)])

    y0 = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(x.shape[0])])

    def run():
        y, nfe = scipy_solve(vector_field, y0, sde.default_eps, sde.T, tol)
        z = jnp.asarray(y[: x.size].reshape(x.shape), jnp.float32)
        return sde.prior_logp(z) + y[x.size :], nfe

    return run


def compare(label, ours, baseline, repeats) -> dict:
    compile_ours, time_ours = time_call(ours, repeats)
    first_base, time_base = time_call(baseline, repeats)
    row = dict(
        task=label,
        nfe_ours=int(ours()[1]),
        nfe_scipy=int(baseline()[1]),
        seconds_ours=time_ours,
        seconds_scipy=time_base,
        compile_seconds_ours=compile_ours - time_ours,
        compile_seconds_scipy=first_base - time_base,
        speedup=time_base / time_ours,
    )
    print(f"  {label}: ours {time_ours:.4f}s ({row['nfe_ours']} NFE), scipy {time_base:.4f}s "
          f"({row['nfe_scipy']} NFE), x{row['speedup']:.1f}", flush=True)
    return row


def rk45_section(args) -> dict:
    tol, rows = 1e-5, []
    for problem, num in (("mixture_2d", 4096), ("mixture_2d", 256), ("mixture_image", 256)):
        mix = sd.toy.build_problem(problem)
        for sde_name in ("vp", "ve"):
            sde = SDES[sde_name]
            score_fn = mix.score_fn(sde)
            x_t = sde.prior_sampling(jax.random.PRNGKey(1), (num,) + mix.event_shape)
            data = mix.sample(jax.random.PRNGKey(3), num)
            sampler = sd.samplers.RK45(rtol=tol, atol=tol)
            sample_jit = jax.jit(lambda x: sampler.solve(None, sde, score_fn, x, sde.default_eps))
            key = jax.random.PRNGKey(2)
            logp_jit = jax.jit(lambda x: sd.log_likelihood(key, sde, score_fn, x, rtol=tol, atol=tol))
            label = f"{problem} [{num}, {mix.dim}] {sde_name}"
            baseline = scipy_sampler(sde, score_fn, x_t, tol)
            rows.append(compare(f"sample {label}", lambda: sample_jit(x_t), baseline, args.repeats))
            baseline = scipy_likelihood(sde, score_fn, data, tol)
            rows.append(compare(f"likelihood {label}", lambda: logp_jit(data), baseline, args.repeats))
    return dict(rtol=tol, atol=tol, rows=rows)


def per_nfe_section(args) -> dict:
    sde, mix = SDES["vp"], sd.toy.mixture_2d()
    x = sde.prior_sampling(jax.random.PRNGKey(1), (4096, 2))
    rows = []
    for name, sampler in {**SOLVERS, "rk45": sd.samplers.RK45()}.items():
        key, score_fn = jax.random.PRNGKey(0), mix.score_fn(sde)
        run = jax.jit(lambda x: sd.sample(key, sde, score_fn, x.shape, sampler, x_init=x, denoise=False))
        first, median = time_call(lambda: run(x), args.repeats)
        nfe = int(run(x)[1])
        rows.append(dict(solver=name, nfe=nfe, seconds=median, compile_seconds=first - median,
                         us_per_nfe=1e6 * median / nfe))
        print(f"  {name:17s} {nfe:4d} NFE {1e6 * median / nfe:8.1f} us/NFE", flush=True)
    return dict(rows=rows)


def markdown(results: dict) -> str:
    out = []
    if "grids" in results:
        defaults = results["grids"]["defaults"]
        out += ["| solver | NFE | " + " | ".join(SCHEDULES) + " | default |",
                "|---|---|" + "---|" * (len(SCHEDULES) + 1)]
        for name, sampler in SOLVERS.items():
            rows = [r for r in results["grids"]["rows"] if r["solver"] == name]
            cells = " | ".join(f"{r['geomean']:.4f}" for r in rows)
            out.append(f"| {name} | {rows[0]['nfe']} | {cells} | {defaults[type(sampler).__name__]} |")
        out.append("")
    if "few_step" in results:
        out += ["| solver (10 NFE, VP, mixture_2d) | " + " | ".join(SCHEDULES) + " |",
                "|---|" + "---|" * len(SCHEDULES)]
        for name in SOLVERS:
            rows = [r for r in results["few_step"]["rows"] if r["solver"] == name]
            cells = " | ".join(f"{r['geomean']:.4f}" for r in rows)
            out.append(f"| {name} ({rows[0]['nfe']} NFE) | {cells} |")
        out.append("")
    if "rk45" in results:
        out += ["| task | NFE ours / SciPy | seconds ours / SciPy | speedup | compile s (ours) |",
                "|---|---|---|---|---|"]
        for r in results["rk45"]["rows"]:
            out.append(f"| {r['task']} | {r['nfe_ours']} / {r['nfe_scipy']} | {r['seconds_ours']:.4f} / "
                       f"{r['seconds_scipy']:.3f} | {r['speedup']:.1f}x | {r['compile_seconds_ours']:.2f} |")
        out.append("")
    if "per_nfe" in results:
        out += ["| solver | NFE | ms per solve | us per NFE |", "|---|---|---|---|"]
        for r in results["per_nfe"]["rows"]:
            out.append(f"| {r['solver']} | {r['nfe']} | {1e3 * r['seconds']:.2f} | {r['us_per_nfe']:.1f} |")
    return "\n".join(out)


SECTIONS = {
    "grids": grids_section,
    "few_step": few_step_section,
    "rk45": rk45_section,
    "per_nfe": per_nfe_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated; {list(SECTIONS)}")
    parser.add_argument("--num_paths", type=int, default=2048, help="paths per error measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="out/benchmarks/ode.json")
    args = parser.parse_args()
    names = args.sections.split(",")
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--sections: unknown {unknown}; valid names: {list(SECTIONS)}.")
    results = dict(device=str(jax.devices()[0]), cpu_count=os.cpu_count())
    for name in names:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        results[name] = SECTIONS[name](args)
        results[name]["section_seconds"] = time.perf_counter() - start
    write_json(args.out, results)
    print(f"wrote {args.out}")
    print(markdown(results))


if __name__ == "__main__":
    main()
