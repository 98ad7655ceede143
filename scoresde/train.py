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
import sys
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
from scoresde.stopping import StopSignals
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
    *,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, Array]:
    """One optimizer step on a batch (x: [B, ...] and its labels, or x alone) and the EMA update; returns
    (new state, loss).

    The loss comes back NaN when it or any gradient is not finite; with `skip_nonfinite` such a step then
    leaves the parameters, EMA and optimizer state as they were (the step count still advances, so the next
    step draws the next batch and key).
    """
    key = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(objective)(state.params, key, batch)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                                     for g in jax.tree_util.tree_leaves(grads)]))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate)
    new = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
    if skip_nonfinite:
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state.replace(step=new.step))
    return new, jnp.where(finite, loss, jnp.nan)


def compile_train_steps(
    objective: Objective, optimizer: optax.GradientTransformation, ema_rate: float, mesh: jax.sharding.Mesh,
    *, skip_nonfinite: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, Array]]:
    """(state, batches) -> (state after n steps, losses: [n]), one lax.scan jitted over `mesh`.

    `batches`: n stacked batches, a `data.Batch` of x: [n, B, ...] and cond: [n, B] (or None), or x alone.
    A step's loss is NaN if it or a gradient was not finite (see `train_step` and its `skip_nonfinite`).

    The batch axis is split over the mesh's devices; the state is replicated and donated. A single step runs
    outside any loop: XLA:CPU (jaxlib 0.10) computes convolution gradients inside a while loop some 35x slower
    than outside one, so on CPU convolutional networks train with n_jitted_steps=1.
    """
    step = functools.partial(train_step, objective, optimizer, ema_rate, skip_nonfinite=skip_nonfinite)
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
    """Appends JSON lines to metrics.jsonl and shows the loss and speed on a tqdm bar, in the primary process
    alone (`parallel.is_primary`); in the others it writes and shows nothing."""

    def __init__(self, workdir: pathlib.Path, first_step: int, total: int, progress: bool):
        primary = parallel.is_primary()
        self._file = (workdir / workdir_lib.METRICS_FILE).open("a") if primary else None
        self._bar = tqdm(total=total, initial=first_step, disable=not (progress and primary), unit="step",
                         dynamic_ncols=True)
        self._since, self._since_step = time.perf_counter(), first_step

    def advance(self, steps: int) -> None:
        self._bar.update(steps)

    def note(self, text: str) -> None:
        """A line above the bar (none without progress)."""
        if not self._bar.disable:
            self._bar.write(text)

    def write(self, step: int, **metrics: float) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"step": step, **metrics}) + "\n")
            self._file.flush()
        except OSError as error:  # a full disk; a line cut short is dropped on resume
            raise OSError(f"{self._file.name} could not be appended to ({error}); the checkpoints saved "
                          f"before are intact.") from error

    def training(self, step: int, losses: np.ndarray, batch_size: int, count_skipped: bool) -> None:
        """The mean of the finite `losses` of the steps since the last line (and, if `count_skipped`, how
        many steps were skipped as non-finite), steps/s and examples/s."""
        now = time.perf_counter()
        rate = (step - self._since_step) / (now - self._since)
        self._since, self._since_step = now, step
        finite = losses[np.isfinite(losses)]
        loss = float(np.mean(finite)) if len(finite) else None
        skipped = {"skipped_nonfinite": len(losses) - len(finite)} if count_skipped else {}
        self.write(step, loss=loss, **skipped, steps_per_sec=rate, examples_per_sec=rate * batch_size)
        self._bar.set_postfix(loss=f"{loss:.4g}" if loss is not None else "-", steps_per_sec=f"{rate:.3g}")

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()


def _batches(dataset: data_lib.Dataset, first_step: int, n: int, batch_size: int) -> data_lib.Batch:
    """This host's slices of the batches of steps first_step .. first_step + n - 1, stacked: x: [n, B / hosts,
    ...], cond: [n, B / hosts] or None."""
    batches = [dataset.batch(first_step + i, batch_size, process_index=jax.process_index(),
                             process_count=jax.process_count()) for i in range(n)]
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *batches)


