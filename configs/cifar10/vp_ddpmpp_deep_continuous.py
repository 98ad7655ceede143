"""DDPM++ cont. (deep) with the VP SDE on CIFAR-10 (reference configs/vp/cifar10_ddpmpp_deep_continuous.py).

106,632,579 parameters.
"""

import pathlib
import runpy

_vp = runpy.run_path(str(pathlib.Path(__file__).with_name("vp_ddpmpp_continuous.py")))


def get_config():
    config = _vp["build"]("vpsde", num_res_blocks=8)
    config.training.n_iters = 950_000
    return config
