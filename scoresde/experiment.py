"""An experiment: everything a typed config builds (data, objective, optimizer, sampler), and a trained run
restored for sampling.

Example:
    >>> experiment = build_experiment(config)               # config: scoresde.config.Config
    >>> experiment, state = restore("runs/checkerboard")  # step and EMA parameters of the newest checkpoint
    >>> score_fn = experiment.objective.score_fn(state.ema_params)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from scoresde import checkpoint, guidance, parallel, plots
from scoresde import data as data_lib
from scoresde import workdir as workdir_lib
from scoresde.autoencoder import AutoencoderObjective
from scoresde.classifier import ClassifierObjective, LogProbFn
from scoresde.config import Config
from scoresde.latent import LatentSpace, build_latent_space
from scoresde.models import AUTOENCODERS, CLASSIFIERS
from scoresde.models import condition as condition_lib
from scoresde.objective import Objective
from scoresde.optim import build_optimizer
from scoresde.samplers import Sampler, sample
from scoresde.samplers.base import require
from scoresde.sde import ScoreFn

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config builds, once: data, objective, optimizer, samplers, and the config itself.

    `sampler` is the config's `sampling` section (sample, eval); `snapshot_sampler` draws the pictures of
    training snapshots (`training.snapshot_sampler`, `training.snapshot_num_steps`). `dataset` is what the
    network is trained on: for a latent score model (`model.autoencoder_workdir`) the scaled latents of
    `latent`, whose decoder turns samples into images.
    """

    config: Config
    dataset: data_lib.Dataset
    objective: Objective | ClassifierObjective | AutoencoderObjective
    optimizer: optax.GradientTransformation
    sampler: Sampler
    snapshot_sampler: Sampler
    latent: LatentSpace | None = None

    @property
    def output_dataset(self) -> data_lib.Dataset:
        """The data samples come out as: a latent model's images, else `dataset` itself."""
        return self.dataset if self.latent is None else self.latent.images

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.shape)

    @property
    def snapshots_sample(self) -> bool:
        """Whether training draws samples at its snapshots: `training.snapshot_sampling`, for a generative
        objective (a classifier has nothing to sample)."""
        return self.config.training.snapshot_sampling and self.objective.generative

    def init_params(self) -> Any:
        """The network's initial parameters, drawn from the config's seed."""
        return init_params(self.config.seed, self.objective.model, self.example_shape)


def init_params(seed: int, model: nn.Module, example_shape: tuple[int, ...]) -> Any:
    """Parameters of `model` for inputs shaped [B, *example_shape], drawn with the "rbg" generator.

    Its initialisers compile several times faster on CPU than threefry's.
    """
    example = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    return model.init(jax.random.key(seed, impl="rbg"), example, jnp.ones((1,)))["params"]


def abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Shapes, dtypes and `sharding` of a pytree, for restoring into without computing it."""
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


@struct.dataclass
class SamplingState:
    """What sampling and evaluation need of a checkpoint: its step and EMA parameters."""

    step: Array
    ema_params: Any


def _score_objective(config: Config, images: bool) -> Objective:
    return Objective(model=config.build_model(), sde=config.build_sde(),
                     parametrization=config.model.build_parametrization(), loss=config.build_loss(),
                     center_input=images and not config.data.centered,
                     cond_dropout=config.training.cond_dropout)


def check_condition(dataset: data_lib.Dataset, condition: condition_lib.Condition) -> None:
    """A conditional model needs a dataset that serves its condition: labels in [0, num_classes) for a
    class-conditional one, prompts for a prompt-conditioned one."""
    served = None if dataset.train_cond is None else np.concatenate([dataset.train_cond, dataset.test_cond])
    condition.check_served(dataset.name, served)


def _classifier_objective(config: Config, images: bool) -> ClassifierObjective:
    return ClassifierObjective(model=config.build_model(), sde=config.build_sde(),
                               eps=config.training.eps, center_input=images and not config.data.centered)


def _autoencoder_objective(config: Config, images: bool) -> AutoencoderObjective:
    require(images, f"training.objective='autoencoder' trains on images; {config.data.dataset!r} holds points.")
    require(config.model.autoencoder_workdir is None,
            "training.objective='autoencoder' trains on the data itself; model.autoencoder_workdir is for "
            "latent score models.")
    return AutoencoderObjective(model=config.build_model(), kl_weight=config.training.kl_weight,
                                center_input=not config.data.centered)


# What a network is trained for (`training.objective`), and the networks each one trains.
_OBJECTIVES = {"score": _score_objective, "classifier": _classifier_objective,
               "autoencoder": _autoencoder_objective}
_NETWORKS = {"classifier": CLASSIFIERS, "autoencoder": AUTOENCODERS}


def build_objective(config: Config, *, images: bool) -> Objective | ClassifierObjective:
    """The objective `training.objective` names, with the network, SDE and loss of the config; `images`: the
    data are images.

    Raises:
      ValueError: for an unknown objective (listing the valid ones), or a network the objective cannot train
        (the classifier objective trains `scoresde.models.CLASSIFIERS`, the autoencoder objective
        `scoresde.models.AUTOENCODERS`, the score objective every other one).
    """
    name, network = config.training.objective, config.model.name
    require(name in _OBJECTIVES, f"unknown training.objective {name!r}; valid names: {sorted(_OBJECTIVES)}.")
    owner = next((objective for objective, names in _NETWORKS.items() if network in names), "score")
    require(owner == name,
            f"training.objective={name!r} cannot train model.name={network!r}: the classifier objective "
            f"trains the networks {list(CLASSIFIERS)}, the autoencoder objective {list(AUTOENCODERS)}, the "
            f"score objective every other one.")
    return _OBJECTIVES[name](config, images)


def build_optimizer_of(config: Config) -> optax.GradientTransformation:
    """`build_optimizer` with the config's `optim` section (a cosine decay lasts training.n_iters)."""
    o = config.optim
    return build_optimizer(o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay,
                           warmup=o.warmup, grad_clip=o.grad_clip,
                           decay_steps=config.training.n_iters if o.cosine_decay else 0)


