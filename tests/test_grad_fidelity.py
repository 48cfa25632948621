"""Sparse vs dense weight gradients (Perez-Nieves & Goodman 2021, sec. 3.2): cosine similarity."""

from __future__ import annotations

import json

import pytest
import torch

from sparsespike.bench.grad_fidelity import gradient_cosine
from sparsespike.layers import LeakyReadout, SpikingLinear, spiking_layers
from sparsespike.neurons import LIFParams
from sparsespike.surrogate import FastSigmoid


def _net(seed=0, n_in=60, h=40, n_out=5, scale=10.0):
    torch.manual_seed(seed)
    p = LIFParams(beta=0.9, threshold=1.0, surrogate=FastSigmoid(scale))
    return torch.nn.Sequential(
        SpikingLinear(n_in, h, p, weight_scale=4.0),
        SpikingLinear(h, h, p, weight_scale=4.0),
        LeakyReadout(h, n_out, beta=0.9, mode="max"),
    )


def _batch(seed, T=30, B=16, n_in=60, n_out=5, rate=0.1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n_in, generator=g) < rate).float(), torch.randint(0, n_out, (B,), generator=g)


def test_every_neuron_active_gives_identical_gradients():
    net = _net()
    res = gradient_cosine(net, [_batch(1), _batch(2)], b_th=1e9)
    assert set(res) == {n for n, _ in net.named_parameters()}
    for name, r in res.items():
        assert r["cosine"] == pytest.approx(1.0, abs=1e-5), name
        assert r["norm_ratio"] == pytest.approx(1.0, abs=1e-4), name


@pytest.mark.parametrize("gate_seed", [None, 0], ids=["global_rng", "own_generator"])
def test_gated_network_every_neuron_active_gives_identical_gradients(gate_seed):
    """With L0 gates in training mode each forward draws new gate noise: both passes must see the
    same draw, or the comparison is between two different networks."""
    from sparsespike.sparsity.connectivity import add_l0_gates

    net = _net()
    add_l0_gates(net, seed=gate_seed, init_mean=0.0, init_std=1.0)  # noisy gates: many in (0, 1)
    res = gradient_cosine(net, [_batch(1), _batch(2)], b_th=1e9)
    assert any("log_alpha" in n for n in res)
    for name, r in res.items():
        assert r["cosine"] == pytest.approx(1.0, abs=1e-5), name


def test_narrow_window_differs_and_modes_are_restored():
    net = _net()
    before = [(m.backward, m.b_th) for m in spiking_layers(net)]
    res = gradient_cosine(net, [_batch(3)], b_th=0.01)
    assert [(m.backward, m.b_th) for m in spiking_layers(net)] == before
    # hidden weights lose most terms at a 0.01 window; the readout gradient is untouched
    assert res["0.weight"]["cosine"] < 0.999
    assert res["2.weight"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert all(p.grad is None for p in net.parameters())


def test_needs_spiking_layers():
    with pytest.raises(ValueError, match="spiking layers"):
        gradient_cosine(torch.nn.Linear(3, 2), [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))])


@pytest.mark.slow
def test_trained_fmnist_network_keeps_cosine_095(data_dir, tmp_path):
    """Issue 3: at B_th = 0.2 the sparse weight gradients of a trained network keep cos >= 0.95."""
    from sparsespike.cli import main

    cfg = "experiments/fmnist_pn.yaml"
    rc = main(
        [
            "train",
            cfg,
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
            "--quiet",
            "--set",
            "train.epochs=1",
            "--set",
            "data.train_subset=6000",
            "--set",
            "data.test_subset=1000",
        ]
    )
    assert rc == 0
    assert main(["bench", "grad-cosine", str(tmp_path), "--data-dir", str(data_dir), "--batches", "3"]) == 0
    res = json.loads((tmp_path / "grad_cosine.json").read_text())["params"]
    assert len(res) == 3  # two hidden layers and the readout
    for name, r in res.items():
        assert r["cosine"] >= 0.95, (name, r)
