"""Timing and JSON helpers for the benchmark scripts; they live in the library, `scoresde.bench`."""

from scoresde.bench.report import write_json
from scoresde.bench.timing import time_call

__all__ = ["time_call", "write_json"]