def build_experiment(config: Config) -> Experiment:
    """The dataset, network, SDE, loss, optimizer and samplers a config names; ValueError on bad input."""
    t = config.training
    sampler = config.sampling.build_sampler(config.sampling.method, config.model.num_scales)
    snapshot_sampler = config.sampling.build_sampler(t.snapshot_sampler, t.snapshot_num_steps)
    dataset = data_lib.build_dataset(config.data)
    objective = build_objective(config, images=dataset.is_image)
    check_condition(dataset, condition_lib.condition_of(objective.model))
    latent = None
    if config.model.autoencoder_workdir is not None:
        latent = load_latent_space(config.model.autoencoder_workdir, dataset)
    return Experiment(config, dataset if latent is None else latent.dataset, objective,
                      build_optimizer_of(config), sampler, snapshot_sampler, latent)


def load_latent_space(workdir: str, images: data_lib.Dataset) -> LatentSpace:
    """The latent space of `images` under the trained autoencoder of the run in `workdir`.

    Raises:
      ValueError: one line naming `model.autoencoder_workdir` if `workdir` holds no run, a run that is not an
        autoencoder, one still training (its newest intact checkpoint is not its final step), or one that
        cannot encode `images` (`_check_encodes`).
    """
    what = f"model.autoencoder_workdir={workdir}"
    try:
        autoencoder, state = restore(workdir)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from error
    config = autoencoder.config
    require(isinstance(autoencoder.objective, AutoencoderObjective),
            f"{what} holds a {config.training.objective!r} run, not an autoencoder "
            "(training.objective='autoencoder', e.g. configs/latent/autoencoder.py).")
    step, final = int(state.step), config.training.n_iters
    require(step == final, f"{what} is still training: its newest checkpoint is step {step} of {final}; a "
                           "latent model needs its final one (run its training to the end).")
    _check_encodes(autoencoder, images, what)
    return build_latent_space(str(workdir), step, autoencoder.objective, state.ema_params,
                              autoencoder.dataset.centered, images)


def restore(workdir: pathlib.Path | str, *, step: int | None = None) -> tuple[Experiment, SamplingState]:
    """The experiment of the run in `workdir` and the step and EMA parameters of its newest checkpoint, or of
    the kept checkpoint of `step`.

    Only those two are read from disk: not the parameters being trained, nor the optimizer state. A latent
    run (`model.autoencoder_workdir`) also reads the same two of its autoencoder's final checkpoint, whose
    encoder gives the latents and their scale factor and whose decoder turns samples into images.

    Raises:
      ValueError: if `workdir` holds no run or no intact checkpoint, the checkpoint does not fit its config,
        or a latent run's autoencoder is no longer the one it was trained on (`workdir.check_autoencoder`).
    """
    experiment = build_experiment(workdir_lib.load_config(workdir))
    if experiment.latent is not None:
        workdir_lib.check_autoencoder(workdir, experiment.latent.record(), experiment.latent.workdir)
    target = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "ema_params": jax.eval_shape(experiment.init_params)}
    target = abstract(target, parallel.replicated(parallel.data_mesh()))
    restored = (checkpoint.restore_latest(workdir, target, partial=True) if step is None
                else checkpoint.restore_step(workdir, step, target, partial=True))
    if restored is None:
        raise ValueError(f"{workdir} holds no checkpoint yet.")
    return experiment, SamplingState(**restored)


