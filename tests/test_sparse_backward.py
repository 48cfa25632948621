"""Sparse spiking gradient descent (Perez-Nieves & Goodman 2021): correctness of the sparse backward.

References are plain autograd through the per-step loop :func:`sparsespike.neurons.lif_sequence_loop`
with the surrogate masked to the window (``MaskedSurrogate``, eq. 8). Everything runs in float64
so that sparse and dense agree to round-off.
"""

from __future__ import annotations

import os
import shutil

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsespike.errors import SpikeInputError
from sparsespike.kernels import sparse as sparse_mod
from sparsespike.kernels import sparse_cpu as kc
from sparsespike.kernels.sparse import (
    ActiveSet,
    MaskedSurrogate,
    _decay_tables,
    active_set,
    attach_active_set,
    lif_recurrence_masked,
    share_active_set,
    sparse_spiking_linear,
    spike_list,
)
from sparsespike.neurons import LIFParams, lif_sequence_loop
from sparsespike.surrogate import FastSigmoid, Rectangle, Triangle

DT = torch.float64
HUGE = 1e9  # every neuron active
SET = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

surrogates = st.sampled_from([FastSigmoid(100.0), FastSigmoid(2.0), Triangle(1.0, 0.8), Rectangle(1.5, 1.0)])


def ref_layer(x, W, bias, p: LIFParams, b_th: float):
    """Per-step autograd reference: ``(S, V)`` with the masked surrogate."""
    pm = p.replace(surrogate=MaskedSurrogate(p.surrogate, b_th))
    cur = x @ W.t()
    if bias is not None:
        cur = cur + bias
    return lif_sequence_loop(cur, pm)


def make(seed, T, B, K, N, density, scale, binary=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    if binary:
        x = (torch.rand(T, B, K, generator=g, dtype=DT) < density).to(DT)
    else:
        x = torch.rand(T, B, K, generator=g, dtype=DT) * (torch.rand(T, B, K, generator=g, dtype=DT) < density)
    W = (torch.randn(N, K, generator=g, dtype=DT) * scale).requires_grad_()
    b = (torch.randn(N, generator=g, dtype=DT) * 0.2).requires_grad_() if bias else None
    gs = torch.randn(T, B, N, generator=g, dtype=DT)
    return x, W, b, gs


def grads(out, inputs, gs):
    inputs = [i for i in inputs if i is not None]
    gr = torch.autograd.grad(out, inputs, gs, allow_unused=True, retain_graph=True)
    return [g.to_dense() if (g is not None and g.is_sparse) else g for g in gr]


def close(a, b, tol=1e-10):
    assert a.shape == b.shape
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol * (1 + b.abs().max().item() if b.numel() else 1), err


# ---------------------------------------------------------------------------------------- (a)


@SET
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(1, 12),
    B=st.integers(1, 4),
    K=st.integers(1, 9),
    N=st.integers(1, 7),
    density=st.floats(0.05, 0.6),
    beta=st.floats(0.5, 1.0),
    sur=surrogates,
    reset=st.sampled_from(["subtract", "zero"]),
    alpha=st.sampled_from([None, 0.6]),
    binary=st.booleans(),
)
def test_all_active_equals_dense_loop(seed, T, B, K, N, density, beta, sur, reset, alpha, binary):
    """(a) B_th covering every V: sparse dW, db, dx equal per-step autograd (any neuron setting)."""
    x, W, b, gs = make(seed, T, B, K, N, density, 1.2, binary=binary)
    x.requires_grad_()
    p = LIFParams(beta=beta, alpha=alpha, reset=reset, surrogate=sur)
    st_ = {}
    S = sparse_spiking_linear(x, W, b, p, HUGE, st_)
    R, _ = ref_layer(x, W, b, p, HUGE)
    assert torch.equal(S, R)
    for a, r in zip(grads(S, [x, W, b], gs), grads(R, [x, W, b], gs), strict=True):
        close(a, r)
    assert st_["n_active"] == st_["n_total"] == T * B * N
    assert st_["backend"] == ("numba" if (reset == "subtract" and alpha is None) else "fallback")


def test_all_active_equals_dense_recurrence_path():
    """(a) also against the library's dense numba path (LIFRecurrence + synaptic input)."""
    from sparsespike.kernels import lif_recurrence
    from sparsespike.kernels.synapse import synaptic_linear

    x, W, b, gs = make(3, 20, 3, 12, 9, 0.2, 0.8)
    p = LIFParams(beta=0.9)
    S = sparse_spiking_linear(x, W, b, p, HUGE)
    D = lif_recurrence(synaptic_linear(x, W, b), p)
    assert torch.equal(S, D)
    for a, r in zip(grads(S, [W, b], gs), grads(D, [W, b], gs), strict=True):
        close(a, r)


@SET
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(1, 10),
    B=st.integers(1, 3),
    sizes=st.tuples(st.integers(1, 8), st.integers(1, 7), st.integers(1, 6)),
    sur=surrogates,
)
def test_all_active_two_layers_sparse_input_grad(seed, T, B, sizes, sur):
    """(a) chained sparse layers: the COO input gradient at an all-active set is the full one."""
    K, H, N = sizes
    x, W1, _, _ = make(seed, T, B, K, H, 0.4, 1.0, bias=False)
    g = torch.Generator().manual_seed(seed + 1)
    W2 = (torch.randn(N, H, generator=g, dtype=DT) * 1.0).requires_grad_()
    gs = torch.randn(T, B, N, generator=g, dtype=DT)
    p = LIFParams(beta=0.8, surrogate=sur)
    S1 = sparse_spiking_linear(x, W1, None, p, HUGE)
    S2 = sparse_spiking_linear(S1, W2, None, p, HUGE)
    gS1 = torch.autograd.grad(S2, S1, gs, retain_graph=True)[0]
    assert gS1.is_sparse
    R1, _ = ref_layer(x, W1, None, p, HUGE)
    R2, _ = ref_layer(R1, W2, None, p, HUGE)
    close(gS1.to_dense(), torch.autograd.grad(R2, R1, gs, retain_graph=True)[0])
    for a, r in zip(grads(S2, [W1, W2], gs), grads(R2, [W1, W2], gs), strict=True):
        close(a, r)


# ---------------------------------------------------------------------------------------- (b)


