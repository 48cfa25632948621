"""Pins of the Trainer's bookkeeping, found by a mutation audit of train/config/sweep/report.

Every expected value here comes from an independent reference: a hand count over the batches
the trainer reports to a regularizer (sample-weighted means, the batches a ``measure_every``
samples), a closed form (SGDR's cosine, step and exponential decay), the definition of a
permutation, a norm bound of gradient clipping, or a forward pass of the checkpointed weights.
The runs are tiny (a few dozen 4-feature samples, T = 6) so the file stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sparsespike import pipeline
from sparsespike.cli import _log
from sparsespike.config import ExperimentConfig, from_dict
from sparsespike.errors import ConfigError
from sparsespike.pipeline import DataBundle, Split
from sparsespike.train import LossContext, Trainer, load_checkpoint, make_optimizer, make_schedule

N_TRAIN, BATCH = 23, 5  # 5 batches per epoch, the last one of 3 samples: means must be weighted


def _bundle(n_train: int = N_TRAIN, n_val: int = 17, n_test: int = 11, *, record: list | None = None) -> DataBundle:
    """Three-class data whose feature 0 names the sample: ``(i + 0.5) / n`` for sample ``i``.

    With ``record``, every training batch appends ``(sample ids, one draw of the global RNG)``
    (through the augmentation hook, which sees each batch before it is encoded)."""
    g = torch.Generator().manual_seed(0)
    n = n_train + n_val + n_test
    x = torch.rand(n, 4, generator=g)
    x[:, 0] = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    y = (x[:, 1] > 0.5).long() + (x[:, 2] > 0.5).long()
    enc, T = pipeline.make_encoder({"name": "latency", "T": 6}, "static")
    aug = None
    if record is not None:

        def aug(xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
            ids = torch.round(xb[:, 0] * n - 0.5).long().tolist()
            record.append((ids, float(torch.rand(()))))
            return xb

    tr, va, te = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)
    return DataBundle(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), (4,), 3, T, enc, "fake", aug)


def _cfg(**train: Any) -> ExperimentConfig:
    model = train.pop("model", {})
    data = train.pop("data", {})
    return from_dict(
        ExperimentConfig,
        {
            "name": "pin",
            "seed": 7,
            "data": {"batch_size": BATCH, "eval_batch_size": 4, **data},
            "model": {
                "neuron": {"beta": 0.9},
                "weight_scale": 4.0,
                "layers": [{"type": "linear", "out": 8}, {"type": "readout", "out": 3}],
                **model,
            },
            "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01}, "device": "cpu", **train},
        },
    )


def _trainer(tmp: Path, cfg: ExperimentConfig, *, resume: bool = False, **kw: Any) -> Trainer:
    return Trainer(cfg, tmp, None, progress=False, resume=resume, data=kw.pop("data", None) or _bundle(), **kw)


# ---------------------------------------------------------------- per-epoch random draws
def test_every_epoch_of_every_phase_has_its_own_shuffle_and_global_rng(tmp_path: Path) -> None:
    """Module docstring of train.py: every random draw of epoch ``e`` comes from generators seeded
    with ``(seed, e)``. Each epoch is a permutation of the training set (hand count), and no two
    epochs -- the first epoch of a later phase included -- repeat the shuffle order or the
    global-RNG stream (e.g. stochastic encoders, dropout)."""
    rec: list = []
    cfg = _cfg(phases=[{"name": "a", "epochs": 2}, {"name": "b", "epochs": 1}])
    _trainer(tmp_path / "r", cfg, data=_bundle(record=rec)).fit()
    per = math.ceil(N_TRAIN / BATCH)
    assert len(rec) == 3 * per
    orders = [sum((ids for ids, _ in rec[e * per : (e + 1) * per]), []) for e in range(3)]
    draws = [rec[e * per][1] for e in range(3)]
    for o in orders:
        assert sorted(o) == list(range(N_TRAIN))  # every sample exactly once per epoch
    assert len({tuple(o) for o in orders}) == 3, "an epoch repeated another epoch's shuffle order"
    assert len(set(draws)) == 3, "an epoch repeated another epoch's global random stream"
    # and the draws are a function of (seed, epoch): a second run sees the same ones
    rec2: list = []
    _trainer(tmp_path / "r2", cfg, data=_bundle(record=rec2)).fit()
    assert rec2 == rec


def test_seeded_gate_noise_is_new_every_batch_and_every_epoch(tmp_path: Path) -> None:
    """Gates with their own generator (``model.gates.seed``) are reseeded from ``(seed, epoch)``:
    the hard-concrete noise ``u`` must not repeat the first epoch's samples in the next one."""
    from sparsespike.sparsity.connectivity import gates

    us: list[torch.Tensor] = []

    def reg(ctx: LossContext) -> torch.Tensor:
        us.append(gates(ctx.model)[0].u.detach().clone())
        return torch.zeros(())

    cfg = _cfg(epochs=2, model={"gates": {"lam": 1e-3, "seed": 0}})
    _trainer(tmp_path / "r", cfg, regularizers=[reg]).fit()
    per = math.ceil(N_TRAIN / BATCH)
    assert len(us) == 2 * per
    assert not torch.equal(us[0], us[1])  # a new sample per batch
    assert not torch.equal(us[0], us[per]), "epoch 2 redrew epoch 1's gate noise"


# ---------------------------------------------------------------- optimizer and lr schedules
def _lrs(spec: dict, epochs: int, steps: int, lr0: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    sched = make_schedule(opt, spec, epochs)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()  # (no gradients: nothing moves; keeps torch's order of the two calls)
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_lr_schedules_follow_their_closed_forms() -> None:
    """Cosine: SGDR (Loshchilov & Hutter 2017, eq. 5) with ``eta_min = 0`` over the phase's
    epochs, ``lr_k = lr0 (1 + cos(pi k / N)) / 2``, i.e. "from lr0 to 0 over the N epochs"
    (docs/connectivity.md); step: ``lr0 gamma^floor(k / step)``; exponential: ``lr0 gamma^k``."""
    n = 4
    assert _lrs({"name": "cosine"}, n, n) == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * k / n)) / 2 for k in range(n + 1)], abs=1e-12
    )
    assert _lrs({"name": "cosine", "eta_min": 0.01}, n, n)[-1] == pytest.approx(0.01)
    assert _lrs({"name": "step", "step": 2, "gamma": 0.5}, 10, 5) == pytest.approx(
        [0.1 * 0.5 ** (k // 2) for k in range(6)]
    )
    assert _lrs({"name": "exponential", "gamma": 0.9}, 10, 3) == pytest.approx([0.1 * 0.9**k for k in range(4)])
    assert make_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), None, 3) is None