def _check_encodes(autoencoder: Experiment, images: data_lib.Dataset, what: str) -> None:
    """A fully convolutional autoencoder encodes images of the height and channels it was trained on (the
    size of the digits it learnt) and of any width divisible by its factor f: single digits and canvases of
    them alike."""
    trained, factor = autoencoder.dataset.shape, autoencoder.objective.model.factor
    fits = (images.is_image and images.shape[0] == trained[0] and images.shape[2] == trained[2]
            and images.shape[1] % factor == 0)
    require(fits, f"{what} encodes images {trained[0]} pixels high with {trained[2]} channel(s) and widths "
                  f"divisible by {factor} (it was trained on images shaped {trained}), but this config's data "
                  f"are shaped {images.shape}; set data.image_size and data.num_channels to match it.")


def class_score_fn(
    objective: Objective, params: Any, cond: Array | None, guidance_scale: float = 0.0
) -> ScoreFn:
    """The score of a run's network closed over class labels, with classifier-free guidance of weight w.

    Args:
      objective: the run's objective; params: its (EMA) parameters.
      cond: class labels, one int or [B], or prompt token ids, [L] or [B, L]; None: the unconditional score
        (a conditional network's null class or empty prompt).
      guidance_scale: Ho & Salimans' w >= 0 (`guidance.classifier_free_guidance`): the conditional score plus
        w times its difference from the null class's; 0 is the conditional score alone, one evaluation.
    """
    require(guidance_scale >= 0, f"guidance_scale must be >= 0; got {guidance_scale}.")
    require(cond is not None or not guidance_scale, "guidance_scale needs a condition to guide towards.")
    conditional = objective.score_fn(params, cond=cond)
    if not guidance_scale:
        return conditional
    return guidance.classifier_free_guidance(conditional, objective.score_fn(params), guidance_scale)


def classifier_log_prob_fn(
    workdir: pathlib.Path | str, label: int, *, guiding: Experiment | None = None
) -> LogProbFn:
    """log p(label | x_t, t) of the classifier run in `workdir` (its newest EMA parameters), as the
    `log_prob_fn(x: [B, ...], t: [B]) -> [B]` that `scoresde.guidance.classifier_guidance` takes.

    Args:
      workdir: a run trained with training.objective="classifier".
      label: the class, in [0, model.num_classes).
      guiding: the score model's experiment the classifier will guide: it must share the classifier's SDE and
        see data of the same shape and range.

    Raises:
      ValueError: if `workdir` holds no classifier run or checkpoint, `label` is out of range, or the
        classifier does not fit `guiding`.
    """
    experiment, state = restore(workdir)
    objective = experiment.objective
    require(isinstance(objective, ClassifierObjective),
            f"{workdir} holds a score model, not a noise-conditional classifier (training.objective="
            f"{experiment.config.training.objective!r}).")
    if guiding is not None:
        _check_guides(experiment, guiding, workdir)
    return objective.log_prob_fn(state.ema_params, label)


def _check_guides(classifier: Experiment, guided: Experiment, workdir: pathlib.Path | str) -> None:
    """A classifier guides a score model that reverses the same SDE over data of the same shape and range."""
    def seen(experiment):
        dataset = experiment.dataset
        return experiment.example_shape, dataset.is_image and dataset.centered, dataset.is_image
    require(classifier.objective.sde == guided.objective.sde,
            f"the classifier in {workdir} was trained on {classifier.objective.sde}, but the model samples "
            f"{guided.objective.sde}; train it with the same training.sde and SDE parameters.")
    require(seen(classifier) == seen(guided),
            f"the classifier in {workdir} sees examples shaped {classifier.example_shape} "
            f"(data.centered={classifier.dataset.centered}), the model {guided.example_shape} "
            f"(data.centered={guided.dataset.centered}).")


GROUP_AXIS = "examples"  # the vmapped axis of a group of examples drawn one by one (sampling_fn's width)


