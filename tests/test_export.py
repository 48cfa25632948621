"""NIR export: round trips through a .nir file (nir.read), our importer, a reference simulator
of the NIR equations, and snnTorch's / Norse's NIR importers where they are installed."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir", reason="the optional 'nir' package is not installed")

from sparsespike.export import (  # noqa: E402
    ExportError,
    add_export_parser,
    decay_to_tau,
    export_nir,
    import_nir,
    lif_to_nir,
    load_trained_model,
    simulate_nir,
    step_gain,
    tau_to_decay,
)
from sparsespike.layers import (  # noqa: E402
    LeakyReadout,
    SeqFlatten,
    SeqPool2d,
    SpikeCountReadout,
    SpikingConv2d,
    SpikingLinear,
)
from sparsespike.neurons import LIFParams  # noqa: E402


def lif(**kw) -> LIFParams:
    return LIFParams(**{"beta": 0.9, "threshold": 0.5, "reset": "zero", **kw})


def conv_net(reset: str = "zero") -> nn.Sequential:
    """Conv (LIF) -> max pool -> conv (CubaLIF) -> avg pool -> flatten -> linear -> readout."""
    torch.manual_seed(0)
    net = nn.Sequential(
        SpikingConv2d(2, 4, 3, lif(), impl="torch", weight_scale=3.0),
        SeqPool2d(2, "max"),
        SpikingConv2d(4, 4, 3, lif(beta=0.8, alpha=0.5), padding=1, impl="torch", weight_scale=3.0),
        SeqPool2d(2, "avg"),
        SeqFlatten(),
        SpikingLinear(16, 8, lif(beta=0.95, threshold=0.3, reset=reset), bias=True, impl="torch",
                      weight_scale=5.0),
        LeakyReadout(8, 3, beta=0.85, mode="max"),
    )  # fmt: skip
    with torch.no_grad():
        net[5].weight[:, :5] = 0.0  # a pruned block: exact zeros
        net[5].bias.uniform_(-0.1, 0.1)
    return net


def spike_input(shape, T=16, B=3, p=0.3, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, *shape, generator=g) < p).float()


def run_recording(net: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    rec: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, i=i: rec.__setitem__(i, o.detach())) for i, m in enumerate(net)]
    with torch.no_grad():
        y = net(x)
    for h in hooks:
        h.remove()
    return y, rec


# --------------------------------------------------------------------- parameter mapping
@pytest.mark.parametrize("mapping", ["euler", "exp"])
def test_mapping_inverts_and_has_unit_gain(mapping):
    for beta in (0.5, 0.9, 0.99):
        for dt in (1.0, 1e-3):
            tau = decay_to_tau(beta, dt, mapping)
            assert tau_to_decay(tau, dt, mapping) == pytest.approx(beta, rel=1e-12)
            kind, kw = lif_to_nir(LIFParams(beta=beta, threshold=0.7), (3,), dt, mapping)
            assert kind == "LIF"
            assert np.allclose(step_gain(kw["tau"], kw["r"], dt, mapping), 1.0, rtol=1e-12)
            assert np.all(kw["v_threshold"] == 0.7) and np.all(kw["v_reset"] == 0)
    assert decay_to_tau(0.9, 1.0, "euler") == pytest.approx(10.0)  # dt / (1 - beta)
    assert decay_to_tau(0.9, 1.0, "exp") == pytest.approx(-1 / np.log(0.9))  # -dt / ln beta


def test_neuron_kinds():
    assert lif_to_nir(LIFParams(beta=1.0), (2,))[0] == "IF"
    assert lif_to_nir(LIFParams(beta=0.9, alpha=0.0), (2,))[0] == "LIF"  # alpha 0 == no current
    kind, kw = lif_to_nir(LIFParams(beta=0.8, alpha=0.6), (2,), dt=1e-4)
    assert kind == "CubaLIF"
    assert np.allclose(kw["tau_syn"], 1e-4 / 0.4) and np.allclose(kw["w_in"], 1 / 0.4)
    with pytest.raises(ExportError, match="CubaLIF"):
        lif_to_nir(LIFParams(beta=1.0, alpha=0.5), (2,))
    with pytest.raises(ExportError, match="euler"):
        decay_to_tau(0.0, 1.0, "exp")


# --------------------------------------------------------------------- file round trip
def test_file_round_trip_reference_simulator_gives_same_spikes(tmp_path):
    net = conv_net(reset="subtract")
    path = tmp_path / "net.nir"
    with pytest.warns(UserWarning, match="subtractive reset"):
        export_nir(net, (2, 10, 10), path)
    g = nir.read(str(path))
    assert {type(n).__name__ for n in g.nodes.values()} >= {
        "Conv2d", "LIF", "SumPool2d", "Threshold", "CubaLIF", "AvgPool2d", "Flatten", "Affine", "LI",
    }  # fmt: skip
    x = spike_input((2, 10, 10))
    y, rec = run_recording(net, x)
    sim = simulate_nir(g, x)  # honours metadata reset='subtract'
    for i, name in [(0, "lif0"), (1, "pool1_thr"), (2, "lif2"), (5, "lif5")]:
        assert rec[i].sum() > 0, name
        assert np.array_equal(rec[i].numpy(), sim[name]), name
    assert np.allclose(sim["output"].max(0), y.numpy(), atol=1e-5)
    # zeros of a pruned weight stay exact zeros in the file
    w = np.asarray(g.nodes["fc5"].weight)
    assert w.dtype == np.float32 and np.all(w[:, :5] == 0) and np.count_nonzero(w[:, 5:]) == w[:, 5:].size
    assert np.array_equal(w, net[5].weight.detach().numpy())


@pytest.mark.parametrize("mapping,dt", [("euler", 1.0), ("exp", 1.0), ("euler", 1e-3)])
def test_pure_nir_semantics_reproduce_zero_reset_model(mapping, dt):
    """No metadata used: the NIR equations, discretised as the mapping says, give our spikes."""
    net = conv_net(reset="zero")
    g = export_nir(net, (2, 10, 10), dt=dt, mapping=mapping)
    x = spike_input((2, 10, 10), seed=2)
    y, rec = run_recording(net, x)
    sim = simulate_nir(g, x, reset="nir")
    for i, name in [(0, "lif0"), (2, "lif2"), (5, "lif5")]:
        assert np.array_equal(rec[i].numpy(), sim[name]), name
    assert np.allclose(sim["output"].max(0), y.numpy(), atol=1e-5)


def test_import_nir_rebuilds_identical_model(tmp_path):
    net = conv_net(reset="subtract")
    path = tmp_path / "net.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_nir(net, (2, 10, 10), path)
    net2 = import_nir(path, impl="torch")
    assert [type(m) for m in net2] == [type(m) for m in net]
    for a, b in zip(net, net2, strict=True):
        if hasattr(a, "neuron"):
            assert a.neuron.beta == b.neuron.beta and a.neuron.alpha == b.neuron.alpha
            assert a.neuron.threshold == b.neuron.threshold and a.neuron.reset == b.neuron.reset
        for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(pa, pb), ka
    assert net2[6].mode == "max" and net2[6].beta == 0.85
    x = spike_input((2, 10, 10), seed=3)
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))


def test_pruned_l0_gates_export_exact_zeros():
    from sparsespike.sparsity.connectivity import add_l0_gates, gates

    torch.manual_seed(0)
    net = nn.Sequential(SpikingLinear(6, 5, lif(), impl="torch"), LeakyReadout(5, 2))
    add_l0_gates(net, seed=0)
    with torch.no_grad():
        g0 = gates(net)[0]
        g0.log_alpha[:, ::2] = -10.0  # these gates close at test time
    g = export_nir(net, (6,))
    w = np.asarray(g.nodes["fc0"].weight)
    assert np.all(w[:, ::2] == 0) and np.all(w[:, 1::2] != 0)
    assert np.signbit(w[:, ::2]).sum() == 0  # +0.0, not -0.0
    assert torch.nn.utils.parametrize.is_parametrized(net[0], "weight")  # the model is untouched


def test_count_readout_and_errors():
    net = nn.Sequential(SpikingLinear(4, 3, lif(), impl="torch"), SpikeCountReadout(mean=False))
    g = export_nir(net, (4,))
    assert g.metadata["count_readout"] == "sum"
    assert isinstance(import_nir(g)[-1], SpikeCountReadout)
    with pytest.raises(ExportError, match="no NIR export"):
        export_nir(nn.Sequential(nn.ReLU()), (4,))
    with pytest.raises(ExportError, match="subtractive reset"):
        export_nir(nn.Sequential(SpikingLinear(4, 3, lif(reset="subtract"))), (4,), subtract_reset="error")
    with pytest.raises(ExportError, match="expects 4 inputs"):
        export_nir(net, (5,))


# --------------------------------------------------------------------- foreign graphs
def test_import_folds_gain_and_thresholds_of_a_foreign_graph():
    """A Norse-style graph (r = 1, so a step gain dt/tau != 1, per-neuron thresholds) imports
    exactly: the gain and thresholds are folded into the weights."""
    rng = np.random.default_rng(0)
    dt, tau = 1e-3, np.full(6, 5e-3)
    w1 = rng.normal(0, 1.5, (6, 4)).astype(np.float32)
    w2 = rng.normal(0, 1.5, (2, 6)).astype(np.float32)
    g = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([4])}),
            "a": nir.Linear(weight=w1),
            "b": nir.LIF(tau=tau, r=np.ones(6), v_leak=np.zeros(6),
                         v_threshold=np.linspace(0.1, 0.3, 6), v_reset=np.zeros(6)),
            "c": nir.Linear(weight=w2),
            "d": nir.LI(tau=np.full(2, 2e-3), r=np.ones(2), v_leak=np.zeros(2)),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "out")],
    )  # fmt: skip
    with pytest.raises(ExportError, match="dt"):
        import_nir(g)
    net = import_nir(g, dt=dt, readout_mode="last", impl="torch")
    assert net[0].neuron.beta == pytest.approx(0.8) and net[1].beta == pytest.approx(0.5)
    x = spike_input((4,), T=25, p=0.5, seed=4)
    y, rec = run_recording(net, x)
    sim = simulate_nir(g, x, dt=dt, mapping="euler")
    assert rec[0].sum() > 0
    assert np.array_equal(rec[0].numpy(), sim["b"])
    assert np.allclose(sim["out"][-1], y.numpy(), atol=1e-5)


def _step_through(module, x: torch.Tensor) -> torch.Tensor:
    outs, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            o, state = module(x[t]) if state is None else module(x[t], state)
            outs.append(o)
    return torch.stack(outs)


def _skip_unless_imports_reference(import_fn, who: str) -> None:
    """Skip when the foreign importer cannot even run a hand-built NIR graph (Input, Affine, LIF,
    Output, written with ``nir`` alone): that is a version mismatch between it, nirtorch and nir.
    Past this check, a failure to import or run *our* exported graph fails the test."""
    import numpy as np

    f32 = np.float32
    ref = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([4])),
            "fc": nir.Affine(weight=np.ones((3, 4), dtype=f32), bias=np.zeros(3, dtype=f32)),
            "lif": nir.LIF(
                tau=np.full(3, 1e-3, dtype=f32), r=np.ones(3, dtype=f32),
                v_leak=np.zeros(3, dtype=f32), v_threshold=np.ones(3, dtype=f32),
            ),
            "output": nir.Output(output_type=np.array([3])),
        },
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
    )  # fmt: skip
    try:
        _step_through(import_fn(ref), torch.zeros(2, 1, 4))
    except Exception as e:  # noqa: BLE001 - any failure on the reference graph is the peer's
        pytest.skip(f"{who}'s NIR import fails on a hand-built reference graph ({type(e).__name__}: {e})")


def _linear_net(cuba_first: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        SpikingLinear(12, 16, lif(beta=0.9, alpha=0.7 if cuba_first else None, threshold=1.0),
                      impl="torch", weight_scale=4.0),
        SpikingLinear(16, 5, lif(beta=0.8, alpha=0.6, threshold=1.0), impl="torch", weight_scale=4.0),
    )  # fmt: skip


def test_snntorch_import_gives_same_spikes(tmp_path):
    pytest.importorskip("snntorch", reason="snnTorch is not installed")
    try:
        from snntorch.import_nir import import_from_nir
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"snntorch.import_nir unavailable ({e})")
    net = _linear_net(cuba_first=False)  # LIF then CubaLIF, zero reset (snnTorch imports 'zero')
    x = spike_input((12,), T=30, B=2, seed=5)
    y, _ = run_recording(net, x)
    path = tmp_path / "s.nir"
    export_nir(net, (12,), path, dt=1e-4)  # snnTorch's importer hard-codes dt = 1e-4
    _skip_unless_imports_reference(import_from_nir, "snnTorch")
    sn = import_from_nir(nir.read(str(path)))  # a failure here is ours: the reference graph imports
    out = _step_through(sn, x)
    assert y.sum() > 0
    assert torch.equal(out, y)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # nirtorch.load, used by Norse 1.1
def test_norse_import_gives_same_spikes(tmp_path):
    pytest.importorskip("norse", reason="Norse is not installed")
    net = _linear_net(cuba_first=False)
    x = spike_input((12,), T=30, B=2, seed=6)
    y, _ = run_recording(net, x)
    path = tmp_path / "n.nir"
    # Norse 1.1's from_nir ignores LIF.r (it only warns), so LIF layers go as CubaLIF, alpha = 0
    export_nir(net, (12,), path, dt=1e-3, lif_as_cubalif=True)
    import norse.torch as norse_torch

    _skip_unless_imports_reference(lambda g: norse_torch.from_nir(g, dt=1e-3), "Norse")
    nn_ = norse_torch.from_nir(nir.read(str(path)), dt=1e-3)  # a failure here is ours
    out = _step_through(nn_, x)
    assert y.sum() > 0
    assert torch.equal(out, y)


# --------------------------------------------------------------------- command line
def test_cmd_export_from_run_directory(tmp_path, capsys):
    from sparsespike.config import ExperimentConfig, ModelConfig
    from sparsespike.models import build_network
    from sparsespike.sparsity.connectivity import add_l0_gates, gates

    cfg = ExperimentConfig(
        name="tiny",
        model=ModelConfig(
            layers=[{"type": "linear", "out": 6}, {"type": "readout", "out": 3}],
            neuron={"beta": 0.9, "reset": "zero"}, gates={"lam": 1e-3, "lr": 0.05, "seed": 0},
        ),
    )  # fmt: skip
    model = build_network(cfg.model.layers, (4,), cfg.model.neuron)
    add_l0_gates(model, seed=0)
    with torch.no_grad():
        gates(model)[0].log_alpha[0] = -10.0  # first row pruned
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "epoch": 1}, run / "best.pt")
    (run / "run.json").write_text(json.dumps({"config": cfg.to_dict()}))

    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "m.nir"
    args = parser.parse_args(["export", str(run), "--out", str(out), "--strict"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    g = nir.read(str(out))
    w = np.asarray(g.nodes["fc0"].weight)
    assert w.shape == (6, 4) and np.all(w[0] == 0) and np.all(w[1:] != 0)
    assert np.asarray(g.nodes["input"].input_type["input"]).tolist() == [4]
    assert import_nir(out)[1].mode == "max"


def test_cmd_export_of_a_pruned_yin_run_gives_our_spikes(tmp_path, capsys, data_dir):
    """A Yin run (train_yin: conv, avg pool, STBP LIF with zero reset, L0 gates pruned into
    model.pt) exports from its run folder; the NIR equations give the same spikes in every layer."""
    from sparsespike.export import cmd_export
    from sparsespike.sparsity.yin_models import load_config, load_yin_model, train_yin

    cfg = load_config("experiments/yin_mnist_small.yaml")
    cfg["data"] = {**cfg["data"], "root": str(data_dir), "train_subset": 40, "test_subset": 20}
    # gates spread around the pruning point (log alpha ~ N(-1, 2)): about a quarter prune to zero
    cfg["connectivity"] = {**cfg["connectivity"], "lam": 1.0e-6, "init_mean": -1.0, "init_std": 2.0}
    cfg["optimizer"] = {**cfg["optimizer"], "gate_lr": 1.0e-3, "batch_size": 20}
    cfg.update(epochs=1, eval_every=1, verbose=False, out_dir=str(tmp_path / "run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a 2-batch run: the readout may stay silent
        train_yin(cfg)
    # two batches leave the deep layers silent on random input: scale the weights (zeros stay
    # zeros) so that every layer spikes and the comparison below means something
    pt = tmp_path / "run" / "model.pt"
    ck = torch.load(pt, weights_only=True)
    ck["state_dict"] = {k: v * 4 if k.endswith("weight") else v for k, v in ck["state_dict"].items()}
    torch.save(ck, pt)
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "yin.nir"
    args = parser.parse_args(["export", str(tmp_path / "run"), "--out", str(out), "--strict"])
    assert cmd_export(args) == 0
    assert "wrote" in capsys.readouterr().out
    g = nir.read(str(out))
    assert np.asarray(g.nodes["input"].input_type["input"]).tolist() == [1, 28, 28]
    net, _ = load_yin_model(tmp_path / "run" / "model.pt")
    w = np.asarray(g.nodes["fc5"].weight)
    assert np.array_equal(w, net[5].weight.detach().numpy()) and 0.6 < np.count_nonzero(w) / w.size < 0.9
    x = spike_input((1, 28, 28), T=6, B=2, p=0.4, seed=3)
    _, rec = run_recording(net, x)
    sim = simulate_nir(g, x, reset="nir")
    for i, name in [(0, "lif0"), (2, "lif2"), (5, "lif5"), (6, "lif6")]:
        assert np.array_equal(rec[i].numpy(), sim[name]), name
    assert rec[0].sum() > 0 and rec[2].sum() > 0 and rec[5].sum() > 0


def test_export_of_an_eventprop_run_says_what_it_is(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"engine": "eventprop"}, "final": {"val": {}}}))
    with pytest.raises(ExportError, match="is an EventProp run"):
        load_trained_model(tmp_path)


def test_export_refuses_a_non_zero_padding_mode():
    """NIR's Conv2d pads with zeros: a circular-padded conv was exported as a zero-padded one."""
    net = nn.Sequential(SpikingConv2d(1, 2, 3, LIFParams(beta=0.5), padding=1), SeqFlatten())
    net[0].conv.padding_mode = "circular"
    with pytest.raises(ExportError, match="padding_mode 'circular'"):
        export_nir(net, (1, 5, 5))


