"""Checkpoints with orbax: kept snapshots, one frequent preemption checkpoint, automatic resume, async saves.

A workdir holds two orbax CheckpointManagers, as the reference's `checkpoints/` and `checkpoints-meta/`:

* `checkpoints/<step>`: a snapshot every `snapshot_freq` steps, the newest `keep` of them kept (0: all);
* `checkpoints-meta/<step>`: a preemption checkpoint every `snapshot_freq_for_preemption` steps, only the
  latest kept.

Resuming takes the newest step of either. Saves are asynchronous: `save` returns once the arrays are copied
off the devices, and files are written by a background thread while training goes on; orbax writes each step
to a temporary directory and renames it when complete, so a run killed mid-save resumes from the step before.
"""

from __future__ import annotations

import pathlib
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

State = TypeVar("State")

SNAPSHOTS = "checkpoints"
PREEMPTION = "checkpoints-meta"


class Checkpointer:
    """The snapshot and preemption checkpoints of one workdir.

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

        self._managers = {SNAPSHOTS: manager(SNAPSHOTS, keep or None), PREEMPTION: manager(PREEMPTION, 1)}

    def save(self, step: int, state: Any, *, snapshot: bool) -> None:
        """Saves `state` as step `step`: a kept snapshot, or else the preemption checkpoint."""
        self._managers[SNAPSHOTS if snapshot else PREEMPTION].save(step, args=ocp.args.StandardSave(state))

    def latest_step(self) -> int | None:
        """The newest step saved in either directory, or None."""
        steps = [s for s in (m.latest_step() for m in self._managers.values()) if s is not None]
        return max(steps, default=None)

    def restore_latest(self, target: State, *, partial: bool = False) -> State | None:
        """The newest checkpoint, shaped and sharded like `target` (arrays or ShapeDtypeStructs), or None.

        With `partial`, `target` is a dict holding some of the saved state's fields, and only those are read.

        Raises:
          ValueError: if the checkpoint does not fit `target` (e.g. the config's model changed).
        """
        step = self.latest_step()
        if step is None:
            return None
        name = SNAPSHOTS if self._managers[SNAPSHOTS].latest_step() == step else PREEMPTION
        manager = self._managers[name]
        try:
            if partial:
                return _restore_fields(manager.directory, step, target)
            return manager.restore(step, args=ocp.args.StandardRestore(target))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"checkpoint {manager.directory / str(step)} does not fit this config's model "
                             f"and optimizer: {str(error).splitlines()[0]}") from error

    def wait(self) -> None:
        """Blocks until every pending save is on disk."""
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        for manager in self._managers.values():
            manager.close()


def _restore_fields(directory: pathlib.Path, step: int, target: dict) -> dict:
    """The fields of a saved state that `target` names, read alone (orbax's partial PyTree restore)."""
    restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    try:
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
        return manager.restore(step, args=args)
    finally:
        manager.close()
