"""EventProp training: per-epoch atomic checkpoints and exact resume (DESIGN.md: nothing is lost)."""

from __future__ import annotations

import json

import pytest
import torch

from sparsespike.errors import ConfigError, DataError
from sparsespike.eventprop.train import EventPropTraining, train_eventprop


def _cfg(out, e1=2, e2=2, **kw):
    cfg = {
        "dataset": "yinyang",
        "sizes": [5, 10, 3],
        "phases": [
            {"loss": "L_A", "alpha": 3.5e-3, "eta": 0.4, "lr": 5e-3, "epochs": e1},
            {"loss": "L", "alpha": 3.5e-3, "eta": 0.4, "lr": 2e-4, "epochs": e2},
        ],
        "sp_per_neuron": True,
        "n_train": 32,
        "n_val": 16,
        "n_test": 16,
        "batch_size": 16,
        "progress": False,
        "out_dir": str(out),
    }
    cfg.update(kw)
    return cfg


def _strip(history):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in history]


def _weights(out):
    return torch.load(out / "weights.pt", weights_only=True)["state_dict"]


def _interrupted(out, n_epochs, **kw):
    """Train ``n_epochs`` epochs and drop the run, as a killed process would (last.pt stays)."""
    run = EventPropTraining(_cfg(out, **kw))
    it = run.epochs()
    for _ in range(n_epochs):
        next(it)
    it.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return out, train_eventprop(_cfg(out))


@pytest.mark.parametrize("stop", [1, 2, 3])  # inside phase 1, at the phase boundary, inside phase 2
def test_resume_equals_uninterrupted_run(tmp_path, reference, stop):
    ref_dir, ref = reference
    _interrupted(tmp_path / "cut", stop)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == stop and (tmp_path / "cut" / "last.pt").is_file()
    res = train_eventprop(_cfg(tmp_path / "cut"), resume=True)
    assert res["timing"]["resumed_from_epoch"] == stop
    assert _strip(res["history"]) == _strip(ref["history"])
    assert res["final"] == ref["final"]
    for k, w in _weights(ref_dir).items():
        assert torch.equal(_weights(tmp_path / "cut")[k], w), k
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2, 3, 4]


def test_resume_may_lengthen_a_phase(tmp_path):
    _interrupted(tmp_path / "a", 4)  # the whole 2 + 2 schedule
    res = train_eventprop(_cfg(tmp_path / "a", e2=3), resume=True)
    assert [(h["phase"], h["phase_epoch"]) for h in res["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    # the schedule goes on where it stopped: lr of phase 2 epoch 3 is 2e-4 * 0.95**2
    assert res["history"][-1]["lr"] == pytest.approx(2e-4 * 0.95**2)


def test_resume_reads_checkpoints_with_the_older_phase_fingerprint(tmp_path):
    """Checkpoints written before the fingerprint held whole phases list each as [loss, alpha, eta, lr]."""
    _interrupted(tmp_path / "old", 3)
    path = tmp_path / "old" / "last.pt"
    ck = torch.load(path, weights_only=True)
    fp = json.loads(ck["fingerprint"])
    fp["phases"] = [[p["loss"], p["alpha"], p["eta"], p["lr"]] for p in fp["phases"]]
    del fp["silent_bump"]  # nor did they know weight bumping (read as off)
    fp["name"] = "older"  # and the name was part of it (now free: a label)
    ck["fingerprint"] = json.dumps(fp)
    torch.save(ck, path)
    res = train_eventprop(_cfg(tmp_path / "old"), resume=True)
    assert res["timing"]["resumed_from_epoch"] == 3 and len(res["history"]) == 4
    fp["phases"][1][3] = 1e-3  # a changed learning rate is still refused
    ck["fingerprint"] = json.dumps(fp)
    torch.save(ck, path)
    with pytest.raises(ConfigError, match="phases"):
        train_eventprop(_cfg(tmp_path / "old"), resume=True)


def test_resume_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_eventprop(_cfg(tmp_path / "none"), resume=True)
    with pytest.raises(ConfigError, match="out_dir"):
        train_eventprop(_cfg(None, out_dir=None), resume=True)
    _interrupted(tmp_path / "b", 3)
    with pytest.raises(ConfigError, match="sizes"):
        train_eventprop(_cfg(tmp_path / "b", sizes=[5, 11, 3]), resume=True)
    with pytest.raises(ConfigError, match="phases"):
        train_eventprop(_cfg(tmp_path / "b", phases=[{"loss": "L_W", "epochs": 2}, {"loss": "L", "epochs": 2}]),
                        resume=True)  # fmt: skip
    with pytest.raises(ConfigError, match="only 0"):
        train_eventprop(_cfg(tmp_path / "b", e2=0), resume=True)
    # stopped inside phase 2: phase 1 is finished and cannot grow or shrink (its extra epochs
    # would never run, or the history would keep more than the config says)
    for e1 in (1, 4):
        with pytest.raises(ConfigError, match="phase 1 .* finished after 2 epochs"):
            train_eventprop(_cfg(tmp_path / "b", e1=e1), resume=True)
    (tmp_path / "b" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="last.pt"):
        train_eventprop(_cfg(tmp_path / "b"), resume=True)


def test_cli_train_writes_run_folder_and_resumes(tmp_path, monkeypatch, capsys):
    import yaml

    from sparsespike.cli import main

    cfg = _cfg(None, e1=1, e2=1, name="tiny_ep")
    del cfg["out_dir"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"engine": "eventprop", **cfg}))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(path)]) == 0  # default folder, as for time-stepped runs
    run = tmp_path / "runs" / "tiny_ep_seed0"
    for f in ("run.json", "metrics.jsonl", "last.pt", "weights.pt", "curves.png"):
        assert (run / f).is_file(), f
    more = (
        "phases=[{loss: L_A, alpha: 3.5e-3, eta: 0.4, lr: 5.0e-3, epochs: 1},"
        " {loss: L, alpha: 3.5e-3, eta: 0.4, lr: 2.0e-4, epochs: 2}]"
    )
    assert main(["train", str(path), "--resume", "--set", more]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["phase_epoch"] for ln in lines] == [1, 1, 2]
    assert json.loads((run / "run.json").read_text())["timing"]["resumed_from_epoch"] == 2
    capsys.readouterr()
    assert main(["train", str(path), "--resume", "--set", "sizes=[5, 9, 3]"]) == 2  # refused, named
    assert "sizes" in capsys.readouterr().err


