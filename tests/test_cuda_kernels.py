"""The Triton kernels compiled for a real CUDA device, against the CPU (numba) kernels.

Skipped (with the reason) where no CUDA device or no Triton is present, which includes CI; the
same kernels run through the Triton interpreter on CPU tensors in ``test_sparse_backward.py``.
Run them on a GPU machine with ``pytest -m gpu tests/test_cuda_kernels.py``; the figures of the
last such run are in docs/sparse_backward.md.

The GPU computes in float32 with its own summation order and fused multiply-adds, so a membrane
within ~1e-6 of threshold may spike on one device and not the other. The fixed seeds below give
none such; the large case checks agreement rates instead of equality.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparsespike.kernels import triton_gpu
from sparsespike.kernels.recurrence import choose_impl, lif_recurrence
from sparsespike.kernels.sparse import active_set, choose_backend, lif_recurrence_masked, sparse_spiking_linear
from sparsespike.neurons import LIFParams
from sparsespike.surrogate import FastSigmoid, Rectangle, Triangle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not triton_gpu.available(), reason="needs a CUDA device and triton"),
]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    """Compiled kernels, not the interpreter, whatever the environment says."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _grads(out, inputs, gs):
    gr = torch.autograd.grad(out, inputs, gs, retain_graph=True)
    return [g.to_dense() if g.is_sparse else g for g in gr]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 2e-4) -> None:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert a.shape == b.shape
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= rtol * (1.0 + b.abs().max().item()), err


def _net(T, B, K, H, N, density, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, K, generator=g) < density).float()
    W1 = torch.randn(H, K, generator=g) * 2.0 / math.sqrt(K * density * 4)
    W2 = torch.randn(N, H, generator=g) * 2.0 / math.sqrt(H * 0.1)
    b2 = torch.randn(N, generator=g) * 0.1 if bias else None
    gs = torch.randn(T, B, N, generator=g)
    return x, W1, W2, b2, gs


def _run(x, W1, W2, b2, gs, p, b_th, device):
    x = x.to(device)
    ws = [w.to(device).requires_grad_() for w in (W1, W2) + ((b2,) if b2 is not None else ())]
    S1 = sparse_spiking_linear(x, ws[0], None, p, b_th)
    S2 = sparse_spiking_linear(S1, ws[1], ws[2] if b2 is not None else None, p, b_th)
    return [S1, S2] + _grads(S2, [S1] + ws, gs.to(device))


def test_dispatch_picks_triton_on_cuda():
    x = torch.zeros(4, 2, 3, device=CUDA)
    W = torch.zeros(5, 3, device=CUDA)
    p = LIFParams(beta=0.9)
    assert choose_backend(x, W, None, p) == "triton"
    assert choose_impl(x, p) == "triton"
    assert choose_impl(x.double(), p) == "torch"  # the kernels compute in float32


