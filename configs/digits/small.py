"""A small, fast DDPM++ on scikit-learn's 8x8 handwritten digits: recognisable digits in minutes on a CPU.

The CPU counterpart of configs/digits/ddpmpp.py (16x16, for GPUs). Choose the SDE after a colon:
configs/digits/small.py:vesde (default vpsde).
"""

import pathlib
import runpy

_digits = runpy.run_path(str(pathlib.Path(__file__).parent / "ddpmpp.py"))


def get_config(sde: str = "vpsde"):
    config = _digits["get_config"](sde)
    config.data.image_size = 8

    training = config.training
    training.n_iters = 2_000
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq = 500
    training.snapshot_freq_for_preemption = 500
    training.keep_checkpoints = 1

    model = config.model
    model.ema_rate = 0.99  # 0.999 keeps e^-2 of the initial parameters after 2,000 steps: noise, not digits
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()

    # sample and eval: DPM-Solver++ 2M with 20 steps (21 score evaluations); README compares samplers.
    config.sampling.method = "dpm_solver_pp"
    model.num_scales = 20

    config.optim.lr = 2e-3
    return config
