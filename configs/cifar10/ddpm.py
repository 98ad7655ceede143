"""DDPM (Ho et al. 2020) on CIFAR-10 with its discrete loss (reference configs/vp/ddpm/cifar10.py).

35,218,947 parameters.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config():
    config = _common["cifar10_config"]("vpsde", "ddpm")
    config.training.continuous = False
    config.training.reduce_mean = True
    config.sampling.predictor = "ancestral"
    config.sampling.corrector = "none"
    config.data.centered = True
    model = config.model
    model.ema_rate = 0.9999
    model.num_res_blocks = 2
    return config
