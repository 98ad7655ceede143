"""Command line: `scoresde VERB [--flags]`.

Verbs:
  train    train a score network from --config into --workdir; a workdir with the same config is resumed from
           its newest checkpoint, one with another config only with --resume (continue) or --overwrite (start
           over).
  sample   with --workdir: draw samples from the newest checkpoint's EMA parameters with any sampler
           (--sampler, --num_steps); without it: from the exact score of a named Gaussian-mixture --problem.
           Writes samples .npz and a PNG.
  eval     with --workdir: sample metrics against held-out data (2-D sets: sliced Wasserstein and MMD;
           labelled images: a classifier's confidence and a Frechet distance in its feature space) and the
           test-set likelihood (bits/dim for images, nats per example for points); writes
           eval/step_<step>.json.
  bench    `bench samplers`: every SDE x sampler x NFE on an exact-score --problem (pathwise error against
           a tight RK45 solve, distribution errors beside their Monte Carlo floors, NFE used, compile and run
           time); writes results.json, results.md and PNG plots into --outdir. `bench overhead`: solve time /
           (NFE x one score call) for an MLP and a small NCSN++. --quick runs a small grid.

Bad input (unknown names or config keys, unreadable data, a batch that does not split over the devices, a
workdir holding another run) gives one line on stderr and exit status 2; --verbose shows the traceback.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import pathlib
import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from scoresde import config as config_lib
from scoresde.bench import command as bench_command
from scoresde import data as data_lib
from scoresde import likelihood, metrics, parallel, plots, samplers, sde as sde_lib, toy, train


class _ConfigFileParser(flags.ArgumentParser):
    """Loads `path[:argument]` with `exec_module` and returns its locked `get_config(argument)`.

    ml_collections loads config files with the deprecated `SourceFileLoader.load_module()`, which on CPython
    3.11 can raise `KeyError: <thread id>` when a finalizer imports a module during the load.
    """

    def __init__(self, name: str):
        self.name = name

    def flag_type(self) -> str:
        return "config object"

    def parse(self, argument: str):
        path, *args = argument.split(":", 1)
        if not pathlib.Path(path).is_file():
            raise ValueError(f"config file {path!r} does not exist.")
        spec = importlib.util.spec_from_file_location(f"{self.name}_config", path)
        module = importlib.util.module_from_spec(spec)
        try:  # the user's file may raise anything; the message keeps its exception
            spec.loader.exec_module(module)
            config = module.get_config(*args)
        except Exception as error:
            raise ValueError(f"config file {argument!r}: {type(error).__name__}: {error}") from error
        config.lock()
        return config


config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (train), e.g. configs/toy/checkerboard.py; override its fields "
    "with --config.training.batch_size=64.", lock_config=True)
flags.FLAGS["config"].parser = _ConfigFileParser("config")
flags.DEFINE_string("workdir", None, "Training run directory (train, sample, eval).")
flags.DEFINE_bool("resume", False, "train: continue the workdir's run under a changed config.")
flags.DEFINE_bool("overwrite", False, "train: delete the workdir's run and start over.")
flags.DEFINE_bool("progress", True, "train, bench: show a progress bar.")
flags.DEFINE_string("problem", "mixture_2d", "sample without --workdir, bench samplers: exact-score problem, "
                    "mixture_2d, mixture_image or a mixture .npz (weights [K], means [K, ...], covs [K, D, D]).")
flags.DEFINE_string("sde", "vpsde", "sample without --workdir: forward SDE, vpsde, subvpsde or vesde.")
flags.DEFINE_string("sampler", "pc", "Sampler name; with --workdir the config's sampling.method by default.")
flags.DEFINE_integer("num_steps", 500, "Sampler steps; with --workdir the config's model.num_scales by "
                     "default.")
flags.DEFINE_integer("num_samples", 2000, "Number of samples; with --workdir the config's eval.num_samples "
                     "by default; bench samplers: paths per sampler (default 4000).")
flags.DEFINE_integer("seed", 0, "PRNG seed of sampling and evaluation.")
flags.DEFINE_string("outdir", "out/sample", "sample: where samples.npz and samples.png are written "
                    "(with --workdir by default <workdir>/samples); bench: default out/bench/samplers or "
                    "out/bench/overhead.")
flags.DEFINE_list("sdes", None, "bench samplers: forward SDEs (default vpsde,subvpsde,vesde).")
flags.DEFINE_list("samplers", None, "bench: sampler specs, a name or name:setting=value:..., e.g. unipc:order=3.")
flags.DEFINE_list("nfes", None, "bench: target score evaluations per solve (default 5,10,20,50,100,1000; "
                  "overhead: 50).")
flags.DEFINE_list("models", None, "bench overhead: networks, mlp and/or ncsnpp.")
flags.DEFINE_bool("quick", False, "bench: a small grid that finishes in under a minute on two CPU cores.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.")
FLAGS = flags.FLAGS


def _given(name: str, default):
    """The flag's value if given on the command line, else `default`."""
    return getattr(FLAGS, name) if FLAGS[name].present else default


