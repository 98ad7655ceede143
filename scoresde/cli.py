"""Command line: `scoresde VERB [--flags]`.

Verbs:
  train    train a score network from --config into --workdir; a workdir with the same config is resumed from
           its newest checkpoint, one with another config only with --resume (continue) or --overwrite (start
           over).
  sample   with --workdir: draw samples from the newest checkpoint's EMA parameters with any sampler
           (--sampler, --num_steps), of a class-conditional run's class --class_label or what --prompt asks
           of a prompt-conditioned run, optionally with classifier-free --guidance_scale, --batch_size
           examples at a time, resumable; without it: from
           the exact score of a named Gaussian-mixture --problem. Writes samples .npz and a PNG.
  inpaint  with --workdir, --input and --mask: fill in the unknown entries (mask 0) of the examples in --input
           by sampling the run's model conditioned on the known ones (`scoresde.guidance.inpaint`).
  colorize with --workdir and --input: colour grey images with the run's colour model, keeping their grey
           value (`scoresde.guidance.colorize`). Both read a PNG or an .npz and write .npz and PNG.
  eval     with --workdir: sample metrics against held-out data (2-D sets: sliced Wasserstein and MMD;
           labelled images: a classifier's confidence and a Frechet distance in its feature space) and the
           test-set likelihood (bits/dim for images, nats per example for points); writes
           eval/step_<step>.json.
  bench    `bench samplers`: every SDE x sampler x NFE on an exact-score --problem (pathwise error against
           a tight RK45 solve, distribution errors beside their Monte Carlo floors, NFE used, compile and run
           time); with --workdir the same grid on the run's learnt score, scored against held-out data
           beside what real data scores. Writes results.json, results.md and PNG plots into --outdir.
           `bench overhead`: solve time / (NFE x one score call) for an MLP and a small NCSN++. --quick runs
           a small grid.

Bad input (unknown names or config keys, unreadable data, a batch that does not split over the devices, a
workdir holding another run, a damaged checkpoint with no intact one beside it) gives one line on stderr and
exit status 2; --verbose shows the traceback. A NaN or Inf loss stops `train` with one line and status 1.
SIGTERM or SIGINT (Ctrl-C) during `train` saves a checkpoint at the current step and exits 0 (a second signal
ends it at once); during `sample --workdir` it keeps the chunks drawn (`scoresde.chunks`) and exits 0, the
same command continuing from them; during another verb it exits 130. As every file is written under a
temporary name and renamed, none is left half-written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import pathlib
import sys
import warnings
from typing import Callable

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from scoresde import atomic, autoencoder, checkpoint, chunks, config as config_lib
from scoresde.bench import command as bench_command
from scoresde import evaluation, guidance, observations, parallel, plots, samplers, sde as sde_lib, toy, train
from scoresde import experiment as experiment_lib
from scoresde import tokenizer
from scoresde.models import condition as condition_lib
from scoresde import workdir as workdir_lib


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
        if pathlib.Path(path).suffix != ".py":
            raise ValueError(f"config file {path!r} is not a Python file (.py); config files are Python "
                             f"modules with a get_config() function.")
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
flags.DEFINE_string("workdir", None, "Training run directory (train, sample, eval, bench samplers).")
flags.DEFINE_bool("resume", False, "train: continue the workdir's run under a changed config.")
flags.DEFINE_bool("overwrite", False, "train: delete the workdir's run and start over; eval: replace an "
                  "evaluation of the same step made with other settings.")
flags.DEFINE_bool("progress", True, "train, bench: show a progress bar.")
flags.DEFINE_string("problem", "mixture_2d", "sample without --workdir, bench samplers: exact-score problem, "
                    "mixture_2d, mixture_image or a mixture .npz (weights [K], means [K, ...], "
                    "covs [K, D, D]).")
flags.DEFINE_string("sde", "vpsde", "sample without --workdir: forward SDE, vpsde, subvpsde or vesde.")
flags.DEFINE_string("sampler", "pc", "Sampler spec, a name or name:setting=value:... (e.g. unipc:order=3); "
                    "with --workdir the config's sampling.method by default.")
flags.DEFINE_integer("num_steps", 500, "Sampler steps; with --workdir the config's model.num_scales by "
                     "default.")
flags.DEFINE_integer("num_samples", 2000, "Number of samples; with --workdir the config's eval.num_samples "
                     "by default; bench samplers: paths per sampler (default 4000, with --workdir 1000).")
flags.DEFINE_integer("num_batches", None, "eval: test-set likelihood of the first N batches of "
                     "eval.batch_size examples (default: the whole test split).")
flags.DEFINE_integer("batch_size", None, "sample --workdir: examples per chunk, kept as each finishes "
                     "(default the config's eval.batch_size, which also sets how many are computed at once); "
                     "the samples do not depend on it.")
flags.DEFINE_string("input", None, "inpaint, colorize: the examples to complete, a PNG or an .npz with an "
                    "array x, one example or a batch [N, ...] (images uint8 or in [0, 1]).")
flags.DEFINE_string("mask", None, "inpaint: what is known, a PNG of black (unknown) and white (known) pixels "
                    "or an .npz with an array mask of 0s and 1s (1 = known), shaped like one example or the "
                    "batch.")
flags.DEFINE_integer("seed", 0, "PRNG seed of sampling and evaluation.")
flags.DEFINE_integer("class_label", None, "sample --workdir: draw class K (0 .. model.num_classes - 1) of a "
                     "class-conditional run; without it, its unconditional score.")
flags.DEFINE_string("prompt", None, "sample --workdir: what a prompt-conditioned run draws, e.g. \"a 3 on the "
                    "left and a seven on the right\" (words of scoresde.tokenizer.VOCABULARY); without it, "
                    "its unconditional score (the empty prompt).")
flags.DEFINE_float("guidance_scale", 0.0, "sample --workdir --class_label or --prompt: classifier-free guidance "
                   "weight w >= 0 (Ho & Salimans' w: 0 is the conditional score; diffusers' guidance_scale "
                   "is w + 1).")
flags.DEFINE_string("outdir", "out/sample", "sample: where samples.npz and samples.png are written "
                    "(with --workdir by default <workdir>/samples); eval: where step_<step>.json is written "
                    "(default <workdir>/eval); bench: default out/bench/samplers or out/bench/overhead.")
flags.DEFINE_list("sdes", None, "bench samplers: forward SDEs (default vpsde,subvpsde,vesde).")
flags.DEFINE_list("samplers", None, "bench: sampler specs, a name or name:setting=value:..., "
                  "e.g. unipc:order=3.")
flags.DEFINE_list("nfes", None, "bench: target score evaluations per solve (default 5,10,20,50,100,1000; "
                  "overhead: 50).")
flags.DEFINE_list("models", None, "bench overhead: networks, mlp and/or ncsnpp.")
flags.DEFINE_bool("quick", False, "bench: a small grid that finishes in under a minute on two CPU cores.")
flags.DEFINE_bool("fit", False, "bench samplers: also run each fixed-step sampler on a grid fitted to the "
                  "score (sd.schedules.fit) from other paths, at NFEs up to 20, and report the fit's time.")
flags.DEFINE_list("grids", None, "bench samplers: named grids every fixed-step sampler also runs on, e.g. "
                  "uniform,quadratic,karras,logsnr.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run whose settings the cluster gives "
                  "(jax.distributed auto-detection: Cloud TPU, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "Join a multi-process run: HOST:PORT of process 0, the "
                    "same in every process (with --num_processes and --process_id).")
flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, 0 .. num_processes - 1 "
                     "(0 writes the run's files other than checkpoints).")
flags.DEFINE_integer("distributed_timeout", 300, "Multi-process run: seconds to wait for every process to "
                     "join before giving up with one line (exit 2).")
flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.")
FLAGS = flags.FLAGS


def _given(name: str, default):
    """The flag's value if given on the command line, else `default`."""
    return getattr(FLAGS, name) if FLAGS[name].present else default


