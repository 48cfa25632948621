"""Triton kernels for CUDA tensors: LIF recurrence (masked surrogate) and the S3GD sparse backward.

Importable without Triton (``HAS_TRITON`` is then False and :func:`available` returns False).
Kernels are built lazily on first use by :func:`kernels`; with ``TRITON_INTERPRET=1`` they are
built as interpreted functions that also run on CPU tensors (the tests do this).

Kernels (equations in :mod:`sparsespike.kernels.sparse` and :mod:`sparsespike.kernels.recurrence`):

* ``lif_fwd`` -- one program per block of ``M = B*N`` neurons, loop over time: spikes, the
  surrogate (masked to the active window, eq. 8, or plain for dense BPTT) or ``d = V - thr`` at
  every entry, the active mask (eq. 7).
* ``lif_bwd`` -- the dense adjoint sweep of the recurrence (dense BPTT on CUDA,
  :class:`~sparsespike.kernels.recurrence.LIFRecurrence`, and :func:`lif_recurrence_masked`).
* ``decay_scan`` -- ``y[t] = beta*y[t -/+ 1] + y[t]`` in place, forwards (input trace of eq. 9)
  or backwards (Prop. 1 / eq. 11 run over all steps: ``delta``).
* ``dw_spikes`` -- eqs. 9-10 rewritten over the input spikes: ``dW[:, k] += x * delta[row, :]``
  for every input spike ``(row, k)`` (atomic adds; no input trace is built, see
  :func:`sparse_backward`).
* ``dx_active`` -- eq. 12: ``dx = W[:, i] . delta[row, :]`` at the previous layer's active
  entries only.

On the GPU the backward scan is dense over ``[T, B*N]`` (bandwidth-bound and cheap); the
products -- ``n_in_spikes*N`` for dW and ``n_prev_active*N`` for dx instead of ``T*B*N*K`` each --
are the sparse part. The saved state is the same compact one as on CPU.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

try:  # pragma: no cover - exercised only where triton is installed
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # noqa: BLE001 - any import problem means "no triton"
    triton = None
    tl = None
    HAS_TRITON = False

BLOCK = 128
BLOCK_P = 32
BLOCK_N = 64


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Triton importable and a CUDA device present."""
    return HAS_TRITON and torch.cuda.is_available()


_KERNELS: dict[bool, SimpleNamespace] = {}


