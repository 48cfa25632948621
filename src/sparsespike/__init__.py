"""sparsespike: sparse, energy-efficient spiking neural networks on PyTorch."""

import os as _os
import sys as _sys

# numba's "omp" threading layer shares libgomp with torch: starting its pool resets torch's thread
# count and leaves two spinning OpenMP pools on the same cores (measured: 3.5x more CPU per
# training step on a 2-core machine). The "workqueue" layer has neither problem. A user's own
# NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in _os.environ:
    _os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    if "numba" in _sys.modules:  # numba imported first: its config is already read
        _sys.modules["numba"].config.THREADING_LAYER = "workqueue"

from .runtime import tune_openmp as _tune_openmp

_tune_openmp()  # before torch loads libgomp: torch's idle workers spin less (runtime.py)

__version__ = "0.1.0"
