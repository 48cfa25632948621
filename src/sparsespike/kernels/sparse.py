"""Sparse spiking gradient descent (S3GD; Perez-Nieves & Goodman, NeurIPS 2021).

The backward pass only visits **active** entries, those with the membrane near the threshold:

.. math::

    |V_j[b,t] - \\vartheta| < B_{th}                                  \\qquad\\text{(eq. 7)}\\\\
    \\frac{dS}{dV} := g(V - \\vartheta) \\text{ if active, else } 0      \\qquad\\text{(eq. 8)}

(``b_th`` here is the half-width ``B_th`` of Def. 1; the paper's code and Fig. 5 use the lower
edge ``1 - B_th`` instead, METHODS.md 1(d).) With ``e[b,k,j] = dL/dS[b,k,j] * dS/dV`` (zero
outside the active set), our neuron (``V[t] = beta*U[t-1] + I[t]``, no one-step delay, reset
detached, subtractive) gives

.. math::

    \\nabla W_{ji} &= \\sum_{(b,k,j)\\,\\text{active}} e[b,k,j]\\,
                      \\sum_{t \\le k} \\beta^{k-t} x_i[b,t]        \\qquad\\text{(eqs. 9-10; } S_i[k]
                      \\text{ for eq. 9's } S_i[t])\\\\
    \\delta_j[b,t] &= e[b,t,j] + \\beta\\,\\delta_j[b,t+1]          \\qquad\\text{(Prop. 1, eq. 11)}\\\\
    \\nabla x_i[b,t] &= \\sum_j W_{ji}\\,\\delta_j[b,t] \\quad\\text{only where } x_i[b,t]
                      \\text{ is active in the previous layer}        \\qquad\\text{(eq. 12)}

Two entry points:

* :func:`sparse_spiking_linear` -- a fused fully-connected spiking layer (synaptic input + LIF
  recurrence) as one autograd Function. Its forward keeps only the active entries (int32 index
  ``t*N + j`` per batch element + the surrogate value) and the input as a spike list (int32
  ``t*K + i``), never the dense membrane, current or input trace. It attaches its own active
  set and spike list to its output, so the next sparse layer needs no scan of the dense spikes
  and returns the input gradient **only at these entries** (as a sparse COO tensor).
* :func:`lif_recurrence_masked` -- the recurrence alone with the masked surrogate (eq. 8): exact
  S3GD gradients at dense cost (the paper's conv net did this), for conv layers and neuron
  settings the fast path does not cover (zero reset, synaptic current, non-detached reset).

Why a spike list rather than the paper's stored input trace: the input of a spiking layer is
binary and sparse, so ``nnz`` int32 indices are ``1/density`` times smaller than a dense float
trace ``[T, B, K]``, and rebuilding the trace in the backward walk costs one ``K``-vector decay
per event step (L1-resident) -- far less than the ``n_active * K`` products that eq. 9 needs
anyway. Non-binary inputs keep their values too (8 bytes per non-zero).

Backends: numba on CPU (:mod:`sparsespike.kernels.sparse_cpu`), Triton on CUDA
(:mod:`sparsespike.kernels.triton_gpu`), and the masked dense recurrence as the fallback.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from ..errors import SpikeInputError
from ..neurons import LIFParams, Reset
from . import cpu
from . import sparse_cpu as kc
from .recurrence import (
    _kernel_surrogate,
    backward_torch,
    choose_impl,
    forward_torch,
    refuse_nan_membranes,
    refuse_overflowed_membranes,
)

# The metadata of a tensor lives here, keyed by the tensor's id and checked against a weak
# reference to it, not in the tensor's __dict__: torch pickles and deep-copies a tensor's
# __dict__, so a raster with a lazily built list (a closure) could not be saved, and a deep copy
# got version 0 again, reviving a list that an in-place edit had made stale.
_METAS: dict[int, tuple[weakref.ref, SpikeMeta]] = {}


def _drop_meta(key: int, ref: weakref.ref, metas: dict = _METAS) -> None:
    # ``metas`` bound at definition: at interpreter exit the module's globals may already be None
    ent = metas.get(key)
    if ent is not None and ent[0] is ref:  # not a newer tensor's entry under a reused id
        del metas[key]


def _set_meta(x: torch.Tensor, meta: SpikeMeta) -> None:
    key = id(x)
    _METAS[key] = (weakref.ref(x, functools.partial(_drop_meta, key)), meta)


def _raw_meta(x: torch.Tensor) -> SpikeMeta | None:
    ent = _METAS.get(id(x))
    return ent[1] if ent is not None and ent[0]() is x else None


_FLOATS = (torch.float32, torch.float64)
_INF = 1e30  # stands in for b_th = inf inside kernels


# --------------------------------------------------------------------------- compact sets


class ActiveSet:
    """Entries of a time-major ``[T, B, F]`` tensor kept in compact, batch-major form.

    ``ptr[B+1]`` (int64) are offsets per batch element; ``idx[n]`` (int32) is ``t*F + f``,
    sorted inside each batch element. Used for the active entries of a layer (eq. 7) and, with
    optional ``vals``, for spike lists.
    """

    __slots__ = ("T", "B", "F", "ptr", "idx", "vals", "_coo")

    def __init__(self, T: int, B: int, F: int, ptr: torch.Tensor, idx: torch.Tensor, vals=None):
        self.T, self.B, self.F = int(T), int(B), int(F)
        self.ptr, self.idx, self.vals = ptr, idx, vals
        self._coo: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.T, self.B, self.F)

    @property
    def n(self) -> int:
        return int(self.idx.numel())

    @property
    def device(self) -> torch.device:
        return self.idx.device

    @property
    def nbytes(self) -> int:
        b = self.ptr.numel() * self.ptr.element_size() + self.idx.numel() * self.idx.element_size()
        if self.vals is not None:
            b += self.vals.numel() * self.vals.element_size()
        return b

    def batch_index(self) -> torch.Tensor:
        """Batch element of every entry (int64)."""
        counts = self.ptr[1:] - self.ptr[:-1]
        # output_size: the length is known, so CUDA need not wait for the counts
        return torch.repeat_interleave(torch.arange(self.B, device=self.device), counts, output_size=self.n)

    def coo_indices(self) -> torch.Tensor:
        """``[3, n]`` int64 indices ``(t, b, f)``; built once and cached (identity marks our COO grads)."""
        if self._coo is None:
            if self.device.type == "cpu":
                out = torch.empty(3, self.n, dtype=torch.int64)
                if self.n:
                    kc.coo_indices(self.ptr.numpy(), self.idx.numpy(), self.F, out.numpy())
            else:  # written row by row: peak ~32 bytes per entry
                out = torch.empty(3, self.n, dtype=torch.int64, device=self.device)
                torch.div(self.idx, self.F, rounding_mode="floor", out=out[0])
                torch.mul(out[0], self.F, out=out[2])
                torch.sub(self.idx, out[2], out=out[2])
                out[1] = self.batch_index()
            self._coo = out
        return self._coo

    def sparse_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (one per entry) as a sparse COO ``[T, B, F]`` tensor on this set's cached
        indices -- the form in which gradients travel between sparse layers: a consumer holding
        the same set reads the values back without a copy (:func:`_compact_grad`)."""
        return torch.sparse_coo_tensor(
            self.coo_indices(), values, self.shape, is_coalesced=False, check_invariants=False
        )

    def flat_index(self) -> torch.Tensor:
        """Index of every entry into the flattened ``[T, B, F]`` tensor (int64)."""
        f = self.idx.long()
        t = torch.div(f, self.F, rounding_mode="floor")
        return (t * self.B + self.batch_index()) * self.F + (f - t * self.F)

    def mask(self) -> torch.Tensor:
        """Dense boolean ``[T, B, F]`` mask (for tests and inspection)."""
        m = torch.zeros(self.T * self.B * self.F, dtype=torch.bool, device=self.device)
        m[self.flat_index()] = True
        return m.reshape(self.T, self.B, self.F)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Values of ``dense[T, B, F]`` at the entries, in entry order."""
        dense = dense.contiguous()
        if dense.device.type == "cpu" and dense.dtype in _FLOATS:
            out = torch.empty(self.n, dtype=dense.dtype)
            if self.n:
                kc.gather_bmajor(self.ptr.numpy(), self.idx.numpy(), dense.numpy(), out.numpy())
            return out
        return dense.reshape(-1)[self.flat_index()]

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> ActiveSet:
        """Compact set of the non-zeros of a ``[T, B, F]`` mask (any dtype)."""
        T, B, F = mask.shape
        if mask.device.type == "cpu":
            m = mask.contiguous()
            if m.dtype != torch.uint8:
                m = (m != 0).to(torch.uint8)
            counts = torch.empty(B, dtype=torch.int64)
            kc.mask_counts(m.numpy(), counts.numpy())
            ptr = torch.zeros(B + 1, dtype=torch.int64)
            torch.cumsum(counts, 0, out=ptr[1:])
            idx = torch.empty(int(ptr[-1]), dtype=torch.int32)
            kc.mask_fill(m.numpy(), ptr.numpy(), idx.numpy())
            return cls(T, B, F, ptr, idx)
        nz = (mask != 0).permute(1, 0, 2).nonzero()  # sorted by (b, t, f)
        counts = torch.bincount(nz[:, 0], minlength=B)
        ptr = torch.zeros(B + 1, dtype=torch.int64, device=mask.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        idx = (nz[:, 1] * F + nz[:, 2]).to(torch.int32)
        return cls(T, B, F, ptr, idx)


def spike_list(x: torch.Tensor, *, batch_first: bool = False, dtype: torch.dtype | None = None) -> ActiveSet:
    """Spike list of a time-major input ``x[T, B, K]``: non-zeros, values kept if not binary.

    ``batch_first=True`` reads a b-major ``x[B, T, K]`` instead (e.g. a ``uint8`` batch of
    event rasters before it is transposed and cast), ``dtype`` is the values' dtype
    (default ``x.dtype``). Any strides: nothing is copied on CPU.
    """
    if batch_first:
        B, T, K = x.shape
        xb = x
    else:
        T, B, K = x.shape
        xb = x.transpose(0, 1)
    if T * K >= 2**31:
        raise ValueError(f"T*K = {T * K} too large for int32 spike indices")
    dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
    if x.device.type == "cpu":
        xn = xb.detach().numpy()
        count, fill = kc.scan_counts, kc.scan_fill
        if x.dtype == torch.uint8 and xb.is_contiguous() and (T * K) % 8 == 0 and _LITTLE:
            xn = xn.reshape(B, T * K).view(np.uint64)  # 8 inputs per word read
            count, fill = kc.scan_word_counts, kc.scan_word_fill
        counts = torch.empty(B, dtype=torch.int64)
        nonbin = torch.empty(B, dtype=torch.int64)
        count(xn, counts.numpy(), nonbin.numpy())
        ptr = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=ptr[1:])
        nnz = int(ptr[-1])
        store = bool(nonbin.any())
        idx = torch.empty(nnz, dtype=torch.int32)
        vals = torch.empty(nnz if store else 0, dtype=x.dtype)
        fill(xn, ptr.numpy(), idx.numpy(), vals.numpy(), store)
        return ActiveSet(T, B, K, ptr, idx, vals.to(dtype) if store else None)
    if batch_first:
        x = x.transpose(0, 1)
    xd = x.detach().to(dtype)
    s = ActiveSet.from_mask(xd != 0)
    v = s.gather(xd)
    if not bool((v == 1).all()):
        s.vals = v
    return s


_LITTLE = sys.byteorder == "little"


@dataclass
class SpikeMeta:
    """What travels with a spike tensor ``[T, B, *features]``: the active set of the sparse layer
    that produced it (``None`` for an input, which needs no gradient) and its spike list, or a
    function that builds the list when first asked for (so that a consumer that never needs it,
    e.g. a dense layer, pays nothing)."""

    active: ActiveSet | None
    spikes: ActiveSet | Callable[[], ActiveSet] | None
    version: int
    shape: tuple[int, int, int]  # (T, B, F) of the sets
    device: torch.device
    # per-sample spike counts [B, F] returned by the producing layer's autograd function beside
    # the spikes: their gradient enters that layer's backward directly (spike_counts)
    counts: torch.Tensor | None = None

    def spike_list(self) -> ActiveSet | None:
        """The spike list (built and kept on first call if it was attached as a function)."""
        if callable(self.spikes):
            self.spikes = self.spikes()
        return self.spikes


def _flat_shape(x: torch.Tensor) -> tuple[int, int, int] | None:
    return (x.shape[0], x.shape[1], math.prod(x.shape[2:])) if x.dim() >= 3 else None


def attach_active_set(
    x: torch.Tensor,
    active: ActiveSet | torch.Tensor,
    spikes: ActiveSet | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mark ``x[T, B, F]`` with the active set of the layer that produced it (or a bool mask).

    A sparse layer consuming ``x`` then computes its input gradient only at these entries
    (eq. 12) and returns it as a sparse COO tensor. ``counts`` (``[B, F]``, ``x`` summed over
    time, from the same autograd function as ``x``) is what :func:`spike_counts` returns for
    ``x``. Returns ``x``.
    """
    if isinstance(active, torch.Tensor):
        active = ActiveSet.from_mask(active)
    if tuple(active.shape) != tuple(x.shape):
        raise ValueError(f"active set shape {active.shape} does not match tensor {tuple(x.shape)}")
    if counts is not None and tuple(counts.shape) != (active.shape[1], active.shape[2]):
        raise ValueError(f"counts shape {tuple(counts.shape)} does not match active set {active.shape}")
    if x.is_inference():  # no version counter to tell an in-place change: attach nothing (the
        return x  # consumer scans the tensor instead; nothing needs an active set without autograd)
    _set_meta(x, SpikeMeta(active, spikes, x._version, active.shape, active.device, counts))
    return x


