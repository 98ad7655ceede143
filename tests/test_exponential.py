"""Exponential integrators: exactness of the integration weights on polynomials, DDIM, few-step accuracy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import scoresde as sd
from checks import assert_matches_mixture, exact_draws, mixture_2d_endpoint
from scoresde import toy
from scoresde.bench.accuracy import pathwise_error
from scoresde.samplers.exponential import (
    exp_moments,
    exponential_update,
    integration_weights,
    multistep_moments,
)

MIX_2D = toy.mixture_2d()


def weighted_integral(h, poly):
    """int_0^1 h e^{-h (1 - u)} poly(u) du by adaptive quadrature, independently of the closed forms."""
    integrand = lambda u: h * np.exp(-h * (1 - u)) * poly(u)
    return integrate.quad(integrand, 0.0, 1.0, epsabs=1e-14, epsrel=1e-13)[0]


@pytest.mark.parametrize("h", [0.05, 0.7, 3.0])
@pytest.mark.parametrize("nodes", [[0.0], [0.0, -0.8], [0.0, -1.0, -1.7], [1.0, 0.0, -0.6, -1.5]])
def test_integration_weights_are_exact_below_the_number_of_nodes(h, nodes):
    with jax.enable_x64(True):
        w = np.asarray(integration_weights(jnp.asarray(h), jnp.asarray(nodes)))
    rng = np.random.default_rng(0)
    for degree in range(len(nodes)):
        coeffs = rng.normal(size=degree + 1)
        poly = np.polynomial.Polynomial(coeffs)
        want = weighted_integral(h, poly)
        np.testing.assert_allclose(w @ poly(np.asarray(nodes)), want, rtol=1e-10, atol=1e-12)


def test_moment_recursion_matches_quadrature():
    with jax.enable_x64(True):
        for h in (0.01, 0.5, 4.0):
            mu = np.asarray(exp_moments(jnp.asarray(h), 4))
            want = [weighted_integral(h, lambda u, m=m: u**m) for m in range(4)]
            np.testing.assert_allclose(mu, want, rtol=1e-7)


def polynomial_score(sde, coeffs):
    """A score function whose Tweedie denoiser is x0(lambda) = sum_m c_m lambda^m: [B, 2], whatever x is."""

    def score_fn(x, t):
        lam = sde.half_log_snr(t)[:, None]
        x0 = sum(c * lam**m for m, c in enumerate(coeffs))
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return (alpha * x0 - x) / sigma**2

    return score_fn


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=["vp", "ve"])
def test_third_order_step_is_exact_for_quadratic_data_prediction(sde):
    """Three nodes integrate a quadratic x0(lambda) exactly; the published 3M weighting misses by ~h^3/6.

    The exact step is the variation-of-constants formula with its integral done by quadrature. The DPM-Solver
    code, diffusers and k-diffusion give the second divided difference half its weight, i.e. the update with
    mu_2 halved: for x0 = lambda^2 its one-step error is alpha_s mu_2 h^2 / 2 ~ h^3 / 6.
    """
    coeffs = np.array([[0.3, -1.0], [0.5, 0.2], [1.0, 1.0]])  # x0(lambda) = c_0 + c_1 lambda + c_2 lambda^2
    with jax.enable_x64(True):
        times = jnp.array([0.62, 0.55, 0.5, 0.42])  # two earlier nodes, the current time t, the target s
        lam = sde.half_log_snr(times)
        t, s, h = times[2], times[3], lam[3] - lam[2]
        nodes = (lam[2::-1] - lam[2]) / h  # the current node first (r = 0), then the earlier, negative ones
        score_fn = polynomial_score(sde, list(coeffs))
        x0_at = lambda u: sde.data_prediction(score_fn, jnp.zeros((1, 2)), jnp.full((1,), u))
        x0s = jnp.stack([x0_at(u) for u in times[2::-1]])
        x = jnp.array([[0.4, -0.9]])
        ours = exponential_update(sde, x, t, s, integration_weights(h, nodes, multistep_moments), x0s)
        halved = lambda h, k: exp_moments(h, k).at[2].multiply(0.5)
        published = exponential_update(sde, x, t, s, integration_weights(h, nodes, halved), x0s)
        lam_t, h, mu2 = float(lam[2]), float(h), float(exp_moments(h, 3)[2])
        ratio, alpha_s = float(sde.sigma(s) / sde.sigma(t)), float(sde.alpha(s))
    integral = [weighted_integral(h, lambda u, j=j: np.polynomial.Polynomial(coeffs[:, j])(lam_t + u * h))
                for j in range(2)]
    want = ratio * np.asarray(x) + alpha_s * np.asarray(integral)
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-9, atol=1e-11)
    miss = np.asarray(published - ours)[0] / coeffs[2]  # per unit coefficient of lambda^2
    np.testing.assert_allclose(miss, -alpha_s * mu2 * h**2 / 2, rtol=1e-6)


def test_ddim_without_noise_is_first_order_dpm_solver():
    with jax.enable_x64(True):
        sde = sd.SubVPSDE()
        x = sde.prior_sampling(jax.random.PRNGKey(0), (16, 2)).astype(jnp.float64)
        ddim = sd.samplers.DDIM(num_steps=12, schedule="quadratic")
        dpm1 = sd.samplers.DPMSolverPP(num_steps=12, order=1, schedule="quadratic")
        key = jax.random.PRNGKey(1)
        a, b = (mixture_2d_endpoint(sde, sampler)(key, x)[0] for sampler in (ddim, dpm1))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ddim_with_full_noise_samples_the_mixture(sde_name):
    """eta = 1 is ancestral sampling: its injected noise must keep the marginals right."""
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE()}[sde_name]
    sampler = sd.samplers.DDIM(num_steps=300, eta=1.0)
    fn = jax.jit(lambda k: sd.sample(k, sde, MIX_2D.score_fn(sde), (4000, 2), sampler))
    x, nfe = fn(jax.random.PRNGKey(0))
    assert int(nfe) == 301
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, 4000))


VP = sd.VPSDE(beta_min=0.1, beta_max=20.0)


@functools.cache
def vp_reference(num_paths):
    with jax.enable_x64(True):
        x = VP.prior_sampling(jax.random.PRNGKey(1), (num_paths, 2)).astype(jnp.float64)
        reference = mixture_2d_endpoint(VP, sd.samplers.RK45(rtol=1e-10, atol=1e-10))
        return x, reference(jax.random.PRNGKey(0), x)[0]


def vp_error(sampler, num_paths=2048):
    """RMS over paths of |x - x_ref| at eps, every path started from the same x_T as the RK45 reference."""
    with jax.enable_x64(True):
        x, ref = vp_reference(num_paths)
        return pathwise_error(mixture_2d_endpoint(VP, sampler)(jax.random.PRNGKey(0), x)[0], ref)


def test_few_step_accuracy_at_10_nfe():
    """VP (beta 0.1-20), mixture_2d, 10 NFE each, on the quadratic grid: of the four, the best for each here.

    Measured (2048 paths): Euler 0.103, DDIM 0.137, DPM-Solver++ 2M 0.062, UniPC-2 0.038 (README). UniPC has
    under half Euler's error. DPM-Solver++ 2M has under half the error of DDIM, the first-order exponential
    integrator (Euler in the EDM variables x / alpha, sigma / alpha, k-diffusion's "Euler"), but only ~0.6 of
    the error of Euler in t, which is unusually good on this problem: the issue's "half of Euler's" does not
    hold for 2M here.
    """
    errors = {
        name: vp_error(sampler(num_steps=10, schedule="quadratic"))
        for name, sampler in [("euler", sd.samplers.Euler), ("ddim", sd.samplers.DDIM),
                              ("dpm2", sd.samplers.DPMSolverPP), ("unipc", sd.samplers.UniPC)]
    }
    assert errors["unipc"] <= 0.5 * errors["euler"], errors
    assert errors["dpm2"] <= 0.5 * errors["ddim"], errors
    assert errors["dpm2"] <= 0.7 * errors["euler"], errors


@pytest.mark.parametrize("sampler", [sd.samplers.DPMSolverPP(num_steps=20), sd.samplers.UniPC(num_steps=20)],
                         ids=["dpm_solver_pp_2m", "unipc_2"])
def test_twenty_nfe_samples_match_the_mixture(sampler):
    x, nfe = jax.jit(lambda k: sd.sample(k, VP, MIX_2D.score_fn(VP), (4000, 2), sampler, denoise=False))(
        jax.random.PRNGKey(0))
    assert int(nfe) == 20
    assert_matches_mixture(MIX_2D, x, exact_draws(MIX_2D, 4000))
