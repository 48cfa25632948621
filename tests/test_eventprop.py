"""EventProp engine: exact forward (vs threshold theory and a fine Euler simulation) and
adjoint gradients (vs central finite differences of the same simulator), all in float64.

METHODS.md 2(e): threshold exactness, spike-time gradients, 2-layer TTFS chain, and our
additions (SP/AS/CS with >= 3 spikes per neuron, Euler check, multi-spike root finding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from finite_diff import central_differences
from numba import njit

from sparsespike.errors import ConfigError, SpikeInputError
from sparsespike.eventprop import (
    EventNetwork,
    FontaniniLoss,
    LIFParams,
    SolverOptions,
    as_loss,
    ce_loss,
    cs_loss,
    event_forward,
    sp_loss,
)
from sparsespike.eventprop.simulate import membrane_potential, simulate_network

P = LIFParams()
W_NORM = P.w_norm


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# (a) threshold exactness
# ----------------------------------------------------------------------------------------------
def test_w_norm_matches_closed_formula():
    f = P.tau_m / P.tau_s
    expected = (P.tau_m - P.tau_s) / P.tau_s * f ** (f / (f - 1)) / (f - 1)
    assert W_NORM == pytest.approx(expected, rel=1e-14)


def test_threshold_exactness():
    x = np.zeros((1, 1))
    at = simulate_network(x, [np.array([[W_NORM]])])[0][1]
    assert at.counts[0, 0] == 0
    above = simulate_network(x, [np.array([[1.001 * W_NORM]])])[0][1]
    assert above.counts[0, 0] == 1
    # the spike is where V first reaches theta: just before the PSP peak
    t_peak = math.log(P.tau_m / P.tau_s) / (1 / P.tau_s - 1 / P.tau_m)
    assert 0 < above.times[0, 0, 0] < t_peak


def test_spike_times_are_threshold_crossings():
    """V(t_k^-) = theta at every spike, including repeated spikes after resets."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 20, (1, 6))
    w = rng.uniform(0.5, 1.5, (3, 6)) * W_NORM
    sp = simulate_network(x, [w])[0][1]
    assert sp.counts.max() >= 3
    for m in range(3):
        ts = sp.times[0, m, : sp.counts[0, m]]
        v = membrane_potential(ts - 1e-12, x[0], w[m], ts)
        np.testing.assert_allclose(v, P.threshold, atol=1e-9)
        # and nowhere above threshold on a fine grid (no missed crossing)
        grid = np.linspace(0, P.t_window, 30001)
        vg = membrane_potential(grid, x[0], w[m], ts)
        assert vg.max() <= P.threshold + 1e-9


# ----------------------------------------------------------------------------------------------
# (b) forward vs a fine forward-Euler simulation (dt = 1e-5 ms)
# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def _euler_network(x, W1, W2, tau_m, tau_s, theta, T, dt, max_sp):
    """Forward Euler of a 2-layer network; inputs applied at the first step after their time,
    crossings located by linear interpolation. Returns spike times [N1, max_sp], [N2, max_sp]."""
    n_in, N1, N2 = x.shape[0], W1.shape[0], W2.shape[0]
    V1 = np.zeros(N1)
    I1 = np.zeros(N1)
    V2 = np.zeros(N2)
    I2 = np.zeros(N2)
    s1 = np.full((N1, max_sp), np.inf)
    s2 = np.full((N2, max_sp), np.inf)
    c1 = np.zeros(N1, np.int64)
    c2 = np.zeros(N2, np.int64)
    done_in = np.zeros(n_in, np.bool_)
    nsteps = int(round(T / dt))
    for k in range(nsteps):
        t = k * dt
        for i in range(n_in):
            if not done_in[i] and x[i] <= t:
                done_in[i] = True
                for m in range(N1):
                    I1[m] += W1[m, i]
        fired = np.zeros(N1, np.bool_)
        for m in range(N1):
            v_old = V1[m]
            V1[m] += dt * (-V1[m] + I1[m]) / tau_m
            I1[m] += dt * (-I1[m]) / tau_s
            if V1[m] >= theta:
                frac = (theta - v_old) / (V1[m] - v_old)
                s1[m, c1[m]] = t + frac * dt
                c1[m] += 1
                V1[m] = 0.0
                fired[m] = True
        for m in range(N2):
            v_old = V2[m]
            V2[m] += dt * (-V2[m] + I2[m]) / tau_m
            I2[m] += dt * (-I2[m]) / tau_s
            if V2[m] >= theta:
                frac = (theta - v_old) / (V2[m] - v_old)
                s2[m, c2[m]] = t + frac * dt
                c2[m] += 1
                V2[m] = 0.0
        for n in range(N1):  # layer-1 spikes reach layer 2 at the next step
            if fired[n]:
                for m in range(N2):
                    I2[m] += W2[m, n]
    return s1, s2


