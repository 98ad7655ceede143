"""The files of a training run (config.json, metrics.jsonl, samples/, eval/) and when a workdir is reused.

A workdir holds the config a run was started with (`config.json`), its metrics (`metrics.jsonl`, one JSON
object per line), snapshot pictures (`samples/`), evaluation results (`eval/`) and its checkpoints
(`checkpoints/`, `checkpoints-meta/`; see `scoresde.checkpoint`); a latent run also holds the record of the
autoencoder whose latents it was trained on (`autoencoder.json`). A workdir with the same config (and the
same autoencoder) is resumed; one with another config only on request (`check_workdir`).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from scoresde import atomic, checkpoint
from scoresde.config import Config, from_dict, with_added_keys

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
EVAL_DIR = "eval"
AUTOENCODER_FILE = "autoencoder.json"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        nested = isinstance(value, dict)
        out.update(_flatten(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every flattened key whose value differs."""
    old, new = _flatten(old), _flatten(new)
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def load_config(workdir: str | pathlib.Path) -> Config:
    """The Config a training run in `workdir` was started with; ValueError if there is none."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{workdir} holds no training run ({CONFIG_FILE} is missing).")
    return from_dict(json.loads(path.read_text()))


def write_config(workdir: pathlib.Path, config: Config) -> None:
    atomic.write_text(workdir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")


def autoencoder_differences(workdir: str | pathlib.Path, record: dict | None) -> list[str]:
    """'key: then -> now' for each entry of an autoencoder's record (`latent.LatentSpace.record`) that
    differs from the record of the one the run in `workdir` was trained on; [] for a pixel-space run
    (`record` None) or a run without a record."""
    path = pathlib.Path(workdir) / AUTOENCODER_FILE
    if record is None or not path.is_file():
        return []
    return config_differences(json.loads(path.read_text()), record)


def check_autoencoder(workdir: str | pathlib.Path, record: dict | None, autoencoder_workdir: str) -> None:
    """ValueError naming both runs unless the autoencoder in `autoencoder_workdir` (`record`) is the one the
    latent run in `workdir` was trained on: another one would decode its samples into noise."""
    differences = autoencoder_differences(workdir, record)
    if differences:
        raise ValueError(f"{workdir} was trained on the latents of another autoencoder than the one in "
                         f"model.autoencoder_workdir={autoencoder_workdir} now ({'; '.join(differences)}); "
                         f"point it at the autoencoder run it was trained on.")


def write_autoencoder(workdir: pathlib.Path, record: dict | None) -> None:
    """Keeps the record of a latent run's autoencoder (nothing for a pixel-space run)."""
    if record is not None:
        atomic.write_text(workdir / AUTOENCODER_FILE, json.dumps(record, indent=2) + "\n")


def truncate_metrics(workdir: pathlib.Path, step: int) -> None:
    """Drops the lines of metrics.jsonl logged after `step` (and a line cut short), rewriting it atomically.

    A run resumed from a checkpoint at `step` logs the later steps again: without this, they would appear
    twice.
    """
    path = workdir / METRICS_FILE
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    steps = map(_logged_step, lines)
    kept = [line for line, logged in zip(lines, steps) if logged is not None and logged <= step]
    if len(kept) < len(lines):
        atomic.write_text(path, "".join(f"{line}\n" for line in kept))


def _logged_step(line: str) -> int | None:
    """The step of a metrics line, or None for a line that is not a whole JSON object with a step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def check_evaluation(path: pathlib.Path, settings: dict, *, overwrite: bool) -> None:
    """Refuses to replace an evaluation in `path` made with other settings, unless `overwrite`.

    Raises:
      ValueError: naming the settings that differ.
    """
    if overwrite or not path.is_file():
        return
    recorded = json.loads(path.read_text()).get("settings", {})
    differences = config_differences(recorded, json.loads(json.dumps(settings)))
    if differences:
        raise ValueError(f"{path} holds an evaluation with other settings ({'; '.join(differences)}); pass "
                         f"--overwrite to replace it, or --outdir to write this one elsewhere.")


def check_workdir(workdir: pathlib.Path, config: Config, *, resume: bool, overwrite: bool,
                  autoencoder: dict | None = None) -> bool:
    """Decides what training may do with `workdir`, without changing it; returns whether to start over.

    A workdir with the same config (and, for a latent run, the same autoencoder: its `record`) is resumed.
    One with another config or autoencoder is refused unless `resume` (continue its checkpoints under the
    new config, on the new latents) or `overwrite` (delete its run and start over). Keys its config.json
    lacks because they were added later compare as their `config.ADDED_KEYS` values.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other.")
    path = workdir / CONFIG_FILE
    if not path.is_file():
        if (workdir / checkpoint.SNAPSHOTS).exists() or (workdir / checkpoint.PREEMPTION).exists():
            raise ValueError(f"{workdir} holds checkpoints but no {CONFIG_FILE}; refusing to touch them.")
        return False
    differences = config_differences(with_added_keys(json.loads(path.read_text())), config.to_dict())
    if differences and not (resume or overwrite):
        raise ValueError(f"{workdir} holds a run with a different config ({'; '.join(differences)}); pass "
                         f"--resume to continue it with this config, or --overwrite to start over.")
    changed = autoencoder_differences(workdir, autoencoder)
    if changed and not (resume or overwrite):
        raise ValueError(f"{workdir} holds a run trained on the latents of another autoencoder than the one "
                         f"in model.autoencoder_workdir={config.model.autoencoder_workdir} now "
                         f"({'; '.join(changed)}); pass --resume to continue it on these latents, or "
                         f"--overwrite to start over.")
    return overwrite


def clear_run(workdir: pathlib.Path) -> None:
    """Deletes what a run wrote into workdir (checkpoints, metrics, samples, eval, config), nothing else."""
    for name in (checkpoint.SNAPSHOTS, checkpoint.PREEMPTION, checkpoint.DAMAGED, SAMPLES_DIR, EVAL_DIR):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in (METRICS_FILE, CONFIG_FILE, AUTOENCODER_FILE):
        (workdir / name).unlink(missing_ok=True)
