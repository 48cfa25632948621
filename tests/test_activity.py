"""Allred et al. spike-count loss: schedules (eqs. 4-8), A(n), gradients, drop-in use."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsespike.errors import ConfigError
from sparsespike.layers import LeakyReadout, SpikingLinear
from sparsespike.neurons import LIFParams, lif_sequence_loop
from sparsespike.sparsity.activity import (
    SCHEDULES,
    SpikeCountLoss,
    alternating,
    alternating_linear,
    alternation,
    alternation_batch,
    constant,
    linear,
    make_schedule,
    quadratic,
)
from sparsespike.sparsity.monitor import SpikeMonitor
from sparsespike.surrogate import Triangle, spike
from sparsespike.train import REGULARIZERS, LossContext, make_regularizer

S0 = 3e-4


# ---------------------------------------------------------------- schedules against the equations
@pytest.mark.parametrize("N", [1, 2, 7, 20])
def test_schedule_values_match_equations(N):
    for n in range(1, N + 1):
        A = 1.0 if alternation(n, N) else 0.0
        assert constant(S0)(n, N) == pytest.approx(S0)  # eq. 4
        assert linear(S0)(n, N) == pytest.approx(S0 * n / N)  # eq. 5
        assert quadratic(S0)(n, N) == pytest.approx(S0 * n**2 / N)  # eq. 6 as printed
        assert quadratic(S0, normalized=True)(n, N) == pytest.approx(S0 * (n / N) ** 2)
        assert alternating(S0)(n, N) == pytest.approx(A * S0)  # eq. 7
        assert alternating_linear(S0)(n, N) == pytest.approx(A * S0 * n / N)  # eq. 8


def test_quadratic_printed_is_not_normalized():
    # the printed eq. 6 ends at s0 * N, the normalized form at s0
    assert quadratic(8e-6)(20, 20) == pytest.approx(8e-6 * 20)
    assert quadratic(8e-6, normalized=True)(20, 20) == pytest.approx(8e-6)
    # METHODS.md 5(d)1: mid-training printed quadratic 4e-5 vs linear 3e-5
    assert quadratic(8e-6)(10, 20) == pytest.approx(4e-5)
    assert linear(6e-5)(10, 20) == pytest.approx(3e-5)


def test_epochs_are_one_based():
    with pytest.raises(ValueError):
        linear(1.0)(0, 10)
    with pytest.raises(ValueError):
        linear(1.0)(11, 10)
    assert linear(1.0)(10, 10) == 1.0


# ---------------------------------------------------------------- A(n)
@pytest.mark.parametrize("N", list(range(2, 41)) + [100, 333])
def test_alternation_endpoints_and_count(N):
    A = [alternation(n, N) for n in range(1, N + 1)]
    assert A[0] is False  # no epoch at n = 1
    assert A[-1] is True  # always at n = N
    if N >= 4:
        assert A[-2] is True  # every epoch near the end
    assert sum(A) == N // 2  # sum of p_n = N/2
    # running count equals floor(sum_{k<=n} (k-1)/(N-1)) exactly
    c = 0
    for n in range(1, N + 1):
        c += A[n - 1]
        assert c == math.floor(n * (n - 1) / 2 / (N - 1) + 1e-12)


def test_alternation_fraction_rises_linearly():
    N = 200
    A = [alternation(n, N) for n in range(1, N + 1)]
    q = N // 4
    shares = [sum(A[i * q : (i + 1) * q]) / q for i in range(4)]
    # expected mean of p_n over each quarter: 0.125, 0.375, 0.625, 0.875
    for got, want in zip(shares, [0.125, 0.375, 0.625, 0.875], strict=True):
        assert abs(got - want) < 0.03
    assert shares == sorted(shares)
    # the last epochs are all included
    assert all(A[-10:])


@pytest.mark.parametrize("N,nb", [(5, 10), (20, 37), (9, 16)])
def test_alternation_per_batch(N, nb):
    for n in range(1, N + 1):
        inc = [alternation_batch(n, N, b, nb) for b in range(nb)]
        p = (n - 1) / (N - 1)
        assert sum(inc) == math.floor(nb * p + 1e-12)
        idx = [b for b, x in enumerate(inc) if x]
        if len(idx) > 2:  # spread evenly: gaps differ by at most one batch
            gaps = [b - a for a, b in zip(idx, idx[1:], strict=False)]
            assert max(gaps) - min(gaps) <= 1
    assert not any(alternation_batch(1, N, b, nb) for b in range(nb))
    assert all(alternation_batch(N, N, b, nb) for b in range(nb))
    sched = alternating(S0, per_batch=True)
    assert sched(N, N, batch=0, n_batches=nb) == S0
    with pytest.raises(ValueError):
        sched(2, N)  # per-batch needs the batch index


# ---------------------------------------------------------------- the loss term
def _ctx(monitor, epoch, n_epochs, batch=0, n_batches=4, model=None):
    return LossContext(epoch, n_epochs, batch, n_batches, model, None, None, monitor)


def _tiny_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    p = LIFParams(beta=0.9, alpha=0.8, threshold=1.0, reset="zero", surrogate=Triangle(1.0))
    net = nn.Sequential(
        SpikingLinear(6, 12, p, weight_scale=4.0), SpikingLinear(12, 8, p, weight_scale=4.0), LeakyReadout(8, 3)
    )
    return net.to(dtype)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_loss_equals_weight_times_count_in_trainer_context(name):
    net = _tiny_net()
    x = (torch.rand(15, 5, 6) < 0.5).float()
    mon = SpikeMonitor(net)
    mon.reset()
    net(x)
    S = mon.spike_count()
    assert float(S.detach()) > 0
    reg = make_regularizer({"name": "spike_count", "schedule": name, "s0": S0})
    assert isinstance(reg, SpikeCountLoss)
    N = 6
    for e in range(N):  # Trainer epochs are 0-based: n = e + 1
        got = reg(_ctx(mon, e, N))
        want = make_schedule(name, S0)(e + 1, N) * float(S.detach())
        assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    mon.remove()


def test_count_is_per_sample_total_over_layers_and_steps():
    net = _tiny_net()
    x = (torch.rand(10, 4, 6) < 0.5).float()
    with SpikeMonitor(net) as mon:
        net(x)
        total = sum(float(r.detach().sum()) for recs in mon.spikes().values() for r in recs)
        assert float(mon.spike_count().detach()) == pytest.approx(total / 4)
        loss = SpikeCountLoss(constant(2.0)).from_monitor(1, 1, monitor=mon)
        assert float(loss.detach()) == pytest.approx(2.0 * total / 4)


def test_zero_weight_gives_zero_without_graph():
    reg = SpikeCountLoss(alternating(1.0))
    s = torch.tensor(5.0, requires_grad=True)
    out = reg.penalty(s, 1, 10)
    assert float(out) == 0.0 and not out.requires_grad


def test_registry_errors():
    with pytest.raises(ConfigError):
        make_regularizer({"name": "spike_count", "schedule": "cubic", "s0": 1.0})
    with pytest.raises(ConfigError):
        make_regularizer({"name": "spike_count", "schedule": "linear", "s0": 1.0, "bogus": 2})
    reg = make_regularizer({"name": "spike_count", "schedule": "quadratic", "s0": 1.0, "normalized": True})
    assert reg.weight(5, 10) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"s0": "abc"}, "s0 must be a number, got 'abc'"),
        ({"s0": float("inf")}, "s0 must be a finite number >= 0, got inf"),
        ({"s0": -1.0}, "s0 must be a finite number >= 0"),
        ({"s0": True}, "s0 must be a number, got True"),
        ({"per_batch": "false"}, "per_batch must be a bool, got 'false'"),
        ({"normalized": "false"}, "normalized must be a bool, got 'false'"),
        ({"normalized": 1}, "normalized must be a bool, got 1"),
    ],
)
def test_spike_count_values_are_checked_by_key(extra, match):
    """A bad s0 is a ConfigError naming it (not a raw ValueError, nor an inf weight that dies as
    a non-finite loss later); the string 'false' is not taken as a true flag."""
    spec = {"name": "spike_count", "schedule": "alternating", "s0": 1e-4, **extra}
    with pytest.raises(ConfigError, match="spike_count regularizer: " + match):
        make_regularizer(spec)


@pytest.mark.parametrize(
    ("schedule", "flag", "match"),
    [("linear", "per_batch", "per_batch shapes the alternating"), ("constant", "normalized", "normalized shapes"),
     ("quadratic", "per_batch", "per_batch shapes"), ("alternating", "normalized", "normalized shapes")],
)  # fmt: skip
def test_spike_count_flags_only_for_the_schedules_they_shape(schedule, flag, match):
    """per_batch on a linear schedule (or normalized on a constant one) was accepted and ignored."""
    with pytest.raises(ConfigError, match=match):
        make_regularizer({"name": "spike_count", "schedule": schedule, "s0": 1e-4, flag: True})
    make_regularizer({"name": "spike_count", "schedule": schedule, "s0": 1e-4, flag: False})  # the default: fine


def test_activity_bounds_numbers_are_parsed_and_checked():
    """YAML reads 6e-2 as a string: parsed like every other rate; a bad value names its key when
    the regularizer is built, not as a TypeError at the first batch."""
    make_regularizer({"name": "activity_bounds", "lam_up": "6e-2"})
    for key, bad in (("lam_up", "abc"), ("f_low", -1.0), ("p_up", float("nan"))):
        with pytest.raises(ConfigError, match=f"activity_bounds: {key}"):
            make_regularizer({"name": "activity_bounds", key: bad})


def test_surrogate_kernel_code_is_not_a_setting():
    """The compiled kernels pick their formula by kernel_code: settable from a config, it made them
    compute another surrogate than grad() (the torch path)."""
    from sparsespike.surrogate import FastSigmoid, make_surrogate

    with pytest.raises(ValueError, match="unknown key.*kernel_code"):
        make_surrogate({"name": "fast_sigmoid", "scale": 2.0, "kernel_code": 1})
    with pytest.raises(TypeError):
        FastSigmoid(2.0, 1)  # type: ignore[call-arg]
    assert make_surrogate({"name": "fast_sigmoid", "scale": 2.0}).kernel_code == FastSigmoid.kernel_code


def test_regularizer_value_errors_become_config_errors():
    def picky(level: float = 1.0):
        float(level)
        return lambda ctx: torch.zeros(())

    REGULARIZERS["_picky_test"] = picky
    try:
        with pytest.raises(ConfigError, match="regularizer '_picky_test': could not convert"):
            make_regularizer({"name": "_picky_test", "level": "abc"})
    finally:
        del REGULARIZERS["_picky_test"]


def test_custom_schedule_callable_and_batch_kwargs():
    seen = []

    def cosine(n, N):
        return 0.5 * (1 - math.cos(math.pi * n / N))

    def per_batch(n, N, batch=None, n_batches=None):
        seen.append((n, batch, n_batches))
        return 1.0

    assert SpikeCountLoss(cosine).weight(10, 10) == pytest.approx(1.0)
    SpikeCountLoss(per_batch).weight(2, 5, batch=3, n_batches=7)
    assert seen == [(2, 3, 7)]


# ---------------------------------------------------------------- gradients
def test_gradient_matches_autograd_reference_and_is_nonzero():
    """d(s0 S)/dW through the kernel's backward equals plain autograd through spike() (float64)."""
    torch.manual_seed(1)
    p = LIFParams(beta=0.9, alpha=0.8, threshold=1.0, reset="zero", surrogate=Triangle(1.0))
    layer = SpikingLinear(6, 10, p, weight_scale=4.0).double()
    x = (torch.rand(20, 3, 6) < 0.4).double()
    reg = SpikeCountLoss(linear(0.7))
    with SpikeMonitor(layer) as mon:
        layer(x)
        loss = reg.penalty(mon.spike_count(), 3, 5)
    (g,) = torch.autograd.grad(loss, layer.weight)
    w = layer.weight.detach().clone().requires_grad_(True)
    s, _ = lif_sequence_loop(torch.einsum("tbi,oi->tbo", x, w), p)
    ref = 0.7 * 3 / 5 * s.sum() / 3
    (g_ref,) = torch.autograd.grad(ref, w)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()))
    assert g.abs().sum() > 0
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_spike_loss_steps_lower_spike_count():
    net = _tiny_net(seed=3)
    x = (torch.rand(20, 16, 6) < 0.5).float()
    reg = SpikeCountLoss(constant(0.05))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    mon = SpikeMonitor(net)
    counts = []
    for _ in range(6):
        mon.reset()
        net(x)
        S = mon.spike_count()
        counts.append(float(S.detach()))
        loss = reg.from_monitor(1, 1, monitor=mon)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.remove()
    assert counts[0] > 0
    assert counts[-1] < 0.7 * counts[0]


