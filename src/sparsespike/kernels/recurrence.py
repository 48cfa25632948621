"""The LIF recurrence over a whole sequence as one autograd Function, dense backward.

Forward: :mod:`sparsespike.neurons` equations, all ``T`` steps in one kernel call.

Backward (the adjoint of the forward, reset detached unless ``detach_reset=False``). With
``gs[t] = dL/dS[t]`` and the surrogate ``g[t] = g(V[t] - thr)``:

.. math::

    \\frac{dL}{dV[t]} &= gs[t]\\,g[t] + \\beta\\, r[t]\\, \\frac{dL}{dV[t+1]},\\qquad
    r[t] = \\frac{\\partial U[t]}{\\partial V[t]} =
    \\begin{cases} 1 & \\text{subtract}\\\\ 1 - S[t] & \\text{zero}\\end{cases}\\\\
    \\frac{dL}{dI_s[t]} &= \\frac{dL}{dV[t]} + \\alpha \\frac{dL}{dI_s[t+1]},\\qquad
    \\frac{dL}{dX[t]} = \\frac{dL}{dI_s[t]}

(with a non-detached reset ``r = 1 - thr*g`` or ``(1 - S) - V g``). This is BPTT through the
discretised LIF (Neftci et al. 2019, sec. III) written as one backward sweep; Perez-Nieves &
Goodman eqs. 5-6 are the same recursion for ``alpha = None`` and subtractive reset.

What is saved: the surrogate values ``g[T, M]`` and the spikes (needed for the zero reset); the
membrane itself is not kept. ``impl="numba"`` runs :mod:`sparsespike.kernels.cpu`,
``impl="triton"`` (CUDA float32) :mod:`sparsespike.kernels.triton_gpu`; ``impl="torch"`` runs
the same equations as a loop of torch ops (any device, any custom surrogate). Decays and threshold
are constants (not learned).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SpikeInputError
from ..neurons import LIFParams, Reset
from . import cpu


def _kernel_surrogate(p: LIFParams) -> tuple[int, float, float] | None:
    code = getattr(p.surrogate, "kernel_code", None)
    if code is None:
        return None
    p0, p1 = p.surrogate.kernel_params
    return int(code), float(p0), float(p1)


def _nan_membranes(x: torch.Tensor, G: torch.Tensor) -> int:
    """NaN membranes seen by the torch / Triton recurrences, which keep no membrane: NaN in the
    surrogate values (FastSigmoid passes a NaN on) or in the input itself (Triangle's max(.., 0)
    and Rectangle's comparison turn a NaN membrane into 0); only looked at if ``x`` is not finite."""
    if bool(torch.isfinite(x).all()):
        return 0
    return int(torch.isnan(G).sum()) + int(torch.isnan(x).sum())


def choose_impl(x: torch.Tensor, p: LIFParams, impl: str = "auto") -> str:
    """``numba`` on CPU and ``triton`` on CUDA (float32) for built-in surrogates, else ``torch``.

    An explicit ``impl`` is kept when its kernels can compute it: ``triton`` only in float32,
    ``numba`` in float32/64, both only for the built-in surrogates; otherwise ``torch`` (the
    float32 Triton kernels once ran float64 inputs, spikes and gradients off by rounding).
    """
    compiled = _kernel_surrogate(p) is not None
    if impl == "triton":
        if not (compiled and x.dtype == torch.float32):
            return "torch"
        from . import triton_gpu

        triton_gpu.check_device(x)
        return "triton"
    if impl == "numba":
        return "numba" if compiled and x.dtype in (torch.float32, torch.float64) else "torch"
    if impl != "auto":
        return impl
    if not compiled:
        return "torch"
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return "numba"
    if x.device.type == "cuda" and x.dtype == torch.float32:
        from . import triton_gpu

        if triton_gpu.available():
            return "triton"
    return "torch"


def forward_torch(
    x: torch.Tensor, p: LIFParams, b_th: float, masked: bool = False, mask_out: torch.Tensor | None = None
):
    """Pure-torch forward over ``x[T, M]``: ``(S, g, r or None, n_active)``.

    ``masked=True`` zeroes the surrogate outside the active window ``|V - thr| < b_th``
    (Perez-Nieves eq. 8); ``mask_out`` (``[T, M]``) receives the active mask.
    """
    T = x.shape[0]
    u = torch.zeros_like(x[0])
    cur = torch.zeros_like(x[0])
    S = torch.empty_like(x)
    G = torch.empty_like(x)
    R = None if p.detach_reset else torch.empty_like(x)
    n_active = 0
    for t in range(T):
        if p.alpha is not None:
            cur = p.alpha * cur + x[t]
            v = p.beta * u + cur
        else:
            v = p.beta * u + x[t]
        d = v - p.threshold
        s = (d > 0).to(x.dtype)
        act = d.abs() < b_th
        g = p.surrogate.grad(d)
        if masked:
            g = g * act.to(x.dtype)
        S[t], G[t] = s, g
        if mask_out is not None:
            mask_out[t] = act
        n_active += int(act.sum())
        if p.reset is Reset.ZERO:
            u = v * (1 - s)
            if R is not None:
                R[t] = (1 - s) - v * g
        else:
            u = v - p.threshold * s
            if R is not None:
                R[t] = 1 - p.threshold * g
    return S, G, R, n_active


def backward_torch(gs, G, S, R, p: LIFParams) -> torch.Tensor:
    """Pure-torch dense adjoint sweep (equations in the module docstring)."""
    T = gs.shape[0]
    gx = torch.empty_like(gs)
    gu = torch.zeros_like(gs[0])
    gi = torch.zeros_like(gs[0])
    for t in range(T - 1, -1, -1):
        if R is not None:
            r = R[t]
        elif p.reset is Reset.ZERO:
            r = 1 - S[t]
        else:
            r = 1.0
        gv = gs[t] * G[t] + gu * r
        gu = p.beta * gv
        if p.alpha is not None:
            gi = gv + p.alpha * gi
            gx[t] = gi
        else:
            gx[t] = gv
    return gx


_NO_MASK = np.zeros((1, 1), dtype=np.uint8)  # m_out of the numba forward when no mask is written


def refuse_nan_membranes(n_nan: int) -> None:
    """The recurrences' NaN check: the numba kernels count NaN membranes in their pass, the torch
    and Triton paths count them (or the non-finite inputs) only when the input is not finite."""
    if n_nan:
        raise SpikeInputError(
            f"LIF recurrence: {n_nan} NaN membrane values; the synaptic input contains NaN/inf "
            "(check the input spikes, or weights that diverged)"
        )


def refuse_overflowed_membranes(n: int) -> None:
    """The sparse forwards' check (numba and Triton): membranes that overflowed to inf/NaN from
    finite inputs and weights (the dense recurrences see those as NaN membranes)."""
    if n:
        raise SpikeInputError(
            f"sparse layer: {n} membranes overflowed to inf/NaN; the synaptic input exceeds the float range "
            "(check the input scale, or weights that diverged)"
        )


class LIFRecurrence(torch.autograd.Function):
    """Spikes ``S[T, M]`` of the LIF recurrence driven by the synaptic input ``X[T, M]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: LIFParams, impl: str, b_th: float, stats: dict | None):  # type: ignore[override]
        x = x.contiguous()
        if impl == "numba":
            code, p0, p1 = _kernel_surrogate(p)
            S = torch.empty_like(x)
            G = torch.empty_like(x)
            R = None if p.detach_reset else torch.empty_like(x)
            n_active, n_nan = cpu.lif_forward.select(x.numel())(
                x.detach().numpy(),
                p.beta,
                -1.0 if p.alpha is None else p.alpha,
                p.threshold,
                p.reset is Reset.ZERO,
                p.detach_reset,
                code,
                p0,
                p1,
                b_th,
                False,
                S.numpy(),
                G.numpy(),
                (R if R is not None else G).numpy(),
                _NO_MASK,
                False,
            )
        elif impl == "triton":
            from . import triton_gpu

            S, G, R, n_active = triton_gpu.lif_forward_dense(x.detach(), p, b_th)
            n_nan = _nan_membranes(x, G)
        else:
            with torch.no_grad():
                S, G, R, n_active = forward_torch(x, p, b_th)
                n_nan = _nan_membranes(x, G)
        refuse_nan_membranes(n_nan)
        if stats is not None:
            stats["n_active"] = int(n_active)
            stats["n_total"] = x.numel()
        # zero reset needs the spikes; keep them as bytes (a quarter of a float)
        S_saved = S.to(torch.uint8) if (p.reset is Reset.ZERO and p.detach_reset) else None
        ctx.p, ctx.impl = p, impl
        ctx.save_for_backward(G, S_saved, R)
        return S

    @staticmethod
    def backward(ctx, gs: torch.Tensor):  # type: ignore[override]
        G, S_saved, R = ctx.saved_tensors
        p: LIFParams = ctx.p
        gs = gs.contiguous()
        if ctx.impl == "numba":
            gx = torch.empty_like(gs)
            S_np = (S_saved if S_saved is not None else G).numpy()
            cpu.lif_backward_dense.select(gs.numel())(
                gs.numpy(),
                G.numpy(),
                S_np,
                (R if R is not None else G).numpy(),
                p.beta,
                -1.0 if p.alpha is None else p.alpha,
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
        return gx, None, None, None, None


def lif_recurrence(
    x: torch.Tensor,
    p: LIFParams,
    *,
    impl: str = "auto",
    b_th: float = 0.0,
    stats: dict | None = None,
) -> torch.Tensor:
    """Run the LIF recurrence over a time-major synaptic input ``x[T, ...]``; returns spikes ``S``.

    ``b_th`` only sets which entries are counted as active (``|V - thr| < b_th``) into ``stats``.
    """
    shape = x.shape
    impl = choose_impl(x, p, impl)
    S = LIFRecurrence.apply(x.reshape(shape[0], -1), p, impl, b_th, stats)
    return S.reshape(shape)
