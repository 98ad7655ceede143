"""Guided and constrained sampling: transforms of score functions, and inpainting and colorization.

Guidance turns one score function into another, so every sampler runs it unchanged:

* classifier-free guidance (Ho & Salimans 2022, Eq. 6, in scores): s = s_c + w (s_c - s_u);
* classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, Eq. 48): s = s + w grad_x log p(y | x_t, t).

Inpainting and colorization fix part of the sample; they run as one per-step constraint inside the loop the
fixed-step samplers share (`scoresde.samplers.constraints`), with the method a value: `Replacement`,
`RePaint`, `PiGDM` or `SMCDiff` (the default, `default_method`). How closely each samples the exact
conditional of a Gaussian mixture is measured in tests/test_guidance.py and README ("Guidance and
inpainting").
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import samplers
from scoresde.samplers.base import FixedStepSampler, require
from scoresde.samplers.constraints import Method, Observation, PiGDM, RePaint, Replacement, SMCDiff
from scoresde.sde import SDE, ScoreFn

Array = jax.Array
LogProbFn = Callable[[Array, Array], Array]
CondScoreFn = Callable[[Array, Array, Any], Array]

# Chosen by the W1 to the exact conditional on toy.mixture_inpainting (README, "Guidance and inpainting"):
# SMCDiff is the only method that conditions where the known part decides the mode. Behind a sampler whose
# every step draws noise it resamples at every step, up to EVERY_STEP_MAX constrained steps; behind a
# deterministic one, whose copies of a particle never part again, and behind longer stochastic runs, only
# when the particles' effective size falls below half their number.
DEFAULT_METHOD: Method = SMCDiff(num_particles=32, resample_below=1.0)
ODE_DEFAULT_METHOD: Method = SMCDiff(num_particles=32, resample_below=0.5)
# Multinomial resampling is a neutral (Wright-Fisher) drift: P particles resampled under equal weights descend
# from one ancestor after about 2 P resamplings. Past twice that, every-step resampling fixes each example's
# particles on a mode before the weights that tell the modes apart arrive.
EVERY_STEP_MAX = 4 * DEFAULT_METHOD.num_particles


def default_method(sampler: FixedStepSampler) -> Method:
    """The inpainting method measured best behind `sampler`: DEFAULT_METHOD (resampling at every step) if its
    every step draws noise (`stochastic`) and at most EVERY_STEP_MAX steps run through the constraint
    (`constrained_cost`), else ODE_DEFAULT_METHOD (adaptive resampling), whose number of resamplings follows
    the information in the weights rather than the number of steps."""
    every_step = sampler.stochastic and sampler.constrained_cost()[0] <= EVERY_STEP_MAX
    return DEFAULT_METHOD if every_step else ODE_DEFAULT_METHOD


def _check_scale(scale: float) -> None:
    require(
        np.ndim(scale) == 0 and float(scale) >= 0,
        f"scale must be a number >= 0 (0 = no guidance); got scale={scale!r}.",
    )


def classifier_free_guidance(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float = 1.0) -> ScoreFn:
    """Classifier-free guidance: s(x, t) = s_c + scale (s_c - s_u) (Ho & Salimans 2022, Eq. 6).

    scale is Ho & Salimans' w: 0 gives the conditional score itself, larger values sharpen it toward the
    condition. Libraries that write s_u + g (s_c - s_u) instead (diffusers' and Imagen's `guidance_scale` g,
    where g = 1 means no guidance) use g = scale + 1. Two score evaluations per call; `fused_classifier_free_
    guidance` makes them one evaluation of a doubled batch.

    Args:
      cond_score_fn, uncond_score_fn: score_fn(x: [B, ...], t: [B]) -> [B, ...], with and without the
        condition.
      scale: w >= 0.

    Raises:
      ValueError: if scale is negative (w in [-1, 0) only blends toward the unconditional score).
    """
    _check_scale(scale)

    def guided(x, t):
        cond = cond_score_fn(x, t)
        return cond + scale * (cond - uncond_score_fn(x, t))

    return guided


def fused_classifier_free_guidance(
    score_fn_with_cond: CondScoreFn, cond: Any, null_cond: Any, scale: float = 1.0
) -> ScoreFn:
    """Classifier-free guidance from one conditional model evaluated once on the doubled batch.

    s(x, t) = s_c + scale (s_c - s_u) as in `classifier_free_guidance`, with s_c and s_u the two halves of
    score_fn_with_cond([x; x], [t; t], [cond; null_cond]). One call on 2B examples instead of two on B: faster
    where a batch of B does not fill the device (benchmarks/guidance.py).

    Args:
      score_fn_with_cond: (x: [N, ...], t: [N], cond: [N, ...]) -> [N, ...], e.g. a class-conditional network.
      cond, null_cond: the condition and the null condition, each a pytree of arrays with batch axis B.
      scale: w >= 0.
    """
    _check_scale(scale)
    double = lambda a, b: jnp.concatenate([a, b])

    def guided(x, t):
        both = score_fn_with_cond(double(x, x), double(t, t), jax.tree.map(double, cond, null_cond))
        s_cond, s_uncond = jnp.split(both, 2)
        return s_cond + scale * (s_cond - s_uncond)

    return guided


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, scale: float = 1.0) -> ScoreFn:
    """Classifier guidance: s(x, t) = s + scale grad_x log p(y | x_t, t) (Song et al. 2021, Eq. 48;
    Dhariwal & Nichol 2021, Sec. 4).

    With the exact noise-conditional posterior as classifier and scale 1 this is the exact score of
    p_t(x | y) by Bayes' rule (tests/test_guidance.py). The gradient is taken by autodiff, one backward pass
    of log_prob_fn per evaluation.

    Args:
      score_fn: score_fn(x: [B, ...], t: [B]) -> [B, ...].
      log_prob_fn: log_prob_fn(x: [B, ...], t: [B]) -> [B], log p(y | x_t) of each example for its target y.
      scale: >= 0; above 1 sharpens toward y.
    """
    _check_scale(scale)
    grad = jax.grad(lambda x, t: jnp.sum(log_prob_fn(x, t)))

    def guided(x, t):
        return score_fn(x, t) + scale * grad(x, t)

    return guided


def _concrete(a: Any) -> np.ndarray | None:
    """a as a numpy array when its values are known now (not a tracer), else None."""
    try:
        return np.asarray(a)
    except jax.errors.TracerArrayConversionError:
        return None


def _check_sampler(sampler: Any, method: Any) -> None:
    require(
        isinstance(sampler, FixedStepSampler),
        "sampler: constraints (inpainting, colorization) need a fixed-step sampler such as samplers.PC() or "
        f"samplers.Euler(); adaptive samplers such as RK45 choose their own steps. Got {sampler!r}.",
    )
    require(
        "constraint" in inspect.signature(sampler.solve_grid).parameters,
        f"sampler: {type(sampler).__name__}.solve_grid takes no constraint argument; every sampler of "
        "scoresde.samplers but RK45 does (see samplers.base.scan_grid).",
    )
    require(
        method is None or isinstance(method, Replacement),
        f"method must be one of Replacement(), RePaint(resamplings=...), PiGDM(scale=...), "
        f"SMCDiff(num_particles=...); got {method!r}.",
    )


def constrained_sample(
    key: Array, sde: SDE, score_fn: ScoreFn, obs: Observation, sampler: FixedStepSampler,
    method: Method | None, **sample_kwargs,
) -> tuple[Array, Array]:
    """Samples x: obs.values.shape under the observation; the known part comes back exactly (in the basis).

    nfe counts score calls on the sampler's batch (SMCDiff's is `num_particles` times larger, and it adds one
    call per constrained step for its weights); RePaint's takes repeat the evaluations of the constrained
    steps (`FixedStepSampler.constrained_cost`: Heun's and Restart's last step and the multistep solvers'
    first evaluation run once, outside the constraint). PiGDM's vector-Jacobian products are not counted.
    """
    _check_sampler(sampler, method)
    method = default_method(sampler) if method is None else method
    k_hook, k_sample = jax.random.split(key)
    p = method.particles
    obs_p = obs._replace(values=jnp.repeat(obs.values, p, axis=0), mask=jnp.repeat(obs.mask, p, axis=0))
    guided = method.guide(sde, score_fn, obs_p)
    x, nfe = samplers.sample(
        k_sample, sde, guided, obs_p.values.shape, sampler,
        constraint=method.constraint(k_hook, sde, guided, obs_p, sampler), **sample_kwargs,
    )
    # After the last resampling the particles of an example are equally weighted: keep the first.
    return obs.write(x[::p], obs.values), method.nfe(nfe, sampler)


def _broadcast_mask(mask: Any, shape: tuple[int, ...]) -> Array:
    mask_np = _concrete(mask)
    require(
        tuple(np.shape(mask)) in (shape, shape[1:]),
        f"mask must have the shape of x_known {shape} or of one example {shape[1:]}; got {np.shape(mask)}.",
    )
    require(
        mask_np is None or bool(np.all((mask_np == 0) | (mask_np == 1))),
        "mask must hold only 0 (unknown) and 1 (known).",
    )
    return jnp.broadcast_to(jnp.asarray(mask), shape)


def inpaint(
    key: Array, sde: SDE, score_fn: ScoreFn, x_known: Array, mask: Array, sampler: FixedStepSampler, *,
    method: Method | None = None, **sample_kwargs,
) -> tuple[Array, Array]:
    """Fills in the unknown entries of x_known, sampling them from p(x | x[mask] = x_known[mask]).

    Args:
      key: PRNG key.
      sde, score_fn: the forward process and a score function of its marginals (as for `sd.sample`).
      x_known: [B, ...]; its entries where mask = 1 are kept, bitwise; the others are ignored.
      mask: [B, ...] or [...] (one mask for the batch), 1 = known, 0 = to fill in.
      sampler: a fixed-step sampler (PC, Euler, Heun, DDIM, DPMSolverPP, UniPC).
      method: Replacement(), RePaint(resamplings=r), PiGDM(scale=...) or SMCDiff(num_particles=P,
        resample_below=...); None: `default_method(sampler)`, SMCDiff as measured best behind it.
      **sample_kwargs: eps, denoise, axis_name, as for `sd.sample`.

    Returns:
      (x: [B, ...], nfe).

    Raises:
      ValueError: mask of the wrong shape or with values other than 0 and 1; an adaptive sampler (RK45).
    """
    x_known = jnp.asarray(x_known)
    obs = Observation(values=x_known, mask=_broadcast_mask(mask, x_known.shape))
    return constrained_sample(key, sde, score_fn, obs, sampler, method, **sample_kwargs)


def colour_basis(channels: int) -> np.ndarray:
    """An orthonormal basis of colour space as columns, [C, C]; the first is the grey direction 1 / sqrt(C).

    The rest complete it (Helmert-like, by QR), as the decoupling matrix of Song et al. 2021, App. I.
    """
    q, _ = np.linalg.qr(np.concatenate([np.ones((channels, 1)), np.eye(channels)[:, 1:]], axis=1))
    return q * np.sign(q[0, 0])


def colour_observation(grey: Array) -> Observation:
    """The observation that fixes the grey coordinate of each pixel: grey: [B, ..., C], its channels' mean."""
    q = jnp.asarray(colour_basis(grey.shape[-1]), grey.dtype)
    to_basis, from_basis = (lambda x: x @ q), (lambda u: u @ q.T)
    mask = jnp.zeros(grey.shape, grey.dtype).at[..., 0].set(1.0)
    return Observation(to_basis(grey) * mask, mask, to_basis, from_basis)


