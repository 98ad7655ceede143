"""Prompt conditioning: the text encoder, cross-attention (masking, key permutations), the empty prompt as the
unconditional network, the condition slot for prompts, a tiny prompt run trained and sampled with
classifier-free guidance through an unchanged sampler (DPM-Solver++ by `scoresde sample --prompt`), and the CLI's bad inputs.

Networks are tiny (an 8x16 one-level DDPM++ with nf=8 and a width-16 text encoder, its output layers
initialised at scale 1 so that a prompt changes the output from the start); the one training run is 4 steps of
configs/digits/prompts.py shrunk to that network and 200 canvases. Every test is in the slow set.
"""

import json
import runpy
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import config as config_lib
from scoresde import experiment as experiment_lib
from scoresde import tokenizer
from scoresde import workdir as workdir_lib
from scoresde.data import Batch
from scoresde.models import build_model
from scoresde.models.layers import CrossAttnBlock
from scoresde.models.text_encoder import TextEncoder

from test_cli import _NoCapture, _snapshot, scoresde

pytestmark = pytest.mark.slow  # every test compiles a network

PROMPTS = ["a 3 on the left and a seven on the right", "the digit 8 to the right of zero", ""]
TINY = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, text_width=16,
            text_depth=1, text_heads=2, cross_attn_resolutions=(8,), init_scale=1.0)
TINY_FLAGS = ["--config=configs/digits/prompts.py", "--noprogress", "--config.training.n_iters=4",
              "--config.training.log_freq=2", "--config.training.eval_freq=2",
              "--config.training.snapshot_freq=4", "--config.training.snapshot_freq_for_preemption=2",
              "--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.model.cross_attn_resolutions=(8,)",
              "--config.model.text_width=16", "--config.model.text_depth=1", "--config.model.init_scale=1.0",
              "--config.model.text_heads=2", "--config.data.num_train=200", "--config.data.num_test=20",
              "--config.eval.batch_size=8"]
X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 16, 1)), jnp.float32)
T = jnp.array([0.2, 0.5, 0.9])


def _network(conditioning):
    model = build_model("ddpmpp", prompt_conditioning=conditioning, **TINY)
    ids = jnp.asarray(tokenizer.encode_batch(PROMPTS))
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), X, T, cond=ids)["params"]
    return jax.jit(model.apply), params, ids


@pytest.fixture(scope="module", params=["cross_attention", "pooled"])
def network(request):
    return _network(request.param)


# ----- cross-attention and the text encoder -----


@pytest.fixture(scope="module")
def cross_attention():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 4, 8, 8)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(2, 6, 12)), jnp.float32)
    mask = jnp.array([[True, True, True, False, False, False], [True, False, True, True, True, False]])
    block = CrossAttnBlock(num_heads=2, init_scale=1.0)
    params = block.init(jax.random.key(0), x, context, mask)
    return jax.jit(block.apply), params, x, context, mask


def test_masked_tokens_do_not_change_cross_attention(cross_attention):
    apply, params, x, context, mask = cross_attention
    out = apply(params, x, context, mask)
    for fill in (0.0, 1e4, np.nan):
        changed = jnp.where(mask[..., None], context, fill)
        np.testing.assert_array_equal(apply(params, x, changed, mask), out)  # bitwise
    # ... while a token it attends to does.
    assert not np.allclose(apply(params, x, context.at[0, 1].add(1.0), mask), out)


def test_cross_attention_is_invariant_to_permuting_keys_and_values_together(cross_attention):
    apply, params, x, context, mask = cross_attention
    out = apply(params, x, context, mask)
    order = jnp.array([5, 2, 0, 4, 1, 3])
    np.testing.assert_allclose(apply(params, x, context[:, order], mask[:, order]), out, atol=1e-5)
    # Permuting the keys alone, not the mask, attends to other tokens.
    assert not np.allclose(apply(params, x, context[:, order], mask), out, atol=1e-3)


