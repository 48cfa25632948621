"""Train EventProp configs over several seeds and summarise (median accuracy, <N_S>).

Example (reduced epochs: phase lengths 30 and 20)::

    NUMBA_NUM_THREADS=1 python benchmarks/eventprop_train.py \
        experiments/eventprop_yinyang_2phase.yaml --seeds 0 1 2 --epochs 30 20 \
        --out benchmarks/results/eventprop_yinyang_2phase.json

Writes a JSON with one entry per seed (final validation/test metrics, timings, per-epoch
validation accuracy/<N_S>) and a summary (median/mean/std of test accuracy, <N_S>).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sparsespike.config import parse_overrides
from sparsespike.eventprop.train import load_config, train_eventprop


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, nargs="*", help="epochs per phase (overrides config)")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides (YAML values)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    overrides = parse_overrides(args.set)
    base = load_config(args.config, **overrides)
    if not base.eval_test:  # (its validation figures would otherwise fill the test columns)
        raise SystemExit("eventprop_train.py reports test accuracy and <N_S> per seed: eval_test must be true")
    if args.epochs:
        if len(args.epochs) != len(base.phases):
            raise SystemExit(f"--epochs needs {len(base.phases)} values")
        for ph, e in zip(base.phases, args.epochs, strict=True):
            ph.epochs = e
    runs = []
    done: dict[int, dict] = {}
    if args.out and args.out.exists():  # resume: keep the seeds a previous (killed) run finished
        prev = json.loads(args.out.read_text())
        old = prev.get("summary", {})
        same = (old.get("config"), old.get("epochs"), old.get("overrides"))
        if same == (args.config, [p.epochs for p in base.phases], overrides):  # another --set trains anew
            done = {r["seed"]: r for r in prev["runs"]}
    for seed in args.seeds:
        if seed in done:
            runs.append(done[seed])
            print(f"seed {seed}: kept from {args.out}", flush=True)
            continue
        t0 = time.perf_counter()
        r = train_eventprop(base, seed=seed, progress=args.progress)
        fin = r["final"]
        te = fin["test"]
        run = {
            "seed": seed,
            "test_accuracy": te["accuracy"],
            "test_ce": te.get("loss_ce"),
            "test_n_s": te["n_s"],
            "test_n_s_per_layer": te["n_s_per_layer"],
            "test_silent_per_layer": te["silent_neurons_per_layer"],
            "test_latency_ms": te["latency_ms"],
            "val_accuracy": fin["val"]["accuracy"],
            "val_n_s": fin["val"]["n_s"],
            # the last phase's best validation epoch (model selection on validation, not test)
            "best_val": _selected(fin.get("best_val")),
            "timing": r["timing"],
            "curve": [
                {
                    "epoch": h["epoch"],
                    "phase": h["phase"],
                    "val_acc": h["val"]["accuracy"],
                    "val_ce": h["val"].get("loss_ce"),
                    "val_n_s": h["val"]["n_s"],
                    "train_acc": h["train"]["accuracy"],
                }
                for h in r["history"]
            ],
            "wall_s": time.perf_counter() - t0,
        }
        runs.append(run)
        print(
            f"seed {seed}: test acc {run['test_accuracy']:.4f}  CE {run['test_ce']:.4f}  "
            f"<N_S> {run['test_n_s']:.3f} {[round(v, 2) for v in run['test_n_s_per_layer']]}  "
            f"val acc {run['val_accuracy']:.4f}  "
            + (
                f"| best val epoch {run['best_val']['epoch']}: test acc {run['best_val']['test_accuracy']:.4f} "
                f"<N_S> {run['best_val']['test_n_s']:.3f}  "
                if run["best_val"]
                else ""
            )
            + f"({run['wall_s']:.0f} s, "
            f"{r['timing']['train_s_per_epoch']:.2f} s/epoch)",
            flush=True,
        )
        if args.out:  # after every seed, so that a killed sweep loses at most one run
            _write(args.out, _summary(args, base, overrides, runs), runs)
    summary = _summary(args, base, overrides, runs)
    print(json.dumps(summary, indent=1))
    if args.out:
        _write(args.out, summary, runs)
    return summary


def _selected(sel: dict | None) -> dict | None:
    if sel is None:
        return None
    te = sel["test"]
    return {
        "epoch": sel["epoch"],
        "val_accuracy": sel["val"]["accuracy"],
        "test_accuracy": te["accuracy"],
        "test_ce": te.get("loss_ce"),
        "test_n_s": te["n_s"],
    }


def _write(path: Path, summary: dict, runs: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    tmp.replace(path)


def _summary(args, base, overrides, runs) -> dict:
    sel = [r.get("best_val") for r in runs]
    return {
        "config": args.config,
        "epochs": [p.epochs for p in base.phases],
        "overrides": overrides,
        "seeds": [r["seed"] for r in runs],
        **_stats(runs),
        # the same for the weights of each run's best validation epoch (when every run has one)
        **(_stats(sel, "best_val_") if all(sel) else {}),
    }


def _stats(rows: list[dict], prefix: str = "") -> dict:
    """Median, mean and std over seeds of ``test_accuracy`` and ``test_n_s``."""
    out = {}
    for key in ("test_accuracy", "test_n_s"):
        v = [r[key] for r in rows]
        out[f"{prefix}median_{key}"] = statistics.median(v)
        out[f"{prefix}mean_{key}"] = statistics.fmean(v)
        out[f"{prefix}std_{key}"] = statistics.pstdev(v) if len(v) > 1 else 0.0
    return out


if __name__ == "__main__":
    main()
