"""Pins on the neuron maths of the kernels, found by mutation testing of ``sparsespike.kernels``.

Every expectation here comes from outside the code under test: a trajectory computed by hand
(dyadic values, so float32 and float64 are exact), the papers' equations, or plain autograd
through the per-step loop :func:`sparsespike.neurons.lif_sequence_loop`. The cases sit where the
existing suite is blind: exact ties at the threshold and at the window edge (strict ``>`` and
``<``), thresholds other than 1, surrogate widths other than 1, asymmetric user surrogates,
float32 decay tables over long silent gaps, and the validation of the neuron parameters. The
Triton kernels run under ``TRITON_INTERPRET=1`` on CPU tensors.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparsespike.kernels import lif_recurrence
from sparsespike.kernels.sparse import (
    MaskedSurrogate,
    active_set,
    attach_active_set,
    attach_spike_list,
    lif_recurrence_masked,
    sparse_spiking_linear,
    spike_counts,
    spike_list,
)
from sparsespike.layers import (
    LeakyReadout,
    SpikeCountReadout,
    SpikingConv2d,
    SpikingLinear,
    set_backward,
)
from sparsespike.neurons import LIFParams, lif_sequence_loop
from sparsespike.surrogate import FastSigmoid, Rectangle, Triangle

DT = torch.float64
HUGE = 1e9  # every neuron active


@pytest.fixture(params=["numba", "torch", "triton"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A recurrence / sparse-layer implementation; Triton through its CPU interpreter."""
    if request.param == "triton":
        from sparsespike.kernels import triton_gpu

        if not triton_gpu.HAS_TRITON:
            pytest.skip("triton not importable")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return str(request.param)


def hand_lif(cur: list[float], beta: float, thr: float) -> tuple[list[float], list[float]]:
    """Perez-Nieves & Goodman eqs. 2 and 4 (no-delay indexing, subtractive reset by ``thr``, strict
    ``V > thr``) for one neuron, in plain Python: ``(S, V)`` with ``V`` before the reset."""
    u, S, V = 0.0, [], []
    for c in cur:
        v = beta * u + c
        s = 1.0 if v > thr else 0.0
        u = v - thr * s
        S.append(s)
        V.append(v)
    return S, V


def _grad_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    a = a.to_dense() if a.is_sparse else a
    b = b.to_dense() if b.is_sparse else b
    torch.testing.assert_close(a.to(DT), b.to(DT), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ eq. 4: strict >


def test_membrane_equal_to_threshold_does_not_spike(impl: str) -> None:
    """Perez-Nieves & Goodman eq. 4: ``f(v) = 1`` iff ``v > V_th``; a membrane exactly at the
    threshold stays silent. Hand trajectories (beta 0.5, thr 1, dyadic so exact in float32):
    input 1.0 at t=0 gives V = 1, 0.5, 0.25 (no spike); input 1.5 gives V = 1.5 (spike), then
    U = 0.5, V = 0.25, 0.125."""
    dtype = torch.float32 if impl == "triton" else DT
    p = LIFParams(beta=0.5, threshold=1.0)
    want = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=dtype)  # [T, N]
    for w, col in ((1.0, 0), (1.5, 1)):
        s, _ = hand_lif([w, 0.0, 0.0], 0.5, 1.0)
        assert s == want[:, col].tolist()
    # the dense recurrence driven by the synaptic input directly
    cur = torch.tensor([[1.0, 1.5], [0.0, 0.0], [0.0, 0.0]], dtype=dtype)
    assert torch.equal(lif_recurrence(cur, p, impl=impl), want)
    assert torch.equal(lif_recurrence_masked(cur, p, 0.3, impl=impl), want)
    # the fused sparse layer: one input spike at t=0 through W = [[1.0], [1.5]]
    x = torch.zeros(3, 1, 1, dtype=dtype)
    x[0] = 1.0
    W = torch.tensor([[1.0], [1.5]], dtype=dtype, requires_grad=True)
    S = sparse_spiking_linear(x, W, None, p, 0.3, impl=impl)
    assert torch.equal(S[:, 0], want)
    # the per-step autograd reference of the whole suite
    s_ref, _ = lif_sequence_loop(cur, p)
    assert torch.equal(s_ref, want)