@SET
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(2, 14),
    B=st.integers(1, 4),
    sizes=st.tuples(st.integers(1, 9), st.integers(1, 8), st.integers(1, 6)),
    b_th=st.floats(0.02, 0.8),
    beta=st.floats(0.6, 0.99),
    sur=surrogates,
    bias=st.booleans(),
)
def test_window_equals_masked_dense(seed, T, B, sizes, b_th, beta, sur, bias):
    """(b) finite B_th: gradients equal dense BPTT with g masked to |V-thr| < B_th (eq. 8);
    the input gradient is additionally masked to the previous layer's active set (eq. 12)."""
    K, H, N = sizes
    x, W1, b1, _ = make(seed, T, B, K, H, 0.35, 1.0, bias=bias)
    g = torch.Generator().manual_seed(seed + 7)
    W2 = (torch.randn(N, H, generator=g, dtype=DT) * 1.0).requires_grad_()
    gs = torch.randn(T, B, N, generator=g, dtype=DT)
    p = LIFParams(beta=beta, surrogate=sur)
    S1 = sparse_spiking_linear(x, W1, b1, p, b_th)
    S2 = sparse_spiking_linear(S1, W2, None, p, b_th)
    R1, V1 = ref_layer(x, W1, b1, p, b_th)
    R2, _ = ref_layer(R1, W2, None, p, b_th)
    assert torch.equal(S1, R1) and torch.equal(S2, R2)
    m1 = (V1 - p.threshold).abs() < b_th
    assert torch.equal(active_set(S1).mask(), m1)
    gS1 = torch.autograd.grad(S2, S1, gs, retain_graph=True)[0].to_dense()
    rS1 = torch.autograd.grad(R2, R1, gs, retain_graph=True)[0]
    close(gS1, rS1 * m1)
    for a, r in zip(grads(S2, [W1, b1, W2], gs), grads(R2, [W1, b1, W2], gs), strict=True):
        close(a, r)


@pytest.mark.parametrize("setting", [dict(reset="zero"), dict(alpha=0.7), dict(detach_reset=False)])
def test_window_fallback_neurons(setting):
    """(b) neuron settings off the fast path: masked dense recurrence, same gradients."""
    x, W, b, gs = make(11, 15, 3, 8, 6, 0.3, 1.0)
    x.requires_grad_()
    p = LIFParams(beta=0.85, **setting)
    st_ = {}
    S = sparse_spiking_linear(x, W, b, p, 0.3, st_)
    R, V = ref_layer(x, W, b, p, 0.3)
    assert st_["backend"] == "fallback"
    assert st_["n_active"] == int(((V - 1).abs() < 0.3).sum())
    assert torch.equal(S, R)
    for a, r in zip(grads(S, [x, W, b], gs), grads(R, [x, W, b], gs), strict=True):
        close(a, r)
    # the fallback also exposes its active set, and masks an input gradient to the input's set
    assert torch.equal(active_set(S).mask(), (V - 1).abs() < 0.3)
    xs = x.detach().clone().requires_grad_()
    m = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    attach_active_set(xs, m)
    S = sparse_spiking_linear(xs, W, b, p, 0.3)
    gx = torch.autograd.grad(S, xs, gs)[0]
    assert gx.is_sparse
    close(gx.to_dense(), torch.autograd.grad(R, x, gs)[0] * m)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("setting", [dict(), dict(reset="zero"), dict(alpha=0.6), dict(detach_reset=False)])
def test_lif_recurrence_masked(impl, setting):
    """``lif_recurrence_masked`` alone: masked-surrogate gradients, activity count, any shape."""
    g = torch.Generator().manual_seed(5)
    cur = (torch.randn(12, 2, 3, 4, generator=g, dtype=DT) * 0.8 + 0.3).requires_grad_()
    gs = torch.randn(cur.shape, generator=g, dtype=DT)
    p = LIFParams(beta=0.9, surrogate=Triangle(1.0), **setting)
    st_ = {}
    S = lif_recurrence_masked(cur, p, 0.25, st_, impl=impl)
    pm = p.replace(surrogate=MaskedSurrogate(p.surrogate, 0.25))
    R, V = lif_sequence_loop(cur, pm)
    assert torch.equal(S, R)
    close(torch.autograd.grad(S, cur, gs)[0], torch.autograd.grad(R, cur, gs)[0])
    assert st_["n_active"] == int(((V - 1).abs() < 0.25).sum()) and st_["n_total"] == cur.numel()


def test_custom_surrogate_fast_path():
    """A user surrogate (only ``grad``) still runs the compiled sparse path (g evaluated in torch)."""

    class Atan:
        def grad(self, x):
            return 1.0 / (1.0 + (3.0 * x) ** 2)

    x, W, b, gs = make(2, 10, 2, 6, 5, 0.4, 1.0)
    p = LIFParams(beta=0.9, surrogate=Atan())
    st_ = {}
    S = sparse_spiking_linear(x, W, b, p, 0.4, st_)
    assert st_["backend"] == "numba"
    R, _ = ref_layer(x, W, b, p, 0.4)
    for a, r in zip(grads(S, [W, b], gs), grads(R, [W, b], gs), strict=True):
        close(a, r)


def test_layers_use_sparse_functions():
    """``SpikingLinear(backward="sparse")`` gives the masked-dense gradients."""
    from sparsespike.layers import SpikingLinear

    torch.manual_seed(0)
    l1 = SpikingLinear(10, 8, LIFParams(beta=0.9), backward="sparse", b_th=0.3).double()
    l2 = SpikingLinear(8, 5, LIFParams(beta=0.9), backward="sparse", b_th=0.3).double()
    with torch.no_grad():
        l1.weight.mul_(3)
        l2.weight.mul_(3)
    x = (torch.rand(16, 3, 10) < 0.3).to(DT)
    gs = torch.randn(16, 3, 5, dtype=DT)
    s2 = l2(l1(x))
    a = torch.autograd.grad(s2, [l1.weight, l2.weight], gs)
    R1, _ = ref_layer(x, l1.weight, None, l1.neuron, 0.3)
    R2, _ = ref_layer(R1, l2.weight, None, l2.neuron, 0.3)
    r = torch.autograd.grad(R2, [l1.weight, l2.weight], gs)
    for u, v in zip(a, r, strict=True):
        close(u, v)
    assert 0 < l1.activity() < 100


