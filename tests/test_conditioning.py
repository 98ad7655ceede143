"""The condition slot end to end: labelled batches (digits, .npz, class folders) -> objective (label dropout)
-> networks (`cond=None`, null class) -> score functions closed over their labels, sampled by the CLI; and
compatibility: a num_classes=0 network is today's network, an older unconditional workdir still loads.

Networks are tiny (an MLP of width 16, an 8x8 NCSN++ with nf=8); the one training run is a 4-step MLP on a
labelled `.npz` of points.
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import train
from scoresde import workdir as workdir_lib
from scoresde.data import Batch, DataConfig, build_dataset
from scoresde.models import build_model

import tiny_runs
from test_cli import TINY_MLP_FLAGS, _NoCapture, _snapshot, scoresde

import marks

NUM_CLASSES = 3
X_POINTS = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float32)
LABELS = jnp.array([0, 1, 2, 0, 1, 2])
TINY_NETWORKS = {
    "mlp": (dict(width=16, depth=1), X_POINTS),
    "ddpmpp": (dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0),
               jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 1)), jnp.float32)),
}


def _init(name, num_classes):
    """(model, its parameters drawn by init, an input batch)."""
    options, x = TINY_NETWORKS[name]
    model = build_model(name, num_classes=num_classes, **options)
    return model, model.init(jax.random.key(0, impl="rbg"), x, jnp.ones((len(x),)))["params"], x


def _shapes(name, num_classes):
    options, x = TINY_NETWORKS[name]
    model = build_model(name, num_classes=num_classes, **options)
    return model, jax.eval_shape(model.init, jax.random.key(0), x, jnp.ones((len(x),)))["params"], x


def _class_table(unconditional, conditional):
    """The entries of the conditional network's parameters that the unconditional one lacks."""
    flat_u, flat_c = traverse_util.flatten_dict(unconditional), traverse_util.flatten_dict(conditional)
    assert set(flat_u) <= set(flat_c)
    return {k[-3:]: v.shape for k, v in flat_c.items() if k not in flat_u}


@pytest.mark.parametrize("name", list(TINY_NETWORKS))
def test_a_conditional_network_only_adds_a_class_table(name):
    (_, unconditional, _), (model, conditional, _) = _shapes(name, 0), _shapes(name, NUM_CLASSES)
    width = model.width if name == "mlp" else 4 * model.nf  # that of the noise embedding it is added to
    # One row per class plus the null class.
    assert _class_table(unconditional, conditional) == \
        {("ClassEmbedding_0", "Embed_0", "embedding"): (NUM_CLASSES + 1, width)}


def test_an_unconditional_network_draws_todays_parameters():
    _, unconditional, _ = _init("mlp", 0)
    _, conditional, _ = _init("mlp", NUM_CLASSES)
    _class_table(unconditional, conditional)
    flat_c = traverse_util.flatten_dict(conditional)
    for key, value in traverse_util.flatten_dict(unconditional).items():  # flax seeds each layer by its path
        np.testing.assert_array_equal(value, flat_c[key])


@pytest.mark.parametrize("name", marks.fast_first(TINY_NETWORKS))
def test_labels_reach_the_network_and_none_is_the_null_class(name):
    model, shapes, x = _shapes(name, NUM_CLASSES)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)
    apply = jax.jit(lambda cond: model.apply({"params": params}, x, jnp.ones((len(x),)), cond=cond))
    out = {label: apply(jnp.full((len(x),), label)) for label in range(NUM_CLASSES + 1)}
    np.testing.assert_array_equal(apply(None), out[NUM_CLASSES])
    for a in range(NUM_CLASSES + 1):
        for b in range(a):
            assert np.max(np.abs(out[a] - out[b])) > 1e-4, (a, b)
    # Each example sees its own label (every layer acts per example).
    np.testing.assert_allclose(apply(LABELS), jnp.stack([out[int(k)][i] for i, k in enumerate(LABELS)]),
                               rtol=1e-5, atol=1e-6)


