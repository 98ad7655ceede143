"""Tests for scoresde/checkpoint.py: kept snapshots, the preemption checkpoint, resume, async saves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import checkpoint


def _state(value: float) -> dict:
    return {"step": jnp.asarray(int(value), jnp.int32), "params": {"w": jnp.full((3, 4), value)},
            "rng": jax.random.PRNGKey(int(value))}


def _steps(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_snapshots_keep_the_newest_n_and_preemption_only_the_latest(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        checkpointer.save(step, _state(step), snapshot=True)
    for step in (5, 6):
        checkpointer.save(step, _state(step), snapshot=False)
    checkpointer.close()
    assert _steps(tmp_path / checkpoint.SNAPSHOTS) == [3, 4]
    assert _steps(tmp_path / checkpoint.PREEMPTION) == [6]


def test_resume_takes_the_newest_step_of_either_directory(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path)
    assert checkpointer.restore_latest(_state(0)) is None
    checkpointer.save(4, _state(4), snapshot=True)
    checkpointer.save(6, _state(6), snapshot=False)
    checkpointer.close()
    restored = checkpoint.Checkpointer(tmp_path).restore_latest(_state(0))
    assert int(restored["step"]) == 6
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), 6.0))
    np.testing.assert_array_equal(restored["rng"], jax.random.PRNGKey(6))


def test_an_async_save_keeps_the_values_of_arrays_donated_right_after(tmp_path):
    # Training donates the state to the next step as soon as `save` returns.
    checkpointer = checkpoint.Checkpointer(tmp_path, async_save=True)
    state = _state(3.0)
    checkpointer.save(3, state, snapshot=True)
    bump = jax.jit(lambda s: jax.tree_util.tree_map(lambda v: v + 1, s), donate_argnums=0)
    for _ in range(3):
        state = bump(state)
    checkpointer.close()
    restored = checkpoint.Checkpointer(tmp_path).restore_latest(_state(0))
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), 3.0))


def test_a_checkpoint_of_another_shape_is_named(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path)
    checkpointer.save(2, _state(2), snapshot=True)
    checkpointer.close()
    other = {**_state(0), "params": {"w": jnp.zeros((5, 4))}}
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / 'checkpoints' / '2'} does not fit"):
        checkpoint.Checkpointer(tmp_path).restore_latest(other)
