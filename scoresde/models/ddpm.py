"""The DDPM U-Net of Ho, Jain, Abbeel 2020 ("Denoising Diffusion Probabilistic Models", appendix B).

It is the NCSN++ / DDPM++ network with DDPM's choices, so it reuses `NCSNpp` instead of repeating it:
DDPM residual blocks with separate (conv) resampling layers, no FIR, no pyramids, no skip rescaling,
zero-initialised output layers and a sinusoidal embedding of the timestep label (999 t for VP).
"""

from typing import Sequence

from scoresde.models.ncsnpp import NCSNpp


class DDPM(NCSNpp):
    """DDPM U-Net (Ho et al. 2020, appendix B); the defaults are its CIFAR-10 model (35,218,947 parameters).

    Only the first eight fields below are DDPM's own options; the rest fix NCSN++'s switches to DDPM's
    architecture, and changing them turns the network into an NCSN++ variant. GroupNorm uses
    min(C // 4, 32) groups, which is DDPM's 32 for every layer once nf >= 128.

    Class-conditional with `num_classes` > 0, as NCSN++ (the class embedding added to the timestep embedding).

    Call: x: [B, H, W, C] as given, noise_label: [B], cond: [B] int labels or None -> [B, H, W, C].
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    scale_by_sigma: bool = False
    fir: bool = False
    skip_rescale: bool = False
    resblock_type: str = "ddpm"
    progressive: str = "none"
    progressive_input: str = "none"
    embedding_type: str = "positional"
    init_scale: float = 0.0
