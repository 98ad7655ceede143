"""Sampling under a linear constraint on the state: inpainting and colorization, for every fixed-step sampler.

An observation fixes coordinates of the data in an orthonormal basis, u = Q^T x0, u[mask] = y[mask] (Q = I
for inpainting; for colorization Q's first colour vector is the grey direction, Song et al. 2021, App. I).
Every SDE here is isotropic, so the forward process acts on u as on x: u_t = alpha(t) u_0 + sigma(t) z.

The methods plug into the one loop of the fixed-step samplers as its per-step constraint (`base.scan_grid`):

* `Replacement` (Song et al. 2021, App. I; the reference implementation): after each step to time s, the known
  part of u is overwritten by a fresh draw of alpha(s) y + sigma(s) z. The unknown part never sees how the
  known part would have evolved, so it samples the conditional only when the two are nearly independent.
* `RePaint` (Lugmayr et al. 2022, Algorithm 1 with jump length 1): each step is taken `resamplings` times;
  between takes, the state is carried back from s to t by the forward kernel N(alpha_{t|s} x, sigma_{t|s}^2),
  which lets the unknown part settle under the replaced known part before the walk moves on.
* `PiGDM` (Song, Vahdat, Mardani & Kautz 2023, Eqs. 7-8, noise-free y): the score gains
  grad_x log N(y; H x0(x_t), r_t^2 I) with H = the rows of Q^T the mask keeps, x0 Tweedie's denoiser and
  r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2) (the posterior variance of x0 under a unit Gaussian prior),
  by one vector-Jacobian product of the score per evaluation; the replacement step then runs as well.
  Its Gaussian around E[x_0 | x_t] misjudges a multimodal posterior: where the known part decides the mode,
  the posterior's mean can match y while no mode does.
* `SMCDiff` (Trippe et al. 2022): a particle filter that weights samples by how well the model's reverse
  kernel predicts the known part's forward path; it samples p(x | y) as the particles grow (the default).

A method is a small frozen value: `guide` transforms the score function, `constraint` builds the hook.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from scoresde.samplers.base import (
    Constraint, FixedStepSampler, per_example, require, select, state, with_state,
)
from scoresde.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array
Basis = Callable[[Array], Array]


def _identity(x: Array) -> Array:
    return x


class Observation(NamedTuple):
    """What is known: values: [B, ...] in the basis, mask: [B, ...] (1 known, 0 unknown) in the basis.

    to_basis maps x to u = Q^T x, from_basis back (both orthonormal, x-shaped to x-shaped).
    """

    values: Array
    mask: Array
    to_basis: Basis = _identity
    from_basis: Basis = _identity

    def write(self, x: Array, known: Array) -> Array:
        """x with the known coordinates of its basis representation set to known: [B, ...] (in the basis)."""
        u = self.to_basis(x)
        return self.from_basis(jnp.where(self.mask > 0, known, u))


def project(key: Array, sde: SDE, obs: Observation, x: Array, t: Array) -> Array:
    """x at time t (scalar) with its known part replaced by a forward-process draw alpha(t) y + sigma(t) z."""
    tt = per_example(t, x)
    noise = jax.random.normal(key, x.shape, x.dtype)
    noisy = batch_broadcast(sde.alpha(tt), x) * obs.values + batch_broadcast(sde.sigma(tt), x) * noise
    return obs.write(x, noisy)


def renoise(key: Array, sde: SDE, x: Array, s: Array, t: Array) -> Array:
    """A draw of x_t | x_s from the forward kernel, s < t (scalars): alpha_{t|s} x + sigma_{t|s} z."""
    alpha_ts, sigma_ts = (batch_broadcast(v, x) for v in sde.transition(per_example(t, x), per_example(s, x)))
    return alpha_ts * x + sigma_ts * jax.random.normal(key, x.shape, x.dtype)


def _check_count(method: object, name: str, minimum: int) -> None:
    value = getattr(method, name)
    require(
        isinstance(value, int) and value >= minimum,
        f"{type(method).__name__}: {name} must be an integer >= {minimum}; got {name}={value!r}.",
    )


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Replace the known part by a forward-process draw after every step (Song et al. 2021, App. I)."""

    @property
    def takes(self) -> int:
        """How many times each step is taken."""
        return 1

    def guide(self, sde: SDE, score_fn: ScoreFn, obs: Observation) -> ScoreFn:
        """The score function the sampler runs on: here the unconditional one."""
        return score_fn

    @property
    def particles(self) -> int:
        """Samples run per example (the batch the sampler sees is this many times larger)."""
        return 1

    def nfe(self, nfe: Array, sampler: FixedStepSampler) -> Array:
        """Evaluations made, from those `sample` counted with one take of each step: every further take
        repeats the evaluations of the steps that run through the constraint."""
        return nfe + (self.takes - 1) * sampler.constrained_cost()[1]

    def constraint(
        self, key: Array, sde: SDE, score_fn: ScoreFn, obs: Observation, sampler: FixedStepSampler
    ) -> Constraint:
        """The per-step hook: take the step, replace, and for RePaint carry back to t and take it again."""

        del score_fn, sampler

        def hook(i, advance, x, t, s, aux):
            key_i = jax.random.fold_in(key, i)

            def take(j, x_t):
                carry = advance(x_t)
                return with_state(carry, project(jax.random.fold_in(key_i, 2 * j), sde, obs, state(carry), s))

            def again(j, carry):
                return take(j, renoise(jax.random.fold_in(key_i, 2 * j + 1), sde, state(carry), s, t))

            return lax.fori_loop(1, self.takes, again, take(0, x)), aux

        return Constraint(hook)


