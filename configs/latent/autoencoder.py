"""A KL-regularised autoencoder of two-digit canvases (8x16) to 4x8x4 latents, the first stage of the latent
score models.

`scoresde train --config=configs/latent/autoencoder.py --workdir=AE`, then a latent score model names it:
`--config.model.autoencoder_workdir=AE`. Being fully convolutional it encodes single 8x8 digits (4x4x4) as
well as the canvases it was trained on (configs/latent/digits.py). `scoresde eval --workdir=AE` writes its
reconstruction error, the share of reconstructed test digits the digits classifier reads as their label (each
half of a canvas scored on its own) and the latent scale factor (README, "Latent diffusion", has the figures
and the training time).
"""

import pathlib
import runpy

_small = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "digits" / "small.py"))
_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))


def get_config():
    config = _small["get_config"]()  # its 8x8 digits in [-1, 1], batch, steps, EMA and learning rate
    config.data.dataset = "digit_pairs"  # data.num_train / num_test canvases of them, side by side

    training = config.training
    training.objective = "autoencoder"
    training.kl_weight = 1e-4
    training.snapshot_freq = training.n_iters
    training.snapshot_sampling = False
    config.eval.enable_sampling = False
    config.eval.enable_bpd = False
    config.optim.warmup = 100
    config.optim.cosine_decay = True
    return _default["with_network"](config, "autoencoder", out_channels=1, nf=32, ch_mult=(1, 2),
                                    num_res_blocks=1, latent_channels=4)