# ------------------------------------------------------------------ eq. 2: reset by V_th - V_r


@pytest.mark.parametrize("thr", [0.5, 0.75])
def test_reset_subtracts_the_threshold(impl: str, thr: float) -> None:
    """Eq. 2 subtracts ``(V_th - V_r) S`` = ``thr`` (V_r = 0) after a spike, not 1. beta = 1 and a
    constant input of 0.625 (dyadic, exact in float32): the spike train is the hand one of
    :func:`hand_lif` (thr 0.75: 0,1,1,1,1,0,1,1 -- step 5 is a tie V = thr), which differs from
    a reset by 1."""
    dtype = torch.float32 if impl == "triton" else DT
    T = 8
    c = [0.625] * T
    s_want, _ = hand_lif(c, 1.0, thr)
    s_wrong, _ = hand_lif_reset_one(c, 1.0, thr)
    assert s_want != s_wrong
    p = LIFParams(beta=1.0, threshold=thr)
    want = torch.tensor(s_want, dtype=dtype)
    cur = torch.tensor(c, dtype=dtype).reshape(T, 1)
    assert torch.equal(lif_recurrence(cur, p, impl=impl)[:, 0], want)
    assert torch.equal(lif_recurrence_masked(cur, p, 0.3, impl=impl)[:, 0], want)
    x = torch.ones(T, 1, 1, dtype=dtype)
    W = torch.tensor([[0.625]], dtype=dtype, requires_grad=True)
    S = sparse_spiking_linear(x, W, None, p, 0.3, impl=impl)
    assert torch.equal(S[:, 0, 0], want)


def hand_lif_reset_one(cur: list[float], beta: float, thr: float) -> tuple[list[float], list[float]]:
    """The same neuron with the reset wrongly subtracting 1 (used only to check the test can tell)."""
    u, S, V = 0.0, [], []
    for c in cur:
        v = beta * u + c
        s = 1.0 if v > thr else 0.0
        u = v - s
        S.append(s)
        V.append(v)
    return S, V


def test_sparse_layer_with_threshold_not_one_matches_autograd(impl: str) -> None:
    """A sparse layer with thr 0.6 and a narrow window: spikes and dW, db, dx equal per-step
    autograd with the surrogate masked to ``|V - thr| < B_th`` (Perez-Nieves eqs. 7-8)."""
    dtype = torch.float32 if impl == "triton" else DT
    tol = 1e-4 if impl == "triton" else 1e-10
    g = torch.Generator().manual_seed(11)
    T, B, K, N = 14, 2, 6, 5
    x = (torch.rand(T, B, K, generator=g, dtype=DT) < 0.35).to(dtype).requires_grad_()
    W = (torch.randn(N, K, generator=g, dtype=DT) * 0.7).to(dtype).requires_grad_()
    b = (torch.randn(N, generator=g, dtype=DT) * 0.1).to(dtype).requires_grad_()
    gs = torch.randn(T, B, N, generator=g, dtype=DT).to(dtype)
    p = LIFParams(beta=0.8, threshold=0.6, surrogate=FastSigmoid(4.0))
    S = sparse_spiking_linear(x, W, b, p, 0.25, impl=impl)
    pm = p.replace(surrogate=MaskedSurrogate(p.surrogate, 0.25))
    R, V = lif_sequence_loop(x.to(DT) @ W.to(DT).t() + b.to(DT), pm)
    assert torch.equal(S.to(DT), R) and R.sum() > 0
    assert 0 < int(((V - 0.6).abs() < 0.25).sum()) < V.numel()
    for a, r in zip(torch.autograd.grad(S, [x, W, b], gs), torch.autograd.grad(R, [x, W, b], gs.to(DT)), strict=True):
        _grad_close(a, r, tol)


