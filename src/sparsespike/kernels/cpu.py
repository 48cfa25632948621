"""Numba CPU kernels for the LIF recurrence over time (forward, dense backward).

Layout: every tensor is time-major and flattened to ``[T, M]`` (``M`` = batch x neurons),
C-contiguous. Work is split into chunks of ``CHUNK`` neurons, processed in parallel
(``prange``); inside a chunk the time loop is outermost, so each step reads a contiguous slice.
Equations: :mod:`sparsespike.neurons` (forward) and the adjoint recurrence documented in
:mod:`sparsespike.kernels.recurrence` (backward).

Why numba: it JIT-compiles plain Python loops to vectorised machine code with multithreading,
caches the result on disk (``cache=True``: ~1 s to load, no 40 s C++ build), needs no compiler on
the user's machine and reads like the maths. The recurrence is memory-bound and element-wise, so
a fused single pass over ``[T, M]`` is what matters, and numba gives exactly that.
"""

from __future__ import annotations

import functools
import types

import numba
import numpy as np
from numba import njit, prange

CHUNK = 512
PARALLEL_MIN_WORK = 400_000


def compile_pair(fn, **flags):
    """``(parallel, serial)`` numba builds of the Python function ``fn`` (``prange`` is ``range``
    in the serial one), both cached on disk.

    The serial build is made from a copy of ``fn`` under another qualified name: numba's cache
    key holds the signature and bytecode but not the ``parallel`` flag, so two builds of one
    function share a cache entry and a later process would load whichever was compiled first for
    both (observed with numba 0.68: one ``.nbc`` file for the pair).
    """
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "__serial"
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return njit(parallel=True, cache=True, **flags)(fn), njit(parallel=False, cache=True, **flags)(twin)


def single_thread() -> bool:
    """Whether numba runs one thread: a parallel region then only adds a hand-off to the worker
    pool (~90 us per call with the workqueue layer, measured on the 2-core CI machine)."""
    return numba.get_num_threads() == 1


class Kernel:
    """A numba kernel in two builds, parallel and serial (:func:`compile_pair`), and the rule that
    picks one per call (:meth:`select`; calling the object selects and runs):

    * ``work < min_work`` (elements touched, when the caller gives it): serial -- a thread
      barrier costs more than the work on a [30, 4000] array, worst on a busy machine;
    * numba has one thread and ``serial_on_one_thread``: serial -- a parallel region then only
      adds a hand-off to the worker pool, ~90 us per call with the workqueue layer on the 2-core
      CI machine (5x the work of compacting a [128, 900] buffer; a sparse training step or an
      EventProp batch makes ~20 such calls);
    * else parallel.

    ``serial_on_one_thread=False`` is for kernels whose serial build does not vectorise (the
    dense LIF forward: 7.3 against 2.4 ms on [100, 25600], measured). The object cannot be
    called from numba code.
    """

    def __init__(self, fn, *, min_work: int = 0, serial_on_one_thread: bool = True, **flags) -> None:
        self.parallel, self.serial = compile_pair(fn, **flags)
        self.min_work = int(min_work)
        self.serial_on_one_thread = serial_on_one_thread
        functools.update_wrapper(self, fn)

    def select(self, work: int | None = None):
        """The build to run for a call touching ``work`` elements (``None``: unknown)."""
        if work is not None and work < self.min_work:
            return self.serial
        if self.serial_on_one_thread and single_thread():
            return self.serial
        return self.parallel

    def __call__(self, *args):
        return self.select()(*args)


def parallel_kernel(fn=None, **options):
    """Decorator form of :class:`Kernel` (``@parallel_kernel`` or ``@parallel_kernel(min_work=...)``)."""
    return Kernel(fn, **options) if fn is not None else (lambda f: Kernel(f, **options))


@njit(inline="always")
def surrogate_grad(x, code, p0, p1):
    """Same functions as :mod:`sparsespike.surrogate` (0 fast sigmoid, 1 triangle, 2 rectangle)."""
    ax = abs(x)
    if code == 0:
        d = p0 * ax + 1.0
        return 1.0 / (d * d)
    elif code == 1:
        return p1 * max(1.0 - ax / p0, 0.0)
    else:
        return p1 * (ax < 0.5 * p0)


