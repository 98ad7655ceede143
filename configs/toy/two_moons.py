"""MLP on two noisy half circles. Pick the SDE after a colon, e.g. configs/toy/two_moons.py:vesde."""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(sde: str = "vpsde"):
    return _base["toy_config"]("two_moons", sde)
