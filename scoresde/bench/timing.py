"""Wall-clock timing of jitted calls: the first call (which compiles) apart from the median of later ones."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first-call seconds, median seconds of `repeats` >= 1 further calls); results are blocked on.

    For a jitted function the first call traces and compiles, so first - median estimates the compile time.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}.")
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)
