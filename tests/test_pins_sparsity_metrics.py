"""Pins on the sparsity and metrics maths that the other suites left loose (mutation audit).

Every expected value here is computed independently of the code under test: literal paper
constants (Yin et al. KDD'21 Table 1 / Louizos et al. 2018), direct evaluations of the printed
equations, or hand counts on tiny inputs (DESIGN.md "Definitions").
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsespike.sparsity.connectivity import (
    HardConcreteGate,
    add_l0_gates,
    gates,
    l0_penalty,
    prune,
)

# Yin et al. KDD'21 sec. 4.2 and Table 1 (after Louizos et al. 2018): beta = 2/3, gamma = -0.1,
# zeta = 1.1, written out here rather than imported from the module under test
PAPER_BETA = 2.0 / 3.0
PAPER_GAMMA = -0.1
PAPER_ZETA = 1.1


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- hard-concrete gates (Yin eqs. 17-20)
def test_default_gate_uses_the_papers_constants() -> None:
    """Yin et al. eqs. 17-20 with the constants of Table 1, evaluated by hand for a default gate:
    ``P(b != 0) = sigma(log_alpha - beta log(-gamma/zeta)) = sigma(log_alpha + (2/3) ln 11)`` and the
    sample for a fixed ``u`` follows eqs. 17-19 with ``beta = 2/3``."""
    la = [-1.5, 0.0, 0.7, 2.0]
    g = HardConcreteGate((4,), dtype=torch.float64)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor(la, dtype=torch.float64))
    want_p = [_sig(a - PAPER_BETA * math.log(-PAPER_GAMMA / PAPER_ZETA)) for a in la]
    assert g.prob_nonzero().tolist() == pytest.approx(want_p, rel=1e-12)
    assert want_p[1] == pytest.approx(_sig(2.0 / 3.0 * math.log(11.0)), rel=1e-12)  # log(-gamma/zeta) = -ln 11
    u = [0.7, 0.5, 0.2, 0.05]
    g.u = torch.tensor(u, dtype=torch.float64)
    want_b = []
    for a, ui in zip(la, u, strict=True):
        s = _sig((math.log(ui) - math.log(1 - ui) + a) / PAPER_BETA)  # eq. 17
        want_b.append(min(1.0, max(0.0, s * (PAPER_ZETA - PAPER_GAMMA) + PAPER_GAMMA)))  # eqs. 18-19
    assert g.sample().tolist() == pytest.approx(want_b, rel=1e-12, abs=1e-15)
    assert 0.0 < want_b[0] < 1.0 and 0.0 < want_b[2] < 1.0  # interior points: beta really enters


def test_noise_is_drawn_from_the_eps_interval() -> None:
    """``u ~ U(eps, 1 - eps)`` (module doc; reference ``quantile_concrete``): with a wide ``eps``
    every draw lies in ``[eps, 1 - eps]``, both ends are approached, and the mean is 1/2."""
    eps = 0.25
    g = HardConcreteGate((50_000,), eps=eps, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g.resample()
    u = g.u
    assert float(u.min()) >= eps and float(u.max()) <= 1 - eps
    assert float(u.min()) < eps + 1e-3 and float(u.max()) > 1 - eps - 1e-3
    assert float(u.mean()) == pytest.approx(0.5, abs=5e-3)


@pytest.mark.parametrize(
    "kw",
    [{"beta": 0.0}, {"beta": -0.5}, {"gamma": 0.0}, {"zeta": 1.0}, {"eps": 0.0}, {"eps": 0.5}],
)
def test_gate_refuses_degenerate_constants(kw: dict) -> None:
    """beta > 0 (a temperature), gamma < 0 < 1 < zeta (the stretch that gives exact 0 and 1) and
    eps in (0, 1/2) (eps = 0 allows u = 0 and log 0)."""
    with pytest.raises(ValueError):
        HardConcreteGate((3,), **kw)


def test_l0_penalty_lam_argument_overrides_the_gates_own() -> None:
    """``l0_penalty(model, lam)`` = ``lam * sum sigma(log_alpha + (2/3) ln 11)`` (Yin eq. 20 with the
    lambda of eq. 14), whatever ``lam`` the gates were created with; ``None`` uses theirs."""
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    add_l0_gates(net, lam=0.1, seed=0)
    las = []
    for i, g in enumerate(gates(net)):
        with torch.no_grad():
            g.log_alpha.copy_(torch.linspace(-2.0, 2.0, g.log_alpha.numel()).reshape(g.log_alpha.shape) + i)
        las += g.log_alpha.detach().flatten().tolist()
    s = sum(_sig(a + PAPER_BETA * math.log(11.0)) for a in las)
    assert float(l0_penalty(net, lam=0.5).detach()) == pytest.approx(0.5 * s, rel=1e-6)
    assert float(l0_penalty(net).detach()) == pytest.approx(0.1 * s, rel=1e-6)


def test_seeded_gates_do_not_depend_on_the_global_rng() -> None:
    """DESIGN.md: randomness comes from an explicit seed. ``add_l0_gates(seed=s)`` must give the
    same initial ``log_alpha`` whatever the global torch RNG state is."""

    def init(global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(123)
        net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
        torch.manual_seed(global_seed)
        add_l0_gates(net, seed=7, init_std=0.5)
        return [g.log_alpha.detach().clone() for g in gates(net)]

    a, b = init(0), init(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_prune_writes_positive_zeros() -> None:
    """``prune`` bakes ``W_tilde * b_test``; where the gate is closed the weight is an exact +0.0
    (module doc), also where ``W_tilde < 0`` (``-w * 0 = -0.0`` otherwise)."""
    lin = nn.Linear(4, 3, bias=False)
    add_l0_gates(lin, modules=[lin], seed=0)
    (g,) = gates(lin)
    with torch.no_grad():
        lin.parametrizations.weight.original.copy_(-torch.ones(3, 4))
        g.log_alpha.copy_(torch.tensor([[-10.0, 10.0, -10.0, 10.0]] * 3))
    prune(lin)
    w = lin.weight.detach()
    assert torch.equal(w == 0, torch.tensor([[True, False, True, False]] * 3))
    assert not torch.signbit(w[w == 0]).any()
    assert torch.equal(w[w != 0], -torch.ones(6))


# ---------------------------------------------------------------- Allred et al. schedules (eqs. 4-8)
def _p_included(b: int, n: int, N: int) -> bool:
    """METHODS.md 5(d)2: in epoch ``n`` (1-based) of ``N`` a fraction ``p_n = (n-1)/(N-1)`` of the
    batches, batch ``b`` (0-based) included iff ``floor((b+1) p_n) > floor(b p_n)``; exact rationals."""
    from fractions import Fraction

    p = Fraction(n - 1, N - 1)
    return math.floor((b + 1) * p) > math.floor(b * p)


@pytest.mark.parametrize(("N", "nb"), [(4, 6), (7, 5)])
def test_per_batch_alternating_schedules_follow_the_batch_rule(N: int, nb: int) -> None:
    """Allred et al. eqs. 7-8 with the per-batch ``A`` of METHODS.md 5(d)2, evaluated for every
    (epoch, batch), batch 0 included (it follows the batch rule, not the per-epoch ``A(n)``)."""
    from sparsespike.sparsity.activity import alternating, alternating_linear

    s0 = 2e-3
    alt, alt_lin = alternating(s0, per_batch=True), alternating_linear(s0, per_batch=True)
    for n in range(1, N + 1):
        for b in range(nb):
            inc = 1.0 if _p_included(b, n, N) else 0.0
            assert alt(n, N, batch=b, n_batches=nb) == pytest.approx(inc * s0), (n, b)
            assert alt_lin(n, N, batch=b, n_batches=nb) == pytest.approx(inc * s0 * n / N), (n, b)


def test_a_single_epoch_run_always_includes_the_term() -> None:
    """Module doc: ``N = 1`` counts as the last epoch, where the term is always included
    (A(N) = 1), per epoch and per batch."""
    from sparsespike.sparsity.activity import alternating, alternating_linear, alternation, alternation_batch

    assert alternation(1, 1) is True
    assert all(alternation_batch(1, 1, b, 3) for b in range(3))
    assert alternating(0.5)(1, 1) == 0.5 and alternating_linear(0.5)(1, 1) == 0.5
    assert alternating(0.5, per_batch=True)(1, 1, batch=2, n_batches=3) == 0.5


@pytest.mark.parametrize("batch", [-1, 5, 6])
def test_per_batch_alternation_refuses_a_batch_outside_the_epoch(batch: int) -> None:
    """Batch indices are 0-based and below ``n_batches``."""
    from sparsespike.sparsity.activity import alternation_batch

    with pytest.raises(ValueError, match="batch"):
        alternation_batch(3, 5, batch, 5)


# ---------------------------------------------------------------- metrics (DESIGN.md "Definitions")
def _hand_net() -> nn.Sequential:
    """3 -> 2 integrate-and-fire layer (beta = 1, threshold 0.5, subtractive reset), 2 -> 2 readout."""
    from sparsespike.layers import LeakyReadout, SpikingLinear
    from sparsespike.neurons import LIFParams

    l1 = SpikingLinear(3, 2, LIFParams(beta=1.0, threshold=0.5))
    ro = LeakyReadout(2, 2, beta=1.0)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))  # nnz 3
        ro.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # nnz 2; hidden unit 0 fans out to 2
    return nn.Sequential(l1, ro)


def test_energy_constants_are_the_45nm_figures() -> None:
    """DESIGN.md: energy = SynOps x E_AC + non-spiking MACs x E_MAC, 45 nm: E_AC 0.9 pJ, E_MAC 4.6 pJ."""
    from sparsespike.metrics import E_AC_PJ, E_MAC_PJ, energy_pj

    assert (E_AC_PJ, E_MAC_PJ) == (0.9, 4.6)
    assert energy_pj(10.0, 3.0) == pytest.approx(10 * 0.9 + 3 * 4.6)
    assert energy_pj(10.0, 3.0, e_ac=1.0, e_mac=2.0) == pytest.approx(16.0)


def test_per_layer_flops_and_ns_by_hand() -> None:
    """T = 2, B = 2 binary input; every hidden unit spikes once per sample (see the comments).
    Per layer and per sample: dense FLOPs = 2 x nnz x T (layer 1: 2*3*2, readout: 2*2*2);
    <N_S> = spikes / neurons; energy = 0.9 pJ x SynOps (no non-spiking MACs)."""
    from sparsespike.metrics import measure

    x = torch.zeros(2, 2, 3)
    x[0, 0, 0] = 1  # sample 0: unit 0 fires at t0 (input 0), unit 1 at t1 (input 2)
    x[1, 0, 2] = 1
    x[0, 1, 0] = 1  # sample 1: both fire at t0
    x[0, 1, 1] = 1
    rep = measure(_hand_net(), [x])
    l1, ro = rep.layers
    assert l1["dense_flops"] == 12.0 and ro["dense_flops"] == 8.0
    assert l1["spikes"] == 2.0 and l1["neurons"] == 2 and l1["ns"] == 1.0
    assert l1["synops"] == 2.0 and ro["synops"] == 2.0  # 4 input spikes x fan-out 1 / 2; 2 x fan-out 2 / 2
    assert rep.energy_pj == pytest.approx(0.9 * 4.0)


def test_nonbinary_input_macs_are_per_sample_and_priced_at_e_mac() -> None:
    """Analog input 0.3 on every entry, T = 2, B = 2: layer 1 does nnz(W1) x T = 6 non-spiking MACs
    per sample. Its units (beta = 1, threshold 0.5, subtractive reset) see 0.3 and 0.6 per step:
    unit 0 fires at t1, unit 1 at t0 and t1; only unit 0 fans out (to 2), so the readout does
    2 SynOps per sample. Energy = 2 x 0.9 + 6 x 4.6 pJ."""
    from sparsespike.metrics import measure

    rep = measure(_hand_net(), [torch.full((2, 2, 3), 0.3)])
    assert rep.samples == 2
    assert rep.layers[0]["nonspiking_macs"] == 6.0 and rep.nonspiking_macs == 6.0
    assert rep.layers[0]["synops"] == 0.0 and rep.synops == 2.0
    assert rep.spike_count == 3.0
    assert rep.energy_pj == pytest.approx(2 * 0.9 + 6 * 4.6)


def test_activity_percent_by_hand() -> None:
    """Perez-Nieves eq. 13: activity = 100 x #(|V - thr| < B_th) / (B T N). Units 0-1 have zero
    weights (V = 0, |0 - 1| = 1 < B_th = 1.5: active), units 2-3 are driven to V <= -100 (never
    active): 50 %."""
    from sparsespike.layers import LeakyReadout, SpikingLinear
    from sparsespike.metrics import measure
    from sparsespike.neurons import LIFParams

    lay = SpikingLinear(1, 4, LIFParams(beta=0.9, threshold=1.0), b_th=1.5)
    with torch.no_grad():
        lay.weight.copy_(torch.tensor([[0.0], [0.0], [-100.0], [-200.0]]))
    net = nn.Sequential(lay, LeakyReadout(4, 2))
    rep = measure(net, [torch.ones(5, 3, 1)])
    assert rep.layers[0]["activity_pct"] == pytest.approx(50.0)
    assert rep.spike_count == 0.0


# ---------------------------------------------------------------- expected-FLOPs penalty (sparsity/flops.py)
def _open_frozen_conv(c_in: int) -> nn.Conv2d:
    """A gated 3x3 conv whose gates are all surely open and frozen: P(b != 0) = 1 exactly."""
    from sparsespike.sparsity.connectivity import freeze_gates

    conv = nn.Conv2d(c_in, 1, 3, bias=False)
    add_l0_gates(conv, modules=[conv], seed=0, init_mean=8.0, init_std=0.0)
    freeze_gates(conv)
    return conv


def test_flops_penalty_prices_each_input_size_of_one_conv() -> None:
    """A fully convolutional layer fed a 5x5 and a 7x7 frame in one pass (valid 3x3 conv, one
    channel, all 9 taps open): 9 x 3x3 + 9 x 5x5 = 81 + 225 MACs, i.e. 2 x 306 FLOPs per sample."""
    from sparsespike.sparsity.flops import ExpectedFlops

    conv = _open_frozen_conv(1)
    pen = ExpectedFlops(lam=1.0).attach(conv)
    conv.train()
    conv(torch.rand(1, 1, 5, 5))
    conv(torch.rand(1, 1, 7, 7))
    assert float(pen.value(1)) == pytest.approx(2.0 * (9 * 9 + 9 * 25))


def test_flops_penalty_of_an_unbatched_conv_input() -> None:
    """``nn.Conv2d`` accepts an unbatched ``[C, H, W]`` frame: one frame, not C of them. Two input
    channels, 3x3 valid conv on 4x4: 18 open taps x 4 output positions = 72 MACs = 144 FLOPs."""
    from sparsespike.sparsity.flops import ExpectedFlops

    conv = _open_frozen_conv(2)
    pen = ExpectedFlops(lam=1.0).attach(conv)
    conv.train()
    conv(torch.rand(2, 4, 4))
    assert float(pen.value(1)) == pytest.approx(2.0 * 18 * 4)
    conv(torch.rand(3, 2, 4, 4))  # a batch of 3 frames: three times as many per 1 sample
    assert float(pen.value(1)) == pytest.approx(3 * 2.0 * 18 * 4)


# ---------------------------------------------------------------- report.py: the paper's reductions
def test_paper_table2_reductions_against_both_baselines() -> None:
    """METHODS.md 5(b/c): the abstract's 73.3 % is 1 - 78,411 / 294,130 (Table 2's alternating row
    against *Table 1's* baseline); against Table 2's own baseline (276,586) it is 71.7 %."""
    from sparsespike import report

    rows = [r for r in report.paper_markdown("table2").splitlines() if "78,411" in r]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    own, vs_t1 = 100 * (1 - 78411 / 276586), 100 * (1 - 78411 / 294130)
    assert cells[-2:] == [f"{own:.1f} %", f"{vs_t1:.1f} %"] == ["71.7 %", "73.3 %"]


# ---------------------------------------------------------------- counting: reports and refusals
def test_sparsity_report_density_by_hand() -> None:
    """density = non-zero / weights per layer and overall (test-time gates): a plain Linear with 5
    of 12 weights zeroed, and a gated one with 2 of its 3 rows' gates closed (4 of 12 open)."""
    from sparsespike.sparsity.connectivity import sparsity_report

    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        a.weight.view(-1)[[0, 3, 5, 8, 11]] = 0.0
        b.weight.fill_(-2.0)
    net = nn.Sequential(a, b)
    add_l0_gates(net, modules=[b], seed=0)
    (g,) = gates(net)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([[9.0] * 4, [-9.0] * 4, [-9.0] * 4]))
    rep = sparsity_report(net)
    (ra, rb) = rep["layers"]
    assert (ra["weights"], ra["nonzero"], ra["density"]) == (12, 7, pytest.approx(7 / 12))
    assert (rb["weights"], rb["nonzero"], rb["density"]) == (12, 4, pytest.approx(4 / 12))
    assert rep["total"] == {"weights": 24, "nonzero": 11, "density": pytest.approx(11 / 24)}