def _require_flag(name: str, verb: str) -> None:
    if not getattr(FLAGS, name):
        raise ValueError(f"{verb} needs --{name}.")


def _refuse_problem_flags() -> None:
    """--problem and --sde choose an exact-score problem; a --workdir run has its own SDE and data."""
    given = [f"--{name}" for name in ("problem", "sde") if FLAGS[name].present]
    if given:
        raise ValueError(f"{' and '.join(given)}: only for `sample` without --workdir (an exact-score "
                         f"problem); a --workdir run uses the SDE and data of its own config.")


def _num_samples(default: int) -> int:
    """--num_samples if given, else `default`; ValueError unless it is >= 1."""
    num_samples = _given("num_samples", default)
    if num_samples < 1:
        source = "--num_samples" if FLAGS["num_samples"].present else "eval.num_samples of the run's config"
        raise ValueError(f"{source} must be >= 1; got {num_samples}.")
    return num_samples


def train_verb() -> None:
    """Trains a score network from --config into --workdir; a run with the same config resumes."""
    _require_flag("config", "train")
    _require_flag("workdir", "train")
    experiment = experiment_lib.build_experiment(config_lib.from_dict(FLAGS.config.to_dict()))
    state = train.run(experiment, FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                      progress=FLAGS.progress)
    n_iters = experiment.config.training.n_iters
    if not parallel.is_primary():
        return
    if int(state.step) < n_iters:
        print(f"stopped at step {int(state.step)} of {n_iters}; run the same command to resume")
    else:
        print(f"trained {int(state.step)} steps; run in {FLAGS.workdir}")


