"""How far a sampler's output lies from the exact answer, with an exact score (a `GaussianMixture` oracle).

Two kinds of error, both measured at t = eps without the final denoising step, so that the target is the exact
marginal p_eps and every score evaluation is the solver's:

* pathwise: the sampler and a tight adaptive RK45 solve of the probability-flow ODE start from the same x_T;
  the RMS distance of their end points is the solver's global error (Hairer et al. 1993, II.3), and its slope
  against NFE on a log-log plot is the solver's order. Meaningful for deterministic samplers only.
* distributional: the samples against exact draws of p_eps, by sliced Wasserstein distance (Bonneel et al.
  2015) and by per-mode weights, means and covariances; each is printed beside its Monte Carlo floor, the
  value two independent exact sample sets of the same size reach (`metrics.monte_carlo_floor`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import metrics, samplers
from scoresde.bench.timing import time_call
from scoresde.sde import SDE, ScoreFn
from scoresde.toy import GaussianMixture

Array = jax.Array
EndpointFn = Callable[[Array, Array], tuple[Array, Array]]

# In float32 the RK45 solve at rtol = atol = 1e-8 lies within 2-5e-7 RMS of one at 1e-9 on both toy problems
# and all three SDEs, well below the errors of fixed-step samplers at the NFEs benchmarked.
REFERENCE_TOL = 1e-8


def endpoint_fn(sde: SDE, score_fn: ScoreFn, sampler: samplers.Sampler) -> EndpointFn:
    """jit((key, x_T: [B, ...]) -> (x_eps, nfe)): the sampler alone, without the final denoising step."""
    return jax.jit(
        lambda key, x: samplers.sample(key, sde, score_fn, x.shape, sampler, x_init=x, denoise=False)
    )


def reference_sampler(tol: float = REFERENCE_TOL) -> samplers.RK45:
    """The tight adaptive solve that pathwise errors are measured against."""
    return samplers.RK45(rtol=tol, atol=tol)


def reference_solve(
    sde: SDE, score_fn: ScoreFn, key: Array, x_init: Array, *, tol: float = REFERENCE_TOL, repeats: int = 1
) -> tuple[Array, dict]:
    """x_eps of the tight RK45 solve from x_init: [B, ...], and its report entry (sampler, NFE, compile and
    median run time over `repeats` timed calls)."""
    sampler = reference_sampler(tol)
    reference = endpoint_fn(sde, score_fn, sampler)
    first, run_s = time_call(lambda: reference(key, x_init), repeats)
    x_ref, nfe = reference(key, x_init)
    report = {"sampler": repr(sampler), "nfe": int(nfe), "compile_s": max(first - run_s, 0.0), "run_s": run_s}
    return x_ref, report


def fitting_paths(sde: SDE, score_fn: ScoreFn, key: Array, x_init: Array, num_paths: int, *,
                  tol: float = REFERENCE_TOL) -> tuple[Array, Array]:
    """num_paths prior draws independent of x_init: [P, ...] (in its dtype) and their reference end points,
    for fitting grids on other paths than a benchmark judges them on."""
    fit_init = sde.prior_sampling(jax.random.fold_in(key, 1), (num_paths,) + x_init.shape[1:])
    fit_init = fit_init.astype(x_init.dtype)
    return fit_init, reference_solve(sde, score_fn, key, fit_init, tol=tol)[0]


def pathwise_error(x: Array, x_ref: Array) -> float:
    """RMS over paths of the Euclidean distance |x - x_ref|; x, x_ref: [B, ...]. Computed in float64."""
    diff = np.asarray(x, np.float64) - np.asarray(x_ref, np.float64)
    return float(np.sqrt(np.mean(np.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=1))))


def convergence_order(nfes: Sequence[float], errors: Sequence[float]) -> float:
    """The order p of error ~ C NFE^(-p): minus the least-squares slope of log error against log NFE.

    Pass only the asymptotic range, where the error has left the pre-asymptotic regime of a few large steps
    and still lies well above the reference solve's own error.
    """
    if len(nfes) != len(errors) or len(nfes) < 2:
        raise ValueError(f"need at least two (NFE, error) pairs of equal length; got {len(nfes)} and "
                         f"{len(errors)}.")
    slope, _ = np.polyfit(np.log(np.asarray(nfes, np.float64)), np.log(np.asarray(errors, np.float64)), 1)
    return float(-slope)


@jax.jit
def distribution_errors(key: Array, target: GaussianMixture, x: Array, y: Array) -> dict[str, Array]:
    """Distances between sample sets x: [N, ...] and y: [M, ...] of the same event shape.

    Both sets are grouped by the most probable component of `target` (`metrics.mode_statistics`), so the
    truncation bias of that assignment is the same on both sides. Figures:
      sliced_wasserstein: SW_2 over 512 random directions drawn from `key`;
      mode_weights: the largest |difference| of the fractions of samples in a mode;
      mode_means: the largest Euclidean distance of per-mode means;
      mode_covs: the largest Frobenius distance of per-mode covariances.
    A mode with fewer than 2 samples on either side makes the moment figures NaN.
    """
    a, b = (metrics.mode_statistics(s, target.weights, target.means, target.covs) for s in (x, y))
    return {
        "sliced_wasserstein": metrics.sliced_wasserstein(key, x, y),
        "mode_weights": jnp.max(jnp.abs(a.weights - b.weights)),
        "mode_means": jnp.max(jnp.linalg.norm(a.means - b.means, axis=-1)),
        "mode_covs": jnp.max(jnp.linalg.norm(a.covs - b.covs, axis=(-2, -1))),
    }


def distribution_floors(
    key: Array, target: GaussianMixture, n: int, *, num_repeats: int = 8
) -> dict[str, Array]:
    """The Monte Carlo floor of every figure of `distribution_errors` for sample sets of size n."""
    distance = lambda k, x, y: distribution_errors(k, target, x, y)
    draw = functools.partial(exact_draws, target)
    return metrics.monte_carlo_floor(key, distance, draw, n, num_repeats=num_repeats)


@functools.partial(jax.jit, static_argnums=2)
def exact_draws(target: GaussianMixture, key: Array, n: int) -> Array:
    """n draws from `target`: [n, *event], compiled once per mixture shape and n."""
    return target.sample(key, n)
