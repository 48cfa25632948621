"""Event-driven synaptic input: ``X = S W^T`` for sparse binary spike inputs ``S``.

A spiking layer's input is mostly zeros (1-2 % of entries are spikes in the papers' networks),
so instead of a dense matmul we visit only the spikes: each spike ``S[r, i] = 1`` adds column
``W[:, i]`` to row ``r`` of the output -- one accumulate per synapse it drives, which is exactly
the SynOps count of DESIGN.md. The forward stores the spikes in compressed sparse row form (row
pointers + column indices), so the memory kept for backward also falls with activity.

Backward: ``dL/dW = (dL/dX)^T S`` walks the same stored spikes (work = nnz x N_out);
``dL/dS = (dL/dX) W`` is a dense matmul (the layer below needs it wherever its own surrogate is
non-zero; the sparse backward of :mod:`sparsespike.kernels.sparse` restricts it further).
If the input is not binary or not sparse (density above ``max_density``), the dense matmul is used.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange

from .cpu import PARALLEL_MIN_WORK, Kernel


def _py_row_counts(x, counts, nonbinary):
    """Non-zeros per row, and per row whether any entry is neither 0 nor 1."""
    R, K = x.shape
    for r in prange(R):
        c = 0
        bad = 0
        for i in range(K):
            xv = x[r, i]
            c += xv != 0.0
            bad += (xv != 0.0) & (xv != 1.0)
        counts[r] = c
        nonbinary[r] = bad


def _py_fill_csr(x, indptr, indices):
    R, K = x.shape
    for r in prange(R):
        p = indptr[r]
        for i in range(K):
            if x[r, i] != 0.0:
                indices[p] = i
                p += 1


def _py_csr_matmul(indptr, indices, wt, out):
    """``out[r, :] = sum_{i in row r} wt[i, :]`` (binary spikes)."""
    R = out.shape[0]
    N = out.shape[1]
    for r in prange(R):
        for j in range(N):
            out[r, j] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            i = indices[p]
            for j in range(N):
                out[r, j] += wt[i, j]


def _py_csr_weight_grad(indptr, indices, g, gwt, nsplit):
    """``gwt[i, :] = sum_{r: i in row r} g[r, :]``; threads split the output columns (no races).

    Rows are taken as contiguous slices so the inner loop vectorises (7x faster than indexing
    ``gwt[i, j]`` with run-time column bounds, measured on a [6400, 700] x 256 problem).
    """
    R = g.shape[0]
    N = g.shape[1]
    for c in prange(nsplit):
        lo = c * N // nsplit
        hi = (c + 1) * N // nsplit
        gwt[:, lo:hi] = 0.0
        for r in range(R):
            gr = g[r, lo:hi]
            for p in range(indptr[r], indptr[r + 1]):
                row = gwt[indices[p], lo:hi]
                for j in range(hi - lo):
                    row[j] += gr[j]


def _py_active_rows_grad(ptr, idx, F, g, wt, out):
    """``out[p] = sum_c g[t*B + b, c] * wt[i, c]`` for the compact entries ``p`` (``idx = t*F + i``)."""
    B = ptr.shape[0] - 1
    C = g.shape[1]
    for b in prange(B):
        t = 0
        tF = 0
        for p in range(ptr[b], ptr[b + 1]):
            f = idx[p]
            while f >= tF + F:
                t += 1
                tF += F
            r = t * B + b
            i = f - tF
            acc = 0.0
            for c in range(C):
                acc += g[r, c] * wt[i, c]
            out[p] = acc


def to_csr(x: np.ndarray, max_density: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Row pointers and column indices of the non-zeros of a binary 2-D array.

    Returns ``None`` (after one counting pass) when ``x`` is not binary or is denser than
    ``max_density``: then a dense matmul is the better choice.
    """
    counts = np.empty(x.shape[0], dtype=np.int64)
    nonbinary = np.empty(x.shape[0], dtype=np.int64)
    work = x.size
    _row_counts.select(work)(x, counts, nonbinary)
    indptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if nonbinary.any() or indptr[-1] > max_density * max(1, x.size):
        return None
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    _fill_csr.select(work)(x, indptr, indices)
    return indptr, indices


