"""Time grids: named ones in closed form, explicit ones as values, published sigma tables, and bad grids."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import count_calls
from scoresde import schedules, toy
from scoresde.bench.accuracy import pathwise_error, reference_solve
from scoresde.samplers.base import FixedStepSampler

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
@pytest.mark.parametrize("name", schedules.SCHEDULE_NAMES)
def test_named_grids_are_float64_from_t_to_eps(sde, name):
    ts = schedules.build_schedule(name, sde, 1000, sde.default_eps)
    assert ts.dtype == np.float64 and ts.shape == (1001,)
    assert ts[0] == sde.T and ts[-1] == sde.default_eps and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_karras_and_logsnr_grids_are_uniform_in_their_variables(sde):
    eps = sde.default_eps
    lam = sde.half_log_snr(schedules.logsnr(sde, 9, eps))
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 9, rtol=1e-9)
    root = sde.edm_sigma(schedules.karras(sde, 9, eps)) ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), (root[-1] - root[0]) / 9, rtol=1e-9)


def test_sde_closed_forms_agree_on_host_and_device():
    t = np.linspace(0.01, 1.0, 7)
    for sde in SDES.values():
        for name in ("half_log_snr", "edm_sigma", "alpha", "sigma"):
            host = getattr(sde, name)(t)
            assert isinstance(host, np.ndarray) and host.dtype == np.float64
            np.testing.assert_allclose(host, getattr(sde, name)(jnp.asarray(t)), rtol=2e-6)
        np.testing.assert_allclose(sde.t_from_edm_sigma(sde.edm_sigma(t)), t, rtol=1e-12)


@pytest.fixture(scope="module")
def vp_problem():
    sde = sd.VPSDE()
    x = sde.prior_sampling(jax.random.PRNGKey(0), (32, 2))
    return sde, toy.mixture_2d().score_fn(sde), x


def run(sde, score_fn, x, sampler, eps=None):
    return _run(sde, score_fn, x, sampler, eps)


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _run(sde, score_fn, x, sampler, eps):
    return sd.sample(jax.random.PRNGKey(1), sde, score_fn, x.shape, sampler, x_init=x, denoise=False, eps=eps)


def test_an_explicit_grid_is_the_named_one_as_a_value(vp_problem):
    sde, score_fn, x = vp_problem
    named = sd.samplers.UniPC(num_steps=6, schedule="logsnr")
    grid = tuple(named.grid(sde, sde.default_eps))
    explicit = dataclasses.replace(named, schedule=grid)
    assert hash(explicit) == hash(dataclasses.replace(named, schedule=list(grid)))
    (a, nfe_a), (b, nfe_b) = run(sde, score_fn, x, named), run(sde, score_fn, x, explicit)
    np.testing.assert_array_equal(a, b)
    assert int(nfe_a) == int(nfe_b) == explicit.nfe() == 6
    assert explicit.with_nfe(10) is explicit


def test_a_grid_ends_where_the_solve_stops(vp_problem):
    sde, score_fn, x = vp_problem
    grid = (1.0, 0.5, 0.1, 0.02)
    sampler = sd.samplers.Euler(num_steps=3, schedule=grid)
    y = run(sde, score_fn, x, sampler)[0]
    np.testing.assert_array_equal(y, run(sde, score_fn, x, sampler, eps=0.02)[0])
    with pytest.raises(ValueError, match=r"eps=0.001 but the sampler's schedule ends at 0.02"):
        run(sde, score_fn, x, sampler, eps=1e-3)
    with pytest.raises(ValueError, match=r"schedule must start at T = 1.0 of the SDE; it starts at 0.9"):
        run(sde, score_fn, x, sd.samplers.Euler(num_steps=2, schedule=(0.9, 0.5, 0.1)))


@pytest.mark.parametrize("grid, match", [
    ((1.0, 0.5, 0.5, 0.01), r"strictly decreasing from T to eps; got 0.5 followed by 0.5 at index 2"),
    ((1.0, 0.1, 0.5, 0.01), r"strictly decreasing .* got 0.1 followed by 0.5"),
    ((1.0, float("nan"), 0.2, 0.01), r"must be finite; got nan at index 1"),
    ((1.0, 0.5, 0.01), r"needs num_steps \+ 1 = 4 times T .. eps; got 3"),
    ((1.0, 0.5, 0.2, -0.01), r"must lie in \(0, T\]"),
    ("cosine", r"unknown schedule 'cosine'; valid names: \['uniform'"),
])
def test_bad_grids_raise_at_construction(grid, match):
    with pytest.raises(ValueError, match=match):
        sd.samplers.DPMSolverPP(num_steps=3, schedule=grid)


@pytest.mark.parametrize("sde", SDES.values(), ids=SDES)
def test_a_published_sigma_table_maps_to_its_times(sde):
    """The EDM levels of the Karras grid come back as the Karras grid; resampled, log sigma stays piecewise
    linear in the table's position and keeps both ends."""
    eps = sde.default_eps
    karras = schedules.karras(sde, 10, eps)
    sigmas = list(sde.edm_sigma(karras)) + [0.0]  # published tables end in 0
    np.testing.assert_allclose(schedules.from_edm_sigmas(sde, sigmas), karras, rtol=1e-9)
    longer = np.array(schedules.from_edm_sigmas(sde, sigmas, num_steps=20))
    log_sigma = np.log(sde.edm_sigma(longer))
    np.testing.assert_allclose(log_sigma[::2], np.log(sigmas[:-1]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(log_sigma[1::2], 0.5 * (log_sigma[:-1:2] + log_sigma[2::2]), rtol=1e-9)
    sampler = sd.samplers.Heun(num_steps=20, schedule=tuple(longer))
    assert sampler.end_time(sde, None) == pytest.approx(eps)


@pytest.mark.parametrize("sde, sigmas, match", [
    (sd.VPSDE(), [500.0, 10.0, 0.002], r"noise levels of VPSDE, \(3.162e-07, 152.167\]; got 500 .. 0.002"),
    (sd.VESDE(), [50.0, 1.0, 0.005], r"noise levels of VESDE, \(0.01, 50\]; got 50 .. 0.005"),
    (sd.VPSDE(), [10.0, 20.0, 0.1], r"positive and strictly decreasing; got \[10, 20, 0.1\]"),
    (sd.VPSDE(), [10.0, float("nan")], r"2 or more finite noise levels"),
    (sd.VPSDE(), [10.0], r"2 or more finite noise levels"),
])
def test_sigma_tables_outside_the_sde_raise(sde, sigmas, match):
    with pytest.raises(ValueError, match=match):
        schedules.from_edm_sigmas(sde, sigmas)


def test_neighbouring_times_never_collide_in_bfloat16():
    """A 1000-step grid near eps = 1e-5 under VE, with a bfloat16 state: the score sees 1000 distinct times
    (bfloat16 holds 3 significant digits; its times would collide)."""
    sde = sd.VESDE()
    seen = []
    score_fn = toy.mixture_2d().score_fn(sde)

    def recording(x, t):
        jax.debug.callback(lambda t: seen.append(float(t[0])), t)
        return score_fn(x, t)

    x = sde.prior_sampling(jax.random.PRNGKey(0), (4, 2)).astype(jnp.bfloat16)
    sampler = sd.samplers.Euler(num_steps=1000, schedule="karras")
    y, _ = run(sde, recording, x, sampler)
    assert y.dtype == jnp.bfloat16
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert np.all(np.diff(seen) < 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoubledGrid(sd.samplers.Euler):
    """A subclass with its own grid: twice as many steps as it is set to."""

    def grid(self, sde, eps):
        return schedules.uniform(sde, 2 * self.num_steps, eps)


def test_nfe_counts_the_grid_a_subclass_runs(vp_problem):
    sde, score_fn, x = vp_problem
    counted, calls = count_calls(score_fn)
    _, nfe = run(sde, counted, x, DoubledGrid(num_steps=5))
    assert int(nfe) == calls[0] == 10
    assert issubclass(DoubledGrid, FixedStepSampler)


@pytest.fixture(scope="module")
def fitting_problem():
    """mixture_2d under VP: paths to fit on, other paths to judge on, and the RK45 end points of both."""
    sde = sd.VPSDE()
    score_fn = toy.mixture_2d().score_fn(sde)
    x = sde.prior_sampling(jax.random.PRNGKey(5), (1280, 2))
    # RK45 at 1e-6 lies ~1e-5 from the exact end points, far below 5-step errors (~0.1).
    ref = reference_solve(sde, score_fn, jax.random.PRNGKey(0), x, tol=1e-6)[0]
    return sde, score_fn, x[:256], ref[:256], x[256:], ref[256:]


@pytest.mark.slow
def test_a_fitted_grid_beats_the_named_one_on_other_paths(fitting_problem):
    sde, score_fn, x_fit, ref_fit, x_test, ref_test = fitting_problem
    sampler = sd.samplers.UniPC(num_steps=5)
    key = jax.random.PRNGKey(0)
    grid = sd.schedules.fit(key, sde, score_fn, x_fit, sampler, target=ref_fit, num_iters=60)
    assert len(grid) == 6 and grid[0] == sde.T and grid[-1] == sde.default_eps
    error = lambda s: pathwise_error(run(sde, score_fn, x_test, s)[0], ref_test)
    named, fitted = error(sampler), error(dataclasses.replace(sampler, schedule=grid))
    assert fitted < 0.8 * named, (fitted, named)
    # The grid is a value any fixed-step sampler of as many steps takes.
    assert np.isfinite(error(sd.samplers.DPMSolverPP(num_steps=5, schedule=grid)))


@pytest.mark.parametrize("paths, kwargs, match", [
    (1, {}, r"x_T must hold 2 or more starting points \[P, ...\]; got shape \(1, 2\)"),
    (8, dict(nfe=2), r"UniPC makes at least 3 score evaluations; asked for 2"),
])
def test_bad_fit_arguments_raise(fitting_problem, paths, kwargs, match):
    sde, score_fn, x_fit = fitting_problem[:3]
    with pytest.raises(ValueError, match=match):
        sd.schedules.fit(jax.random.PRNGKey(0), sde, score_fn, x_fit[:paths], sd.samplers.UniPC(order=3),
                         **kwargs)
