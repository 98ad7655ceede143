"""Training score networks: TrainState, the train step and the training loop.

A step draws its randomness from fold_in(state.rng, state.step) and its batch from
`Dataset.train_batch(step)`, both pure functions of (seed, step), and `n_jitted_steps` steps run per dispatch
in one `lax.scan`; checkpoints fall on multiples of n_jitted_steps, so a resumed run repeats an uninterrupted
one bit for bit. What a config builds is `scoresde.experiment`; the files of a run are `scoresde.workdir`.

Example:
    >>> experiment = build_experiment(config)          # scoresde.experiment; config: scoresde.config.Config
    >>> state = run(experiment, "runs/checkerboard")   # trains, checkpoints, logs; resumes if possible
"""

from __future__ import annotations

import functools
import json
import pathlib
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

from scoresde import checkpoint, parallel
from scoresde import data as data_lib
from scoresde import workdir as workdir_lib
from scoresde.experiment import Experiment, abstract, init_params, sampling_fn, write_samples_png
from scoresde.objective import Objective

Array = jax.Array


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


def init_state(
    seed: int, model: nn.Module, optimizer: optax.GradientTransformation, example: Array
) -> TrainState:
    """A fresh TrainState for a network taking inputs shaped like example: [B, ...].

    The parameters come from `experiment.init_params`; the training randomness (`rng`) is threefry, which
    gives the same numbers however the batch is sharded.
    """
    params = init_params(seed, model, example.shape[1:])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),  # its own buffers, for donation
                      opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed))


def train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    state: TrainState,
    batch: data_lib.Batch | Array,
) -> tuple[TrainState, Array]:
    """One optimizer step on a batch (x: [B, ...] and its labels, or x alone) and the EMA update; returns
    (new state, loss)."""
    key = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(objective)(state.params, key, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state), loss