def test_a_phase_has_its_own_lr_schedule_over_its_own_epochs(tmp_path: Path) -> None:
    """``train.phases[].lr_schedule`` replaces the run's, starts from the phase's lr and spans
    the phase's epochs (the logged ``lr`` is the one the epoch trained with)."""
    cfg = _cfg(
        lr_schedule={"name": "exponential", "gamma": 0.5},
        phases=[{"name": "a", "epochs": 2}, {"name": "b", "epochs": 3, "lr": 0.02, "lr_schedule": {"name": "cosine"}}],
    )
    _trainer(tmp_path / "r", cfg).fit()
    lrs = [r["lr"] for r in _log(tmp_path / "r")]
    want = [0.01, 0.005] + [0.02 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert lrs == pytest.approx(want, abs=1e-12)


def test_gate_lr_is_the_second_param_group_and_a_yaml_string_lr_is_parsed(tmp_path: Path) -> None:
    """``model.gates.lr``: the gates' log_alpha in their own group with that rate; an lr given as
    the string PyYAML makes of ``1e-3`` is the number 0.001."""
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"name": "adam", "lr": "1e-3"})
    assert opt.param_groups[0]["lr"] == 0.001
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"name": "sgd", "lr": 0.5}, lr="2e-2")
    assert opt.param_groups[0]["lr"] == 0.02
    cfg = _cfg(epochs=1, model={"gates": {"lam": 1e-3, "lr": 0.05, "seed": 0}})
    t = _trainer(tmp_path / "r", cfg)
    t.fit()
    groups = load_checkpoint(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"]
    names = dict(t.model.named_parameters())
    ids = {id(p): n for n, p in names.items()}
    order = [ids[id(p)] for p in t.model.parameters()]
    assert [g["lr"] for g in groups] == [0.01, 0.05]
    assert _log(tmp_path / "r")[0]["lr"] == 0.01  # the log shows the weights' rate, not the gates'
    gate_idx = set(groups[1]["params"])
    # the optimizer numbers parameters in group order: the gate group holds exactly the log_alphas
    assert len(gate_idx) == sum(n.endswith("log_alpha") for n in order) > 0


# ---------------------------------------------------------------- what an epoch logs
def test_epoch_log_is_the_sample_weighted_mean_over_batches(tmp_path: Path) -> None:
    """train_loss, train_task_loss, train_acc and train_spikes are means over samples (the last
    batch holds 3 of 23), computed here from what each batch showed a regularizer; the context
    numbers epochs within the phase (0-based) and counts ``ceil(23 / 5)`` batches."""
    seen: list[dict] = []
    extra = 0.25

    def reg(ctx: LossContext) -> torch.Tensor:
        out, y = ctx.outputs.detach(), ctx.targets
        seen.append(
            {
                "n": len(y),
                "ce": float(F.cross_entropy(out, y)),
                "correct": int((out.argmax(-1) == y).sum()),
                "spikes": float(ctx.monitor.spike_count().detach()),
                "ctx": (ctx.epoch, ctx.n_epochs, ctx.global_epoch, ctx.batch, ctx.n_batches),
            }
        )
        return torch.tensor(extra)

    cfg = _cfg(phases=[{"name": "a", "epochs": 1}, {"name": "b", "epochs": 2}])
    _trainer(tmp_path / "r", cfg, regularizers=[reg]).fit()
    per = math.ceil(N_TRAIN / BATCH)
    assert [s["ctx"] for s in seen] == [
        (e, ne, g, b, per) for (e, ne, g) in ((0, 1, 0), (0, 2, 1), (1, 2, 2)) for b in range(per)
    ]
    for ep, r in enumerate(_log(tmp_path / "r")):
        bs = seen[ep * per : (ep + 1) * per]
        assert [b["n"] for b in bs] == [5, 5, 5, 5, 3]
        task = sum(b["ce"] * b["n"] for b in bs) / N_TRAIN
        assert r["train_task_loss"] == pytest.approx(task, rel=1e-6)
        assert r["train_loss"] == pytest.approx(task + extra, rel=1e-6)
        assert r["train_acc"] == pytest.approx(sum(b["correct"] for b in bs) / N_TRAIN, rel=1e-12)
        assert r["train_spikes"] == pytest.approx(sum(b["spikes"] * b["n"] for b in bs) / N_TRAIN, rel=1e-6)


def test_activity_is_the_sample_weighted_mean_of_the_measured_batches(tmp_path: Path) -> None:
    """``train.measure_every: 2`` measures batches 0, 2 and 4 (of 5, sizes 5, 5, 3); the logged
    ``activity_pct`` of a layer is the sample-weighted mean of its activity on those batches."""
    seen: list[tuple[int, dict]] = []

    def reg(ctx: LossContext) -> torch.Tensor:
        acts = {
            n: m.activity()
            for n, m in ctx.model.named_modules()
            if hasattr(m, "activity") and getattr(m, "last_stats", None)
        }
        seen.append((len(ctx.targets), acts))
        return torch.zeros(())

    _trainer(tmp_path / "r", _cfg(epochs=1, measure_every=2), regularizers=[reg]).fit()
    (r,) = _log(tmp_path / "r")
    measured = seen[0::2]
    assert [n for n, _ in measured] == [5, 5, 3]
    want = {k: sum(a[k] * n for n, a in measured) / 13 for k in measured[0][1]}
    assert want and any(v > 0 for v in want.values())
    assert set(r["activity_pct"]) == set(want)
    for k, v in want.items():
        assert r["activity_pct"][k] == pytest.approx(v, rel=1e-9), k


def test_evaluate_is_the_last_phases_loss_over_the_whole_split(tmp_path: Path) -> None:
    """``evaluate`` in batches of 4 (17 samples: the last batch holds 1) equals one forward pass
    of the whole split: mean cross-entropy (the last phase's loss, not the first's) and accuracy."""
    cfg = _cfg(phases=[{"name": "a", "epochs": 1, "loss": "mse_count"}, {"name": "b", "epochs": 1, "loss": "ce"}])
    t = _trainer(tmp_path / "r", cfg)
    val = t.data.val
    res = t.evaluate(val)
    t.model.eval()
    with torch.no_grad():
        out = t.model(t.data.encode(val.x, None))
    assert res["loss"] == pytest.approx(float(F.cross_entropy(out, val.y)), rel=1e-5)
    assert res["acc"] == int((out.argmax(-1) == val.y).sum()) / len(val)


def test_grad_clip_bounds_the_norm_of_an_sgd_step(tmp_path: Path) -> None:
    """``train.grad_clip = c`` clips the global gradient norm to ``c``: one SGD step with lr 1
    moves the parameters by at most ``c`` (and without the clip by far more)."""

    def step_norm(clip: float | None, out: Path) -> float:
        cfg = _cfg(epochs=1, optimizer={"name": "sgd", "lr": 1.0}, grad_clip=clip, data={"batch_size": N_TRAIN})
        t = _trainer(out, cfg)
        before = [p.detach().clone() for p in t.model.parameters()]
        t.fit()  # one batch: one step
        return float(
            torch.cat([(p.detach() - b).flatten() for p, b in zip(t.model.parameters(), before, strict=True)]).norm()
        )

    assert step_norm(None, tmp_path / "free") > 1e-2
    assert step_norm(1e-3, tmp_path / "clipped") <= 1e-3 * (1 + 1e-5)


def test_trainer_ema_is_the_polyak_recursion_over_every_step(tmp_path: Path) -> None:
    """ema.py: ``theta_ema <- d theta_ema + (1 - d) theta`` after every optimizer step, from the
    initial weights; recomputed here from the weights each batch starts with (a regularizer sees
    them before the step) and the final ones."""
    d = 0.7
    pre: list[dict[str, torch.Tensor]] = []

    def reg(ctx: LossContext) -> torch.Tensor:
        pre.append({k: p.detach().clone() for k, p in ctx.model.named_parameters()})
        return torch.zeros(())

    t = _trainer(tmp_path / "r", _cfg(epochs=1, ema=d), regularizers=[reg])
    shadow = {k: p.detach().clone() for k, p in t.model.named_parameters()}
    g = t.epochs()
    next(g)
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    after = [*pre[1:], ck["model"]]
    assert len(after) == math.ceil(N_TRAIN / BATCH)
    for w in after:
        shadow = {k: d * shadow[k] + (1 - d) * w[k] for k in shadow}
    for k, v in shadow.items():
        torch.testing.assert_close(ck["ema"]["shadow"][k], v, rtol=1e-5, atol=1e-6)
    g.close()


def test_data_parallel_shards_partition_every_global_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``world`` ranks each rank trains on ``[rank n / world, (rank + 1) n / world)`` of the
    global batch: the shards of 3 ranks are contiguous and together the batch, once each (batch
    5: sizes 1, 2, 2). Ranks are simulated in one process (labels name the samples)."""
    import sparsespike.train as train_mod

    monkeypatch.setattr(train_mod, "_all_reduce_sum", lambda values, world: values)
    n = 10
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n + 4, 4, generator=g)
    y = torch.arange(n + 4)
    enc, T = pipeline.make_encoder({"name": "latency", "T": 6}, "static")
    data = DataBundle(Split(x[:n], y[:n]), Split(x[n:], y[n:] % n), Split(x[n:], y[n:] % n), (4,), n, T, enc, "ids")
    cfg = _cfg(epochs=1, model={"layers": [{"type": "linear", "out": 8}, {"type": "readout", "out": n}]})
    shards: list[list[list[int]]] = []
    for rank in range(3):
        seen: list[list[int]] = []

        def reg(ctx: LossContext, seen: list = seen) -> torch.Tensor:
            seen.append(ctx.targets.tolist())
            return torch.zeros(())

        t = _trainer(tmp_path / f"rank{rank}", cfg, data=data, regularizers=[reg])
        t.rank, t.world = rank, 3
        next(t.epochs())
        shards.append(seen)
    assert [len(b) for b in shards[0]] == [1, 1] and [len(b) for b in shards[2]] == [2, 2]
    batches = [shards[0][b] + shards[1][b] + shards[2][b] for b in range(2)]
    assert [len(b) for b in batches] == [5, 5] and sorted(batches[0] + batches[1]) == list(range(n))


# ---------------------------------------------------------------- best epoch and resume
def test_best_epoch_ties_keep_the_earliest_also_across_a_resume(tmp_path: Path) -> None:
    """With an lr below the weights' float32 resolution every epoch validates alike: the best
    epoch is the first one reaching the best accuracy (fewer epochs win ties, as in the sweep's
    selection), and a resumed run keeps the checkpoint's best instead of starting over."""
    cfg = _cfg(epochs=3, optimizer={"name": "adam", "lr": 1e-12})
    res = _trainer(tmp_path / "full", cfg).fit()
    accs = [r["val_acc"] for r in _log(tmp_path / "full")]
    assert len(set(accs)) == 1  # the precondition: a three-way tie
    assert res["best_epoch"] == 1 and res["best_val_acc"] == accs[0]
    assert load_checkpoint(tmp_path / "full" / "best.pt")["epoch"] == 1
    g = _trainer(tmp_path / "part", cfg).epochs()
    next(g), next(g)
    g.close()  # stopped after 2 of 3 epochs
    res2 = _trainer(tmp_path / "part", cfg, resume=True).fit()
    assert (res2["best_epoch"], res2["best_val_acc"], res2["epochs"]) == (1, accs[0], 3)


def test_select_best_tests_the_best_checkpoints_weights(tmp_path: Path) -> None:
    """``test_acc``/``metrics`` are those of ``best.pt``'s weights, ``test_acc_last``/
    ``metrics_last`` those of the last epoch's (made different here by silencing the hidden layer
    in the last epoch); the spike count is counted by hand (hidden spikes per test sample)."""

    def silence(ctx: LossContext) -> torch.Tensor:
        if ctx.global_epoch < 2:
            return torch.zeros(())
        return 1e3 * ctx.model[0].weight.sum()

    cfg = _cfg(epochs=3, optimizer={"name": "sgd", "lr": 0.5})
    t = _trainer(tmp_path / "r", cfg, regularizers=[silence])
    res = t.fit()

    def measure(which: str) -> tuple[float, float]:
        t.model.load_state_dict(load_checkpoint(tmp_path / "r" / which)["model"])
        t.model.eval()
        test = t.data.test
        with torch.no_grad():
            x = t.data.encode(test.x, None)
            spikes = float(t.model[0](x).sum()) / len(test)
            out = t.model(x)
        return int((out.argmax(-1) == test.y).sum()) / len(test), spikes

    (acc_best, sp_best), (acc_last, sp_last) = measure("best.pt"), measure("last.pt")
    assert sp_last == 0 < sp_best and res["best_epoch"] < 3  # the precondition: last is not best
    assert res["test_acc"] == acc_best and res["test_acc_last"] == acc_last
    assert res["metrics"]["spike_count"] == pytest.approx(sp_best)
    assert res["metrics_last"]["spike_count"] == pytest.approx(sp_last, abs=1e-12)


def test_resuming_a_finished_run_trains_nothing(tmp_path: Path) -> None:
    """A checkpoint that holds all of its phase's epochs resumes to the same weights and log."""
    cfg = _cfg(epochs=1)
    _trainer(tmp_path / "r", cfg).fit()
    before = load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    res = _trainer(tmp_path / "r", cfg, resume=True).fit()
    assert res["epochs"] == 1 and len(_log(tmp_path / "r")) == 1
    after = load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_old_checkpoint_in_a_phase_the_config_lacks_is_refused(tmp_path: Path) -> None:
    """A checkpoint from before 2026-11-23 (no config, no phase lengths) stopped in phase 2 of 2 must
    not resume under a 1-phase config (it was accepted, trained nothing and reported 2 epochs)."""
    run = tmp_path / "r"
    _trainer(run, _cfg(phases=[{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1}])).fit()
    ck = load_checkpoint(run / "last.pt")
    ck.pop("config")
    ck.pop("phase_lengths")
    torch.save(ck, run / "last.pt")
    with pytest.raises(ConfigError, match="stopped in phase 2, the config has 1 phase"):
        _trainer(run, _cfg(phases=[{"name": "a", "epochs": 1}]), resume=True).fit()


def test_lr_schedule_defaults_are_the_documented_ones() -> None:
    """README / ``make_schedule``: exponential gamma 0.95, cosine eta_min 0, step 10 epochs x 0.1."""

    def opt() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    e = make_schedule(opt(), {"name": "exponential"}, 5)
    s = make_schedule(opt(), {"name": "step"}, 5)
    c = make_schedule(opt(), {"name": "cosine"}, 4)
    assert (e.gamma, s.step_size, s.gamma, c.eta_min, c.T_max) == (0.95, 10, 0.1, 0.0, 4)


def test_a_spike_count_term_without_a_schedule_is_constant_and_may_be_lengthened(tmp_path: Path) -> None:
    """``{name: spike_count}`` without ``schedule`` is the constant schedule (Allred et al. eq. 4,
    ``w = s0``, independent of the phase length N), so a resume may lengthen its phase."""
    reg = [{"name": "spike_count", "s0": 1e-3}]
    _trainer(tmp_path / "r", _cfg(epochs=1, regularizers=reg)).fit()
    assert _trainer(tmp_path / "r", _cfg(epochs=2, regularizers=reg), resume=True).fit()["epochs"] == 2


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (a refused resume writes nothing into it)."""
    run = tmp_path_factory.mktemp("one_epoch") / "r"
    _trainer(run, _cfg(epochs=1)).fit()
    return run


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("grad_clip", 0.5),
        ("loss", "mse_count"),
        ("ema", 0.9),
        ("select_best", False),
        ("regularizers", [{"name": "spike_count", "s0": 1e-3}]),
    ],
)
def test_resume_refuses_a_change_that_changes_the_result(one_epoch_run: Path, key: str, value: Any) -> None:
    """Only the keys in ``Trainer._RESUME_FREE`` (and phase lengths) may change on resume: a
    different clip, loss, EMA, selection or regularizer would not give the run it started."""
    with pytest.raises(ConfigError, match=f"train.{key}: "):
        _trainer(one_epoch_run, _cfg(epochs=2, **{key: value}), resume=True).fit()


def test_resumed_training_time_carries_the_checkpoints_clock(tmp_path: Path) -> None:
    """``train_time_s`` spans restarts with the clock stored in ``last.pt`` (validation included),
    not just the logged training seconds: here validation (3000 samples) dominates the epochs."""
    data = _bundle(n_train=10, n_val=3000)
    cfg = _cfg(epochs=3, data={"batch_size": 10, "eval_batch_size": 3000})
    g = _trainer(tmp_path / "r", cfg, data=data).epochs()
    next(g), next(g)
    g.close()
    clock = float(load_checkpoint(tmp_path / "r" / "last.pt")["train_s"])
    logged = [r["epoch_time_s"] for r in _log(tmp_path / "r")]
    assert clock > sum(logged)  # the stored clock counts the validation too
    res = _trainer(tmp_path / "r", cfg, resume=True, data=data).fit()
    third = _log(tmp_path / "r")[2]["epoch_time_s"]
    assert res["train_time_s"] >= clock + third


# ---------------------------------------------------------------- config validation
def _from(over: dict[str, Any]) -> ExperimentConfig:
    from sparsespike.config import set_dotted

    raw: dict = {"train": {"epochs": 2}}
    for k, v in over.items():
        set_dotted(raw, k, v)
    return from_dict(ExperimentConfig, raw)


@pytest.mark.parametrize(
    ("key", "bad", "good", "match"),
    [
        ("model.b_th", True, 0.3, r"model.b_th must be a float, got True"),  # a boolean is not a number
        ("model.b_th", float("nan"), 0.0, r"model.b_th must be finite"),
        ("data.val_fraction", float("inf"), 0.0, r"data.val_fraction must be finite"),
        ("train.grad_clip", -1.0, 0.0, r"train.grad_clip must be >= 0.0"),
        ("train.measure_every", -1, 0, r"train.measure_every must be >= 0"),
        ("train.num_threads", 0, 1, r"train.num_threads must be >= 1"),
        ("data.eval_batch_size", 0, 1, r"data.eval_batch_size must be >= 1"),
    ],
)
def test_config_fields_refuse_out_of_range_values(key: str, bad: Any, good: Any, match: str) -> None:
    """The ranges in the config dataclasses' metadata (and finiteness, and bool-is-not-a-number)
    are enforced by name, not passed on to fail (or silently misbehave) later; the boundary
    value itself is accepted."""
    with pytest.raises(ConfigError, match=match):
        _from({key: bad})
    _from({key: good})


def test_a_phase_of_zero_epochs_is_refused_and_an_unset_length_counts_its_default(tmp_path: Path) -> None:
    """``PhaseConfig.epochs`` has ``min 1`` and defaults to 10: ``train.epochs`` must equal the
    phases' total counting a phase without ``epochs`` as 10 (``_check_epochs_vs_phases``)."""
    import yaml

    from sparsespike.config import PhaseConfig, load_config

    with pytest.raises(ConfigError, match=r"train.phases\[\].epochs must be >= 1"):
        _from({"train.phases": [{"name": "a", "epochs": 0}]}).phases()
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"phases": [{"name": "a", "epochs": 2}, {"name": "b"}]}}))
    total = 2 + PhaseConfig().epochs
    assert PhaseConfig().epochs == 10
    assert [ph.epochs for ph in load_config(p, {"train.epochs": total}).phases()] == [2, 10]
    with pytest.raises(ConfigError, match=f"add up to {total} epochs"):
        load_config(p, {"train.epochs": 3})


