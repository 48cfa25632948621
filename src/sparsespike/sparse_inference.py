"""Inference with pruned (sparse) weights, so that CPU wall-clock follows the FLOP count.

After :func:`sparsespike.sparsity.connectivity.prune` a network has exact zeros in its weights,
but dense kernels (MKL/oneDNN matmul and convolution) still touch every weight. This module
swaps each Linear/Conv layer for a module that only visits non-zero weights (or only non-zero
inputs), choosing per layer among kernels (numba, with the innermost loops written as LLVM IR
through numba intrinsics, CPU):

Linear layers, ``y = x W^T + b`` over ``x[R, K]`` (``R`` = all time steps x batch):

* ``"dense"`` -- the original op (for spiking layers :func:`~sparsespike.kernels.synapse.synaptic_linear`,
  which is already event-driven over binary inputs with dense weight columns).
* ``"csr"`` -- weight-sparse SpMM ``y^T = W x^T`` with ``W`` in CSR and ``x^T`` dense: each output
  row ``j`` is computed in register tiles of up to 16 SIMD vectors (256 float32 lanes of ``R``) that
  stay in registers while all non-zeros of row ``j`` are accumulated (one broadcast weight and one
  vector load per vector FMA, no store until the row tile is done; the register-tiled SpMM of
  Elsen, Dukhan, Gale & Simonyan, "Fast Sparse ConvNets", CVPR 2020, sec. 4); work = ``nnz(W) x R``.
* ``"event"`` -- event-driven and weight-sparse: every non-zero input ``x[r, i]`` adds
  ``x[r, i] * w`` through the non-zero weights of column ``i`` (``W`` in CSC); work = SynOps,
  scalar.
* ``"event_vec"`` -- event-driven over the inputs, vectorised over the outputs: the non-zero
  inputs of row ``r`` are gathered, then register tiles of ``y[r, :]`` accumulate
  ``x[r, i] * W^T[i, :]`` (dense rows of ``W^T``); work = non-zero inputs x ``N``, whatever the
  weight density.

Conv2d layers (stride 1, dilation 1, groups 1, integer zero padding; others stay dense) use the
"flat padded plane" (Georganas et al., "Anatomy of high-performance deep learning convolutions on
SIMD architectures", SC'18, direct convolution): every input plane is zero-padded and flattened
with row stride ``Wq = max(W + pw, Wo)`` -- the right padding of a row *is* the left padding of the
next one, so 5x5 "same" convolutions on 14x14 planes use rows of 16 -- and kernel tap
``(dy, dx)`` becomes the constant offset ``dy*Wq + dx``: output ``q = yo*Wq + xo`` reads input
``q + dy*Wq + dx`` (columns ``xo >= Wo`` are computed and discarded).

* ``"dense"`` -- ``torch.nn.functional.conv2d`` (oneDNN);
* ``"taps"`` -- weight-sparse direct convolution: for output channel ``co`` every non-zero tap
  ``(ci, dy, dx, w)`` is one FMA of ``w`` with the input plane ``ci`` shifted by its offset, done on
  register tiles of the output plane (as ``csr``: tap list = CSR row, the shifted plane = the dense
  operand); work = ``nnz(W) x Ho x Wq`` per frame;
* ``"event"`` -- event-driven scatter: each non-zero input pixel of channel ``ci`` adds
  ``v * w`` at ``q - offset`` for every non-zero tap of ``ci``; work = SynOps, scalar;
* ``"event_vec"`` -- event-driven, vectorised over output channels: channels-last accumulator,
  each non-zero input pixel adds ``v * W[:, ci, dy, dx]`` (a dense vector of all output channels)
  for every kernel position of ``ci`` with a non-zero weight; work = non-zero inputs x kernel
  positions x ``Cout``. Pays for binary, sparse inputs with few channels (the first layer).

For our spiking conv layers the conv kernels are fused with the LIF recurrence and a following
:class:`~sparsespike.layers.SeqPool2d`: each worker takes one sample ``b`` and runs ``t = 0..T-1``
frame by frame -- convolve the frame into an L1/L2-resident plane buffer, update the membrane
(float64 state, same arithmetic as the training kernel), pool the spikes, write only the pooled
spikes. The conv output never goes to memory. With the ``"dense"`` kernel the oneDNN output of all
frames is run through the same fused LIF + pool kernel, so dense and sparse twins share every
non-synaptic cost.

``kernels="auto"`` with an ``example_input`` times every candidate on the input the layer actually
sees (captured by hooks on one forward) and keeps the fastest; spiking conv layers are timed as a
whole (conv + LIF + pool). Without an example it uses weight-density rules. Outputs equal the dense
model's up to floating-point summation order (bit-identical spikes in float64; in float32 a
membrane within ~1e-7 of threshold can flip). Inference only: the sparse modules run under
``no_grad``.

The LIF recurrence (README convention; Yin et al. eqs. 3-4 for ``reset="zero"``):
``I[t] = alpha I[t-1] + x[t]`` (``I = x`` without a synaptic current), ``V[t] = beta U[t-1] + I[t]``,
``S[t] = H(V[t] - thr)``, ``U[t] = V[t] - S[t] thr`` (subtract) or ``V[t] (1 - S[t])`` (zero).

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
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import nn

from .errors import SpikeInputError
from .kernels import lif_recurrence
from .kernels.simd import _AXPY_BYTES, axpy, emit_axpy, fma_fn, splat, vec_type
from .kernels.synapse import synaptic_linear
from .layers import (
    LeakyReadout,
    SeqPool2d,
    SpikingConv2d,
    SpikingLinear,
    check_time_major,
    leaky_integrate,
    reduce_over_time,
)

# ------------------------------------------------------------------------------------------------
# register-tile FMA (LLVM IR through a numba intrinsic)
# ------------------------------------------------------------------------------------------------
_VEC_BYTES = 64  # one 512-bit vector; LLVM splits it on machines with narrower SIMD
_MAX_NV = 16  # at most 16 accumulator vectors per tile (+ broadcast: fits AVX-512's 32 registers)


def _make_tile(nv: int):
    """Intrinsic ``tile(xp, toff, tw, t0, t1, base, out, obase, init)``:

    ``out[obase : obase + nv*lanes] = init + sum_{t0 <= t < t1} tw[t] * xp[toff[t] + base : ... + nv*lanes]``

    with ``nv`` SIMD accumulators (``lanes`` = 16 float32 or 8 float64) that stay in registers
    for the whole sum: per term one scalar broadcast and ``nv`` unaligned vector loads + FMAs
    (``llvm.fma``), one store per vector at the end. numba/LLVM do not produce this from a Python
    loop (a slice-based loop reloads and stores the output every few terms and needs runtime
    alias checks), hence the explicit IR. 1-D arrays of one float dtype, ``toff`` int64; no
    bounds checks -- callers guarantee ``toff[t] + base + nv*lanes <= len(xp)``.
    """

    @intrinsic
    def tile(typingctx, xp, toff, tw, t0, t1, base, out, obase, init):
        arrays = (xp, toff, tw, out)
        if not all(isinstance(a, types.Array) and a.ndim == 1 for a in arrays):
            return None
        if xp.dtype not in (types.float32, types.float64) or tw.dtype != xp.dtype or out.dtype != xp.dtype:
            return None
        if toff.dtype != types.int64:
            return None
        sig = types.void(xp, toff, tw, t0, t1, base, out, obase, init)

        def codegen(context, builder, signature, args):
            xa, oa, wa, t0v, t1v, basev, outa, obasev, initv = args
            at = signature.args
            xptr = context.make_array(at[0])(context, builder, xa).data
            offptr = context.make_array(at[1])(context, builder, oa).data
            wptr = context.make_array(at[2])(context, builder, wa).data
            outptr = context.make_array(at[6])(context, builder, outa).data
            dt = at[0].dtype
            vty, lanes, align = vec_type(context, dt, _VEC_BYTES)
            i64 = ir.IntType(64)
            fma = fma_fn(builder, vty)
            init = context.cast(builder, initv, at[8], dt)
            accs = [cgutils.alloca_once_value(builder, splat(builder, init, vty)) for _ in range(nv)]
            t0c = context.cast(builder, t0v, at[3], types.int64)
            t1c = context.cast(builder, t1v, at[4], types.int64)
            basec = context.cast(builder, basev, at[5], types.int64)
            obasec = context.cast(builder, obasev, at[7], types.int64)
            with cgutils.for_range(builder, builder.sub(t1c, t0c)) as loop:
                t = builder.add(t0c, loop.index)
                off = builder.add(builder.load(builder.gep(offptr, [t])), basec)
                wv = splat(builder, builder.load(builder.gep(wptr, [t])), vty)
                p = builder.gep(xptr, [off])
                for j in range(nv):
                    pj = builder.bitcast(builder.gep(p, [ir.Constant(i64, j * lanes)]), vty.as_pointer())
                    xv = builder.load(pj, align=align, typ=vty)
                    builder.store(builder.call(fma, [wv, xv, builder.load(accs[j])]), accs[j])
            po = builder.gep(outptr, [obasec])
            for j in range(nv):
                pj = builder.bitcast(builder.gep(po, [ir.Constant(i64, j * lanes)]), vty.as_pointer())
                builder.store(builder.load(accs[j]), pj, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_TILES = tuple(_make_tile(n) for n in range(1, _MAX_NV + 1))
(_tile1, _tile2, _tile3, _tile4, _tile5, _tile6, _tile7, _tile8,
 _tile9, _tile10, _tile11, _tile12, _tile13, _tile14, _tile15, _tile16) = _TILES  # fmt: skip


@njit(cache=True)
def _tile(nv, xp, toff, tw, t0, t1, base, out, obase, init):
    """Dispatch to the ``nv``-vector register tile (``1 <= nv <= 16``).

    Written out branch by branch on purpose: each tile is a separate numba intrinsic with a
    compile-time tile width, and numba cannot call an element of a tuple of distinct functions
    by a run-time index, so a lookup table is not available inside ``@njit`` code.
    """
    if nv >= 9:
        if nv >= 16:
            _tile16(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 15:
            _tile15(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 14:
            _tile14(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 13:
            _tile13(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 12:
            _tile12(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 11:
            _tile11(xp, toff, tw, t0, t1, base, out, obase, init)
        elif nv == 10:
            _tile10(xp, toff, tw, t0, t1, base, out, obase, init)
        else:
            _tile9(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv >= 8:
        _tile8(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 7:
        _tile7(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 6:
        _tile6(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 5:
        _tile5(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 4:
        _tile4(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 3:
        _tile3(xp, toff, tw, t0, t1, base, out, obase, init)
    elif nv == 2:
        _tile2(xp, toff, tw, t0, t1, base, out, obase, init)
    else:
        _tile1(xp, toff, tw, t0, t1, base, out, obase, init)


def _make_scatter(nv: int):
    """Intrinsic ``scatter(v, q, off, wb, e0, e1, w, out, L, Cp)``: for every ``e0 <= e < e1`` with
    ``0 <= q - off[e] < L``: ``out[(q - off[e])*Cp + j] += v * w[wb[e] + j]`` for ``j < nv*lanes``
    (32-byte vectors, see ``_AXPY_BYTES``). One input event through the kernel positions of its
    channel; a tight loop without numba's index wrap-around and register spills."""

    @intrinsic
    def scatter(typingctx, v, q, off, wb, e0, e1, w, out, L, Cp):
        arrs = (off, wb, w, out)
        if not all(isinstance(a, types.Array) and a.ndim == 1 for a in arrs):
            return None
        if off.dtype != types.int64 or wb.dtype != types.int64:
            return None
        if w.dtype not in (types.float32, types.float64) or out.dtype != w.dtype:
            return None
        sig = types.void(v, q, off, wb, e0, e1, w, out, L, Cp)

        def codegen(context, builder, signature, args):
            at = signature.args

            def i(k):
                return context.cast(builder, args[k], at[k], types.int64)

            offp = context.make_array(at[2])(context, builder, args[2]).data
            wbp = context.make_array(at[3])(context, builder, args[3]).data
            wp = context.make_array(at[6])(context, builder, args[6]).data
            op = context.make_array(at[7])(context, builder, args[7]).data
            dt = at[6].dtype
            vty, _, align = vec_type(context, dt, _AXPY_BYTES)
            vvec = splat(builder, context.cast(builder, args[0], at[0], dt), vty)
            fma = fma_fn(builder, vty)
            q, e0, e1, L, Cp = i(1), i(4), i(5), i(8), i(9)
            with cgutils.for_range(builder, builder.sub(e1, e0)) as loop:
                e = builder.add(e0, loop.index)
                o = builder.sub(q, builder.load(builder.gep(offp, [e])))
                inside = builder.icmp_unsigned("<", o, L)  # 0 <= o < L
                with builder.if_then(inside, likely=True):
                    ps = builder.gep(wp, [builder.load(builder.gep(wbp, [e]))])
                    po = builder.gep(op, [builder.mul(o, Cp)])
                    emit_axpy(builder, fma, vvec, ps, po, nv, vty, align)
            return context.get_dummy_value()

        return sig, codegen

    return scatter


