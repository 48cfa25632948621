"""Hard-concrete L0 gates (Yin et al. 2021 / Louizos et al. 2018), pruning, FLOPs, sparse inference."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from sparsespike.errors import SpikeInputError
from sparsespike.layers import LeakyReadout, SeqFlatten, SeqPool2d, SpikeCountReadout, SpikingConv2d, SpikingLinear
from sparsespike.neurons import LIFParams
from sparsespike.sparse_inference import kernel_report, sparse_inference_model
from sparsespike.sparsity.connectivity import (
    BETA,
    GAMMA,
    ZETA,
    HardConcreteGate,
    add_l0_gates,
    constrain_gates,
    count_ops,
    expected_l0,
    gated_weights,
    gates,
    l0_penalty,
    prune,
    resample_gates,
    resamples_on_forward,
    sparsity_report,
)
from sparsespike.sparsity.yin_models import (
    YIN_STRUCTURES,
    build_yin_network,
    parse_structure,
    vote_mse_loss,
)
from sparsespike.surrogate import Rectangle

LOG_RATIO = math.log(-GAMMA / ZETA)  # = -ln 11


def _gate(la: torch.Tensor, seed: int = 0) -> HardConcreteGate:
    g = HardConcreteGate(la.shape, generator=torch.Generator().manual_seed(seed), dtype=la.dtype)
    with torch.no_grad():
        g.log_alpha.copy_(la)
    return g


# -- sampling -----------------------------------------------------------------------------------
def test_samples_in_unit_interval_with_exact_zeros_and_ones():
    g = _gate(torch.zeros(200_000))
    b = g.sample()
    assert b.min() >= 0 and b.max() <= 1
    assert (b == 0).float().mean() > 0.05
    assert (b == 1).float().mean() > 0.05
    assert ((b > 0) & (b < 1)).any()


@pytest.mark.parametrize("la", [-2.0, 0.0, 1.0, 2.5])
def test_empirical_prob_nonzero_matches_eq20(la):
    n = 200_000
    g = _gate(torch.full((n,), la), seed=1)
    p_emp = float((g.sample() > 0).double().mean())
    p_th = float(torch.sigmoid(torch.tensor(la - BETA * LOG_RATIO)))
    assert abs(p_emp - p_th) < 4 * math.sqrt(p_th * (1 - p_th) / n) + 1e-3
    assert torch.allclose(g.prob_nonzero(), torch.full((n,), p_th), atol=1e-6)


def test_log_alpha_limits_give_all_ones_or_zeros():
    assert torch.equal(_gate(torch.full((10_000,), 60.0)).sample(), torch.ones(10_000))
    assert torch.equal(_gate(torch.full((10_000,), -60.0)).sample(), torch.zeros(10_000))
    assert torch.equal(_gate(torch.full((10,), 60.0)).test_gate(), torch.ones(10))
    assert torch.equal(_gate(torch.full((10,), -60.0)).test_gate(), torch.zeros(10))


def test_sample_formula_and_gradient():
    la = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    g = _gate(la)
    g.resample()
    u = g.u.clone()
    assert u.min() >= 1e-6 and u.max() <= 1 - 1e-6
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la) / BETA)
    assert torch.allclose(g.sample(), torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1))

    def f(x):
        with torch.no_grad():
            g.log_alpha.copy_(x.detach())
        s_ = torch.sigmoid((torch.log(u) - torch.log(1 - u) + x) / BETA)
        return torch.clamp(s_ * (ZETA - GAMMA) + GAMMA, 0, 1)

    # autograd through the gate equals finite differences (points away from the clamp kinks)
    x = la.clone().requires_grad_(True)
    inside = (f(x) > 0.01) & (f(x) < 0.99)
    g2 = _gate(la)
    g2.u = u
    g2.sample()[inside].sum().backward()
    eps = 1e-6
    fd = (f(la + eps) - f(la - eps)) / (2 * eps)
    assert torch.allclose(g2.log_alpha.grad[inside], fd[inside], atol=1e-6)


def test_penalty_matches_eq20_and_its_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Conv1d(2, 3, 2))
    add_l0_gates(net, lam=0.1, seed=0)
    for g in gates(net):
        with torch.no_grad():
            g.log_alpha.normal_(0.0, 2.0)
    las = [g.log_alpha for g in gates(net)]
    expect = sum(0.1 * torch.sigmoid(la - BETA * LOG_RATIO).sum() for la in las)
    pen = l0_penalty(net)
    assert torch.allclose(pen, expect)
    assert torch.allclose(l0_penalty(net, lam=1.0), expected_l0(net))
    pen.backward()
    for la in las:
        sig = torch.sigmoid(la.detach() - BETA * LOG_RATIO)
        assert torch.allclose(la.grad, 0.1 * sig * (1 - sig), atol=1e-7)
    # finite differences in float64
    la = torch.randn(6, dtype=torch.float64, requires_grad=True)
    g = _gate(la.detach())

    def penalty(x):
        return 0.1 * torch.sigmoid(x - g.beta * math.log(-g.gamma / g.zeta)).sum()

    assert torch.autograd.gradcheck(penalty, (la,))


def test_test_time_gate_is_deterministic_and_matches_formula():
    la = torch.linspace(-4, 4, 101)
    g = _gate(la).eval()
    expect = torch.clamp(torch.sigmoid(la) * (ZETA - GAMMA) + GAMMA, 0, 1)
    assert torch.equal(g.gate(), g.gate())
    assert torch.allclose(g.gate(), expect)
    # pruned iff log_alpha <= -ln 11
    assert torch.equal(g.gate() == 0, la <= -math.log(11) + 1e-6)
    w = torch.randn(101)
    assert torch.allclose(g(w), w * expect)


def test_constrain_gates_clamps_log_alpha():
    net = nn.Linear(3, 3)
    add_l0_gates(net, seed=0)
    g = gates(net)[0]
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([[-10.0, 0.0, 10.0]] * 3))
    constrain_gates(net)
    assert torch.allclose(g.log_alpha[0], torch.tensor([math.log(0.01), 0.0, math.log(100)]))


def test_init_follows_yin():
    net = nn.Linear(100, 100)
    add_l0_gates(net, seed=0)
    la = gates(net)[0].log_alpha.detach()
    assert abs(float(la.mean()) - 1.0) < 0.005 and abs(float(la.std()) - 0.01) < 0.002


# -- one sample per mini-batch, seeded ---------------------------------------------------------------
class PerStepNet(nn.Module):
    """snnTorch-style: the Linear is called once per time step inside forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        out = []
        for t in range(x.shape[0]):
            self.seen.append(self.fc.weight.detach().clone())
            out.append(self.fc(x[t]))
        return torch.stack(out)


