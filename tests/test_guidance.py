"""Guidance and constraints against exact answers of Gaussian mixtures.

Classifier guidance with the exact posterior p(k | x_t) and classifier-free guidance at scale 0 must sample
component k alone; inpainting and colorization are compared with the exact conditional of the mixture
(`GaussianMixture.condition`) by the 1-D Wasserstein distance W1 beside its Monte Carlo floor.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
from checks import assert_matches_gaussian, count_calls
from scoresde import metrics, toy
from scoresde.samplers.constraints import PiGDM, RePaint, Replacement, SMCDiff

import marks

SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
S = sd.samplers
MIX_2D = toy.mixture_2d()
INPAINT_MIX = toy.mixture_inpainting()
N = 2000
K = 1  # the component guidance steers toward (weight 0.3 in mixture_2d)
PC = sd.samplers.PC(num_steps=300)
# 200 steps: at 50, DDIM's variance of the narrow component is 30% low under VP (DPM-Solver++ 20: 9% high).
ODE = sd.samplers.DDIM(num_steps=200)
GUIDE_SAMPLERS = {"pc": PC, "ddim": ODE}
INPAINT_SAMPLERS = {"pc": sd.samplers.PC(num_steps=100), "ddim": sd.samplers.DDIM(num_steps=50)}
METHODS = {
    "replacement": Replacement(), "repaint": RePaint(resamplings=10), "pigdm": PiGDM(),
    "smcdiff": SMCDiff(num_particles=32),
}


def posterior_guided(sde, k=K, scale=1.0):
    return sd.guidance.classifier_guidance(
        MIX_2D.score_fn(sde), lambda x, t: MIX_2D.log_posterior_fn(sde)(x, t)[:, k], scale
    )


def cfg(sde, scale, k=K):
    cond_fn = MIX_2D.conditional_score_fn(sde)
    label = lambda x, c: jnp.full(x.shape[:1], c, jnp.int32)
    return sd.guidance.classifier_free_guidance(
        lambda x, t: cond_fn(x, t, label(x, k)), lambda x, t: cond_fn(x, t, label(x, 3)), scale
    )


def draw(sde, score_fn, sampler, n=N, seed=0):
    return jax.jit(lambda key: sd.sample(key, sde, score_fn, (n, 2), sampler)[0])(jax.random.PRNGKey(seed))


def assert_matches_component(x, k=K):
    assert_matches_gaussian(x, MIX_2D.means[k], MIX_2D.covs[k])


def share_of_component(x, k=K):
    return float(jnp.mean(jnp.argmax(MIX_2D.responsibilities(x), axis=-1) == k))


@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_exact_classifier_guidance_is_the_component_score(sde_name):
    sde = SDES[sde_name]
    x = 1.5 * MIX_2D.sample(jax.random.PRNGKey(1), 64)
    t = jnp.linspace(0.01, 0.9, 64)
    want = MIX_2D.component(K).score_fn(sde)(x, t)
    atol = 1e-3 * float(jnp.abs(want).max())
    np.testing.assert_allclose(posterior_guided(sde)(x, t), want, rtol=1e-3, atol=atol)


@pytest.mark.parametrize("sde_name, sampler_name", marks.fast_first(itertools.product(SDES, GUIDE_SAMPLERS)))
def test_exact_classifier_guidance_samples_the_component(sde_name, sampler_name):
    sde = SDES[sde_name]
    x = draw(sde, posterior_guided(sde), GUIDE_SAMPLERS[sampler_name])
    assert share_of_component(x) > 0.97
    assert_matches_component(x)


def test_cfg_scale_zero_is_the_conditional_score_and_fused_matches_two_calls():
    sde = sd.VPSDE()
    x, t = 1.5 * MIX_2D.sample(jax.random.PRNGKey(1), 64), jnp.linspace(0.01, 0.9, 64)
    want = MIX_2D.component(K).score_fn(sde)(x, t)
    np.testing.assert_allclose(cfg(sde, 0.0)(x, t), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    cond_fn = MIX_2D.conditional_score_fn(sde)
    fused = sd.guidance.fused_classifier_free_guidance(
        cond_fn, jnp.full((64,), K, jnp.int32), jnp.full((64,), 3, jnp.int32), scale=2.0
    )
    np.testing.assert_allclose(fused(x, t), cfg(sde, 2.0)(x, t), rtol=1e-5, atol=1e-5)


def test_cfg_keeps_the_component_and_shrinks_its_spread():
    sde = sd.VPSDE()
    spreads = []
    for scale in (0.0, 1.0, 3.0):
        x = draw(sde, cfg(sde, scale), ODE)
        assert share_of_component(x) > 0.97, scale
        if scale == 0.0:
            assert_matches_component(x)
        spreads.append(float(jnp.trace(jnp.cov(x.T))))
    assert spreads[0] > spreads[1] > spreads[2], spreads


# ----- inpainting and colorization -----

SMC_N = 500  # SMCDiff runs 32 particles per example
SMC_SAMPLER = sd.samplers.PC(num_steps=50)


def w1(u, v):
    return float(metrics.wasserstein_1d(jnp.asarray(u)[None], jnp.asarray(v)[None], p=1)[0])


def exact_conditional(mix, known, values, n):
    """Two independent exact draw sets of the conditional: [n, unknowns] each."""
    cond = mix.condition(np.array(known), np.array(values))
    return tuple(np.asarray(cond.sample(jax.random.PRNGKey(seed), n)) for seed in (100, 101))


def inpaint_w1(sde_name, sampler, method, a, n=N):
    """(W1 of the inpainted x_1 to the exact p(x_1 | x_0 = a), its Monte Carlo floor), known x_0 bitwise."""
    sde = SDES[sde_name]
    x_known = jnp.zeros((n, 2)).at[:, 0].set(a)
    fn = jax.jit(
        lambda key: sd.guidance.inpaint(
            key, sde, INPAINT_MIX.score_fn(sde), x_known, jnp.array([1.0, 0.0]), sampler, method=method
        )[0]
    )
    x = fn(jax.random.PRNGKey(0))
    assert np.all(np.asarray(x[:, 0]) == np.float32(a)), "known entries must come back bitwise"
    exact, exact2 = exact_conditional(INPAINT_MIX, (True, False), (a, 0.0), n)
    return w1(x[:, 1], exact[:, 0]), w1(exact[:, 0], exact2[:, 0])


def check_default(sde_name, a, sampler=SMC_SAMPLER):
    """The default method behind the sampler (`guidance.default_method`) below 0.3 and near the floor."""
    dist, floor = inpaint_w1(sde_name, sampler, None, a, SMC_N)
    assert dist < 0.3 and dist < 3 * floor + 0.1, (dist, floor)


@pytest.mark.parametrize("a", marks.fast_first([0.0, 0.5]))
def test_default_inpainting_samples_the_exact_conditional_vp(a):
    """x_0 = 0 sits at a mode (x_1 = +1.5, 97%); x_0 = 0.5 between two (x_1 = +-1.5, 50:50)."""
    check_default("vp", a)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name, a", list(itertools.product(["subvp", "ve"], [0.0, 0.5])))
def test_default_inpainting_samples_the_exact_conditional(sde_name, a):
    check_default(sde_name, a)


def test_default_method_follows_the_samplers_noise():
    """Every-step resampling behind samplers whose every step draws noise, up to EVERY_STEP_MAX steps;
    adaptive behind the others and behind longer stochastic runs (the PC default of 1,000 steps)."""
    g = sd.guidance
    every_step = (S.PC(num_steps=g.EVERY_STEP_MAX), S.DPMSolverPPSDE(), S.DDIM(eta=0.5), S.Heun(s_churn=10.0))
    for sampler in every_step:
        assert g.default_method(sampler) is g.DEFAULT_METHOD, sampler
    for sampler in (S.DDIM(), S.DPMSolverPP(), S.UniPC(), S.IPNDM(), S.DEIS(), S.Heun(), S.Restart(),
                    S.PC(num_steps=g.EVERY_STEP_MAX + 1), S.PC()):
        assert g.default_method(sampler) is g.ODE_DEFAULT_METHOD, sampler
    assert g.DEFAULT_METHOD.resample_below == 1.0 and g.ODE_DEFAULT_METHOD.resample_below == 0.5


# A long PC run: resampled at every step, the particles of an example would fix on the unconditional mode
# (W1 1.08 at 1,000 steps, VP; README, sub-VP and VE there too). 100 examples keep it cheap: floor ~0.14.
@pytest.mark.slow
def test_default_inpainting_behind_a_long_pc_run_vp():
    dist, floor = inpaint_w1("vp", sd.samplers.PC(num_steps=1000), None, 0.0, 100)
    assert dist < 0.3 and dist < 3 * floor + 0.1, (dist, floor)


# Deterministic samplers: SMCDiff resampling at every step would leave few distinct particles (README).
ODE_SMC_SAMPLERS = {"dpm_solver_pp": sd.samplers.DPMSolverPP(num_steps=20),
                    "ddim": sd.samplers.DDIM(num_steps=50)}


def test_default_inpainting_with_an_ode_sampler_vp():
    """x_0 = 0 with DPM-Solver++ (20 steps): behind an ODE sampler the default resamples adaptively."""
    check_default("vp", 0.0, ODE_SMC_SAMPLERS["dpm_solver_pp"])


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDES)
def test_default_inpainting_with_ddim(sde_name):
    """DDIM 50: resampled at every step, its particles would collapse to a few (W1 0.58 at VP)."""
    check_default(sde_name, 0.0, ODE_SMC_SAMPLERS["ddim"])


@pytest.mark.parametrize("sampler_name", marks.fast_first(INPAINT_SAMPLERS))
def test_replacement_misses_a_one_mode_conditional(sampler_name):
    """At x_0 = 0 replacement leaves ~40% of x_1 at -1.5, the unconditional share: W1 about 1."""
    dist, floor = inpaint_w1("vp", INPAINT_SAMPLERS[sampler_name], Replacement(), 0.0)
    assert dist > 0.8 > 10 * floor


@pytest.mark.slow
@pytest.mark.parametrize(
    "sde_name, sampler_name, method_name",
    list(itertools.product(SDES, INPAINT_SAMPLERS, ["replacement", "repaint", "pigdm"])),
)
def test_every_method_on_a_two_mode_conditional(sde_name, sampler_name, method_name):
    dist, floor = inpaint_w1(sde_name, INPAINT_SAMPLERS[sampler_name], METHODS[method_name], 0.5)
    # With DDIM, RePaint and PiGDM condition where replacement does not (README, "Guidance and inpainting").
    bound = 0.2 if sampler_name == "ddim" and method_name != "replacement" else 0.5
    assert dist < bound and floor < 0.05


# Every fixed-step sampler takes a constraint through the one loop (samplers.base.scan_grid): one sampler of
# each way of counting (`FixedStepSampler.constrained_cost`), five steps each; accuracy tests run the rest.
CONSTRAINED_SAMPLERS = {
    "heun": S.Heun(num_steps=5), "ipndm": S.IPNDM(num_steps=5),
    "dpm_solver_pp": S.DPMSolverPP(num_steps=5, order=3), "restart": S.Restart(num_steps=5, restarts=2),
}


@pytest.mark.parametrize(
    "sampler_name", [name if name == "heun" else pytest.param(name, marks=pytest.mark.slow)
                     for name in CONSTRAINED_SAMPLERS]
)
def test_constrained_nfe_counts_every_call(sampler_name):
    """RePaint's takes and SMCDiff's weights are counted as made, also where a sampler runs an evaluation
    outside the constraint (Heun's and Restart's last step, the multistep solvers' first one)."""
    sde, sampler = SDES["vp"], CONSTRAINED_SAMPLERS[sampler_name]
    x_known = jnp.full((4, 2), 0.5)
    for method in (RePaint(resamplings=3), SMCDiff(num_particles=2)):
        counted, calls = count_calls(INPAINT_MIX.score_fn(sde))
        x, nfe = jax.jit(lambda key: sd.guidance.inpaint(key, sde, counted, x_known, jnp.array([1.0, 0.0]),
                                                         sampler, method=method))(jax.random.PRNGKey(0))
        jax.effects_barrier()
        assert int(nfe) == calls[0], (method, int(nfe), calls[0])
        assert np.all(np.asarray(x[:, 0]) == np.float32(0.5)) and np.all(np.isfinite(np.asarray(x)))


# The samplers beside those of the tables above, at the step counts of their README defaults.
MORE_SAMPLERS = {
    "ipndm": S.IPNDM(num_steps=20), "deis": S.DEIS(num_steps=20),
    "dpm_solver_pp_sde": S.DPMSolverPPSDE(num_steps=50), "restart": S.Restart(num_steps=10),
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", MORE_SAMPLERS)
def test_more_samplers_inpaint_a_two_mode_conditional(sampler_name):
    """PiGDM with IPNDM, DEIS, SDE-DPM-Solver++ and Restart conditions as well as with DDIM (below 0.2)."""
    dist, floor = inpaint_w1("vp", MORE_SAMPLERS[sampler_name], METHODS["pigdm"], 0.5)
    assert dist < 0.2 and floor < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", MORE_SAMPLERS)
def test_more_samplers_with_the_default_on_a_one_mode_conditional(sampler_name):
    """The default behind these samplers reaches its bound at x_0 = 0, where replacement scores ~1."""
    check_default("vp", 0.0, MORE_SAMPLERS[sampler_name])


def colour_mixture():
    """Three colour modes of one pixel [1, 1, 3]; two share their grey value and differ in hue."""
    means = np.array([[0.8, -0.4, -0.4], [-0.4, 0.8, -0.4], [0.5, 0.5, 0.5]]).reshape(3, 1, 1, 3)
    covs = np.stack([0.05**2 * np.eye(3) + 0.02 * np.ones((3, 3))] * 3)
    return toy.GaussianMixture.create([0.4, 0.4, 0.2], means, covs)


@pytest.mark.parametrize("sde_name", marks.fast_first(SDES))
def test_colorize_keeps_grey_and_follows_the_exact_conditional(sde_name):
    sde, mix, q, n = SDES[sde_name], colour_mixture(), sd.guidance.colour_basis(3), SMC_N
    grey_value = 0.0  # the grey of the first two modes: their hue is what the sampler must choose
    grey = jnp.full((n, 1, 1, 3), grey_value)
    x, _ = jax.jit(lambda key: sd.guidance.colorize(key, sde, mix.score_fn(sde), grey, SMC_SAMPLER))(
        jax.random.PRNGKey(0)
    )
    # The grey coordinate is written exactly in the colour basis; back in RGB only the rounding of Q remains.
    np.testing.assert_allclose(np.asarray(x).mean(-1), grey_value, atol=4 * np.finfo(np.float32).eps)
    u = np.asarray(x).reshape(n, 3) @ q
    rotated = mix.linear_map(q.T)
    exact, exact2 = exact_conditional(rotated, (True, False, False), (np.sqrt(3) * grey_value, 0.0, 0.0), n)
    for j in range(2):
        floor = w1(exact[:, j], exact2[:, j])
        assert w1(u[:, j + 1], exact[:, j]) < max(0.2 * np.std(exact[:, j]), 3 * floor)


# ----- bad input -----


def test_bad_input():
    sde, sampler = sd.VPSDE(), ODE
    score_fn = INPAINT_MIX.score_fn(sde)
    x_known, mask = jnp.zeros((4, 2)), jnp.array([1.0, 0.0])
    with pytest.raises(ValueError, match="mask must have the shape"):
        sd.guidance.inpaint(jax.random.PRNGKey(0), sde, score_fn, x_known, jnp.ones((3,)), sampler)
    with pytest.raises(ValueError, match="mask must hold only 0"):
        sd.guidance.inpaint(jax.random.PRNGKey(0), sde, score_fn, x_known, jnp.array([1.0, 0.5]), sampler)
    with pytest.raises(ValueError, match="sampler: constraints"):
        sd.guidance.inpaint(jax.random.PRNGKey(0), sde, score_fn, x_known, mask, sd.samplers.RK45())
    with pytest.raises(ValueError, match="RK45 chooses its own steps and takes no constraint"):
        sd.sample(jax.random.PRNGKey(0), sde, score_fn, (4, 2), sd.samplers.RK45(), constraint=lambda *a: 0)
    with pytest.raises(ValueError, match="grey must be shaped"):
        sd.guidance.colorize(jax.random.PRNGKey(0), sde, score_fn, jnp.zeros((4, 2, 2, 1)), sampler)
    for make in (
        lambda: sd.guidance.classifier_free_guidance(score_fn, score_fn, scale=-0.5),
        lambda: sd.guidance.classifier_guidance(score_fn, lambda x, t: x[:, 0], scale=-1.0),
        lambda: sd.guidance.fused_classifier_free_guidance(lambda x, t, c: x, 0, 0, scale=-1.0),
    ):
        with pytest.raises(ValueError, match="scale must be a number >= 0"):
            make()
    with pytest.raises(ValueError, match="resamplings must be an integer >= 1"):
        RePaint(resamplings=0)
    with pytest.raises(ValueError, match="PiGDM: scale must be > 0"):
        PiGDM(scale=0.0)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 2"):
        SMCDiff(num_particles=1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="resample_below must lie in"):
            SMCDiff(resample_below=bad)
    with pytest.raises(ValueError, match="method must be one of"):
        sd.guidance.inpaint(jax.random.PRNGKey(0), sde, score_fn, x_known, jnp.array([1.0, 0.0]), sampler,
                            method="repaint")
