"""Tests for scoresde/cli.py: train, sample and eval on a workdir, and every kind of bad input.

Most commands run in this process (compiled functions are shared, see tests/tiny_runs.py); those that need
another device count or the real entry point run `python -m scoresde` in a subprocess.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from scoresde import cli, experiment as experiment_lib, train

import tiny_runs

TINY_MLP_FLAGS = ["--config=configs/toy/checkerboard.py", "--noprogress",
                  *tiny_runs.flags(tiny_runs.TINY_MLP)]
ROOT = pathlib.Path(__file__).parents[1]


def scoresde(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Runs `scoresde ARGS` in this process: (exit status, stdout, stderr)."""
    argv = ["scoresde", *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections finds --config.* overrides in sys.argv
    monkeypatch.chdir(ROOT)
    cli.FLAGS.unparse_flags()
    for name in [name for name in cli.FLAGS if name.startswith("config.")]:
        delattr(cli.FLAGS, name)  # the --config.* overrides ml_collections defined for an earlier command
    try:
        cli.run(cli.parse_flags(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained by `scoresde train` on the tiny MLP config."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, out, err = scoresde(monkeypatch, _NoCapture(), "train", f"--workdir={workdir}", *TINY_MLP_FLAGS)
    assert code == 0, err
    return workdir


class _NoCapture:
    """capsys for a module fixture, which cannot use pytest's function-scoped capsys."""

    @staticmethod
    def readouterr():
        return "", ""


def _snapshot(directory: pathlib.Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*")} if directory.exists() else {}


def test_sample_writes_npz_and_png_with_any_sampler(trained, monkeypatch, capsys):
    for sampler, steps in (("pc", "3"), ("ddim", "3")):
        code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={trained}",
                                  f"--sampler={sampler}", f"--num_steps={steps}", "--num_samples=16")
        assert code == 0, err
        x = np.load(trained / "samples" / f"samples_4_{sampler}.npz")["x"]
        assert x.shape == (16, 2) and np.all(np.isfinite(x))
        assert (trained / "samples" / f"samples_4_{sampler}.png").is_file()


@pytest.mark.slow
def test_eval_records_what_made_its_figures(trained, tmp_path, monkeypatch, capsys):
    workdir = pathlib.Path(shutil.copytree(trained, tmp_path / "run"))
    code, out, err = scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}", "--num_samples=64")
    assert code == 0, err
    results = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert results == json.loads(out.strip().splitlines()[-1])
    for key in ("sliced_wasserstein", "sliced_wasserstein_held_out", "mmd", "mmd_held_out", "test_nll_nats",
                "in_support", "in_support_held_out", "mode_coverage", "mode_coverage_held_out"):
        assert np.isfinite(results[key]), key
    assert results["test_nll_nats_true"] == results["entropy_nats"] == pytest.approx(np.log(16))
    assert results["num_samples"] == 32  # half of the 64 held-out points, against the other half
    sampling = tiny_runs.tiny_mlp().sampling  # the config's PC sampler, with model.num_scales = 4 steps
    pc = {"num_steps": 4, "schedule": "uniform", "predictor": sampling.predictor,
          "corrector": sampling.corrector, "snr": sampling.snr, "n_corrector_steps": sampling.n_steps_each}
    assert results["settings"] == {"seed": 0, "sampler": {"name": "pc", "settings": pc}, "num_samples": 64,
                                   "likelihood_examples": 64}
    assert results["sampling_nfe"] == 4 * (1 + (sampling.corrector != "none")) + 1  # + 1: the denoiser

    # Another sampler on the same step is refused before any work, naming what differs, and nothing changes.
    ddim = ["--sampler=ddim", "--num_steps=3", "--num_samples=64"]
    before = _snapshot(workdir)
    code, out, err = scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}", *ddim)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{workdir / 'eval' / 'step_4.json'} holds an evaluation with other settings (" in err
    assert "sampler.name: pc -> ddim" in err and "--overwrite" in err and "--outdir" in err
    assert _snapshot(workdir) == before

    # --outdir writes it elsewhere; --overwrite replaces the workdir's own.
    code, out, err = scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}", *ddim,
                              f"--outdir={tmp_path / 'ddim'}")
    assert code == 0, err
    elsewhere = json.loads((tmp_path / "ddim" / "step_4.json").read_text())
    ddim_settings = {"num_steps": 3, "schedule": "uniform", "eta": 0.0}
    assert elsewhere["settings"]["sampler"] == {"name": "ddim", "settings": ddim_settings}
    assert elsewhere["sampling_nfe"] == 3 + 1
    assert json.loads((workdir / "eval" / "step_4.json").read_text()) == results
    code, out, err = scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}", *ddim, "--overwrite")
    assert code == 0, err
    replaced = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert replaced["settings"] == elsewhere["settings"]

    # train --overwrite starts over and takes the stale evaluations with it.
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={workdir}", *TINY_MLP_FLAGS,
                              "--overwrite")
    assert code == 0, err
    assert not (workdir / "eval").exists()
    metrics = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2, 4, 4]  # loss at 2 and 4, eval_loss at 4