def test_gate_constant_across_time_steps_and_resampled_per_forward():
    net = PerStepNet()
    assert not resamples_on_forward(net)
    add_l0_gates(net, seed=0)
    assert resamples_on_forward(net)
    net.train()
    net(torch.rand(5, 2, 6))
    first = net.seen
    assert len(first) == 5 and all(torch.equal(first[0], w) for w in first)
    net.seen = []
    net(torch.rand(5, 2, 6))
    assert not torch.equal(first[0], net.seen[0])  # new mini-batch -> new sample
    net.eval()
    net.seen = []
    net(torch.rand(5, 2, 6))
    net(torch.rand(5, 2, 6))
    assert all(torch.equal(net.seen[0], w) for w in net.seen)


def test_manual_resampling_freezes_until_called():
    fc = nn.Linear(6, 4)
    add_l0_gates(fc, modules=[fc], seed=0, resample="manual")
    assert not resamples_on_forward(fc)
    fc.train()
    w1 = fc.weight.detach().clone()
    for _ in range(3):
        fc(torch.rand(2, 6))
    assert torch.equal(fc.weight, w1)
    resample_gates(fc)
    assert not torch.equal(fc.weight, w1)


def test_fixed_seed_gives_reproducible_masks():
    def masks(seed):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 5))
        add_l0_gates(net, seed=seed)
        out = []
        for _ in range(3):
            net(torch.zeros(1, 20))
            out.append([g.sample() == 0 for g in gates(net)])
        return out

    a, b, c = masks(7), masks(7), masks(8)
    assert all(torch.equal(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    assert not all(torch.equal(x, y) for ra, rc in zip(a, c, strict=True) for x, y in zip(ra, rc, strict=True))


# -- any model; pruning ---------------------------------------------------------------------------
def _plain_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def _spiking_cnn(dtype=torch.float64):
    p = LIFParams(beta=0.3, threshold=0.5, reset="zero", detach_reset=False, surrogate=Rectangle(1.0, 1.0))
    net = nn.Sequential(
        SpikingConv2d(2, 6, 3, p, padding=1, bias=True),
        SeqPool2d(2, "avg"),
        SpikingConv2d(6, 8, 3, p, padding=1),
        SeqFlatten(),
        SpikingLinear(8 * 4 * 4, 20, p, bias=True),
        SpikingLinear(20, 5, p),
        SpikeCountReadout(),
    ).to(dtype)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, SpikingLinear)):
                m.weight.mul_(6.0)  # strong enough that every layer spikes, also after random pruning
    return net


def _layer_outputs(net, x):
    """The output of every top-level module of a ``Sequential`` on ``x`` (forward hooks)."""
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone())) for m in net]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def _assert_same_and_active(a, b, x):
    """``a`` and ``b`` agree layer by layer on ``x``, and every layer of ``a`` is active (so the
    comparison is not between two all-zero tensors)."""
    oa, ob = _layer_outputs(a, x), _layer_outputs(b, x)
    assert len(oa) == len(ob)
    for i, (u, v) in enumerate(zip(oa, ob, strict=True)):
        assert u.abs().sum() > 0, f"layer {i} is silent: the test input does not exercise it"
        assert torch.equal(u, v), f"layer {i} differs"