@dataclasses.dataclass(frozen=True)
class RePaint(Replacement):
    """Replacement with `resamplings` takes of every step, re-noised in between (Lugmayr et al. 2022).

    Each take costs the sampler's evaluations for that step again: r times the NFE of plain replacement.
    """

    resamplings: int = 10

    def __post_init__(self):
        _check_count(self, "resamplings", 1)

    @property
    def takes(self) -> int:
        return self.resamplings


@dataclasses.dataclass(frozen=True)
class PiGDM(Replacement):
    """Pseudoinverse guidance (Song et al. 2023) on the score, then replacement after every step.

    scale multiplies the guidance term (1 = the paper's); each evaluation costs one score call plus its
    vector-Jacobian product.
    """

    scale: float = 1.0

    def __post_init__(self):
        require(self.scale > 0, f"PiGDM: scale must be > 0; got scale={self.scale!r}.")

    def guide(self, sde: SDE, score_fn: ScoreFn, obs: Observation) -> ScoreFn:
        def guided(x, t):
            score, vjp = jax.vjp(lambda x: score_fn(x, t), x)
            alpha, sigma2 = (batch_broadcast(v, x) for v in (sde.alpha(t), sde.sigma(t) ** 2))
            x0 = (x + sigma2 * score) / alpha
            # H^T (y - H x0), back in x coordinates; H H^T = I since the basis is orthonormal.
            residual = obs.from_basis(jnp.where(obs.mask > 0, obs.values - obs.to_basis(x0), 0.0))
            r2 = sigma2 / (alpha**2 + sigma2)
            # d x0 / d x = (I + sigma^2 d score / d x) / alpha, applied on the left to the residual.
            grad = (residual + sigma2 * vjp(residual)[0]) / (alpha * r2)
            return score + self.scale * grad

        return guided


def bridge_moments(sde: SDE, y_t: Array, y_0: Array, t: Array, s: Array) -> tuple[Array, Array]:
    """Mean and variance of y_s | y_t, y_0 under the forward process, s < t scalars: the Gaussian bridge
    (Ho et al. 2020, Eqs. 6-7), mean (alpha_{t|s} sigma_s^2 y_t + alpha_s sigma_{t|s}^2 y_0) / sigma_t^2."""
    tt, ss = per_example(t, y_t), per_example(s, y_t)
    alpha_ts, sigma_ts = (batch_broadcast(v, y_t) for v in sde.transition(tt, ss))
    sigma_t2, sigma_s2 = (batch_broadcast(sde.sigma(u) ** 2, y_t) for u in (tt, ss))
    alpha_s = batch_broadcast(sde.alpha(ss), y_t)
    mean = (alpha_ts * sigma_s2 * y_t + alpha_s * sigma_ts**2 * y_0) / sigma_t2
    return mean, sigma_ts**2 * sigma_s2 / sigma_t2


