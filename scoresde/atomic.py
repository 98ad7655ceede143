"""Files written whole or not at all.

Every file scoresde writes (samples, pictures, config.json, evaluation results, benchmark reports) is written
under a temporary name beside its final one, flushed to disk and renamed over it: POSIX `rename` within one
directory is atomic, so a crash, a kill or a full disk leaves the previous file (or none) under the final
name, never a half-written one, and the temporary file is deleted on error. metrics.jsonl is appended to
line by line instead; a line cut short by a crash is dropped when the run resumes
(`scoresde.workdir.truncate_metrics`). Checkpoints are orbax's, which renames each step's directory into
place once complete.

Example:
    >>> with replacing("out/samples.npz") as temporary:   # a path ending in .npz, in out/
    ...     np.savez(temporary, x=x)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block succeeds.

    The temporary name keeps the suffix (writers that choose a format by it, such as matplotlib, Pillow and
    np.savez, see the final one) and starts with a dot.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file renamed into place."""
    with replacing(path) as temporary:
        temporary.write_text(text)
