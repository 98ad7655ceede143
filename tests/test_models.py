"""Tests for scoresde/models: parameter counts of the paper's CIFAR-10 networks, forward passes over the
option grid, initialisation, dropout, sigma scaling, FIR resampling and option validation.

JAX compilation dominates on CPU, so forward passes use tiny images (8x8, nf=8) and parameters drawn with
numpy into the shapes `jax.eval_shape` reports; only the tests about initialisation run `init` itself, with
the fast-compiling "rbg" PRNG.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.models import DDPM, NCSNpp, ScoreMLP, build_model
from scoresde.models.layers import GaussianFourierProjection, sinusoidal_embedding
from scoresde.models.resample import fir_conv_2d, resample_2d

import marks

# --------------------------------------------------------------------- CIFAR-10 configurations of the paper
# Option values from yang-song/score_sde configs/{ve,vp,subvp}/cifar10_*_continuous.py,
# configs/vp/ddpm/cifar10.py and configs/default_cifar10_configs.py (dropout 0.1); all conditional, swish.

NCSNPP_CONTINUOUS = dict(
    nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
    resamp_with_conv=True, conditional=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
    resblock_type="biggan", progressive="none", progressive_input="residual", progressive_combine="sum",
    embedding_type="fourier", fourier_scale=16.0, init_scale=0.0, scale_by_sigma=True)
NCSNPP_DEEP_CONTINUOUS = dict(NCSNPP_CONTINUOUS, num_res_blocks=8)
DDPMPP_CONTINUOUS = dict(
    nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
    resamp_with_conv=True, conditional=True, fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
    resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
    embedding_type="positional", fourier_scale=16.0, init_scale=0.0, scale_by_sigma=False)
DDPMPP_DEEP_CONTINUOUS = dict(DDPMPP_CONTINUOUS, num_res_blocks=8)  # VP and sub-VP deep are the same network
DDPM_CIFAR10 = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                    resamp_with_conv=True, conditional=True, scale_by_sigma=False)

CIFAR10_PARAM_COUNTS = {
    "ve_ncsnpp_continuous": ("ncsnpp", NCSNPP_CONTINUOUS, 62_758_915),
    "ve_ncsnpp_deep_continuous": ("ncsnpp", NCSNPP_DEEP_CONTINUOUS, 107_587_075),
    "vp_ddpmpp_continuous": ("ddpmpp", DDPMPP_CONTINUOUS, 61_804_419),
    "vp_ddpmpp_deep_continuous": ("ddpmpp", DDPMPP_DEEP_CONTINUOUS, 106_632_579),
    "ddpm": ("ddpm", DDPM_CIFAR10, 35_218_947),
}

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
SIGMA = jnp.array([0.5, 4.0])
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def param_count(variables) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))


def random_variables(model, x, noise_label, seed=0):
    """Variables with the model's shapes, drawn with numpy: a forward pass without compiling `init`."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, noise_label)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


def rbg_key(seed):
    return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("config", marks.fast_first(CIFAR10_PARAM_COUNTS))
def test_cifar10_parameter_count_matches_reference(config):
    name, options, expected = CIFAR10_PARAM_COUNTS[config]
    model = build_model(name, **options)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))
    assert param_count(variables) == expected


# ---------------------------------------------------------------------------------------- NCSN++ forward

GRID = list(itertools.product(("ddpm", "biggan"), ("none", "output_skip", "residual"),
                              ("none", "input_skip", "residual"), (False, True)))


@pytest.mark.parametrize("resblock_type,progressive,progressive_input,fir", GRID)
def test_ncsnpp_output_shape_over_option_grid(resblock_type, progressive, progressive_input, fir):
    combine, embedding = ("cat", "fourier") if fir else ("sum", "positional")
    model = NCSNpp(**TINY, resblock_type=resblock_type, progressive=progressive,
                   progressive_input=progressive_input, progressive_combine=combine, fir=fir,
                   embedding_type=embedding)
    out, _ = jax.eval_shape(lambda key: model.init_with_output(key, X, SIGMA), jax.random.key(0))
    assert out.shape == X.shape and out.dtype == X.dtype


FORWARD_CASES = {
    "ncsnpp": dict(fir=True, progressive_input="residual", embedding_type="fourier"),
    "ddpm_blocks_output_skip_cat": dict(resblock_type="ddpm", fir=True, progressive="output_skip",
                                        progressive_input="input_skip", progressive_combine="cat"),
    "biggan_residual_pyramids": dict(progressive="residual", progressive_input="residual",
                                     skip_rescale=False),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_ncsnpp_forward_is_finite_and_noise_conditional(case):
    model = NCSNpp(**TINY, **FORWARD_CASES[case])
    variables = random_variables(model, X, SIGMA)
    out = model.apply(variables, X, SIGMA)
    assert out.shape == X.shape
    assert bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, model.apply(variables, X, 2.0 * SIGMA))