@pytest.mark.parametrize("mode", ["one_thread", "small_work", "batch_split", "column_blocks"])
def test_thread_splits_agree(mode, monkeypatch):
    """One thread (e read inside the weight walk), two threads on little work (serial builds,
    as on one), several with the batch split (each chunk of samples into its own weight
    gradient, then summed) and several with column blocks (the fallback when the per-thread
    copies would be too large) give the reference gradients."""
    if mode != "one_thread" and numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread on this machine")
    if mode in ("batch_split", "column_blocks"):
        monkeypatch.setattr(sparse_mod, "_PARALLEL_MIN_MACS", 0)
    if mode == "column_blocks":
        monkeypatch.setattr(sparse_mod, "_PRIVATE_BYTES", 0)
    x, W1, b1, _ = make(21, 18, 5, 9, 7, 0.3, 1.2)
    g = torch.Generator().manual_seed(22)
    W2 = (torch.randn(4, 7, generator=g, dtype=DT) * 1.2).requires_grad_()
    b2 = torch.randn(4, generator=g, dtype=DT).requires_grad_()
    gs = torch.randn(18, 5, 4, generator=g, dtype=DT)
    p = LIFParams(beta=0.9)
    calls = []
    for name in ("weight_grad_batched", "weight_grad_active", "weight_grad_inputs", "input_grad_active"):
        kern = getattr(kc, name)
        for build in ("parallel", "serial"):
            fn = getattr(kern, build)
            monkeypatch.setattr(kern, build, lambda *a, _f=fn, _n=f"{name}.{build}": (calls.append(_n), _f(*a))[1])
    old = numba.get_num_threads()
    numba.set_num_threads(1 if mode == "one_thread" else 2)
    try:
        S1 = sparse_spiking_linear(x, W1, b1, p, 0.4)
        S2 = sparse_spiking_linear(S1, W2, b2, p, 0.4)
        got = grads(S2, [W1, b1, W2, b2], gs)
    finally:
        numba.set_num_threads(old)
    assert any(c.startswith("weight_grad_batched") for c in calls) == (mode == "batch_split"), calls
    assert all(c.endswith(".serial") for c in calls) == (mode in ("one_thread", "small_work")), calls
    R1, _ = ref_layer(x, W1, b1, p, 0.4)
    R2, _ = ref_layer(R1, W2, b2, p, 0.4)
    for a, r in zip(got, grads(R2, [W1, b1, W2, b2], gs), strict=True):
        close(a, r)


# ---------------------------------------------------------------------------------------- (c)


def brute_delta(e_dense: torch.Tensor, beta: float) -> torch.Tensor:
    """``delta[t] = sum_{k >= t} beta**(k-t) e[k]`` (no-delay form of Perez-Nieves eq. 6)."""
    T = e_dense.shape[0]
    out = torch.zeros_like(e_dense)
    for t in range(T):
        for k in range(t, T):
            out[t] += beta ** (k - t) * e_dense[k]
    return out


@SET
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(1, 15),
    B=st.integers(1, 3),
    N=st.integers(1, 6),
    p_act=st.floats(0.0, 1.0),
    p_in=st.floats(0.0, 1.0),
    beta=st.floats(0.3, 1.0),
)
def test_delta_recurrence_vs_brute_force(seed, T, B, N, p_act, p_in, beta):
    """(c) Prop. 1 (lazy decays between events) vs the brute-force sum, at arbitrary needed entries."""
    g = torch.Generator().manual_seed(seed)
    amask = torch.rand(T, B, N, generator=g) < p_act
    act = ActiveSet.from_mask(amask)
    e = torch.randn(act.n, generator=g, dtype=DT)
    e_dense = torch.zeros(T, B, N, dtype=DT)
    e_dense.reshape(-1)[act.flat_index()] = e
    want = brute_delta(e_dense, beta)
    # dense kernel
    out = torch.empty(T, B, N, dtype=DT)
    kc.delta_dense(act.ptr.numpy(), act.idx.numpy(), e.numpy(), beta, out.numpy())
    close(out, want, 1e-12)
    # sparse walk with W = I: dx at the needed entries is delta there
    need = ActiveSet.from_mask(torch.rand(T, B, N, generator=g) < p_in)
    powb, _, ipow, L = _decay_tables(beta, T, DT)
    dx = torch.zeros(need.n, dtype=DT)
    for nchunk, nb, span in [(1, N, L), (2, 1, L), (3, 2, 1), (1, N, 2)]:
        dx.zero_()
        kc.input_grad_active(
            nchunk,
            nb,
            T,
            N,
            N,
            act.ptr.numpy(),
            act.idx.numpy(),
            e.numpy(),
            torch.eye(N, dtype=DT).numpy(),
            need.ptr.numpy(),
            need.idx.numpy(),
            powb.numpy(),
            ipow.numpy(),
            min(span, L),
            dx.numpy(),
        )
        close(dx, need.gather(want), 1e-12)