# ------------------------------------------------------------------ eq. 7: strict window edge


def test_window_edge_is_not_active(impl: str) -> None:
    """Def. 1 / eq. 7: active iff ``|V - V_th| < B_th`` (strict). With thr 1 and B_th 0.5, T = 1
    membranes 0.5 and 1.5 sit exactly on the edge (inactive), 0.75 and 1.25 inside (active),
    0.25 outside: 2 active of 5, and the masked surrogate (eq. 8) is 0 on the edge."""
    dtype = torch.float32 if impl == "triton" else DT
    vals = [0.5, 1.5, 0.75, 1.25, 0.25]
    want_mask = torch.tensor([[False, False, True, True, False]])
    p = LIFParams(beta=0.5, threshold=1.0, surrogate=Triangle(1.0))
    cur = torch.tensor([vals], dtype=dtype).requires_grad_()
    # dense BPTT path: b_th only counts activity
    st_: dict = {}
    lif_recurrence(cur, p, impl=impl, b_th=0.5, stats=st_)
    assert st_["n_active"] == 2
    # masked dense recurrence: count, attached mask and the gradient (Triangle(1): 1 - |d|)
    cur3 = cur.detach().reshape(1, 1, 5).requires_grad_()
    st_ = {}
    S = lif_recurrence_masked(cur3, p, 0.5, st_, impl=impl)
    assert st_["n_active"] == 2
    assert torch.equal(active_set(S).mask()[0], want_mask)
    (gx,) = torch.autograd.grad(S.sum(), cur3)
    want_g = torch.tensor([0.0, 0.0, 0.75, 0.75, 0.0], dtype=DT)
    _grad_close(gx.reshape(-1), want_g)
    # the fused sparse layer: one input spike through W = vals
    x = torch.ones(1, 1, 1, dtype=dtype)
    W = torch.tensor(vals, dtype=dtype).reshape(5, 1).requires_grad_()
    st_ = {}
    S = sparse_spiking_linear(x, W, None, p, 0.5, st_, impl=impl)
    assert st_["n_active"] == 2
    assert torch.equal(active_set(S).mask()[0], want_mask)
    (gw,) = torch.autograd.grad(S.sum(), W)
    _grad_close(gw.reshape(-1), want_g)
    # the surrogate wrapper itself
    d = torch.tensor(vals, dtype=DT) - 1.0
    _grad_close(MaskedSurrogate(Triangle(1.0), 0.5).grad(d), want_g)


# --------------------------------------------------------------- surrogate shapes and widths


def test_surrogate_values_at_the_edges(impl: str) -> None:
    """T = 1, so ``dL/dX = dL/dS * g(V - thr)``: Rectangle is ``height * 1[|x| < width/2]``
    (strict, as Wu et al.'s STBP code ``|u - thresh| < lens``), Triangle is
    ``height * max(0, 1 - |x|/width)`` (width 0.5, height 2: 1.0 at |x| = 0.25, 0 at 0.5), FastSigmoid
    ``1/(scale|x| + 1)^2`` (scale 4: 0.25 at |x| = 0.25, 1/9 at 0.5)."""
    dtype = torch.float32 if impl == "triton" else DT
    d = [-0.5, 0.5, -0.25, 0.25, 0.0]
    cases: list[tuple[object, list[float]]] = [
        (Rectangle(1.0, 1.0), [0.0, 0.0, 1.0, 1.0, 1.0]),
        (Rectangle(0.5, 2.0), [0.0, 0.0, 0.0, 0.0, 2.0]),
        (Triangle(0.5, 2.0), [0.0, 0.0, 1.0, 1.0, 2.0]),
        (FastSigmoid(4.0), [1 / 9, 1 / 9, 0.25, 0.25, 1.0]),
    ]
    for sur, want in cases:
        p = LIFParams(beta=0.5, threshold=1.0, surrogate=sur)
        cur = (torch.tensor([d], dtype=dtype) + 1.0).requires_grad_()
        (gx,) = torch.autograd.grad(lif_recurrence(cur, p, impl=impl).sum(), cur)
        _grad_close(gx[0], torch.tensor(want, dtype=DT), 1e-7)
        assert sur.grad(torch.tensor(d, dtype=DT)).tolist() == pytest.approx(want, abs=1e-15)


