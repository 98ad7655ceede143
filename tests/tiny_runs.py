"""Tiny training configs shared by the training and CLI tests: real config files, shrunk so CPU compiles fast.

Importing this module also turns on JAX's persistent compilation cache in a directory private to this test
process (and to the CLI subprocesses it starts, through `CACHE_ENV`): the tests train, resume, sample and
evaluate the same tiny networks many times, and on CPU compiling them costs far more than running them.
"""

import atexit
import pathlib
import runpy
import tempfile

import jax
import ml_collections

_CACHE = tempfile.TemporaryDirectory(prefix="scoresde-test-jax-cache-")
atexit.register(_CACHE.cleanup)
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": _CACHE.name, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
jax.config.update("jax_compilation_cache_dir", _CACHE.name)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"

# The checkerboard config with a 16-wide MLP, 2 steps per dispatch, small data and a 4-step sampler.
TINY_MLP = {
    "data.num_train": 256, "data.num_test": 64,
    "model.width": 16, "model.depth": 1, "model.num_scales": 4,
    "training.batch_size": 32, "training.n_jitted_steps": 2, "training.n_iters": 4, "training.log_freq": 2,
    "training.eval_freq": 4, "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 2,
    "training.snapshot_sampling": True, "eval.num_samples": 64, "eval.batch_size": 16, "optim.warmup": 0,
    "optim.cosine_decay": False,  # as configs written before the key: tests of old runs drop it
    "model.input_features": 0,  # x alone: an untrained 16-wide MLP on Fourier features makes stiff ODEs
}
# The digits config shrunk to an 8x8 NCSN++ with one level of downsampling and attention at 4x4.
TINY_NCSNPP = {
    "data.image_size": 8, "model.nf": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
    "model.attn_resolutions": (4,), "model.num_scales": 2, "model.dropout": 0.0,
    "training.batch_size": 8, "training.n_jitted_steps": 1, "training.n_iters": 2, "training.log_freq": 1,
    "training.eval_freq": 1000, "training.snapshot_freq": 2, "training.snapshot_freq_for_preemption": 1,
    "training.snapshot_sampling": False, "eval.num_samples": 20, "eval.batch_size": 4,
    "eval.enable_bpd": False, "optim.warmup": 0,
}


def load(path: str, *args: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """configs/<path>.py's get_config(*args), with dotted-key overrides applied."""
    config = runpy.run_path(str(CONFIGS / f"{path}.py"))["get_config"](*args)
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def tiny_mlp(**overrides) -> ml_collections.ConfigDict:
    return load("toy/checkerboard", overrides={**TINY_MLP, **overrides})


def tiny_ncsnpp(**overrides) -> ml_collections.ConfigDict:
    return load("digits/ddpmpp", overrides={**TINY_NCSNPP, **overrides})


def flags(overrides: dict) -> list[str]:
    """--config.section.field=value flags for the CLI."""
    return [f"--config.{key}={value}" for key, value in overrides.items()]
