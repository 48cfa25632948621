"""SIMD building blocks for numba kernels, written as LLVM IR through numba intrinsics.

numba/LLVM do not always produce the best vector code from a Python loop: a slice-based loop
needs run-time alias checks, a scalar epilogue and, for reductions, a single accumulator chain.
These intrinsics emit exactly the vector loads, ``llvm.fma`` calls and stores wanted; callers
guarantee the bounds (no checks). Used by the sparse backward (``kernels/sparse_cpu.py``) and
the pruned-inference kernels (``sparse_inference.py``).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def vec_type(context, dt, nbytes: int):
    """``(vector type, lanes, alignment)`` of an ``nbytes`` vector of numba float type ``dt``."""
    lanes = nbytes * 8 // dt.bitwidth
    return ir.VectorType(context.get_value_type(dt), lanes), lanes, dt.bitwidth // 8


def fma_fn(builder, vty):
    """The ``llvm.fma`` intrinsic for vector type ``vty``."""
    bits = 64 if isinstance(vty.element, ir.DoubleType) else 32
    name = f"llvm.fma.v{vty.count}f{bits}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)


def splat(builder, value, vty):
    """``value`` broadcast to every lane of ``vty``."""
    i32 = ir.IntType(32)
    undef = ir.Constant(vty, ir.Undefined)
    zeros = ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef, zeros)


def data_ptr(context, builder, aty, arr, base, bty):
    """Pointer to element ``base`` of the 1-D array ``arr`` (numba type ``aty``; ``base`` of type ``bty``)."""
    return builder.gep(
        context.make_array(aty)(context, builder, arr).data, [context.cast(builder, base, bty, types.int64)]
    )


def emit_axpy(builder, fma, avec, ps, po, nv: int, vty, align: int) -> None:
    """``po[k] += avec * ps[k]`` for ``nv`` consecutive vectors (unaligned load, FMA, store)."""
    i64 = ir.IntType(64)
    for j in range(nv):
        k = ir.Constant(i64, j * vty.count)
        sj = builder.bitcast(builder.gep(ps, [k]), vty.as_pointer())
        oj = builder.bitcast(builder.gep(po, [k]), vty.as_pointer())
        xv = builder.load(sj, align=align, typ=vty)
        ov = builder.load(oj, align=align, typ=vty)
        builder.store(builder.call(fma, [avec, xv, ov]), oj, align=align)


_AXPY_BYTES = 32  # 256-bit vectors for the read-modify-write scatter: as fast as 512-bit ones on
# Zen 4 (measured), and channel counts only need padding to a multiple of 8 float32 per half


def _float_vectors(x, y) -> bool:
    """Typing check of the intrinsics: ``x`` and ``y`` are 1-D arrays of one float dtype."""
    return (
        isinstance(x, types.Array)
        and isinstance(y, types.Array)
        and x.ndim == 1
        and y.ndim == 1
        and x.dtype in (types.float32, types.float64)
        and y.dtype == x.dtype
    )


def _make_axpy(nv: int):
    """Intrinsic ``axpy(a, src, sbase, out, obase)``: ``out[obase + j] += a * src[sbase + j]`` for
    ``j < nv*lanes`` (``lanes`` = 32 bytes), as ``nv`` unaligned vector load/FMA/stores
    (``llvm.fma``); no bounds checks."""

    @intrinsic
    def axpy(typingctx, a, src, sbase, out, obase):
        if not _float_vectors(src, out):
            return None
        sig = types.void(a, src, sbase, out, obase)

        def codegen(context, builder, signature, args):
            av, sa, sb, oa, ob = args
            at = signature.args
            dt = at[1].dtype
            vty, _, align = vec_type(context, dt, _AXPY_BYTES)
            avec = splat(builder, context.cast(builder, av, at[0], dt), vty)
            ps = data_ptr(context, builder, at[1], sa, sb, at[2])
            po = data_ptr(context, builder, at[3], oa, ob, at[4])
            emit_axpy(builder, fma_fn(builder, vty), avec, ps, po, nv, vty, align)
            return context.get_dummy_value()

        return sig, codegen

    return axpy


_axpy1, _axpy2, _axpy4, _axpy8 = (_make_axpy(n) for n in (1, 2, 4, 8))


@njit(cache=True)
def axpy(nv, a, src, sbase, out, obase):
    """``out[obase : obase + nv*lanes] += a * src[sbase : ...]`` in chunks of 8/4/2/1 32-byte vectors."""
    lanes = 32 // src.itemsize
    k = 0
    while nv - k >= 8:
        _axpy8(a, src, sbase + k * lanes, out, obase + k * lanes)
        k += 8
    if nv - k >= 4:
        _axpy4(a, src, sbase + k * lanes, out, obase + k * lanes)
        k += 4
    if nv - k >= 2:
        _axpy2(a, src, sbase + k * lanes, out, obase + k * lanes)
        k += 2
    if nv - k >= 1:
        _axpy1(a, src, sbase + k * lanes, out, obase + k * lanes)


_DOT_ACC = 4  # independent accumulators: hides the FMA latency of a reduction


@intrinsic
def dot(typingctx, nv, a, abase, b, bbase):
    """``sum_{k < nv*lanes} a[abase + k] * b[bbase + k]`` with ``lanes`` = 32 bytes of the dtype.

    ``_DOT_ACC`` vector accumulators over blocks of ``_DOT_ACC`` vectors (then one vector at a
    time), summed and reduced by halving shuffles at the end. 1-D arrays of one float dtype.
    """
    if not _float_vectors(a, b):
        return None
    sig = a.dtype(nv, a, abase, b, bbase)

    def codegen(context, builder, signature, args):
        nvv, aa, ab, ba, bb = args
        at = signature.args
        dt = at[1].dtype
        vty, lanes, align = vec_type(context, dt, _AXPY_BYTES)
        ety = vty.element
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fma = fma_fn(builder, vty)
        pa = data_ptr(context, builder, at[1], aa, ab, at[2])
        pb = data_ptr(context, builder, at[3], ba, bb, at[4])
        n = context.cast(builder, nvv, at[0], types.int64)
        zero = ir.Constant(vty, [ir.Constant(ety, 0.0)] * lanes)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(_DOT_ACC)]

        def load(p, k):
            return builder.load(builder.bitcast(builder.gep(p, [k]), vty.as_pointer()), align=align, typ=vty)

        nblk = builder.udiv(n, ir.Constant(i64, _DOT_ACC))
        with cgutils.for_range(builder, nblk) as loop:
            base = builder.mul(loop.index, ir.Constant(i64, _DOT_ACC * lanes))
            for j in range(_DOT_ACC):
                k = builder.add(base, ir.Constant(i64, j * lanes))
                builder.store(builder.call(fma, [load(pa, k), load(pb, k), builder.load(accs[j])]), accs[j])
        done = builder.mul(nblk, ir.Constant(i64, _DOT_ACC))
        with cgutils.for_range(builder, builder.sub(n, done)) as loop:
            k = builder.mul(builder.add(done, loop.index), ir.Constant(i64, lanes))
            builder.store(builder.call(fma, [load(pa, k), load(pb, k), builder.load(accs[0])]), accs[0])
        v = builder.load(accs[0])
        for j in range(1, _DOT_ACC):
            v = builder.fadd(v, builder.load(accs[j]))
        w = lanes
        while w > 1:
            h = w // 2
            mask = ir.Constant(ir.VectorType(i32, lanes), [h + (i % h) for i in range(lanes)])
            v = builder.fadd(v, builder.shuffle_vector(v, v, mask))
            w = h
        return builder.extract_element(v, ir.Constant(i32, 0))

    return sig, codegen
