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
    aggregate,
    collect,
    default_storage,
    finalize_grid,
    grid_status,
    launch,
    main,
    make_storage,
    open_study,
    reconcile,
    select,
    worker_loop,
)

QUIET = lambda *a: None  # noqa: E731

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


def _rows(method, s0, seed, accs, spikes):
    return [
        {"method": method, "s0": s0, "seed": seed, "trial": 0, "run_dir": f"/r/{method}{s0}_{seed}", "epoch": e + 1}
        | {"val_acc": a, "val_spikes": s}
        for e, (a, s) in enumerate(zip(accs, spikes, strict=True))
    ]


def test_select_only_points_averaged_over_every_seed():
    """A seed that diverged early (or failed) leaves later epochs averaged over the other seeds
    only: such a point must not win a table (or set the reference) on one lucky run."""
    rows = (
        _rows("baseline", 0.0, 0, [0.80, 0.85, 0.86], [100, 100, 100])
        + _rows("baseline", 0.0, 1, [0.80, 0.84], [100, 100])  # seed 1 diverged in epoch 3
        + _rows("constant", 1e-3, 0, [0.70, 0.86, 0.87], [50, 20, 10])
        + _rows("constant", 1e-3, 1, [0.30], [5])  # diverged in epoch 2
        + _rows("constant", 1e-2, 0, [0.84, 0.845], [30, 25])
        + _rows("constant", 1e-2, 1, [0.85, 0.845], [30, 25])
    )
    pts = aggregate(rows, seeds=[0, 1])
    by = {(p["method"], p["s0"], p["epoch"]): p for p in pts}
    assert by[("constant", 1e-3, 1)]["complete"] and by[("constant", 1e-3, 1)]["seeds"] == [0, 1]
    for e in (2, 3):  # kept visible, marked
        assert not by[("constant", 1e-3, e)]["complete"] and by[("constant", 1e-3, e)]["missing_seeds"] == [1]
    assert not by[("baseline", 0.0, 3)]["complete"]
    sel = select(pts, tolerance=0.01)
    assert sel["reference_val_acc"] == pytest.approx(0.845)  # not seed 0's epoch 3 alone (0.86)
    assert sel["excluded"] == 3
    t1 = sel["table1"]["constant"]
    assert (t1["s0"], t1["epoch"], t1["seeds"]) == (1e-2, 2, [0, 1])  # not the lucky 1e-3 epoch 3 (10 spikes)
    assert sel["table1"]["baseline"]["epoch"] == 2
    # without the spec's seeds: every seed the (method, s0) has
    assert not {(p["method"], p["s0"], p["epoch"]): p for p in aggregate(rows)}[("constant", 1e-3, 2)]["complete"]
    # a seed that failed entirely leaves every point of its (method, s0) incomplete
    pts = aggregate(rows, seeds=[0, 1, 2])
    assert not any(p["complete"] for p in pts)
    with pytest.raises(ConfigError, match=r"baseline averaged over every seed.*\[1, 2\]"):
        select(pts)


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


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"val_fraction": 1.5}, "val_fraction must be in \\(0, 1\\)"),
        ({"val_fraction": 0}, "val_fraction must be in \\(0, 1\\)"),
        ({"val_fraction": -0.2}, "val_fraction must be in \\(0, 1\\)"),
        ({"val_fraction": "x"}, "val_fraction must be a float"),
        ({"val_subset": -5}, "val_subset must be >= 1"),
        ({"val_subset": 0}, "val_subset must be >= 1"),
        ({"val_subset": "abc"}, "val_subset must be an int"),
        ({"val_subset": 1.5}, "val_subset must be an int"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, 0]}, "seeds repeat"),
        ({"seeds": [1.7]}, "seeds must be an int"),
        ({"seeds": [True]}, "seeds must be an int"),
        ({"seeds": [-1]}, "seeds must be >= 0"),
        ({"seeds": "abc"}, "seeds must be a non-empty list"),
        ({"seeds": 5}, "seeds must be a non-empty list"),
        ({"schedules": {"constant": [float("nan")]}}, "schedules.constant .*finite number > 0"),
        ({"schedules": {"constant": ["inf"]}}, "schedules.constant .*finite number > 0"),
        ({"schedules": {"constant": [0.0]}}, "schedules.constant .*finite number > 0"),
        ({"schedules": {"constant": ["abc"]}}, "schedules.constant .*must be a number, got 'abc'"),
        ({"schedules": {"constant": [1e-3, 1e-3]}}, "s0 values of schedules.constant repeat"),
        ({"schedules": ["constant"]}, "schedules must map schedule names"),
        ({"tolerance": "x"}, "tolerance must be a float"),
        ({"tolerance": 1.5}, "tolerance is a fraction"),
        ({"set": ["train.epochs"]}, "set must map"),
    ],
)
def test_spec_values_are_checked(over, match):
    """A bad value fails at load time with a ConfigError naming the key, not later (or silently:
    seeds [] ran seed 0, [0, 0] dropped a seed, val_subset -5 cut samples off the end)."""
    with pytest.raises(ConfigError, match=f"sweep spec: .*{match}"):
        tiny_spec(**over)


