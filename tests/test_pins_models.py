"""Pins found by mutation testing of the Yin et al. models (``sparsity/yin_models.py``), the
spec-driven builder (``models.py``), EMA weights (``ema.py``), the ``activity_bounds`` regulariser
and ``task_loss`` (``train.py``), and the EventProp MNIST ``augment`` flag.

Every expected value comes from an independent reference: a hand-written STBP recurrence (Yin et
al. KDD'21 eqs. 3-4, Wu et al. 2018 eq. 9), the paper's Tables 1-2, a direct evaluation of the
loss / regulariser formulas (Yin eq. 5; METHODS.md 1(a)), hand counts, or pruned vs gated runs.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsespike.eventprop.train import EventPropTraining
from sparsespike.layers import SeqPool2d, SpikeCountReadout, SpikingConv2d, SpikingLinear
from sparsespike.sparsity import yin_models
from sparsespike.sparsity.connectivity import add_l0_gates, prune
from sparsespike.sparsity.monitor import SpikeMonitor
from sparsespike.sparsity.yin_models import (
    build_yin_network,
    evaluate,
    network_from_config,
    parse_structure,
    vote_mse_loss,
)
from sparsespike.surrogate import Rectangle
from sparsespike.train import LossContext, activity_bounds, task_loss

# Yin et al. Table 1: k_tau, delta (surrogate width), and the text's T (12 MNIST, 30 CIFAR-10)
TABLE1 = {"mnist": (0.1, 1.0, 12), "cifar10": (0.3, 0.5, 30), "nmnist": (0.2, 0.5), "dvs_gesture": (0.2, 0.5)}
V_TH = 0.5  # Yin Table 1


# ------------------------------------------------------------------------- STBP reference
class _RectSpike(torch.autograd.Function):
    """``Theta(v)`` forward; STBP rectangle ``h 1[|v| < a/2]`` backward, ``h = 1/a`` in Wu et al.
    2018 eq. 9, ``h = 1`` in the STBP reference code (``lens = a/2``, METHODS.md 4(a))."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, a: float, h: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.a, ctx.h = a, h
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return g * (v.abs() < ctx.a / 2).to(g.dtype) * ctx.h, None, None


def _stbp_layer(current: torch.Tensor, k_tau: float, a: float, h: float) -> torch.Tensor:
    """Yin eqs. 3-4: ``u^t = k_tau u^{t-1} (1 - o^{t-1}) + I^t``, ``o^t = Theta(u^t - V_th)``;
    the reset term ``(1 - o^{t-1})`` is differentiated (Yin eq. 6 keeps ``do^{t+1}/do^t``)."""
    u = torch.zeros_like(current[0])
    o = torch.zeros_like(current[0])
    out = []
    for t in range(current.shape[0]):
        u = k_tau * u * (1 - o) + current[t]
        o = _RectSpike.apply(u - V_TH, a, h)
        out.append(o)
    return torch.stack(out)


def _reference_votes(x: torch.Tensor, p: dict[str, torch.Tensor], k_tau: float, a: float, h: float) -> torch.Tensor:
    """``6x6-2C3-P2-4-3`` by hand: same-padded conv with bias, average pooling (STBP), two dense
    layers, voting readout ``(1/T) sum_t o^{t,N}`` (Yin eq. 5)."""
    T, B = x.shape[:2]
    c1 = nn.functional.conv2d(x.reshape(T * B, 1, 6, 6), p["w1"], p["b1"], padding=1).reshape(T, B, 2, 6, 6)
    s1 = _stbp_layer(c1, k_tau, a, h)
    pooled = nn.functional.avg_pool2d(s1.reshape(T * B, 2, 6, 6), 2).reshape(T, B, 18)
    s2 = _stbp_layer(pooled @ p["w2"].T + p["b2"], k_tau, a, h)
    s3 = _stbp_layer(s2 @ p["w3"].T + p["b3"], k_tau, a, h)
    return s3.mean(0)