def _check_finite(losses: np.ndarray, first_step: int, last_saved: str) -> None:
    """FloatingPointError naming the first step whose loss or gradients were not finite (a NaN loss)."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        raise FloatingPointError(
            f"step {first_step + int(bad[0]) + 1}: the loss or its gradients are not finite (NaN or Inf); "
            f"training stopped without saving it. The last good checkpoint is {last_saved}. Lower optim.lr, "
            f"set optim.grad_clip, or set training.skip_nonfinite=True to skip such steps.")


def run(
    experiment: Experiment,
    workdir: str | pathlib.Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    async_checkpoints: bool = True,
) -> TrainState:
    """Trains to `training.n_iters` steps, resuming from the workdir's newest intact checkpoint if any.

    On several processes (`parallel.initialize_distributed`) every process calls `run` alike: each loads
    its slice of every global batch, all save and restore the checkpoints (orbax), and process 0 alone writes
    the other files.

    Writes config.json, checkpoints/ and checkpoints-meta/ (see `scoresde.checkpoint`), metrics.jsonl (one
    JSON object per line: training loss, steps/s and examples/s every log_freq steps; eval_loss of the EMA
    parameters on a test batch every eval_freq steps; a resumed run first drops the lines logged after its
    checkpoint, so no step appears twice) and, with snapshot_sampling and a generative objective
    (`Experiment.snapshots_sample`), samples/step_<step>.png at every snapshot (batch_size samples by
    `experiment.snapshot_sampler`, a few-step ODE solver by default).

    SIGTERM or SIGINT stops training after the dispatch in flight: the state is saved as a preemption
    checkpoint at that step, the save awaited, and the state returned (its step below n_iters); a second
    signal ends the process at once. The losses are checked at every log line and before every checkpoint
    and snapshot: a non-finite one stops training unless training.skip_nonfinite.

    Raises:
      ValueError: on a batch not divisible by the device count, a workdir holding another config (see
        `check_workdir`) or a checkpoint that does not fit; the workdir is left as it was.
      FloatingPointError: on a NaN or Inf loss or gradient (without training.skip_nonfinite), naming the step
        and the last checkpoint saved, which is intact.
    """
    workdir, config, t = pathlib.Path(workdir), experiment.config, experiment.config.training
    mesh = parallel.data_mesh()
    parallel.check_batch_size(t.batch_size, mesh)
    experiment.dataset.batch_indices(0, t.batch_size)  # a batch larger than the data fails before any write
    autoencoder = None if experiment.latent is None else experiment.latent.record()
    start_over = workdir_lib.check_workdir(workdir, config, resume=resume, overwrite=overwrite,
                                           autoencoder=autoencoder)
    state = jax.jit(lambda: initial_state(experiment), out_shardings=parallel.replicated(mesh))()
    primary = parallel.is_primary()
    if start_over and primary:
        workdir_lib.clear_run(workdir)
    parallel.barrier("scoresde: workdir cleared")
    restored = checkpoint.restore_latest(workdir, state, set_aside=primary)
    state = state if restored is None else restored
    checkpoints = checkpoint.Checkpointer(workdir, keep=t.keep_checkpoints, async_save=async_checkpoints)
    if primary:
        workdir_lib.write_config(workdir, config)
        workdir_lib.write_autoencoder(workdir, autoencoder)
        workdir_lib.truncate_metrics(workdir, int(state.step))
    steps = compile_train_steps(experiment.objective, experiment.optimizer, config.model.ema_rate, mesh,
                                skip_nonfinite=t.skip_nonfinite)
    eval_loss = jax.jit(lambda params, key, batch: experiment.objective(params, key, batch, train=False))
    snapshot_samples = (sampling_fn(experiment, t.batch_size, experiment.snapshot_sampler)
                        if experiment.snapshots_sample else None)
    step = saved = int(state.step)
    last_saved = "none (none was saved yet)" if restored is None else f"the step-{step} one it resumed from"
    log = _Log(workdir, step, t.n_iters, progress)
    losses, window_start = [], step
    try:
        with StopSignals("saving a checkpoint after this step") as stop:
            while step < t.n_iters and not parallel.any_process(stop.received is not None):
                local = _batches(experiment.dataset, step, t.n_jitted_steps, t.batch_size)
                state, chunk_losses = steps(state, parallel.shard_batch(local, mesh, batch_axis=1))
                losses.append(chunk_losses)
                step += t.n_jitted_steps
                log.advance(t.n_jitted_steps)
                if not _due(t, step):
                    continue
                window = np.asarray(jnp.concatenate(losses))
                if not t.skip_nonfinite:
                    _check_finite(window, window_start, last_saved)
                if step % t.log_freq == 0:
                    log.training(step, window, t.batch_size, t.skip_nonfinite)
                    losses, window_start = [], step
                if step % t.eval_freq == 0 and len(experiment.dataset.test):
                    test = experiment.dataset.test_batch(0, t.batch_size)
                    key = jax.random.PRNGKey(step)
                    log.write(step, eval_loss=float(eval_loss(state.ema_params, key, test)))
                path = _checkpoint(experiment, workdir, checkpoints, state, step, snapshot_samples, log)
                saved, last_saved = (step, f"in {path}") if path else (saved, last_saved)
            if stop.received is not None or step < t.n_iters:  # a signal, to this process or another
                where = (f"in {checkpoints.save(step, state, snapshot=False)}" if step > saved
                         else last_saved)
                checkpoints.wait()
                print(f"{stop.received or 'a signal to another process'}: stopped at step {step}; its "
                      f"checkpoint is {where}", file=sys.stderr)
    finally:
        log.close()
        checkpoints.close()
    return state


def _due(t: Any, step: int) -> bool:
    """Whether `step` logs, evaluates or checkpoints (the loop then checks the losses)."""
    return step == t.n_iters or any(step % freq == 0 for freq in (
        t.log_freq, t.eval_freq, t.snapshot_freq, t.snapshot_freq_for_preemption))


def _checkpoint(experiment: Experiment, workdir: pathlib.Path, checkpoints: checkpoint.Checkpointer,
                state: TrainState, step: int, snapshot_samples: Callable | None,
                log: _Log) -> pathlib.Path | None:
    """Saves a snapshot (with samples) or a preemption checkpoint when `step` is due for one; returns its
    directory, or None.

    Every snapshot's samples start from the same noise, so the pictures of one run show its progress.
    """
    t = experiment.config.training
    snapshot = step % t.snapshot_freq == 0 or step == t.n_iters
    path = None
    if snapshot or step % t.snapshot_freq_for_preemption == 0:
        path = checkpoints.save(step, state, snapshot=snapshot)
    if snapshot and snapshot_samples is not None:
        x, nfe = snapshot_samples(state.ema_params, jax.random.PRNGKey(experiment.config.seed))
        if not parallel.is_primary():
            return path
        (workdir / workdir_lib.SAMPLES_DIR).mkdir(exist_ok=True)
        path = workdir / workdir_lib.SAMPLES_DIR / f"step_{step}.png"
        write_samples_png(path, experiment, x, f"step {step}, {nfe} NFE")
        log.note(f"step {step}: {len(x)} samples ({t.snapshot_sampler}, {nfe} NFE) in {path}")
    return path
