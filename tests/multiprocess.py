"""Runs `python -m scoresde` as one process with N simulated CPU devices, or as several JAX processes joined
on 127.0.0.1 (`--coordinator_address`, `--num_processes`, `--process_id`), each with its own devices.

XLA_FLAGS=--xla_force_host_platform_device_count is read when JAX starts, so every run is a subprocess; they
share the test session's persistent compilation cache (`tiny_runs.CACHE_ENV`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np

from scoresde import config as config_lib, experiment as experiment_lib, samplers, sde as sde_lib, toy

import tiny_runs

ROOT = pathlib.Path(__file__).parents[1]
TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        """stderr's lines without the gloo library's connection notes."""
        return [line for line in self.err.splitlines() if line.strip() and not line.startswith("[Gloo]")]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], *, processes: int = 1, devices: int = 1, process_ids: list[int] | None = None,
          port: int | None = None) -> list[subprocess.Popen]:
    """`python -m scoresde ARGS` as `processes` processes of `devices` CPU devices each; with more than one
    process (or `process_ids`: start only these) they join one run on 127.0.0.1:`port` (default a free
    one)."""
    command = [sys.executable, "-m", "scoresde", *args]
    if processes == 1 and process_ids is None:
        commands = [command]
    else:
        joined = [f"--coordinator_address=127.0.0.1:{port or free_port()}", f"--num_processes={processes}"]
        commands = [[*command, *joined, f"--process_id={i}"]
                    for i in (range(processes) if process_ids is None else process_ids)]
    return [subprocess.Popen(c, cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for c in commands]


def finish(procs: list[subprocess.Popen]) -> list[Result]:
    """Waits for every process; their exit status, stdout and stderr."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        results.append(Result(proc.returncode, out, err))
    return results


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **tiny_runs.CACHE_ENV)


def run(args: list[str], *, processes: int = 1, devices: int = 1) -> list[Result]:
    return finish(start(args, processes=processes, devices=devices))


def start_script(args: list[str], *, devices: int) -> list[subprocess.Popen]:
    """This module as a script (`mixture_samples` into a .npy file) in one process of `devices` devices."""
    return [subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=_env(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]


def kill_after_checkpoint(procs: list[subprocess.Popen], workdir: pathlib.Path) -> list[Result]:
    """SIGKILLs every process as soon as a checkpoint of the run in `workdir` is complete (orbax has written
    its metadata); their results (exit status -9 unless a process had finished)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not any(path.parent.name.isdigit() for path in workdir.glob("checkpoints*/*/_CHECKPOINT_METADATA")):
        if time.monotonic() > deadline or any(proc.poll() is not None for proc in procs):
            break
        time.sleep(0.02)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    return finish(procs)


def mixture_experiment():
    """The tiny MLP config's experiment with the exact score of `toy.mixture_2d` in place of the network:
    `experiment.sampling_fn` without a compiled network (parameters unused)."""
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(tiny_runs.tiny_mlp()))
    sde, mix = sde_lib.VPSDE(), toy.build_problem("mixture_2d")
    objective = types.SimpleNamespace(sde=sde, num_classes=0,
                                      score_fn=lambda params, cond=None: mix.score_fn(sde))
    return dataclasses.replace(experiment, objective=objective)


def mixture_samples(num_samples: int, width: int):
    """num_samples examples of `mixture_experiment`, PC with the Langevin corrector, groups of `width`, over
    every device of every process."""
    sampler = samplers.PC(predictor="reverse_diffusion", corrector="langevin", num_steps=3)
    draw = experiment_lib.sampling_fn(mixture_experiment(), num_samples, sampler, width=width)
    return draw(None, jax.random.PRNGKey(0))[0]


if __name__ == "__main__":  # python tests/multiprocess.py OUT.npy NUM_SAMPLES WIDTH
    x = mixture_samples(int(sys.argv[2]), int(sys.argv[3]))
    np.save(sys.argv[1], x)
