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
* ``sparse_bwd`` -- the whole S3GD backward of a layer in one launch (eqs. 9-12, Prop. 1):
  see :func:`sparse_backward`. Work and memory scale with the active entries, the input spikes
  and the previous layer's active entries; nothing of size ``T*B*N`` is stored.

The saved state is the same compact one as on CPU.
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


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Triton importable and a CUDA device present."""
    return HAS_TRITON and torch.cuda.is_available()


def check_device(x: torch.Tensor) -> None:
    """Refuse an explicit ``impl="triton"`` on a tensor it cannot run on: a CPU tensor without
    ``TRITON_INTERPRET=1`` (Triton's own error there names no cause; a missing Triton is
    :func:`kernels`' error)."""
    if x.device.type != "cuda" and not interpret_mode():
        raise ValueError(
            f"impl='triton' runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1), got a "
            f"{x.device.type} tensor; use impl='auto' or 'numba' on the CPU"
        )


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
    # T and M are never specialised: Triton turns an integer argument equal to 1 into a Python
    # int constant, which has no .to() (B*N = 1 failed to compile on a GPU)
    @triton.jit(do_not_specialize=["T", "M"])
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

    @triton.jit(do_not_specialize=["T", "M"])
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
    def sparse_bwd(
        aptr_ptr,
        aidx_ptr,
        e_ptr,
        sptr_ptr,
        sidx_ptr,
        sval_ptr,
        pptr_ptr,
        pidx_ptr,
        wt_ptr,
        dwt_ptr,
        dxv_ptr,
        db_ptr,
        delta_ptr,
        T,
        B,
        N,
        K,
        beta,
        HAS_VAL: tl.constexpr,
        NEED_DW: tl.constexpr,
        NEED_DX: tl.constexpr,
        NEED_DB: tl.constexpr,
        WRITE_DELTA: tl.constexpr,
        BN: tl.constexpr,
    ):
        b = tl.program_id(0)
        n = tl.program_id(1) * BN + tl.arange(0, BN)
        nm = n < N
        acc = tl.full([BN], 0.0, tl.float32)
        dbacc = tl.full([BN], 0.0, tl.float32)
        # each set is b-major and sorted by t*F + f within b: walk b's entries from the end
        a0 = tl.load(aptr_ptr + b)
        a = tl.load(aptr_ptr + b + 1) - 1
        s0 = tl.load(sptr_ptr + b)
        s = tl.load(sptr_ptr + b + 1) - 1
        q0 = tl.load(pptr_ptr + b)
        q = tl.load(pptr_ptr + b + 1) - 1
        for k in range(T):
            t = T - 1 - k
            # Prop. 1 / eq. 11: delta[t] = e[t] + beta * delta[t+1], e at the active (t, b, j)
            acc = beta * acc
            lo = t * N
            cur = tl.load(aidx_ptr + a, mask=a >= a0, other=-1)
            while cur >= lo:
                ev = tl.load(e_ptr + a).to(tl.float32)
                acc += tl.where(n == cur - lo, ev, 0.0)
                a -= 1
                cur = tl.load(aidx_ptr + a, mask=a >= a0, other=-1)
            if NEED_DB:
                dbacc += acc
            if WRITE_DELTA:
                tl.store(delta_ptr + (t * B + b).to(tl.int64) * N + n, acc, mask=nm)
            lok = t * K
            if NEED_DW:  # eqs. 9-10 over the input spikes: dW[:, k] += x * delta[t, b, :]
                cur = tl.load(sidx_ptr + s, mask=s >= s0, other=-1)
                while cur >= lok:
                    if HAS_VAL:
                        upd = acc * tl.load(sval_ptr + s).to(tl.float32)
                    else:
                        upd = acc
                    tl.atomic_add(dwt_ptr + (cur - lok).to(tl.int64) * N + n, upd, mask=nm)
                    s -= 1
                    cur = tl.load(sidx_ptr + s, mask=s >= s0, other=-1)
            if NEED_DX:  # eq. 12: dx = W[:, k] . delta[t, b, :] at the previous active entries
                cur = tl.load(pidx_ptr + q, mask=q >= q0, other=-1)
                while cur >= lok:
                    w = tl.load(wt_ptr + (cur - lok).to(tl.int64) * N + n, mask=nm, other=0.0).to(tl.float32)
                    tl.atomic_add(dxv_ptr + q, tl.reduce(w * acc, 0, tl.standard._sum_combine))
                    q -= 1
                    cur = tl.load(pidx_ptr + q, mask=q >= q0, other=-1)
        if NEED_DB:
            tl.atomic_add(db_ptr + n, dbacc, mask=nm)

    return SimpleNamespace(lif_fwd=lif_fwd, lif_bwd=lif_bwd, sparse_bwd=sparse_bwd)


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
    cur = x.reshape(T * B, K) @ W.t()  # (not -1: K may be 0)
    if bias is not None:
        cur = cur + bias
    cur = cur.reshape(T, B * N).contiguous()
    S, D, _, Mk = _run_fwd(cur, p, b_th, write_d=True, want_mask=True)
    del cur
    if D.numel() and not bool(torch.isfinite(D).all()):  # as the CPU kernel: an overflowed membrane
        from .recurrence import refuse_overflowed_membranes

        refuse_overflowed_membranes(int((~torch.isfinite(D)).sum()))
    S3 = S.reshape(T, B, N)
    act = ActiveSet.from_mask(Mk.reshape(T, B, N))
    d = act.gather(D.reshape(T, B, N))
    del D, Mk
    spikes_out = ActiveSet.from_mask(S3)
    return S3, act, d, spikes_out


def sparse_backward(ctx, e: torch.Tensor):
    """Weight, bias and input gradients of :class:`SparseSpikingLinearFn`: one kernel launch, no
    buffer of size ``T*B*N`` or ``T*B*K`` (unless a dense input gradient is asked for).

    ``e`` is ``dL/dS * g`` at the active entries. One program per (batch element ``b``, block of
    neurons) runs the backward scan ``delta[t] = e[t] + beta * delta[t+1]`` (Prop. 1 / eq. 11) in
    registers from ``t = T-1`` down to 0, adding the active entries' ``e`` as it meets them, and
    at each step uses ``delta[t, b, block]``:

    * dx (eq. 12): ``W[:, k] . delta[t, b, :]`` at the previous layer's active entries
      ``(t, b, k)`` only (partial sums of the blocks are added atomically);
    * dW (eqs. 9-10): ``sum_t e[t] trace[t]`` with the decayed input trace equals
      ``sum over input spikes (t, b, k) of x * delta[t, b, :]`` (swap the two time sums), so it
      is added at the input spikes only and no trace is built;
    * db: ``sum_{t, b} delta[t, b]``.
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
    sp, prev = ctx.spikes_in, ctx.prev
    f32 = dict(dtype=torch.float32, device=dev)
    dWt = torch.zeros(K, N, **f32) if need_dw else None
    db = torch.zeros(N, **f32) if need_db else None
    vals = torch.zeros(prev.n, **f32) if need_dx else None
    delta = torch.empty(T * B * N, **f32) if need_dx_dense else None
    BN = min(128, triton.next_power_of_2(max(N, 16)))
    if T * B * N:
        k.sparse_bwd[(B, _cdiv(N, BN))](
            act.ptr,
            act.idx,
            e.contiguous(),
            sp.ptr if need_dw else act.ptr,
            sp.idx if need_dw else act.idx,
            sp.vals if (need_dw and sp.vals is not None) else e,
            prev.ptr if need_dx else act.ptr,
            prev.idx if need_dx else act.idx,
            ctx.wt if need_dx else e,
            dWt if need_dw else e,
            vals if need_dx else e,
            db if need_db else e,
            delta if need_dx_dense else e,
            T,
            B,
            N,
            K,
            float(ctx.beta),
            HAS_VAL=bool(need_dw and sp.vals is not None),
            NEED_DW=need_dw,
            NEED_DX=need_dx,
            NEED_DB=need_db,
            WRITE_DELTA=need_dx_dense,
            BN=BN,
        )
    dW = dWt.t().to(dtype).contiguous() if need_dw else None
    dx = None
    if need_dx:
        dx = prev.sparse_tensor(vals.to(dtype))
    elif need_dx_dense:
        dx = (delta.reshape(-1, N) @ ctx.W_full).reshape(T, B, K)
    return dx, dW, (db.to(dtype) if need_db else None)
