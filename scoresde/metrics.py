"""Sample-quality metrics: sliced Wasserstein, MMD, Fréchet distance, KID, digits classifier, mode statistics.

Distances compare two sample sets x: [N, ...] and y: [M, ...] (flattened to [N, D], [M, D]). The
sample-based ones (sliced Wasserstein, MMD, KID) are jit-compiled jax functions whose matrix products run at
full float32 precision (accelerators may otherwise round them to bf16/tf32); the Fréchet distance is computed
in float64 numpy because its matrix square root is ill-conditioned in float32.

For digits, a small classifier trained on the training split of a `Dataset` supplies class
probabilities (confidence, class coverage) and penultimate-layer features (a Fréchet distance in its
feature space, the FID recipe of Heusel et al. 2017 with a task-sized network in place of Inception).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from scoresde.data import Dataset

Array = jax.Array
SampleFn = Callable[[Array, int], Array]

_NUM_DIGIT_CLASSES = 10
_APPLY_CHUNK = 1024
_EXACT = jax.lax.Precision.HIGHEST


def _flatten_pair(x: Array, y: Array) -> tuple[Array, Array]:
    x, y = jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(y, (y.shape[0], -1))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples differ in dimension: {x.shape[1]} and {y.shape[1]}.")
    return x, y


def _quantile_pairing(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact coupling of two sorted empirical 1-D distributions with n and m atoms.

    The quantile functions F^-1(u) and G^-1(u) are both constant between the merged breakpoints {i/n} and
    {j/m}, so W_p^p = int_0^1 |F^-1(u) - G^-1(u)|^p du is a finite sum over those intervals.

    Returns:
      (indices into the sorted x: [n + m], indices into the sorted y: [n + m], interval widths: [n + m]).
    """
    levels = np.sort(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    widths = np.diff(levels, prepend=0.0)
    mids = levels - widths / 2
    return (
        np.minimum(np.floor(mids * n), n - 1).astype(np.int32),
        np.minimum(np.floor(mids * m), m - 1).astype(np.int32),
        widths.astype(np.float32),
    )


def wasserstein_1d(u: Array, v: Array, p: float = 2.0) -> Array:
    """W_p^p between the empirical distributions of each row of u: [P, n] and v: [P, m] -> [P].

    Sample sizes may differ; the quantile functions are compared exactly (Villani 2009, Remark 2.19).
    """
    iu, iv, widths = _quantile_pairing(u.shape[-1], v.shape[-1])
    gap = jnp.sort(u, axis=-1)[..., iu] - jnp.sort(v, axis=-1)[..., iv]
    return jnp.sum(widths * jnp.abs(gap) ** p, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_projections", "p"))
def sliced_wasserstein(
    key: Array, x: Array, y: Array, *, num_projections: int = 512, p: float = 2.0
) -> Array:
    """Sliced Wasserstein distance (E_theta W_p^p(theta.x, theta.y))^(1/p), theta uniform on the sphere.

    Monte Carlo over `num_projections` directions (Bonneel et al. 2015, Eq. 5; Kolouri et al. 2019).
    For a pure translation y = x + d in D dimensions, SW_2 = |d| / sqrt(D) and
    SW_1 = |d| E|theta_1| = |d| Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)), i.e. 2|d|/pi in 2-D.

    Args:
      key: PRNG key for the projection directions.
      x: [N, ...] samples.
      y: [M, ...] samples with the same event shape; M may differ from N.
      num_projections: number of random directions.
      p: order of the Wasserstein distance.

    Returns:
      A scalar.
    """
    x, y = _flatten_pair(x, y)
    theta = jax.random.normal(key, (num_projections, x.shape[1]))
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    project = functools.partial(jnp.matmul, theta, precision=_EXACT)
    return jnp.mean(wasserstein_1d(project(x.T), project(y.T), p)) ** (1.0 / p)


def monte_carlo_floor(
    key: Array, distance: Callable[..., Any], sample_fn: SampleFn, n: int, *, num_repeats: int = 8
) -> Any:
    """Mean of distance(key, x, y) over `num_repeats` pairs of independent exact sample sets of size n.

    Exact samples score this much on average with n samples, so a sampler's error is judged against it
    rather than against zero.

    Args:
      key: PRNG key.
      distance: (key, x, y) -> a scalar or a pytree of scalars (averaged leaf by leaf).
      sample_fn: (key, n) -> [n, ...] exact samples, e.g. `GaussianMixture.sample`.
      n: size of each sample set.
      num_repeats: independent pairs averaged.
    """
    values = []
    for k in jax.random.split(key, num_repeats):  # a loop, not lax.map: sample_fn closures would recompile
        k_x, k_y, k_distance = jax.random.split(k, 3)
        values.append(distance(k_distance, sample_fn(k_x, n), sample_fn(k_y, n)))
    return jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *values)


def sliced_wasserstein_floor(
    key: Array, sample_fn: SampleFn, n: int, *, num_projections: int = 512, num_repeats: int = 8
) -> Array:
    """Monte Carlo floor of `sliced_wasserstein` (see `monte_carlo_floor`).

    Args:
      key: PRNG key.
      sample_fn: (key, n) -> [n, ...] exact samples, e.g. `GaussianMixture.sample`.
      n: size of each sample set.
      num_projections: directions per distance.
      num_repeats: independent pairs averaged.
    """
    distance = functools.partial(sliced_wasserstein, num_projections=num_projections)
    return monte_carlo_floor(key, distance, sample_fn, n, num_repeats=num_repeats)


def _unbiased_mmd2(kxx: Array, kyy: Array, kxy: Array) -> Array:
    """Unbiased MMD^2 from kernel matrices [n, n], [m, m], [n, m] (Gretton et al. 2012, Eq. 3)."""
    n, m = kxx.shape[0], kyy.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side; got {n} and {m}.")
    within_x = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    within_y = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return within_x + within_y - 2.0 * jnp.mean(kxy)


def _squared_distances(x: Array, y: Array) -> Array:
    """[n, D], [m, D] -> [n, m] squared Euclidean distances."""
    d2 = jnp.sum(x**2, 1)[:, None] + jnp.sum(y**2, 1)[None, :] - 2.0 * jnp.matmul(x, y.T, precision=_EXACT)
    return jnp.maximum(d2, 0.0)


@jax.jit
def median_bandwidth(x: Array, y: Array) -> Array:
    """Median heuristic: median distance between distinct points of the pooled sample (Gretton et al. 2012).

    Args:
      x: [N, ...] samples.
      y: [M, ...] samples with the same event shape.

    Returns:
      A scalar bandwidth.
    """
    z = jnp.concatenate(_flatten_pair(x, y))
    rows, cols = np.triu_indices(z.shape[0], k=1)
    return jnp.sqrt(jnp.median(_squared_distances(z, z)[rows, cols]))


@jax.jit
def mmd(x: Array, y: Array, bandwidths: Sequence[float] | None = None) -> Array:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels (Gretton et al. 2012, Eq. 3).

    k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)). The estimator is unbiased, so it scatters around 0 (and may be
    negative) when x and y come from the same distribution. Memory is O((N + M)^2).

    Args:
      x: [N, ...] samples, N >= 2.
      y: [M, ...] samples with the same event shape, M >= 2.
      bandwidths: kernel widths h; None uses `median_bandwidth(x, y)`.

    Returns:
      A scalar MMD^2.
    """
    x, y = _flatten_pair(x, y)
    h = jnp.reshape(median_bandwidth(x, y), (1,)) if bandwidths is None else jnp.asarray(bandwidths, x.dtype)

    def kernel(d2: Array) -> Array:
        return jnp.sum(jnp.exp(-d2[..., None] / (2.0 * h**2)), axis=-1)

    return _unbiased_mmd2(kernel(_squared_distances(x, x)), kernel(_squared_distances(y, y)),
                          kernel(_squared_distances(x, y)))


@functools.partial(jax.jit, static_argnames=("num_subsets", "subset_size"))
def kernel_inception_distance(
    key: Array, feats_a: Array, feats_b: Array, *, num_subsets: int = 100, subset_size: int = 1000
) -> Array:
    """KID: unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets.

    Bińkowski et al. 2018 ("Demystifying MMD GANs", Sec. 3 and App. D), on any feature space.

    Args:
      key: PRNG key choosing the subsets (without replacement within a subset).
      feats_a: [N, d] features.
      feats_b: [M, d] features.
      num_subsets: number of subset pairs averaged.
      subset_size: examples per subset, capped at min(N, M).

    Returns:
      A scalar, the mean over subsets.
    """
    feats_a, feats_b = _flatten_pair(feats_a, feats_b)
    size = min(subset_size, feats_a.shape[0], feats_b.shape[0])
    dim = feats_a.shape[1]

    def kernel(a: Array, b: Array) -> Array:
        return (jnp.matmul(a, b.T, precision=_EXACT) / dim + 1.0) ** 3

    def one_subset(k: Array) -> Array:
        k_a, k_b = jax.random.split(k)
        a = feats_a[jax.random.permutation(k_a, feats_a.shape[0])[:size]]
        b = feats_b[jax.random.permutation(k_b, feats_b.shape[0])[:size]]
        return _unbiased_mmd2(kernel(a, a), kernel(b, b), kernel(a, b))

    return jnp.mean(jax.lax.map(one_subset, jax.random.split(key, num_subsets)))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_moments(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """Squared Fréchet (2-Wasserstein) distance of N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982).

    ||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2}), with tr (cov1 cov2)^{1/2} computed stably as
    the sum of square roots of the eigenvalues of the symmetric PSD matrix cov1^{1/2} cov2 cov1^{1/2}.

    Args:
      mu1, mu2: [d] means.
      cov1, cov2: [d, d] covariances.
    """
    mu1, cov1, mu2, cov2 = (np.atleast_1d(np.asarray(a, np.float64)) for a in (mu1, cov1, mu2, cov2))
    cov1, cov2 = cov1.reshape(len(mu1), len(mu1)), cov2.reshape(len(mu2), len(mu2))
    root1 = _psd_sqrt(cov1)
    cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def frechet_distance(feats_a: Array, feats_b: Array) -> float:
    """Fréchet distance of Gaussians fitted to feature sets [N, d] and [M, d] (FID, Heusel et al. 2017)."""
    feats_a, feats_b = (np.asarray(f, np.float64) for f in _flatten_pair(feats_a, feats_b))
    return frechet_distance_from_moments(
        feats_a.mean(0), np.cov(feats_a, rowvar=False), feats_b.mean(0), np.cov(feats_b, rowvar=False)
    )


# ----- mode statistics against a Gaussian mixture given as arrays -----


@struct.dataclass
class ModeStatistics:
    """Samples grouped by their most probable mixture component.

    Attributes:
      counts: [K] number of samples assigned to each mode.
      weights: [K] fraction of samples assigned to each mode.
      means: [K, D] sample mean per mode (NaN for an empty mode).
      covs: [K, D, D] unbiased sample covariance per mode (NaN for a mode with fewer than 2 samples).
    """

    counts: Array
    weights: Array
    means: Array
    covs: Array


@jax.jit
def assign_modes(x: Array, weights: Array, means: Array, covs: Array) -> Array:
    """Index of the component with the largest posterior responsibility w_k N(x; mu_k, S_k) for each sample.

    Args:
      x: [N, ...] samples, flattened to [N, D].
      weights: [K] mixture weights (need not be normalised).
      means: [K, ...] component means, flattened to [K, D].
      covs: [K, D, D] component covariances.

    Returns:
      [N] int32 mode indices.
    """
    x, means = _flatten_pair(x, means)
    log_pdf = jax.vmap(jax.scipy.stats.multivariate_normal.logpdf, in_axes=(None, 0, 0))
    log_n = log_pdf(x, means, covs)  # [K, N]
    return jnp.argmax(jnp.log(jnp.asarray(weights))[:, None] + log_n, axis=0).astype(jnp.int32)


@jax.jit
def mode_statistics(x: Array, weights: Array, means: Array, covs: Array) -> ModeStatistics:
    """Per-mode sample weights, means and covariances after `assign_modes` (same arguments)."""
    modes = jax.nn.one_hot(assign_modes(x, weights, means, covs), len(weights))  # [N, K]
    x = jnp.reshape(x, (x.shape[0], -1))
    counts = jnp.sum(modes, axis=0)
    mode_means = modes.T @ x / counts[:, None]
    diff = x[:, None, :] - mode_means[None]  # [N, K, D]
    mode_covs = jnp.einsum("nk,nkd,nke->kde", modes, diff, diff) / (counts - 1.0)[:, None, None]
    return ModeStatistics(counts=counts, weights=counts / x.shape[0], means=mode_means, covs=mode_covs)


# ----- digits classifier for sample quality -----


class _DigitsNet(nn.Module):
    """A two-hidden-layer MLP: on CPU it trains several times faster than a small CNN, as accurately."""

    num_hidden: int = 256
    num_features: int = 64

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x: [B, H, W, C] -> (logits [B, 10], features [B, num_features])."""
        hidden = nn.relu(nn.Dense(self.num_hidden)(x.reshape(x.shape[0], -1)))
        features = nn.relu(nn.Dense(self.num_features)(hidden))
        return nn.Dense(_NUM_DIGIT_CLASSES)(features), features