def _set_random_log_alpha(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for g in gates(net):
        with torch.no_grad():
            g.log_alpha.copy_(torch.randn(g.log_alpha.shape, generator=gen, dtype=g.log_alpha.dtype) * 3)


def test_gates_attach_to_plain_torch_cnn_and_train():
    torch.manual_seed(0)
    net = _plain_cnn()
    gw = add_l0_gates(net, lam=1e-2, seed=0)
    assert [x.name for x in gw] == ["0", "3", "6"]
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = float(expected_l0(net).detach())
    for _ in range(20):
        loss = nn.functional.cross_entropy(net(x), y) + l0_penalty(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        constrain_gates(net)
    assert float(expected_l0(net).detach()) < before
    for g in gates(net):
        assert g.log_alpha.grad is not None


@pytest.mark.parametrize("which", ["plain", "spiking"])
def test_pruned_model_equals_gated_model_in_eval(which):
    torch.manual_seed(0)
    if which == "plain":
        net = _plain_cnn().double()
        x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    else:
        net = _spiking_cnn()
        x = (torch.rand(6, 3, 2, 8, 8) < 0.3).double()
    add_l0_gates(net, seed=0)
    _set_random_log_alpha(net)
    net.eval()
    ref = net(x)
    rep = sparsity_report(net)
    assert 0.2 < rep["total"]["density"] < 0.8
    pruned = prune(copy.deepcopy(net))
    _assert_same_and_active(net, pruned, x)
    assert not gated_weights(pruned) and not gates(pruned)
    assert all(
        isinstance(m.weight, nn.Parameter)
        for m in pruned.modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and not isinstance(m, SpikingConv2d)
    )
    assert torch.equal(pruned(x), ref)
    rep2 = sparsity_report(pruned)
    assert rep2["total"]["nonzero"] == rep["total"]["nonzero"]
    assert all(r1["nonzero"] == r2["nonzero"] for r1, r2 in zip(rep["layers"], rep2["layers"], strict=True))
    # the pruned state dict loads into a fresh un-gated model
    fresh = _plain_cnn().double() if which == "plain" else _spiking_cnn()
    fresh.load_state_dict(pruned.state_dict())
    assert torch.equal(fresh.eval()(x), ref)
    assert not pruned._forward_pre_hooks


def test_gates_attach_to_our_layers():
    net = nn.Sequential(SpikingLinear(10, 8), LeakyReadout(8, 3))
    gw = add_l0_gates(net, seed=0)
    assert [x.name for x in gw] == ["0", "1"]
    cnn = _spiking_cnn(torch.float32)
    assert [x.name for x in add_l0_gates(cnn, seed=0)] == ["0.conv", "2.conv", "4", "5"]
    x = (torch.rand(4, 2, 2, 8, 8) < 0.3).float()
    out = cnn(x)
    vote_mse_loss(out, torch.tensor([1, 2])).backward()
    assert all(g.log_alpha.grad is not None for g in gates(cnn))


def test_gates_attach_to_snntorch_model():
    snn = pytest.importorskip("snntorch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(12, 16), snn.Leaky(beta=0.9)
            self.fc2, self.lif2 = nn.Linear(16, 3), snn.Leaky(beta=0.9)
            self.w_seen = []

        def forward(self, x):
            m1, m2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk = []
            for t in range(x.shape[0]):
                self.w_seen.append(self.fc1.weight.detach().clone())
                s1, m1 = self.lif1(self.fc1(x[t]), m1)
                s2, m2 = self.lif2(self.fc2(s1), m2)
                spk.append(s2)
            return torch.stack(spk)

    torch.manual_seed(0)
    net = Net()
    assert len(add_l0_gates(net, seed=0)) == 2
    out = net(torch.rand(6, 4, 12))
    (out.sum() + l0_penalty(net)).backward()
    assert all(torch.equal(net.w_seen[0], w) for w in net.w_seen)
    assert gates(net)[0].log_alpha.grad is not None
    with torch.no_grad():  # strong enough weights that the output layer spikes
        net.fc1.parametrizations.weight.original.mul_(10.0)
        net.fc2.parametrizations.weight.original.mul_(10.0)
    _set_random_log_alpha(net)
    net.eval()
    assert 0.2 < sparsity_report(net)["total"]["density"] < 0.9
    x = torch.rand(6, 4, 12, generator=torch.Generator().manual_seed(1))
    ref = net(x)
    assert ref.sum() > 0, "the snnTorch network must spike for the comparison to mean anything"
    pruned = prune(net)
    assert not gates(pruned) and (pruned.fc1.weight == 0).any()
    assert torch.equal(pruned(x), ref)


# -- FLOPs / SynOps ----------------------------------------------------------------------------------
def test_count_ops_hand_built_mask():
    lin = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 2, 0, 0]] * 2 + [[0.0] * 6] * 2))  # nnz = 4
    net = nn.Sequential(lin)
    x = torch.tensor([[[1.0, 1, 0, 0, 0, 0]], [[0.0, 0, 0, 1, 1, 1]]])  # [T=2, B=1, 6]
    ops = count_ops(net, x)
    assert ops["flops"] == 2 * 4 * 2 and ops["flops_dense"] == 2 * 24 * 2
    assert ops["flops_per_step"] == 8
    # synops: t=0 input 0 drives 2 synapses, input 1 none; t=1 input 3 drives 2
    assert ops["synops"] == 4
    conv = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[2, 1, 0, 0] = 1.0
    xs = torch.zeros(1, 2, 5, 5)
    xs[0, 0, 2, 2] = 1.0
    ops = count_ops(nn.Sequential(conv), xs, batch_size=1, time_steps=1)
    assert ops["flops"] == 2 * 2 * 9 and ops["flops_dense"] == 2 * 54 * 9
    assert ops["synops"] == 1  # the event at (2, 2) reaches output (1, 1) through tap (1, 1)
    # "same" padding: taps reading the padding are not counted
    convp = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    ops = count_ops(nn.Sequential(convp), torch.zeros(1, 1, 4, 4), batch_size=1, time_steps=1)
    assert ops["flops_dense"] == 2 * (3 + 4 + 3) ** 2  # per axis, taps 0,1,2 are valid at 3,4,3 outputs


def test_count_ops_yin_mnist_dense():
    net = build_yin_network("mnist")
    ops = count_ops(net, torch.zeros(1, 1, 1, 28, 28))
    # 15C5 same on 28x28 + 40C5 same on 14x14 + 1960x300 + 300x10, padding taps excluded: per
    # axis a 5-tap "same" conv over n pixels has 5n - (2 + 1) * 2 taps inside (134 at 28, 64 at 14)
    per_axis = {n: 5 * n - 6 for n in (28, 14)}
    macs = 15 * 1 * per_axis[28] ** 2 + 40 * 15 * per_axis[14] ** 2 + 1960 * 300 + 300 * 10
    assert ops["flops_dense"] == 2 * macs


