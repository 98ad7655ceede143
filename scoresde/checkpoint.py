"""Checkpoints with orbax: kept snapshots, one frequent preemption checkpoint, verified resume, async saves.

A workdir holds two orbax CheckpointManagers, as the reference's `checkpoints/` and `checkpoints-meta/`:

* `checkpoints/<step>`: a snapshot every `snapshot_freq` steps, the newest `keep` of them kept (0: all);
* `checkpoints-meta/<step>`: a preemption checkpoint every `snapshot_freq_for_preemption` steps, only the
  latest kept.

Saves are asynchronous: `save` returns once the arrays are copied off the devices, and files are written by
a background thread while training goes on; orbax writes each step to a temporary directory and renames it
when complete, so a run killed mid-save leaves that directory behind and resumes from the step before.

Every save records, in orbax's `_CHECKPOINT_METADATA` beside the arrays, each leaf's shape, dtype and CRC-32
of its bytes (the record carries its own CRC-32). `restore_latest` takes the newest step of either directory
that is intact: finalized by orbax, readable, and whose leaves match their record, so a checkpoint with files
removed, emptied, truncated or with bytes changed is skipped, with one `DamagedCheckpointWarning` naming
each one skipped and why. A checkpoint that is intact but holds another model (other leaves, shapes or
dtypes) is refused with a ValueError naming the first difference: it is never loaded in part.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import shutil
import sys
import warnings
import zlib
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

State = TypeVar("State")

SNAPSHOTS = "checkpoints"
PREEMPTION = "checkpoints-meta"
DAMAGED = "checkpoints-damaged"  # where training moves damaged checkpoints out of orbax's way
_ITEM = "default"  # the item directory a CheckpointManager writes a single item to
_META = "_CHECKPOINT_METADATA"
_UNFINISHED = ".orbax-checkpoint-tmp"  # orbax's suffix of a step being written
_RECORD = "scoresde_leaves"


class DamagedCheckpointWarning(UserWarning):
    """Resuming skipped checkpoints that are damaged or unfinished."""


class _Damaged(Exception):
    """A checkpoint that cannot be read back as it was saved."""


class Checkpointer:
    """Writes the snapshot and preemption checkpoints of one workdir (`restore_latest` reads them).

    Args:
      workdir: the run's directory; the two checkpoint directories are created inside it.
      keep: snapshots kept, newest first; 0 keeps every snapshot.
      async_save: write files in a background thread (the default); False blocks in `save` until written.
    """

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 0, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()

        def manager(name: str, max_to_keep: int | None) -> ocp.CheckpointManager:
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                   enable_async_checkpointing=async_save)
            return ocp.CheckpointManager(workdir / name, options=options)

        _quiet_abandoned_io()
        self._managers = {SNAPSHOTS: manager(SNAPSHOTS, keep or None), PREEMPTION: manager(PREEMPTION, 1)}

    def save(self, step: int, state: Any, *, snapshot: bool) -> pathlib.Path:
        """Saves `state` as step `step`: a kept snapshot, or else the preemption checkpoint; returns the
        step's directory (complete once `wait` returns)."""
        manager = self._managers[SNAPSHOTS if snapshot else PREEMPTION]
        record = {_RECORD: leaf_record(state)}
        with _writing(manager):  # the previous save's error surfaces here
            manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=record)
        return pathlib.Path(manager.directory) / str(step)

    def wait(self) -> None:
        """Blocks until every pending save is on disk.

        Raises:
          OSError: if a save failed (a full disk, a directory that cannot be written); the checkpoints saved
            before it are intact.
        """
        for manager in self._managers.values():
            with _writing(manager):
                manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers (OSError as `wait`)."""
        for manager in self._managers.values():
            with _writing(manager):
                manager.close()


@contextlib.contextmanager
def _writing(manager: ocp.CheckpointManager):
    """Turns a write orbax could not do (no space, no permission) into OSError naming the directory:
    tensorstore's arrays fail as ValueError, orbax's metadata files as a bare OSError. `scoresde.cli`
    reports it in one line."""
    try:
        yield
    except (ValueError, OSError) as error:
        text = str(error).splitlines()[0] if str(error) else repr(error)
        if isinstance(error, ValueError) and not any(
                code in text for code in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "Errno")):
            raise
        raise OSError(f"a checkpoint could not be written into {manager.directory} ({text}); the checkpoints "
                      f"saved before it are intact.") from error


def _leaf_name(path: tuple) -> str:
    """'ema_params/Dense_0/bias' for a key path of attributes, dict keys and sequence indices."""
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _crc(array: Any) -> int:
    """CRC-32 of an array's bytes, read from this process's first copy (the state is replicated)."""
    local = array.addressable_data(0) if isinstance(array, jax.Array) else array
    return zlib.crc32(np.ascontiguousarray(np.asarray(local)).tobytes())


def _record_crc(leaves: dict) -> int:
    return zlib.crc32(json.dumps(leaves, sort_keys=True).encode())


def leaf_record(state: Any) -> dict:
    """{"leaves": {name: [shape, dtype, crc32]}, "crc": crc32 of the leaves' record} of a state's leaves."""
    leaves = {_leaf_name(path): [list(leaf.shape), str(leaf.dtype), _crc(leaf)]
              for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    return {"leaves": leaves, "crc": _record_crc(leaves)}


def _steps(workdir: pathlib.Path) -> list[pathlib.Path]:
    """Step directories of both checkpoint directories, newest first (a snapshot before a preemption
    checkpoint of the same step)."""
    found = [(int(path.name), -rank, path) for rank, name in enumerate((SNAPSHOTS, PREEMPTION))
             if (workdir / name).is_dir() for path in (workdir / name).iterdir()
             if path.name.isdigit() and path.is_dir()]
    return [path for *_, path in sorted(found, reverse=True)]


def _unfinished(workdir: pathlib.Path) -> list[pathlib.Path]:
    """Orbax's temporary directories of saves that never completed."""
    return sorted(path for name in (SNAPSHOTS, PREEMPTION) if (workdir / name).is_dir()
                  for path in (workdir / name).iterdir() if _UNFINISHED in path.name)


def _record(step: pathlib.Path) -> dict | None:
    """The leaf record saved with a step (None for checkpoints written before records); _Damaged if the step
    was never finalized or its metadata is unreadable or altered."""
    meta = step / _META
    if not (meta.is_file() and (step / _ITEM).is_dir()):
        raise _Damaged(f"unfinished or emptied: it lacks {_META if not meta.is_file() else _ITEM + '/'}")
    try:
        record = (json.loads(meta.read_text()).get("custom_metadata") or {}).get(_RECORD)
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise _Damaged(f"its {_META} is unreadable ({error})") from error
    if record is not None and (not isinstance(record, dict) or record.get("crc") != _record_crc(
            record.get("leaves"))):
        raise _Damaged(f"its {_META} was altered (its CRC-32 does not match)")
    return record


def _check_fits(step: pathlib.Path, target: Any, record: dict) -> None:
    """ValueError naming the first leaf of `target` the checkpoint lacks or holds with another shape or
    dtype."""
    saved = record["leaves"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        name, wanted = _leaf_name(path), [list(leaf.shape), str(leaf.dtype)]
        if name not in saved:
            raise ValueError(f"checkpoint {step} does not fit this config's model and optimizer: it has no "
                             f"{name}; it holds {len(saved)} arrays such as {sorted(saved)[:3]}.")
        if saved[name][:2] != wanted:
            raise ValueError(f"checkpoint {step} does not fit this config's model and optimizer: {name} is "
                             f"{saved[name][:2]} (shape, dtype) there, {wanted} in this config.")


def _read(step: pathlib.Path, target: Any, partial: bool) -> Any:
    """The arrays of `target` read from one step directory; `partial`: `target` is a dict of some fields."""
    _quiet_abandoned_io()
    restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    reader = ocp.PyTreeCheckpointer()
    try:
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=partial)
        return reader.restore(step / _ITEM, args=args)
    finally:
        reader.close()


def _restore_intact(step: pathlib.Path, target: Any, partial: bool) -> Any:
    """One step's state, checked against its record; _Damaged if it cannot be read back as saved."""
    record = _record(step)
    if record is not None:
        _check_fits(step, target, record)
    try:
        restored = _read(step, target, partial)
    except Exception as error:  # tensorstore and orbax raise many kinds on missing or altered files
        if record is None and isinstance(error, (ValueError, KeyError, TypeError)):
            raise ValueError(f"checkpoint {step} does not fit this config's model and optimizer: "
                             f"{str(error).splitlines()[0]}") from error
        raise _Damaged(f"unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
    for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0] if record is not None else ():
        if _crc(leaf) != record["leaves"][_leaf_name(path)][2]:
            raise _Damaged(f"{_leaf_name(path)} differs from what was saved (CRC-32 mismatch)")
    return restored


def restore_latest(
    workdir: str | pathlib.Path, target: State, *, partial: bool = False, set_aside: bool = False
) -> State | None:
    """The newest intact checkpoint of `workdir`, shaped and sharded like `target` (arrays or
    ShapeDtypeStructs), or None if there is no checkpoint.

    Damaged and unfinished checkpoints newer than it are skipped with one DamagedCheckpointWarning naming
    each and why. With `set_aside` (training, which will save those steps again) damaged step directories
    are moved into `checkpoints-damaged/` and orbax's temporary directories of unfinished saves are deleted;
    otherwise nothing is changed.

    Args:
      partial: `target` is a dict holding some of the saved state's fields, and only those are read.

    Raises:
      ValueError: if every checkpoint is damaged (naming the directory), or the newest intact one does not
        fit `target` (naming the leaf that differs).
    """
    workdir = pathlib.Path(workdir).absolute()
    skipped = [(path, "an unfinished save (orbax's temporary directory)") for path in _unfinished(workdir)]
    restored, damaged = None, []
    for step in _steps(workdir):
        try:
            restored = _restore_intact(step, target, partial)
            break
        except _Damaged as error:
            damaged.append(step)
            skipped.append((step, str(error)))
    if damaged and restored is None:
        reasons = "; ".join(f"{path} is {why}" for path, why in skipped)
        raise ValueError(f"{workdir} holds no intact checkpoint: {reasons}.")
    if skipped:
        unfinished = [path for path, _ in skipped if path not in damaged]
        action = _set_aside(workdir, damaged, unfinished) if set_aside else ""
        reasons = "; ".join(f"{path.relative_to(workdir)} ({why})" for path, why in skipped)
        warnings.warn(f"resuming from the newest intact checkpoint, skipped {reasons}{action}",
                      DamagedCheckpointWarning)
    return restored


def restore_step(workdir: str | pathlib.Path, step: int, target: State, *, partial: bool = False) -> State:
    """The kept snapshot checkpoint of `step` in `workdir`, shaped and sharded like `target` (see
    `restore_latest`).

    Raises:
      ValueError: if `workdir` keeps no intact snapshot of that step (naming the steps it keeps).
    """
    directory = pathlib.Path(workdir).absolute() / SNAPSHOTS / str(step)
    if not directory.is_dir():
        kept = sorted(int(p.name) for p in _steps(pathlib.Path(workdir).absolute()) if p.parent.name == SNAPSHOTS)
        raise ValueError(f"{workdir} keeps no checkpoint of step {step}; it keeps steps {kept}.")
    try:
        return _restore_intact(directory, target, partial)
    except _Damaged as error:
        raise ValueError(f"checkpoint {directory} is {error}.") from error


def _set_aside(workdir: pathlib.Path, damaged: list[pathlib.Path], unfinished: list[pathlib.Path]) -> str:
    """Moves damaged step directories into checkpoints-damaged/<dir>-<step>[-n] and deletes orbax's
    temporary directories; says what it did."""
    for path in unfinished:
        shutil.rmtree(path)
    moved = []
    for path in damaged:
        destination = workdir / DAMAGED / f"{path.parent.name}-{path.name}"
        for n in range(1, 1000):
            if not destination.exists():
                break
            destination = workdir / DAMAGED / f"{path.parent.name}-{path.name}-{n}"
        destination.parent.mkdir(exist_ok=True)
        path.rename(destination)
        moved.append(str(destination.relative_to(workdir)))
    return (f"; moved the damaged ones to {', '.join(moved)}" if moved else "") + (
        "; deleted the unfinished saves" if unfinished else "")


def _quiet_abandoned_io() -> None:
    """Silences the echoes of a failed read or write (installed once, before the first): orbax stops at the
    first array that fails and closes its event loop, and the operations still in flight then report "Event
    loop is closed" (through sys.unraisablehook) and "Task exception was never retrieved" (through the
    asyncio logger), and a background save logs the traceback of the error it hands to the main thread
    (through absl's logger): hundreds of lines for one error, raised in the caller. Other unraisable
    exceptions and log records pass as before."""
    previous = sys.unraisablehook
    if getattr(previous, "_scoresde_quiet", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and "Event loop is closed" in str(error)):
            previous(unraisable)

    hook._scoresde_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage())
    logging.getLogger("absl").addFilter(
        lambda record: not ("orbax" in record.pathname and record.levelno >= logging.ERROR))
