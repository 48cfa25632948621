"""benchmarks/yin_lambda_sweep.py (resumable JSON) and benchmarks/yin_penalty_front.py, with a fake trainer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_result(lam):
    density = 1.0 / (1.0 + 1e5 * lam)
    return {
        "test_acc_pruned": 97.0 - 1e4 * lam,
        "sparsity": {
            "total": {"density": density},
            "layers": [{"name": "fc", "type": "linear", "weights": 10, "density": density}],
        },
        "ops": {"flops": 100.0 * density, "flops_dense": 100.0},
        "flops_ratio": density,
        "train_time_s": 1.0,
        "history": [{}],
    }


def test_sweep_keeps_every_finished_lambda_and_front_plots(tmp_path, monkeypatch):
    sweep = _load("yin_lambda_sweep")
    trained = []

    def fake_train(cfg):
        lam = cfg["connectivity"]["lam"] if cfg["connectivity"]["l0"] else 0.0
        trained.append(lam)
        return _fake_result(lam)

    monkeypatch.setattr(sweep, "train_yin", fake_train)
    out = tmp_path / "sweep.json"
    cfg = str(REPO / "experiments" / "yin_mnist_scnn.yaml")
    sweep.main([cfg, "--lams", "0", "1e-4", "--out", str(out), "--ref-lam", "1e-4"])
    # a later run adds a lambda before one already done: the kept one after it must stay in the JSON
    sweep.main([cfg, "--lams", "0", "1e-5", "1e-4", "--out", str(out), "--ref-lam", "1e-4"])
    assert trained == [0.0, 1e-4, 1e-5]
    assert sorted(r["lam"] for r in json.loads(out.read_text())["rows"]) == [0.0, 1e-5, 1e-4]
    assert out.with_suffix(".png").is_file() and "| 1e-05 |" in out.with_suffix(".md").read_text()

    front = _load("yin_penalty_front")
    md = front.main([f"L0={out}", f"other={out}", "--out", str(tmp_path / "front.png")])
    assert (tmp_path / "front.png").is_file()
    assert "| L0 | 0.0001 | 96.00 | -1.00 | 9.1 | 0.091 |" in md
    assert md.count("| dense |") == 1
