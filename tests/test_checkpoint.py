"""Tests for scoresde/checkpoint.py: kept snapshots, the preemption checkpoint, resume, async saves."""

import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import checkpoint


def _state(value: float) -> dict:
    return {"step": jnp.asarray(int(value), jnp.int32), "params": {"w": jnp.full((3, 4), float(value))},
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
    assert checkpoint.restore_latest(tmp_path, _state(0.0)) is None
    checkpointer.save(4, _state(4), snapshot=True)
    checkpointer.save(6, _state(6), snapshot=False)
    checkpointer.close()
    restored = checkpoint.restore_latest(tmp_path, _state(0.0))
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
    restored = checkpoint.restore_latest(tmp_path, _state(0.0))
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), 3.0))


def test_a_checkpoint_of_another_shape_is_named(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path)
    checkpointer.save(2, _state(2), snapshot=True)
    checkpointer.close()
    other = {**_state(0.0), "params": {"w": jnp.zeros((5, 4))}}
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / 'checkpoints' / '2'} does not fit"):
        checkpoint.restore_latest(tmp_path, other)


# Damage done to the newest checkpoint (checkpoints/4) beside an intact older one (checkpoints-meta/2): each
# takes the step directory and changes it as a crash, a full disk or a failing disk would.
def _largest_data_file(step):
    """The largest file of the OCDBT database orbax reads the arrays from (default/d/)."""
    return max((step / "default" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _rewrite(step, change):
    path = _largest_data_file(step)
    path.write_bytes(change(bytearray(path.read_bytes())))


def _flip_bit(at: float):
    def change(data):
        data[int(at * (len(data) - 1))] ^= 0x10
        return bytes(data)
    return lambda step: _rewrite(step, change)


def _edit_record(step):
    path = step / "_CHECKPOINT_METADATA"
    text = path.read_text()
    i = text.index('"crc"') - 20
    path.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:])


def _emptied(step):
    shutil.rmtree(step)
    step.mkdir()


DAMAGE = {
    "data file truncated to 0 bytes": lambda step: _rewrite(step, lambda data: b""),
    "data file truncated to half": lambda step: _rewrite(step, lambda data: bytes(data[:len(data) // 2])),
    **{f"one bit flipped at {at:.0%} of a data file": _flip_bit(at) for at in (0.0, 0.25, 0.5, 0.75, 1.0)},
    "64 random bytes in a data file": lambda step: _rewrite(
        step, lambda data: bytes(data[:64]) + np.random.default_rng(0).bytes(64) + bytes(data[128:])),
    "data files removed": lambda step: [p.unlink() for p in (step / "default").rglob("d/*")],
    "manifest.ocdbt removed": lambda step: (step / "default" / "manifest.ocdbt").unlink(),
    "_METADATA removed": lambda step: (step / "default" / "_METADATA").unlink(),
    "_CHECKPOINT_METADATA removed": lambda step: (step / "_CHECKPOINT_METADATA").unlink(),
    "the record of leaves edited": _edit_record,
    "step directory emptied": _emptied,
    "left as orbax's temporary directory": lambda step: step.rename(
        step.with_name(f"{step.name}.orbax-checkpoint-tmp-1234")),
}
# Orbax reads a dict of arrays without its tree metadata, and every leaf matches its CRC-32: still intact.
INTACT = {"_METADATA removed"}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A workdir with an intact preemption checkpoint at step 2 and a snapshot at step 4."""
    workdir = tmp_path_factory.mktemp("two_steps")
    checkpointer = checkpoint.Checkpointer(workdir)
    checkpointer.save(2, _state(2), snapshot=False)
    checkpointer.save(4, _state(4), snapshot=True)
    checkpointer.close()
    return workdir


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_with_one_warning(damage, two_steps, tmp_path):
    workdir = shutil.copytree(two_steps, tmp_path / "run")
    DAMAGE[damage](workdir / checkpoint.SNAPSHOTS / "4")
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = checkpoint.restore_latest(workdir, _state(0.0))
    step = 4 if damage in INTACT else 2
    assert ["skipped checkpoints/4" in str(w.message) for w in caught] == ([] if step == 4 else [True])
    assert all(issubclass(w.category, checkpoint.DamagedCheckpointWarning) for w in caught)
    assert int(restored["step"]) == step
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), float(step)))
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before  # it changed nothing


def test_training_sets_damaged_checkpoints_aside_and_deletes_only_unfinished_saves(two_steps, tmp_path):
    workdir = shutil.copytree(two_steps, tmp_path / "run")
    DAMAGE["data file truncated to 0 bytes"](workdir / checkpoint.SNAPSHOTS / "4")
    unfinished = workdir / checkpoint.PREEMPTION / "6.orbax-checkpoint-tmp-99"
    unfinished.mkdir()
    with pytest.warns(checkpoint.DamagedCheckpointWarning, match="moved the damaged ones to "
                      "checkpoints-damaged/checkpoints-4; deleted the unfinished saves"):
        restored = checkpoint.restore_latest(workdir, _state(0.0), set_aside=True)
    assert int(restored["step"]) == 2 and not unfinished.exists()
    assert (workdir / checkpoint.DAMAGED / "checkpoints-4" / "_CHECKPOINT_METADATA").is_file()
    assert not (workdir / checkpoint.SNAPSHOTS / "4").exists()


def test_a_workdir_whose_only_checkpoint_is_damaged_is_named(two_steps, tmp_path):
    workdir = shutil.copytree(two_steps, tmp_path / "run")
    for step in (workdir / checkpoint.SNAPSHOTS / "4", workdir / checkpoint.PREEMPTION / "2"):
        DAMAGE["step directory emptied"](step)
    with pytest.raises(ValueError, match=rf"{workdir} holds no intact checkpoint: .*checkpoints/4 is "
                                         "unfinished or emptied"):
        checkpoint.restore_latest(workdir, _state(0.0))


def test_a_checkpoint_with_fewer_fields_is_refused_not_loaded_in_part(two_steps):
    wider = {**_state(0.0), "params": {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}}
    with pytest.raises(ValueError, match=r"checkpoints/4 does not fit .*it has no params/b"):
        checkpoint.restore_latest(two_steps, wider)
