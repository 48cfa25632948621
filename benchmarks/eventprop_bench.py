"""EventProp engine timings: cost per sample vs number of spikes, per training epoch, and
training time against the time-stepped engine at equal accuracy.

Four measurements on Yin-Yang (CPU, one thread by default); the first three on the network
5-40-25-13-3 (Fontanini init, float64):

1. ``spike_sweep``: the hidden/output weights are scaled by a factor to change how many
   spikes the network emits; forward and backward (EventProp, loss L_A) time per sample is
   measured against spikes per sample. An event-driven simulator's cost grows with the events.
2. ``time_scale``: all time constants, the window and the input times are multiplied by c.
   The spike trains are the same up to the scaling, so the event count is unchanged and so is
   the cost; a time-stepped simulator at a fixed dt would cost c times more.
3. ``epoch``: one training epoch of the 2-phase recipe's phase 1 (L_A, batch 32, Adam) over
   the 5000 training samples.
4. ``vs_time_stepped``: EventProp (``experiments/eventprop_yinyang_lw.yaml``: L_W, 5-40-25-13-3)
   and the time-stepped engine (the Trainer on ``experiments/demo_yinyang.yaml``: 5-120-3 LIF,
   latency code in T = 30 steps, BPTT with a surrogate gradient; its spike-count regularizer
   removed unless ``--ts-spike-reg``, so both are driven by their task loss) trained side by
   side, epoch by epoch in turn, on the same training samples; after every epoch both are
   evaluated (untimed) on the same test samples. Reported: training wall time and epochs to
   the first epoch at ``--target`` test accuracy, per-epoch and per-sample training time, the
   accuracy curves, spikes per sample, and the ratios time-stepped / EventProp (the figure to
   quote: absolute times move with the load of the machine, the ratios much less).

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/eventprop_bench.py [--quick]
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/eventprop_bench.py \
        --only vs_time_stepped [--target 0.95] [--vs-epochs 30]

Writes ``benchmarks/results/eventprop.json`` (``--only``: the parts run replace their keys in
the existing file, the rest is kept), ``benchmarks/results/eventprop.png`` (parts 1 and 2) and
``benchmarks/results/eventprop_vs_time_stepped.png`` (part 4).
"""

from __future__ import annotations

# isort: off
import sparsespike  # noqa: F401 -- before torch: its process settings (runtime.tune_openmp) apply to every method
# isort: on

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from sparsespike.bench import refuse_mixed_settings
from sparsespike.data.yinyang import load_yinyang
from sparsespike.eventprop import (
    EventNetwork,
    FontaniniLoss,
    LIFParams,
    SolverOptions,
    encode_yinyang,
)
from sparsespike.eventprop.train import train_eventprop

OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PARTS = ("spike_sweep", "time_scale", "epoch", "vs_time_stepped")


