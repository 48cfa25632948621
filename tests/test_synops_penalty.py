"""Expected-SynOps penalty (sparsity/synops.py): hand counts, the metrics module, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sparsespike.errors import ConfigError
from sparsespike.layers import LeakyReadout, SeqFlatten, SpikingConv2d, SpikingLinear
from sparsespike.metrics import measure
from sparsespike.neurons import LIFParams
from sparsespike.sparsity.connectivity import add_l0_gates, gates, prune
from sparsespike.sparsity.synops import ExpectedSynOps, input_spike_counts
from sparsespike.train import LossContext, make_regularizer


def _ctx(model, n):
    return LossContext(0, 1, 0, 1, model, torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), None)


def _saturate(model, seed=0, frac=0.4):
    """log_alpha = +-30: every gate is (numerically) always on or always off, P in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(model):
            on = torch.rand(gate.log_alpha.shape, generator=g) > frac
            gate.log_alpha.copy_(torch.where(on, 30.0, -30.0))


@pytest.mark.parametrize("backward", ["dense", "sparse"])
def test_expected_synops_equals_measured_synops_at_saturated_gates(backward):
    """With every gate surely on or off, the penalty is the SynOps the metrics module counts
    on the pruned network (input spikes x surviving fan-out, layer by layer)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        SpikingLinear(30, 25, LIFParams(beta=0.9), weight_scale=3.0, backward=backward),
        SpikingLinear(25, 12, LIFParams(beta=0.9), weight_scale=3.0, backward=backward),
        LeakyReadout(12, 3),
    )
    add_l0_gates(net, seed=1)
    _saturate(net)
    pen = ExpectedSynOps(lam=1.0).attach(net)
    x = (torch.rand(20, 6, 30) < 0.2).float()
    net.train()
    net(x)
    parts = pen.terms(6)
    assert len(parts) == 3
    total = float(pen(_ctx(net, 6)).detach())
    net.eval()
    pruned = prune(net)
    rep = measure(pruned, [x])
    assert rep.synops > 0
    assert total == pytest.approx(rep.synops, rel=1e-5)
    for (name, v), layer in zip(parts.items(), rep.layers, strict=True):
        assert float(v.detach()) == pytest.approx(layer["synops"], rel=1e-5), name


def test_gradient_is_fanout_weighted():
    """d pen / d log_alpha_ji = lam n_i P (1 - P); d pen / d s_i(t) = lam fanout_i / B."""
    torch.manual_seed(1)
    lin = nn.Linear(7, 4, bias=False)
    add_l0_gates(lin, seed=0)
    (gate,) = gates(lin)
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 1.5)
    pen = ExpectedSynOps(lam=0.3).attach(lin)
    x = (torch.rand(5, 3, 7) < 0.5).float().requires_grad_(True)
    lin.train()
    lin(x)
    loss = pen(_ctx(lin, 3))
    loss.backward()
    p = gate.prob_nonzero().detach()
    n = x.detach().sum((0, 1)) / 3
    assert torch.allclose(gate.log_alpha.grad, 0.3 * n[None, :] * p * (1 - p), atol=1e-6)
    assert torch.allclose(x.grad, (0.3 * p.sum(0) / 3).expand_as(x), atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(0.3 * (n * p.sum(0)).sum().detach()), rel=1e-6)


def test_per_step_calls_are_summed_and_eval_is_not_recorded():
    lin = nn.Linear(5, 3)
    add_l0_gates(lin, seed=0)
    pen = ExpectedSynOps(lam=1.0).attach(lin)
    x = (torch.rand(4, 2, 5) < 0.5).float()
    lin.train()
    for t in range(4):  # a per-step loop (snnTorch style)
        lin(x[t])
    stepped = float(pen(_ctx(lin, 2)).detach())
    lin(x)
    whole = float(pen(_ctx(lin, 2)).detach())
    assert stepped == pytest.approx(whole, rel=1e-6) and whole > 0
    lin.eval()
    lin(x)
    assert float(pen(_ctx(lin, 2)).detach()) == 0.0
    pen.release()
    lin.train()
    lin(x)
    assert not pen._seen


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 1), (2, 0), (1, 0)])
def test_conv_penalty_equals_measured_synops_at_saturated_gates(stride, padding):
    """Borders and strides priced exactly: with every gate surely on or off, the conv layers'
    term is the SynOps that metrics counts on the pruned network (a stride-2 conv once charged
    each interior spike the whole kernel, ~stride^2 too much)."""
    torch.manual_seed(2)
    net = nn.Sequential(
        SpikingConv2d(2, 4, 3, LIFParams(beta=0.9), stride=stride, padding=padding, weight_scale=3.0),
        SpikingConv2d(4, 3, 3, LIFParams(beta=0.9), stride=stride, padding=padding, weight_scale=3.0),
        SeqFlatten(),
    )
    add_l0_gates(net, seed=1)
    _saturate(net, frac=0.3)
    pen = ExpectedSynOps(lam=1.0).attach(net)
    x = (torch.rand(6, 3, 2, 9, 9) < 0.3).float()
    net.train()
    net(x)
    parts = pen.terms(3)
    net.eval()
    rep = measure(prune(net), [x])
    conv_layers = [r for r in rep.layers if r["dense_flops"]]
    assert len(parts) == len(conv_layers) == 2 and rep.synops > 0
    for (name, v), layer in zip(parts.items(), conv_layers, strict=True):
        assert float(v.detach()) == pytest.approx(layer["synops"], rel=1e-5), name


def test_conv_charges_each_spike_the_kernel_fanout():
    conv = SpikingConv2d(2, 3, 3, LIFParams(beta=0.9), padding=1)
    net = nn.Sequential(conv, SeqFlatten())
    add_l0_gates(net, seed=0)
    (gate,) = gates(net)
    pen = ExpectedSynOps(lam=1.0).attach(net)
    x = torch.zeros(3, 2, 2, 6, 6)
    x[0, 0, 1, 2, 3] = 1  # interior: the bound is exact there
    x[1, 1, 0, 4, 4] = 1
    net.train()
    net(x)
    p = gate.prob_nonzero().detach()
    want = (p[:, 1].sum() + p[:, 0].sum()) / 2
    assert float(pen(_ctx(net, 2)).detach()) == pytest.approx(float(want), rel=1e-6)


def test_input_counts_from_an_attached_spike_list():
    from sparsespike.data.encoding import firing_time_raster

    imgs = (torch.rand(4, 3, 5) * 255).to(torch.uint8)
    x = firing_time_raster(imgs, T=20)  # [T, B, 3, 5] with its spike list
    got = input_spike_counts(x, 15, 4)
    assert torch.allclose(got, x.reshape(20, 4, 15).sum((0, 1)) / 4)


def test_config_and_errors():
    reg = make_regularizer({"name": "synops", "lam": "2e-6"})  # as YAML reads 2e-6
    assert isinstance(reg, ExpectedSynOps) and reg.lam == 2e-6
    with pytest.raises(ConfigError, match="lam"):
        make_regularizer({"name": "synops", "lam": -1.0})
    with pytest.raises(ConfigError, match="a number"):
        make_regularizer({"name": "synops", "lam": "small"})
    with pytest.raises(ConfigError, match="needs L0 gates"):
        ExpectedSynOps().attach(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="attach"):
        ExpectedSynOps()(_ctx(nn.Linear(3, 2), 1))


def test_busy_inputs_are_pruned_first():
    """Gates behind an input that spikes every step fall faster than those behind a rarely
    spiking one (the plain L0 term pulls both alike); with no task gradient the difference is
    the penalty's n_i weighting alone."""
    lin = nn.Linear(2, 8, bias=False)
    add_l0_gates(lin, seed=0, init_mean=2.0)
    (gate,) = gates(lin)
    pen = ExpectedSynOps(lam=1e-2).attach(lin)
    opt = torch.optim.SGD([gate.log_alpha], lr=1.0)
    x = torch.zeros(50, 4, 2)
    x[:, :, 0] = 1.0  # busy
    x[::10, :, 1] = 1.0  # 5 spikes per sample
    lin.train()
    for _ in range(30):
        lin(x)
        opt.zero_grad()
        pen(_ctx(lin, 4)).backward()
        opt.step()
    drop = 2.0 - gate.log_alpha.detach()  # init N(2, 0.01)
    assert float(drop[:, 1].min()) > 0  # the rare input's gates are still pulled down ...
    assert float(drop[:, 0].min()) > 5 * float(drop[:, 1].max())  # ... the busy one's 10x harder


