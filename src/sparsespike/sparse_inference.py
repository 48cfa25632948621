"""Inference with pruned (sparse) weights, so that CPU wall-clock follows the FLOP count.

After :func:`sparsespike.sparsity.connectivity.prune` a network has exact zeros in its weights,
but dense kernels (MKL/oneDNN matmul and convolution) still touch every weight. This module
swaps each Linear/Conv layer for a module that only visits non-zero weights, choosing per layer
among kernels (all numba, CPU):

Linear layers, ``y = x W^T + b`` over ``x[R, K]`` (``R`` = all time steps x batch):

* ``"dense"`` -- the original op (for spiking layers :func:`~sparsespike.kernels.synapse.synaptic_linear`,
  which is already event-driven over binary inputs with dense weight columns).
* ``"csr"`` -- weight-sparse SpMM: ``W`` in CSR, every non-zero weight adds ``w * x[:, i]`` to
  output row ``j`` of ``y^T`` (a contiguous axpy over ``R``); work = ``nnz(W) x R`` = FLOPs / 2.
* ``"event"`` -- event-driven and weight-sparse: every non-zero input ``x[r, i]`` adds
  ``x[r, i] * w`` through the non-zero weights of column ``i`` (``W`` in CSC); work = SynOps.

Conv2d layers (stride 1, dilation 1, groups 1, zero padding; others stay dense), on the
"flat padded plane" layout: input planes are zero-padded to ``Hp x Wp`` and flattened, so the
kernel tap ``(dy, dx)`` is a constant offset ``dy*Wp + dx`` and the output is computed on
``Ho x Wp`` (the ``Wp - Wo`` extra columns are discarded):

* ``"dense"`` -- ``torch.nn.functional.conv2d``;
* ``"taps"`` -- weight-sparse direct convolution: each non-zero tap ``(co, ci, dy, dx)`` adds the
  shifted input plane ``ci`` times ``w`` to output plane ``co`` (one contiguous axpy of length
  ``Ho*Wp``); work = ``nnz(W) x Ho x Wp`` per frame;
* ``"event"`` -- event-driven scatter: each non-zero input pixel of channel ``ci`` adds
  ``v * w`` at ``q - offset`` for every non-zero tap of ``ci``; work = SynOps.

``kernels="auto"`` with an ``example_input`` times every candidate on the input the layer
actually sees (captured by hooks on one forward) and keeps the fastest; without an example it
uses weight-density rules. Outputs equal the dense model's up to floating-point summation order
(bit-identical spikes in float64; in float32 a membrane within ~1e-7 of threshold can flip).
Inference only: the sparse modules run under ``no_grad``.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from sparsespike.sparse_inference import sparse_inference_model
    >>> net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    >>> with torch.no_grad():
    ...     for m in (net[0], net[3]):
    ...         _ = m.weight.mul_((torch.rand_like(m.weight) < 0.2).float())   # 80 % zeros
    >>> x = torch.rand(5, 2, 6, 6)
    >>> fast = sparse_inference_model(net, example_input=x)
    >>> torch.allclose(fast(x), net(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from .errors import SpikeInputError
from .kernels import lif_recurrence
from .kernels.synapse import synaptic_linear
from .layers import LeakyReadout, SpikingConv2d, SpikingLinear, check_time_major, leaky_integrate

# ------------------------------------------------------------------------------------------------
# numba kernels
# ------------------------------------------------------------------------------------------------
_RBLOCK = 512  # column block of the CSR SpMM (keeps the output block in L1)


@njit(parallel=True, cache=True, fastmath=True)
def _spmm_csr(indptr, indices, data, xt, out_t):
    """``out_t[j, :] = sum_p data[p] * xt[indices[p], :]`` over row ``j`` of a CSR ``W[N, K]``.

    Columns are processed in blocks of ``_RBLOCK`` (the output block stays in L1) and eight
    non-zeros at a time (one output load/store per eight FMAs); slices keep the inner loop free
    of negative-index checks so that LLVM vectorises it.
    """
    N = out_t.shape[0]
    R = out_t.shape[1]
    nb = (R + _RBLOCK - 1) // _RBLOCK
    for jb in prange(N * nb):
        j = jb // nb
        r0 = (jb % nb) * _RBLOCK
        r1 = min(R, r0 + _RBLOCK)
        n = r1 - r0
        o = out_t[j, r0:r1]
        o[:] = 0.0
        p = indptr[j]
        p1 = indptr[j + 1]
        while p + 8 <= p1:
            s0 = xt[indices[p], r0:r1]
            s1 = xt[indices[p + 1], r0:r1]
            s2 = xt[indices[p + 2], r0:r1]
            s3 = xt[indices[p + 3], r0:r1]
            s4 = xt[indices[p + 4], r0:r1]
            s5 = xt[indices[p + 5], r0:r1]
            s6 = xt[indices[p + 6], r0:r1]
            s7 = xt[indices[p + 7], r0:r1]
            w0, w1, w2, w3 = data[p], data[p + 1], data[p + 2], data[p + 3]
            w4, w5, w6, w7 = data[p + 4], data[p + 5], data[p + 6], data[p + 7]
            for r in range(n):
                o[r] += (w0 * s0[r] + w1 * s1[r] + w2 * s2[r] + w3 * s3[r]) + (
                    w4 * s4[r] + w5 * s5[r] + w6 * s6[r] + w7 * s7[r]
                )
            p += 8
        while p < p1:
            s0 = xt[indices[p], r0:r1]
            w0 = data[p]
            for r in range(n):
                o[r] += w0 * s0[r]
            p += 1


@njit(parallel=True, cache=True, fastmath=True)
def _event_csc(x, colptr, rowidx, data, out):
    """``out[r, :] = sum_{i: x[r,i] != 0} x[r, i] * W[:, i]`` through the CSC non-zeros of W."""
    R, K = x.shape
    N = out.shape[1]
    for r in prange(R):
        o = out[r]
        for j in range(N):
            o[j] = 0.0
        xr = x[r]
        for i in range(K):
            v = xr[i]
            if v != 0.0:
                for p in range(colptr[i], colptr[i + 1]):
                    o[rowidx[p]] += v * data[p]


@njit(parallel=True, cache=True, fastmath=True)
def _conv_taps(xp, co_ptr, t_ci, t_off, t_w, out):
    """Weight-sparse direct conv on flat padded planes: ``out[n, co, l] = sum_t w_t xp[n, ci_t, off_t + l]``.

    Eight taps per pass over the output plane; slices keep the inner loop vectorisable.
    """
    N, Cout, L = out.shape
    for n in prange(N):
        xn = xp[n]
        for co in range(Cout):
            o = out[n, co]
            o[:] = 0.0
            t = co_ptr[co]
            t1 = co_ptr[co + 1]
            while t + 8 <= t1:
                s0 = xn[t_ci[t], t_off[t] : t_off[t] + L]
                s1 = xn[t_ci[t + 1], t_off[t + 1] : t_off[t + 1] + L]
                s2 = xn[t_ci[t + 2], t_off[t + 2] : t_off[t + 2] + L]
                s3 = xn[t_ci[t + 3], t_off[t + 3] : t_off[t + 3] + L]
                s4 = xn[t_ci[t + 4], t_off[t + 4] : t_off[t + 4] + L]
                s5 = xn[t_ci[t + 5], t_off[t + 5] : t_off[t + 5] + L]
                s6 = xn[t_ci[t + 6], t_off[t + 6] : t_off[t + 6] + L]
                s7 = xn[t_ci[t + 7], t_off[t + 7] : t_off[t + 7] + L]
                w0, w1, w2, w3 = t_w[t], t_w[t + 1], t_w[t + 2], t_w[t + 3]
                w4, w5, w6, w7 = t_w[t + 4], t_w[t + 5], t_w[t + 6], t_w[t + 7]
                for q in range(L):
                    o[q] += (w0 * s0[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q]) + (
                        w4 * s4[q] + w5 * s5[q] + w6 * s6[q] + w7 * s7[q]
                    )
                t += 8
            while t < t1:
                s0 = xn[t_ci[t], t_off[t] : t_off[t] + L]
                w0 = t_w[t]
                for q in range(L):
                    o[q] += w0 * s0[q]
                t += 1


@njit(parallel=True, cache=True, fastmath=True)
def _conv_events(x, pad, Wp, ci_ptr, t_co, t_off, t_w, out):
    """Event-driven conv: every non-zero input pixel scatters through the non-zero taps of its channel."""
    N, Cin, H, W = x.shape
    L = out.shape[2]
    Cout = out.shape[1]
    for n in prange(N):
        for co in range(Cout):
            for q in range(L):
                out[n, co, q] = 0.0
        for ci in range(Cin):
            t0 = ci_ptr[ci]
            t1 = ci_ptr[ci + 1]
            if t0 == t1:
                continue
            for y in range(H):
                base = (y + pad) * Wp + pad
                for xx in range(W):
                    v = x[n, ci, y, xx]
                    if v != 0.0:
                        q = base + xx
                        for t in range(t0, t1):
                            o = q - t_off[t]
                            if o >= 0 and o < L:
                                out[n, t_co[t], o] += v * t_w[t]


_LIF_CHUNK = 512


@njit(parallel=True, cache=True, fastmath=False)
def _lif_infer(x, beta, alpha, thr, reset_zero, out):
    """Forward-only LIF over ``x[T, M]`` -> spikes ``out[T, M]``.

    The same arithmetic as :func:`sparsespike.kernels.cpu.lif_forward` (float64 state, no
    fast-math), so the spikes are bit-identical, without the surrogate, reset factors and
    activity counts that training needs.
    """
    T, M = x.shape
    nchunk = (M + _LIF_CHUNK - 1) // _LIF_CHUNK
    a = alpha if alpha >= 0.0 else 0.0
    z = 1.0 if reset_zero else 0.0
    for c in prange(nchunk):
        lo = c * _LIF_CHUNK
        hi = min(M, lo + _LIF_CHUNK)
        n = hi - lo
        u = np.zeros(n, dtype=np.float64)
        cur = np.zeros(n, dtype=np.float64)
        for t in range(T):
            xt = x[t, lo:hi]
            st = out[t, lo:hi]
            for k in range(n):
                cur[k] = a * cur[k] + xt[k]
                v = beta * u[k] + cur[k]
                s = 1.0 if v - thr > 0.0 else 0.0
                st[k] = s
                u[k] = v - s * (z * v + (1.0 - z) * thr)


def lif_inference(current: torch.Tensor, p) -> torch.Tensor:
    """Spikes of the LIF recurrence over time-major ``current[T, ...]``, inference only.

    Bit-identical to :func:`sparsespike.kernels.lif_recurrence`'s numba forward; falls back to
    it (under ``no_grad``) off CPU or for other dtypes.
    """
    if current.device.type != "cpu" or current.dtype not in (torch.float32, torch.float64):
        with torch.no_grad():
            return lif_recurrence(current, p)
    x = current.detach().reshape(current.shape[0], -1).contiguous()
    out = torch.empty_like(x)
    reset_zero = getattr(p.reset, "value", p.reset) == "zero"
    _lif_infer(
        x.numpy(),
        float(p.beta),
        -1.0 if p.alpha is None else float(p.alpha),
        float(p.threshold),
        reset_zero,
        out.numpy(),
    )
    return out.reshape(current.shape)


# ------------------------------------------------------------------------------------------------
# sparse modules
# ------------------------------------------------------------------------------------------------
def _csr(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz = w != 0
    indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(nz.sum(1), out=indptr[1:])
    rows, cols = np.nonzero(nz)
    return indptr, cols.astype(np.int32), np.ascontiguousarray(w[rows, cols])


def _time_it(fn: Callable[[], object], reps: int = 3) -> float:
    """Best-of-``reps`` process CPU time (all threads) after a warm-up call (numba compile).

    CPU time rather than wall-clock so that tuning on a shared machine is not decided by what
    other processes do; with one thread the two agree on an idle machine.
    """
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


class _SparseBase(nn.Module):
    """Common bookkeeping: the chosen kernel, the candidates' timings, weight density."""

    KERNELS: tuple[str, ...] = ("dense",)

    def _init_common(self, kernel: str) -> None:
        self.timings: dict[str, float] = {}
        self.set_kernel(kernel)

    def set_kernel(self, kernel: str) -> None:
        if kernel not in self.KERNELS and kernel != "auto":
            raise ValueError(f"{type(self).__name__}: kernel must be one of {self.KERNELS}, got {kernel!r}")
        self.kernel = self.default_kernel() if kernel == "auto" else kernel

    def default_kernel(self) -> str:
        return "dense"

    @torch.no_grad()
    def tune(self, x: torch.Tensor, reps: int = 3) -> str:
        """Time every kernel on ``x`` and keep the fastest (dense unless beaten by > 5 %)."""
        self.timings = {}
        for k in self.KERNELS:
            self.timings[k] = _time_it(lambda k=k: self.run(x, k), reps)
        best = min(self.timings, key=self.timings.get)
        if "dense" in self.timings and self.timings[best] > 0.95 * self.timings["dense"]:
            best = "dense"  # a sparse kernel must win by > 5 % (timing noise)
        self.kernel = best
        return self.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run(x, self.kernel)

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SparseLinear(_SparseBase):
    """``y = x W^T + b`` over ``x[..., K]`` with kernels ``dense | csr | event`` (module docstring).

    ``spiking=True`` makes the ``"dense"`` kernel :func:`synaptic_linear` (event-driven over
    binary inputs with dense weight columns), the path our spiking layers use by default.
    """

    KERNELS = ("dense", "csr", "event")

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, kernel: str = "auto", spiking: bool = False
    ) -> None:
        super().__init__()
        w = weight.detach().contiguous()
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features = w.shape
        self.spiking = spiking
        wn = w.numpy()
        self._csr = _csr(wn)
        self._csc = _csr(np.ascontiguousarray(wn.T))
        self.nnz = int(self._csr[0][-1])
        self.density = self.nnz / max(1, w.numel())
        self._init_common(kernel)

    def default_kernel(self) -> str:
        return "csr" if self.density < 0.3 else "dense"

    def _apply(self, fn, *args, **kwargs):  # keep the numpy copies in step with .double() etc.
        out = super()._apply(fn, *args, **kwargs)
        wn = self.weight.contiguous().numpy()
        self._csr = _csr(wn)
        self._csc = _csr(np.ascontiguousarray(wn.T))
        return out

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if kernel == "dense":
            if self.spiking:
                out = synaptic_linear(x2, self.weight, self.bias)
            else:
                out = nn.functional.linear(x2, self.weight, self.bias)
            return out.reshape(*lead, self.out_features)
        x2 = x2.to(self.weight.dtype)
        if kernel == "csr":
            xt = x2.t().contiguous()
            out_t = torch.empty(self.out_features, x2.shape[0], dtype=self.weight.dtype)
            indptr, indices, data = self._csr
            _spmm_csr(indptr, indices, data, xt.numpy(), out_t.numpy())
            out = out_t.t()
        elif kernel == "event":
            out = torch.empty(x2.shape[0], self.out_features, dtype=self.weight.dtype)
            colptr, rowidx, data = self._csc
            _event_csc(x2.contiguous().numpy(), colptr, rowidx, data, out.numpy())
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, density={self.density:.3f}, kernel={self.kernel!r}"