@pytest.mark.parametrize(("name", "height"), [("mnist", None), ("cifar10", None), ("cifar10", 1.0)])
def test_yin_network_matches_a_hand_written_stbp_recurrence(name: str, height: float | None) -> None:
    """Votes and every parameter gradient of ``build_yin_network(name, structure=...)`` equal a
    hand-written STBP network with Table 1's ``k_tau``/``delta``, ``V_th = 0.5``, zero reset
    (differentiated), the rectangle ``(1/delta) 1[|u - V_th| < delta/2]`` (or the given
    ``surrogate_height`` instead of ``1/delta``), biases, avg pooling."""
    k_tau, delta = TABLE1[name][:2]
    torch.manual_seed(3)
    net = build_yin_network(name, structure="6x6-2C3-P2-4-3", surrogate_height=height).double()
    conv, lin2, lin3 = (m for m in net if isinstance(m, (SpikingConv2d, SpikingLinear)))
    assert conv.conv.bias is not None and lin2.bias is not None and lin3.bias is not None  # Yin eq. 1's b
    with torch.no_grad():
        conv.conv.weight.normal_(0.0, 0.6)
        conv.conv.bias.uniform_(-0.1, 0.3)
        lin2.weight.normal_(0.0, 0.8)
        lin2.bias.uniform_(-0.1, 0.3)
        lin3.weight.normal_(0.0, 1.0)
        lin3.bias.uniform_(0.0, 0.4)
    params = {
        "w1": conv.conv.weight,
        "b1": conv.conv.bias,
        "w2": lin2.weight,
        "b2": lin2.bias,
        "w3": lin3.weight,
        "b3": lin3.bias,
    }
    ref_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    x = (torch.rand(12, 8, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    target = torch.rand(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    votes = net(x)
    ref = _reference_votes(x, ref_params, k_tau, delta, 1 / delta if height is None else height)
    assert 0.05 < float(ref.detach().mean()) < 0.95  # the readout neither silent nor saturated
    assert torch.allclose(votes, ref, atol=1e-12)
    ((votes - target) ** 2).sum().backward()
    ((ref - target) ** 2).sum().backward()
    for k, v in params.items():
        g, g_ref = v.grad, ref_params[k].grad
        assert g is not None and g_ref is not None
        assert float(g_ref.abs().sum()) > 0, k
        assert torch.allclose(g, g_ref, atol=1e-10), k


def test_yin_table2_structures_build_the_papers_layers() -> None:
    """Yin Table 2, layer by layer: conv kernels ``out x in x k x k``, dense ``out x in`` with
    "same" padding (so only pooling shrinks the map), average pools of the stated size."""
    expect = {
        "mnist": ([(15, 1, 5, 5), (40, 15, 5, 5), (300, 40 * 7 * 7), (10, 300)], [2, 2]),
        "cifar10": ([(32, 3, 3, 3), (64, 32, 3, 3), (256, 64 * 8 * 8), (10, 256)], [2, 2]),
        "nmnist": ([(16, 2, 5, 5), (32, 16, 3, 3), (64, 32, 3, 3), (10, 64 * 8 * 8)], [2, 2]),
        "dvs_gesture": ([(16, 2, 5, 5), (32, 16, 3, 3), (512, 32 * 8 * 8), (11, 512)], [4, 2, 2]),
    }
    for name, (weights, pools) in expect.items():
        net = build_yin_network(name)
        layers = [m for m in net if isinstance(m, (SpikingConv2d, SpikingLinear))]
        assert [tuple(m.weight.shape) for m in layers] == weights, name
        assert [m.kernel_size for m in net if isinstance(m, SeqPool2d)] == pools, name
        assert all(m.mode == "avg" for m in net if isinstance(m, SeqPool2d)), name
        assert isinstance(net[-1], SpikeCountReadout) and net[-1].mean, name
    # the builder's own defaults (STBP reference): "same" padding, biases, average pooling, voting
    direct = yin_models.build_network(
        (1, 4, 4),
        [
            {"type": "conv", "out_channels": 2, "kernel_size": 3},
            {"type": "pool", "kernel_size": 2},
            {"type": "linear", "out_features": 3},
        ],
        yin_models.yin_neuron(0.1),
    )
    conv, pool, lin = direct[0], direct[1], direct[3]
    assert isinstance(conv, SpikingConv2d) and isinstance(pool, SeqPool2d) and isinstance(lin, SpikingLinear)
    assert conv.conv.padding == (1, 1) and conv.conv.bias is not None and lin.bias is not None
    assert pool.mode == "avg" and lin.weight.shape == (3, 2 * 2 * 2)
    assert isinstance(direct[-1], SpikeCountReadout) and direct[-1].mean
    assert parse_structure("28x28-15C5-P2-10")[0] == (1, 28, 28)
    assert parse_structure("32x32x3-32C3-10")[0] == (3, 32, 32)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "nmnist", "dvs_gesture"])
def test_config_networks_take_table1_constants(name: str) -> None:
    """``network_from_config`` (the YAML path) defaults to Yin Table 1: ``beta = k_tau``,
    rectangle of width ``delta`` and height ``1/delta``, ``V_th = 0.5``, zero reset carrying
    gradient, and T = 12 (MNIST) / 30 (CIFAR-10) from the text (METHODS.md 4(d))."""
    model, T = network_from_config({"model": {"name": name}})
    k_tau, delta = TABLE1[name][:2]
    for m in model:
        if isinstance(m, (SpikingConv2d, SpikingLinear)):
            n = m.neuron
            assert n.beta == pytest.approx(k_tau) and n.threshold == V_TH
            assert n.reset.value == "zero" and n.detach_reset is False
            assert isinstance(n.surrogate, Rectangle)
            assert n.surrogate.width == pytest.approx(delta) and n.surrogate.height == pytest.approx(1 / delta)
    if len(TABLE1[name]) == 3:
        assert T == TABLE1[name][2]


def test_stbp_init_is_uniform_then_row_normalised() -> None:
    """Yin sec. 5.3 / STBP init as documented: ``U(-1, 1)``, then each output unit's weight vector
    (a conv filter over ``C_in x k x k``) scaled to L2 norm ``init_gain``."""
    torch.manual_seed(0)
    net = build_yin_network("mnist", init_gain=2.5)
    for m in net:
        if isinstance(m, (SpikingConv2d, SpikingLinear)):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            assert torch.allclose(w.norm(dim=1), torch.full((w.shape[0],), 2.5), rtol=1e-5)
            assert 0.4 < float((w < 0).float().mean()) < 0.6  # symmetric around 0


def test_train_yin_defaults_to_yin_lambda_and_gate_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """``connectivity: {l0: true}`` uses Yin's ``lambda = 1e-3`` (Table 1) and ``log alpha ~
    N(1, 0.01)`` (METHODS.md 4(a)); the gates are added before any data is read."""
    seen: dict = {}

    class Stop(Exception):
        pass

    def spy(model: nn.Module, **kw: float) -> None:
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(yin_models, "add_l0_gates", spy)
    with pytest.raises(Stop):
        yin_models.train_yin({"model": {"name": "mnist"}, "connectivity": {"l0": True}, "verbose": False})
    assert seen["lam"] == 1e-3 and seen["init_mean"] == 1.0 and seen["init_std"] == 0.01
    assert (seen["beta"], seen["gamma"], seen["zeta"]) == pytest.approx((2 / 3, -0.1, 1.1))


def test_vote_mse_loss_is_eq5_per_sample_then_batch_mean() -> None:
    """Yin eq. 5 ``|y - (1/T) sum_t o^t|^2`` summed over classes, averaged over the batch; the
    ``mean`` reduction is ``nn.MSELoss`` over every entry (STBP reference code)."""
    g = torch.Generator().manual_seed(0)
    votes = torch.rand(3, 4, generator=g)
    labels = torch.tensor([2, 0, 3])
    per_sample = []
    for b in range(3):
        per_sample.append(sum((float(votes[b, c]) - (1.0 if c == int(labels[b]) else 0.0)) ** 2 for c in range(4)))
    assert float(vote_mse_loss(votes, labels)) == pytest.approx(sum(per_sample) / 3, rel=1e-6)
    assert float(vote_mse_loss(votes, labels, reduction="mean")) == pytest.approx(sum(per_sample) / 12, rel=1e-6)
    # n_classes wider than the votes' last label
    v5 = torch.rand(2, 5, generator=g)
    assert float(vote_mse_loss(v5, torch.tensor([4, 1]), n_classes=5)) == pytest.approx(
        float(((v5 - torch.eye(5)[[4, 1]]) ** 2).sum() / 2), rel=1e-6
    )


def test_evaluate_uses_test_time_gates_and_counts_every_sample() -> None:
    """``evaluate`` of a gated model in training mode equals a hand count of the pruned model's
    correct votes (deterministic test-time gates), over a batch size that does not divide the
    number of samples, and leaves the model in training mode."""
    torch.manual_seed(0)
    net = build_yin_network("mnist", structure="4x4-6-3", init="default")
    with torch.no_grad():
        for m in net:
            if isinstance(m, SpikingLinear):
                m.weight.normal_(0.0, 1.5)
    add_l0_gates(net, init_mean=0.0, init_std=1.0, seed=0)  # many gates near the sampled 0/1 edge
    x = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    T = 6

    def encode(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return (xb > 0.5).float().expand(T, *xb.shape).contiguous()  # no randomness: any order

    pruned = prune(copy.deepcopy(net)).eval()
    with torch.no_grad():
        votes = pruned(encode(x, torch.Generator()))
    # labels: argmax of the pruned votes for 4 samples (correct), another class for 3 (wrong)
    pred = votes.argmax(1)
    y = pred.clone()
    y[4:] = (pred[4:] + 1) % 3
    net.train()
    accs = [evaluate(net, x, y, encode, T, batch_size=3) for _ in range(3)]
    assert accs == pytest.approx([100.0 * 4 / 7] * 3)
    assert net.training


def _binary_data(
    monkeypatch: pytest.MonkeyPatch, T: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace train_yin's dataset by 7 train / 5 test binary 4x4 images: the Bernoulli rate code of
    a 0/1 pixel is deterministic (``u < p`` with ``u`` in ``[0, 1)``), so batches can be recomputed."""
    from sparsespike.data.encoding import rate_raster

    g = torch.Generator().manual_seed(0)
    xtr, ytr = (torch.rand(7, 1, 4, 4, generator=g) < 0.5).float(), torch.randint(0, 3, (7,), generator=g)
    xte, yte = (torch.rand(5, 1, 4, 4, generator=g) < 0.5).float(), torch.randint(0, 3, (5,), generator=g)

    def load(data: dict, T_: int, seed: int, dt_us: float | None = None) -> tuple:
        return xtr, ytr, xte, yte, lambda xb, gen: rate_raster(xb, T_, generator=gen)

    monkeypatch.setattr(yin_models, "_load_dataset", load)
    return xtr, ytr, xte, yte


def test_train_yin_epoch_record_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``lr = 0`` the network is fixed, so the epoch record is a hand count over the model:
    ``loss`` = eq. 5 averaged over samples (batches 3+3+1), ``train_acc``, ``silent_output_pct``
    (samples whose readout never spiked) and ``test_acc`` in percent."""
    T = 5
    xtr, ytr, xte, yte = _binary_data(monkeypatch, T)
    built: list[nn.Module] = []
    real = yin_models.network_from_config

    def spy(cfg: dict) -> tuple[nn.Module, int]:
        model, t = real(cfg)
        built.append(model)
        return model, t

    monkeypatch.setattr(yin_models, "network_from_config", spy)
    cfg = {
        "model": {"name": "mnist", "structure": "4x4-5-3", "init_gain": 2.0},
        "encoding": {"T": T},
        "optimizer": {"lr": 0.0, "batch_size": 3},
        "epochs": 1,
        "verbose": False,
    }
    res = yin_models.train_yin(cfg)
    (model,) = built
    model.eval()
    with torch.no_grad():
        v_tr = model(xtr.expand(T, *xtr.shape))
        v_te = model(xte.expand(T, *xte.shape))
    per_sample = ((v_tr - torch.eye(3)[ytr]) ** 2).sum(1)
    row = res["history"][0]
    assert row["loss"] == pytest.approx(float(per_sample.mean()), rel=1e-6)
    n_right = int((v_tr.argmax(1) == ytr).sum())
    n_silent = int((v_tr == 0).all(1).sum())
    assert 0 < n_silent < 7 and 0 < n_right < 7  # the counts are not trivially 0 or all
    assert row["train_acc"] == pytest.approx(100.0 * n_right / 7)
    assert row["silent_output_pct"] == pytest.approx(100.0 * n_silent / 7)
    assert row["test_acc"] == pytest.approx(100.0 * int((v_te.argmax(1) == yte).sum()) / 5)


def test_train_yin_l0_penalty_record_is_eq20_per_batch_with_clamped_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """``l0_penalty`` is the batch mean of Yin eq. 20, ``lambda sum_ij sigmoid(log alpha - beta
    log(-gamma/zeta))`` with ``lambda = 1e-3``: gates start at ``log alpha = 6`` (batch 1) and are
    clamped to ``ln 100`` after the first step (the reference's ``constrain_parameters``), batch 2.
    ``lr = 0`` keeps everything else fixed; 16*5 + 5*3 = 95 gated weights."""
    _binary_data(monkeypatch, 5)
    cfg = {
        "model": {"name": "mnist", "structure": "4x4-5-3"},
        "encoding": {"T": 5},
        "optimizer": {"lr": 0.0, "batch_size": 4},
        "connectivity": {"l0": True, "init_mean": 6.0, "init_std": 1e-4},
        "epochs": 1,
        "verbose": False,
    }
    res = yin_models.train_yin(cfg)

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    shift = -(2.0 / 3.0) * math.log(0.1 / 1.1)  # -beta log(-gamma/zeta) = beta ln 11
    ref = 1e-3 * 95 * (sig(6.0 + shift) + sig(math.log(100.0) + shift)) / 2
    assert res["history"][0]["l0_penalty"] == pytest.approx(ref, rel=1e-5)


def test_train_yin_gates_get_their_own_rate_and_no_weight_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    """``log_alpha`` is never weight-decayed (a decay would pull every gate towards
    ``sigmoid(0)``, i.e. prune by itself) and takes ``gate_lr``; the weights take ``lr`` and the
    configured ``weight_decay``."""
    _binary_data(monkeypatch, 5)
    made: list[torch.optim.Optimizer] = []

    class SpyAdam(torch.optim.Adam):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    cfg = {
        "model": {"name": "mnist", "structure": "4x4-5-3"},
        "encoding": {"T": 5},
        "optimizer": {"lr": 1e-3, "gate_lr": 0.05, "weight_decay": 0.1, "batch_size": 4},
        "connectivity": {"l0": True},
        "epochs": 1,
        "verbose": False,
    }
    yin_models.train_yin(cfg)
    (opt,) = made
    weights, gates = opt.param_groups
    assert len(gates["params"]) == 2 and all(p.shape in {(5, 16), (3, 5)} for p in gates["params"])
    assert gates["weight_decay"] == 0.0 and gates["lr"] == 0.05
    assert weights["weight_decay"] == 0.1 and weights["lr"] == 1e-3


def test_yin_mnist_loader_balances_and_rate_codes_reproducibly(data_dir: Path) -> None:
    """``balanced: true`` draws ``n / 10`` images of every digit; the Bernoulli code (Yin 5.1.1) is
    reproducible from its generator and its rate over many steps is the pixel intensity."""
    data = {"dataset": "mnist", "root": str(data_dir), "train_subset": 30, "balanced": True, "test_subset": 4}
    xtr, ytr, xte, yte, encode = yin_models._load_dataset(data, 12, 0)
    assert torch.equal(torch.bincount(ytr, minlength=10), torch.full((10,), 3))
    assert len(yte) == 4 and xtr.shape == (30, 1, 28, 28)
    a = encode(xte, torch.Generator().manual_seed(5))
    b = encode(xte, torch.Generator().manual_seed(5))
    assert a.shape == (12, 4, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, encode(xte, torch.Generator().manual_seed(6)))
    _, _, _, _, long = yin_models._load_dataset(data, 2000, 0)
    p = xte.float() / 255.0 if xte.dtype == torch.uint8 else xte.float()
    rate = long(xte, torch.Generator().manual_seed(0)).mean(0)
    assert float((rate - p).abs().max()) < 0.06


# ------------------------------------------------------------------------- models.build_network
def test_build_network_wires_the_spec_by_hand() -> None:
    """A conv (stride 2, padding 1) on a non-square 2x7x5 input gives ``floor((n + 2p - k)/s) + 1``
    = 4x3 maps, a 2x2 pool (default max) 2x1, then an implicit flatten to 3*2*1 = 6 inputs; a layer's
    ``neuron`` / ``b_th`` / ``backward`` override the network's (``b_th`` default 0.2, Perez-Nieves'
    B_th); the readout integrates ``V[t] = beta V[t-1] + W S[t]`` with the network's ``beta`` and
    takes the max over time by default; biases are off unless asked for."""
    from sparsespike.layers import LeakyReadout, SeqFlatten
    from sparsespike.models import build_network

    torch.manual_seed(0)
    net = build_network(
        [
            {"type": "conv", "out": 3, "kernel": 3, "stride": 2, "padding": 1},
            {"type": "pool", "kernel": 2},
            {"type": "linear", "out": 4, "neuron": {"beta": 0.5}, "b_th": 0.4, "backward": "sparse"},
            {"type": "readout", "out": 2, "weight_scale": 1e-6},
        ],
        (2, 7, 5),
        {"beta": 0.8, "threshold": 0.3},
    )
    conv, pool, flat, lin, ro = net
    assert isinstance(conv, SpikingConv2d) and isinstance(pool, SeqPool2d) and isinstance(flat, SeqFlatten)
    assert isinstance(lin, SpikingLinear) and isinstance(ro, LeakyReadout)
    assert conv.weight.shape == (3, 2, 3, 3) and conv.conv.stride == (2, 2) and conv.conv.padding == (1, 1)
    assert conv.conv.bias is None and lin.bias is None and ro.bias is None
    assert lin.weight.shape == (4, 6) and ro.weight.shape == (2, 4)
    assert conv.neuron.beta == 0.8 and conv.neuron.threshold == 0.3 and conv.b_th == 0.2
    assert conv.backward == "dense" and lin.backward == "sparse"
    assert lin.neuron.beta == 0.5 and lin.neuron.threshold == 0.3 and lin.b_th == 0.4
    assert float(ro.weight.detach().abs().max()) < 1e-4  # its own weight_scale: N(0, 1e-6 / sqrt(4))

    rec: dict[str, torch.Tensor] = {}
    for key, mod in (("conv", conv), ("pool", pool), ("lin", lin)):
        mod.register_forward_hook(lambda m, a, out, key=key: rec.__setitem__(key, out.detach()))
    with torch.no_grad():
        ro.weight.normal_(0.0, 1.0)
        conv.conv.weight.normal_(0.0, 1.0)
        lin.weight.normal_(0.0, 1.0)
    x = (torch.rand(6, 3, 2, 7, 5, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    with torch.no_grad():
        out = net(x)
    s = rec["conv"]
    assert s.shape == (6, 3, 3, 4, 3)
    pooled = torch.maximum(
        torch.maximum(s[..., 0:4:2, 0:2:2], s[..., 1:4:2, 0:2:2]),
        torch.maximum(s[..., 0:4:2, 1:2:2], s[..., 1:4:2, 1:2:2]),
    )
    assert torch.equal(rec["pool"], pooled)
    v, vs = torch.zeros(3, 2), []
    for t in range(6):
        v = 0.8 * v + rec["lin"][t] @ ro.weight.T
        vs.append(v)
    assert float(rec["lin"].sum()) > 0
    assert torch.allclose(out, torch.stack(vs).max(0).values, atol=1e-6)


def test_build_network_count_readout_is_the_rate_by_default() -> None:
    """``count_readout`` without options is the firing rate ``sum_t S / T`` (Yin's voting)."""
    from sparsespike.models import build_network

    torch.manual_seed(0)
    net = build_network([{"type": "linear", "out": 5}, {"type": "count_readout"}], (4,), {"threshold": 0.2})
    spikes: list[torch.Tensor] = []
    net[0].register_forward_hook(lambda m, a, out: spikes.append(out.detach()))
    x = (torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(2)) < 0.6).float()
    with torch.no_grad():
        out = net(x)
    assert float(spikes[0].sum()) > 0
    assert torch.allclose(out, spikes[0].sum(0) / 8)


def test_build_network_size_boundaries() -> None:
    """A kernel as large as its input fits exactly (one output position, by the formula
    ``(n + 2p - k) / s + 1``); one pixel larger leaves no output and is refused at build time."""
    from sparsespike.errors import ConfigError
    from sparsespike.models import build_network

    net = build_network([{"type": "conv", "out": 2, "kernel": 5}, {"type": "linear", "out": 3}], (1, 5, 5))
    assert net[-1].weight.shape == (3, 2)
    net = build_network([{"type": "pool", "kernel": 4}, {"type": "linear", "out": 3}], (2, 4, 4))
    assert net[-1].weight.shape == (3, 2)
    assert net(torch.ones(2, 1, 2, 4, 4)).shape == (2, 1, 3)
    with pytest.raises(ConfigError, match="does not fit"):
        build_network([{"type": "conv", "out": 2, "kernel": 6}], (1, 5, 5))
    with pytest.raises(ConfigError, match="does not fit"):
        build_network([{"type": "pool", "kernel": 5}], (1, 4, 6))


# ------------------------------------------------------------------------- EMA
def test_ema_state_must_name_exactly_the_models_parameters() -> None:
    """Restoring an average that lacks one of the model's parameters (or has one the model does
    not) would silently keep a stale average for it: both are refused; a matching state restores."""
    from sparsespike.ema import EmaWeights
    from sparsespike.errors import ConfigError

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    ema = EmaWeights(m, 0.5)
    state = {k: v.clone() + 1.0 for k, v in ema.state_dict()["shadow"].items()}
    for bad in (
        {k: v for k, v in state.items() if k != "1.bias"},
        {**state, "2.weight": torch.zeros(1)},
    ):
        with pytest.raises(ConfigError, match="does not match"):
            EmaWeights(m, 0.5).load_state_dict({"decay": 0.5, "shadow": bad})
    ema.load_state_dict({"decay": 0.5, "shadow": state})
    ema.copy_to(m)
    for k, p in m.named_parameters():
        assert torch.equal(p.detach(), state[k])


# ------------------------------------------------------------------------- activity bounds
def _context(records: dict[str, list[torch.Tensor]]) -> LossContext:
    model = nn.Sequential(SpikingLinear(2, 2))
    mon = SpikeMonitor(model)
    mon.remove()
    mon.records = records
    out = torch.zeros(1, 2)
    return LossContext(0, 1, 0, 1, model, out, torch.zeros(1, dtype=torch.long), mon)


def _bounds_by_hand(
    records: list[torch.Tensor], lam_up: float, f_up: float, p_up: float, lam_low: float, f_low: float
) -> float:
    """METHODS.md 1(a) per hidden layer ``S[T, B, N]``, each term averaged over the batch:
    ``L_up = lam_up relu(sum_{t,j} S / N - f_up)^p_up``, ``L_low = lam_low sum_j relu(f_low -
    sum_t S_j)^2 / N``; summed over layers. Tensors of dimension < 3 are not spike records."""
    total = 0.0
    for s in records:
        if s.dim() < 3:
            continue
        T, B = s.shape[:2]
        flat = s.reshape(T, B, -1)
        n = flat.shape[2]
        ups, lows = [], []
        for b in range(B):
            tot = sum(float(flat[t, b, j]) for t in range(T) for j in range(n))
            ups.append(lam_up * max(tot / n - f_up, 0.0) ** p_up)
            counts = [sum(float(flat[t, b, j]) for t in range(T)) for j in range(n)]
            lows.append(lam_low * sum(max(f_low - c, 0.0) ** 2 for c in counts) / n)
        total += sum(ups) / B + sum(lows) / B
    return total


def test_activity_bounds_match_the_formula_by_hand() -> None:
    """Non-default constants (every term active), two monitored layers, a conv record
    ``[T, B, C, H, W]`` (``N = C*H*W``) and a 2-D tensor that must be skipped."""
    g = torch.Generator().manual_seed(0)
    s1 = (torch.rand(5, 3, 4, generator=g) < 0.5).float()
    s1[:, 0, 1] = 0.0  # a silent neuron
    s2 = (torch.rand(5, 3, 2, 2, 2, generator=g) < 0.3).float()
    s3 = (torch.rand(5, 3, 3, generator=g) < 0.7).float()
    skip = torch.ones(3, 4)
    recs = {"a": [s1, skip], "b": [s2, s3]}
    kw = {"lam_up": 0.3, "f_up": 0.8, "p_up": 2.0, "lam_low": 7.0, "f_low": 1.5}
    got = float(activity_bounds(**kw)(_context(recs)))
    assert got == pytest.approx(_bounds_by_hand([s1, skip, s2, s3], **kw), rel=1e-6)
    # the defaults are Perez-Nieves & Goodman's: lam_up 0.06, f_up 1, p_up 1, lam_low 100, f_low 1e-3
    got = float(activity_bounds()(_context(recs)))
    ref = _bounds_by_hand([s1, skip, s2, s3], 0.06, 1.0, 1.0, 100.0, 1e-3)
    assert got == pytest.approx(ref, rel=1e-6) and ref > 0
    assert float(activity_bounds()(_context({}))) == 0.0


def test_task_losses_by_hand() -> None:
    """``ce``: ``-log softmax(out)[y]`` averaged; ``mse_count``: mean over batch and classes of
    ``(out - onehot(y))^2`` (``nn.MSELoss``, as in the STBP reference code)."""
    out = torch.tensor([[0.2, 0.5, 0.0], [1.0, 0.25, 0.5]])
    y = torch.tensor([1, 0])
    ce = -(
        (0.5 - math.log(math.exp(0.2) + math.exp(0.5) + 1.0))
        + (1.0 - math.log(math.exp(1.0) + math.exp(0.25) + math.exp(0.5)))
    )
    assert float(task_loss("ce")(out, y)) == pytest.approx(ce / 2, rel=1e-6)
    se = (0.04 + 0.25 + 0.0) + (0.0 + 0.0625 + 0.25)
    assert float(task_loss("mse_count")(out, y)) == pytest.approx(se / 6, rel=1e-6)


# ------------------------------------------------------------------------- EventProp augment
def _training_inputs(data_dir: Path, augment: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs the network receives in 3 one-sample training epochs, and the raw image."""
    tr = EventPropTraining(
        {
            "dataset": "mnist",
            "data_dir": str(data_dir),
            "sizes": [784, 4, 10],
            "batch_size": 1,
            "augment": augment,
            "phases": [{"loss": "L_A", "alpha": 3e-3, "eta": 3.0, "lr": 2e-3, "epochs": 3}],
            "n_train": 1,
            "n_val": 2,
            "n_test": 2,
            "eval_test": False,
            "progress": False,
        }
    )
    seen: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():  # training passes; validation runs under no_grad
            seen.append(args[0].detach().clone())

    hook = tr.net.register_forward_pre_hook(record)
    for _ in tr.epochs():
        pass
    hook.remove()
    return seen, tr.xtr


@pytest.mark.parametrize("augment", [False, True])
def test_eventprop_mnist_augment_is_a_fresh_transform_every_epoch(data_dir: Path, augment: bool) -> None:
    """``augment: true`` (Fontanini et al. 3.4): every epoch the network sees the encoding of a
    newly shifted/rotated image, never the plain one; ``false``: the plain encoding each time.
    Plain encoding by hand (bright early, ``[t_min, t_max] = [0, 20]`` ms): ``t = 20 (1 - p)``."""
    seen, raw = _training_inputs(data_dir, augment)
    plain = (20.0 * (1.0 - raw.double().reshape(1, 784) / 255.0)).to(seen[0].dtype)
    assert len(seen) == 3
    if not augment:
        for x in seen:
            assert torch.allclose(x, plain, atol=1e-9)
        return
    for x in seen:
        assert x.shape == plain.shape and not torch.allclose(x, plain, atol=1e-3)
        mass = float((1.0 - x / 20.0).sum())  # an affine image of the same digit: similar ink
        assert 0.7 < mass / float((1.0 - plain / 20.0).sum()) < 1.3
    for i in range(3):
        for j in range(i):
            assert not torch.allclose(seen[i], seen[j], atol=1e-3), (i, j)
