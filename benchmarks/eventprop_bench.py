"""EventProp engine timings: cost per sample vs number of spikes, and per training epoch.

Three measurements on the Yin-Yang network 5-40-25-13-3 (Fontanini init, float64, CPU):

1. ``spike_sweep``: the hidden/output weights are scaled by a factor to change how many
   spikes the network emits; forward and backward (EventProp, loss L_A) time per sample is
   measured against spikes per sample. An event-driven simulator's cost grows with the events.
2. ``time_scale``: all time constants, the window and the input times are multiplied by c.
   The spike trains are the same up to the scaling, so the event count is unchanged and so is
   the cost; a time-stepped simulator at a fixed dt would cost c times more.
3. ``epoch``: one training epoch of the 2-phase recipe's phase 1 (L_A, batch 32, Adam) over
   the 5000 training samples.

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/eventprop_bench.py [--quick]

Writes ``benchmarks/results/eventprop.json`` and ``benchmarks/results/eventprop.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numba
import numpy as np
import torch

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


def main(argv=None):
    from sparsespike.runtime import tune_allocator

    tune_allocator()  # every method gets the same allocator (runtime.py)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points, no epoch timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    X, Y = load_yinyang("train")
    x = encode_yinyang(X[: args.batch])
    y = Y[: args.batch]
    # warm-up (JIT compilation / cache load)
    EventNetwork([5, 4, 3])(x[:2])

    scales = [0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25] if not args.quick else [0.4, 0.7, 1.0]
    repeats = 3 if not args.quick else 1
    res = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s)",
        "versions": {
            "torch": torch.__version__,
            "numba": numba.__version__,
            "numpy": np.__version__,
        },
        "batch": args.batch,
        "spike_sweep": spike_sweep(x, y, scales, repeats),
        "time_scale": time_scale(x, y, [1.0, 3.0, 10.0] if not args.quick else [1.0, 10.0], repeats),
    }
    sw = res["spike_sweep"]
    sp = np.array([r["spikes_per_sample"] for r in sw])
    tot = np.array([r["forward_us_per_sample"] + r["backward_us_per_sample"] for r in sw])
    slope, icpt = np.polyfit(sp, tot, 1)
    res["fit_total_us_per_sample"] = {"slope_us_per_spike": slope, "intercept_us": icpt,
                                      "r2": float(np.corrcoef(sp, tot)[0, 1] ** 2)}  # fmt: skip
    if not args.quick:
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
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eventprop.json").write_text(json.dumps(res, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(OUT / "eventprop.png", dpi=120)
    print(f"wrote {OUT / 'eventprop.json'} and {OUT / 'eventprop.png'}")
    return res


if __name__ == "__main__":
    main()
