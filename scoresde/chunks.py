"""Chunked, resumable sampling: many samples drawn a chunk at a time, each chunk kept as it finishes.

A chunk of examples start .. stop - 1 is drawn by `draw_chunk(start, stop)` (as `experiment.sampling_fn(...,
per_example=True)` draws them: example i from the key fold_in(key, i), alone), so the samples do not depend
on the chunk size or on where a run was interrupted. Each chunk is written whole or not at all
(`scoresde.atomic`) into a partial directory beside the final file, with the settings that drew it
(settings.json). SIGTERM or SIGINT stops the loop after the chunk in flight (`scoresde.stopping`); a later
call with the same settings continues from the chunks written, one with other settings is refused.

Files of a partial directory:
    settings.json          what the samples depend on (not the chunk size)
    chunk_<start>.npz      x: [stop - start, ...] of examples start .. stop - 1, nfe
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
from typing import Callable

import numpy as np
from tqdm import tqdm

from jax.sharding import Mesh

from scoresde import atomic, parallel
from scoresde.samplers.base import as_int
from scoresde.stopping import StopSignals
from scoresde.validation import require
from scoresde.workdir import config_differences

SETTINGS_FILE = "settings.json"
PARTIAL_SUFFIX = ".partial"

DrawChunk = Callable[[int, int], tuple[np.ndarray, int]]


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """batch_size as an int; ValueError naming it (`name`) unless it is an integer >= 1."""
    batch_size = as_int(batch_size)
    require(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
            f"{name} must be an integer >= 1 (examples drawn per chunk); got {batch_size!r}.")
    return batch_size


def check_fits(batch_size: int, num_samples: int, width: int, mesh: Mesh, name: str = "batch_size") -> None:
    """ValueError, saying what fits, unless chunks of batch_size split over the mesh's devices and, on more
    than one device, hold at least what they draw at once (a group of `width` examples each), or the whole
    run: a smaller chunk would draw every device's group for a few of its examples."""
    devices, note = mesh.size, parallel.processes_note(mesh)
    require(batch_size % devices == 0 or batch_size >= num_samples,
            f"{name} {batch_size} does not split over the {devices} devices{note}; use a multiple of "
            f"{devices}.")
    at_once = width * devices
    require(devices == 1 or batch_size >= min(at_once, num_samples),
            f"{name} {batch_size} is smaller than what the {devices} devices{note} draw at once, a group of "
            f"eval.batch_size={width} examples each ({at_once}); use --batch_size={at_once} or a multiple "
            f"of it.")


def partial_dir(path: str | pathlib.Path) -> pathlib.Path:
    """The partial directory that holds the chunks of the file `path` (samples_<...>.npz) while drawn."""
    path = pathlib.Path(path)
    return path.with_name(path.stem + PARTIAL_SUFFIX)


def chunks_written(partial: pathlib.Path, settings: dict) -> tuple[list[pathlib.Path], int]:
    """The chunk files in `partial` that follow each other from example 0, in order, and how many examples
    they hold.

    Raises:
      ValueError: if `partial` holds chunks drawn with other settings, naming them.
    """
    settings_file = partial / SETTINGS_FILE
    if not settings_file.is_file():
        return [], 0
    recorded = json.loads(settings_file.read_text())
    differences = config_differences(recorded, json.loads(json.dumps(settings)))
    require(not differences, f"{partial} holds chunks drawn with other settings ({'; '.join(differences)}); "
                             f"rerun with those settings to finish them, or delete {partial} to start over.")
    by_start = {int(path.stem.split("_")[1]): path for path in partial.glob("chunk_*.npz")}
    files, stop = [], 0
    while stop in by_start:
        files.append(by_start[stop])
        with np.load(by_start[stop], allow_pickle=False) as chunk:
            stop += len(chunk["x"])
    return files, stop


def _write_chunk(partial: pathlib.Path, settings: dict, start: int, x: np.ndarray, nfe: int) -> None:
    if not parallel.is_primary():
        return
    if not (partial / SETTINGS_FILE).is_file():
        partial.mkdir(parents=True, exist_ok=True)
        atomic.write_text(partial / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    with atomic.replacing(partial / f"chunk_{start}.npz") as temporary:
        np.savez(temporary, x=x, nfe=nfe)


def _gather(files: list[pathlib.Path]) -> tuple[np.ndarray, int]:
    xs, nfes = [], []
    for path in files:
        with np.load(path, allow_pickle=False) as chunk:
            xs.append(chunk["x"])
            nfes.append(int(chunk["nfe"]))
    return np.concatenate(xs), max(nfes)


def draw(draw_chunk: DrawChunk, num_samples: int, batch_size: int, partial: pathlib.Path, settings: dict, *,
         progress: bool = True) -> tuple[np.ndarray, int] | None:
    """Draws num_samples examples batch_size at a time, continuing from the chunks already in `partial`.

    On several processes every process calls `draw` alike (each chunk is drawn by all of them together);
    process 0 alone writes the chunks and shows progress, and the others get None back. A signal to any
    process stops them all after the same chunk.

    Args:
      draw_chunk: (start, stop) -> (x: [stop - start, ...] of examples start .. stop - 1, NFE).
      partial: where chunks are kept (`partial_dir`); made when the first chunk is written.
      settings: what the samples depend on (JSON-serialisable), recorded and compared on resume.

    Returns:
      (x: [num_samples, ...], the most NFE a chunk made), or None if SIGTERM or SIGINT stopped the loop
      (after the chunk in flight, which is kept; one line on stderr says how far it got). The caller deletes
      `partial` once it has written the result.

    Raises:
      ValueError: on a bad batch_size or chunks in `partial` drawn with other settings, before any draw.
    """
    batch_size = check_batch_size(batch_size)
    done, primary = chunks_written(partial, settings)[1], parallel.is_primary()
    bar = None  # shown once the first chunk is kept, so a mistake that stops the first one is one line
    try:
        with StopSignals("stopping after the chunk in flight, keeping the chunks written") as stop:
            for start in range(done, num_samples, batch_size):
                if parallel.any_process(stop.received is not None):
                    break
                x, nfe = draw_chunk(start, min(start + batch_size, num_samples))
                _write_chunk(partial, settings, start, x, nfe)
                done = start + len(x)
                if bar is None:
                    bar = tqdm(total=num_samples, initial=start, disable=not (progress and primary),
                               unit="sample", file=sys.stderr)
                bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    if not primary:
        return None
    if done < num_samples:
        print(f"{stop.received or 'a signal to another process'}: stopped after {done} of {num_samples} "
              f"samples, kept in {partial}; run the same command to continue from there.", file=sys.stderr)
        return None
    return _gather(chunks_written(partial, settings)[0])


def remove(partial: pathlib.Path) -> None:
    """Deletes a partial directory once its samples are written whole."""
    shutil.rmtree(partial, ignore_errors=True)
