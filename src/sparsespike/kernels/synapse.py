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
from numba import njit, prange

from .cpu import pick


def _py_row_counts(x, counts):
    R, K = x.shape
    for r in prange(R):
        c = 0
        for i in range(K):
            if x[r, i] != 0.0:
                c += 1
        counts[r] = c


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
    """``gwt[i, :] = sum_{r: i in row r} g[r, :]``; threads split the output columns (no races)."""
    R = g.shape[0]
    N = g.shape[1]
    K = gwt.shape[0]
    for c in prange(nsplit):
        lo = c * N // nsplit
        hi = (c + 1) * N // nsplit
        for i in range(K):
            for j in range(lo, hi):
                gwt[i, j] = 0.0
        for r in range(R):
            for p in range(indptr[r], indptr[r + 1]):
                i = indices[p]
                for j in range(lo, hi):
                    gwt[i, j] += g[r, j]


def to_csr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and column indices of the non-zeros of a 2-D array."""
    counts = np.empty(x.shape[0], dtype=np.int64)
    work = x.size
    pick(_row_counts_par, _row_counts_ser, work)(x, counts)
    indptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    pick(_fill_csr_par, _fill_csr_ser, work)(x, indptr, indices)
    return indptr, indices


class EventLinear(torch.autograd.Function):
    """``X = S W^T`` over binary ``S[R, K]`` with a CSR event list (forward and weight grad)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, w: torch.Tensor):  # type: ignore[override]
        s_np = s.detach().contiguous().numpy()
        indptr, indices = to_csr(s_np)
        wt = w.detach().t().contiguous()
        out = torch.empty(s.shape[0], w.shape[0], dtype=w.dtype)
        work = len(indices) * w.shape[0] + out.numel()
        pick(_csr_matmul_par, _csr_matmul_ser, work)(indptr, indices, wt.numpy(), out.numpy())
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
            gwt = torch.empty(ctx.k, w.shape[0], dtype=g.dtype)
            nsplit = max(1, min(torch.get_num_threads(), w.shape[0] // 16))
            work = len(indices) * w.shape[0]
            kern = pick(_csr_weight_grad_par, _csr_weight_grad_ser, work)
            kern(indptr, indices, g.numpy(), gwt.numpy(), nsplit if kern is _csr_weight_grad_par else 1)
            gw = gwt.t()
        return gs, gw


def is_binary(x: torch.Tensor) -> bool:
    """True when every entry of ``x`` is 0 or 1."""
    return bool(((x == 0) | (x == 1)).all())


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
    use = event_driven
    if use is None:
        use = (
            s2.device.type == "cpu"
            and s2.dtype == w.dtype
            and s2.dtype in (torch.float32, torch.float64)
            and w.shape[0] >= 8
            and float((s2 != 0).float().mean()) <= max_density
            and is_binary(s2)
        )
    if use:
        out = EventLinear.apply(s2, w)
        if bias is not None:
            out = out + bias
    else:
        out = torch.nn.functional.linear(s2, w, bias)
    return out.reshape(*lead, w.shape[0])


# serial and parallel compilations of each kernel; small problems run serially
# (a thread barrier costs more than the work on a [30, 4000] array, worst on a busy machine)
_row_counts_par = njit(parallel=True, cache=True, fastmath=True)(_py_row_counts)
_row_counts_ser = njit(parallel=False, cache=True, fastmath=True)(_py_row_counts)
_fill_csr_par = njit(parallel=True, cache=True, fastmath=True)(_py_fill_csr)
_fill_csr_ser = njit(parallel=False, cache=True, fastmath=True)(_py_fill_csr)
_csr_matmul_par = njit(parallel=True, cache=True, fastmath=True)(_py_csr_matmul)
_csr_matmul_ser = njit(parallel=False, cache=True, fastmath=True)(_py_csr_matmul)
_csr_weight_grad_par = njit(parallel=True, cache=True, fastmath=True)(_py_csr_weight_grad)
_csr_weight_grad_ser = njit(parallel=False, cache=True, fastmath=True)(_py_csr_weight_grad)
