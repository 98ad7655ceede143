"""Tests for the noise-conditional classifier (scoresde/classifier.py, scoresde/models/classifier.py): trained
by `train.run` from its own configs, it recovers the exact mode posterior of the eight Gaussians under the
SDE's marginals, and guides the exact mixture score to the chosen mode.

One tiny toy classifier is trained per module; the digits network trains a few hundred steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import guidance, samplers, toy2d, train
from scoresde.models import build_model
from scoresde.sde import batch_broadcast

import tiny_runs

# configs/toy/classifier.py, shrunk: 600 steps of a 64-wide MLP on 4,096 points.
TINY_TOY_CLASSIFIER = {
    "data.num_train": 4096, "data.num_test": 1024, "model.width": 64, "training.n_iters": 600,
    "training.log_freq": 300, "training.eval_freq": 600, "training.snapshot_freq": 600,
    "training.snapshot_freq_for_preemption": 600, "optim.lr": 3e-3,
}
NUM_MODES = 8


def build(path: str, *args: str, **overrides):
    return experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.load(path, *args,
                                                                                      overrides=overrides)))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("classifier") / "toy"
    experiment = build("toy/classifier", **TINY_TOY_CLASSIFIER)
    train.run(experiment, workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def restored(toy_run):
    return experiment_lib.restore(toy_run)


def perturbed_test_points(experiment, t: float):
    """The held-out examples' x_t = alpha x_0 + sigma z at time t (fixed noise), the times and the labels."""
    dataset, sde = experiment.dataset, experiment.objective.sde
    x0 = jnp.asarray(dataset.scale(dataset.test))
    times = jnp.full((len(x0),), t)
    mean, std = sde.marginal_prob(x0, times)
    x_t = mean + batch_broadcast(std, x0) * jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    return x_t, times, jnp.asarray(dataset.test_labels)


def test_accuracy_on_clean_inputs_beats_chance_and_the_posterior_nears_the_exact_one(restored):
    experiment, state = restored
    objective = experiment.objective
    mix = toy2d.build_toy("eight_gaussians").gaussian_mixture()
    for t, accuracy_floor in ((0.01, 0.97), (0.3, None), (0.5, None)):
        x_t, times, labels = perturbed_test_points(experiment, t)
        log_q = objective.log_posterior_fn(state.ema_params)(x_t, times)
        exact = jnp.log(mix.marginal(objective.sde, t).responsibilities(x_t))
        nll = float(-jnp.mean(jnp.take_along_axis(log_q, labels[:, None], axis=1)))
        bayes = float(-jnp.mean(jnp.take_along_axis(exact, labels[:, None], axis=1)))
        if accuracy_floor is not None:
            assert float(jnp.mean(jnp.argmax(log_q, axis=1) == labels)) > accuracy_floor  # chance: 1/8
        # The exact posterior's cross-entropy is the floor of any classifier; a uniform guess scores log 8.
        assert bayes - 0.02 < nll < bayes + 0.15, (t, nll, bayes)


def test_training_takes_no_sample_snapshots_of_a_classifier(toy_run, restored):
    experiment, _ = restored
    assert experiment.config.training.snapshot_sampling and not experiment.snapshots_sample
    assert not (toy_run / "samples").exists()
    assert (toy_run / "metrics.jsonl").read_text().count("eval_loss") == 1


def test_log_prob_fn_is_a_normalised_posterior_with_gradients_shaped_like_x(toy_run, restored):
    experiment, state = restored
    x_t, times, _ = perturbed_test_points(experiment, 0.4)
    x_t, times = x_t[:16], times[:16]
    log_probs = jax.jit(experiment.objective.log_posterior_fn(state.ema_params))(x_t, times)
    np.testing.assert_allclose(jax.nn.logsumexp(log_probs, axis=1), 0.0, atol=1e-5)
    log_prob_fn = experiment_lib.classifier_log_prob_fn(toy_run, 3, guiding=experiment)
    np.testing.assert_allclose(log_prob_fn(x_t, times), log_probs[:, 3], rtol=1e-5)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(log_prob_fn(x, times))))(x_t)
    assert grad.shape == x_t.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