_scatter2, _scatter4, _scatter6, _scatter8 = (_make_scatter(n) for n in (2, 4, 6, 8))


@njit(cache=True)
def _aligned_empty(n, like):
    """``np.empty(n)`` of ``like``'s dtype whose data starts on a 64-byte (cache line) boundary."""
    lanes = 64 // like.itemsize
    raw = np.empty(n + lanes, dtype=like.dtype)
    off = ((-raw.ctypes.data) % 64) // like.itemsize
    return raw[off : off + n]


def _make_pool4(use_max: bool):
    """Intrinsic ``pool4(src, q0, q1, q2, q3, dst, d)``: one 64-byte vector
    ``dst[d + j] = ((src[q0+j] + src[q1+j]) + (src[q2+j] + src[q3+j])) * 0.25`` (or the maximum):
    2x2 pooling of channels-last spikes, exact for 0/1 values."""

    @intrinsic
    def pool4(typingctx, src, q0, q1, q2, q3, dst, d):
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == 1 and dst.ndim == 1):
            return None
        if src.dtype not in (types.float32, types.float64) or dst.dtype != src.dtype:
            return None
        sig = types.void(src, q0, q1, q2, q3, dst, d)

        def codegen(context, builder, signature, args):
            at = signature.args
            sptr = context.make_array(at[0])(context, builder, args[0]).data
            dptr = context.make_array(at[5])(context, builder, args[5]).data
            dt = at[0].dtype
            lanes = _VEC_BYTES * 8 // dt.bitwidth
            vty = ir.VectorType(context.get_value_type(dt), lanes)
            align = dt.bitwidth // 8

            def load(i):
                q = context.cast(builder, args[i], at[i], types.int64)
                return builder.load(builder.bitcast(builder.gep(sptr, [q]), vty.as_pointer()), align=align, typ=vty)

            a, b, c, e = (load(i) for i in (1, 2, 3, 4))
            if use_max:
                fmax = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vty, [vty, vty]), f"llvm.maxnum.v{lanes}f{dt.bitwidth}"
                )
                r = builder.call(fmax, [builder.call(fmax, [a, b]), builder.call(fmax, [c, e])])
            else:
                quarter = ir.Constant(vty, [0.25] * lanes)
                r = builder.fmul(builder.fadd(builder.fadd(a, b), builder.fadd(c, e)), quarter)
            dq = context.cast(builder, args[6], at[6], types.int64)
            builder.store(r, builder.bitcast(builder.gep(dptr, [dq]), vty.as_pointer()), align=align)
            return context.get_dummy_value()

        return sig, codegen

    return pool4


