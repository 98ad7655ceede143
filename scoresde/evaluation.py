"""Scoring a trained model: its samples against held-out data, and its likelihood.

`scoresde eval` and `scoresde bench samplers --workdir` both score through this module. Every sample distance
comes with the value real data reaches against the same held-out set, so a figure reads as a distance from
what a perfect model would score:

* 2-D points: sliced Wasserstein distance (Bonneel et al. 2015) and MMD (Gretton et al. 2012) of n samples to
  n held-out points, beside the same between two disjoint held-out sets of n. Both compare whole point clouds
  and average over them, so a sample set that matches the data's mean and spread but smears its fine structure
  (a checkerboard's cells, a ring's width) scores nearly as well as one that reproduces it. For the toys whose
  density is known (`scoresde.toy2d`), the figures that see that structure come beside them: the share of
  samples inside the support and, where the toy has several modes, mode coverage: the share of modes that
  receive at least `COVERAGE_FRACTION` of the n / K samples they would under the data;
* labelled images (digits): a small classifier trained on the training split
  (`metrics.train_digits_classifier`) scores the samples' confidence, class-histogram entropy and Fréchet
  distance to the test images in its feature space (the FID recipe of Heusel et al. 2017 with a digits
  network), beside the same for n training images;
* autoencoders: the mean squared and absolute reconstruction error of the test images, the share of
  reconstructed test digits the digits classifier reads as their label (each digit of a canvas of several
  scored on its own), beside its accuracy on the test images themselves, and the latent scale factor;
* likelihood: probability-flow log-likelihood (Song et al. 2021, App. D.2) in nats per point, or bits/dim of
  images dequantized uniformly (Theis et al. 2016). For a known toy, beside the model's NLL of the test points
  comes their NLL under the data's own density, whose expectation is the toy's differential entropy: the
  lowest NLL any model can reach in expectation (Gibbs' inequality).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from scoresde import autoencoder, data as data_lib
from scoresde import likelihood, metrics, parallel, toy2d

Array = jax.Array
Figures = dict[str, float]

COVERAGE_FRACTION = 0.5


def point_distances(key: Array, x: np.ndarray, held_out: np.ndarray) -> Figures:
    """Sliced Wasserstein distance (512 directions drawn from `key`) and MMD between two point sets."""
    return {"sliced_wasserstein": float(metrics.sliced_wasserstein(key, x, held_out)),
            "mmd": float(metrics.mmd(x, held_out))}


def support_metrics(toy: toy2d.Toy, x: np.ndarray) -> Figures:
    """The share of points x: [n, 2] inside the toy's support and, for a toy of K > 1 modes, the share of
    modes holding at least COVERAGE_FRACTION * n / K of them."""
    modes = toy.mode_of(np.asarray(x))
    figures = {"in_support": float(np.mean(modes >= 0))}
    if toy.num_modes > 1:
        counts = np.bincount(modes[modes >= 0], minlength=toy.num_modes)
        figures["mode_coverage"] = float(np.mean(counts >= COVERAGE_FRACTION * len(x) / toy.num_modes))
    return figures


def point_figures(key: Array, x: np.ndarray, held_out: np.ndarray, toy: toy2d.Toy | None) -> Figures:
    """`point_distances` of x to the held-out points, and the `support_metrics` of x for a known toy."""
    return {**point_distances(key, x, held_out), **(support_metrics(toy, x) if toy else {})}


def point_scorer(
    key: Array, dataset: data_lib.Dataset, num_samples: int
) -> tuple[Callable[[np.ndarray], Figures], Figures, int]:
    """Scores up to num_samples points against n = min(num_samples, len(test) // 2) held-out points.

    Returns (samples -> `point_figures` of their first n against the first n test points; the same figures of
    the next n test points, what exact samples score; n). Build once, score any number of sets. The support
    figures need the dataset to be one of `toy2d.TOYS`; other point sets get the distances only.
    """
    test, toy = dataset.test, toy2d.TOYS.get(dataset.name)
    n = min(num_samples, len(test) // 2)
    held_out, other = test[:n], test[n:2 * n]
    k_model, k_floor = jax.random.split(key)
    score = lambda samples: point_figures(k_model, np.asarray(samples)[:n], held_out, toy)
    return score, point_figures(k_floor, other, held_out, toy), n


def point_metrics(key: Array, samples: np.ndarray, dataset: data_lib.Dataset) -> Figures:
    """`point_scorer`'s figures for samples, beside what held-out data scores (`_held_out`), the n compared
    and, for a known toy, its differential entropy with a bound on that number's error."""
    score, floors, n = point_scorer(key, dataset, len(samples))
    return {**score(samples), **{f"{name}_held_out": value for name, value in floors.items()},
            "num_samples": n, **entropy_figures(dataset)}


def entropy_figures(dataset: data_lib.Dataset) -> Figures:
    """A known toy's differential entropy in nats and a bound on that number's error; {} for other data."""
    toy = None if dataset.is_image else toy2d.TOYS.get(dataset.name)
    return dict(zip(("entropy_nats", "entropy_error_nats"), toy.entropy())) if toy else {}


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


@dataclasses.dataclass(frozen=True)
class PairReader:
    """Reads the two digits of [N, H, 2H, C] canvases (`scoresde.digit_pairs`), each half with the digits
    classifier (`metrics.train_digits_classifier`) trained on the same split's real training digits."""

    digits: data_lib.Dataset
    classifier: metrics.DigitsClassifier

    @classmethod
    def build(cls, config: data_lib.DataConfig, seed: int = 0) -> "PairReader":
        """The reader of the canvases of `config` (a digit_pairs config): the digits of its split and scale."""
        digits = data_lib.build_dataset(dataclasses.replace(config, dataset="digits"))
        return cls(digits, metrics.train_digits_classifier(digits, seed=seed))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: [N, H, 2H, C] in [0, 1] -> the digits read, [N, 2] (left, right)."""
        side = x.shape[1]
        halves = np.concatenate([x[:, :, :side], x[:, :, side:]])
        probs, _ = self.classifier(self.digits.scale(halves))
        return np.asarray(np.argmax(probs, axis=1)).reshape(2, len(x)).T


def prompt_following(read: np.ndarray, pair: tuple[int, int]) -> Figures:
    """Of the digits read from canvases drawn for (left, right) = pair, read: [N, 2], the share read as asked
    (both digits in place), as swapped (right, left), and with each side right."""
    left, right = pair
    return {"both": float(np.mean((read[:, 0] == left) & (read[:, 1] == right))),
            "swapped": float(np.mean((read[:, 0] == right) & (read[:, 1] == left))),
            "left": float(np.mean(read[:, 0] == left)), "right": float(np.mean(read[:, 1] == right))}


def image_metrics(scorer: DigitsScorer, samples: np.ndarray) -> Figures:
    """The scorer's figures on samples, each beside its value on as many training images (`_real`)."""
    real = scorer.real(len(samples))
    return {"classifier_test_accuracy": scorer.test_accuracy(), **scorer(samples),
            **{f"{name}_real": value for name, value in real.items()}}


def tiles(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images x: [N, H, k W', C] holding k digits side by side, with labels: [N] (k = 1) or [N, k], as the
    k N single digits [k N, H, W', C] (image by image, left to right) and their labels [k N]."""
    labels = np.asarray(labels).reshape(len(x), -1)
    n, height, width, channels = x.shape
    k = labels.shape[1]
    digits = x.reshape(n, height, k, width // k, channels).transpose(0, 2, 1, 3, 4)
    return digits.reshape(n * k, height, width // k, channels), labels.reshape(-1)


def digit_classifier(shape: tuple[int, ...], seed: int) -> metrics.DigitsClassifier:
    """The digits classifier of single digits shaped (H, W, C) in [0, 1], trained on the training split of
    scikit-learn's digits at that size drawn with `seed` (the split every digits data set uses)."""
    height, width, channels = shape
    if height != width:
        raise ValueError(f"digits are square; images of {height}x{width} digits cannot be scored.")
    digits = data_lib.build_dataset(data_lib.DataConfig("digits", image_size=height, num_channels=channels,
                                                        seed=seed))
    return metrics.train_digits_classifier(digits)


def autoencoder_metrics(objective: autoencoder.AutoencoderObjective, params: Any,
                        dataset: data_lib.Dataset) -> Figures:
    """Reconstruction error of the test images, the class agreement of their reconstructed digits and the
    latent scale factor (see the module docstring) of a trained autoencoder; `dataset`: its data."""
    mu, logvar = autoencoder.in_chunks(objective.posterior, params, dataset.scale(dataset.train))
    test = dataset.test
    z, _ = autoencoder.in_chunks(objective.posterior, params, dataset.scale(test))
    decoded = np.asarray(dataset.unscale(autoencoder.in_chunks(objective.decode, params, z)))
    reconstruction = np.clip(decoded, 0.0, 1.0)
    figures = {"reconstruction_mse": float(np.mean((reconstruction - test) ** 2)),
               "reconstruction_mae": float(np.mean(np.abs(reconstruction - test))),
               "latent_scale_factor": autoencoder.scale_factor(mu),
               "posterior_std_over_latent_std": float(np.mean(np.exp(0.5 * logvar)) / np.std(mu))}
    if dataset.test_labels is None:
        return figures
    digits, labels = tiles(test, dataset.test_labels)
    classifier = digit_classifier(digits.shape[1:], dataset.seed)
    return {**figures,
            "reconstruction_class_agreement": metrics.classifier_accuracy(
                classifier, tiles(reconstruction, dataset.test_labels)[0], labels),
            "test_class_agreement": metrics.classifier_accuracy(classifier, digits, labels),
            "digits_scored": len(labels)}


LikelihoodFn = Callable[[Any, Array, Array], Figures]


def likelihood_fn(
    objective: Any, dataset: data_lib.Dataset, *, divergence: str | None = None, width: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> LikelihoodFn:
    """(params, key, x in the model's range) -> mean NLL in nats per point or bits/dim of images, with its
    standard error over the examples (given for N > 1); compiled once.

    The examples x: [N, ...] are solved in groups of `width` (default: all N in one), group g (examples
    g * width .. (g + 1) * width - 1, the last filled up with copies of its own first example, which are not
    counted) in one adaptive solve with the probes of fold_in(key, g), on one device; every device of
    `mesh` (default: every device of every process) solves a group of its own at once
    (`parallel.map_groups`). So the figures depend on x, key and width alone, bitwise, whatever the number
    of devices and processes. The standard error is the examples' standard deviation over sqrt(N): it
    covers the spread of the test set and of the divergence probes, not the solver's tolerance.

    For the points of a known toy (`toy2d.TOYS`) the figures also hold `nll_nats_true`, the mean NLL of x
    under the toy's own density: what a perfect model scores on the same points.

    Args:
      objective: the run's `scoresde.objective.Objective` (its SDE and score parametrization).
      dataset: sets the unit (images: bits/dim over the data range; other data, points or latents: nats per
        example) and the default divergence estimator (points [N, D]: exact; images and latents:
        Rademacher, Hutchinson 1989).
      divergence: overrides that estimator ("exact", "rademacher" or "gaussian").
    """
    divergence = divergence or ("exact" if len(dataset.shape) == 1 else "rademacher")
    data_range = (-1.0, 1.0) if dataset.centered else (0.0, 1.0)

    def solve_group(shared, group):
        (params, key), (index, x) = shared, group
        score_fn = objective.score_fn(params)
        return likelihood.log_likelihood(jax.random.fold_in(key, index), objective.sde, score_fn, x,
                                         divergence=divergence)

    solve_groups = parallel.map_groups(solve_group, parallel.data_mesh() if mesh is None else mesh)
    toy = None if dataset.is_image else toy2d.TOYS.get(dataset.name)

    def figures(params, key, x) -> Figures:
        x = np.asarray(x)
        size = len(x) if width is None else width
        count = -(-len(x) // size)
        rows = np.arange(count * size).reshape(count, size)
        rows = np.where(rows < len(x), rows, rows - rows % size)  # the last group's own first examples
        logp, nfe = solve_groups((params, np.asarray(key)), (np.arange(count, dtype=np.int32), x[rows]))
        logp = logp.reshape(-1)[:len(x)].astype(np.float64)
        if dataset.is_image:
            name, values = "bits_per_dim", np.asarray(likelihood.bits_per_dim(logp, x.shape[1:],
                                                                               data_range=data_range))
        else:
            name, values = "nll_nats", -logp
        stderr = ({f"{name}_stderr": float(np.std(values, ddof=1) / np.sqrt(len(values)))}
                  if len(values) > 1 else {})
        true = {"nll_nats_true": float(-np.mean(toy.log_prob(x)))} if toy else {}
        return {name: float(np.mean(values)), **stderr, **true, "likelihood_nfe": int(nfe.max())}

    return figures


def test_examples(dataset: data_lib.Dataset, n: int, seed: int) -> np.ndarray:
    """The first n test examples in the model's range; images dequantized with noise drawn from `seed`."""
    x = dataset.test[:n]
    if dataset.is_image:
        x = dataset.scale(data_lib.dequantize(x, np.random.default_rng(seed)))
    return x
