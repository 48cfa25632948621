"""Pins for the EventProp engine found by mutation testing (sparsespike.eventprop).

Each test checks real behaviour against an independent reference: the closed-form membrane
potential of Fontanini et al. 2024 eqs. 1-3 evaluated directly (superposition, METHODS.md 2(a)),
the analytic spike-time derivative, central finite differences, hand counts of the metrics
(DESIGN.md "Definitions"), and the constants of Fontanini Tables 1-2 as quoted in METHODS.md 2(c).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from finite_diff import central_differences

from sparsespike.errors import ConfigError, SpikeInputError
from sparsespike.eventprop import (
    EventNetwork,
    EventOutput,
    FontaniniLoss,
    LIFParams,
    SolverOptions,
    ce_loss,
    cs_loss,
    encode_mnist,
    encode_yinyang,
    event_forward,
)
from sparsespike.eventprop.metrics import BatchStats
from sparsespike.eventprop.network import MNIST_INIT_RANGES, YINYANG_INIT_RANGES, default_init_ranges
from sparsespike.eventprop.simulate import EventList, merge_events, simulate_layer, simulate_network
from sparsespike.eventprop.train import EventPropConfig, EventPropTraining, PhaseConfig, augment_images

P = LIFParams()
INF = float("inf")


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# independent reference: V(t) by superposition of the closed form, spikes by grid + bisection
# ----------------------------------------------------------------------------------------------
def _v_ref(t: np.ndarray, in_t: np.ndarray, in_w: np.ndarray, out_t: list[float], p: LIFParams) -> np.ndarray:
    """Fontanini eqs. 1-3 solved by superposition (METHODS 2(a), the sum0/sum1 form):
    ``V = k R sum_i w_i (e^{-(t-t_i)/tau_m} - e^{-(t-t_i)/tau_s}) - theta sum_k e^{-(t-t_k)/tau_m}``
    with ``k = tau_s/(tau_m - tau_s)``; the reset subtracts theta at each own spike."""
    k = p.tau_s / (p.tau_m - p.tau_s)
    t = np.asarray(t, dtype=np.float64)[..., None]
    d = t - in_t
    psp = np.where(d > 0, in_w * p.r_m * k * (np.exp(-d / p.tau_m) - np.exp(-d / p.tau_s)), 0.0).sum(-1)
    if out_t:
        do = t - np.asarray(out_t)
        psp = psp - np.where(do > 0, p.threshold * np.exp(-do / p.tau_m), 0.0).sum(-1)
    return psp


def _reference_spikes(in_t: np.ndarray, in_w: np.ndarray, p: LIFParams = P, dt: float = 1e-3) -> list[float]:
    """First upward threshold crossings after each reset, on a fine grid refined by bisection."""
    spikes: list[float] = []
    start = 0.0
    while True:
        grid = np.arange(start + dt, p.t_window + dt / 2, dt)
        v = _v_ref(grid, in_t, in_w, spikes, p)
        above = np.nonzero(v > p.threshold)[0]
        if above.size == 0:
            return spikes
        i = int(above[0])
        lo, hi = (grid[i - 1] if i > 0 else start), grid[i]
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if _v_ref(np.array([mid]), in_t, in_w, spikes, p)[0] > p.threshold:
                hi = mid
            else:
                lo = mid
        spikes.append(hi)
        start = hi


# ----------------------------------------------------------------------------------------------
# forward pass
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p", [P, LIFParams(tau_m=4.0, tau_s=7.0, r_m=1.5, threshold=0.8)], ids=["table1", "tau_s>tau_m"]
)
def test_peak_a_hair_above_threshold_spikes_and_a_hair_below_does_not(p: LIFParams) -> None:
    """SolverOptions.peak_tol (1e-10): an interior maximum makes a spike iff V_peak > theta +
    peak_tol. One input of weight f * w_norm peaks at f * theta (METHODS 2(e)1), so f = 1 + 1e-7
    must spike, at the crossing of the closed form, and f = 1 - 1e-7 must not; also for
    tau_s > tau_m, where k < 0 and the peak time has both logarithm and rate difference negative."""
    x = np.zeros((1, 1))
    below = simulate_network(x, [np.array([[(1 - 1e-7) * p.w_norm]])], p)[0][1]
    assert below.counts[0, 0] == 0
    w = (1 + 1e-7) * p.w_norm
    above = simulate_network(x, [np.array([[w]])], p)[0][1]
    assert above.counts[0, 0] == 1
    ts = above.times[0, 0, 0]
    t_peak = math.log(p.tau_m / p.tau_s) / (1 / p.tau_s - 1 / p.tau_m)
    assert 0 < ts < t_peak
    assert _v_ref(np.array([ts]), np.zeros(1), np.array([w]), [], p)[0] == pytest.approx(p.threshold, abs=1e-12)


def test_spike_from_membrane_left_over_plus_a_weak_current() -> None:
    """A spike that needs the potential left by an earlier input: after the second input
    R I = 2.99 < theta/k = 3, so V0 + k R I0 > theta only thanks to V0 ~ 0.79 (the cheap
    exclusion bound ``V <= V0 + k R I0`` of the simulator). Reference: direct evaluation of the
    closed form (Fontanini eqs. 1-3)."""
    in_t = np.array([0.0, 9.2])
    in_w = np.array([5.0, 2.2])
    sp = simulate_network(in_t[None], [in_w[None]])[0][1]
    ref = _reference_spikes(in_t, in_w)
    assert len(ref) == 1
    assert sp.counts[0, 0] == 1
    np.testing.assert_allclose(sp.times[0, 0, :1], ref, atol=1e-9)


def test_many_weak_inputs_match_the_closed_form_reference() -> None:
    """Summation regime (each input well below w_norm, several spikes per neuron): every spike
    time and count equals the grid + bisection reference on the superposed closed form."""
    rng = np.random.default_rng(21)
    n_in = 24
    x = np.sort(rng.uniform(0, 25, (1, n_in)), axis=1)
    W = rng.uniform(0.05, 0.45, (6, n_in)) * P.w_norm
    sp = simulate_network(x, [W])[0][1]
    n_multi = 0
    for m in range(W.shape[0]):
        ref = _reference_spikes(x[0], W[m])
        assert sp.counts[0, m] == len(ref), f"neuron {m}"
        np.testing.assert_allclose(sp.times[0, m, : len(ref)], ref, atol=1e-9)
        n_multi += len(ref) >= 2
    assert n_multi >= 2


def test_spike_axis_is_trimmed_to_the_largest_count() -> None:
    """LayerSpikes / EventOutput: ``S`` is the largest spike count in the batch (at least 1)."""
    x = np.zeros((2, 1))
    W = np.array([[2.0 * P.w_norm], [0.5 * P.w_norm]])
    sp = simulate_network(x, [W])[0][1]
    assert sp.counts[:, 0].tolist() == [2, 2] and sp.counts[:, 1].tolist() == [0, 0]
    assert sp.times.shape == (2, 2, 2) and sp.currents.shape == (2, 2, 2)
    silent = simulate_network(x, [0.5 * W])[0][1]
    assert silent.times.shape == (2, 2, 1) and np.isinf(silent.times).all()


def test_merge_events_orders_ties_by_neuron_then_index() -> None:
    """EventList contract: per sample, events sorted by time, ties by (neuron, spike index)."""
    rng = np.random.default_rng(0)
    n, s = 40, 3
    times = rng.choice([1.0, 2.0, 3.0], size=(1, n, s))
    times[0, ::7, 2] = np.inf
    ev = merge_events(times)
    k = int(ev.count[0])
    got = list(zip(ev.times[0, :k], ev.neuron[0, :k], ev.index[0, :k], strict=True))
    want = sorted((times[0, i, j], i, j) for i in range(n) for j in range(s) if np.isfinite(times[0, i, j]))
    assert got == want


def test_simulate_layer_refuses_bad_weights_and_indices() -> None:
    """One non-finite weight (not only an all-NaN matrix) and an input index equal to the
    number of inputs are refused, rather than read out of bounds."""
    ev = merge_events(np.array([[[1.0], [2.0]]]))
    for bad in (np.inf, -np.inf, np.nan):
        W = np.ones((3, 2))
        W[1, 0] = bad
        with pytest.raises(SpikeInputError, match="NaN or inf"):
            simulate_layer(ev, W)
    ev_oob = EventList(
        times=np.array([[1.0, 2.0]]),
        neuron=np.array([[0, 2]]),
        index=np.array([[0, 0]]),
        count=np.array([2]),
    )
    with pytest.raises(SpikeInputError, match="out of range"):
        simulate_layer(ev_oob, np.ones((3, 2)))


# ----------------------------------------------------------------------------------------------
# adjoint
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("factor", "eps"), [(1 + 1e-7, 1e-3), (1.05, 1.0), (2.0, 1.0)])
def test_grazing_clip_of_the_adjoint_jump(factor: float, eps: float) -> None:
    """One input of weight w at t = 0, L = t_1. Implicit differentiation of V(t_1) = theta gives
    dt_1/dw = -(dV/dw)/(dV/dt) = -theta tau_m / (w (R I(t_1) - theta)) (Fontanini eq. 5 with one
    spike). The adjoint clips ``R I - theta`` to at least ``grazing_eps`` (SolverOptions), so the
    gradient is ``-theta tau_m / (w max(R I - theta, eps))``; the first case grazes under the
    default eps = 1e-3, the second is clipped by eps = 1, the last is not clipped."""
    w = factor * P.w_norm
    wt = torch.tensor([[w]], dtype=torch.float64, requires_grad=True)
    opts = SolverOptions(grazing_eps=eps)
    out = event_forward(torch.zeros(1, 1, dtype=torch.float64), [wt], P, opts)
    t1 = float(out.first_spikes.detach()[0, 0])
    out.first_spikes.sum().backward()
    slope = P.r_m * w * math.exp(-t1 / P.tau_s) - P.threshold  # I(t_1) = w e^{-t_1/tau_s}
    want = -P.threshold * P.tau_m / (w * max(slope, eps))
    assert float(wt.grad) == pytest.approx(want, rel=1e-7)
    if slope > eps:  # unclipped: also the finite-difference derivative
        h = 1e-6

        def t_of(v: float) -> float:
            return float(simulate_network(np.zeros((1, 1)), [np.array([[v]])])[0][1].times[0, 0, 0])

        assert float(wt.grad) == pytest.approx((t_of(w + h) - t_of(w - h)) / (2 * h), rel=1e-6)
    else:
        assert slope > 0  # a genuine crossing whose jump was clipped


def test_input_time_and_lower_layer_gradients_with_r_m_not_one() -> None:
    """R_m != 1 enters the error passed down, ``W (R_m lambda_V - lambda_I)`` (Fontanini eq. 5):
    gradients wrt the first layer's weights and the input times of a 2-layer network vs central
    finite differences of the simulator."""
    params = LIFParams(r_m=1.7, threshold=0.9)
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 12, (2, 3))
    W1 = rng.uniform(0.5, 1.2, (4, 3)) * params.w_norm
    W2 = rng.uniform(0.3, 0.6, (2, 4)) * params.w_norm
    xt = _t(x).requires_grad_(True)
    ws = [_t(W1).requires_grad_(True), _t(W2).requires_grad_(True)]
    out = event_forward(xt, ws, params)
    assert int(out.counts[1].min()) >= 1

    def loss(o: EventOutput) -> torch.Tensor:
        t = o.times[-1]
        return torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum()

    loss(out).backward()
    counts = [c.clone() for c in out.counts]

    def f(x_np: np.ndarray, w1: np.ndarray) -> float:
        o = event_forward(_t(x_np), [_t(w1), _t(W2)], params)
        assert all(torch.equal(a, b) for a, b in zip(o.counts, counts, strict=True))
        return float(loss(o))

    fd_x = central_differences(lambda a: f(a, W1), x, 1e-6)
    fd_w = central_differences(lambda a: f(x, a), W1, 1e-6)
    assert np.abs(fd_x).max() > 0 and np.abs(fd_w).max() > 0
    np.testing.assert_allclose(xt.grad.numpy(), fd_x, rtol=1e-4, atol=1e-6 * np.abs(fd_x).max())
    np.testing.assert_allclose(ws[0].grad.numpy(), fd_w, rtol=1e-4, atol=1e-6 * np.abs(fd_w).max())


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def test_silent_time_is_honoured_by_ce_cs_and_the_loss_object() -> None:
    """A silent neuron counts as ``silent_time`` (a constant) in CE and CS (losses.py policy):
    CS of a silent target is e^{T/tau_1} - 1 (Fontanini eq. 10), CE uses -T/tau_0 as its logit."""
    tau0, tau1 = 0.5, 6.4
    first = torch.tensor([[INF, 3.0, 4.0], [1.0, 2.0, INF]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    for T in (30.0, 12.0):
        cs = (math.expm1(T / tau1) + math.expm1(1.0 / tau1)) / 2
        assert float(cs_loss(first, y, silent_time=T)) == pytest.approx(cs, rel=1e-12)

        def nll(z: list[float], k: int) -> float:
            return -(z[k] - math.log(sum(math.exp(v) for v in z)))

        ce = (nll([-T / tau0, -3.0 / tau0, -4.0 / tau0], 0) + nll([-1.0 / tau0, -2.0 / tau0, -T / tau0], 0)) / 2
        assert float(ce_loss(first, y, silent_time=T)) == pytest.approx(ce, rel=1e-12)
        out = EventOutput([first[..., None]], [torch.isfinite(first).long()])
        total, parts = FontaniniLoss.l_w(0.25, silent_time=T)(out, y)
        assert parts["ce"] == pytest.approx(ce, rel=1e-12) and parts["cs"] == pytest.approx(cs, rel=1e-12)
        assert float(total) == pytest.approx(ce + 0.25 * cs, rel=1e-12)
        # AS (eq. 14) over all output neurons, with this loss's tau_1 and silent time
        as_ = sum(math.expm1(v / 5.0) for v in (T, 3.0, 4.0, 1.0, 2.0, T)) / 6
        _, parts = FontaniniLoss.l_a(0.25, 0.0, tau1=5.0, silent_time=T)(out, y)
        assert parts["as"] == pytest.approx(as_, rel=1e-12)


def test_losses_read_the_first_spike_of_a_times_tensor() -> None:
    """``[B, N, S]`` times: the losses use t_{b,1(a)}, the first spike (index 0)."""
    times = torch.tensor([[[1.0, 4.0], [2.0, INF]], [[3.0, 3.5], [0.5, 9.0]]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    first = torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64)
    assert float(ce_loss(times, y)) == pytest.approx(float(ce_loss(first, y)), rel=1e-15)
    assert float(cs_loss(times, y)) == pytest.approx((math.expm1(2.0 / 6.4) + math.expm1(3.0 / 6.4)) / 2)


def test_negative_eta_and_negative_labels_are_refused() -> None:
    with pytest.raises(ConfigError, match="eta"):
        FontaniniLoss.l(3e-3, -0.1)
    with pytest.raises(ConfigError):
        PhaseConfig(loss="L", eta=-0.4)
    with pytest.raises(SpikeInputError, match="labels"):
        ce_loss(torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, -1]))


# ----------------------------------------------------------------------------------------------
# encodings
# ----------------------------------------------------------------------------------------------
def test_encodings_with_a_nonzero_t_min() -> None:
    """Yin-Yang: t = t_min + v (t_max - t_min), bias spike at ``bias_time``; MNIST: bright
    early t = t_min + (1 - p)(t_max - t_min); ``p < min_intensity`` -> no spike (METHODS 2(c))."""
    x = torch.tensor([[0.25, 0.5, 0.75, 0.5]], dtype=torch.float64)
    t = encode_yinyang(x, t_min=2.0, t_max=22.0, bias_time=2.0)
    np.testing.assert_allclose(t.numpy(), [[7.0, 12.0, 17.0, 12.0, 2.0]])
    assert float(encode_yinyang(x, bias_time=3.5)[0, 4]) == 3.5
    with pytest.raises(SpikeInputError, match=r"\[0, 1\]"):
        encode_yinyang(torch.tensor([[1.5, 0.2, 0.3, 0.4]]))
    img = torch.tensor([[0.0, 1.0, 0.25, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(encode_mnist(img, t_min=4.0, t_max=24.0).numpy(), [[24.0, 4.0, 19.0, 14.0]])
    cut = encode_mnist(img, min_intensity=0.5)
    assert torch.isinf(cut[0, :3]).tolist() == [True, False, True] and float(cut[0, 3]) == 10.0


# ----------------------------------------------------------------------------------------------
# metrics (hand counts)
# ----------------------------------------------------------------------------------------------
def _out(counts: list[list[list[int]]], first_out: list[list[float]], n_capped: list[int]) -> EventOutput:
    """EventOutput with the given per-layer counts; spikes at 1, 2, ... ms except the output
    layer's first spikes, which are ``first_out``."""
    times, cnts = [], []
    for li, c in enumerate(counts):
        c_t = torch.tensor(c)
        S = max(1, int(c_t.max()))
        t = torch.full((*c_t.shape, S), INF, dtype=torch.float64)
        for b, n in np.ndindex(tuple(c_t.shape)):
            k = int(c_t[b, n])
            t[b, n, :k] = torch.arange(1, k + 1, dtype=torch.float64)
            if li == len(counts) - 1 and k:
                t[b, n, 0] = first_out[b][n]
        times.append(t)
        cnts.append(c_t)
    return EventOutput(times, cnts, n_capped)


