"""Probability-flow ODE solvers, all of them: convergence orders, x_init, determinism, true NFE, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import assert_matches_mixture, count_calls, exact_draws, mixture_2d_endpoint
from scoresde import toy
from scoresde.bench.accuracy import convergence_order, pathwise_error
from scoresde.samplers import (DDIM, DEIS, IPNDM, RK45, DPMSolverPP, DPMSolverPPSDE, Euler, Heun, Restart,
                               UniPC)

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
MIX_2D = toy.mixture_2d()
NUM_PATHS = 64


@functools.cache
def reference(sde_name):
    """x_T and its image under a tight RK45 solve (rtol = atol = 1e-12, float64): errors below ~1e-10."""
    x = SDES[sde_name].prior_sampling(jax.random.PRNGKey(1), (NUM_PATHS, 2)).astype(jnp.float64)
    return x, mixture_2d_endpoint(SDES[sde_name], RK45(rtol=1e-12, atol=1e-12))(jax.random.PRNGKey(0), x)[0]


def observed_order(sde_name, make_sampler, step_counts):
    """The order in NFE of the pathwise error (RMS over paths of |x - x_ref|), by least squares on log-log."""
    with jax.enable_x64(True):
        x, ref = reference(sde_name)
        samplers = [make_sampler(n) for n in step_counts]
        run = lambda sampler: mixture_2d_endpoint(SDES[sde_name], sampler)(jax.random.PRNGKey(0), x)[0]
        errors = [pathwise_error(run(sampler), ref) for sampler in samplers]
    return convergence_order([sampler.nfe() for sampler in samplers], errors), errors


# (theoretical order, step counts N and 4N), each solver on its default grid. The counts start where the
# slope has settled on every SDE (measured from 32 to 2048 steps, README): below them the multistep solvers
# still feel their lower-order first steps and UniPC-3 converges faster than its order; at 4N the errors stay
# 10x or more above the reference's. UniPC's claim is p + 1 for UniPC-p.
ORDERS = {
    "euler": (Euler, 1, (64, 256)),
    "heun": (Heun, 2, (32, 128)),
    "ddim": (DDIM, 1, (64, 256)),
    "dpm_solver_pp_2m": (functools.partial(DPMSolverPP, order=2), 2, (128, 512)),
    "dpm_solver_pp_3m": (functools.partial(DPMSolverPP, order=3), 3, (128, 512)),
    "unipc_2": (functools.partial(UniPC, order=2), 3, (128, 512)),
    "unipc_3": (functools.partial(UniPC, order=3), 4, (512, 2048)),
    # iPNDM's fixed coefficients are those of uniform steps: order 2 on other grids (ipndm.py).
    "ipndm": (IPNDM, 2, (128, 512)),
    "ipndm_variable_step": (functools.partial(IPNDM, variable_step=True), 4, (128, 512)),
    "deis_2": (functools.partial(DEIS, order=2), 2, (128, 512)),
    "deis_3": (functools.partial(DEIS, order=3), 3, (128, 512)),
    "deis_4": (functools.partial(DEIS, order=4), 4, (128, 512)),
}
# Under VE one of the 64 paths starts near the boundary between two modes; Euler keeps it on the wrong side up
# to ~200 steps, so its error is only asymptotic from there.
STEPS_ON = {("euler", "ve"): (256, 1024)}


def check_order(solver, sde_name):
    make, order, steps = ORDERS[solver]
    steps = STEPS_ON.get((solver, sde_name), steps)
    slope, errors = observed_order(sde_name, lambda n: make(num_steps=n), steps)
    assert abs(slope - order) <= 0.4, f"order {slope:.2f}, expected {order}; errors {errors}"


@pytest.mark.parametrize("solver", ORDERS)
def test_convergence_order_vp(solver):
    check_order(solver, "vp")


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["subvp", "ve"])
@pytest.mark.parametrize("solver", ORDERS)
def test_convergence_order_other_sdes(solver, sde_name):
    check_order(solver, sde_name)


# Every sampler, small: (sampler, deterministic, NFE before the final denoising step).
SMALL = {
    "euler": (Euler(num_steps=5), True, 5),
    "heun": (Heun(num_steps=5), True, 9),
    "heun_churn": (Heun(num_steps=5, s_churn=2.0, s_tmin=0.05, s_tmax=50.0), False, 9),
    "ddim": (DDIM(num_steps=5), True, 5),
    "ddim_eta": (DDIM(num_steps=5, eta=0.5), False, 5),
    "dpm_solver_pp_3m": (DPMSolverPP(num_steps=5, order=3), True, 5),
    "unipc_3": (UniPC(num_steps=5, order=3), True, 5),
    "ipndm": (IPNDM(num_steps=5), True, 5),
    "ipndm_variable_step": (IPNDM(num_steps=5, variable_step=True), True, 5),
    "deis": (DEIS(num_steps=5), True, 5),
    "dpm_solver_pp_sde": (DPMSolverPPSDE(num_steps=5), False, 5),
    "restart": (Restart(num_steps=3, restart_steps=1, restarts=2), False, 9),
    "rk45": (RK45(rtol=1e-3, atol=1e-3), True, None),
}


@pytest.mark.parametrize("name", SMALL)
def test_x_init_key_and_nfe(name):
    """Same key: bitwise the same; another x_init: another result; a new key changes only stochastic samplers;
    the reported NFE is the number of score evaluations made (counted inside jit), final denoising included.
    """
    sampler, deterministic, steps_nfe = SMALL[name]
    sde = SDES["subvp"]
    score_fn, calls = count_calls(MIX_2D.score_fn(sde))
    fn = jax.jit(lambda key, x: sd.sample(key, sde, score_fn, x.shape, sampler, x_init=x))
    x_init = sde.prior_sampling(jax.random.PRNGKey(3), (8, 2))
    a, nfe = fn(jax.random.PRNGKey(0), x_init)
    jax.effects_barrier()
    assert np.all(np.isfinite(a))
    assert int(nfe) == calls[0]
    if steps_nfe is not None:
        assert int(nfe) == steps_nfe + 1
    np.testing.assert_array_equal(a, fn(jax.random.PRNGKey(0), x_init)[0])
    assert not np.allclose(a, fn(jax.random.PRNGKey(0), x_init + 0.5)[0])
    other_key = fn(jax.random.PRNGKey(1), x_init)[0]
    if deterministic:
        np.testing.assert_array_equal(a, other_key)
    else:
        assert not np.allclose(a, other_key)


@pytest.mark.slow
def test_heun_with_churn_samples_the_mixture():
    """EDM's stochastic sampler: churn adds noise and Heun steps remove it; the marginals must stay right."""
    sde = SDES["vp"]
    sampler = Heun(num_steps=64, s_churn=30.0, s_tmin=0.01, s_tmax=10.0)
    fn = jax.jit(lambda k: sd.sample(k, sde, MIX_2D.score_fn(sde), (4000, 2), sampler))
    x, nfe = fn(jax.random.PRNGKey(0))
    assert int(nfe) == 2 * 64
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, 4000))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Euler(schedule="cosine"), r"unknown schedule 'cosine'; valid names: \['uniform'"),
        (lambda: sd.samplers.build_sampler("dpm_solver"), r"unknown sampler 'dpm_solver'; valid names"),
        (lambda: DPMSolverPP(order=4), r"DPMSolverPP: order must be one of \[1, 2, 3\]; got order=4"),
        (lambda: UniPC(order=1), r"UniPC: order must be one of \[2, 3\]; got order=1"),
        (lambda: DPMSolverPP(order=3, num_steps=2), r"DPMSolverPP: num_steps must be an integer >= 3; got 2"),
        (lambda: UniPC(order=3, num_steps=2), r"UniPC: num_steps must be an integer >= 3; got 2"),
        (lambda: Heun(num_steps=0), r"Heun: num_steps must be an integer >= 1; got 0"),
        (lambda: RK45(rtol=0.0), r"RK45: rtol must be > 0; got rtol=0.0"),
        (lambda: RK45(atol=-1.0), r"RK45: atol must be > 0; got atol=-1.0"),
        (lambda: RK45(max_steps=0), r"RK45: max_steps must be an integer >= 1; got max_steps=0"),
        (lambda: Euler(num_steps=np.float64(10)), r"Euler: num_steps must be an integer >= 1; got np.float"),
        (lambda: DDIM(eta=-0.1), r"DDIM: eta must lie in \[0, 1\]; got eta=-0.1"),
        (lambda: DDIM(eta=1.5), r"DDIM: eta must lie in \[0, 1\]; got eta=1.5"),
        (lambda: Heun(s_churn=-1.0), r"Heun: s_churn must be >= 0; got s_churn=-1.0"),
        (lambda: Heun(s_noise=0.0), r"Heun: s_noise must be > 0; got s_noise=0.0"),
        (lambda: Heun(s_tmin=2.0, s_tmax=1.0), r"Heun: need 0 <= s_tmin <= s_tmax"),
        (lambda: IPNDM(order=5), r"IPNDM: order must be one of \[1, 2, 3, 4\]; got order=5"),
        (lambda: DEIS(order=0), r"DEIS: order must be one of \[1, 2, 3, 4\]; got order=0"),
        (lambda: DEIS(num_steps=0), r"DEIS: num_steps must be an integer >= 1; got 0"),
        (lambda: DPMSolverPPSDE(order=4), r"DPMSolverPPSDE: order must be one of \[1, 2, 3\]; got order=4"),
        (lambda: DPMSolverPPSDE(num_steps=1), r"DPMSolverPPSDE: num_steps must be an integer >= 2; got 1"),
        (lambda: Restart(num_steps=1), r"Restart: num_steps must be an integer >= 2; got 1"),
        (lambda: Restart(restart_min=1.0, restart_max=0.5), r"Restart: need 0 < restart_min < restart_max"),
        (lambda: Restart(restarts=0), r"Restart: restarts must be an integer >= 1; got restarts=0"),
        (lambda: Restart(restart_steps=1.5), r"Restart: restart_steps must be an integer >= 1"),
    ],
)
def test_bad_settings_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "dpm_solver_pp", "unipc", "pc"])
def test_integer_like_step_counts_are_accepted_as_ints(name):
    for steps in (np.int64(10), np.int32(10), np.array(10)):
        sampler = sd.samplers.build_sampler(name, num_steps=steps)
        assert type(sampler.num_steps) is int and sampler == sd.samplers.build_sampler(name, num_steps=10)
        assert hash(sampler) == hash(sd.samplers.build_sampler(name, num_steps=10))


def test_rk45_past_max_steps_names_its_own_setting():
    sde, x = SDES["vp"], SDES["vp"].prior_sampling(jax.random.PRNGKey(0), (8, 2))
    solve = lambda sampler: mixture_2d_endpoint(sde, sampler)(jax.random.PRNGKey(0), x)
    with pytest.raises(RuntimeError, match=r"RK45: the adaptive solve took max_steps=3 steps "
                       r"without reaching its end time; pass a larger max_steps to RK45"):
        solve(RK45(max_steps=3))


@pytest.mark.parametrize(
    "name, cls", [("euler", Euler), ("heun", Heun), ("ddim", DDIM), ("dpm_solver_pp", DPMSolverPP),
                  ("unipc", UniPC), ("ipndm", IPNDM), ("deis", DEIS), ("dpm_solver_pp_sde", DPMSolverPPSDE),
                  ("restart", Restart), ("rk45", RK45)]
)
def test_build_sampler_knows_every_solver(name, cls):
    assert isinstance(sd.samplers.build_sampler(name), cls)
