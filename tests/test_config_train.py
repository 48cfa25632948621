"""Config errors, trainer logs/checkpoints, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from sparsespike.config import load_config
from sparsespike.errors import ConfigError, DataError
from sparsespike.train import Trainer, load_checkpoint

SMALL = {
    "name": "tiny",
    "seed": 3,
    "data": {
        "dataset": "yinyang",
        "encoding": {"name": "latency", "T": 12, "bias_spike": True},
        "batch_size": 50,
        "train_subset": 400,
        "test_subset": 200,
    },
    "model": {
        "neuron": {"beta": 0.9},
        "weight_scale": 4.0,
        "layers": [{"type": "linear", "out": 16}, {"type": "readout", "out": 3}],
    },
    "train": {
        "epochs": 3,
        "optimizer": {"name": "adam", "lr": 0.01},
        "lr_schedule": {"name": "exponential", "gamma": 0.9},
    },
}


def _write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_unknown_config_key_is_named(tmp_path):
    bad = json.loads(json.dumps(SMALL))
    bad["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(_write(tmp_path, bad))
    bad = json.loads(json.dumps(SMALL))
    bad["data"]["dataset"] = "imagenet"
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        Trainer(load_config(_write(tmp_path, bad)), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("train.epochs", "abc", "train.epochs must be an int, got 'abc'"),
        ("train.epochs", 2.5, "train.epochs must be an int"),
        ("train.epochs", 0, "train.epochs must be >= 1"),
        ("data.batch_size", 0, "data.batch_size must be >= 1"),
        ("data.train_subset", -5, "data.train_subset must be >= 1"),
        ("data.val_fraction", 1.5, "data.val_fraction must be < 1.0"),
        ("model.backward", "fast", "model.backward must be one of 'dense', 'sparse'"),
        ("train.grad_clip", "abc", "train.grad_clip must be a float"),
        ("seed", -1, "seed must be >= 0, got -1"),
        ("seed", 2**32, "seed must be < 4294967296"),
        ("model.b_th", "1e-1", None),  # PyYAML reads 1e-1 as a string: parsed as a float
    ],
)
def test_config_values_are_type_and_range_checked(tmp_path, key, value, match):
    if match is None:
        assert load_config(_write(tmp_path, SMALL), {key: value}).model.b_th == pytest.approx(0.1)
        return
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, SMALL), {key: value})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("train.optimizer.momentum", 0.9, "unknown config key 'train.optimizer.momentum'; valid keys here: .*betas"),
        ("train.optimizer.lr", "abc", "train.optimizer.lr .*must be a number"),
        ("train.optimizer.lr", -1.0, "train.optimizer.lr must be a finite number > 0"),
        ("train.optimizer.lr", 0, "train.optimizer.lr must be a finite number > 0, got 0"),
        ("train.lr_schedule", {"name": "step", "step_size": 1}, "unknown key 'step_size' in lr_schedule 'step'"),
        ("train.lr_schedule", {"name": "cosine", "eta_mn": 0.0}, "unknown key 'eta_mn'"),
        ("train.lr_schedule", {"name": "poly"}, "unknown lr_schedule 'poly'"),
        ("model.gates", {"lam": 1e-3, "init_sd": 1.0}, "unknown config key 'model.gates.init_sd'; .*init_std.*lr"),
        ("train.device", "tpu9", "train.device"),
    ],
)
def test_pass_through_sections_name_their_bad_keys(tmp_path, data_dir, key, value, match):
    """Sections handed to torch or to add_l0_gates (optimizer, schedule, gates, device) refuse
    unknown keys and bad values with a ConfigError, not a TypeError deep inside (or silence)."""
    cfg = load_config(_write(tmp_path, SMALL), {key: value})
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, tmp_path / "r", data_dir, progress=False).fit()


def test_step_schedule_decays_every_step_epochs(tmp_path, data_dir):
    cfg = load_config(
        _write(tmp_path, SMALL), {"train.lr_schedule": {"name": "step", "step": 1, "gamma": 0.5}, "train.epochs": 2}
    )
    Trainer(cfg, tmp_path / "r", data_dir, progress=False).fit()
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**2)


def test_train_writes_logs_and_learns(tmp_path, data_dir):
    cfg = load_config(_write(tmp_path, SMALL))
    res = Trainer(cfg, tmp_path / "run", data_dir, progress=False).fit()
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 3 and "torch" in info["versions"]
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert res["test_acc"] > 0.5  # 3 classes: chance is ~0.33
    assert res["metrics"]["spike_count"] > 0


@pytest.mark.parametrize("gates", [None, {"lam": 1e-3, "lr": 0.05, "seed": 0}], ids=["plain", "seeded_gates"])
def test_resume_gives_identical_weights(tmp_path, data_dir, gates):
    """Also with L0 gates that own a seeded generator: their noise is reseeded from (seed, epoch)."""
    small = json.loads(json.dumps(SMALL))
    if gates is not None:
        small["model"]["gates"] = gates
    cfg = load_config(_write(tmp_path, small))
    Trainer(cfg, tmp_path / "full", data_dir, progress=False).fit()
    cfg2 = load_config(_write(tmp_path, small), {"train.epochs": 3})
    # interrupted run: train 3 epochs but stop after the first (simulate a crash by truncation)
    part = load_config(_write(tmp_path, small), {"train.epochs": 3})
    t = Trainer(part, tmp_path / "part", data_dir, progress=False)
    t.phases[0].epochs = 1
    t.fit()
    ck = load_checkpoint(tmp_path / "part" / "last.pt")
    # the checkpoint says "next: phase 1" for a 1-epoch phase; rewrite it as epoch 1 of 3
    ck["phase"], ck["epoch_in_phase"] = 0, 1
    torch.save(ck, tmp_path / "part" / "last.pt")
    Trainer(cfg2, tmp_path / "part", data_dir, resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_refuses_a_changed_config_and_allows_a_longer_run(tmp_path, data_dir):
    two = load_config(_write(tmp_path, SMALL), {"train.epochs": 2})
    Trainer(two, tmp_path / "r", data_dir, progress=False).fit()

    def resume(over):
        cfg = load_config(_write(tmp_path, SMALL), over)
        return Trainer(cfg, tmp_path / "r", data_dir, resume=True, progress=False)

    with pytest.raises(ConfigError, match=r"train.optimizer.lr: 0.01 -> 0.02"):
        resume({"train.epochs": 3, "train.optimizer.lr": 0.02}).fit()
    with pytest.raises(ConfigError, match=r"seed: 3 -> 4"):
        resume({"train.epochs": 3, "seed": 4}).fit()
    with pytest.raises(ConfigError, match=r"model.layers"):
        resume({"train.epochs": 3, "model.layers.0.out": 8}).fit()
    with pytest.raises(ConfigError, match="holds 2 epochs of phase 'main', the config gives it only 1"):
        resume({"train.epochs": 1}).fit()
    # longer, on another thread count and with another name: free (the refusals above wrote nothing)
    res = resume({"train.epochs": 3, "train.num_threads": 1, "name": "renamed"}).fit()
    assert res["epochs"] == 3
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_refuses_to_bend_a_cosine_schedule(tmp_path, data_dir):
    cos = json.loads(json.dumps(SMALL))
    cos["train"]["lr_schedule"] = {"name": "cosine"}
    cfg = load_config(_write(tmp_path, cos), {"train.epochs": 4})
    t = Trainer(cfg, tmp_path / "r", data_dir, progress=False)
    next(t.epochs())  # one epoch of four, then stop: last.pt says "epoch 1 of phase main"
    longer = load_config(_write(tmp_path, cos), {"train.epochs": 6})
    with pytest.raises(ConfigError, match="cosine lr_schedule spans the 4 epochs"):
        Trainer(longer, tmp_path / "r", data_dir, resume=True, progress=False).fit()
    res = Trainer(cfg, tmp_path / "r", data_dir, resume=True, progress=False).fit()
    assert res["epochs"] == 4


def test_corrupt_checkpoint_is_named(tmp_path, data_dir):
    cfg = load_config(_write(tmp_path, SMALL))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="last.pt"):
        Trainer(cfg, tmp_path / "run", data_dir, resume=True, progress=False).fit()


def test_phases_have_their_own_lr(tmp_path, data_dir):
    cfg = dict(SMALL)
    cfg = json.loads(json.dumps(cfg))
    cfg["train"]["phases"] = [{"name": "one", "epochs": 1, "lr": 0.01}, {"name": "two", "epochs": 1, "lr": 0.001}]
    res = Trainer(load_config(_write(tmp_path, cfg)), tmp_path / "r", data_dir, progress=False).fit()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["one", "two"]
    assert lines[0]["lr"] == 0.01 and abs(lines[1]["lr"] - 0.001) < 1e-12
    assert res["epochs"] == 2
    # phase "one" is finished: resuming with it longer is refused (its extra epochs would never
    # run); phase "two", where the run stopped, may grow
    for n in (2, 3):
        cfg["train"]["phases"][0]["epochs"] = n
        with pytest.raises(ConfigError, match="phase 'one' .* finished after 1 epochs"):
            Trainer(load_config(_write(tmp_path, cfg)), tmp_path / "r", data_dir, resume=True, progress=False).fit()
    cfg["train"]["phases"][0]["epochs"] = 1
    cfg["train"]["phases"][1]["epochs"] = 2
    res = Trainer(load_config(_write(tmp_path, cfg)), tmp_path / "r", data_dir, resume=True, progress=False).fit()
    assert res["epochs"] == 3


def test_a_phase_lr_of_zero_is_refused_before_training(tmp_path, data_dir):
    """lr 0 would train without changing a weight; a later phase's is caught before the first epoch."""
    cfg = json.loads(json.dumps(SMALL))
    cfg["train"]["phases"] = [{"name": "one", "epochs": 1, "lr": 0.01}, {"name": "two", "epochs": 1, "lr": 0}]
    with pytest.raises(ConfigError, match=r"train.phases\[1\].lr must be a finite number > 0, got 0"):
        Trainer(load_config(_write(tmp_path, cfg)), tmp_path / "r", data_dir, progress=False)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_evaluate_refuses_an_empty_split(tmp_path, data_dir):
    t = Trainer(load_config(_write(tmp_path, SMALL)), tmp_path / "r", data_dir, progress=False)
    with pytest.raises(ConfigError, match="empty split"):
        t.evaluate(t.data.val.subset(torch.arange(0)))