class EventLinear(torch.autograd.Function):
    """``X = S W^T`` over binary ``S[R, K]`` with a CSR event list (forward and weight grad)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, w: torch.Tensor, csr=None):  # type: ignore[override]
        if csr is None:
            csr = to_csr(s.detach().contiguous().numpy())
            if csr is None:
                raise ValueError("EventLinear needs a binary spike input (entries 0 or 1)")
        indptr, indices = csr
        wt = w.detach().t().contiguous()
        out = torch.empty(s.shape[0], w.shape[0], dtype=w.dtype)
        work = len(indices) * w.shape[0] + out.numel()
        _csr_matmul.select(work)(indptr, indices, wt.numpy(), out.numpy())
        ctx.csr = (indptr, indices)
        ctx.k = s.shape[1]
        ctx.save_for_backward(w)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        indptr, indices = ctx.csr
        gs = gw = None
        g = g.contiguous()
        if ctx.needs_input_grad[0]:
            gs = g @ w
        if ctx.needs_input_grad[1]:
            gw = _event_weight_grad(indptr, indices, ctx.k, g, w)
        return gs, gw, None


def _event_weight_grad(indptr, indices, k: int, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(dL/dX)^T S`` walking the stored spikes (``[N_out, K]``)."""
    gwt = torch.empty(k, w.shape[0], dtype=g.dtype)
    nsplit = max(1, min(torch.get_num_threads(), w.shape[0] // 16))
    kern = _csr_weight_grad.select(len(indices) * w.shape[0])
    kern(indptr, indices, g.numpy(), gwt.numpy(), nsplit if kern is _csr_weight_grad.parallel else 1)
    return gwt.t()


class EventLinearActive(torch.autograd.Function):
    """:class:`EventLinear` on time-major spikes ``S[T, B, K]`` of a sparse layer, whose input
    gradient is needed only at that layer's active entries (Perez-Nieves & Goodman eq. 12: the
    surrogate is 0 elsewhere). The backward computes ``dL/dS = (dL/dX) W`` at those entries only
    (``n_active x N_out`` MACs instead of ``T B K N_out``) and returns it as a sparse COO tensor
    on the active set's cached indices, which the sparse layer's backward reads without a copy.
    Used by the readout (and any event-driven linear) behind a ``backward="sparse"`` layer.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, w: torch.Tensor, csr, active):  # type: ignore[override]
        out = EventLinear.forward(ctx, s.reshape(-1, s.shape[-1]), w, csr)
        ctx.active = active
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        g = g.contiguous()
        gs = gw = None
        if ctx.needs_input_grad[0]:
            act = ctx.active
            vals = torch.empty(act.n, dtype=g.dtype)
            if act.n:
                wt = w.detach().t().contiguous()
                kern = _active_rows_grad.select(act.n * w.shape[0])
                kern(act.ptr.numpy(), act.idx.numpy(), act.F, g.numpy(), wt.numpy(), vals.numpy())
            gs = act.sparse_tensor(vals)
        if ctx.needs_input_grad[1]:
            indptr, indices = ctx.csr
            gw = _event_weight_grad(indptr, indices, ctx.k, g, w)
        return gs, gw, None, None


def _csr_from_spike_list(s: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """CSR of ``s[T, B, K]`` (rows ``t*B + b``) from the binary spike list a sparse layer or an
    encoder attached to it (:mod:`sparsespike.kernels.sparse`), in ``O(nnz + T*B)``; ``None``
    when there is none (then :func:`to_csr` scans the raster)."""
    if s.dim() != 3 or s.device.type != "cpu":
        return None
    from .sparse import get_meta  # lazy: sparse imports this module's neighbours
    from .sparse_cpu import list_to_time_major_csr

    m = get_meta(s)
    lst = None if m is None else m.spike_list()
    if lst is None or lst.vals is not None or tuple(lst.shape) != tuple(s.shape):
        return None
    T, B, _ = lst.shape
    indptr = np.empty(T * B + 1, dtype=np.int64)
    indices = np.empty(lst.n, dtype=np.int32)
    list_to_time_major_csr(lst.ptr.numpy(), lst.idx.numpy(), lst.F, T, indptr, indices)
    return indptr, indices


def _active_set_of(s: torch.Tensor):
    """The active set a ``backward="sparse"`` layer attached to ``s`` (if ``s`` needs a gradient)."""
    if not s.requires_grad or s.dim() != 3:
        return None
    from .sparse import active_set  # lazy: sparse imports this module's neighbours

    return active_set(s)


def synaptic_linear(
    s: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    event_driven: bool | None = None,
    max_density: float = 0.15,
) -> torch.Tensor:
    """Synaptic input ``s @ w.T + bias`` for time-major spikes ``s[T, B, K]`` in one call.

    ``event_driven=None`` picks the event path on CPU when ``s`` is binary and its density is
    below ``max_density``; ``True``/``False`` force it.
    """
    lead = s.shape[:-1]
    s2 = s.reshape(-1, s.shape[-1])
    cpu_ok = s2.device.type == "cpu" and s2.dtype == w.dtype and s2.dtype in (torch.float32, torch.float64)
    csr = None
    events_ok = cpu_ok and event_driven is not False
    act = _active_set_of(s) if events_ok else None
    # the CSR from the spike list the input carries (O(nnz + T*B)), only when a path below uses it
    listed = _csr_from_spike_list(s) if events_ok and (act is not None or event_driven or w.shape[0] >= 8) else None

    def events(max_d: float = 1.0):
        """CSR of ``s`` (from its spike list, else by a scan); ``None``: not binary or denser than ``max_d``."""
        if listed is not None:
            return listed if len(listed[1]) <= max_d * max(1, s2.numel()) else None
        return to_csr(s2.detach().contiguous().numpy(), max_d)

    if act is not None:  # behind a sparse layer: the compact input gradient pays at any size
        csr = events()
        if csr is None:
            act = None
    if csr is None and event_driven is None and cpu_ok and w.shape[0] >= 8:
        csr = events(max_density)
    elif event_driven and csr is None:
        if not cpu_ok:
            raise ValueError("event-driven synaptic input needs float32/float64 CPU tensors of the weight's dtype")
        csr = events()
        if csr is None:
            raise ValueError("event_driven=True needs a binary spike input (entries 0 or 1)")
    if csr is not None:
        out = EventLinearActive.apply(s, w, csr, act) if act is not None else EventLinear.apply(s2, w, csr)
        if bias is not None:
            out = out + bias
    else:
        out = torch.nn.functional.linear(s2, w, bias)
    return out.reshape(*lead, w.shape[0])


# serial and parallel builds of each kernel (cpu.Kernel): small problems, and any problem with
# one numba thread (these loops vectorise serially too: 0.6-0.9x the parallel build's time on one
# thread, measured on [12800, 200] spikes), run serially
_row_counts = Kernel(_py_row_counts, min_work=PARALLEL_MIN_WORK, fastmath=True)
_fill_csr = Kernel(_py_fill_csr, min_work=PARALLEL_MIN_WORK, fastmath=True)
_csr_matmul = Kernel(_py_csr_matmul, min_work=PARALLEL_MIN_WORK, fastmath=True)
_csr_weight_grad = Kernel(_py_csr_weight_grad, min_work=PARALLEL_MIN_WORK, fastmath=True)
_active_rows_grad = Kernel(_py_active_rows_grad, min_work=PARALLEL_MIN_WORK, fastmath=True)
