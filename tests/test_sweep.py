"""The Allred et al. sweep: spec, selection rules, Optuna workers, retries of lost trials, report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402
from sweep_kill import kill_worker_mid_trial  # noqa: E402

from sparsespike import report  # noqa: E402
from sparsespike.errors import ConfigError  # noqa: E402
from sparsespike.sweep import (  # noqa: E402
    SweepSpec,
    default_storage,
    grid_status,
    launch,
    make_storage,
    open_study,
    reconcile,
    select,
    worker_loop,
)

TINY = {
    "name": "tiny",
    "config": "demo_yinyang",
    "set": {
        "train.epochs": 2,
        "data.train_subset": 120,
        "data.test_subset": 100,
        "data.batch_size": 40,
        "data.encoding.T": 12,
        "model.layers": [{"type": "linear", "out": 16}, {"type": "readout", "out": 3, "beta": 0.95, "mode": "max"}],
    },
    "val_subset": 100,
    "schedules": {"constant": [1e-3, 1e-2], "alternating": [1e-2, 1e-1]},  # 2 schedules x 2 s0
}


def tiny_spec(**over) -> SweepSpec:
    return SweepSpec.from_dict({**TINY, **over})


# ---------------------------------------------------------------- selection rules
def _pts(method, s0, accs, spikes):
    return [
        {"method": method, "s0": s0, "epoch": e + 1, "val_acc": a, "val_spikes": s, "seeds": [0], "runs": []}
        for e, (a, s) in enumerate(zip(accs, spikes, strict=True))
    ]


def test_select_table1_and_table2():
    pts = (
        _pts("baseline", 0.0, [0.60, 0.700, 0.695, 0.69], [100, 110, 105, 104])
        + _pts("constant", 1e-4, [0.65, 0.70, 0.71], [50, 40, 30])  # epoch 3 beats ref with 30 spikes
        + _pts("constant", 1e-3, [0.60, 0.692, 0.695], [20, 12, 10])  # within 1 point only
        + _pts("linear", 1e-4, [0.5, 0.6, 0.65], [10, 9, 8])  # never admissible
    )
    sel = select(pts, tolerance=0.01)
    assert sel["reference_val_acc"] == pytest.approx(0.70)
    t1, t2 = sel["table1"], sel["table2"]
    assert (t1["baseline"]["epoch"], t1["baseline"]["val_spikes"]) == (2, 110)  # its best epoch
    assert (t1["constant"]["s0"], t1["constant"]["epoch"]) == (1e-4, 3)
    assert t1["linear"] is None and t2["linear"] is None
    # Table 2: the baseline's own sparsest epoch within 1 point (cf. the paper's 7 vs 6 epochs)
    assert (t2["baseline"]["epoch"], t2["baseline"]["val_spikes"]) == (4, 104)
    assert (t2["constant"]["s0"], t2["constant"]["epoch"]) == (1e-3, 3)


def test_select_ties_prefer_larger_s0_then_fewer_epochs():
    pts = (
        _pts("baseline", 0.0, [0.7], [100])
        + _pts("constant", 1e-4, [0.7, 0.7], [50, 50])
        + _pts("constant", 3e-4, [0.7, 0.7], [50, 50])
    )
    c = select(pts)["table1"]["constant"]
    assert (c["s0"], c["epoch"]) == (3e-4, 1)


def test_select_needs_baseline():
    with pytest.raises(ConfigError):
        select(_pts("constant", 1e-4, [0.7], [5]))


def test_reductions_reproduce_paper_headlines():
    tables = {
        t: [{"method": m, "test_spikes": float(v[3])} for m, v in report.PAPER[t].items()] for t in ("table1", "table2")
    }
    report.add_reductions(tables)
    alt1 = next(r for r in tables["table1"] if r["method"] == "alternating")
    alt2 = next(r for r in tables["table2"] if r["method"] == "alternating")
    assert alt1["reduction_pct"] == pytest.approx(70.1, abs=0.05)  # iso-accuracy claim
    assert alt2["reduction_vs_t1_pct"] == pytest.approx(73.3, abs=0.05)  # the abstract's 73.3 %
    assert alt2["reduction_pct"] == pytest.approx(71.7, abs=0.05)  # against Table 2's own baseline


# ---------------------------------------------------------------- spec
def test_spec_grid_and_errors(tmp_path):
    spec = tiny_spec()
    assert spec.settings() == ["baseline:0.0", "constant:0.001", "constant:0.01", "alternating:0.01", "alternating:0.1"]
    assert spec.n_points() == 5
    cfg = spec.trial_config("alternating", 0.01, 3)
    assert cfg.seed == 3 and cfg.train.regularizers[0]["schedule"] == "alternating"
    assert spec.trial_config("baseline", 0.0, 0).train.regularizers == []
    with pytest.raises(ConfigError):
        tiny_spec(schedules={"cubic": [1.0]})
    with pytest.raises(ConfigError):
        SweepSpec.from_dict({**TINY, "bogus": 1})
    with pytest.raises(ConfigError):
        tiny_spec(schedules={"constant": [0.0]})
    # the builtin FMNIST spec loads and resolves its config
    fm = SweepSpec.load("allred_fmnist_sweep")
    assert fm.n_points() == 16 and fm.config.is_file()
    assert fm.trial_config("linear", 1e-4, 0).data.val_fraction == 0.2


@pytest.mark.parametrize("key", ["per_batch", "normalized"])
def test_spec_flags_must_be_booleans(key):
    """The string 'false' would be truthy and silently switch the schedule."""
    with pytest.raises(ConfigError, match=f"sweep spec: {key} must be a bool, got 'false'"):
        tiny_spec(**{key: "false"})
    assert getattr(tiny_spec(**{key: True}), key) is True


def test_study_refuses_a_different_grid(tmp_path):
    url = default_storage(tmp_path)
    open_study(tiny_spec(), make_storage(url), create=True)
    with pytest.raises(ConfigError):
        open_study(tiny_spec(schedules={"constant": [5e-3]}), make_storage(url), create=True)


# ---------------------------------------------------------------- running
def _check_done(out: Path, spec: SweepSpec):
    study = open_study(spec, make_storage(default_storage(out)), create=False)
    st = grid_status(study, spec)
    assert st["done"] == st["total"] == spec.n_points(), st
    res = json.loads((out / "sweep_results.json").read_text())
    assert {r["method"] for r in res["tables"]["table1"]} >= {"baseline"}
    assert (out / "tables.md").read_text().startswith("# tiny")
    for f in ("table1.csv", "table2.csv", "all_epochs.csv", "accuracy_vs_spikes.png"):
        assert (out / f).is_file(), f
    rows = res["rows"]
    assert len(rows) == spec.n_points() * 2  # every epoch of every run
    assert all(r["val_spikes"] >= 0 and "train_spikes" in r for r in rows)
    for r in rows:
        assert (Path(r["run_dir"]) / "epochs" / f"epoch_{r['epoch']:03d}.pt").is_file()
    return study, res


@pytest.mark.slow
def test_tiny_sweep_in_process(tmp_path, data_dir):
    spec = tiny_spec()
    res = launch(spec, tmp_path, workers=0, data_dir=data_dir, log=lambda *a: None)
    _check_done(tmp_path, spec)
    base = next(r for r in res["tables"]["table1"] if r["method"] == "baseline")
    assert 0 <= base["test_acc"] <= 1 and base["test_spikes"] > 0 and base["reduction_pct"] == 0.0


@pytest.mark.slow
def test_tiny_sweep_two_worker_processes(tmp_path, data_dir):
    spec = tiny_spec()
    launch(spec, tmp_path, workers=2, data_dir=data_dir, poll=0.5, log=lambda *a: None)
    study, _ = _check_done(tmp_path, spec)
    pids = {t.user_attrs.get("pid") for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert os.getpid() not in pids  # trials ran in the worker processes
    assert len(list((tmp_path / "workers").glob("worker*.log"))) == 2


def test_stale_heartbeat_trial_is_retried(tmp_path, data_dir):
    """A trial left RUNNING by a worker on another machine (heartbeat stopped) is failed and re-run."""
    spec = tiny_spec(schedules={})  # the baseline only: one grid point
    url = default_storage(tmp_path)
    storage = make_storage(url, heartbeat=1, grace=2)
    study = open_study(spec, storage, create=True)
    t = study.ask()
    t.set_user_attr("host", "some-other-machine")
    t.set_user_attr("pid", 12345)
    t.suggest_categorical("setting", spec.settings())
    t.suggest_categorical("seed", spec.seeds)
    storage.record_heartbeat(t._trial_id)  # one beat, then the worker "dies"
    time.sleep(3.5)
    worker_loop(spec, tmp_path, url, data_dir=data_dir, heartbeat=1, grace=2, log=lambda *a: None)
    trials = study.get_trials()
    lost = trials[t.number]
    assert lost.state == TrialState.FAIL
    retried = [x for x in trials if x.system_attrs.get("failed_trial") == t.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == lost.params
    assert retried[0].user_attrs["host"] == socket.gethostname()
    assert grid_status(study, spec)["done"] == spec.n_points()


def test_trial_of_dead_local_worker_is_requeued_at_once(tmp_path):
    spec = tiny_spec(schedules={"constant": [1e-3]})
    storage = make_storage(default_storage(tmp_path))
    study = open_study(spec, storage, create=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    t.suggest_categorical("setting", spec.settings())
    t.suggest_categorical("seed", spec.seeds)
    assert reconcile(study, min_age=0.0, log=lambda *a: None) == 1
    trials = study.get_trials()
    assert trials[t.number].state == TrialState.FAIL
    waiting = [x for x in trials if x.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trials[t.number].params
    assert "pid" not in waiting[0].user_attrs  # the dead worker's identity is not inherited
    # nothing is re-queued twice
    assert reconcile(study, min_age=0.0, log=lambda *a: None) == 0


@pytest.mark.slow
def test_killed_worker_process_trial_is_retried_and_resumed(tmp_path, data_dir):
    """SIGKILL a worker mid-trial: its trial is re-queued, resumed from last.pt and completed."""
    spec_d = dict(TINY)
    spec_d["set"] = {**TINY["set"], "train.epochs": 4, "data.train_subset": 1500}
    spec_d["schedules"] = {"constant": [1e-3]}
    spec_path = tmp_path / "spec.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(spec_d))
    out = tmp_path / "out"
    spec = SweepSpec.load(spec_path)
    _, _, study, logs = kill_worker_mid_trial(spec, spec_path, out, data_dir)
    assert grid_status(study, spec)["done"] == spec.n_points()
    assert "re-queued" in logs and "(resuming)" in logs


def test_report_files_from_results(tmp_path):
    rows = [
        {"method": m, "s0": s0, "seed": 0, "trial": i, "epoch": e, "val_acc": a, "val_spikes": sp, "run_dir": "x"}
        for i, (m, s0, a0, sp0) in enumerate([("baseline", 0.0, 0.70, 1000.0), ("constant", 1e-4, 0.71, 300.0)])
        for e, a, sp in [(1, a0 - 0.05, sp0 * 1.2), (2, a0, sp0)]
    ]
    t1 = [
        {
            "method": "baseline",
            "s0": 0.0,
            "epochs": 2,
            "val_acc": 0.7,
            "val_spikes": 1000.0,
            "test_acc": 0.69,
            "test_spikes": 1000.0,
            "test_synops": 1.0,
        },
        {
            "method": "constant",
            "s0": 1e-4,
            "epochs": 2,
            "val_acc": 0.71,
            "val_spikes": 300.0,
            "test_acc": 0.7,
            "test_spikes": 290.0,
            "test_synops": 1.0,
        },
        {"method": "linear", "s0": None, "epochs": None},
    ]
    t2 = [dict(r) for r in t1]
    t2[0]["test_spikes"] = 900.0
    tables = {"table1": t1, "table2": t2}
    report.add_reductions(tables)
    assert t1[1]["reduction_pct"] == pytest.approx(71.0)
    assert t2[1]["reduction_pct"] == pytest.approx(100 * (1 - 290 / 900))
    assert t2[1]["reduction_vs_t1_pct"] == pytest.approx(71.0)
    res = {"name": "demo", "reference_val_acc": 0.7, "tolerance": 0.01, "tables": tables, "rows": rows, "failed": []}
    files = report.write_report(res, tmp_path)
    md = files["markdown"].read_text()
    assert "Table 1" in md and "no admissible setting" in md and "71.0 %" in md
    assert (tmp_path / "accuracy_vs_spikes.png").stat().st_size > 1000
    assert (tmp_path / "table2.csv").read_text().splitlines()[0].startswith("method,s0,epochs")