def test_trainer_runs_the_penalty_and_releases_its_hooks(tmp_path):
    from sparsespike.config import load_config
    from sparsespike.train import Trainer

    cfg = load_config(
        "experiments/demo_yinyang.yaml",
        {"train.epochs": 1, "data.train_subset": 320, "model.gates": {"init_mean": 2.0, "seed": 0}},
    )
    reg = ExpectedSynOps(lam=1e-3)
    seen = []
    orig = reg.terms

    def spy(n):
        out = orig(n)
        seen.append(float(sum(out.values()).detach()))
        return out

    reg.terms = spy
    tr = Trainer(cfg, out_dir=tmp_path / "run", progress=False, regularizers=[reg])
    draws = []
    for g in gates(tr.model):  # the gates' forward hook draws the noise: once per batch, not twice
        orig_resample = g.resample
        g.resample = lambda gen=None, f=orig_resample: (draws.append(1), f(gen))
    tr.fit()
    assert len(seen) == 10 and all(v > 0 for v in seen)
    assert len(draws) == 10 * len(gates(tr.model))
    assert not reg._handles and not reg._seen


def test_ramp_raises_the_weight_linearly_over_the_phase():
    """``ramp_epochs = 2`` with 4 batches per epoch: lam x 1/8, 2/8, ..., 8/8 over the first two
    epochs' batches, then lam; the applied term is exactly that share of the un-ramped value."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 4, bias=False)
    add_l0_gates(lin, seed=0, init_mean=1.0)
    x = (torch.rand(6, 2, 3) < 0.5).float()
    ramped = ExpectedSynOps(lam=0.5, ramp_epochs=2).attach(lin)
    plain = ExpectedSynOps(lam=0.5).attach(lin)
    lin.train()
    lin(x)  # both hooks record the same input
    full = float(plain.value(2))
    assert full > 0
    shares = [ramped.ramp(e, b, 4) for e in range(3) for b in range(4)]
    assert shares == pytest.approx([k / 8 for k in range(1, 9)] + [1.0] * 4)
    ctx = LossContext(0, 5, 1, 4, lin, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), None)
    assert float(ramped(ctx)) == pytest.approx(full * 2 / 8)
    assert ExpectedSynOps(lam=1.0).ramp(0, 0, 100) == 1.0  # no ramp: full weight from the start
    reg = make_regularizer({"name": "synops", "lam": 1e-6, "ramp_epochs": "3"})
    assert reg.ramp_epochs == 3.0 and reg.ramp(0, 9, 10) == pytest.approx(1 / 3)
    for bad in (-1.0, float("nan"), float("inf"), "soon"):
        with pytest.raises(ConfigError, match="ramp_epochs"):
            make_regularizer({"name": "synops", "lam": 1e-6, "ramp_epochs": bad})
    with pytest.raises(ConfigError, match="ramp_epochs"):
        make_regularizer({"name": "flops", "lam": 1e-9, "ramp_epochs": -2})


def test_spike_counts_from_lists_equal_the_dense_sums_with_their_gradients():
    """``kernels.sparse.spike_counts`` reads a sparse layer's spike list instead of the dense
    ``[T, B, F]`` tensor: same counts (per sample and in all) and the same gradient as the sums."""
    from sparsespike.kernels.sparse import attach_spike_list, get_meta, spike_counts, spike_list

    torch.manual_seed(3)
    lay = SpikingLinear(40, 30, LIFParams(beta=0.9), weight_scale=4.0, backward="sparse")
    x = (torch.rand(25, 6, 40) < 0.2).float()
    wa, wb = torch.randn(30), torch.randn(6, 30)
    grads = []
    for use_list in (True, False):
        lay.zero_grad()
        s = lay(x)
        if use_list:
            assert get_meta(s) is not None and get_meta(s).spike_list() is not None
        else:
            s = s * 1.0  # a new tensor: no spike list, the dense sums
            assert get_meta(s) is None
        tot, per = spike_counts(s), spike_counts(s, per_sample=True)
        assert torch.equal(tot, s.detach().sum((0, 1))) and torch.equal(per, s.detach().sum(0))
        assert float(tot.sum()) > 0
        ((wa * tot).sum() + (wb * per).sum()).backward()
        grads.append(lay.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    # non-binary values and a conv-shaped input: counted with their values, per input position
    v = torch.rand(7, 3, 2, 4, 4) * (torch.rand(7, 3, 2, 4, 4) < 0.3)
    attach_spike_list(v, spike_list(v.reshape(7, 3, 32)), (7, 3, 32))
    assert torch.allclose(spike_counts(v, per_sample=True), v.reshape(7, 3, 32).sum(0))
    assert torch.allclose(input_spike_counts(v, 2, 3, conv=True), v.sum((0, 1)) / 3)  # per position
    with pytest.raises(ValueError, match="spike_counts"):
        spike_counts(torch.zeros(3, 4))


def test_detach_spikes_prices_the_gates_only_with_the_same_value():
    """``detach_spikes=True``: the same E[SynOps] (counted from the sparse layers' spike lists),
    the same gate gradients, and no gradient through the spikes."""
    torch.manual_seed(4)
    net = nn.Sequential(
        SpikingLinear(30, 25, LIFParams(beta=0.9), weight_scale=4.0, backward="sparse"),
        SpikingLinear(25, 12, LIFParams(beta=0.9), weight_scale=4.0, backward="sparse"),
    )
    add_l0_gates(net, seed=1, resample="manual")
    x = (torch.rand(20, 6, 30) < 0.2).float()
    out = {}
    for detach in (False, True):
        pen = ExpectedSynOps(lam=1.0, detach_spikes=detach).attach(net)
        net.zero_grad()
        net.train()
        net(x)
        val = pen(_ctx(net, 6))
        val.backward()
        gate_grads = [g.log_alpha.grad.clone() for g in gates(net)]
        w0 = net[0].parametrizations.weight.original.grad
        out[detach] = (float(val.detach()), gate_grads, None if w0 is None else w0.clone())
        pen.release()
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6) and out[True][0] > 0
    for a, b in zip(out[True][1][1:], out[False][1][1:], strict=True):  # layer 2's gates see layer 1's spikes
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert out[False][2] is not None and out[False][2].abs().sum() > 0  # spikes carry the fan-out price to W1
    assert out[True][2] is None or out[True][2].abs().sum() == 0


def test_count_gradients_enter_the_producing_layer_like_the_dense_sums():
    """A sparse layer returns its per-sample spike counts beside its spikes: a regulariser on
    ``spike_counts`` then sends its gradient straight into that layer's backward instead of a
    dense ``[T, B, N]`` one summed with the next layer's COO gradient. With the next layer
    consuming the same spikes, every weight gradient equals the one through the dense sums."""
    from sparsespike.kernels.sparse import get_meta, spike_counts

    torch.manual_seed(5)
    p = LIFParams(beta=0.9)
    l1 = SpikingLinear(40, 30, p, weight_scale=4.0, backward="sparse", b_th=0.5)
    l2 = SpikingLinear(30, 20, p, weight_scale=4.0, backward="sparse", b_th=0.5)
    x = (torch.rand(25, 6, 40) < 0.2).float()
    wa, wb, wc = torch.randn(6, 30), torch.randn(30), torch.randn(6, 20)
    grads = []
    for fast in (True, False):
        l1.zero_grad()
        l2.zero_grad()
        s1 = l1(x)
        assert get_meta(s1).counts is not None
        s2 = l2(s1)
        if fast:
            c1, t1, c2 = spike_counts(s1, per_sample=True), spike_counts(s1), spike_counts(s2, per_sample=True)
            assert c1.grad_fn is not None and "Counts" not in type(c1.grad_fn).__name__
        else:
            c1, t1, c2 = s1.sum(0), s1.sum((0, 1)), s2.sum(0)
        loss = (wa * c1).sum() + (wb * t1).sum() + ((wc * c2).sum()) ** 2
        loss.backward()
        grads.append((l1.weight.grad.clone(), l2.weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        assert float(a.abs().max()) > 0
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # counted under no_grad (detach_spikes): no graph
    s1 = l1(x)
    with torch.no_grad():
        assert spike_counts(s1, per_sample=True).grad_fn is None


def test_two_sparse_consumers_sum_their_coo_gradients_without_densifying(monkeypatch):
    """Two sparse layers reading the same spikes each return a COO gradient on its active set;
    the autograd engine's sum is read back at the entries (no ``to_dense``) and gives the sum of
    the two separate gradients."""

    torch.manual_seed(6)
    p = LIFParams(beta=0.9)
    l1 = SpikingLinear(40, 30, p, weight_scale=4.0, backward="sparse", b_th=0.5)
    la = SpikingLinear(30, 10, p, weight_scale=4.0, backward="sparse", b_th=0.5)
    lb = SpikingLinear(30, 12, p, weight_scale=4.0, backward="sparse", b_th=0.5)
    x = (torch.rand(25, 6, 40) < 0.2).float()
    wa, wb = torch.randn(25, 6, 10), torch.randn(25, 6, 12)
    s1 = l1(x)
    la_out, lb_out = la(s1), lb(s1)
    (ga,) = torch.autograd.grad((wa * la_out).sum(), l1.weight, retain_graph=True)
    (gb,) = torch.autograd.grad((wb * lb_out).sum(), l1.weight, retain_graph=True)
    densified = []
    orig = torch.Tensor.to_dense
    monkeypatch.setattr(torch.Tensor, "to_dense", lambda self, *a, **k: densified.append(1) or orig(self, *a, **k))
    (g,) = torch.autograd.grad((wa * la_out).sum() + (wb * lb_out).sum(), l1.weight)
    assert not densified
    assert float(ga.abs().max()) > 0 and float(gb.abs().max()) > 0
    assert torch.allclose(g, ga + gb, rtol=1e-5, atol=1e-6)


def _flat(d, prefix=""):
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


@pytest.mark.parametrize(
    ("config", "overrides", "run"),
    [
        ("fmnist_combined_ref.yaml", {"model.gates.seed": 9}, "fmnist_combined_25ep_b128_bth0.4_fup2_3.5e-5_s9"),
        ("fmnist_ce.yaml", {"train.epochs": 15}, "fmnist_ce15_s9"),
    ],
)
def test_the_ten_seed_fmnist_recipe_is_the_config_that_ran(config, overrides, run):
    """The README's ten-seed F-MNIST table (docs/combined.md) was made with these configs and the
    documented --seed / --set: every setting equals the config recorded in the run's run.json."""
    import json

    from sparsespike.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "experiments" / config, {"seed": 9, **overrides}).to_dict()
    ran = json.loads((root / "docs" / "results" / run / "run.json").read_text())["config"]
    mine, theirs = _flat(cfg), _flat(ran)
    keys = (set(mine) | set(theirs)) - {"name", "notes"}
    diff = {k: (mine.get(k), theirs.get(k)) for k in keys if mine.get(k) != theirs.get(k)}
    assert diff == {}