def test_an_unconditional_network_refuses_labels_and_num_classes_is_checked():
    model, params, x = _init("mlp", 0)
    with pytest.raises(ValueError, match=r"got class labels, but the network is unconditional"):
        model.apply({"params": params}, x, jnp.ones((len(x),)), cond=LABELS)
    with pytest.raises(ValueError, match=r"ScoreMLP.num_classes=-1 is not allowed"):
        build_model("mlp", num_classes=-1)
    with pytest.raises(ValueError, match=r"num_classes=3 needs conditional=True"):
        build_model("ddpmpp", num_classes=3, conditional=False)


# ----------------------------------------------------------------------------------------- the objective


@pytest.fixture(scope="module")
def objectives():
    """Objectives of one conditional MLP with label dropout 0, 0.3 and 1, and its parameters."""
    config = config_lib.from_config_dict(tiny_runs.tiny_mlp())
    model, params, _ = _init("mlp", NUM_CLASSES)
    base = experiment_lib.build_objective(config, images=False)
    return {p: dataclasses.replace(base, model=model, cond_dropout=p) for p in (0.0, 0.3, 1.0)}, params


def test_cond_dropout_one_trains_the_null_class_network(objectives):
    by_dropout, params = objectives
    key, batch = jax.random.PRNGKey(3), Batch(X_POINTS, LABELS)
    null = Batch(X_POINTS, jnp.full_like(LABELS, NUM_CLASSES))
    dropped = by_dropout[1.0](params, key, batch)
    assert dropped == by_dropout[0.0](params, key, null)
    assert abs(by_dropout[0.0](params, key, batch) - dropped) > 1e-6
    # Not while evaluating: the test loss is the conditional one.
    evaluate = {p: by_dropout[p](params, key, batch, train=False) for p in (0.0, 1.0)}
    assert evaluate[1.0] == evaluate[0.0]


def test_cond_dropout_drops_its_share_of_labels(objectives):
    labels = jnp.arange(20_000) % NUM_CLASSES
    cond = objectives[0][0.3].condition(jax.random.PRNGKey(0), labels)
    dropped = np.asarray(cond == NUM_CLASSES)
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(labels))
    np.testing.assert_array_equal(np.asarray(cond)[~dropped], np.asarray(labels)[~dropped])


def test_an_unconditional_objective_ignores_labels_and_keeps_its_loss():
    config = config_lib.from_config_dict(tiny_runs.tiny_mlp())
    objective = experiment_lib.build_objective(config, images=False)
    model, params, _ = _init("mlp", 0)
    objective = dataclasses.replace(objective, model=model)
    key = jax.random.PRNGKey(5)
    loss = objective(params, key, Batch(X_POINTS, LABELS))
    assert loss == objective(params, key, X_POINTS)
    k_loss, k_dropout = jax.random.split(key)  # the key use of the objective before labels existed
    score_fn = objective.score_fn(params, train=True, rng=k_dropout)
    assert loss == jnp.mean(objective.loss(k_loss, objective.sde, score_fn, X_POINTS))


# ------------------------------------------------------------------------------------- labelled datasets


def test_digits_batches_carry_the_labels_of_their_images():
    dataset = build_dataset(DataConfig(dataset="digits", image_size=8, seed=3))
    batch = dataset.batch(5, 64)
    indices = dataset.batch_indices(5, 64)
    np.testing.assert_array_equal(batch.x, dataset.train_batch(5, 64))
    np.testing.assert_array_equal(batch.cond, dataset.train_labels[indices])
    np.testing.assert_array_equal(batch.x, dataset.train[indices])


def test_npz_labels_travel_with_their_examples(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, 40)
    points = np.stack([labels.astype(np.float32), np.arange(40.0)], axis=1)  # x[:, 0] is the label
    np.savez(tmp_path / "p.npz", x=points, classes=labels)
    config = DataConfig(dataset="npz", path=str(tmp_path / "p.npz"), label_key="classes", test_fraction=0.25)
    dataset = build_dataset(config)
    for step in range(4):
        batch = dataset.batch(step, 10)
        np.testing.assert_array_equal(batch.cond, batch.x[:, 0])
    test = dataset.test_batch(0, 100)
    np.testing.assert_array_equal(test.cond, test.x[:, 0])
    assert batch.cond.dtype == np.int32


