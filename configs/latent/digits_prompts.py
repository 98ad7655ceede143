"""configs/digits/prompts.py's prompt-conditioned DDPM++ in the latent space of configs/latent/autoencoder.py
(the 8x16 digit-pair canvases to 4x8x4 latents), with cross-attention at the latent heights 4 and 2.

    scoresde train --config=configs/latent/autoencoder.py --workdir=runs/latent/autoencoder
    scoresde train --config=configs/latent/digits_prompts.py --workdir=runs/latent/prompts
    scoresde sample --workdir=runs/latent/prompts --prompt="a 3 on the left and a seven on the right" \\
        --guidance_scale=2 --sampler=dpm_solver_pp --num_steps=20     # decoded 8x16 canvases

The autoencoder run is `model.autoencoder_workdir` (default runs/latent/autoencoder); it must have been
trained on canvases of the same height and channels. Everything else, steps included, is the pixel config's, so README,
"Prompts", compares the two at equal steps and equal NFE.
"""

import pathlib
import runpy

_prompts = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "digits" / "prompts.py"))


def get_config(sde: str = "vpsde"):
    config = _prompts["get_config"](sde)
    config.model.autoencoder_workdir = "runs/latent/autoencoder"
    config.model.cross_attn_resolutions = (4, 2)
    return config