def _workdir_sampler(experiment: experiment_lib.Experiment) -> samplers.Sampler:
    """--sampler / --num_steps, defaulting to the config's sampler with model.num_scales steps."""
    sampling = experiment.config.sampling
    method = _given("sampler", sampling.method)
    default_steps = experiment.config.model.num_scales if method == sampling.method else None
    return sampling.build_sampler(method, _given("num_steps", default_steps))


def _condition() -> tuple[dict, str, int | np.ndarray | None]:
    """--class_label or --prompt, and --guidance_scale: (the npz fields, the suffix of the files they name,
    the condition to sample: a label, prompt token ids [L], or None)."""
    label, prompt, scale = FLAGS.class_label, FLAGS.prompt, FLAGS.guidance_scale
    if scale < 0:
        raise ValueError(f"--guidance_scale must be >= 0 (0: no guidance); got {scale}.")
    if label is not None and prompt is not None:
        raise ValueError("--prompt and --class_label exclude each other: a run is conditioned on prompts or "
                         "on class labels; give one.")
    if label is None and prompt is None:
        if FLAGS["guidance_scale"].present:
            raise ValueError("--guidance_scale needs --class_label or --prompt: guidance pulls towards a "
                             "condition.")
        return {}, "", None
    weight = f"_w{scale:g}" if scale else ""
    if prompt is None:
        return {"class_label": label, "guidance_scale": scale}, f"_class{label}{weight}", label
    ids = tokenizer.encode(prompt)
    slug = "-".join(tokenizer.words(prompt)) or "empty"
    return {"prompt": prompt, "guidance_scale": scale}, f"_prompt-{slug}{weight}", ids


def _check_condition(spec: condition_lib.Condition, cond: int | np.ndarray | None) -> None:
    """The run takes the condition asked for: --prompt a prompt-conditioned run, --class_label a
    class-conditional one with that class."""
    if FLAGS.prompt is not None and not isinstance(spec, condition_lib.Prompts):
        raise ValueError(f"--prompt needs a prompt-conditioned run (model.prompt_conditioning); this run takes "
                         f"{spec.what}.")
    if FLAGS.class_label is not None and isinstance(spec, condition_lib.Prompts):
        raise ValueError("--class_label needs a class-conditional model; this run takes prompts: use "
                         "--prompt.")
    if cond is not None:
        spec.check_request(np.asarray(cond))