def _py_lif_forward(
    x, beta, alpha, thr, reset_zero, detach, code, p0, p1, b_th, masked, s_out, sg_out, r_out, m_out, write_m
):
    """Forward over ``x[T, M]``; writes spikes, surrogate values and (non-detached) reset factors.

    Returns the number of active entries ``|V - thr| < b_th`` (Perez-Nieves eq. 7), for activity %,
    and the number of NaN membrane values (bad input or diverged weights).
    ``alpha < 0`` means no synaptic current. ``r_out`` is written only when ``detach`` is False.
    ``masked``: the surrogate is zero outside the window, ``g = g(d) if |d| < b_th else 0``
    (Perez-Nieves Def. 2 / eq. 8, the sparse backward's surrogate at dense cost); that ``g`` is
    also the one in a non-detached reset. ``m_out`` (uint8 ``[T, M]``) gets the active mask when
    ``write_m`` (pass any uint8 array otherwise).
    The inner loop is branch-free (resets written arithmetically) so that it vectorises.
    """
    T, M = x.shape
    nchunk = (M + CHUNK - 1) // CHUNK
    counts = np.zeros(nchunk, dtype=np.int64)
    nans = np.zeros(nchunk, dtype=np.int64)
    a = alpha if alpha >= 0.0 else 0.0
    z = 1.0 if reset_zero else 0.0
    for c in prange(nchunk):
        lo = c * CHUNK
        hi = min(M, lo + CHUNK)
        n = hi - lo
        nn = 0
        u = np.zeros(n, dtype=np.float64)
        cur = np.zeros(n, dtype=np.float64)
        vbuf = np.zeros(n, dtype=np.float64)
        cnt = 0
        for t in range(T):
            xt = x[t, lo:hi]
            st = s_out[t, lo:hi]
            gt = sg_out[t, lo:hi]
            for k in range(n):
                cur[k] = a * cur[k] + xt[k]
                v = beta * u[k] + cur[k]
                d = v - thr
                s = 1.0 if d > 0.0 else 0.0
                g = surrogate_grad(d, code, p0, p1)
                act = abs(d) < b_th
                if masked and not act:
                    g = 0.0
                st[k] = s
                gt[k] = g
                cnt += act
                nn += v != v
                u[k] = v - s * (z * v + (1.0 - z) * thr)
                vbuf[k] = v
            if write_m:
                mt = m_out[t, lo:hi]
                for k in range(n):
                    mt[k] = abs(vbuf[k] - thr) < b_th
            if not detach:
                # dU/dV with the reset differentiated: zero (1-S) - V g, subtract 1 - thr g
                rt = r_out[t, lo:hi]
                for k in range(n):
                    s = st[k]
                    g = gt[k]
                    rt[k] = z * ((1.0 - s) - vbuf[k] * g) + (1.0 - z) * (1.0 - thr * g)
        counts[c] = cnt
        nans[c] = nn
    return counts.sum(), nans.sum()


def _py_lif_backward_dense(gs, sg, s, r, beta, alpha, reset_zero, detach, gx):
    """Adjoint recurrence, backwards in time (see :mod:`sparsespike.kernels.recurrence`).

    ``gv[t] = gs[t]*sg[t] + beta*r[t]*gv[t+1]``, ``gi[t] = gv[t] + alpha*gi[t+1]``, ``gx = gi``,
    with ``r = 1`` (subtract, detached), ``1 - s`` (zero, detached) or the stored ``r`` otherwise.
    """
    T, M = gs.shape
    nchunk = (M + CHUNK - 1) // CHUNK
    a = alpha if alpha >= 0.0 else 0.0
    z = 1.0 if reset_zero else 0.0
    for c in prange(nchunk):
        lo = c * CHUNK
        hi = min(M, lo + CHUNK)
        n = hi - lo
        gu = np.zeros(n, dtype=np.float64)  # dL/dU[t] = beta * dL/dV[t+1]
        gi = np.zeros(n, dtype=np.float64)  # dL/dI_s[t+1]
        for t in range(T - 1, -1, -1):
            gst = gs[t, lo:hi]
            sgt = sg[t, lo:hi]
            gxt = gx[t, lo:hi]
            if detach:
                st = s[t, lo:hi]
                for k in range(n):
                    gv = gst[k] * sgt[k] + gu[k] * (1.0 - z * st[k])
                    gu[k] = beta * gv
                    gi[k] = gv + a * gi[k]
                    gxt[k] = gi[k]
            else:
                rt = r[t, lo:hi]
                for k in range(n):
                    gv = gst[k] * sgt[k] + gu[k] * rt[k]
                    gu[k] = beta * gv
                    gi[k] = gv + a * gi[k]
                    gxt[k] = gi[k]


# the dense LIF kernels, serial below PARALLEL_MIN_WORK. Above it the forward runs its parallel
# build even on one thread (its serial build does not vectorise); the backward's serial build is
# as fast (2.1 against 2.2 ms on [100, 25600], one thread) and is used on one thread
lif_forward = Kernel(_py_lif_forward, min_work=PARALLEL_MIN_WORK, serial_on_one_thread=False, fastmath=False)
lif_backward_dense = Kernel(_py_lif_backward_dense, min_work=PARALLEL_MIN_WORK, fastmath=False)


@njit(cache=True, fastmath=False)
def leaky_scan(x, beta, reverse, out):
    """``out[t] = beta * out[t -/+ 1] + x[t]`` over the rows of ``x[T, M]`` (forwards, or
    backwards in time when ``reverse``): the readout's leaky integration and its adjoint, one pass
    instead of ``2T`` small torch ops. Same operation order as the torch loop (bit-identical)."""
    T, M = x.shape
    acc = np.zeros(M, dtype=x.dtype)
    b = x.dtype.type(beta)
    for k in range(T):
        t = T - 1 - k if reverse else k
        for m in range(M):
            acc[m] = acc[m] * b + x[t, m]
            out[t, m] = acc[m]
