"""A prompt-conditioned DDPM++ on canvases of two 8x8 digits side by side (8x16, `data.dataset="digit_pairs"`):
`scoresde sample --workdir=RUN --prompt="a 3 on the left and a seven on the right" --guidance_scale=W`.

The network is the fast 8x8 digits one (two levels, one residual block each, no self-attention) with a small
Transformer text encoder (two blocks, width 64, four heads) trained with it, whose token features enter
through cross-attention after every residual block and in the middle (heights 8 and 4); 10% of the training
prompts are dropped to the empty prompt, the unconditional score that guidance contrasts with.
`--config.model.prompt_conditioning=pooled` is the baseline without cross-attention: the mean of the token
features added to the noise embedding. README, "Prompts", has the prompt-following figures and the training
cost on 2 CPU cores.

It sits beside configs/digits/conditional.py, whose class-conditional network it extends; its latent-space
counterpart is configs/latent/digits_prompts.py.
"""

import pathlib
import runpy

_conditional = runpy.run_path(str(pathlib.Path(__file__).parent / "conditional.py"))


def get_config(sde: str = "vpsde"):
    config = _conditional["get_config"](sde)
    data = config.data
    data.dataset = "digit_pairs"
    data.num_train = 20_000
    data.num_test = 1_000

    training = config.training
    training.n_iters = 3_000
    training.snapshot_freq = 1_000
    training.snapshot_freq_for_preemption = 500
    training.keep_checkpoints = 3  # steps 1,000, 2,000 and 3,000: when prompt following is reached

    model = config.model
    model.num_classes = 0
    model.prompt_conditioning = "cross_attention"
    model.cross_attn_resolutions = (8, 4)
    model.text_width = 64
    model.text_depth = 2
    model.text_heads = 4
    return config