def _keep(cfg):
    """The same run with phase 2 keeping phase 1's Adam state (moments and step counts)."""
    cfg["phases"][1]["adam"] = "keep"
    return cfg


def test_adam_keep_carries_the_optimizer_state_into_the_next_phase(tmp_path, reference):
    _, fresh = reference
    keep = train_eventprop(_keep(_cfg(tmp_path / "keep")))
    # phase 1 is the same run; phase 2 starts from phase 1's moments, so it differs
    assert _strip(keep["history"][:2]) == _strip(fresh["history"][:2])
    assert _strip(keep["history"][2:]) != _strip(fresh["history"][2:])
    # the learning rate restarts at phase 2's own and decays from there
    assert [h["lr"] for h in keep["history"][2:]] == pytest.approx([2e-4, 2e-4 * 0.95])
    # Adam's step counts go on: 2 batches per epoch, 4 epochs (a fresh phase 2 counts 4)
    ck = torch.load(tmp_path / "keep" / "last.pt", weights_only=True)
    steps = {float(st["step"]) for st in ck["opt"]["state"].values()}
    assert steps == {8.0}


def test_resume_may_branch_at_a_phase_boundary(tmp_path):
    """A checkpoint at the end of phase 1 (run with a fresh phase 2 planned) resumed with phase 2
    changed to adam: keep is the uninterrupted keep run, to the bit."""
    ref = train_eventprop(_keep(_cfg(tmp_path / "ref")))
    _interrupted(tmp_path / "cut", 2)
    # a branch may carry its own name (a label: it changes nothing the run computes)
    res = train_eventprop(_keep(_cfg(tmp_path / "cut", name="branch")), resume=True)
    assert _strip(res["history"]) == _strip(ref["history"])
    for k, w in _weights(tmp_path / "ref").items():
        assert torch.equal(_weights(tmp_path / "cut")[k], w), k
    # once phase 2 has started, it is part of the run: changing it is refused
    _interrupted(tmp_path / "in2", 3)
    with pytest.raises(ConfigError, match="phases"):
        train_eventprop(_keep(_cfg(tmp_path / "in2")), resume=True)
    # and a started phase cannot be dropped
    with pytest.raises(ConfigError, match="has run 2 phase"):
        train_eventprop(_cfg(tmp_path / "in2", phases=[_cfg(None)["phases"][0]]), resume=True)


def test_adam_keep_needs_an_earlier_phase():
    cfg = _cfg(None, out_dir=None)
    cfg["phases"][0]["adam"] = "keep"
    with pytest.raises(ConfigError, match="no earlier phase"):
        train_eventprop(cfg)
    cfg["phases"][0]["adam"] = "reuse"
    with pytest.raises(ConfigError, match="adam must be one of"):
        train_eventprop(cfg)