@SET
@given(
    seed=st.integers(0, 10_000),
    T=st.integers(1, 15),
    B=st.integers(1, 3),
    N=st.integers(1, 5),
    K=st.integers(1, 7),
    p_act=st.floats(0.0, 1.0),
    p_in=st.floats(0.0, 1.0),
    beta=st.floats(0.3, 1.0),
    analog=st.booleans(),
)
def test_trace_walk_vs_brute_force(seed, T, B, N, K, p_act, p_in, beta, analog):
    """(c) eqs. 9-10 walk (rescaled trace accumulator, any column blocks) vs brute-force traces."""
    g = torch.Generator().manual_seed(seed)
    act = ActiveSet.from_mask(torch.rand(T, B, N, generator=g) < p_act)
    e = torch.randn(act.n, generator=g, dtype=DT)
    x = (torch.rand(T, B, K, generator=g) < p_in).to(DT)
    if analog:
        x = x * torch.randn(T, B, K, generator=g, dtype=DT)
    sl = spike_list(x)
    tr = torch.zeros_like(x)
    for t in range(T):
        tr[t] = x[t] + (beta * tr[t - 1] if t else 0)
    e_dense = torch.zeros(T, B, N, dtype=DT)
    e_dense.reshape(-1)[act.flat_index()] = e
    want_w = torch.einsum("tbj,tbi->ji", e_dense, tr)
    geo = torch.tensor([sum(beta**m for m in range(k + 1)) for k in range(T)], dtype=DT)
    want_b = torch.einsum("tbj,t->j", e_dense, geo)
    powb, geo_t, ipow, L = _decay_tables(beta, T, DT)
    vals = sl.vals if sl.vals is not None else torch.empty(0, dtype=DT)

    def walk(span):  # the arguments every weight-gradient walk takes, rescale span as given
        return (
            T, N, K, act.ptr.numpy(), act.idx.numpy(), e.numpy(), sl.ptr.numpy(), sl.idx.numpy(), vals.numpy(),
            sl.vals is not None, powb.numpy(), ipow.numpy(), min(span, L), geo_t.numpy(),
        )  # fmt: skip

    no_fuse = (False, np.zeros((1, 1, 1)), np.zeros(1))  # fuse_e off: e is given
    for kb, span in [(K, L), (1, L), (2, 1), (3, 2)]:
        dw = torch.zeros(N, K, dtype=DT)
        db = torch.zeros(N, dtype=DT)
        kc.weight_grad_active(-(-K // kb), kb, *walk(span), True, True, dw.numpy(), db.numpy(), *no_fuse)
        close(dw, want_w, 1e-12)
        close(db, want_b, 1e-12)
    # the same sum walked over the input spikes (delta recurrence), any column blocks and spans
    for nblk, span in [(1, L), (min(N, 2), 1), (N, 2)]:
        dwt = torch.zeros(K, N, dtype=DT)
        db = torch.zeros(N, dtype=DT)
        kc.weight_grad_inputs(nblk, *walk(span), True, dwt.numpy(), db.numpy())
        close(dwt.t(), want_w, 1e-12)
        close(db, want_b, 1e-12)
    # the batch split of both walks: per-chunk gradients (zeroed by the kernel), then summed
    for nbat, span in [(1, L), (2, 1), (3, L)]:
        for by_inputs in (False, True):
            dwp = np.full((nbat, K, N) if by_inputs else (nbat, N, K), np.nan)
            dbp = np.full((nbat, N), np.nan)
            kc.weight_grad_batched(nbat, by_inputs, *walk(span), True, True, dwp, dbp, *no_fuse)
            kc.sum_chunks(dwp, 2)
            got = torch.from_numpy(dwp[0].T if by_inputs else dwp[0])
            close(got, want_w, 1e-12)
            close(torch.from_numpy(dbp.sum(0)), want_b, 1e-12)


def test_weight_gradient_walk_choice():
    """A wide, busy input (n_inputs x N < n_active x K) takes the input-spike walk; the layer's
    gradients still equal dense BPTT with the masked surrogate (eq. 8)."""
    torch.manual_seed(5)
    T, B, K, N = 25, 3, 300, 6
    x = (torch.rand(T, B, K) < 0.02).to(DT)
    W = (torch.randn(N, K, dtype=DT) * 0.6).requires_grad_()
    bias = torch.zeros(N, dtype=DT, requires_grad=True)
    p = LIFParams(beta=0.9, surrogate=FastSigmoid(5.0))
    st_: dict = {}
    S = sparse_spiking_linear(x, W, bias, p, 0.4, st_)
    assert spike_list(x).n * N < st_["n_active"] * K, "the test must exercise the input walk"
    gs = torch.randn(T, B, N, dtype=DT)
    R, _ = ref_layer(x, W, bias, p, 0.4)
    assert torch.equal(S, R)
    for a, r in zip(grads(S, [W, bias], gs), grads(R, [W, bias], gs), strict=True):
        close(a, r)


# ---------------------------------------------------------------------------------------- (d)


@SET
@given(seed=st.integers(0, 10_000), b_th=st.floats(0.01, 2.0), T=st.integers(1, 20), N=st.integers(1, 40))
def test_activity_count_matches_mask(seed, b_th, T, N):
    """(d) n_active equals nonzero(|V - thr| < B_th); the attached active set is that mask."""
    x, W, b, _ = make(seed, T, 3, 11, N, 0.3, 1.0)
    p = LIFParams(beta=0.9)
    st_ = {}
    S = sparse_spiking_linear(x, W, b, p, b_th, st_)
    _, V = ref_layer(x, W, b, p, b_th)
    mask = (V - p.threshold).abs() < b_th
    assert st_["n_active"] == int(torch.count_nonzero(mask))
    assert st_["n_total"] == T * 3 * N
    aset = active_set(S)
    assert torch.equal(aset.mask(), mask)
    coo = aset.coo_indices()
    assert coo.shape == (3, int(mask.sum()))
    dense = torch.zeros(mask.shape, dtype=torch.bool)
    dense[coo[0], coo[1], coo[2]] = True
    assert torch.equal(dense, mask)


def test_spike_list_and_from_mask_roundtrip():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(7, 4, 9, generator=g) < 0.3).float()
    sl = spike_list(x)
    assert sl.vals is None and sl.n == int(x.count_nonzero())
    assert torch.equal(sl.mask(), x != 0)
    xv = x * torch.rand(x.shape, generator=g)
    slv = spike_list(xv)
    assert slv.vals is not None and torch.equal(slv.gather(xv), slv.vals)


# ---------------------------------------------------------------------------------------- (e)


def test_no_active_entries_gives_zero_gradients():
    """(e) nothing in the window: zero dW, db and input gradient (sparse and dense-fallback)."""
    x, W, b, gs = make(0, 10, 3, 6, 5, 0.3, 1.0)
    p = LIFParams(beta=0.9)
    st_ = {}
    xs = x.clone().requires_grad_()
    S = sparse_spiking_linear(xs, W, b, p, 1e-12, st_)
    assert st_["n_active"] == 0
    gx, gW, gb = torch.autograd.grad(S, [xs, W, b], gs)
    assert gW.abs().max() == 0 and gb.abs().max() == 0 and gx.abs().max() == 0
    x2 = x.clone().requires_grad_()
    attach_active_set(x2, torch.ones(x.shape, dtype=torch.bool))
    S = sparse_spiking_linear(x2, W, b, p, 1e-12)
    gx = torch.autograd.grad(S, x2, gs)[0]
    assert gx.is_sparse and gx.to_dense().abs().max() == 0


def test_empty_batch_element_and_edge_shapes():
    """(e) a batch element without input spikes or activity; T=1; B=0; N=1."""
    x, W, b, gs = make(4, 12, 3, 7, 5, 0.3, 1.0, bias=False)
    x[:, 1] = 0
    S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), 0.5)
    R, _ = ref_layer(x, W, None, LIFParams(beta=0.9), 0.5)
    close(grads(S, [W], gs)[0], grads(R, [W], gs)[0])
    assert S[:, 1].abs().max() == 0
    for T, B, K, N in [(1, 2, 3, 4), (5, 0, 3, 4), (4, 2, 3, 1), (3, 1, 1, 1)]:
        x, W, b, gs = make(1, T, B, K, N, 0.5, 2.0)
        x.requires_grad_()
        S = sparse_spiking_linear(x, W, b, LIFParams(beta=0.9), HUGE)
        R, _ = ref_layer(x, W, b, LIFParams(beta=0.9), HUGE)
        for a, r in zip(grads(S, [x, W, b], gs), grads(R, [x, W, b], gs), strict=True):
            close(a, r)