def sample_workdir() -> None:
    """Samples the newest checkpoint of --workdir --batch_size at a time (`scoresde.chunks`); writes
    samples_<step>_<sampler>[_class<K> or _prompt-<its words>][_w<W>].npz and .png, or keeps the chunks drawn
    when stopped."""
    _refuse_problem_flags()
    workdir = pathlib.Path(FLAGS.workdir)
    condition, suffix, cond = _condition()
    # What the run is conditioned on is in its config: refused before any checkpoint is read.
    _check_condition(condition_lib.condition_of(workdir_lib.load_config(workdir).model.build_model()), cond)
    experiment, state = experiment_lib.restore(workdir)
    sampler = _workdir_sampler(experiment)
    num_samples = _num_samples(experiment.config.eval.num_samples)
    source = "--batch_size" if FLAGS["batch_size"].present else "eval.batch_size of the run's config"
    batch_size = chunks.check_batch_size(_given("batch_size", experiment.config.eval.batch_size), source)
    batch_size = min(batch_size, num_samples)
    width = min(experiment.config.eval.batch_size, num_samples)  # computed at once, whatever batch_size is
    mesh = parallel.data_mesh()
    chunks.check_fits(batch_size, num_samples, width, mesh, source)
    method = _given("sampler", experiment.config.sampling.method)
    out = pathlib.Path(_given("outdir", workdir / workdir_lib.SAMPLES_DIR))
    stem = out / f"samples_{int(state.step)}_{method}{suffix}"
    partial = chunks.partial_dir(f"{stem}.npz")
    settings = {"step": int(state.step), "sampler": {"name": method, "settings": dataclasses.asdict(sampler)},
                "seed": FLAGS.seed, "num_samples": num_samples, "width": width, **condition}
    chunks.chunks_written(partial, settings)  # other settings are refused before anything is compiled
    draw = experiment_lib.sampling_fn(experiment, num_samples, sampler, guidance_scale=FLAGS.guidance_scale,
                                      width=width, mesh=mesh)
    key = jax.random.PRNGKey(FLAGS.seed)

    def draw_chunk(start: int, stop: int) -> tuple[np.ndarray, int]:
        x, nfe = draw(state.ema_params, key, cond, start, stop)
        _check_finite(x, "samples")
        return x, nfe

    drawn = chunks.draw(draw_chunk, num_samples, batch_size, partial, settings, progress=FLAGS.progress)
    if drawn is None:  # stopped, or a process other than 0, which writes nothing
        return
    x, nfe = drawn
    with atomic.replacing(f"{stem}.npz") as temporary:
        np.savez(temporary, x=x, nfe=nfe, step=int(state.step), seed=FLAGS.seed, **condition)
    title = f"step {int(state.step)}, {nfe} NFE" + "".join(
        f", {k} {v:g}" for k, v in condition.items() if k != "prompt")
    if FLAGS.prompt is None:
        experiment_lib.write_samples_png(pathlib.Path(f"{stem}.png"), experiment, x, title)
    else:  # the prompt above its samples
        plots.titled_rows_png(f"{stem}.png", [(f"{FLAGS.prompt!r} ({title})", np.clip(x[:64], 0.0, 1.0))])
    chunks.remove(partial)
    print(f"wrote {stem}.npz and {stem}.png ({num_samples} samples, {nfe} score evaluations)")


def _check_finite(x: np.ndarray, what: str) -> None:
    """FloatingPointError unless every value of x: [N, ...] is finite, so that a solve that diverged writes
    nothing instead of NaNs."""
    bad = int(np.sum(~np.isfinite(np.asarray(x, np.float64)).reshape(len(x), -1).all(axis=1)))
    if bad:
        raise FloatingPointError(f"{bad} of {len(x)} {what} hold NaN or Inf; nothing was written. The solve "
                                 f"diverged: try another --sampler or more --num_steps.")


def sample_problem() -> None:
    """Samples the exact score of --problem and writes samples.npz and samples.png into --outdir."""
    if FLAGS["class_label"].present or FLAGS["guidance_scale"].present:
        raise ValueError("--class_label and --guidance_scale sample a class-conditional run: they need "
                         "--workdir.")
    if FLAGS["prompt"].present:
        raise ValueError("--prompt samples a prompt-conditioned run: it needs --workdir.")
    if FLAGS["batch_size"].present:
        raise ValueError("--batch_size: only for `sample --workdir` (chunked sampling of a trained run); an "
                         "exact-score problem is drawn in one batch.")
    num_samples = _num_samples(FLAGS.num_samples)
    mix = toy.build_problem(FLAGS.problem)
    sde = sde_lib.build_sde(FLAGS.sde)
    sampler = samplers.build_sampler(FLAGS.sampler)
    if FLAGS["num_steps"].present or hasattr(sampler, "num_steps"):
        if not hasattr(sampler, "num_steps"):
            raise ValueError(f"sampler {FLAGS.sampler!r} chooses its own steps; it takes no --num_steps.")
        sampler = samplers.build_sampler(FLAGS.sampler, num_steps=FLAGS.num_steps)  # the spec's own wins
    shape = (num_samples,) + mix.event_shape
    draw = jax.jit(lambda key: samplers.sample(key, sde, mix.score_fn(sde), shape, sampler))
    x, nfe = draw(jax.random.PRNGKey(FLAGS.seed))
    _check_finite(x, "samples")
    out = pathlib.Path(FLAGS.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out / "samples.npz") as temporary:
        np.savez(temporary, x=np.asarray(x), nfe=int(nfe))
    reference = mix.sample(jax.random.PRNGKey(FLAGS.seed + 1), num_samples)
    plots.samples_png(out / "samples.png", x, reference, title=f"{FLAGS.sampler}, {int(nfe)} NFE")
    print(f"wrote {out / 'samples.npz'} and {out / 'samples.png'} ({int(nfe)} score evaluations)")


