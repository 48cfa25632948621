"""EMA weights (``train.ema``, ema.py): the average itself, its use in validation and test, resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_config_train import SMALL
from torch import nn

from sparsespike.config import load_config
from sparsespike.ema import EmaWeights
from sparsespike.errors import ConfigError
from sparsespike.train import Trainer, load_checkpoint, load_run


def test_average_follows_the_recursion_and_swaps_back():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    ema = EmaWeights(m, 0.8)
    ref = {k: p.detach().clone() for k, p in m.named_parameters()}
    for _ in range(5):
        with torch.no_grad():
            for w in m.parameters():
                w.add_(torch.randn_like(w))
        ema.update(m)
        for k, p in m.named_parameters():
            ref[k] = 0.8 * ref[k] + 0.2 * p.detach()
    own = {k: p.detach().clone() for k, p in m.named_parameters()}
    with ema.swapped(m):
        for k, p in m.named_parameters():
            assert torch.allclose(p, ref[k], atol=1e-6)
    for k, p in m.named_parameters():
        assert torch.equal(p, own[k])
    for bad in (0, 1, 1.5, "x"):
        with pytest.raises(ConfigError, match="train.ema"):
            EmaWeights(m, bad)


def _cfg(tmp_path, epochs=3):
    c = json.loads(json.dumps(SMALL))
    c["train"]["ema"] = 0.9
    c["train"]["epochs"] = epochs
    p = tmp_path / f"ema{epochs}.yaml"
    p.write_text(yaml.safe_dump(c))
    return load_config(p)


def test_validation_best_checkpoint_and_test_use_the_average(tmp_path, data_dir):
    tr = Trainer(_cfg(tmp_path), tmp_path / "run", data_dir, progress=False)
    res = tr.fit()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert last["ema"] is not None
    raw = last["model"]
    avg = last["ema"]["shadow"]
    # last.pt keeps the raw weights (for resume) and the average; they differ after 3 epochs
    k = next(iter(avg))
    assert not torch.equal(raw[k], avg[k])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if best["epoch"] == 3:  # the best checkpoint holds averaged weights
        assert torch.equal(best["model"][k], avg[k])
    # whichever epoch is best, its weights are the averaged ones: as loaded (no averaging on top),
    # they give the validation accuracy recorded for that epoch
    tr.model.load_state_dict(best["model"])
    rec = next(x for x in lines if x["epoch"] == best["epoch"])
    assert tr.evaluate(tr.data.val)["acc"] == pytest.approx(rec["val_acc"])
    # the recorded validation accuracy is the averaged model's
    tr.model.load_state_dict(raw)
    tr.ema.load_state_dict(last["ema"])
    with tr._averaged():
        acc = tr.evaluate(tr.data.val)["acc"]
    assert acc == pytest.approx(lines[-1]["val_acc"])
    assert res["test_acc"] > 0.4
    # load_run(last=True) gives the averaged weights
    t2, _, _ = load_run(tmp_path / "run", data_dir, last=True)
    for name, w in t2.model.named_parameters():
        assert torch.equal(w.detach(), avg[name])
    # and so does the export of last.pt (it exported the raw weights)
    from sparsespike.export import load_trained_model

    exported, _, _ = load_trained_model(tmp_path / "run", "last")
    for name, w in exported.named_parameters():
        assert torch.equal(w.detach(), avg[name]), name


def test_resume_restores_the_average(tmp_path, data_dir):
    Trainer(_cfg(tmp_path), tmp_path / "full", data_dir, progress=False).fit()
    part = Trainer(_cfg(tmp_path), tmp_path / "part", data_dir, progress=False)
    part.phases[0].epochs = 1
    part.fit()
    ck = load_checkpoint(tmp_path / "part" / "last.pt")
    ck["phase"], ck["epoch_in_phase"] = 0, 1
    torch.save(ck, tmp_path / "part" / "last.pt")
    Trainer(_cfg(tmp_path), tmp_path / "part", data_dir, resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "full" / "last.pt")["ema"]["shadow"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["ema"]["shadow"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = load_checkpoint(tmp_path / "part" / "last.pt")
    ck["ema"] = None
    torch.save(ck, tmp_path / "part" / "last.pt")
    with pytest.raises(ConfigError, match="EMA"):
        Trainer(_cfg(tmp_path), tmp_path / "part", data_dir, resume=True, progress=False).fit()