def test_changed_keys_counts_a_missing_key_as_none() -> None:
    """``changed_keys`` (what a resume compares): a key present on one side only is a change
    unless its value there is None; keys are sorted."""
    from sparsespike.config import changed_keys, refuse_changes

    saved = {"a": 1, "gone": 2, "was_none": None, "z": [1, 2]}
    now = {"a": 1, "new": 3, "z": [1, 3]}
    assert changed_keys(saved, now) == ["gone", "new", "z"]
    assert changed_keys(now, saved) == ["gone", "new", "z"]
    with pytest.raises(ConfigError, match=r"gone: 2 -> None; new: None -> 3; z: \[1, 2\] -> \[1, 3\]"):
        refuse_changes(saved, now, "last.pt", "nothing")
    refuse_changes({"k": None}, {}, "last.pt", "nothing")  # missing == None: no change


# ---------------------------------------------------------------- data pipeline
def test_firing_time_encoder_defaults_are_perez_nieves() -> None:
    """METHODS.md 1(b): ``x = pixel / 255`` spikes once at step ``int(tau_eff ln(x / (x - 0.2)))``
    with ``tau_eff = 20``; pixels with ``x <= 0.2`` never spike. Checked per pixel by hand."""
    enc, T = pipeline.make_encoder({"name": "firing_time", "T": 100}, "static")
    px = torch.tensor([[255, 200, 128, 80, 60, 51, 0]], dtype=torch.uint8)
    r = enc(px, None)
    assert T == 100 and r.shape == (100, 1, 7)
    for j, p in enumerate(px[0].tolist()):
        x = p / 255
        col = r[:, 0, j]
        if x <= 0.2:
            assert col.sum() == 0, p
            continue
        step = int(20 * math.log(x / (x - 0.2)))
        assert col.sum() == 1 and int(col.argmax()) == step, p


