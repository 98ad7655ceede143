"""Tests for scoresde/autoencoder.py, scoresde/latent.py and the latent runs of the CLI: a tiny autoencoder and
a tiny latent score model trained once per module through `scoresde train`; shapes, the measured scale factor
against 1 / std of the training latents computed here, every sampler family through the unchanged samplers,
sample and eval on a latent run, and the mistakes a latent config can make (one line, exit 2, nothing
written)."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import autoencoder, checkpoint, experiment as experiment_lib, samplers
from scoresde.data import scaler

import test_cli
import tiny_runs
from test_bad_inputs import tree_hash

AUTOENCODER = ["--config=configs/latent/autoencoder.py", "--noprogress", *tiny_runs.flags({
    "data.num_train": 64, "data.num_test": 16, "model.nf": 8, "model.latent_channels": 2,
    "training.batch_size": 8, "training.n_iters": 2,
    "training.log_freq": 1, "training.eval_freq": 2, "training.snapshot_freq": 2,
    "training.snapshot_freq_for_preemption": 1, "optim.warmup": 0})]
LATENT = ["--config=configs/latent/digits.py", "--noprogress", *tiny_runs.flags({
    **tiny_runs.TINY_NCSNPP, "model.ch_mult": (1,), "model.attn_resolutions": (), "eval.enable_bpd": True})]
LATENT_SHAPE = (4, 4, 2)  # 8x8 digits halved once, two latent channels
CANVAS_LATENT_SHAPE = (4, 8, 2)  # the autoencoder's own data: 8x16 canvases of two digits


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained tiny autoencoder, a latent score model on it, and copies of the autoencoder cut short."""
    root = tmp_path_factory.mktemp("latent")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for args in (["train", f"--workdir={root / 'ae'}", *AUTOENCODER],
                     ["train", f"--workdir={root / 'latent'}", *LATENT,
                      f"--config.model.autoencoder_workdir={root / 'ae'}"]):
            code, _, _ = test_cli.scoresde(monkeypatch, test_cli._NoCapture(), *args)
            assert code == 0
    training = pathlib.Path(shutil.copytree(root / "ae", root / "ae_training"))
    shutil.rmtree(training / checkpoint.SNAPSHOTS)  # only the step-1 preemption checkpoint is left
    return {"root": root, "ae": root / "ae", "latent": root / "latent", "training": training}


@pytest.fixture(scope="module")
def restored(runs):
    """(experiment, state) of the latent run and of its autoencoder, restored once."""
    return experiment_lib.restore(runs["latent"]), experiment_lib.restore(runs["ae"])


