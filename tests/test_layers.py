"""Layers: shapes, errors naming the problem, network building."""

from __future__ import annotations

import pytest
import torch

from sparsespike.errors import ConfigError, SpikeInputError
from sparsespike.layers import (
    LeakyReadout,
    SeqFlatten,
    SeqPool2d,
    SpikeCountReadout,
    SpikingConv2d,
    SpikingLinear,
    leaky_integrate,
    set_backward,
    spiking_layers,
)
from sparsespike.models import build_network
from sparsespike.neurons import LIFParams, lif_sequence_loop


def test_linear_layer_equals_matmul_plus_loop():
    torch.manual_seed(0)
    layer = SpikingLinear(6, 4, LIFParams(beta=0.8), weight_scale=3.0).double()
    x = (torch.rand(9, 2, 6, dtype=torch.float64) < 0.4).double()
    s_ref, _ = lif_sequence_loop(x @ layer.weight.T, layer.neuron)
    assert torch.equal(layer(x), s_ref)


def test_conv_layer_shapes_and_values():
    torch.manual_seed(0)
    layer = SpikingConv2d(2, 3, 3, LIFParams(beta=0.8), padding=1, weight_scale=4.0).double()
    x = (torch.rand(5, 2, 2, 6, 6, dtype=torch.float64) < 0.4).double()
    s = layer(x)
    assert s.shape == (5, 2, 3, 6, 6)
    cur = layer.conv(x.reshape(10, 2, 6, 6)).reshape(5, 2, 3, 6, 6)
    s_ref, _ = lif_sequence_loop(cur, layer.neuron)
    assert torch.equal(s, s_ref)


def test_pool_flatten_readouts():
    x = torch.zeros(4, 2, 3, 4, 4)
    x[1, 0, 0, 0, 1] = 1
    assert SeqPool2d(2, "max")(x)[1, 0, 0, 0, 0] == 1
    assert SeqPool2d(2, "avg")(x)[1, 0, 0, 0, 0] == 0.25
    assert SeqFlatten()(x).shape == (4, 2, 48)
    s = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]]])  # [T=3, B=1, N=2]
    assert torch.equal(SpikeCountReadout(mean=False)(s), torch.tensor([[2.0, 2.0]]))
    cur = torch.tensor([[[1.0]], [[0.0]], [[2.0]]])
    v = leaky_integrate(cur, 0.5)
    assert torch.allclose(v.flatten(), torch.tensor([1.0, 0.5, 2.25]))
    # a current whose membrane v = [2, 1, 1] tells max (2), last (1), mean (4/3) and sum (4) apart
    cur = torch.tensor([[[2.0]], [[0.0]], [[0.5]]])
    assert torch.allclose(leaky_integrate(cur, 0.5).flatten(), torch.tensor([2.0, 1.0, 1.0]))
    ro = LeakyReadout(1, 1, beta=0.5, mode="max")
    with torch.no_grad():
        ro.weight.fill_(1.0)
    for mode, want in (("max", 2.0), ("last", 1.0), ("mean", 4.0 / 3), ("sum", 4.0)):
        ro.mode = mode
        assert torch.allclose(ro(cur), torch.tensor([[want]])), mode


def test_wrong_rank_and_layout_errors_name_the_problem():
    layer = SpikingLinear(10, 4)
    with pytest.raises(SpikeInputError, match="rank 3"):
        layer(torch.zeros(2, 10))
    with pytest.raises(SpikeInputError, match="trailing dims"):
        layer(torch.zeros(5, 2, 11))
    with pytest.raises(SpikeInputError, match="floating-point"):
        layer(torch.zeros(5, 2, 10, dtype=torch.int64))
    with pytest.raises(SpikeInputError, match=r"\[T, B, 3, H, W\]"):
        SpikingConv2d(3, 4, 3)(torch.zeros(5, 2, 2, 8, 8))


def test_bad_neuron_parameters():
    with pytest.raises(ValueError, match="beta"):
        LIFParams(beta=1.5)
    with pytest.raises(ValueError, match="reset"):
        LIFParams(reset="bounce")
    with pytest.raises(ValueError, match="surrogate"):
        LIFParams(surrogate="gaussian")


def test_build_network_and_set_backward():
    net = build_network(
        [
            {"type": "conv", "out": 4, "kernel": 3, "padding": 1},
            {"type": "pool", "kernel": 2},
            {"type": "linear", "out": 8},
            {"type": "readout", "out": 3, "mode": "mean"},
        ],
        (1, 8, 8),
        {"beta": 0.9},
    )
    out = net(torch.zeros(4, 2, 1, 8, 8))
    assert out.shape == (2, 3)
    assert len(spiking_layers(net)) == 2
    set_backward(net, "dense", b_th=0.3)
    assert all(m.b_th == 0.3 for m in spiking_layers(net))
    with pytest.raises(ConfigError, match="unknown layer type 'dense'"):
        build_network([{"type": "dense", "out": 3}], (4,))
    with pytest.raises(ConfigError, match="unknown keys"):
        build_network([{"type": "linear", "out": 3, "units": 4}], (4,))
    with pytest.raises(ConfigError, match="missing key 'out'"):
        build_network([{"type": "linear"}], (4,))