def test_forward_matches_fine_euler_with_multiple_spikes():
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 15, 4)
    W1 = rng.uniform(0.4, 1.3, (5, 4)) * W_NORM
    W2 = rng.uniform(0.2, 0.6, (3, 5)) * W_NORM
    dt = 1e-5
    e1, e2 = _euler_network(x, W1, W2, P.tau_m, P.tau_s, P.threshold, P.t_window, dt, 32)
    layers = simulate_network(x[None], [W1, W2])
    for (_, sp), ref in zip(layers, (e1, e2), strict=True):
        counts_ref = np.isfinite(ref).sum(1)
        np.testing.assert_array_equal(sp.counts[0], counts_ref)
        S = sp.times.shape[2]
        got = sp.times[0]
        want = ref[:, :S]
        fin = np.isfinite(got)
        # Euler's global error is O(dt): a few dt here
        np.testing.assert_allclose(got[fin], want[fin], atol=2e-3)
    assert max(sp.counts.max() for _, sp in layers) >= 3  # several spikes after reset


# ----------------------------------------------------------------------------------------------
# (c) EventProp gradients vs central finite differences of the same simulator
# ----------------------------------------------------------------------------------------------
def _fd_check(loss_of_out, x, weights, eps=1e-6, rtol=1e-3, check_input=False, zero_layers=()):
    """Compare EventProp gradients of ``loss_of_out(EventOutput)`` with central FD."""
    ws = [_t(w).requires_grad_(True) for w in weights]
    xt = _t(x).requires_grad_(check_input)
    out = event_forward(xt, ws)
    loss = loss_of_out(out)
    loss.backward()
    base_counts = [c.clone() for c in out.counts]

    def f(ws_np, x_np):
        with torch.no_grad():
            o = event_forward(_t(x_np), [_t(w) for w in ws_np])
            for c, c0 in zip(o.counts, base_counts, strict=True):
                assert torch.equal(c, c0), "a perturbation changed the spike count (grazing)"
            return float(loss_of_out(o))

    for l, w in enumerate(weights):
        fd = central_differences(lambda a, l=l: f([a if i == l else v for i, v in enumerate(weights)], x), w, eps)
        g = ws[l].grad.numpy()
        if l in zero_layers:  # the loss does not depend on these weights
            assert np.abs(fd).max() == 0 and np.abs(g).max() == 0
            continue
        err = np.abs(g - fd).max() / max(np.abs(fd).max(), 1e-12)
        assert err < rtol, f"layer {l}: relative error {err:.2e}"
        assert np.abs(fd).max() > 0
    if check_input:
        fd = central_differences(lambda a: f(weights, a), x, eps)
        g = xt.grad.numpy()
        err = np.abs(g - fd).max() / max(np.abs(fd).max(), 1e-12)
        assert err < rtol, f"input times: relative error {err:.2e}"
    return out


def _sum_times(out):
    return sum(torch.where(torch.isfinite(t), t, torch.zeros_like(t)).sum() for t in out.times)


def test_grad_sum_of_spike_times_poisson_inputs():
    """METHODS 2(e)2: L = sum of all spike times, Poisson inputs (ISI 10 ms), several spikes."""
    rng = np.random.default_rng(0)
    B, n_in, S_in = 2, 6, 4
    x = np.cumsum(rng.exponential(10.0, (B, n_in, S_in)), axis=2)  # ISI 10 ms
    x[x > P.t_window] = np.inf
    W1 = rng.normal(0.45, 0.1, (4, n_in)) * W_NORM
    W2 = rng.normal(0.5, 0.1, (3, 4)) * W_NORM
    out = _fd_check(_sum_times, x, [W1, W2], check_input=True)
    assert max(int(c.max()) for c in out.counts) >= 3