def test_batch_stats_against_hand_counts() -> None:
    """DESIGN.md "Definitions" / metrics.py: <N_S> per layer and overall, silent neurons over the
    evaluated set, per-sample silent fraction, first-output-spike latency, accuracy and the
    sample-weighted mean of the loss parts, accumulated over two batches of unequal size."""
    stats = BatchStats(2)
    # batch 1, B = 2: hidden layer N = 3, output N = 2
    o1 = _out([[[2, 0, 0], [1, 1, 0]], [[1, 0], [0, 0]]], [[4.0, INF], [INF, INF]], [1, 0])
    stats.update(o1, torch.tensor([0, 1]), {"ce": 1.0})
    # batch 2, B = 1
    o2 = _out([[[1, 0, 0]], [[1, 3]]], [[6.0, 5.0]], [0, 2])
    stats.update(o2, torch.tensor([1]), {"ce": 4.0})
    r = stats.result()
    assert r["n_samples"] == 3
    assert r["accuracy"] == pytest.approx(2 / 3)  # sample 1 all silent -> wrong
    assert r["n_s_per_layer"] == pytest.approx([5 / 9, 5 / 6])
    assert r["n_s"] == pytest.approx(10 / 15)
    assert r["spikes_per_sample"] == pytest.approx(10 / 3)
    assert r["silent_neurons_per_layer"] == [1, 0]  # hidden neuron 1 fires in one sample of batch 1 only
    assert r["silent_frac_per_sample_per_layer"] == pytest.approx([(2 / 3 + 1 / 3 + 2 / 3) / 3, (1 / 2 + 1 + 0) / 3])
    assert r["latency_ms"] == pytest.approx((4.0 + 5.0) / 2)
    assert r["no_output_frac"] == pytest.approx(1 / 3)
    assert r["loss_ce"] == pytest.approx((2 * 1.0 + 1 * 4.0) / 3)
    assert r["n_capped"] == 3


