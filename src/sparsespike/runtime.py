"""Process-level settings that make CPU training fast.

**Allocator.** glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB,
adaptive) with fresh ``mmap`` pages and returns them to the kernel on ``free``. A spiking network
allocates many large time-major temporaries per batch (an F-MNIST batch's input raster
``[100, 256, 784]`` float32 is 80 MB), so every batch pays the page faults again:
``torch.zeros(100, 256, 784)`` takes 43 ms this way and 5.3 ms once the memory is kept
(measured on the 2-core CI machine, 1 thread). :func:`tune_allocator` raises both thresholds
(``mallopt``) so that freed memory stays in the heap for the next batch -- the effect jemalloc or
tcmalloc would have, without a dependency. The process's resident size no longer shrinks after
a peak, and its peak can grow: a freed block stays in the heap, and a new one of the same size
does not always fit the hole it left (torch aligns its buffers), so a benchmark's RSS peak
(``bench/memory.py``) may read up to one such block higher than without the tuning; the torch
allocator's own statistics, which the sparse-backward benchmark uses, are not affected. Applied
by every ``sparsespike`` command, the timing benchmarks and the training entry points
(``Trainer``, ``train_eventprop``, ``train_yin``); opt out with ``SPARSESPIKE_TUNE_MALLOC=0``
(or ``false``/``no``/``off``). A no-op off glibc.

**OpenMP spinning.** torch runs its CPU operators on libgomp's thread pool, whose idle workers
spin for ``GOMP_SPINCOUNT`` iterations (300,000 by default, a few milliseconds) before they sleep.
Our numba kernels run on numba's own pool (the ``workqueue`` layer, see ``__init__``), so for a
few milliseconds after every torch operator torch's spinning workers take the cores our kernel
threads need. Measured on the 2-core CI machine, 2 threads, one epoch of 100 batches of the
F-MNIST sparse-backward recipe (``experiments/fmnist_pn_sparse.yaml``): 2.73-2.79 s with the
default spin against 2.51-2.57 s on *one* thread, i.e. the second core made training slower;
with ``GOMP_SPINCOUNT`` 1,000 / 10,000 / 100,000: 2.08-2.33 / 2.15-2.38 / 2.65-2.80 s;
with ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) 2.21-2.46 s, but passive workers make chains of
small torch operators slow: SpikingJelly's layer backward took 80-82 ms against 31-32 ms, a
plain autograd time loop 156-200 ms against 99-112 ms. At 10,000 those stay at 31-34 and
73-118 ms, and the dense F-MNIST recipe trains 12 % faster (5.6-5.7 s against 6.4-6.7 s per
epoch). :func:`tune_openmp` therefore sets ``GOMP_SPINCOUNT=10000``: it runs when
``sparsespike`` is imported, and acts only if torch (which loads libgomp, which reads the
variable once) is not imported yet and the user has set neither ``GOMP_SPINCOUNT`` nor
``OMP_WAIT_POLICY``. ``import sparsespike`` before ``torch`` (every ``sparsespike`` command does)
to get it; opt out with ``SPARSESPIKE_TUNE_OMP=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


_INT_MAX = (1 << 31) - 1  # mallopt takes a C int: 1 << 31 would wrap to a negative value
OMP_SPINCOUNT = 10_000  # see the module doc: short gaps between torch ops stay hot, long ones free the cores


def _disabled(var: str) -> bool:
    return os.environ.get(var, "1").strip().lower() in ("0", "false", "no", "off")


def tune_openmp(spincount: int = OMP_SPINCOUNT) -> bool:
    """Set ``GOMP_SPINCOUNT`` for torch's OpenMP pool (see module doc). Returns whether it did:
    not if torch is already imported (libgomp has read its environment), not if the user set
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``, not with ``SPARSESPIKE_TUNE_OMP=0``."""
    if _disabled("SPARSESPIKE_TUNE_OMP") or "torch" in sys.modules:
        return False
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(int(spincount))
    return True


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = _INT_MAX) -> bool:
    """Keep freed large blocks in glibc's heap (see module doc). Returns whether it applied.

    Idempotent; ``SPARSESPIKE_TUNE_MALLOC=0`` disables it. ``mmap_threshold`` is capped by
    glibc at 32 MiB on 64-bit unless given explicitly, hence the explicit call.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if _disabled("SPARSESPIKE_TUNE_MALLOC"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    if not (0 < int(mmap_threshold) <= _INT_MAX and 0 < int(trim_threshold) <= _INT_MAX):
        raise ValueError(
            f"tune_allocator: thresholds must lie in (0, 2**31 - 1], got {mmap_threshold}, {trim_threshold}"
        )
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