def test_import_refuses_nir_neurons_we_cannot_represent():
    """Mixed-sign or zero thresholds were folded into the weights wrongly (a silent mismatch, or
    inf weights), a negative tau became an IF neuron with negated weights."""
    import nir

    w = np.ones((3, 4), dtype=np.float32)

    def graph(neuron):
        return nir.NIRGraph(
            nodes={"input": nir.Input(input_type={"input": np.array([4])}), "fc": nir.Linear(weight=w),
                   "lif": neuron, "output": nir.Output(output_type={"output": np.array([3])})},
            edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
        )  # fmt: skip

    def lif(tau, thr):
        o = np.ones(3)
        return nir.LIF(tau=tau * o, r=o, v_leak=0 * o, v_threshold=np.asarray(thr, dtype=float), v_reset=0 * o)

    for thr in ([0.5, -0.2, 0.5], [0.5, 0.0, 0.5]):
        with pytest.raises(ExportError, match="v_threshold must be > 0"):
            import_nir(graph(lif(5.0, thr)), dt=1.0)
    with pytest.raises(ExportError, match="tau must be > 0"):
        import_nir(graph(lif(-2.0, [1.0, 1.0, 1.0])), dt=1.0)
    import_nir(graph(lif(5.0, [0.5, 0.7, 0.5])), dt=1.0)  # positive per-neuron thresholds fold exactly


def test_export_refuses_bad_dt_and_max_pooling_of_analog_values():
    """dt <= 0 was only checked for leaky layers (an IF layer wrote r = inf or -1); a max pool of
    average-pooled (analog) values became SumPool2d + Threshold, which is max only for spikes."""
    if_net = nn.Sequential(SpikingLinear(4, 3, LIFParams(beta=1.0)), LeakyReadout(3, 2, beta=1.0))
    for dt in (0.0, -1.0):
        with pytest.raises(ExportError, match="dt must be a finite number > 0"):
            export_nir(if_net, (4,), dt=dt)
    pools = nn.Sequential(
        SpikingConv2d(1, 2, 3, LIFParams(beta=0.5), padding=1), SeqPool2d(2, "avg"), SeqPool2d(2, "max"), SeqFlatten()
    )
    with pytest.raises(ExportError, match="max pooling of average-pooled values"):
        export_nir(pools, (1, 8, 8))