def test_resume_after_a_crash_between_log_and_checkpoint_keeps_one_line_per_epoch(tmp_path, data_dir, monkeypatch):
    """Epoch 2's metrics line is appended, then writing its last.pt fails: the resumed run goes on
    from epoch 1's checkpoint and the log must not hold epoch 2 twice."""
    import sparsespike.train as train_mod

    save, calls = train_mod.atomic_save, []

    def crash_on_second_last_pt(obj, path):
        if path.name == "last.pt":
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed while writing last.pt of epoch 2")
        save(obj, path)

    cfg = load_config(_write(tmp_path, SMALL))
    monkeypatch.setattr(train_mod, "atomic_save", crash_on_second_last_pt)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "r", data_dir, progress=False).fit()
    monkeypatch.setattr(train_mod, "atomic_save", save)
    res = Trainer(cfg, tmp_path / "r", data_dir, resume=True, progress=False).fit()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and res["epochs"] == 3


def test_regularizer_sees_spikes_and_epoch(tmp_path, data_dir):
    seen = []

    def reg(ctx):
        seen.append((ctx.epoch, ctx.n_epochs, float(ctx.monitor.spike_count().detach())))
        return 0.0 * ctx.monitor.spike_count()

    cfg = load_config(_write(tmp_path, SMALL), {"train.epochs": 2})
    Trainer(cfg, tmp_path / "r", data_dir, progress=False, regularizers=[reg]).fit()
    assert {e for e, _, _ in seen} == {0, 1} and all(n == 2 for _, n, _ in seen)
    assert all(c > 0 for _, _, c in seen)