_pool4_avg, _pool4_max = _make_pool4(False), _make_pool4(True)


def _lanes(dtype: torch.dtype) -> int:
    return _VEC_BYTES // torch.empty((), dtype=dtype).element_size()


def _choose_tiles(n: int, lanes: int) -> tuple[int, int]:
    """``(nv, padded length)`` for a row of ``n`` elements: tiles of ``nv`` vectors of ``lanes``.

    Cost model ``n_tiles * (nv + 2.5)``: each tile pays ``nv`` vector FMAs per term plus about
    2.5 FMAs' worth of per-term overhead (index/weight loads, broadcast, loop); measured on
    Zen 4, 4-vector tiles reach ~75 % of the rate of 7-8-vector tiles.
    """
    nz = max(1, -(-n // lanes))
    best = None
    for nv in range(1, _MAX_NV + 1):
        ntile = -(-nz // nv)
        cost = ntile * (nv + 2.5)
        if best is None or cost < best[0] - 1e-9 or (abs(cost - best[0]) <= 1e-9 and nv > best[1]):
            best = (cost, nv, ntile)
    return best[1], best[2] * best[1] * lanes


# ------------------------------------------------------------------------------------------------
# linear kernels
# ------------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _spmm_tiles(indptr, toff, data, xt, bias, out_t, Rp, nv, lanes):
    """``out_t[j, r] = bias[j] + sum_p data[p] * xt[indices[p], r]`` on flat ``[., Rp]`` buffers.

    ``toff[p] = indices[p] * Rp``; rows ``j`` x register tiles of ``nv*lanes`` columns in parallel.
    """
    N = indptr.shape[0] - 1
    TL = nv * lanes
    nb = Rp // TL
    for jb in prange(N * nb):
        j = jb // nb
        r0 = (jb % nb) * TL
        _tile(nv, xt, toff, data, indptr[j], indptr[j + 1], r0, out_t, j * Rp + r0, bias[j])


_EV_ROWS = 16  # rows per worker item of the event-tile kernel


@njit(parallel=True, cache=True)
def _event_tiles(x, wt, Np, nv, lanes, out):
    """``out[r, :] = sum_{i: x[r,i] != 0} x[r, i] * Wt[i, :] + Wt[K, :]`` (``Wt = [W^T; bias]``, flat ``[K+1, Np]``).

    Event-driven over the input (work = non-zero inputs x ``Np``, whatever the weight density)
    but vectorised over the outputs: the non-zeros of row ``r`` are gathered into a list
    (branch-free compaction) and each register tile of ``nv*lanes`` outputs accumulates them in
    registers (:func:`_make_tile`). The bias is the extra input ``K`` with value 1.
    """
    R, K = x.shape
    TL = nv * lanes
    nblk = (R + _EV_ROWS - 1) // _EV_ROWS
    for blk in prange(nblk):
        idx = np.empty(K + 1, dtype=np.int64)
        val = np.empty(K + 1, dtype=x.dtype)
        for r in range(blk * _EV_ROWS, min(R, (blk + 1) * _EV_ROWS)):
            xr = x[r]
            n = 0
            for i in range(K):
                v = xr[i]
                idx[n] = i * Np
                val[n] = v
                n += 1 if v != 0.0 else 0
            idx[n] = K * Np
            val[n] = 1.0
            n += 1
            for j0 in range(0, Np, TL):
                _tile(nv, wt, idx, val, 0, n, j0, out, r * Np + j0, 0.0)


@njit(parallel=True, cache=True, fastmath={"contract", "reassoc", "nsz", "arcp"})  # no nnan: a NaN input
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


# ------------------------------------------------------------------------------------------------
# conv kernels, fused with LIF and pooling
# ------------------------------------------------------------------------------------------------
@njit(cache=True)
def _lif_step(cur, u, isyn, spk, n, a, beta, thr, z, use_isyn):
    """One LIF step for ``n`` neurons: synaptic input ``cur``, state ``u`` (float64; ``isyn`` the
    synaptic current if ``use_isyn``), spikes to ``spk``. The arithmetic of
    :func:`sparsespike.kernels.cpu.lif_forward` (no fast-math), specialised per reset: for
    ``zero`` ``u = v - s*(v + 0*thr)`` is ``0`` or ``v``, for ``subtract`` ``v - thr`` or ``v`` --
    equal values (up to the sign of a zero), so the spikes are bit-identical."""
    if use_isyn:
        for k in range(n):
            c = a * isyn[k] + cur[k]
            isyn[k] = c
            v = beta * u[k] + c
            s = 1.0 if v - thr > 0.0 else 0.0
            u[k] = v - s * (z * v + (1.0 - z) * thr)
            spk[k] = s
    elif z == 1.0:  # zero reset: u = v - s*(v + 0*thr), i.e. 0 or v (up to the sign of a zero)
        for k in range(n):
            v = beta * u[k] + cur[k]
            fire = v - thr > 0.0
            u[k] = 0.0 if fire else v
            spk[k] = 1.0 if fire else 0.0
    else:  # subtract reset: u = v - s*(0*v + thr)
        for k in range(n):
            v = beta * u[k] + cur[k]
            fire = v - thr > 0.0
            u[k] = v - thr if fire else v
            spk[k] = 1.0 if fire else 0.0


@njit(cache=True)
def _lif_pool_frame(cur, u, isyn, spk, a, beta, thr, z, use_isyn, Cout, Lp, Wq, Ho, Wo, mode, pk, pool_max, out, t, b):
    """LIF step for one frame held in ``cur[Cout*Lp]`` (planes of row stride ``Wq``), then emit.

    The update runs over the whole padded buffer (garbage columns included: they are finite and
    never leave it) so that it is one contiguous, vectorisable loop; float64 state and no
    fast-math, i.e. the arithmetic of :func:`sparsespike.kernels.cpu.lif_forward` (bit-identical
    spikes). ``mode`` 1 writes the spikes to ``out[t, b, co, y, x]``; mode 2 writes their
    ``pk x pk`` average (``pool_max``: maximum), floor mode, stride ``pk`` -- ``sum / pk^2`` as
    ``torch.nn.functional.avg_pool2d`` computes it, exact for binary spikes.
    """
    _lif_step(cur, u, isyn, spk, Cout * Lp, a, beta, thr, z, use_isyn)
    if mode == 1:
        ob = out[t, b].reshape(Cout * Ho * Wo)
        for co in range(Cout):
            for y in range(Ho):
                r = co * Lp + y * Wq
                o = (co * Ho + y) * Wo
                for xo in range(Wo):
                    ob[o + xo] = spk[r + xo]
        return
    Hq = Ho // pk
    Wr = Wo // pk
    div = pk * pk
    ob = out[t, b].reshape(Cout * Hq * Wr)
    if pk == 2:  # counts are exact, and /4 == *0.25 exactly
        for co in range(Cout):
            for py in range(Hq):
                r = co * Lp + 2 * py * Wq
                o = (co * Hq + py) * Wr
                s0 = spk[r : r + 2 * Wr]
                s1 = spk[r + Wq : r + Wq + 2 * Wr]
                d = ob[o : o + Wr]
                if pool_max:
                    for px in range(Wr):
                        d[px] = max(max(s0[2 * px], s0[2 * px + 1]), max(s1[2 * px], s1[2 * px + 1]))
                else:
                    for px in range(Wr):
                        d[px] = ((s0[2 * px] + s0[2 * px + 1]) + (s1[2 * px] + s1[2 * px + 1])) * 0.25
        return
    for co in range(Cout):
        for py in range(Hq):
            r = co * Lp + py * pk * Wq
            o = (co * Hq + py) * Wr
            for px in range(Wr):
                q = r + px * pk
                acc = spk[q]
                for i in range(pk):
                    for j in range(pk):
                        if i == 0 and j == 0:
                            continue
                        if pool_max:
                            acc = max(acc, spk[q + i * Wq + j])
                        else:
                            acc += spk[q + i * Wq + j]
                ob[o + px] = acc if pool_max else acc / div


@njit(parallel=True, cache=True)
def _conv_frames(
    x, kind, ph, pw, Wq, S, Lp, nv, lanes, Ho, Wo,
    co_ptr, t_off, t_w, ci_ptr, e_co, e_off, e_w, bias,
    mode, beta, alpha, thr, reset_zero, pk, pool_max, out,
):  # fmt: skip
    """Sparse 2-D convolution of the frames ``x[T, B, Cin, H, W]``, optionally fused with LIF + pooling.

    One worker per sample ``b`` runs ``t = 0..T-1``: the frame is copied into a zero-padded flat
    buffer (``Cin`` planes of stride ``S``, row stride ``Wq``), convolved into ``cur[Cout, Lp]``
    (``kind`` 0: register-tiled taps, per output channel the CSR list ``t_off``/``t_w`` of
    ``ci*S + dy*Wq + dx`` offsets; ``kind`` 1: event scatter, per input channel the list
    ``e_co``/``e_off``/``e_w``), then ``mode`` 0 writes the conv output ``out[t, b, co, y, x]``,
    modes 1/2 run :func:`_lif_pool_frame` (state kept per ``b`` across ``t``).
    """
    T, B, Cin, H, W = x.shape
    Cout = co_ptr.shape[0] - 1
    TL = nv * lanes
    Lv = Ho * Wq
    a = alpha if alpha >= 0.0 else 0.0
    use_isyn = alpha >= 0.0
    z = 1.0 if reset_zero else 0.0
    for b in prange(B):
        xp = _aligned_empty(Cin * S, x)
        xp[:] = 0.0
        cur = _aligned_empty(Cout * Lp, x)
        nst = Cout * Lp if mode != 0 else 1
        u = np.zeros(nst)
        isyn = np.zeros(nst if use_isyn else 1)
        spk = np.empty(nst, dtype=x.dtype)
        for t in range(T):
            xf = x[t, b].reshape(Cin * H * W)
            if kind == 0:
                for ci in range(Cin):
                    for y in range(H):
                        row = ci * S + (ph + y) * Wq + pw
                        src = (ci * H + y) * W
                        for xx in range(W):
                            xp[row + xx] = xf[src + xx]
                for co in range(Cout):
                    for q0 in range(0, Lp, TL):
                        _tile(nv, xp, t_off, t_w, co_ptr[co], co_ptr[co + 1], q0, cur, co * Lp + q0, bias[co])
            else:
                cur[:] = 0.0
                for ci in range(Cin):
                    e0 = ci_ptr[ci]
                    e1 = ci_ptr[ci + 1]
                    if e0 == e1:
                        continue
                    for y in range(H):
                        base = (ph + y) * Wq + pw
                        src = (ci * H + y) * W
                        for xx in range(W):
                            v = xf[src + xx]
                            if v != 0.0:
                                q = base + xx
                                for e in range(e0, e1):
                                    o = q - e_off[e]
                                    if o >= 0 and o < Lv:
                                        cur[e_co[e] * Lp + o] += v * e_w[e]
                for co in range(Cout):
                    bv = bias[co]
                    if bv != 0.0:
                        for q in range(co * Lp, co * Lp + Lv):
                            cur[q] += bv
            if mode == 0:
                ob = out[t, b].reshape(Cout * Ho * Wo)
                for co in range(Cout):
                    for y in range(Ho):
                        r = co * Lp + y * Wq
                        o = (co * Ho + y) * Wo
                        for xo in range(Wo):
                            ob[o + xo] = cur[r + xo]
            else:
                _lif_pool_frame(
                    cur, u, isyn, spk, a, beta, thr, z, use_isyn, Cout, Lp, Wq, Ho, Wo, mode, pk, pool_max, out, t, b
                )


@njit(parallel=True, cache=True)
def _conv_frames_vec(
    x, ph, pw, Wq, Ho, Wo, Cout, nvc, c_ptr, c_off, c_wb, wcl, bias_cp,
    mode, beta, alpha, thr, reset_zero, pk, pool_max, out,
):  # fmt: skip
    """Event-driven 2-D convolution vectorised over output channels, fused with LIF + pooling.

    Channels-last accumulator ``cur[q, c]`` (``q = yo*Wq + xo`` on the flat plane, ``Cp = nvc``
    vectors of channels): every non-zero input ``v`` at ``(ci, y, x)`` adds ``v * W[:, ci, dy, dx]``
    (a dense vector over output channels, ``wcl[c_wb[e]:]``) at ``q - (dy*Wq + dx)`` for each
    kernel position ``e`` of ``ci`` that has a non-zero weight (:func:`_make_scatter`). Work = non-zero
    inputs x kernel positions x ``Cp``, whatever the weight density inside a position: it pays
    for sparse inputs (binary spikes) and few channels. ``mode``/``out`` as :func:`_conv_frames`.
    """
    T, B, Cin, H, W = x.shape
    lanes = 64 // x.itemsize
    Cp = nvc * lanes
    Lq = Ho * Wq
    n = Lq * Cp
    a = alpha if alpha >= 0.0 else 0.0
    use_isyn = alpha >= 0.0
    z = 1.0 if reset_zero else 0.0
    Hq = Ho // pk
    Wr = Wo // pk
    for b in prange(B):
        cur = _aligned_empty(n, x)
        init = np.empty(n, dtype=x.dtype)
        for q in range(Lq):
            for c in range(Cp):
                init[q * Cp + c] = bias_cp[c]
        nst = n if mode != 0 else 1
        u = np.zeros(nst)
        isyn = np.zeros(nst if use_isyn else 1)
        spk = np.empty(nst, dtype=x.dtype)
        pooled = np.empty(Hq * Wr * Cp, dtype=x.dtype)
        for t in range(T):
            xf = x[t, b].reshape(Cin * H * W)
            for k in range(n):
                cur[k] = init[k]
            for ci in range(Cin):
                e0 = c_ptr[ci]
                e1 = c_ptr[ci + 1]
                if e0 == e1:
                    continue
                for y in range(H):
                    base = (ph + y) * Wq + pw
                    src = (ci * H + y) * W
                    for xx in range(W):
                        v = xf[src + xx]
                        if v != 0.0:
                            q = base + xx
                            if nvc == 1:  # 2 half vectors
                                _scatter2(v, q, c_off, c_wb, e0, e1, wcl, cur, Lq, Cp)
                            elif nvc == 2:
                                _scatter4(v, q, c_off, c_wb, e0, e1, wcl, cur, Lq, Cp)
                            elif nvc == 3:
                                _scatter6(v, q, c_off, c_wb, e0, e1, wcl, cur, Lq, Cp)
                            elif nvc == 4:
                                _scatter8(v, q, c_off, c_wb, e0, e1, wcl, cur, Lq, Cp)
                            else:
                                for e in range(e0, e1):
                                    o = q - c_off[e]
                                    if o >= 0 and o < Lq:
                                        axpy(2 * nvc, v, wcl, c_wb[e], cur, o * Cp)
            if mode == 0:
                ob = out[t, b].reshape(Cout * Ho * Wo)
                for co in range(Cout):
                    for y in range(Ho):
                        for xo in range(Wo):
                            ob[(co * Ho + y) * Wo + xo] = cur[(y * Wq + xo) * Cp + co]
                continue
            _lif_step(cur, u, isyn, spk, n, a, beta, thr, z, use_isyn)
            if mode == 1:
                ob = out[t, b].reshape(Cout * Ho * Wo)
                for co in range(Cout):
                    for y in range(Ho):
                        for xo in range(Wo):
                            ob[(co * Ho + y) * Wo + xo] = spk[(y * Wq + xo) * Cp + co]
                continue
            # pool in channels-last (vectorised over channels), then transpose the small result
            if pk == 2:
                for py in range(Hq):
                    for px in range(Wr):
                        d = (py * Wr + px) * Cp
                        q0 = (2 * py * Wq + 2 * px) * Cp
                        q1 = q0 + Wq * Cp
                        for c in range(0, Cp, lanes):
                            if pool_max:
                                _pool4_max(spk, q0 + c, q0 + Cp + c, q1 + c, q1 + Cp + c, pooled, d + c)
                            else:
                                _pool4_avg(spk, q0 + c, q0 + Cp + c, q1 + c, q1 + Cp + c, pooled, d + c)
            else:
                for py in range(Hq):
                    for px in range(Wr):
                        d = (py * Wr + px) * Cp
                        q = (py * pk * Wq + px * pk) * Cp
                        for c in range(Cp):
                            pooled[d + c] = spk[q + c]
                        for i in range(pk):
                            for j in range(pk):
                                if i == 0 and j == 0:
                                    continue
                                qq = q + (i * Wq + j) * Cp
                                if pool_max:
                                    for c in range(Cp):
                                        pooled[d + c] = max(pooled[d + c], spk[qq + c])
                                else:
                                    for c in range(Cp):
                                        pooled[d + c] += spk[qq + c]
                if not pool_max:
                    div = pk * pk
                    for k in range(Hq * Wr * Cp):
                        pooled[k] = pooled[k] / div
            ob = out[t, b].reshape(Cout * Hq * Wr)
            HW = Hq * Wr
            for co in range(Cout):
                dst = ob[co * HW : (co + 1) * HW]
                for p in range(HW):
                    dst[p] = pooled[p * Cp + co]


@njit(parallel=True, cache=True)
def _lif_pool_frames(cur5, beta, alpha, thr, reset_zero, pk, pool_max, out):
    """:func:`_lif_pool_frame` over a precomputed synaptic input ``cur5[T, B, C, Ho, Wo]``, one worker per ``b``."""
    T, B, C, Ho, Wo = cur5.shape
    M = Ho * Wo
    a = alpha if alpha >= 0.0 else 0.0
    use_isyn = alpha >= 0.0
    z = 1.0 if reset_zero else 0.0
    mode = 2 if pk > 1 else 1
    for b in prange(B):
        u = np.zeros(C * M)
        isyn = np.zeros(C * M if use_isyn else 1)
        spk = np.empty(C * M, dtype=cur5.dtype)
        for t in range(T):
            _lif_pool_frame(
                cur5[t, b].ravel(), u, isyn, spk, a, beta, thr, z, use_isyn,
                C, M, Wo, Ho, Wo, mode, pk, pool_max, out, t, b,
            )  # fmt: skip


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


def _lif_args(p) -> tuple[float, float, float, bool]:
    """``(beta, alpha or -1, threshold, reset_zero)`` of :class:`~sparsespike.neurons.LIFParams`."""
    return (
        float(p.beta),
        -1.0 if p.alpha is None else float(p.alpha),
        float(p.threshold),
        getattr(p.reset, "value", p.reset) == "zero",
    )


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
    _lif_infer(x.numpy(), *_lif_args(p), out.numpy())
    return out.reshape(current.shape)


def lif_pool_inference(current: torch.Tensor, p, pool: int = 1, mode: str = "avg") -> torch.Tensor:
    """LIF spikes of ``current[T, B, C, H, W]`` followed by ``pool x pool`` pooling of every frame.

    Equals ``SeqPool2d(pool, mode)(lif_recurrence(current, p))`` exactly (spikes bit-identical,
    pooled values are ``count / pool^2``) without writing the full spike tensor.
    """
    if current.dim() != 5:
        raise SpikeInputError(f"lif_pool_inference: expected [T, B, C, H, W], got shape {tuple(current.shape)}")
    if current.device.type != "cpu" or current.dtype not in (torch.float32, torch.float64):
        with torch.no_grad():
            s = lif_recurrence(current, p)
            return s if pool == 1 else SeqPool2d(pool, mode)(s)
    x = current.detach().contiguous()
    T, B, C, H, W = x.shape
    out = torch.empty(T, B, C, H // pool, W // pool, dtype=x.dtype)
    _lif_pool_frames(x.numpy(), *_lif_args(p), int(pool), mode == "max", out.numpy())
    return out


# ------------------------------------------------------------------------------------------------
# sparse modules
# ------------------------------------------------------------------------------------------------
def _csr(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz = w != 0
    indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(nz.sum(1), out=indptr[1:])
    rows, cols = np.nonzero(nz)
    return indptr, cols.astype(np.int64), np.ascontiguousarray(w[rows, cols])


def _time_kernels(fns: dict[str, Callable[[], object]], reps: int = 3) -> dict[str, float]:
    """Best-of-``reps`` process CPU time (s) of each candidate, measured round-robin.

    One untimed warm-up call each (numba compile / cache load), then ``reps`` interleaved rounds,
    so that a change of machine load hits every candidate alike; after the first round a
    candidate slower than 4x the fastest is dropped (its one time is kept). CPU time rather than
    wall-clock so that tuning on a shared machine is not decided by what other processes do.
    """
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    live = list(fns)
    for r in range(max(1, reps)):
        for k in live:
            t0 = time.process_time()
            fns[k]()
            best[k] = min(best[k], time.process_time() - t0)
        if r == 0:
            fastest = min(best.values())
            live = [k for k in live if best[k] <= 4.0 * fastest]
    return best


def _pick(timings: dict[str, float]) -> str:
    """Fastest kernel; a sparse kernel must beat ``dense`` by > 5 % (timing noise)."""
    best = min(timings, key=timings.get)
    if "dense" in timings and timings[best] > 0.95 * timings["dense"]:
        best = "dense"
    return best


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """Contiguous copy of ``a`` starting on a 64-byte boundary (aligned vector loads)."""
    raw = np.empty(a.size + 64 // a.itemsize, dtype=a.dtype)
    off = ((-raw.ctypes.data) % 64) // a.itemsize
    out = raw[off : off + a.size].reshape(a.shape)
    out[...] = a
    return out


class _SparseBase(nn.Module):
    """Common bookkeeping: the chosen kernel, the candidates' timings, weight density."""

    inference_twin = True  # metrics / count_ops refuse it (count the source model)

    KERNELS: tuple[str, ...] = ("dense",)

    def _init_common(self, kernel: str) -> None:
        self.timings: dict[str, float] = {}
        self._stamp = self._weights_stamp()
        self.set_kernel(kernel)

    def _weights_stamp(self) -> tuple:
        """Version counters and storage of ``weight``/``bias``: ``load_state_dict`` and in-place
        edits change them without ``_apply``, and the sparse kernels run on copies built from
        them (CSR/CSC tables, tap lists), which must then be rebuilt."""
        return tuple((t._version, t.data_ptr()) if t is not None else None for t in (self.weight, self.bias))

    def _refresh(self) -> None:
        """Recompute what is derived from ``weight`` (subclasses add their kernel tables)."""
        self.nnz = int((self.weight != 0).sum())
        self.density = self.nnz / max(1, self.weight.numel())

    def _apply(self, fn, *args, **kwargs):  # keep the derived tables in step with .double() etc.
        out = super()._apply(fn, *args, **kwargs)
        self._refresh()
        return out

    def _fresh(self) -> None:
        stamp = self._weights_stamp()
        if stamp != self._stamp:
            self._refresh()
            self._stamp = self._weights_stamp()

    def set_kernel(self, kernel: str) -> None:
        if kernel not in self.KERNELS and kernel != "auto":
            raise ValueError(f"{type(self).__name__}: kernel must be one of {self.KERNELS}, got {kernel!r}")
        self.kernel = self.default_kernel() if kernel == "auto" else kernel

    def default_kernel(self) -> str:
        return "dense"

    @torch.no_grad()
    def tune(self, x: torch.Tensor, reps: int = 3) -> str:
        """Time every kernel on ``x`` and keep the fastest (dense unless beaten by > 5 %)."""
        self._fresh()
        self.timings = _time_kernels({k: (lambda k=k: self.run(x, k)) for k in self.KERNELS}, reps)
        self.kernel = _pick(self.timings)
        return self.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self._fresh()
            return self.run(x, self.kernel)

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SparseLinear(_SparseBase):
    """``y = x W^T + b`` over ``x[..., K]`` with kernels ``dense | csr | event | event_vec`` (module docstring).

    ``spiking=True`` makes the ``"dense"`` kernel :func:`synaptic_linear` (event-driven over
    binary inputs with dense weight columns), the path our spiking layers use by default.
    """

    KERNELS = ("dense", "csr", "event", "event_vec")

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, kernel: str = "auto", spiking: bool = False
    ) -> None:
        super().__init__()
        w = weight.detach().contiguous()
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features = w.shape
        self.spiking = spiking
        self._refresh()
        self._init_common(kernel)

    def _refresh(self) -> None:
        self._build()
        super()._refresh()

    def _build(self) -> None:
        if self.weight.dtype not in (torch.float32, torch.float64):  # e.g. bfloat16: dense kernel only
            self._csr = self._csc = self._wt = None
            return
        wn = self.weight.contiguous().numpy()
        self._csr = _csr(wn)
        self._csc = _csr(np.ascontiguousarray(wn.T))
        b = np.zeros(self.out_features, dtype=wn.dtype) if self.bias is None else self.bias.numpy()
        self._bias_np = np.ascontiguousarray(b.astype(wn.dtype))
        self._toff: dict[int, np.ndarray] = {}
        self._wt = None  # [W^T; bias] padded to whole register tiles, built on first use

    def _wt_tiles(self) -> tuple[np.ndarray, int, int]:
        if self._wt is None:
            lanes = _lanes(self.weight.dtype)
            nv, Np = _choose_tiles(self.out_features, lanes)
            wt = np.zeros((self.in_features + 1, Np), dtype=self._bias_np.dtype)
            wt[: self.in_features, : self.out_features] = self.weight.numpy().T
            wt[self.in_features, : self.out_features] = self._bias_np
            self._wt = (wt.reshape(-1), nv, Np)
        return self._wt

    def default_kernel(self) -> str:
        return "csr" if self.density < 0.3 else "dense"

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if kernel == "dense" or self.weight.dtype not in (torch.float32, torch.float64):
            if self.spiking:
                out = synaptic_linear(x2, self.weight, self.bias)
            else:
                out = nn.functional.linear(x2, self.weight, self.bias)
            return out.reshape(*lead, self.out_features)
        x2 = x2.to(self.weight.dtype)
        R = x2.shape[0]
        if kernel == "csr":
            lanes = _lanes(self.weight.dtype)
            nv, Rp = _choose_tiles(R, lanes)
            xt = torch.empty(self.in_features, Rp, dtype=x2.dtype)
            xt[:, :R] = x2.t()
            xt[:, R:] = 0.0
            toff = self._toff.get(Rp)
            if toff is None:
                toff = self._toff[Rp] = self._csr[1] * Rp
            out_t = torch.empty(self.out_features, Rp, dtype=x2.dtype)
            _spmm_tiles(self._csr[0], toff, self._csr[2], xt.view(-1).numpy(), self._bias_np,
                        out_t.view(-1).numpy(), Rp, nv, lanes)  # fmt: skip
            out = out_t[:, :R].t()
        elif kernel == "event_vec":
            wt, nv, Np = self._wt_tiles()
            buf = torch.empty(R, Np, dtype=x2.dtype)
            _event_tiles(x2.contiguous().numpy(), wt, Np, nv, _lanes(x2.dtype), buf.view(-1).numpy())
            out = buf[:, : self.out_features]
        elif kernel == "event":
            out = torch.empty(R, self.out_features, dtype=self.weight.dtype)
            colptr, rowidx, data = self._csc
            _event_csc(x2.contiguous().numpy(), colptr, rowidx, data, out.numpy())
            if self.bias is not None:
                out = out + self.bias
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, density={self.density:.3f}, kernel={self.kernel!r}"


class SparseConv2d(_SparseBase):
    """2-D convolution over ``x[N, C, H, W]`` with kernels ``dense | taps | event | event_vec``.

    Built from an ``nn.Conv2d`` with stride 1, dilation 1, groups 1 and integer zero padding in a
    float32/float64 dtype (anything else only offers ``"dense"``). Kernels of any ``kh x kw``,
    padding ``(ph, pw)`` of any size (module docstring for the layout).
    """

    KERNELS = ("dense", "taps", "event", "event_vec")

    def __init__(self, conv: nn.Conv2d, *, kernel: str = "auto") -> None:
        super().__init__()
        w = conv.weight.detach().contiguous()
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = (conv.stride, conv.padding, conv.dilation, conv.groups)
        # reflect / replicate / circular padding: pad first, as nn.Conv2d does (dense path only)
        self.padding_mode = conv.padding_mode
        self._mode_pad = tuple(conv._reversed_padding_repeated_twice) if conv.padding_mode != "zeros" else None
        self.out_channels, self.in_channels, kh, kw = w.shape
        self.kernel_size = (kh, kw)
        pad = conv.padding
        self.supported = (
            tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(pad, str)
            and w.dtype in (torch.float32, torch.float64)
        )
        if not self.supported:
            self.KERNELS = ("dense",)
        self.pad = (0, 0) if isinstance(pad, str) else (int(pad[0]), int(pad[1]))
        self._refresh()
        self._init_common(kernel)

    def _refresh(self) -> None:
        self._geom_cache: dict = {}  # tap lists per input size, rebuilt on next use
        super()._refresh()

    def default_kernel(self) -> str:
        return "taps" if (self.supported and self.density < 0.5) else "dense"

    def geometry(self, H: int, W: int) -> dict:
        """Flat-plane layout and tap lists for ``H x W`` input planes (cached).

        ``Wq = max(W + pw, Wo)`` (shared horizontal padding), ``Lp`` = ``Ho*Wq`` rounded up to
        whole register tiles, ``S`` = plane stride: room for the top padding, the image, the bottom
        padding and the reads of the last tile (``Lp + (kh-1)*Wq + kw-1``).
        """
        key = (H, W)
        g = self._geom_cache.get(key)
        if g is not None:
            return g
        kh, kw = self.kernel_size
        ph, pw = self.pad
        Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
        lanes = _lanes(self.weight.dtype)
        Wq = max(W + pw, Wo, 1)
        nv, Lp = _choose_tiles(Ho * Wq, lanes)
        need = max(Lp + (kh - 1) * Wq + kw - 1, (ph + H + ph) * Wq + pw)
        S = -(-need // lanes) * lanes
        wn = self.weight.numpy()
        co, ci, dy, dx = np.nonzero(wn)
        vals = np.ascontiguousarray(wn[co, ci, dy, dx])
        co_ptr = np.zeros(self.out_channels + 1, dtype=np.int64)
        np.cumsum(np.bincount(co, minlength=self.out_channels), out=co_ptr[1:])
        off = (dy * Wq + dx).astype(np.int64)
        order = np.lexsort((off, co, ci))  # by input channel, for the event scatter
        ci_ptr = np.zeros(self.in_channels + 1, dtype=np.int64)
        np.cumsum(np.bincount(ci, minlength=self.in_channels), out=ci_ptr[1:])
        b = np.zeros(self.out_channels, dtype=wn.dtype) if self.bias is None else self.bias.numpy().astype(wn.dtype)
        # channels-last tap columns for the vectorised event kernel: kernel positions (ci, dy, dx)
        # with any non-zero weight, each a dense vector over output channels padded to nvc vectors
        nvc = -(-self.out_channels // lanes)
        Cp = nvc * lanes
        cols = np.argwhere((wn != 0).any(axis=0))  # (ci, dy, dx), sorted by ci
        wcl = np.zeros((len(cols), Cp), dtype=wn.dtype)
        wcl[:, : self.out_channels] = wn[:, cols[:, 0], cols[:, 1], cols[:, 2]].T
        c_ptr = np.zeros(self.in_channels + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols[:, 0], minlength=self.in_channels), out=c_ptr[1:])
        bias_cp = np.zeros(Cp, dtype=wn.dtype)
        bias_cp[: self.out_channels] = b
        g = {
            "Ho": Ho, "Wo": Wo, "Wq": Wq, "Lp": Lp, "S": S, "nv": nv, "lanes": lanes,
            "co_ptr": co_ptr, "t_off": ci.astype(np.int64) * S + off, "t_w": vals,
            "ci_ptr": ci_ptr, "e_co": co[order].astype(np.int64), "e_off": off[order],
            "e_w": np.ascontiguousarray(vals[order]), "bias": np.ascontiguousarray(b),
            "nvc": nvc, "c_ptr": c_ptr, "c_off": (cols[:, 1] * Wq + cols[:, 2]).astype(np.int64),
            "c_wb": np.arange(len(cols), dtype=np.int64) * Cp, "wcl": _aligned_copy(wcl.reshape(-1)),
            "bias_cp": bias_cp,
        }  # fmt: skip
        self._geom_cache[key] = g
        return g

    def run_frames(
        self, x5: torch.Tensor, kernel: str, lif=None, pool: int = 1, pool_mode: str = "avg"
    ) -> torch.Tensor:
        """Sparse kernel (``taps``/``event``) on ``x5[T, B, Cin, H, W]``.

        ``lif=None``: the convolution ``[T, B, Cout, Ho, Wo]``. With ``lif``
        (:class:`~sparsespike.neurons.LIFParams`): the LIF spikes over ``T``, pooled by ``pool``.
        """
        x5 = x5.to(self.weight.dtype).contiguous()
        T, B, C, H, W = x5.shape
        if C != self.in_channels:  # the tap lists index the layer's channels: no bounds checks
            raise SpikeInputError(f"{type(self).__name__}: expected {self.in_channels} input channels, got {C}")
        g = self.geometry(H, W)
        Ho, Wo = g["Ho"], g["Wo"]
        if Ho < 1 or Wo < 1 or (lif is not None and (Ho < pool or Wo < pool)):
            raise SpikeInputError(
                f"{type(self).__name__}: a {self.kernel_size} kernel (padding {self.pad}) and pooling {pool} do not "
                f"fit a {H}x{W} input"
            )
        if lif is None:
            out = torch.empty(T, B, self.out_channels, Ho, Wo, dtype=x5.dtype)
            mode, largs, pool = 0, (1.0, -1.0, 1.0, False), 1
        else:
            mode = 2 if pool > 1 else 1
            out = torch.empty(T, B, self.out_channels, Ho // pool, Wo // pool, dtype=x5.dtype)
            largs = _lif_args(lif)
        if out.numel() == 0:
            return out
        if kernel == "event_vec":
            _conv_frames_vec(
                x5.numpy(), self.pad[0], self.pad[1], g["Wq"], Ho, Wo, self.out_channels, g["nvc"], g["c_ptr"],
                g["c_off"], g["c_wb"], g["wcl"], g["bias_cp"], mode, *largs, int(pool), pool_mode == "max", out.numpy(),
            )  # fmt: skip
            return out
        _conv_frames(
            x5.numpy(), 0 if kernel == "taps" else 1, self.pad[0], self.pad[1], g["Wq"], g["S"], g["Lp"], g["nv"],
            g["lanes"], Ho, Wo, g["co_ptr"], g["t_off"], g["t_w"], g["ci_ptr"], g["e_co"], g["e_off"],
            g["e_w"], g["bias"], mode, *largs, int(pool), pool_mode == "max", out.numpy(),
        )  # fmt: skip
        return out

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        if kernel == "dense" or not self.supported or self.weight.dtype not in (torch.float32, torch.float64):
            if self._mode_pad is not None:
                x = nn.functional.pad(x, self._mode_pad, mode=self.padding_mode)
                return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
            return nn.functional.conv2d(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        if kernel not in ("taps", "event", "event_vec"):
            raise ValueError(f"unknown kernel {kernel!r}")
        if x.dim() == 3:
            return self.run_frames(x[None, None], kernel)[0, 0]
        return self.run_frames(x[None], kernel)[0]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.pad}, density={self.density:.3f}, kernel={self.kernel!r}"
        )


class SparseSpikingLinear(nn.Module):
    """Inference twin of :class:`SpikingLinear`: sparse synaptic input, same LIF recurrence."""

    inference_twin = True  # metrics / count_ops refuse it (count the source model)

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
    """Inference twin of :class:`SpikingConv2d` (+ an optional following :class:`SeqPool2d`).

    ``kernel`` ``taps``/``event``: conv, LIF and pooling fused per frame (:func:`_conv_frames`);
    ``dense``: oneDNN over all ``T*B`` frames, then the fused LIF + pool kernel. ``pool`` is set by
    :func:`sparse_inference_model` when a ``SeqPool2d`` follows in an ``nn.Sequential`` (which
    is then replaced by ``nn.Identity``).
    """

    inference_twin = True  # metrics / count_ops refuse it (count the source model)

    emits_spikes = True

    def __init__(self, layer: SpikingConv2d, kernel: str = "auto", fast_recurrence: bool = True) -> None:
        super().__init__()
        self.conv = SparseConv2d(layer.conv, kernel=kernel)
        self.neuron, self.impl, self.b_th = layer.neuron, layer.impl, layer.b_th
        self.in_channels = layer.in_channels
        self.fast_recurrence = fast_recurrence
        self.pool: tuple[int, str] | None = None

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[2] != self.in_channels or x.shape[0] < 1:
            raise SpikeInputError(
                f"{type(self).__name__}: expected [T, B, {self.in_channels}, H, W] with T >= 1, got shape "
                f"{tuple(x.shape)}"
            )
        if not x.is_floating_point():  # as the source layer
            raise SpikeInputError(f"{type(self).__name__}: expected a floating-point input, got {x.dtype}")

    def run(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        self.conv._fresh()  # (run_frames bypasses the conv's forward, which checks the weights)
        T, B = x.shape[:2]
        pk, pmode = self.pool if self.pool is not None else (1, "avg")
        fast = self.fast_recurrence and x.device.type == "cpu"
        compiled = self.conv.supported and self.conv.weight.dtype in (torch.float32, torch.float64)
        if fast and kernel in ("taps", "event", "event_vec") and compiled:
            return self.conv.run_frames(x, kernel, lif=self.neuron, pool=pk, pool_mode=pmode)
        current = self.conv.run(x.reshape(T * B, *x.shape[2:]), kernel)
        current = current.reshape(T, B, *current.shape[1:])
        if fast:
            return lif_pool_inference(current, self.neuron, pk, pmode)
        s = lif_recurrence(current, self.neuron, impl=self.impl, b_th=self.b_th)
        return s if self.pool is None else SeqPool2d(pk, pmode)(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        with torch.no_grad():
            return self.run(x, self.conv.kernel)

    @torch.no_grad()
    def tune(self, x: torch.Tensor, reps: int = 3) -> str:
        """Time the whole layer (conv + LIF + pool) with each conv kernel; keep the fastest."""
        self._check(x)
        self.conv.timings = _time_kernels({k: (lambda k=k: self.run(x, k)) for k in self.conv.KERNELS}, reps)
        self.conv.kernel = _pick(self.conv.timings)
        return self.conv.kernel

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


class SparseLeakyReadout(nn.Module):
    """Inference twin of :class:`LeakyReadout`."""

    inference_twin = True  # metrics / count_ops refuse it (count the source model)

    emits_spikes = False

    def __init__(self, layer: LeakyReadout, kernel: str = "auto") -> None:
        super().__init__()
        self.syn = SparseLinear(layer.weight, layer.bias, kernel=kernel, spiking=True)
        self.beta, self.mode = layer.beta, layer.mode
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_time_major(x, 3, (self.in_features,), type(self).__name__)
        with torch.no_grad():
            return reduce_over_time(leaky_integrate(self.syn(x), self.beta), self.mode)


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


def _fuse_pools(m: nn.Module) -> int:
    """Give every :class:`SparseSpikingConv2d` directly followed by a :class:`SeqPool2d` inside an
    ``nn.Sequential`` that pooling (replacing the pool by ``nn.Identity``); returns the count."""
    n = 0
    for seq in [s for s in m.modules() if isinstance(s, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, pool = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, SparseSpikingConv2d)
                and conv.fast_recurrence
                and conv.pool is None
                and type(pool) is SeqPool2d
                and isinstance(pool.kernel_size, int)
            ):
                conv.pool = (int(pool.kernel_size), pool.mode)
                seq._modules[b] = nn.Identity()
                n += 1
    return n


def sparse_modules(model: nn.Module) -> list[tuple[str, _SparseBase]]:
    """The sparse-weight modules (:class:`SparseLinear`, :class:`SparseConv2d`) of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _SparseBase)]


def _tunable_units(model: nn.Module) -> list[nn.Module]:
    """Modules that tune themselves: spiking convs (as a whole) and the other sparse modules."""
    units, inner = [], set()
    for _, mod in model.named_modules():
        if isinstance(mod, SparseSpikingConv2d):
            units.append(mod)
            inner.add(id(mod.conv))
    for _, mod in sparse_modules(model):
        if id(mod) not in inner:
            units.append(mod)
    return units


def sparse_inference_model(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    kernels: str = "auto",
    inplace: bool = False,
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
    reps: int = 3,
    fast_recurrence: bool = True,
    fuse: bool = True,
) -> nn.Module:
    """Copy of a pruned ``model`` whose Linear/Conv2d layers run on their non-zero weights only.

    Args:
        model: any CPU model; L0 gates still attached are baked in first
            (:func:`~sparsespike.sparsity.connectivity.prune` on the copy). Replaced: our
            :class:`SpikingLinear`, :class:`SpikingConv2d`, :class:`LeakyReadout`, and
            ``nn.Linear`` / ``nn.Conv2d`` anywhere.
        example_input: a representative input; with ``kernels="auto"`` every layer times its
            candidate kernels on the input it sees in one forward of this example and keeps the
            fastest (``dense`` included, so a layer never gets slower than before).
        kernels: ``"auto"`` or one kernel name forced on every layer where it exists
            (``"dense"``, ``"csr"``/``"taps"`` = weight-sparse, ``"event"`` = event-driven).
        inplace: convert ``model`` itself instead of a deep copy.
        forward: how to call the model on ``example_input`` (default ``model(example_input)``).
        fast_recurrence: our spiking layers run the forward-only LIF kernels (bit-identical
            spikes, no surrogate/backward bookkeeping); ``False`` keeps the training kernel.
        fuse: (with ``fast_recurrence``) fold a :class:`SeqPool2d` that directly follows a
            spiking conv in an ``nn.Sequential`` into that layer's kernel.

    Returns the converted model in eval mode; :func:`kernel_report` tells which kernel each layer
    uses and the timings measured.
    """
    from .sparsity.connectivity import gated_weights, prune

    if kernels not in KERNEL_NAMES:  # (a typo fell through to "dense" on every layer)
        raise ValueError(f"sparse_inference_model: kernels must be one of {KERNEL_NAMES}, got {kernels!r}")
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
    if fuse and fast_recurrence:
        _fuse_pools(m)
    if forced is None and example_input is not None:
        captured: dict[int, torch.Tensor] = {}
        units = _tunable_units(m)
        hooks = [u.register_forward_pre_hook(lambda mod, args: captured.setdefault(id(mod), args[0])) for u in units]
        try:
            with torch.no_grad():
                forward(m, example_input) if forward is not None else m(example_input)
        finally:
            for h in hooks:
                h.remove()
        for u in units:
            if id(u) in captured:
                u.tune(captured[id(u)], reps=reps)
    return m


KERNEL_NAMES = ("auto", "dense", "csr", "taps", "event", "event_vec")


def _alias(kernel: str, syn: _SparseBase) -> str:
    aliases = {"csr": "taps", "taps": "csr"}
    k = aliases.get(kernel, kernel)
    return k if k in syn.KERNELS else "dense"


def kernel_report(model: nn.Module) -> list[dict]:
    """Per sparse layer: name, weight density, chosen kernel, and tuning times (ms) if measured.

    For a spiking conv layer (``<name>.conv``) the times are of the whole layer: conv, LIF and
    the fused pooling.
    """
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
    "lif_pool_inference",
    "SparseLeakyReadout",
    "SparseLinear",
    "SparseSpikingLinear",
    "kernel_report",
    "sparse_inference_model",
    "sparse_modules",
]
