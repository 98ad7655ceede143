"""NCSN++ cont., VE SDE, CIFAR-10 (Song et al. 2021, Table 3; reference ve/cifar10_ncsnpp_continuous.py).

62,758,915 parameters.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config():
    return build(num_res_blocks=4)


def build(num_res_blocks: int):
    """The config with `num_res_blocks` residual blocks per resolution (the deep variant uses 8)."""
    config = _common["cifar10_config"]("vesde", "ncsnpp")
    config = _common["ncsnpp_options"](config, num_res_blocks=num_res_blocks)
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.data.centered = False
    model = config.model
    model.ema_rate = 0.999
    model.fir = True
    model.progressive_input = "residual"
    return config