def _require_flag(name: str, verb: str) -> None:
    if not getattr(FLAGS, name):
        raise ValueError(f"{verb} needs --{name}.")


def train_verb() -> None:
    """Trains --config into --workdir."""
    _require_flag("config", "train")
    _require_flag("workdir", "train")
    experiment = train.build_experiment(config_lib.from_dict(FLAGS.config.to_dict()))
    state = train.run(experiment, FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                      progress=FLAGS.progress)
    print(f"trained {int(state.step)} steps; run in {FLAGS.workdir}")


def _workdir_sampler(experiment: train.Experiment) -> samplers.Sampler:
    """--sampler / --num_steps, defaulting to the config's sampler with model.num_scales steps."""
    sampling = experiment.config.sampling
    method = _given("sampler", sampling.method)
    default_steps = experiment.config.model.num_scales if method == sampling.method else None
    return sampling.build_sampler(method, _given("num_steps", default_steps))


def sample_workdir() -> None:
    """Samples the newest checkpoint of --workdir; writes samples_<step>_<sampler>.npz and .png."""
    workdir = pathlib.Path(FLAGS.workdir)
    experiment, state = train.restore(workdir)
    sampler = _workdir_sampler(experiment)
    num_samples = _given("num_samples", experiment.config.eval.num_samples)
    draw = train.sampling_fn(experiment, num_samples, sampler)
    x, nfe = draw(state.ema_params, jax.random.PRNGKey(FLAGS.seed))
    out = pathlib.Path(_given("outdir", workdir / train.SAMPLES_DIR))
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"samples_{int(state.step)}_{_given('sampler', experiment.config.sampling.method)}"
    np.savez(f"{stem}.npz", x=x, nfe=nfe, step=int(state.step))
    train.write_samples_png(pathlib.Path(f"{stem}.png"), experiment, x, f"step {int(state.step)}, {nfe} NFE")
    print(f"wrote {stem}.npz and {stem}.png ({num_samples} samples, {nfe} score evaluations)")


def sample_problem() -> None:
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


def sample_verb() -> None:
    (sample_workdir if FLAGS.workdir else sample_problem)()


