"""MLP on eight Gaussians on a circle. Pick the SDE after a colon, e.g. configs/toy/mixture.py:vesde."""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(sde: str = "vpsde"):
    return _base["toy_config"]("eight_gaussians", sde)