# -- Yin networks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist", "cifar10", "nmnist", "dvs_gesture"])
def test_yin_networks_build_and_run(name):
    shape, _ = parse_structure(YIN_STRUCTURES[name])
    net = build_yin_network(name)
    out = net(torch.zeros(1, 1, *shape))
    assert out.shape == (1, 11 if name == "dvs_gesture" else 10)
    lin = [m for m in net if isinstance(m, SpikingLinear)][0]
    assert lin.neuron.reset.value == "zero" and lin.neuron.threshold == 0.5
    assert isinstance(lin.neuron.surrogate, Rectangle)


def test_vote_mse_loss_is_eq5():
    votes = torch.tensor([[0.5, 0.25], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(vote_mse_loss(votes, y), torch.tensor(((0.25 + 0.0625) + 0.0) / 2))


# -- sparse inference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", ["auto", "dense", "csr", "event"])
def test_sparse_inference_equals_dense_spiking(kernels):
    torch.manual_seed(0)
    net = _spiking_cnn()
    add_l0_gates(net, seed=0)
    _set_random_log_alpha(net, 1)
    pruned = prune(net.eval())
    x = (torch.rand(6, 3, 2, 8, 8) < 0.3).double()
    fast = sparse_inference_model(pruned, example_input=x if kernels == "auto" else None, kernels=kernels)
    assert torch.equal(fast(x), pruned(x))
    # every layer of the pruned network spikes on x (fast fuses conv + pool, so only the output
    # is compared, which then depends on every layer)
    assert all(o.abs().sum() > 0 for o in _layer_outputs(pruned, x))
    rep = kernel_report(fast)
    assert len(rep) == 4
    if kernels != "auto":
        want = {"csr": {"csr", "taps"}}.get(kernels, {kernels})
        assert all(r["kernel"] in want for r in rep)


@pytest.mark.parametrize("kernels", ["auto", "csr", "event"])
def test_sparse_inference_equals_dense_plain(kernels):
    torch.manual_seed(0)
    net = _plain_cnn().double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_((torch.rand_like(m.weight) < 0.3).double())
    x = torch.relu(torch.randn(5, 1, 8, 8, dtype=torch.float64))
    fast = sparse_inference_model(net, example_input=x if kernels == "auto" else None, kernels=kernels)
    assert torch.allclose(fast(x), net(x), atol=1e-12)
    # gates still attached are baked in first
    gated = _plain_cnn().double()
    add_l0_gates(gated, seed=0)
    _set_random_log_alpha(gated, 2)
    gated.eval()
    assert torch.allclose(sparse_inference_model(gated, kernels=kernels)(x), gated(x), atol=1e-12)


def test_count_ops_flops_agree_with_metrics_module():
    from sparsespike import metrics

    torch.manual_seed(0)
    net = build_yin_network("mnist").eval()
    add_l0_gates(net, seed=0)
    _set_random_log_alpha(net, 3)
    x = (torch.rand(2, 2, 1, 28, 28) < 0.2).float()
    ops = count_ops(net, x)
    rep = metrics.measure(net, [x])
    assert ops["flops"] == pytest.approx(rep.dense_flops, rel=1e-9)
    # SynOps agree on the layers with binary input (metrics.py counts non-binary, e.g.
    # average-pooled, inputs as non-spiking MACs instead)
    first = [r for r in rep.layers if r["synops"] or r["dense_flops"]][0]
    assert ops["layers"][0]["synops"] == pytest.approx(first["synops"], rel=1e-9)


@pytest.mark.parametrize("reset,alpha", [("zero", None), ("subtract", None), ("subtract", 0.8)])
def test_lif_inference_bit_identical_to_training_kernel(reset, alpha):
    from sparsespike.kernels import lif_recurrence
    from sparsespike.sparse_inference import lif_inference

    p = LIFParams(beta=0.3, alpha=alpha, threshold=0.5, reset=reset, surrogate=Rectangle(1.0, 1.0))
    x = torch.randn(20, 7, 33) * 0.7
    assert torch.equal(lif_inference(x, p), lif_recurrence(x, p, impl="numba"))


def test_sparse_inference_float32_dense_kernels_identical():
    torch.manual_seed(0)
    net = _spiking_cnn(torch.float32).eval()
    x = (torch.rand(6, 3, 2, 8, 8) < 0.3).float()
    assert torch.equal(sparse_inference_model(net, kernels="dense")(x), net(x))
    assert torch.equal(sparse_inference_model(net, kernels="dense", fast_recurrence=False)(x), net(x))


def test_train_yin_checkpoint_reloads_pruned(data_dir, tmp_path):
    """train_yin writes model.pt atomically; load_yin_model (weights_only) rebuilds the pruned net."""
    from sparsespike.sparsity.yin_models import load_config, load_yin_model, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 100, "test_subset": 50}
    cfg.update(epochs=1, eval_every=1, out_dir=str(tmp_path))
    res = train_yin(cfg)
    assert not list(tmp_path.glob("*.tmp"))
    assert res["curves"] == str(tmp_path / "curves.png") and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, saved = load_yin_model(tmp_path / "model.pt")
    assert saved["connectivity"]["l0"] and not gated_weights(model)
    state = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = (torch.rand(12, 2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    assert model(x).shape == (2, 10)


def test_train_yin_init_from_prunes_a_trained_network(data_dir, tmp_path):
    """init_from loads a trained model.pt before the gates are added: with nothing learning
    (lr 0), the pruned result is exactly the source weights times the test-time gates."""
    from sparsespike.errors import ConfigError, DataError
    from sparsespike.sparsity.yin_models import load_config, load_yin_model, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 60, "test_subset": 20}
    cfg.update(epochs=1, eval_every=1, verbose=False)
    dense_dir = tmp_path / "dense"
    train_yin({**cfg, "connectivity": {"l0": False}, "out_dir": str(dense_dir)})
    src, _ = load_yin_model(dense_dir / "model.pt")
    frozen = {**cfg, "init_from": str(dense_dir / "model.pt"), "out_dir": str(tmp_path / "ft")}
    frozen["optimizer"] = {**cfg["optimizer"], "lr": 0.0, "gate_lr": 0.0}
    res = train_yin(frozen)
    pruned, _ = load_yin_model(tmp_path / "ft" / "model.pt")
    # log_alpha ~ N(1, 0.01) with gate lr 0: test-time gate clamp(sigmoid(1) * 1.2 - 0.1, 0, 1)
    # = 0.777 on every weight
    gate = min(1.0, max(0.0, 1.2 / (1 + math.exp(-1.0)) - 0.1))
    ref = src.state_dict()
    for k, v in pruned.state_dict().items():
        if k.endswith("weight"):
            dev = (v / ref[k] - gate).abs().flatten()  # the N(1, 0.01) spread moves it by ~0.003
            assert dev.median() < 0.003 and dev.max() < 0.03, k
        else:
            assert torch.equal(v, ref[k]), k
    assert res["test_acc"] == res["test_acc_pruned"]
    with pytest.raises(DataError, match="missing.pt cannot be read"):
        train_yin({**frozen, "init_from": str(tmp_path / "missing.pt")})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt cannot be read"):
        train_yin({**frozen, "init_from": str(tmp_path / "bad.pt")})
    torch.save({"epoch": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ConfigError, match="not a model.pt"):
        train_yin({**frozen, "init_from": str(tmp_path / "foreign.pt")})
    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 10}, {"type": "spike_count", "mean": True}]
    other = {**frozen, "model": {**cfg["model"], "layers": layers}}
    with pytest.raises(ConfigError, match="different network"):
        train_yin(other)


def test_train_yin_freeze_after_and_flops_penalty(data_dir, tmp_path):
    """freeze_after: the gates stop moving after that epoch and the weights go on learning."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.yin_models import load_config, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 60, "test_subset": 20}
    cfg["connectivity"] = {**cfg["connectivity"], "penalty": "flops", "lam": 1.0e-4, "freeze_after": 1}
    cfg["optimizer"] = {**cfg["optimizer"], "gate_lr": 2.0, "batch_size": 20}
    cfg.update(epochs=2, eval_every=1, verbose=False)
    # the same (deterministic) run stopped after epoch 1 and run to epoch 2: compare their last.pt
    train_yin({**cfg, "epochs": 1, "out_dir": str(tmp_path / "e1")})
    res = train_yin({**cfg, "out_dir": str(tmp_path / "e2")})
    h = res["history"]
    assert h[0]["l0_penalty"] > 0 and h[1]["l0_penalty"] == 0.0  # penalty off once frozen
    assert h[0]["density"] < 1.0 and h[1]["density"] == h[0]["density"]
    assert res["test_acc"] == res["test_acc_pruned"]
    m1, m2 = (torch.load(tmp_path / e / "last.pt", weights_only=True)["model"] for e in ("e1", "e2"))
    alphas = [k for k in m1 if k.endswith("log_alpha")]
    weights = [k for k in m1 if k.endswith("weight.original")]
    assert alphas and weights
    assert all(torch.equal(m1[k], m2[k]) for k in alphas)  # gates stopped moving
    assert all(not torch.equal(m1[k], m2[k]) for k in weights)  # weights went on learning
    for bad in ({"freeze_after": 3}, {"freeze_after": 1, "l0": False}):
        c = {**cfg, "connectivity": {**cfg["connectivity"], **bad}}
        with pytest.raises(ConfigError, match="freeze_after"):
            train_yin(c)


@pytest.mark.parametrize("cut", [1, 2])
def test_train_yin_resume_matches_uninterrupted(data_dir, tmp_path, cut):
    """last.pt after every epoch; a run cut off after `cut` epochs and resumed ends bit-for-bit
    where the uninterrupted run ends (weights, gates, history), across the freeze_after boundary."""
    from sparsespike.errors import ConfigError, DataError
    from sparsespike.sparsity.yin_models import load_config, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 40, "test_subset": 20}
    cfg["connectivity"] = {**cfg["connectivity"], "penalty": "flops", "lam": 1.0e-4, "freeze_after": 1}
    cfg["optimizer"] = {**cfg["optimizer"], "gate_lr": 2.0, "batch_size": 20}
    cfg.update(epochs=3, eval_every=1, verbose=False)
    full = train_yin({**cfg, "out_dir": str(tmp_path / "full")})
    with pytest.raises(ConfigError, match="last.pt"):
        train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})
    train_yin({**cfg, "epochs": cut, "out_dir": str(tmp_path / "cut")})
    assert (tmp_path / "cut" / "last.pt").exists() and not list((tmp_path / "cut").glob("*.tmp"))
    res = train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})
    drop = ("train_time_s",)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in res["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in full["history"]]
    assert res["sparsity"] == full["sparsity"] and res["test_acc_pruned"] == full["test_acc_pruned"]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    with pytest.raises(ConfigError, match="connectivity.lam"):
        train_yin(
            {
                **cfg,
                "connectivity": {**cfg["connectivity"], "lam": 2.0e-4},
                "out_dir": str(tmp_path / "cut"),
                "resume": True,
            }
        )
    (tmp_path / "cut" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="last.pt cannot be read"):
        train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})
    torch.save({"epoch": 1}, tmp_path / "cut" / "last.pt")
    with pytest.raises(ConfigError, match="not a Yin checkpoint"):
        train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})


def test_train_yin_lr_schedule_and_crash_resume(data_dir, tmp_path, monkeypatch):
    """optimizer.lr_schedule steps once per epoch (cosine: lr0 (1 + cos(pi e / E)) / 2, gates
    too); a run killed mid-epoch resumes from last.pt to the uninterrupted result, the schedule
    included; a cosine run refuses a different epochs on resume, an exponential one extends."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity import yin_models
    from sparsespike.sparsity.yin_models import load_config, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 40, "test_subset": 20}
    cfg["connectivity"] = {**cfg["connectivity"], "lam": 1.0e-3}
    cfg["optimizer"] = {**cfg["optimizer"], "lr": 1.0e-3, "gate_lr": 0.5, "batch_size": 20}
    cfg["optimizer"]["lr_schedule"] = {"name": "cosine"}
    cfg.update(epochs=3, eval_every=1, verbose=False)
    full = train_yin({**cfg, "out_dir": str(tmp_path / "full")})
    assert [r["lr"] for r in full["history"]] == pytest.approx(
        [1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    )
    real_eval, calls = yin_models.evaluate, []

    def dying_eval(*a, **k):  # the process dies in epoch 2, after last.pt of epoch 1 is written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(yin_models, "evaluate", dying_eval)
    with pytest.raises(KeyboardInterrupt):
        train_yin({**cfg, "out_dir": str(tmp_path / "cut")})
    monkeypatch.setattr(yin_models, "evaluate", real_eval)
    res = train_yin({**cfg, "out_dir": str(tmp_path / "cut"), "resume": True})
    drop = ("train_time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in res["history"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in full["history"]
    ]
    assert res["sparsity"] == full["sparsity"]
    with pytest.raises(ConfigError, match="cosine"):
        train_yin({**cfg, "epochs": 4, "out_dir": str(tmp_path / "cut"), "resume": True})
    cfg["optimizer"]["lr_schedule"] = {"name": "exponential", "gamma": 0.5}
    train_yin({**cfg, "epochs": 1, "out_dir": str(tmp_path / "exp")})
    ext = train_yin({**cfg, "epochs": 3, "out_dir": str(tmp_path / "exp"), "resume": True})
    assert [r["lr"] for r in ext["history"]] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_train_yin_device_error():
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.yin_models import _device

    assert _device(None) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            _device("cuda")


def test_yin_event_data_bin_width(data_dir):
    """``encoding.dt_us`` bins N-MNIST's ~300 ms into T coarser frames, as the time-stepped engine does."""
    import numpy as np

    from sparsespike.data.nmnist import load_nmnist_small, nmnist_rasters
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.yin_models import _load_dataset, train_yin

    data = {"dataset": "nmnist_small", "root": str(data_dir)}
    _, _, xte, yte, encode = _load_dataset(data, 30, 0, dt_us=10_000.0)
    ev, y = load_nmnist_small(data_dir, "test")
    assert torch.equal(yte, torch.as_tensor(y))
    assert torch.equal(xte, nmnist_rasters(ev, T=30, dt_us=10_000.0))
    x = encode(xte[:4], None)
    assert x.shape == (30, 4, 2, 34, 34)
    # a hand count for sample 0: each (polarity, y, x, bin) cell is on iff an event rounds into it
    e = ev[0]
    bins = np.rint(e["t"] / 10_000.0).astype(int)
    keep = bins < 30
    hand = np.zeros((30, 2, 34, 34), dtype=np.float32)
    hand[bins[keep], e["p"][keep].astype(int), e["y"][keep].astype(int), e["x"][keep].astype(int)] = 1
    assert torch.equal(x[:, 0], torch.from_numpy(hand))
    # 30 bins of 10 ms reach the last saccade; 30 bins of 1 ms (the default width) do not
    assert x[20:].sum() > 0
    _, _, x1, _, _ = _load_dataset(data, 30, 0)
    assert x1.sum() < xte.sum() / 5
    with pytest.raises(ConfigError, match="rate coded"):
        _load_dataset({"dataset": "mnist", "root": str(data_dir)}, 12, 0, dt_us=1000.0)
    for bad in (0, -5.0, "ten", float("nan"), float("inf")):
        cfg = {"model": {"name": "nmnist"}, "data": data, "encoding": {"T": 30, "dt_us": bad}}
        with pytest.raises(ConfigError, match="dt_us"):
            train_yin(cfg)


def test_train_yin_warns_when_the_output_is_silent(data_dir):
    """A network whose readout never spikes gets no task gradient: say so instead of training blind."""
    from sparsespike.sparsity.yin_models import load_config, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 20, "test_subset": 10}
    cfg["optimizer"] = {**cfg["optimizer"], "batch_size": 10}
    cfg.update(epochs=1, verbose=False)
    cfg["connectivity"] = {**cfg["connectivity"], "l0": False}
    res = train_yin(cfg)  # the dense network spikes from the start: no warning
    assert 0.0 <= res["history"][0]["silent_output_pct"] < 100.0
    cfg["model"] = {**cfg["model"], "neuron": {**cfg["model"]["neuron"], "threshold": 1.0e6}}
    with pytest.warns(RuntimeWarning, match="did not spike for any training sample"):
        res = train_yin(cfg)
    assert res["history"][0]["silent_output_pct"] == 100.0


