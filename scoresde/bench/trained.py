"""`scoresde bench samplers --workdir`: the sampler grid on a trained model's learnt score.

Where the exact-score leaderboard isolates solver error, this one shows what a sampler delivers with a real
network: every sampler x NFE starts from the same x_T and is scored by `scoresde.evaluation` against
held-out data (2-D sets: sliced Wasserstein and MMD, and for the toys of `scoresde.toy2d` the share of samples
in the support and mode coverage; digits: a classifier's confidence and Fréchet distance),
each beside the value real data reaches, and by the pathwise distance to a tight RK45 solve of the learnt
probability-flow ODE. Optionally, the model's own likelihood of the samples (bits/dim of images, nats of
points) shows which samplers produce what the model considers typical.

As on exact scores, samples are scored at t = eps without a final denoising step, so every score evaluation is
the solver's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from scoresde import evaluation, experiment as experiment_lib, samplers
from scoresde.bench.accuracy import fitting_paths, pathwise_error, reference_solve
from scoresde.bench.exact import DEFAULT_SAMPLERS
from scoresde.bench.grid import Case, GridResults, as_figure, check_nfes, run_grid
from scoresde.samplers.base import require

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainedBench:
    """Settings of `scoresde bench samplers --workdir`.

    Attributes:
      workdir: a training run; its newest checkpoint's EMA parameters give the score.
      samplers: specs for `samplers.build_sampler`, e.g. "unipc:order=3".
      nfes: target score evaluations per solve.
      num_samples: paths per sampler (at most half the held-out points are compared for 2-D sets).
      likelihood_samples: how many of each sampler's samples the model's likelihood is computed for (0: none).
      reference_tol: rtol = atol of the RK45 solve that pathwise distances are measured against. On the
        checkerboard MLP the solve at 1e-6 (907 NFE) lies 5e-4 RMS from one at 1e-7 (1849 NFE), at 1e-5
        (337 NFE) 3.5e-3; pathwise figures near these values measure the reference, not the sampler.
      repeats: timed calls per cell after the compiling one.
      seed: seeds x_T, the samplers, the classifier and the likelihood probes.
      fit, fit_paths, fit_max_nfe: as `ExactBench`'s: also run every deterministic fixed-step sampler on a
        grid fitted to the learnt score from `fit_paths` other prior draws (their RK45 end points the target)
        at each of `nfes` up to `fit_max_nfe`, scored on the benchmark's own paths.
    """

    workdir: str = ""
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    nfes: tuple[int, ...] = (5, 10, 20, 50, 100, 1000)
    num_samples: int = 1000
    likelihood_samples: int = 100
    reference_tol: float = 1e-6
    repeats: int = 3
    seed: int = 0
    fit: bool = False
    fit_paths: int = 1000
    fit_max_nfe: int = 20

    def __post_init__(self):
        require(bool(self.samplers), "need at least one sampler.")
        require(self.fit_paths >= 2, f"fit_paths must be >= 2; got {self.fit_paths}.")
        check_nfes(self.nfes)
        require(self.num_samples >= 2, f"num_samples must be >= 2; got {self.num_samples}.")
        require(0 <= self.likelihood_samples <= self.num_samples,
                f"likelihood_samples must lie in [0, num_samples={self.num_samples}]; "
                f"got {self.likelihood_samples}.")
        require(self.reference_tol > 0, f"reference_tol must be positive; got {self.reference_tol}.")


# The model's own likelihood figures of its samples (not the data density's NLL of them, which is infinite for
# a checkerboard sample outside the cells).
MODEL_LIKELIHOODS = ("nll_nats", "bits_per_dim")

# A small grid for `--quick`: under a minute on two CPU cores for the toy configs.
QUICK = TrainedBench(samplers=("euler", "dpm_solver_pp", "pc"), nfes=(10, 50), num_samples=500,
                     likelihood_samples=0, repeats=1)


def sample_scorer(experiment: experiment_lib.Experiment, key: Array, num_samples: int):
    """(x in the model's range -> figures), the values real data reaches (the floors), where those come from,
    and facts on the scorer."""
    dataset = experiment.dataset
    require(len(dataset.test) > 0, "scoring samples needs held-out data, and this run has none "
                                   "(data.test_fraction is 0).")
    if not dataset.is_image:
        score, floors, n = evaluation.point_scorer(key, dataset, num_samples)
        floors_from = f"{n} other held-out points against the {n} the samples are compared with"
        return score, floors, floors_from, evaluation.entropy_figures(dataset)
    require(dataset.test_labels is not None,
            f"dataset {dataset.name!r} has no labels, so no classifier can score its samples.")
    scorer = evaluation.DigitsScorer.build(dataset)
    score = lambda x: scorer(np.clip(np.asarray(dataset.unscale(x)), 0.0, 1.0))
    floors_from = f"{num_samples} training images against the {len(scorer.test)} test images"
    return score, scorer.real(num_samples), floors_from, {"classifier_test_accuracy": scorer.test_accuracy()}


def trained_case(experiment: experiment_lib.Experiment, params, settings: TrainedBench) -> Case:
    """The run's SDE with its learnt score; figures as described in the module docstring."""
    objective, dataset = experiment.objective, experiment.dataset
    k_init, k_score, k_likelihood, k_test = jax.random.split(jax.random.PRNGKey(settings.seed), 4)
    score_fn = objective.score_fn(params)
    x_init = objective.sde.prior_sampling(k_init, (settings.num_samples,) + experiment.example_shape)
    x_ref, reference = reference_solve(objective.sde, score_fn, k_init, x_init, tol=settings.reference_tol,
                                       repeats=settings.repeats)
    score, floors, floors_from, model = sample_scorer(experiment, k_score, settings.num_samples)
    n_lik = settings.likelihood_samples
    likelihood = evaluation.likelihood_fn(objective, dataset) if n_lik else None
    if likelihood:
        test = evaluation.test_examples(dataset, min(n_lik, len(dataset.test)), settings.seed)
        model.update({f"test_{name}": value for name, value in likelihood(params, k_test, test).items()})

    def evaluate(x: Array, deterministic: bool) -> dict:
        figures = {"pathwise": pathwise_error(x, x_ref) if deterministic else None, **score(x)}
        if likelihood:
            sample_figures = likelihood(params, k_likelihood, x[:n_lik])
            figures.update({f"sample_{name}": value for name, value in sample_figures.items()
                            if name in MODEL_LIKELIHOODS})
        return figures

    summary = {
        "num_samples": settings.num_samples,
        "floors_from": floors_from,
        "reference": reference,
        "floors": {name: as_figure(value) for name, value in floors.items()},
        "model": model,
    }
    summary["reference"]["figures"] = {name: as_figure(v) for name, v in evaluate(x_ref, True).items()}
    fit_init = fit_target = None
    if settings.fit:
        fit_init, fit_target = fitting_paths(objective.sde, score_fn, k_init, x_init, settings.fit_paths,
                                             tol=settings.reference_tol)
        summary["fit_paths"] = settings.fit_paths
    return Case(sde=objective.sde, score_fn=score_fn, x_init=x_init, evaluate=evaluate, summary=summary,
                fit_init=fit_init, fit_target=fit_target)


def bench_trained(settings: TrainedBench, *, progress: bool = True) -> GridResults:
    """Runs the grid of `settings` on the newest checkpoint of `settings.workdir`."""
    require(bool(settings.workdir), "bench samplers on a trained model needs --workdir.")
    by_spec = {spec: samplers.build_sampler(spec) for spec in settings.samplers}
    experiment, state = experiment_lib.restore(settings.workdir)
    require(experiment.latent is None,
            f"bench samplers --workdir scores the samples a sampler draws against the data they model; a "
            f"latent run (model.autoencoder_workdir={experiment.latent and experiment.latent.workdir}) draws "
            f"autoencoder latents: use `scoresde eval` on it, which scores the decoded images.")
    label = experiment.config.training.sde
    case = lambda: trained_case(experiment, state.ema_params, settings)
    key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 1)
    fit_nfes = [n for n in settings.nfes if settings.fit and n <= settings.fit_max_nfe]
    return run_grid({label: case}, by_spec, settings.nfes, key=key, repeats=settings.repeats,
                    progress=progress, fit_nfes=fit_nfes)