def sample_verb() -> None:
    """Draws samples from --workdir's newest checkpoint, or from the exact score of a --problem."""
    (sample_workdir if FLAGS.workdir else sample_problem)()


def _constrained(verb: str, experiment: experiment_lib.Experiment, x: np.ndarray) -> tuple[Callable, dict]:
    """The jittable (params, key) -> (x, nfe) of `verb` on the examples x: [N, ...] in the stored range, and
    the arrays to save beside the result; checks the flags and files first."""
    objective, dataset = experiment.objective, experiment.dataset
    sampler, kwargs = _workdir_sampler(experiment), {"denoise": experiment.config.sampling.noise_removal}
    x_model = dataset.scale(x)
    if verb == "inpaint":
        mask = observations.read_mask(FLAGS.mask, x.shape, images=dataset.is_image)
        run = lambda params, key: guidance.inpaint(key, objective.sde, objective.score_fn(params), x_model,
                                                   mask, sampler, **kwargs)
        return run, {"input": x, "mask": mask}
    run = lambda params, key: guidance.colorize(key, objective.sde, objective.score_fn(params), x_model,
                                                sampler, **kwargs)
    return run, {"input": x}


def _complete(verb: str) -> None:
    """inpaint / colorize: completes --input with the newest checkpoint of --workdir; writes
    <verb>_<step>_<sampler>.npz (x, input, mask, nfe, step) and .png (each input beside its completion)."""
    for name in ("workdir", "input") + (("mask",) if verb == "inpaint" else ()):
        _require_flag(name, verb)
    workdir = pathlib.Path(FLAGS.workdir)
    experiment, state = experiment_lib.restore(workdir)
    if experiment.latent is not None:
        raise ValueError(f"{verb} holds known pixels fixed while sampling, but the run in {workdir} samples "
                         f"autoencoder latents (model.autoencoder_workdir={experiment.latent.workdir}); "
                         f"use a pixel-space run.")
    dataset, shape = experiment.dataset, experiment.example_shape
    if verb == "colorize" and not (dataset.is_image and shape[-1] >= 2):
        raise ValueError(f"colorize needs a model of colour images; the run in {workdir} models examples "
                         f"shaped {shape} (data.num_channels={experiment.config.data.num_channels}).")
    x = observations.read_examples(FLAGS.input, shape, images=dataset.is_image, grey=verb == "colorize")
    run, arrays = _constrained(verb, experiment, x)
    y, nfe = jax.jit(run)(state.ema_params, jax.random.PRNGKey(FLAGS.seed))
    y = np.asarray(dataset.unscale(y))
    _check_finite(y, "completed examples")
    if verb == "inpaint":  # the known entries exactly as given, not through the model's scaling and back
        y = np.where(arrays["mask"] > 0, x, y)
    out = pathlib.Path(_given("outdir", workdir / workdir_lib.SAMPLES_DIR))
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{verb}_{int(state.step)}_{_given('sampler', experiment.config.sampling.method)}"
    with atomic.replacing(f"{stem}.npz") as temporary:
        np.savez(temporary, x=y, nfe=int(nfe), step=int(state.step), **arrays)
    grey = np.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape)
    shown = x * arrays["mask"] if verb == "inpaint" else grey
    pictures = np.stack([shown, y], axis=1).reshape((-1,) + shape) if dataset.is_image else y
    experiment_lib.write_samples_png(pathlib.Path(f"{stem}.png"), experiment, pictures,
                                     f"{verb}, step {int(state.step)}, {int(nfe)} NFE")
    print(f"wrote {stem}.npz and {stem}.png ({len(y)} examples, {int(nfe)} score evaluations)")


def inpaint_verb() -> None:
    """Fill in the unknown entries (--mask 0) of --input with the model of --workdir."""
    _complete("inpaint")


def colorize_verb() -> None:
    """Colour the grey images of --input with the colour model of --workdir."""
    _complete("colorize")


