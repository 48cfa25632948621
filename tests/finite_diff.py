"""Central finite differences for the gradient tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def central_differences(f: Callable[[np.ndarray], float], a: np.ndarray, h: float) -> np.ndarray:
    """``(f(a + h e_i) - f(a - h e_i)) / 2h`` for every entry ``i`` of ``a`` (``a`` is not changed)."""
    out = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        ap, am = a.copy(), a.copy()
        ap[idx] += h
        am[idx] -= h
        out[idx] = (f(ap) - f(am)) / (2 * h)
    return out
