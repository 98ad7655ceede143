"""A noise-conditional classifier of 8x8 digits, for classifier guidance of configs/digits/small.py's model.

It sees the digits as that model does (8x8, in [-1, 1]) under the same SDE, chosen after a colon:
configs/digits/classifier.py:vesde (default vpsde); `scoresde sample --workdir=RUN --classifier_workdir=THIS
--class_label=K`.
"""

import pathlib
import runpy

_digits = runpy.run_path(str(pathlib.Path(__file__).parent / "ddpmpp.py"))
_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))


NUM_CLASSES = 10


def get_config(sde: str = "vpsde"):
    config = _digits["get_config"](sde)
    config.data.image_size = 8

    training = config.training
    training.objective = "classifier"
    training.n_iters = 2_000
    training.snapshot_freq = 2_000
    training.snapshot_freq_for_preemption = 500
    training.keep_checkpoints = 1
    config.eval.enable_sampling = False
    config.eval.enable_bpd = False
    config.optim.lr = 2e-3
    config.optim.warmup = 100
    config.model.num_classes = NUM_CLASSES
    config.model.ema_rate = 0.99  # a short run: at 0.999 the average would keep 14% of the initial weights
    return _default["with_network"](config, "classifier_conv", nf=32, ch_mult=(1, 2),
                                    num_res_blocks=1, dropout=0.0)
