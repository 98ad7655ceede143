"""A noise-conditional classifier of the eight Gaussians' mode (the label `data` serves with them), for
classifier guidance of the model of configs/toy/mixture.py. Pick the same SDE after a colon, e.g.
configs/toy/classifier.py:vesde; `scoresde sample --workdir=RUN --classifier_workdir=THIS --class_label=K`.
"""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))
_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))


NUM_CLASSES = 8


def get_config(sde: str = "vpsde"):
    config = _base["toy_config"]("eight_gaussians", sde)
    config.training.objective = "classifier"
    config.training.n_iters = 2_000
    config.training.snapshot_freq = 2_000
    config.training.snapshot_freq_for_preemption = 2_000
    config.optim.lr = 1e-3  # the README's figures
    config.eval.enable_sampling = False
    config.eval.enable_bpd = False
    config.model.num_classes = NUM_CLASSES
    config.model.ema_rate = 0.99  # a short run: at 0.999 the average would keep 14% of the initial weights
    return _default["with_network"](config, "classifier_mlp", width=128, depth=2)