def test_default_surrogate_is_the_papers_fast_sigmoid() -> None:
    """Perez-Nieves & Goodman sec. 3: ``g(V) = 1/(beta|V - V_th| + 1)^2`` with beta = 100
    (``SurrGradSpike.scale = 100``, METHODS.md 1(a)); at |x| = 0.01 it is 1/4."""
    p = LIFParams()
    assert isinstance(p.surrogate, FastSigmoid)
    g = p.surrogate.grad(torch.tensor([0.01, -0.01, 0.0], dtype=DT))
    torch.testing.assert_close(g, torch.tensor([0.25, 0.25, 1.0], dtype=DT))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_recurrences_with_threshold_and_differentiated_reset_match_autograd(impl: str, reset: str) -> None:
    """Non-detached reset and thr 0.7: ``dU/dV = 1 - thr g`` (subtract) or ``(1 - S) - V g``
    (zero); each implementation's input gradient equals per-step autograd, for Triangle widths
    other than 1 and a synaptic current."""
    dtype = torch.float32 if impl == "triton" else DT
    tol = 1e-4 if impl == "triton" else 1e-10
    g = torch.Generator().manual_seed(2)
    cur = (torch.randn(12, 2, 5, generator=g, dtype=DT) * 0.6 + 0.3).to(dtype).requires_grad_()
    gs = torch.randn(cur.shape, generator=g, dtype=DT).to(dtype)
    for alpha in (None, 0.5):
        p = LIFParams(beta=0.85, alpha=alpha, threshold=0.7, reset=reset, detach_reset=False, surrogate=Triangle(0.6))
        S = lif_recurrence(cur, p, impl=impl)
        c64 = cur.detach().to(DT).requires_grad_()
        R, _ = lif_sequence_loop(c64, p)
        assert torch.equal(S.to(DT), R) and R.sum() > 0
        (a,) = torch.autograd.grad(S, cur, gs)
        (r,) = torch.autograd.grad(R, c64, gs.to(DT))
        _grad_close(a, r, tol)
        # the masked variant (eq. 8) against autograd with the masked surrogate
        Sm = lif_recurrence_masked(cur, p, 0.35, impl=impl)
        Rm, _ = lif_sequence_loop(c64, p.replace(surrogate=MaskedSurrogate(p.surrogate, 0.35)))
        (am,) = torch.autograd.grad(Sm, cur, gs)
        (rm,) = torch.autograd.grad(Rm, c64, gs.to(DT))
        _grad_close(am, rm, tol)


# ---------------------------------------------------------------------- user surrogates


def test_asymmetric_user_surrogate_sees_the_signed_distance() -> None:
    """A user surrogate is evaluated at the signed ``V - thr`` (eq. 8's ``g(V)``), also on the
    compiled sparse path: an asymmetric one (larger below the threshold) gives the per-step
    autograd gradients, not those of ``g(|V - thr|)``."""

    class Skewed:
        def grad(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x < 0, 1.0 / (1.0 + 2.0 * x.abs()), 0.25 / (1.0 + 8.0 * x))

    g = torch.Generator().manual_seed(4)
    x = (torch.rand(12, 2, 6, generator=g, dtype=DT) < 0.4).to(DT)
    W = (torch.randn(5, 6, generator=g, dtype=DT) * 0.9).requires_grad_()
    gs = torch.randn(12, 2, 5, generator=g, dtype=DT)
    p = LIFParams(beta=0.9, surrogate=Skewed())
    st_: dict = {}
    S = sparse_spiking_linear(x, W, None, p, 0.5, st_)
    assert st_["backend"] == "numba"
    R, _ = lif_sequence_loop(x @ W.t(), p.replace(surrogate=MaskedSurrogate(Skewed(), 0.5)))
    assert torch.equal(S, R)
    _grad_close(torch.autograd.grad(S, W, gs)[0], torch.autograd.grad(R, W, gs)[0])


