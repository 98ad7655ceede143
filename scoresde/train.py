"""Training score networks: TrainState, the train step, the optimizer, EMA, and the training loop.

A step draws its randomness from fold_in(state.rng, state.step) and its batch from
`Dataset.train_batch(step)`, both pure functions of (seed, step), and `n_jitted_steps` steps run per dispatch
in one `lax.scan`; checkpoints fall on multiples of n_jitted_steps, so a resumed run repeats an uninterrupted
one bit for bit.

Example:
    >>> experiment = build_experiment(config)          # config: scoresde.config.Config
    >>> state = run(experiment, "runs/checkerboard")   # trains, checkpoints, logs; resumes if possible
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax
from tqdm import tqdm

from scoresde import checkpoint, parallel, plots
from scoresde import data as data_lib
from scoresde.config import Config, from_dict
from scoresde.losses import Loss
from scoresde.models.parametrization import Parametrization, network_fn
from scoresde.samplers import Sampler, sample
from scoresde.sde import SDE, ScoreFn

Array = jax.Array
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"


@struct.dataclass
class TrainState:
    """Everything training changes: a pytree, checkpointed whole.

    Attributes:
      step: optimizer steps taken, an int32 scalar.
      params: network parameters.
      ema_params: exponential moving average of `params`, used for sampling and evaluation.
      opt_state: optax state.
      rng: base PRNG key; step k uses fold_in(rng, k).
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a score network is trained for: its SDE, its parametrization and its loss.

    Attributes:
      model: the Flax network.
      sde: forward SDE.
      parametrization: turns network output into a score.
      loss: a `scoresde.losses.Loss`.
      center_input: feed the network 2 x - 1 (uncentred image data, as in the reference).
    """

    model: nn.Module
    sde: SDE
    parametrization: Parametrization
    loss: Loss
    center_input: bool = False

    def score_fn(self, params: Any, *, train: bool = False, rng: Array | None = None) -> ScoreFn:
        """score_fn(x, t) of the network with `params` (dropout on when `train`, seeded by `rng`)."""
        network = network_fn(self.model, {"params": params}, train=train, rng=rng,
                             center_input=self.center_input)
        return self.parametrization.score_fn(self.sde, network)

    def __call__(self, params: Any, key: Array, batch: Array, train: bool = True) -> Array:
        """The mean loss over batch: [B, ...]."""
        k_loss, k_dropout = jax.random.split(key)
        score_fn = self.score_fn(params, train=train, rng=k_dropout if train else None)
        return jnp.mean(self.loss(k_loss, self.sde, score_fn, batch))


def warmup_schedule(lr: float, warmup: int) -> optax.Schedule:
    """lr * min((k + 1) / warmup, 1) at update k: the reference's linear warmup, less its zero first step."""
    if warmup <= 0:
        return optax.constant_schedule(lr)
    return lambda count: lr * jnp.minimum((count + 1.0) / warmup, 1.0)