# ----------------------------------------------------------------------------------------------
# network init (Fontanini Table 2) and training constants (Table 1)
# ----------------------------------------------------------------------------------------------
def test_init_ranges_are_table_2() -> None:
    assert [tuple(r) for r in YINYANG_INIT_RANGES] == [(1.0, 3.0), (0.2, 1.0), (0.0, 1.0), (0.0, 1.0)]
    assert [tuple(r) for r in MNIST_INIT_RANGES] == [(-0.01, 0.03), (-0.05, 0.15), (-0.2, 0.6), (-0.4, 0.8)]
    # depth study (5-40-20-3, 5-40-33-25-13-3): our documented extension, [0, 1] beyond layer 2
    assert default_init_ranges(3) == [(1.0, 3.0), (0.2, 1.0), (0.0, 1.0)]
    assert default_init_ranges(5)[2:] == [(0.0, 1.0)] * 3
    net = EventNetwork([5, 40, 25, 13, 3], generator=torch.Generator().manual_seed(1))
    for w, (lo, hi) in zip(net.weights, YINYANG_INIT_RANGES, strict=True):
        v = w.detach()
        assert float(v.min()) >= lo and float(v.max()) <= hi
        assert float(v.max()) - float(v.min()) > 0.8 * (hi - lo)  # spans the range
    torch.manual_seed(123)
    a = EventNetwork([5, 8, 3], generator=torch.Generator().manual_seed(4))
    b = EventNetwork([5, 8, 3], generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))