def test_grad_two_layer_ttfs_ce():
    """METHODS 2(e)3: two-layer TTFS cross-entropy chain, per-sample losses averaged."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 20, (4, 5))
    W1 = rng.uniform(0.3, 0.8, (6, 5)) * W_NORM
    W2 = rng.uniform(0.1, 0.5, (3, 6)) * W_NORM
    y = torch.tensor([0, 1, 2, 1])
    out = _fd_check(lambda o: ce_loss(o.first_spikes, y), x, [W1, W2])
    assert torch.isfinite(out.first_spikes).all()


@pytest.fixture(scope="module")
def multispike_case():
    """Two layers where several neurons spike >= 3 times, with margin from grazing."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 20, (3, 5))
    W1 = rng.uniform(0.4, 1.2, (5, 5)) * W_NORM
    W2 = rng.uniform(0.15, 0.45, (3, 5)) * W_NORM
    return x, W1, W2, torch.tensor([2, 0, 1])


def test_grad_cs(multispike_case):
    x, W1, W2, y = multispike_case
    out = _fd_check(lambda o: cs_loss(o.first_spikes, y), x, [W1, W2])
    assert int(out.counts[1].max()) >= 3


def test_grad_as(multispike_case):
    x, W1, W2, _ = multispike_case
    _fd_check(lambda o: as_loss(o.first_spikes), x, [W1, W2])


def test_grad_sp_all_layers(multispike_case):
    x, W1, W2, _ = multispike_case
    out = _fd_check(lambda o: sp_loss(o), x, [W1, W2])
    assert int(out.counts[0].max()) >= 3 and int(out.counts[1].max()) >= 3


def test_grad_sp_hidden_only(multispike_case):
    """A loss on hidden spikes alone still reaches both layers' weights correctly."""
    x, W1, W2, _ = multispike_case
    _fd_check(lambda o: sp_loss(o.times[0]), x, [W1, W2], zero_layers=(1,))


def test_grad_combined_losses_three_layers():
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 20, (3, 5))
    Ws = [
        rng.uniform(0.4, 1.0, (6, 5)) * W_NORM,
        rng.uniform(0.15, 0.45, (4, 6)) * W_NORM,
        rng.uniform(0.2, 0.5, (3, 4)) * W_NORM,
    ]
    y = torch.tensor([1, 0, 2])
    for loss in (FontaniniLoss.l(5e-3, 0.2), FontaniniLoss.l_a(3.5e-3, 0.4)):
        _fd_check(lambda o, loss=loss: loss(o, y)[0], x, Ws)


