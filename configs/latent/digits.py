"""configs/digits/small.py's DDPM++ in the latent space of configs/latent/autoencoder.py: single 8x8 digits
encoded to 4x4x4 latents by the autoencoder of two-digit canvases (fully convolutional, it encodes both).

    scoresde train --config=configs/latent/autoencoder.py --workdir=runs/latent/autoencoder
    scoresde train --config=configs/latent/digits.py --workdir=runs/latent/digits
    scoresde sample --workdir=runs/latent/digits        # decoded 8x8 digits, .npz and PNG as a pixel run's

The autoencoder run is `model.autoencoder_workdir` (default runs/latent/autoencoder;
`--config.model.autoencoder_workdir=RUN` names another). The network is small.py's DDPM++ with its lower
level alone: 4x4 with 64 channels, one residual block, no attention, no 2x2 level (XLA:CPU convolves 2x2 maps
more slowly than 4x4 ones; README, "Latent diffusion"), trained on the scaled posterior means of the digits for
the same 2,000 steps; README compares the two.
"""

import pathlib
import runpy

_small = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "digits" / "small.py"))


def get_config(sde: str = "vpsde"):
    config = _small["get_config"](sde)
    config.model.autoencoder_workdir = "runs/latent/autoencoder"
    config.model.ch_mult = (2,)
    return config