def _time_fb(net, x, y, loss_fn, repeats):
    """Best-of-``repeats`` forward and backward wall time for one batch; spikes per sample."""
    best_f = best_b = float("inf")
    spikes = 0.0
    for _ in range(repeats):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = net(x)
        t1 = time.perf_counter()
        loss, _ = loss_fn(out, y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        best_f = min(best_f, t1 - t0)
        best_b = min(best_b, t3 - t2)
        spikes = float(sum(c.sum() for c in out.counts)) / x.shape[0]
    return best_f, best_b, spikes


def spike_sweep(x, y, scales, repeats):
    loss_fn = FontaniniLoss.l_a(3.5e-3, 0.4, sp_per_neuron=True)
    rows = []
    for s in scales:
        net = EventNetwork([5, 40, 25, 13, 3], generator=torch.Generator().manual_seed(0),
                           solver=SolverOptions(max_spikes=64, on_overflow="ignore"))  # fmt: skip
        with torch.no_grad():
            for w in net.weights[1:]:
                w.mul_(s)
        f, b, sp = _time_fb(net, x, y, loss_fn, repeats)
        n = x.shape[0]
        rows.append(
            {
                "weight_scale": s,
                "spikes_per_sample": sp,
                "forward_us_per_sample": 1e6 * f / n,
                "backward_us_per_sample": 1e6 * b / n,
            }
        )
        print(f"scale {s:4.2f}: {sp:8.1f} spikes/sample  fwd {1e6 * f / n:8.1f} us  "
              f"bwd {1e6 * b / n:8.1f} us per sample", flush=True)  # fmt: skip
    return rows


def time_scale(x, y, factors, repeats):
    loss_fn = FontaniniLoss.l_a(3.5e-3, 0.4, sp_per_neuron=True)
    rows = []
    for c in factors:
        p = LIFParams(tau_m=20.0 * c, tau_s=5.0 * c, t_window=30.0 * c)
        net = EventNetwork([5, 40, 25, 13, 3], params=p, generator=torch.Generator().manual_seed(0))
        # CE/AS time constants scale too, so the loss is the same function of scaled time
        lf = FontaniniLoss(alpha=loss_fn.alpha, eta=loss_fn.eta * c, augmented=True, tau0=0.5 * c,
                           tau1=6.4 * c, silent_time=30.0 * c, sp_per_neuron=True)  # fmt: skip
        f, b, sp = _time_fb(net, x * c, y, lf, repeats)
        n = x.shape[0]
        rows.append({"time_factor": c, "window_ms": 30.0 * c, "spikes_per_sample": sp,
                     "forward_us_per_sample": 1e6 * f / n, "backward_us_per_sample": 1e6 * b / n,
                     "grid_steps_at_dt_0.01ms": int(30.0 * c / 0.01)})  # fmt: skip
        print(f"time x{c:5.1f}: {sp:8.1f} spikes/sample  fwd {1e6 * f / n:8.1f} us  "
              f"bwd {1e6 * b / n:8.1f} us per sample", flush=True)  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------
# 4. vs_time_stepped: EventProp against the time-stepped (BPTT) engine at equal accuracy
# ----------------------------------------------------------------------------------------------
EP_CONFIG = REPO / "experiments" / "eventprop_yinyang_lw.yaml"
TS_CONFIG = REPO / "experiments" / "demo_yinyang.yaml"


def _first_reach(curve: list[dict], target: float) -> tuple[int | None, float | None]:
    """(1-based epoch, cumulative training seconds) of the first epoch with test accuracy >= target."""
    for r in curve:
        if r["test_acc"] >= target:
            return r["epoch"], r["cum_train_s"]
    return None, None


def _ratio(a, b):
    return a / b if a is not None and b is not None and b > 0 else None


class _EventPropRun:
    """Phase 1 of an EventProp config (default: L_W) through ``EventPropTraining``, one epoch per
    ``train_epoch`` call, trained on the given samples and evaluated on the given test samples."""

    def __init__(self, config, x_train, y_train, x_test, y_test, seed: int, threads: int) -> None:
        from sparsespike.eventprop.train import EventPropTraining
        from sparsespike.eventprop.train import load_config as ep_load_config

        cfg = ep_load_config(config, seed=seed, threads=threads, progress=False, eval_test=False)
        cfg.phases = cfg.phases[:1]
        self.run = EventPropTraining(cfg, train_data=(x_train, y_train))
        self.cfg, self.ph = cfg, cfg.phases[0]
        self.x_test, self.y_test = self.run.enc(x_test), y_test
        self._epochs = self.run.epochs()

    def describe(self) -> dict:
        c, p = self.cfg, self.ph
        return {"sizes": c.sizes, "loss": p.loss, "alpha": p.alpha, "eta": p.eta, "lr": p.lr,
                "lr_decay": c.lr_decay, "batch_size": c.batch_size, "sp_per_neuron": c.sp_per_neuron,
                "max_spikes": c.max_spikes, "dtype": "float64", "t_window_ms": c.t_window}  # fmt: skip

    def warm_up(self) -> None:
        """JIT compilation / cache load of the forward and adjoint kernels, outside the timings."""
        net = EventNetwork([5, 4, 3], generator=torch.Generator().manual_seed(1))
        out = net(self.x_test[:4])
        loss, _ = self.run._loss(self.ph)(out, self.y_test[:4])
        if loss.requires_grad:
            loss.backward()

    def train_epoch(self) -> tuple[float, dict]:
        rec = next(self._epochs)
        tr = rec["train"]
        return rec["epoch_time_s"], {"train_acc": tr["accuracy"], "train_spikes_per_sample": tr["spikes_per_sample"]}

    def evaluate(self) -> dict:
        from sparsespike.eventprop.metrics import evaluate

        r = evaluate(self.run.net, self.x_test, self.y_test, None, self.cfg.eval_batch_size)
        return {"test_acc": r["accuracy"], "spikes_per_sample": r["spikes_per_sample"], "n_s": r["n_s"]}

    def release(self) -> None:
        self._epochs.close()


class _TimeSteppedRun:
    """The normal :class:`~sparsespike.train.Trainer`, one epoch per ``train_epoch`` call
    (``Trainer.epochs``), and ``Trainer.evaluate`` on the test split after every epoch."""

    def __init__(self, config, epochs, n_train, n_test, seed, threads, spike_reg, data_dir, out_dir) -> None:
        from sparsespike.config import load_config
        from sparsespike.train import Trainer

        over = {"seed": seed, "train.epochs": epochs, "train.num_threads": threads, "train.device": "cpu",
                "data.train_subset": n_train, "data.test_subset": n_test}  # fmt: skip
        if not spike_reg:
            over["train.regularizers"] = []
        self.cfg = load_config(config, over)
        self.tr = Trainer(self.cfg, out_dir, data_dir, progress=False)
        self._epochs = self.tr.epochs()

    def describe(self) -> dict:
        c = self.cfg
        return {"layers": c.model.layers, "neuron": c.model.neuron, "encoding": c.data.encoding,
                "backward": c.model.backward, "optimizer": c.train.optimizer, "lr_schedule": c.train.lr_schedule,
                "regularizers": c.train.regularizers, "batch_size": c.data.batch_size, "dtype": "float32",
                "T_steps": self.tr.data.T}  # fmt: skip

    def warm_up(self) -> None:
        """One forward/backward on a few samples (kernel compilation); the weights are untouched."""
        m, d = self.tr.model, self.tr.data
        x = d.encode(d.train.x[:4], torch.Generator().manual_seed(1)).to(self.tr.device)
        out = m(x)
        out.sum().backward()
        m.zero_grad(set_to_none=True)

    def train_epoch(self) -> tuple[float, dict]:
        rec = next(self._epochs)
        return rec["epoch_time_s"], {"train_acc": rec["train_acc"], "train_spikes_per_sample": rec["train_spikes"]}

    def evaluate(self) -> dict:
        r = self.tr.evaluate(self.tr.data.test, metrics=True)
        m = r["metrics"]
        return {"test_acc": r["acc"], "spikes_per_sample": m["spike_count"], "n_s": m["ns"]}

    def release(self) -> None:
        self._epochs.close()


def vs_time_stepped(
    target: float = 0.95,
    epochs: int = 30,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    threads: int = 1,
    ep_config=EP_CONFIG,
    ts_config=TS_CONFIG,
    ts_spike_reg: bool = False,
    data_dir=None,
    stop_at_target: bool = False,
    verbose: bool = True,
) -> dict:
    """Train both engines on Yin-Yang side by side and compare training time at equal accuracy.

    EventProp: phase 1 of ``ep_config`` (default ``eventprop_yinyang_lw.yaml``: 5-40-25-13-3,
    L_W, lr 5e-3, batch 32, lr x 0.95 per epoch, float64). Time-stepped: the Trainer with
    ``ts_config`` (default ``demo_yinyang.yaml``: 5-120-3 LIF, latency code, T = 30 steps, Adam
    3e-3, cosine schedule over ``epochs``, batch 32, float32, dense BPTT with a fast-sigmoid
    surrogate); its spike-count regularizer is removed unless ``ts_spike_reg`` so that both
    engines are driven by their task loss alone. Same training samples (the first ``n_train``
    of the train split) and the same held-out samples (the first ``n_test`` of the test split)
    for both. The engines alternate epoch by epoch in this one process (so slow phases of a
    shared machine hit both), each followed by a test evaluation that is *not* timed.

    Returns per-engine curves (test accuracy, cumulative training seconds, spikes per sample),
    the first epoch / training seconds at which each reaches ``target`` and the ratios
    time-stepped / EventProp (> 1: EventProp is faster).
    """
    import tempfile

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    xtr, ytr = load_yinyang("train")
    xte, yte = load_yinyang("test")
    if n_train:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    if n_test:
        xte, yte = xte[:n_test], yte[:n_test]
    with tempfile.TemporaryDirectory(prefix="vs_time_stepped_") as tmp:
        engines = {
            "eventprop": _EventPropRun(ep_config, xtr, ytr, xte, yte, seed, threads),
            "time_stepped": _TimeSteppedRun(
                ts_config, epochs, n_train, n_test, seed, threads, ts_spike_reg, data_dir, tmp
            ),
        }
        assert len(engines["time_stepped"].tr.data.test) == len(yte)
        for eng in engines.values():
            eng.warm_up()
        curves: dict[str, list[dict]] = {k: [] for k in engines}
        cum = dict.fromkeys(engines, 0.0)
        for ep in range(1, epochs + 1):
            for name, eng in engines.items():  # interleaved: one epoch of each in turn
                dt, tr = eng.train_epoch()
                cum[name] += dt
                ev = eng.evaluate()
                curves[name].append({"epoch": ep, "epoch_time_s": dt, "cum_train_s": cum[name], **ev, **tr})
                if verbose:
                    print(f"  {name:12s} epoch {ep:3d}: test acc {ev['test_acc']:.4f}  "
                          f"{ev['spikes_per_sample']:7.1f} spikes/sample  train {dt:6.2f} s "
                          f"(cum {cum[name]:7.1f} s)", flush=True)  # fmt: skip
            if stop_at_target and all(_first_reach(c, target)[0] for c in curves.values()):
                break
        for eng in engines.values():
            eng.release()

    n = int(len(ytr))
    res: dict = {
        "task": "Yin-Yang (Kriener et al.), train split first n_train samples, test split first n_test",
        "target_test_acc": target,
        "epochs_budget": epochs,
        "epochs_run": len(curves["eventprop"]),
        "n_train": n,
        "n_test": int(len(yte)),
        "seed": seed,
        "threads": threads,
        "device": f"CPU ({platform.processor() or platform.machine()}), {threads} thread(s)",
        "timing": "training only (shuffle, forward, loss, backward, optimizer step, training stats); "
        "test evaluation excluded; engines alternate epoch by epoch in one process",
        "accuracy_definitions": {
            "eventprop": "first output spike decides, ties and silent outputs wrong",
            "time_stepped": "argmax of the leaky readout's max over time",
        },
        "spike_definitions": "spikes per sample of all non-input spiking neurons (DESIGN.md); the "
        "time-stepped readout is non-spiking, so only its 120 hidden neurons count there",
        "ts_spike_reg": ts_spike_reg,
        "config": {
            "eventprop": {"file": _rel(ep_config), **engines["eventprop"].describe()},
            "time_stepped": {"file": _rel(ts_config), **engines["time_stepped"].describe()},
        },
        "engines": {},
    }
    for name, curve in curves.items():
        ep_t, s_t = _first_reach(curve, target)
        times = [r["epoch_time_s"] for r in curve]
        at = curve[ep_t - 1] if ep_t else None
        res["engines"][name] = {
            "epochs_to_target": ep_t,
            "train_s_to_target": s_t,
            "train_s_per_epoch_median": float(np.median(times)),
            "train_s_per_epoch_mean": float(np.mean(times)),
            "train_us_per_sample": 1e6 * float(np.median(times)) / n,
            "best_test_acc": max(r["test_acc"] for r in curve),
            "final_test_acc": curve[-1]["test_acc"],
            "spikes_per_sample_at_target": at["spikes_per_sample"] if at else None,
            "n_s_at_target": at["n_s"] if at else None,
            "spikes_per_sample_final": curve[-1]["spikes_per_sample"],
            "n_s_final": curve[-1]["n_s"],
            "curve": curve,
        }
    res["at_targets"] = []  # the same curves read at other targets (how sensitive the figure is to the choice)
    for tg in sorted({0.85, 0.9, 0.93, 0.95, 0.96, target}):
        row: dict = {"target": tg}
        for name, curve in curves.items():
            row[f"{name}_epochs"], row[f"{name}_train_s"] = _first_reach(curve, tg)
        row["ratio_train_s"] = _ratio(row["time_stepped_train_s"], row["eventprop_train_s"])
        res["at_targets"].append(row)
    e, t = res["engines"]["eventprop"], res["engines"]["time_stepped"]
    res["ratios_time_stepped_over_eventprop"] = {
        "train_s_to_target": _ratio(t["train_s_to_target"], e["train_s_to_target"]),
        "epochs_to_target": _ratio(t["epochs_to_target"], e["epochs_to_target"]),
        "train_s_per_epoch": _ratio(t["train_s_per_epoch_median"], e["train_s_per_epoch_median"]),
        "spikes_per_sample_at_target": _ratio(t["spikes_per_sample_at_target"], e["spikes_per_sample_at_target"]),
    }
    return res


def _rel(p) -> str:
    p = Path(p).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def vs_table(res: dict) -> str:
    """A small markdown table of :func:`vs_time_stepped`'s result."""
    rows = [
        ("epochs to target", "epochs_to_target", "d"),
        ("train s to target", "train_s_to_target", ".1f"),
        ("train s / epoch (median)", "train_s_per_epoch_median", ".2f"),
        ("train us / sample", "train_us_per_sample", ".0f"),
        ("best test acc", "best_test_acc", ".4f"),
        ("final test acc", "final_test_acc", ".4f"),
        ("spikes / sample at target", "spikes_per_sample_at_target", ".1f"),
        ("<N_S> at target", "n_s_at_target", ".3f"),
        ("spikes / sample, final", "spikes_per_sample_final", ".1f"),
    ]
    e, t = res["engines"]["eventprop"], res["engines"]["time_stepped"]
    r = res["ratios_time_stepped_over_eventprop"]
    ratios = {
        "epochs_to_target": r["epochs_to_target"],
        "train_s_to_target": r["train_s_to_target"],
        "train_s_per_epoch_median": r["train_s_per_epoch"],
        "train_us_per_sample": r["train_s_per_epoch"],  # same samples per epoch for both
        "spikes_per_sample_at_target": r["spikes_per_sample_at_target"],
    }
    out = [
        f"Yin-Yang, target test accuracy {res['target_test_acc']:.3f}, {res['n_train']} training / "
        f"{res['n_test']} test samples, {res['epochs_run']} epochs, {res['threads']} thread(s)",
        "",
        "| | EventProp | time-stepped | ratio TS / EP |",
        "|---|---:|---:|---:|",
    ]
    for label, k, spec in rows:
        out.append(f"| {label} | {_fmt(e[k], spec)} | {_fmt(t[k], spec)} | {_fmt(ratios.get(k), '.2f')} |")
    out += ["", "| target | EP epochs | EP train s | TS epochs | TS train s | ratio TS / EP |", "|---:" * 6 + "|"]
    for a in res.get("at_targets", []):
        out.append(
            f"| {a['target']:.3f} | {_fmt(a['eventprop_epochs'], 'd')} | {_fmt(a['eventprop_train_s'], '.1f')} | "
            f"{_fmt(a['time_stepped_epochs'], 'd')} | {_fmt(a['time_stepped_train_s'], '.1f')} | "
            f"{_fmt(a['ratio_train_s'], '.2f')} |"
        )
    return "\n".join(out)


def plot_vs(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"eventprop": "EventProp (event-driven, exact)", "time_stepped": "time-stepped (BPTT, T = 30)"}
    for name, eng in res["engines"].items():
        c = eng["curve"]
        ax[0].plot([0.0] + [r["cum_train_s"] for r in c], [np.nan] + [r["test_acc"] for r in c], "o-", ms=3,
                   label=labels[name])  # fmt: skip
        ax[1].plot([r["epoch"] for r in c], [r["spikes_per_sample"] for r in c], "o-", ms=3, label=labels[name])
        if eng["train_s_to_target"] is not None:
            ax[0].axvline(eng["train_s_to_target"], ls=":", color=ax[0].lines[-1].get_color())
    ax[0].axhline(res["target_test_acc"], ls="--", color="gray", label=f"target {res['target_test_acc']:.2f}")
    ax[0].set_xlabel("training wall time (s, 1 thread, evaluation excluded)")
    ax[0].set_ylabel("test accuracy")
    rt = res["ratios_time_stepped_over_eventprop"]["train_s_to_target"]
    ax[0].set_title(
        "Yin-Yang: accuracy vs training time" + (f"\ntime to target, time-stepped / EventProp = {rt:.2f}" if rt else "")
    )
    ax[0].legend(loc="lower right")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("spikes per sample (test, non-input neurons)")
    ax[1].set_title("activity while training")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _refuse_mixed_settings(path: Path, args, parts: set, device: str) -> None:
    """A partial run (``--only``) merges into ``path`` only if the kept timings were measured
    under the same settings -- the file states one device (thread count) and one batch size for
    all its parts; checked before anything is measured."""
    if not (args.only and path.exists()):
        return
    keep = json.loads(path.read_text())
    now = {"device": device}
    if parts & {"spike_sweep", "time_scale"}:
        now["batch"] = args.batch
    refuse_mixed_settings(path, keep, now, "rerun every part, or write to another --out-dir")


def main(argv=None):
    from sparsespike.runtime import tune_allocator

    tune_allocator()  # every method gets the same allocator (runtime.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points, no epoch timing, a small vs_time_stepped")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=None, metavar="PART",
                    help=f"run only these parts ({', '.join(PARTS)}) and merge them into the existing JSON; "
                    "default: all parts, written to a fresh JSON")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data-dir", default=None, help="data root (Yin-Yang is generated, so unused there)")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"default {OUT} ({OUT}/quick with --quick: a smoke run never replaces the full results)",
    )
    g = ap.add_argument_group("vs_time_stepped")
    g.add_argument("--target", type=float, default=None, help="common test accuracy (default 0.95; --quick 0.8)")
    g.add_argument("--vs-epochs", type=int, default=None, help="epochs per engine (default 30; --quick 3)")
    g.add_argument("--vs-train", type=int, default=None, help="training samples (default all 5000)")
    g.add_argument("--vs-test", type=int, default=None, help="test samples (default all 1000; --quick 500)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ep-config", type=Path, default=EP_CONFIG, help="EventProp YAML (its first phase is used)")
    g.add_argument("--ts-config", type=Path, default=TS_CONFIG, help="time-stepped experiment YAML")
    g.add_argument("--ts-spike-reg", action="store_true", help="keep the time-stepped config's regularizers")
    g.add_argument("--stop-at-target", action="store_true", help="stop once both engines reached the target")
    args = ap.parse_args(argv)
    parts = set(args.only or PARTS)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    res: dict = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s)",
        "versions": {
            "torch": torch.__version__,
            "numba": numba.__version__,
            "numpy": np.__version__,
        },
    }
    out = args.out_dir if args.out_dir is not None else (OUT / "quick" if args.quick else OUT)
    _refuse_mixed_settings(out / "eventprop.json", args, parts, res["device"])
    if parts & {"spike_sweep", "time_scale"}:
        X, Y = load_yinyang("train")
        x = encode_yinyang(X[: args.batch])
        y = Y[: args.batch]
        # warm-up (JIT compilation / cache load) of the forward and the backward: without the
        # backward, the first measured point paid its one-time load (a 9x outlier with --quick)
        o = EventNetwork([5, 4, 3])(x[:2])
        FontaniniLoss.l_a(3.5e-3, 0.4)(o, y[:2])[0].backward()
        repeats = 3 if not args.quick else 1
        res["batch"] = args.batch
    if "spike_sweep" in parts:
        scales = [0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25] if not args.quick else [0.4, 0.7, 1.0]
        res["spike_sweep"] = sw = spike_sweep(x, y, scales, repeats)
        sp = np.array([r["spikes_per_sample"] for r in sw])
        tot = np.array([r["forward_us_per_sample"] + r["backward_us_per_sample"] for r in sw])
        slope, icpt = np.polyfit(sp, tot, 1)
        res["fit_total_us_per_sample"] = {"slope_us_per_spike": slope, "intercept_us": icpt,
                                          "r2": float(np.corrcoef(sp, tot)[0, 1] ** 2)}  # fmt: skip
    if "time_scale" in parts:
        res["time_scale"] = time_scale(x, y, [1.0, 3.0, 10.0] if not args.quick else [1.0, 10.0], repeats)
    if "epoch" in parts and not args.quick:
        r = train_eventprop({"dataset": "yinyang", "progress": False, "eval_test": False,
                             "threads": args.threads, "sp_per_neuron": True,
                             "phases": [{"loss": "L_A", "alpha": 3.5e-3, "eta": 0.4,
                                         "lr": 5e-3, "epochs": 2}]})  # fmt: skip
        res["epoch"] = {
            "train_s_per_epoch": r["timing"]["train_s_per_epoch"],
            "train_us_per_sample": r["timing"]["train_us_per_sample"],
            "epoch_times_s": [h["epoch_time_s"] for h in r["history"]],
            "train_spikes_per_sample": [h["train"]["spikes_per_sample"] for h in r["history"]],
            "samples": 5000,
            "batch": 32,
        }
        print(f"training epoch (5000 samples, batch 32): {res['epoch']['epoch_times_s']} s")
    if "vs_time_stepped" in parts:
        q = args.quick
        vs = vs_time_stepped(
            target=args.target if args.target is not None else (0.8 if q else 0.95),
            epochs=args.vs_epochs or (3 if q else 30),
            n_train=args.vs_train,
            n_test=args.vs_test or (500 if q else None),
            seed=args.seed,
            threads=args.threads,
            ep_config=args.ep_config,
            ts_config=args.ts_config,
            ts_spike_reg=args.ts_spike_reg,
            data_dir=args.data_dir,
            stop_at_target=args.stop_at_target,
        )
        vs["versions"] = res["versions"]
        vs["command"] = "python benchmarks/eventprop_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        res["vs_time_stepped"] = vs
        print(vs_table(vs))

    out.mkdir(parents=True, exist_ok=True)
    path = out / "eventprop.json"
    if args.only and path.exists():  # a partial run replaces its own keys and keeps the rest of the file
        keep = json.loads(path.read_text())
        new = set(parts) | ({"batch"} if parts & {"spike_sweep", "time_scale"} else set())
        new |= {"fit_total_us_per_sample"} if "spike_sweep" in parts else set()
        res = {**keep, **{k: v for k, v in res.items() if k in new}}
    path.write_text(json.dumps(res, indent=1))
    written = [path]
    if "vs_time_stepped" in parts:
        plot_vs(res["vs_time_stepped"], out / "eventprop_vs_time_stepped.png")
        written.append(out / "eventprop_vs_time_stepped.png")
    if {"spike_sweep", "time_scale"} <= parts:
        _plot_cost(res, out / "eventprop.png")
        written.append(out / "eventprop.png")
    print("wrote " + ", ".join(str(p) for p in written))
    return res


