"""Class-conditional digits: how often a digits classifier reads the requested class in guided samples.

    python benchmarks/conditional_digits.py --workdir=RUN [--guidance_scales=0,1,2] [--num_samples=100]
        [--sampler=NAME --num_steps=N] [--grid=docs/conditional_digits.png] [--out=FILE.json]

RUN is a run of configs/digits/conditional.py (any class-conditional digits run). For each guidance scale w
(Ho & Salimans' w; 0 is the conditional score without guidance) it draws --num_samples samples of every class
from the newest checkpoint's EMA parameters, with classifier-free guidance against the run's own null class
(`experiment.sampling_fn`), and reports the share that the project's digits classifier
(`metrics.train_digits_classifier`: trained on the run's training split of real digits, so it never saw a
sample) assigns to the requested class, per class and over all classes, with the classifier's accuracy on
the real test digits beside it. Prints a Markdown table, writes JSON (--out) and, with --grid, a PNG of the
last scale's samples with one row per class.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from scoresde import evaluation, plots
from scoresde import experiment as experiment_lib


def class_accuracies(scorer: evaluation.DigitsScorer, x: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> list[float]:
    """Per class k, the share of the samples x: [N, H, W, C] in [0, 1] requested as k that are read as k."""
    probs, _ = scorer.classifier(scorer.dataset.scale(x))
    read = np.asarray(np.argmax(probs, axis=1))
    return [float(np.mean(read[labels == k] == k)) for k in range(num_classes)]


def run(workdir: str, scales: list[float], num_samples: int, sampler_name: str | None,
        num_steps: int | None, seed: int) -> tuple[list[dict], np.ndarray]:
    """One row per scale: per-class and overall accuracy, NFE and wall time; and the last scale's samples."""
    experiment, state = experiment_lib.restore(workdir)
    num_classes = experiment.objective.num_classes
    sampler = experiment.sampler
    if sampler_name is not None:
        sampler = experiment.config.sampling.build_sampler(sampler_name, num_steps)
    scorer = evaluation.DigitsScorer.build(experiment.dataset)
    labels = np.repeat(np.arange(num_classes), num_samples)
    rows = []
    for scale in scales:
        draw = experiment_lib.sampling_fn(experiment, len(labels), sampler, guidance_scale=scale)
        start = time.perf_counter()
        x, nfe = draw(state.ema_params, jax.random.PRNGKey(seed), labels)
        per_class = class_accuracies(scorer, x, labels, num_classes)
        rows.append({"guidance_scale": scale, "accuracy": float(np.mean(per_class)), "per_class": per_class,
                     "nfe": nfe, "seconds": time.perf_counter() - start, "step": int(state.step),
                     "classifier_test_accuracy": scorer.test_accuracy()})
    return rows, x


def table(rows: list[dict]) -> str:
    num_classes = len(rows[0]["per_class"])
    head = ["w", "all", *map(str, range(num_classes)), "NFE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row['guidance_scale']:g}", f"{row['accuracy']:.3f}",
                 *(f"{a:.2f}" for a in row["per_class"]), str(row["nfe"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--guidance_scales", default="0,1,2")
    parser.add_argument("--num_samples", type=int, default=100, help="samples per class")
    parser.add_argument("--sampler", default=None, help="default: the run's config")
    parser.add_argument("--num_steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, help="PNG of the last scale's samples, one row per class")
    parser.add_argument("--out", default=None, help="JSON of the rows")
    args = parser.parse_args()
    scales = [float(s) for s in args.guidance_scales.split(",")]
    rows, x = run(args.workdir, scales, args.num_samples, args.sampler, args.num_steps, args.seed)
    print(table(rows))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.grid:
        columns = 10
        picked = x.reshape(len(rows[0]["per_class"]), args.num_samples, *x.shape[1:])[:, :columns]
        plots.image_grid_png(args.grid, picked.reshape(-1, *x.shape[1:]), cols=columns)


if __name__ == "__main__":
    main()
