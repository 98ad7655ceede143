"""Prompt following: how often the digits classifier reads both requested digits, in place, in samples drawn
for a prompt.

    python benchmarks/prompt_following.py --workdir=RUN [--guidance_scales=0,2] [--num_samples=100]
        [--sampler=NAME --num_steps=N] [--step=K] [--grid=docs/prompts.png] [--out=FILE.json]

RUN is a run of configs/digits/prompts.py (any prompt-conditioned digit_pairs run). For the ten held-out pairs
(`digit_pairs.HELD_OUT_PAIRS`, never in training) and ten seen pairs (their swaps,
`digit_pairs.EVAL_SEEN_PAIRS`), it draws --num_samples samples of the prompt "L on the left and R on the
right" per pair and guidance scale w (Ho & Salimans' w; 0: the conditional score, no guidance) from the EMA
parameters of the newest checkpoint (or of --step), and reads each half of each canvas with the project's
digits classifier trained on the run's real training digits (`evaluation.PairReader`). It reports per pair
and over the seen and the held-out pairs: the share read as asked (both digits in place), the share read
swapped (right digit on the left and left on the right), and the same reading of real test canvases (what
the classifier scores on data). Prints Markdown tables, writes JSON (--out) and, with --grid, a PNG of the
last scale's samples with each row's prompt above it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from scoresde import digit_pairs, evaluation, plots, tokenizer
from scoresde import experiment as experiment_lib

GROUPS = {"seen": digit_pairs.EVAL_SEEN_PAIRS, "held out": digit_pairs.HELD_OUT_PAIRS}


def real_reading(reader: evaluation.PairReader, experiment) -> float:
    """Share of the run's real test canvases whose two digits the classifier reads as labelled."""
    dataset = experiment.dataset
    read = reader(dataset.test)
    return float(np.mean(np.all(read == dataset.test_labels, axis=1)))


def run(workdir: str, scales: list[float], num_samples: int, sampler_name: str | None, num_steps: int | None,
        seed: int, step: int | None) -> tuple[list[dict], np.ndarray, list[tuple[int, int]]]:
    """One row per scale: per-pair and per-group figures, NFE and time; the last scale's samples; the pairs."""
    experiment, state = experiment_lib.restore(workdir, step=step)
    sampler = experiment.sampler
    if sampler_name is not None:
        sampler = experiment.config.sampling.build_sampler(sampler_name, num_steps)
    reader = evaluation.PairReader.build(experiment.config.data)
    pairs = [pair for group in GROUPS.values() for pair in group]
    prompts = [digit_pairs.eval_prompt(*pair) for pair in pairs]
    cond = np.repeat(tokenizer.encode_batch(prompts), num_samples, axis=0)
    real = real_reading(reader, experiment)
    rows = []
    for scale in scales:
        draw = experiment_lib.sampling_fn(experiment, len(cond), sampler, guidance_scale=scale)
        start = time.process_time()
        x, nfe = draw(state.ema_params, jax.random.PRNGKey(seed), cond)
        seconds = time.process_time() - start
        read = reader(x).reshape(len(pairs), num_samples, 2)
        per_pair = [evaluation.prompt_following(r, pair) for r, pair in zip(read, pairs)]
        groups = {name: {k: float(np.mean([f[k] for f, p in zip(per_pair, pairs) if p in members]))
                         for k in per_pair[0]} for name, members in GROUPS.items()}
        rows.append({"guidance_scale": scale, "step": int(state.step), "nfe": nfe, "cpu_seconds": seconds,
                     "groups": groups, "per_pair": per_pair, "pairs": pairs, "prompts": prompts,
                     "real_test_canvases_read": real})
    return rows, x, pairs


def table(rows: list[dict]) -> str:
    head = ["w", "step", "seen: both", "seen: swapped", "held out: both", "held out: swapped", "NFE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        g = row["groups"]
        cells = [f"{row['guidance_scale']:g}", str(row["step"]), f"{g['seen']['both']:.3f}",
                 f"{g['seen']['swapped']:.3f}", f"{g['held out']['both']:.3f}",
                 f"{g['held out']['swapped']:.3f}", str(row["nfe"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_table(row: dict) -> str:
    lines = ["| pair (left, right) | group | both | swapped | left | right |", "|---|---|---|---|---|---|"]
    for pair, figures in zip(row["pairs"], row["per_pair"]):
        group = "held out" if tuple(pair) in digit_pairs.HELD_OUT_PAIRS else "seen"
        lines.append(f"| {tuple(pair)} | {group} | {figures['both']:.2f} | {figures['swapped']:.2f} | "
                     f"{figures['left']:.2f} | {figures['right']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--guidance_scales", default="0,2")
    parser.add_argument("--num_samples", type=int, default=100, help="samples per prompt")
    parser.add_argument("--sampler", default=None, help="default: the run's config")
    parser.add_argument("--num_steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="a kept checkpoint's step (default: newest)")
    parser.add_argument("--grid", default=None, help="PNG of the last scale's samples, a row per prompt")
    parser.add_argument("--grid_pairs", type=int, default=6, help="rows of the grid: that many of each group")
    parser.add_argument("--out", default=None, help="JSON of the rows")
    args = parser.parse_args()
    scales = [float(s) for s in args.guidance_scales.split(",")]
    rows, x, pairs = run(args.workdir, scales, args.num_samples, args.sampler, args.num_steps, args.seed,
                         args.step)
    print(f"real test canvases read as labelled: {rows[0]['real_test_canvases_read']:.3f}")
    print(table(rows))
    print(pair_table(rows[-1]))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.grid:
        x = x.reshape(len(pairs), args.num_samples, *x.shape[1:])
        half = len(pairs) // 2
        shown = [*range(args.grid_pairs // 2), *range(half, half + args.grid_pairs - args.grid_pairs // 2)]
        w = rows[-1]["guidance_scale"]
        plots.titled_rows_png(args.grid, [(f"{digit_pairs.eval_prompt(*pairs[i])}"
                                           f" ({'held out' if i >= half else 'seen'}, w = {w:g})", x[i, :8])
                                          for i in shown])


if __name__ == "__main__":
    main()
