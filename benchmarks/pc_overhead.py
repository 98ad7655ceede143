"""PC sampling as one lax.scan inside jit versus the same steps driven from a Python loop.

1000 predictor-corrector steps (reverse diffusion + Langevin) of 10,000 2-D points with the exact mixture
score. The baseline jits the very same step function (`PC.step_fn`) and calls it once per grid step from
Python, as a sampler without a compiled loop does. Compile time is reported apart; run times are medians of
--repeats runs.

    python benchmarks/pc_overhead.py [--num_points=10000] [--num_steps=1000] [--repeats=5]
"""

from __future__ import annotations

import argparse
import time

import jax

import scoresde as sd
from scoresde.bench.report import write_json
from scoresde.bench.timing import time_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_points", type=int, default=10_000)
    parser.add_argument("--num_steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="out/benchmarks/pc_overhead.json")
    args = parser.parse_args()

    sde, mix = sd.VPSDE(), sd.toy.mixture_2d()
    score_fn = mix.score_fn(sde)
    sampler = sd.samplers.PC(predictor="reverse_diffusion", corrector="langevin", num_steps=args.num_steps)
    key = jax.random.PRNGKey(0)
    x_init = sde.prior_sampling(jax.random.PRNGKey(1), (args.num_points, 2))
    grid = sampler.grid(sde, sde.default_eps)

    scanned = jax.jit(lambda key, x: sampler.solve(key, sde, score_fn, x, sde.default_eps)[0])
    step = jax.jit(sampler.step_fn(key, sde, score_fn))

    def python_loop():
        x = x_init
        for i in range(args.num_steps):
            x = step(x, i, grid[i], grid[i + 1])
        return x

    start = time.perf_counter()
    jax.block_until_ready(step(x_init, 0, grid[0], grid[1]))
    loop_compile = time.perf_counter() - start
    scan_first, scan_time = time_call(lambda: scanned(key, x_init), args.repeats)
    _, loop_time = time_call(python_loop, args.repeats)
    result = {
        "num_points": args.num_points,
        "num_steps": args.num_steps,
        "device": str(jax.devices()[0]),
        "scan_compile_s": scan_first - scan_time,
        "scan_run_s": scan_time,
        "loop_compile_s": loop_compile,
        "loop_run_s": loop_time,
        "loop_over_scan": loop_time / scan_time,
    }
    print("| driver | compile (s) | run, median (s) |\n|---|---|---|")
    print(f"| lax.scan in jit | {result['scan_compile_s']:.2f} | {scan_time:.3f} |")
    print(f"| Python loop of jitted steps | {loop_compile:.2f} | {loop_time:.3f} |")
    print(f"Python loop / scan: {result['loop_over_scan']:.2f}x")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
