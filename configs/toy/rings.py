"""MLP on four noisy concentric rings. Pick the SDE after a colon, e.g. configs/toy/rings.py:vesde."""

import pathlib
import runpy

_base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config(sde: str = "vpsde"):
    return _base["toy_config"]("rings", sde)