def test_spec_values_accepted():
    spec = tiny_spec(val_fraction=0.1, val_subset=None, seeds=[3, 1], tolerance="0.02", schedules={"linear": "1e-4"})
    assert (spec.val_fraction, spec.val_subset, spec.seeds, spec.tolerance) == (0.1, None, [3, 1], 0.02)
    assert spec.schedules == {"linear": [1e-4]} and tiny_spec(seeds=None).seeds == [0]


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


def _trial_of_a_dead_worker(study, spec):
    """A RUNNING grid trial whose worker (a finished process on this host) is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    t.suggest_categorical("setting", spec.settings())
    t.suggest_categorical("seed", spec.seeds)
    return t


def test_trial_of_dead_local_worker_is_requeued_at_once(tmp_path):
    spec = tiny_spec(schedules={"constant": [1e-3]})
    storage = make_storage(default_storage(tmp_path))
    study = open_study(spec, storage, create=True)
    t = _trial_of_a_dead_worker(study, spec)
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


# ---------------------------------------------------------------- audit fixes: resume, report, races, flags
def test_resume_rewrites_epochs_jsonl_cut_by_a_crash(tmp_path):
    """A crash after epochs.jsonl got epoch 3 (cut mid-line) but before last.pt: the resume keeps
    the readable records up to the checkpoint's epoch, so the repeated epoch 3 is not glued onto
    the cut line (and lost)."""
    from sparsespike.sweep import _epoch_trainer_cls, epoch_records, sweep_data

    spec = tiny_spec(set={**TINY["set"], "train.epochs": 3})
    cfg = spec.trial_config("constant", 1e-3, 0)
    data = sweep_data(spec, cfg, None)
    run = tmp_path / "run"

    class Crash(BaseException):
        pass

    def crash_at_3(rec):
        if rec["epoch"] == 3:
            raise Crash

    trainer = _epoch_trainer_cls()
    with pytest.raises(Crash):
        trainer(cfg, run, None, data=data, progress=False, on_epoch=crash_at_3).fit()
    p = run / "epochs.jsonl"
    p.write_text(p.read_text()[:-40])  # the epoch-3 line, cut
    assert [r["epoch"] for r in epoch_records(run)] == [1, 2]
    trainer(cfg, run, None, data=data, resume=True, progress=False).fit()
    assert [r["epoch"] for r in epoch_records(run)] == [1, 2, 3]
    lines = p.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # every line readable


def _grid_trial(study, setting, seed, state, epochs=None, error=None, retry_of=None):
    from optuna.distributions import CategoricalDistribution

    dist = {"setting": CategoricalDistribution([setting]), "seed": CategoricalDistribution([seed])}
    ua = {"run_dir": f"/runs/{setting}_{seed}", "epochs": epochs or []} if epochs else {"error": error}
    sa = {"retry_history": list(retry_of)} if retry_of else {}
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=[epochs[-1]["val_acc"], epochs[-1]["val_spikes"]] if state == TrialState.COMPLETE else None,
            params={"setting": setting, "seed": seed},
            distributions=dist,
            user_attrs=ua,
            system_attrs=sa,
        )
    )


def _eps(accs, spikes):
    return [{"epoch": e + 1, "val_acc": a, "val_spikes": s} for e, (a, s) in enumerate(zip(accs, spikes, strict=True))]


def test_collect_lists_each_failed_point_once():
    study = optuna.create_study(directions=["maximize", "minimize"])
    _grid_trial(study, "baseline:0.0", 0, TrialState.COMPLETE, _eps([0.5], [10.0]))
    for i in range(3):  # the original and its 2 retries
        _grid_trial(study, "constant:0.001", 0, TrialState.FAIL, error=f"boom {i}", retry_of=range(1, 1 + i))
    _grid_trial(study, "constant:0.01", 0, TrialState.FAIL, error="worker died")
    study.enqueue_trial({"setting": "constant:0.01", "seed": 0})  # its retry, still waiting
    _grid_trial(study, "constant:0.1", 0, TrialState.FAIL, error="lost")
    _grid_trial(study, "constant:0.1", 0, TrialState.COMPLETE, _eps([0.4], [5.0]))  # its retry made it
    rows, failed = collect(study)
    assert failed == [{"trial": 3, "setting": "constant:0.001", "seed": 0, "error": "boom 2", "attempts": 3}]
    assert {(r["method"], r["s0"]) for r in rows} == {("baseline", 0.0), ("constant", 0.1)}


def test_finalize_grid_marks_incomplete_points_and_survives_a_cut_cache(tmp_path, monkeypatch, atomic_writes):
    """The report: points short of a seed are listed, not selected; a test_cache.json cut by a
    crash is evaluated again (not a crash of every later --report-only); the cache is written
    atomically."""
    import sparsespike.sweep as sw

    spec = tiny_spec(seeds=[0, 1], schedules={"constant": [1e-3, 1e-2]})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for seed in (0, 1):
        _grid_trial(study, "baseline:0.0", seed, TrialState.COMPLETE, _eps([0.80, 0.85], [100, 100]))
        _grid_trial(study, "constant:0.01", seed, TrialState.COMPLETE, _eps([0.84, 0.85], [30, 20]))
    _grid_trial(study, "constant:0.001", 0, TrialState.COMPLETE, _eps([0.80, 0.90], [50, 5]))
    _grid_trial(study, "constant:0.001", 1, TrialState.COMPLETE, _eps([0.30], [5]))  # diverged in epoch 2
    tested = []

    def fake_test(spec, m, s0, seed, run_dir, epoch, data_dir=None):
        tested.append((m, s0, seed, epoch))
        return {"test_acc": 0.8, "test_spikes": 10.0, "test_synops": 100.0, "test_ns": 1.0, "test_samples": 100}

    monkeypatch.setattr(sw, "evaluate_checkpoint", fake_test)
    written = atomic_writes
    (tmp_path / "test_cache.json").write_text('{"/runs/baseline:0.0_0|2": {"test_acc"')  # cut by a crash
    res = finalize_grid(spec, tmp_path, study, log=QUIET)
    t1 = {r["method"]: r for r in res["tables"]["table1"]}
    assert (t1["constant"]["s0"], t1["constant"]["epochs"]) == (1e-2, 2)  # not 1e-3's one-seed epoch 2
    assert res["incomplete"] == [{"method": "constant", "s0": 1e-3, "epochs": [2], "missing_seeds": [1]}]
    assert any(p["complete"] is False for p in res["points"])
    md = (tmp_path / "tables.md").read_text()
    assert "Points left out of the selection" in md and "constant s0=0.001: epoch(s) 2 lack seed(s) [1]" in md
    cache = json.loads((tmp_path / "test_cache.json").read_text())
    assert len(cache) == len(tested) == 4  # baseline and constant 1e-2, both seeds
    assert "test_cache.json" in written and "sweep_results.json" in written
    # the next report reads the cache back and tests nothing again
    finalize_grid(spec, tmp_path, study, log=QUIET)
    assert len(tested) == 4


def test_concurrent_reconcile_queues_one_retry(tmp_path, monkeypatch):
    """Process A fails a dead worker's trial; process B reconciles before A queues its retry: B
    queues one, A must not queue a second for the same grid point."""
    spec = tiny_spec(schedules={"constant": [1e-3]})
    url = default_storage(tmp_path)
    study = open_study(spec, make_storage(url), create=True)
    other = open_study(spec, make_storage(url), create=False)  # process B
    t = _trial_of_a_dead_worker(study, spec)
    storage = study._storage
    fail = storage.set_trial_state_values

    def fail_then_other_reconciles(*a, **kw):
        ok = fail(*a, **kw)
        monkeypatch.setattr(storage, "set_trial_state_values", fail)
        assert reconcile(other, min_age=0.0, log=QUIET) == 1
        return ok

    monkeypatch.setattr(storage, "set_trial_state_values", fail_then_other_reconciles)
    assert reconcile(study, min_age=0.0, log=QUIET) == 0
    trials = study.get_trials()
    assert trials[t.number].state == TrialState.FAIL
    assert len([x for x in trials if x.state == TrialState.WAITING]) == 1


def test_grid_retry_of_a_finished_point_is_pruned(tmp_path, monkeypatch):
    """Two retries queued for one grid point (two processes reconciling at once): the one that
    waited for the run directory's lock while the other trained is pruned, not trained again."""
    import contextlib

    import sparsespike.sweep as sw

    spec = tiny_spec(schedules={"constant": [1e-3]})
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=True)
    t = study.ask()
    t.suggest_categorical("setting", spec.settings())
    t.suggest_categorical("seed", spec.seeds)
    study.tell(t, state=TrialState.FAIL)
    frozen = study.get_trials()[t.number]
    sw._retry(study, frozen, 2)
    sw._retry(study, frozen, 2)
    first, second = study.ask(), study.ask()
    assert first.number < second.number

    @contextlib.contextmanager
    def lock_while_the_other_finishes(run_dir):
        study.tell(second, [0.5, 10.0])  # the other retry trained and finished meanwhile
        yield

    def no_training(*a, **kw):
        raise AssertionError("a duplicate trained")

    monkeypatch.setattr(sw, "_dir_lock", lock_while_the_other_finishes)
    monkeypatch.setattr(sw, "train_trial", no_training)
    obj = spec.objective(tmp_path, None, 1, QUIET)
    with pytest.raises(optuna.TrialPruned):
        obj(first)
    ua = study.get_trials()[first.number].user_attrs
    assert ua["duplicate_of"] == second.number and "error" not in ua


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--workers", "-3"], "--workers must be >= 0"),
        (["--max-retry", "-1"], "--max-retry must be >= 0"),
        (["--heartbeat", "0"], "--heartbeat must be >= 1"),
        (["--threads", "-2"], "--threads must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--grace", "-5"], "--grace must be longer than --heartbeat"),
        (["--heartbeat", "30", "--grace", "30"], "--grace must be longer than --heartbeat"),
    ],
)
def test_cli_flags_are_checked(tmp_path, capsys, flags, match):
    assert main(["allred_fmnist_sweep", "--out", str(tmp_path / "out"), *flags]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything started
