"""Metrics against hand counts on tiny networks (DESIGN.md definitions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsespike.layers import LeakyReadout, SeqFlatten, SpikingConv2d, SpikingLinear
from sparsespike.metrics import MetricsRecorder, conv_fanout, energy_pj, linear_fanout, measure
from sparsespike.neurons import LIFParams


def test_linear_fanout_counts_nonzero_weights():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    assert linear_fanout(w).tolist() == [1.0, 0.0, 2.0]


def test_conv_fanout_by_hand():
    # 3x3 kernel, padding 1 on a 3x3 image: corner pixels reach 4 outputs, edges 6, centre 9
    w = torch.ones(1, 1, 3, 3)
    f = conv_fanout(w, (3, 3), padding=1)
    assert f[0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    # zero out the kernel centre: every pixel loses the one output it drove through the centre
    w[0, 0, 1, 1] = 0
    assert conv_fanout(w, (3, 3), padding=1)[0].tolist() == [[3, 5, 3], [5, 8, 5], [3, 5, 3]]
    # stride 2, no padding, 5x5 input, 3x3 kernel -> 2x2 outputs; total taps = 4 * 9 = 36 MACs
    f = conv_fanout(torch.ones(2, 1, 3, 3), (5, 5), stride=2)
    assert f.sum() == 2 * 36
    # 2 output channels: centre pixel reaches 4 positions x 2 channels, corner 1 x 2, edge 2 x 2
    assert f[0, 2, 2] == 8 and f[0, 0, 0] == 2 and f[0, 0, 2] == 4


def _hand_net():
    l1 = SpikingLinear(3, 2, LIFParams(beta=1.0, threshold=0.5))
    ro = LeakyReadout(2, 2, beta=1.0)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        ro.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    return nn.Sequential(l1, ro)


def test_spikes_synops_flops_by_hand():
    net = _hand_net()
    # T=2, B=2. sample 0: input 0 at t=0, input 2 at t=1. sample 1: inputs 0,1 at t=0.
    x = torch.zeros(2, 2, 3)
    x[0, 0, 0] = 1
    x[1, 0, 2] = 1
    x[0, 1, 0] = 1
    x[0, 1, 1] = 1
    rep = measure(net, [x])
    # layer 1 (beta=1, thr=0.5, subtract reset): sample 0: n0 spikes t0, n1 spikes t1 -> 2
    # sample 1: n0 and n1 spike at t0 -> 2.  total 4 spikes / 2 samples = 2 per sample
    assert rep.samples == 2
    assert rep.layers[0]["spikes"] == 2.0
    assert rep.spike_count == 2.0
    assert abs(rep.ns - 1.0) < 1e-12  # 2 spikes over 2 neurons
    # SynOps layer 1: input fan-out [1,1,1]; 4 input spikes -> 4 / 2 samples = 2
    assert rep.layers[0]["synops"] == 2.0
    # readout: fan-out of hidden unit 0 = 2, unit 1 = 0; hidden 0 spiked twice (once per sample)
    assert rep.layers[1]["synops"] == 2.0
    assert rep.synops == 4.0
    # dense FLOPs per sample: 2 * (nnz W1 = 3 + nnz W2 = 2) * T = 2 * 5 * 2 = 20
    assert rep.dense_flops == 20.0
    assert rep.energy_pj == energy_pj(4.0, 0.0)
    assert rep.input_spikes == 2.0


def test_nonbinary_input_is_counted_as_macs():
    net = _hand_net()
    x = torch.full((2, 1, 3), 0.3)
    rep = measure(net, [x])
    assert rep.layers[0]["synops"] == 0
    assert rep.layers[0]["nonspiking_macs"] == 3 * 2  # nnz(W1) x T
    assert rep.energy_pj > 0


def test_conv_synops_match_hand_count_and_plain_torch_model():
    torch.manual_seed(0)
    conv = SpikingConv2d(1, 2, 3, LIFParams(beta=0.9), padding=1)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0, 1, 1] = 1.0  # only the centre tap of channel 0 is non-zero
    net = nn.Sequential(conv, SeqFlatten())
    x = torch.zeros(1, 1, 1, 4, 4)
    x[0, 0, 0, 2, 2] = 1
    x[0, 0, 0, 0, 0] = 1
    rep = measure(net, [x])
    assert rep.synops == 2.0  # each spike drives exactly one output through the single tap
    assert rep.dense_flops == 2 * 16  # 16 output positions x 1 non-zero tap
    # the same counts on a plain torch model (hook on nn.Conv2d)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False))
    with torch.no_grad():
        plain[0].weight.copy_(conv.conv.weight)
    rec = MetricsRecorder(plain, batch_dim=0)
    plain(x[0])
    rep2 = rec.report()
    assert rep2.synops == 2.0 and rep2.dense_flops == 32


def test_activity_recorded_per_layer():
    torch.manual_seed(1)
    net = nn.Sequential(SpikingLinear(20, 30, weight_scale=2.0), LeakyReadout(30, 2))
    x = (torch.rand(10, 4, 20) < 0.3).float()
    rep = measure(net, [x])
    act = rep.layers[0]["activity_pct"]
    assert act is not None and 0 < act < 100


def _brute_fanout(w: torch.Tensor, hw: int, stride, padding, dilation) -> torch.Tensor:
    """Fan-out by definition: the output entries one input impulse reaches through non-zero weights."""
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], stride, padding, dilation, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_((w != 0).double())
    fan = torch.zeros(w.shape[1], hw, hw, dtype=torch.float64)
    for c in range(w.shape[1]):
        for y in range(hw):
            for x in range(hw):
                inp = torch.zeros(1, w.shape[1], hw, hw, dtype=torch.float64)
                inp[0, c, y, x] = 1
                fan[c, y, x] = conv(inp).sum()
    return fan


@pytest.mark.parametrize(
    ("hw", "k", "stride", "padding", "dilation"),
    [(6, 3, 2, 1, 1), (6, 3, 2, 0, 1), (8, 3, 3, 0, 1), (7, 2, 2, 1, 1), (8, 3, 3, 1, 2), (7, 3, 1, "same", 2)],
)
def test_conv_fanout_matches_impulse_responses(hw, k, stride, padding, dilation):
    """Strides that do not divide the input (the last rows reach no output) and "same" padding."""
    torch.manual_seed(hw * k + stride)
    w = torch.randn(3, 2, k, k)
    w[w.abs() < 0.5] = 0
    want = _brute_fanout(w, hw, stride, padding, dilation)
    assert torch.equal(conv_fanout(w, (hw, hw), stride, padding, dilation), want)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, k, stride, padding, dilation, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(w)
    x = (torch.rand(4, 2, 2, hw, hw) < 0.5).float()  # [T, B, C, H, W]
    rep = measure(net, [x.reshape(-1, 2, hw, hw)])
    assert rep.synops * rep.samples == pytest.approx(float((x.sum((0, 1)).double() * want).sum()))


@pytest.mark.parametrize(
    "layer",
    [
        torch.nn.Conv1d(2, 3, 3),
        torch.nn.ConvTranspose2d(2, 3, 3),
        torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
    ],
)
def test_measure_refuses_layers_it_cannot_count(layer):
    with pytest.raises(ValueError, match="not supported"):
        MetricsRecorder(torch.nn.Sequential(layer))


def _plain(x: torch.Tensor) -> torch.Tensor:
    """The same values without any attached spike list (a fresh tensor)."""
    return x.detach().clone()


@pytest.mark.parametrize("binary", [True, False])
def test_counts_from_spike_lists_equal_counts_from_tensors(binary, monkeypatch):
    """SynOps, input spikes and MACs read from the spike lists that sparse layers and encoders
    attach (O(spikes)) equal those read from the dense tensors."""
    from sparsespike.kernels.sparse import attach_spike_list, get_meta, spike_list

    torch.manual_seed(3)
    net = nn.Sequential(
        SpikingLinear(12, 9, backward="sparse", weight_scale=3.0),
        SpikingLinear(9, 7, backward="sparse", weight_scale=3.0),
        LeakyReadout(7, 3),
    )
    with torch.no_grad():
        net[1].weight[:, 2] = 0  # a pruned column: its spikes drive nothing
    x = (torch.rand(6, 5, 12) < 0.3).float()
    if not binary:
        x[x > 0] = 0.5 + torch.rand(int((x > 0).sum()))
    with_list = attach_spike_list(x.clone(), spike_list(x))
    assert get_meta(with_list) is not None
    with torch.no_grad():
        h = net[0](with_list)
    assert get_meta(h) is not None and get_meta(h).spike_list() is not None  # the hidden layer's list is used too
    import sparsespike.kernels.sparse as ks

    calls = []
    counts = ks.spike_counts
    monkeypatch.setattr(ks, "spike_counts", lambda *a, **k: calls.append(1) or counts(*a, **k))
    a = measure(net, [with_list])
    n_list = len(calls)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(ks, "get_meta", lambda t: None)  # the reference reads every tensor
        b = measure(net, [_plain(x)])
    # all three synaptic layers (two hidden, the readout) counted their input from its list
    assert n_list - len(calls) == 3
    assert a.synops > 0 and a.layers[1]["synops"] > 0
    for key in ("synops", "input_spikes", "dense_flops", "energy_pj", "spike_count"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12), key
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la["synops"] == pytest.approx(lb["synops"], rel=1e-12)
        assert la["nonspiking_macs"] == lb["nonspiking_macs"]
    assert (a.layers[0]["nonspiking_macs"] > 0) == (not binary)


def test_counts_from_a_conv_input_spike_list():
    from sparsespike.kernels.sparse import attach_spike_list, spike_list

    torch.manual_seed(4)
    net = nn.Sequential(SpikingConv2d(2, 3, 3, LIFParams(beta=0.9), padding=1, weight_scale=2.0), SeqFlatten())
    x = (torch.rand(4, 3, 2, 5, 5) < 0.2).float()
    with_list = attach_spike_list(x.clone(), spike_list(x.reshape(4, 3, 50)))
    a = measure(net, [with_list])
    b = measure(net, [_plain(x)])
    assert a.synops > 0
    assert a.synops == pytest.approx(b.synops, rel=1e-12) and a.input_spikes == b.input_spikes


class _Heaviside(nn.Module):
    emits_spikes = True

    def forward(self, v):
        return (v > 0).float()


def test_shared_activation_of_two_widths_counts_both_layers():
    """One stateless activation after a 100-unit and a 10-unit layer: its neurons are 110, not the
    last call's 10 (<N_S> was 136 / 10 instead of 136 / 110)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(4, 100), nn.Linear(100, 10), _Heaviside()

        def forward(self, x):
            return self.act(self.fc2(self.act(self.fc1(x))))

    torch.manual_seed(0)
    net = Net()
    x = torch.rand(3, 2, 4)
    rep = measure(net, [x])
    with torch.no_grad():
        s1 = (net.fc1(x) > 0).float()
        s2 = (net.fc2(s1) > 0).float()
    total = float(s1.sum() + s2.sum()) / 2
    assert rep.spike_count == pytest.approx(total)
    assert rep.ns == pytest.approx(total / 110)


def test_per_step_conv_outputs_count_channels_too():
    """A model called once per step on [B, C, H, W] (batch_dim=0): neurons = C*H*W, not H*W."""
    conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), _Heaviside())
    rec = MetricsRecorder(conv, batch_dim=0)
    with torch.no_grad():
        for _ in range(3):
            conv(torch.rand(2, 1, 6, 6))
    rep = rec.report(samples=2)
    assert rep.layers[-1]["neurons"] == 8 * 6 * 6


def test_input_spikes_are_those_of_the_first_layer_to_run():
    """A readout declared before the hidden layer: the report's input spikes were the hidden
    layer's spikes (declaration order), not the network input's."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.readout = LeakyReadout(20, 3)
            self.hidden = SpikingLinear(5, 20, LIFParams(beta=0.9, threshold=0.1), weight_scale=5.0)

        def forward(self, x):
            return self.readout(self.hidden(x))

    torch.manual_seed(1)
    x = (torch.rand(10, 4, 5) < 0.3).float()
    rep = measure(Net(), [x])
    assert rep.input_spikes == pytest.approx(float(x.sum()) / 4)
