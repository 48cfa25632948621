"""Frozen L0 gates (connectivity.freeze_gates) and the trainer's ``gates: freeze`` phase."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from sparsespike.config import PhaseConfig, load_config
from sparsespike.errors import ConfigError
from sparsespike.layers import LeakyReadout, SpikingLinear
from sparsespike.metrics import measure
from sparsespike.neurons import LIFParams
from sparsespike.sparsity.connectivity import add_l0_gates, freeze_gates, gates, prune
from sparsespike.sparsity.synops import ExpectedSynOps
from sparsespike.train import LossContext, Trainer


def _spread(model, seed=0):
    """log_alpha ~ N(0, 3): a mix of gates that are surely off, surely on and in between."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(model):
            gate.log_alpha.copy_(3.0 * torch.randn(gate.log_alpha.shape, generator=g))


def test_frozen_gate_is_the_test_gate_in_training_and_learns_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 15), nn.Tanh(), nn.Linear(15, 4))
    add_l0_gates(net, seed=2)
    _spread(net)
    x = torch.randn(8, 20)
    net.eval()
    ref = net(x).detach()
    net.train()
    assert not torch.allclose(net(x), ref)  # noisy samples while learning
    assert freeze_gates(net) == 2
    out = net(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.square().sum().backward()
    for g in gates(net):
        assert g.frozen and not g.log_alpha.requires_grad and g.log_alpha.grad is None
    w_grad = net[0].parametrizations.weight.original.grad
    mask = gates(net)[0].test_gate() == 0
    assert mask.any() and (w_grad[mask] == 0).all() and (w_grad[~mask] != 0).any()
    freeze_gates(net, False)
    assert all(g.log_alpha.requires_grad and not g.frozen for g in gates(net))
    assert not torch.allclose(net(x), ref)


def test_frozen_synops_penalty_is_the_exact_synops_count():
    """Frozen gates are not random: the penalty is then the SynOps that the metrics module
    counts on the pruned network, for gates anywhere between off and on."""
    torch.manual_seed(1)
    net = nn.Sequential(
        SpikingLinear(30, 25, LIFParams(beta=0.9), weight_scale=3.0),
        SpikingLinear(25, 12, LIFParams(beta=0.9), weight_scale=3.0),
        LeakyReadout(12, 3),
    )
    add_l0_gates(net, seed=1)
    _spread(net, seed=4)
    freeze_gates(net)
    pen = ExpectedSynOps(lam=1.0).attach(net)
    x = (torch.rand(20, 6, 30) < 0.2).float()
    net.train()
    net(x)
    ctx = LossContext(0, 1, 0, 1, net, torch.zeros(6, 3), torch.zeros(6, dtype=torch.long), None)
    total = float(pen(ctx).detach())
    pen.release()
    net.eval()
    rep = measure(prune(net), [x])
    assert rep.synops > 0
    assert total == pytest.approx(rep.synops, rel=1e-5)


SMALL = {
    "name": "tiny_freeze",
    "seed": 3,
    "data": {
        "dataset": "yinyang",
        "encoding": {"name": "latency", "T": 12, "bias_spike": True},
        "batch_size": 50,
        "train_subset": 300,
        "test_subset": 100,
    },
    "model": {
        "neuron": {"beta": 0.9},
        "weight_scale": 4.0,
        "gates": {"lam": 1.0e-3, "lr": 0.5, "init_mean": 0.5, "seed": 0},
        "layers": [{"type": "linear", "out": 16}, {"type": "readout", "out": 3}],
    },
    "train": {
        "epochs": 2,
        "optimizer": {"name": "adam", "lr": 0.01},
        "phases": [{"name": "learn", "epochs": 1}, {"name": "tune", "epochs": 1, "gates": "freeze"}],
    },
}


def _cfg(tmp_path, **over):
    cfg = json.loads(json.dumps(SMALL))
    for k, v in over.items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_config(p)


def test_trainer_freeze_phase_keeps_the_mask_and_trains_the_weights(tmp_path, data_dir):
    snaps = []

    def watch(ctx):
        la = torch.cat([g.log_alpha.detach().flatten().clone() for g in gates(ctx.model)])
        w = ctx.model[0].parametrizations.weight.original.detach().clone()
        snaps.append((ctx.global_epoch, la, w, all(g.frozen for g in gates(ctx.model))))
        return torch.zeros(())

    tr = Trainer(_cfg(tmp_path), tmp_path / "r", data_dir, progress=False, regularizers=[watch])
    tr.fit()
    learn = [s for s in snaps if s[0] == 0]
    tune = [s for s in snaps if s[0] == 1]
    assert learn and tune
    assert not any(s[3] for s in learn) and all(s[3] for s in tune)
    assert not torch.equal(learn[0][1], learn[-1][1])  # the gates learn in phase 1
    final_la = torch.cat([g.log_alpha.detach().flatten() for g in gates(tr.model)])
    for s in tune:  # ... and stay put in phase 2
        torch.testing.assert_close(s[1], final_la, rtol=0, atol=0)
    assert not torch.equal(tune[0][2], tune[-1][2])  # while the weights still train
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["learn", "tune"]
    # the L0 penalty is charged while learning, not once the gates are frozen
    _, learn_terms = tr._phase_terms(PhaseConfig(name="a", epochs=1))
    _, tune_terms = tr._phase_terms(PhaseConfig(name="b", epochs=1, gates="freeze"))
    assert len(learn_terms) == len(tune_terms) + 1


def test_freeze_phase_config_errors(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="'learn' or 'freeze'"):
        Trainer(
            _cfg(tmp_path, **{"train.phases": [{"name": "x", "epochs": 1, "gates": "frozen"}]}),
            tmp_path / "r",
            data_dir,
            progress=False,
        )
    with pytest.raises(ConfigError, match="no L0 gates"):
        Trainer(_cfg(tmp_path, **{"model.gates": None}), tmp_path / "r", data_dir, progress=False)
