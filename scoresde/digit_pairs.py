"""Canvases of two handwritten digits side by side, each with a templated prompt that names them.

A canvas puts digit `left` and digit `right` (scikit-learn's 8x8 digits) next to each other: [H, 2H, C], the
left digit in columns 0 .. H - 1. Its prompt names both digits and their places in one of several wordings:
the number as a numeral or a word, bare, with an article or as "the digit"/"the number"; the places as "on
the left/right", "at the left/right", "left/right" or "to the left/right of"; and either digit mentioned
first ("a 3 on the left and a seven on the right", "the digit seven to the right of 3").

`HELD_OUT_PAIRS`, ten of the 100 ordered pairs, never appear in training canvases: each digit is the left one
of exactly one held-out pair and the right one of another, and no held-out pair's swap is held out, so a model
that has only memorised the seen pairs can be told from one that composes digits and places. Test canvases
draw from all 100 pairs.

Everything is drawn from numpy generators seeded by the caller: the same seed gives the same canvases and
prompts.
"""

from __future__ import annotations

import numpy as np

from scoresde import tokenizer

NUM_DIGITS = 10
HELD_OUT_PAIRS = tuple((d, (d + 3) % NUM_DIGITS) for d in range(NUM_DIGITS))  # (left, right)
SEEN_PAIRS = tuple((a, b) for a in range(NUM_DIGITS) for b in range(NUM_DIGITS)
                   if (a, b) not in HELD_OUT_PAIRS)
ALL_PAIRS = tuple((a, b) for a in range(NUM_DIGITS) for b in range(NUM_DIGITS))
# The seen pairs prompt following is measured on: the held-out pairs swapped, so that a model which keeps the
# digits but not their places on a held-out prompt draws a seen pair.
EVAL_SEEN_PAIRS = tuple((b, a) for a, b in HELD_OUT_PAIRS)

# How a digit is mentioned: {n} is its numeral or its word; "a" becomes "an" before a vowel sound.
_MENTIONS = ("{n}", "a {n}", "the digit {n}", "the number {n}")
# {l} and {r}: the left and the right digit's mentions.
_TEMPLATES = (
    "{l} on the left and {r} on the right",
    "{r} on the right and {l} on the left",
    "{l} on the left, {r} on the right",
    "{l} at the left and {r} at the right",
    "{r} at the right and {l} at the left",
    "{l} left and {r} right",
    "{l} to the left of {r}",
    "{r} to the right of {l}",
)


def mention(digit: int, rng: np.random.Generator) -> str:
    """One way to name `digit`: numeral or word, bare or after "a"/"the digit"/"the number"."""
    number = (tokenizer.DIGITS, tokenizer.NUMBER_WORDS)[rng.integers(2)][digit]
    text = _MENTIONS[rng.integers(len(_MENTIONS))].format(n=number)
    return "an " + number if text == "a " + number and number in ("8", "eight") else text


def prompt(left: int, right: int, rng: np.random.Generator) -> str:
    """A prompt asking for `left` on the left and `right` on the right, in a wording drawn from `rng`."""
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    first, second = mention(left, rng), mention(right, rng)
    return template.format(l=first, r=second)


def eval_prompt(left: int, right: int) -> str:
    """The one wording prompt following is measured with: "3 on the left and 7 on the right"."""
    return f"{left} on the left and {right} on the right"


def canvases(
    images: np.ndarray, labels: np.ndarray, pairs: tuple[tuple[int, int], ...], n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n canvases of digit pairs drawn uniformly from `pairs`, each digit image drawn uniformly from its class.

    Args:
      images: [M, H, H, C] digit images; labels: [M] their digits (every digit of `pairs` present).
      pairs: the (left, right) pairs to draw from.
      n: number of canvases.
      rng: draws the pairs, the images and the prompts.

    Returns:
      (canvases [n, H, 2H, C], digits [n, 2] int32 as (left, right), prompts: n strings).
    """
    chosen = np.asarray(pairs, np.int32)[rng.integers(len(pairs), size=n)]
    counts = np.bincount(labels, minlength=NUM_DIGITS)
    missing = sorted({int(d) for d in chosen.ravel() if not counts[d]})
    if missing:
        raise ValueError(f"digit pairs need images of every digit; the split has none of {missing}.")
    # Image rows sorted by digit: digit d's images are rows starts[d] .. starts[d] + counts[d] - 1.
    order, starts = np.argsort(labels, kind="stable"), np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = order[starts[chosen] + rng.integers(0, counts[chosen])]
    x = np.concatenate([images[rows[:, 0]], images[rows[:, 1]]], axis=2)
    prompts = [prompt(a, b, rng) for a, b in chosen.tolist()]
    return x, chosen, prompts