def test_budget_is_a_hinge_on_the_expected_cost():
    """``budget = C``: ``lam * max(0, E - C)``, with the plain term's gradient above ``C`` and
    none below; the epoch statistics are the sample-weighted mean of the un-hinged cost."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 4, bias=False)
    add_l0_gates(lin, seed=0, init_mean=1.0)
    (gate,) = gates(lin)
    x = (torch.rand(6, 2, 3) < 0.5).float()
    plain = ExpectedSynOps(lam=0.5).attach(lin)
    lin.train()
    lin(x)
    cost_t = plain.value(2) / 0.5
    cost = float(cost_t.detach())
    (g_plain,) = torch.autograd.grad(cost_t, gate.log_alpha)
    assert cost > 1
    for budget, want in ((cost - 1.0, 0.5), (cost + 1.0, 0.0), (1e-9, 0.5 * cost)):
        pen = ExpectedSynOps(lam=0.5, budget=budget).attach(lin)
        lin(x)
        v = pen.value(2)
        assert float(v) == pytest.approx(want, rel=1e-6)
        (g,) = torch.autograd.grad(v, gate.log_alpha, allow_unused=True)
        if budget < cost:
            torch.testing.assert_close(g, 0.5 * g_plain)
        else:  # below the budget: no pull on the gates at all
            assert g is None or float(g.abs().max()) == 0.0
        assert pen.epoch_stats() == pytest.approx((2 * cost, 2.0))  # un-hinged cost x samples
        assert pen.epoch_stats() == (0.0, 0.0)  # reset by the call
        pen.release()
    reg = make_regularizer({"name": "synops", "lam": 1e-6, "budget": "2e4"})
    assert reg.budget == 2e4 and make_regularizer({"name": "synops", "lam": 1e-6}).budget is None
    assert make_regularizer({"name": "flops", "lam": 1e-9, "budget": 5e6}).budget == 5e6
    for bad in (-1.0, 0.0, float("nan"), "many"):
        with pytest.raises(ConfigError, match="budget"):
            make_regularizer({"name": "synops", "lam": 1e-6, "budget": bad})
    with pytest.raises(ConfigError, match="dual_lr needs a budget"):
        make_regularizer({"name": "synops", "lam": 1e-6, "dual_lr": 0.1})
    with pytest.raises(ConfigError, match="dual_lr"):
        make_regularizer({"name": "flops", "lam": 1e-9, "budget": 1e6, "dual_lr": -0.1})
    for bad in (1.0, -0.5):
        with pytest.raises(ConfigError, match="dual_avg"):
            make_regularizer({"name": "synops", "lam": 1e-6, "budget": 1e4, "dual_lr": 0.1, "dual_avg": bad})


def _gated_demo(reg: dict):
    """The demo Yin-Yang network with seeded L0 gates, 6 short epochs, and one penalty."""
    from sparsespike.config import load_config

    return load_config(
        "experiments/demo_yinyang.yaml",
        {
            "train.epochs": 6,
            "data.train_subset": 640,
            "model.gates": {"init_mean": 3.0, "seed": 0, "lr": 0.2},
            "train.regularizers": [reg],
        },
    )


def _gated_demo_log(tmp_path, name: str, reg: dict) -> list[dict]:
    """Train :func:`_gated_demo` into ``tmp_path / name``; its epoch records."""
    import json

    from sparsespike.train import Trainer

    Trainer(_gated_demo(reg), out_dir=tmp_path / name, progress=False).fit()
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]


def test_a_budgeted_run_prunes_to_the_budget_and_logs_its_cost(tmp_path):
    """The same short gated run with the plain penalty and with a budget between its first and
    last epochs' costs: the budgeted run stops pruning at its budget (Adam's momentum carries it
    somewhat below, never above), the plain one goes on far below, and each epoch record
    carries the mean expected SynOps."""

    def run(name, reg):
        return [r["train_expected_synops"] for r in _gated_demo_log(tmp_path, name, reg)]

    plain = run("plain", {"name": "synops", "lam": 1e-2})
    assert plain[-1] < 0.4 * plain[0]  # the plain penalty keeps pruning
    budget = 0.55 * plain[0]
    capped = run("capped", {"name": "synops", "lam": 1e-2, "budget": budget})
    assert capped[0] == pytest.approx(plain[0], rel=1e-6)  # same first epoch: still above the budget
    assert all(0.75 * budget < c <= 1.02 * budget for c in capped[-3:]), (capped, budget)
    assert capped[-1] > 1.3 * plain[-1]


def test_dual_step_by_hand():
    """Gallego-Posada et al.'s ascent on the normalised defect, clipped at 1, and the dual restart."""
    from sparsespike.sparsity.gate_penalty import dual_step

    assert dual_step(1.0, 150.0, 100.0, 0.2) == pytest.approx(1.1)  # 1 + 0.2 * 0.5
    assert dual_step(1.0, 1000.0, 100.0, 0.2) == pytest.approx(1.2)  # defect 9 clipped to 1
    assert dual_step(3.0, 100.0, 100.0, 0.2) == 0.0  # constraint holds (at equality): restart
    assert dual_step(3.0, 40.0, 100.0, 0.2) == 0.0


