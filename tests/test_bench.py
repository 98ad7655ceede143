"""Sampler benchmarks: NFE targeting, shared accuracy machinery, reproducibility, reports, CLI, bad input."""

import functools
import json
import math
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import scoresde as sd
from scoresde import config as config_lib
from scoresde import evaluation, experiment as experiment_lib, metrics, toy, train
from scoresde.bench import accuracy, command, exact, grid, overhead, report
from scoresde.samplers import PC, RK45, DPMSolverPP, Euler, Heun, Restart, UniPC, build_sampler

import tiny_runs

DISTRIBUTION_FIGURES = ("sliced_wasserstein", "mode_weights", "mode_means", "mode_covs")


@pytest.mark.parametrize(
    "sampler, target, steps, nfe",
    [
        (Euler(), 7, 7, 7),
        (Heun(), 10, 5, 9),  # 2N - 1: the last step is Euler's
        (PC(), 5, 2, 4),  # predictor + one corrector round per step
        (PC(n_corrector_steps=2), 10, 3, 9),
        (PC(corrector="none"), 5, 5, 5),
        (DPMSolverPP(order=3), 3, 3, 3),
        (UniPC(), 1000, 1000, 1000),
        (Restart(), 10, 4, 9),  # 2N - 1 + 2 x 1 restart x 1 Heun step (restart_steps scales with N)
    ],
)
def test_with_nfe_takes_the_most_steps_within_the_budget(sampler, target, steps, nfe):
    configured = sampler.with_nfe(target)
    assert (configured.num_steps, configured.nfe()) == (steps, nfe)
    assert configured == sampler.with_steps(steps)


@pytest.mark.parametrize(
    "sampler, target, match",
    [
        (PC(), 1, "PC makes at least 2 score evaluations; asked for 1"),
        (DPMSolverPP(order=3), 2, "DPMSolverPP makes at least 3 score evaluations; asked for 2"),
        (UniPC(order=3), 2, "UniPC makes at least 3 score evaluations; asked for 2"),
        (RK45(), 50, "RK45 chooses its own steps"),
        (Restart(), 4, "Restart makes at least 5 score evaluations; asked for 4"),
    ],
)
def test_nfe_below_a_samplers_minimum_raises(sampler, target, match):
    with pytest.raises(ValueError, match=match):
        sampler.with_nfe(target)