def build_optimizer(
    name: str,
    *,
    lr: float,
    beta1: float = 0.9,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup: int = 0,
    grad_clip: float = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping (off if grad_clip < 0), the named optimizer, decoupled weight decay, warmup.

    As the reference's flax.optim.Adam, weight decay is added to the Adam direction and scaled by the learning
    rate (AdamW; Loshchilov & Hutter 2019).

    Raises:
      ValueError: for an unknown name (listing the valid ones).
    """
    directions = {"Adam": lambda: optax.scale_by_adam(b1=beta1, eps=eps)}
    if name not in directions:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {sorted(directions)}.")
    return optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip >= 0 else optax.identity(),
        directions[name](),
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.scale_by_learning_rate(warmup_schedule(lr, warmup)),
    )


def init_state(
    seed: int, model: nn.Module, optimizer: optax.GradientTransformation, example: Array
) -> TrainState:
    """A fresh TrainState for a network taking inputs shaped like example: [B, ...].

    The parameters are drawn with the "rbg" generator, whose initialisers compile several times faster on CPU
    than threefry's; the training randomness (`rng`) is threefry, which gives the same numbers however the
    batch is sharded.
    """
    params = model.init(jax.random.key(seed, impl="rbg"), example, jnp.ones(example.shape[:1]))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),  # its own buffers, for donation
                      opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed))


def train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    state: TrainState,
    batch: Array,
) -> tuple[TrainState, Array]:
    """One optimizer step on batch: [B, ...] and the EMA update; returns (new state, loss)."""
    key = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(objective)(state.params, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state), loss


def compile_train_steps(
    objective: Objective, optimizer: optax.GradientTransformation, ema_rate: float, mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Array], tuple[TrainState, Array]]:
    """(state, batches: [n, B, ...]) -> (state after n steps, losses: [n]), one lax.scan jitted over `mesh`.

    The batch axis is split over the mesh's devices; the state is replicated and donated. A single step runs
    outside any loop: XLA:CPU (jaxlib 0.10) computes convolution gradients inside a while loop some 35x slower
    than outside one, so on CPU convolutional networks train with n_jitted_steps=1.
    """
    step = functools.partial(train_step, objective, optimizer, ema_rate)
    replicated = parallel.replicated(mesh)

    def steps(state: TrainState, batches: Array) -> tuple[TrainState, Array]:
        if batches.shape[0] == 1:
            state, loss = step(state, batches[0])
            return state, loss[None]
        return lax.scan(step, state, batches)

    return jax.jit(steps, in_shardings=(replicated, parallel.batch_sharding(mesh, 1)),
                   out_shardings=(replicated, replicated), donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config builds, once: data, objective, optimizer, sampler, and the config itself."""

    config: Config
    dataset: data_lib.Dataset
    objective: Objective
    optimizer: optax.GradientTransformation
    sampler: Sampler

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.shape)

    def init_state(self) -> TrainState:
        example = jnp.zeros((1,) + self.example_shape, jnp.float32)
        return init_state(self.config.seed, self.objective.model, self.optimizer, example)

    def abstract_state(self, mesh: jax.sharding.Mesh) -> TrainState:
        """The TrainState's shapes, dtypes and replicated sharding, without computing it (for restoring)."""
        sharding = parallel.replicated(mesh)
        return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                      jax.eval_shape(self.init_state))


def build_objective(config: Config, *, images: bool) -> Objective:
    """The network, SDE, parametrization and loss a config names; `images`: the data are images."""
    return Objective(model=config.model.build_model(), sde=config.build_sde(),
                     parametrization=config.model.build_parametrization(), loss=config.build_loss(),
                     center_input=images and not config.data.centered)


def build_optimizer_of(config: Config) -> optax.GradientTransformation:
    """`build_optimizer` with the config's `optim` section."""
    o = config.optim
    return build_optimizer(o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay,
                           warmup=o.warmup, grad_clip=o.grad_clip)


def build_experiment(config: Config) -> Experiment:
    """The dataset, network, SDE, loss, optimizer and sampler a config names; ValueError on bad input."""
    dataset = data_lib.build_dataset(config.data)
    sampler = config.sampling.build_sampler(config.sampling.method, config.model.num_scales)
    return Experiment(config, dataset, build_objective(config, images=dataset.is_image),
                      build_optimizer_of(config), sampler)


def sampling_fn(
    experiment: Experiment, num_samples: int, sampler: Sampler | None = None
) -> Callable[[Any, Array], tuple[np.ndarray, int]]:
    """(params, key) -> (num_samples samples in the data's stored range, NFE), compiled once.

    Images come back in [0, 1], points as given; `sampler` defaults to the config's.
    """
    sampler = experiment.sampler if sampler is None else sampler
    objective, shape = experiment.objective, (num_samples,) + experiment.example_shape
    denoise = experiment.config.sampling.noise_removal

    @jax.jit
    def draw(params, key):
        return sample(key, objective.sde, objective.score_fn(params), shape, sampler, denoise=denoise)

    def samples(params, key):
        x, nfe = draw(params, key)
        return np.asarray(experiment.dataset.unscale(x)), int(nfe)

    return samples


