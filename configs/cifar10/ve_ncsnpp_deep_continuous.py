"""NCSN++ cont. (deep) with the VE SDE on CIFAR-10 (reference configs/ve/cifar10_ncsnpp_deep_continuous.py).

107,587,075 parameters.
"""

import pathlib
import runpy

_ve = runpy.run_path(str(pathlib.Path(__file__).with_name("ve_ncsnpp_continuous.py")))


def get_config():
    config = _ve["build"](num_res_blocks=8)
    config.training.n_iters = 950_000
    return config