def test_zero_neurons_and_zero_steps():
    """N = 0 or T = 0: an empty output, as the dense path gives (once a division by T*N)."""
    for T, N in [(4, 0), (0, 3)]:
        x = torch.zeros(T, 2, 3)
        W = torch.zeros(N, 3, requires_grad=True)
        S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), 0.2)
        assert S.shape == (T, 2, N)


def test_bad_weight_bias_shapes_and_dtypes_raise():
    """A bias of the wrong length was read past its end by the kernel; mixed dtypes failed deep
    in F.linear. Both now raise in the forward, naming the problem."""
    x = torch.zeros(3, 1, 2)
    W = torch.zeros(5, 2)
    big = torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0])
    for bias in (big[:4], torch.zeros(6), torch.zeros(5, 1)):
        with pytest.raises(ValueError, match="bias must have shape"):
            sparse_spiking_linear(x, W, bias, LIFParams(), 0.2)
    with pytest.raises(ValueError, match="expected W"):
        sparse_spiking_linear(x, torch.zeros(2), None, LIFParams(), 0.2)
    with pytest.raises(ValueError, match="share one dtype"):
        sparse_spiking_linear(x, W.double(), None, LIFParams(), 0.2)
    with pytest.raises(ValueError, match="share one dtype"):
        sparse_spiking_linear(x, W, torch.zeros(5, dtype=torch.float64), LIFParams(), 0.2)


def test_nan_membrane_from_finite_inputs_raises():
    """Finite but huge analog inputs and weights overflow the synaptic input: the dense path
    refuses the resulting NaN membrane; the fused sparse forward (whose FMAs give inf rather
    than inf - inf) refuses any non-finite membrane. Also a plain +inf overflow."""
    x = torch.full((3, 1, 2), 1e30)
    for W in (torch.tensor([[1e10, -1e10]]), torch.tensor([[1e10, 1e10]])):
        with pytest.raises(SpikeInputError, match="overflowed"):
            sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), 0.2)
    ok = sparse_spiking_linear(torch.full((3, 1, 2), 1e3), torch.tensor([[1e10, -1e10]]), None, LIFParams(), 0.2)
    assert torch.isfinite(ok).all()


@pytest.mark.parametrize("beta", [2e-9, 3.3e-40])
def test_tiny_beta_gradients_finite(beta):
    """beta so small that beta**-1 overflows float32 (the decay tables once held inf, giving NaN
    weight gradients): the accumulators rescale at every step instead. Against the dense
    reference at full activity, float32."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 2, 4, generator=g) < 0.5).float()
    W = (torch.randn(3, 4, generator=g) * 2).requires_grad_()
    p = LIFParams(beta=beta)
    gs = torch.randn(6, 2, 3, generator=g)
    S = sparse_spiking_linear(x, W, None, p, HUGE)
    R, _ = ref_layer(x, W, None, p, HUGE)
    assert torch.equal(S, R)
    gw, gr = grads(S, [W], gs)[0], grads(R, [W], gs)[0]
    assert torch.isfinite(gw).all()
    torch.testing.assert_close(gw, gr, rtol=1e-5, atol=1e-6)


def test_spike_counts_returns_a_fresh_tensor():
    """An in-place change to one caller's counts (rate /= T) must not reach the next caller."""
    from sparsespike.kernels.sparse import spike_counts

    x = (torch.rand(10, 2, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    W = torch.full((3, 4), 0.8, requires_grad=True)
    S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), 0.2)
    rate = spike_counts(S, per_sample=True)
    rate /= S.shape[0]
    torch.testing.assert_close(spike_counts(S, per_sample=True), S.detach().sum(0))


def test_float64_cuda_does_not_take_the_float32_triton_kernels(monkeypatch):
    """The Triton kernels compute in float32: a float64 tensor takes the fallback (asked for
    explicitly or chosen automatically on a CUDA device)."""
    from types import SimpleNamespace

    from sparsespike.kernels import sparse as sp
    from sparsespike.kernels import triton_gpu

    monkeypatch.setattr(triton_gpu, "available", lambda: True)
    cuda = torch.device("cuda")
    p = LIFParams(beta=0.9)

    def fake(dtype):
        return SimpleNamespace(dim=lambda: 3, dtype=dtype, device=cuda)

    assert sp.choose_backend(fake(torch.float32), fake(torch.float32), None, p) == "triton"
    assert sp.choose_backend(fake(torch.float64), fake(torch.float64), None, p) == "fallback"
    x = torch.ones(1, 1, 1, dtype=torch.float64)
    W = torch.full((1, 1), 1 + 1e-9, dtype=torch.float64)
    assert sp.choose_backend(x, W, None, p, impl="triton") == "fallback"
    S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9, threshold=1.0), 0.2, impl="triton")
    assert S.item() == 1.0  # V - thr = 1e-9 > 0, lost in float32
    assert sp._recurrence_impl(fake(torch.float64), p, "auto") == "torch"
    assert sp._recurrence_impl(x, p, "triton") == "torch"