def test_compare_runs_table(tmp_path) -> None:
    """`sparsespike compare` tabulates finished runs; mean epoch time and activity from the log."""
    import json

    from sparsespike.cli import compare_runs

    run = tmp_path / "r"
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps(
            {
                "name": "x",
                "epochs": 2,
                "test_acc": 0.9,
                "test_acc_last": 0.85,
                "train_time_s": 12.0,
                "metrics": {"spike_count": 10.0, "synops": 1234.0, "dense_flops": 5000.0, "energy_pj": 2000.0},
            }
        )
    )
    (run / "run.json").write_text(
        json.dumps({"config": {"model": {"backward": "sparse", "gates": {"lam": 1e-5}}, "train": {"regularizers": []}}})
    )
    (run / "metrics.jsonl").write_text(
        json.dumps({"epoch_time_s": 4.0, "activity_pct": {"0": 1.0, "1": 2.0}})
        + "\n"
        + json.dumps({"epoch_time_s": 6.0, "activity_pct": {"0": 3.0, "1": 4.0}})
        + "\n"
    )
    row = compare_runs([run]).splitlines()[2]
    assert row == (
        "| x (r) | sparse | L0 | - | 2 | 90.00 % | 85.00 % | 10.0 | 1,234 | 5e+03 | 2.0 | 5.0 | 12 | 2.00 / 3.00 |"
    )
    # a second run is compared with the first: SynOps / FLOPs "x fewer", epoch time "x faster"
    import shutil

    shutil.copytree(run, tmp_path / "r2")
    res = json.loads((tmp_path / "r2" / "results.json").read_text())
    res["metrics"]["synops"] = 123.4
    (tmp_path / "r2" / "results.json").write_text(json.dumps(res))
    row2 = compare_runs([run, tmp_path / "r2"]).splitlines()[3]
    assert "| 123 (10.0x fewer) | 5e+03 (1.0x fewer) |" in row2 and "| 5.0 (1.0x faster) |" in row2
    with pytest.raises(SystemExit, match="no results.json"):
        compare_runs([tmp_path])
    # --plot draws accuracy against SynOps, the first run as the baseline
    from sparsespike.cli import main

    png = tmp_path / "front.png"
    assert main(["compare", str(run), str(tmp_path / "r2"), "--plot", str(png)]) == 0
    assert png.stat().st_size > 5000


