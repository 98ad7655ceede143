"""Cost per NFE of guidance on the digits networks: classifier guidance and classifier-free guidance (CFG).

One jitted Euler solve of --num_steps steps on a batch of 8x8 digits, timed (median of --repeats runs after
the compiling one) and divided by its NFE, for
  * unguided: the unconditional score network of configs/digits/ddpmpp.py at 8x8 (`SMALL`);
  * classifier: that score plus grad_x log p(y | x_t, t) of the noise-conditional classifier of
    configs/digits/classifier.py (`guidance.classifier_guidance`: one forward and backward pass of it);
  * conditional: the same network class-conditional (model.num_classes=10), unguided;
  * cfg_two: CFG as two evaluations of it per NFE (`guidance.classifier_free_guidance`);
  * cfg_fused: CFG as one evaluation of the doubled batch (`guidance.fused_classifier_free_guidance`);
each beside its ratio to its unguided network. The time of an evaluation does not depend on the weights, so
the networks are freshly initialised unless --workdir, --classifier_workdir and --conditional_workdir name
trained runs of the same shapes.

    python benchmarks/guidance_trained.py [--batch_sizes=1,64,256] [--num_steps=20] [--repeats=5]
"""

from __future__ import annotations

import argparse
import pathlib
import runpy
from typing import Any, Callable

import jax
import jax.numpy as jnp

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import guidance, samplers
from scoresde.bench.report import write_json
from scoresde.bench.timing import time_call

ROOT = pathlib.Path(__file__).parents[1]
LABEL = 3


# configs/digits/ddpmpp.py at 8x8 with one level of downsampling, one residual block and no attention.
SMALL = {"data": {"image_size": 8}, "model": {"ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": ()}}


def run_or_fresh(workdir: str | None, config: str, **sections: dict) -> tuple[experiment_lib.Experiment, Any]:
    """(experiment, EMA parameters) of a trained run, or of the config with `sections` overridden, freshly
    initialised."""
    if workdir:
        experiment, state = experiment_lib.restore(workdir)
        return experiment, state.ema_params
    values = runpy.run_path(str(ROOT / "configs" / f"{config}.py"))["get_config"]()
    for name, fields in sections.items():
        values[name].update(fields)
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(values))
    return experiment, experiment.init_params()


Cases = dict[str, tuple[Callable[[int], Callable], str]]


def cases(args) -> tuple[experiment_lib.Experiment, Cases]:
    """The unconditional experiment, and name -> (batch size -> score_fn, the unguided case it is compared
    with)."""
    uncond, uncond_params = run_or_fresh(args.workdir, "digits/ddpmpp", **SMALL)
    classifier, classifier_params = run_or_fresh(args.classifier_workdir, "digits/classifier")
    cond, cond_params = run_or_fresh(args.conditional_workdir, "digits/ddpmpp", data=SMALL["data"],
                                     model={**SMALL["model"], "num_classes": 10})
    s, c = uncond.objective, cond.objective
    log_prob_fn = classifier.objective.log_prob_fn(classifier_params, LABEL)
    with_cond = lambda x, t, labels: c.score_fn(cond_params, cond=labels)(x, t)
    labels = lambda batch, label: jnp.full((batch,), label, jnp.int32)
    return uncond, {
        "unguided": (lambda batch: s.score_fn(uncond_params), "unguided"),
        "classifier": (lambda batch: guidance.classifier_guidance(s.score_fn(uncond_params), log_prob_fn),
                       "unguided"),
        "conditional": (lambda batch: c.score_fn(cond_params, cond=LABEL), "conditional"),
        "cfg_two": (lambda batch: guidance.classifier_free_guidance(c.score_fn(cond_params, cond=LABEL),
                                                                    c.score_fn(cond_params)), "conditional"),
        "cfg_fused": (lambda batch: guidance.fused_classifier_free_guidance(
            with_cond, labels(batch, LABEL), labels(batch, c.num_classes)), "conditional"),
    }


def seconds_per_nfe(sde, score_fn: Callable, shape: tuple[int, ...], sampler, repeats: int) -> float:
    """Median time of a jitted solve over its NFE."""
    solve = jax.jit(lambda key: samplers.sample(key, sde, score_fn, shape, sampler))
    nfe = int(solve(jax.random.PRNGKey(0))[1])
    return time_call(lambda: solve(jax.random.PRNGKey(1)), repeats)[1] / nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="an unconditional 8x8 digits run (default: fresh weights)")
    parser.add_argument("--classifier_workdir", help="a run of configs/digits/classifier.py")
    parser.add_argument("--conditional_workdir", help="a class-conditional digits run, 8x8, 10 classes")
    parser.add_argument("--batch_sizes", default="1,64,256")
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="out/benchmarks/guidance_trained.json")
    args = parser.parse_args()

    experiment, table = cases(args)
    sde, sampler = experiment.objective.sde, samplers.Euler(num_steps=args.num_steps)
    rows = []
    print("| batch | case | ms per NFE | ratio to unguided |\n|---|---|---|---|")
    for batch in map(int, args.batch_sizes.split(",")):
        shape = (batch,) + experiment.example_shape
        per_nfe = {name: seconds_per_nfe(sde, build(batch), shape, sampler, args.repeats)
                   for name, (build, _) in table.items()}
        for name, (_, baseline) in table.items():
            rows.append({"batch": batch, "case": name, "ms_per_nfe": 1e3 * per_nfe[name],
                         "ratio": per_nfe[name] / per_nfe[baseline]})
            row = rows[-1]
            print(f"| {batch} | {name} | {row['ms_per_nfe']:.3g} | {row['ratio']:.2f} |", flush=True)
    write_json(args.out, {"num_steps": args.num_steps, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