def effective_size(log_w: Array) -> Array:
    """The effective sample size (sum w)^2 / sum w^2 of each row of log-weights log_w: [B, P] -> [B]."""
    w = jax.nn.softmax(log_w, axis=-1)
    return 1.0 / jnp.sum(w**2, axis=-1)


@dataclasses.dataclass(frozen=True)
class SMCDiff(Replacement):
    """A particle filter over `particles` samples per example (Trippe et al. 2022, SMCDiff, Algorithm 1).

    The known part follows one forward-process path per example, drawn top-down by the bridge
    y_s | y_t, y; each particle's weight is multiplied at every step by how likely the model's own reverse
    kernel N(bridge mean with x0 = E[x_0 | x_t], bridge variance) makes that path's next value y_s. The
    particles of an example are resampled when their effective sample size falls below `resample_below`
    times their number (adaptive resampling, Doucet & Johansen 2009, Sec. 3.5; 1, the default, resamples at
    every step, as SMCDiff's Algorithm 1) and at the last constrained step. As the particles grow this
    samples p(x | y) for an exact score. Copies made by resampling part again only by the sampler's noise:
    with a deterministic (ODE) sampler every resampling loses distinct particles for good, which adaptive
    resampling limits.
    Costs `particles` times the batch and one more evaluation per constrained step (the weights).
    """

    num_particles: int = 32
    resample_below: float = 1.0

    def __post_init__(self):
        _check_count(self, "num_particles", 2)
        require(0 < self.resample_below <= 1,
                f"SMCDiff: resample_below must lie in (0, 1]; got resample_below={self.resample_below!r}.")

    @property
    def particles(self) -> int:
        return self.num_particles

    def nfe(self, nfe: Array, sampler: FixedStepSampler) -> Array:
        return nfe + sampler.constrained_cost()[0]

    def constraint(self, key, sde, score_fn, obs, sampler):
        p, last = self.num_particles, sampler.constrained_cost()[0] - 1

        def shared_normal(key, x):
            """Noise shared by the particles of an example: [B * P, ...]."""
            return jnp.repeat(jax.random.normal(key, (x.shape[0] // p,) + x.shape[1:], x.dtype), p, axis=0)

        def hook(i, advance, x, t, s, log_w):
            k_start, k_path, k_pick = jax.random.split(jax.random.fold_in(key, i), 3)
            tt = per_example(t, x)
            noise = shared_normal(k_start, x)
            start = batch_broadcast(sde.alpha(tt), x) * obs.values + batch_broadcast(sde.sigma(tt), x) * noise
            # The path starts from y_T ~ N(alpha_T y, sigma_T^2).
            x = jnp.where(i == 0, obs.write(x, start), x)
            y_t = obs.to_basis(x)
            path_mean, var = bridge_moments(sde, y_t, obs.values, t, s)
            y_s = path_mean + jnp.sqrt(var) * shared_normal(k_path, x)
            x0 = obs.to_basis(sde.data_prediction(score_fn, x, tt))
            model_mean, _ = bridge_moments(sde, y_t, x0, t, s)
            log_w = log_w - 0.5 * jnp.sum(jnp.where(obs.mask > 0, (y_s - model_mean) ** 2 / var, 0.0),
                                          axis=tuple(range(1, x.ndim)))
            log_w = log_w.reshape(-1, p)
            resample = (effective_size(log_w) < self.resample_below * p) | (i == last)  # [B]
            parents = jax.random.categorical(k_pick, log_w, shape=(p, log_w.shape[0])).T
            parents = jnp.where(resample[:, None], parents, jnp.arange(p))
            index = (parents + p * jnp.arange(log_w.shape[0])[:, None]).reshape(-1)
            carry = select(advance(x), index)  # a multistep sampler's history goes with its particle
            log_w = jnp.where(resample[:, None], 0.0, log_w).reshape(-1)
            return with_state(carry, obs.write(state(carry), y_s)), log_w

        return Constraint(hook, jnp.zeros(obs.values.shape[:1], obs.values.dtype))


Method = Replacement  # every method is one: its takes, particles, guide and constraint