def attach_spike_list(
    x: torch.Tensor, spikes: ActiveSet | Callable[[], ActiveSet], shape: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """Mark an input ``x[T, B, K]`` with its spike list (no active set: it needs no gradient).

    Encoders that know where their spikes are (one spike per input, from its time) attach it, so
    a sparse first layer need not scan the dense raster (two passes over ``T*B*K`` floats).
    ``x`` may be ``[T, B, *features]`` with ``prod(features) = K`` (flattened row-major).
    ``spikes`` may be a function building the list on first use; then give ``shape`` (T, B, K).
    """
    if isinstance(spikes, ActiveSet):
        shape = spikes.shape
    if shape is None or _flat_shape(x) != tuple(shape):
        raise ValueError(f"spike list over {shape} does not match tensor {tuple(x.shape)}")
    if x.is_inference():  # see attach_active_set
        return x
    _set_meta(x, SpikeMeta(None, spikes, x._version, tuple(shape), x.device))
    return x


def get_meta(x: torch.Tensor) -> SpikeMeta | None:
    """The :class:`SpikeMeta` attached to ``x`` if still valid (same shape, no in-place change)."""
    m = _raw_meta(x)
    if m is None or x.is_inference() or m.version != x._version or m.device != x.device:
        return None
    # [T, B, ...] matches sets over [T, B, F] when the trailing dims hold F features
    if _flat_shape(x) != m.shape or (m.active is not None and x.dim() != 3):
        return None
    return m


def active_set(x: torch.Tensor) -> ActiveSet | None:
    """The active set attached to a sparse layer's output, or ``None``."""
    m = get_meta(x)
    return None if m is None else m.active


def share_active_set(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Copy ``src``'s attached active set to ``dst`` (e.g. ``src.detach().requires_grad_()``)."""
    m = get_meta(src)
    if m is not None and not dst.is_inference():
        _set_meta(dst, SpikeMeta(m.active, m.spikes, dst._version, m.shape, m.device))
    return dst


class _CountsFromList(torch.autograd.Function):
    """Sum of ``x[T, B, ...]`` over time (and batch) whose value was counted from a spike list;
    the gradient is that of the sum: ``grad`` broadcast over the summed dims."""

    @staticmethod
    def forward(ctx, x, counts, per_sample):
        ctx.shape = x.shape
        ctx.per_sample = per_sample
        return counts

    @staticmethod
    def backward(ctx, g):
        T, B = ctx.shape[0], ctx.shape[1]
        g = g if ctx.per_sample else g.unsqueeze(0).expand(B, -1)
        return g.unsqueeze(0).expand(T, B, -1).reshape(ctx.shape), None, None


def spike_counts(x: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Spikes of ``x[T, B, *features]`` summed over time: ``[B, F]`` per sample
    (``per_sample=True``) or ``[F]`` summed over the batch too (``F = prod(features)``).

    The same value (and gradient) as ``x.reshape(T, B, F).sum(0)`` / ``.sum((0, 1))``. When ``x``
    carries a spike list (a sparse layer's output, an encoder's raster; :class:`SpikeMeta`) it is
    counted from the list in O(spikes) instead of reading the ``T*B*F`` tensor, which at ~1 %
    activity is most of what the regularisers that price spikes cost per batch.

    For the output of a sparse layer (:func:`sparse_spiking_linear`) the counts are the second
    output of the layer's own autograd function: their gradient enters its backward directly,
    added to ``dL/dS`` at the active entries, the only ones that backward reads (eq. 8: the
    surrogate is 0 elsewhere). Parameter gradients are those of the dense sum; no dense
    ``[T, B, F]`` gradient is built, nor summed with the COO one from the next layer (each such
    sum costs as much as the layer's whole sparse backward). The counts are then not a function
    of ``x`` in the autograd graph: ``torch.autograd.grad(counts, x)`` does not reach ``x``.
    """
    if x.dim() < 3:
        raise ValueError(f"spike_counts: expected x[T, B, *features], got shape {tuple(x.shape)}")
    T, B = x.shape[0], x.shape[1]
    F = math.prod(x.shape[2:])
    meta = get_meta(x)
    if meta is not None and meta.counts is not None:
        # the producing sparse layer returned them beside x: their gradient goes straight into
        # its backward (added to dL/dS at its active entries) instead of a dense [T, B, F] one
        # a fresh tensor per call, as x.sum(0) gives: an in-place change by one caller (rate /= T)
        # must not reach the next; [B, F] only, and the clone keeps the gradient path
        c = meta.counts if x.requires_grad and torch.is_grad_enabled() else meta.counts.detach()
        return c.clone() if per_sample else c.sum(0)
    lst = meta.spike_list() if meta is not None and x.device.type == "cpu" else None
    if lst is None or lst.shape != (T, B, F):
        x3 = x.reshape(T, B, F)
        return x3.sum(0) if per_sample else x3.sum((0, 1))
    counts = _list_counts(lst, x.dtype, per_sample)
    if x.requires_grad and torch.is_grad_enabled():
        return _CountsFromList.apply(x, counts, per_sample)
    return counts


# --------------------------------------------------------------------------- helpers


def _clip_bth(b_th: float) -> float:
    b = float(b_th)
    if not b > 0:
        raise ValueError(f"b_th must be > 0, got {b_th}")
    return min(b, _INF)


_TABLES: dict = {}


def _decay_tables(beta: float, T: int, dtype, device="cpu"):
    """``powb[n] = beta**n`` (n = 0..T), ``geo[k] = sum_{m<=k} beta**m`` (bias gradient),
    ``ipow[n] = beta**-n`` (n = 0..L) and ``L``, the longest span with ``beta**-L <= 2**20``."""
    key = (float(beta), int(T), dtype, str(device))
    if key not in _TABLES:
        n = torch.arange(T + 1, dtype=torch.float64)
        powb = torch.full((T + 1,), float(beta), dtype=torch.float64).pow(n)
        geo = torch.cumsum(powb[:T], 0)
        # L = 0 (rescale at every step with an event) when even beta**-1 exceeds 2**20: a tiny
        # beta would overflow the table (float32 inf for beta < ~3e-39, then NaN gradients)
        L = T + 1 if beta >= 1.0 else 0 if beta <= 2.0**-20 else min(T + 1, int(20 * math.log(2) / -math.log(beta)))
        ipow = torch.full((L + 1,), float(beta), dtype=torch.float64).pow(-torch.arange(L + 1, dtype=torch.float64))
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = tuple(t.to(dtype=dtype, device=device) for t in (powb, geo, ipow)) + (L,)
    return _TABLES[key]


def _num_chunks(B: int) -> int:
    return max(1, min(numba.get_num_threads(), B))


def _fast_path_ok(x: torch.Tensor, W: torch.Tensor, bias, p: LIFParams) -> bool:
    return (
        p.reset is Reset.SUBTRACT
        and p.detach_reset
        and p.alpha is None
        and x.dim() == 3
        and x.dtype in _FLOATS
        and W.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and W.device == x.device
    )


def choose_backend(x: torch.Tensor, W: torch.Tensor, bias, p: LIFParams, impl: str = "auto") -> str:
    """``numba`` (CPU), ``triton`` (CUDA), or ``fallback`` (masked dense recurrence).

    ``impl`` forces one: ``"torch"`` means the fallback; ``"triton"`` also runs on CPU tensors
    under ``TRITON_INTERPRET=1`` (tests).
    """
    if impl in ("torch", "fallback") or not _fast_path_ok(x, W, bias, p):
        return "fallback"
    if impl == "triton":
        if x.dtype != torch.float32:  # the Triton kernels compute in float32
            return "fallback"
        from . import triton_gpu

        triton_gpu.check_device(x)
    if impl in ("numba", "triton"):
        return impl
    if x.device.type == "cpu":
        return "numba"
    if x.device.type == "cuda" and x.dtype == torch.float32:
        from . import triton_gpu

        if triton_gpu.available():
            return "triton"
    return "fallback"


_CAP_HINT: dict[tuple[int, int], tuple[float, float]] = {}


def _sparse_forward_numba(x, W, bias, p: LIFParams, b_th: float, spikes_in: ActiveSet):
    """Fused forward on CPU. Returns ``S, active (ActiveSet), d (compact), out_spikes``."""
    T, B, K = x.shape
    N = W.shape[0]
    if T * N >= 2**31:
        raise ValueError(f"T*N = {T * N} too large for int32 active indices")
    dtype = x.dtype
    wt = W.detach().t().contiguous()
    bvec = bias.detach().contiguous() if bias is not None else torch.empty(0, dtype=dtype)
    S = torch.empty(T, B, N, dtype=dtype)
    fa, fo = _CAP_HINT.get((T, N), (0.03, 0.03))
    TN = T * N
    cap_a = max(16, min(TN, int(fa * TN * 1.3) + 16))
    cap_o = max(16, min(TN, int(fo * TN * 1.3) + 16))
    a_buf = torch.empty(B, cap_a, dtype=torch.int32)
    d_buf = torch.empty(B, cap_a, dtype=dtype)
    o_buf = torch.empty(B, cap_o, dtype=torch.int32)
    a_cnt = torch.empty(B, dtype=torch.int64)
    o_cnt = torch.empty(B, dtype=torch.int64)
    sp_vals = spikes_in.vals if spikes_in.vals is not None else torch.empty(0, dtype=dtype)
    args = (
        spikes_in.ptr.numpy(),
        spikes_in.idx.numpy(),
        sp_vals.numpy(),
        spikes_in.vals is not None,
        wt.numpy(),
        bvec.numpy(),
        bias is not None,
        float(p.beta),
        float(p.threshold),
        _clip_bth(b_th),
        S.numpy(),
    )
    blist = np.arange(B, dtype=np.int64)
    n_nan = np.zeros(B, dtype=np.int64)
    kc.fused_forward(
        blist, _num_chunks(B), *args, a_buf.numpy(), d_buf.numpy(), a_cnt.numpy(), o_buf.numpy(), o_cnt.numpy(), n_nan
    )
    refuse_overflowed_membranes(int(n_nan.sum()))  # finite inputs and weights can still overflow
    over = ((a_cnt > cap_a) | (o_cnt > cap_o)).nonzero().flatten()
    extra = None
    if over.numel():  # rerun the batch elements that did not fit, with exact room
        bl2 = over.numpy().astype(np.int64)
        ca2 = int(a_cnt[over].max())
        co2 = int(o_cnt[over].max())
        a2 = torch.empty(len(bl2), max(ca2, 1), dtype=torch.int32)
        d2 = torch.empty(len(bl2), max(ca2, 1), dtype=dtype)
        o2 = torch.empty(len(bl2), max(co2, 1), dtype=torch.int32)
        ac2 = torch.empty(len(bl2), dtype=torch.int64)
        oc2 = torch.empty(len(bl2), dtype=torch.int64)
        kc.fused_forward(
            bl2, _num_chunks(len(bl2)), *args, a2.numpy(), d2.numpy(), ac2.numpy(), o2.numpy(), oc2.numpy(),
            np.zeros(len(bl2), dtype=np.int64),  # the same rows as above: their NaN count is known
        )  # fmt: skip
        extra = (over, a2, d2, o2, ac2, oc2)
    if B and TN:
        # layers of the same (T, N) share the hint: keep the larger with a slow decay, since
        # unused room costs nothing (empty buffers) and every overflow reruns batch elements
        _CAP_HINT[(T, N)] = (max(float(a_cnt.max()) / TN, 0.9 * fa), max(float(o_cnt.max()) / TN, 0.9 * fo))

    def compact(buf, cnt, which):
        ptr = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(cnt, 0, out=ptr[1:])
        out = torch.empty(int(ptr[-1]), dtype=buf.dtype)
        c1 = cnt.clone()
        if extra is not None:
            c1[extra[0]] = 0
        kc.compact_rows(buf.numpy(), c1.numpy(), ptr[:-1].contiguous().numpy(), out.numpy())
        if extra is not None:
            ov = extra[0]
            b2, c2 = {"a": (extra[1], extra[4]), "d": (extra[2], extra[4]), "o": (extra[3], extra[5])}[which]
            kc.compact_rows(b2.numpy(), c2.numpy(), ptr[ov].contiguous().numpy(), out.numpy())
        return ptr, out

    a_ptr, a_idx = compact(a_buf, a_cnt, "a")
    _, d = compact(d_buf, a_cnt, "d")
    o_ptr, o_idx = compact(o_buf, o_cnt, "o")
    active = ActiveSet(T, B, N, a_ptr, a_idx)
    spikes_out = ActiveSet(T, B, N, o_ptr, o_idx)
    return S, active, d, spikes_out, wt


_BLOCK_BYTES = 8 * 2**20  # blocks of W / dW beyond this size (measured: no gain from L2-sized blocks)
_PRIVATE_BYTES = 64 * 2**20  # at most this much for the per-thread weight gradients of the batch split
# sparse backward: fewer multiply-adds than this run on one thread (docs/sparse_backward.md, "CPU, one
# and two threads": H = 200, 16 M: 2.3 ms on two threads against 1.9 on one; H = 400, 66 M: 3.2 against 4.4)
_PARALLEL_MIN_MACS = 32_000_000


def _block(cols: int, rows: int, itemsize: int, parts: int) -> int:
    """Columns per block so that ``rows x block`` fits ``_BLOCK_BYTES``, and at least ``parts`` blocks."""
    b = max(64, (_BLOCK_BYTES // max(1, rows * itemsize)) // 16 * 16)
    if parts > 1:
        b = min(b, -(-cols // parts))
    return max(1, min(b, cols))


def _sparse_backward_numba(ctx, gs: torch.Tensor | None, gc: torch.Tensor | None = None):
    """Weight, bias and input gradients on CPU from the incoming ``dL/dS`` (dense or COO, or
    ``None``) and the gradient ``gc`` of the per-sample spike counts (or ``None``)."""
    act: ActiveSet = ctx.active
    T, B, N = act.shape
    K = ctx.K
    g = ctx.g
    dtype = g.dtype
    need_dx, need_dw, need_db = (
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.has_bias and ctx.needs_input_grad[2],
    )
    prev: ActiveSet | None = ctx.prev if need_dx else None
    sparse_dx = need_dx and prev is not None
    # below ~32 M multiply-adds the thread pool's hand-offs (~0.1 ms per kernel call) cost more
    # than a second thread saves: the serial builds, as on one thread
    macs = act.n * K + (prev.n * N if sparse_dx else 0)
    serial = macs < _PARALLEL_MIN_MACS or numba.get_num_threads() == 1
    threads = 1 if serial else numba.get_num_threads()

    def run(kernel):  # the build that the thread rule above picked (kernels/cpu.py: Kernel)
        return kernel.serial if serial else kernel

    powb, geo, ipow, L = _decay_tables(ctx.beta, T, dtype)
    isz = g.element_size()
    work = B and act.n
    kb = _block(K, N, isz, threads) if need_dw else max(K, 1)
    nblk = -(-K // kb) if need_dw else 1
    # the weight gradient walks the active entries (n_active x K) or the input spikes
    # (n_inputs x N), whichever is less work
    by_inputs = bool(work and need_dw and ctx.spikes_in.n * N < act.n * K)
    # several threads: split the batch, each chunk into its own gradient, then add them up
    # (weight_grad_batched); one thread, or private copies too large: the serial walks / column blocks
    nbat = min(threads, B)
    batched = bool(work and (need_dw or need_db) and nbat > 1 and nbat * N * K * isz <= _PRIVATE_BYTES)
    dW = torch.zeros(N, K, dtype=dtype) if need_dw and not by_inputs and not batched else None
    db = torch.zeros(N, dtype=dtype) if need_db and not batched else None
    # e = dL/dS * g at the active entries: read inside the weight-gradient walk when its threads
    # own whole samples (one block, or the batch split) on a dense gradient -- its cache misses
    # then overlap the arithmetic -- else gathered first
    fuse = bool(
        work
        and (need_dw or need_db)
        and (nblk == 1 or batched)
        and not by_inputs
        and gc is None
        and gs is not None
        and not gs.is_sparse
        and gs.dtype == dtype
    )
    if fuse:
        gs = gs.contiguous()
        e = torch.empty(act.n, dtype=dtype)
    else:
        e = (_grad_at_active(gs, gc, act, dtype) * g).to(dtype).contiguous()
        gs = torch.zeros(1, 1, 1, dtype=dtype)
    sp: ActiveSet = (
        ctx.spikes_in
        if need_dw
        else ActiveSet(T, B, K, torch.zeros(B + 1, dtype=torch.int64), torch.empty(0, dtype=torch.int32))
    )
    sp_val = sp.vals if sp.vals is not None else torch.empty(0, dtype=dtype)
    # the arguments every weight-gradient walk takes: sizes, active set and e, input spikes, decay tables
    walk = (
        T, N, K, act.ptr.numpy(), act.idx.numpy(), e.numpy(), sp.ptr.numpy(), sp.idx.numpy(), sp_val.numpy(),
        sp.vals is not None, powb.numpy(), ipow.numpy(), L, geo.numpy(),
    )  # fmt: skip
    if batched:
        shape = (K, N) if by_inputs else (N, K)
        # numpy buffers: torch.empty would be as cheap, but torch.zeros starts torch's OpenMP pool,
        # whose spinning threads then compete with numba's for the cores
        dwp = np.empty((nbat, *shape) if need_dw else (nbat, 1, 1), dtype=g.numpy().dtype)  # [c] read per chunk
        dbp = np.empty((nbat, N) if need_db else (nbat, 1), dtype=dwp.dtype)
        run(kc.weight_grad_batched)(
            nbat, by_inputs, *walk, bool(need_dw), bool(need_db), dwp, dbp, fuse, gs.numpy(), g.numpy()
        )
        if need_dw:
            run(kc.sum_chunks)(dwp, max(1, min(threads, dwp.shape[1] // 16)))
            dW = torch.from_numpy(dwp[0])
            dW = dW.t() if by_inputs else dW
        if need_db:
            db = torch.from_numpy(dbp.sum(0))
    elif by_inputs:
        dwt = torch.zeros(K, N, dtype=dtype)
        db_arg = (db if need_db else torch.zeros(1, dtype=dtype)).numpy()
        run(kc.weight_grad_inputs)(max(1, min(threads, N // 16)), *walk, bool(need_db), dwt.numpy(), db_arg)
        dW = dwt.t()
    elif work and (need_dw or need_db):
        dw_arg = (dW if need_dw else torch.zeros(1, 1, dtype=dtype)).numpy()
        db_arg = (db if need_db else torch.zeros(1, dtype=dtype)).numpy()
        run(kc.weight_grad_active)(
            nblk, kb, *walk, bool(need_dw), bool(need_db), dw_arg, db_arg, fuse, gs.numpy(), g.numpy()
        )
    dx = None
    if sparse_dx:
        dx_vals = torch.from_numpy(np.zeros(prev.n, dtype=g.numpy().dtype))  # not torch.zeros: see dwp above
        if work and prev.n:
            run(kc.input_grad_active)(
                max(1, min(threads, B)),
                _block(N, K, isz, 1),
                T,
                N,
                K,
                act.ptr.numpy(),
                act.idx.numpy(),
                e.numpy(),
                ctx.wt.numpy(),
                prev.ptr.numpy(),
                prev.idx.numpy(),
                powb.numpy(),
                ipow.numpy(),
                L,
                dx_vals.numpy(),
            )
        dx = prev.sparse_tensor(dx_vals)
    elif need_dx:  # input carries no active set: dense fallback dx = delta @ W
        delta = torch.empty(T, B, N, dtype=dtype)
        if work:
            kc.delta_dense(act.ptr.numpy(), act.idx.numpy(), e.numpy(), float(ctx.beta), delta.numpy())
        else:
            delta.zero_()
        dx = (delta.reshape(-1, N) @ ctx.W_full).reshape(T, B, K)
    return dx, dW, db


def _list_counts(spikes: ActiveSet, dtype, per_sample: bool = True) -> torch.Tensor:
    """Spikes per sample and feature ``[B, F]`` (or per feature ``[F]``) of a b-major spike list,
    values summed when it has them; O(spikes)."""
    B, F = spikes.B, spikes.F
    if spikes.device.type == "cpu" and dtype in _FLOATS:
        out = torch.zeros(B, F, dtype=dtype)
        vals = spikes.vals.to(dtype).contiguous() if spikes.vals is not None else out.reshape(-1)[:0]
        kc.list_counts(spikes.ptr.numpy(), spikes.idx.numpy(), vals.numpy(), spikes.vals is not None, F, out.numpy())
        return out if per_sample else out.sum(0)
    f = (spikes.idx % F).long()
    w = None if spikes.vals is None else spikes.vals.to(dtype)
    if per_sample:
        return torch.bincount(spikes.batch_index() * F + f, weights=w, minlength=B * F).reshape(B, F).to(dtype)
    return torch.bincount(f, weights=w, minlength=F).to(dtype)


def _grad_at_active(gs: torch.Tensor | None, gc: torch.Tensor | None, act: ActiveSet, dtype) -> torch.Tensor:
    """``dL/dS`` at the active entries: the spikes' own gradient ``gs`` (dense or COO, or
    ``None``) plus the gradient ``gc[B, N]`` of their per-sample counts (``S`` summed over time,
    so ``dL/dS[t, b, j]`` gains ``gc[b, j]`` at every step; or ``None``)."""
    e = _compact_grad(gs, act) if gs is not None else None
    if gc is not None and act.device.type == "cpu" and gc.dtype in _FLOATS:
        e = torch.zeros(act.n, dtype=gc.dtype) if e is None else e.clone()  # e may be a grad's own values
        gcn = gc.detach().to(e.dtype).contiguous().numpy()
        kc.add_count_grad(act.ptr.numpy(), act.idx.numpy(), act.F, gcn, e.numpy())
    elif gc is not None:
        idx = act.idx.long()
        extra = gc[act.batch_index(), idx % act.F]
        e = extra if e is None else e + extra.to(e.dtype)
    if e is None:
        e = torch.zeros(act.n, dtype=dtype, device=act.device)
    return e


def _compact_grad(gs: torch.Tensor, act: ActiveSet) -> torch.Tensor:
    """``dL/dS`` at the active entries, from a dense or sparse COO gradient."""
    if gs.is_sparse:
        coo = act._coo
        if coo is not None and gs._nnz() == act.n:
            ind = gs._indices()
            # our COO gradients carry the set's cached indices; the autograd engine's sum of two
            # of them (e.g. the next layer's input gradient + a spike-count regulariser's) keeps
            # the entries in order but in a copy of the indices: compare them, O(n)
            if ind.data_ptr() == coo.data_ptr() or torch.equal(ind, coo):
                return gs._values()
        gs = gs.to_dense()
    return act.gather(gs)


def _bytes(*ts) -> int:
    n = 0
    for t in ts:
        if t is None:
            continue
        if isinstance(t, ActiveSet):
            n += t.nbytes
        else:
            n += t.numel() * t.element_size()
    return n


def _check_finite_params(W: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The dense recurrence catches NaN/inf through the membrane; the sparse kernels never form
    it densely, so the weights are checked here (``N x K``, small against the forward's work)."""
    for name, t in (("weights", W), ("bias", bias)):
        # one reduction: any NaN/inf makes the sum NaN/inf (a finite sum that overflows is a
        # diverged layer too): 10 us against 400 us for isfinite(t).all() on [200, 784]
        if t is not None and not math.isfinite(float(t.detach().sum())):
            raise SpikeInputError(f"sparse layer: its {name} contain NaN/inf (diverged training?)")


class SparseSpikingLinearFn(torch.autograd.Function):
    """Fused synaptic input + LIF recurrence with the S3GD sparse backward (see module doc)."""

    @staticmethod
    def forward(ctx, x, W, bias, p: LIFParams, b_th: float, backend: str, meta_in, out: dict):  # type: ignore[override]
        K = x.shape[2]
        need_dx = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1]
        x = x.contiguous()
        spikes_in = meta_in.spike_list() if meta_in is not None else None
        _check_finite_params(W, bias)
        if backend == "triton":
            from . import triton_gpu

            if spikes_in is None:
                spikes_in = spike_list(x)
            S, act, d, spikes_out = triton_gpu.sparse_forward(
                x, W.detach(), None if bias is None else bias.detach(), p, _clip_bth(b_th), spikes_in
            )
            wt = W.detach().t().contiguous() if need_dx else None
        else:
            if spikes_in is None:
                spikes_in = spike_list(x)
            S, act, d, spikes_out, wt = _sparse_forward_numba(x, W, bias, p, b_th, spikes_in)
        if spikes_in.vals is not None and not bool(torch.isfinite(spikes_in.vals).all()):
            raise SpikeInputError(
                "sparse layer: the input contains NaN/inf (check the input spikes, or a layer below that diverged)"
            )
        g = p.surrogate.grad(d).to(d.dtype)
        del d
        ctx.active, ctx.g = act, g
        ctx.spikes_in = spikes_in if need_dw else None
        ctx.wt = wt if need_dx else None
        ctx.W_full = W.detach() if need_dx else None
        ctx.prev = meta_in.active if (meta_in is not None and need_dx) else None
        ctx.K, ctx.beta, ctx.has_bias, ctx.backend = K, float(p.beta), bias is not None, backend
        saved = _bytes(act, g, ctx.spikes_in)
        out.update(active=act, spikes=spikes_out, n_active=act.n, saved_bytes=saved)
        ctx.set_materialize_grads(False)
        return S, _list_counts(spikes_out, S.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gs, gc):  # type: ignore[override]
        act: ActiveSet = ctx.active
        if gs is None and gc is None:
            return (None,) * 8
        if ctx.backend == "triton":
            from . import triton_gpu

            dx, dW, db = triton_gpu.sparse_backward(ctx, _grad_at_active(gs, gc, act, ctx.g.dtype) * ctx.g)
        else:
            dx, dW, db = _sparse_backward_numba(ctx, gs, gc)
        return dx, dW, db, None, None, None, None, None


def sparse_spiking_linear(
    x: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    p: LIFParams,
    b_th: float,
    stats: dict | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Spikes ``S[T, B, N]`` of a fully connected LIF layer with the S3GD sparse backward.

    ``x[T, B, K]`` are input spikes (any values work; binary is what makes the spike list small),
    ``W[N, K]``, ``bias[N]`` or ``None``, ``b_th`` the half-width of the active window
    ``|V - thr| < b_th`` (eq. 7). ``stats`` receives ``n_active``, ``n_total`` (``T*B*N``),
    ``saved_bytes`` (compact state kept for backward) and ``backend``.

    Fast path (``numba`` on CPU, ``triton`` on CUDA): subtractive, detached reset, no synaptic
    current -- the paper's neuron. Other settings run :func:`lif_recurrence_masked` after a dense
    synaptic input (same gradients, dense cost). If ``x`` carries an active set (it is the output
    of another sparse layer, or see :func:`attach_active_set`), the gradient w.r.t. ``x`` is a
    sparse COO tensor holding values only at those entries (eq. 12); otherwise a dense gradient.

    Example::

        >>> import torch
        >>> from sparsespike.neurons import LIFParams
        >>> x = (torch.rand(20, 2, 30) < 0.1).float()
        >>> W = torch.randn(8, 30, requires_grad=True)
        >>> st = {}
        >>> s = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), 0.2, st)
        >>> s.shape, st["n_total"]
        (torch.Size([20, 2, 8]), 320)
    """
    if stats is None:
        stats = {}
    if x.dim() != 3:
        raise ValueError(f"sparse_spiking_linear: expected x[T, B, K], got shape {tuple(x.shape)}")
    T, B, K = x.shape
    if W.dim() != 2:
        raise ValueError(f"sparse_spiking_linear: expected W[N, K], got shape {tuple(W.shape)}")
    N = W.shape[0]
    if W.shape[1] != K:
        raise ValueError(f"W has {W.shape[1]} inputs, x has {K}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(
            f"sparse_spiking_linear: bias must have shape ({N},) for W {tuple(W.shape)}, got {tuple(bias.shape)}"
        )
    if W.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(
            f"sparse_spiking_linear: x, W and bias must share one dtype, got x {x.dtype}, W {W.dtype}"
            + (f", bias {bias.dtype}" if bias is not None else "")
        )
    backend = choose_backend(x, W, bias, p, impl)
    meta = get_meta(x)
    if backend == "fallback":
        from .synapse import synaptic_linear

        xin = x
        if meta is not None and meta.active is not None and x.requires_grad and torch.is_grad_enabled():
            xin = MaskGradToActive.apply(x, meta.active)
        cur = synaptic_linear(xin, W, bias)
        s = lif_recurrence_masked(cur, p, b_th, stats, impl="torch" if impl in ("torch", "fallback") else "auto")
        stats["backend"] = "fallback"
        return s
    out: dict = {}
    S, counts = SparseSpikingLinearFn.apply(x, W, bias, p, float(b_th), backend, meta, out)
    attach_active_set(S, out["active"], out["spikes"], counts)
    stats["n_active"] = int(out["n_active"])
    stats["n_total"] = T * B * N
    stats["saved_bytes"] = int(out["saved_bytes"])
    stats["backend"] = backend
    return S


class MaskGradToActive(torch.autograd.Function):
    """Identity whose backward keeps the gradient only at an active set (sparse COO)."""

    @staticmethod
    def forward(ctx, x, active: ActiveSet):  # type: ignore[override]
        ctx.active = active
        return x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        act: ActiveSet = ctx.active
        v = _compact_grad(g, act)
        return act.sparse_tensor(v), None


# --------------------------------------------------------------------------- masked recurrence


@dataclass(frozen=True)
class MaskedSurrogate:
    """``base.grad(x)`` inside ``|x| < b_th``, 0 outside (Perez-Nieves eq. 8)."""

    base: object
    b_th: float

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.grad(x) * (x.abs() < self.b_th).to(x.dtype)


def _masked_forward_torch(x: torch.Tensor, p: LIFParams, b_th: float, want_mask: bool):
    """The reference forward with the surrogate masked to the window: ``(S, G, R, mask, n_active)``."""
    Mk = torch.empty(x.shape, dtype=torch.uint8, device=x.device) if want_mask else None
    S, G, R, n_active = forward_torch(x, p, b_th, masked=True, mask_out=Mk)
    return S, G, R, Mk, n_active


class MaskedLIFRecurrence(torch.autograd.Function):
    """Dense LIF recurrence over ``x[T, ...]`` (run as ``[T, M]``) with the surrogate masked to
    ``|V - thr| < b_th``. The reshapes happen inside the Function: a consumer that hands back a
    sparse COO gradient (an event-driven layer reading the attached active set) would otherwise
    meet a reshape's backward, which cannot take one."""

    @staticmethod
    def forward(ctx, x, p: LIFParams, b_th: float, impl: str, want_mask: bool, out: dict):  # type: ignore[override]
        ctx.shape = x.shape
        x = x.reshape(x.shape[0], -1).contiguous()
        bth = _clip_bth(b_th)
        if impl == "numba":
            code, p0, p1 = _kernel_surrogate(p)
            S = torch.empty_like(x)
            G = torch.empty_like(x)
            R = None if p.detach_reset else torch.empty_like(x)
            Mk = torch.empty(x.shape, dtype=torch.uint8) if want_mask else torch.empty(1, 1, dtype=torch.uint8)
            n_active, n_nan = cpu.lif_forward.select(x.numel())(
                x.detach().numpy(),
                float(p.beta),
                -1.0 if p.alpha is None else float(p.alpha),
                float(p.threshold),
                p.reset is Reset.ZERO,
                p.detach_reset,
                code,
                p0,
                p1,
                bth,
                True,
                S.numpy(),
                G.numpy(),
                (R if R is not None else G).numpy(),
                Mk.numpy(),
                want_mask,
            )
            if not want_mask:
                Mk = None
        elif impl == "triton":
            from . import triton_gpu

            S, G, R, Mk, n_active = triton_gpu.lif_forward_masked(x.detach(), p, bth, want_mask)
        else:
            with torch.no_grad():
                S, G, R, Mk, n_active = _masked_forward_torch(x.detach(), p, bth, want_mask)
        if impl != "numba":  # the masked G hides NaN membranes outside the window: count bad inputs
            n_nan = 0 if bool(torch.isfinite(x).all()) else int((~torch.isfinite(x)).sum())
        refuse_nan_membranes(n_nan)
        S_saved = S.to(torch.uint8) if (p.reset is Reset.ZERO and p.detach_reset) else None
        ctx.p, ctx.impl = p, impl
        ctx.save_for_backward(G, S_saved, R)
        out["n_active"] = int(n_active)
        out["mask"] = Mk
        out["saved_bytes"] = _bytes(G, S_saved, R)
        return S.reshape(ctx.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gs):  # type: ignore[override]
        G, S_saved, R = ctx.saved_tensors
        p: LIFParams = ctx.p
        if gs.is_sparse:
            gs = gs.to_dense()
        gs = gs.reshape(G.shape).contiguous()
        if ctx.impl == "numba":
            gx = torch.empty_like(gs)
            cpu.lif_backward_dense.select(gs.numel())(
                gs.numpy(),
                G.numpy(),
                (S_saved if S_saved is not None else G).numpy(),
                (R if R is not None else G).numpy(),
                float(p.beta),
                -1.0 if p.alpha is None else float(p.alpha),
                p.reset is Reset.ZERO,
                p.detach_reset,
                gx.numpy(),
            )
        elif ctx.impl == "triton":
            from . import triton_gpu

            gx = triton_gpu.lif_backward_dense(gs, G, S_saved, R, p)
        else:
            S = S_saved.to(gs.dtype) if S_saved is not None else None
            gx = backward_torch(gs, G, S, R, p)
        return gx.reshape(ctx.shape), None, None, None, None, None


def _recurrence_impl(x: torch.Tensor, p: LIFParams, impl: str) -> str:
    """The recurrence's kernels for ``impl`` (``recurrence.choose_impl``'s rule; any other name
    than ``auto``/``numba``/``triton`` is the torch loop)."""
    return choose_impl(x, p, impl if impl in ("auto", "numba", "triton") else "torch")


def lif_recurrence_masked(
    current: torch.Tensor,
    p: LIFParams,
    b_th: float,
    stats: dict | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """LIF spikes for a time-major synaptic input ``current[T, ...]``, surrogate masked to the window.

    ``dS/dV = g(V - thr)`` where ``|V - thr| < b_th`` and 0 elsewhere (Perez-Nieves eq. 8) for
    every neuron setting (either reset, synaptic current, detached or not); the gradients are
    exactly S3GD's but the cost is the dense recurrence's (as the paper's conv net). For a 3-D
    ``current[T, B, N]`` with grad enabled the output carries its active set, so a following
    sparse layer computes its input gradient only there. ``stats`` gets ``n_active``, ``n_total``.
    ``impl``: ``auto`` | ``numba`` | ``triton`` | ``torch``.
    """
    if stats is None:
        stats = {}
    shape = current.shape
    impl = _recurrence_impl(current, p, impl)
    want = current.dim() == 3 and torch.is_grad_enabled() and current.requires_grad
    out: dict = {}
    S = MaskedLIFRecurrence.apply(current, p, float(b_th), impl, want, out)
    if want and out["mask"] is not None:
        attach_active_set(S, ActiveSet.from_mask(out["mask"].reshape(shape)))
    stats["n_active"] = int(out["n_active"])
    stats["n_total"] = int(current.numel())
    stats["saved_bytes"] = int(out["saved_bytes"])
    return S


__all__ = [
    "ActiveSet",
    "MaskGradToActive",
    "MaskedLIFRecurrence",
    "MaskedSurrogate",
    "SparseSpikingLinearFn",
    "SpikeMeta",
    "active_set",
    "attach_active_set",
    "choose_backend",
    "get_meta",
    "lif_recurrence_masked",
    "share_active_set",
    "sparse_spiking_linear",
    "spike_counts",
    "spike_list",
]
