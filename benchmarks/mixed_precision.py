"""Mixed precision on this machine: the toy and digits configs trained in float32 and with a bfloat16 network
(`training.compute_dtype`), and what their gradients and updates say about loss scaling and bfloat16 weights.

For each config and compute dtype it reports
  * compile_s: ahead-of-time compilation of one dispatch of the config's n_jitted_steps steps;
  * ms_per_step: the mean over --dispatches timed dispatches after it (host batches prepared beforehand);
  * gradients of one batch at the initial parameters, beside float32's: their relative difference (one
    Frobenius norm over all parameters); the share of entries that are zero although float32's are not (what
    underflow in the bfloat16 backward pass would show); the smallest nonzero |g|; and the shares of float32's
    |g| below float16's smallest normal (2^-14) and subnormal (2^-24) numbers, which float16 without loss
    scaling would flush or round coarsely; bfloat16 has float32's exponent range (smallest normal 2^-126).
And for the float32 run, after the timed steps at the full rate (warm-up off), the share of one step's
nonzero Adam updates and EMA increments that bfloat16 weights would round away (bf16(w + u) == bf16(w)): why
`training.param_dtype` stays float32.

With --quality_steps > 0 it also trains configs/toy/checkerboard.py for that many steps (its cosine decay
shortened to them) in float32 and in bfloat16 from seed 0, and in float32 from seed 1, and reports the sliced
W2 between 2,000 samples of the config's sampler drawn with the same key, bfloat16 against float32, beside the
float32 seed-to-seed and sampling-noise (another key) distances; the ms per step of these longer runs; and the
exact NLL of 1,000 test points, in nats, of each run, and of the float32 run's weights in a bfloat16 network.

    python benchmarks/mixed_precision.py [--configs=toy/checkerboard,digits/ddpmpp] [--dispatches=4]
        [--quality_steps=4000] [--out=out/benchmarks/mixed_precision.json]

Writes JSON (one row per config and dtype, then the quality row) and prints Markdown for the README. On CPU,
XLA emulates bfloat16 arithmetic (converting to float32 around each operation), so it is not faster there; the
gain it exists for (half the activation memory and traffic, bfloat16 matrix units) needs a GPU or TPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import scoresde as sd
from benchmarks.train import load_config, write_rows
from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import metrics, parallel, train

FLOAT16_NORMAL, FLOAT16_SUBNORMAL = 2.0**-14, 2.0**-24


def experiment_of(path: str, dtype: str, *, seed: int | None = None, n_iters: int | None = None
                  ) -> experiment_lib.Experiment:
    """configs/<path>.py with a network computing in `dtype`; by default at the full learning rate from the
    start, else (`n_iters`) with the config's warm-up and a cosine decay over n_iters steps."""
    config = load_config(path)
    config.training.compute_dtype = dtype
    if n_iters is None:
        config.optim.warmup = 0
    else:
        config.training.n_iters = n_iters
    config.seed = config.seed if seed is None else seed
    return experiment_lib.build_experiment(config_lib.from_config_dict(config))


def flat(tree) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float32)) for leaf in leaves])


def host_batches(experiment, count: int) -> list[np.ndarray]:
    t = experiment.config.training
    return [np.stack([experiment.dataset.train_batch(d * t.n_jitted_steps + i, t.batch_size)
                      for i in range(t.n_jitted_steps)]) for d in range(count)]


def timed_steps(experiment, dispatches: int) -> tuple[dict, train.TrainState]:
    """Compile seconds, ms per step over `dispatches` dispatches, and the state after them."""
    mesh = parallel.data_mesh()
    steps = train.compile_train_steps(experiment.objective, experiment.optimizer,
                                      experiment.config.model.ema_rate, mesh)
    batches = [parallel.shard_batch(b, mesh, batch_axis=1) for b in host_batches(experiment, dispatches + 1)]
    state = train.initial_state(experiment)
    start = time.perf_counter()
    compiled = steps.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    state, losses = compiled(state, batches[0])  # not timed: its first run
    jax.block_until_ready(losses)
    start = time.perf_counter()
    for batch in batches[1:]:
        state, losses = compiled(state, batch)
    jax.block_until_ready(losses)
    per_step = (time.perf_counter() - start) / (dispatches * experiment.config.training.n_jitted_steps)
    return {"compile_s": round(compile_s, 2), "ms_per_step": round(1e3 * per_step, 2),
            "loss_finite": bool(np.isfinite(losses).all())}, state