@pytest.mark.parametrize("surrogate", [FastSigmoid(5.0), Triangle(), Rectangle()], ids=["fs", "tri", "rect"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("b_th", [0.2, 1e9])
def test_sparse_linear_cuda_matches_cpu(surrogate, bias, b_th):
    """Two sparse layers on CUDA (Triton) give the numba kernels' spikes and gradients (input,
    weights, bias), at the paper's window and with every neuron active."""
    x, W1, W2, b2, gs = _net(30, 4, 50, 40, 24, 0.1, seed=7, bias=bias)
    p = LIFParams(beta=0.9, surrogate=surrogate)
    gpu = _run(x, W1, W2, b2, gs, p, b_th, CUDA)
    cpu = _run(x, W1, W2, b2, gs, p, b_th, "cpu")
    assert float(gpu[1].detach().sum()) > 0
    for a, b in zip(gpu[:2], cpu[:2], strict=True):
        assert torch.equal(a.cpu(), b)
    for a, b in zip(gpu[2:], cpu[2:], strict=True):
        _close(a, b)


def test_sparse_equals_dense_on_cuda_when_all_active():
    """With B_th large enough that every neuron is active, the sparse backward on CUDA equals the
    dense one (our Triton BPTT) to float tolerance."""
    from sparsespike.layers import SpikingLinear

    torch.manual_seed(3)
    x = (torch.rand(40, 8, 60, device=CUDA) < 0.15).float()
    p = LIFParams(beta=0.9, surrogate=FastSigmoid(5.0))
    ref = SpikingLinear(60, 48, p, weight_scale=5.0).to(CUDA)
    out = {}
    for mode in ("sparse", "dense"):
        l1 = SpikingLinear(60, 48, p, backward=mode, b_th=1e9).to(CUDA)
        l2 = SpikingLinear(48, 20, p, backward=mode, b_th=1e9, bias=True).to(CUDA)
        with torch.no_grad():
            l1.weight.copy_(ref.weight)
            l2.weight.copy_(torch.linspace(-1, 1, 20 * 48, device=CUDA).reshape(20, 48))
        s = l2(l1(x))
        loss = (s * torch.linspace(0, 1, 20, device=CUDA)).sum()
        out[mode] = [s.detach()] + list(torch.autograd.grad(loss, [l1.weight, l2.weight, l2.bias]))
    assert float(out["dense"][0].sum()) > 0
    assert torch.equal(out["sparse"][0], out["dense"][0])
    for a, b in zip(out["sparse"][1:], out["dense"][1:], strict=True):
        _close(a, b)


@pytest.mark.parametrize("setting", [dict(), dict(reset="zero"), dict(alpha=0.6), dict(detach_reset=False)])
def test_recurrences_cuda_match_cpu(setting):
    """Dense BPTT and the masked recurrence on CUDA give the numba kernels' results."""
    g = torch.Generator().manual_seed(5)
    cur = torch.randn(25, 6, 33, generator=g) * 0.8 + 0.3
    gs = torch.randn(cur.shape, generator=g)
    p = LIFParams(beta=0.9, **setting)
    for fn in (
        lambda c, st: lif_recurrence(c, p, b_th=0.3, stats=st),
        lambda c, st: lif_recurrence_masked(c, p, 0.3, st),
    ):
        res = []
        for dev in (CUDA, "cpu"):
            c = cur.to(dev).requires_grad_()
            st: dict = {}
            S = fn(c, st)
            res.append((S, torch.autograd.grad(S, c, gs.to(dev))[0], st["n_active"]))
        assert torch.equal(res[0][0].cpu(), res[1][0])
        _close(res[0][1], res[1][1])
        assert res[0][2] == res[1][2] > 0


def test_large_layer_agrees_with_cpu():
    """A paper-sized layer (T=100, batch 64, 784 -> 400, ~1-3 % active): spikes agree to float32
    rounding and the weight gradient's cosine similarity with the CPU one is ~1."""
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(100, 64, 784, generator=g) < 0.01).float()
    W = torch.randn(400, 784, generator=g) * 2.0 / math.sqrt(784 * 0.01)
    gs = torch.randn(100, 64, 400, generator=g)
    p = LIFParams(beta=math.exp(-0.1), surrogate=FastSigmoid(100.0))
    res = {}
    for dev in (CUDA, "cpu"):
        w = W.to(dev).requires_grad_()
        st: dict = {}
        S = sparse_spiking_linear(x.to(dev), w, None, p, 0.2, st)
        (gw,) = torch.autograd.grad(S, [w], gs.to(dev))
        res[dev if dev == "cpu" else "cuda"] = (S.cpu(), gw.cpu(), st["n_active"])
    (Sg, gwg, ng), (Sc, gwc, nc) = res["cuda"], res["cpu"]
    act = 100 * nc / Sc.numel()
    assert 0.2 < act < 10, act
    assert (Sg != Sc).float().mean() < 1e-4
    assert abs(ng - nc) <= 1e-4 * Sc.numel()
    cos = torch.nn.functional.cosine_similarity(gwg.flatten().double(), gwc.flatten().double(), dim=0)
    assert cos > 0.9999, cos


def test_sparse_backward_memory_on_cuda():
    """At ~1 % activity the sparse layer's backward peak on the GPU is a small fraction of the
    dense one's (Perez-Nieves eq. 14 on ``torch.cuda`` allocations); both compute the weight and
    input gradients, the sparse one at the previous layer's active entries only, with no buffer
    of size ``T*B*N`` (the backward scan stays in registers). What remains is mostly the COO
    indices that carry the input gradient (24 bytes per active entry of layer 1)."""
    from sparsespike.kernels.sparse import share_active_set
    from sparsespike.layers import SpikingLinear

    torch.manual_seed(2)
    p = LIFParams(beta=math.exp(-0.1), surrogate=FastSigmoid(100.0))
    x = (torch.rand(100, 128, 400) < 0.02).float().to(CUDA)
    torch.manual_seed(5)
    l1 = SpikingLinear(400, 400, p, backward="sparse", b_th=0.2, weight_scale=1.2).to(CUDA)  # ~1.7 % active
    with torch.no_grad():
        s1 = l1(x)
    W = 3.0 * l1.weight.detach()  # layer 2: ~1.8 % active
    peak, acts = {}, {}
    for mode in ("dense", "sparse"):
        lay = SpikingLinear(400, 400, p, backward=mode, b_th=0.2).to(CUDA)
        with torch.no_grad():
            lay.weight.copy_(W)
        inp = s1.detach().requires_grad_()
        if mode == "sparse":
            share_active_set(s1, inp)
        out = lay(inp)
        acts[mode] = lay.activity()
        gs = torch.randn(out.shape, device=CUDA, generator=torch.Generator(CUDA).manual_seed(0))
        if mode == "sparse":
            gs = active_set(out).sparse_tensor(active_set(out).gather(gs))
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out.backward(gs)
        torch.cuda.synchronize()
        peak[mode] = torch.cuda.max_memory_allocated() - base
        assert inp.grad is not None and lay.weight.grad is not None
        del out, gs
    assert acts["dense"] == pytest.approx(acts["sparse"], rel=1e-3) and 0.5 < acts["sparse"] < 4, acts
    assert peak["sparse"] < 0.3 * peak["dense"], peak


def test_yin_flops_penalty_and_training_on_cuda(data_dir, tmp_path):
    """The Yin SCNN trains on CUDA (``device: cuda``): the expected-FLOPs penalty of a gated model
    is the CPU value, the pruned model scores what the gated one did, and a resumed run ends
    where the uninterrupted one does up to GPU float noise."""
    from sparsespike.sparsity.connectivity import add_l0_gates
    from sparsespike.sparsity.flops import ExpectedFlops
    from sparsespike.sparsity.yin_models import build_yin_network, load_config, train_yin

    torch.manual_seed(0)
    net = build_yin_network("mnist")
    add_l0_gates(net, seed=1, init_mean=0.5, init_std=1.0)
    x = (torch.rand(4, 3, 1, 28, 28, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    vals = []
    for dev in ("cpu", "cuda"):
        net.to(dev).train()
        pen = ExpectedFlops(1.0).attach(net)
        net(x.to(dev))
        vals.append(pen.value(3).item())
        pen.release()
    assert math.isclose(vals[0], vals[1], rel_tol=1e-5), vals

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 200, "test_subset": 100}
    cfg["connectivity"] = {**cfg["connectivity"], "penalty": "flops", "lam": 1.0e-5, "freeze_after": 1}
    cfg["optimizer"] = {**cfg["optimizer"], "gate_lr": 0.5, "batch_size": 50}
    cfg.update(epochs=2, eval_every=1, verbose=False, device="cuda")
    res = train_yin({**cfg, "out_dir": str(tmp_path / "full")})
    assert res["test_acc"] == res["test_acc_pruned"] and res["flops_ratio"] < 1.0
    train_yin({**cfg, "epochs": 1, "out_dir": str(tmp_path / "cut")})
    again = train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})
    assert [r["epoch"] for r in again["history"]] == [1, 2]
    assert abs(again["history"][-1]["loss"] - res["history"][-1]["loss"]) < 0.05 * res["history"][-1]["loss"]
