"""Which cases of a parametrized test belong to the fast subset (`-m "not slow"`).

The fast subset keeps one representative case of every parametrized property; the other cases (other SDEs,
other samplers of the same family) run with the rest of the slow set in the full suite.
"""

from collections.abc import Iterable

import pytest


def fast_first(cases: Iterable) -> list:
    """The cases for `pytest.mark.parametrize`: the first in the fast subset, every other one marked slow.

    A case that is a tuple fills several argument names, as in `parametrize("a, b", [(1, 2), ...])`.
    """
    params = []
    for index, case in enumerate(cases):
        values = case if isinstance(case, tuple) else (case,)
        params.append(pytest.param(*values, marks=() if index == 0 else pytest.mark.slow))
    return params