def compile_train_steps(
    objective: Objective, optimizer: optax.GradientTransformation, ema_rate: float, mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Any], tuple[TrainState, Array]]:
    """(state, batches) -> (state after n steps, losses: [n]), one lax.scan jitted over `mesh`.

    `batches`: n stacked batches, a `data.Batch` of x: [n, B, ...] and cond: [n, B] (or None), or x alone.

    The batch axis is split over the mesh's devices; the state is replicated and donated. A single step runs
    outside any loop: XLA:CPU (jaxlib 0.10) computes convolution gradients inside a while loop some 35x slower
    than outside one, so on CPU convolutional networks train with n_jitted_steps=1.
    """
    step = functools.partial(train_step, objective, optimizer, ema_rate)
    replicated = parallel.replicated(mesh)

    def steps(state: TrainState, batches: Any) -> tuple[TrainState, Array]:
        if jax.tree_util.tree_leaves(batches)[0].shape[0] == 1:
            state, loss = step(state, jax.tree_util.tree_map(lambda b: b[0], batches))
            return state, loss[None]
        return lax.scan(step, state, batches)

    return jax.jit(steps, in_shardings=(replicated, parallel.batch_sharding(mesh, 1)),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def initial_state(experiment: Experiment) -> TrainState:
    """The TrainState an experiment starts from."""
    example = jnp.zeros((1,) + experiment.example_shape, jnp.float32)
    return init_state(experiment.config.seed, experiment.objective.model, experiment.optimizer, example)


def abstract_state(experiment: Experiment, mesh: jax.sharding.Mesh) -> TrainState:
    """The TrainState's shapes, dtypes and replicated sharding, without computing it (for restoring)."""
    return abstract(jax.eval_shape(lambda: initial_state(experiment)), parallel.replicated(mesh))


class _Log:
    """Appends JSON lines to metrics.jsonl and shows the loss and speed on a tqdm bar."""

    def __init__(self, workdir: pathlib.Path, first_step: int, total: int, progress: bool):
        self._file = (workdir / workdir_lib.METRICS_FILE).open("a")
        self._bar = tqdm(total=total, initial=first_step, disable=not progress, unit="step",
                         dynamic_ncols=True)
        self._since, self._since_step = time.perf_counter(), first_step

    def advance(self, steps: int) -> None:
        self._bar.update(steps)

    def note(self, text: str) -> None:
        """A line above the bar (none without progress)."""
        if not self._bar.disable:
            self._bar.write(text)

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


def _batches(dataset: data_lib.Dataset, first_step: int, n: int, batch_size: int) -> data_lib.Batch:
    """This host's slices of the batches of steps first_step .. first_step + n - 1, stacked: x: [n, B / hosts,
    ...], cond: [n, B / hosts] or None."""
    batches = [dataset.batch(first_step + i, batch_size, process_index=jax.process_index(),
                             process_count=jax.process_count()) for i in range(n)]
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *batches)


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
    parameters on a test batch every eval_freq steps; a resumed run first drops the lines logged after its
    checkpoint, so no step appears twice) and, with snapshot_sampling and a generative objective
    (`Experiment.snapshots_sample`), samples/step_<step>.png at every snapshot (batch_size samples by
    `experiment.snapshot_sampler`, a few-step ODE solver by default).

    Raises:
      ValueError: on a batch not divisible by the device count, a workdir holding another config (see
        `check_workdir`) or a checkpoint that does not fit; the workdir is left as it was.
    """
    workdir, config, t = pathlib.Path(workdir), experiment.config, experiment.config.training
    mesh = parallel.data_mesh()
    parallel.check_batch_size(t.batch_size, mesh)
    start_over = workdir_lib.check_workdir(workdir, config, resume=resume, overwrite=overwrite)
    state = jax.jit(lambda: initial_state(experiment), out_shardings=parallel.replicated(mesh))()
    if start_over:
        workdir_lib.clear_run(workdir)
    checkpoints = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints, async_save=async_checkpoints)
    restored = checkpoints.restore_latest(state)
    state = state if restored is None else restored
    workdir_lib.write_config(workdir, config)
    workdir_lib.truncate_metrics(workdir, int(state.step))
    steps = compile_train_steps(experiment.objective, experiment.optimizer, config.model.ema_rate, mesh)
    eval_loss = jax.jit(lambda params, key, batch: experiment.objective(params, key, batch, train=False))
    snapshot_samples = (sampling_fn(experiment, t.batch_size, experiment.snapshot_sampler)
                        if experiment.snapshots_sample else None)
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
                test = experiment.dataset.test_batch(0, t.batch_size)
                log.write(step, eval_loss=float(eval_loss(state.ema_params, jax.random.PRNGKey(step), test)))
            _checkpoint(experiment, workdir, checkpoints, state, step, snapshot_samples, log)
    finally:
        log.close()
        checkpoints.close()
    return state


def _checkpoint(experiment: Experiment, workdir: pathlib.Path, checkpoints: checkpoint.Checkpointer,
                state: TrainState, step: int, snapshot_samples: Callable | None, log: _Log) -> None:
    """Saves a snapshot (with samples) or a preemption checkpoint when `step` is due for one.

    Every snapshot's samples start from the same noise, so the pictures of one run show its progress.
    """
    t = experiment.config.training
    snapshot = step % t.snapshot_freq == 0 or step == t.n_iters
    if snapshot or step % t.snapshot_freq_for_preemption == 0:
        checkpoints.save(step, state, snapshot=snapshot)
    if snapshot and snapshot_samples is not None:
        x, nfe = snapshot_samples(state.ema_params, jax.random.PRNGKey(experiment.config.seed))
        (workdir / workdir_lib.SAMPLES_DIR).mkdir(exist_ok=True)
        path = workdir / workdir_lib.SAMPLES_DIR / f"step_{step}.png"
        write_samples_png(path, experiment, x, f"step {step}, {nfe} NFE")
        log.note(f"step {step}: {len(x)} samples ({t.snapshot_sampler}, {nfe} NFE) in {path}")
