"""EventProp training loop: configs, run files, determinism, and (slow) learning Yin-Yang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsespike.errors import ConfigError
from sparsespike.eventprop.train import augment_images, bump_silent, load_config, train_eventprop

REPO = Path(__file__).resolve().parents[1]


def _tiny(**kw):
    cfg = {
        "dataset": "yinyang",
        "sizes": [5, 12, 3],
        "phases": [
            {"loss": "L_A", "alpha": 3.5e-3, "eta": 0.4, "lr": 5e-3, "epochs": 1},
            {"loss": "L", "alpha": 3.5e-3, "eta": 0.4, "lr": 2e-4, "epochs": 1},
        ],
        "sp_per_neuron": True,
        "n_train": 96,
        "n_val": 50,
        "n_test": 50,
        "progress": False,
    }
    cfg.update(kw)
    return cfg


def test_train_two_phase_smoke_and_run_files(tmp_path):
    res = train_eventprop(_tiny(out_dir=str(tmp_path)))
    assert [h["phase"] for h in res["history"]] == [1, 2]
    assert res["history"][0]["lr"] == pytest.approx(5e-3)
    assert res["history"][1]["lr"] == pytest.approx(2e-4)
    fin = res["final"]["test"]
    for key in ("accuracy", "n_s", "n_s_per_layer", "silent_neurons_per_layer", "latency_ms"):
        assert key in fin
    assert len(fin["n_s_per_layer"]) == 2
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["sizes"] == [5, 12, 3] and "versions" in run
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["phase"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    json.dumps(res)  # JSON-ready


def test_best_val_selects_the_last_phase_epoch_with_the_best_validation(tmp_path):
    cfg = _tiny(out_dir=str(tmp_path))
    cfg["phases"][0]["epochs"], cfg["phases"][1]["epochs"] = 1, 4
    res = train_eventprop(cfg)
    hist = res["history"]
    last = [h for h in hist if h["phase"] == 2]
    # highest validation accuracy, ties to the lower validation CE, first such epoch
    want = max(last, key=lambda h: (h["val"]["accuracy"], -h["val"]["loss_ce"], -h["epoch"]))
    sel = res["final"]["best_val"]
    assert sel["epoch"] == want["epoch"] and sel["epoch"] >= 2  # phase 1 never competes
    assert sel["val"]["accuracy"] == want["val"]["accuracy"]
    assert sel["val"]["loss_ce"] == pytest.approx(want["val"]["loss_ce"], rel=1e-12)
    assert set(sel["test"]) >= {"accuracy", "n_s", "loss_ce"}
    # the final weights are restored after evaluating the selected ones
    assert res["final"]["val"]["loss_ce"] == pytest.approx(hist[-1]["val"]["loss_ce"], rel=1e-12)
    saved = torch.load(tmp_path / "weights_best_val.pt", weights_only=True)
    assert saved["epoch"] == sel["epoch"]
    final = torch.load(tmp_path / "weights.pt", weights_only=True)["state_dict"]
    if sel["epoch"] != hist[-1]["epoch"]:
        assert any(not torch.equal(final[k], v) for k, v in saved["state_dict"].items())


def test_train_is_deterministic():
    a = train_eventprop(_tiny(eval_test=False))
    b = train_eventprop(_tiny(eval_test=False))
    assert a["final"]["val"] == b["final"]["val"]


def test_bump_silent_raises_only_the_inputs_of_neurons_silent_on_the_whole_batch():
    w1 = torch.zeros(3, 2, dtype=torch.float64)
    w2 = torch.ones(2, 3, dtype=torch.float64)
    c1 = torch.tensor([[0, 2, 0], [1, 0, 0]])  # neuron 2 silent in both samples
    c2 = torch.tensor([[0, 0], [0, 0]])  # both silent
    assert bump_silent([w1, w2], [c1, c2], 0.25) == [1, 2]
    torch.testing.assert_close(w1, torch.tensor([[0, 0], [0, 0], [0.25, 0.25]], dtype=torch.float64))
    torch.testing.assert_close(w2, torch.full((2, 3), 1.25, dtype=torch.float64))


def test_silent_bump_moves_a_silenced_layer():
    """With every hidden weight zeroed the hidden layer is silent: no gradient reaches it and
    plain training leaves it at zero; with weight bumping its input weights grow."""
    from sparsespike.eventprop import train as ep_train

    def run(bump):
        tr = ep_train.EventPropTraining(load_config(_tiny(silent_bump=bump, eval_test=False)))
        with torch.no_grad():
            tr.net.weights[0].zero_()
        for _ in tr.epochs():
            pass
        return tr.net.weights[0].detach().clone()

    assert torch.count_nonzero(run(0.0)) == 0
    assert float(run(0.05).min()) > 0
    with pytest.raises(ConfigError, match="silent_bump"):
        load_config(_tiny(silent_bump=-1.0))


def test_a_phase_sets_its_own_silent_bump():
    """A phase's ``silent_bump`` overrides the run's (here: none in phase 1, the run's 0.05 in
    phase 2, on a silenced hidden layer); a negative one is refused."""
    from sparsespike.eventprop import train as ep_train

    cfg = _tiny(silent_bump=0.05, eval_test=False)
    cfg["phases"][0]["silent_bump"] = 0.0
    tr = ep_train.EventPropTraining(load_config(cfg))
    with torch.no_grad():
        tr.net.weights[0].zero_()
    after = []
    for _ in tr.epochs():
        after.append(tr.net.weights[0].detach().clone())
    assert torch.count_nonzero(after[0]) == 0  # phase 1: no bump, no gradient, still silent
    assert float(after[1].min()) > 0  # phase 2: the run's bump
    cfg["phases"][1]["silent_bump"] = -0.1
    with pytest.raises(ConfigError, match="phase silent_bump"):
        load_config(cfg)


def test_silent_target_reaches_the_training_loss():
    """``silent_target: skip`` is passed to every phase's loss; an unknown rule is refused."""
    from sparsespike.eventprop import train as ep_train

    tr = ep_train.EventPropTraining(load_config(_tiny(silent_target="skip", eval_test=False)))
    assert all(tr._loss(ph).silent_target == "skip" for ph in tr.cfg.phases)
    assert (
        ep_train.EventPropTraining(load_config(_tiny(eval_test=False)))._loss(tr.cfg.phases[0]).silent_target
        == "window"
    )
    with pytest.raises(ConfigError, match="silent_target"):
        load_config(_tiny(silent_target="nan"))


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        load_config(_tiny(learning_rate=1.0))
    with pytest.raises(ConfigError, match="loss"):
        load_config(_tiny(phases=[{"loss": "L_Z", "epochs": 1}]))
    with pytest.raises(ConfigError, match="unknown"):
        load_config(_tiny(phases=[{"loss": "L", "epochs": 1, "beta": 2}]))
    with pytest.raises(ConfigError, match="dataset"):
        load_config(_tiny(dataset="cifar"))
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/file.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("eventprop_*.yaml")))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.phases and cfg.sizes[0] in (5, 784)


