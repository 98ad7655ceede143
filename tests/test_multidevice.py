"""Sampling on 8 simulated devices, in a subprocess so the device count is set before JAX starts."""

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent


def run_script(*args: str) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(HERE))
    result = subprocess.run([sys.executable, str(HERE / "multidevice_sampling.py"), *args],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_pmap_and_sharded_jit_sample_the_2d_mixture():
    run_script("mixture_2d")


@pytest.mark.slow
def test_pmap_and_sharded_jit_sample_the_image_mixture():
    run_script("mixture_image")