def test_batch_equals_single_samples():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 20, (5, 4))
    Ws = [rng.uniform(0.3, 1.0, (6, 4)) * W_NORM, rng.uniform(0.2, 0.5, (3, 6)) * W_NORM]
    ws = [_t(w).requires_grad_(True) for w in Ws]
    out = event_forward(_t(x), ws)
    _sum_times(out).backward()
    g_batch = [w.grad.clone() for w in ws]
    g_sum = [torch.zeros_like(w) for w in ws]
    for b in range(5):
        wb = [_t(w).requires_grad_(True) for w in Ws]
        ob = event_forward(_t(x[b : b + 1]), wb)
        for t_b, t_all in zip(ob.times, out.times, strict=True):
            S = t_b.shape[2]
            torch.testing.assert_close(t_b[0], t_all[b, :, :S].detach())
        _sum_times(ob).backward()
        for a, w in zip(g_sum, wb, strict=True):
            a += w.grad
    for a, b in zip(g_batch, g_sum, strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# solver options, network module, bad input
# ----------------------------------------------------------------------------------------------
def test_max_spikes_cap():
    x = np.zeros((1, 1))
    w = [np.array([[10 * W_NORM]])]
    sp = simulate_network(x, w, options=SolverOptions(max_spikes=3, on_overflow="ignore"))[0][1]
    assert sp.counts[0, 0] == 3 and sp.n_capped == 1
    with pytest.raises(SpikeInputError, match="max_spikes"):
        simulate_network(x, w, options=SolverOptions(max_spikes=3, on_overflow="raise"))
    with pytest.warns(RuntimeWarning, match="max_spikes"):
        simulate_network(x, w, options=SolverOptions(max_spikes=3, on_overflow="warn"))


def test_inputs_after_window_and_infinite_inputs_are_ignored():
    w = [np.array([[2.0 * W_NORM, 5.0 * W_NORM, 7.0 * W_NORM]])]
    a = simulate_network(np.array([[1.0, np.inf, 31.0]]), w)[0][1]
    b = simulate_network(np.array([[1.0]]), [w[0][:, :1]])[0][1]
    np.testing.assert_array_equal(a.times, b.times)


def test_network_module_forward_backward():
    net = EventNetwork([5, 8, 3], generator=torch.Generator().manual_seed(0))
    assert net.weights[0].dtype == torch.float64
    w0 = net.weights[0].detach()
    assert float(w0.min()) >= 1.0 and float(w0.max()) <= 3.0
    x = torch.rand(4, 5, dtype=torch.float64) * 20
    out = net(x)
    assert len(out.times) == 2 and out.first_spikes.shape == (4, 3)
    loss, parts = FontaniniLoss.l_a(3.5e-3, 0.4)(out, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in net.weights)
    assert set(parts) >= {"ce", "as", "sp", "total"}


def test_bad_inputs():
    w = [torch.ones(3, 2, dtype=torch.float64)]
    with pytest.raises(SpikeInputError, match="NaN"):
        event_forward(torch.tensor([[1.0, float("nan")]], dtype=torch.float64), w)
    with pytest.raises(SpikeInputError, match="negative"):
        event_forward(torch.tensor([[1.0, -2.0]], dtype=torch.float64), w)
    with pytest.raises(SpikeInputError, match="shape"):
        event_forward(torch.ones(2, dtype=torch.float64), w)
    with pytest.raises(SpikeInputError, match="shape"):
        event_forward(torch.ones(1, 2, 2, 2, dtype=torch.float64), w)
    with pytest.raises(SpikeInputError, match="expected"):
        event_forward(torch.ones(1, 4, dtype=torch.float64), w)
    with pytest.raises(SpikeInputError, match="expected"):
        event_forward(torch.ones(1, 2, dtype=torch.float64), [w[0], torch.ones(2, 5)])
    with pytest.raises(SpikeInputError, match="NaN or inf"):
        event_forward(torch.ones(1, 2, dtype=torch.float64), [torch.full((3, 2), float("nan"))])
    with pytest.raises(ConfigError):
        LIFParams(tau_m=5.0, tau_s=5.0)
    with pytest.raises(ConfigError):
        LIFParams(tau_m=-1.0)
    with pytest.raises(ConfigError):
        SolverOptions(max_spikes=0)
    with pytest.raises(ConfigError):
        SolverOptions(on_overflow="explode")
    with pytest.raises(ConfigError):
        EventNetwork([5])
    with pytest.raises(ConfigError):
        EventNetwork([5, 3], init_ranges=[(1.0, 0.0)])
    with pytest.raises(ConfigError, match="grazing_eps"):
        SolverOptions(grazing_eps=0.0)  # the adjoint jump divides by max(R I - theta, grazing_eps)
    with pytest.raises(SpikeInputError, match="float32 or float64"):
        event_forward(torch.ones(1, 2, dtype=torch.float64), [torch.ones(3, 2, dtype=torch.float16)])
    # half-precision input times are computed in float64 (the kernels have no half path)
    half = event_forward(torch.zeros(2, 2, dtype=torch.bfloat16), [torch.full((3, 2), 5.0, dtype=torch.float64)])
    full = event_forward(torch.zeros(2, 2, dtype=torch.float64), [torch.full((3, 2), 5.0, dtype=torch.float64)])
    assert torch.equal(half.first_spikes, full.first_spikes)


def test_losses_refuse_an_empty_batch_and_bad_constants():
    """A batch mean over no samples is NaN (CE, CS, AS) or was silently 0 (SP): all raise; a
    zero or negative time constant made the losses NaN or reversed them."""
    w = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    out = event_forward(torch.zeros(0, 2, dtype=torch.float64), [w])
    y = torch.zeros(0, dtype=torch.long)
    for fn in (lambda: ce_loss(out.first_spikes, y), lambda: cs_loss(out.first_spikes, y),
               lambda: as_loss(out.first_spikes), lambda: sp_loss(out),
               lambda: FontaniniLoss.l(3e-3, 0.4)(out, y)):  # fmt: skip
        with pytest.raises(SpikeInputError, match="empty batch"):
            fn()
    first = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y1 = torch.tensor([0])
    with pytest.raises(ConfigError, match="tau0"):
        ce_loss(first, y1, tau0=0.0)
    with pytest.raises(ConfigError, match="tau1"):
        cs_loss(first, y1, tau1=-6.4)
    with pytest.raises(ConfigError, match="silent_time"):
        as_loss(first, silent_time=float("nan"))
    with pytest.raises(ConfigError, match="tau0"):
        FontaniniLoss(tau0=-0.5)
    with pytest.raises(ConfigError, match="alpha"):
        FontaniniLoss.l_w(-1e-3)


def test_other_neuron_constants_gradients():
    """R_m != 1, theta != 1 and tau_s > tau_m: forward is a crossing, gradients match FD."""
    params = LIFParams(tau_m=4.0, tau_s=7.0, r_m=1.5, threshold=0.8)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 15, (2, 3))
    W = rng.uniform(0.4, 1.1, (3, 3)) * params.w_norm
    ws = [_t(W).requires_grad_(True)]
    out = event_forward(_t(x), ws, params)
    assert int(out.counts[0].max()) >= 2
    _sum_times(out).backward()

    def f(w: np.ndarray) -> float:
        o = event_forward(_t(x), [_t(w)], params)
        assert torch.equal(o.counts[0], out.counts[0])
        return float(_sum_times(o))

    fd = central_differences(f, W, 1e-6)
    np.testing.assert_allclose(ws[0].grad.numpy(), fd, rtol=1e-4, atol=1e-7)