def test_unconditional_ncsnpp_ignores_noise_label():
    model = NCSNpp(**TINY, conditional=False)
    variables = random_variables(model, X, SIGMA)
    np.testing.assert_array_equal(model.apply(variables, X, SIGMA), model.apply(variables, X, 2.0 * SIGMA))


def test_dropout_is_active_only_when_training():
    model = NCSNpp(**TINY, dropout=0.5)
    variables = random_variables(model, X, SIGMA)
    eval_out = model.apply(variables, X, SIGMA)
    np.testing.assert_array_equal(eval_out, model.apply(variables, X, SIGMA, rngs={"dropout": rbg_key(1)}))
    train_a = model.apply(variables, X, SIGMA, train=True, rngs={"dropout": rbg_key(1)})
    train_b = model.apply(variables, X, SIGMA, train=True, rngs={"dropout": rbg_key(2)})
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_out)


def test_scale_by_sigma_divides_output_by_noise_label():
    options = dict(TINY, fir=True, progressive_input="residual", embedding_type="fourier")
    plain = NCSNpp(**options, scale_by_sigma=False)
    scaled = NCSNpp(**options, scale_by_sigma=True)
    variables = random_variables(plain, X, SIGMA)
    np.testing.assert_allclose(scaled.apply(variables, X, SIGMA) * SIGMA[:, None, None, None],
                               plain.apply(variables, X, SIGMA), rtol=1e-5, atol=1e-6)


def _output_kernels(params):
    """Kernels the reference scales by init_scale: each residual block's second conv, each attention
    block's output projection, and the network's last conv."""
    kernels = [block["Conv_1"]["kernel"] for name, block in params.items() if name.startswith("ResnetBlock")]
    kernels += [block["Dense_3"]["kernel"] for name, block in params.items() if name.startswith("AttnBlock")]
    last_conv = max((name for name in params if name.startswith("Conv_")), key=lambda n: int(n.split("_")[1]))
    return kernels + [params[last_conv]["kernel"]]


@pytest.mark.parametrize("init_scale,zero", [(0.0, True), (1.0, False)])
def test_init_scale_zero_initialises_output_layers(init_scale, zero):
    x = X[:, :4, :4]
    model = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,), init_scale=init_scale)
    out, variables = model.init_with_output(rbg_key(0), x, SIGMA)
    kernels = _output_kernels(variables["params"])
    assert len(kernels) == 9  # 5 residual blocks (1 down, 2 middle, 2 up), 3 attention blocks, output conv
    largest = max(float(jnp.abs(k).max()) for k in kernels)
    assert (largest < 1e-4) == zero
    assert (float(jnp.abs(out).max()) < 1e-4) == zero


# ------------------------------------------------------------------------------------------- DDPM and MLP

def test_ddpm_forward_from_init():
    model = DDPM(**TINY)
    labels = jnp.array([0.0, 999.0])
    out, variables = model.init_with_output(rbg_key(0), X, labels)
    assert out.shape == X.shape and bool(jnp.all(jnp.isfinite(out)))
    assert "GaussianFourierProjection_0" not in variables["params"]["NoiseEmbedding_0"]


X2 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
SIGMA2 = jnp.array([0.01, 0.1, 1.0, 10.0])


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_mlp_forward(embedding_type):
    model = ScoreMLP(width=32, depth=2, embedding_type=embedding_type)
    out, variables = model.init_with_output(rbg_key(0), X2, SIGMA2)
    assert out.shape == X2.shape and bool(jnp.all(jnp.isfinite(out)))
    scaled = ScoreMLP(width=32, depth=2, embedding_type=embedding_type, scale_by_sigma=True)
    np.testing.assert_allclose(scaled.apply(variables, X2, SIGMA2) * SIGMA2[:, None], out,
                               rtol=1e-5, atol=1e-7)


def test_fourier_frequencies_get_no_gradient():
    model = ScoreMLP(width=32, depth=2, embedding_type="fourier")
    variables = model.init(rbg_key(0), X2, SIGMA2)
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, X2, SIGMA2) ** 2))(variables)
    grads = grads["params"]["NoiseEmbedding_0"]
    assert float(jnp.abs(grads["GaussianFourierProjection_0"]["W"]).max()) == 0.0
    assert float(jnp.abs(grads["Dense_0"]["kernel"]).max()) > 0.0


