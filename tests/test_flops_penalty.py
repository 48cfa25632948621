"""Expected-FLOPs penalty (sparsity/flops.py) against count_ops' hand-checked FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsespike.errors import ConfigError
from sparsespike.sparsity.connectivity import add_l0_gates, count_ops, freeze_gates, gated_weights
from sparsespike.sparsity.flops import ExpectedFlops, tap_use_counts
from sparsespike.train import make_regularizer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2),  # no padding, stride 2: 7x7 -> 3x3
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 5),
    )


def _steps(model, x):  # a time loop outside the model: one call per step
    return [model(x[t]) for t in range(x.shape[0])]


@pytest.mark.parametrize(
    ("hw", "k", "stride", "padding"), [(5, 3, 1, 1), (7, 3, 2, 0), (6, 5, 1, 2), (8, 3, 1, "same")]
)
def test_tap_use_counts_by_hand(hw, k, stride, padding):
    conv = nn.Conv2d(1, 1, k, stride=stride, padding=padding, bias=False)
    p = conv.padding[0] if isinstance(conv.padding, tuple) else (k - 1) // 2
    out = (hw + 2 * p - k) // stride + 1
    want = torch.zeros(k, k, dtype=torch.float64)
    for oy in range(out):
        for ox in range(out):
            for a in range(k):
                for b in range(k):
                    y, x = oy * stride - p + a, ox * stride - p + b
                    want[a, b] += 0 <= y < hw and 0 <= x < hw
    assert torch.equal(tap_use_counts(conv, (hw, hw)), want)


def test_frozen_gates_penalty_equals_count_ops_flops():
    model = _net()
    add_l0_gates(model, seed=0)
    g = torch.Generator().manual_seed(1)
    for gw in gated_weights(model):  # a random mask, about half pruned
        gw.gate.log_alpha.data = torch.where(torch.rand(gw.gate.log_alpha.shape, generator=g) < 0.5, -8.0, 8.0)
    freeze_gates(model)
    T, B = 4, 3
    x = torch.rand(T, B, 2, 7, 7)
    pen = ExpectedFlops(lam=2.0).attach(model)
    model.train()
    _steps(model, x)
    terms = pen.terms(B)
    ops = count_ops(model, x, forward=_steps)
    assert 0 < ops["flops"] < ops["flops_dense"]
    for layer in ops["layers"]:
        name = next(k for k in terms if k.startswith(layer["name"]))
        assert float(terms[name]) == pytest.approx(layer["flops"], rel=1e-9)
    assert float(pen.value(B)) == pytest.approx(2.0 * ops["flops"], rel=1e-9)  # terms() keeps the shapes
    model.eval()  # eval passes are not counted
    _steps(model, x)
    assert float(pen.value(B)) == 0.0


def test_penalty_is_the_expectation_and_weights_gates_by_their_cost():
    model = _net()
    add_l0_gates(model, seed=0, init_mean=0.0, init_std=0.0)  # every P(b != 0) equal
    pen = ExpectedFlops(lam=1.0).attach(model)
    x = torch.rand(2, 5, 2, 7, 7)
    model.train()
    _steps(model, x)
    value = pen.value(5)
    ops = count_ops(model, x, forward=_steps)
    p0 = float(gated_weights(model)[0].gate.prob_nonzero().detach().flatten()[0])
    assert float(value.detach()) == pytest.approx(p0 * ops["flops_dense"], rel=1e-6)  # E[FLOPs] = P * dense FLOPs
    value.backward()
    conv1 = gated_weights(model)[0].gate.log_alpha.grad
    lin = gated_weights(model)[2].gate.log_alpha.grad
    # a tap's gradient is proportional to its use count: the centre tap of conv1 (7x7 output) is used
    # 49 times per frame, a corner tap 36 times; a Linear weight once per frame
    assert float(conv1[0, 0, 1, 1] / conv1[0, 0, 0, 0]) == pytest.approx(49 / 36)
    assert float(conv1[0, 0, 1, 1] / lin[0, 0]) == pytest.approx(49.0)
    assert all(p.grad is None for n, p in model.named_parameters() if "original" in n)  # gates only


def test_errors_and_registration():
    with pytest.raises(ConfigError, match="needs L0 gates"):
        ExpectedFlops(1.0).attach(_net())
    with pytest.raises(ConfigError, match="lam"):
        ExpectedFlops("x")
    with pytest.raises(ConfigError, match=">= 0"):
        ExpectedFlops(-1.0)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    add_l0_gates(grouped)
    with pytest.raises(ConfigError, match="grouped"):  # at attach, before any training step
        ExpectedFlops(1.0).attach(grouped)
    assert isinstance(make_regularizer({"name": "flops", "lam": "1e-9"}), ExpectedFlops)


def test_yin_engine_rejects_unknown_penalty():
    from sparsespike.sparsity.yin_models import train_yin

    cfg = {"model": {"name": "mnist", "structure": "28x28-4C5-P2-10"}, "connectivity": {"l0": True, "penalty": "l1"}}
    with pytest.raises(ConfigError, match="penalty"):
        train_yin(cfg)


def test_yin_scnn_layers_match_count_ops():
    """Our own layers (SpikingConv2d's conv, SpikingLinear) on time-major input, one call for all T."""
    from sparsespike.sparsity.yin_models import network_from_config

    model, T = network_from_config({"model": {"name": "mnist", "structure": "12x12-3C3-P2-4C3-P2-8-10"}})
    add_l0_gates(model, seed=0)
    g = torch.Generator().manual_seed(1)
    for gw in gated_weights(model):
        gw.gate.log_alpha.data = torch.where(torch.rand(gw.gate.log_alpha.shape, generator=g) < 0.5, -8.0, 8.0)
    freeze_gates(model)
    pen = ExpectedFlops(1.0).attach(model)
    x = (torch.rand(T, 3, 1, 12, 12, generator=g) < 0.3).float()
    model.train()
    model(x)
    terms = pen.terms(3)
    ops = count_ops(model, x)
    assert len(terms) == len(ops["layers"]) == 4
    for layer in ops["layers"]:
        assert float(terms[layer["name"]]) == pytest.approx(layer["flops"], rel=1e-9), layer["name"]
