"""DDPM++ cont., VP SDE, CIFAR-10 (Song et al. 2021, Table 3; reference vp/cifar10_ddpmpp_continuous.py).

61,804,419 parameters. Pass "subvpsde" after a colon for the sub-VP variant.
"""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config(sde: str = "vpsde"):
    return build(sde, num_res_blocks=4)


def build(sde: str, num_res_blocks: int):
    """The config for `sde` with `num_res_blocks` residual blocks per resolution (the deep variants use 8)."""
    config = _common["cifar10_config"](sde, "ddpmpp")
    config = _common["ncsnpp_options"](config, num_res_blocks=num_res_blocks)
    config.training.reduce_mean = True
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.data.centered = True
    model = config.model
    model.ema_rate = 0.9999
    model.fir = False
    model.progressive_input = "none"
    return config