def sampling_fn(
    experiment: Experiment, num_samples: int, sampler: Sampler | None = None, *, guidance_scale: float = 0.0,
    width: int | None = None, mesh: jax.sharding.Mesh | None = None,
) -> Callable[..., tuple[np.ndarray, int]]:
    """(params, key, cond=None) -> (num_samples samples in the data's stored range, NFE), compiled once.

    Images come back in [0, 1], points as given, a latent model's samples decoded into images; `sampler`
    defaults to the config's. `cond`: the class label(s) of a class-conditional run, one int or
    [num_samples]; None samples its unconditional score (its null class). `guidance_scale`: classifier-free guidance towards `cond` (see `class_score_fn`).

    width: draw example by example instead (chunked sampling, `scoresde.chunks`): the function then takes
    (params, key, cond=None, start=0, stop=num_samples) and returns examples start .. stop - 1 of
    num_samples, example i drawn from the key fold_in(key, i) as a batch of one (`sample` with shape
    [1, ...], vmapped). Group i // width of `width` examples, where i sits at place i % width, is computed
    by one compiled program on one device, every device of `mesh` (default: every device of every process)
    drawing a group of its own at once (`parallel.map_groups`), so an example's bits depend on its index and
    `width` alone, never on start, stop or the number of devices: XLA's CPU matrix products round
    differently at another batch size, or in another program around them. A sampler's batch statistics (the
    Langevin corrector's step size) are averaged over the group (its `axis_name`), whose members are fixed
    by their indices; an adaptive solver's error norm is each example's own. The NFE returned is the most
    any example made.
    """
    sampler = experiment.sampler if sampler is None else sampler
    objective, example_shape = experiment.objective, experiment.example_shape
    denoise = experiment.config.sampling.noise_removal

    def draw(params, key, cond, shape, axis_name=None):
        score_fn = class_score_fn(objective, params, cond, guidance_scale)
        x, nfe = sample(key, objective.sde, score_fn, shape, sampler, denoise=denoise, axis_name=axis_name)
        return (x if experiment.latent is None else experiment.latent.decode(x)), nfe

    @jax.jit
    def draw_batch(params, key, cond):
        return draw(params, key, cond, (num_samples,) + example_shape)

    def one(params, key, index, label):
        label = None if label is None else label[None]
        x, nfe = draw(params, jax.random.fold_in(key, index), label, (1,) + example_shape, GROUP_AXIS)
        return x[0], nfe

    def draw_group(shared, group):
        (params, key), (first, cond) = shared, group
        drawn = jax.vmap(functools.partial(one, params, key), axis_name=GROUP_AXIS)
        x, nfe = drawn(first + jnp.arange(width), cond)
        return x, jnp.max(nfe)

    def labels(cond, size):
        if cond is None:
            return None
        objective.condition_spec.check_request(np.asarray(cond))
        return np.broadcast_to(np.asarray(cond, np.int32), (size,) + objective.condition_spec.example_shape)

    def pad(cond, n):  # n more examples of condition 0 (all padding for prompts); their samples are cut off
        return np.pad(cond, [(0, n)] + [(0, 0)] * (cond.ndim - 1))

    def samples(params, key, cond=None):
        x, nfe = draw_batch(params, key, labels(cond, num_samples))
        return np.asarray(experiment.dataset.unscale(x)), int(nfe)

    def samples_each(params, key, cond=None, start=0, stop=num_samples):
        firsts = np.arange(start // width * width, stop, width, dtype=np.int32)
        conds = None if cond is None else pad(labels(cond, num_samples), width)[
            firsts[:, None] + np.arange(width)]
        x, nfe = draw_groups((params, np.asarray(key)), (firsts, conds))
        x = x.reshape((-1,) + x.shape[2:])[start - firsts[0]:stop - firsts[0]]
        return np.asarray(experiment.dataset.unscale(x)), int(nfe.max())

    if width is None:
        return samples
    require(isinstance(width, int) and width >= 1, f"width must be an integer >= 1; got {width!r}.")
    draw_groups = parallel.map_groups(draw_group, parallel.data_mesh() if mesh is None else mesh)
    return samples_each


def write_samples_png(path: pathlib.Path, experiment: Experiment, x: np.ndarray, title: str) -> None:
    """A scatter over held-out data for points, an image grid (at most 64) for images."""
    dataset = experiment.output_dataset
    reference = None if dataset.is_image else dataset.test
    plots.samples_png(path, np.clip(x[:64], 0.0, 1.0) if dataset.is_image else x, reference, title=title)