def test_text_encoder_ignores_padding_and_reads_word_order():
    encoder = TextEncoder(width=16, depth=2, num_heads=2)
    ids = jnp.asarray(tokenizer.encode_batch(PROMPTS[:2] + ["a 7 on the left and a three on the right"]))
    params = jax.jit(encoder.init)(jax.random.key(0), ids)
    apply = jax.jit(encoder.apply)
    features, mask = apply(params, ids, ids != tokenizer.PAD_ID)
    np.testing.assert_array_equal(mask, encoder.apply(params, ids)[1])
    other = jnp.where(mask, ids, tokenizer.START_ID + 5)  # other words where the padding was, still masked
    changed, _ = apply(params, other, mask)
    np.testing.assert_array_equal(np.where(mask[..., None], changed, 0), np.where(mask[..., None], features, 0))
    # "a 7 ... a three" against "a 3 ... a seven": the same words before the digit, another order after.
    assert not np.allclose(features[2, 2], features[0, 2], atol=1e-3)


# ----- the empty prompt, the condition slot -----


def test_the_empty_prompt_is_the_unconditional_network(network):
    apply, params, ids = network
    unconditional = apply({"params": params}, X, T)
    empty = jnp.broadcast_to(jnp.asarray(tokenizer.NULL_PROMPT), ids.shape)
    np.testing.assert_array_equal(apply({"params": params}, X, T, cond=empty), unconditional)
    prompted = apply({"params": params}, X, T, cond=ids)
    np.testing.assert_array_equal(prompted[2], unconditional[2])  # PROMPTS[2] is ""
    assert not np.allclose(prompted[:2], unconditional[:2], atol=1e-2)


def test_networks_refuse_bad_prompt_options_and_shapes():
    for options, message in (
            (dict(prompt_conditioning="film"), "prompt_conditioning='film' is not allowed"),
            (dict(prompt_conditioning="pooled", num_classes=3), "needs conditional=True and num_classes=0"),
            (dict(text_width=0), "text_width=0 is not allowed")):
        with pytest.raises(ValueError, match=message):
            build_model("ddpmpp", **{**TINY, **options})
    model = build_model("ddpmpp", **{**TINY, "cross_attn_resolutions": (16,),
                                     "prompt_conditioning": "cross_attention"})
    with pytest.raises(ValueError, match=r"holds none of the feature heights \[8\]"):
        jax.eval_shape(model.init, jax.random.key(0), X, T)
    model = build_model("ddpmpp", prompt_conditioning="pooled", **TINY)
    with pytest.raises(ValueError, match=r"cond shape \(3, 15\) is not allowed"):
        jax.eval_shape(model.init, jax.random.key(0), X, T, cond=jnp.zeros((3, 15), jnp.int32))


def test_prompt_dropout_replaces_whole_prompts_by_the_empty_prompt():
    config = config_lib.from_config_dict(_tiny_config())
    objective = experiment_lib.build_objective(config, images=True)
    ids = jnp.asarray(np.tile(tokenizer.encode_batch(PROMPTS[:1]), (4000, 1)))
    dropped = np.asarray(objective.condition(jax.random.PRNGKey(0), ids))
    empty = np.all(dropped == tokenizer.NULL_PROMPT, axis=1)
    assert np.all(empty | np.all(dropped == np.asarray(ids), axis=1))
    assert abs(empty.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(ids))


def _tiny_config():
    config = runpy.run_path("configs/digits/prompts.py")["get_config"]()
    for name, value in TINY.items():
        config.model[name] = value
    config.data.num_train, config.data.num_test = 200, 20
    return config


def test_a_prompt_model_needs_a_dataset_with_prompts():
    config = _tiny_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    with pytest.raises(ValueError, match="needs a dataset with prompts \\(digit_pairs\\); 'digits' has none"):
        experiment_lib.build_experiment(config_lib.from_config_dict(config))


# ----- a tiny run: trained, sampled with guidance, the CLI -----


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prompts") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, out, err = scoresde(monkeypatch, _NoCapture(), "train", f"--workdir={workdir}", *TINY_FLAGS)
    assert code == 0, err
    return workdir


