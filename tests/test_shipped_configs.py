"""Every config shipped in experiments/ loads and builds: a time-stepped config's network runs a
forward pass on an input of its dataset's shape (export.dataset_input_shape), a Yin config builds
its SCNN, a sweep spec loads with the experiment it names, an EventProp config loads. A typo in a
shipped config fails here rather than after a user's data has loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments").glob("*.yaml"))


def _kind(raw: dict) -> str:
    if raw.get("engine") in ("eventprop", "yin"):
        return raw["engine"]
    return "sweep" if "config" in raw and "model" not in raw else "time-stepped"


def test_there_are_configs_of_every_kind():
    kinds = {_kind(yaml.safe_load(p.read_text())) for p in CONFIGS}
    assert kinds == {"time-stepped", "yin", "eventprop", "sweep"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_builds(path):
    raw = yaml.safe_load(path.read_text())
    kind = _kind(raw)
    if kind == "eventprop":
        from sparsespike.eventprop.train import load_config

        cfg = load_config(path)
        assert cfg.sizes[0] in (5, 784) and len(cfg.phases) >= 1
    elif kind == "yin":
        from sparsespike.sparsity.yin_models import load_config, network_from_config

        model, T = network_from_config(load_config(path))
        assert T > 0 and sum(p.numel() for p in model.parameters()) > 0
    elif kind == "sweep":
        if raw.get("kind") == "pareto":
            pytest.importorskip("optuna", reason="the Pareto spec's sampler is Optuna's (extra: sweep)")
        from sparsespike.sweep import load_spec

        spec = load_spec(path)
        assert spec.name
    else:
        from sparsespike.config import load_config
        from sparsespike.export import dataset_input_shape
        from sparsespike.models import build_network
        from sparsespike.sparsity.connectivity import add_l0_gates

        cfg = load_config(path)
        m = cfg.model
        shape = dataset_input_shape(cfg)
        assert shape is not None, f"no input shape known for dataset {cfg.data.dataset!r}"
        net = build_network(m.layers, shape, m.neuron, m.backward, m.b_th, m.weight_scale)
        if m.gates:
            add_l0_gates(net, lam=float(m.gates.get("lam", 0.0)))
        with torch.no_grad():
            out = net(torch.zeros(3, 2, *shape))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape[-1] in (3, 10, 20) and torch.isfinite(out).all()