def test_rate_encoder_maps_the_full_uint8_range_to_probability_one() -> None:
    """``rate``: a pixel's spike probability is ``gain * pixel / 255`` clipped to [0, 1]: 255 (or
    128 with gain 2) spikes at every step, 0 never, 51 at about a fifth of the steps."""
    x = torch.tensor([[255, 0, 51, 128]], dtype=torch.uint8)
    enc, _ = pipeline.make_encoder({"name": "rate", "T": 4000}, "static")
    r = enc(x, torch.Generator().manual_seed(1))
    assert r[:, 0, 0].sum() == 4000 and r[:, 0, 1].sum() == 0
    assert float(r[:, 0, 2].mean()) == pytest.approx(0.2, abs=0.02)
    enc2, _ = pipeline.make_encoder({"name": "rate", "T": 4000, "gain": 2.0}, "static")
    assert enc2(x, torch.Generator().manual_seed(1))[:, 0, 3].sum() == 4000


def test_augment_defaults_and_bounds_are_the_papers() -> None:
    """METHODS.md (Perez-Nieves MNIST): shifts of +-10 % and rotations of +-20 degrees are the
    ``affine`` defaults; ``0 <= max_shift < 1`` and ``0 <= max_rotation <= 180`` (both ends)."""
    from sparsespike.data.augment import random_affine

    img = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    aug = pipeline.make_augment({"name": "affine"}, "mnist")
    assert aug is not None
    got = aug(img, torch.Generator().manual_seed(3))
    assert torch.equal(got, random_affine(img, 0.1, 20.0, generator=torch.Generator().manual_seed(3)))
    assert pipeline.make_augment({"max_shift": 0.99, "max_rotation": 180}, "mnist") is not None
    for bad in ({"max_shift": 1.0}, {"max_rotation": 180.5}):
        with pytest.raises(ConfigError, match="max_shift < 1 and 0 <= max_rotation <= 180"):
            pipeline.make_augment(bad, "mnist")


