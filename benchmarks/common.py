"""Timing helpers shared by the benchmarks: compile time apart from run time, medians of repeats."""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first-call seconds, median seconds of `repeats` further calls); results are blocked on."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)


def write_json(path: str | pathlib.Path, payload: dict) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
