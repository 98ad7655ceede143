"""Multi-process runs (scoresde/parallel.py, train.py, chunks.py, evaluation.py through `python -m scoresde`):
two JAX processes of 2 CPU devices each on 127.0.0.1 train, are killed, resume, sample and evaluate, against
one process of 4, 8 and 1 devices.

One tiny training run is shared by every check (tests/multiprocess.py starts the processes).
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from scoresde import checkpoint, experiment as experiment_lib, parallel, train, workdir as workdir_lib

import multiprocess
import test_cli
import tiny_runs

pytestmark = pytest.mark.slow

# 60 steps of the tiny MLP (global batch 32), a preemption checkpoint every 20 steps, a snapshot and
# eval_loss at 60; `eval` scores the likelihood alone.
STEPS = 60
OVERRIDES = {**tiny_runs.TINY_MLP, "training.n_iters": STEPS, "training.log_freq": 20,
             "training.eval_freq": STEPS, "training.snapshot_freq": STEPS,
             "training.snapshot_freq_for_preemption": 20, "training.snapshot_sampling": False,
             "eval.enable_sampling": False}
TRAIN = ["train", "--config=configs/toy/checkerboard.py", "--noprogress", *tiny_runs.flags(OVERRIDES)]
NUM_SAMPLES = 512
SAMPLE = ["sample", "--sampler=pc:corrector=langevin", "--num_steps=3", f"--num_samples={NUM_SAMPLES}",
          "--batch_size=128", "--noprogress"]


def _ok(results: list[multiprocess.Result]) -> None:
    for result in results:
        assert result.code == 0, result.err[-3000:]


def _state(workdir: pathlib.Path) -> train.TrainState:
    experiment = experiment_lib.build_experiment(workdir_lib.load_config(workdir))
    return checkpoint.restore_latest(workdir, train.abstract_state(experiment, parallel.data_mesh()))


def _in_process(*args: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, _, err = test_cli.scoresde(monkeypatch, test_cli._NoCapture(), *args)
    assert code == 0, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-process run, killed after its first checkpoint and resumed by a fresh pair; the same run in
    one process of 4 devices; and what the first pair left when killed. The one-process run and the
    8-device sampling of `test_exact_score_samples_...` share nothing with the pair: they run meanwhile."""
    root = tmp_path_factory.mktemp("multiprocess")
    two, four = root / "two", root / "four"
    reference = multiprocess.start([*TRAIN, f"--workdir={four}"], devices=4)
    eight = multiprocess.start_script([str(root / "eight.npy"), str(NUM_SAMPLES), "16"], devices=8)
    killed = multiprocess.kill_after_checkpoint(
        multiprocess.start([*TRAIN, f"--workdir={two}"], processes=2, devices=2), two)
    at_kill = _state(two)
    resumed = multiprocess.run([*TRAIN, f"--workdir={two}"], processes=2, devices=2)
    _ok(resumed)
    _ok(multiprocess.finish(reference))
    return {"two": two, "four": four, "killed": killed, "at_kill": int(at_kill.step), "resumed": resumed,
            "eight": (eight, root / "eight.npy")}