def test_capacity_overflow_rerun():
    """The forward's compact buffers grow when a batch element is far more active than the hint."""
    x, W, b, gs = make(9, 30, 4, 10, 50, 0.3, 0.5)
    x[:, 2] = 1.0  # one very busy batch element
    S = sparse_spiking_linear(x, W, b, LIFParams(beta=0.9), 0.05)  # sets a small hint
    x2 = x.clone()
    S = sparse_spiking_linear(x2, W, b, LIFParams(beta=0.9), 5.0)
    _, V = ref_layer(x2, W, b, LIFParams(beta=0.9), 5.0)
    assert torch.equal(active_set(S).mask(), (V - 1).abs() < 5.0)
    R, _ = ref_layer(x2, W, b, LIFParams(beta=0.9), 5.0)
    for a, r in zip(grads(S, [W, b], gs), grads(R, [W, b], gs), strict=True):
        close(a, r)


def test_stale_active_set_ignored_after_inplace_change():
    x, W, b, gs = make(0, 6, 2, 5, 4, 0.3, 1.0)
    S = sparse_spiking_linear(x, W, b, LIFParams(), 0.3)
    assert active_set(S) is not None
    S.detach().mul_(1.0)  # shares the version counter
    assert active_set(S) is None
    S2 = sparse_spiking_linear(x, W, b, LIFParams(), 0.3)
    d = S2.detach().requires_grad_()
    share_active_set(S2, d)
    assert active_set(d) is active_set(S2)


# ---------------------------------------------------------------------------------------- (f)


def test_saved_state_shrinks_with_activity():
    """(f) bytes kept for backward fall with activity and are far below the dense path's."""
    torch.manual_seed(0)
    T, B, K, N = 60, 8, 100, 80
    x = (torch.rand(T, B, K) < 0.02).float()
    W = (torch.randn(N, K) * 0.6).requires_grad_()
    sizes, acts, ns = [], [], []
    for b_th in [0.02, 0.1, 0.3, 1.0, HUGE]:
        st_ = {}
        S = sparse_spiking_linear(x, W, None, LIFParams(beta=0.9), b_th, st_)
        # what the autograd node really holds
        fn = S.grad_fn
        held = fn.active.nbytes + fn.g.numel() * fn.g.element_size() + fn.spikes_in.nbytes
        assert held == st_["saved_bytes"]
        sizes.append(st_["saved_bytes"])
        acts.append(st_["n_active"] / st_["n_total"])
        ns.append(st_["n_active"])
    assert all(a < b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert all(a <= b for a, b in zip(acts[:-1], acts[1:], strict=True))
    dense_saved = T * B * N * 4  # the dense path keeps the surrogate g[T, B, N] (float32)
    assert acts[1] < 0.05 and sizes[1] < 0.15 * dense_saved
    # per active entry: int32 index + float32 g; plus per-b offsets and the input spike list
    inp = spike_list(x).nbytes
    assert sizes[1] == 8 * ns[1] + 8 * (B + 1) + inp


# ---------------------------------------------------------------------------------------- triton


def _triton_or_skip():
    try:
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"triton not importable: {e}")


@pytest.fixture
def triton_interpret(monkeypatch):
    _triton_or_skip()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from sparsespike.kernels import triton_gpu

    return triton_gpu


def test_triton_sparse_linear_matches_numba(triton_interpret):
    """Triton kernels (``TRITON_INTERPRET=1`` on CPU tensors) give the numba gradients."""
    torch.manual_seed(1)
    T, B, K, H, N = 8, 2, 6, 5, 4
    x = (torch.rand(T, B, K) < 0.3).float()
    W1 = (torch.randn(H, K) * 0.9).requires_grad_()
    W2 = (torch.randn(N, H) * 0.9).requires_grad_()
    b2 = (torch.randn(N) * 0.1).requires_grad_()
    gs = torch.randn(T, B, N)
    p = LIFParams(beta=0.85)
    res = {}
    for impl in ["numba", "triton"]:
        S1 = sparse_spiking_linear(x, W1, None, p, 0.4, impl=impl)
        S2 = sparse_spiking_linear(S1, W2, b2, p, 0.4, impl=impl)
        res[impl] = [S1, S2] + grads(S2, [S1], gs) + grads(S2, [W1, W2, b2], gs)
    for a, b in zip(res["numba"], res["triton"], strict=True):
        close(a, b, 1e-5)
    # dense input-gradient fallback (input without an active set)
    xs = x.clone().requires_grad_()
    a = grads(sparse_spiking_linear(xs, W1, None, p, 0.4, impl="triton"), [xs], torch.ones(T, B, H))[0]
    r = grads(sparse_spiking_linear(xs, W1, None, p, 0.4, impl="numba"), [xs], torch.ones(T, B, H))[0]
    close(a, r, 1e-5)
    # graded (non-binary) input: the weight gradient reads the input values at its non-zeros
    xv = x * torch.rand(x.shape)
    a = grads(sparse_spiking_linear(xv, W1, None, p, 0.4, impl="triton"), [W1], torch.ones(T, B, H))[0]
    r = grads(sparse_spiking_linear(xv, W1, None, p, 0.4, impl="numba"), [W1], torch.ones(T, B, H))[0]
    close(a, r, 1e-5)
    assert a.abs().sum() > 0
    # spike counts returned beside the spikes: their gradient enters the Triton backward as well
    from sparsespike.kernels.sparse import spike_counts

    wc = torch.randn(B, N)
    for counted in (True, False):
        S2 = sparse_spiking_linear(
            sparse_spiking_linear(x, W1, None, p, 0.4, impl="triton"), W2, b2, p, 0.4, impl="triton"
        )
        c = spike_counts(S2, per_sample=True) if counted else S2.sum(0)
        res[counted] = torch.autograd.grad((wc * c).sum() + (gs * S2).sum(), [W1, W2, b2])
    for a, b in zip(res[True], res[False], strict=True):
        close(a, b, 1e-5)