@pytest.mark.slow
def test_latents_have_the_encoder_shape_and_unit_variance_by_the_measured_factor(restored):
    (experiment, _), (ae, ae_state) = restored
    space, images, model = experiment.latent, experiment.output_dataset, ae.objective.model
    x = scaler(True)(jnp.asarray(images.train))  # the autoencoder sees [-1, 1]
    mu, logvar = model.apply({"params": ae_state.ema_params}, x, method="encode")  # one batch, no chunks
    assert mu.shape == logvar.shape == (len(images.train),) + LATENT_SHAPE
    scale = 1.0 / np.std(np.asarray(mu, np.float64))
    np.testing.assert_allclose(space.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(experiment.dataset.train, space.scale * np.asarray(mu), atol=1e-5)
    assert experiment.example_shape == LATENT_SHAPE
    np.testing.assert_allclose(np.std(experiment.dataset.train, dtype=np.float64), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(experiment.dataset.train_labels, images.train_labels)
    z = experiment.dataset.test[:3]
    decoded = jax.jit(space.decode)(z)
    assert decoded.shape == (3, 8, 8, 1)
    direct = (model.apply({"params": ae_state.ema_params}, z / space.scale, method="decode") + 1.0) / 2.0
    np.testing.assert_allclose(decoded, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_autoencoder_loss_is_l1_plus_weighted_kl(restored):
    _, (ae, state) = restored
    objective, x = ae.objective, 2.0 * jnp.asarray(ae.dataset.train[:4]) - 1.0  # data.centered: [-1, 1]
    key = jax.random.PRNGKey(3)
    noise = jax.random.normal(key, (4,) + CANVAS_LATENT_SHAPE)
    y, mu, logvar = objective.model.apply({"params": state.ema_params}, x, noise)
    kl = 0.5 * np.sum(np.asarray(mu**2 + jnp.exp(logvar) - 1.0 - logvar).reshape(4, -1), axis=1)
    l1 = np.sum(np.abs(np.asarray(x - y)).reshape(4, -1), axis=1)
    expected = np.mean(l1 + ae.config.training.kl_weight * kl)
    np.testing.assert_allclose(objective(state.ema_params, key, x), expected, rtol=1e-5)


@pytest.mark.slow
def test_pc_an_ode_and_a_fast_solver_sample_a_latent_run_unchanged_and_decode_to_images(restored):
    (experiment, state), _ = restored
    key = jax.random.PRNGKey(0)
    for spec in ("pc:num_steps=2", "euler:num_steps=2", "dpm_solver_pp:num_steps=2"):
        sampler = samplers.build_sampler(spec)
        x, nfe = experiment_lib.sampling_fn(experiment, 4, sampler)(state.ema_params, key)
        assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x)) and nfe >= 2, spec
    # the last: the same samples as the library's own sample() draws in latent space, decoded afterwards
    score_fn = experiment.objective.score_fn(state.ema_params)
    z, _ = jax.jit(lambda k: samplers.sample(k, experiment.objective.sde, score_fn, (4,) + LATENT_SHAPE,
                                             sampler))(key)
    np.testing.assert_allclose(x, experiment.latent.decode(z), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sample_and_eval_of_a_latent_run_write_decoded_images_and_the_latent_likelihood(
        runs, restored, tmp_path, monkeypatch, capsys):
    workdir = pathlib.Path(shutil.copytree(runs["latent"], tmp_path / "latent"))
    code, _, err = test_cli.scoresde(monkeypatch, capsys, "sample", f"--workdir={workdir}", "--sampler=ddim",
                                     "--num_steps=2", "--num_samples=6", "--batch_size=4", "--noprogress")
    assert code == 0, err
    assert np.load(workdir / "samples" / "samples_2_ddim.npz")["x"].shape == (6, 8, 8, 1)
    assert (workdir / "samples" / "samples_2_ddim.png").is_file()
    code, out, err = test_cli.scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}",
                                       "--sampler=dpm_solver_pp", "--num_steps=2", "--num_samples=4")
    assert code == 0, err
    figures = json.loads((workdir / "eval" / "step_2.json").read_text())
    assert {"test_scaled_latent_nll_nats", "latent_scale_factor", "sample_confidence"} <= set(figures)
    assert not any("bits_per_dim" in name for name in figures)
    assert figures["latent_scale_factor"] == restored[0][0].latent.scale


@pytest.mark.slow
def test_eval_of_an_autoencoder_reports_reconstruction_class_agreement_and_scale(
        runs, restored, tmp_path, monkeypatch, capsys):
    workdir = pathlib.Path(shutil.copytree(runs["ae"], tmp_path / "ae"))
    code, _, err = test_cli.scoresde(monkeypatch, capsys, "eval", f"--workdir={workdir}")
    assert code == 0, err
    figures = json.loads((workdir / "eval" / "step_2.json").read_text())
    ae, state = restored[1]
    canvases = 2.0 * jnp.asarray(ae.dataset.train) - 1.0
    mu, _ = ae.objective.model.apply({"params": state.ema_params}, canvases, method="encode")
    assert mu.shape == (len(canvases),) + CANVAS_LATENT_SHAPE
    np.testing.assert_allclose(figures["latent_scale_factor"], 1.0 / np.std(np.asarray(mu, np.float64)),
                               rtol=1e-6)
    assert figures["digits_scored"] == 2 * len(ae.dataset.test)  # each half of a canvas on its own
    assert 0.0 <= figures["reconstruction_class_agreement"] <= 1.0 and figures["reconstruction_mse"] > 0.0