def test_sampler_specs():
    assert build_sampler("dpm_solver_pp:order=3") == DPMSolverPP(order=3)
    assert build_sampler("pc:predictor=ancestral:snr=0.2") == PC(predictor="ancestral", snr=0.2)
    assert build_sampler("pc:snr=0.2", snr=0.1, num_steps=7) == PC(snr=0.2, num_steps=7)  # the spec wins
    assert build_sampler("euler:schedule=(1.0,0.5,0.001):num_steps=2").nfe() == 2
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; valid names: \["):
        build_sampler("dpm")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['rho'\]; valid settings of unipc: \["):
        build_sampler("unipc:rho=7")
    with pytest.raises(ValueError, match=r"'rk45': unknown setting\(s\) \['num_steps'\]"):
        build_sampler("rk45", num_steps=10)
    with pytest.raises(ValueError, match="setting 'order' is not key=value"):
        build_sampler("unipc:order")


def test_convergence_order_recovers_a_power_law():
    nfes = np.array([10.0, 20.0, 40.0, 80.0])
    assert accuracy.convergence_order(nfes, 3.0 * nfes**-2.5) == pytest.approx(2.5, abs=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        accuracy.convergence_order([10], [0.1])


def test_pathwise_error_is_rms_of_path_distances():
    x = np.zeros((2, 3, 4))
    y = np.zeros((2, 3, 4))
    y[0, 0, 0], y[1] = 3.0, 1.0  # path distances 3 and sqrt(12)
    assert accuracy.pathwise_error(x, y) == pytest.approx(np.sqrt((9.0 + 12.0) / 2))


@pytest.mark.slow
def test_floors_are_the_mean_distance_of_exact_sample_sets():
    """The sliced Wasserstein floor is sliced_wasserstein_floor's: a floor is what exact draws score."""
    target = toy.mixture_2d().marginal(sd.VPSDE(), 1e-3)
    key = jax.random.PRNGKey(0)
    floors = accuracy.distribution_floors(key, target, 500, num_repeats=2)
    sw_floor = metrics.sliced_wasserstein_floor(key, target.sample, 500, num_repeats=2)
    np.testing.assert_allclose(floors["sliced_wasserstein"], sw_floor, rtol=1e-6)
    x, y = (target.sample(k, 500) for k in jax.random.split(jax.random.PRNGKey(2)))
    errors = accuracy.distribution_errors(jax.random.PRNGKey(1), target, x, y)
    for name in DISTRIBUTION_FIGURES:
        assert 0.0 < float(errors[name]) < 4.0 * float(floors[name]), (name, errors[name], floors[name])


# Where the benchmark's own float32 figures (512 paths under VP, reference RK45 at rtol = atol = 1e-8) are
# asymptotic: above these NFEs the slope has settled, below the top ones the error stays 10x or more above the
# float32 round-off the high-order solvers reach near 1000 NFE (measured slopes: Euler 0.86, DDIM 0.95, Heun
# 2.15, DPM-Solver++ 2M 1.95, 3M 2.85, UniPC-2 2.75).
ASYMPTOTIC = {
    "euler": (1, (100, 200, 400)),
    "ddim": (1, (100, 200, 400)),
    "heun": (2, (199, 399)),
    "dpm_solver_pp": (2, (50, 100, 200, 400)),
    "dpm_solver_pp:order=3": (3, (50, 100, 200)),
    "unipc": (3, (50, 100, 200, 400)),
    "ipndm": (2, (128, 256)),
    "deis": (3, (128, 256)),
}


@functools.cache
def vp_case():
    mix, sde, key = toy.mixture_2d(), sd.VPSDE(), jax.random.PRNGKey(0)
    return exact.exact_case(key, mix, sde, sde.prior_sampling(key, (512, 2)), distribution=False)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ASYMPTOTIC)
def test_the_benchmark_grid_measures_the_known_orders(spec):
    """The grid `scoresde bench samplers` runs, in float32, checked against theory: |slope - order| <= 0.4."""
    order, nfes = ASYMPTOTIC[spec]
    results = grid.run_grid({"vpsde": vp_case}, {spec: build_sampler(spec)}, nfes,
                            key=jax.random.PRNGKey(0), repeats=1, progress=False)
    nfe, errors = zip(*[(r.nfe, r.figures["pathwise"]) for r in results.records])
    assert nfe == nfes
    slope = accuracy.convergence_order(nfe, errors)
    assert abs(slope - order) <= 0.4, f"{spec}: order {slope:.2f}, expected {order}; errors {errors}"


def test_a_signal_ends_the_grid_after_the_run_in_flight_keeping_the_runs_done(monkeypatch):
    """SIGTERM during the second of four runs: that run completes, the other two are not started."""
    calls = []

    def run_record(*args):
        calls.append(args[2:4])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return grid.Record(args[1], args[2], args[3], args[3], "", 0.0, 0.0, {})

    monkeypatch.setattr(grid, "run_record", run_record)
    before = signal.getsignal(signal.SIGTERM)
    samplers = {"euler": build_sampler("euler"), "ddim": build_sampler("ddim")}
    results = grid.run_grid({"vpsde": vp_case}, samplers, (4, 8), key=jax.random.PRNGKey(0), progress=False)
    assert results.stopped == "SIGTERM" and results.to_json()["stopped"] == "SIGTERM"
    assert [(r.sampler, r.nfe_target) for r in results.records] == calls == [("euler", 4), ("euler", 8)]
    assert signal.getsignal(signal.SIGTERM) is before  # the grid's handlers are gone


TINY = exact.ExactBench(sdes=("vpsde",), samplers=("euler", "pc"), nfes=(4, 8), num_samples=200,
                        floor_repeats=2, repeats=1)


def accuracy_figures(results):
    return ([(r.case, r.sampler, r.nfe_target, r.nfe, r.settings, r.figures) for r in results.records],
            {name: case["floors"] for name, case in results.cases.items()})


@pytest.mark.slow
def test_same_seed_reproduces_every_accuracy_figure():
    first = exact.bench_exact(TINY, progress=False)
    assert accuracy_figures(first) == accuracy_figures(exact.bench_exact(TINY, progress=False))
    records = {(r.sampler, r.nfe_target): r for r in first.records}
    assert [records["euler", n].nfe for n in (4, 8)] == [4, 8]
    assert [records["pc", n].nfe for n in (4, 8)] == [4, 8]
    assert records["euler", 8].figures["pathwise"] < records["euler", 4].figures["pathwise"]
    assert all(r.figures["pathwise"] is None for r in first.records if r.sampler == "pc")  # stochastic
    assert all(r.figures[name] > 0 for r in first.records for name in DISTRIBUTION_FIGURES)


@pytest.mark.parametrize(
    "what, overrides, match",
    [
        ("samplers", {"samplers": ["euler", "midpoint"]}, r"unknown sampler 'midpoint'; valid names"),
        ("samplers", {"problem": "mixture_3d"}, r"unknown exact-score problem 'mixture_3d'; valid names"),
        ("samplers", {"sdes": ["vp"]}, r"unknown SDE 'vp'; valid names"),
        ("samplers", {"samplers": ["pc"], "nfes": ["1"]}, "PC makes at least 2 score evaluations; asked for"),
        ("samplers", {"nfes": ["10", "x"]}, "--nfes must be positive integers; got 10,x"),
        ("samplers", {"models": ["mlp"]}, r"bench samplers does not take \['--models'\]"),
        ("samplers", {"workdir": "/nonexistent/run"}, "/nonexistent/run holds no training run"),
        ("samplers", {"workdir": "runs/x", "sdes": ["vpsde"]}, r"bench samplers does not take \['--sdes'\]"),
        ("samplers", {"workdir": "runs/x", "num_samples": 10, "likelihood_samples": 20},
         r"likelihood_samples must lie in \[0, num_samples=10\]"),
        ("overhead", {"models": ["unet"]}, r"unknown model\(s\) \['unet'\]; valid names"),
        ("leaderboard", {}, r"bench needs what to benchmark, one of \['overhead', 'samplers'\]"),
    ],
)
def test_bad_input_fails_before_any_work(what, overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        command.run(what, overrides, outdir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A 4-step run of the tiny MLP checkerboard config."""
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_runs.tiny_mlp(**{"training.snapshot_sampling": False})
    train.run(experiment_lib.build_experiment(config_lib.from_config_dict(config)), workdir, progress=False)
    return workdir


@pytest.mark.slow
def test_trained_model_leaderboard(trained_workdir, tmp_path):
    overrides = {"workdir": str(trained_workdir), "samplers": ["heun", "pc"], "nfes": ["8", "16", "64"],
                 "num_samples": 64, "likelihood_samples": 16, "fit": True, "fit_paths": 32, "fit_max_nfe": 8}
    payload = command.run("samplers", overrides, quick=True, outdir=str(tmp_path), progress=False)
    case = payload["cases"]["vpsde"]
    # Floors: the held-out figures of `scoresde eval` (same key split), computed once.
    experiment, _ = experiment_lib.restore(trained_workdir)
    k_score = jax.random.split(jax.random.PRNGKey(0), 4)[1]
    eval_figures = evaluation.point_metrics(k_score, experiment.dataset.test, experiment.dataset)
    held_out = {name.removesuffix("_held_out"): value for name, value in eval_figures.items()
                if name.endswith("_held_out")}
    assert set(held_out) == {"sliced_wasserstein", "mmd", "in_support", "mode_coverage"}
    assert case["floors"] == pytest.approx(held_out)
    assert case["model"]["entropy_nats"] == eval_figures["entropy_nats"] == pytest.approx(math.log(16))
    assert case["reference"]["figures"]["pathwise"] == 0.0 and case["model"]["test_nll_nats"] > 0
    records = {(r["sampler"], r["nfe_target"]): r for r in payload["records"]}
    assert [records["heun", n]["nfe"] for n in (8, 16, 64)] == [7, 15, 63]
    # Heun converges to the tight RK45 solve of the same learnt ODE from the same x_T.
    errors = [records["heun", n]["figures"]["pathwise"] for n in (8, 16, 64)]
    assert errors[0] > errors[1] > errors[2] > 0, errors
    # A grid fitted to other paths of the learnt score beats Heun's named grid on the benchmark's own.
    fitted = records["heun (fitted)", 8]
    assert fitted["fit_s"] > 0 and fitted["figures"]["pathwise_fit"] > 0
    assert fitted["figures"]["pathwise"] < errors[0] and ("heun (fitted)", 16) not in records
    for record in payload["records"]:
        figures = record["figures"]
        assert (figures["pathwise"] is None) == (record["sampler"] == "pc")
        assert all(np.isfinite(figures[name]) for name in ("sliced_wasserstein", "mmd", "sample_nll_nats"))
        assert 0 <= figures["in_support"] <= 1 and "sample_nll_nats_true" not in figures
    markdown = (tmp_path / "results.md").read_text()
    floors = "Monte Carlo floors (32 other held-out points against the 32 the samples are compared with)"
    assert floors in markdown
    assert (tmp_path / "error_vs_nfe.png").stat().st_size > 0


def synthetic_payload():
    record = lambda sampler, nfe, pathwise, sw: dict(
        case="vpsde", sampler=sampler, nfe_target=nfe, nfe=nfe, settings="", compile_s=1.0, run_s=1e-3 * nfe,
        figures={"pathwise": pathwise, "sliced_wasserstein": sw, "mode_weights": 0.01, "mode_means": 0.02,
                 "mode_covs": 0.03})
    floors = {"sliced_wasserstein": 0.05, "mode_weights": 0.005, "mode_means": 0.006, "mode_covs": 0.007}
    reference = {"sampler": "RK45", "nfe": 300, "compile_s": 1.0, "run_s": 0.01}
    records = [record("heun", 9, 0.1, 0.2), record("heun", 19, 0.02, 0.1), record("pc", 10, None, 0.3)]
    case = {"num_samples": 100, "floors": floors, "reference": reference}
    return {"cases": {"vpsde": case}, "records": records}


def test_report_prints_every_floor_beside_its_figure_and_draws_plots(tmp_path):
    payload = synthetic_payload()
    paths = report.write_report(tmp_path, payload)
    assert json.loads(paths[0].read_text()) == payload
    lines = paths[1].read_text().splitlines()
    pathwise = lines.index("| pathwise error | NFE 9 | NFE 10 | NFE 19 |")
    # No row for pc: it is stochastic.
    assert lines[pathwise + 2:pathwise + 4] == ["| heun | 0.1 | n/a | 0.02 |", ""]
    sliced = lines.index("| sliced W2 (floor 0.05) | NFE 9 | NFE 10 | NFE 19 |")
    assert lines[sliced + 2:sliced + 4] == ["| heun | 0.2 | n/a | 0.1 |", "| pc | n/a | 0.3 | n/a |"]
    full = lines.index("| sampler | NFE | pathwise error | sliced W2 | mode weights | mode means | mode covs "
                       "| compile (s) | run (ms) |")
    assert lines[full + 2] == ("| heun | 9 | 0.1 | 0.2 (0.05) | 0.01 (0.005) | 0.02 (0.006) | 0.03 (0.007) "
                               "| 1.00 | 9.00 |")
    assert lines[full + 4].startswith("| pc | 10 | n/a | 0.3 (0.05) |")
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000


@pytest.mark.slow
def test_overhead_of_a_sampler_loop():
    rows = overhead.bench_overhead(overhead.OverheadBench(models=("mlp",), samplers=("euler",), nfes=(4,),
                                                          repeats=1), progress=False)
    (row,) = rows
    assert (row["model"], row["sampler"], row["nfe"]) == ("mlp", "euler", 4)
    assert row["overhead"] == pytest.approx(row["run_ms"] / (4 * row["score_ms"]))
    assert 0.2 < row["overhead"] < 20.0
    # The same loop with the free score -x: what the sampler costs beyond the network.
    assert row["loop_share"] == pytest.approx(row["loop_ms"] / (4 * row["score_ms"]))
    assert 0 < row["loop_ms"] < row["run_ms"]


def scoresde(*args, cwd):
    return subprocess.run([sys.executable, "-m", "scoresde", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cli_malformed_mixture_file_is_one_line_and_exit_2(tmp_path):
    np.savez(tmp_path / "mixture.npz", weights=[0.5, 0.5], means=[[0.0], [1.0]])
    result = scoresde("bench", "samplers", f"--problem={tmp_path / 'mixture.npz'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    one_line = r"scoresde bench: error: mixture file .* missing array\(s\) \['covs'\].*\n"
    assert re.fullmatch(one_line, result.stderr)


@pytest.mark.slow
def test_quick_cli_writes_a_reproducible_report(tmp_path):
    """`scoresde bench samplers --quick` end to end, twice: the same accuracy figures, every file written."""
    payloads = []
    for run in ("a", "b"):
        outdir = f"--outdir={tmp_path / run}"
        result = scoresde("bench", "samplers", "--quick", "--noprogress", outdir, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == [
            "error_vs_nfe.png", "error_vs_time.png", "results.json", "results.md"]
        payloads.append(json.loads((tmp_path / run / "results.json").read_text()))
    figures = [[(r["sampler"], r["nfe"], r["figures"]) for r in p["records"]] for p in payloads]
    assert figures[0] == figures[1]
    assert payloads[0]["cases"]["vpsde"]["floors"] == payloads[1]["cases"]["vpsde"]["floors"]
    quick = exact.QUICK
    assert len(payloads[0]["records"]) == len(quick.sdes) * len(quick.samplers) * len(quick.nfes)
    assert all(r["nfe"] <= r["nfe_target"] for r in payloads[0]["records"])


@pytest.mark.slow
def test_fitted_grids_are_judged_on_other_paths(tmp_path):
    """`bench samplers --fit`: each deterministic sampler also runs on a grid fitted to other paths, which
    beats its named grid on the benchmark's paths, fitted once per spec whatever other named grids it also
    runs on; stochastic samplers fit nothing; the report leads with the few-step frontier."""
    overrides = {"sdes": ["vpsde"], "samplers": ["unipc", "pc"], "nfes": ["5"], "num_samples": 256,
                 "fit": True, "fit_paths": 128, "floor_repeats": 1, "repeats": 1, "grids": ["quadratic"]}
    payload = command.run("samplers", overrides, outdir=str(tmp_path), progress=False)
    records = {r["sampler"]: r for r in payload["records"]}
    assert sorted(records) == ["pc", "pc:schedule=quadratic", "unipc", "unipc (fitted)",
                               "unipc:schedule=quadratic"]
    assert records["unipc:schedule=quadratic"]["settings"] == repr(UniPC(num_steps=5, schedule="quadratic"))
    fitted, named = records["unipc (fitted)"], records["unipc"]
    assert fitted["nfe"] == named["nfe"] == 5 and fitted["fit_s"] > 0 and named["fit_s"] is None
    assert fitted["figures"]["pathwise"] < named["figures"]["pathwise"]
    assert fitted["figures"]["pathwise_fit"] > 0 and "pathwise_fit" not in named["figures"]
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("### Few-step frontier\n") and "| vpsde | 5 | unipc (fitted) " in text
    judged, on_fit = fitted["figures"]["pathwise"], fitted["figures"]["pathwise_fit"]
    assert f"| unipc (fitted) | {judged:.3g} ({on_fit:.3g}) |" in text