def _class_folders(root: pathlib.Path, names=("cat", "ant", "bee"), per_class=4) -> pathlib.Path:
    for k, name in enumerate(sorted(names)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):  # an image of class k is filled with the value 40 k + i
            Image.new("L", (4, 4), color=40 * k + i).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_with_a_sub_folder_per_class_is_labelled_in_sorted_order(tmp_path):
    root = _class_folders(tmp_path / "images")
    (root / ".hidden").mkdir()
    dataset = build_dataset(DataConfig(dataset="image_folder", path=str(root), test_fraction=0.25))
    assert len(dataset.train) == 9 and set(dataset.test_labels) <= {0, 1, 2}
    for step in range(3):
        batch = dataset.batch(step, 3)
        np.testing.assert_array_equal(batch.cond, np.rint(255 * batch.x[:, 0, 0, 0]) // 40)


def test_an_image_folder_with_images_beside_sub_folders_is_refused(tmp_path):
    root = _class_folders(tmp_path / "images")
    Image.new("L", (4, 4)).save(root / "stray.png")
    with pytest.raises(ValueError, match=r"holds both images and sub-folders"):
        build_dataset(DataConfig(dataset="image_folder", path=str(root)))


# ------------------------------------------------------------------------------ config and compatibility


def _dict(**overrides):
    return tiny_runs.tiny_mlp(**overrides).to_dict()


def test_keys_added_later_default_to_the_behaviour_before_them():
    values = _dict()
    for (section, key), default in config_lib.ADDED_KEYS.items():
        assert values[section].pop(key) == default  # configs/default.py sets each, to the same value
    assert config_lib.from_dict(values) == config_lib.from_dict(_dict())


@pytest.mark.parametrize("overrides,message", [
    ({"training.cond_dropout": 1.5}, r"training.cond_dropout must lie in \[0, 1\]; got 1.5"),
    ({"training.cond_dropout": -0.1}, r"training.cond_dropout must lie in \[0, 1\]; got -0.1"),
    ({"training.cond_dropout": 0.1}, r"training.cond_dropout=0.1 needs a class-conditional model"),
    ({"model.num_classes": -2}, r"model.num_classes must be an int >= 0"),
])
def test_bad_condition_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.from_dict(_dict(**overrides))


def test_a_conditional_model_needs_labels_in_its_range(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes=2 needs a dataset with labels; 'checkerboard'"):
        experiment_lib.build_experiment(config_lib.from_dict(_dict(**{"model.num_classes": 2})))
    digits = tiny_runs.tiny_ncsnpp(**{"model.num_classes": 9}).to_dict()
    with pytest.raises(ValueError, match=r"labels lie in \[0, 9\]; they must lie in \[0, 9\)"):
        experiment_lib.build_experiment(config_lib.from_dict(digits))


@pytest.mark.slow
def test_a_run_written_before_the_condition_slot_restores_and_resumes(tmp_path):
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp()))
    train.run(experiment, tmp_path / "run", progress=False)
    old = json.loads((tmp_path / "run" / workdir_lib.CONFIG_FILE).read_text())
    for section, key in config_lib.ADDED_KEYS:  # its config.json lacks the keys added since
        del old[section][key]
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    (tmp_path / "old" / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))
    restored, state = experiment_lib.restore(tmp_path / "old")
    assert restored.config == experiment.config and int(state.step) == 4
    assert not workdir_lib.check_workdir(tmp_path / "old", experiment.config, resume=False, overwrite=False)
    resumed = train.run(experiment, tmp_path / "old", progress=False)  # nothing left to do: same config
    assert int(resumed.step) == 4


# ---------------------------------------------------------------------------- a conditional run, sampled