def test_cli_evaluate_a_yin_run_reproduces_its_pruned_test_accuracy(data_dir, tmp_path, capsys):
    """`sparsespike evaluate` on a Yin run reloads the pruned model.pt and the data its config
    names, and gets the test accuracy train_yin recorded; `--split train` uses the run's subset."""
    from sparsespike.cli import main
    from sparsespike.sparsity.yin_models import load_config, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 60, "test_subset": 50}
    cfg["connectivity"] = {**cfg["connectivity"], "lam": 1.0e-3}
    cfg["optimizer"] = {**cfg["optimizer"], "gate_lr": 0.5, "batch_size": 20}
    cfg.update(epochs=2, eval_every=2, verbose=False, out_dir=str(tmp_path / "run"), seed=5)
    res = train_yin(cfg)
    assert main(["evaluate", str(tmp_path / "run"), "--data-dir", str(data_dir)]) == 0
    out = json.loads((tmp_path / "run" / "evaluate_model.json").read_text())
    assert out["samples"] == 50 and out["test_acc"] * 100 == pytest.approx(res["test_acc_pruned"])
    assert "test accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--split", "train", "--limit", "30"]) == 0
    assert json.loads((tmp_path / "run" / "evaluate_model_train30.json").read_text())["samples"] == 30
    assert main(["evaluate", str(tmp_path / "run"), "--split", "val"]) == 2
    assert "no validation split" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"epoch": 1}, "unknown config key 'epoch'; valid keys here: .*epochs"),
        ({"data": {"dataset": "mnist", "trainsubset": 200}}, "unknown config key 'data.trainsubset'"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": "abc"}, "epochs must be an int, got .abc."),
        ({"optimizer": {"lr": "abc"}}, "optimizer.lr must be a number"),
        ({"optimizer": {"batch_size": 0}}, "optimizer.batch_size must be >= 1"),
        ({"connectivity": [1]}, "section 'connectivity' must be a mapping"),
        # the neuron section was not checked: a typo or another reset fell back in silence
        ({"model": {"name": "mnist", "neuron": {"k_tua": 0.2}}}, "unknown config key 'model.neuron.k_tua'"),
        ({"model": {"name": "mnist", "neuron": {"alpha": 0.5}}}, "unknown config key 'model.neuron.alpha'"),
        ({"model": {"name": "mnist", "neuron": {"reset": "subtract"}}}, "reset must be 'zero'"),
        ({"model": {"name": "mnist", "neuron": {"threshold": 0}}}, "threshold must be a finite number > 0"),
        ({"model": {"name": "mnist", "neuron": {"detach_reset": "no"}}}, "detach_reset must be a bool"),
    ],
)
def test_yin_config_refuses_unknown_keys_and_bad_values(over, match):
    """A misspelled key would otherwise fall back to its default silently (e.g. 100 epochs)."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.yin_models import check_config, load_config, train_yin

    cfg = {**load_config("experiments/yin_mnist_small.yaml"), **over}
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)
    with pytest.raises(ConfigError, match=match):
        train_yin(cfg)  # refused before any data is read
    for name in ("yin_mnist_small", "yin_mnist_scnn", "yin_nmnist_small", "yin_cifar10_scnn"):
        check_config(load_config(f"experiments/{name}.yaml"))  # the shipped configs pass


def test_count_ops_refuses_a_gated_layer_it_cannot_count():
    """A gated nn.Embedding (named explicitly) would be counted as a Linear: refused by name."""
    from sparsespike.errors import ConfigError

    net = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 3))
    add_l0_gates(net, modules=["0", "1"], seed=0)
    with pytest.raises(ConfigError, match="'0' .*Embedding.* not a Linear or Conv"):
        count_ops(net, torch.zeros(2, 3, dtype=torch.long), batch_size=3, time_steps=2)


def test_gates_on_other_tensors_are_reported_and_refused_by_count_ops():
    """A gate on an LSTM's ``weight_ih_l0`` counts in the sparsity report (and its total);
    count_ops, which knows only Linear/Conv, names it instead of leaving it out."""
    from sparsespike.errors import ConfigError

    torch.manual_seed(0)
    net = nn.Sequential(nn.LSTM(4, 5))
    add_l0_gates(net, modules=["0"], tensor_name="weight_ih_l0", seed=0)
    _set_random_log_alpha(net)
    rep = sparsity_report(net)
    row = next(r for r in rep["layers"] if r["name"] == "0.weight_ih_l0")
    w = net[0].parametrizations.weight_ih_l0.original * gates(net)[0].test_gate()
    assert row["weights"] == 4 * 5 * 4 and row["nonzero"] == int((w != 0).sum()) < row["weights"]
    assert rep["total"]["nonzero"] == row["nonzero"]
    with pytest.raises(ConfigError, match="weight_ih_l0"):
        count_ops(net, torch.zeros(3, 2, 4))


def test_gate_refuses_bad_lam_and_init():
    """A negative lam rewards dense gates, NaN makes the penalty NaN: refused at construction."""
    for kw in ({"lam": -1.0}, {"lam": float("nan")}, {"init_mean": float("nan")}, {"init_std": -1.0}):
        with pytest.raises(ValueError, match="lam|init"):
            add_l0_gates(nn.Linear(3, 2), **kw)


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_inference_twin_of_a_non_zero_padded_conv_pads_like_the_module(mode):
    """nn.Conv2d pads reflect/circular/replicate itself; the twin's dense path once padded zeros."""
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode), nn.Flatten())
    x = torch.rand(2, 2, 5, 5)
    assert torch.allclose(sparse_inference_model(net)(x), net(x), atol=1e-6)