@pytest.mark.parametrize("setting", [dict(), dict(reset="zero"), dict(alpha=0.6), dict(detach_reset=False)])
def test_triton_recurrences(triton_interpret, setting):
    """The Triton recurrences give the reference kernels' spikes, input gradient and active count:
    masked surrogate (``lif_recurrence_masked``) against the torch loop, dense BPTT on CUDA
    (``LIFRecurrence`` with ``impl="triton"``: plain surrogate everywhere) against numba."""
    from sparsespike.kernels.recurrence import lif_recurrence

    g = torch.Generator().manual_seed(4)
    cur = (torch.randn(11, 3, 7, generator=g) * 0.8 + 0.3).requires_grad_()
    gs = torch.randn(cur.shape, generator=g)
    p = LIFParams(beta=0.9, **setting)
    runs = {
        "masked": (lambda c, st_, impl: lif_recurrence_masked(c, p, 0.3, st_, impl=impl), "torch"),
        "dense": (lambda c, st_, impl: lif_recurrence(c, p, impl=impl, b_th=0.3, stats=st_), "numba"),
    }
    grad_triton = {}
    for kind, (fn, ref) in runs.items():
        out = {}
        for impl in ["triton", ref]:
            st_ = {}
            S = fn(cur, st_, impl)
            out[impl] = (S, torch.autograd.grad(S, cur, gs)[0], st_["n_active"])
        assert torch.equal(out["triton"][0], out[ref][0]), kind
        close(out["triton"][1], out[ref][1], 1e-5)
        assert out["triton"][2] == out[ref][2] > 0, kind
        grad_triton[kind] = out["triton"][1]
    # the dense surrogate is not masked: gradient reaches entries outside the window
    assert not torch.allclose(grad_triton["masked"], grad_triton["dense"])


def test_triton_kernels_compile_for_sm90(monkeypatch):
    """The kernels lower to PTX (no GPU needed: ptxas ships with triton)."""
    _triton_or_skip()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sparsespike.kernels import triton_gpu

    # skip only when the toolchain is absent; with it, any compile error (a type error in the
    # kernel, a signature drift) fails the test
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and not shutil.which("ptxas"):
        pytest.skip("no ptxas (triton's NVIDIA backend) on this machine")
    k = triton_gpu.kernels()
    ptrs = {"aptr_ptr": "*i64", "aidx_ptr": "*i32", "e_ptr": "*fp32", "sptr_ptr": "*i64", "sidx_ptr": "*i32"}
    ptrs.update({"sval_ptr": "*fp32", "pptr_ptr": "*i64", "pidx_ptr": "*i32", "wt_ptr": "*fp32"})
    ptrs.update({f"{n}_ptr": "*fp32" for n in ("dwt", "dxv", "db", "delta")})
    flags = {"HAS_VAL": False, "NEED_DW": True, "NEED_DX": True, "NEED_DB": True, "WRITE_DELTA": False, "BN": 128}
    src = ASTSource(
        fn=k.sparse_bwd,
        signature={**ptrs, "T": "i32", "B": "i32", "N": "i32", "K": "i32", "beta": "fp32"}
        | {f: "constexpr" for f in flags},
        constexprs=flags,
    )
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "ld.global" in out.asm["ptx"] and "atom.global" in out.asm["ptx"]


def test_triton_recurrence_kernels_compile_when_one_neuron(monkeypatch):
    """B*N = 1 on a GPU: Triton specialises an integer argument equal to 1 into a Python int, on
    which the kernels called .to() (a CompilationError). Runs the library's own launch code with
    Triton's binder and compiles for sm_90 instead of launching (no GPU needed)."""
    _triton_or_skip()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature
    except ImportError as e:
        pytest.skip(f"this triton version's internals differ: {e}")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and not shutil.which("ptxas"):
        pytest.skip("no ptxas (triton's NVIDIA backend) on this machine")
    from sparsespike.kernels import triton_gpu

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    compiled = []

    def compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        triton.compile(ASTSource(self, signature, constexprs, attrs), target=target, options=options.__dict__)
        compiled.append(self.__name__)

    monkeypatch.setattr(JITFunction, "run", compile_instead_of_launch)
    p = LIFParams(beta=0.9)
    for shape in [(4, 1), (1, 1), (4, 3)]:
        triton_gpu._run_fwd(torch.randn(*shape), p, 0.3, write_d=False, want_mask=True)
        triton_gpu.lif_backward_dense(torch.randn(*shape), torch.randn(*shape), None, None, p)
    assert compiled.count("lif_fwd") == 3 and compiled.count("lif_bwd") == 3


def test_triton_paths_refuse_what_numba_refuses(triton_interpret):
    """Under the interpreter: float64 takes the torch loop, not the float32 kernels; a NaN input
    with the Triangle/Rectangle surrogates (whose values hide the NaN) and an overflowed
    membrane in the sparse forward are refused; K = 0 works."""
    from sparsespike.kernels.recurrence import choose_impl, lif_recurrence

    x64 = torch.full((1, 1), 1.0 + 1e-9, dtype=torch.float64)
    assert choose_impl(x64, LIFParams(), "triton") == "torch"
    assert float(lif_recurrence(x64, LIFParams(beta=0.9, threshold=1.0), impl="triton").sum()) == 1.0
    xn = torch.tensor([[0.5, float("nan"), 0.2]] * 3)
    for sur in (Triangle(1.0, 1.0), Rectangle(1.0, 1.0)):
        for impl in ("triton", "torch"):
            with pytest.raises(SpikeInputError, match="NaN"):
                lif_recurrence(xn, LIFParams(beta=0.9, surrogate=sur), impl=impl)
    W = torch.tensor([[3e38, -3e38], [1.0, 0.0]])
    with pytest.raises(SpikeInputError, match="overflowed"):
        sparse_spiking_linear(torch.full((1, 1, 2), 2.0), W, None, LIFParams(beta=0.9), 0.2, impl="triton")
    S = sparse_spiking_linear(torch.zeros(2, 2, 0), torch.zeros(4, 0), None, LIFParams(), 0.2, impl="triton")
    assert S.shape == (2, 2, 4)