def test_dual_budget_term_multiplier_and_checkpoint_state():
    """``lam * mu * (cost - C)`` with the multiplier before the batch's step; mu follows
    dual_step on the running mean of the batches' costs (a single cheap batch does not restart
    it), round-trips through checkpoint_state/restore_state, and the gradient is ``lam * mu``
    times the cost's."""
    from sparsespike.sparsity.gate_penalty import COST_AVG, dual_step

    torch.manual_seed(0)
    lin = nn.Linear(3, 4, bias=False)
    add_l0_gates(lin, seed=0, init_mean=1.0)
    (gate,) = gates(lin)
    xs = [(torch.rand(6, 2, 3) < p).float() for p in (0.9, 0.8, 0.1, 0.9)]
    plain = ExpectedSynOps(lam=1.0).attach(lin)
    lin.train()
    costs, grads = [], []
    for x in xs:
        lin(x)
        c = plain.value(2)
        costs.append(float(c.detach()))
        grads.append(torch.autograd.grad(c, gate.log_alpha)[0])
    plain.release()
    budget = 0.5 * (max(costs) + min(costs))
    assert min(costs) < budget < max(costs) and costs[2] < budget  # the third batch is under budget
    pen = ExpectedSynOps(lam=0.5, budget=budget, dual_lr=0.3).attach(lin)
    assert pen.mu == 1.0 and pen.checkpoint_state() == {"mu": 1.0, "avg": None}
    mu, avg, restarted = 1.0, None, False
    for x, c, g_plain in zip(xs, costs, grads, strict=True):
        lin(x)
        v = pen.value(2)
        assert float(v) == pytest.approx(0.5 * mu * (c - budget), rel=1e-6, abs=1e-9)
        if mu > 0:
            torch.testing.assert_close(torch.autograd.grad(v, gate.log_alpha)[0], 0.5 * mu * g_plain)
        avg = c if avg is None else COST_AVG * avg + (1 - COST_AVG) * c
        mu = dual_step(mu, avg, budget, 0.3)
        restarted |= mu == 0.0
        assert pen.mu == pytest.approx(mu) and pen.avg == pytest.approx(avg)
    assert mu > 0 and not restarted  # the running mean stays over budget through the cheap third batch
    state = pen.checkpoint_state()
    other = ExpectedSynOps(lam=0.5, budget=budget, dual_lr=0.3)
    other.restore_state(state)
    assert other.mu == pytest.approx(mu) and other.avg == pytest.approx(avg)
    with pytest.raises(ConfigError, match="multiplier"):
        other.restore_state({})
    hinge = ExpectedSynOps(lam=0.5, budget=budget)
    assert hinge.mu is None and hinge.checkpoint_state() == {}
    hinge.restore_state({})  # nothing to restore


