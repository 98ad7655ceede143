"""Exact likelihoods of the probability-flow ODE, bits per dimension, and encode/decode through the same ODE.

Along the probability-flow ODE dx/dt = v(x, t) (Song et al. 2021, Eq. 13) the log density changes by the
instantaneous change of variables d log p_t(x_t) / dt = -div v(x_t, t) (Chen et al. 2018, Theorem 1), so

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,    x_eps = x,

computed in one adaptive solve of the augmented state (x_t, int div v) from eps to T (Song et al. 2021,
Sec. 4.3 and App. D.2), with the prior's log density standing in for log p_T. The divergence is exact (D
Jacobian-vector products, for small D) or the Hutchinson-Skilling estimate E[e^T (dv/dx) e] with probes e,
E[e e^T] = I, drawn once per solve, independently for every example (Hutchinson 1989; Skilling 1989;
Grathwohl et al. 2019).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.samplers import check_score_fn
from scoresde.samplers.base import in_work_dtype, per_example, require
from scoresde.samplers.ode import MAX_STEPS, adaptive_solve, check_max_steps, check_tolerances, solve_flow
from scoresde.sde import SDE, ScoreFn

Array = jax.Array

DIVERGENCES = ("rademacher", "gaussian", "exact")


def _probes(key: Array, divergence: str, num_probes: int, x: Array) -> Array:
    """Probe vectors e: [K, B, ...] with E[e e^T] = I, so that mean_k e_k^T J e_k estimates tr J.

    "exact" takes all D scaled basis vectors sqrt(D) e_i (the uniform distribution over them has
    E[e e^T] = I), and the mean over them is the trace itself.
    """
    shape = (num_probes,) + x.shape
    if divergence == "rademacher":
        return jax.random.rademacher(key, shape, x.dtype)
    if divergence == "gaussian":
        return jax.random.normal(key, shape, x.dtype)
    d = math.prod(x.shape[1:])
    basis = jnp.sqrt(jnp.asarray(d, x.dtype)) * jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
    return jnp.broadcast_to(basis, (d,) + x.shape)


def _check_inputs(sde: SDE, x: Array, divergence: str, num_probes: int, rtol: float, atol: float, eps):
    require(
        divergence in DIVERGENCES,
        f"log_likelihood: divergence must be one of {list(DIVERGENCES)}; got divergence={divergence!r}.",
    )
    require(
        isinstance(num_probes, int) and num_probes >= 1,
        f"log_likelihood: num_probes must be an integer >= 1; got num_probes={num_probes!r}.",
    )
    check_tolerances(rtol, atol, "log_likelihood")
    require(x.ndim >= 2, f"log_likelihood: x must be a batch [B, ...]; got shape {tuple(x.shape)}.")
    if not isinstance(x, jax.core.Tracer):
        bad = int(np.sum(~np.isfinite(np.asarray(x))))
        require(bad == 0, f"log_likelihood: x must be finite; got {bad} NaN or infinite entries.")
    if isinstance(eps, (int, float)):
        sde.check_eps(eps)


def log_likelihood(
    key: Array,
    sde: SDE,
    score_fn: ScoreFn,
    x: Array,
    *,
    divergence: str = "rademacher",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float | None = None,
    max_steps: int = MAX_STEPS,
) -> tuple[Array, Array]:
    """log p_eps(x) of the probability-flow model, in nats per example.

    Args:
      key: PRNG key for the divergence probes (unused with divergence="exact").
      sde: the forward process; its prior log density stands in for log p_T.
      score_fn: score_fn(x: [B, ...], t: [B]) -> [B, ...].
      x: data [B, ...], treated as the state at t = eps (as in Song et al. 2021); must be finite.
      divergence: "rademacher" or "gaussian" (Hutchinson-Skilling with `num_probes` probes per example,
        fresh for every example), or "exact" (D Jacobian-vector products per evaluation; for small D).
      num_probes: probes per example, >= 1; their mean is the estimate (variance / num_probes).
      rtol, atol: tolerances of the adaptive Dormand-Prince solve, > 0.
      eps: start time in (0, T); defaults to `sde.default_eps`.
      max_steps: attempted steps of the adaptive solve before it gives up with an error, >= 1.

    Returns:
      (logp: [B] in the dtype of x, nfe: evaluations of the augmented vector field, each one score evaluation
      plus its JVPs). A bfloat16 or float16 x is integrated in float32 (`samplers.base.in_work_dtype`).

    Jit-compatible; the finiteness check on x runs when x is concrete.
    """
    _check_inputs(sde, x, divergence, num_probes, rtol, atol, eps)
    max_steps = check_max_steps(max_steps, "log_likelihood")
    check_score_fn(score_fn, x)
    eps = sde.default_eps if eps is None else eps
    dtype = x.dtype
    score_fn, x = in_work_dtype(score_fn, x)
    probes = _probes(key, divergence, num_probes, x)
    event_axes = tuple(range(1, x.ndim))

    def augmented(t, state):
        y, _ = state
        t = per_example(t, y)
        drift, jvp = jax.linearize(lambda z: sde.probability_flow(score_fn, z, t), y)
        quadratic_forms = jnp.sum(probes * jax.vmap(jvp)(probes), axis=tuple(a + 1 for a in event_axes))
        return drift, jnp.mean(quadratic_forms, axis=0)

    state0 = (x, jnp.zeros(x.shape[:1], x.dtype))
    (z, delta_logp), nfe = adaptive_solve(augmented, state0, eps, sde.T, rtol=rtol, atol=atol,
                                          max_steps=max_steps, where="log_likelihood")
    return (sde.prior_logp(z) + delta_logp).astype(dtype), nfe


def bits_per_dim(
    logp: Array,
    event_shape: tuple[int, ...],
    *,
    data_range: tuple[float, float] = (0.0, 1.0),
    num_bins: int = 256,
) -> Array:
    """Bits per dimension of discrete data from the continuous log density of its dequantized version.

    The convention (Theis et al. 2016; Ho et al. 2019): integer data k in {0, ..., num_bins - 1}^D are
    dequantized uniformly, y = (k + u) / num_bins with u ~ U[0, 1)^D, and mapped affinely onto the model's
    data range, x = lo + (hi - lo) y. The model density of x gives the discrete probability the bound
    log P(k) >= E_u[log p(x)] + D log((hi - lo) / num_bins), so

        bpd = (-log p(x) / D + log(num_bins / (hi - lo))) / log 2,

    i.e. -log2 p(x) / D + 8 for 8-bit data in [0, 1] and + 7 for data in [-1, 1]. Averaging over examples (and
    over draws of u) gives the reported bound. Left out, the offset makes bits/dim negative for any density
    above one per unit volume of x, which sharp models of [0, 1] or [-1, 1] data reach easily.

    Args:
      logp: [B] log densities in nats of dequantized data x, e.g. from `log_likelihood`.
      event_shape: shape of one example, e.g. x.shape[1:]; D = prod(event_shape).
      data_range: (lo, hi), the interval the num_bins levels were scaled to, lo < hi.
      num_bins: quantization levels, >= 2 (256 for 8-bit data).

    Returns:
      [B] bits per dimension.
    """
    lo, hi = data_range
    require(lo < hi, f"bits_per_dim: data_range must be (lo, hi), lo < hi; got data_range={data_range!r}.")
    require(
        isinstance(num_bins, int) and num_bins >= 2,
        f"bits_per_dim: num_bins must be an integer >= 2; got num_bins={num_bins!r}.",
    )
    dims = math.prod(event_shape)
    require(
        len(event_shape) >= 1 and dims >= 1,
        f"bits_per_dim: event_shape must be a non-empty shape of positive sizes; got {event_shape!r}.",
    )
    return (-logp / dims + math.log(num_bins / (hi - lo))) / math.log(2.0)


def encode(
    sde: SDE, score_fn: ScoreFn, x: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
    eps: float | None = None, max_steps: int = MAX_STEPS,
) -> Array:
    """The latent z = x_T of data x = x_eps: [B, ...] by the probability-flow ODE (Song et al. 2021, 4.3)."""
    eps = sde.default_eps if eps is None else eps
    return _carry(sde, score_fn, x, eps, sde.T, rtol, atol, max_steps, "encode")


def decode(
    sde: SDE, score_fn: ScoreFn, z: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
    eps: float | None = None, max_steps: int = MAX_STEPS,
) -> Array:
    """The inverse of `encode`: carries z = x_T: [B, ...] back to x_eps along the same ODE."""
    eps = sde.default_eps if eps is None else eps
    return _carry(sde, score_fn, z, sde.T, eps, rtol, atol, max_steps, "decode")


def _carry(sde: SDE, score_fn: ScoreFn, x: Array, t0: float, t1: float, rtol: float, atol: float,
           max_steps: int, where: str) -> Array:
    """x: [B, ...] carried from t0 to t1 along the probability-flow ODE, after checking the settings."""
    check_tolerances(rtol, atol, where)
    max_steps = check_max_steps(max_steps, where)
    check_score_fn(score_fn, x)
    return solve_flow(sde, score_fn, x, t0, t1, rtol=rtol, atol=atol, max_steps=max_steps, where=where)[0]