def test_subsets_are_the_first_samples_of_their_split() -> None:
    """``data.train_subset`` / ``test_subset`` keep the first k samples of the split (Yin-Yang's
    published splits, loaded here directly)."""
    from sparsespike.config import DataConfig
    from sparsespike.data.yinyang import load_yinyang

    cfg = from_dict(DataConfig, {"dataset": "yinyang", "train_subset": 7, "test_subset": 5})
    data = pipeline.build_data(cfg, None, 0)
    for split, name, k in ((data.train, "train", 7), (data.test, "test", 5)):
        x, y = load_yinyang(name)
        assert len(split) == k and torch.equal(split.x, x[:k]) and torch.equal(split.y, y[:k])


def test_batches_shuffle_from_the_given_generator_only() -> None:
    """``batches(..., generator, shuffle=True)``: the order is drawn from ``generator`` alone (the
    global RNG's state does not matter), every sample comes once, the last batch is the rest."""
    split = Split(torch.arange(11).unsqueeze(1), torch.arange(11))
    orders = []
    for glob in (0, 1):
        torch.manual_seed(glob)
        bs = list(pipeline.batches(split, 4, torch.Generator().manual_seed(5), shuffle=True))
        assert [len(y) for _, y in bs] == [4, 4, 3]
        orders.append(torch.cat([y for _, y in bs]).tolist())
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(11)) and orders[0] != list(range(11))
    assert torch.cat([y for _, y in pipeline.batches(split, 4)]).tolist() == list(range(11))


@pytest.mark.parametrize("name", ["latency", "rate", "firing_time"])
def test_an_unknown_encoding_key_is_refused(name: str) -> None:
    """A misspelled encoder key (``tau`` for ``tau_eff``) is an error, not silently dropped."""
    with pytest.raises(ConfigError, match=r"data.encoding: unknown keys \['tau'\]"):
        pipeline.make_encoder({"name": name, "T": 5, "tau": 3.0}, "static")


