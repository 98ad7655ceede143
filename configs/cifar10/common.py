"""Settings shared by the CIFAR-10 configs of Song et al. 2021 (the reference's default_cifar10_configs.py).

Not a config by itself. The data is your own CIFAR-10: --config.data.path=cifar10_train.npz (an array "x" or
"images" of uint8 [N, 32, 32, 3]), or --config.data.dataset=image_folder --config.data.path=DIR.
"""

import pathlib
import runpy

import ml_collections

_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))


def cifar10_config(sde: str, name: str) -> ml_collections.ConfigDict:
    """CIFAR-10 data, the paper's optimisation (lr 2e-4, warmup 5000, clip 1, batch 128), `name`'s widths."""
    config = _default["with_sde"](_default["get_config"](), sde)
    data = config.data
    data.dataset = "npz"
    data.image_size = 32
    data.num_channels = 3
    data.test_fraction = 0.0

    config.eval.batch_size = 128
    config.eval.num_samples = 10_000

    model = config.model
    del model.width, model.depth
    model.name = name
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resamp_with_conv = True
    model.conditional = True
    return config


def ncsnpp_options(config: ml_collections.ConfigDict, *, num_res_blocks: int) -> ml_collections.ConfigDict:
    """The NCSN++ / DDPM++ options of all the reference's continuous configs (Song et al. 2021, App. H.1)."""
    model = config.model
    model.num_res_blocks = num_res_blocks
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_combine = "sum"
    model.init_scale = 0.0
    model.fourier_scale = 16.0
    return config
