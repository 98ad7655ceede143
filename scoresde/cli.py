"""Command line: `scoresde VERB [--flags]`.

Verbs:
  sample   draw samples with any sampler and write samples.npz plus a PNG; with --problem, from the exact
           score of a named Gaussian-mixture problem (no training needed).
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
from absl import app, flags, logging

from scoresde import plots, samplers, sde as sde_lib, toy

flags.DEFINE_string("problem", "mixture_2d", "Exact-score problem to sample: mixture_2d or mixture_image.")
flags.DEFINE_string("sde", "vpsde", "Forward SDE: vpsde, subvpsde or vesde.")
flags.DEFINE_string("sampler", "pc", "Sampler name.")
flags.DEFINE_integer("num_steps", 500, "Sampler steps.")
flags.DEFINE_integer("num_samples", 2000, "Number of samples.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("outdir", "out/sample", "Where samples.npz and samples.png are written.")
flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.")
FLAGS = flags.FLAGS


def sample_problem() -> pathlib.Path:
    """Samples the exact score of --problem and writes samples.npz and samples.png into --outdir."""
    mix = toy.build_problem(FLAGS.problem)
    sde = sde_lib.build_sde(FLAGS.sde)
    sampler = samplers.build_sampler(FLAGS.sampler, num_steps=FLAGS.num_steps)
    shape = (FLAGS.num_samples,) + mix.event_shape
    draw = jax.jit(lambda key: samplers.sample(key, sde, mix.score_fn(sde), shape, sampler))
    x, nfe = draw(jax.random.PRNGKey(FLAGS.seed))
    out = pathlib.Path(FLAGS.outdir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", x=np.asarray(x), nfe=int(nfe))
    reference = mix.sample(jax.random.PRNGKey(FLAGS.seed + 1), FLAGS.num_samples)
    plots.samples_png(out / "samples.png", x, reference, title=f"{FLAGS.sampler}, {int(nfe)} NFE")
    print(f"wrote {out / 'samples.npz'} and {out / 'samples.png'} ({int(nfe)} score evaluations)")
    return out


VERBS = {"sample": sample_problem}


def run(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2 or argv[1] not in VERBS:
        raise app.UsageError(f"usage: scoresde VERB [--flags]; VERB is one of {sorted(VERBS)}.")
    try:
        VERBS[argv[1]]()
    except ValueError as e:
        if FLAGS.verbose:
            raise
        print(f"scoresde {argv[1]}: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app.run(run)


if __name__ == "__main__":
    main()
