"""Experiment configuration: a config file's ml_collections ConfigDict, converted once into typed dataclasses.

Sections and field names follow the reference implementation (yang-song/score_sde, `configs/`), so an
experiment is ported by copying values: `training.sde`, `training.continuous`, `model.nf`, `optim.lr`, ...
The conversion rejects unknown keys (listing the valid ones) and missing keys; everything below the CLI
receives these frozen dataclasses or plain arguments built from them, never a ConfigDict.

The `model` section holds the SDE's parameters, the EMA rate, the parametrization and the number of classes
(the fields of `ModelConfig`); every other key in it is an option of the network named by `model.name`, passed
unchanged to `scoresde.models.build_model`, which rejects options the network does not have.

Keys added later: a key added after runs were first written is listed in `ADDED_KEYS` with the value that
reproduces the behaviour from before it, and a config (a config file, or an older run's config.json) that
lacks it gets that value; every other key must be present. So an older unconditional workdir still loads and
resumes, and its config compares equal to today's config of the same run (`with_added_keys`).

Example:
    >>> config = from_dict(runpy.run_path("configs/toy/checkerboard.py")["get_config"]().to_dict())
    >>> sde, model = config.build_sde(), config.build_model()
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import ml_collections

from scoresde import data as data_lib
from scoresde import losses, samplers
from scoresde import sde as sde_lib
from scoresde.models import AUTOENCODERS, COMPUTE_DTYPES, PARAM_DTYPES, build_model, parametrization
from scoresde.samplers.base import require


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _section(cls, name: str, values: Mapping[str, Any], **extra: Any):
    """cls(**values, **extra), after checking that `values` holds exactly the section's keys."""
    fields = [f for f in dataclasses.fields(cls) if f.name not in extra]
    valid = [f.name for f in fields]
    unknown = sorted(set(values) - set(valid))
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in values]
    require(not unknown, f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; valid keys of "
                         f"{name}: {valid}.")
    require(not missing, f"config section {name} lacks key(s) {missing}.")
    return cls(**values, **extra)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The `training` section.

    Attributes:
      sde: "vpsde", "subvpsde" or "vesde".
      continuous: draw t from [eps, T] (continuous DSM); False: the discrete DDPM (VP) or SMLD (VE) loss over
        `model.num_scales` noise levels.
      reduce_mean: average the squared error over data dimensions; False: half its sum (the reference's
        default).
      likelihood_weighting: weight DSM by g(t)^2 (Song et al. 2021b, Thm. 1) instead of sigma(t)^2.
      importance_weighting: with likelihood weighting, draw t from p(t) ~ g^2 / sigma^2 (Song et al. 2021b,
        Sec. 5) instead of uniformly; same expected loss, lower variance.
      eps: smallest t drawn by the continuous losses (the reference hard-codes 1e-5).
      batch_size: global batch size, over all devices.
      n_iters: total optimizer steps; a multiple of n_jitted_steps.
      n_jitted_steps: optimizer steps per dispatch, run in one `lax.scan`.
      log_freq, eval_freq: steps between logged training losses / losses on a test batch.
      snapshot_freq: steps between kept checkpoints (and sample snapshots, if snapshot_sampling).
      snapshot_freq_for_preemption: steps between preemption checkpoints (only the latest one is kept).
      snapshot_sampling: write a PNG of samples from the EMA parameters at every snapshot.
      keep_checkpoints: snapshot checkpoints kept; 0 keeps all, as the reference does.
      cond_dropout: probability in [0, 1] that a class label is replaced by the null class during training
        (classifier-free guidance, Ho & Salimans 2022); 0 trains the conditional score only. Needs
        model.num_classes > 0 when positive.
      objective: what the network is trained for: "score" (denoising score matching, the losses above),
        "classifier" (cross-entropy of the data's labels at every noise level, for classifier guidance;
        `scoresde.classifier`) or "autoencoder" (reconstruction plus a KL term, the first stage of a latent
        score model; `scoresde.autoencoder`).
      kl_weight: the autoencoder objective's weight of the KL term (Rombach et al. 2022, App. G).
      snapshot_sampler: sampler spec (`scoresde.samplers.build_sampler`) of the snapshot pictures; a fast ODE
        solver by default, so that a snapshot costs seconds, not a 1,000-step `sampling.method` pass.
      snapshot_num_steps: its steps; None: the sampler's own default (adaptive ones choose their steps).
      skip_nonfinite: a step whose loss or gradients are NaN or Inf leaves the state as it was and is counted
        (`skipped_nonfinite` in metrics.jsonl); False stops training with an error naming the step.
      compute_dtype: what the network computes in, "float32" or "bfloat16" (mixed precision: Micikevicius et
        al. 2018). Its parameters, their gradients, the optimizer state, the EMA, the loss, times, noise
        levels and the samplers' states stay float32; so does the network's output.
      param_dtype: what the parameters are stored in: "float32" only (master weights). bfloat16 weights
        would lose updates: with 8 significant bits, a change smaller than 2^-9 of a weight rounds to
        nothing, so an EMA at ema_rate 0.999 (an increment of 1e-3 |p - ema|) would never move while
        |p - ema| < 1.95 |ema|, nor would a weight under an Adam step that small.
    """

    sde: str
    continuous: bool
    reduce_mean: bool
    likelihood_weighting: bool
    importance_weighting: bool
    eps: float
    batch_size: int
    n_iters: int
    n_jitted_steps: int
    log_freq: int
    eval_freq: int
    snapshot_freq: int
    snapshot_freq_for_preemption: int
    snapshot_sampling: bool
    keep_checkpoints: int
    cond_dropout: float
    objective: str
    kl_weight: float
    snapshot_sampler: str
    snapshot_num_steps: int | None
    skip_nonfinite: bool
    compute_dtype: str
    param_dtype: str

    def __post_init__(self):
        require(self.batch_size >= 1, f"training.batch_size must be >= 1; got {self.batch_size}.")
        require(0.0 <= self.cond_dropout <= 1.0,
                f"training.cond_dropout must lie in [0, 1]; got {self.cond_dropout}.")
        require(self.n_jitted_steps >= 1,
                f"training.n_jitted_steps must be >= 1; got {self.n_jitted_steps}.")
        require(self.keep_checkpoints >= 0,
                f"training.keep_checkpoints must be >= 0; got {self.keep_checkpoints}.")
        require(self.snapshot_num_steps is None or self.snapshot_num_steps >= 1,
                f"training.snapshot_num_steps must be >= 1 or None; got {self.snapshot_num_steps}.")
        require(self.compute_dtype in COMPUTE_DTYPES,
                f"training.compute_dtype={self.compute_dtype!r} is not allowed; valid values: "
                f"{sorted(COMPUTE_DTYPES)}.")
        require(self.param_dtype in PARAM_DTYPES,
                f"training.param_dtype={self.param_dtype!r} is not allowed; valid values: "
                f"{sorted(PARAM_DTYPES)} (float32 master weights: in bfloat16 the EMA and small Adam updates "
                "round to nothing). "
                "training.compute_dtype='bfloat16' runs the network in bfloat16.")
        for key in ("n_iters", "log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"):
            value = getattr(self, key)
            require(value >= 1 and value % self.n_jitted_steps == 0,
                    f"training.{key}={value} must be a positive multiple of training.n_jitted_steps="
                    f"{self.n_jitted_steps}, so that checkpoints and logs fall between dispatches.")

    @property
    def loss_name(self) -> str:
        """The `scoresde.losses` loss these reference flags select (the reference's `get_step_fn` logic)."""
        if not self.continuous:
            require(not self.likelihood_weighting,
                    "training.likelihood_weighting needs training.continuous.")
            require(self.sde in _DISCRETE_LOSSES,
                    f"training.continuous=False has a discrete loss only for {sorted(_DISCRETE_LOSSES)}; "
                    f"got training.sde={self.sde!r}.")
            return _DISCRETE_LOSSES[self.sde]
        require(self.likelihood_weighting or not self.importance_weighting,
                "training.importance_weighting needs training.likelihood_weighting.")
        return _CONTINUOUS_LOSSES[self.likelihood_weighting, self.importance_weighting]


# Song et al. 2021, Sec. 3.3 and App. B: DDPM's loss is the discrete VP one, SMLD's the discrete VE one.
_DISCRETE_LOSSES = {"vpsde": "ddpm", "vesde": "smld"}
_CONTINUOUS_LOSSES = {
    (False, False): "dsm",
    (True, False): "dsm_likelihood",
    (True, True): "dsm_likelihood_importance",
}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The `sampling` section.

    Attributes:
      method: sampler spec for `scoresde.samplers.build_sampler` ("pc", or a fast ODE sampler such as
        "unipc:order=3").
      predictor, corrector, snr, n_steps_each: settings of the "pc" sampler (n_steps_each: corrector rounds).
      noise_removal: finish with Tweedie's denoiser (one more score evaluation).
    """

    method: str
    predictor: str
    corrector: str
    snr: float
    n_steps_each: int
    noise_removal: bool

    def build_sampler(self, method: str, num_steps: int | None) -> samplers.Sampler:
        """The sampler of spec `method` (`samplers.build_sampler`), with this section's settings (for "pc")
        and `num_steps` if given as defaults its own settings override."""
        settings = {"pc": dict(predictor=self.predictor, corrector=self.corrector, snr=self.snr,
                               n_corrector_steps=self.n_steps_each)}.get(samplers.parse_spec(method)[0], {})
        if num_steps is not None:
            settings["num_steps"] = num_steps
        return samplers.build_sampler(method, **settings)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The `eval` section: batch_size (test examples in the likelihood), num_samples for sample metrics,
    enable_sampling (sample metrics), enable_bpd (test-set bits/dim)."""

    batch_size: int
    num_samples: int
    enable_sampling: bool
    enable_bpd: bool


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optim` section: optimizer ("Adam"), lr, beta1, eps, weight_decay (decoupled, scaled by the
    learning rate as in the reference's flax.optim.Adam), warmup (linear, steps), grad_clip (global norm;
    negative disables clipping), cosine_decay (the rate falls to 0 along a cosine by training.n_iters)."""

    optimizer: str
    lr: float
    beta1: float
    eps: float
    weight_decay: float
    warmup: int
    grad_clip: float
    cosine_decay: bool


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model` section.

    Attributes:
      name: network name for `scoresde.models.build_model` ("mlp", "ncsnpp", "ddpmpp", "ddpm").
      ema_rate: decay of the exponential moving average of the parameters.
      parametrization: how network output becomes a score ("epsilon", "score", "edm"; see
        `scoresde.models.parametrization`).
      sigma_min, sigma_max: VE SDE parameters.
      beta_min, beta_max: VP and sub-VP SDE parameters.
      num_scales: default sampler steps, and the number of noise levels of the discrete losses.
      num_classes: 0 (unconditional), or the number of classes of a class-conditional network trained on
        the data's labels 0 .. num_classes - 1 (index num_classes is its null class).
      autoencoder_workdir: None, or a trained autoencoder run (training.objective="autoencoder") whose
        frozen encoder maps the data to the latents this score model is trained on, and whose decoder maps its
        samples back (`scoresde.latent`).
      network: every other key of the section: options of the network.
    """

    name: str
    ema_rate: float
    parametrization: str
    sigma_min: float
    sigma_max: float
    beta_min: float
    beta_max: float
    num_scales: int
    num_classes: int
    autoencoder_workdir: str | None
    network: Mapping[str, Any]

    def __post_init__(self):
        require(0.0 <= self.ema_rate < 1.0, f"model.ema_rate must lie in [0, 1); got {self.ema_rate}.")
        require(self.num_scales >= 1, f"model.num_scales must be >= 1; got {self.num_scales}.")
        require(isinstance(self.num_classes, int) and self.num_classes >= 0,
                f"model.num_classes must be an int >= 0 (0: unconditional); got {self.num_classes!r}.")
        # A network with scale_by_sigma divides its output by its noise label, which is sigma(t) only under
        # the "score" parametrization (the reference's VE models).
        require(not self.network.get("scale_by_sigma") or self.parametrization == "score",
                f"model.scale_by_sigma needs model.parametrization='score'; got {self.parametrization!r}.")
        for key in ("dtype", "param_dtype"):
            require(key not in self.network,
                    f"model.{key} is not a config key: the network's dtypes are training.compute_dtype and "
                    "training.param_dtype.")

    def build_model(self, compute_dtype: str = "float32", param_dtype: str = "float32"):
        """The network, computing in `compute_dtype` with parameters in `param_dtype` (names of
        `COMPUTE_DTYPES` and `PARAM_DTYPES`); an autoencoder takes no classes (model.num_classes 0) and no
        dtypes (float32 only), every other network both."""
        if self.name in AUTOENCODERS:
            require(compute_dtype == "float32",
                    f"training.compute_dtype={compute_dtype!r} is not allowed for model.name={self.name!r}, "
                    "which computes in float32 only.")
            return build_model(self.name, **({"num_classes": self.num_classes} if self.num_classes else {}),
                               **self.network)
        return build_model(self.name, num_classes=self.num_classes, dtype=COMPUTE_DTYPES[compute_dtype],
                           param_dtype=PARAM_DTYPES[param_dtype], **self.network)

    def build_parametrization(self) -> parametrization.Parametrization:
        return parametrization.build_parametrization(self.parametrization)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: the typed form of a config file (see the module docstring)."""

    seed: int
    training: TrainingConfig
    sampling: SamplingConfig
    eval: EvalConfig
    data: data_lib.DataConfig
    model: ModelConfig
    optim: OptimConfig

    def __post_init__(self):
        prompts = self.model.network.get("prompt_conditioning", "none") != "none"
        require(not self.training.cond_dropout or self.model.num_classes or prompts,
                f"training.cond_dropout={self.training.cond_dropout} needs a class-conditional model "
                "(model.num_classes > 0) or prompts (model.prompt_conditioning).")

    def build_sde(self) -> sde_lib.SDE:
        """`training.sde` with those of the model section's SDE parameters that it takes."""
        fields = _field_names(sde_lib.build_sde(self.training.sde))
        params = {k: getattr(self.model, k) for k in ("sigma_min", "sigma_max", "beta_min", "beta_max")}
        return sde_lib.build_sde(self.training.sde, **{k: float(v) for k, v in params.items() if k in fields})

    def build_model(self):
        """The network of the `model` section in the dtypes of the `training` section."""
        return self.model.build_model(self.training.compute_dtype, self.training.param_dtype)

    def build_loss(self) -> losses.Loss:
        t = self.training
        return losses.build_loss(t.loss_name, reduce_mean=t.reduce_mean, eps=t.eps,
                                 num_scales=self.model.num_scales)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of the config file's layout (network options back inside `model`), JSON-ready."""
        out = dataclasses.asdict(self)
        out["model"].update(out["model"].pop("network"))
        del out["data"]["seed"]  # the data seed is the experiment's seed
        return json.loads(json.dumps(out))


_SECTIONS = {"training": TrainingConfig, "sampling": SamplingConfig, "eval": EvalConfig, "optim": OptimConfig}

# (section, key): the value that keeps the behaviour from before the key existed (see the module docstring).
ADDED_KEYS: dict[tuple[str, str], Any] = {
    ("training", "cond_dropout"): 0.0,
    ("model", "num_classes"): 0,
    ("training", "objective"): "score",
    ("optim", "cosine_decay"): False,
    # Training is unchanged by these; an older run's snapshot pictures are drawn by the fast default.
    ("training", "snapshot_sampler"): "dpm_solver_pp",
    ("training", "snapshot_num_steps"): 10,
    ("training", "skip_nonfinite"): False,
    ("training", "kl_weight"): 1e-6,
    ("model", "autoencoder_workdir"): None,
    ("training", "compute_dtype"): "float32",
    ("training", "param_dtype"): "float32",
}


def with_added_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's nested dict with every key of `ADDED_KEYS` it lacks set to its value (sections it lacks
    stay absent, for `from_dict` to name)."""
    values = {name: dict(section) if isinstance(section, Mapping) else section
              for name, section in values.items()}
    for (name, key), value in ADDED_KEYS.items():
        if isinstance(values.get(name), dict):
            values[name].setdefault(key, value)
    return values


def from_dict(values: Mapping[str, Any]) -> Config:
    """Converts a config file's nested dict (`ConfigDict.to_dict()` or a workdir's config.json) into a Config.

    Keys of `ADDED_KEYS` may be absent; they get the value listed there.

    Raises:
      ValueError: naming unknown or missing keys, or invalid values.
    """
    values = with_added_keys(values)
    top = ["seed", "data", "model", *_SECTIONS]
    unknown, missing = sorted(set(values) - set(top)), [k for k in top if k not in values]
    require(not unknown, f"unknown config key(s) {unknown}; valid top-level keys: {top}.")
    require(not missing, f"config lacks key(s) {missing}.")
    seed = int(values["seed"])
    sections = {name: _section(cls, name, values[name]) for name, cls in _SECTIONS.items()}
    model_values = dict(values["model"])
    known = {k: model_values.pop(k) for k in _field_names(ModelConfig)
             if k in model_values and k != "network"}
    # JSON (a workdir's config.json) turns tuples into lists.
    network = {k: tuple(v) if isinstance(v, list) else v for k, v in model_values.items()}
    model = _section(ModelConfig, "model", known, network=network)
    data = _section(data_lib.DataConfig, "data", values["data"], seed=seed)
    return Config(seed=seed, data=data, model=model, **sections)


def from_config_dict(config: ml_collections.ConfigDict) -> Config:
    """`from_dict` of a ConfigDict, the form config files produce."""
    return from_dict(config.to_dict())