def test_simultaneous_inputs_as_one_jump_match_event_by_event(monkeypatch):
    """A long run of equal input times (MNIST's background pixels) is one jump in the forward
    pass and one lambda_I sample in the adjoint (simulate.py, "Inputs that arrive together"):
    spike times and every gradient equal the event-by-event walk's to rounding. Without input
    gradients the first layer's weight gradient comes from the neuron-parallel kernel, which must
    equal the sample-parallel one's to the bit."""
    import sparsespike.eventprop.simulate as sim

    g = torch.Generator().manual_seed(3)
    B, n_in = 6, 96
    x = torch.rand(B, n_in, generator=g, dtype=torch.float64) * 20.0
    bg = torch.rand(B, n_in, generator=g) < 0.6
    x[bg] = 12.0  # 60 % of the inputs spike together, mid-window
    x[0, :] = 12.0  # a sample that is one run only
    x[1, bg[1]] = 0.0  # a run at t = 0
    ws = [torch.empty(40, n_in, dtype=torch.float64).uniform_(-0.05, 0.25, generator=g),
          torch.empty(10, 40, dtype=torch.float64).uniform_(-0.2, 0.8, generator=g)]  # fmt: skip

    def run(input_grad):
        xi = x.clone().requires_grad_(input_grad)
        wi = [w.clone().requires_grad_(True) for w in ws]
        out = event_forward(xi, wi)
        t = torch.where(torch.isfinite(out.output), out.output, torch.zeros_like(out.output))
        h = torch.where(torch.isfinite(out.hidden[0]), out.hidden[0], torch.zeros_like(out.hidden[0]))
        (t.square().sum() + 0.1 * h.sum()).backward()
        return out, [w.grad for w in wi], xi.grad

    ev = sim.merge_events(x.numpy()[:, :, None])
    assert ev.bulk_mult is not None and ev.bulk_mult.sum(axis=1).tolist() == [n_in] + bg[1:].sum(1).tolist()
    bulk = {ig: run(ig) for ig in (False, True)}
    monkeypatch.setattr(sim, "BULK_MIN", 10**9)  # every event walked one by one
    assert sim.merge_events(x.numpy()[:, :, None]).bulk_mult is None
    walk = {ig: run(ig) for ig in (False, True)}
    out_e = walk[True][0]
    assert sum(int(c.sum()) for c in out_e.counts) > 100  # the network is active
    for ig in (False, True):
        out_b, gw_b, gx_b = bulk[ig]
        for a, b in zip(out_b.times, out_e.times, strict=True):
            assert torch.equal(torch.isfinite(a), torch.isfinite(b))
            torch.testing.assert_close(a[torch.isfinite(a)], b[torch.isfinite(b)], rtol=0, atol=1e-9)
        for a, b in zip(gw_b, walk[ig][1], strict=True):
            assert float(b.abs().max()) > 0
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bulk[True][2], walk[True][2], rtol=1e-9, atol=1e-12)  # input-time gradient
    assert bulk[False][2] is None
    for a, b in zip(walk[False][1], walk[True][1], strict=True):
        assert torch.equal(a, b)  # neuron-parallel vs sample-parallel kernel: the same bits