def colorize(
    key: Array, sde: SDE, score_fn: ScoreFn, grey: Array, sampler: FixedStepSampler, *,
    method: Method | None = None, **sample_kwargs,
) -> tuple[Array, Array]:
    """Colours a grey image: samples x from p(x | grey(x) = grey(input)), grey = the mean over channels.

    The sample runs in the orthonormal colour basis of `colour_basis` (Song et al. 2021, App. I), whose
    first coordinate u_0 = sqrt(C) grey(x) is held to the input's exactly; the result is mapped back to
    colour, where the grey of x matches the input's up to the rounding of that change of basis.

    Args:
      grey: [B, ..., C], C >= 2: a colour-shaped image whose channel mean is the grey value (e.g. the grey
        value repeated over the channels); its colours are ignored.
      sde, score_fn, sampler, method, **sample_kwargs: as for `inpaint`.

    Returns:
      (x: [B, ..., C], nfe).

    Raises:
      ValueError: grey with fewer than 2 channels; an adaptive sampler (RK45).
    """
    grey = jnp.asarray(grey)
    require(
        grey.ndim >= 2 and grey.shape[-1] >= 2,
        f"grey must be shaped [B, ..., C] with C >= 2 colour channels; got shape {tuple(grey.shape)}.",
    )
    return constrained_sample(key, sde, score_fn, colour_observation(grey), sampler, method, **sample_kwargs)


__all__ = [
    "DEFAULT_METHOD",
    "ODE_DEFAULT_METHOD",
    "Observation",
    "PiGDM",
    "RePaint",
    "Replacement",
    "SMCDiff",
    "classifier_free_guidance",
    "classifier_guidance",
    "colorize",
    "colour_basis",
    "default_method",
    "fused_classifier_free_guidance",
    "inpaint",
]