def test_two_processes_killed_and_resumed_end_where_one_process_of_four_devices_does(runs):
    assert [result.code for result in runs["killed"]] == [-9, -9]
    assert 0 < runs["at_kill"] < STEPS
    two, four = _state(runs["two"]), _state(runs["four"])
    assert int(two.step) == int(four.step) == STEPS
    # Not bitwise: gloo sums the two processes' gradients in another order than XLA does within one process.
    for a, b in zip(jax.tree_util.tree_leaves(two), jax.tree_util.tree_leaves(four)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert [r.out.count(f"trained {STEPS} steps") for r in runs["resumed"]] == [1, 0]  # process 0 reports


def test_metrics_and_config_are_written_once(runs):
    def lines(workdir):
        return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    two, four = lines(runs["two"]), lines(runs["four"])
    keys = [(line["step"], tuple(sorted(line))) for line in two]
    assert len(keys) == len(set(keys)) == STEPS // 20 + 1  # 3 training lines, 1 eval_loss line
    assert keys == [(line["step"], tuple(sorted(line))) for line in four]
    for a, b in zip(two, four):
        for name in ("loss", "eval_loss"):
            if name in a:
                assert a[name] == pytest.approx(b[name], rel=1e-5)
    assert json.loads((runs["two"] / "config.json").read_text()) == json.loads(
        (runs["four"] / "config.json").read_text())


def test_samples_over_two_processes_equal_one_device_bitwise(runs, tmp_path):
    workdir, name = runs["two"], f"samples_{STEPS}_pc:corrector=langevin.npz"
    two = multiprocess.start([*SAMPLE, f"--workdir={workdir}", f"--outdir={tmp_path / 'two'}"], processes=2,
                             devices=2)
    _in_process(*SAMPLE, f"--workdir={workdir}", f"--outdir={tmp_path / 'one'}")  # meanwhile
    _ok(multiprocess.finish(two))
    one = np.load(tmp_path / "one" / name)
    assert one["x"].shape == (NUM_SAMPLES, 2) and np.all(np.isfinite(one["x"]))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [name, name.replace(".npz", ".png")]
    assert np.array_equal(np.load(tmp_path / "two" / name)["x"], one["x"])


def test_exact_score_samples_over_eight_devices_equal_one_device_bitwise(runs):
    """PC with the Langevin corrector, whose step size is a mean over each group of 16 examples."""
    procs, path = runs["eight"]
    one = multiprocess.mixture_samples(NUM_SAMPLES, 16)
    _ok(multiprocess.finish(procs))
    assert one.shape == (NUM_SAMPLES, 2) and len(np.unique(one[:, 0])) == NUM_SAMPLES
    assert np.array_equal(np.load(path), one)


def test_test_set_likelihood_over_two_processes_equals_one_device(runs, tmp_path):
    workdir = runs["two"]
    procs = multiprocess.start(["eval", f"--workdir={workdir}", f"--outdir={tmp_path / 'two'}"], processes=2,
                               devices=2)
    _in_process("eval", f"--workdir={workdir}", f"--outdir={tmp_path / 'one'}")  # meanwhile
    _ok(multiprocess.finish(procs))
    two, one = (json.loads((tmp_path / where / f"step_{STEPS}.json").read_text()) for where in ("two", "one"))
    assert two["settings"] == one["settings"] == {"seed": 0, "likelihood_examples": 64}  # the whole split
    assert two["test_nll_nats"] == pytest.approx(one["test_nll_nats"], rel=1e-6, abs=1e-6)
    assert 0 < two["test_nll_nats_stderr"] == pytest.approx(one["test_nll_nats_stderr"], rel=1e-6)


def test_refusals_are_one_line_exit_2_and_write_nothing(runs, tmp_path):
    """A batch that does not split over 2 processes x 2 devices, a chunk smaller than 8 devices draw at once,
    a missing peer and processes given other flags, all started at once."""
    where = [f"--workdir={runs['two']}", f"--outdir={tmp_path / 's'}"]
    sample = ["sample", *where]
    port = multiprocess.free_port()
    started = {
        "batch": multiprocess.start(
            [*TRAIN, f"--workdir={tmp_path / 'run'}", "--config.training.batch_size=6"], processes=2, devices=2),
        "chunk": multiprocess.start([*SAMPLE, *where, "--batch_size=64"], devices=8),
        "missing": multiprocess.start([*sample, "--distributed_timeout=2"], processes=2, process_ids=[1]),
        "mismatched": [*multiprocess.start([*sample, "--seed=0"], processes=2, process_ids=[0], port=port),
                       *multiprocess.start([*sample, "--seed=1"], processes=2, process_ids=[1], port=port)],
    }
    results = {name: multiprocess.finish(procs) for name, procs in started.items()}
    wanted = {
        "batch": "scoresde train: error: batch size 6 is not a positive multiple of the device count 4 "
                 "(2 processes x 2 devices).",
        "chunk": "scoresde sample: error: --batch_size 64 is smaller than what the 8 devices draw at once, a "
                 "group of eval.batch_size=16 examples each (128); use --batch_size=128 or a multiple of it.",
        "missing": "scoresde sample: error: the processes of the run (coordinator 127.0.0.1:",
        "mismatched": "scoresde sample: error: process 1 of 2 were started with other settings than process "
                      "0; start every process with the same flags but --process_id.",
    }
    for name, line in wanted.items():
        for result in results[name]:
            assert result.code == 2 and len(result.error_lines) == 1, (name, result.err)
            assert result.error_lines[0].startswith(line), (name, result.err)
    assert "process 1 of 2) did not all join within 2 s: a process is missing" in results["missing"][0].err
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()