def test_counting_refuses_inference_twins_and_count_ops_synops_follow_design():
    """measure/count_ops on a converted model saw no layer (totals 0): refused. count_ops' SynOps
    count binary inputs only (DESIGN.md); average-pooled inputs are non-spiking MACs, and the
    old "every non-zero entry" count is kept as ``events``."""
    from sparsespike.metrics import measure

    torch.manual_seed(0)
    net = nn.Sequential(SpikingLinear(10, 8, {"beta": 0.5, "threshold": 0.1}), LeakyReadout(8, 3))
    x = (torch.rand(5, 2, 10) < 0.5).float()
    fast = sparse_inference_model(net, kernels="csr")
    with pytest.raises(ValueError, match="sparse-inference twins"):
        measure(fast, [x])
    with pytest.raises(ValueError, match="sparse-inference twins"):
        count_ops(fast, x)
    assert count_ops(net, x)["synops"] == pytest.approx(measure(net, [x]).synops * 1, rel=1e-9)
    conv = nn.Sequential(
        SpikingConv2d(1, 3, 3, {"beta": 0.5, "threshold": 0.1}, padding=1),
        SeqPool2d(2, "avg"),
        SpikingConv2d(3, 2, 3, {"beta": 0.5, "threshold": 0.1}, padding=1),
        SeqFlatten(),
    )
    xi = (torch.rand(4, 2, 1, 6, 6) < 0.4).float()
    ops, rep = count_ops(conv, xi), measure(conv, [xi])
    assert ops["layers"][1]["events"] > 0 and ops["layers"][1]["synops"] == 0  # pooled input
    assert ops["synops"] == pytest.approx(rep.synops, rel=1e-9)
    assert ops["nonspiking_macs"] == pytest.approx(ops["layers"][1]["flops"] / 2)
    assert ops["events"] == pytest.approx(ops["synops"] + ops["layers"][1]["events"])