def test_default_neuron_and_solver() -> None:
    """LIFParams defaults are Fontanini Table 1; SolverOptions defaults as documented (peak_tol
    1e-10, root_xtol 1e-12 ms, grazing_eps 1e-3, max_spikes 32, overflow warns)."""
    assert (P.tau_m, P.tau_s, P.r_m, P.threshold, P.t_window) == (20.0, 5.0, 1.0, 1.0, 30.0)
    o = SolverOptions()
    assert (o.peak_tol, o.root_xtol, o.grazing_eps, o.max_spikes) == (1e-10, 1e-12, 1e-3, 32)
    with pytest.warns(RuntimeWarning, match="max_spikes"):
        simulate_network(np.zeros((1, 1)), [np.array([[40.0 * P.w_norm]])])
    with pytest.raises(ConfigError, match="root_xtol"):
        SolverOptions(root_xtol=0.0)


def test_default_config_is_table_1() -> None:
    """Fontanini Table 1 (METHODS 2(c)): neuron, window, loss constants, Adam, lr decay, batch."""
    c = EventPropConfig()
    assert (c.tau_m, c.tau_s, c.threshold, c.t_window, c.t_min, c.t_max) == (20.0, 5.0, 1.0, 30.0, 0.0, 20.0)
    assert (c.tau0, c.tau1) == (0.5, 6.4)
    assert list(c.adam_betas) == [0.9, 0.999] and c.adam_eps == 1e-8 and c.lr_decay == 0.95
    assert c.batch_size == 32


