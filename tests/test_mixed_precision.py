"""Mixed precision: training.compute_dtype="bfloat16" runs the networks in bfloat16 around float32 master
weights, while times, noise levels, losses and every sampler's state stay float32."""

import collections
import functools

import flax.linen as nn
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

import scoresde as sd
import tiny_runs
from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import metrics, parallel, samplers, train
from scoresde.models import build_model
from scoresde.samplers import _SAMPLERS

BF16 = {"training.compute_dtype": "bfloat16"}


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides,message", [
    ({"training.compute_dtype": "float16"},
     r"training.compute_dtype='float16' is not allowed; valid values: \['bfloat16', 'float32'\]"),
    ({"training.param_dtype": "bfloat16"},
     r"training.param_dtype='bfloat16' is not allowed; valid values: \['float32'\] \(float32 master weights"),
    ({"model.dtype": "bfloat16"}, r"model.dtype is not a config key: the network's dtypes are "
                                  r"training.compute_dtype and training.param_dtype"),
])
def test_bad_dtypes_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.from_config_dict(tiny_runs.tiny_mlp(**overrides))


def test_an_autoencoder_computes_in_float32_only():
    config = config_lib.from_config_dict(tiny_runs.load("latent/autoencoder", overrides=BF16))
    with pytest.raises(ValueError, match=r"training.compute_dtype='bfloat16' is not allowed for "
                                         r"model.name='autoencoder', which computes in float32 only"):
        config.build_model()


def test_dtypes_reach_the_network():
    config = config_lib.from_config_dict(tiny_runs.tiny_mlp(**BF16))
    model = config.build_model()
    assert (model.dtype, model.param_dtype) == (jnp.bfloat16, jnp.float32)


# ------------------------------------------------------------------------------------------ networks

_NETWORKS = {
    "mlp": (dict(width=16, depth=1, input_features=4, num_classes=3), (2, 2)),
    "ncsnpp": (dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), fir=True,
                    progressive="output_skip", progressive_input="residual", embedding_type="fourier",
                    num_classes=2), (2, 8, 8, 1)),
    "ddpm": (dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)), (2, 8, 8, 1)),
    "classifier_mlp": (dict(num_classes=3, width=8), (2, 2)),
    "classifier_conv": (dict(num_classes=3, nf=8), (2, 8, 8, 1)),
}
_LAYERS_WITH_PARAMS = (nn.Dense, nn.Conv, nn.GroupNorm, nn.Embed)


def _calls(model, variables, x, label):
    """(module type, input dtypes, output dtype) of every module call in model.apply, traced abstractly."""
    seen = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        leaves = [a.dtype for a in jax.tree_util.tree_leaves(args) if hasattr(a, "dtype")]
        seen.append((type(context.module), leaves, out.dtype if hasattr(out, "dtype") else None))
        return out

    with nn.intercept_methods(record):
        out = jax.eval_shape(lambda v: model.apply(v, x, label), variables)
    return seen, out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_NETWORKS))
def test_a_bfloat16_network_keeps_float32_weights_and_computes_in_bfloat16(name):
    options, shape = _NETWORKS[name]
    x, label = jnp.full(shape, 0.3), jnp.full(shape[:1], 0.5)
    low, full = build_model(name, dtype=jnp.bfloat16, **options), build_model(name, **options)
    variables = jax.eval_shape(low.init, jax.random.PRNGKey(0), x, label)
    # The float32 network's parameters (`test_bfloat16_training_...` checks their values on the MLP).
    assert variables == jax.eval_shape(full.init, jax.random.PRNGKey(0), x, label)
    assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    calls, out = _calls(low, variables, x, label)
    assert out.dtype == jnp.float32
    layers = [(inputs, result) for kind, inputs, result in calls if issubclass(kind, _LAYERS_WITH_PARAMS)]
    assert layers and all(result == jnp.bfloat16 for _, result in layers)
    embeddings = [inputs for kind, inputs, _ in calls if kind.__name__ == "GaussianFourierProjection"]
    assert all(inputs == [jnp.float32] for inputs in embeddings)  # log sigma and x, never rounded
    embedding = [inputs for kind, inputs, _ in calls if kind.__name__ == "NoiseEmbedding"]
    assert embedding == [[jnp.float32]]


# ------------------------------------------------------------------------------------------ samplers


