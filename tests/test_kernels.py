"""The LIF recurrence kernels against a naive per-step autograd loop (issue 2, item 3)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsespike.kernels import lif_recurrence
from sparsespike.kernels.synapse import synaptic_linear
from sparsespike.neurons import LIFParams, lif_sequence_loop
from sparsespike.surrogate import FastSigmoid, Rectangle, Triangle

SURROGATES = [
    FastSigmoid(10.0),
    FastSigmoid(100.0),
    Triangle(1.0),
    Triangle(0.5, 2.0),
    Rectangle(1.0),
    Rectangle(0.5, 1.0),
]


def _check(p: LIFParams, T: int, B: int, N: int, seed: int, impl: str, dtype=torch.float64, tol=1e-9):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, B, N, generator=g, dtype=dtype) * 0.7 + 0.35).requires_grad_()
    w = torch.randn(T, B, N, generator=g, dtype=dtype)
    s_ref, _ = lif_sequence_loop(x, p)
    (g_ref,) = torch.autograd.grad((s_ref * w).sum(), x)
    s = lif_recurrence(x, p, impl=impl)
    (g_k,) = torch.autograd.grad((s * w).sum(), x)
    assert torch.equal(s, s_ref), "forward spikes differ from the per-step loop"
    assert s.sum() > 0, "test input should make neurons spike"
    torch.testing.assert_close(g_k, g_ref, atol=tol, rtol=0)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("alpha", [None, 0.6])
@pytest.mark.parametrize("detach", [True, False])
def test_every_combination_matches_loop(impl, surrogate, reset, alpha, detach):
    p = LIFParams(beta=0.85, alpha=alpha, threshold=1.0, reset=reset, detach_reset=detach, surrogate=surrogate)
    _check(p, T=25, B=3, N=7, seed=1, impl=impl)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    B=st.integers(1, 5),
    N=st.integers(1, 700),
    beta=st.floats(0.3, 1.0),
    alpha=st.one_of(st.none(), st.floats(0.0, 0.95)),
    thr=st.floats(0.2, 2.0),
    reset=st.sampled_from(["subtract", "zero"]),
    detach=st.booleans(),
    sur=st.sampled_from(SURROGATES),
    seed=st.integers(0, 10_000),
)
def test_numba_matches_loop_property(T, B, N, beta, alpha, thr, reset, detach, sur, seed):
    p = LIFParams(beta=beta, alpha=alpha, threshold=thr, reset=reset, detach_reset=detach, surrogate=sur)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, B, N, generator=g, dtype=torch.float64) * thr).requires_grad_()
    w = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    s_ref, _ = lif_sequence_loop(x, p)
    (g_ref,) = torch.autograd.grad((s_ref * w).sum(), x)
    s = lif_recurrence(x, p, impl="numba")
    (g_k,) = torch.autograd.grad((s * w).sum(), x)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(g_k, g_ref, atol=1e-9, rtol=1e-9)


def test_float32_large_parallel_path_is_as_accurate_as_torch_loop():
    # large enough to take the multi-threaded kernels; float32 against a float64 ground truth
    p = LIFParams(beta=0.9, surrogate=FastSigmoid(100.0))
    g = torch.Generator().manual_seed(0)
    x64 = (torch.randn(50, 40, 300, generator=g, dtype=torch.float64) * 0.5 + 0.2).requires_grad_()
    w64 = torch.randn(50, 40, 300, generator=g, dtype=torch.float64)
    s_true, _ = lif_sequence_loop(x64, p)
    (g_true,) = torch.autograd.grad((s_true * w64).sum(), x64)
    x = x64.detach().float().requires_grad_()
    w = w64.float()
    s_loop, _ = lif_sequence_loop(x, p)
    (g_loop,) = torch.autograd.grad((s_loop * w).sum(), x)
    s = lif_recurrence(x, p)
    (g_k,) = torch.autograd.grad((s * w).sum(), x)
    assert torch.equal(s, s_loop) and torch.equal(s.double(), s_true)
    err_kernel = (g_k.double() - g_true).abs().max()
    err_loop = (g_loop.double() - g_true).abs().max()
    assert err_kernel <= max(err_loop, 1e-5), (err_kernel, err_loop)


def test_activity_count_matches_mask():
    p = LIFParams(beta=0.9)
    x = torch.randn(20, 4, 30, dtype=torch.float64)
    _, v = lif_sequence_loop(x, p)
    for impl in ("numba", "torch"):
        stats: dict = {}
        lif_recurrence(x, p, impl=impl, b_th=0.2, stats=stats)
        assert stats["n_active"] == int(((v - 1.0).abs() < 0.2).sum())
        assert stats["n_total"] == x.numel()


@pytest.mark.parametrize("density", [0.02, 0.3])
def test_event_driven_synapse_matches_matmul(density):
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(12, 5, 70, generator=g) < density).double().requires_grad_()
    w = torch.randn(33, 70, dtype=torch.float64, requires_grad=True)
    b = torch.randn(33, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(12, 5, 33, dtype=torch.float64)
    y = synaptic_linear(s, w, b, event_driven=True)
    grads = torch.autograd.grad((y * gout).sum(), (s, w, b))
    y0 = torch.nn.functional.linear(s, w, b)
    grads0 = torch.autograd.grad((y0 * gout).sum(), (s, w, b))
    torch.testing.assert_close(y, y0)
    for a, r in zip(grads, grads0, strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("event_driven", [None, True])
def test_event_synapse_reads_the_attached_spike_list(event_driven):
    """Behind a sparse layer the event path builds its CSR from the layer's spike list (counting
    sort over T*B rows), not from a raster scan: same CSR as the scan, same outputs and
    gradients as the dense matmul."""
    import numpy as np

    from sparsespike.kernels import synapse
    from sparsespike.kernels.sparse import sparse_spiking_linear

    g = torch.Generator().manual_seed(5)
    x = (torch.rand(30, 6, 40, generator=g) < 0.2).double()
    W1 = (torch.randn(25, 40, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    s = sparse_spiking_linear(x, W1, None, LIFParams(beta=0.9), b_th=0.5)
    assert 0 < int(s.sum()) < s.numel()
    listed = synapse._csr_from_spike_list(s)
    scanned = synapse.to_csr(s.detach().reshape(-1, 25).contiguous().numpy())
    assert listed is not None
    for a, b in zip(listed, scanned, strict=True):
        np.testing.assert_array_equal(a, b)
    w = torch.randn(7, 25, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(30, 6, 7, dtype=torch.float64)
    y = synaptic_linear(s, w, event_driven=event_driven)
    gw, gW1 = torch.autograd.grad((y * gout).sum(), (w, W1))
    y0 = torch.nn.functional.linear(s, w)
    gw0, gW10 = torch.autograd.grad((y0 * gout).sum(), (w, W1))
    torch.testing.assert_close(y, y0)
    torch.testing.assert_close(gw, gw0)
    torch.testing.assert_close(gW1, gW10)
    # an input without a list (or changed in place since) is scanned as before
    assert synapse._csr_from_spike_list(s.detach().clone()) is None


def test_custom_surrogate_falls_back_to_torch():
    class Gauss:
        def grad(self, x):
            return torch.exp(-(x**2))

    p = LIFParams(beta=0.9, surrogate=Gauss())
    from sparsespike.kernels.recurrence import choose_impl

    assert choose_impl(torch.zeros(10, 2, 5), p) == "torch"
    assert choose_impl(torch.zeros(10, 2, 5), LIFParams(beta=0.9)) == "numba"  # a built-in one does not
    _check(p, T=10, B=2, N=5, seed=0, impl="auto")


def test_parallel_kernel_pairs_are_distinct_and_single_thread_runs_serial():
    """numba's disk cache ignores the ``parallel`` flag, so the serial twin must be its own
    function (else a later process loads the parallel build for both); with one numba thread the
    wrapper runs the serial build (a parallel region only adds a ~90 us hand-off)."""
    import numba
    import numpy as np
    from numba import prange

    from sparsespike.kernels.cpu import compile_pair, parallel_kernel

    def add_one(x, out):
        for i in prange(x.shape[0]):
            out[i] = x[i] + 1.0

    par, ser = compile_pair(add_one)
    assert par.py_func is add_one and ser.py_func is not add_one
    assert ser.py_func.__qualname__ == add_one.__qualname__ + "__serial"
    assert par.targetoptions.get("parallel") and not ser.targetoptions.get("parallel")

    k = parallel_kernel(add_one)
    x = np.arange(5.0)
    out = np.zeros(5)
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        k(x, out)
    finally:
        numba.set_num_threads(n)
    np.testing.assert_array_equal(out, x + 1.0)
    assert k.serial.signatures and not k.parallel.signatures

    # the selection rule: small work -> serial; one thread -> serial unless the serial build
    # does not vectorise (serial_on_one_thread=False); otherwise parallel
    from sparsespike.kernels.cpu import Kernel

    lif_like = Kernel(add_one, min_work=100, serial_on_one_thread=False)
    assert lif_like.select(10) is lif_like.serial
    numba.set_num_threads(1)
    try:
        assert lif_like.select(1000) is lif_like.parallel
        assert k.select(1000) is k.serial
    finally:
        numba.set_num_threads(n)
    if n > 1:
        assert k.select(1000) is k.parallel and lif_like.select(1000) is lif_like.parallel


@pytest.mark.parametrize("with_vals", [False, True])
def test_list_counts_and_count_grad_kernels_match_torch(with_vals):
    """Per-sample spike counts of a b-major list and the count gradient spread to its entries
    (numba kernels) against the torch bincount / gather formulations."""
    from sparsespike.kernels.sparse import ActiveSet, _grad_at_active, _list_counts

    g = torch.Generator().manual_seed(11)
    T, B, F = 7, 4, 9
    mask = torch.rand(T, B, F, generator=g) < 0.3
    s = ActiveSet.from_mask(mask)
    if with_vals:
        s.vals = torch.rand(s.n, generator=g, dtype=torch.float64)
    dense = torch.zeros(T, B, F, dtype=torch.float64)
    dense[mask] = 1.0
    if with_vals:
        dense.reshape(-1)[s.flat_index()] = s.vals
    torch.testing.assert_close(_list_counts(s, torch.float64), dense.sum(0))
    torch.testing.assert_close(_list_counts(s, torch.float64, per_sample=False), dense.sum((0, 1)))
    gc = torch.randn(B, F, generator=g, dtype=torch.float64)
    gs = torch.randn(s.n, generator=g, dtype=torch.float64)
    t_idx, b_idx, f_idx = s.coo_indices()
    want = gs + gc[b_idx, f_idx]
    coo = s.sparse_tensor(gs.clone())
    got = _grad_at_active(coo, gc, s, torch.float64)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(coo._values(), gs)  # the incoming gradient is not modified
    torch.testing.assert_close(_grad_at_active(None, gc, s, torch.float64), gc[b_idx, f_idx])


def test_sparse_layer_serial_builds_match_parallel_builds():
    """With one numba thread the sparse layer runs every kernel's serial build
    (``parallel_kernel``); spikes and gradients equal those of the parallel builds."""
    import numba

    from sparsespike.kernels.sparse import sparse_spiking_linear

    g = torch.Generator().manual_seed(9)
    x = (torch.rand(40, 8, 60, generator=g) < 0.15).float()
    W1 = (torch.randn(50, 60, generator=g) * 0.5).requires_grad_()
    W2 = (torch.randn(30, 50, generator=g) * 0.5).requires_grad_()
    gout = torch.randn(40, 8, 30, generator=g)

    def run():
        s1 = sparse_spiking_linear(x, W1, None, LIFParams(beta=0.9), b_th=0.4)
        s2 = sparse_spiking_linear(s1, W2, None, LIFParams(beta=0.9), b_th=0.4)
        return (s2,) + torch.autograd.grad((s2 * gout).sum(), (W1, W2))

    n = numba.get_num_threads()
    ref = run()
    numba.set_num_threads(1)
    try:
        one = run()
    finally:
        numba.set_num_threads(n)
    assert int(ref[0].sum()) > 0
    for a, b in zip(one, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