def _plot_cost(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = res["spike_sweep"]
    sp = np.array([r["spikes_per_sample"] for r in sw])
    tot = np.array([r["forward_us_per_sample"] + r["backward_us_per_sample"] for r in sw])
    slope = res["fit_total_us_per_sample"]["slope_us_per_spike"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    f = [r["forward_us_per_sample"] for r in sw]
    b = [r["backward_us_per_sample"] for r in sw]
    ax[0].plot(sp, f, "o-", label="forward (exact)")
    ax[0].plot(sp, b, "s-", label="backward (EventProp)")
    ax[0].plot(sp, tot, "^-", label=f"total, fit {slope:.2f} us/spike")
    ax[0].set_xlabel("spikes per sample (all non-input neurons)")
    ax[0].set_ylabel("time per sample (us)")
    ax[0].set_title("Yin-Yang 5-40-25-13-3: cost vs spikes")
    ax[0].legend()
    ts = res["time_scale"]
    ax[1].plot([r["window_ms"] for r in ts],
               [r["forward_us_per_sample"] + r["backward_us_per_sample"] for r in ts], "o-",
               label="event-driven (same events)")  # fmt: skip
    base = ts[0]["forward_us_per_sample"] + ts[0]["backward_us_per_sample"]
    ax[1].plot([r["window_ms"] for r in ts], [base * r["time_factor"] for r in ts], "--",
               label="a fixed-dt grid would scale like this")  # fmt: skip
    ax[1].set_xlabel("window T (ms), all time constants scaled alike")
    ax[1].set_ylabel("time per sample (us)")
    ax[1].set_title("cost does not follow a time grid")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
