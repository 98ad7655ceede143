"""Data-parallel scaling: examples/s of training and of chunked sampling on 1, 2, 4, 8 devices and on 2
processes, and samples/s of `scoresde sample --num_samples=N --batch_size=B`.

Every setting runs in fresh processes (`--worker`), so that on CPU the device count can be forced
(XLA_FLAGS=--xla_force_host_platform_device_count) and on GPU each run sees its own devices
(CUDA_VISIBLE_DEVICES); the two-process rows join on 127.0.0.1 with one device each. The model is the
--config's (default the checkerboard MLP) at a fixed global batch (strong scaling): training steps through
`train.compile_train_steps`, sampling through `experiment.sampling_fn(width=eval.batch_size)`, which draws a
group of eval.batch_size examples per device at once. Compile time is reported apart; a rate is the median of
--repeats timed runs. The last row draws --num_samples samples --batch_size at a time over the most devices
the way `scoresde sample --workdir` does (`chunks.draw`, every chunk written), after one compiling chunk.

On one multi-core CPU the forced devices share the same cores, so the rows show the overhead of splitting
the work, not a speed-up; on a multi-GPU host the same command measures scaling.

    python benchmarks/scaling.py [--devices=1,2,4,8] [--num_samples=50000] [--repeats=3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).parents[1]


def _worker(args: argparse.Namespace) -> dict:
    """One setting in this process: compile, then time --repeats runs; returns the figures."""
    if args.process_id is not None:
        from scoresde import parallel
        parallel.initialize_distributed(args.coordinator, 2, args.process_id, timeout_s=120)
    import jax
    import numpy as np
    from scoresde import chunks, config as config_lib, experiment as experiment_lib, parallel, samplers, train
    import runpy

    devices = jax.devices()[:args.worker_devices] if args.process_id is None else jax.devices()
    mesh = parallel.data_mesh(devices)
    config = config_lib.from_config_dict(runpy.run_path(args.config)["get_config"]())
    experiment = experiment_lib.build_experiment(config)
    if args.worker == "train":
        t = config.training
        steps = train.compile_train_steps(experiment.objective, experiment.optimizer, config.model.ema_rate,
                                          mesh)
        state = jax.device_put(train.initial_state(experiment), parallel.replicated(mesh))
        local = np.stack([experiment.dataset.train_batch(i, t.batch_size, process_index=jax.process_index(),
                                                         process_count=jax.process_count())
                          for i in range(t.n_jitted_steps)])
        batches = parallel.shard_batch(local, mesh, batch_axis=1)

        def once():
            nonlocal state
            state, losses = steps(state, batches)
            jax.block_until_ready(losses)
        examples = t.batch_size * t.n_jitted_steps
    else:
        width = config.eval.batch_size
        sampler = samplers.DDIM(num_steps=args.num_steps)
        n = width * mesh.size * args.groups if args.worker == "sample" else args.num_samples
        draw = experiment_lib.sampling_fn(experiment, n, sampler, width=width, mesh=mesh)
        params = jax.jit(experiment.init_params, out_shardings=parallel.replicated(mesh))()
        key = jax.random.PRNGKey(0)
        examples = n if args.worker == "sample" else min(n, args.batch_size)  # chunks: compile on one
        once = lambda: draw(params, key, None, 0, examples)
    start = time.perf_counter()
    once()
    compile_s = time.perf_counter() - start
    if args.worker == "chunks":  # the path of `scoresde sample --workdir`: chunks kept as they finish
        with tempfile.TemporaryDirectory() as partial:
            start = time.perf_counter()
            chunks.draw(lambda a, b: draw(params, key, None, a, b), n, args.batch_size,
                        pathlib.Path(partial) / "samples.partial", {"benchmark": True}, progress=False)
            times, examples = [time.perf_counter() - start], n
    else:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"what": args.worker, "devices": mesh.size, "processes": jax.process_count(),
            "device_kind": devices[0].device_kind, "examples": examples, "compile_s": round(compile_s, 2),
            "median_s": round(median, 4), "examples_per_s": round(examples / median, 1),
            **({"batch_size": args.batch_size, "eval_batch_size": config.eval.batch_size}
               if args.worker == "chunks" else {})}


def _env(devices: int, visible: str) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                CUDA_VISIBLE_DEVICES=visible, PYTHONPATH=str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(what: str, devices: int, processes: int, args: argparse.Namespace) -> dict | None:
    common = [sys.executable, __file__, f"--worker={what}", f"--config={args.config}",
              f"--repeats={args.repeats}", f"--num_steps={args.num_steps}", f"--groups={args.groups}",
              f"--num_samples={args.num_samples}", f"--batch_size={args.batch_size}"]
    if processes == 1:
        commands = [([*common, f"--worker_devices={devices}"],
                     _env(devices, ",".join(map(str, range(devices)))))]
    else:
        address = f"127.0.0.1:{_free_port()}"
        commands = [([*common, f"--coordinator={address}", f"--process_id={i}"], _env(1, str(i)))
                    for i in range(processes)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command, env in commands]
    outs = [proc.communicate() for proc in procs]
    if any(proc.returncode for proc in procs):
        print(f"{what} on {devices} devices x {processes} processes failed: {outs[0][1][-500:]}",
              file=sys.stderr)
        return None
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/toy/checkerboard.py"))
    parser.add_argument("--devices", default="1,2,4,8", help="device counts of the one-process rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    parser.add_argument("--num_steps", type=int, default=20, help="DDIM steps of the sampling rows")
    parser.add_argument("--groups", type=int, default=4, help="sampling rows: groups drawn per device")
    parser.add_argument("--num_samples", type=int, default=50_000, help="samples of the chunked row")
    parser.add_argument("--batch_size", type=int, default=8_000, help="chunk size of the chunked row")
    parser.add_argument("--outdir", default="out/bench/scaling")
    parser.add_argument("--worker", choices=("train", "sample", "chunks"), help=argparse.SUPPRESS)
    parser.add_argument("--worker_devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--process_id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    counts = [int(n) for n in args.devices.split(",")]
    rows = [row for what in ("train", "sample") for row in
            [_run_workers(what, n, 1, args) for n in counts] + [_run_workers(what, 2, 2, args)] if row]
    rows.append(_run_workers("chunks", max(counts), 1, args))
    outdir = pathlib.Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
