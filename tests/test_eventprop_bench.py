"""benchmarks/eventprop_bench.py: the EventProp vs time-stepped comparison at equal accuracy (tiny run)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("eventprop_bench", REPO / "benchmarks" / "eventprop_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pos(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def _check(res: dict, target: float, epochs: int) -> None:
    assert res["target_test_acc"] == target and res["epochs_run"] == epochs
    for name in ("eventprop", "time_stepped"):
        eng = res["engines"][name]
        curve = eng["curve"]
        assert [r["epoch"] for r in curve] == list(range(1, epochs + 1))
        cum = 0.0
        for r in curve:
            assert _pos(r["epoch_time_s"])
            cum += r["epoch_time_s"]
            assert r["cum_train_s"] == pytest.approx(cum)
            assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0
            assert math.isfinite(r["spikes_per_sample"]) and r["spikes_per_sample"] >= 0
            assert math.isfinite(r["n_s"]) and r["n_s"] >= 0
        for k in ("train_s_per_epoch_median", "train_s_per_epoch_mean", "train_us_per_sample"):
            assert _pos(eng[k]), (name, k)
        # epochs to target: the first epoch of the curve at or above the target, or None
        hits = [r["epoch"] for r in curve if r["test_acc"] >= target]
        assert eng["epochs_to_target"] == (hits[0] if hits else None)
        if hits:
            at = curve[hits[0] - 1]
            assert eng["train_s_to_target"] == pytest.approx(at["cum_train_s"])
            assert eng["spikes_per_sample_at_target"] == at["spikes_per_sample"]
        else:
            assert eng["train_s_to_target"] is None
        assert eng["best_test_acc"] == max(r["test_acc"] for r in curve)
    ratios = res["ratios_time_stepped_over_eventprop"]
    assert _pos(ratios["train_s_per_epoch"])
    e, t = res["engines"]["eventprop"], res["engines"]["time_stepped"]
    if e["train_s_to_target"] is not None and t["train_s_to_target"] is not None:
        assert _pos(ratios["train_s_to_target"])
        assert ratios["train_s_to_target"] == pytest.approx(t["train_s_to_target"] / e["train_s_to_target"])
    else:
        assert ratios["train_s_to_target"] is None


def test_vs_time_stepped_tiny(bench):
    target = 0.3  # chance level is 1/3: low enough that a 2-epoch run reaches it on most draws
    res = bench.vs_time_stepped(target=target, epochs=2, n_train=96, n_test=60, verbose=False)
    _check(res, target, 2)
    assert res["n_train"] == 96 and res["n_test"] == 60
    assert res["config"]["time_stepped"]["regularizers"] == []  # CE only unless ts_spike_reg
    assert res["config"]["eventprop"]["loss"] == "L_W"
    json.dumps(res)  # JSON-ready
    table = bench.vs_table(res)
    assert "EventProp" in table and "time-stepped" in table


def test_vs_time_stepped_cli_merges_into_existing_json(bench, tmp_path):
    (tmp_path / "eventprop.json").write_text(json.dumps({"spike_sweep": [1], "epoch": {"x": 1}}))
    bench.main(["--only", "vs_time_stepped", "--vs-epochs", "1", "--vs-train", "64", "--vs-test", "40",
                "--target", "0.0", "--out-dir", str(tmp_path)])  # fmt: skip
    res = json.loads((tmp_path / "eventprop.json").read_text())
    assert res["spike_sweep"] == [1] and res["epoch"] == {"x": 1}  # other parts kept
    vs = res["vs_time_stepped"]
    _check(vs, 0.0, 1)
    # target 0 is reached after the first epoch by both engines
    assert vs["engines"]["eventprop"]["epochs_to_target"] == 1
    assert vs["engines"]["time_stepped"]["epochs_to_target"] == 1
    assert _pos(vs["ratios_time_stepped_over_eventprop"]["train_s_to_target"])
    assert (tmp_path / "eventprop_vs_time_stepped.png").stat().st_size > 0


def test_bench_cli_prints_a_scripts_refusal(tmp_path, capsys):
    """`sparsespike bench` turned a script's SystemExit message into a ValueError traceback; the
    partial-run merge refuses, before measuring, a file made with another batch."""
    import json

    from sparsespike.cli import main

    (tmp_path / "eventprop.json").write_text(json.dumps({"device": "CPU (x), 1 thread(s)", "batch": 256}))
    assert (
        main(["bench", "eventprop", "--only", "spike_sweep", "--quick", "--batch", "8", "--out-dir", str(tmp_path)])
        == 1
    )
    err = capsys.readouterr().err
    assert "was measured with" in err and "batch=256" in err


def test_mnist_step_bench_runs_trees_side_by_side(data_dir, tmp_path):
    """benchmarks/eventprop_mnist_step.py times the MNIST training step of each source tree in its
    own process and writes the ratios; the same tree twice gives the same spikes, and a tree
    without sparsespike sources is refused."""
    path = REPO / "benchmarks" / "eventprop_mnist_step.py"
    spec = importlib.util.spec_from_file_location("eventprop_mnist_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "step.json"
    args = ["--data-dir", str(data_dir), "--batches", "1", "--reps", "1", "--rounds", "1", "--out", str(out)]
    assert mod.main(["--src", str(REPO), "--src", str(REPO), *args]) == 0
    res = json.loads(out.read_text())["results"]
    assert len(res) == 2 and all(_pos(r["ms_per_batch"]) for r in res)
    assert res[0]["speedup_vs_first"] == 1.0 and res[0]["spikes_per_sample"] == res[1]["spikes_per_sample"] > 0
    assert res[0]["module"].startswith(str(REPO))
    with pytest.raises(SystemExit):
        mod.main(["--src", str(tmp_path), *args])
