"""Tests for scoresde/config.py and configs/: every config file converts, builds and round-trips; the CIFAR-10
configs build networks of exactly the reference's size (jax.eval_shape, no compute); bad keys are named."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import config as config_lib
from scoresde import samplers, sde as sde_lib

import tiny_runs

import marks

CIFAR10_PARAMETERS = {
    "cifar10/ve_ncsnpp_continuous": 62_758_915,
    "cifar10/ve_ncsnpp_deep_continuous": 107_587_075,
    "cifar10/vp_ddpmpp_continuous": 61_804_419,
    "cifar10/vp_ddpmpp_deep_continuous": 106_632_579,
    "cifar10/subvp_ddpmpp_deep_continuous": 106_632_579,
    "cifar10/ddpm": 35_218_947,
}
TOY_CONFIGS = ("toy/checkerboard", "toy/swiss_roll", "toy/mixture", "toy/rings", "toy/two_moons")
SDE_CONFIGS = [(path, sde) for path in (*TOY_CONFIGS, "digits/ddpmpp", "digits/small", "digits/conditional")
               for sde in ("vpsde", "subvpsde", "vesde")]
ALL_CONFIGS = ([(path, ()) for path in ["default", *CIFAR10_PARAMETERS, "latent/autoencoder", "latent/digits",
                                        "digits/prompts", "latent/digits_prompts"]]
               + [(p, (s,)) for p, s in SDE_CONFIGS])


def _config(path, *args) -> config_lib.Config:
    return config_lib.from_config_dict(tiny_runs.load(path, *args))


@pytest.mark.parametrize("path", marks.fast_first(CIFAR10_PARAMETERS))
def test_cifar10_config_builds_the_reference_network(path):
    config = _config(path)
    shapes = jax.eval_shape(config.model.build_model().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                            jnp.ones((1,)))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes["params"]))
    assert count == CIFAR10_PARAMETERS[path]


@pytest.mark.parametrize("path,args", ALL_CONFIGS, ids=lambda v: ":".join(v) if isinstance(v, tuple) else v)
def test_every_config_converts_round_trips_and_builds(path, args):
    config = _config(path, *args)
    assert config_lib.from_dict(config.to_dict()) == config
    config.model.build_model()
    config.build_loss()
    assert isinstance(config.build_sde(), sde_lib.SDE)
    assert isinstance(config.sampling.build_sampler(config.sampling.method, config.model.num_scales),
                      samplers.Sampler)


def test_the_small_digits_config_builds_the_network_its_readme_states():
    # 8x8 digits; DDPM++ with levels at 8x8 (nf = 32 channels) and 4x4 (64), one residual block per level on
    # the way down, attention only in the 4x4 middle block; a fast ODE sampler with few steps for snapshots.
    config = _config("digits/small")
    assert (config.data.image_size, config.model.name) == (8, "ddpmpp")
    model, x, t = config.model.build_model(), jnp.zeros((2, 8, 8, 1)), jnp.ones((2,))
    params = jax.eval_shape(model.init, jax.random.key(0), x, t)
    out, state = jax.eval_shape(functools.partial(model.apply, capture_intermediates=True), params, x, t)
    blocks = {name: value["__call__"][0].shape for name, value in state["intermediates"].items()
              if name.startswith(("ResnetBlock", "AttnBlock"))}
    assert out.shape == x.shape
    assert {shape[1:3] for shape in blocks.values()} == {(8, 8), (4, 4)}
    assert {shape[3] for shape in blocks.values()} == {32, 64}
    assert [name for name in blocks if name.startswith("AttnBlock")] == ["AttnBlock_0"]
    assert blocks["AttnBlock_0"] == (2, 4, 4, 64)
    down = [blocks[f"ResnetBlock_{i}"] for i in range(3)]  # 8x8 block, downsampling block, 4x4 block
    assert down == [(2, 8, 8, 32), (2, 4, 4, 32), (2, 4, 4, 64)]
    t = config.training
    snapshot = config.sampling.build_sampler(t.snapshot_sampler, t.snapshot_num_steps)
    assert isinstance(snapshot, samplers.DPMSolverPP) and snapshot.num_steps <= 20


def test_the_reference_per_sde_choices():
    # Song et al. 2021: VE networks output the score from sigma(t), divided by it; VP / sub-VP predict noise.
    for sde, parametrization, scale in (("vpsde", "epsilon", False), ("subvpsde", "epsilon", False),
                                        ("vesde", "score", True)):
        model = _config("toy/checkerboard", sde).model
        assert (model.parametrization, model.network["scale_by_sigma"]) == (parametrization, scale)
    ve, vp = _config("cifar10/ve_ncsnpp_continuous"), _config("cifar10/vp_ddpmpp_continuous")
    assert (ve.model.ema_rate, vp.model.ema_rate, ve.model.network["fir"], vp.model.network["fir"]) == \
        (0.999, 0.9999, True, False)
    assert (ve.optim.lr, ve.optim.warmup, ve.optim.grad_clip, ve.training.batch_size, ve.sampling.snr) == \
        (2e-4, 5000, 1.0, 128, 0.16)


@pytest.mark.parametrize("flags,loss", [
    ({}, "dsm"),
    ({"training.likelihood_weighting": True}, "dsm_likelihood"),
    ({"training.likelihood_weighting": True, "training.importance_weighting": True},
     "dsm_likelihood_importance"),
    ({"training.continuous": False}, "ddpm"),
    ({"training.continuous": False, "training.sde": "vesde"}, "smld"),
])
def test_reference_flags_select_the_loss(flags, loss):
    assert config_lib.from_config_dict(tiny_runs.load("default", overrides=flags)).build_loss().name == loss


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["training"].update(lr=1e-3), r"unknown config key\(s\) \['training.lr'\]; valid keys of "
                                              r"training: \['sde', 'continuous'"),
    (lambda d: d["optim"].pop("warmup"), r"config section optim lacks key\(s\) \['warmup'\]"),
    (lambda d: d.update(trainig={}), r"unknown config key\(s\) \['trainig'\]; valid top-level keys"),
    (lambda d: d["model"].update(parametrization="epsilon"), None),
    (lambda d: d["model"].update(scale_by_sigma=True),
     r"model.scale_by_sigma needs model.parametrization='score'"),
    (lambda d: d["training"].update(importance_weighting=True), "importance_weighting needs"),
    (lambda d: d["training"].update(snapshot_num_steps=0), r"training.snapshot_num_steps must be >= 1"),
    (lambda d: d["training"].update(snapshot_num_steps=None), None),
    (lambda d: [d["training"].pop(k) for k in ("snapshot_sampler", "snapshot_num_steps")], None),
])
def test_config_errors_name_the_key(edit, message):
    values = tiny_runs.load("default").to_dict()
    edit(values)
    if message is None:
        config_lib.from_dict(values)
        return
    with pytest.raises(ValueError, match=message):
        config_lib.from_dict(values).build_loss()