@pytest.mark.slow
def test_a_latent_run_keeps_its_autoencoder_and_refuses_another_one(runs, restored, tmp_path, monkeypatch,
                                                                    capsys):
    _, (ae, ae_state) = restored
    record = json.loads((runs["latent"] / "autoencoder.json").read_text())
    assert record == {"step": ae.config.training.n_iters,
                      "ema_params_crc32": checkpoint.leaf_record(ae_state.ema_params)["crc"]}
    workdir = pathlib.Path(shutil.copytree(runs["latent"], tmp_path / "latent"))
    (workdir / "autoencoder.json").write_text(json.dumps({**record, "ema_params_crc32": 1}))
    before = tree_hash(workdir)
    for verb, flags, wanted in [
            ("sample", ["--sampler=ddim", "--num_steps=2", "--num_samples=2"], "point it at the autoencoder"),
            ("train", LATENT[:1] + LATENT[2:] + [f"--config.model.autoencoder_workdir={runs['ae']}"],
             "pass --resume to continue it on these latents")]:
        code, _, err = test_cli.scoresde(monkeypatch, capsys, verb, f"--workdir={workdir}", "--noprogress",
                                         *flags)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "trained on the latents of another autoencoder" in err
        assert f"ema_params_crc32: 1 -> {record['ema_params_crc32']}" in err and wanted in err, err
    assert tree_hash(workdir) == before

MISTAKES = {
    "missing run": ("{root}/nowhere", ["model.autoencoder_workdir={root}/nowhere", "holds no training run"]),
    "a score run": ("{latent}", ["holds a 'score' run, not an autoencoder"]),
    "still training": ("{training}", ["is still training", "step 1 of 2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", MISTAKES)
def test_a_latent_config_naming_an_unusable_autoencoder_is_one_line_and_writes_nothing(
        case, runs, monkeypatch, capsys):
    workdir, wanted = MISTAKES[case]
    _refused(runs, monkeypatch, capsys, [f"--config.model.autoencoder_workdir={workdir.format(**runs)}"],
             [text.format(**runs) for text in wanted])


@pytest.mark.slow
@pytest.mark.parametrize("override,shape", [("data.image_size=16", "(16, 16, 1)"),
                                            ("data.num_channels=3", "(8, 8, 3)")])
def test_a_latent_config_whose_images_the_autoencoder_cannot_encode_is_refused(
        override, shape, runs, monkeypatch, capsys):
    _refused(runs, monkeypatch, capsys, [f"--config.{override}", f"--config.model.autoencoder_workdir={runs['ae']}"],
             ["encodes images 8 pixels high with 1 channel(s) and widths divisible by 2",
              "trained on images shaped (8, 16, 1)", f"data are shaped {shape}"])


def _refused(runs, monkeypatch, capsys, flags, wanted):
    before = {name: tree_hash(runs[name]) for name in ("ae", "latent", "training")}
    fresh = runs["root"] / "fresh"
    code, _, err = test_cli.scoresde(monkeypatch, capsys, "train", f"--workdir={fresh}", *LATENT, *flags)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in wanted:
        assert text in err, err
    assert not fresh.exists()
    assert {name: tree_hash(runs[name]) for name in before} == before


@pytest.mark.slow
def test_in_chunks_gives_each_example_the_bits_of_any_other_chunking():
    x = np.random.default_rng(0).normal(size=(autoencoder._CHUNK + 3, 2)).astype(np.float32)
    fn = lambda params, y: jnp.tanh(y @ params)
    params = jnp.eye(2) * 0.5
    whole = autoencoder.in_chunks(fn, params, x)
    np.testing.assert_array_equal(whole[-5:], autoencoder.in_chunks(fn, params, x[-5:]))
    assert autoencoder.in_chunks(fn, params, x[:0]).shape == (0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("args,wanted", [
    (["bench", "samplers", "--workdir={latent}", "--outdir={root}/out", "--quick"],
     "use `scoresde eval` on it"),
    (["inpaint", "--workdir={latent}", "--input={root}/x.npz", "--mask={root}/x.npz"],
     "samples autoencoder latents"),
    (["colorize", "--workdir={latent}", "--input={root}/x.npz"], "samples autoencoder latents"),
])
def test_verbs_that_act_on_the_sampled_space_refuse_a_latent_run(args, wanted, runs, monkeypatch, capsys):
    before = tree_hash(runs["latent"])
    code, _, err = test_cli.scoresde(monkeypatch, capsys, *[arg.format(**runs) for arg in args])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and wanted in err, err
    assert tree_hash(runs["latent"]) == before and not (runs["root"] / "out").exists()


def test_the_scale_factor_is_one_over_the_standard_deviation_and_refuses_constant_latents():
    latents = np.array([[1.0, 3.0], [5.0, 7.0]], np.float32)  # std sqrt(5)
    assert autoencoder.scale_factor(latents) == pytest.approx(1.0 / np.sqrt(5.0), rel=1e-12)
    with pytest.raises(ValueError, match="standard deviation 0.0"):
        autoencoder.scale_factor(np.ones((3, 2)))
