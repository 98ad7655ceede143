"""Exact-score oracle: Gaussian mixtures, whose every marginal has a closed-form density and score.

A Gaussian mixture stays a Gaussian mixture under every linear forward SDE: component k of p_t is
N(alpha(t) mu_k, alpha(t)^2 Sigma_k + sigma(t)^2 I). Its log density and score are therefore closed-form at
every t, which is what lets the tests and benchmarks measure sampler error, convergence order and likelihood
error instead of eyeballing samples.

Each covariance is diagonalised once, Sigma_k = U_k diag(l_k) U_k^T; the perturbed covariance shares U_k, with
eigenvalues alpha^2 l_k + sigma^2, so evaluating p_t costs one projection per component and no factorisation.
"""

from __future__ import annotations

import math
import pathlib
import zipfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scoresde.sde import SDE

Array = jax.Array


@struct.dataclass
class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) over events shaped `event_shape` (flattened to D = prod(event_shape)).

    Build it with `GaussianMixture.create(weights, means, covs)`; weights: [K], means: [K, *event_shape],
    covs: [K, D, D] symmetric positive definite.
    """

    log_weights: Array  # [K]
    means: Array  # [K, D]
    eigvecs: Array  # [K, D, D], columns are eigenvectors of Sigma_k
    eigvals: Array  # [K, D]
    event_shape: tuple[int, ...] = struct.field(pytree_node=False)

    @classmethod
    def create(cls, weights, means, covs) -> "GaussianMixture":
        weights, means, covs = (np.asarray(a, np.float64) for a in (weights, means, covs))
        if not all(np.all(np.isfinite(a)) for a in (weights, means, covs)):
            raise ValueError("weights, means and covs must be finite.")
        k = weights.shape[0] if weights.ndim == 1 else -1
        if weights.ndim != 1 or k < 1 or np.any(weights <= 0):
            raise ValueError(f"weights must be a non-empty 1-D array of positive numbers; got {weights!r}.")
        if means.shape[0] != k or means.ndim < 2:
            raise ValueError(f"means must be shaped [K={k}, ...event]; got shape {means.shape}.")
        d = int(np.prod(means.shape[1:]))
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be shaped [K, D, D] = {(k, d, d)}; got shape {covs.shape}.")
        if not np.allclose(covs, np.swapaxes(covs, 1, 2), atol=1e-10):
            raise ValueError("covs must be symmetric.")
        eigvals, eigvecs = np.linalg.eigh(covs)
        if np.any(eigvals <= 0):
            raise ValueError(f"covs must be positive definite; smallest eigenvalue {eigvals.min():.3g}.")
        return cls(
            log_weights=jnp.asarray(np.log(weights / weights.sum()), jnp.float32),
            means=jnp.asarray(means.reshape(k, d), jnp.float32),
            eigvecs=jnp.asarray(eigvecs, jnp.float32),
            eigvals=jnp.asarray(eigvals, jnp.float32),
            event_shape=tuple(means.shape[1:]),
        )

    @property
    def weights(self) -> Array:
        return jnp.exp(self.log_weights)

    @property
    def covs(self) -> Array:
        """[K, D, D]."""
        return jnp.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def sample(self, key: Array, n: int) -> Array:
        """n exact draws: [n, *event_shape]."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))
        z = jax.random.normal(k_noise, (n, self.dim))
        x = self.means[comp] + jnp.einsum("nij,nj->ni", self.eigvecs[comp], jnp.sqrt(self.eigvals[comp]) * z)
        return x.reshape((n,) + self.event_shape)

    def _components(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array]:
        """Per-component log densities and whitened residuals under N(alpha mu_k, alpha^2 S_k + sigma^2 I).

        x: [B, *event], alpha, sigma: [B] -> log N_k(x): [B, K] and U_k^T (x - alpha mu_k) / variances:
        [B, K, D].
        Both projections are single [B, D] x [D, K D] products: one matmul serves all components.
        """
        num, (k, d) = x.shape[0], self.means.shape
        var = alpha[:, None, None] ** 2 * self.eigvals + sigma[:, None, None] ** 2  # [B, K, D]
        projected_means = jnp.einsum("kd,kdj->kj", self.means, self.eigvecs)
        proj = x.reshape(num, d) @ jnp.transpose(self.eigvecs, (1, 0, 2)).reshape(d, k * d)
        y = proj.reshape(num, k, d) - alpha[:, None, None] * projected_means
        log_n = -0.5 * jnp.sum(y**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return log_n, y / var

    def _log_prob(self, x: Array, alpha: Array, sigma: Array) -> Array:
        log_n, _ = self._components(x, alpha, sigma)
        return jax.nn.logsumexp(self.log_weights + log_n, axis=-1)

    def _score(self, x: Array, alpha: Array, sigma: Array, log_weights: Array | None = None) -> Array:
        """The score of sum_k w_k N_k at x; log_weights: [K] or [B, K] (default: the mixture's)."""
        log_n, y_over_var = self._components(x, alpha, sigma)
        log_weights = self.log_weights if log_weights is None else log_weights
        resp = jax.nn.softmax(log_weights + log_n, axis=-1)  # [B, K]
        k, d = self.means.shape
        weighted = (resp[:, :, None] * y_over_var).reshape(x.shape[0], k * d)
        return -(weighted @ jnp.transpose(self.eigvecs, (0, 2, 1)).reshape(k * d, d)).reshape(x.shape)

    def log_prob(self, x: Array) -> Array:
        """log density of the mixture itself: x: [B, *event] -> [B]."""
        ones = jnp.ones(x.shape[:1], x.dtype)
        return self._log_prob(x, ones, jnp.zeros_like(ones))

    def log_prob_fn(self, sde: SDE) -> Callable[[Array, Array], Array]:
        """log p_t(x) of the marginal at time t under `sde`: (x: [B, *event], t: [B]) -> [B]."""
        return lambda x, t: self._log_prob(x, sde.alpha(t), sde.sigma(t))

    def score_fn(self, sde: SDE) -> Callable[[Array, Array], Array]:
        """Exact score grad_x log p_t(x) of the marginal at time t: (x, t: [B]) -> shaped like x."""
        return lambda x, t: self._score(x, sde.alpha(t), sde.sigma(t))

    def log_posterior_fn(self, sde: SDE) -> Callable[[Array, Array], Array]:
        """log p(k | x_t) of the components given a draw of the marginal at time t: (x, t: [B]) -> [B, K].

        The exact noise-conditional classifier of a mixture: with it, classifier guidance at scale 1 turns the
        mixture score into component k's (Bayes: grad log p_t(x | k) = grad log p_t(x) + grad log p(k | x_t)).
        """

        def log_posterior(x, t):
            log_n, _ = self._components(x, sde.alpha(t), sde.sigma(t))
            return jax.nn.log_softmax(self.log_weights + log_n, axis=-1)

        return log_posterior

    def conditional_score_fn(self, sde: SDE) -> Callable[[Array, Array, Array], Array]:
        """Exact class-conditional score (x, t: [B], cond: [B] int) -> shaped like x, cond = K the null class.

        cond = k in 0 .. K-1 is the score of component k's marginal at t, cond = K that of the whole mixture:
        the oracle of a class-conditional network trained with label dropout to a null class.
        """
        k = self.log_weights.shape[0]

        def score(x, t, cond):
            one_hot = jnp.where(jnp.arange(k) == cond[:, None], 0.0, -jnp.inf)
            log_weights = jnp.where((cond == k)[:, None], self.log_weights, one_hot)
            return self._score(x, sde.alpha(t), sde.sigma(t), log_weights)

        return score

    def component(self, k: int) -> "GaussianMixture":
        """Component k alone, N(mu_k, Sigma_k), as a one-component mixture."""
        pick = lambda a: a[k : k + 1]
        return self.replace(
            log_weights=jnp.zeros((1,)), means=pick(self.means), eigvecs=pick(self.eigvecs),
            eigvals=pick(self.eigvals),
        )

    def linear_map(self, matrix) -> "GaussianMixture":
        """The distribution of A x for x from this mixture, A: [D, D] invertible (events flattened)."""
        a = np.asarray(matrix, np.float64)
        means, covs = (np.asarray(v, np.float64) for v in (self.means, self.covs))
        return GaussianMixture.create(np.asarray(self.weights), means @ a.T, a @ covs @ a.T)

    def condition(self, known, values) -> "GaussianMixture":
        """The exact conditional of the unknown coordinates given x[known] = values[known].

        p(x_B | x_A = a) = sum_k w'_k N(mu_kB + S_kBA S_kAA^-1 (a - mu_kA), S_kBB - S_kBA S_kAA^-1 S_kAB) with
        w'_k proportional to w_k N(a; mu_kA, S_kAA) (Bishop 2006, Eqs. 2.81-2.82): a mixture over the
        unknown coordinates, flattened in C order. known: event-shaped booleans (some but not all true);
        values: event-shaped.
        """
        known = np.asarray(known, bool).reshape(-1)
        if known.shape != (self.dim,) or known.all() or not known.any():
            raise ValueError(f"known must be {self.event_shape}-shaped, with some but not all entries true.")
        a = np.asarray(values, np.float64).reshape(-1)[known]
        means, covs = (np.asarray(v, np.float64) for v in (self.means, self.covs))
        s_aa, s_ba = covs[:, known][:, :, known], covs[:, ~known][:, :, known]
        gain = np.linalg.solve(s_aa, np.swapaxes(s_ba, 1, 2)).transpose(0, 2, 1)  # S_BA S_AA^-1: [K, B, A]
        resid = a - means[:, known]
        cond_means = means[:, ~known] + np.einsum("kba,ka->kb", gain, resid)
        cond_covs = covs[:, ~known][:, :, ~known] - np.einsum("kba,kca->kbc", gain, s_ba)
        log_n = -0.5 * (
            np.einsum("ka,ka->k", resid, np.linalg.solve(s_aa, resid[:, :, None])[:, :, 0])
            + np.linalg.slogdet(2 * np.pi * s_aa)[1]
        )
        log_w = np.asarray(self.log_weights, np.float64) + log_n
        return GaussianMixture.create(np.exp(log_w - log_w.max()), cond_means, cond_covs)

    def marginal(self, sde: SDE, t: float) -> "GaussianMixture":
        """The mixture p_t itself, with covariances alpha^2 Sigma_k + sigma^2 I, as a GaussianMixture."""
        tt = jnp.full((1,), t)
        alpha, sigma = sde.alpha(tt)[0], sde.sigma(tt)[0]
        return self.replace(means=alpha * self.means, eigvals=alpha**2 * self.eigvals + sigma**2)

    def responsibilities(self, x: Array) -> Array:
        """Posterior mode probabilities p(k | x) under the mixture: [B, K]."""
        ones = jnp.ones(x.shape[:1], x.dtype)
        log_n, _ = self._components(x, ones, jnp.zeros_like(ones))
        return jax.nn.softmax(self.log_weights + log_n, axis=-1)


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def mixture_2d() -> GaussianMixture:
    """Three unequal, anisotropic, rotated modes in 2-D: the default exact-score problem."""
    scales = [(0.30, 0.05), (0.10, 0.25), (0.15, 0.15)]
    covs = [_rotation(a) @ np.diag(np.square(s)) @ _rotation(a).T for a, s in zip((0.5, -0.3, 0.0), scales)]
    return GaussianMixture.create(
        weights=[0.5, 0.3, 0.2], means=[[-1.0, -0.5], [1.0, 0.5], [0.0, 1.2]], covs=covs
    )


def mixture_inpainting() -> GaussianMixture:
    """Five equal round modes in 2-D on a zigzag, x_1 = +-1.5 alternating along x_0 = -2 .. 2 (std 0.35).

    Which mode x_1 falls in is decided by x_0: the inpainting problem of tests/test_guidance.py (x_0 known).
    """
    means = np.stack([np.arange(-2.0, 3.0), 1.5 * np.array([1, -1, 1, -1, 1])], axis=1)
    covs = np.stack([0.35**2 * np.eye(2)] * 5)
    return GaussianMixture.create(weights=np.full(5, 0.2), means=means, covs=covs)


def mixture_image(shape: tuple[int, int, int] = (4, 4, 2)) -> GaussianMixture:
    """Two unequal modes over [H, W, C] events with distinct anisotropic covariances (fixed seed)."""
    d = math.prod(shape)
    rng = np.random.default_rng(0)
    means = rng.uniform(-1.0, 1.0, size=(2, d))
    covs = []
    for k in range(2):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append(q @ np.diag(np.geomspace(0.005, 0.05 * (k + 1), d)) @ q.T)
    return GaussianMixture.create(weights=[0.7, 0.3], means=means.reshape((2,) + shape), covs=np.stack(covs))


MIXTURE_ARRAYS = ("weights", "means", "covs")


def load_mixture(path: str | pathlib.Path) -> GaussianMixture:
    """A GaussianMixture from an .npz file with arrays weights [K], means [K, ...event], covs [K, D, D].

    Raises:
      ValueError: if the file is missing, is not an .npz archive, lacks an array, or the arrays are not a
        valid mixture (see `GaussianMixture.create`).
    """
    where = f"mixture file {str(path)!r}"
    expected = "a mixture .npz holds arrays weights [K], means [K, ...], covs [K, D, D]"
    if not pathlib.Path(path).is_file():
        raise ValueError(f"{where} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where} is not an .npz archive; {expected}.")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in MIXTURE_ARRAYS if name not in arrays.files]
            if missing:
                raise ValueError(f"missing array(s) {missing}, found {sorted(arrays.files)}")
            weights, means, covs = (arrays[name] for name in MIXTURE_ARRAYS)
        return GaussianMixture.create(weights, means, covs)
    except (ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}: {str(e).rstrip('.')}; {expected}.") from e


def build_problem(name: str) -> GaussianMixture:
    """Named exact-score problems shared by the CLI, the tests and the benchmarks, or a mixture .npz file."""
    if name.endswith(".npz"):
        return load_mixture(name)
    problems = {
        "mixture_2d": mixture_2d, "mixture_image": mixture_image, "mixture_inpainting": mixture_inpainting
    }
    if name not in problems:
        raise ValueError(
            f"unknown exact-score problem {name!r}; valid names: {sorted(problems)}, "
            "or a path to a mixture .npz."
        )
    return problems[name]()