def test_guiding_the_exact_mixture_score_samples_the_chosen_mode(toy_run, restored):
    """Bayes: exact score + grad log p(k | x_t) at scale 1 is component k's score; a learnt posterior close to
    the exact one must send nearly every sample to mode k."""
    experiment, _ = restored
    mix, sde = toy2d.build_toy("eight_gaussians").gaussian_mixture(), experiment.objective.sde
    label = 5
    log_prob_fn = experiment_lib.classifier_log_prob_fn(toy_run, label)
    score_fn = guidance.classifier_guidance(mix.score_fn(sde), log_prob_fn)
    solve = jax.jit(lambda key: samplers.sample(key, sde, score_fn, (512, 2), samplers.Euler(num_steps=100)))
    x, _ = solve(jax.random.PRNGKey(1))
    assert float(jnp.mean(jnp.argmax(mix.responsibilities(x), axis=1) == label)) > 0.95


@pytest.mark.slow  # compiling the convolution gradients takes ~30 s of CPU time
def test_the_digits_classifier_beats_chance_after_a_short_run(tmp_path):
    experiment = build("digits/classifier", **{
        "model.nf": 8, "training.n_iters": 300, "training.batch_size": 32, "training.log_freq": 300,
        "training.eval_freq": 300, "training.snapshot_freq": 300,
        "training.snapshot_freq_for_preemption": 300, "optim.warmup": 0})
    state = train.run(experiment, tmp_path / "digits", progress=False)
    x_t, times, labels = perturbed_test_points(experiment, 0.01)
    logits = experiment.objective.logits(state.ema_params, x_t, times)
    assert logits.shape == (len(labels), 10)
    assert float(jnp.mean(jnp.argmax(logits, axis=1) == labels)) > 0.5  # chance: 0.1


@pytest.mark.parametrize("overrides,message", [
    ({"training.objective": "score"}, "training.objective='score' cannot train model.name='classifier_mlp'"),
    ({"training.objective": "classify"},
     "unknown training.objective 'classify'; valid names: ['autoencoder', 'classifier', "),
    ({"data.dataset": "checkerboard"}, "needs a dataset with labels; 'checkerboard' has none"),
    ({"model.num_classes": 4}, "the data's labels lie in [0, 7]; they must lie in [0, 4)"),
])
def test_bad_classifier_configs(overrides, message):
    with pytest.raises(ValueError) as error:
        build("toy/classifier", **overrides)
    assert message in str(error.value)


def test_a_score_network_is_not_trained_as_a_classifier():
    with pytest.raises(ValueError, match="training.objective='classifier' cannot train model.name='mlp'"):
        build("toy/mixture", **{"training.objective": "classifier"})


def test_bad_log_prob_fn_requests(toy_run, tmp_path):
    with pytest.raises(ValueError, match=r"class label must lie in \[0, 8\); got 8"):
        experiment_lib.classifier_log_prob_fn(toy_run, NUM_MODES)
    with pytest.raises(ValueError, match="was trained on VPSDE.*but the model samples VESDE"):
        experiment_lib.classifier_log_prob_fn(toy_run, 0, guiding=build("toy/mixture", "vesde"))
    with pytest.raises(ValueError, match="sees examples shaped"):
        experiment_lib.classifier_log_prob_fn(toy_run, 0, guiding=build("digits/classifier"))


@pytest.mark.parametrize("name,options", [
    ("classifier_mlp", {"num_classes": 0}), ("classifier_conv", {"num_classes": 10, "ch_mult": ()}),
    ("classifier_conv", {"num_classes": 10, "dropout": 1.0}),
])
def test_bad_classifier_options(name, options):
    with pytest.raises(ValueError, match="is not allowed"):
        build_model(name, **options)
