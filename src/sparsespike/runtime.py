"""Process-level settings that make CPU training fast.

**Allocator.** glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB,
adaptive) with fresh ``mmap`` pages and returns them to the kernel on ``free``. A spiking network
allocates many large time-major temporaries per batch (an F-MNIST batch's input raster
``[100, 256, 784]`` float32 is 80 MB), so every batch pays the page faults again:
``torch.zeros(100, 256, 784)`` takes 43 ms this way and 5.3 ms once the memory is kept
(measured on the 2-core CI machine, 1 thread). :func:`tune_allocator` raises both thresholds
(``mallopt``) so that freed memory stays in the heap for the next batch -- the effect jemalloc or
tcmalloc would have, without a dependency. Peak memory is unchanged; the process's resident size
no longer shrinks after a peak. Applied by every ``sparsespike`` command, the timing benchmarks
and the training entry points (``Trainer``, ``train_eventprop``, ``train_yin``); opt out with
``SPARSESPIKE_TUNE_MALLOC=0``. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Keep freed large blocks in glibc's heap (see module doc). Returns whether it applied.

    Idempotent; ``SPARSESPIKE_TUNE_MALLOC=0`` disables it. ``mmap_threshold`` is capped by
    glibc at 32 MiB on 64-bit unless given explicitly, hence the explicit call.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("SPARSESPIKE_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    _done = ok
    return ok