def test_help_and_bare_scoresde_list_the_verbs_one_line_each(monkeypatch, capsys):
    for args, expected_code, stream in ((["--help"], 0, 0), (["train", "--help"], 0, 0), ([], 2, 1)):
        code, *streams = scoresde(monkeypatch, capsys, *args)
        assert code == expected_code
        lines = streams[stream].splitlines()
        for verb in cli.VERBS:
            (line,) = [line for line in lines if line.split()[:1] == [verb]]
            assert len(line.split()) > 3, line  # the verb and what it does


def test_sample_without_workdir_keeps_sampling_the_exact_score(tmp_path, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--outdir={tmp_path}", "--num_samples=32",
                              "--num_steps=5")
    assert code == 0, err
    assert np.load(tmp_path / "samples.npz")["x"].shape == (32, 2)


def _write_images(folder: pathlib.Path, sizes, corrupt: str | None = None) -> pathlib.Path:
    from PIL import Image

    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.new("L", (size, size), color=i * 40).save(folder / f"img{i}.png")
    if corrupt:
        (folder / corrupt).write_bytes(b"not a png")
    return folder


def _npz_without_x(path: pathlib.Path) -> pathlib.Path:
    np.savez(path, pictures=np.zeros((4, 8, 8), np.uint8))
    return path


# (config flags, a fragment of the expected message); each run must fail before touching its workdir.
BAD_TRAIN_INPUT = {
    "unknown model": (["--config.model.name=mlpp"],
                      "unknown model 'mlpp'; valid names: ['autoencoder', 'classifier_conv', 'classifier_mlp', "
                      "'ddpm', 'ddpmpp', 'mlp',"),
    "unknown sde": (["--config.training.sde=vp"],
                    "unknown SDE 'vp'; valid names: ['subvpsde', 'vesde', 'vpsde']"),
    "no discrete loss": (["--config.training.sde=subvpsde", "--config.training.continuous=False"],
                         "has a discrete loss only for ['vesde', 'vpsde']"),
    "unknown dataset": (["--config.data.dataset=cifar"], "unknown dataset 'cifar'; valid names:"),
    "unknown optimizer": (["--config.optim.optimizer=sgd"], "unknown optimizer 'sgd'; valid names: ['Adam']"),
    "unknown sampler": (["--config.sampling.method=heun2"], "unknown sampler 'heun2'; valid names:"),
    "unknown config key": (["--config.traning.lr=1e-3"], "--config.traning.lr: the config has no field "
                           "'traning'. Did you mean \"training\" instead of \"traning\"?"),
    "misspelt config field": (["--config.training.bach_size=8"],
                              "--config.training.bach_size: the config has no field 'bach_size'. Did you "
                              "mean \"batch_size\" instead of \"bach_size\"?"),
    "unknown config field": (["--config.training.nosuch=1"],
                             "--config.training.nosuch: the config has no field 'nosuch'."),
    "unknown model option": (["--config=configs/toy/checkerboard.py:vesde", "--config.model.name=ncsnpp"],
                             "unknown option(s) ['depth', 'input_features', 'input_scale', 'width'] for "
                             "model 'ncsnpp'"),
    "config file argument": (["--config=configs/toy/checkerboard.py:vp"], "unknown SDE 'vp'"),
    "missing config file": (["--config=configs/toy/checkerbored.py"],
                            "config file 'configs/toy/checkerbored.py' does not exist"),
    "config file without get_config": (
        ["--config=tests/checks.py"], "AttributeError: module 'config_config' has no attribute 'get_config'"),
    "n_jitted_steps": (["--config.training.n_iters=5"], "n_iters=5 must be a positive multiple"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_INPUT))