@pytest.mark.parametrize(
    ("layers", "shape", "match"),
    [
        ([{"type": "linear", "out": 3, "bias": "false"}], (4,), r"layers\[0\].bias must be a bool"),
        ([{"type": "linear", "out": 0}], (4,), r"layers\[0\].out must be >= 1"),
        ([{"type": "linear", "out": 2.5}], (4,), r"layers\[0\].out must be an int"),
        ([{"type": "linear", "out": 3}, {"type": "pool", "kernel": 2}], (4,), "pool needs .C, H, W. input"),
        ([{"type": "conv", "out": 2, "kernel": 7}], (1, 5, 5), "does not fit its input"),
        ([{"type": "pool", "kernel": 6}], (1, 5, 5), "does not fit its input"),
        ([{"type": "conv", "out": 2, "kernel": 3, "padding": -1}], (1, 5, 5), "padding must be >= 0"),
        ([{"type": "count_readout"}, {"type": "readout", "out": 3}], (4,), "must be the last layer"),
        ([{"type": "readout", "out": 3}, {"type": "linear", "out": 2}], (4,), "must be the last layer"),
        ([{"type": "linear", "out": 3, "b_th": 0}], (4,), r"layers\[0\]: b_th must be > 0"),
        ([{"type": "pool", "kernel": 2, "mode": "median"}], (1, 4, 4), r"layers\[0\]: pool mode"),
    ],
)
def test_build_network_refuses_bad_specs_by_name(layers, shape, match):
    """Specs that built a wrong network silently (a string bias was true, a count readout let
    layers follow it) or failed later with a bare IndexError / ZeroDivisionError."""
    with pytest.raises(ConfigError, match=match):
        build_network(layers, shape)


def test_nan_and_nonbinary_spikes_are_named():
    layer = SpikingLinear(4, 3)
    x = torch.zeros(5, 2, 4)
    x[2, 1, 3] = float("nan")
    with pytest.raises(SpikeInputError, match="NaN"):
        layer(x)
    with pytest.raises(SpikeInputError, match="binary spikes"):
        SpikeCountReadout()(torch.full((3, 2, 4), 0.5))
    with pytest.raises(SpikeInputError, match="NaN"):
        SpikeCountReadout()(torch.full((3, 2, 4), float("nan")))
    from sparsespike.sparsity.monitor import SpikeMonitor

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    mon = SpikeMonitor(net, modules=[net[0]], batch_dim=0)
    net(torch.ones(2, 4))
    with pytest.raises(SpikeInputError, match="binary"):
        mon.spike_counts(check=True)


def test_leaky_scan_kernel_matches_the_torch_loop_bit_for_bit():
    """The readout's leaky integration runs as a numba kernel on CPU: the same numbers as the
    loop of torch ops, forwards and backwards in time, and a gradient that passes gradcheck."""
    from sparsespike.layers import _leaky_scan

    torch.manual_seed(0)
    x = torch.randn(30, 4, 5)
    for reverse in (False, True):
        ref = torch.empty_like(x)
        acc = torch.zeros_like(x[0])
        for t in range(29, -1, -1) if reverse else range(30):
            acc = acc.mul_(0.87).add_(x[t])
            ref[t] = acc
        assert torch.equal(_leaky_scan(x, 0.87, reverse), ref)
        assert torch.equal(_leaky_scan(x.transpose(1, 2), 0.87, reverse), ref.transpose(1, 2))
    xd = torch.randn(9, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: leaky_integrate(a, 0.8), (xd,))


def test_empty_time_axis_bad_settings_and_rectangular_kernels():
    import pytest

    from sparsespike.errors import SpikeInputError

    for layer, x in (
        (SpikingLinear(4, 3), torch.zeros(0, 2, 4)),
        (SpikingLinear(4, 3, backward="sparse"), torch.zeros(0, 2, 4)),
        (LeakyReadout(4, 3), torch.zeros(0, 2, 4)),
        (SpikingConv2d(1, 2, 3), torch.zeros(0, 2, 1, 5, 5)),
    ):
        with pytest.raises(SpikeInputError, match="T = 0|T >= 1"):
            layer(x)
    with pytest.raises(ValueError, match="b_th must be > 0"):
        SpikingLinear(4, 3, b_th=float("nan"))
    with pytest.raises(ValueError, match="impl must be one of"):
        SpikingLinear(4, 3, impl="cuda")
    conv = SpikingConv2d(2, 3, (3, 1), weight_scale=1.0)  # fan-in 2 * 3 * 1
    assert conv.weight.shape == (3, 2, 3, 1)


def test_sparse_layers_honour_their_impl() -> None:
    """``impl`` picks the sparse path's kernels as it picks the dense path's (it was ignored)."""
    x = torch.zeros(5, 2, 4)
    for impl, backend in (("auto", "numba"), ("numba", "numba"), ("fallback", "fallback")):
        layer = SpikingLinear(4, 3, backward="sparse", impl=impl)
        layer(x)
        assert layer.last_stats["backend"] == backend, impl


@pytest.mark.parametrize("backward", ["dense", "sparse"])
def test_triton_on_a_cpu_tensor_without_the_interpreter_is_a_clear_error(monkeypatch, backward) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        SpikingLinear(4, 3, backward=backward, impl="triton")(torch.zeros(5, 2, 4))
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        SpikingConv2d(2, 3, 3, backward=backward, impl="triton")(torch.zeros(4, 1, 2, 5, 5))
