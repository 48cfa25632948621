"""Benchmark scripts' bookkeeping: the ratios they print belong to the method they name, a smoke
run never replaces the full results, and merged files never mix settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _st(wall: float, cpu: float) -> dict:
    return {"median_ms": wall, "cpu_median_ms": cpu, "min_ms": wall, "cpu_min_ms": cpu, "n": 3}


def test_sparse_backward_table_pairs_each_peer_with_its_own_cpu_ratio():
    """snnTorch fastest by wall time, Norse by CPU time: the bracketed CPU ratio next to
    "snntorch" was Norse's (25x) instead of snnTorch's own (40x)."""
    sb = _script("sparse_backward")
    rows = {
        "sparse": {"backward": _st(1.0, 1.0)},
        "dense": {"backward": _st(10.0, 10.0)},
        "autograd_loop": {"backward": _st(50.0, 50.0)},
        "snntorch": {"backward": _st(20.0, 40.0)},
        "norse": {"backward": _st(30.0, 25.0)},
    }
    for m in rows.values():
        m["forward"] = m["backward"]
    r = {
        "H": 200,
        "calibration": {"act1": 1.0},
        "layer2": {"activity2_pct": 1.0, "methods": rows},
        "layer2_ratios": sb._ratios(rows),
        "layer2_ratios_cpu": sb._ratios(rows, stat="cpu_median_ms"),
        "memory": {},
    }
    res = {
        "config": {"T": 100, "batch": 64, "input_density_pct": 0.4, "b_th_half_width": 0.2, "threads": 1, "reps": 3,
                   "sweep_reps": 2},
        "env": {"load_avg_start": None, "load_avg_end": None},
        "hidden": [r],
        "bth_sweep": [],
        "skipped": {},
    }  # fmt: skip
    line = next(x for x in sb.markdown(res).splitlines() if x.startswith("| 200 |"))
    assert "20.0x (40.0x) snntorch" in line


def test_sparse_backward_quick_keeps_explicit_flags_and_the_full_results(monkeypatch, tmp_path):
    """--quick overrode flags given explicitly and wrote over benchmarks/results by default."""
    sb = _script("sparse_backward")
    seen = {}
    monkeypatch.setattr(sb, "run", lambda **kw: seen.update(kw))
    monkeypatch.chdir(tmp_path)
    sb.main(["--quick", "--no-peers", "--bth-sweep", "--batch", "32"])
    assert seen["bth_sweep"] == () and seen["batch"] == 32 and seen["hidden"] == (200,)
    assert seen["out"] == "benchmarks/results/quick"
    sb.main(["--no-peers"])
    assert seen["out"] == "benchmarks/results" and seen["batch"] == 256


def test_pruned_inference_append_refuses_other_settings(monkeypatch, tmp_path):
    pi = _script("pruned_inference")
    out = tmp_path / "pi"
    (tmp_path / "pi.json").write_text(json.dumps({"meta": {"batch": 8, "T": 4, "input": "x"}, "rows": []}))
    with pytest.raises(SystemExit, match="was measured with batch=8, T=4"):
        pi.main(["--densities", "0.5", "--reps", "1", "--tune-reps", "1", "--batch", "2", "--T", "2",
                 "--synthetic", "--out", str(out), "--append"])  # fmt: skip