def test_training_honours_optimizer_schedule_and_model_settings(tmp_path: Path) -> None:
    """Adam with the configured betas/eps, lr x lr_decay after every epoch, and the configured
    neuron, loss and encoding constants reach the network, the loss and the training inputs."""
    cfg = {
        "dataset": "yinyang",
        "sizes": [5, 6, 3],
        "phases": [{"loss": "L_W", "alpha": 3e-3, "lr": 4e-3, "epochs": 3}],
        "n_train": 8,
        "n_val": 4,
        "progress": False,
        "eval_test": False,
        "adam_betas": [0.8, 0.99],
        "adam_eps": 1e-6,
        "lr_decay": 0.5,
        "tau0": 0.7,
        "tau1": 5.0,
        "threshold": 1.2,
        "t_min": 2.0,
        "t_max": 18.0,
        "out_dir": str(tmp_path),
    }
    tr = EventPropTraining(cfg)
    assert tr.net.params.threshold == 1.2
    loss = tr._loss(tr.cfg.phases[0])
    assert (loss.tau0, loss.tau1, loss.silent_time, loss.alpha) == (0.7, 5.0, 30.0, 3e-3)
    feats = tr.xtr.to(torch.float64)
    want = torch.cat([2.0 + feats * 16.0, torch.full((feats.shape[0], 1), 2.0, dtype=torch.float64)], 1)
    torch.testing.assert_close(tr.train_times, want)  # bias spike at t_min (METHODS 2(c))
    lrs = [rec["lr"] for rec in tr.epochs()]
    assert lrs == pytest.approx([4e-3, 2e-3, 1e-3], rel=1e-12)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    (group,) = ck["opt"]["param_groups"]
    assert tuple(group["betas"]) == (0.8, 0.99) and group["eps"] == 1e-6