class SparseConv2d(_SparseBase):
    """2-D convolution over ``x[N, C, H, W]`` with kernels ``dense | taps | event``.

    Built from an ``nn.Conv2d`` with stride 1, dilation 1, groups 1 and zero padding (anything
    else only offers ``"dense"``).
    """

    KERNELS = ("dense", "taps", "event")

    def __init__(self, conv: nn.Conv2d, *, kernel: str = "auto") -> None:
        super().__init__()
        w = conv.weight.detach().contiguous()
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = (conv.stride, conv.padding, conv.dilation, conv.groups)
        self.out_channels, self.in_channels, kh, kw = w.shape
        self.kernel_size = (kh, kw)
        pad = conv.padding
        self.supported = (
            tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(pad, str)
            and pad[0] == pad[1]
            and kh == kw
        )
        if not self.supported:
            self.KERNELS = ("dense",)
        self.pad = int(pad[0]) if not isinstance(pad, str) else 0
        self.nnz = int((w != 0).sum())
        self.density = self.nnz / max(1, w.numel())
        self._geom: dict = {}
        self._build_taps()
        self._init_common(kernel)

    def _build_taps(self) -> None:
        self._taps_cache: dict[int, tuple] = {}

    def _taps(self, Wp: int):
        """Tap lists for plane width ``Wp``: by output channel (``taps``) and by input channel (``event``)."""
        if Wp in self._taps_cache:
            return self._taps_cache[Wp]
        w = self.weight.numpy()
        co, ci, dy, dx = np.nonzero(w)
        vals = w[co, ci, dy, dx]
        off = (dy * Wp + dx).astype(np.int64)
        # by output channel (already sorted by co, then ci, dy, dx)
        co_ptr = np.zeros(self.out_channels + 1, dtype=np.int64)
        np.cumsum(np.bincount(co, minlength=self.out_channels), out=co_ptr[1:])
        by_co = (co_ptr, ci.astype(np.int64), off, np.ascontiguousarray(vals))
        # by input channel
        order = np.lexsort((off, co, ci))
        ci_ptr = np.zeros(self.in_channels + 1, dtype=np.int64)
        np.cumsum(np.bincount(ci, minlength=self.in_channels), out=ci_ptr[1:])
        by_ci = (ci_ptr, co[order].astype(np.int64), off[order], np.ascontiguousarray(vals[order]))
        self._taps_cache[Wp] = (by_co, by_ci)
        return by_co, by_ci

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._taps_cache = {}
        return out

    def default_kernel(self) -> str:
        return "taps" if (self.supported and self.density < 0.5) else "dense"

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        if kernel == "dense" or not self.supported:
            return nn.functional.conv2d(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        x = x.to(self.weight.dtype).contiguous()
        N, C, H, W = x.shape
        k, p = self.kernel_size[0], self.pad
        Hp, Wp = H + 2 * p, W + 2 * p
        Ho, Wo = Hp - k + 1, Wp - k + 1
        L = Ho * Wp
        by_co, by_ci = self._taps(Wp)
        out = torch.empty(N, self.out_channels, L, dtype=x.dtype)
        if kernel == "taps":
            xp = torch.zeros(N, C, Hp * Wp + k, dtype=x.dtype)
            xp[:, :, : Hp * Wp].view(N, C, Hp, Wp)[:, :, p : p + H, p : p + W] = x
            co_ptr, t_ci, t_off, t_w = by_co
            _conv_taps(xp.numpy(), co_ptr, t_ci, t_off, t_w, out.numpy())
        elif kernel == "event":
            ci_ptr, t_co, t_off, t_w = by_ci
            _conv_events(x.numpy(), p, Wp, ci_ptr, t_co, t_off, t_w, out.numpy())
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
        y = out.view(N, self.out_channels, Ho, Wp)[..., :Wo]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.pad}, density={self.density:.3f}, kernel={self.kernel!r}"
        )