def eval_verb() -> None:
    """Scores --workdir's newest checkpoint against held-out data; writes eval/step_<step>.json."""
    _require_flag("workdir", "eval")
    _refuse_problem_flags()
    workdir = pathlib.Path(FLAGS.workdir)
    experiment, state = experiment_lib.restore(workdir)
    config, dataset, key = experiment.config.eval, experiment.output_dataset, jax.random.PRNGKey(FLAGS.seed)
    if not len(dataset.test):
        raise ValueError("eval compares with held-out data, and this run has none: data.test_fraction is 0.")
    settings, sampler = _eval_settings(experiment)
    path = pathlib.Path(_given("outdir", workdir / workdir_lib.EVAL_DIR)) / f"step_{int(state.step)}.json"
    workdir_lib.check_evaluation(path, settings, overwrite=FLAGS.overwrite)
    results = {"step": int(state.step), "settings": settings}
    if config.enable_sampling:
        draw = experiment_lib.sampling_fn(experiment, settings["num_samples"], sampler)
        x, nfe = draw(state.ema_params, key)
        _check_finite(x, "samples")
        results["sampling_nfe"] = nfe
        if not dataset.is_image:
            results.update(evaluation.point_metrics(key, x, dataset))
        elif dataset.test_labels is not None:
            results.update(evaluation.image_metrics(evaluation.DigitsScorer.build(dataset), x))
    if config.enable_bpd:
        modelled = experiment.dataset  # a latent model's density is of the scaled latents
        x = evaluation.test_examples(modelled, settings["likelihood_examples"], FLAGS.seed)
        likelihood = evaluation.likelihood_fn(experiment.objective, modelled, width=config.batch_size)
        figures = likelihood(state.ema_params, key, x)
        results["likelihood_nfe"] = figures.pop("likelihood_nfe")
        _check_finite(np.array([list(figures.values())]), f"likelihood figures ({', '.join(figures)})")
        prefix = "test_" if experiment.latent is None else "test_scaled_latent_"
        results.update({f"{prefix}{name}": value for name, value in figures.items()})
    if experiment.latent is not None:
        results["latent_scale_factor"] = experiment.latent.scale
    if isinstance(experiment.objective, autoencoder.AutoencoderObjective):
        results.update(evaluation.autoencoder_metrics(experiment.objective, state.ema_params, dataset))
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(results, indent=2) + "\n")
        print(json.dumps(results))


def _eval_settings(experiment: experiment_lib.Experiment) -> tuple[dict, samplers.Sampler | None]:
    """What an evaluation is made with (seed; sampler name and settings, samples drawn; test examples in the
    likelihood), recorded beside its figures, and the sampler."""
    config = experiment.config.eval
    settings, sampler = {"seed": FLAGS.seed}, None
    if config.enable_sampling:
        sampler = _workdir_sampler(experiment)
        name = _given("sampler", experiment.config.sampling.method)
        settings.update(sampler={"name": name, "settings": dataclasses.asdict(sampler)},
                        num_samples=_num_samples(config.num_samples))
    if config.enable_bpd:
        batches = _given("num_batches", None)
        if batches is not None and batches < 1:
            raise ValueError(f"--num_batches must be >= 1 (test batches of eval.batch_size examples); got "
                             f"{batches}.")
        test = len(experiment.dataset.test)
        settings["likelihood_examples"] = test if batches is None else min(batches * config.batch_size, test)
    return settings, sampler


def bench_verb(what: str = "") -> None:
    """Benchmarks samplers (`bench samplers`, exact or learnt scores) or loop overhead (`bench overhead`).

    Flags given on the command line override the benchmark's settings.
    """
    names = ("problem", "sdes", "samplers", "nfes", "models", "num_samples", "seed", "workdir", "fit",
             "grids")
    overrides = {name: getattr(FLAGS, name) for name in names if FLAGS[name].present}
    bench_command.run(what, overrides, quick=FLAGS.quick, outdir=_given("outdir", None),
                      progress=FLAGS.progress)


VERBS = {"train": train_verb, "sample": sample_verb, "inpaint": inpaint_verb, "colorize": colorize_verb,
         "eval": eval_verb, "bench": bench_verb}
HELP_FLAGS = ("--help", "-h", "-?", "help")


