"""Tests for stopping and resuming `train.run` (scoresde/train.py): SIGTERM and SIGINT save a checkpoint and
return, a second signal ends the process at once, and a resumed run repeats an uninterrupted one bit for bit,
also when it resumes past a damaged newest checkpoint; same config and seed give the same checkpoint in two
fresh processes.

Signals are sent from inside the loop (when it builds the batches of a chosen dispatch), so each test stops at
a known moment in this process; the CLI cases run `python -m scoresde train` in a subprocess.
"""

import json
import os
import shutil
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from scoresde import checkpoint, config as config_lib, experiment as experiment_lib, parallel, train

import marks
import tiny_runs

ROOT = pathlib.Path(__file__).parents[1]
# 40 steps of the tiny MLP, 2 per dispatch: a preemption checkpoint every 10 steps, a snapshot at 20 and 40.
OVERRIDES = {"training.n_iters": 40, "training.log_freq": 10, "training.eval_freq": 20,
             "training.snapshot_freq": 20, "training.snapshot_freq_for_preemption": 10,
             "training.snapshot_sampling": False}
# Dispatches (0-based) during which the signal arrives: before the first step, mid-interval, right after a
# preemption checkpoint's asynchronous save began, right after a snapshot's, and at the last dispatch.
SIGNAL_DISPATCHES = [0, 3, 5, 10, 13, 19]


def _leaves_equal(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return all(np.array_equal(x, y) for x, y in leaves)


@pytest.fixture(scope="module")
def experiment():
    return experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp(**OVERRIDES)))


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    return tmp_path_factory.mktemp("whole")


@pytest.fixture(scope="module")
def uninterrupted(experiment, whole_run):
    return train.run(experiment, whole_run, progress=False)


def _signal_at(monkeypatch, dispatch: int, number: int, times: dict) -> None:
    """Sends `number` to this process when the loop builds the batches of its `dispatch`-th dispatch."""
    batches, calls = train._batches, []

    def signalling(*args):
        if len(calls) == dispatch:
            times["sent"] = time.perf_counter()
            os.kill(os.getpid(), number)
        calls.append(1)
        return batches(*args)

    monkeypatch.setattr(train, "_batches", signalling)


@pytest.mark.parametrize("dispatch", marks.fast_first(SIGNAL_DISPATCHES))
def test_a_signalled_run_saves_its_step_and_resumes_bitwise(
        dispatch, experiment, uninterrupted, tmp_path, monkeypatch, capfd):
    number = signal.SIGINT if dispatch % 2 else signal.SIGTERM
    times, handlers = {}, [signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)]
    with monkeypatch.context() as patch:
        _signal_at(patch, dispatch, number, times)
        stopped = train.run(experiment, tmp_path, progress=False)
    seconds = time.perf_counter() - times["sent"]
    step = 2 * (dispatch + 1)  # the dispatch in flight completes
    assert int(stopped.step) == step
    name = signal.Signals(number).name
    assert f"{name}: stopped at step {step}; its checkpoint is in" in capfd.readouterr().err
    assert checkpoint.restore_latest(tmp_path, stopped).step == step
    assert seconds < 5.0, seconds  # one dispatch and one checkpoint write
    assert [signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)] == handlers
    resumed = train.run(experiment, tmp_path, progress=False)
    assert _leaves_equal(resumed, uninterrupted)


def test_a_run_whose_newest_checkpoint_is_damaged_resumes_from_the_one_before_to_the_same_bits(
        experiment, uninterrupted, whole_run, tmp_path):
    workdir = pathlib.Path(shutil.copytree(whole_run, tmp_path / "run"))
    newest = workdir / checkpoint.SNAPSHOTS / "40"
    max((newest / "default" / "d").iterdir(), key=lambda p: p.stat().st_size).write_bytes(b"")
    with pytest.warns(checkpoint.DamagedCheckpointWarning, match="skipped checkpoints/40 .*moved the dam"):
        resumed = train.run(experiment, workdir, progress=False)  # from checkpoints-meta/30
    assert _leaves_equal(resumed, uninterrupted)


def _cli(workdir: pathlib.Path, *flags: str) -> subprocess.Popen:
    overrides = {**tiny_runs.TINY_MLP, **OVERRIDES, **dict(f.split("=", 1) for f in flags)}
    env = {**os.environ, **tiny_runs.CACHE_ENV, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "scoresde", "train", "--config=configs/toy/checkerboard.py",
               f"--workdir={workdir}", "--noprogress", *tiny_runs.flags(overrides)]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_training(workdir: pathlib.Path, process: subprocess.Popen) -> None:
    """Until the run has logged a line (it is inside its loop)."""
    metrics = workdir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text()):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_on_the_cli_saves_and_exits_0_and_a_second_signal_exits_at_once(experiment, tmp_path):
    long_run = {"training.n_iters": 200_000}
    process = _cli(tmp_path, *(f"{k}={v}" for k, v in long_run.items()))
    _wait_for_training(tmp_path, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "stopped at step" in out
    step = int(out.split("stopped at step ")[1].split()[0])
    assert (tmp_path / checkpoint.PREEMPTION / str(step)).is_dir() or (
        tmp_path / checkpoint.SNAPSHOTS / str(step)).is_dir()

    process = _cli(tmp_path, *(f"{k}={v}" for k, v in long_run.items()))
    while not process.poll() and len((tmp_path / "metrics.jsonl").read_text().splitlines()) < step // 10 + 3:
        time.sleep(0.05)  # resumed past its checkpoint
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode in (-signal.SIGTERM, 0)
    with warnings.catch_warnings(record=True) as caught:  # at most an unfinished save is skipped
        warnings.simplefilter("always")
        state = checkpoint.restore_latest(tmp_path, train.abstract_state(experiment, parallel.data_mesh()))
    assert all("unfinished save" in str(w.message) and "unreadable" not in str(w.message) for w in caught)
    assert int(state.step) >= step


_TRAIN_AND_SAMPLE = """
import sys
import numpy as np
sys.path.insert(0, "tests")
import tiny_runs
from scoresde import config, experiment, train
run = experiment.build_experiment(config.from_config_dict(tiny_runs.tiny_mlp()))
train.run(run, sys.argv[1], progress=False)
restored, state = experiment.restore(sys.argv[1])
x, nfe = experiment.sampling_fn(restored, 16)(state.ema_params, __import__("jax").random.PRNGKey(1))
np.save(sys.argv[1] + "/x.npy", x)
"""


@pytest.mark.slow
def test_the_same_config_and_seed_give_the_same_bits_in_two_fresh_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # no shared compilation cache: each process compiles anew
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", _TRAIN_AND_SAMPLE, str(tmp_path / name)], cwd=ROOT, env=env,
                       check=True, timeout=600)
    a, b = tmp_path / "a", tmp_path / "b"
    for step in ("checkpoints/4", "checkpoints-meta/2"):
        record = lambda run: json.loads((run / step / "_CHECKPOINT_METADATA").read_text())["custom_metadata"]
        assert record(a) == record(b)  # every leaf's shape, dtype and CRC-32
    assert np.array_equal(np.load(a / "x.npy"), np.load(b / "x.npy"))
    assert (a / "samples" / "step_4.png").read_bytes() == (b / "samples" / "step_4.png").read_bytes()
    logged = lambda run: [{k: v for k, v in json.loads(line).items() if "per_sec" not in k}  # speeds differ
                          for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged(a) == logged(b)