# ------------------------------------------------------------ float32 decay tables, Prop. 1


def test_float32_long_silent_gap_keeps_gradients_finite_and_exact() -> None:
    """The walks keep their accumulators relative to a base step, with ``beta**-n`` from a table,
    rescaling before ``beta**-n`` passes 2**20. beta 0.5 and input spikes 150 steps apart: a
    table reaching ``0.5**-150`` overflows float32 (NaN gradients). Against float64 autograd, all
    neurons active, for the weight (eqs. 9-10) and the sparse input gradient (eqs. 11-12)."""
    T = 200
    x = torch.zeros(T, 1, 2)
    x[0, 0, 0] = x[150, 0, 0] = x[3, 0, 1] = x[170, 0, 1] = 1.0
    W = torch.tensor([[0.5, 0.25], [0.25, 0.5]], requires_grad=True)
    gs = torch.ones(T, 1, 2)
    p = LIFParams(beta=0.5)
    xs = x.clone().requires_grad_()
    attach_active_set(xs, torch.ones(x.shape, dtype=torch.bool))
    S = sparse_spiking_linear(xs, W, None, p, HUGE)
    gx, gw = torch.autograd.grad(S, [xs, W], gs)
    x64 = x.to(DT).requires_grad_()
    W64 = W.detach().to(DT).requires_grad_()
    R, _ = lif_sequence_loop(x64 @ W64.t(), p.replace(surrogate=MaskedSurrogate(p.surrogate, HUGE)))
    rx, rw = torch.autograd.grad(R, [x64, W64], gs.to(DT))
    assert torch.isfinite(gw).all() and torch.isfinite(gx.to_dense()).all()
    torch.testing.assert_close(gw.to(DT), rw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gx.to_dense().to(DT), rx, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------- spike counts, eq. 12


def test_spike_counts_of_a_listed_input_has_the_gradient_of_the_sum() -> None:
    """``spike_counts(x)`` counted from an attached spike list has the gradient of
    ``x.sum((0, 1))`` (ones over time and batch), per sample and summed over the batch."""
    g = torch.Generator().manual_seed(0)
    raster = (torch.rand(6, 3, 4, generator=g) < 0.4).to(DT)
    w = torch.randn(4, generator=g, dtype=DT)
    wb = torch.randn(3, 4, generator=g, dtype=DT)
    for per_sample, weight in ((False, w), (True, wb)):
        x = raster.clone().requires_grad_()
        attach_spike_list(x, spike_list(x))
        c = spike_counts(x, per_sample=per_sample)
        torch.testing.assert_close(c, raster.sum(0) if per_sample else raster.sum((0, 1)))
        (gx,) = torch.autograd.grad((weight * c).sum(), x)
        torch.testing.assert_close(gx, weight.expand(6, 3, 4))


def test_fallback_layer_masks_an_analog_input_gradient_to_its_active_set() -> None:
    """Eq. 12: the input gradient exists only where the input is active. A fallback neuron
    (zero reset) reading a non-binary input with an attached active set returns a sparse
    gradient equal to the dense autograd one times the mask."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 2, 6, generator=g, dtype=DT) * (torch.rand(10, 2, 6, generator=g, dtype=DT) < 0.5)
    W = (torch.randn(4, 6, generator=g, dtype=DT) * 1.5).requires_grad_()
    gs = torch.randn(10, 2, 4, generator=g, dtype=DT)
    m = torch.rand(x.shape, generator=g) < 0.5
    p = LIFParams(beta=0.9, reset="zero")
    xs = x.clone().requires_grad_()
    attach_active_set(xs, m)
    S = sparse_spiking_linear(xs, W, None, p, HUGE)
    (gx,) = torch.autograd.grad(S, xs, gs)
    assert gx.is_sparse
    x64 = x.clone().requires_grad_()
    R, _ = lif_sequence_loop(x64 @ W.t(), p)
    (rx,) = torch.autograd.grad(R, x64, gs)
    assert (rx * ~m).abs().sum() > 0  # the mask removes something
    _grad_close(gx, rx * m)


def test_dl_ds_as_a_sparse_tensor_in_another_entry_order() -> None:
    """``dL/dS`` handed in as a sparse COO tensor over exactly the active entries but in another
    order (coalesced: sorted by ``(t, b, j)``, not batch-major) gives the dense gradients, also
    once the active set's own COO indices were built (``coo_indices``, e.g. for inspection)."""
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(8, 3, 6, generator=g, dtype=DT) < 0.4).to(DT)
    W = (torch.randn(5, 6, generator=g, dtype=DT) * 1.5).requires_grad_()
    S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), HUGE)
    gs = torch.randn(S.shape, generator=g, dtype=DT)
    sp = gs.to_sparse()
    act = active_set(S)
    assert act.coo_indices().shape == (3, sp._nnz())  # inspected (and cached): same count
    assert not torch.equal(act.coo_indices(), sp._indices())  # but another order
    (a,) = torch.autograd.grad(S, W, sp, retain_graph=True)
    R, _ = lif_sequence_loop(x @ W.t(), LIFParams(beta=0.9))
    (r,) = torch.autograd.grad(R, W, gs)
    _grad_close(a, r)


