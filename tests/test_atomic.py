"""Tests for scoresde/atomic.py and for what a full disk does to training: a writer failing midway leaves
the previous file whole and no temporary one; a checkpoint save into a full filesystem fails in one OSError
naming the directory, and the checkpoint before it stays intact."""

import errno
import pathlib
import subprocess
import warnings

import numpy as np
import pytest

from scoresde import atomic, checkpoint, config as config_lib, experiment as experiment_lib, parallel, plots
from scoresde import train

import tiny_runs


def _full_disk(path: pathlib.Path):
    """A writer that writes half of its bytes to `path` and then finds the disk full."""
    def write(data: bytes) -> None:
        with open(path, "wb") as file:
            file.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write


WRITERS = {
    "text": lambda path: atomic.write_text(path, "new text"),
    "npz": lambda path: _np_savez(path),
    "png": lambda path: plots.samples_png(path, np.zeros((4, 2))),
}


def _np_savez(path):
    with atomic.replacing(path) as temporary:
        np.savez(temporary, x=np.arange(3))


@pytest.mark.parametrize("kind", WRITERS)
def test_a_writer_that_fails_midway_leaves_the_previous_file_whole(kind, tmp_path):
    path = tmp_path / f"result.{'txt' if kind == 'text' else kind}"
    path.write_bytes(b"the previous file")
    with pytest.raises(OSError, match="No space left"):
        with atomic.replacing(path) as temporary:
            _full_disk(temporary)(b"0123456789")
    assert path.read_bytes() == b"the previous file"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    WRITERS[kind](path)  # the real writer replaces it whole and leaves nothing else
    assert path.read_bytes() != b"the previous file" and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.fixture
def tmpfs(tmp_path):
    """size -> a tmpfs of that size, where mounting is allowed (root); else the test is skipped."""
    mounted = []

    def mount(size: str) -> pathlib.Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode:
            pytest.skip("mounting a tmpfs is not allowed here")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_fails_the_save_in_one_error_and_keeps_the_checkpoint_before(tmpfs):
    overrides = {"training.n_iters": 40, "training.snapshot_freq": 20,
                 "training.snapshot_freq_for_preemption": 2, "training.snapshot_sampling": False}
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp(**overrides)))
    workdir = tmpfs("300k") / "run"  # room for the config and one checkpoint, not two
    # Which write meets the full disk first, a checkpoint's or a metrics line, depends on the timing.
    written = rf"(a checkpoint could not be written into {workdir}/checkpoints(-meta)?|"
    appended = rf"{workdir}/metrics.jsonl could not be appended to)"
    with pytest.raises(OSError, match=rf"{written}{appended} .*No space left on device.*checkpoints saved"):
        train.run(experiment, workdir, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = checkpoint.restore_latest(workdir, train.abstract_state(experiment, parallel.data_mesh()))
    assert int(restored.step) >= 2
    assert all("an unfinished save" in str(w.message) and "unreadable" not in str(w.message) for w in caught)


def test_a_read_only_workdir_fails_in_one_error_and_keeps_its_checkpoints(tmpfs):
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp(
        **{"training.snapshot_sampling": False})))
    workdir = tmpfs("4m") / "run"
    train.run(experiment, workdir, progress=False)
    subprocess.run(["mount", "-o", "remount,ro", str(workdir.parent)], check=True)
    longer = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp(
        **{"training.snapshot_sampling": False, "training.n_iters": 8})))
    with pytest.raises(OSError, match="Read-only file system"):
        train.run(longer, workdir, resume=True, progress=False)
    restored = checkpoint.restore_latest(workdir, train.abstract_state(experiment, parallel.data_mesh()))
    assert int(restored.step) == 4