def gradient(experiment) -> np.ndarray:
    """The gradient of the first batch's loss at the initial parameters, flattened."""
    params = experiment.init_params()
    batch = jnp.asarray(experiment.dataset.train_batch(0, experiment.config.training.batch_size))
    return flat(jax.jit(jax.grad(experiment.objective))(params, jax.random.PRNGKey(0), batch))


def gradient_figures(g: np.ndarray, reference: np.ndarray) -> dict:
    magnitude = np.abs(reference)
    return {"grad_relative_difference": float(np.linalg.norm(g - reference) / np.linalg.norm(reference)),
            "grad_zero_where_float32_is_not": float(np.mean((g == 0) & (reference != 0))),
            "grad_smallest_nonzero": float(np.min(np.abs(g[g != 0]))),
            "float32_grad_below_float16_normal": float(np.mean(magnitude < FLOAT16_NORMAL)),
            "float32_grad_below_float16_subnormal": float(np.mean(magnitude < FLOAT16_SUBNORMAL))}


def rounded_away(base: np.ndarray, change: np.ndarray) -> float:
    """Share of the nonzero changes that bfloat16 storage of `base` would lose."""
    bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)
    moving = change != 0
    return float(np.mean(bf16(base + change)[moving] == bf16(base)[moving]))


def lost_updates(experiment, state: train.TrainState) -> dict:
    """What bfloat16 weights would lose of the next step's Adam update and EMA increment, at `state`."""
    step = int(state.step)
    batch = jnp.asarray(experiment.dataset.train_batch(step, experiment.config.training.batch_size))
    grads = jax.jit(jax.grad(experiment.objective))(state.params, jax.random.PRNGKey(step), batch)
    updates, _ = experiment.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rate = experiment.config.model.ema_rate
    increment = jax.tree_util.tree_map(lambda p, e: (1.0 - rate) * (p - e), params, state.ema_params)
    return {"after_steps": step,
            "adam_updates_lost_in_bf16": rounded_away(flat(state.params), flat(updates)),
            "ema_increments_lost_in_bf16": rounded_away(flat(state.ema_params), flat(increment))}


def benchmark(path: str, dispatches: int) -> list[dict]:
    rows, reference = [], None
    for dtype in ("float32", "bfloat16"):
        experiment = experiment_of(path, dtype)
        timing, state = timed_steps(experiment, dispatches)
        g = gradient(experiment)
        reference = g if reference is None else reference
        row = {"config": path, "compute_dtype": dtype, "batch_size": experiment.config.training.batch_size,
               "n_jitted_steps": experiment.config.training.n_jitted_steps, **timing,
               **gradient_figures(g, reference)}
        if dtype == "float32":
            row.update(lost_updates(experiment, state))
        rows.append(row)
    return rows


def nll(experiment, params, x: jax.Array) -> float:
    """Mean exact negative log-likelihood of points x in nats under `experiment`'s network with `params`."""
    objective = experiment.objective
    logp = jax.jit(lambda p: sd.log_likelihood(jax.random.PRNGKey(0), objective.sde, objective.score_fn(p), x,
                                               divergence="exact")[0])(params)
    return float(-jnp.mean(logp))