def test_spike_and_count_gradients_together_on_cpu() -> None:
    """A loss on the spikes and on their per-sample counts (``spike_counts``, the layer's second
    output) at once: dW, db equal per-step autograd of ``gs * S + wc * S.sum(0)`` with the
    masked surrogate (eqs. 7-10), one numba thread (the fused single-block walk)."""
    import numba

    g = torch.Generator().manual_seed(7)
    T, B, K, N = 12, 3, 5, 6
    x = (torch.rand(T, B, K, generator=g, dtype=DT) < 0.5).to(DT)
    W = (torch.randn(N, K, generator=g, dtype=DT) * 1.2).requires_grad_()
    b = (torch.randn(N, generator=g, dtype=DT) * 0.1).requires_grad_()
    gs = torch.randn(T, B, N, generator=g, dtype=DT)
    wc = torch.randn(B, N, generator=g, dtype=DT)
    p = LIFParams(beta=0.9, surrogate=FastSigmoid(5.0))
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        S = sparse_spiking_linear(x, W, b, p, 0.4)
        loss = (gs * S).sum() + (wc * spike_counts(S, per_sample=True)).sum()
        got = torch.autograd.grad(loss, [W, b])
    finally:
        numba.set_num_threads(old)
    R, _ = lif_sequence_loop(x @ W.t() + b, p.replace(surrogate=MaskedSurrogate(p.surrogate, 0.4)))
    want = torch.autograd.grad((gs * R).sum() + (wc * R.sum(0)).sum(), [W, b])
    assert torch.equal(S, R) and R.sum() > 0
    for a, r in zip(got, want, strict=True):
        _grad_close(a, r)


def test_masked_recurrence_refuses_nan_input(impl: str) -> None:
    """A NaN or inf synaptic input is refused by the masked recurrence on every implementation,
    although the masked surrogate (0 outside the window) hides the bad membrane."""
    from sparsespike.errors import SpikeInputError

    dtype = torch.float32
    for bad in (float("nan"), float("inf")):
        cur = torch.tensor([[0.5, bad, 0.2]] * 3, dtype=dtype)
        with pytest.raises(SpikeInputError, match="NaN"):
            lif_recurrence_masked(cur, LIFParams(beta=0.9, surrogate=Rectangle(1.0)), 0.2, impl=impl)