def test_dual_budget_reaches_a_budget_the_plain_term_does_not(tmp_path):
    """A weak penalty levels off far above a budget; the same weight with the dual form gets
    the run to it (the last epochs at most 20 % under it, never over), logs the multiplier, and
    a run stopped after 3 epochs and resumed ends with the same weights and multiplier as the
    whole run."""
    from sparsespike.train import Trainer, load_checkpoint

    def run(name, reg):
        return _gated_demo_log(tmp_path, name, reg)

    weak = {"name": "synops", "lam": 1e-3}
    plain_recs = run("plain", weak)
    plain = [r["train_expected_synops"] for r in plain_recs]
    budget = 0.5 * plain[0]
    assert plain[-1] > 1.4 * budget  # the weak penalty levels off far above the budget
    dual = {**weak, "budget": budget, "dual_lr": 0.3, "dual_avg": 0.8}  # 20 batches per epoch
    recs = run("dual", dual)
    got = [r["train_expected_synops"] for r in recs]
    assert all(0.8 * budget < c <= 1.02 * budget for c in got[-2:]), (got, budget)
    assert all("train_expected_synops_mu" in r for r in recs)
    assert all(r["train_expected_synops_budget"] == budget for r in recs)  # logged for the curves
    assert "train_expected_synops_budget" not in plain_recs[0]
    cfg = _gated_demo(dual)
    steps = Trainer(cfg, out_dir=tmp_path / "resumed", progress=False).epochs()
    for _ in range(3):  # stop after 3 of the 6 epochs, as a crash would
        next(steps)
    steps.close()
    Trainer(cfg, out_dir=tmp_path / "resumed", progress=False, resume=True).fit()
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("dual", "resumed"))
    assert a["terms"] == b["terms"] and a["terms"][-1]["mu"] >= 0
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0)