def kernels() -> SimpleNamespace:
    """The jitted kernels (built once per interpret/compiled mode)."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed (pip install triton)")
    key = interpret_mode()
    if key not in _KERNELS:
        _KERNELS[key] = _build()
    return _KERNELS[key]


def _build() -> SimpleNamespace:  # noqa: C901 - kernel definitions
    # builtins only (tl.full, not the @jit helper tl.zeros; tl.reduce with the standard sum
    # combiner, which the interpreter recognises, instead of the @jit tl.sum), so the interpreter
    # also works when triton was imported before TRITON_INTERPRET was set
    @triton.jit
    def lif_fwd(
        x_ptr,
        s_ptr,
        g_ptr,
        r_ptr,
        m_ptr,
        T,
        M,
        beta,
        alpha,
        thr,
        b_th,
        p0,
        p1,
        HAS_ALPHA: tl.constexpr,
        RESET_ZERO: tl.constexpr,
        DETACH: tl.constexpr,
        CODE: tl.constexpr,
        WRITE_D: tl.constexpr,
        WRITE_M: tl.constexpr,
        MASK_G: tl.constexpr,
        BLK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLK + tl.arange(0, BLK)
        msk = offs < M
        u = tl.full([BLK], 0.0, tl.float32)
        cur = tl.full([BLK], 0.0, tl.float32)
        for t in range(T):
            base = t * M.to(tl.int64)
            xv = tl.load(x_ptr + base + offs, mask=msk, other=0.0).to(tl.float32)
            if HAS_ALPHA:
                cur = alpha * cur + xv
                v = beta * u + cur
            else:
                v = beta * u + xv
            d = v - thr
            s = tl.where(d > 0.0, 1.0, 0.0)
            ad = tl.abs(d)
            act = ad < b_th
            if CODE == 0:
                q = p0 * ad + 1.0
                g = 1.0 / (q * q)
            elif CODE == 1:
                g = p1 * tl.maximum(1.0 - ad / p0, 0.0)
            else:
                g = tl.where(ad < 0.5 * p0, p1, 0.0)
            if MASK_G:
                g = tl.where(act, g, 0.0)
            tl.store(s_ptr + base + offs, s.to(s_ptr.dtype.element_ty), mask=msk)
            if WRITE_D:
                tl.store(g_ptr + base + offs, d.to(g_ptr.dtype.element_ty), mask=msk)
            else:
                tl.store(g_ptr + base + offs, g.to(g_ptr.dtype.element_ty), mask=msk)
            if WRITE_M:
                tl.store(m_ptr + base + offs, act.to(tl.int8), mask=msk)
            if RESET_ZERO:
                u = v * (1.0 - s)
                r = (1.0 - s) - v * g
            else:
                u = v - thr * s
                r = 1.0 - thr * g
            if not DETACH:
                tl.store(r_ptr + base + offs, r.to(r_ptr.dtype.element_ty), mask=msk)

    @triton.jit
    def lif_bwd(
        gs_ptr,
        g_ptr,
        s_ptr,
        r_ptr,
        gx_ptr,
        T,
        M,
        beta,
        alpha,
        HAS_ALPHA: tl.constexpr,
        RESET_ZERO: tl.constexpr,
        DETACH: tl.constexpr,
        BLK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLK + tl.arange(0, BLK)
        msk = offs < M
        gu = tl.full([BLK], 0.0, tl.float32)
        gi = tl.full([BLK], 0.0, tl.float32)
        for k in range(T):
            base = (T - 1 - k) * M.to(tl.int64)
            gsv = tl.load(gs_ptr + base + offs, mask=msk, other=0.0).to(tl.float32)
            gv_ = tl.load(g_ptr + base + offs, mask=msk, other=0.0).to(tl.float32)
            if DETACH:
                if RESET_ZERO:
                    rr = 1.0 - tl.load(s_ptr + base + offs, mask=msk, other=0).to(tl.float32)
                else:
                    rr = 1.0
            else:
                rr = tl.load(r_ptr + base + offs, mask=msk, other=0.0).to(tl.float32)
            gv = gsv * gv_ + gu * rr
            gu = beta * gv
            if HAS_ALPHA:
                gi = gv + alpha * gi
                tl.store(gx_ptr + base + offs, gi.to(gx_ptr.dtype.element_ty), mask=msk)
            else:
                tl.store(gx_ptr + base + offs, gv.to(gx_ptr.dtype.element_ty), mask=msk)

    @triton.jit
    def decay_scan(y_ptr, T, M, beta, REVERSE: tl.constexpr, BLK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLK + tl.arange(0, BLK)
        msk = offs < M
        acc = tl.full([BLK], 0.0, tl.float32)
        for k in range(T):
            if REVERSE:
                t = T - 1 - k
            else:
                t = k
            base = t * M.to(tl.int64)
            v = tl.load(y_ptr + base + offs, mask=msk, other=0.0).to(tl.float32)
            acc = beta * acc + v
            tl.store(y_ptr + base + offs, acc.to(y_ptr.dtype.element_ty), mask=msk)

    @triton.jit
    def dw_spikes(
        row_ptr, col_ptr, val_ptr, delta_ptr, dwt_ptr, P, N, HAS_VAL: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr
    ):
        pid = tl.program_id(0)
        poffs = pid * BP + tl.arange(0, BP)
        pm = poffs < P
        row = tl.load(row_ptr + poffs, mask=pm, other=0)
        col = tl.load(col_ptr + poffs, mask=pm, other=0)
        if HAS_VAL:
            v = tl.load(val_ptr + poffs, mask=pm, other=0.0).to(tl.float32)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            m2 = pm[:, None] & (n < N)[None, :]
            dv = tl.load(delta_ptr + row[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
            if HAS_VAL:
                dv = dv * v[:, None]
            tl.atomic_add(dwt_ptr + col[:, None] * N + n[None, :], dv, mask=m2)

    @triton.jit
    def dx_active(row_ptr, col_ptr, delta_ptr, wt_ptr, out_ptr, P, N, BP: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        poffs = pid * BP + tl.arange(0, BP)
        pm = poffs < P
        row = tl.load(row_ptr + poffs, mask=pm, other=0)
        col = tl.load(col_ptr + poffs, mask=pm, other=0)
        acc = tl.full([BP], 0.0, tl.float32)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            nm = n < N
            m2 = pm[:, None] & nm[None, :]
            dv = tl.load(delta_ptr + row[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
            wv = tl.load(wt_ptr + col[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
            acc += tl.reduce(dv * wv, 1, tl.standard._sum_combine)
        tl.store(out_ptr + poffs, acc.to(out_ptr.dtype.element_ty), mask=pm)

    return SimpleNamespace(
        lif_fwd=lif_fwd, lif_bwd=lif_bwd, decay_scan=decay_scan, dw_spikes=dw_spikes, dx_active=dx_active
    )


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _surrogate_code(p) -> tuple[int, float, float]:
    code = getattr(p.surrogate, "kernel_code", None)
    if code is None:
        raise ValueError("triton kernels need a built-in surrogate (fast_sigmoid/triangle/rectangle)")
    p0, p1 = p.surrogate.kernel_params
    return int(code), float(p0), float(p1)


def _run_fwd(x2: torch.Tensor, p, b_th: float, write_d: bool, want_mask: bool, mask_g: bool = True):
    from ..neurons import Reset

    k = kernels()
    T, M = x2.shape
    S = torch.empty_like(x2)
    G = torch.empty_like(x2)
    R = None if p.detach_reset else torch.empty_like(x2)
    Mk = torch.empty(x2.shape, dtype=torch.int8, device=x2.device) if want_mask else None
    code, p0, p1 = (0, 1.0, 1.0) if write_d else _surrogate_code(p)
    if T and M:
        k.lif_fwd[(_cdiv(M, BLOCK),)](
            x2,
            S,
            G,
            R if R is not None else G,
            Mk if Mk is not None else S,
            T,
            M,
            float(p.beta),
            0.0 if p.alpha is None else float(p.alpha),
            float(p.threshold),
            float(b_th),
            p0,
            p1,
            HAS_ALPHA=p.alpha is not None,
            RESET_ZERO=p.reset is Reset.ZERO,
            DETACH=bool(p.detach_reset),
            CODE=code,
            WRITE_D=write_d,
            WRITE_M=want_mask,
            MASK_G=mask_g,
            BLK=BLOCK,
        )
    return S, G, R, Mk


def lif_forward_masked(x2: torch.Tensor, p, b_th: float, want_mask: bool):
    """Dense recurrence over ``x2[T, M]`` with the masked surrogate: ``S, G, R, mask, n_active``."""
    S, G, R, Mk = _run_fwd(x2.contiguous(), p, b_th, write_d=False, want_mask=True)
    n_active = int(Mk.sum()) if Mk is not None else 0
    return S, G, R, (Mk.to(torch.uint8) if want_mask else None), n_active


def lif_forward_dense(x2: torch.Tensor, p, b_th: float):
    """Plain dense recurrence over ``x2[T, M]`` (surrogate everywhere): ``S, G, R, n_active``.

    ``b_th`` only counts the active entries (``|V - thr| < b_th``) for the activity statistic.
    """
    S, G, R, Mk = _run_fwd(x2.contiguous(), p, b_th, write_d=False, want_mask=True, mask_g=False)
    return S, G, R, int(Mk.sum())


def lif_backward_dense(gs: torch.Tensor, G: torch.Tensor, S_u8, R, p) -> torch.Tensor:
    """Dense adjoint sweep (:mod:`sparsespike.kernels.recurrence` equations) on ``[T, M]``."""
    from ..neurons import Reset

    k = kernels()
    T, M = G.shape
    gx = torch.empty_like(gs)
    if T and M:
        k.lif_bwd[(_cdiv(M, BLOCK),)](
            gs.contiguous(),
            G,
            S_u8 if S_u8 is not None else G,
            R if R is not None else G,
            gx,
            T,
            M,
            float(p.beta),
            0.0 if p.alpha is None else float(p.alpha),
            HAS_ALPHA=p.alpha is not None,
            RESET_ZERO=p.reset is Reset.ZERO,
            DETACH=bool(p.detach_reset),
            BLK=BLOCK,
        )
    return gx


def sparse_forward(x: torch.Tensor, W: torch.Tensor, bias, p, b_th: float, spikes_in):
    """Forward of :class:`SparseSpikingLinearFn` on the GPU: ``S, active, d, out_spikes``.

    The synaptic input is one dense matmul (cuBLAS); the recurrence kernel writes ``S`` and
    ``d = V - thr`` into temporaries that are compacted to the active entries and freed.
    """
    from .sparse import ActiveSet

    T, B, K = x.shape
    N = W.shape[0]
    cur = x.reshape(-1, K) @ W.t()
    if bias is not None:
        cur = cur + bias
    cur = cur.reshape(T, B * N).contiguous()
    S, D, _, Mk = _run_fwd(cur, p, b_th, write_d=True, want_mask=True)
    del cur
    S3 = S.reshape(T, B, N)
    act = ActiveSet.from_mask(Mk.reshape(T, B, N))
    d = act.gather(D.reshape(T, B, N))
    del D, Mk
    spikes_out = ActiveSet.from_mask(S3)
    return S3, act, d, spikes_out


def _rows_cols(act, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``t*B + b`` and feature of every entry of an active set / spike list, from its cached
    COO indices (built once per set and shared with whoever else reads them)."""
    t, b, f = act.coo_indices()
    return t * B + b, f