def test_bad_train_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    flags, message = BAD_TRAIN_INPUT[case]
    workdir = tmp_path / "run"
    # A case's own --config file replaces the tiny one, and must precede every --config.* override.
    files = [flag for flag in flags if flag.startswith("--config=")] or TINY_MLP_FLAGS[:1]
    rest = [flag for flag in TINY_MLP_FLAGS[1:] + flags if not flag.startswith("--config=")]
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={workdir}", *files, *rest)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err and "\\" not in err, err  # plain text, not an escaped repr
    assert not workdir.exists()


def _bad_data(tmp_path):
    return {
        "empty folder": (["--config.data.dataset=image_folder", f"--config.data.path={tmp_path / 'empty'}"],
                         "holds no .png/.jpg/.jpeg files"),
        "mixed sizes": (["--config.data.dataset=image_folder", f"--config.data.path={tmp_path / 'mixed'}"],
                        "images differ in size"),
        "corrupt image": (["--config.data.dataset=image_folder",
                           f"--config.data.path={tmp_path / 'corrupt'}"],
                          f"image file {tmp_path / 'corrupt' / 'broken.png'} cannot be read"),
        "npz without x": (["--config.data.dataset=npz", f"--config.data.path={tmp_path / 'pictures.npz'}"],
                          "has no array 'x' or 'images'; it holds ['pictures']"),
    }


@pytest.mark.parametrize("case", ["empty folder", "mixed sizes", "corrupt image", "npz without x"])
def test_bad_data_is_one_line_naming_the_culprit(case, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    _write_images(tmp_path / "mixed", [8, 8, 16])
    _write_images(tmp_path / "corrupt", [8, 8], corrupt="broken.png")
    _npz_without_x(tmp_path / "pictures.npz")
    flags, message = _bad_data(tmp_path)[case]
    workdir = tmp_path / "run"
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={workdir}", *TINY_MLP_FLAGS, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not workdir.exists()


def test_a_workdir_with_another_config_is_refused_untouched(trained, tmp_path, monkeypatch, capsys):
    workdir = pathlib.Path(shutil.copytree(trained, tmp_path / "run"))
    before = _snapshot(workdir)
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={workdir}", *TINY_MLP_FLAGS,
                              "--config.optim.lr=0.01")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    lr = tiny_runs.tiny_mlp().optim.lr
    assert f"holds a run with a different config (optim.lr: {lr} -> 0.01); pass --resume" in err
    assert _snapshot(workdir) == before


