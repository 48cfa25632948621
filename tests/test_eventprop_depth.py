"""benchmarks/eventprop_depth.py: medians per depth and recipe from the per-seed JSONs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "eventprop_depth", Path(__file__).resolve().parents[1] / "benchmarks" / "eventprop_depth.py"
)
depth = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(depth)


def _write(folder: Path, name: str, runs: list[tuple[int, float, float]]) -> None:
    rows = [{"seed": s, "test_accuracy": a, "test_n_s": n, "test_n_s_per_layer": [n]} for s, a, n in runs]
    (folder / f"eventprop_yinyang_{name}.json").write_text(json.dumps({"summary": {}, "runs": rows}))


def test_depth_table_medians_and_missing(tmp_path):
    _write(tmp_path, "depth2h_lw", [(0, 0.97, 1.2), (1, 0.95, 1.6), (2, 0.96, 1.0)])
    _write(tmp_path, "lw", [(0, 0.98, 1.7), (1, 0.97, 1.5)])
    _write(tmp_path, "2phase", [(0, 0.98, 1.3)])
    res = depth.main(["--results", str(tmp_path)])
    lw = {r["hidden_layers"]: r for r in res["L_W"]}
    assert sorted(lw) == [2, 3]
    assert lw[2]["n_s_median"] == pytest.approx(1.2) and lw[2]["acc_median"] == pytest.approx(0.96)
    assert lw[3]["n_s_median"] == pytest.approx(1.6) and lw[3]["seeds"] == [0, 1]
    assert [r["hidden_layers"] for r in res["2-phase"]] == [3]
    assert "eventprop_yinyang_depth4h_lw.json" in res["missing"]
    md = (tmp_path / "eventprop_depth.md").read_text()
    assert "| L_W | 2 | 3 | 96.00 % | 1.20 |" in md and "not run:" in md
    assert (tmp_path / "eventprop_depth.png").stat().st_size > 1000