def test_scheduled_budget_by_hand():
    """Zhu & Gupta's cubic schedule applied to a cost: C + (C0 - C)(1 - p)^3, C from p = 1 on."""
    from sparsespike.sparsity.gate_penalty import scheduled_budget

    assert scheduled_budget(100.0, 900.0, 0.0) == 900.0
    assert scheduled_budget(100.0, 900.0, 0.5) == pytest.approx(100.0 + 800.0 * 0.125)
    assert scheduled_budget(100.0, 900.0, 0.9) == pytest.approx(100.0 + 800.0 * 0.001)
    assert scheduled_budget(100.0, 900.0, 1.0) == scheduled_budget(100.0, 900.0, 3.0) == 100.0
    assert scheduled_budget(100.0, 50.0, 0.2) == 100.0  # already under budget: never below C


def test_budget_schedule_term_start_multiplier_and_state():
    """With ``budget_epochs`` the first batch's cost becomes C0, each batch is priced against the
    scheduled budget at its progress (hinge and dual form), the multiplier starts at 0, and C0
    round-trips through the checkpoint state; a set ``budget_start`` is used as given."""
    from sparsespike.sparsity.gate_penalty import COST_AVG, dual_step, scheduled_budget

    torch.manual_seed(0)
    lin = nn.Linear(3, 4, bias=False)
    add_l0_gates(lin, seed=0, init_mean=1.0)
    x = (torch.rand(6, 2, 3) < 0.9).float()
    lin.train()
    plain = ExpectedSynOps(lam=1.0).attach(lin)
    lin(x)
    cost = float(plain.value(2).detach())
    plain.release()
    final = 0.25 * cost
    hinge = ExpectedSynOps(lam=0.5, budget=final, budget_epochs=2).attach(lin)
    assert hinge.start is None and hinge.budget_at(0.3) == final  # C0 not known yet
    for p in (0.1, 0.6):
        lin(x)
        v = float(hinge.value(2, progress=p).detach())
        assert hinge.start == pytest.approx(cost)
        want = scheduled_budget(final, cost, p)
        assert hinge.in_force == pytest.approx(want)
        assert v == pytest.approx(0.5 * max(0.0, cost - want), rel=1e-6, abs=1e-9)
    assert hinge.checkpoint_state() == {"start": pytest.approx(cost)}
    dual = ExpectedSynOps(lam=0.5, budget=final, dual_lr=0.3, budget_epochs=2).attach(lin)
    assert dual.mu == 0.0  # the schedule, not the plain term, sets the pace
    mu, avg = 0.0, None
    for p in (0.1, 0.2, 0.3):
        lin(x)
        v = float(dual.value(2, progress=p).detach())
        budget = scheduled_budget(final, cost, p)
        assert v == pytest.approx(0.5 * mu * (cost - budget), rel=1e-6, abs=1e-9)
        avg = cost if avg is None else COST_AVG * avg + (1 - COST_AVG) * cost
        mu = dual_step(mu, avg, budget, 0.3)
        assert dual.mu == pytest.approx(mu)
    assert mu > 0
    state = dual.checkpoint_state()
    assert state["start"] == pytest.approx(cost) and state["mu"] == pytest.approx(mu)
    other = ExpectedSynOps(lam=0.5, budget=final, dual_lr=0.3, budget_epochs=2)
    other.restore_state(state)
    assert other.start == pytest.approx(cost) and other.budget_at(0.5) == pytest.approx(dual.budget_at(0.5))
    with pytest.raises(ConfigError, match="start cost"):
        other.restore_state({"mu": 1.0, "avg": None})
    given = ExpectedSynOps(lam=0.5, budget=final, budget_epochs=2, budget_start=2 * cost).attach(lin)
    lin(x)
    given.value(2, progress=0.5)
    assert given.start == 2 * cost and given.in_force == pytest.approx(final + (2 * cost - final) / 8)
    for bad, match in (
        ({"budget_epochs": 3}, "set budget too"),
        ({"budget": 1e4, "budget_start": 5e4}, "budget_start needs budget_epochs"),
        ({"budget": 1e4, "budget_epochs": -1}, "budget_epochs"),
        ({"budget": 1e4, "budget_epochs": 2, "budget_start": 0.0}, "budget_start"),
    ):
        with pytest.raises(ConfigError, match=match):
            make_regularizer({"name": "synops", "lam": 1e-6, **bad})
    assert make_regularizer({"name": "flops", "lam": 1e-9, "budget": 1e6, "budget_epochs": 2}).budget_epochs == 2