# ---------------------------------------------------------------- the Allred et al. grid sweep
optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from sparsespike import sweep  # noqa: E402

QUIET = lambda *a: None  # noqa: E731
TINY_SPEC = {
    "name": "pin",
    "config": "demo_yinyang",
    "set": {"train.epochs": 2, "data.train_subset": 60, "data.test_subset": 50, "data.encoding.T": 8},
    "schedules": {"constant": [1e-3], "quadratic": [1e-4], "alternating_linear": [1e-3], "alternating": [1e-2]},
}


def _spec(**over: Any) -> sweep.SweepSpec:
    return sweep.SweepSpec.from_dict({**TINY_SPEC, **over})


def _point(method: str, s0: float, epoch: int, acc: float, spikes: float) -> dict:
    return {"method": method, "s0": s0, "epoch": epoch, "val_acc": acc, "val_spikes": spikes, "seeds": [0], "runs": []}


def test_table2_admits_exactly_the_points_within_the_tolerance() -> None:
    """Allred et al. Table 2 (METHODS.md 5): ``val_acc >= reference - tolerance``; a point just
    below that floor loses even with fewer spikes, one exactly at it is admitted."""
    pts = [
        _point("baseline", 0.0, 1, 0.80, 100.0),
        _point("constant", 1e-3, 1, 0.80 - 0.02 - 1e-6, 1.0),  # below the floor (and sparsest)
        _point("constant", 1e-3, 2, 0.80 - 0.02, 5.0),  # exactly at the floor
        _point("constant", 1e-3, 3, 0.80, 9.0),
    ]
    sel = sweep.select(pts, tolerance=0.02)
    assert sel["table2"]["constant"]["epoch"] == 2
    assert sel["table1"]["constant"]["epoch"] == 3


def test_aggregate_means_are_over_the_seeds_that_ran() -> None:
    """A point's validation numbers are the means over its seeds (one seed: that seed's)."""
    rows = [
        {"method": "constant", "s0": 1e-3, "seed": s, "epoch": 1, "val_acc": a, "val_spikes": sp}
        | {"train_spikes": tsp, "run_dir": f"/r{s}"}
        for s, a, sp, tsp in ((0, 0.5, 10.0, 30.0), (1, 0.7, 30.0, None))
    ] + [{"method": "constant", "s0": 1e-3, "seed": 0, "epoch": 2, "val_acc": 0.6, "val_spikes": 7.0, "run_dir": "/r0"}]
    p1, p2 = sweep.aggregate(rows, seeds=[0, 1])
    assert (p1["val_acc"], p1["val_spikes"], p1["train_spikes"]) == (pytest.approx(0.6), 20.0, 30.0)
    assert (p2["val_acc"], p2["val_spikes"], p2["complete"]) == (0.6, 7.0, False)


def _trial(study: Any, setting: str, seed: int, state: TrialState, recs: list | None = None, **attrs: Any) -> None:
    from optuna.distributions import CategoricalDistribution

    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=[recs[-1]["val_acc"], recs[-1]["val_spikes"]] if state == TrialState.COMPLETE else None,
            params={"setting": setting, "seed": seed},
            distributions={"setting": CategoricalDistribution([setting]), "seed": CategoricalDistribution([seed])},
            user_attrs={"run_dir": f"/runs/{setting}_{seed}", "epochs": recs or [], **attrs.pop("user", {})},
            system_attrs=attrs.pop("system", {}),
        )
    )


def test_collect_takes_the_first_complete_trial_and_counts_failed_attempts() -> None:
    """``collect``: of two COMPLETE trials of one grid point (a duplicate) the first one's epochs;
    a failed point's ``attempts`` counts its FAIL trials, not pruned duplicates."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    _trial(study, "baseline:0.0", 0, TrialState.COMPLETE, [{"epoch": 1, "val_acc": 0.5, "val_spikes": 10.0}])
    _trial(study, "baseline:0.0", 0, TrialState.COMPLETE, [{"epoch": 1, "val_acc": 0.9, "val_spikes": 1.0}])
    for state in (TrialState.FAIL, TrialState.PRUNED, TrialState.FAIL):
        _trial(study, "constant:0.001", 0, state, user={"error": "boom"})
    rows, failed = sweep.collect(study)
    assert [(r["trial"], r["val_acc"]) for r in rows] == [(0, 0.5)]
    assert failed == [{"trial": 4, "setting": "constant:0.001", "seed": 0, "error": "boom", "attempts": 2}]


@pytest.mark.parametrize(("used", "requeued"), [(1, 1), (2, 0)])
def test_reconcile_requeues_a_failure_until_max_retry_retries_are_used(used: int, requeued: int) -> None:
    """``max_retry = 2``: a failed grid point whose last attempt already is the 2nd retry is
    reported, not queued a third time."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    _trial(study, "constant:0.001", 0, TrialState.FAIL, system={"retry_history": list(range(used))})
    assert sweep.reconcile(study, max_retry=2, log=QUIET) == requeued
    assert len(study.get_trials(states=(TrialState.WAITING,))) == requeued


def test_trial_config_passes_the_spec_to_the_right_schedules() -> None:
    """``per_batch`` shapes both alternating schedules, ``normalized`` the quadratic one (Allred
    et al. eqs. 6-8); the spec's ``val_fraction`` is the run's; the baseline is CE only."""
    spec = _spec(per_batch=True, normalized=True, val_fraction=0.35)
    for schedule in ("alternating", "alternating_linear"):
        (reg,) = spec.trial_config(schedule, 1e-3, 0).train.regularizers
        assert reg == {"name": "spike_count", "schedule": schedule, "s0": 1e-3, "per_batch": True}
    (reg,) = spec.trial_config("quadratic", 1e-4, 0).train.regularizers
    assert reg == {"name": "spike_count", "schedule": "quadratic", "s0": 1e-4, "normalized": True}
    for schedule in ("constant", "linear"):
        (reg,) = spec.trial_config(schedule, 1e-3, 0).train.regularizers
        assert reg == {"name": "spike_count", "schedule": schedule, "s0": 1e-3}
    cfg = spec.trial_config("baseline", 0.0, 4)
    assert cfg.train.regularizers == [] and cfg.data.val_fraction == 0.35 and cfg.seed == 4


def test_tolerance_of_one_is_refused() -> None:
    """The tolerance is a fraction of accuracy in [0, 1): 1 would admit every point to Table 2."""
    with pytest.raises(ConfigError, match=r"tolerance is a fraction of accuracy in \[0, 1\)"):
        _spec(tolerance=1.0)
    assert _spec(tolerance=0.0).tolerance == 0.0