@pytest.mark.skipif(__import__("numba").config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_gradients_are_the_same_bits_on_one_and_two_threads():
    """The adjoint kernels run samples (or, for the first layer's weight gradient, neurons) in
    parallel but add per-sample contributions in sample order: any thread count gives the same
    bits (adjoint.py docstring). The batch is large enough for the parallel builds."""
    import numba

    g = torch.Generator().manual_seed(5)
    x = torch.rand(16, 200, generator=g, dtype=torch.float64) * 20.0
    x[torch.rand(16, 200, generator=g) < 0.5] = 20.0  # with a run of simultaneous inputs
    ws = [torch.empty(64, 200, dtype=torch.float64).uniform_(-0.02, 0.12, generator=g),
          torch.empty(10, 64, dtype=torch.float64).uniform_(-0.2, 0.8, generator=g)]  # fmt: skip

    def grads(threads, input_grad):
        numba.set_num_threads(threads)
        xi = x.clone().requires_grad_(input_grad)
        wi = [w.clone().requires_grad_(True) for w in ws]
        out = event_forward(xi, wi)
        t = torch.where(torch.isfinite(out.output), out.output, torch.zeros_like(out.output))
        t.square().sum().backward()
        return [w.grad for w in wi] + ([xi.grad] if input_grad else [])

    before = numba.get_num_threads()
    try:
        for input_grad in (False, True):
            one, two = grads(1, input_grad), grads(2, input_grad)
            assert float(one[0].abs().max()) > 0
            for a, b in zip(one, two, strict=True):
                assert torch.equal(a, b)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize(("seed", "n_in"), [(0, 60), (1, 60), (2, 6), (3, 2)])
def test_vectorised_forward_equals_the_per_neuron_path_to_the_bit(seed, n_in):
    """The forward kernel advances every neuron over a gap in one branch-free loop and sends only
    those that may cross (or spiked since the last input, or are capped) down the exact
    per-neuron path; the spikes, currents and counts must be those of sending every neuron down
    that path in every gap: bit for bit, with several spikes per neuron, inhibition,
    simultaneous inputs and capped neurons."""
    from sparsespike.eventprop.params import SolverOptions
    from sparsespike.eventprop.simulate import merge_events, simulate_layer

    rng = np.random.default_rng(seed)
    B, n_out = 8, 50
    x = rng.uniform(0, 25, (B, n_in))
    if n_in > 20:
        x[rng.random((B, n_in)) < 0.3] = 7.5  # simultaneous inputs (a bulk run in most samples)
        x[rng.random((B, n_in)) < 0.1] = np.inf  # silent inputs
    w = rng.normal(0.25, 0.5, (n_out, n_in)) * rng.uniform(0.2, 2.0, (n_out, 1)) * (60 / n_in)
    if n_in == 2:  # one kick, then a long gap: V peaks above threshold ~9 ms later and is back
        # below it by the next input (V(t1) < theta), which only the interior-maximum test catches
        x = np.stack([rng.uniform(0, 3, B), rng.uniform(26, 29, B)], axis=1)
        w = rng.uniform(4.0, 9.0, (n_out, n_in))
    ev = merge_events(x[:, :, None])
    opts = SolverOptions(max_spikes=6, on_overflow="ignore")
    fast = simulate_layer(ev, w, options=opts)
    ref = simulate_layer(ev, w, options=opts, _exact=True)  # every neuron on the exact path
    if n_in > 2:
        assert fast.counts.sum() > 5 * B and fast.counts.max() > 1 and fast.n_capped > 0  # a rich case
    else:
        assert 0 < (fast.times < 26).sum()  # spikes in the long gap
    np.testing.assert_array_equal(fast.counts, ref.counts)
    np.testing.assert_array_equal(fast.times, ref.times)
    np.testing.assert_array_equal(fast.currents, ref.currents)
    assert fast.n_capped == ref.n_capped