@pytest.mark.parametrize("args,message", [
    (["eval"], "eval needs --workdir"),
    (["sample", "--workdir=/nonexistent/run"], "/nonexistent/run holds no training run"),
    (["sample", "--sampler=heun2", "--num_samples=4"], "unknown sampler 'heun2'"),
    (["sample", "--sampler=rk45", "--num_steps=3"], "sampler 'rk45' chooses its own steps"),
    (["trian"], "usage: scoresde VERB [--flags]; VERB is one of ['bench', 'colorize', 'eval', 'inpaint', "
                "'sample', 'train']"),
    (["eval", "extra"], "usage: scoresde eval [--flags]; unexpected arguments ['extra']"),
])
def test_bad_sample_and_eval_input(args, message, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("args,message", [
    (["sample", "--sde=vesde"], "--sde: only for `sample` without --workdir (an exact-score problem)"),
    (["eval", "--problem=mixture_image", "--sde=vesde"], "--problem and --sde: only for `sample` without"),
    (["sample", "--num_samples=0"], "--num_samples must be >= 1; got 0."),
    (["eval", "--num_samples=-5"], "--num_samples must be >= 1; got -5."),
])
def test_flags_a_workdir_run_cannot_take_are_refused(args, message, trained, monkeypatch, capsys):
    before = _snapshot(trained)
    code, out, err = scoresde(monkeypatch, capsys, *args, f"--workdir={trained}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert _snapshot(trained) == before


def test_sample_without_workdir_refuses_no_samples(tmp_path, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "sample", "--num_samples=0",
                              f"--outdir={tmp_path / 'out'}")
    assert code == 2 and err.strip() == "scoresde sample: error: --num_samples must be >= 1; got 0.", err
    assert not (tmp_path / "out").exists()


def test_sample_with_an_unknown_sampler_on_a_workdir(trained, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={trained}", "--sampler=heun2")
    assert code == 2 and "unknown sampler 'heun2'; valid names:" in err, err


def test_verbose_shows_the_traceback(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown model 'mlpp'"):
        scoresde(monkeypatch, capsys, "train", f"--workdir={tmp_path / 'run'}", *TINY_MLP_FLAGS,
                 "--config.model.name=mlpp", "--verbose")


@pytest.mark.slow
def test_batch_not_divisible_by_the_device_count(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", **tiny_runs.CACHE_ENV)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "scoresde", "train", f"--workdir={workdir}", *TINY_MLP_FLAGS,
         "--config.training.batch_size=33"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("scoresde train: error: batch size 33 is not a positive multiple of the "
                                     "device count 2.")
    assert not workdir.exists()


@pytest.mark.slow
def test_a_tiny_ncsnpp_trains_samples_and_evaluates_on_digits(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    overrides = {**tiny_runs.TINY_NCSNPP, "model.dropout": 0.1, "eval.enable_bpd": True}
    flags = ["--config=configs/digits/ddpmpp.py", "--noprogress", *tiny_runs.flags(overrides)]
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={workdir}", *flags)
    assert code == 0, err
    experiment, state = experiment_lib.restore(workdir)
    initial = train.initial_state(experiment)
    assert int(state.step) == 2
    leaves = zip(jax.tree_util.tree_leaves(initial.ema_params), jax.tree_util.tree_leaves(state.ema_params))
    assert not all(np.array_equal(a, b) for a, b in leaves)
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    fast = ["--sampler=ddim", "--num_steps=2"]  # one network evaluation per step compiles fastest
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={workdir}", "--num_samples=9", *fast)
    assert code == 0, err
    x = np.load(workdir / "samples" / "samples_2_ddim.npz")["x"]
    assert x.shape == (9, 8, 8, 1) and np.all(np.isfinite(x))
    code, out, err = scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}", *fast)
    assert code == 0, err
    results = json.loads((workdir / "eval" / "step_2.json").read_text())
    assert results["classifier_test_accuracy"] > 0.8
    for key in ("sample_confidence", "sample_class_entropy", "frechet_distance", "frechet_distance_real",
                "test_bits_per_dim"):
        assert np.isfinite(results[key]), key
    bench = tmp_path / "bench"
    code, out, err = scoresde(monkeypatch, capsys, "bench", "samplers", f"--workdir={workdir}", "--quick",
                              "--samplers=ddim", "--nfes=2", "--num_samples=20", f"--outdir={bench}",
                              "--noprogress")
    assert code == 0, err
    payload = json.loads((bench / "results.json").read_text())
    assert payload["cases"]["vpsde"]["floors"]["frechet_distance"] > 0
    (record,) = payload["records"]
    assert record["nfe"] == 2 and record["figures"]["frechet_distance"] > 0