def test_count_ops_refuses_a_grouped_conv() -> None:
    """count_ops counts a conv as if every output channel read every input channel; a grouped
    conv would be over-counted by the number of groups, so it is refused."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.connectivity import count_ops

    with pytest.raises(ConfigError, match="grouped"):
        count_ops(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), torch.ones(1, 2, 5, 5), batch_size=1, time_steps=1)


def test_flops_penalty_refuses_a_gated_weight_it_cannot_price() -> None:
    """A gated ``nn.Bilinear`` weight ([out, in1, in2]) is neither a conv nor an [out, in] matrix."""
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.flops import ExpectedFlops

    bil = nn.Bilinear(3, 2, 4)
    net = nn.Sequential(bil)
    add_l0_gates(net, modules=[bil], seed=0)
    with pytest.raises(ConfigError, match="neither a convolution"):
        ExpectedFlops(1.0).attach(net)


def test_conv_fanout_edge_cases() -> None:
    """A kernel larger than the input reaches no output: fan-out 0 everywhere. An even kernel
    with ``padding='same'`` pads asymmetrically (not modelled): refused."""
    from sparsespike.metrics import conv_fanout

    assert torch.equal(conv_fanout(torch.ones(2, 3, 5, 5), (3, 3)), torch.zeros(3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same"):
        conv_fanout(torch.ones(1, 1, 2, 2), (4, 4), padding="same")


def test_synops_penalty_on_a_non_square_conv_input() -> None:
    """Expected SynOps of a conv with surely-open/closed gates on a 4x6 input equals the hand
    count: every input spike times the outputs its impulse reaches through open taps (an impulse
    response per input position, computed with plain conv2d on the open-tap mask)."""
    from sparsespike.sparsity.synops import ExpectedSynOps

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1, stride=(1, 2), bias=False)
    add_l0_gates(conv, modules=[conv], seed=0)
    (g,) = gates(conv)
    open_ = torch.rand(2, 1, 3, 3) < 0.5
    open_[0, 0, 0, :] = True  # an asymmetric mask, so rows and columns differ
    open_[0, 0, 2, :] = False
    with torch.no_grad():
        g.log_alpha.copy_(torch.where(open_, 30.0, -30.0))
    pen = ExpectedSynOps(lam=1.0).attach(conv)
    x = (torch.rand(3, 1, 4, 6) < 0.4).float()  # per-step calls of a batch of 1, T = 3
    conv.train()
    for t in range(3):
        conv(x[t : t + 1])
    want = 0.0
    mask = open_.double()
    for y in range(4):
        for z in range(6):
            imp = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
            imp[0, 0, y, z] = 1.0
            fan = float(nn.functional.conv2d(imp, mask, padding=1, stride=(1, 2)).sum())
            want += float(x[:, 0, y, z].sum()) * fan
    assert want > 0
    assert float(pen.value(1).detach()) == pytest.approx(want, rel=1e-9)
