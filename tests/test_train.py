"""Tests for scoresde/train.py: end-to-end runs, bitwise resume, workdir protection, optimizer and EMA.

CPU compilation dominates, so runs use a tiny MLP (tests/tiny_runs.py); the learning test, which trains the
checkerboard config for a quarter of its steps, is marked slow, and so is the tiny NCSN++ run
(tests/test_cli.py).
"""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import optim, samplers, toy2d, train
from scoresde import workdir as workdir_lib
from scoresde.evaluation import support_metrics

import tiny_runs

HERE = pathlib.Path(__file__).parent


def _experiment(config_dict) -> experiment_lib.Experiment:
    return experiment_lib.build_experiment(config_lib.from_config_dict(config_dict))


def _leaves_equal(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return all(np.array_equal(x, y) for x, y in leaves)


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / workdir_lib.METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A 4-step run of the tiny MLP config: (experiment, initial state, final state, workdir)."""
    workdir = tmp_path_factory.mktemp("mlp")
    experiment = _experiment(tiny_runs.tiny_mlp())
    initial = train.initial_state(experiment)
    return experiment, initial, train.run(experiment, workdir, progress=False), workdir


def _copy_of(workdir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(workdir, tmp_path / "run"))


def _assert_trained(experiment, initial, state, workdir, n_iters, samples=True):
    assert int(state.step) == n_iters
    assert not _leaves_equal(state.params, initial.params)
    assert not _leaves_equal(state.ema_params, initial.ema_params)
    losses = [m["loss"] for m in _metrics(workdir) if "loss" in m]
    assert losses and np.all(np.isfinite(losses))
    assert (workdir / "checkpoints" / str(n_iters)).is_dir()
    assert (workdir / "samples" / f"step_{n_iters}.png").is_file() == samples
    assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text()) == experiment.config.to_dict()


def test_few_steps_of_the_mlp(mlp_run):
    _assert_trained(*mlp_run, n_iters=4)
    eval_losses = [m["eval_loss"] for m in _metrics(mlp_run[3]) if "eval_loss" in m]
    assert len(eval_losses) == 1 and np.isfinite(eval_losses[0])


def test_one_step_of_the_mlp(tmp_path):
    experiment = _experiment(tiny_runs.tiny_mlp(**{
        "training.n_iters": 1, "training.n_jitted_steps": 1, "training.log_freq": 1, "training.eval_freq": 1,
        "training.snapshot_freq": 1, "training.snapshot_freq_for_preemption": 1}))
    state = train.run(experiment, tmp_path, progress=False)
    _assert_trained(experiment, train.initial_state(experiment), state, tmp_path, n_iters=1)


def test_resume_repeats_an_uninterrupted_run_bitwise(mlp_run, tmp_path):
    eight_steps = tiny_runs.tiny_mlp(**{"training.n_iters": 8})
    straight = train.run(_experiment(eight_steps), tmp_path / "a", progress=False)
    stopped_at_4 = _copy_of(mlp_run[3], tmp_path)
    resumed = train.run(_experiment(eight_steps), stopped_at_4, resume=True, progress=False)
    assert int(resumed.step) == 8
    assert _leaves_equal(straight, resumed)


def test_a_resumed_run_logs_every_step_once(mlp_run, tmp_path):
    """Lines logged past the newest checkpoint (and one cut short by a preemption) are dropped on resume."""
    workdir = _copy_of(mlp_run[3], tmp_path)
    logged = (workdir / workdir_lib.METRICS_FILE).read_text()
    with (workdir / workdir_lib.METRICS_FILE).open("a") as log:
        log.write('{"step": 6, "loss": 1.0}\n{"step": 8, "lo')
    eight_steps = _experiment(tiny_runs.tiny_mlp(**{"training.n_iters": 8}))
    train.run(eight_steps, workdir, resume=True, progress=False)
    lines = (workdir / workdir_lib.METRICS_FILE).read_text().splitlines()
    assert "\n".join(lines[:len(logged.splitlines())]) + "\n" == logged
    steps = [(m["step"], tuple(sorted(m))) for m in map(json.loads, lines)]
    assert len(set(steps)) == len(steps) and [step for step, _ in steps] == [2, 4, 4, 6, 8, 8]
    assert not list(workdir.glob("*.tmp"))


def test_a_workdir_with_another_config_is_refused_and_left_alone(mlp_run, tmp_path):
    workdir = _copy_of(mlp_run[3], tmp_path)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    changed = _experiment(tiny_runs.tiny_mlp(**{"optim.lr": 1e-2}))
    lr = tiny_runs.tiny_mlp().optim.lr
    with pytest.raises(ValueError, match=rf"different config \(optim.lr: {lr} -> 0.01\); pass --resume"):
        train.run(changed, workdir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_a_run_written_before_the_snapshot_sampler_fields_resumes_without_a_flag(mlp_run, tmp_path):
    workdir = _copy_of(mlp_run[3], tmp_path)
    path = workdir / workdir_lib.CONFIG_FILE
    older = json.loads(path.read_text())
    for key in ("snapshot_sampler", "snapshot_num_steps"):
        del older["training"][key]
    path.write_text(json.dumps(older))
    assert int(train.run(_experiment(tiny_runs.tiny_mlp()), workdir, progress=False).step) == 4
    assert workdir_lib.load_config(workdir).training.snapshot_sampler == "dpm_solver_pp"


def test_restore_reads_the_step_and_ema_parameters_alone(mlp_run):
    _, _, trained, workdir = mlp_run
    _, state = experiment_lib.restore(workdir)
    assert sorted(vars(state)) == ["ema_params", "step"]
    assert int(state.step) == int(trained.step)
    assert _leaves_equal(state.ema_params, trained.ema_params)


def test_overwrite_starts_over(mlp_run, tmp_path):
    workdir = _copy_of(mlp_run[3], tmp_path)
    (workdir / workdir_lib.EVAL_DIR).mkdir()
    (workdir / workdir_lib.EVAL_DIR / "step_4.json").write_text("{}")
    config = tiny_runs.tiny_mlp(**{"training.n_iters": 2, "training.snapshot_freq": 2,
                                   "training.eval_freq": 2})
    state = train.run(_experiment(config), workdir, overwrite=True, progress=False)
    assert int(state.step) == 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
    assert max(m["step"] for m in _metrics(workdir)) == 2
    assert not (workdir / workdir_lib.EVAL_DIR).exists()


def test_resume_with_another_network_names_the_checkpoint(mlp_run, tmp_path):
    workdir = _copy_of(mlp_run[3], tmp_path)
    config_before = (workdir / workdir_lib.CONFIG_FILE).read_text()
    wider = _experiment(tiny_runs.tiny_mlp(**{"model.width": 8, "training.n_iters": 6}))
    with pytest.raises(ValueError, match="does not fit this config's model"):
        train.run(wider, workdir, resume=True, progress=False)
    assert (workdir / workdir_lib.CONFIG_FILE).read_text() == config_before


def test_snapshots_draw_with_the_configured_fast_sampler_at_every_snapshot(tmp_path, monkeypatch):
    pictures = []
    monkeypatch.setattr(train, "write_samples_png", lambda path, experiment, x, title: pictures.append(
        (path.name, x, title)))
    experiment = _experiment(tiny_runs.tiny_mlp(**{
        "training.snapshot_freq": 2, "training.snapshot_sampler": "unipc", "training.snapshot_num_steps": 3}))
    state = train.run(experiment, tmp_path, progress=False)
    assert experiment.snapshot_sampler == samplers.UniPC(num_steps=3)
    assert [name for name, _, _ in pictures] == ["step_2.png", "step_4.png"]
    # The last picture is exactly a 3-step UniPC solve (and the denoising step) from the final EMA parameters.
    batch = experiment.config.training.batch_size
    draw = experiment_lib.sampling_fn(experiment, batch, samplers.UniPC(num_steps=3))
    x, nfe = draw(state.ema_params, jax.random.PRNGKey(experiment.config.seed))
    np.testing.assert_array_equal(pictures[-1][1], x)
    assert nfe == 4 and pictures[-1][2] == "step 4, 4 NFE"
    assert not np.array_equal(pictures[0][1], pictures[1][1])


def test_warmup_is_linear_from_the_first_step():
    schedule = optim.warmup_schedule(1.0, 4)
    np.testing.assert_allclose([schedule(k) for k in range(6)], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_decay_halves_the_rate_midway_and_ends_at_zero():
    schedule = optim.warmup_schedule(1.0, 2, decay_steps=8)
    expected = [0.5 * (1 + np.cos(np.pi * min(k / 8, 1))) * min((k + 1) / 2, 1.0) for k in range(10)]
    np.testing.assert_allclose([schedule(k) for k in range(10)], expected, rtol=1e-6, atol=1e-7)
    assert abs(float(schedule(4)) - 0.5) < 1e-7 and abs(float(schedule(9))) < 1e-7


def test_optimizer_clips_the_global_norm_and_decays_weights():
    optimizer = optim.build_optimizer("Adam", lr=0.1, grad_clip=1.0, weight_decay=0.5)
    params = {"w": jnp.array([2.0, 0.0])}
    grads = {"w": jnp.array([300.0, -400.0])}  # global norm 500, clipped to 1; Adam's first step is the sign
    updates, (_, adam, _, _) = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(adam.mu["w"], 0.1 * np.array([0.6, -0.8]), rtol=1e-5)  # (1 - beta1) * clipped
    np.testing.assert_allclose(updates["w"], -0.1 * (np.sign([300.0, -400.0]) + 0.5 * np.array([2.0, 0.0])),
                               rtol=1e-5)


def test_ema_is_a_moving_average_of_the_params(mlp_run):
    experiment = mlp_run[0]
    state = train.initial_state(experiment)
    batch = jnp.asarray(experiment.dataset.train_batch(0, 32))
    step = jax.jit(functools.partial(train.train_step, experiment.objective, experiment.optimizer, 0.9))
    new, loss = step(state, batch)
    expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new.params)
    assert np.isfinite(loss)
    for a, b in zip(jax.tree_util.tree_leaves(new.ema_params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'; valid names: \['Adam'\]"):
        optim.build_optimizer("adam", lr=1e-3)


@pytest.mark.slow
def test_twenty_steps_on_eight_devices_equal_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(HERE),
               **tiny_runs.CACHE_ENV)
    result = subprocess.run([sys.executable, str(HERE / "multidevice_training.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_checkerboard_config_puts_most_samples_in_the_cells(tmp_path):
    """The main job's config (configs/toy/checkerboard.py) at a quarter of its steps: at least 75% of 1000 PC
    samples land in the checkerboard's cells, where uniform noise over its rectangle puts 50% and held-out
    data 100% (tests/test_evaluation.py). The full run's figures are in README."""
    quarter = {"training.n_iters": 4000, "training.snapshot_freq": 4000, "training.snapshot_sampling": False}
    experiment = _experiment(tiny_runs.load("toy/checkerboard", overrides=quarter))
    state = train.run(experiment, tmp_path, progress=False)
    x, _ = experiment_lib.sampling_fn(experiment, 1000)(state.ema_params, jax.random.PRNGKey(0))
    figures = support_metrics(toy2d.TOYS["checkerboard"], x)
    assert figures["in_support"] >= 0.75, figures
