"""2-D toy distributions, each with what is known about it exactly: support, modes, density and entropy.

Every toy is defined by how it is drawn, and that definition is the only place its shape is written down:
the sampler and the density, support, modes and entropy that `scoresde.evaluation` scores models with all
derive from it.

* checkerboard: uniform on the 16 cells [i, i + 1) x [j, j + 1) with i + j even of the unit grid over
  [-2, 2) x [-4, 4): x_1 ~ U[-2, 2), x_2 = u + 2 m + (floor(x_1) mod 2), u ~ U[0, 1), m uniform on
  {-2, -1, 0, 1}. Its density is 1/16 on the cells, so its differential entropy is log 16 exactly; the cells
  are its modes.
* noisy curves (`NoisyCurves`): x = c_b(u) + sigma z with the branch b uniform on {0, ..., K - 1},
  u ~ U[0, 1) and z ~ N(0, I):
  - eight_gaussians: c_b = 2 (cos(2 pi b / 8), sin(2 pi b / 8)) (constant curves), sigma = 0.1;
  - rings: c_b(u) = 0.75 (b + 1) (cos 2 pi u, sin 2 pi u), b < 4, sigma = 0.08;
  - two_moons: c_0(u) = 1.5 (cos pi u - 1/2, sin pi u - 1/4), c_1(u) = 1.5 (1/2 - cos pi u, 1/4 - sin pi u),
    sigma = 0.08;
  - swiss_roll: c_0(u) = s (cos s, sin s) / 5 with s = 3 pi (1 + 2 u) / 2, sigma = 0.1.
  The branches are the modes. Such a density is a convolution with no closed form; it is computed from the
  definition by quadrature, p(x) = sum_b (1 / K) int_0^1 N(x; c_b(u), sigma^2 I) du by the midpoint rule with
  nodes at most sigma / 4 apart along each curve. That is exact for a constant curve; along a smooth closed
  curve the rule's error falls like exp(-2 pi^2 sigma^2 / spacing^2), and only the ends of an open curve
  contribute an O(spacing^2) error near them. The entropy -int p log p is the trapezoidal sum of -p log p on a
  grid of spacing sigma / 3 over the nodes' box widened by 8 sigma; its error is estimated by repeating the
  sum with both spacings doubled.

A point is in a noisy toy's support when it lies within `SUPPORT_SIGMAS` noise standard deviations of the
noiseless set (a mode's centre, a curve): exact draws of a constant curve land there with probability
1 - exp(-k^2 / 2) (0.989 for k = 3), of a long smooth curve with about P(|N(0, 1)| <= k) (0.997).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import ModuleType
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial

from scoresde.toy import GaussianMixture

Array = jax.Array
# (u: [n] in [0, 1), xp: numpy or jax.numpy) -> points: [n, 2], written once for the sampler (jax) and the
# density (numpy, float64)
Curve = Callable[[Any, ModuleType], Any]

SUPPORT_SIGMAS = 3.0
_NODE_SPACING = 0.25  # nodes per curve at most this many noise standard deviations apart
_GRID_SPACING = 1.0 / 3.0  # entropy grid spacing, in noise standard deviations
_GRID_MARGIN = 8.0  # the entropy grid extends this many noise standard deviations past every node
_LENGTH_POINTS = 4097  # points that measure a curve's length
_CHUNK = 1024  # points per block of a density sum over every node


class Toy(Protocol):
    """What a 2-D toy distribution knows about itself; see the module docstring for each definition."""

    @property
    def num_modes(self) -> int:
        """K: the modes (cells, components, curves), equally weighted."""

    def sample(self, key: Array, n: int) -> Array:
        """n exact draws: [n, 2] float32."""

    def mode_of(self, x: np.ndarray) -> np.ndarray:
        """x: [n, 2] -> [n] int: the mode each point lies in, or -1 outside the support."""

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """x: [n, 2] -> [n] float64 log density (-inf outside the support where it is bounded)."""

    def entropy(self) -> tuple[float, float]:
        """Differential entropy -E log p(x) in nats, and a bound on its numerical error."""


@dataclasses.dataclass(frozen=True)
class Checkerboard:
    """Uniform on 16 unit cells of [-2, 2) x [-4, 4), a checkerboard pattern (module docstring)."""

    columns: int = 4
    rows: int = 8

    @property
    def num_modes(self) -> int:
        return self.columns * self.rows // 2

    def sample(self, key: Array, n: int) -> Array:
        k1, k2, k3 = jax.random.split(key, 3)
        x1 = jax.random.uniform(k1, (n,), minval=-self.columns / 2, maxval=self.columns / 2)
        m = jax.random.randint(k3, (n,), -self.rows // 4, self.rows // 4)
        x2 = jax.random.uniform(k2, (n,)) + 2.0 * m + jnp.floor(x1) % 2
        return jnp.stack([x1, x2], axis=1).astype(jnp.float32)

    def mode_of(self, x: np.ndarray) -> np.ndarray:
        """The cell index (column-major over the occupied cells), or -1 off the occupied cells."""
        i = np.floor(np.asarray(x, np.float64)[:, 0]) + self.columns // 2
        j = np.floor(np.asarray(x, np.float64)[:, 1]) + self.rows // 2
        inside = (i >= 0) & (i < self.columns) & (j >= 0) & (j < self.rows) & ((i + j) % 2 == 0)
        return np.where(inside, i * (self.rows // 2) + j // 2, -1).astype(np.int64)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.mode_of(x) >= 0, -math.log(self.num_modes), -np.inf)

    def entropy(self) -> tuple[float, float]:
        return math.log(self.num_modes), 0.0


@dataclasses.dataclass(frozen=True)
class NoisyCurves:
    """x = c_b(u) + sigma z: b uniform over the curves, u ~ U[0, 1), z ~ N(0, I) (module docstring).

    Attributes:
      curves: the noiseless curves c_b, each (u: [n], xp) -> [n, 2]; a constant curve is a Gaussian mode.
      sigma: the noise standard deviation.
    """

    curves: tuple[Curve, ...]
    sigma: float

    @property
    def num_modes(self) -> int:
        return len(self.curves)

    def sample(self, key: Array, n: int) -> Array:
        return self.sample_labelled(key, n)[0]

    def sample_labelled(self, key: Array, n: int) -> tuple[Array, Array]:
        """`sample`'s n draws [n, 2] float32 and the branch each was drawn from, its label: [n] int32."""
        k_branch, k_u, k_noise = jax.random.split(key, 3)
        u = jax.random.uniform(k_u, (n,))
        points = jnp.stack([curve(u, jnp) for curve in self.curves])  # [K, n, 2]
        branch = jax.random.randint(k_branch, (n,), 0, self.num_modes)
        x = points[branch, jnp.arange(n)] + self.sigma * jax.random.normal(k_noise, (n, 2))
        return x.astype(jnp.float32), branch.astype(jnp.int32)

    def gaussian_mixture(self) -> GaussianMixture:
        """The exact `toy.GaussianMixture` of constant curves (eight_gaussians): N(c_b, sigma^2 I), equally
        weighted, component b being the label `sample_labelled` gives; ValueError for curves that move."""
        ends = [np.asarray(curve(np.array([0.0, 0.5]), np), np.float64) for curve in self.curves]
        if any(not np.allclose(end[0], end[1]) for end in ends):
            raise ValueError("only a toy of constant curves (Gaussian modes) is a Gaussian mixture.")
        covs = np.tile(self.sigma**2 * np.eye(2), (self.num_modes, 1, 1))
        return GaussianMixture.create(np.full(self.num_modes, 1.0 / self.num_modes),
                                      np.stack([end[0] for end in ends]), covs)

    @functools.cache
    def nodes(self, spacing: float = _NODE_SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Midpoint-rule nodes along every curve, at most spacing * sigma apart.

        Returns: points [M, 2] float64, log quadrature weights [M] (summing to one), branch of each node [M].
        """
        points, log_weights, branches = [], [], []
        for b, curve in enumerate(self.curves):
            m = max(1, math.ceil(self._length(curve) / (spacing * self.sigma)))
            points.append(curve((np.arange(m) + 0.5) / m, np))
            log_weights.append(np.full(m, -math.log(m * self.num_modes)))
            branches.append(np.full(m, b))
        return np.concatenate(points), np.concatenate(log_weights), np.concatenate(branches)

    @staticmethod
    def _length(curve: Curve) -> float:
        points = curve(np.linspace(0.0, 1.0, _LENGTH_POINTS), np)
        return float(np.sum(np.linalg.norm(np.diff(points, axis=0), axis=1)))

    def mode_of(self, x: np.ndarray) -> np.ndarray:
        """The curve nearest to x when it lies within SUPPORT_SIGMAS sigma of it, else -1."""
        _, _, branches = self.nodes()
        distance, nearest = self._tree().query(np.asarray(x, np.float64))
        return np.where(distance <= SUPPORT_SIGMAS * self.sigma, branches[nearest], -1)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """The quadrature sum over every node, blocks of `_CHUNK` points at a time."""
        points, log_weights, _ = self.nodes()
        x = np.asarray(x, np.float64).reshape(-1, 2)
        norms = np.sum(points**2, axis=1)
        log_p = []
        for block in np.split(x, range(_CHUNK, len(x), _CHUNK)):
            distance2 = np.sum(block**2, axis=1)[:, None] - 2 * block @ points.T + norms
            log_p.append(_logsumexp(log_weights - distance2 / (2 * self.sigma**2)))
        return np.concatenate(log_p or [np.zeros(0)]) - math.log(2 * math.pi * self.sigma**2)

    @functools.cache
    def _tree(self) -> scipy.spatial.cKDTree:
        return scipy.spatial.cKDTree(self.nodes()[0])

    @functools.cache
    def entropy(self) -> tuple[float, float]:
        """-int p log p on a grid (module docstring); the error is its change when both spacings double."""
        fine, coarse = self._grid_entropy(1.0), self._grid_entropy(2.0)
        return fine, abs(fine - coarse)

    def _grid_entropy(self, scale: float) -> float:
        """The trapezoidal sum of -p log p over a grid, p from nodes `scale` times the usual spacing apart.

        N(x; c, sigma^2 I) factorises over the two coordinates, so p on the grid's [n_1, n_2] points is one
        matrix product of the per-axis Gaussian factors: [n_1, M] x [M, n_2].
        """
        points, log_weights, _ = self.nodes(scale * _NODE_SPACING)
        h = scale * _GRID_SPACING * self.sigma
        low = points.min(axis=0) - _GRID_MARGIN * self.sigma
        high = points.max(axis=0) + _GRID_MARGIN * self.sigma
        factors = [np.exp(-(np.arange(lo, hi + h, h)[:, None] - c) ** 2 / (2 * self.sigma**2))
                   for lo, hi, c in zip(low, high, points.T)]
        p = (factors[0] * np.exp(log_weights)) @ factors[1].T / (2 * math.pi * self.sigma**2)
        p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return float(-np.sum(p_log_p) * h**2)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis of a: [n, M] -> [n]."""
    top = a.max(axis=1)
    return top + np.log(np.sum(np.exp(a - top[:, None]), axis=1))


def _point(angle: float) -> Curve:
    centre = [2 * math.cos(angle), 2 * math.sin(angle)]
    return lambda u, xp: xp.broadcast_to(xp.asarray(centre), u.shape + (2,))


def _circle(radius: float) -> Curve:
    return lambda u, xp: radius * xp.stack([xp.cos(2 * math.pi * u), xp.sin(2 * math.pi * u)], axis=-1)


def _moon(sign: float) -> Curve:
    return lambda u, xp: 1.5 * sign * xp.stack([xp.cos(math.pi * u) - 0.5, xp.sin(math.pi * u) - 0.25], -1)


def _swiss_roll(u, xp: ModuleType):
    s = 1.5 * math.pi * (1.0 + 2.0 * u)
    return xp.stack([s * xp.cos(s), s * xp.sin(s)], axis=-1) / 5.0


TOYS: dict[str, Toy] = {
    "checkerboard": Checkerboard(),
    "eight_gaussians": NoisyCurves(tuple(_point(2 * math.pi * b / 8) for b in range(8)), sigma=0.1),
    "rings": NoisyCurves(tuple(_circle(0.75 * (b + 1)) for b in range(4)), sigma=0.08),
    "two_moons": NoisyCurves((_moon(1.0), _moon(-1.0)), sigma=0.08),
    "swiss_roll": NoisyCurves((_swiss_roll,), sigma=0.1),
}
TOY_NAMES = tuple(sorted(TOYS))


def build_toy(name: str) -> Toy:
    """The named toy distribution; ValueError listing the valid names."""
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; valid names: {list(TOY_NAMES)}.")
    return TOYS[name]


def sample_toy(name: str, key: Array, n: int) -> Array:
    """n draws from a named 2-D toy distribution: [n, 2] float32. Names: see `TOY_NAMES`."""
    return build_toy(name).sample(key, n)


def sample_toy_labelled(name: str, key: Array, n: int) -> tuple[Array, Array | None]:
    """`sample_toy`'s n draws (the same points) with the branch of each as its label [n] int32 (the noisy
    curves: eight_gaussians' mode, rings' ring, two_moons' moon), or None (checkerboard)."""
    toy = build_toy(name)
    return toy.sample_labelled(key, n) if isinstance(toy, NoisyCurves) else (toy.sample(key, n), None)
