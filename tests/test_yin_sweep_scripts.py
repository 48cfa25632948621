"""benchmarks/yin_lambda_sweep.py (resumable JSON) and benchmarks/yin_penalty_front.py, with a fake trainer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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


def test_table3_pairs_each_pruned_run_with_its_seeds_control_and_resumes(tmp_path, monkeypatch):
    t3 = _load("yin_table3")
    acc = {"dense": 95.0, "ctrl": 95.2, "l0-0.0001": 95.5, "l0-1e-05": 95.4, "flops-9e-08": 94.9}
    trained = []

    def fake_train(cfg):
        variant, seed = Path(cfg["out_dir"]).name.rsplit("_s", 1)
        trained.append((variant, int(seed)))
        if variant != "dense":  # every other run starts from its own seed's dense weights
            assert cfg["init_from"] == str(tmp_path / "runs" / f"dense_s{seed}" / "model.pt")
            assert cfg["epochs"] == 4
        gated = variant not in t3.BASE
        assert cfg["connectivity"]["l0"] is gated
        if gated:
            penalty, lam = variant.split("-", 1)
            assert cfg["connectivity"]["penalty"] == penalty and cfg["connectivity"]["lam"] == float(lam)
            assert cfg["connectivity"]["freeze_after"] == 2
        res = _fake_result(1e-4 if gated else 0.0)
        res["test_acc_pruned"] = acc[variant] + 0.1 * int(seed)
        assert cfg["resume"] is ((variant, int(seed)) == ("ctrl", 1))
        Path(cfg["out_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(cfg["out_dir"]) / "run.json").write_text(json.dumps({"results": res}))
        (Path(cfg["out_dir"]) / "model.pt").write_bytes(b"")
        return res

    monkeypatch.setattr(t3, "train_yin", fake_train)
    cfg = str(REPO / "experiments" / "yin_mnist_small.yaml")
    common = ["--runs", str(tmp_path / "runs"), "--more", "4", "--freeze", "2", "--out", str(tmp_path / "t3.json")]
    common += ["--lam-l0", "1e-4", "1e-5"]
    t3.main([cfg, "--seeds", "0", *common])
    (tmp_path / "runs" / "ctrl_s1").mkdir()  # a run killed mid-way: its last.pt, no run.json yet
    (tmp_path / "runs" / "ctrl_s1" / "last.pt").write_bytes(b"")
    out = t3.main([cfg, "--seeds", "0", "1", *common])  # seed 0 is kept, only seed 1 trains
    names = ["dense", "ctrl", "l0-0.0001", "l0-1e-05", "flops-9e-08"]
    assert t3.variants([1e-4, 1e-5], [9e-8]) == names
    assert trained == [(v, s) for s in (0, 1) for v in names]
    summ = out["summary"]
    assert summ["l0-0.0001"]["minus_ctrl"] == pytest.approx([0.3, 0.3])
    assert summ["l0-1e-05"]["minus_ctrl_mean"] == pytest.approx(0.2)
    assert summ["flops-9e-08"]["minus_ctrl_mean"] == pytest.approx(-0.3)
    assert summ["ctrl"]["mean"] == pytest.approx(95.25)
    md = (tmp_path / "t3.md").read_text()
    assert "| l0-0.0001 | 1 | 95.60 | +0.30 | +0.50 |" in md and (tmp_path / "t3.png").is_file()
    assert summ["l0-0.0001"]["minus_dense"] == pytest.approx([0.5, 0.5])
    assert "l0-0.0001 95.55 % (+0.30 vs control, +0.50 vs dense)" in md and "dense 95.05 %," in md
    with pytest.raises(SystemExit, match="--freeze"):
        t3.main([cfg, "--more", "1", "--freeze", "2", "--collect"])


def test_table3_only_trains_the_named_variants_and_needs_the_seeds_dense_run(tmp_path, monkeypatch):
    t3 = _load("yin_table3")
    trained = []

    def fake_train(cfg):
        run = Path(cfg["out_dir"])
        trained.append(run.name)
        res = _fake_result(1e-4 if cfg["connectivity"]["l0"] else 0.0)
        run.mkdir(parents=True, exist_ok=True)
        (run / "run.json").write_text(json.dumps({"results": res}))
        (run / "model.pt").write_bytes(b"")
        return res

    monkeypatch.setattr(t3, "train_yin", fake_train)
    cfg = str(REPO / "experiments" / "yin_mnist_small.yaml")
    common = [cfg, "--runs", str(tmp_path / "runs"), "--more", "2", "--freeze", "1", "--lam-l0"]
    common += ["--lam-flops", "5e-8", "--out", str(tmp_path / "f4.json"), "--title", "Fig. 4, per seed"]
    with pytest.raises(SystemExit, match="dense_s0/model.pt, which does not exist"):
        t3.main([*common, "--seeds", "0", "--only", "ctrl"])
    with pytest.raises(SystemExit, match="flops-9e-08: not among"):
        t3.main([*common, "--seeds", "0", "--only", "flops-9e-08"])
    assert trained == []
    t3.main([*common, "--seeds", "0", "--only", "dense", "flops-5e-08"])  # first process
    assert trained == ["dense_s0", "flops-5e-08_s0"]
    out = t3.main([*common, "--seeds", "0", "--only", "ctrl"])  # second process: the control only
    assert trained[2:] == ["ctrl_s0"] and sorted(out["runs"]) == ["ctrl", "dense", "flops-5e-08"]
    assert all(out["runs"][v]["0"] for v in out["runs"])
    # folders with only the logs (run.json, as kept in docs/results) are read by --collect
    for run in (tmp_path / "runs").iterdir():
        (run / "model.pt").unlink()
    again = t3.main([*common, "--seeds", "0", "--collect"])
    assert again["runs"] == out["runs"] and len(trained) == 3
    (tmp_path / "runs" / "ctrl_s0" / "run.json").write_text('{"results": ')  # cut off mid-write
    assert t3.main([*common, "--seeds", "0", "--collect"])["runs"]["ctrl"] == {}


def test_table3_default_report_is_not_replaced_by_another_configs(tmp_path, monkeypatch):
    """Without --out, a run of a second config (Fig. 4's yin_mnist_scnn) is refused before any
    training when the default report holds the first config's (Table 3's) table."""
    t3 = _load("yin_table3")
    trained = []
    monkeypatch.setattr(t3, "train_yin", lambda cfg: trained.append(cfg))
    monkeypatch.chdir(tmp_path)
    report = tmp_path / t3.DEFAULT_OUT
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"argv": ["experiments/yin_mnist_small.yaml", "--seeds", "0"], "runs": {}}))
    scnn = str(REPO / "experiments" / "yin_mnist_scnn.yaml")
    with pytest.raises(SystemExit, match="holds the report of experiments/yin_mnist_small.yaml"):
        t3.main([scnn, "--seeds", "3", "--runs", str(tmp_path / "runs"), "--only", "dense"])
    assert trained == [] and json.loads(report.read_text())["argv"][0] == "experiments/yin_mnist_small.yaml"


def test_yin_load_config_applies_overrides_and_data_dir_and_rejects_a_bare_key():
    from sparsespike.errors import ConfigError
    from sparsespike.sparsity.yin_models import load_config

    path = REPO / "experiments" / "yin_mnist_small.yaml"
    cfg = load_config(path, ["connectivity.lam=3e-5", "optimizer.gate_lr=0.1", "epochs=7"], "/data")
    # PyYAML reads 3e-5 (no dot) as a string; train_yin parses it with float / config_float
    assert float(cfg["connectivity"]["lam"]) == 3e-5 and cfg["optimizer"]["gate_lr"] == 0.1 and cfg["epochs"] == 7
    assert cfg["data"]["root"] == "/data" and cfg["data"]["train_subset"] == 1000
    with pytest.raises(ConfigError, match="epochs"):
        load_config(path, ["epochs"])


def test_eventprop_train_resumes_finished_seeds_only_under_the_same_overrides(tmp_path, monkeypatch):
    ep = _load("eventprop_train")
    trained = []

    def fake_train(cfg, seed, progress=False):
        trained.append((seed, cfg.phases[0].alpha))
        m = {"accuracy": 0.9 + 0.01 * seed, "loss_ce": 0.1, "n_s": 1.3, "n_s_per_layer": [1.3]}
        m.update(silent_neurons_per_layer=[0], latency_ms=20.0)
        hist = [{"epoch": 1, "phase": 1, "val": m, "train": m}]
        return {"final": {"val": m, "test": m}, "timing": {"train_s_per_epoch": 0.1}, "history": hist}

    monkeypatch.setattr(ep, "train_eventprop", fake_train)
    cfg = str(REPO / "experiments" / "eventprop_yinyang_2phase.yaml")
    out = ["--out", str(tmp_path / "ep.json")]
    ep.main([cfg, "--seeds", "0", *out])
    s = ep.main([cfg, "--seeds", "0", "1", *out])  # seed 0 kept
    assert [t[0] for t in trained] == [0, 1] and s["median_test_accuracy"] == pytest.approx(0.905)
    phase = "{{loss: {}, alpha: 0.005, eta: 0.4, lr: 0.005, epochs: 1}}"
    other = f"phases=[{phase.format('L_A')}, {phase.format('L')}]"
    ep.main([cfg, "--seeds", "0", "--set", other, *out])  # other overrides: seed 0 trains anew
    assert trained[-1] == (0, 0.005)
    from sparsespike.errors import ConfigError

    with pytest.raises(ConfigError, match="key=value"):
        ep.main([cfg, "--set", "alpha", *out])


def test_cli_train_passes_a_yin_config_with_its_overrides_seed_data_dir_and_resume(tmp_path, monkeypatch, capsys):
    import sparsespike.sparsity.yin_models as ym
    from sparsespike import cli

    seen = {}

    def fake_train(cfg):
        seen.update(cfg)
        return {"test_acc": 91.0, "test_acc_pruned": 92.0, "flops_ratio": 0.3, "train_time_s": 1.0}

    monkeypatch.setattr(ym, "train_yin", fake_train)
    path = str(REPO / "experiments" / "yin_mnist_small.yaml")
    argv = ["train", path, "--set", "epochs=3", "--set", "connectivity.lam=2e-5", "--seed", "4"]
    assert cli.main([*argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert seen["epochs"] == 3 and float(seen["connectivity"]["lam"]) == 2e-5 and seen["seed"] == 4
    assert seen["data"]["root"] == str(tmp_path) and seen["out_dir"] == str(tmp_path / "r") and seen["resume"]
    assert json.loads(capsys.readouterr().out)["test_acc_pruned"] == 92.0
    # without --out: runs/<name>_seed<seed>, as for the other engines
    seen.clear()
    assert cli.main(["train", path, "--seed", "5"]) == 0
    assert seen["out_dir"] == str(Path("runs") / "yin_mnist_small_seed5") and "resume" not in seen
    # a bare key is a clear error, not a traceback
    assert cli.main(["train", path, "--set", "epochs"]) == 2
    assert "epochs" in capsys.readouterr().err