def test_an_epoch_is_plain_adam_steps_on_fresh_batch_gradients() -> None:
    """Reference training loop: every batch, gradient of the phase loss at the current weights
    (not accumulated over batches), then one Adam step. Four copies of one sample and batch 2 make
    the two batches of the epoch identical whatever the shuffle."""
    x = torch.tensor([[0.3, 0.6, 0.7, 0.4]])
    y = torch.tensor([1])
    cfg = {
        "dataset": "yinyang",
        "sizes": [5, 12, 3],
        "init_ranges": [[1.0, 3.0], [0.5, 1.5]],  # every output spikes: gradients reach both layers
        "batch_size": 2,
        "phases": [{"loss": "L_W", "alpha": 3e-3, "lr": 5e-3, "epochs": 1}],
        "n_val": 4,
        "progress": False,
        "eval_test": False,
    }
    tr = EventPropTraining(cfg, train_data=(x.repeat(4, 1), y.repeat(4)))
    ref = [w.detach().clone().requires_grad_(True) for w in tr.net.weights]
    w0 = [w.detach().clone() for w in tr.net.weights]
    opt = torch.optim.Adam(ref, lr=5e-3, betas=(0.9, 0.999), eps=1e-8)
    xb, yb = encode_yinyang(x.repeat(2, 1)), y.repeat(2)
    loss_fn = FontaniniLoss.l_w(3e-3)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(event_forward(xb, ref), yb)[0].backward()
        opt.step()
    for _ in tr.epochs():
        pass
    for w, r in zip(tr.net.weights, ref, strict=True):
        torch.testing.assert_close(w.detach(), r.detach(), rtol=1e-12, atol=1e-14)
    assert all(not torch.equal(w.detach(), v) for w, v in zip(tr.net.weights, w0, strict=True))