def point_metrics(key: jax.Array, samples: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Sliced Wasserstein and MMD of n samples to n held-out points, and both between two held-out halves.

    The second pair is the floor: what exact samples of the same size would score.
    """
    n = min(len(samples), len(test) // 2)
    held_out, other = test[:n], test[n:2 * n]
    k_model, k_floor = jax.random.split(key)
    return {
        "sliced_wasserstein": float(metrics.sliced_wasserstein(k_model, samples[:n], held_out)),
        "sliced_wasserstein_held_out": float(metrics.sliced_wasserstein(k_floor, other, held_out)),
        "mmd": float(metrics.mmd(samples[:n], held_out)),
        "mmd_held_out": float(metrics.mmd(other, held_out)),
        "num_samples": n,
    }


def image_metrics(dataset: data_lib.Dataset, samples: np.ndarray) -> dict[str, float]:
    """Accuracy of a digits classifier on the test set, and its confidence and Frechet distance on samples."""
    classifier = metrics.train_digits_classifier(dataset)
    test = np.concatenate(list(dataset.test_batches(len(dataset.test))))
    quality = metrics.digits_sample_quality(classifier, dataset.scale(samples), test)
    return {
        "classifier_test_accuracy": metrics.classifier_accuracy(classifier, test, dataset.test_labels),
        "sample_confidence": quality.confidence,
        "sample_class_entropy": quality.class_entropy,
        "frechet_distance": quality.frechet,
    }


def test_likelihood(experiment: train.Experiment, params, key: jax.Array) -> dict[str, float]:
    """Probability-flow log-likelihood of one eval batch of test data: nats per point, or bits/dim of images.

    Images are dequantized uniformly (Theis et al. 2016) before the model sees them.
    """
    dataset, batch_size = experiment.dataset, experiment.config.eval.batch_size
    objective = experiment.objective
    x = dataset.test[:batch_size]
    if dataset.is_image:
        x = dataset.scale(data_lib.dequantize(x, np.random.default_rng(FLAGS.seed)))
    divergence = "rademacher" if dataset.is_image else "exact"

    @jax.jit
    def log_likelihood(params, key, x):
        score_fn = objective.score_fn(params)
        return likelihood.log_likelihood(key, objective.sde, score_fn, x, divergence=divergence)

    logp, nfe = log_likelihood(params, key, x)
    if not dataset.is_image:
        return {"test_nll_nats": float(-np.mean(logp)), "likelihood_nfe": int(nfe)}
    data_range = (-1.0, 1.0) if dataset.centered else (0.0, 1.0)
    bpd = likelihood.bits_per_dim(logp, x.shape[1:], data_range=data_range)
    return {"test_bits_per_dim": float(np.mean(bpd)), "likelihood_nfe": int(nfe)}


def eval_verb() -> None:
    """Evaluates the newest checkpoint of --workdir; writes <workdir>/eval/step_<step>.json."""
    _require_flag("workdir", "eval")
    workdir = pathlib.Path(FLAGS.workdir)
    experiment, state = train.restore(workdir)
    config, key = experiment.config.eval, jax.random.PRNGKey(FLAGS.seed)
    if not len(experiment.dataset.test):
        raise ValueError("eval compares with held-out data, and this run has none: data.test_fraction is 0.")
    results = {"step": int(state.step)}
    if config.enable_sampling:
        num_samples = _given("num_samples", config.num_samples)
        draw = train.sampling_fn(experiment, num_samples, _workdir_sampler(experiment))
        x, nfe = draw(state.ema_params, key)
        results["sampling_nfe"] = nfe
        dataset = experiment.dataset
        if not dataset.is_image:
            results.update(point_metrics(key, x, dataset.test))
        elif dataset.test_labels is not None:
            results.update(image_metrics(dataset, x))
    if config.enable_bpd:
        results.update(test_likelihood(experiment, state.ema_params, key))
    out = workdir / "eval"
    out.mkdir(exist_ok=True)
    (out / f"step_{int(state.step)}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


def bench_verb(what: str = "") -> None:
    """`scoresde bench samplers|overhead`; flags given on the command line override the benchmark's settings."""
    names = ("problem", "sdes", "samplers", "nfes", "models", "num_samples", "seed", "workdir")
    overrides = {name: getattr(FLAGS, name) for name in names if FLAGS[name].present}
    bench_command.run(what, overrides, quick=FLAGS.quick, outdir=_given("outdir", None), progress=FLAGS.progress)


VERBS = {"train": train_verb, "sample": sample_verb, "eval": eval_verb, "bench": bench_verb}


def _fail(verb: str, message: str) -> None:
    print(f"scoresde {verb}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors (unknown flags or --config.* keys, broken config files) are one line."""
    try:
        return FLAGS(argv)
    except (flags.Error, KeyError, AttributeError) as error:
        if "--verbose" in argv:
            raise
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        lines = [line for line in text.splitlines() if line.strip()] or [repr(error)]
        # A config file that raised keeps the traceback in the message; its last line is the exception.
        _fail(argv[1] if len(argv) > 1 else "", f"{lines[0]} {lines[-1]}" if "Traceback" in text else text)


def run(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2 or argv[1] not in VERBS:
        raise app.UsageError(f"usage: scoresde VERB [--flags]; VERB is one of {sorted(VERBS)}.")
    try:
        inspect.signature(VERBS[argv[1]]).bind(*argv[2:])
    except TypeError:
        raise app.UsageError(f"usage: scoresde {argv[1]} [--flags]; unexpected arguments {argv[2:]}.") from None
    if FLAGS.distributed:
        parallel.initialize_distributed()
    try:
        VERBS[argv[1]](*argv[2:])
    except ValueError as e:
        if FLAGS.verbose:
            raise
        _fail(argv[1], str(e))


def main() -> None:
    app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
