"""Scoring a trained model: its samples against held-out data, and its likelihood.

`scoresde eval` and `scoresde bench samplers --workdir` both score through this module. Every sample distance
comes with the value real data reaches against the same held-out set, so a figure reads as a distance from
what a perfect model would score:

* 2-D points: sliced Wasserstein distance (Bonneel et al. 2015) and MMD (Gretton et al. 2012) of n samples to
  n held-out points, beside the same between two disjoint held-out sets of n;
* labelled images (digits): a small classifier trained on the training split
  (`metrics.train_digits_classifier`) scores the samples' confidence, class-histogram entropy and Fréchet
  distance to the test images in its feature space (the FID recipe of Heusel et al. 2017 with a digits
  network), beside the same for n training images;
* likelihood: probability-flow log-likelihood (Song et al. 2021, App. D.2) in nats per point, or bits/dim of
  images dequantized uniformly (Theis et al. 2016).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from scoresde import data as data_lib
from scoresde import likelihood, metrics

Array = jax.Array
Figures = dict[str, float]


def point_distances(key: Array, x: np.ndarray, held_out: np.ndarray) -> Figures:
    """Sliced Wasserstein distance (512 directions drawn from `key`) and MMD between two point sets."""
    return {"sliced_wasserstein": float(metrics.sliced_wasserstein(key, x, held_out)),
            "mmd": float(metrics.mmd(x, held_out))}


def point_scorer(
    key: Array, test: np.ndarray, num_samples: int
) -> tuple[Callable[[np.ndarray], Figures], Figures, int]:
    """Scores up to num_samples points against n = min(num_samples, len(test) // 2) held-out points.

    Returns (samples -> `point_distances` of their first n to the first n test points; the same distances for
    the next n test points, the floor exact samples would reach; n). Build once, score any number of sets.
    """
    n = min(num_samples, len(test) // 2)
    held_out, other = test[:n], test[n:2 * n]
    k_model, k_floor = jax.random.split(key)
    score = lambda samples: point_distances(k_model, np.asarray(samples)[:n], held_out)
    return score, point_distances(k_floor, other, held_out), n


def point_metrics(key: Array, samples: np.ndarray, test: np.ndarray) -> Figures:
    """`point_scorer`'s figures for samples, beside its floors (`_held_out`), and the n compared."""
    score, floors, n = point_scorer(key, test, len(samples))
    return {**score(samples), **{f"{name}_held_out": value for name, value in floors.items()},
            "num_samples": n}


@dataclasses.dataclass(frozen=True)
class DigitsScorer:
    """A digits classifier with the scaled test images it compares samples with.

    Build once per dataset (training the classifier takes seconds) and call on any number of sample sets.
    """

    dataset: data_lib.Dataset
    classifier: metrics.DigitsClassifier
    test: np.ndarray

    @classmethod
    def build(cls, dataset: data_lib.Dataset, seed: int = 0) -> "DigitsScorer":
        if dataset.test_labels is None or not len(dataset.test):
            raise ValueError(f"dataset {dataset.name!r} has no labelled test split to train a classifier on.")
        classifier = metrics.train_digits_classifier(dataset, seed=seed)
        return cls(dataset, classifier, np.concatenate(list(dataset.test_batches(len(dataset.test)))))

    def __call__(self, samples: np.ndarray) -> Figures:
        """samples: [N, H, W, C] in [0, 1] -> confidence, class entropy, Fréchet distance to the test set."""
        quality = metrics.digits_sample_quality(self.classifier, self.dataset.scale(samples), self.test)
        return {"sample_confidence": quality.confidence, "sample_class_entropy": quality.class_entropy,
                "frechet_distance": quality.frechet}

    def real(self, n: int) -> Figures:
        """The same figures for n training images: what a model reproducing the data distribution scores."""
        return self(self.dataset.train[:n])

    def test_accuracy(self) -> float:
        return metrics.classifier_accuracy(self.classifier, self.test, self.dataset.test_labels)


def image_metrics(scorer: DigitsScorer, samples: np.ndarray) -> Figures:
    """The scorer's figures on samples, each beside its value on as many training images (`_real`)."""
    real = scorer.real(len(samples))
    return {"classifier_test_accuracy": scorer.test_accuracy(), **scorer(samples),
            **{f"{name}_real": value for name, value in real.items()}}


LikelihoodFn = Callable[[Any, Array, Array], Figures]


def likelihood_fn(
    objective: Any, dataset: data_lib.Dataset, *, divergence: str | None = None
) -> LikelihoodFn:
    """(params, key, x in the model's range) -> mean NLL in nats per point or bits/dim of images; jitted once.

    Args:
      objective: the run's `scoresde.objective.Objective` (its SDE and score parametrization).
      dataset: sets the unit (images: bits/dim over the data range) and the default divergence estimator
        (images: Rademacher, Hutchinson 1989; points: exact).
      divergence: overrides that estimator ("exact", "rademacher" or "gaussian").
    """
    divergence = divergence or ("rademacher" if dataset.is_image else "exact")
    data_range = (-1.0, 1.0) if dataset.centered else (0.0, 1.0)

    @jax.jit
    def log_likelihood(params, key, x):
        score_fn = objective.score_fn(params)
        return likelihood.log_likelihood(key, objective.sde, score_fn, x, divergence=divergence)

    def figures(params, key, x) -> Figures:
        logp, nfe = log_likelihood(params, key, x)
        if not dataset.is_image:
            return {"nll_nats": float(-np.mean(logp)), "likelihood_nfe": int(nfe)}
        bpd = likelihood.bits_per_dim(logp, x.shape[1:], data_range=data_range)
        return {"bits_per_dim": float(np.mean(bpd)), "likelihood_nfe": int(nfe)}

    return figures


def test_examples(dataset: data_lib.Dataset, n: int, seed: int) -> np.ndarray:
    """The first n test examples in the model's range; images dequantized with noise drawn from `seed`."""
    x = dataset.test[:n]
    if dataset.is_image:
        x = dataset.scale(data_lib.dequantize(x, np.random.default_rng(seed)))
    return x
