"""A small DDPM++ on scikit-learn's handwritten digits at 16x16 (1,797 images, no download), sized for a GPU.

On a CPU its 20,000 steps take hours (README, "Speed"); configs/digits/small.py trains 8x8 digits in minutes.

Choose the SDE after a colon: configs/digits/ddpmpp.py:vesde (default vpsde); VE switches to the reference's
VE choices (score output, Fourier features of sigma, scale_by_sigma).
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))


def get_config(sde: str = "vpsde"):
    config = _default["get_config"]()
    data = config.data
    data.dataset = "digits"
    data.image_size = 16
    data.num_channels = 1
    data.centered = True

    training = config.training
    training.reduce_mean = True
    training.batch_size = 64
    training.n_jitted_steps = 1  # on CPU a lax.scan of convolution gradients runs ~35x slower (README)
    training.n_iters = 20_000
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq = 5_000
    training.snapshot_freq_for_preemption = 500
    training.keep_checkpoints = 4

    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"

    config.eval.batch_size = 64
    config.eval.num_samples = 500
    config.eval.enable_sampling = True
    config.eval.enable_bpd = True

    model = config.model
    del model.width, model.depth
    model.name = "ddpmpp"
    model.ema_rate = 0.999
    model.sigma_max = 20.0  # about the largest distance between two digits in [-1, 1] (Song & Ermon 2020)
    model.num_scales = 500
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (8,)
    model.dropout = 0.1
    model.fir = False
    model.resblock_type = "biggan"
    model.skip_rescale = True
    model.init_scale = 0.0

    config.optim.lr = 5e-4
    config.optim.warmup = 500
    return _default["with_sde"](config, sde)
