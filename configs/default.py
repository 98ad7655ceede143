"""Every config field at its default; experiment files in toy/, digits/ and cifar10/ override a few of them.

Sections and field names are the reference implementation's (yang-song/score_sde, configs/), with its defaults
for CIFAR-10 where it has the field; `scoresde.config` documents each field and converts this ConfigDict into
typed dataclasses. Fields not in the reference: training.importance_weighting, training.eps,
training.keep_checkpoints, training.cond_dropout, training.objective, training.kl_weight,
training.snapshot_sampler / snapshot_num_steps, training.skip_nonfinite, training.compute_dtype / param_dtype,
optim.cosine_decay, model.parametrization, model.num_classes, model.autoencoder_workdir, data.path / npz_key /
label_key / test_fraction / num_train / num_test. The `model` section's keys other than name, ema_rate,
parametrization, sigma_*, beta_*, num_scales and num_classes are options of the network `model.name` (here the
MLP's).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = False
    training.likelihood_weighting = False
    training.importance_weighting = False
    training.eps = 1e-5
    training.batch_size = 128
    training.n_iters = 1_300_000
    training.n_jitted_steps = 5
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq = 50_000
    training.snapshot_freq_for_preemption = 10_000
    training.snapshot_sampling = True
    training.keep_checkpoints = 0
    training.cond_dropout = 0.0  # with model.num_classes > 0: the share of labels dropped to the null class
    training.objective = "score"
    training.kl_weight = 1e-6  # the autoencoder objective's KL weight (Rombach et al. 2022, App. G)
    training.snapshot_sampler = "dpm_solver_pp"
    training.snapshot_num_steps = config_dict.FieldReference(10, field_type=int)  # None: the sampler's own
    training.skip_nonfinite = False  # True: skip (and count) steps with a NaN or Inf loss or gradient
    training.compute_dtype = "float32"  # "bfloat16": the network computes in bfloat16 (mixed precision)
    training.param_dtype = "float32"  # parameters, optimizer state and EMA: float32 master weights

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.snr = 0.16
    sampling.n_steps_each = 1
    sampling.noise_removal = True

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.batch_size = 1024
    evaluate.num_samples = 50_000
    evaluate.enable_sampling = False
    evaluate.enable_bpd = False

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "checkerboard"
    data.image_size = config_dict.placeholder(int)
    data.num_channels = 1
    data.centered = False
    data.uniform_dequantization = False
    data.path = config_dict.placeholder(str)
    data.npz_key = config_dict.placeholder(str)
    data.label_key = config_dict.placeholder(str)
    data.test_fraction = 0.1
    data.num_train = 10_000
    data.num_test = 2_000

    config.model = model = ml_collections.ConfigDict()
    model.name = "mlp"
    model.ema_rate = 0.9999
    model.parametrization = "epsilon"
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.num_scales = 1000
    model.num_classes = 0  # 0: unconditional; K: class-conditional on the data's labels 0 .. K - 1
    model.autoencoder_workdir = config_dict.placeholder(str)  # a latent score model: the autoencoder run
    model.width = 256
    model.depth = 3
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.scale_by_sigma = False

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0
    optim.cosine_decay = False
    return config


# The reference's per-SDE choices (Song et al. 2021, App. H.1; its configs/{vp,subvp,ve}): VP and sub-VP
# networks predict the noise from 999 t; VE networks output the score from Fourier features of sigma(t) and
# divide by sigma(t).
SDE_CHOICES = {
    "vpsde": dict(parametrization="epsilon", embedding_type="positional", scale_by_sigma=False),
    "subvpsde": dict(parametrization="epsilon", embedding_type="positional", scale_by_sigma=False),
    "vesde": dict(parametrization="score", embedding_type="fourier", scale_by_sigma=True),
}


def with_sde(config: ml_collections.ConfigDict, sde: str) -> ml_collections.ConfigDict:
    """Sets training.sde and the model fields the reference ties to it (SDE_CHOICES)."""
    if sde not in SDE_CHOICES:
        raise ValueError(f"unknown SDE {sde!r}; valid names: {sorted(SDE_CHOICES)}.")
    config.training.sde = sde
    config.model.update(SDE_CHOICES[sde])
    return config


# The model fields that are not options of the network (scoresde.config.ModelConfig).
MODEL_FIELDS = ("name", "ema_rate", "parametrization", "sigma_min", "sigma_max", "beta_min", "beta_max",
                "num_scales", "num_classes", "autoencoder_workdir")


def with_network(config: ml_collections.ConfigDict, name: str, **options) -> ml_collections.ConfigDict:
    """Sets model.name and replaces the network options of the model section with `options`."""
    model = config.model
    for key in [k for k in model.keys() if k not in MODEL_FIELDS]:
        delattr(model, key)
    model.name = name
    model.update(options)
    return config
