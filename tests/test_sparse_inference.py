"""Sparse inference kernels (``sparsespike.sparse_inference``) against torch, edge shapes included.

The end-to-end equality of pruned spiking CNNs with their sparse twins is also tested in
``test_connectivity.py``; here every kernel is checked on its own against ``torch.nn.functional``
(conv2d / linear / avg_pool2d / max_pool2d and the library's LIF recurrence).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsespike.kernels import lif_recurrence
from sparsespike.layers import SeqFlatten, SeqPool2d, SpikeCountReadout, SpikingConv2d, SpikingLinear
from sparsespike.neurons import LIFParams
from sparsespike.sparse_inference import (
    SparseConv2d,
    SparseLinear,
    SparseSpikingConv2d,
    _choose_tiles,
    kernel_report,
    lif_pool_inference,
    sparse_inference_model,
)
from sparsespike.sparsity.yin_models import build_yin_network
from sparsespike.surrogate import Rectangle

CONV_KERNELS = ("taps", "event", "event_vec")
LINEAR_KERNELS = ("csr", "event", "event_vec")

# (N, Cin, H, W, Cout, kh, kw, ph, pw)
CONV_SHAPES = [
    (3, 2, 8, 8, 5, 3, 3, 1, 1),
    (2, 15, 14, 14, 40, 5, 5, 2, 2),  # Yin MNIST conv2
    (2, 1, 28, 28, 15, 5, 5, 2, 2),  # Yin MNIST conv1
    (2, 3, 7, 5, 4, 1, 1, 0, 0),  # 1x1 kernel
    (2, 3, 6, 9, 17, 2, 4, 0, 1),  # even / non-square kernel, unequal padding, Cout > 16 lanes
    (1, 2, 1, 1, 3, 3, 3, 1, 1),  # 1x1 image
    (2, 2, 5, 5, 3, 3, 3, 3, 3),  # padding as large as the kernel
    (2, 4, 9, 11, 6, 3, 5, 0, 0),  # valid convolution
    (1, 9, 4, 4, 70, 3, 3, 1, 1),  # many output channels (vector chunks 4+1 / 8+1)
    (1, 1, 37, 40, 2, 3, 3, 1, 1),  # long rows: many register tiles
]


def _sparse_(w: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        return w.mul_((torch.rand(w.shape, generator=gen) < density).to(w.dtype))


def _tol(dtype):
    return dict(rtol=0, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_kernels_match_torch_conv2d(shape, dtype):
    N, cin, H, W, cout, kh, kw, ph, pw = shape
    gen = torch.Generator().manual_seed(sum(shape))
    for density in (0.0, 0.3, 1.0):
        conv = nn.Conv2d(cin, cout, (kh, kw), padding=(ph, pw), bias=density != 0.3).to(dtype)
        _sparse_(conv.weight, density, gen)
        x = torch.randn(N, cin, H, W, generator=gen, dtype=dtype) * (torch.rand(N, cin, H, W, generator=gen) < 0.4)
        with torch.no_grad():
            ref = conv(x)
        sc = SparseConv2d(conv)
        assert sc.supported
        for k in CONV_KERNELS:
            y = sc.run(x, k)
            assert y.shape == ref.shape and y.dtype == dtype
            torch.testing.assert_close(y, ref, **_tol(dtype), msg=f"kernel {k}, density {density}")
        # unbatched input [C, H, W]
        torch.testing.assert_close(sc.run(x[0], "taps"), ref[0], **_tol(dtype))


def test_conv_unsupported_stays_dense():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    sc = SparseConv2d(conv)
    assert not sc.supported and sc.KERNELS == ("dense",) and sc.kernel == "dense"
    x = torch.randn(2, 2, 7, 7)
    torch.testing.assert_close(sc(x), conv(x).detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("R,K,N", [(1, 3, 1), (5, 20, 15), (17, 33, 16), (384, 200, 17), (7, 50, 300), (3, 1, 130)])
def test_linear_kernels_match_torch_linear(R, K, N, dtype):
    gen = torch.Generator().manual_seed(R * 1000 + K * 10 + N)
    for density in (0.0, 0.2, 1.0):
        for bias in (True, False):
            lin = nn.Linear(K, N, bias=bias).to(dtype)
            _sparse_(lin.weight, density, gen)
            x = torch.randn(R, K, generator=gen, dtype=dtype) * (torch.rand(R, K, generator=gen) < 0.3)
            with torch.no_grad():
                ref = lin(x)
            sl = SparseLinear(lin.weight, lin.bias)
            for k in LINEAR_KERNELS:
                y = sl.run(x, k)
                assert y.shape == ref.shape
                torch.testing.assert_close(y, ref, **_tol(dtype), msg=f"kernel {k}, density {density}")
            # leading dims are kept
            x3 = x.reshape(1, R, K)
            torch.testing.assert_close(sl.run(x3, "csr"), ref.reshape(1, R, N), **_tol(dtype))


def test_linear_follows_dtype_change():
    lin = nn.Linear(10, 7)
    sl = SparseLinear(lin.weight, lin.bias).double()
    x = torch.randn(4, 10, dtype=torch.float64)
    ref = nn.functional.linear(x, lin.weight.double(), lin.bias.double()).detach()
    for k in LINEAR_KERNELS:
        torch.testing.assert_close(sl.run(x, k), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 224, 840, 1000])
@pytest.mark.parametrize("lanes", [8, 16])
def test_choose_tiles_covers_the_row(n, lanes):
    nv, padded = _choose_tiles(n, lanes)
    assert 1 <= nv <= 16 and padded >= n and padded % (nv * lanes) == 0
    assert padded - n < nv * lanes + lanes  # at most one partial tile of waste


def _lif(reset, alpha):
    return LIFParams(beta=0.3, alpha=alpha, threshold=0.5, reset=reset, surrogate=Rectangle(1.0, 1.0))


@pytest.mark.parametrize("reset,alpha", [("zero", None), ("subtract", None), ("subtract", 0.7)])
@pytest.mark.parametrize("pool,mode", [(1, "avg"), (2, "avg"), (2, "max"), (3, "avg"), (3, "max")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lif_pool_inference_equals_library(reset, alpha, pool, mode, dtype):
    p = _lif(reset, alpha)
    gen = torch.Generator().manual_seed(1)
    cur = torch.randn(6, 3, 4, 7, 8, generator=gen, dtype=dtype) * 0.6 + 0.2
    ref = lif_recurrence(cur, p, impl="numba")
    if pool > 1:
        ref = SeqPool2d(pool, mode)(ref)
    assert torch.equal(lif_pool_inference(cur, p, pool, mode), ref)


def _spiking_conv_net(p, pool, mode, dtype, bias):
    return nn.Sequential(
        SpikingConv2d(2, 5, 3, p, padding=1, bias=bias),
        SeqPool2d(pool, mode),
        SpikingConv2d(5, 18, 3, p, padding=0),
        SeqFlatten(),
        SpikingLinear(18 * ((10 // pool) - 2) ** 2, 6, p, bias=True),
        SpikeCountReadout(),
    ).to(dtype)


@pytest.mark.parametrize("reset,alpha", [("zero", None), ("subtract", 0.7)])
@pytest.mark.parametrize("pool,mode", [(2, "avg"), (2, "max"), (3, "avg")])
@pytest.mark.parametrize("kernel", ["dense", "taps", "event", "event_vec"])
def test_fused_spiking_conv_equals_library_float64(reset, alpha, pool, mode, kernel):
    """Conv + LIF + pool fused per frame: spikes bit-identical to the library layers in float64."""
    torch.manual_seed(0)
    p = _lif(reset, alpha)
    net = _spiking_conv_net(p, pool, mode, torch.float64, bias=True).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, SpikingLinear)):
                m.weight.mul_(4.0)
                _sparse_(m.weight, 0.4, gen)
    x = (torch.rand(5, 3, 2, 10, 10, generator=gen) < 0.3).double()
    fast = sparse_inference_model(net, kernels=kernel)
    assert isinstance(fast[0], SparseSpikingConv2d) and fast[0].pool == (pool, mode)
    assert isinstance(fast[1], nn.Identity)  # the pool was folded into layer 0
    assert fast[2].pool is None  # no pool after the second conv
    # intermediate spikes, not only the readout
    with torch.no_grad():
        assert torch.equal(fast[1](fast[0](x)), net[1](net[0](x)))
        h = net[1](net[0](x))
        assert torch.equal(fast[2](h), net[2](h))
        assert torch.equal(fast(x), net(x))
        assert float(h.abs().sum()) > 0  # the test is not vacuous


def test_fuse_false_and_slow_recurrence_keep_the_pool():
    p = _lif("zero", None)
    net = _spiking_conv_net(p, 2, "avg", torch.float64, bias=False).eval()
    x = (torch.rand(4, 2, 2, 10, 10) < 0.3).double()
    for kw in ({"fuse": False}, {"fast_recurrence": False}):
        fast = sparse_inference_model(net, kernels="taps", **kw)
        assert isinstance(fast[1], SeqPool2d) and fast[0].pool is None
        assert torch.equal(fast(x), net(x))


def test_yin_mnist_scnn_sparse_equals_dense_float64():
    """Yin's 28x28-15C5-P2-40C5-P2-300-10, magnitude-pruned to 25 %, auto-tuned kernels."""
    torch.manual_seed(0)
    net = build_yin_network("mnist", init_gain=2.0).double().eval()
    with torch.no_grad():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() >= 2:
                thr = w.abs().flatten().kthvalue(int(0.75 * w.numel())).values
                w.mul_((w.abs() > thr).double())
    x = (torch.rand(3, 2, 1, 28, 28) < 0.15).double()
    fast = sparse_inference_model(net, example_input=x, reps=1)
    rep = kernel_report(fast)
    assert [r["name"] for r in rep] == ["0.conv", "2.conv", "5.syn", "6.syn"]
    assert all(set(r["timings_ms"]) == set(CONV_KERNELS + ("dense",)) for r in rep[:2])
    with torch.no_grad():
        assert torch.equal(fast(x), net(x))
    # every forced kernel gives the same spikes too
    for k in ("taps", "event_vec", "csr", "event"):
        assert torch.equal(sparse_inference_model(net, kernels=k)(x), net(x)), k


def test_sparse_twin_does_not_touch_the_original():
    p = _lif("zero", None)
    net = _spiking_conv_net(p, 2, "avg", torch.float32, bias=True).eval()
    before = copy.deepcopy(net.state_dict())
    sparse_inference_model(net, kernels="taps")
    assert isinstance(net[1], SeqPool2d)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