def test_a_budget_schedule_longer_than_its_phase_is_refused_before_training(tmp_path):
    """The budget would never be in force: the trainer says so when it is built (before any
    epoch, for a later phase too), and a schedule as long as its phase is accepted."""
    from sparsespike.train import Trainer

    reg = {"name": "synops", "lam": 1e-3, "budget": 100.0, "budget_epochs": 7}
    with pytest.raises(ConfigError, match=r"budget_epochs 7 is longer than the phase \(6 epochs\)"):
        Trainer(_gated_demo(reg), out_dir=tmp_path / "a", progress=False)
    cfg = _gated_demo({"name": "activity_bounds"})
    cfg.train.phases = [
        {"name": "warm", "epochs": 2},
        {"name": "prune", "epochs": 4, "regularizers": [{**reg, "budget_epochs": 5}]},
    ]
    with pytest.raises(ConfigError, match="phase 'prune'"):
        Trainer(cfg, out_dir=tmp_path / "b", progress=False)
    Trainer(_gated_demo({**reg, "budget_epochs": 6}), out_dir=tmp_path / "c", progress=False)


def test_a_scheduled_budget_prunes_gradually_to_it_and_resumes_exactly(tmp_path):
    """The dual budget of the demo run, once set from the first batch and once lowered over 4 of
    the 6 epochs: the scheduled run prunes less in its first epoch, logs the schedule's value at
    each epoch's end, ends at the budget (at most 20 % under, never over), and a run stopped after
    2 epochs and resumed ends with the same weights and schedule as the whole run."""
    from sparsespike.sparsity.gate_penalty import scheduled_budget
    from sparsespike.train import Trainer, load_checkpoint

    weak = {"name": "synops", "lam": 1e-3}
    first = _gated_demo_log(tmp_path, "plain", weak)[0]["train_expected_synops"]
    budget = 0.5 * first
    dual = {**weak, "budget": budget, "dual_lr": 0.3, "dual_avg": 0.8}
    at_once = [r["train_expected_synops"] for r in _gated_demo_log(tmp_path, "at_once", dual)]
    # a multiplier that starts at 0 has to catch up with a moving budget: a faster dual_lr
    sched = {**dual, "dual_lr": 1.0, "budget_epochs": 4}
    recs = _gated_demo_log(tmp_path, "scheduled", sched)
    got = [r["train_expected_synops"] for r in recs]
    start = load_checkpoint(tmp_path / "scheduled" / "last.pt")["terms"][-1]["start"]
    assert start > budget
    for e, r in enumerate(recs):  # the budget in force after the epoch's last batch
        assert r["train_expected_synops_budget"] == pytest.approx(scheduled_budget(budget, start, (e + 1) / 4))
    assert got[0] > at_once[0]  # gradual: less pruned after the first epoch than the budget at once
    assert all(0.8 * budget < c <= 1.02 * budget for c in got[-2:]), (got, budget)
    cfg = _gated_demo(sched)
    steps = Trainer(cfg, out_dir=tmp_path / "resumed", progress=False).epochs()
    for _ in range(2):
        next(steps)
    steps.close()
    Trainer(cfg, out_dir=tmp_path / "resumed", progress=False, resume=True).fit()
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("scheduled", "resumed"))
    assert a["terms"] == b["terms"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0)
