"""Tests for non-finite values in training (scoresde/train.py): a NaN or Inf loss stops the run naming the
step and the last good checkpoint, which stays intact; training.skip_nonfinite skips and counts such steps.

A NaN is injected into the batch of one chosen step, so its loss and gradients are NaN.
"""

import functools
import json

import jax
import numpy as np
import pytest

from scoresde import checkpoint, config as config_lib, experiment as experiment_lib, parallel, train

import tiny_runs

# 20 steps of the tiny MLP, 2 per dispatch, a preemption checkpoint every 4 steps, a log line every 4.
OVERRIDES = {"training.n_iters": 20, "training.log_freq": 4, "training.eval_freq": 20,
             "training.snapshot_freq": 20, "training.snapshot_freq_for_preemption": 4,
             "training.snapshot_sampling": False}
BAD_STEPS = (10, 11)  # 0-based: the loss of steps 11 and 12 (the sixth dispatch) is NaN


def _experiment(**overrides):
    return experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp(**OVERRIDES,
                                                                                          **overrides)))


def _poison(monkeypatch, steps, value=np.nan) -> None:
    """Makes the batches of `steps` hold `value`."""
    batches = train._batches

    def poisoned(dataset, first_step, n, batch_size):
        batch = batches(dataset, first_step, n, batch_size)
        x = np.array(batch.x)
        for step in steps:
            if first_step <= step < first_step + n:
                x[step - first_step, 0, 0] = value
        return type(batch)(x=x, cond=batch.cond)

    monkeypatch.setattr(train, "_batches", poisoned)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_nonfinite_loss_stops_training_naming_the_step_and_the_intact_checkpoint(
        value, tmp_path, monkeypatch):
    experiment = _experiment()
    _poison(monkeypatch, BAD_STEPS[:1], value)
    message = (r"step 11: the loss or its gradients are not finite .* The last good checkpoint is in "
               rf"{tmp_path}/checkpoints-meta/8\. .*training.skip_nonfinite=True")
    with pytest.raises(FloatingPointError, match=message):
        train.run(experiment, tmp_path, progress=False)
    restored = checkpoint.restore_latest(tmp_path, train.abstract_state(experiment, parallel.data_mesh()))
    assert int(restored.step) == 8
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(restored.params))


def test_skip_nonfinite_skips_and_counts_the_steps(tmp_path, monkeypatch):
    experiment = _experiment(**{"training.skip_nonfinite": True})
    _poison(monkeypatch, BAD_STEPS)
    state = train.run(experiment, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {line["step"]: line["skipped_nonfinite"] for line in lines if "skipped_nonfinite" in line}
    assert skipped == {4: 0, 8: 0, 12: 2, 16: 0, 20: 0}
    assert int(state.step) == 20
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state))


@pytest.mark.slow
def test_a_skipped_step_leaves_the_state_as_it_was():
    experiment = _experiment(**{"training.skip_nonfinite": True})
    state = train.initial_state(experiment)
    batch = experiment.dataset.batch(0, 32)
    x = np.array(batch.x)
    x[0, 0] = np.nan
    step = jax.jit(functools.partial(train.train_step, experiment.objective, experiment.optimizer, 0.99,
                                     skip_nonfinite=True))
    after, loss = step(state, type(batch)(x=x, cond=None))
    assert np.isnan(loss) and int(after.step) == 1
    for name in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree_util.tree_leaves(getattr(after, name)),
                        jax.tree_util.tree_leaves(getattr(state, name))):
            np.testing.assert_array_equal(a, b)
