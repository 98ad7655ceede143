"""Latent against pixel score models: network time per call, samples/s at equal NFE, autoencoder cost.

    python benchmarks/latent.py --autoencoder=AE [--pixel=configs/digits/small.py]
        [--latent=configs/latent/digits.py] [--batch=64] [--num_steps=20] [--repeats=5] [--out=FILE.json]

AE is a trained run of configs/latent/autoencoder.py. Both score models are built from their config files
with their initial parameters (a network call and a fixed-step solve cost the same whatever the weights);
the latent config's `model.autoencoder_workdir` is set to AE. For each it reports, at the same batch:

  * network: the median wall time of one jitted score-function call, score_fn(x, t) on a batch of its
    examples (pixel: the images; latent: the scaled latents), and its parameter count;
  * sampling: samples/s of the config's own sampler path (`experiment.sampling_fn`, the batch drawn at once)
    with DPM-Solver++ at --num_steps steps (the same NFE for both), the latent one including the decode;
  * autoencoder (latent only): encoder and decoder wall time per image at that batch.

Times are medians of --repeats calls after a first, compiling one (`scoresde.bench.timing.time_call`); on a
shared machine they are noisy, their ratios in one run less so. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde.bench.timing import time_call


def build(path: str, **model: str) -> experiment_lib.Experiment:
    """The experiment of a config file, with `model` fields overridden."""
    config = runpy.run_path(path)["get_config"]()
    config.model.update(model)
    return experiment_lib.build_experiment(config_lib.from_config_dict(config))


def network_row(experiment: experiment_lib.Experiment, params, batch: int, repeats: int) -> dict:
    """Median seconds of one score-function call on a batch of training examples, and the parameter count."""
    x = jnp.asarray(experiment.dataset.train[:batch])
    t = jnp.full((batch,), 0.5)
    score = jax.jit(lambda p, x, t: experiment.objective.score_fn(p)(x, t))
    _, median = time_call(lambda: score(params, x, t), repeats)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
    return {"example_shape": list(experiment.example_shape), "parameters": count, "network_call_s": median}


def sampling_row(experiment: experiment_lib.Experiment, params, batch: int, num_steps: int,
                 repeats: int) -> dict:
    """Samples/s and NFE of DPM-Solver++ at num_steps steps through `experiment.sampling_fn`."""
    sampler = experiment.config.sampling.build_sampler("dpm_solver_pp", num_steps)
    draw = experiment_lib.sampling_fn(experiment, batch, sampler)
    nfe = draw(params, jax.random.PRNGKey(0))[1]
    _, median = time_call(lambda: draw(params, jax.random.PRNGKey(1))[0], repeats)
    return {"nfe": nfe, "sample_batch_s": median, "samples_per_s": batch / median}


def autoencoder_row(experiment: experiment_lib.Experiment, batch: int, repeats: int) -> dict:
    """Encoder and decoder seconds per image of the latent experiment's autoencoder, at `batch`."""
    latent = experiment.latent
    images = jnp.asarray(latent.images.train[:batch])
    encode, decode = jax.jit(latent.encode), jax.jit(latent.decode)
    _, encode_s = time_call(lambda: encode(images), repeats)
    _, decode_s = time_call(lambda: decode(jnp.asarray(experiment.dataset.train[:batch])), repeats)
    return {"encode_per_image_s": encode_s / batch, "decode_per_image_s": decode_s / batch,
            "latent_scale_factor": latent.scale}


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name, experiment in (("pixel", build(args.pixel)),
                             ("latent", build(args.latent, autoencoder_workdir=args.autoencoder))):
        params = experiment.init_params()
        row = {"model": name, "batch": args.batch, **network_row(experiment, params, args.batch, args.repeats),
               **sampling_row(experiment, params, args.batch, args.num_steps, args.repeats)}
        if experiment.latent is not None:
            row.update(autoencoder_row(experiment, args.batch, args.repeats))
        rows.append(row)
    pixel, latent = rows
    latent["network_speedup"] = pixel["network_call_s"] / latent["network_call_s"]
    latent["sampling_speedup"] = latent["samples_per_s"] / pixel["samples_per_s"]
    return rows


def table(rows: list[dict]) -> str:
    head = ["model", "example", "parameters", "network call (ms)", "NFE", "samples/s",
            "encode / decode per image (us)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        codec = (f"{1e6 * row['encode_per_image_s']:.1f} / {1e6 * row['decode_per_image_s']:.1f}"
                 if "encode_per_image_s" in row else "")
        lines.append(f"| {row['model']} | {'x'.join(map(str, row['example_shape']))} | {row['parameters']:,} | "
                     f"{1e3 * row['network_call_s']:.2f} | {row['nfe']} | {row['samples_per_s']:.0f} | {codec} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder", required=True, help="a trained configs/latent/autoencoder.py run")
    parser.add_argument("--pixel", default="configs/digits/small.py")
    parser.add_argument("--latent", default="configs/latent/digits.py")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON of the rows")
    args = parser.parse_args()
    rows = run(args)
    print(table(rows))
    print(f"latent/pixel: network call {rows[1]['network_speedup']:.2f}x faster, samples/s "
          f"{rows[1]['sampling_speedup']:.2f}x")
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
