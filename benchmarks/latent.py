"""Latent against pixel score models: network time per call, samples/s at equal NFE, autoencoder cost.

    python benchmarks/latent.py [--autoencoder=AE] [--pixel=configs/digits/small.py]
        [--latent=configs/latent/digits.py] [--prompts=configs/digits/prompts.py] [--batch=64]
        [--num_steps=20] [--calls=20] [--repeats=7] [--out=FILE.json]

AE is a trained run of configs/latent/autoencoder.py (without it, only the cross-attention rows below). Both score models are built from their config files
with their initial parameters (a network call and a fixed-step solve cost the same whatever the weights);
the latent config's `model.autoencoder_workdir` is set to AE. For each it reports, at the same batch:

  * network: the wall time of one score-function call, score_fn(x, t) on a batch of its examples (pixel: the
    images; latent: the scaled latents), from --calls calls chained in one jitted loop, and its parameter
    count;
  * sampling: samples/s of the config's own sampler path (`experiment.sampling_fn`, the batch drawn at once)
    with DPM-Solver++ at --num_steps steps (the same NFE for both), the latent one including the decode;
  * autoencoder (latent only): encoder and decoder wall time per image at that batch.

With --prompts (a prompt config; "" skips it) it also times that config's network call with cross-attention
and with the pooled-prompt baseline (`model.prompt_conditioning`), on a batch of its canvases and their
prompts, interleaved in the same way: what cross-attention costs per call.

Times are medians of --repeats rounds after a first, compiling call, each round timing pixel and latent in
turn, so that a change of load falls on both; on a shared machine they are noisy, their ratios less so.
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib


def build(path: str, **model: str) -> experiment_lib.Experiment:
    """The experiment of a config file, with `model` fields overridden."""
    config = runpy.run_path(path)["get_config"]()
    config.model.update(model)
    return experiment_lib.build_experiment(config_lib.from_config_dict(config))


def network_fn(experiment: experiment_lib.Experiment, params, batch: int, calls: int,
               cond: Any = None) -> Callable[[], Any]:
    """() -> `calls` score-function calls on a batch of training examples (conditioned on `cond`, one condition
    per example, if given), chained in one jitted lax.scan (each call's input depends on the last one's
    output, as in a sampler), so dispatch is paid once."""
    x = jnp.asarray(experiment.dataset.train[:batch])
    t = jnp.full((batch,), 0.5)

    @jax.jit
    def chain(p, x):
        score_fn = experiment.objective.score_fn(p, cond=cond)
        return lax.scan(lambda y, _: (y + 1e-3 * score_fn(y, t), None), x, None, length=calls)[0]

    return lambda: chain(params, x)


def sampling_fn(experiment: experiment_lib.Experiment, params, batch: int, num_steps: int) -> Callable:
    """() -> a batch of samples by DPM-Solver++ at num_steps steps through `experiment.sampling_fn`; and
    its NFE."""
    sampler = experiment.config.sampling.build_sampler("dpm_solver_pp", num_steps)
    draw = experiment_lib.sampling_fn(experiment, batch, sampler)
    return lambda: draw(params, jax.random.PRNGKey(0))[0], draw(params, jax.random.PRNGKey(0))[1]


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds that call every function once in turn, after a
    first (compiling) call of each: a change of the machine's load falls on all of them alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def autoencoder_row(experiment: experiment_lib.Experiment, batch: int, repeats: int) -> dict:
    """Encoder and decoder seconds per image of the latent experiment's autoencoder, at `batch`."""
    latent = experiment.latent
    images, latents = jnp.asarray(latent.images.train[:batch]), jnp.asarray(experiment.dataset.train[:batch])
    encode, decode = jax.jit(latent.encode), jax.jit(latent.decode)
    medians = interleaved_medians({"encode": lambda: encode(images), "decode": lambda: decode(latents)},
                                  repeats)
    return {"encode_per_image_s": medians["encode"] / batch, "decode_per_image_s": medians["decode"] / batch,
            "latent_scale_factor": latent.scale}