def test_sparse_conv_and_current_based_layers_use_their_window() -> None:
    """The layers that run the masked recurrence (a conv layer; a linear layer with a synaptic
    current) use their own ``b_th``: gradients equal per-step autograd with the surrogate masked
    to ``|V - thr| < b_th`` (eq. 8), and differ from the unmasked ones."""
    torch.manual_seed(2)
    conv = SpikingConv2d(1, 2, 3, LIFParams(beta=0.9), padding=1, backward="sparse", b_th=0.25, weight_scale=8.0)
    conv = conv.double()
    lin = SpikingLinear(6, 4, LIFParams(beta=0.9, alpha=0.5), backward="sparse", b_th=0.25, weight_scale=3.0)
    lin = lin.double()
    xc = (torch.rand(6, 2, 1, 5, 5) < 0.4).to(DT)
    xl = (torch.rand(6, 2, 6) < 0.4).to(DT)
    for layer, x, current in (
        (conv, xc, lambda: conv.conv(xc.reshape(12, 1, 5, 5)).reshape(6, 2, 2, 5, 5)),
        (lin, xl, lambda: xl @ lin.weight.t()),
    ):
        S = layer(x)
        gs = torch.randn(S.shape, dtype=DT)
        (a,) = torch.autograd.grad(S, layer.weight, gs)
        p = layer.neuron
        R, _ = lif_sequence_loop(current(), p.replace(surrogate=MaskedSurrogate(p.surrogate, 0.25)))
        (r,) = torch.autograd.grad(R, layer.weight, gs)
        assert torch.equal(S, R) and R.sum() > 0
        _grad_close(a, r)
        Ru, _ = lif_sequence_loop(current(), p)
        (ru,) = torch.autograd.grad(Ru, layer.weight, gs)
        assert not torch.allclose(ru, r)


# ----------------------------------------------------------------- event-driven synaptic input


def test_event_driven_synaptic_input_keeps_analog_values() -> None:
    """A sparse but graded input (e.g. average-pooled spikes, Yin et al.) is not a spike list of
    ones: the synaptic input equals ``x @ W.T`` (automatic path at 3 % density, 12 outputs), the
    forced event path refuses it, and a dense-backward layer spikes as the per-step loop."""
    from sparsespike.kernels.synapse import synaptic_linear

    g = torch.Generator().manual_seed(5)
    x = torch.rand(10, 3, 20, generator=g, dtype=DT) * (torch.rand(10, 3, 20, generator=g, dtype=DT) < 0.03)
    x[0, 0, 0] = 0.5  # at least one graded entry
    W = torch.randn(12, 20, generator=g, dtype=DT)
    torch.testing.assert_close(synaptic_linear(x, W), x @ W.t())
    with pytest.raises(ValueError, match="binary"):
        synaptic_linear(x, W, event_driven=True)
    layer = SpikingLinear(20, 12, LIFParams(beta=0.9), weight_scale=8.0).double()
    s_ref, _ = lif_sequence_loop(x @ layer.weight.detach().t(), layer.neuron)
    assert torch.equal(layer(x), s_ref) and s_ref.sum() > 0


# --------------------------------------------------------------------- validation of inputs


@pytest.mark.parametrize(
    "kw",
    [dict(beta=0.0), dict(beta=-0.1), dict(alpha=1.0), dict(alpha=-0.1), dict(threshold=0.0), dict(threshold=-1.0)],
)
def test_neuron_parameters_outside_their_ranges_are_refused(kw: dict) -> None:
    """``beta`` in (0, 1], ``alpha`` in [0, 1) or None, ``threshold`` > 0 (neurons.LIFParams)."""
    with pytest.raises(ValueError):
        LIFParams(**kw)


def test_neuron_parameters_at_their_allowed_edges_are_kept() -> None:
    assert LIFParams(beta=1.0).beta == 1.0
    assert LIFParams(alpha=0.0).alpha == 0.0


def test_from_taus_uses_each_time_constant() -> None:
    """``beta = exp(-dt/tau_mem)``, ``alpha = exp(-dt/tau_syn)`` (Perez-Nieves sec. 2.1,
    Neftci et al. 2019 eq. 5)."""
    p = LIFParams.from_taus(10.0, dt=2.0, tau_syn=5.0)
    assert p.beta == pytest.approx(math.exp(-0.2))
    assert p.alpha == pytest.approx(math.exp(-0.4))
    assert LIFParams.from_taus(20.0).alpha is None