def usage() -> str:
    """The verbs, one line each: the first line of each verb's docstring."""
    width = max(map(len, VERBS))
    verbs = [f"  {name:<{width}}  {inspect.getdoc(verb).splitlines()[0]}" for name, verb in VERBS.items()]
    return "\n".join(["usage: scoresde VERB [--flags]", "", "verbs:", *verbs, "", "`scoresde --helpfull` "
                      "lists every flag; README.md documents verbs, flags and configs."])


def _fail(verb: str, message: str, status: int = 2) -> None:
    print(f"scoresde {verb}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(status)


def _show_warnings_as_lines(verb: str) -> None:
    """A skipped damaged checkpoint is one line on stderr, "scoresde VERB: warning: ..."; other warnings as
    Python shows them."""
    default = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if issubclass(category, checkpoint.DamagedCheckpointWarning):
            print(f"scoresde {verb}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    warnings.showwarning = show


def _missing_field_text(error: Exception, argv: list[str]) -> str:
    """ml_collections names a field the config lacks as "'name'", maybe followed by a line "Did you mean
    ...?", in a KeyError, maybe inside an AttributeError; say in plain text which override asked for it."""
    while error.args and isinstance(error.args[0], Exception):
        error = error.args[0]
    text = str(error.args[0]) if error.args else repr(error)
    name, _, hint = text.partition("\n")
    name = name.strip("\"'")
    given = [arg.split("=")[0] for arg in argv if name.isidentifier() and arg.startswith("--config.")
             and f".{name}." in arg.split("=")[0] + "."]
    return f"{given[0]}: the config has no field {name!r}. {hint}".strip() if given else text


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors (unknown flags or --config.* keys, broken config files) are one line.

    --help (anywhere) prints the verbs and exits 0; so does bare `scoresde`, with exit status 2.
    """
    if any(arg in HELP_FLAGS for arg in argv[1:]) or len(argv) < 2:
        print(usage(), file=sys.stdout if len(argv) > 1 else sys.stderr)
        sys.exit(0 if len(argv) > 1 else 2)
    try:
        return FLAGS(argv)
    except (flags.Error, KeyError, AttributeError) as error:
        if "--verbose" in argv:
            raise
        missing_field = isinstance(error, (KeyError, AttributeError))
        text = _missing_field_text(error, argv) if missing_field else str(error)
        lines = [line for line in text.splitlines() if line.strip()] or [repr(error)]
        # A config file that raised keeps the traceback in the message; its last line is the exception.
        _fail(argv[1] if len(argv) > 1 else "", f"{lines[0]} {lines[-1]}" if "Traceback" in text else text)


_PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")


def _join_processes(argv: list[str]) -> None:
    """With --distributed or the --coordinator_address, --num_processes, --process_id trio: joins the
    multi-process run (`parallel.initialize_distributed`) and checks every process got the same flags."""
    explicit = [getattr(FLAGS, name) for name in _PROCESS_FLAGS]
    if not FLAGS.distributed and all(value is None for value in explicit):
        return

    def timed_out(message: str) -> None:
        print(f"scoresde {argv[1]}: error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    parallel.initialize_distributed(*explicit, timeout_s=FLAGS.distributed_timeout, on_timeout=timed_out)
    args = sys.argv[1:]  # `argv` holds what absl left: the verb
    given = [arg for i, arg in enumerate(args) if arg.partition("=")[0] != "--process_id"
             and (i == 0 or args[i - 1] != "--process_id")]
    parallel.check_same_settings(" ".join(given))


def run(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2 or argv[1] not in VERBS:
        verb = argv[1] if len(argv) > 1 else ""
        _fail(verb, f"usage: scoresde VERB [--flags]; VERB is one of {sorted(VERBS)}.")
    try:
        inspect.signature(VERBS[argv[1]]).bind(*argv[2:])
    except TypeError:
        _fail(argv[1], f"usage: scoresde {argv[1]} [--flags]; unexpected arguments {argv[2:]}.")
    _show_warnings_as_lines(argv[1])
    try:
        _join_processes(argv)
        VERBS[argv[1]](*argv[2:])
    except (ValueError, FloatingPointError, OSError) as e:
        if FLAGS.verbose:
            raise
        _fail(argv[1], str(e), status=2 if isinstance(e, ValueError) else 1)
    except KeyboardInterrupt:
        _fail(argv[1], "interrupted; files are written whole or not at all, so nothing half-written is left.",
              status=130)


def main() -> None:
    app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
