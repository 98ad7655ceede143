"""MLP on the 2-D swiss roll set. Pick the SDE after a colon, e.g. configs/toy/swiss_roll.py:vesde."""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(sde: str = "vpsde"):
    return _base["toy_config"]("swiss_roll", sde)