def test_objective_is_the_last_epochs_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial's objectives are the final epoch's validation accuracy and spike count."""
    recs = [{"epoch": 1, "val_acc": 0.4, "val_spikes": 9.0}, {"epoch": 2, "val_acc": 0.6, "val_spikes": 4.0}]
    monkeypatch.setattr(sweep, "train_trial", lambda *a, **k: recs)
    obj = _spec().objective(tmp_path, None, 1, QUIET)
    assert obj._train(None, "constant", 1e-3, 0, tmp_path) == (0.6, 4.0)


def test_val_subset_keeps_the_first_validation_samples() -> None:
    """``val_subset: k`` validates on the first k held-out samples."""
    spec = _spec(val_subset=3)
    cfg = spec.trial_config("baseline", 0.0, 0)
    sweep._DATA.clear()
    try:
        data = sweep.sweep_data(spec, cfg, None)
        full = pipeline.build_data(cfg.data, None, cfg.seed).val
        assert len(data.val) == 3 and torch.equal(data.val.x, full.x[:3]) and torch.equal(data.val.y, full.y[:3])
    finally:
        sweep._DATA.clear()


def test_finalize_grid_averages_the_test_numbers_over_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chosen point's test accuracy, spikes and SynOps are the means over its seeds, and its
    reduction is ``100 (1 - spikes / baseline spikes)`` (DESIGN.md "Spike reduction")."""
    spec = _spec(seeds=[0, 1], schedules={"constant": [1e-3]})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for seed in (0, 1):
        _trial(study, "baseline:0.0", seed, TrialState.COMPLETE, [{"epoch": 1, "val_acc": 0.8, "val_spikes": 100}])
        _trial(study, "constant:0.001", seed, TrialState.COMPLETE, [{"epoch": 1, "val_acc": 0.8, "val_spikes": 10}])
    per_seed = {
        ("baseline", 0): (0.70, 100.0, 1000.0),
        ("baseline", 1): (0.80, 300.0, 3000.0),
        ("constant", 0): (0.60, 10.0, 100.0),
        ("constant", 1): (0.90, 30.0, 500.0),
    }

    def fake_test(spec: Any, m: str, s0: float, seed: int, run_dir: Path, epoch: int, data_dir: Any = None) -> dict:
        acc, spikes, synops = per_seed[(m, seed)]
        return {"test_acc": acc, "test_spikes": spikes, "test_synops": synops, "test_ns": 0.0, "test_samples": 1}

    monkeypatch.setattr(sweep, "evaluate_checkpoint", fake_test)
    from sparsespike import report

    monkeypatch.setattr(report, "plot_accuracy_vs_spikes", lambda res, path: path)
    res = sweep.finalize_grid(spec, tmp_path, study, log=QUIET)
    t1 = {r["method"]: r for r in res["tables"]["table1"]}
    assert (t1["baseline"]["test_acc"], t1["baseline"]["test_spikes"], t1["baseline"]["test_synops"]) == (
        pytest.approx(0.75),
        200.0,
        2000.0,
    )
    assert (t1["constant"]["test_acc"], t1["constant"]["test_spikes"], t1["constant"]["test_synops"]) == (
        pytest.approx(0.75),
        20.0,
        300.0,
    )
    assert t1["constant"]["reduction_pct"] == pytest.approx(90.0)


def test_seeds_outside_numpys_range_are_refused() -> None:
    """Seeds are numpy seeds: integers in ``[0, 2**32)``."""
    with pytest.raises(ConfigError, match=r"sweep spec: seeds must be < 4294967296"):
        _spec(seeds=[2**32])
    assert _spec(seeds=[2**32 - 1]).seeds == [2**32 - 1]


def test_epoch_records_hold_the_hand_counted_validation_spikes(tmp_path: Path) -> None:
    """Each ``epochs.jsonl`` record's ``val_spikes`` is the mean number of spikes per validation
    sample of the epoch's weights (``epochs/epoch_NNN.pt``), counted here with forward hooks on
    the spiking layers (DESIGN.md "Spike count"), not the SynOps next to it."""
    spec = _spec(set={**TINY_SPEC["set"], "train.epochs": 1}, val_subset=40)
    cfg = spec.trial_config("baseline", 0.0, 0)
    sweep._DATA.clear()
    try:
        data = sweep.sweep_data(spec, cfg, None)
        run = tmp_path / "run"
        sweep._epoch_trainer_cls()(cfg, run, None, data=data, progress=False).fit()
        (rec,) = sweep.epoch_records(run)
        t = Trainer(cfg, tmp_path / "check", None, progress=False, data=data)
        t.model.load_state_dict(load_checkpoint(run / "epochs" / "epoch_001.pt")["model"])
        t.model.eval()
        total = [0.0]
        hooks = [
            m.register_forward_hook(lambda mod, i, o: total.__setitem__(0, total[0] + float(o.sum())))
            for m in t.model.modules()
            if getattr(m, "emits_spikes", False)
        ]
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            t.model(data.encode(data.val.x, gen))
        for h in hooks:
            h.remove()
    finally:
        sweep._DATA.clear()
    assert hooks and rec["epoch"] == 1
    assert rec["val_spikes"] == pytest.approx(total[0] / len(data.val), rel=1e-6)
    assert rec["val_synops"] != pytest.approx(rec["val_spikes"])


def test_epoch_records_merge_the_training_log_by_epoch(tmp_path: Path) -> None:
    """``epoch_records``: each validation record gets its epoch's training numbers (spikes
    included) from ``metrics.jsonl``; a repeated epoch (a resume) counts once, its last line."""
    val = [
        {"epoch": 1, "val_acc": 0.1, "val_spikes": 5.0},
        {"epoch": 2, "val_acc": 0.2, "val_spikes": 6.0},
        {"epoch": 2, "val_acc": 0.3, "val_spikes": 7.0},
    ]
    train = [
        {"epoch": e, "train_loss": 1.0 / e, "train_task_loss": 0.5 / e, "train_acc": 0.1 * e}
        | {"train_spikes": 10.0 * e, "epoch_time_s": 2.0 * e, "lr": 0.1}
        for e in (1, 2)
    ]
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val) + '{"epoch": 3, "val_')
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    recs = sweep.epoch_records(tmp_path)
    assert recs == [
        {**val[0], **{k: v for k, v in train[0].items() if k not in ("epoch", "lr")}},
        {**val[2], **{k: v for k, v in train[1].items() if k not in ("epoch", "lr")}},
    ]


