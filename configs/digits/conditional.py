"""A class-conditional DDPM++ on scikit-learn's 8x8 handwritten digits, trained with label dropout for
classifier-free guidance: `scoresde sample --workdir=RUN --class_label=K --guidance_scale=W` draws digit K.

The network is the fast 8x8 one (two levels, one residual block each, no attention) with a learned embedding
of the ten classes plus the null class; 10% of the training labels are dropped to the null class, so the same
network gives the unconditional score that guidance contrasts with (Ho & Salimans 2022). README, "Class-
conditional digits", has the measured accuracy per class and the training cost on 2 CPU cores.
"""

import pathlib
import runpy

_digits = runpy.run_path(str(pathlib.Path(__file__).parent / "ddpmpp.py"))


def get_config(sde: str = "vpsde"):
    config = _digits["get_config"](sde)
    config.data.image_size = 8

    training = config.training
    training.n_iters = 1_000
    training.cond_dropout = 0.1
    training.snapshot_freq = 1_000
    training.snapshot_sampling = False
    training.keep_checkpoints = 1

    model = config.model
    model.ema_rate = 0.99  # 0.999 still averages in the first steps' noise after 1,000 steps
    model.num_classes = 10
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()

    config.optim.lr = 2e-3
    return config