def cross_attention_rows(args: argparse.Namespace) -> list[dict]:
    """The network call of the --prompts config with cross-attention and with the pooled baseline, on
    --batch canvases and their prompts; the first row holds the ratio of the two."""
    experiments = {name: build(args.prompts, prompt_conditioning=name) for name in ("cross_attention", "pooled")}
    calls, rows = {}, []
    for name, experiment in experiments.items():
        params = experiment.init_params()
        cond = jnp.asarray(experiment.dataset.train_cond[:args.batch])
        calls[name] = network_fn(experiment, params, args.batch, args.calls, cond)
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
        rows.append({"model": f"prompts, {name}", "batch": args.batch,
                     "example_shape": list(experiment.example_shape), "parameters": count})
    medians = interleaved_medians(calls, args.repeats)
    for row, name in zip(rows, experiments):
        row["network_call_s"] = medians[name] / args.calls
    rows[0]["cross_attention_overhead"] = rows[0]["network_call_s"] / rows[1]["network_call_s"]
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    """The pixel and latent rows (with --autoencoder), then the cross-attention rows (with --prompts)."""
    prompts = cross_attention_rows(args) if args.prompts else []
    if args.autoencoder is None:
        return prompts
    experiments = {"pixel": build(args.pixel), "latent": build(args.latent, autoencoder_workdir=args.autoencoder)}
    params = {name: experiment.init_params() for name, experiment in experiments.items()}
    calls, draws, rows = {}, {}, {}
    for name, experiment in experiments.items():
        calls[name] = network_fn(experiment, params[name], args.batch, args.calls)
        draws[name], nfe = sampling_fn(experiment, params[name], args.batch, args.num_steps)
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params[name]))
        rows[name] = {"model": name, "batch": args.batch, "example_shape": list(experiment.example_shape),
                      "parameters": count, "nfe": nfe}
    network = interleaved_medians(calls, args.repeats)
    sampling = interleaved_medians(draws, args.repeats)
    for name, row in rows.items():
        row.update(network_call_s=network[name] / args.calls, sample_batch_s=sampling[name],
                   samples_per_s=args.batch / sampling[name])
    rows["latent"].update(autoencoder_row(experiments["latent"], args.batch, args.repeats))
    pixel, latent = rows["pixel"], rows["latent"]
    latent["network_speedup"] = pixel["network_call_s"] / latent["network_call_s"]
    latent["sampling_speedup"] = latent["samples_per_s"] / pixel["samples_per_s"]
    return [pixel, latent, *prompts]


def table(rows: list[dict]) -> str:
    head = ["model", "example", "parameters", "network call (ms)", "NFE", "samples/s",
            "encode / decode per image (us)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "nfe" not in row:  # a cross-attention row: its network call only
            lines.append(f"| {row['model']} | {'x'.join(map(str, row['example_shape']))} | "
                         f"{row['parameters']:,} | {1e3 * row['network_call_s']:.2f} | | | |")
            continue
        codec = (f"{1e6 * row['encode_per_image_s']:.1f} / {1e6 * row['decode_per_image_s']:.1f}"
                 if "encode_per_image_s" in row else "")
        lines.append(f"| {row['model']} | {'x'.join(map(str, row['example_shape']))} | {row['parameters']:,} | "
                     f"{1e3 * row['network_call_s']:.2f} | {row['nfe']} | {row['samples_per_s']:.0f} | {codec} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder", default=None,
                        help="a trained configs/latent/autoencoder.py run; without it, --prompts alone")
    parser.add_argument("--pixel", default="configs/digits/small.py")
    parser.add_argument("--latent", default="configs/latent/digits.py")
    parser.add_argument("--prompts", default="configs/digits/prompts.py",
                        help="a prompt config: cross-attention timed against its pooled baseline; '' skips it")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20, help="network calls chained per timed run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="JSON of the rows")
    args = parser.parse_args()
    rows = run(args)
    print(table(rows))
    if args.autoencoder:
        print(f"latent/pixel: network call {rows[1]['network_speedup']:.2f}x faster, samples/s "
              f"{rows[1]['sampling_speedup']:.2f}x")
    if args.prompts:
        print(f"cross-attention / pooled prompt: network call {rows[-2]['cross_attention_overhead']:.2f}x")
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