def sparse_backward(ctx, e: torch.Tensor):
    """Weight, bias and input gradients of :class:`SparseSpikingLinearFn` with Triton kernels.

    ``e`` is ``dL/dS * g`` at the active entries. Everything follows from one backward scan
    ``delta[t] = e[t] + beta * delta[t+1]`` (Prop. 1 / eq. 11; zero at inactive entries before
    the scan): ``dx = delta . W`` at the previous layer's active entries (eq. 12); the weight
    gradient of eqs. 9-10, ``sum_t e[t] * trace[t]`` with the decayed input trace, equals
    ``sum over input spikes (t, b, k) of x * delta[t, b, :]`` (swap the two time sums), so it is
    read at the input spikes only and no trace is built; and ``db = sum_{t, b} delta[t, b]``.
    """
    k = kernels()
    act = ctx.active
    T, B, N = act.shape
    K = ctx.K
    dev, dtype = e.device, e.dtype
    need_dx = ctx.needs_input_grad[0] and ctx.prev is not None
    need_dx_dense = ctx.needs_input_grad[0] and ctx.prev is None
    need_dw = ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dW = db = dx = None
    row, j = _rows_cols(act, B)
    delta = torch.zeros(T * B * N, dtype=dtype, device=dev)
    delta[row * N + j] = e
    if T * B * N:
        k.decay_scan[(_cdiv(B * N, BLOCK),)](delta, T, B * N, float(ctx.beta), REVERSE=True, BLK=BLOCK)
    if need_dw:
        sp = ctx.spikes_in
        dWt = torch.zeros(K, N, dtype=torch.float32, device=dev)
        if sp.n and N:
            srow, scol = _rows_cols(sp, B)
            k.dw_spikes[(_cdiv(sp.n, BLOCK_P),)](
                srow,
                scol,
                sp.vals if sp.vals is not None else srow,
                delta,
                dWt,
                sp.n,
                N,
                HAS_VAL=sp.vals is not None,
                BP=BLOCK_P,
                BN=BLOCK_N,
            )
        dW = dWt.t().to(dtype).contiguous()
    if need_db:
        db = delta.reshape(T * B, N).sum(0)
    if need_dx:
        prev = ctx.prev
        prow, pcol = _rows_cols(prev, B)
        vals = torch.empty(prev.n, dtype=dtype, device=dev)
        if prev.n:
            k.dx_active[(_cdiv(prev.n, BLOCK_P),)](prow, pcol, delta, ctx.wt, vals, prev.n, N, BP=BLOCK_P, BN=BLOCK_N)
        dx = prev.sparse_tensor(vals)
    elif need_dx_dense:
        dx = (delta.reshape(-1, N) @ ctx.W_full).reshape(T, B, K)
    return dx, dW, db