@pytest.fixture(scope="module")
def labelled_points(tmp_path_factory) -> pathlib.Path:
    """Two labelled clusters of 2-D points, at (-2, 0) (label 0) and (2, 0) (label 1)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 512)
    points = rng.normal(0.0, 0.3, (512, 2)) + np.stack([4.0 * labels - 2.0, 0 * labels], axis=1)
    path = tmp_path_factory.mktemp("points") / "clusters.npz"
    np.savez(path, x=points.astype(np.float32), y=labels)
    return path


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, labelled_points):
    """A workdir of the tiny MLP trained by `scoresde train` on the labelled clusters with label dropout."""
    workdir = tmp_path_factory.mktemp("conditional") / "run"
    flags = [*TINY_MLP_FLAGS, "--config.data.dataset=npz", f"--config.data.path={labelled_points}",
             "--config.model.num_classes=2", "--config.training.cond_dropout=0.2"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, out, err = scoresde(monkeypatch, _NoCapture(), "train", f"--workdir={workdir}", *flags)
    assert code == 0, err
    return workdir


@pytest.mark.slow
def test_sample_class_label_writes_npz_and_png(conditional_run, monkeypatch, capsys):
    x = {}
    for label in (0, 1):
        code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={conditional_run}",
                                  f"--class_label={label}", "--num_samples=16", "--num_steps=3")
        assert code == 0, err
        stem = conditional_run / "samples" / f"samples_4_pc_class{label}"
        with np.load(f"{stem}.npz") as samples:
            x[label] = samples["x"]
            assert int(samples["class_label"]) == label
        assert x[label].shape == (16, 2) and np.all(np.isfinite(x[label]))
        assert pathlib.Path(f"{stem}.png").is_file()
    assert not np.array_equal(x[0], x[1])  # the same noise, another label
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={conditional_run}",
                              "--class_label=1", "--guidance_scale=2", "--num_samples=16", "--num_steps=3")
    assert code == 0, err
    with np.load(conditional_run / "samples" / "samples_4_pc_class1_w2.npz") as guided:
        assert float(guided["guidance_scale"]) == 2.0 and not np.array_equal(guided["x"], x[1])


@pytest.mark.slow
def test_guided_score_is_the_conditional_plus_w_times_its_difference_from_the_null_class(conditional_run):
    experiment, state = experiment_lib.restore(conditional_run)
    objective, t = experiment.objective, jnp.full((len(X_POINTS),), 0.3)
    conditional = objective.score_fn(state.ema_params, cond=1)(X_POINTS, t)
    null = objective.score_fn(state.ema_params)(X_POINTS, t)
    assert np.max(np.abs(conditional - null)) > 1e-6
    for w in (0.0, 2.5):
        guided = experiment_lib.class_score_fn(objective, state.ema_params, 1, w)(X_POINTS, t)
        np.testing.assert_allclose(guided, conditional + w * (conditional - null), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--class_label=2"], "class_label 2 is outside the trained classes 0 .. 1"),
    (["--class_label=-1"], "class_label -1 is outside the trained classes 0 .. 1"),
    (["--guidance_scale=1"], "--guidance_scale needs --class_label"),
    (["--class_label=1", "--guidance_scale=-0.5"],
     "--guidance_scale must be >= 0 (0: no guidance); got -0.5"),
])
def test_bad_class_label_input_is_one_line_and_writes_nothing(conditional_run, args, message, monkeypatch,
                                                              capsys):
    before = _snapshot(conditional_run)
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={conditional_run}", *args)
    assert (code, err.count("\n")) == (2, 1) and message in err, err
    assert _snapshot(conditional_run) == before


def test_cond_dropout_outside_the_unit_interval_is_refused_before_the_workdir(tmp_path, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={tmp_path / 'run'}", *TINY_MLP_FLAGS,
                              "--config.training.cond_dropout=1.5")
    assert (code, err.count("\n")) == (2, 1) and "training.cond_dropout must lie in [0, 1]; got 1.5" in err
    assert not (tmp_path / "run").exists()


def test_class_label_on_an_unconditional_run_is_refused(tmp_path, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "train", f"--workdir={tmp_path / 'run'}", *TINY_MLP_FLAGS)
    assert code == 0, err
    before = _snapshot(tmp_path)
    for args in (["--class_label=0"], ["--class_label=0", "--guidance_scale=2"]):
        code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={tmp_path / 'run'}", *args)
        assert (code, err.count("\n")) == (2, 1), err
        assert "class_label needs a class-conditional model; this run is unconditional" in err
    assert _snapshot(tmp_path) == before
