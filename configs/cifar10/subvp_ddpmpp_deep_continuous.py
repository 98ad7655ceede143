"""DDPM++ cont. (deep), sub-VP SDE, CIFAR-10 (reference configs/subvp/cifar10_ddpmpp_deep_continuous.py).

106,632,579 parameters, the network of the VP deep config.
"""

import pathlib
import runpy

_vp = runpy.run_path(str(pathlib.Path(__file__).with_name("vp_ddpmpp_continuous.py")))


def get_config():
    config = _vp["build"]("subvpsde", num_res_blocks=8)
    config.training.n_iters = 950_000
    return config