def write_samples_png(path: pathlib.Path, experiment: Experiment, x: np.ndarray, title: str) -> None:
    """A scatter over held-out data for points, an image grid (at most 64) for images."""
    dataset = experiment.dataset
    reference = None if dataset.is_image else dataset.test
    plots.samples_png(path, np.clip(x[:64], 0.0, 1.0) if dataset.is_image else x, reference, title=title)


# ----- the workdir -----


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        nested = isinstance(value, dict)
        out.update(_flatten(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every flattened key whose value differs."""
    old, new = _flatten(old), _flatten(new)
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def load_config(workdir: pathlib.Path) -> Config:
    """The Config a training run in `workdir` was started with; ValueError if there is none."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{workdir} holds no training run ({CONFIG_FILE} is missing).")
    return from_dict(json.loads(path.read_text()))


def restore(workdir: pathlib.Path | str) -> tuple[Experiment, TrainState]:
    """The experiment of the training run in `workdir` and its newest checkpoint (ValueError if none)."""
    experiment = build_experiment(load_config(workdir))
    checkpointer = checkpoint.Checkpointer(workdir)
    try:
        state = checkpointer.restore_latest(experiment.abstract_state(parallel.data_mesh()))
    finally:
        checkpointer.close()
    if state is None:
        raise ValueError(f"{workdir} holds no checkpoint yet.")
    return experiment, state


def check_workdir(workdir: pathlib.Path, config: Config, *, resume: bool, overwrite: bool) -> bool:
    """Decides what training may do with `workdir`, without changing it; returns whether to start over.

    A workdir with the same config is resumed. One with another config is refused unless `resume` (continue
    its checkpoints under the new config) or `overwrite` (delete its run and start over).
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other.")
    path = workdir / CONFIG_FILE
    if not path.is_file():
        if (workdir / checkpoint.SNAPSHOTS).exists() or (workdir / checkpoint.PREEMPTION).exists():
            raise ValueError(f"{workdir} holds checkpoints but no {CONFIG_FILE}; refusing to touch them.")
        return False
    differences = config_differences(json.loads(path.read_text()), config.to_dict())
    if differences and not (resume or overwrite):
        raise ValueError(f"{workdir} holds a run with a different config ({'; '.join(differences)}); pass "
                         f"--resume to continue it with this config, or --overwrite to start over.")
    return overwrite


def clear_run(workdir: pathlib.Path) -> None:
    """Deletes what training writes into workdir (checkpoints, metrics, samples, config), nothing else."""
    for name in (checkpoint.SNAPSHOTS, checkpoint.PREEMPTION, SAMPLES_DIR):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in (METRICS_FILE, CONFIG_FILE):
        (workdir / name).unlink(missing_ok=True)


# ----- the loop -----


class _Log:
    """Appends JSON lines to metrics.jsonl and shows the loss and speed on a tqdm bar."""

    def __init__(self, workdir: pathlib.Path, first_step: int, total: int, progress: bool):
        self._file = (workdir / METRICS_FILE).open("a")
        self._bar = tqdm(total=total, initial=first_step, disable=not progress, unit="step",
                         dynamic_ncols=True)
        self._since, self._since_step = time.perf_counter(), first_step

    def advance(self, steps: int) -> None:
        self._bar.update(steps)

    def write(self, step: int, **metrics: float) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def training(self, step: int, loss: float, batch_size: int) -> None:
        now = time.perf_counter()
        rate = (step - self._since_step) / (now - self._since)
        self._since, self._since_step = now, step
        self.write(step, loss=loss, steps_per_sec=rate, examples_per_sec=rate * batch_size)
        self._bar.set_postfix(loss=f"{loss:.4g}", steps_per_sec=f"{rate:.3g}")

    def close(self) -> None:
        self._bar.close()
        self._file.close()


def _batches(dataset: data_lib.Dataset, first_step: int, n: int, batch_size: int) -> np.ndarray:
    """This host's slices of the batches of steps first_step .. first_step + n - 1: [n, B / hosts, ...]."""
    return np.stack([dataset.train_batch(first_step + i, batch_size, process_index=jax.process_index(),
                                         process_count=jax.process_count()) for i in range(n)])


def run(
    experiment: Experiment,
    workdir: str | pathlib.Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    async_checkpoints: bool = True,
) -> TrainState:
    """Trains to `training.n_iters` steps, resuming from the workdir's newest checkpoint if there is one.

    Writes config.json, checkpoints/ and checkpoints-meta/ (see `scoresde.checkpoint`), metrics.jsonl (one
    JSON object per line: training loss, steps/s and examples/s every log_freq steps; eval_loss of the EMA
    parameters on a test batch every eval_freq steps) and, with snapshot_sampling, samples/step_<step>.png at
    every snapshot.

    Raises:
      ValueError: on a batch not divisible by the device count, a workdir holding another config (see
        `check_workdir`) or a checkpoint that does not fit; the workdir is left as it was.
    """
    workdir, config, t = pathlib.Path(workdir), experiment.config, experiment.config.training
    mesh = parallel.data_mesh()
    parallel.check_batch_size(t.batch_size, mesh)
    start_over = check_workdir(workdir, config, resume=resume, overwrite=overwrite)
    state = jax.jit(experiment.init_state, out_shardings=parallel.replicated(mesh))()
    if start_over:
        clear_run(workdir)
    checkpoints = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints, async_save=async_checkpoints)
    restored = checkpoints.restore_latest(state)
    state = state if restored is None else restored
    (workdir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    steps = compile_train_steps(experiment.objective, experiment.optimizer, config.model.ema_rate, mesh)
    eval_loss = jax.jit(lambda params, key, batch: experiment.objective(params, key, batch, train=False))
    snapshot_samples = sampling_fn(experiment, t.batch_size)
    step = int(state.step)
    log = _Log(workdir, step, t.n_iters, progress)
    losses = []
    try:
        while step < t.n_iters:
            local = _batches(experiment.dataset, step, t.n_jitted_steps, t.batch_size)
            batches = parallel.shard_batch(local, mesh, batch_axis=1)
            state, chunk_losses = steps(state, batches)
            losses.append(chunk_losses)
            step += t.n_jitted_steps
            log.advance(t.n_jitted_steps)
            if step % t.log_freq == 0:
                log.training(step, float(jnp.mean(jnp.concatenate(losses))), t.batch_size)
                losses = []
            if step % t.eval_freq == 0 and len(experiment.dataset.test):
                test = next(experiment.dataset.test_batches(t.batch_size))
                log.write(step, eval_loss=float(eval_loss(state.ema_params, jax.random.PRNGKey(step), test)))
            _checkpoint(experiment, workdir, checkpoints, state, step, snapshot_samples)
    finally:
        log.close()
        checkpoints.close()
    return state


def _checkpoint(experiment: Experiment, workdir: pathlib.Path, checkpoints: checkpoint.Checkpointer,
                state: TrainState, step: int, snapshot_samples: Callable) -> None:
    """Saves a snapshot (with samples) or a preemption checkpoint when `step` is due for one."""
    t = experiment.config.training
    snapshot = step % t.snapshot_freq == 0 or step == t.n_iters
    if snapshot or step % t.snapshot_freq_for_preemption == 0:
        checkpoints.save(step, state, snapshot=snapshot)
    if snapshot and t.snapshot_sampling:
        x, nfe = snapshot_samples(state.ema_params, jax.random.PRNGKey(step))
        (workdir / SAMPLES_DIR).mkdir(exist_ok=True)
        path = workdir / SAMPLES_DIR / f"step_{step}.png"
        write_samples_png(path, experiment, x, f"step {step}, {nfe} NFE")
