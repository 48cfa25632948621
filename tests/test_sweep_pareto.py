"""``kind: pareto`` sweeps: spec, the front, the sampler's view, slots, retries of lost trials, report."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sweep_kill import kill_worker_mid_trial  # noqa: E402

from sparsespike.errors import ConfigError  # noqa: E402
from sparsespike.pareto import (  # noqa: E402
    ParetoSpec,
    SearchView,
    dominates,
    optuna_front,
    pareto_front,
    set_path,
    write_pareto_report,
)
from sparsespike.sweep import (  # noqa: E402
    default_storage,
    launch,
    load_spec,
    make_storage,
    open_study,
    reconcile,
    worker_loop,
)

QUIET = lambda *a: None  # noqa: E731

# a tiny gated Yin-Yang network with the spike-count loss: 2 epochs of 120 samples
TINY = {
    "name": "tiny_pareto",
    "kind": "pareto",
    "config": "demo_yinyang",
    "set": {
        "train.epochs": 2,
        "data.train_subset": 120,
        "data.test_subset": 100,
        "data.batch_size": 40,
        "data.encoding.T": 12,
        "model.layers": [{"type": "linear", "out": 16}, {"type": "readout", "out": 3, "beta": 0.95, "mode": "max"}],
        "model.gates": {"lam": 1.0e-3, "init_mean": 1.0},
    },
    "val_subset": 100,
    "seed": 0,
    "trials": 2,
    "sampler": "nsga2",
    "space": {
        "model.gates.lam": {"log": [1.0e-4, 1.0e-1]},
        "train.regularizers.0.s0": {"log": [1.0e-4, 1.0e-2]},  # a list index in a dotted key
        "model.b_th": {"uniform": [0.1, 0.4]},
    },
    "references": {
        "dense_ce": {"model.backward": "dense", "model.gates": None, "train.regularizers": []},
        "l0_only": {"train.regularizers": []},
    },
}


def tiny(**over) -> ParetoSpec:
    return ParetoSpec.from_dict({**TINY, **over})


# ---------------------------------------------------------------- the front
def brute_front(points) -> list[int]:
    ok = [i for i, p in enumerate(points) if math.isfinite(p[0]) and math.isfinite(p[1])]
    return [i for i in ok if not any(dominates(points[j], points[i]) for j in ok if j != i)]


def test_pareto_front_matches_brute_force_with_ties_and_duplicates():
    rng = random.Random(0)
    for case in range(400):
        n = rng.randint(0, 25)
        coarse = case % 2 == 0  # few distinct values: many ties and exact duplicates
        pts = [
            (rng.randint(0, 4) / 4, float(rng.randint(0, 5))) if coarse else (rng.random(), rng.random() * 1e5)
            for _ in range(n)
        ]
        if n and case % 7 == 0:
            pts[rng.randrange(n)] = (math.nan, 1.0)
        assert pareto_front(pts) == brute_front(pts), pts
    # by hand: duplicates of a front point are all on it; an equal-cost, less accurate point is not
    pts = [(0.9, 100.0), (0.9, 100.0), (0.8, 100.0), (0.95, 300.0), (0.7, 50.0), (0.7, 60.0), (0.95, 300.0)]
    assert pareto_front(pts) == [0, 1, 3, 4, 6]
    assert pareto_front([]) == []


def test_pareto_front_agrees_with_optuna_best_trials():
    rng = random.Random(1)
    for _ in range(20):
        study = optuna.create_study(directions=["maximize", "minimize"])
        pts = [(rng.randint(0, 3) / 3, float(rng.randint(0, 4))) for _ in range(rng.randint(1, 15))]
        for a, c in pts:
            study.add_trial(optuna.trial.create_trial(values=[a, c]))
        assert optuna_front(study.trials) == pareto_front(pts)


# ---------------------------------------------------------------- spec
def test_spec_parsing_and_trial_configs(tmp_path):
    spec = tiny()
    assert spec.trials == 2 and spec.sampler == "nsga2" and set(spec.references) == {"dense_ce", "l0_only"}
    cfg = spec.trial_config({"model.gates.lam": 0.02, "train.regularizers.0.s0": 5e-3, "model.b_th": 0.3})
    assert cfg.model.gates == {"lam": 0.02, "init_mean": 1.0}
    assert cfg.train.regularizers[0]["s0"] == 5e-3 and cfg.train.regularizers[0]["schedule"] == "linear"
    assert cfg.model.b_th == 0.3 and cfg.train.epochs == 2 and cfg.data.val_fraction == 0.1
    ref = spec.trial_config(reference="dense_ce")
    assert ref.model.backward == "dense" and ref.model.gates is None and ref.train.regularizers == []
    # a written copy (what workers load) is the same search
    p = spec.write(tmp_path / "spec.yaml")
    again = load_spec(p)
    assert isinstance(again, ParetoSpec) and again.fingerprint() == spec.fingerprint()
    assert again.space == spec.space and again.references == spec.references
    # extending the budget keeps the study; changing the space does not
    assert tiny(trials=10).fingerprint() == spec.fingerprint()
    assert tiny(space={"model.b_th": {"uniform": [0.1, 0.3]}}).fingerprint() != spec.fingerprint()
    # int and choice; the sampler as a mapping with options
    s2 = tiny(
        space={"model.layers.0.out": {"int": [8, 32]}, "model.backward": {"choice": ["dense", "sparse"]}},
        sampler={"name": "tpe", "n_startup_trials": 3},
    )
    assert s2.sampler == "tpe" and s2.sampler_options == {"n_startup_trials": 3}
    assert s2.trial_config({"model.layers.0.out": 20, "model.backward": "sparse"}).model.layers[0]["out"] == 20
    # the built-in specs parse once their experiment configs exist
    for name in ("combined_fmnist_pareto", "combined_nmnist_pareto"):
        s = load_spec(name)
        assert isinstance(s, ParetoSpec) and len(s.references) == 4


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"space": {"model.b_th": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
        ({"space": {"model.b_th": {"uniform": [0.4, 0.1]}}}, "lo < hi"),
        ({"space": {"model.b_th": {"uniform": [0.2, 0.2]}}}, "lo < hi"),
        ({"space": {"model.gates.lam": {"log": [0.0, 1.0e-3]}}}, "log needs lo > 0"),
        ({"space": {"model.b_th": {"int": [1.5, 3]}}}, "integers"),
        ({"space": {"model.b_th": {"choice": []}}}, "at least one"),
        ({"space": {"model.b_th": {"choice": [{"a": 1}]}}}, "scalars"),
        ({"space": {"model.b_th": [0.1, 0.4]}}, "a distribution is one of"),
        ({"space": {"model.gates.lamda": {"log": [1e-5, 1e-3]}}}, "'model.gates.lamda' is not in the experiment"),
        ({"space": {"model.bth": {"uniform": [0.1, 0.4]}}}, "not in the experiment config"),
        ({"space": {"train.regularizers.3.s0": {"log": [1e-5, 1e-3]}}}, "out of range"),
        ({"space": {"train.regularizers.x.s0": {"log": [1e-5, 1e-3]}}}, "is a list"),
        ({"space": {"model.gates": {"uniform": [0.1, 0.4]}}}, "search over a scalar"),
        ({"space": {}}, "at least one"),
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"trials": "many"}, "trials must be an integer >= 1"),
        ({"sampler": "cmaes"}, "unknown sampler 'cmaes'"),
        ({"sampler": {"name": "nsga2", "population_size": 1}}, "sampler 'nsga2'"),
        ({"sampler": {"name": "tpe", "bogus": 1}}, "sampler 'tpe'"),
        ({"references": {"bad name!": {}}}, "reference name"),
        ({"references": {"r": {"modle.gates": None}}}, "unknown config key"),
        ({"bogus": 1}, "unknown keys"),
        ({"config": "no_such_config.yaml"}, "not found"),
        ({"val_fraction": 1.5}, "val_fraction"),
        # every value of a distribution is checked, not one sample of it
        ({"space": {"train.epochs": {"choice": [2, "two"]}}}, "allows 'two': train.epochs must be an int"),
        ({"space": {"train.epochs": {"choice": [2, -3]}}}, "allows -3: train.epochs must be >= 1"),
        ({"space": {"train.epochs": {"int": [-2, 4]}}}, "allows -2: train.epochs must be >= 1"),
        ({"space": {"model.b_th": {"uniform": [-1.0, 3.0]}}}, "allows -1.0: model.b_th must be >= 0"),
        ({"space": {"model.gates.lam": {"log": [1.0e-4, "inf"]}}}, "log needs finite bounds"),
        ({"space": {"model.b_th": {"uniform": ["-inf", 0.3]}}}, "uniform needs finite bounds"),
        ({"space": {"model.b_th": {"uniform": [0.1, "nan"]}}}, "uniform needs finite bounds"),
    ],
)
def test_spec_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**over)


def test_spec_kind_dispatch_and_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**TINY, "kind": "random"}))
    with pytest.raises(ConfigError, match="unknown kind 'random'"):
        load_spec(p)
    d = {k: v for k, v in TINY.items() if k != "trials"}
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="missing key 'trials'"):
        load_spec(p)
    # no kind: the Allred grid, as before
    assert load_spec("allred_fmnist_sweep").kind == "grid"


def test_set_path_list_indices():
    d = {"a": [{"x": 1}, {"x": 2}], "b": {"c": 3}}
    set_path(d, "a.1.x", 5, create=False, where="t")
    set_path(d, "b.new.deep", 7, create=True, where="t")
    assert d == {"a": [{"x": 1}, {"x": 5}], "b": {"c": 3, "new": {"deep": 7}}}
    with pytest.raises(ConfigError, match="not in the experiment config"):
        set_path(d, "b.missing", 1, create=False, where="t")
    set_path(d, "a.2", {"x": 9}, create=True, where="t")  # --set appends at index len
    assert d["a"][2] == {"x": 9}
    with pytest.raises(ConfigError, match="out of range"):
        set_path(d, "a.4", 1, create=True, where="t")
    with pytest.raises(ConfigError, match="out of range"):
        set_path(d, "a.3", 1, create=False, where="t")  # a sweep space never appends


# ---------------------------------------------------------------- study plumbing (no training)
@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_sampler_never_sees_references_and_slots_count_the_budget(tmp_path, sampler):
    spec = tiny(trials=3, sampler=sampler)
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=True)
    spec.prepare(study, QUIET)
    spec.prepare(study, QUIET)  # idempotent: resuming does not enqueue them again
    refs = [t for t in study.get_trials() if t.user_attrs.get("reference")]
    assert len(refs) == 2 and all(t.state == TrialState.WAITING for t in refs)
    st = spec.status(study)
    assert st == {"done": 0, "running": 0, "waiting": 2, "unstarted": 3, "failed": 0, "total": 5}
    # references complete with values the sampler must ignore
    for _ in range(2):
        t = study.ask()
        assert t.user_attrs["reference"] and t.params == {}
        study.tell(t, [0.99, 1.0])
    view = SearchView(study)
    assert view.get_trials() == [] and view._get_trials(use_cache=False) == []
    # NSGA-II (population 2 here) / TPE (2 startup trials) sample past their random start even
    # with parameter-less references done
    for i in range(4):
        t = study.ask()
        assert not t.user_attrs.get("reference")
        params = {k: d.suggest(t, k) for k, d in spec.space.items()}
        assert 1e-4 <= params["model.gates.lam"] <= 1e-1
        study.tell(t, [0.5 + 0.1 * i, 100.0 - i])
    assert len(SearchView(study).get_trials(states=(TrialState.COMPLETE,))) == 4
    # four fresh search trials for a budget of 3: the 4th is surplus, and a 5th would be too
    slots = spec.search_slots(study.get_trials())
    assert len(slots) == 3
    st = spec.status(study)
    assert st["done"] == 5 and st["unstarted"] == 0 and st["total"] == 5


def test_surplus_trial_is_pruned_before_training(tmp_path):
    spec = tiny(trials=1, references={})
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=True)
    first = study.ask()  # the only slot, "running" in another worker
    second = study.ask()
    obj = spec.objective(tmp_path, None, 1, QUIET)
    with pytest.raises(optuna.TrialPruned):
        obj(second)
    study.tell(second, state=TrialState.PRUNED)
    assert study.get_trials()[second.number].user_attrs["surplus"] is True
    assert spec.search_slots(study.get_trials()) == [first.number]
    assert not (tmp_path / "trials" / f"t{second.number:04d}").exists()


def test_dead_worker_search_trial_is_retried_not_lost(tmp_path, data_dir):
    """A search trial whose worker died is failed, re-queued with its parameters and run once more;
    the budget is not spent on a new trial and nothing is lost."""
    spec = tiny(trials=1, references={})
    url = default_storage(tmp_path)
    study = open_study(spec, make_storage(url), create=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    params = {k: d.suggest(t, k) for k, d in spec.space.items()}
    assert spec.status(study)["running"] == 1
    assert reconcile(study, min_age=0.0, log=QUIET, key=spec.trial_key) == 1
    trials = study.get_trials()
    assert trials[t.number].state == TrialState.FAIL
    waiting = [x for x in trials if x.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == params and "pid" not in waiting[0].user_attrs
    st = spec.status(study)
    assert st["waiting"] == 1 and st["unstarted"] == 0 and st["failed"] == 0
    assert reconcile(study, min_age=0.0, log=QUIET, key=spec.trial_key) == 0  # not re-queued twice
    ran = worker_loop(spec, tmp_path, url, data_dir=data_dir, log=QUIET)
    assert ran == 1  # the retry only: no new trial for the same slot
    trials = study.get_trials()
    done = [x for x in trials if x.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].params == params
    assert done[0].system_attrs["failed_trial"] == t.number
    assert done[0].user_attrs["run_dir"].endswith(f"t{t.number:04d}")
    assert spec.status(study)["done"] == spec.status(study)["total"] == 1


def test_two_retries_of_one_slot_train_once(tmp_path, monkeypatch, atomic_writes):
    """Two processes reconciling at once may queue two retries for one search slot: the second to
    start is pruned (hidden from the sampler) while the first runs; trial.json is written atomically."""
    import sparsespike.pareto as pareto
    from sparsespike.sweep import _retry

    spec = tiny(trials=1, references={})
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=True)
    t = study.ask()
    params = {k: d.suggest(t, k) for k, d in spec.space.items()}
    study.tell(t, state=TrialState.FAIL)
    frozen = study.get_trials()[t.number]
    _retry(study, frozen, 2)
    _retry(study, frozen, 2)
    first, second = study.ask(), study.ask()
    trained = []

    def fake_train(trial, *a, **kw):
        trained.append(trial.number)
        return [{"epoch": 2, "val_acc": 0.5, "val_synops": 10.0}]

    monkeypatch.setattr(pareto, "train_trial", fake_train)
    written = atomic_writes
    obj = spec.objective(tmp_path, None, 1, QUIET)
    with pytest.raises(optuna.TrialPruned):
        obj(second)  # the first one is RUNNING
    study.tell(second, state=TrialState.PRUNED)
    assert study.get_trials()[second.number].user_attrs["duplicate_of"] == first.number
    assert second.number not in {x.number for x in SearchView(study).get_trials()}
    assert obj(first) == (0.5, 10.0) and trained == [first.number]
    assert "trial.json" in written
    assert json.loads((tmp_path / "trials" / f"t{t.number:04d}" / "trial.json").read_text())["params"] == params


def test_report_survives_a_cut_test_cache(tmp_path, monkeypatch, atomic_writes):
    """A test_cache.json cut by a crash is evaluated again (it broke every later --report-only);
    the cache is written atomically."""
    import sparsespike.pareto as pareto
    from sparsespike.pareto import finalize_pareto

    spec = tiny(trials=2, references={})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (acc, syn) in enumerate([(0.6, 100.0), (0.7, 50.0)]):
        t = study.ask()
        for k, d in spec.space.items():
            d.suggest(t, k)
        t.set_user_attr("epochs", [{"epoch": 2, "val_acc": acc, "val_synops": syn, "val_spikes": 1.0}])
        t.set_user_attr("run_dir", str(tmp_path / "trials" / f"t{i:04d}"))
        study.tell(t, [acc, syn])
    tested = []

    def fake_eval(spec, cfg, run_dir, epoch, data_dir=None):
        tested.append(str(run_dir))
        return {"test_acc": 0.65, "test_spikes": 1.0, "test_synops": 40.0, "test_ns": 1.0, "test_samples": 100}

    monkeypatch.setattr(pareto, "evaluate_run", fake_eval)
    written = atomic_writes
    (tmp_path / "test_cache.json").write_text('{"x|2": {"test_acc": 0.')  # cut by a crash
    res = finalize_pareto(spec, tmp_path, study, log=QUIET)
    assert res["front"] == [1] and tested == [str(tmp_path / "trials" / "t0001")]
    assert len(json.loads((tmp_path / "test_cache.json").read_text())) == 1
    assert "test_cache.json" in written and "pareto.json" in written
    finalize_pareto(spec, tmp_path, study, log=QUIET)
    assert len(tested) == 1  # read back from the cache


# ---------------------------------------------------------------- a whole (tiny) search
def _check_report(out: Path, spec: ParetoSpec) -> dict:
    res = json.loads((out / "pareto.json").read_text())
    pts = res["points"]
    assert sum(p["role"] == "search" for p in pts) == spec.trials
    assert {p["reference"] for p in pts if p["role"] == "reference"} == set(spec.references)
    assert res["front_check"]["agree"] and res["front"]
    for p in pts:
        assert 0 <= p["val_acc"] <= 1 and p["val_synops"] >= 0 and p["epoch"] == 2
        assert (Path(p["run_dir"]) / "epochs" / "epoch_002.pt").is_file()
    search = [p for p in pts if p["role"] == "search"]
    assert sorted(p["trial"] for p in search if p["on_front"]) == sorted(res["front"])
    assert pareto_front([(p["val_acc"], p["val_synops"]) for p in search]) == [
        i for i, p in enumerate(search) if p["on_front"]
    ]
    for p in pts:
        if p["role"] == "reference" or p["on_front"]:
            assert 0 <= p["test_acc"] <= 1 and p["test_synops"] >= 0 and p["test_spikes"] >= 0
    md = (out / "pareto.md").read_text()
    assert "Pareto front on the test set" in md and "dense_ce" in md and "`model.gates.lam`" in md
    assert (out / "pareto.png").stat().st_size > 5000
    return res


def test_tiny_pareto_search_in_process_and_report_only(tmp_path, data_dir):
    spec = tiny()
    launch(spec, tmp_path, workers=0, data_dir=data_dir, log=QUIET)
    res = _check_report(tmp_path, spec)
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=False)
    st = spec.status(study)
    assert st["done"] == st["total"] == 4
    # the dense CE reference (no gates, no spike term) was trained and its SynOps counted
    ref = next(p for p in res["points"] if p["reference"] == "dense_ce")
    assert ref["val_synops"] > 0
    # --report-only rebuilds the files from the study (tests come from the cache)
    (tmp_path / "pareto.png").unlink()
    from sparsespike.sweep import main

    assert main([str(tmp_path / "sweep_spec.yaml"), "--out", str(tmp_path), "--report-only"]) == 0
    again = _check_report(tmp_path, spec)
    assert again["front"] == res["front"]


def test_report_from_results(tmp_path):
    pts = [
        {
            "trial": 0,
            "slot": "ref_dense",
            "role": "reference",
            "reference": "dense",
            "params": {},
            "epoch": 3,
            "val_acc": 0.9,
            "val_synops": 5e5,
            "val_spikes": 100.0,
            "on_front": None,
            "dominated_by_front": False,
            "test_acc": 0.89,
            "test_synops": 5.1e5,
            "test_spikes": 101.0,
        },
        {
            "trial": 1,
            "slot": "t0001",
            "role": "search",
            "reference": None,
            "params": {"model.b_th": 0.2},
            "epoch": 3,
            "val_acc": 0.88,
            "val_synops": 1e4,
            "val_spikes": 50.0,
            "on_front": True,
            "test_acc": 0.87,
            "test_synops": 1.1e4,
            "test_spikes": 52.0,
        },
        {
            "trial": 2,
            "slot": "t0002",
            "role": "search",
            "reference": None,
            "params": {"model.b_th": 0.3},
            "epoch": 3,
            "val_acc": 0.80,
            "val_synops": 2e4,
            "val_spikes": 60.0,
            "on_front": False,
        },
        {
            "trial": 3,
            "slot": "t0003",
            "role": "search",
            "reference": None,
            "params": {"model.b_th": 0.1},
            "epoch": 3,
            "val_acc": 0.50,
            "val_synops": 0.0,
            "val_spikes": 0.0,
            "on_front": True,
            "test_acc": 0.5,
            "test_synops": 0.0,
            "test_spikes": 0.0,
        },
    ]
    res = {"name": "demo", "points": pts, "front": [3, 1], "failed": [{"slot": "t0004", "trial": 4, "error": "x"}]}
    files = write_pareto_report(res, tmp_path)
    md = files["markdown"].read_text()
    assert "| 1 | t0001 | 0.2 | 3 | 88.00 % | 10,000 | 50.0 | **yes** |" in md
    assert "| 0 | ref_dense | — | 3 | 90.00 % | 500,000 | 100.0 | reference |" in md
    assert "Failed slots" in md and "`t0004`" in md
    assert files["plot"].stat().st_size > 5000  # zero SynOps is drawn at the left edge of the log axis
    assert json.loads(files["json"].read_text())["front"] == [3, 1]


# ---------------------------------------------------------------- slow: worker processes
@pytest.mark.slow
def test_tiny_pareto_search_two_worker_processes(tmp_path, data_dir):
    spec = tiny()  # 2 search trials + 2 references = 4 trials
    launch(spec, tmp_path, workers=2, data_dir=data_dir, poll=0.5, log=QUIET)
    _check_report(tmp_path, spec)
    study = open_study(spec, make_storage(default_storage(tmp_path)), create=False)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    assert os.getpid() not in {t.user_attrs.get("pid") for t in done}  # trials ran in the workers
    assert len(list((tmp_path / "workers").glob("worker*.log"))) == 2


@pytest.mark.slow
def test_killed_worker_process_pareto_trial_is_retried_and_resumed(tmp_path, data_dir):
    """SIGKILL a worker mid-trial: its trial is re-queued with its parameters, resumed from last.pt."""
    d = dict(TINY)
    d["set"] = {**TINY["set"], "train.epochs": 4, "data.train_subset": 1500}
    d["trials"] = 1
    d["references"] = {}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    spec = load_spec(spec_path)
    killed, retried, study, logs = kill_worker_mid_trial(spec, spec_path, out, data_dir)
    assert retried[-1].params == killed.params
    assert spec.status(study)["done"] == spec.status(study)["total"] == 1
    assert "re-queued" in logs and "(resuming)" in logs
    res = json.loads((out / "pareto.json").read_text())
    assert [p["trial"] for p in res["points"]] == [retried[-1].number]