@pytest.mark.parametrize("b_th", [0.0, -0.2, float("nan")])
def test_window_half_width_must_be_positive(b_th: float) -> None:
    """B_th is a half-width: 0 (no active neuron by construction), negative or NaN are refused by
    the sparse layer function, the layers and ``set_backward``."""
    x = torch.zeros(3, 1, 2)
    W = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="b_th"):
        sparse_spiking_linear(x, W, None, LIFParams(), b_th)
    with pytest.raises(ValueError, match="b_th"):
        SpikingLinear(2, 2, backward="sparse", b_th=b_th)
    net = torch.nn.Sequential(SpikingLinear(2, 2))
    with pytest.raises(ValueError, match="b_th"):
        set_backward(net, "sparse", b_th=b_th)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_readout_decay_outside_unit_interval_is_refused(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        LeakyReadout(3, 2, beta=beta)


# ------------------------------------------------------------------------- layer defaults


def test_default_window_is_the_papers_half_width() -> None:
    """METHODS.md 1(a): the code's ``b_th = 0.8`` is the lower edge, so Def. 1's half-width is
    ``B_th = 1 - 0.8 = 0.2``."""
    assert SpikingLinear(3, 2).b_th == pytest.approx(1.0 - 0.8)
    assert SpikingConv2d(1, 2, 3).b_th == pytest.approx(1.0 - 0.8)


def test_layer_activity_is_percent_of_active_entries() -> None:
    """Activity = 100 * #(|V - thr| < B_th) / (T*B*N) (Perez-Nieves sec. 3 / eq. 13), counted here
    from the membranes of the per-step loop, for both backward modes."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(20, 3, 8, generator=g, dtype=DT) < 0.3).to(DT)
    for backward in ("sparse", "dense"):
        layer = SpikingLinear(8, 6, LIFParams(beta=0.9), backward=backward, b_th=0.3, weight_scale=3.0).double()
        layer(x)
        _, V = lif_sequence_loop(x @ layer.weight.detach().t(), layer.neuron)
        want = 100.0 * int(((V - 1.0).abs() < 0.3).sum()) / V.numel()
        assert 0 < want < 100
        assert layer.activity() == pytest.approx(want)


def test_default_weight_init_bound_is_one_over_sqrt_fan_in() -> None:
    """PyTorch's default ``U(+-1/sqrt(fan_in))`` (Perez-Nieves SHD init, METHODS.md 1(b))."""
    torch.manual_seed(0)
    w = SpikingLinear(400, 60).weight.detach()
    bound = 1.0 / math.sqrt(400)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    w = LeakyReadout(400, 60).weight.detach()
    assert bound * 0.99 < float(w.abs().max()) <= bound


def test_weight_scale_init_uses_the_full_fan_in() -> None:
    """``W ~ N(0, weight_scale / sqrt(fan_in))`` with ``fan_in = C_in * kh * kw`` for a conv and
    ``in_features`` for a linear layer (Perez-Nieves F-MNIST init)."""
    torch.manual_seed(0)
    conv = SpikingConv2d(3, 64, 3, weight_scale=2.0)
    assert float(conv.weight.detach().std()) == pytest.approx(2.0 / math.sqrt(27), rel=0.1)
    lin = SpikingLinear(200, 50, weight_scale=2.0)
    assert float(lin.weight.detach().std()) == pytest.approx(2.0 / math.sqrt(200), rel=0.1)


def test_spike_count_readout_mean_is_the_rate() -> None:
    """``SpikeCountReadout(mean=True)``: spike count / T (Yin et al. eq. 5 voting)."""
    s = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]], [[0.0, 0.0]]])  # [T=4, B=1, N=2]
    torch.testing.assert_close(SpikeCountReadout(mean=True)(s), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(SpikeCountReadout(mean=False)(s), torch.tensor([[2.0, 2.0]]))