def _floating_loop_carries(jaxpr):
    """The avals of every floating scan / while-loop carry in a jaxpr and the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            start = eqn.params["num_consts"]
            carries = eqn.invars[start:start + eqn.params["num_carry"]]
        elif eqn.primitive.name == "while":
            carries = eqn.invars[eqn.params["cond_nconsts"] + eqn.params["body_nconsts"]:]
        else:
            carries = []
        yield from (v.aval for v in carries if jnp.issubdtype(v.aval.dtype, jnp.floating))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jex.ClosedJaxpr, jex.Jaxpr)):
                    yield from _floating_loop_carries(getattr(sub, "jaxpr", sub))


@pytest.fixture(scope="module")
def bf16_objective():
    config = config_lib.from_config_dict(tiny_runs.tiny_mlp(**BF16))
    objective = experiment_lib.build_objective(config, images=False)
    params = experiment_lib.init_params(0, objective.model, (2,))
    return objective, params


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_SAMPLERS))
def test_samplers_keep_times_sigmas_and_state_float32_under_a_bfloat16_network(name, bf16_objective):
    objective, params = bf16_objective
    sampler = samplers.build_sampler(name)
    if isinstance(sampler, samplers.FixedStepSampler):
        sampler = sampler.with_nfe(6)
    seen = collections.Counter()
    network_score = objective.score_fn(params)

    def score_fn(x, t):
        out = network_score(x, t)
        seen[x.dtype, t.dtype, out.dtype] += 1
        return out

    def record(next_fun, args, kwargs, context):
        if type(context.module).__name__ == "ScoreMLP":  # x and the noise label sigma(t) or 999 t
            seen["network"] = tuple(a.dtype for a in args)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        closed = jax.make_jaxpr(lambda k: sd.sample(k, objective.sde, score_fn, (4, 2), sampler))(
            jax.random.PRNGKey(0))
    f32 = jnp.dtype(jnp.float32)
    assert seen.pop("network") == (f32, f32)
    assert set(seen) == {(f32, f32, f32)}, seen  # what every score call took and gave
    assert closed.out_avals[0].dtype == jnp.float32
    carries = list(_floating_loop_carries(closed.jaxpr))
    assert carries and {a.dtype for a in carries} == {f32}  # states, history of model outputs, times
    loss, grads = jax.eval_shape(jax.value_and_grad(objective), params, jax.random.PRNGKey(1),
                                 jnp.zeros((4, 2)))
    assert loss.dtype == jnp.float32
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {f32}


# ------------------------------------------------------------------------------------------ training

# The tiny checkerboard run, long enough to learn something: 400 steps of a 2 x 32 MLP, EMA rate 0.99.
RUN = {"model.width": 32, "model.depth": 2, "model.ema_rate": 0.99, "data.num_train": 4096,
       "training.batch_size": 128, "training.n_jitted_steps": 50, "training.n_iters": 400,
       "optim.lr": 2e-3, **{f"training.{k}": 400 for k in ("log_freq", "eval_freq", "snapshot_freq",
                                                          "snapshot_freq_for_preemption")}}
NUM_SAMPLES = 2000


def _train(seed: int, dtype: str, compiled: dict) -> tuple[experiment_lib.Experiment, train.TrainState]:
    config = tiny_runs.tiny_mlp(**RUN, **{"training.compute_dtype": dtype})
    config.seed = seed
    experiment = experiment_lib.build_experiment(config_lib.from_config_dict(config))
    t = experiment.config.training
    if dtype not in compiled:
        compiled[dtype] = train.compile_train_steps(experiment.objective, experiment.optimizer,
                                                    experiment.config.model.ema_rate,
                                                    parallel.data_mesh(jax.devices()[:1]))
    state = train.initial_state(experiment)
    for first in range(0, t.n_iters, t.n_jitted_steps):
        batches = np.stack([experiment.dataset.train_batch(first + i, t.batch_size)
                            for i in range(t.n_jitted_steps)])
        state, _ = compiled[dtype](state, batches)
    return experiment, state


@functools.partial(jax.jit, static_argnums=0)
def _draw(objective, params, x):
    sampler = samplers.build_sampler("dpm_solver_pp", num_steps=10)
    return sd.sample(jax.random.PRNGKey(0), objective.sde, objective.score_fn(params), x.shape, sampler,
                     x_init=x)[0]


def _samples(experiment, state, noise):
    return [np.asarray(_draw(experiment.objective, state.ema_params, x)) for x in noise]


@pytest.mark.slow
def test_bfloat16_training_samples_what_float32_training_samples():
    """From the same seed and the same prior noise, the bfloat16 run's samples lie far closer to the float32
    run's than those of a float32 run of another seed, or those the float32 run draws from other noise (the
    floor of 2,000 samples): the precision moves samples less than the seed or the sampling noise does. The
    figures are in README ("Mixed precision")."""
    compiled, keys = {}, jax.random.split(jax.random.PRNGKey(7))
    noise = [jax.random.normal(k, (NUM_SAMPLES, 2)) for k in keys]
    full_run, low_run = _train(0, "float32", compiled), _train(0, "bfloat16", compiled)
    starts = (jax.tree_util.tree_leaves(train.initial_state(e).params) for e, _ in (full_run, low_run))
    for a, b in zip(*starts):
        np.testing.assert_array_equal(a, b)  # both start from the same float32 parameters
    floating = [leaf.dtype for leaf in jax.tree_util.tree_leaves(low_run[1])
                if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert set(floating) == {jnp.dtype(jnp.float32)}  # params, EMA and Adam state: float32 master weights
    full, other_noise = _samples(*full_run, noise)
    low, = _samples(*low_run, noise[:1])
    other_seed, = _samples(*_train(1, "float32", compiled), noise[:1])
    distance = lambda x, y: float(metrics.sliced_wasserstein(jax.random.PRNGKey(3), x, y))
    bf16, seed_floor = distance(low, full), distance(other_seed, full)
    noise_floor = distance(other_noise, full)
    print(f"sliced W2 to the float32 run: bfloat16 {bf16:.4f}, float32 of seed 1 {seed_floor:.4f}, "
          f"float32 from other noise {noise_floor:.4f}")
    assert bf16 < 0.1 * seed_floor and bf16 < 0.5 * noise_floor