class SparseSpikingLinear(nn.Module):
    """Inference twin of :class:`SpikingLinear`: sparse synaptic input, same LIF recurrence."""

    emits_spikes = True

    def __init__(self, layer: SpikingLinear, kernel: str = "auto", fast_recurrence: bool = True) -> None:
        super().__init__()
        self.syn = SparseLinear(layer.weight, layer.bias, kernel=kernel, spiking=True)
        self.neuron, self.impl, self.b_th = layer.neuron, layer.impl, layer.b_th
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.fast_recurrence = fast_recurrence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_time_major(x, 3, (self.in_features,), type(self).__name__)
        with torch.no_grad():
            current = self.syn(x)
            if self.fast_recurrence:
                return lif_inference(current, self.neuron)
            return lif_recurrence(current, self.neuron, impl=self.impl, b_th=self.b_th)


class SparseSpikingConv2d(nn.Module):
    """Inference twin of :class:`SpikingConv2d`: :class:`SparseConv2d` over all ``T*B`` frames,
    then the LIF recurrence (:func:`lif_inference`)."""

    emits_spikes = True

    def __init__(self, layer: SpikingConv2d, kernel: str = "auto", fast_recurrence: bool = True) -> None:
        super().__init__()
        self.conv = SparseConv2d(layer.conv, kernel=kernel)
        self.neuron, self.impl, self.b_th = layer.neuron, layer.impl, layer.b_th
        self.in_channels = layer.in_channels
        self.fast_recurrence = fast_recurrence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise SpikeInputError(
                f"{type(self).__name__}: expected [T, B, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        T, B = x.shape[:2]
        with torch.no_grad():
            current = self.conv(x.reshape(T * B, *x.shape[2:]))
            current = current.reshape(T, B, *current.shape[1:])
            if self.fast_recurrence:
                return lif_inference(current, self.neuron)
            return lif_recurrence(current, self.neuron, impl=self.impl, b_th=self.b_th)


class SparseLeakyReadout(nn.Module):
    """Inference twin of :class:`LeakyReadout`."""

    emits_spikes = False

    def __init__(self, layer: LeakyReadout, kernel: str = "auto") -> None:
        super().__init__()
        self.syn = SparseLinear(layer.weight, layer.bias, kernel=kernel, spiking=True)
        self.beta, self.mode = layer.beta, layer.mode
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_time_major(x, 3, (self.in_features,), type(self).__name__)
        with torch.no_grad():
            v = leaky_integrate(self.syn(x), self.beta)
        if self.mode == "max":
            return v.max(0).values
        if self.mode == "mean":
            return v.mean(0)
        if self.mode == "sum":
            return v.sum(0)
        return v[-1]


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def _convert(m: nn.Module, kernel: str, fast_recurrence: bool = True) -> nn.Module | None:
    if isinstance(m, SpikingLinear):
        return SparseSpikingLinear(m, kernel, fast_recurrence)
    if isinstance(m, SpikingConv2d):
        return SparseSpikingConv2d(m, kernel, fast_recurrence)
    if isinstance(m, LeakyReadout):
        return SparseLeakyReadout(m, kernel)
    if type(m) is nn.Linear:
        return SparseLinear(m.weight, m.bias, kernel=kernel)
    if type(m) is nn.Conv2d:
        return SparseConv2d(m, kernel=kernel)
    return None


def sparse_modules(model: nn.Module) -> list[tuple[str, _SparseBase]]:
    """The sparse-weight modules (:class:`SparseLinear`, :class:`SparseConv2d`) of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _SparseBase)]


def sparse_inference_model(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    kernels: str = "auto",
    inplace: bool = False,
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
    reps: int = 3,
    fast_recurrence: bool = True,
) -> nn.Module:
    """Copy of a pruned ``model`` whose Linear/Conv2d layers run on their non-zero weights only.

    Args:
        model: any CPU model; L0 gates still attached are baked in first
            (:func:`~sparsespike.sparsity.connectivity.prune` on the copy). Replaced: our
            :class:`SpikingLinear`, :class:`LeakyReadout`, and ``nn.Linear`` / ``nn.Conv2d``
            anywhere (so :class:`SpikingConv2d` through its ``.conv``).
        example_input: a representative input; with ``kernels="auto"`` every layer times its
            candidate kernels on the input it sees in one forward of this example and keeps the
            fastest (``dense`` included, so a layer never gets slower than before).
        kernels: ``"auto"`` or one kernel name forced on every layer where it exists
            (``"dense"``, ``"csr"``/``"taps"`` = weight-sparse, ``"event"`` = event-driven).
        inplace: convert ``model`` itself instead of a deep copy.
        forward: how to call the model on ``example_input`` (default ``model(example_input)``).
        fast_recurrence: our spiking layers run the forward-only LIF kernel
            :func:`lif_inference` (bit-identical spikes, no surrogate/backward bookkeeping);
            ``False`` keeps the training kernel.

    Returns the converted model in eval mode; :func:`kernel_report` tells which kernel each layer
    uses and the timings measured.
    """
    from .sparsity.connectivity import gated_weights, prune

    m = model if inplace else copy.deepcopy(model)
    if gated_weights(m):
        prune(m)
    m.eval()
    if isinstance(m, (SpikingLinear, SpikingConv2d, LeakyReadout, nn.Linear, nn.Conv2d)):
        raise TypeError("sparse_inference_model: wrap a single layer in nn.Sequential first")
    forced = None if kernels == "auto" else kernels
    for parent in list(m.modules()):
        for cname, child in list(parent.named_children()):
            new = _convert(child, "auto", fast_recurrence)
            if new is None:
                continue
            if forced is not None:
                syn = getattr(new, "syn", None) or getattr(new, "conv", None) or new
                syn.set_kernel(forced if forced in syn.KERNELS else _alias(forced, syn))
            setattr(parent, cname, new)
    if forced is None and example_input is not None:
        captured: dict[int, torch.Tensor] = {}
        mods = [mod for _, mod in sparse_modules(m)]
        hooks = [mod.register_forward_pre_hook(lambda mod, args: captured.setdefault(id(mod), args[0])) for mod in mods]
        try:
            with torch.no_grad():
                forward(m, example_input) if forward is not None else m(example_input)
        finally:
            for h in hooks:
                h.remove()
        for mod in mods:
            if id(mod) in captured:
                mod.tune(captured[id(mod)], reps=reps)
    return m


def _alias(kernel: str, syn: _SparseBase) -> str:
    aliases = {"csr": "taps", "taps": "csr"}
    k = aliases.get(kernel, kernel)
    return k if k in syn.KERNELS else "dense"


def kernel_report(model: nn.Module) -> list[dict]:
    """Per sparse layer: name, weight density, chosen kernel, and tuning times (ms) if measured."""
    return [
        {
            "name": n,
            "type": type(mod).__name__,
            "density": mod.density,
            "kernel": mod.kernel,
            "timings_ms": {k: 1e3 * v for k, v in mod.timings.items()},
        }
        for n, mod in sparse_modules(model)
    ]


__all__ = [
    "SparseConv2d",
    "SparseSpikingConv2d",
    "lif_inference",
    "SparseLeakyReadout",
    "SparseLinear",
    "SparseSpikingLinear",
    "kernel_report",
    "sparse_inference_model",
    "sparse_modules",
]