def test_importable_without_triton(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    import sparsespike.kernels.triton_gpu as tg

    mod = importlib.reload(tg)
    try:
        assert mod.HAS_TRITON is False and mod.available() is False
    finally:
        monkeypatch.undo()
        importlib.reload(tg)


@pytest.mark.parametrize("mode,classes", [("max", 10), ("sum", 3)])
@pytest.mark.parametrize("b_th", [0.3, HUGE])
def test_readout_hands_compact_gradient(mode, classes, b_th):
    """A readout behind a sparse layer computes dL/dS only at the layer's active entries (COO on
    the active set's own indices, read by the layer without a copy); every parameter gradient
    equals the one through the readout's dense input gradient (the same spikes, meta stripped)."""
    from sparsespike.kernels.synapse import EventLinearActive
    from sparsespike.layers import LeakyReadout, SpikingLinear

    torch.manual_seed(3)
    x = (torch.rand(30, 6, 40) < 0.15).to(DT)
    p = LIFParams(beta=0.9, surrogate=FastSigmoid(5.0))
    l1 = SpikingLinear(40, 32, p, backward="sparse", b_th=b_th).to(DT)
    ro = LeakyReadout(32, classes, beta=0.9, mode=mode).to(DT)
    with torch.no_grad():
        l1.weight.mul_(3.0)
    y = torch.randint(0, classes, (6,))
    seen = []
    orig = EventLinearActive.backward

    def spy(ctx, g):
        out = orig(ctx, g)
        seen.append(out[0])
        return out

    EventLinearActive.backward = staticmethod(spy)
    try:
        s = l1(x)
        assert active_set(s) is not None and s.sum() > 0
        compact = torch.autograd.grad(torch.nn.functional.cross_entropy(ro(s), y), [l1.weight, ro.weight])
    finally:
        EventLinearActive.backward = staticmethod(orig)
    assert len(seen) == 1 and seen[0].is_sparse
    assert seen[0]._indices().data_ptr() == active_set(s).coo_indices().data_ptr()
    s2 = l1(x)
    dense = torch.autograd.grad(torch.nn.functional.cross_entropy(ro(s2.clone()), y), [l1.weight, ro.weight])
    for a, r in zip(compact, dense, strict=True):
        close(a, r)
    # the compact values are the dense input gradient at the active entries
    s3 = l1(x).detach().requires_grad_()
    gd = torch.autograd.grad(torch.nn.functional.cross_entropy(ro(s3), y), s3)[0]
    act = active_set(s)
    close(seen[0]._values(), act.gather(gd))


@pytest.mark.parametrize("neuron", [{"reset": "zero"}, {"alpha": 0.5}, {"detach_reset": False}, {}])
@pytest.mark.parametrize("consumer", ["readout", "sparse_linear", "dense_linear"])
def test_fallback_neurons_behind_any_consumer_match_dense(neuron, consumer):
    """The masked-surrogate fallback (zero reset, synaptic current, non-detached reset) feeds an
    event-driven consumer that hands back a sparse COO gradient: with every neuron active the
    spikes and the weight and input gradients equal the dense backward's."""
    from sparsespike.layers import LeakyReadout, SpikingLinear

    p = LIFParams(beta=0.9, **neuron)
    x = (torch.rand(8, 3, 10, generator=torch.Generator().manual_seed(0)) < 0.3).to(DT)
    res = {}
    for bw in ("sparse", "dense"):
        torch.manual_seed(1)
        l1 = SpikingLinear(10, 6, p, backward=bw, b_th=1e9, weight_scale=3.0).to(DT)
        l2 = {
            "readout": lambda: LeakyReadout(6, 3),
            "sparse_linear": lambda: SpikingLinear(6, 3, p, backward="sparse", b_th=1e9, weight_scale=3.0),
            "dense_linear": lambda: SpikingLinear(6, 3, p, weight_scale=3.0),
        }[consumer]().to(DT)
        xx = x.clone().requires_grad_(True)
        s1 = l1(xx)
        out = l2(s1)
        (out * torch.linspace(0.5, 1.5, out.numel(), dtype=DT).reshape(out.shape)).sum().backward()
        res[bw] = (s1.detach(), out.detach(), l1.weight.grad, xx.grad)
    assert res["dense"][0].sum() > 0
    for a, b in zip(res["sparse"], res["dense"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sparse_layers_run_under_inference_mode():
    """Inference tensors have no version counter: no metadata is attached to them (the consumer
    scans the tensor), and the outputs and metrics equal those under no_grad."""
    from torch import nn

    from sparsespike.layers import LeakyReadout, SpikingConv2d, SpikingLinear
    from sparsespike.metrics import measure

    torch.manual_seed(0)
    net = nn.Sequential(
        SpikingLinear(10, 6, backward="sparse", weight_scale=3.0),
        SpikingLinear(6, 4, backward="sparse", weight_scale=3.0),
        LeakyReadout(4, 3),
    )
    x = (torch.rand(8, 3, 10) < 0.3).float()
    with torch.no_grad():
        ref = net(x)
    with torch.inference_mode():
        out = net(x)
        m_inf = measure(net, [x])
    assert torch.equal(out, ref)
    assert m_inf == measure(net, [x])
    conv = SpikingConv2d(1, 2, 3, padding=1, backward="sparse")
    xc = (torch.rand(4, 2, 1, 6, 6) < 0.5).float()
    with torch.no_grad():
        ref_c = conv(xc)
    with torch.inference_mode():
        assert torch.equal(conv(xc), ref_c)


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("case", ["nan_input", "inf_input", "nan_weight", "inf_weight", "opposite_infs", "nan_bias"])
def test_nan_and_inf_are_refused_on_both_paths(backward, case):
    """The dense recurrence sees NaN through the membrane; the sparse kernels never form it, so
    they check their input spikes and parameters: both paths refuse with SpikeInputError."""
    from sparsespike.errors import SpikeInputError
    from sparsespike.layers import SpikingConv2d, SpikingLinear

    torch.manual_seed(0)
    layer = SpikingLinear(10, 6, backward=backward, weight_scale=3.0, bias=True)
    x = (torch.rand(8, 3, 10) < 0.3).float()
    if case == "nan_input":
        x[2, 1, 3] = float("nan")
    elif case == "inf_input":
        x[2, 1, 3] = float("inf")
    with torch.no_grad():
        if case == "nan_weight":
            layer.weight[1, 2] = float("nan")
        elif case == "inf_weight":
            layer.weight[1, 2] = float("inf")
        elif case == "opposite_infs":  # +inf and -inf must not cancel in the check
            layer.weight[1, 2] = float("inf")
            layer.weight[3, 4] = float("-inf")
        elif case == "nan_bias":
            layer.bias[0] = float("nan")
    with pytest.raises(SpikeInputError, match="NaN"):
        layer(x)
    conv = SpikingConv2d(1, 2, 3, padding=1, backward=backward)
    xc = (torch.rand(4, 2, 1, 6, 6) < 0.5).float()
    xc[1, 0, 0, 2, 2] = float("nan")
    with pytest.raises(SpikeInputError, match="NaN"):
        conv(xc)
