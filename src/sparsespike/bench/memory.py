"""Peak-memory measurement shared by the benchmarks (times are taken by each benchmark,
interleaving the methods it compares).

Memory on CPU: the peak
resident set size above the level before the measured call, sampled every 0.5 ms from
``/proc/self/statm`` by a background thread after returning freed heap to the OS
(``malloc_trim``). Without the allocator tuning (``runtime.tune_allocator``), large tensors are
``mmap``-ed by glibc and unmapped on free, so the sampled RSS follows live tensor memory closely;
with it (every benchmark applies it, for the timings), freed blocks stay in the heap and a peak
can read up to one such block higher (measured on the peers network: within the noise). For an
exact CPU peak of torch tensors use the allocator's events, as ``benchmarks/sparse_backward.py``
does. CUDA: ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak extra memory (bytes) while ``fn()`` runs."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    _trim()
    base = rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    peak[0] = max(peak[0], rss_bytes())
    return max(0, peak[0] - base)