def test_optional_dependency_error_names_install_command() -> None:
    from sparsespike.optional import require

    assert require("json", "anything").__name__ == "json"
    with pytest.raises(ImportError, match=r"NIR export needs the optional package 'no_such_mod_x'.*sparsespike\[nir\]"):
        require("no_such_mod_x", "NIR export", extra="nir")
    with pytest.raises(ImportError, match="pip install no_such_mod_x$"):
        require("no_such_mod_x", "something")


def test_evaluate_reloads_a_run(tmp_path, capsys) -> None:
    """`sparsespike evaluate RUN` rebuilds the run from run.json + best.pt and reproduces its test accuracy."""
    import json

    from sparsespike.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "experiments/demo_yinyang.yaml",
                "--out",
                str(run),
                "--quiet",
                "--set",
                "train.epochs=2",
                "--set",
                "data.train_subset=300",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluate_best.json").read_text())
    assert ev["test_acc"] == json.loads((run / "results.json").read_text())["test_acc"]
    # the training split (first 50 samples), against the checkpoint's model applied by hand
    assert main(["evaluate", str(run), "--split", "train", "--limit", "50"]) == 0
    ev = json.loads((run / "evaluate_best_train50.json").read_text())
    assert ev["split"] == "train" and ev["samples"] == 50 and "test_acc" not in ev
    from sparsespike.train import epoch_seed, load_run

    tr, _, _ = load_run(run)
    tr.model.eval()
    sub = tr.data.train.subset(torch.arange(50))
    gen = torch.Generator().manual_seed(epoch_seed(tr.cfg.seed, 10**6))
    with torch.no_grad():
        pred = tr.model(tr.data.encode(sub.x, gen)).argmax(-1)
    assert ev["acc"] == int((pred == sub.y).sum()) / 50
    assert main(["evaluate", str(run), "--limit", "0"]) == 2
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--last"]) == 0  # last.pt has no "epoch": it printed "epoch None"
    assert "last.pt (epoch 2, 2 epochs logged)" in capsys.readouterr().out