def test_pareto_points_take_the_slots_first_complete_trial_and_its_objective_synops() -> None:
    """``collect_points``: a slot's point is its first COMPLETE trial (a later duplicate retry
    is ignored), with the trial's objective values, validation SynOps included (not the spike
    count recorded next to them)."""
    from sparsespike.pareto import ParetoSpec, collect_points

    spec = ParetoSpec.from_dict(
        {
            "name": "pin_pareto",
            "kind": "pareto",
            "config": "demo_yinyang",
            "seed": 0,
            "trials": 1,
            "space": {"model.b_th": {"uniform": [0.1, 0.4]}},
        }
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, spikes, retry in (((0.8, 1000.0), 50.0, []), ((0.9, 2000.0), 60.0, [0])):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=list(values),
                user_attrs={"epochs": [{"epoch": 2, "val_spikes": spikes}], "run_dir": "/r"},
                system_attrs={"retry_history": retry} if retry else {},
            )
        )
    points, failed = collect_points(spec, study)
    assert failed == [] and len(points) == 1
    p = points[0]
    assert (p["trial"], p["val_acc"], p["val_synops"], p["val_spikes"], p["epoch"]) == (0, 0.8, 1000.0, 50.0, 2)


# ---------------------------------------------------------------- the sweep's report
def test_report_table_row_and_headline_are_the_hand_formatted_numbers() -> None:
    """A Table 1/2 row shows validation and *test* accuracy in their own columns; the headline
    names the schedule with the largest spike reduction against the table's baseline."""
    from sparsespike import report

    base = {"method": "baseline", "s0": 0.0, "epochs": 2, "val_acc": 0.7, "val_spikes": 2000.0}
    base |= {"test_acc": 0.69, "test_spikes": 1000.0}
    rows = [
        base,
        {"method": "constant", "s0": 1e-3, "epochs": 3, "val_acc": 0.705, "val_spikes": 1234.4}
        | {"test_acc": 0.65, "test_spikes": 500.0},
        {"method": "linear", "s0": 2e-3, "epochs": 4, "val_acc": 0.71, "val_spikes": 800.0}
        | {"test_acc": 0.66, "test_spikes": 300.0},
    ]
    tables = {"table1": rows, "table2": [dict(r) for r in rows]}
    report.add_reductions(tables)
    md = report.table_markdown(tables["table1"]).splitlines()
    assert md[3] == "| C.E. + σ_constant | 0.001 | 3 | 70.50 % | 1,234 | 65.00 % | 500 | 50.0 % |"
    lines = report.summary_lines({"tables": tables, "tolerance": 0.01})
    assert lines[0].startswith("- iso-accuracy (Table 1): best linear (σ0 0.002, 4 epochs): 70.0 % fewer")
    assert lines[0].endswith("test accuracy 66.00 % vs baseline 69.00 %")
    assert "70.0 % fewer than Table 1's baseline" in lines[1]


def test_paper_numbers_are_allred_tables_1_and_2() -> None:
    """``report.PAPER`` against METHODS.md 5(b/c) (Allred et al. Tables 1 and 2, CIFAR-10 LeNet:
    s0, epochs, test accuracy %, spikes per test image), and the paper table's reductions:
    70.1 % (Table 1's alternating), 71.7 % and 73.3 % (Table 2's, against its own / Table 1's
    baseline)."""
    from sparsespike import report

    assert report.PAPER == {
        "table1": {
            "baseline": (0.0, 7, 64.97, 294130),
            "constant": (5.5e-4, 19, 65.61, 95671),
            "linear": (6e-5, 20, 65.30, 95544),
            "quadratic": (8e-6, 15, 64.82, 100294),
            "alternating": (1.5e-3, 20, 65.46, 87949),
            "alternating_linear": (4e-4, 16, 66.45, 89869),
        },
        "table2": {
            "baseline": (0.0, 6, 64.19, 276586),
            "constant": (7e-4, 20, 64.45, 83493),
            "linear": (1e-4, 20, 64.03, 81902),
            "quadratic": (8e-6, 19, 62.46, 82501),
            "alternating": (2e-3, 20, 63.90, 78411),
            "alternating_linear": (4.5e-4, 16, 65.29, 83864),
        },
    }
    t1, t2 = report.paper_markdown("table1"), report.paper_markdown("table2")
    assert "| C.E. + σ_alternate | 0.0015 | 20 | 65.46 % | 87,949 | 70.1 % | 70.1 % |" in t1
    assert "| C.E. + σ_alternate | 0.002 | 20 | 63.90 % | 78,411 | 71.7 % | 73.3 % |" in t2
    assert report.reduction(5.0, 0.0) is None and report.reduction(5.0, None) is None
    assert report.reduction(None, 10.0) is None and report.reduction(2.5, 10.0) == 75.0


def test_compare_shows_the_selected_checkpoints_metrics_beside_its_accuracy(tmp_path: Path) -> None:
    """``sparsespike compare``: the spikes, SynOps, FLOPs and energy columns are the tested
    (best-validation) network's ``metrics``, the one whose accuracy the row shows first, not
    ``metrics_last``; the latter only when a run has no ``metrics``."""
    from sparsespike.cli import compare_runs

    def run(name: str, res: dict) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"name": name, "epochs": 1, "test_acc": 0.9} | res))
        (d / "run.json").write_text(json.dumps({"config": {}}))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch_time_s": 1.0}) + "\n")
        return d

    best = {"spike_count": 10.0, "synops": 1000.0, "dense_flops": 4000.0, "energy_pj": 3000.0}
    last = {"spike_count": 99.0, "synops": 9999.0, "dense_flops": 8000.0, "energy_pj": 7000.0}
    a = run("a", {"test_acc_last": 0.8, "metrics": best, "metrics_last": last})
    b = run("b", {"test_acc_last": 0.8, "metrics_last": last})
    rows = compare_runs([a, b]).splitlines()[2:]
    assert rows[0] == (
        "| a | - | - | - | 1 | 90.00 % | 80.00 % | 10.0 | 1,000 (1.0x fewer) | 4e+03 (1.0x fewer) | 3.0 | "
        "1.0 (1.0x faster) | nan | - |"
    )
    assert "| 99.0 | 9,999 (10.0x more) | 8e+03 (2.0x more) | 7.0 |" in rows[1]
