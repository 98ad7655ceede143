"""Training throughput on this machine: the toy and digits configs with n_jitted_steps 1 and 5.

For each (config, n_jitted_steps) it reports
  * compile_s: ahead-of-time compilation of the train function for one dispatch of n_jitted_steps steps;
  * steps_per_s, examples_per_s: the real training loop (`scoresde.train.run`: host batches, sharding,
    dispatch, logging), the median of its logged rates after the first (which includes compilation);
  * the checkpoint stall, at the config's own preemption-checkpoint interval: how long one asynchronous `save`
    call blocks the loop (median of 5; a synchronous save beside it), that as a percentage of the interval,
    and for the toy config also measured directly: the mean time per step of runs that checkpoint at that
    interval over that of runs that do not (after the first logged interval, which includes compilation;
    medians of 3 runs each, alternated).

    python benchmarks/train.py [--out=out/benchmarks/train.json]

Writes JSON (one row per config and n_jitted_steps) and prints a Markdown table for the README. Compilation is
measured first and stored in a private persistent compilation cache, so the timed loops do not compile again.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import statistics
import tempfile
import time

import jax
import numpy as np

from scoresde import checkpoint, parallel, train
from scoresde import experiment as experiment_lib
from scoresde import workdir as workdir_lib
from scoresde import config as config_lib

ROOT = pathlib.Path(__file__).parents[1]
# (config, n_jitted_steps): steps per run and per logged rate, sized so that runs last seconds to minutes on 2
# CPU cores, and whether to measure the stall directly (whole runs spanning several checkpoint intervals).
# The digits network with n_jitted_steps=5 runs inside a lax.scan, where XLA:CPU computes convolution
# gradients ~35x slower, hence its short run.
RUNS = {
    ("toy/checkerboard", 1): {"n_iters": 12000, "log_freq": 250, "direct_stall": True},
    ("toy/checkerboard", 5): {"n_iters": 12000, "log_freq": 250, "direct_stall": True},
    ("digits/ddpmpp", 1): {"n_iters": 40, "log_freq": 10, "direct_stall": False},
    ("digits/ddpmpp", 5): {"n_iters": 10, "log_freq": 5, "direct_stall": False},
}


def load_config(path: str):
    return runpy.run_path(str(ROOT / "configs" / f"{path}.py"))["get_config"]()


def experiment_for(path: str, n_jitted: int, overrides: dict) -> train.Experiment:
    config = load_config(path)
    for key, value in {"n_jitted_steps": n_jitted, "eval_freq": 10**9, "snapshot_sampling": False,
                       **overrides}.items():
        config.training[key] = value
    return experiment_lib.build_experiment(config_lib.from_config_dict(config))


def compile_seconds(experiment: train.Experiment) -> float:
    """Seconds to compile the train function for one dispatch of n_jitted_steps steps."""
    t, mesh = experiment.config.training, parallel.data_mesh()
    state = train.initial_state(experiment)
    batches = np.stack([experiment.dataset.train_batch(i, t.batch_size) for i in range(t.n_jitted_steps)])
    steps = train.compile_train_steps(experiment.objective, experiment.optimizer,
                                      experiment.config.model.ema_rate, mesh)
    start = time.perf_counter()
    steps.lower(state, parallel.shard_batch(batches, mesh, batch_axis=1)).compile()
    return time.perf_counter() - start


def logged_rates(experiment: train.Experiment) -> list[float]:
    """The steps/s `train.run` logs every log_freq steps, after the first (which includes compilation)."""
    with tempfile.TemporaryDirectory() as workdir:
        train.run(experiment, workdir, progress=False)
        lines = (pathlib.Path(workdir) / workdir_lib.METRICS_FILE).read_text().splitlines()
    return [json.loads(line)["steps_per_sec"] for line in lines if "steps_per_sec" in line][1:]


def seconds_per_step(rates: list[float]) -> float:
    """Mean time per step over equally long logged intervals: stalls count in full, unlike in a median."""
    return statistics.mean(1.0 / r for r in rates)


def save_block_ms(experiment: train.Experiment, *, async_save: bool, repeats: int = 5) -> float:
    """Median milliseconds one `Checkpointer.save` call blocks the caller."""
    state = train.initial_state(experiment)
    times = []
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = checkpoint.Checkpointer(workdir, async_save=async_save)
        for step in range(repeats):
            start = time.perf_counter()
            checkpointer.save(step, state, snapshot=False)
            times.append(time.perf_counter() - start)
            checkpointer.wait()
        checkpointer.close()
    return 1e3 * statistics.median(times)


def benchmark(path: str, n_jitted: int, repeats: int = 3) -> dict:
    run = dict(RUNS[path, n_jitted])
    direct_stall = run.pop("direct_stall")
    interval = load_config(path).training.snapshot_freq_for_preemption
    quiet = {**run, "snapshot_freq": run["n_iters"], "snapshot_freq_for_preemption": run["n_iters"]}
    plain = experiment_for(path, n_jitted, quiet)
    batch_size = plain.config.training.batch_size
    compile_s = compile_seconds(plain)
    rates = logged_rates(plain)
    steps_per_s = statistics.median(rates)
    blocks_ms = save_block_ms(plain, async_save=True)
    row = {"config": path, "n_jitted_steps": n_jitted, "batch_size": batch_size,
           "compile_s": round(compile_s, 2), "steps_per_s": round(steps_per_s, 2),
           "examples_per_s": round(steps_per_s * batch_size), "checkpoint_every_steps": interval,
           "save_blocks_ms_async": round(blocks_ms, 1),
           "save_blocks_ms_sync": round(save_block_ms(plain, async_save=False), 1),
           "stall_percent_of_interval": round(100 * blocks_ms / 1e3 / (interval / steps_per_s), 2)}
    if direct_stall:
        saving = experiment_for(path, n_jitted, {**quiet, "snapshot_freq_for_preemption": interval})
        plain_runs, saving_runs = [seconds_per_step(rates)], []
        for _ in range(repeats):
            saving_runs.append(seconds_per_step(logged_rates(saving)))
            if len(plain_runs) < repeats:
                plain_runs.append(seconds_per_step(logged_rates(plain)))
        without, with_saves = statistics.median(plain_runs), statistics.median(saving_runs)
        row.update(ms_per_step_without_checkpoints=round(1e3 * without, 3),
                   ms_per_step_with_checkpoints=round(1e3 * with_saves, 3),
                   stall_percent_measured=round(100 * (with_saves / without - 1), 1))
    return row


def markdown(rows: list[dict]) -> str:
    header = ("| config | n_jitted_steps | batch | compile (s) | steps/s | examples/s | checkpoint every | "
              "save blocks (async / sync) | stall: blocked / interval | "
              "stall: time per step with / without |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        measured = ("-" if "stall_percent_measured" not in r else
                    f"{r['stall_percent_measured']}% ({r['ms_per_step_with_checkpoints']} / "
                    f"{r['ms_per_step_without_checkpoints']} ms)")
        lines.append(f"| {r['config']} | {r['n_jitted_steps']} | {r['batch_size']} | {r['compile_s']} | "
                     f"{r['steps_per_s']} | {r['examples_per_s']} | {r['checkpoint_every_steps']} steps | "
                     f"{r['save_blocks_ms_async']} / {r['save_blocks_ms_sync']} ms | "
                     f"{r['stall_percent_of_interval']}% | {measured} |")
    return "\n".join(lines)


def write_rows(path: str, rows: list[dict], table: str) -> None:
    """Writes `rows` as JSON, with the device and JAX version, to `path`, and prints `table`."""
    payload = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}", "jax": jax.__version__,
               "rows": rows}
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(table)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="toy/checkerboard,digits/ddpmpp")
    parser.add_argument("--out", default="out/benchmarks/train.json")
    args = parser.parse_args()
    cache = tempfile.TemporaryDirectory()
    jax.config.update("jax_compilation_cache_dir", cache.name)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    rows = [benchmark(path, n) for path in args.configs.split(",") for n in (1, 5)]
    write_rows(args.out, rows, markdown(rows))


if __name__ == "__main__":
    main()
