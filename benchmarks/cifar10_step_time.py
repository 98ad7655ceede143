"""Training speed of the CIFAR-10 DDPM++ continuous (VP) config: batch 128, random data, after compile.

The network (61,804,419 parameters), loss, optimizer, EMA and n_jitted_steps come from
configs/cifar10/vp_ddpmpp_continuous.py through the same code as `scoresde train`; only the images are random
(uniform in [-1, 1]), so no dataset is needed. The reference implementation reports 0.30 s/step on 4 V100s.
Prints one JSON line: compile time apart, then seconds per optimizer step over --steps steps, and the device's
peak memory where it reports one. --compute_dtype=bfloat16 runs the network in bfloat16 (float32 weights,
`training.compute_dtype`).

    python benchmarks/cifar10_step_time.py [--steps=50] [--batch_size=128] [--compute_dtype=float32]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import time

import jax

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import parallel, train

ROOT = pathlib.Path(__file__).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/cifar10/vp_ddpmpp_continuous.py"))
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps, after compilation")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--compute_dtype", default="float32", help="training.compute_dtype")
    args = parser.parse_args()

    config_dict = runpy.run_path(args.config)["get_config"]()
    config_dict.training.compute_dtype = args.compute_dtype
    config = config_lib.from_config_dict(config_dict)
    t = config.training
    objective = experiment_lib.build_objective(config, images=True)
    optimizer = experiment_lib.build_optimizer_of(config)
    mesh = parallel.data_mesh()
    parallel.check_batch_size(args.batch_size, mesh)
    shape = (t.n_jitted_steps, args.batch_size, 32, 32, 3)
    batches = parallel.shard_batch(
        jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0), mesh, batch_axis=1)

    start = time.perf_counter()
    example = jax.numpy.zeros((1, 32, 32, 3))
    state = jax.jit(lambda: train.init_state(config.seed, objective.model, optimizer, example),
                    out_shardings=parallel.replicated(mesh))()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    steps = train.compile_train_steps(objective, optimizer, config.model.ema_rate, mesh)
    start = time.perf_counter()
    state, losses = steps(state, batches)
    jax.block_until_ready(losses)
    compile_s = time.perf_counter() - start

    dispatches = max(1, args.steps // t.n_jitted_steps)
    start = time.perf_counter()
    for _ in range(dispatches):
        state, losses = steps(state, batches)
    jax.block_until_ready(losses)
    seconds_per_step = (time.perf_counter() - start) / (dispatches * t.n_jitted_steps)

    print(json.dumps({
        "benchmark": "cifar10_step_time", "config": pathlib.Path(args.config).name,
        "device": jax.devices()[0].device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
        "parameters": sum(int(x.size) for x in jax.tree_util.tree_leaves(state.params)),
        "batch_size": args.batch_size, "dtype": t.compute_dtype, "n_jitted_steps": t.n_jitted_steps,
        "init_compile_s": round(init_s, 1), "step_compile_s": round(compile_s, 1),
        "timed_steps": dispatches * t.n_jitted_steps, "seconds_per_step": round(seconds_per_step, 4),
        "steps_per_s": round(1.0 / seconds_per_step, 2),
        "examples_per_s": round(args.batch_size / seconds_per_step, 1),
        "loss_finite": bool(jax.numpy.isfinite(losses).all()),
        "peak_memory_gib": peak_memory_gib(),
    }))


def peak_memory_gib() -> float | None:
    """The first device's peak allocation so far, where its backend reports one (GPU, TPU; not CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


if __name__ == "__main__":
    main()
