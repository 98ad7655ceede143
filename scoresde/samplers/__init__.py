"""Samplers and the one entry point that runs them, `sample`."""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import jax

from scoresde.samplers.base import Constraint, FixedStepSampler, Sampler, in_work_dtype, per_example, require
from scoresde.samplers.deis import DEIS
from scoresde.samplers.exponential import DDIM, DPMSolverPP, UniPC
from scoresde.samplers.ipndm import IPNDM
from scoresde.samplers.ode import RK45, Euler, Heun
from scoresde.samplers.pc import PC
from scoresde.samplers.stochastic import DPMSolverPPSDE, Restart
from scoresde.sde import SDE, ScoreFn

Array = jax.Array

_SAMPLERS = {
    "pc": PC,
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "dpm_solver_pp": DPMSolverPP,
    "unipc": UniPC,
    "ipndm": IPNDM,
    "deis": DEIS,
    "dpm_solver_pp_sde": DPMSolverPPSDE,
    "restart": Restart,
    "rk45": RK45,
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """(name, settings) of a spec "name" or "name:setting=value:...", e.g. "unipc:order=3"; values are Python
    literals (numbers, True/False, tuples) or else strings."""
    name, *options = spec.split(":")
    settings = {}
    for option in options:
        key, sep, value = option.partition("=")
        require(bool(sep and key), f"sampler {spec!r}: setting {option!r} is not key=value.")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return name, settings


def build_sampler(spec: str, **defaults) -> Sampler:
    """The one way to name a sampler: from a spec, "name" or "name:setting=value:...", e.g.
    "dpm_solver_pp:order=3" or "heun:s_churn=10", as configs, the CLI and the benchmarks give them.

    Keyword `defaults` are settings the spec's own override (a config's PC settings, its step count).

    Raises:
      ValueError: for an unknown name or setting, listing the valid ones, or a malformed spec.
    """
    name, settings = parse_spec(spec)
    require(name in _SAMPLERS, f"unknown sampler {name!r}; valid names: {sorted(_SAMPLERS)}.")
    valid = [f.name for f in dataclasses.fields(_SAMPLERS[name])]
    settings = {**defaults, **settings}
    unknown = sorted(set(settings) - set(valid))
    require(not unknown,
            f"sampler {spec!r}: unknown setting(s) {unknown}; valid settings of {name}: {valid}.")
    return _SAMPLERS[name](**settings)


def check_score_fn(score_fn: ScoreFn, x: Array) -> None:
    """Raises ValueError unless score_fn(x, t) is shaped like x (checked abstractly, no compute)."""
    out = jax.eval_shape(score_fn, x, per_example(0.5, x))
    if getattr(out, "shape", None) != x.shape:
        raise ValueError(
            f"score_fn must return an array shaped like x {tuple(x.shape)}; got {getattr(out, 'shape', out)}."
        )


def sample(
    key: Array,
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    sampler: Sampler,
    *,
    eps: float | None = None,
    denoise: bool = True,
    x_init: Array | None = None,
    axis_name: Any = None,
    constraint: Constraint | None = None,
) -> tuple[Array, Array]:
    """Draws samples by integrating from the prior at T down to eps, then optionally denoising.

    Args:
      key: PRNG key; the same key gives bitwise the same samples.
      sde: the forward process whose reverse is integrated.
      score_fn: score_fn(x: [B, ...], t: [B]) -> [B, ...], e.g. a trained network or an exact oracle.
      shape: [B, ...] of the samples.
      sampler: any `Sampler`, e.g. `PC(...)`.
      eps: the time integration stops at, in (0, T); defaults to `sde.default_eps` (1e-3 VP/sub-VP, 1e-5 VE).
      denoise: finish with Tweedie's denoiser E[x_0 | x_eps] (one more score evaluation).
      x_init: start from this x_T: `shape` instead of a prior draw (encode/decode, solver studies).
      axis_name: inside the caller's pmap, the mapped axis over which batch statistics are averaged.
      constraint: a per-step constraint of the state (see `base.scan_grid`), as `scoresde.guidance.inpaint`
        and `colorize` build; fixed-step samplers only.

    Returns:
      (x: `shape`, in the dtype of x_init (float32 without it), nfe: the number of score evaluations made, an
      int32 scalar). A bfloat16 or float16 x is integrated in float32 (`base.in_work_dtype`).

    Raises:
      ValueError: on a bad sampler, eps or x_init, or an eps other than where the sampler's explicit grid
        ends.
    """
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a scoresde Sampler such as samplers.PC(); got {sampler!r}.")
    eps = sampler.end_time(sde, eps)
    k_prior, k_solve = jax.random.split(key)
    if x_init is None:
        x = sde.prior_sampling(k_prior, tuple(shape))
    elif tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init must have shape {tuple(shape)}; got {tuple(x_init.shape)}.")
    else:
        x = x_init
    check_score_fn(score_fn, x)
    dtype = x.dtype
    score_fn, x = in_work_dtype(score_fn, x)
    x, nfe = sampler.solve(k_solve, sde, score_fn, x, eps, axis_name, constraint)
    if denoise:
        t = per_example(eps, x)
        x = sde.denoise(score_fn(x, t), x, t)
        nfe = nfe + 1
    return x.astype(dtype), nfe


__all__ = [
    "DDIM",
    "DEIS",
    "DPMSolverPP",
    "DPMSolverPPSDE",
    "Euler",
    "FixedStepSampler",
    "Heun",
    "IPNDM",
    "PC",
    "RK45",
    "Restart",
    "Sampler",
    "UniPC",
    "build_sampler",
    "parse_spec",
    "sample",
]