def test_mnist_network_gets_the_mnist_init_ranges(data_dir: Path) -> None:
    """784-280-160-70-10 on MNIST: weights drawn from Fontanini Table 2's MNIST ranges."""
    tr = EventPropTraining(
        {
            "dataset": "mnist",
            "data_dir": str(data_dir),
            "sizes": [784, 280, 160, 70, 10],
            "phases": [{"loss": "L_W", "epochs": 0}],
            "n_train": 4,
            "n_val": 4,
            "n_test": 4,
            "progress": False,
        }
    )
    for w, (lo, hi) in zip(tr.net.weights, MNIST_INIT_RANGES, strict=True):
        v = w.detach()
        assert float(v.min()) >= lo and float(v.max()) <= hi
        assert float(v.max()) - float(v.min()) > 0.8 * (hi - lo)


def test_augment_images_shift_and_rotation_bounds() -> None:
    """MNIST augmentation (Fontanini 3.4): shifts up to +-10 % of the size, rotations up to
    +-20 deg. A single bright blob is tracked by its intensity centroid over many draws."""
    n, size = 300, 28
    img = torch.zeros(n, size, size)
    img[:, 13:15, 21:23] = 1.0  # blob 8 px right of the centre (13.5, 13.5)
    c0 = np.array([13.5, 21.5])

    def centroids(x: torch.Tensor) -> np.ndarray:
        rows = torch.arange(size, dtype=torch.float32)
        m = x.sum((1, 2))
        return torch.stack([(x.sum(2) * rows).sum(1) / m, (x.sum(1) * rows).sum(1) / m], 1).numpy()

    shifted = centroids(augment_images(img, torch.Generator().manual_seed(0), shift=0.1, degrees=0.0))
    d = np.abs(shifted - c0).max(0)  # per axis: rows, columns
    assert (d <= 0.1 * size + 0.3).all() and (d > 0.8 * 0.1 * size).all()
    rotated = centroids(augment_images(img, torch.Generator().manual_seed(1), shift=0.0, degrees=20.0))
    ang = np.degrees(np.arctan2(rotated[:, 0] - 13.5, rotated[:, 1] - 13.5))
    assert np.abs(ang).max() <= 21.0 and np.abs(ang).max() > 15.0