def quality(steps: int, num_samples: int = 2000) -> dict:
    """bfloat16 against float32 training of the toy config: samples, likelihood and step time (see above)."""
    path, runs = "toy/checkerboard", {}
    for seed, dtype in ((0, "float32"), (0, "bfloat16"), (1, "float32")):
        experiment = experiment_of(path, dtype, seed=seed, n_iters=steps)
        timing, state = timed_steps(experiment, steps // experiment.config.training.n_jitted_steps - 1)
        runs[seed, dtype] = experiment, state, timing["ms_per_step"]
    draw = lambda seed, dtype, key: experiment_lib.sampling_fn(runs[seed, dtype][0], num_samples)(
        runs[seed, dtype][1].ema_params, jax.random.PRNGKey(key))[0]
    reference = draw(0, "float32", 0)
    distance = lambda x: float(metrics.sliced_wasserstein(jax.random.PRNGKey(3), x, reference))
    (full, full_state, _), (low, low_state, _) = runs[0, "float32"], runs[0, "bfloat16"]
    x = jnp.asarray(np.asarray(full.dataset.test)[:1000])
    return {"config": path, "steps": steps, "ms_per_step_float32": runs[0, "float32"][2],
            "ms_per_step_bfloat16": runs[0, "bfloat16"][2],
            "sw2_bfloat16": distance(draw(0, "bfloat16", 0)),
            "sw2_other_seed": distance(draw(1, "float32", 0)),
            "sw2_other_noise": distance(draw(0, "float32", 1)),
            "nll_float32": nll(full, full_state.ema_params, x),
            "nll_bfloat16": nll(low, low_state.ema_params, x),
            "nll_float32_weights_in_bfloat16": nll(low, full_state.ema_params, x)}


def quality_markdown(row: dict) -> str:
    return (f"\n{row['config']}, {row['steps']} steps: sliced W2 to the float32 run's samples: bfloat16 "
            f"{row['sw2_bfloat16']:.4f}, float32 of seed 1 {row['sw2_other_seed']:.4f}, float32 from other "
            f"noise {row['sw2_other_noise']:.4f}; NLL (nats) float32 {row['nll_float32']:.4f}, bfloat16 "
            f"{row['nll_bfloat16']:.4f}, float32 weights in bfloat16 "
            f"{row['nll_float32_weights_in_bfloat16']:.4f}; ms per step float32 "
            f"{row['ms_per_step_float32']}, bfloat16 {row['ms_per_step_bfloat16']}.")


def markdown(rows: list[dict]) -> str:
    lines = ["| config | compute dtype | compile (s) | ms/step | grad vs float32 | zero where float32 is "
             "not | smallest nonzero grad | float32 grads below fp16 normal / subnormal |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['config']} | {r['compute_dtype']} | {r['compile_s']} | {r['ms_per_step']} | "
                     f"{r['grad_relative_difference']:.2e} | {r['grad_zero_where_float32_is_not']:.1e} | "
                     f"{r['grad_smallest_nonzero']:.1e} | {r['float32_grad_below_float16_normal']:.1%} / "
                     f"{r['float32_grad_below_float16_subnormal']:.1%} |")
    for r in rows:
        if "after_steps" in r:
            lines.append(f"\n{r['config']}, float32 weights after {r['after_steps']} steps: bfloat16 weights "
                         f"would lose {r['adam_updates_lost_in_bf16']:.1%} of the nonzero Adam updates and "
                         f"{r['ema_increments_lost_in_bf16']:.1%} of the EMA increments of the next step.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="toy/checkerboard,digits/ddpmpp")
    parser.add_argument("--dispatches", type=int, default=4, help="timed dispatches after the first")
    parser.add_argument("--quality_steps", type=int, default=4000, help="0: no quality runs")
    parser.add_argument("--out", default="out/benchmarks/mixed_precision.json")
    args = parser.parse_args()
    rows = [row for path in args.configs.split(",") if path for row in benchmark(path, args.dispatches)]
    table = markdown(rows)
    if args.quality_steps:
        rows.append(quality(args.quality_steps))
        table += quality_markdown(rows[-1])
    write_rows(args.out, rows, table)


if __name__ == "__main__":
    main()