def test_only_the_last_phase_competes_for_the_best_checkpoint(tmp_path, data_dir):
    """A recipe's earlier phase (e.g. a dense warm-up) is never the network it reports: with a
    frozen last phase (lr 1e-12, below float32 resolution of the weights, so its validation
    accuracy only ties the previous best), the best epoch is still the last phase's."""
    cfg = json.loads(json.dumps(SMALL))
    cfg["train"]["phases"] = [{"name": "a", "epochs": 2, "lr": 0.01}, {"name": "b", "epochs": 1, "lr": 1e-12}]
    res = Trainer(load_config(_write(tmp_path, cfg)), tmp_path / "r", data_dir, progress=False).fit()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[2]["val_acc"] == lines[1]["val_acc"]  # lr 1e-12: phase b changes nothing
    assert res["best_epoch"] == 3 and res["best_val_acc"] == lines[2]["val_acc"]


def test_config_float_parses_yaml_strings_and_names_the_key():
    from sparsespike.config import config_float

    assert config_float("1e-6", "k") == 1e-6 and config_float(0, "k") == 0.0 and config_float(2, "k") == 2.0
    cases = [
        ("small", "must be a number"),
        (None, "must be a number"),
        (True, "must be a number"),
        (float("nan"), "must be a finite number >= 0"),
        (float("inf"), "must be a finite number >= 0"),
        (-1, "must be a finite number >= 0"),
    ]
    for bad, msg in cases:
        with pytest.raises(ConfigError, match=msg) as err:
            config_float(bad, "model.k")
        assert str(err.value).startswith("model.k ")
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        config_float(0.0, "k", strict=True)


def test_cli_version_is_the_package_version(capsys):
    from importlib.metadata import version

    import sparsespike
    from sparsespike.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparsespike {sparsespike.__version__}"
    assert sparsespike.__version__ == version("sparsespike")  # pyproject and __init__ agree