def test_mlp_input_features_are_sin_and_cos_of_fixed_random_projections():
    model = ScoreMLP(width=32, depth=1, input_features=8, input_scale=2.0)
    variables = model.init(rbg_key(0), X2, SIGMA2)
    w = variables["params"]["GaussianFourierProjection_0"]["W"]
    assert w.shape == (2, 8) and 1.0 < float(jnp.std(w)) < 3.5
    first = variables["params"]["Dense_0"]["kernel"]  # fed [x, sin 2 pi x W, cos 2 pi x W]
    assert first.shape == (2 + 16, 32)
    projection = GaussianFourierProjection(8, 2.0).apply({"params": {"W": w}}, X2)
    np.testing.assert_allclose(projection, jnp.concatenate([jnp.sin(2 * np.pi * X2 @ w),
                                                            jnp.cos(2 * np.pi * X2 @ w)], -1), atol=1e-5)
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, X2, SIGMA2) ** 2))(variables)["params"]
    assert float(jnp.abs(grads["GaussianFourierProjection_0"]["W"]).max()) == 0.0


def test_sinusoidal_embedding_closed_form():
    emb = sinusoidal_embedding(jnp.array([0.0, 1.0]), 5)
    np.testing.assert_allclose(emb[0], [0.0, 0.0, 1.0, 1.0, 0.0])  # sin 0, cos 0, zero pad for odd dim
    np.testing.assert_allclose(emb[1], [np.sin(1.0), np.sin(1e-4), np.cos(1.0), np.cos(1e-4), 0.0], rtol=1e-6)


# ----------------------------------------------------------------------------------------- FIR resampling

IMG = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)


def test_fir_with_box_kernel_is_nearest_and_mean_pool():
    np.testing.assert_allclose(resample_2d(IMG, "up", (1, 1)), resample_2d(IMG, "up"), atol=1e-6)
    np.testing.assert_allclose(resample_2d(IMG, "down", (1, 1)), resample_2d(IMG, "down"), atol=1e-6)
    np.testing.assert_allclose(resample_2d(IMG, "down"), IMG.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4)))


@pytest.mark.parametrize("direction", ["up", "down"])
def test_fir_resampling_preserves_constants_away_from_border(direction):
    out = resample_2d(jnp.full((1, 8, 8, 2), 3.0), direction, (1, 3, 3, 1))
    inner = out[:, 2:-2, 2:-2] if direction == "up" else out[:, 1:-1, 1:-1]
    np.testing.assert_allclose(inner, 3.0, rtol=1e-6)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_fused_fir_conv_with_identity_weight_is_fir_resampling(direction):
    identity = jnp.eye(3)[None, None]
    np.testing.assert_allclose(fir_conv_2d(IMG, identity, direction, (1, 3, 3, 1)),
                               resample_2d(IMG, direction, (1, 3, 3, 1)), atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors

def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'unet'.*'ddpm'.*'ddpmpp'.*'mlp'.*'ncsnpp'"):
        build_model("unet")


def test_build_model_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"\['progresive'\].*'progressive'"):
        build_model("ncsnpp", progresive="residual")


@pytest.mark.parametrize("name,field,value", [
    ("ncsnpp", "progressive", "foo"),
    ("ncsnpp", "progressive_input", "output_skip"),
    ("ncsnpp", "progressive_combine", "avg"),
    ("ncsnpp", "resblock_type", "resnet"),
    ("ncsnpp", "embedding_type", "learned"),
    ("ncsnpp", "ch_mult", ()),
    ("ncsnpp", "nf", 0),
    ("ncsnpp", "nf", -8),
    ("ncsnpp", "num_res_blocks", 0),
    ("ncsnpp", "attn_resolutions", (0,)),
    ("ncsnpp", "fir_kernel", ()),
    ("ncsnpp", "dropout", 1.0),
    ("ncsnpp", "init_scale", -1.0),
    ("ddpm", "dropout", -0.1),
    ("ddpm", "ch_mult", (1, 0)),
    ("mlp", "width", 0),
    ("mlp", "embedding_type", "fourer"),
    ("mlp", "input_features", -1),
    ("mlp", "input_scale", -1.0),
])
def test_bad_option_value_fails_at_construction(name, field, value):
    with pytest.raises(ValueError, match=rf"\.{field}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        build_model(name, **{field: value})


def test_image_size_must_be_divisible_by_downsampling_factor():
    model = NCSNpp(nf=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(ch_mult\)-1\) = 8"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 12, 12, 3)), jnp.ones((1,)))


def test_noise_label_must_be_one_per_example():
    with pytest.raises(ValueError, match="noise_label shape"):
        jax.eval_shape(NCSNpp(**TINY).init, jax.random.key(0), X, jnp.ones(()))
    with pytest.raises(ValueError, match="noise_label"):
        jax.eval_shape(ScoreMLP().init, jax.random.key(0), jnp.ones((4, 2)), jnp.ones((3,)))
