"""Tests for scoresde/evaluation.py's point figures: support, coverage and likelihood against closed forms.

Uniform noise over the checkerboard's rectangle lies half in its cells; a mixture with a dropped mode covers
K - 1 of K modes; exact draws score what held-out data scores; the exact score of eight Gaussians (a Gaussian
mixture, `scoresde.toy`) gives the probability-flow NLL the data's own density gives.
"""

import math
import types

import jax
import numpy as np
import pytest

import scoresde as sd
from scoresde import evaluation, toy, toy2d
from scoresde.data import DataConfig, build_dataset

KEY = jax.random.PRNGKey(0)


def _dataset(name: str, num_test: int = 1000):
    return build_dataset(DataConfig(dataset=name, num_train=100, num_test=num_test))


def test_uniform_noise_on_the_checkerboard_rectangle_scores_half_in_support():
    noise = np.random.default_rng(0).uniform([-2.0, -4.0], [2.0, 4.0], size=(4000, 2))
    figures = evaluation.support_metrics(toy2d.TOYS["checkerboard"], noise)
    assert abs(figures["in_support"] - 0.5) < 4 * math.sqrt(0.25 / 4000)


def test_a_mixture_with_a_dropped_mode_covers_the_others_only():
    gaussians = toy2d.TOYS["eight_gaussians"]
    x = np.asarray(gaussians.sample(KEY, 4000))
    kept = x[gaussians.mode_of(x) != 3]
    assert evaluation.support_metrics(gaussians, x)["mode_coverage"] == 1.0
    assert evaluation.support_metrics(gaussians, kept)["mode_coverage"] == 7 / 8
    # Half a mode's expected mass still counts as covered; a third of it does not.
    thinned = np.concatenate([kept, x[gaussians.mode_of(x) == 3][::3]])
    assert evaluation.support_metrics(gaussians, thinned)["mode_coverage"] == 7 / 8


def test_a_single_curve_reports_no_coverage():
    swiss_roll = toy2d.TOYS["swiss_roll"]
    x = np.asarray(swiss_roll.sample(KEY, 100))
    assert set(evaluation.support_metrics(swiss_roll, x)) == {"in_support"}


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_held_out_points_score_like_exact_samples(name):
    dataset = _dataset(name)
    exact = np.asarray(toy2d.TOYS[name].sample(jax.random.PRNGKey(7), 500))
    figures = evaluation.point_metrics(KEY, exact, dataset)
    assert figures["num_samples"] == 500
    assert figures["in_support_held_out"] > 0.97
    assert abs(figures["in_support"] - figures["in_support_held_out"]) < 0.03
    assert figures.get("mode_coverage", 1.0) == figures.get("mode_coverage_held_out", 1.0) == 1.0
    assert (figures["entropy_nats"], figures["entropy_error_nats"]) == toy2d.TOYS[name].entropy()


def test_point_sets_of_unknown_density_get_the_distances_only(tmp_path):
    path = tmp_path / "points.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32))
    dataset = build_dataset(DataConfig(dataset="npz", path=str(path), test_fraction=0.5))
    figures = evaluation.point_metrics(KEY, dataset.test[:100], dataset)
    assert set(figures) == {"sliced_wasserstein", "mmd", "sliced_wasserstein_held_out", "mmd_held_out",
                            "num_samples"}


def test_the_exact_score_has_the_nll_of_the_data_density():
    """Eight Gaussians are a Gaussian mixture, whose exact score makes the probability-flow model the data
    density blurred by sigma(eps) ~ 0.01 against the modes' 0.1: its NLL is the data's own to ~0.01 nats."""
    dataset = _dataset("eight_gaussians", num_test=200)
    angles = 2 * np.pi * np.arange(8) / 8
    mix = toy.GaussianMixture.create(np.ones(8), 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1),
                                     np.tile(0.01 * np.eye(2), (8, 1, 1)))
    sde = sd.VPSDE()
    objective = types.SimpleNamespace(sde=sde, score_fn=lambda params: mix.score_fn(sde))
    figures = evaluation.likelihood_fn(objective, dataset)(None, KEY, dataset.test)
    true_nll = -np.mean(np.asarray(mix.log_prob(dataset.test)))
    assert figures["nll_nats_true"] == pytest.approx(true_nll, abs=1e-5)
    assert figures["nll_nats"] == pytest.approx(figures["nll_nats_true"], abs=0.02)
    board = _dataset("checkerboard", num_test=50)
    figures = evaluation.likelihood_fn(objective, board)(None, KEY, board.test)
    assert figures["nll_nats_true"] == pytest.approx(math.log(16))


def test_tiles_cut_canvases_into_their_digits_left_to_right():
    digits = np.arange(6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8, 1)
    canvases = np.concatenate([digits[0::2], digits[1::2]], axis=2)  # [3, 8, 16, 1]: digit 2i left of 2i + 1
    labels = np.array([[0, 1], [2, 3], [4, 5]])
    pieces, flat = evaluation.tiles(canvases, labels)
    np.testing.assert_array_equal(pieces, digits)
    np.testing.assert_array_equal(flat, np.arange(6))
    same, single = evaluation.tiles(digits, np.arange(6))
    np.testing.assert_array_equal(same, digits)
    np.testing.assert_array_equal(single, np.arange(6))