def test_report_and_compare_read_yin_and_eventprop_runs(capsys, tmp_path):
    """`report` / `compare` on the recorded Yin and EventProp run folders in docs/results: their
    figures come from run.json (test accuracy after pruning, FLOPs, SynOps; accuracy, <N_S>)."""
    from pathlib import Path

    from sparsespike.cli import _run_row, main

    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    yin = docs / "yin_fig4_paired" / "flops-5e-08_s1"
    ep = docs / "eventprop_mnist_2phase_8+4ep"
    info = json.loads((yin / "run.json").read_text())["results"]
    w = _run_row(yin)
    assert w["acc"] == pytest.approx(info["test_acc_pruned"] / 100)
    assert w["synops"] == info["ops"]["synops"] and w["flops"] == info["ops"]["flops"]
    assert w["gates"] == "L0" and w["regs"].startswith("flops") and w["epochs"] == 4
    test = json.loads((ep / "run.json").read_text())["final"]["test"]
    v = _run_row(ep)
    assert v["acc"] == test["accuracy"] and v["spikes"] == test["spikes_per_sample"] and v["regs"] == "L_A -> L"
    assert main(["report", str(yin)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy 99.20 %" in out and "0.327x" in out
    assert main(["report", str(ep)]) == 0
    assert f"{test['n_s']:.3f}" in capsys.readouterr().out
    assert main(["compare", str(yin.parent / "dense_s1"), str(yin)]) == 0
    assert "(3.1x fewer)" in capsys.readouterr().out  # dense FLOPs 79.6 M -> 26.0 M
    with pytest.raises(SystemExit, match="no SynOps recorded"):
        main(["compare", str(ep), str(ep), "--plot", str(tmp_path / "p.png")])
    with pytest.raises(SystemExit, match="no finished run"):
        main(["report", str(tmp_path)])


def test_report_survives_damaged_logs_and_names_bad_files(capsys, tmp_path):
    """A cut-off last line of metrics.jsonl (crash mid-append) is skipped with a note; a corrupt
    results.json, a corrupt middle line or a missing folder is a clear error, not a traceback; a
    results.json without energy metrics (a sweep trial) still reports its accuracy."""
    import shutil
    from pathlib import Path

    from sparsespike.cli import _log, main

    src = Path(__file__).resolve().parents[1] / "docs" / "results" / "fmnist_pn"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    good = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(good) + '\n{"epoch": 6, "val_ac')
    assert len(_log(run)) == len(good)
    assert "is cut off" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text("\n".join([good[0], "{oops", *good[1:]]) + "\n")
    with pytest.raises(SystemExit, match=r"metrics.jsonl:2 is not valid JSON"):
        _log(run)
    res = json.loads((run / "results.json").read_text())
    res.pop("metrics", None)
    (run / "results.json").write_text(json.dumps(res))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * res['test_acc']:.2f} %" in out and "no energy metrics" in out
    (run / "results.json").write_text('{"name": "x", "test_')
    with pytest.raises(SystemExit, match="results.json is not valid JSON"):
        main(["report", str(run)])
    with pytest.raises(SystemExit, match="no such run folder"):
        main(["report", str(tmp_path / "missing")])


def test_gate_lr_is_checked(tmp_path, data_dir):
    gated = json.loads(json.dumps(SMALL))
    for bad in ("abc", 0):
        gated["model"]["gates"] = {"lam": 1e-3, "lr": bad}
        with pytest.raises(ConfigError, match="model.gates.lr"):
            Trainer(load_config(_write(tmp_path, gated)), tmp_path / "r", data_dir, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks evaluation on a machine without the run's GPU")
def test_a_gpu_run_is_evaluated_on_a_cpu_only_machine(tmp_path, data_dir):
    from sparsespike.train import load_run

    cfg = load_config(_write(tmp_path, SMALL), {"train.epochs": 1})
    Trainer(cfg, tmp_path / "r", data_dir, progress=False).fit()
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["config"]["train"]["device"] = "cuda"  # as written by a run on a GPU
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    tr, _, _ = load_run(tmp_path / "r", data_dir)
    assert tr.device.type == "cpu" and tr.evaluate(tr.data.test)["acc"] > 0


def test_train_epochs_on_a_phased_config_is_refused_not_ignored(tmp_path):
    """With train.phases the phases set the length: --set train.epochs=2 was silently ignored."""
    phased = json.loads(json.dumps(SMALL))  # (its train.epochs: 3 in the file is not an override)
    phased["train"]["phases"] = [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 3}]
    path = _write(tmp_path, phased)
    assert [p.epochs for p in load_config(path).phases()] == [2, 3]
    assert [p.epochs for p in load_config(path, {"train.phases.0.epochs": 1}).phases()] == [1, 3]
    load_config(path, {"train.epochs": 5})  # agrees with the phases: fine
    with pytest.raises(ConfigError, match="train.epochs = 2, but the config has train.phases, which add up to 5"):
        load_config(path, {"train.epochs": 2})