def test_augment_images_refuses_0_255_floats():
    """Only uint8 was scaled: 0-255 floats or ints were clamped to a black-and-white image."""
    from sparsespike.errors import SpikeInputError

    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 10:18, 12:16] = 255
    for bad in (img.float(), img.long()):
        with pytest.raises(SpikeInputError, match="uint8 or lie in"):
            augment_images(bad, torch.Generator().manual_seed(0))
    ok = augment_images(img.float() / 255, torch.Generator().manual_seed(0), 0, 0)
    assert torch.allclose(ok, img.float() / 255)


def test_augment_images_shape_and_range():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(4, 28, 28, dtype=torch.uint8)
    img[:, 10:18, 10:18] = 255
    out = augment_images(img, g)
    assert out.shape == (4, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out[0], out[1])


def test_train_mnist_smoke(data_dir):
    res = train_eventprop(
        {
            "dataset": "mnist",
            "data_dir": str(data_dir),
            "sizes": [784, 16, 10],
            "init_ranges": [[-0.01, 0.03], [-0.4, 0.8]],
            "batch_size": 20,
            "augment": True,
            "phases": [{"loss": "L_A", "alpha": 3e-3, "eta": 3.0, "lr": 2e-3, "epochs": 1}],
            "sp_per_neuron": True,
            "n_train": 40,
            "n_val": 20,
            "n_test": 20,
            "progress": False,
        }
    )
    assert res["final"]["test"]["n_samples"] == 20