# ---------------------------------------------------------------- any model (not sparsespike layers)
class _StepLIF(nn.Module):
    """A foreign per-step LIF layer (snnTorch-like): returns (spk, mem) each call."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.sur = Triangle(1.0)

    def forward(self, x, mem):
        mem = 0.9 * mem + self.fc(x)
        spk = spike(mem - 1.0, self.sur)
        return spk, mem * (1 - spk.detach())


class _ForeignNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = _StepLIF(5, 16)
        self.l2 = _StepLIF(16, 4)

    def forward(self, x):  # x: [T, B, 5]
        m1 = torch.zeros(x.shape[1], 16)
        m2 = torch.zeros(x.shape[1], 4)
        out = 0
        for t in range(x.shape[0]):
            s1, m1 = self.l1(x[t], m1)
            s2, m2 = self.l2(s1, m2)
            out = out + s2
        return out


def test_works_on_a_foreign_model_with_spikemonitor_modules():
    torch.manual_seed(0)
    net = _ForeignNet()
    with torch.no_grad():
        net.l1.fc.weight.mul_(6)
        net.l2.fc.weight.mul_(6)
    x = (torch.rand(12, 8, 5) < 0.5).float()
    mon = SpikeMonitor(net, modules=[net.l1, net.l2], batch_dim=0)  # per-step outputs [B, N]
    reg = SpikeCountLoss(alternating_linear(0.1))
    mon.reset()
    net(x)
    S = mon.spike_count()
    manual = sum(float(r.detach().sum()) for recs in mon.spikes().values() for r in recs) / 8
    assert float(S.detach()) == pytest.approx(manual) and manual > 0
    loss = reg.from_monitor(10, 10, monitor=mon)  # A(N) = 1: weight 0.1
    assert float(loss.detach()) == pytest.approx(0.1 * manual)
    loss.backward()
    assert net.l1.fc.weight.grad.abs().sum() > 0
    mon.remove()
    # with the default batch_dim=1 a [B, N] record would be divided by N: refused, naming the fix
    mon1 = SpikeMonitor(net, modules=[net.l1, net.l2])
    net(x)
    with pytest.raises(ValueError, match="batch_dim=0"):
        mon1.spike_count()
    mon1.remove()