def test_stacked_parametrizations_report_and_prune_the_weight_as_used():
    """weight_norm stacked on a gate: report/count_ops crashed (no .original) and prune left the
    weight a buffer; a parametrization after the gate made prune differ from the gated model."""
    from torch.nn.utils import parametrize as P

    torch.manual_seed(0)
    m = nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    add_l0_gates(m, [m], seed=0, init_mean=0.0)
    m.eval()
    x = torch.rand(5, 4)
    want = m(x)
    rep = sparsity_report(m)
    assert rep["total"]["nonzero"] == int((m.weight != 0).sum())
    prune(m)
    assert isinstance(m.weight, nn.Parameter) and "weight" in dict(m.named_parameters())
    torch.testing.assert_close(m(x), want)

    class Sym(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).T

    s = nn.Linear(4, 4, bias=False)
    add_l0_gates(s, [s], seed=1, init_mean=0.0)
    P.register_parametrization(s, "weight", Sym())
    s.eval()
    want = s(x)
    assert sparsity_report(s)["total"]["nonzero"] == int((s.weight != 0).sum())
    with pytest.warns(UserWarning, match="other parametrizations"):
        prune(s)
    torch.testing.assert_close(s(x), want)


def test_gated_input_penalties_refuse_unpriceable_convs_at_attach():
    """Transposed/grouped/circular-padded convs were accepted at attach and failed (or gave a
    wrong value) only at the first value(); a failed attach left its hooks behind."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.flops import ExpectedFlops
    from sparsespike.sparsity.synops import ExpectedSynOps

    for conv in (
        nn.ConvTranspose2d(3, 3, 3),
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Conv2d(2, 2, 3, padding_mode="circular"),
    ):
        net = nn.Sequential(nn.Linear(4, 4), conv)
        add_l0_gates(net, seed=0)
        for pen in (ExpectedFlops(1.0), ExpectedSynOps(1.0)):
            with pytest.raises(ConfigError):
                pen.attach(net)
            assert not net[0]._forward_pre_hooks or all(
                getattr(h, "__name__", "") == "_resample_hook" for h in net[0]._forward_pre_hooks.values()
            )


@pytest.mark.parametrize("kernel", ["dense", "csr", "event", "event_vec"])
def test_inference_twin_follows_weights_loaded_after_conversion(kernel):
    """The sparse kernels run on tables built from the weights at conversion: load_state_dict or
    an in-place edit left them stale (dense saw the new weights, csr/event the old)."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(5, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    f = sparse_inference_model(lin, kernels=kernel)
    new = {n: torch.randn_like(v) for n, v in f.state_dict().items()}
    f.load_state_dict(new)
    lin.load_state_dict(new)
    torch.testing.assert_close(f(x), lin(x))


@pytest.mark.parametrize("kernel", ["taps", "event", "event_vec"])
def test_inference_conv_twin_checks_channels_and_follows_edits(kernel):
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).double()
    f = sparse_inference_model(conv, kernels=kernel)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    f(x)
    with torch.no_grad():
        f[0].weight.mul_(0.5)
        conv[0].weight.mul_(0.5)
    torch.testing.assert_close(f(x), conv(x))
    for cin in (2, 5):  # the tap lists index 3 channels: out-of-bounds reads or a segfault before
        with pytest.raises(SpikeInputError, match="input channels"):
            f(torch.ones(1, cin, 6, 6, dtype=torch.float64))


def test_inference_refuses_unknown_kernel_names_and_keeps_nan():
    lin = nn.Sequential(nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="kernels must be one of"):
        sparse_inference_model(lin, kernels="evnet")
    x = torch.randn(1, 5, dtype=torch.float64)
    x[0, 2] = float("nan")
    assert torch.isnan(sparse_inference_model(lin, kernels="event")(x)).all()  # fastmath dropped NaN inputs