def test_mnist_without_validation_trains_on_all_60000_and_monitors_test(data_dir, tmp_path, capsys):
    """``mnist_val_size: 0`` (the paper's protocol, sec. 3.4): all 60,000 training images, no
    validation split (an empty one used to give accuracy 0 silently), the test split recorded per
    epoch for monitoring only, and no best epoch chosen on it."""
    from sparsespike.eventprop.train import EventPropTraining

    base = {"dataset": "mnist", "data_dir": str(data_dir), "sizes": [784, 16, 10], "progress": False}
    assert EventPropTraining(base).xtr.shape[0] == 55000  # default: 5,000 held out
    cfg = {
        **base,
        "mnist_val_size": 0,
        "init_ranges": [[-0.01, 0.03], [-0.4, 0.8]],
        "batch_size": 20,
        "phases": [{"loss": "L_A", "alpha": 3e-3, "eta": 3.0, "lr": 2e-3, "epochs": 2}],
        "sp_per_neuron": True,
        "n_test": 20,
        "progress": True,
        "out_dir": str(tmp_path / "r"),
    }
    tr = EventPropTraining({**cfg, "n_train": None})
    assert tr.xtr.shape[0] == 60000 and not tr.has_val
    res = train_eventprop({**cfg, "n_train": 40})
    hist, final = res["history"], res["final"]
    assert [sorted(h) for h in hist] == [sorted(["epoch", "phase", "phase_epoch", "loss_name", "lr", "train",
                                                 "test", "epoch_time_s"])] * 2  # fmt: skip
    assert all(h["test"]["n_samples"] == 20 for h in hist)
    assert "val" not in final and "best_val" not in final
    assert final["test"] == hist[-1]["test"]  # the same weights, the same 20 test images
    assert "test acc" in capsys.readouterr().out
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_yinyang_learns():
    """A few epochs of L_W on the full Yin-Yang training set reach > 85 % validation accuracy."""
    res = train_eventprop(
        {
            "dataset": "yinyang",
            "phases": [{"loss": "L_W", "alpha": 3e-3, "lr": 5e-3, "epochs": 5}],
            "progress": False,
            "eval_test": False,
        }
    )
    assert res["final"]["val"]["accuracy"] > 0.85


def test_cli_train_prints_the_results_and_honours_quiet(tmp_path, capsys):
    """``sparsespike train`` on an EventProp config prints accuracy, CE and <N_S> (not ``{}``), and
    ``--quiet`` turns the progress bars off."""
    from sparsespike.cli import main

    rc = main(
        [
            "train", "experiments/eventprop_yinyang_lw.yaml", "--quiet", "--out", str(tmp_path / "r"),
            "--set", "n_train=64", "--set", "n_val=32", "--set", "n_test=32",
            "--set", "phases=[{loss: L_W, alpha: 0.003, eta: 0.0, lr: 0.005, epochs: 1}]",
        ]
    )  # fmt: skip
    assert rc == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out[cap.out.index("{") :])
    assert 0 <= out["test_accuracy"] <= 1 and out["n_s"] > 0 and len(out["n_s_per_layer"]) == 4
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert out["test_accuracy"] == run["final"]["test"]["accuracy"]
    assert run["config"]["progress"] is False and "epoch" not in cap.err


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"batch_size": "abc"}, "batch_size must be an int"),
        ({"n_train": 1.5}, "n_train must be an int"),
        ({"lr_decay": "fast"}, "lr_decay must be a float"),
        ({"phases": [{"loss": "L_W", "alpha": "abc", "eta": 0.0, "lr": 0.005, "epochs": 1}]}, "alpha must be a float"),
        # values that would run but compute something else (gradient ascent, a flipped
        # gradient, NaN losses, a negative slice of the data, a truncated layer size)
        ({"lr_decay": -0.95}, "lr_decay must be > 0"),
        ({"grad_clip": -1.0}, "grad_clip must be > 0"),
        ({"tau0": 0.0}, "tau0 must be > 0"),
        ({"tau1": -6.4}, "tau1 must be > 0"),
        ({"eval_batch_size": 0}, "eval_batch_size must be >= 1"),
        ({"n_train": -1}, "n_train must be >= 1"),
        ({"n_val": 0}, "n_val must be >= 1"),
        ({"mnist_val_size": -5}, "mnist_val_size must be in"),
        ({"sizes": [5, 8.7, 3]}, "sizes must be positive integers"),
        ({"sizes": [5, True, 3]}, "sizes must be positive integers"),
        ({"sizes": ["5", "8", "3"]}, "sizes must be positive integers"),
        ({"t_min": 15.0, "t_max": 5.0}, "t_min < t_max"),
        ({"t_max": 40.0}, "t_max <= t_window"),
        ({"adam_betas": [0.9]}, "adam_betas"),
        ({"adam_eps": 0.0}, "adam_eps must be > 0"),
        ({"grazing_eps": 0.0}, "grazing_eps must be > 0"),
        ({"augment": True}, "augment works on MNIST images only"),  # the Yin-Yang config: was ignored
    ],
)
def test_config_values_are_type_checked(over, match):
    from sparsespike.errors import ConfigError
    from sparsespike.eventprop.train import load_config

    with pytest.raises(ConfigError, match=match):
        load_config("experiments/eventprop_yinyang_lw.yaml", **over)
    assert load_config("experiments/eventprop_yinyang_lw.yaml", lr_decay="9.5e-1").lr_decay == 0.95  # YAML string