def test_resume_refuses_to_lengthen_a_length_dependent_spike_count_schedule(tmp_path, data_dir):
    """w(n, N) = s0 n / N: the epochs already run used N = 2, so lengthening to 3 would not give
    the uninterrupted 3-epoch run's weights; a constant schedule may be lengthened."""
    for schedule, refused in (("linear", True), ("constant", False)):
        cfg = json.loads(json.dumps(SMALL))
        cfg["train"]["regularizers"] = [{"name": "spike_count", "schedule": schedule, "s0": 1e-3}]
        out = tmp_path / schedule
        Trainer(load_config(_write(tmp_path, cfg), {"train.epochs": 2}), out, data_dir, progress=False).fit()
        longer = Trainer(load_config(_write(tmp_path, cfg), {"train.epochs": 3}), out, data_dir, resume=True,
                         progress=False)  # fmt: skip
        if refused:
            with pytest.raises(ConfigError, match="spike-count schedule \\('linear'\\) whose weights depend"):
                longer.fit()
        else:
            assert longer.fit()["epochs"] == 3


def test_cli_refuses_torchrun_for_one_process_engines_and_labels_validation_only_runs(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank trained a whole EventProp/Yin run into the same folder; an
    EventProp run without a test pass had its validation accuracy reported as test accuracy."""
    import yaml

    from sparsespike.cli import _run_row, main

    ep = {"engine": "eventprop", "dataset": "yinyang", "sizes": [5, 8, 3], "n_train": 32, "n_val": 20,
          "eval_test": False, "progress": False,
          "phases": [{"loss": "L_W", "alpha": 3.0e-3, "lr": 5.0e-3, "epochs": 1}]}  # fmt: skip
    path = tmp_path / "ep.yaml"
    path.write_text(yaml.safe_dump(ep))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="data-parallel training .* is for the time-stepped engine"):
        main(["train", str(path), "--out", str(tmp_path / "ep")])
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["train", str(path), "--out", str(tmp_path / "ep"), "--quiet"]) == 0
    w = _run_row(tmp_path / "ep")
    assert w["acc"] != w["acc"] and w["acc_split"] == "validation"  # no test figure: NaN in test columns
    capsys.readouterr()
    assert main(["report", str(tmp_path / "ep")]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy (no test run)" in out and "test accuracy" not in out
    assert main(["demo", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_resumed_run_reports_the_training_time_of_every_epoch(tmp_path, data_dir):
    """train_time_s counted only the epochs after the last resume (a run resumed one epoch before
    its end looked almost free in `compare`)."""
    cfg = load_config(_write(tmp_path, SMALL), {"train.epochs": 3})
    t = Trainer(cfg, tmp_path / "r", data_dir, progress=False)
    g = t.epochs()
    next(g), next(g)
    g.close()  # stopped after 2 of 3 epochs
    res = Trainer(cfg, tmp_path / "r", data_dir, resume=True, progress=False).fit()
    logged = [json.loads(x)["epoch_time_s"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and res["train_time_s"] >= sum(logged)


def test_gate_lam_checked_and_a_gated_model_argument_is_treated_as_gated(tmp_path, data_dir):
    """model.gates.lam was never checked (a negative L0 term rewarded dense gates); a model passed
    in with its own gates got one noise sample for the whole run; the spike monitor's hook leaked
    when an epoch raised."""
    from sparsespike.sparsity.connectivity import add_l0_gates

    gated = json.loads(json.dumps(SMALL))
    for bad in (-0.001, "abc", float("nan")):
        gated["model"]["gates"] = {"lam": bad, "lr": 0.05}
        with pytest.raises(ConfigError, match="model.gates.lam"):
            Trainer(load_config(_write(tmp_path, gated)), tmp_path / "r", data_dir, progress=False)
    cfg = load_config(_write(tmp_path, SMALL), {"train.epochs": 1})
    net = Trainer(cfg, tmp_path / "plain", data_dir, progress=False).model  # the config's network
    add_l0_gates(net, seed=0, resample="manual")
    t = Trainer(cfg, tmp_path / "m", data_dir, model=net, progress=False)
    assert t.gated and t.manual_resample
    hooks = sum(len(x._forward_hooks) for x in net.modules())
    t.extra_regs = [lambda ctx: (_ for _ in ()).throw(RuntimeError("simulated"))]
    with pytest.raises(RuntimeError, match="simulated"):
        t.fit()
    assert sum(len(x._forward_hooks) for x in net.modules()) == hooks