@jax.jit
def _apply_digits_net(params: dict, x: Array) -> tuple[Array, Array]:
    return _DigitsNet().apply(params, x)


@struct.dataclass
class DigitsClassifier:
    """A trained digits classifier; inputs are images in the scaling of the dataset it was trained on.

    It is a pytree, so callers that want to keep one can save `params` with `flax.serialization`.

    Attributes:
      params: network parameters.
      image_shape: (H, W, C) it accepts.
    """

    params: dict
    image_shape: tuple[int, ...] = struct.field(pytree_node=False)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x: [B, H, W, C] -> (class probabilities [B, 10], penultimate features [B, 64]), in chunks."""
        shape = tuple(x.shape[1:])
        if shape != self.image_shape:
            raise ValueError(f"the classifier takes images shaped {self.image_shape}; got {shape}.")
        chunks = range(0, x.shape[0], _APPLY_CHUNK)
        outputs = [_apply_digits_net(self.params, x[i : i + _APPLY_CHUNK]) for i in chunks]
        logits, features = (jnp.concatenate(parts) for parts in zip(*outputs))
        return jax.nn.softmax(logits), features


@functools.partial(jax.jit, static_argnames="learning_rate")
def _classifier_step(params: dict, opt_state, x: Array, labels: Array, learning_rate: float):
    """One Adam step on the cross-entropy of x: [B, H, W, C] with integer labels: [B]."""

    def loss_fn(p: dict) -> Array:
        logits, _ = _DigitsNet().apply(p, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    updates, opt_state = optax.adam(learning_rate).update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state


def train_digits_classifier(
    dataset: Dataset,
    *,
    seed: int = 0,
    num_steps: int = 600,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
) -> DigitsClassifier:
    """Trains `_DigitsNet` with Adam on the training split of a labelled image dataset, deterministically.

    Batches come from `dataset.train_batch`, so the classifier sees images exactly as a score model would
    (same size, scaling and dequantization). On the sklearn digits (seed 0, test_fraction 0.1, 180 test
    images) it reaches 0.983-0.989 test accuracy at 8x8 and 16x16, in [0, 1] or [-1, 1], training in 1.5-3 s
    on a CPU.

    Args:
      dataset: labelled images, e.g. `build_dataset(DataConfig("digits", image_size=16, centered=True))`.
      seed: initialises the parameters.
      num_steps: Adam steps.
      batch_size: examples per step.
      learning_rate: Adam step size.
    """
    if dataset.train_labels is None or not dataset.is_image:
        raise ValueError(f"the digits classifier needs labelled images; dataset {dataset.name!r} has none.")
    params = _DigitsNet().init(jax.random.PRNGKey(seed), jnp.zeros((1,) + dataset.shape))
    opt_state = optax.adam(learning_rate).init(params)
    for i in range(num_steps):
        labels = dataset.train_labels[dataset.batch_indices(i, batch_size)]
        x = dataset.train_batch(i, batch_size)
        params, opt_state = _classifier_step(params, opt_state, x, labels, learning_rate)
    return DigitsClassifier(params=params, image_shape=dataset.shape)


def classifier_accuracy(classifier: DigitsClassifier, x: Array, labels: Array) -> float:
    """Fraction of images x: [N, H, W, C] whose most probable class equals labels: [N]."""
    probs, _ = classifier(x)
    return float(jnp.mean(jnp.argmax(probs, axis=1) == jnp.asarray(labels)))


def mean_max_probability(probs: Array) -> float:
    """Mean confidence of the classifier, E[max_c p(c | x)], from probs: [N, classes]; 1 means unambiguous."""
    return float(jnp.mean(jnp.max(probs, axis=1)))


def class_histogram_entropy(probs: Array) -> float:
    """Entropy in nats of the histogram of predicted classes, from probs: [N, classes].

    log(classes) means every class is predicted equally often; 0 means a single class (mode collapse).
    """
    counts = jnp.bincount(jnp.argmax(probs, axis=1), length=probs.shape[1])
    freq = counts / probs.shape[0]
    return float(-jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.where(freq > 0, freq, 1.0)), 0.0)))


@dataclasses.dataclass(frozen=True)
class SampleQuality:
    """Classifier-based quality of image samples (see `digits_sample_quality`)."""

    confidence: float
    class_entropy: float
    frechet: float


def digits_sample_quality(classifier: DigitsClassifier, samples: Array, reference: Array) -> SampleQuality:
    """Confidence, class coverage and feature-space Fréchet distance of generated digits.

    Reports the mean max-probability and the class-histogram entropy of the samples, and their Fréchet
    distance to reference images in the classifier's penultimate-layer feature space.

    Args:
      classifier: from `train_digits_classifier`.
      samples: [N, H, W, C] generated images, in the dataset's scaling.
      reference: [M, H, W, C] real images (e.g. the scaled test split), in the same scaling.
    """
    probs, feats = classifier(samples)
    _, ref_feats = classifier(reference)
    return SampleQuality(
        confidence=mean_max_probability(probs),
        class_entropy=class_histogram_entropy(probs),
        frechet=frechet_distance(feats, ref_feats),
    )