def test_guided_score_of_a_trained_prompt_model_contrasts_it_with_the_empty_prompt(prompt_run):
    experiment, state = experiment_lib.restore(prompt_run)
    objective, ids = experiment.objective, tokenizer.encode(PROMPTS[0])

    @jax.jit
    def scores(params, x, t):  # one prompt [L] shared by the batch, the empty prompt, None, guided
        return (objective.score_fn(params, cond=ids)(x, t),
                objective.score_fn(params, cond=tokenizer.NULL_PROMPT)(x, t), objective.score_fn(params)(x, t),
                experiment_lib.class_score_fn(objective, params, ids, 2.0)(x, t))

    conditional, null, none, guided = scores(state.ema_params, X, jnp.full((3,), 0.4))
    np.testing.assert_array_equal(null, none)
    assert np.max(np.abs(conditional - null)) > 1e-2
    np.testing.assert_allclose(guided, conditional + 2.0 * (conditional - null), rtol=1e-5, atol=1e-5)


def test_sample_prompt_writes_npz_and_png_through_an_unchanged_sampler(prompt_run, monkeypatch, capsys):
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={prompt_run}",
                              "--prompt=A 3 on the left, and a SEVEN on the right.", "--guidance_scale=2",
                              "--sampler=dpm_solver_pp", "--num_steps=3", "--num_samples=10", "--batch_size=4")
    assert code == 0, err
    stem = prompt_run / "samples" / "samples_4_dpm_solver_pp_prompt-a-3-on-the-left-and-a-seven-on-the-right_w2"
    with np.load(f"{stem}.npz") as samples:
        assert samples["x"].shape == (10, 8, 16, 1) and np.all(np.isfinite(samples["x"]))
        assert str(samples["prompt"]) == "A 3 on the left, and a SEVEN on the right."
        assert float(samples["guidance_scale"]) == 2.0
    assert (stem.parent / f"{stem.name}.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--prompt=a sevn on the left and a 3 on the rigth"],
     "unknown word(s) in prompt 'a sevn on the left and a 3 on the rigth': 'sevn' (nearest: seven"),
    (["--prompt=a 3 on the left", "--class_label=3"], "--prompt and --class_label exclude each other"),
    (["--class_label=3"], "--class_label needs a class-conditional model; this run takes prompts"),
    (["--prompt=3 left and 7 right", "--guidance_scale=-1"], "--guidance_scale must be >= 0"),
])
def test_bad_prompt_input_is_one_line_and_writes_nothing(prompt_run, args, message, monkeypatch, capsys):
    before = _snapshot(prompt_run)
    code, out, err = scoresde(monkeypatch, capsys, "sample", f"--workdir={prompt_run}", *args)
    assert (code, err.count("\n")) == (2, 1) and message in err, err
    assert _snapshot(prompt_run) == before


def test_prompt_on_a_run_without_prompts_or_without_a_workdir_is_refused(prompt_run, tmp_path, monkeypatch,
                                                                        capsys):
    # The same run with an unconditional network in its config.json: refused from the config, before the
    # checkpoint (which would not fit it) is read.
    shutil.copytree(prompt_run, tmp_path / "run")
    config = json.loads((tmp_path / "run" / workdir_lib.CONFIG_FILE).read_text())
    config["model"]["prompt_conditioning"], config["training"]["cond_dropout"] = "none", 0.0
    (tmp_path / "run" / workdir_lib.CONFIG_FILE).write_text(json.dumps(config))
    before = _snapshot(tmp_path)
    for args, message in (([f"--workdir={tmp_path / 'run'}"], "--prompt needs a prompt-conditioned run "
                                                              "(model.prompt_conditioning); this run takes "
                                                              "no condition"),
                          ([f"--outdir={tmp_path / 'out'}"], "--prompt samples a prompt-conditioned run: it "
                                                             "needs --workdir")):
        code, out, err = scoresde(monkeypatch, capsys, "sample", "--prompt=3 left and 7 right", *args)
        assert (code, err.count("\n")) == (2, 1) and message in err, err
    assert _snapshot(tmp_path) == before
