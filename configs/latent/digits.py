"""configs/digits/small.py's DDPM++ in the latent space of configs/latent/autoencoder.py: single 8x8 digits
encoded to 4x4x4 latents by the autoencoder of two-digit canvases (fully convolutional, it encodes both).

    scoresde train --config=configs/latent/autoencoder.py --workdir=runs/latent/autoencoder
    scoresde train --config=configs/latent/digits.py --workdir=runs/latent/digits
    scoresde sample --workdir=runs/latent/digits        # decoded 8x8 digits, .npz and PNG as a pixel run's

The autoencoder run is `model.autoencoder_workdir` (default runs/latent/autoencoder;
`--config.model.autoencoder_workdir=RUN` names another). The network is small.py's (two levels, now 4x4 and
2x2, one residual block each, no attention), trained on the scaled posterior means of the digits for the same
2,000 steps; README, "Latent diffusion", compares the two.
"""

import pathlib
import runpy

_small = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "digits" / "small.py"))


def get_config(sde: str = "vpsde"):
    config = _small["get_config"](sde)
    config.model.autoencoder_workdir = "runs/latent/autoencoder"
    return config
